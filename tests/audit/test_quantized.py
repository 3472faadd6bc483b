"""The int8 screen of the torch index: exact integer products, and exact answers however coarse the grid."""

from __future__ import annotations

import numpy as np
import pytest

from fedsynth.audit import index as index_mod
from fedsynth.audit.index import NumpyExactIndex, TorchExactIndex
from fedsynth.audit.quantized import Int8Screen


def tabular(n: int, seed: int, *, numeric: int = 6, blocks: tuple[int, ...] = (3, 4, 2)) -> np.ndarray:
    """Rows as the auditor encodes them: numbers in [-1, 1], one-hot blocks in {-1, +1}, few distinct rows."""
    rng = np.random.default_rng(seed)
    parts = [rng.uniform(-1, 1, size=(n, numeric))]
    for width in blocks:
        onehot = -np.ones((n, width))
        onehot[np.arange(n), rng.integers(0, width, n)] = 1.0
        parts.append(onehot)
    return np.concatenate(parts, axis=1).astype(np.float32)


def exact(data: np.ndarray, queries: np.ndarray, k: int = 1) -> tuple[np.ndarray, np.ndarray]:
    ref = NumpyExactIndex(data.shape[1])
    ref.add(data)
    return ref.search(queries, k)


def int8_index(
    data: np.ndarray, monkeypatch: pytest.MonkeyPatch, *, group: int = 8
) -> tuple[TorchExactIndex, list[int]]:
    """A brute-force torch index that screens on int8 with small groups; the list records each int8 answer."""
    monkeypatch.setattr(Int8Screen, "GROUP", group)
    answered: list[int] = []
    orig = TorchExactIndex._int8_band

    def spy(self: TorchExactIndex, queries: np.ndarray, k: int) -> object:
        got = orig(self, queries, k)
        if got is not None:
            answered.append(len(queries))
        return got

    monkeypatch.setattr(TorchExactIndex, "_int8_band", spy)
    idx = TorchExactIndex(data.shape[1], n_clusters=0, use_faiss=False, block=40)
    idx.add(data)
    return idx, answered


def test_products_carry_the_norms_exactly() -> None:
    # Arrange: norms spread widely, so the norm digits take several columns
    rng = np.random.default_rng(0)
    data = (rng.uniform(-1, 1, size=(300, 50)) * rng.uniform(0, 1, size=(300, 1))).astype(np.float32)
    queries = rng.uniform(-1, 1, size=(40, 50)).astype(np.float32)
    screen = Int8Screen(data)
    import torch

    # Act
    a, a_sq, _ = screen.queries(queries)
    p = torch._int_mm(a, screen.rows.T).long().numpy()
    # Assert: P = a.b - h, and ||a - b||^2 = ||a||^2 + C - 2 P + parity, all exact integers
    assert screen.n_digits >= 2 and screen.width % 4 == 0
    b = np.clip(np.rint(data.astype(np.float64) / screen.scale), -127, 127).astype(np.int64)
    qa = np.clip(np.rint(queries.astype(np.float64) / screen.scale), -127, 127).astype(np.int64)
    dist2 = ((qa[:, None, :] - b[None, :, :]) ** 2).sum(2)
    got = a_sq.numpy()[:, None] + screen.offset - 2 * p + screen.parity.numpy()[None, :]
    np.testing.assert_array_equal(got, dist2)


def test_encoded_rows_sit_on_the_grid() -> None:
    # one-hot features at exactly +-1: only the numeric features round
    rows = tabular(200, seed=1, numeric=0)
    screen = Int8Screen(rows)
    assert screen.scale == pytest.approx(1 / 127)
    assert screen.err_max == 0.0
    _, _, err = screen.queries(tabular(50, seed=2, numeric=0))
    assert float(err.max()) == 0.0
    assert Int8Screen(tabular(200, seed=1)).err_max <= 0.5 / 127 * np.sqrt(6)


