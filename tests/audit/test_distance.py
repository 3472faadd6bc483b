"""DCR, NNDR and the DCR share test."""

from __future__ import annotations

import numpy as np

from fedsynth.audit.distance import dcr, dcr_share, nndr, share_from_counts, summarize


def test_dcr_share_is_half_for_independent_samples() -> None:
    rng = np.random.default_rng(0)
    train, holdout, synthetic = (rng.normal(size=(2000, 6)) for _ in range(3))
    res = dcr_share(synthetic, train, holdout)
    assert abs(res.share - 0.5) < 0.04
    assert res.ci_low < 0.5 < res.ci_high


def test_dcr_share_is_near_one_for_a_copy_of_train() -> None:
    rng = np.random.default_rng(1)
    train, holdout = rng.normal(size=(1000, 6)), rng.normal(size=(1500, 6))
    copy = train + 1e-3 * rng.normal(size=train.shape)
    res = dcr_share(copy, train, holdout, backend="numpy")
    assert res.share > 0.99
    assert res.p_value < 1e-10


def test_dcr_share_subsamples_to_equal_sizes() -> None:
    # a much larger holdout would otherwise win every comparison
    rng = np.random.default_rng(2)
    train, holdout, synthetic = (
        rng.normal(size=(200, 4)),
        rng.normal(size=(5000, 4)),
        rng.normal(size=(2000, 4)),
    )
    assert abs(dcr_share(synthetic, train, holdout).share - 0.5) < 0.05


def test_nndr_and_dcr_ranges() -> None:
    rng = np.random.default_rng(3)
    ref, q = rng.normal(size=(300, 5)), rng.normal(size=(100, 5))
    r = nndr(q, ref)
    assert r.shape == (100,) and np.all((r >= 0) & (r <= 1))
    assert np.allclose(nndr(ref[:10], ref), 0.0, atol=1e-3)  # an exact copy isolates its record
    np.testing.assert_allclose(dcr(q, ref), dcr(q, ref, backend="numpy"), rtol=1e-4)


def test_summarize_and_pooled_counts() -> None:
    s = summarize(np.linspace(0, 1, 101), max_distance=2.0, bins=4)
    assert s.n == 101 and abs(s.quantiles["p50"] - 0.5) < 1e-9
    assert sum(s.hist_counts) == 101 and s.hist_edges == (0.0, 0.5, 1.0, 1.5, 2.0)
    pooled = share_from_counts(55.0, 100)
    assert pooled.share == 0.55 and pooled.ci_low < 0.55 < pooled.ci_high
