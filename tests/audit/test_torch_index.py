"""The torch backend (pruned blocked GEMM, float64 refinement) returns the exact NumPy answers."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedsynth.audit import index as index_mod
from fedsynth.audit.distance import dcr, nndr
from fedsynth.audit.index import NearestNeighborIndex, NumpyExactIndex, TorchExactIndex, make_index


def clumpy(n: int, d: int, seed: int, *, centres: int = 40, noise: float = 0.05) -> np.ndarray:
    """Rows around a few centres in [-1, 1]^d (like resampled tabular rows): pruning works here."""
    rng = np.random.default_rng(seed)
    c = rng.uniform(-1, 1, size=(centres, d))
    x = c[rng.integers(0, centres, n)] + rng.normal(0, noise, size=(n, d))
    return np.clip(x, -1, 1).astype(np.float32)


def exact(data: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    ref = NumpyExactIndex(data.shape[1])
    ref.add(data)
    return ref.search(queries, k)


def torch_index(data: np.ndarray, *, device_path: bool = False, **kw: object) -> TorchExactIndex:
    idx = TorchExactIndex(data.shape[1], **kw)  # type: ignore[arg-type]
    if device_path:  # the GPU screening path (device="cuda"), run on the CPU with small tiles
        idx._brute_on_device = True
        idx.DEVICE_BLOCK = 97
    idx.add(data)
    return idx


def assert_same(got: tuple[np.ndarray, np.ndarray], want: tuple[np.ndarray, np.ndarray]) -> None:
    d, i = got
    d_ref, i_ref = want
    assert d.shape == d_ref.shape and i.shape == i_ref.shape
    assert i.dtype == np.int64
    # NumPy's reference expands ||q||^2 + ||r||^2 - 2 q.r in float64: ~1e-7 absolute near 0
    np.testing.assert_allclose(d, d_ref, rtol=1e-9, atol=1e-6)
    np.testing.assert_array_equal(i, i_ref)


PATHS = {
    "pruned": {"n_clusters": 12},
    "brute-torch": {"n_clusters": 0, "use_faiss": False, "use_int8": False, "block": 97},
    "brute-faiss": {"n_clusters": 0, "use_faiss": True, "use_int8": False},
    "brute-int8": {"n_clusters": 0, "use_faiss": False, "block": 97},
    "brute-device": {"device_path": True},
}


@pytest.mark.parametrize("path", sorted(PATHS))
@pytest.mark.parametrize("k", [1, 2, 5])
@pytest.mark.parametrize(("n", "m"), [(1000, 300), (300, 1000), (613, 613)])
def test_matches_numpy_exactly(path: str, k: int, n: int, m: int) -> None:
    # Arrange: queries fewer/more/as many as references; sizes that no block size divides
    data, queries = clumpy(n, 11, seed=n), clumpy(m, 11, seed=m + 1)
    # Act / Assert
    assert_same(torch_index(data, **PATHS[path]).search(queries, k), exact(data, queries, k))


@pytest.mark.parametrize("path", sorted(PATHS))
def test_uniform_data_matches_numpy(path: str) -> None:
    rng = np.random.default_rng(5)
    data = rng.uniform(-1, 1, size=(700, 30)).astype(np.float32)
    queries = rng.uniform(-1, 1, size=(257, 30)).astype(np.float32)
    for k in (1, 2):
        assert_same(torch_index(data, **PATHS[path]).search(queries, k), exact(data, queries, k))


@pytest.mark.parametrize("path", sorted(PATHS))
def test_copied_records_have_distance_zero(path: str) -> None:
    # Arrange: a synthetic set that contains verbatim copies of some real rows
    real = clumpy(800, 20, seed=3)
    synthetic = clumpy(400, 20, seed=4)
    copied = np.arange(0, 800, 9)
    synthetic[: len(copied)] = real[copied]
    # Act
    d, i = torch_index(real, **PATHS[path]).search(synthetic, 2)
    # Assert: exactly 0 (no float32 cancellation left), and the copied row is the neighbour
    assert np.all(d[: len(copied), 0] == 0.0)
    np.testing.assert_array_equal(i[: len(copied), 0], copied)
    assert np.all(d[len(copied) :, 0] > 0)
    assert_same((d, i), exact(real, synthetic, 2))


@pytest.mark.parametrize("path", sorted(PATHS))
def test_duplicated_references_tie_to_lowest_index(path: str) -> None:
    # Arrange: every reference row appears 6 times (more than k + extra candidates are kept),
    # so the float32 screen cannot separate them and the exact fallback must run
    base = clumpy(150, 7, seed=8)
    data = np.concatenate([base] * 6)
    queries = np.concatenate([base[:40], clumpy(60, 7, seed=9)])
    for k in (1, 2, 3):
        # Act
        d, i = torch_index(data, **PATHS[path]).search(queries, k)
        d_ref, _ = exact(data, queries, k)
        # Assert: distances exact; ties broken by the lower index (copies of row j: j, j + 150, ...)
        np.testing.assert_allclose(d, d_ref, atol=1e-6)
        assert np.all(d[:40] == 0.0)
        np.testing.assert_array_equal(i[:40], np.arange(40)[:, None] + 150 * np.arange(k)[None, :])
        brute = np.linalg.norm(queries[:, None, :].astype(np.float64) - data[i], axis=2)
        np.testing.assert_allclose(brute, d, atol=1e-12)


@settings(max_examples=30, deadline=None)
@given(
    n=st.integers(1, 400),
    m=st.integers(1, 300),
    d=st.integers(1, 12),
    k=st.integers(1, 4),
    clusters=st.sampled_from([0, 2, 5, 23]),
    block=st.sampled_from([7, 64, 4096]),
    use_faiss=st.booleans(),
    use_int8=st.booleans(),
    dup=st.booleans(),
    seed=st.integers(0, 10**6),
)
def test_random_cases_match_numpy(
    n: int, m: int, d: int, k: int, clusters: int, block: int, use_faiss: bool, use_int8: bool, dup: bool, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    data = clumpy(n, d, seed, centres=int(rng.integers(1, 20)))
    queries = clumpy(m, d, seed + 1)
    if dup:  # duplicated rows and copied queries
        data[n // 2 :] = data[: n - n // 2]
        queries[: min(m, n) // 2] = data[: min(m, n) // 2]
    k = min(k, n)
    idx = torch_index(data, n_clusters=clusters, block=block, use_faiss=use_faiss, use_int8=use_int8)
    d_t, i_t = idx.search(queries, k)
    d_n, _ = exact(data, queries, k)
    np.testing.assert_allclose(d_t, d_n, rtol=1e-9, atol=1e-6)
    # the returned indices are at the returned distances, nearest first
    brute = np.linalg.norm(queries[:, None, :].astype(np.float64) - data[i_t], axis=2)
    np.testing.assert_allclose(brute, d_t, atol=1e-12)
    assert np.all(np.diff(d_t, axis=1) >= 0)


def test_pruning_skips_work_and_falls_back_when_it_cannot(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    for name in ("_brute", "_brute_band", "_brute_faiss", "_int8_band"):
        orig = getattr(TorchExactIndex, name)

        def spy(self: TorchExactIndex, *a: object, _orig: object = orig, _name: str = name) -> object:
            calls.append(_name)
            return _orig(self, *a)  # type: ignore[operator]

        monkeypatch.setattr(TorchExactIndex, name, spy)
    # clustered rows: the pruned path answers, no brute force
    data, queries = clumpy(12_000, 16, seed=1, centres=300), clumpy(3000, 16, seed=2, centres=300)
    d, i = torch_index(data).search(queries, 1)
    assert calls == []
    d_ref, i_ref = exact(data, queries[:500], 1)
    np.testing.assert_allclose(d[:500], d_ref, atol=1e-6)
    np.testing.assert_array_equal(i[:500], i_ref)
    # uniform rows in 40 dimensions: pruning cannot pay, blocked brute force answers
    rng = np.random.default_rng(0)
    data = rng.uniform(-1, 1, size=(9000, 40)).astype(np.float32)
    queries = rng.uniform(-1, 1, size=(2500, 40)).astype(np.float32)
    d, i = torch_index(data, use_faiss=False).search(queries, 1)
    d8, i8 = torch_index(data, use_faiss=False, use_int8=False).search(queries, 1)
    assert calls == ["_int8_band", "_brute_band"]
    d_ref, i_ref = exact(data, queries[:300], 1)
    for got_d, got_i in ((d, i), (d8, i8)):
        np.testing.assert_allclose(got_d[:300], d_ref, atol=1e-6)
        np.testing.assert_array_equal(got_i[:300], i_ref)


def test_pruning_is_tried_on_a_probe_of_queries_first(monkeypatch: pytest.MonkeyPatch) -> None:
    # Arrange: spy on the pruned search's query chunks; probe of 500 queries
    monkeypatch.setattr(TorchExactIndex, "PROBE_QUERIES", 500)
    chunks: list[int] = []
    orig = index_mod._ClusterState.search

    def spy(self: object, qc: np.ndarray, *a: object) -> object:
        chunks.append(len(qc))
        return orig(self, qc, *a)  # type: ignore[arg-type]

    monkeypatch.setattr(index_mod._ClusterState, "search", spy)
    rng = np.random.default_rng(0)
    uniform = rng.uniform(-1, 1, size=(9000, 40)).astype(np.float32)
    far = rng.uniform(-1, 1, size=(2500, 40)).astype(np.float32)
    data, near = clumpy(12_000, 16, seed=1, centres=300), clumpy(3000, 16, seed=2, centres=300)

    # Act
    got_far = torch_index(uniform, use_faiss=False).search(far, 1)
    chunks_far, chunks[:] = list(chunks), []
    got_near = torch_index(data).search(near, 1)

    # Assert: where pruning does not pay only the probe was tried; where it pays, the probe and then the rest
    assert chunks_far == [500]
    assert chunks == [500, 2500]
    assert_same((got_far[0][:300], got_far[1][:300]), exact(uniform, far[:300], 1))
    assert_same((got_near[0][:300], got_near[1][:300]), exact(data, near[:300], 1))


def test_make_index_backends_and_threads() -> None:
    import torch

    x = clumpy(200, 5, seed=0)
    auto = make_index(x)
    assert isinstance(auto, TorchExactIndex)
    assert isinstance(auto, NearestNeighborIndex)
    before = torch.get_num_threads()
    threaded = make_index(x, backend="torch", threads=2)
    threaded.search(x[:10], 1)
    assert torch.get_num_threads() == before  # restored after the search
    assert index_mod.BACKENDS == ("auto", "torch", "faiss", "numpy")
    with pytest.raises(ValueError, match="only 200 rows"):
        auto.search(x[:3], 201)
    with pytest.raises(ValueError, match="expected 5 features"):
        auto.search(np.zeros((1, 4)), 1)
    d, i = auto.search(np.zeros((0, 5)), 2)
    assert d.shape == (0, 2) and i.shape == (0, 2)


def test_incremental_add_and_distance_functions() -> None:
    data, queries = clumpy(500, 6, seed=2), clumpy(120, 6, seed=3)
    idx = TorchExactIndex(6, n_clusters=4)
    idx.add(data[:200])
    idx.search(queries, 1)  # builds the clustering of the first 200 rows
    idx.add(data[200:])  # ...which must be rebuilt
    assert idx.ntotal == 500
    assert_same(idx.search(queries, 2), exact(data, queries, 2))
    np.testing.assert_allclose(dcr(queries, data), dcr(queries, data, backend="numpy"), atol=1e-6)
    np.testing.assert_allclose(
        nndr(queries, data, backend="torch"), nndr(queries, data, backend="numpy"), atol=1e-6
    )
