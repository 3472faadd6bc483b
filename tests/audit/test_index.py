"""FAISS and exact NumPy nearest-neighbour backends agree."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedsynth.audit.index import FaissFlatL2Index, NearestNeighborIndex, NumpyExactIndex, make_index


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(2, 60),
    m=st.integers(1, 40),
    d=st.integers(1, 9),
    k=st.integers(1, 3),
    seed=st.integers(0, 10**6),
)
def test_faiss_matches_numpy(n: int, m: int, d: int, k: int, seed: int) -> None:
    # Arrange
    rng = np.random.default_rng(seed)
    data, queries = rng.normal(size=(n, d)), rng.normal(size=(m, d))
    k = min(k, n)
    # Act
    d_f, _ = make_index(data, backend="faiss").search(queries, k)
    d_n, i_n = make_index(data, backend="numpy").search(queries, k)
    # Assert: distances agree; the returned indices really are at those distances
    np.testing.assert_allclose(d_f, d_n, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(
        np.linalg.norm(queries[:, None, :] - data[i_n], axis=2), d_n, rtol=1e-6, atol=1e-6
    )
    assert np.all(np.diff(d_n, axis=1) >= 0)


def test_numpy_index_chunking_is_exact() -> None:
    rng = np.random.default_rng(0)
    data, queries = rng.normal(size=(1000, 8)), rng.normal(size=(300, 8))
    small = NumpyExactIndex(8, chunk_size=97)
    small.add(data[:500])
    small.add(data[500:])
    d_small, i_small = small.search(queries, 5)
    d_big, i_big = make_index(data, backend="numpy").search(queries, 5)
    np.testing.assert_allclose(d_small, d_big, atol=1e-9)
    np.testing.assert_array_equal(i_small, i_big)
    brute = np.sort(np.linalg.norm(queries[:, None] - data[None], axis=2), axis=1)[:, :5]
    np.testing.assert_allclose(d_small, brute, atol=1e-6)


def test_exact_duplicates_have_zero_distance() -> None:
    x = np.random.default_rng(1).normal(size=(50, 4)).astype(np.float32)
    for backend in ("faiss", "numpy"):
        d, i = make_index(x, backend=backend).search(x, 1)  # type: ignore[arg-type]
        assert np.allclose(d[:, 0], 0.0, atol=1e-3)
        np.testing.assert_array_equal(i[:, 0], np.arange(50))


def test_protocol_and_errors() -> None:
    assert isinstance(FaissFlatL2Index(3), NearestNeighborIndex)
    assert isinstance(NumpyExactIndex(3), NearestNeighborIndex)
    idx = make_index(np.zeros((2, 3)))
    assert idx.ntotal == 2
    with pytest.raises(ValueError, match="only 2 rows"):
        idx.search(np.zeros((1, 3)), 3)
    with pytest.raises(ValueError, match="expected 3 features"):
        idx.search(np.zeros((1, 4)), 1)
    with pytest.raises(ValueError, match="backend"):
        make_index(np.zeros((2, 3)), backend="annoy")  # type: ignore[arg-type]
