"""Nearest-neighbour search behind one protocol: FAISS and an exact NumPy reference backend."""

from __future__ import annotations

from typing import Literal, Protocol, runtime_checkable

import numpy as np

Backend = Literal["faiss", "numpy"]


@runtime_checkable
class NearestNeighborIndex(Protocol):
    """Exact k-nearest-neighbour search under the Euclidean (L2) distance."""

    @property
    def ntotal(self) -> int:
        """Number of indexed rows."""

    def add(self, x: np.ndarray) -> None:
        """Index the rows of ``x`` (shape ``(n, d)``)."""

    def search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Return ``(distances, indices)``, both of shape ``(len(q), k)``, nearest first.

        Distances are Euclidean (not squared).
        """


def _as_f32(x: np.ndarray, dim: int | None = None) -> np.ndarray:
    arr = np.ascontiguousarray(np.asarray(x, dtype=np.float32))
    if arr.ndim != 2:
        raise ValueError(f"expected a 2-D array (rows, features), got shape {arr.shape}")
    if dim is not None and arr.shape[1] != dim:
        raise ValueError(f"expected {dim} features, got {arr.shape[1]}")
    return arr


class FaissFlatL2Index:
    """Exact L2 search with ``faiss.IndexFlatL2`` (float32, C-contiguous)."""

    def __init__(self, dim: int) -> None:
        import faiss  # imported lazily: a heavy native module

        self.dim = dim
        self._index = faiss.IndexFlatL2(dim)

    @property
    def ntotal(self) -> int:
        return int(self._index.ntotal)

    def add(self, x: np.ndarray) -> None:
        self._index.add(_as_f32(x, self.dim))

    def search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        _check_k(k, self.ntotal)
        d2, idx = self._index.search(_as_f32(q, self.dim), k)
        return np.sqrt(np.maximum(d2, 0.0)), idx.astype(np.int64)


class NumpyExactIndex:
    """Brute-force exact L2 search in float64, chunked over queries and rows.

    Memory is bounded by ``chunk_size ** 2`` distances, so 100k x 100k searches fit in memory
    (slowly); tests use it to check :class:`FaissFlatL2Index`.

    Args:
        dim: number of features.
        chunk_size: rows per query/database chunk.
    """

    def __init__(self, dim: int, *, chunk_size: int = 4096) -> None:
        self.dim = dim
        self.chunk_size = chunk_size
        self._parts: list[np.ndarray] = []

    @property
    def ntotal(self) -> int:
        return int(sum(len(p) for p in self._parts))

    def add(self, x: np.ndarray) -> None:
        self._parts.append(np.asarray(_as_f32(x, self.dim), dtype=np.float64))

    def search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        _check_k(k, self.ntotal)
        data = np.concatenate(self._parts) if self._parts else np.empty((0, self.dim))
        queries = np.asarray(_as_f32(q, self.dim), dtype=np.float64)
        out_d = np.empty((len(queries), k))
        out_i = np.empty((len(queries), k), dtype=np.int64)
        data_sq = np.einsum("ij,ij->i", data, data)
        for qs in range(0, len(queries), self.chunk_size):
            qc = queries[qs : qs + self.chunk_size]
            q_sq = np.einsum("ij,ij->i", qc, qc)
            best_d = np.full((len(qc), 0), np.inf)
            best_i = np.full((len(qc), 0), -1, dtype=np.int64)
            for ds in range(0, len(data), self.chunk_size):
                dc = data[ds : ds + self.chunk_size]
                d2 = q_sq[:, None] + data_sq[None, ds : ds + len(dc)] - 2.0 * qc @ dc.T
                cand_d = np.concatenate([best_d, np.maximum(d2, 0.0)], axis=1)
                cand_i = np.concatenate(
                    [best_i, np.broadcast_to(np.arange(ds, ds + len(dc)), d2.shape)], axis=1
                )
                kk = min(k, cand_d.shape[1])
                part = np.argpartition(cand_d, kk - 1, axis=1)[:, :kk]
                best_d = np.take_along_axis(cand_d, part, axis=1)
                best_i = np.take_along_axis(cand_i, part, axis=1)
            order = np.lexsort((best_i, best_d), axis=1) if best_d.size else best_d.astype(int)
            out_d[qs : qs + len(qc)] = np.sqrt(np.take_along_axis(best_d, order, axis=1))
            out_i[qs : qs + len(qc)] = np.take_along_axis(best_i, order, axis=1)
        return out_d, out_i


def _check_k(k: int, ntotal: int) -> None:
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if k > ntotal:
        raise ValueError(f"asked for {k} neighbours but the index holds only {ntotal} rows")


def make_index(x: np.ndarray, *, backend: Backend = "faiss") -> NearestNeighborIndex:
    """Build an index over the rows of ``x``.

    Args:
        x: array of shape ``(n, d)``.
        backend: ``"faiss"`` (default) or ``"numpy"`` (exact reference implementation).

    Returns:
        A populated :class:`NearestNeighborIndex`.

    Raises:
        ValueError: unknown backend.
    """
    arr = _as_f32(x)
    index: NearestNeighborIndex
    if backend == "faiss":
        index = FaissFlatL2Index(arr.shape[1])
    elif backend == "numpy":
        index = NumpyExactIndex(arr.shape[1])
    else:
        raise ValueError(f"backend must be 'faiss' or 'numpy', got {backend!r}")
    index.add(arr)
    return index