@pytest.mark.parametrize("k", [1, 2, 5])
@pytest.mark.parametrize("numeric", [0, 6])
def test_tabular_rows_match_numpy_exactly(numeric: int, k: int, monkeypatch: pytest.MonkeyPatch) -> None:
    # Arrange: duplicated references (ties) and queries that copy some of them
    base = tabular(230, seed=3, numeric=numeric)
    data = np.concatenate([base, base[:100]])
    queries = np.concatenate([base[:30], tabular(150, seed=4, numeric=numeric)])
    idx, answered = int8_index(data, monkeypatch)
    monkeypatch.setattr(Int8Screen, "TOP_ENTRIES", 500)  # 42 groups: queries in chunks of 11
    # Act
    d, i = idx.search(queries, k)
    # Assert: the int8 path answered, with NumPy's distances, nearest first; copies at exactly 0, ties to the lower
    # index
    assert answered == [len(queries)]
    d_ref, i_ref = exact(data, queries, k)
    assert np.all(np.diff(d, axis=1) >= 0)
    np.testing.assert_allclose(d, d_ref, rtol=1e-9, atol=1e-6)
    assert np.all(d[:30, 0] == 0.0)
    first_copy = [int(np.flatnonzero((data == q).all(1))[0]) for q in queries[:30]]
    np.testing.assert_array_equal(i[:30, 0], first_copy)
    brute = np.linalg.norm(queries[:, None, :].astype(np.float64) - data[i], axis=2)
    np.testing.assert_allclose(brute, d, atol=1e-12)
    # ties everywhere (numeric == 0: every distance is one of a few values), all to the lowest indices; NumPy's
    # reference breaks ties among more than k rows arbitrarily, so rank all rows here
    d2 = ((queries[:, None, :].astype(np.float64) - data[None, :, :]) ** 2).sum(2)
    ranked = np.lexsort((np.broadcast_to(np.arange(len(data)), d2.shape), d2), axis=1)[:, :k]
    np.testing.assert_array_equal(i, ranked)


def test_queries_beyond_the_grid_are_exact(monkeypatch: pytest.MonkeyPatch) -> None:
    # a tenth of the queries lie up to 1.5x outside the reference's range: they round (clip) coarsely, and still get
    # exact answers
    rng = np.random.default_rng(5)
    data = rng.uniform(-1, 1, size=(500, 9)).astype(np.float32)
    queries = rng.uniform(-1, 1, size=(120, 9)).astype(np.float32)
    queries[:12] *= 1.5
    idx, answered = int8_index(data, monkeypatch)
    d, i = idx.search(queries, 1)
    assert answered == [120]
    d_ref, i_ref = exact(data, queries)
    np.testing.assert_allclose(d, d_ref, rtol=1e-9, atol=1e-6)
    np.testing.assert_array_equal(i, i_ref)


def test_a_grid_too_coarse_falls_back_to_float32(monkeypatch: pytest.MonkeyPatch) -> None:
    # Arrange: one huge value sets the grid step, so every other row rounds to 0 and ties with all the others
    rng = np.random.default_rng(6)
    data = rng.uniform(-1e-3, 1e-3, size=(2000, 5)).astype(np.float32)
    data[0, 0] = 1e4
    queries = rng.uniform(-1e-3, 1e-3, size=(60, 5)).astype(np.float32)
    idx, answered = int8_index(data, monkeypatch)
    # Act
    d, i = idx.search(queries, 1)
    # Assert: the int8 screen gave up (and stays off for this index); the answers are still exact
    assert answered == [] and idx.use_int8 is False
    d_ref, i_ref = exact(data, queries)
    np.testing.assert_allclose(d, d_ref, rtol=1e-9, atol=1e-9)
    np.testing.assert_array_equal(i, i_ref)


def test_without_int_mm_or_when_products_could_overflow(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(7)
    data, queries = tabular(300, seed=8), tabular(50, seed=9)
    monkeypatch.setattr(index_mod, "_int_mm_available", lambda: False)
    idx, answered = int8_index(data, monkeypatch)
    assert_exact = lambda got: np.testing.assert_allclose(got[0], exact(data, queries)[0], atol=1e-6)  # noqa: E731
    assert_exact(idx.search(queries, 1))
    assert answered == []
    monkeypatch.undo()
    # 140,000 features: an int32 product could exceed 2**31, so the screen is not used
    wide = rng.uniform(-1, 1, size=(3, 140_000)).astype(np.float32)
    screen = Int8Screen(wide)
    assert screen.exact is False
    idx, answered = int8_index(wide, monkeypatch)
    d, i = idx.search(wide[1:2], 1)
    assert answered == [] and d[0, 0] == 0.0 and i[0, 0] == 1


def test_more_neighbours_than_groups_are_searched_in_float32_once(monkeypatch: pytest.MonkeyPatch) -> None:
    # 20 rows in groups of 8: three groups, so k = 4 cannot take its threshold from group maxima
    data, queries = tabular(20, seed=10), tabular(15, seed=11)
    idx, answered = int8_index(data, monkeypatch)
    d, _ = idx.search(queries, 4)
    np.testing.assert_allclose(d, exact(data, queries, 4)[0], atol=1e-6)
    assert answered == [] and idx.use_int8 is True  # not given up for good: k = 1 still screens on int8
    d, _ = idx.search(queries, 1)
    assert answered == [15]
    np.testing.assert_allclose(d, exact(data, queries)[0], rtol=1e-9, atol=1e-6)
