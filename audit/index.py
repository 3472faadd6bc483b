"""Nearest-neighbour search behind one protocol: torch (pruned blocked GEMM), FAISS and an exact NumPy
reference backend."""

from __future__ import annotations

from functools import cache
from itertools import pairwise
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

import numpy as np

if TYPE_CHECKING:
    from fedsynth.audit.quantized import Int8Screen

Backend = Literal["auto", "torch", "faiss", "numpy"]

#: accepted values of ``backend`` (``auto`` picks the fastest exact backend available: torch)
BACKENDS: tuple[str, ...] = ("auto", "torch", "faiss", "numpy")


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


# ---------------------------------------------------------------------------------------------
# Torch backend: exact search by pruned blocked GEMM (float32 screening, float64 refinement).
# ---------------------------------------------------------------------------------------------

_EPS32 = 2.0**-24  # unit roundoff of float32


class TorchExactIndex:
    """Exact L2 search with torch: pruned float32 GEMM screening, exact float64 refinement.

    Results match :class:`NumpyExactIndex` (float64 distances, ties broken by the lower index, a
    copied row at distance exactly 0); only the work done to get there differs:

    1. The reference rows are clustered (a few k-means steps on a subsample; any clustering gives
       the same results, a good one is only faster). Each cluster keeps its centroid ``c`` and
       radius ``rho = max ||r - c||``.
    2. Every query is first compared with all rows of its nearest cluster; its k-th best distance
       so far, ``U``, bounds its answer. Another cluster can only hold a closer row if
       ``||q - c|| - rho <= U`` (triangle inequality); all others are skipped. Where pruning
       would leave more than :attr:`_ClusterState.MAX_WORK_FRACTION` of the pairs (e.g. uniform,
       high-dimensional data, or a generator's rows, far from every real row; the pruned path is slower per
       pair), the query chunk is screened against all rows instead: by an int8 GEMM
       with exact integer products (:mod:`fedsynth.audit.quantized`, about 4x the float32 rate on a CPU), unless
       the rows' rounding leaves too many candidates; otherwise ``faiss.IndexFlatL2`` when faiss is
       installed (its fused kernel beats torch's ``topk``), else blocked torch GEMMs.
    3. Distances are screened in float32 as ``||q||^2 + ||r||^2 - 2 q.r`` on centred coordinates
       (centroid or mean), keeping the ``k + extra`` best per query. Candidates within twice a
       rigorous float32 error bound of the k-th are re-measured exactly in float64
       (``sum((q - r)^2)``) and re-ranked. Where a row that was not kept could still beat the
       k-th (many near-equidistant neighbours, e.g. duplicated references), the query is redone
       by an exact float64 search.

    Args:
        dim: number of features.
        threads: torch intra-op threads while searching (``None``: leave torch's setting). On a
            shared machine, more threads than idle cores slows this down a lot.
        extra: candidates kept beyond ``k`` for the exact re-ranking.
        n_clusters: clusters of the reference (``None``: ``3 * sqrt(n)`` from
            :attr:`MIN_ROWS_TO_CLUSTER` rows on, else 0; 0 disables pruning: brute force).
        block: reference rows per block in the torch brute-force path (a quarter as many queries).
        seed: seed of the clustering (affects speed only, never results).
        use_faiss: screen with faiss (if installed) where pruning does not pay.
        use_int8: screen on int8 where pruning does not pay (if this torch has a CPU
            ``torch._int_mm``); set to ``False`` by the index itself once rounding proved too coarse for its rows.
        device: torch device of the float32 screening (``"cpu"``, ``"cuda"``). On a GPU every query is
            screened against every row (no clustering: brute force is fast there) in full float32 (TF32
            off, so the error bound holds); the float64 re-ranking runs on the CPU, so results are the
            same on any device.
    """

    #: below this many reference rows, pruning does not pay: blocked brute force
    MIN_ROWS_TO_CLUSTER = 8192
    #: queries of the first chunk of a pruned search, on which it is decided whether pruning pays
    PROBE_QUERIES = 4096
    #: int8 screening gives up (float32 from then on) where its second pass would redo more than this fraction of
    #: the first (rounding too coarse for the rows' distances)
    MAX_INT8_REVISIT = 0.25
    #: queries and rows per tile of the GPU screening: a (tile x tile) float32 distance matrix, 1 GiB
    DEVICE_BLOCK = 16384

    def __init__(
        self,
        dim: int,
        *,
        threads: int | None = None,
        extra: int = 3,
        n_clusters: int | None = None,
        block: int = 4096,
        seed: int = 0,
        use_faiss: bool = True,
        use_int8: bool = True,
        device: str = "cpu",
    ) -> None:
        self.dim = dim
        self.device = device
        #: screen by blocked brute force on ``device`` (a GPU); tests set it to run that path on the CPU
        self._brute_on_device = _device_type(device) != "cpu"
        self.threads = threads
        self.extra = extra
        self.n_clusters = n_clusters
        self.block = block
        self.seed = seed
        self._parts: list[np.ndarray] = []
        self.use_faiss = use_faiss
        self._state: _ClusterState | None = None
        self._data: np.ndarray | None = None
        self._faiss: tuple[Any, Any, float] | None = None
        self._centred_ref: tuple[Any, Any, Any] | None = None
        self.use_int8 = use_int8
        self._int8: Int8Screen | None = None

    @property
    def ntotal(self) -> int:
        return int(sum(len(p) for p in self._parts))

    def add(self, x: np.ndarray) -> None:
        self._parts.append(_as_f32(x, self.dim))
        self._state = None
        self._data = None
        self._faiss = None
        self._centred_ref = None
        self._int8 = None

    # -- public ---------------------------------------------------------------------------------

    def search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        _check_k(k, self.ntotal)
        queries = _as_f32(q, self.dim)
        with _torch_threads(self.threads):
            return self._search(queries, k)

    # -- internals ------------------------------------------------------------------------------

    def _reference(self) -> np.ndarray:
        if self._data is None:
            self._data = (
                self._parts[0] if len(self._parts) == 1 else np.concatenate(self._parts)
            )
        return self._data

    def _search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        import torch

        data = self._reference()
        n, m = len(data), len(queries)
        kk = min(k + self.extra, n)
        out_d = np.empty((m, k))
        out_i = np.empty((m, k), dtype=np.int64)
        if m == 0:
            return out_d, out_i
        if self._brute_on_device:
            q_t = torch.from_numpy(queries)
            for s in range(0, m, 65536):
                qc = q_t[s : s + 65536]
                cand_v, cand_i, tol = self._brute(qc, kk, on_device=True)
                out_d[s : s + len(qc)], out_i[s : s + len(qc)] = self._refine(
                    queries[s : s + len(qc)], cand_v, cand_i, tol, k
                )
            return out_d, out_i
        state = self._cluster_state()
        q_t = torch.from_numpy(queries)
        # the pruned path holds a (queries x clusters) float32 matrix: about 512 MB at most
        chunk = max(1, (1 << 27) // state.n_clusters) if state else 65536
        # the first chunk of a pruned search is a probe of at most PROBE_QUERIES: where pruning does not pay
        # (queries far from every reference row), that is found out on it rather than on all the queries
        probe = min(self.PROBE_QUERIES, chunk) if state is not None else chunk
        bounds = [0, *range(probe, m, chunk), m]
        for s, e in pairwise(bounds):
            qc = q_t[s:e]
            cand_v, cand_i, tol = None, None, None
            if state is not None:
                got = state.search(qc, k, kk)
                if got is None:
                    state = None  # pruning does not pay here: brute force for the other chunks too
                else:
                    cand_v, cand_i, tol = got
            if cand_v is None and self.use_int8 and _int_mm_available():
                got_band = self._int8_band(queries[s:e], k)
                if got_band is not None:
                    out_d[s:e], out_i[s:e] = got_band
                    continue
            if cand_v is None and self.use_faiss and _has_module("faiss"):
                cand_v, cand_i, tol = self._brute_faiss(qc, kk)
            if cand_v is None and k == 1:
                d, i = self._brute_band(qc, queries[s : s + len(qc)])
            else:
                if cand_v is None:
                    cand_v, cand_i, tol = self._brute(qc, kk)
                d, i = self._refine(queries[s : s + len(qc)], cand_v, cand_i, tol, k)
            out_d[s : s + len(qc)] = d
            out_i[s : s + len(qc)] = i
        return out_d, out_i

    def _cluster_state(self) -> _ClusterState | None:
        n = self.ntotal
        n_clusters = self.n_clusters
        if n_clusters is None:
            n_clusters = int(round(3 * np.sqrt(n))) if n >= self.MIN_ROWS_TO_CLUSTER else 0
        n_clusters = min(n_clusters, n)
        if n_clusters < 2:
            return None
        if self._state is None or self._state.n_clusters != n_clusters:
            self._state = _ClusterState(self._reference(), n_clusters, seed=self.seed)
        return self._state

    def _centred(self, device: str = "cpu") -> tuple[Any, Any, Any]:
        """The reference rows centred on their mean, the mean and the rows' squared norms, as float32 tensors on
        ``device``; computed once and kept until :meth:`add` (every query chunk of a search reuses them)."""
        import torch

        dev = torch.device(device)
        if self._centred_ref is None or self._centred_ref[0].device != dev:
            data = torch.from_numpy(self._reference()).to(dev)
            mu = data.mean(0)
            centred = data - mu
            self._centred_ref = (centred, mu, (centred * centred).sum(1))
        return self._centred_ref

    def _brute(self, qc: Any, kk: int, *, on_device: bool = False) -> tuple[Any, Any, Any]:
        """Blocked brute force: float32 screening of every row, the ``kk`` best kept per query, and the error
        bound. ``on_device``: on ``self.device`` (a GPU; the reference is copied there once) with large tiles and
        TF32 off; the results come back to the CPU, for :meth:`_refine`."""
        import torch

        centred, mu, rn_all = self._centred(self.device if on_device else "cpu")
        q_all = qc.to(centred.device) - mu
        qn_all = (q_all * q_all).sum(1)
        r_block, q_block = (self.DEVICE_BLOCK,) * 2 if on_device else (self.block, max(1, self.block // 4))
        tf32 = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = False  # TF32's 10-bit mantissa would break the error bound
        try:
            best_v, best_i = _screen(q_all, qn_all, centred, rn_all, kk, r_block, q_block)
        finally:
            torch.backends.cuda.matmul.allow_tf32 = tf32
        tol = _gamma(self.dim) * (qn_all + rn_all.max())
        return best_v.cpu(), best_i.cpu(), tol.cpu()

    def _brute_faiss(self, qc: Any, kk: int) -> tuple[Any, Any, Any]:
        """Blocked brute force screening by ``faiss.IndexFlatL2`` (its fused GEMM + selection kernel
        is faster than torch's ``topk``), on mean-centred rows; same error bound as :meth:`_brute`."""
        import faiss
        import torch

        if self._faiss is None:
            centred_t, mu, _ = self._centred()
            centred = centred_t.numpy()
            index = faiss.IndexFlatL2(self.dim)
            index.add(centred)
            self._faiss = (index, mu, float((centred.astype(np.float64) ** 2).sum(1).max()))
        index, mu, rmax = self._faiss
        q = (qc - mu).contiguous()
        qn = (q * q).sum(1)
        d2, idx = index.search(q.numpy(), kk)
        tol = _gamma(self.dim) * (qn + rmax)
        return torch.from_numpy(d2), torch.from_numpy(idx.astype(np.int64)), tol

    def _brute_band(self, qc: Any, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Blocked brute force for ``k = 1``: float32 screening of every row keeping, per query,
        every row within twice the error bound of the running minimum (``amin`` and a comparison
        are much cheaper than ``topk``); those are measured exactly, so no row is ever unsure."""
        import torch

        centred, mu, rn_all = self._centred()
        data = torch.from_numpy(self._reference())
        q_all = qc - mu
        qn_all = (q_all * q_all).sum(1)
        tol = _gamma(self.dim) * (qn_all + rn_all.max())
        best = torch.full((len(qc),), float("inf"))
        rows, cols, vals = [], [], []
        qb = max(1, self.block // 4)
        for rs in range(0, len(data), self.block):
            r, rn = centred[rs : rs + self.block], rn_all[rs : rs + self.block]
            for qs in range(0, len(qc), qb):
                q, qn = q_all[qs : qs + qb], qn_all[qs : qs + qb]
                d2 = torch.addmm(rn.unsqueeze(0), q, r.T, alpha=-2.0).add_(qn.unsqueeze(1))
                blk_min = torch.amin(d2, dim=1)
                blk_best = torch.minimum(best[qs : qs + qb], blk_min)
                best[qs : qs + qb] = blk_best
                thr = blk_best + 2 * tol[qs : qs + qb]
                hit = torch.nonzero(blk_min <= thr).flatten()  # rows with a candidate here
                if len(hit) == 0:
                    continue
                sub = d2.index_select(0, hit)
                i, j = torch.nonzero(sub <= thr[hit].unsqueeze(1), as_tuple=True)
                rows.append(hit[i] + qs)
                cols.append(j + rs)
                vals.append(sub[i, j])
        row, col, val = torch.cat(rows), torch.cat(cols), torch.cat(vals)
        keep = val <= (best + 2 * tol)[row]  # drop candidates a later block beat
        return self._nearest_candidates(queries, row[keep], col[keep])

    def _int8_band(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray] | None:
        """Brute force on the int8 grid (see :mod:`fedsynth.audit.quantized`): every row that may be among the
        ``k`` nearest is kept and measured exactly. ``None`` where rounding leaves too many candidates (rows far
        coarser than their distances): the caller screens in float32 instead, and so do later chunks."""
        from fedsynth.audit.quantized import Int8Screen

        if self._int8 is None:
            self._int8 = Int8Screen(self._reference())
        if not self._int8.exact:
            self.use_int8 = False
            return None
        if k > self._int8.n_groups:  # fewer groups of rows than neighbours asked for (a small reference)
            return None
        got = self._int8.band_search(
            # a quarter as many queries per tile as the float32 paths: the int32 tile (256 x 4096) then stays in cache
            # between the product and its amax (20% faster than 1024 x 4096)
            queries, k, q_block=max(1, self.block // 16), r_block=self.block,
            max_revisit=self.MAX_INT8_REVISIT,
        )
        if got is None:
            self.use_int8 = False
            return None
        return self._nearest_candidates(queries, *got, k=k)

    def _nearest_candidates(
        self, queries: np.ndarray, row: Any, col: Any, *, k: int = 1
    ) -> tuple[np.ndarray, np.ndarray]:
        """Each query's ``k`` nearest among its candidate rows (``row``: query index, ``col``: reference index;
        every query has at least ``k``), measured exactly in float64, nearest first, ties to the lower index."""
        import torch

        data, q = torch.from_numpy(self._reference()), torch.from_numpy(queries)
        exact = np.empty(len(row))
        for s in range(0, len(row), 65536):  # chunks: a few MB of float64 differences at a time
            r, c = row[s : s + 65536], col[s : s + 65536]
            diff = data.index_select(0, c).double().sub_(q.index_select(0, r).double())
            exact[s : s + len(r)] = (diff * diff).sum(1).numpy()
        from fedsynth.audit.quantized import first_k_per_row

        row_n, col_n = row.numpy(), col.numpy()
        pick = first_k_per_row(row_n, len(queries), k, col_n, exact)  # (query, rank): nearest, then lower index
        return np.sqrt(exact[pick]), col_n[pick].astype(np.int64)

    def _refine(
        self, queries: np.ndarray, cand_v: Any, cand_i: Any, tol: Any, k: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Exact float64 distances of the candidates, re-ranked; ambiguous rows re-done exactly."""
        import torch

        cand_v, order = torch.sort(cand_v, dim=1)
        cand_i = torch.gather(cand_i, 1, order)
        kth = cand_v[:, k - 1]
        # Only candidates whose screened value is within twice the error bound of the k-th can be
        # among the true k nearest: measure those exactly (float64, sum of squared differences).
        in_band = (cand_v <= (kth + 2 * tol).unsqueeze(1)) & (cand_i >= 0)
        in_band[:, :k] |= cand_i[:, :k] >= 0
        rq, col = torch.nonzero(in_band, as_tuple=True)
        ri = cand_i[rq, col]
        data = self._reference()
        ref_t = torch.from_numpy(data)
        diff = ref_t.index_select(0, ri).double() - torch.from_numpy(queries).index_select(0, rq).double()
        d2_t = torch.full(cand_v.shape, float("inf"), dtype=torch.float64)
        d2_t[rq, col] = (diff * diff).sum(1)
        d2 = d2_t.numpy()
        idx = cand_i.numpy()
        idx_key = np.where(np.isfinite(d2), idx, np.iinfo(np.int64).max)
        o = np.lexsort((idx_key, d2), axis=1)[:, :k]
        best_d = np.sqrt(np.take_along_axis(d2, o, axis=1))
        best_i = np.take_along_axis(idx, o, axis=1)
        # A row never kept has a float32 screen value >= the last kept one (or was pruned with a
        # margin). If that value minus the error bound could still undercut the k-th screened
        # value plus the error bound, the answer is not certain: do the row exactly.
        last = cand_v[:, -1]
        unsure = (torch.isfinite(last) & (last - tol <= kth + tol)).numpy()
        unsure |= ~np.isfinite(best_d).all(axis=1)
        if unsure.any():
            d_ex, i_ex = self._exact_rows(queries[unsure], k)
            best_d[unsure] = d_ex
            best_i[unsure] = i_ex
        return best_d, best_i

    def _exact_rows(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact search for a few queries: float64 screening of every row; every row within the
        float64 error bound of the k-th is re-measured as ``sum((q - r)^2)`` and ranked with ties
        broken by the lower index."""
        import torch

        data = self._reference()
        ref = torch.from_numpy(data).double()
        mu = ref.mean(0)
        ref = ref - mu
        rn = (ref * ref).sum(1)
        gamma64 = 2.0 * (self.dim + 8) * 2.0**-53
        out_d = np.empty((len(queries), k))
        out_i = np.empty((len(queries), k), dtype=np.int64)
        for s in range(0, len(queries), 64):
            q = torch.from_numpy(queries[s : s + 64]).double() - mu
            qn = (q * q).sum(1)
            d2 = torch.addmm(rn.unsqueeze(0), q, ref.T, alpha=-2.0).add_(qn.unsqueeze(1))
            kth = torch.kthvalue(d2, k, dim=1).values
            band = kth + 2 * gamma64 * (qn + rn.max())
            for r in range(len(q)):
                cand = torch.nonzero(d2[r] <= band[r]).flatten().numpy()
                diff = data[cand].astype(np.float64) - queries[s + r].astype(np.float64)
                exact = np.einsum("ij,ij->i", diff, diff)
                o = np.lexsort((cand, exact))[:k]
                out_d[s + r] = np.sqrt(exact[o])
                out_i[s + r] = cand[o]
        return out_d, out_i


def _gamma(dim: int) -> float:
    """Bound factor on the float32 error of ``||q||^2 + ||r||^2 - 2 q.r`` relative to
    ``||q||^2 + ||r||^2`` (any summation order, plus the rounding of centring the inputs)."""
    return 2.0 * (dim + 8) * _EPS32


def _screen(
    q_all: Any, qn_all: Any, centred: Any, rn_all: Any, kk: int, r_block: int, q_block: int
) -> tuple[Any, Any]:
    """The ``kk`` smallest float32 screens ``||q||^2 + ||r||^2 - 2 q.r`` of every (centred) query against every
    (centred) row, and their row indices, tile by tile (``r_block`` rows x ``q_block`` queries), on the
    tensors' device."""
    import torch

    best_v = torch.full((len(q_all), kk), float("inf"), device=q_all.device)
    best_i = torch.full((len(q_all), kk), -1, dtype=torch.long, device=q_all.device)
    for rs in range(0, len(centred), r_block):
        r, rn = centred[rs : rs + r_block], rn_all[rs : rs + r_block]
        for qs in range(0, len(q_all), q_block):
            q, qn = q_all[qs : qs + q_block], qn_all[qs : qs + q_block]
            d2 = torch.addmm(rn.unsqueeze(0), q, r.T, alpha=-2.0).add_(qn.unsqueeze(1))
            v, j = torch.topk(d2, min(kk, d2.shape[1]), dim=1, largest=False, sorted=False)
            best_v[qs : qs + q_block], best_i[qs : qs + q_block] = _merge(
                best_v[qs : qs + q_block], best_i[qs : qs + q_block], v, j + rs, kk
            )
    return best_v, best_i


def _merge(best_v: Any, best_i: Any, v: Any, j: Any, kk: int) -> tuple[Any, Any]:
    import torch

    allv = torch.cat([best_v, v], dim=1)
    alli = torch.cat([best_i, j], dim=1)
    mv, mj = torch.topk(allv, min(kk, allv.shape[1]), dim=1, largest=False, sorted=False)
    return mv, torch.gather(alli, 1, mj)


class _ClusterState:
    """Reference rows sorted by k-means cluster, with centroids and radii (see TorchExactIndex)."""

    #: above this fraction of the (query, row) pairs left after pruning, brute force is faster
    #: (the pruned path runs many small GEMMs, several times slower per pair)
    MAX_WORK_FRACTION = 0.35
    #: k-means: Lloyd iterations, and rows of the subsample per cluster
    ITERS = 4
    SAMPLE_PER_CLUSTER = 12

    def __init__(self, data: np.ndarray, n_clusters: int, *, seed: int) -> None:
        import torch

        x = torch.from_numpy(data)
        n, dim = x.shape
        self.dim = dim
        self.n_clusters = n_clusters
        g = torch.Generator().manual_seed(seed)
        sub = x[torch.randperm(n, generator=g)[: min(n, self.SAMPLE_PER_CLUSTER * n_clusters)]]
        cent = sub[torch.randperm(len(sub), generator=g)[:n_clusters]].clone()
        for _ in range(self.ITERS):
            lab = _nearest(sub, cent)
            sums = torch.zeros_like(cent).index_add_(0, lab, sub)
            cnt = torch.bincount(lab, minlength=n_clusters)
            nz = cnt > 0
            cent[nz] = sums[nz] / cnt[nz].unsqueeze(1).to(sums.dtype)
        lab = _nearest(x, cent)
        order = torch.argsort(lab, stable=True)
        self.counts = torch.bincount(lab, minlength=n_clusters)
        self.offsets = torch.zeros(n_clusters + 1, dtype=torch.long)
        self.offsets[1:] = torch.cumsum(self.counts, 0)
        self.order = order  # sorted position -> original row index
        self.centroids = cent
        self.cn = (cent * cent).sum(1)
        lab_sorted = lab[order]
        # rows centred on their own centroid (the screening coordinates), and their norms
        self.rows = (x[order] - cent[lab_sorted]).contiguous()
        self.rn = (self.rows * self.rows).sum(1)
        # radii measured exactly (float64) on the uncentred rows, rounded up a little
        dist64 = (x[order].double() - cent[lab_sorted].double()).norm(dim=1)
        radius = torch.zeros(n_clusters, dtype=torch.float64).scatter_reduce_(
            0, lab_sorted, dist64, "amax", include_self=True
        )
        self.radius = radius * (1 + 1e-6) + 1e-12
        self.rmax2 = torch.zeros(n_clusters).scatter_reduce_(
            0, lab_sorted, self.rn, "amax", include_self=True
        )
        self.n = n
        self.work_fraction = float("nan")  # of the last search: pairs compared / all pairs

    def search(self, qc: Any, k: int, kk: int) -> tuple[Any, Any, Any] | None:
        """Screen the queries ``qc`` with pruning; ``None`` if pruning would not pay."""
        import torch

        gamma = _gamma(self.dim)
        nq = len(qc)
        qn = (qc * qc).sum(1)
        # m[q, c] ~ ||q - c||^2, within gamma * (||q||^2 + ||c||^2)
        m = torch.addmm(self.cn.unsqueeze(0), qc, self.centroids.T, alpha=-2.0).add_(qn.unsqueeze(1))
        own = torch.argmin(m, dim=1)
        best_v = torch.full((nq, kk), float("inf"))
        best_i = torch.full((nq, kk), -1, dtype=torch.long)
        tol = torch.zeros(nq)  # gamma * max over visited clusters of (||q - c||^2 + max ||r - c||^2)
        # stage 1: each query against its own (nearest) cluster
        q_order = torch.argsort(own, stable=True)
        self._visit(qc, q_order, torch.bincount(own, minlength=self.n_clusters), best_v, best_i, tol, kk)
        # stage 2: the other clusters that may hold a row closer than the k-th found so far. With
        # u = the k-th screened distance^2 plus its error bound (>= the true k-th distance^2), a
        # cluster (centroid c, radius rho) can only if ||q - c|| - rho <= sqrt(u), i.e.
        #   ||q - c||^2 <= (sqrt(u) + rho)^2,  and ||q - c||^2 >= m - gamma (||q||^2 + ||c||^2):
        #   m - 2 sqrt(u) rho - (rho^2 + gamma ||c||^2) <= u + gamma ||q||^2.
        # sqrt(u) and rho are rounded up (slack 1e-5) to absorb float32 rounding of this test.
        kth = torch.kthvalue(best_v, k, dim=1).values  # best_v is not sorted
        u = kth + tol
        s_q = u.clamp_min(0).sqrt().mul_(1 + 1e-5).add_(1e-6)
        rho = self.radius.float().mul_(1 + 1e-5).add_(1e-6)
        m.addr_(s_q, rho, alpha=-2.0).sub_((rho * rho + 2 * gamma * self.cn).unsqueeze(0))
        need = m <= (s_q * s_q + 2 * gamma * qn).unsqueeze(1)
        del m
        need[torch.arange(nq), own] = False
        pairs = torch.nonzero(need)  # (query, cluster), sorted by query
        del need
        self.work_fraction = (int(self.counts[pairs[:, 1]].sum()) + nq * self.n / self.n_clusters) / (nq * self.n)
        if self.work_fraction > self.MAX_WORK_FRACTION:
            return None  # pruning does not pay: blocked brute force is faster
        by_cluster = torch.argsort(pairs[:, 1], stable=True)
        self._visit(
            qc,
            pairs[by_cluster, 0],
            torch.bincount(pairs[:, 1], minlength=self.n_clusters),
            best_v,
            best_i,
            tol,
            kk,
        )
        return best_v, best_i, tol

    def _visit(
        self, qc: Any, q_idx: Any, q_counts: Any, best_v: Any, best_i: Any, tol: Any, kk: int
    ) -> None:
        """Compare the queries ``q_idx`` (grouped by cluster, ``q_counts`` per cluster) with the
        rows of their cluster, merging into ``best_v``/``best_i`` and raising ``tol`` in place."""
        import torch

        gamma = _gamma(self.dim)
        offsets = self.offsets.tolist()
        bounds = [0, *torch.cumsum(q_counts, 0).tolist()]
        rmax2 = self.rmax2.tolist()
        for c in torch.nonzero(q_counts).flatten().tolist():
            lo, hi = offsets[c], offsets[c + 1]
            sel = q_idx[bounds[c] : bounds[c + 1]]
            if hi == lo:
                continue
            q = qc.index_select(0, sel).sub_(self.centroids[c])
            qn = (q * q).sum(1)
            d2 = torch.addmm(self.rn[lo:hi].unsqueeze(0), q, self.rows[lo:hi].T, alpha=-2.0)
            d2.add_(qn.unsqueeze(1))
            tol[sel] = torch.maximum(tol[sel], gamma * (qn + rmax2[c]))
            bv = best_v.index_select(0, sel)
            # only queries with a row here better than their worst kept candidate need a merge
            # (amin is ~10x cheaper than topk, and most visited clusters improve nothing)
            better = torch.amin(d2, dim=1) < bv.amax(dim=1)
            if not bool(better.all()):
                keep = torch.nonzero(better).flatten()
                if len(keep) == 0:
                    continue
                sel, d2, bv = sel[keep], d2.index_select(0, keep), bv.index_select(0, keep)
            v, j = torch.topk(d2, min(kk, hi - lo), dim=1, largest=False, sorted=False)
            mv, mi = _merge(bv, best_i.index_select(0, sel), v, self.order[j + lo], kk)
            best_v[sel] = mv
            best_i[sel] = mi


def _nearest(x: Any, cent: Any) -> Any:
    """Index of the nearest centroid of each row, near enough: only used for clustering, where any assignment gives
    the same search results. On int8 (the rows rounded to the centroids' grid) where torch can: a third of the
    clustering's time on 100k x 949 (1.0 -> 0.6 CPU-s); else float32."""
    import torch

    out = torch.empty(len(x), dtype=torch.long)
    if _int_mm_available():
        from fedsynth.audit.quantized import Int8Screen

        screen = Int8Screen(cent.numpy())
        for s in range(0, len(x), 16384):
            a, _, _ = screen.queries(x[s : s + 16384].numpy())
            out[s : s + 16384] = torch.argmax(torch._int_mm(a, screen.rows.T), dim=1)
        return out
    cn = (cent * cent).sum(1)
    for s in range(0, len(x), 16384):
        d2 = torch.addmm(cn.unsqueeze(0), x[s : s + 16384], cent.T, alpha=-2.0)
        out[s : s + 16384] = torch.argmin(d2, dim=1)
    return out


class _torch_threads:
    """Context manager: torch intra-op threads set to ``n`` (``None``: unchanged)."""

    def __init__(self, n: int | None) -> None:
        self.n = n
        self.work_fraction = float("nan")  # of the last search: pairs compared / all pairs
        self.before: int | None = None

    def __enter__(self) -> None:
        if self.n is not None:
            import torch

            self.before = torch.get_num_threads()
            torch.set_num_threads(self.n)

    def __exit__(self, *exc: object) -> None:
        if self.before is not None:
            import torch

            torch.set_num_threads(self.before)


def _check_k(k: int, ntotal: int) -> None:
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if k > ntotal:
        raise ValueError(f"asked for {k} neighbours but the index holds only {ntotal} rows")


def make_index(
    x: np.ndarray, *, backend: Backend = "auto", threads: int | None = None, device: str = "cpu"
) -> NearestNeighborIndex:
    """Build an index over the rows of ``x``.

    Args:
        x: array of shape ``(n, d)``.
        backend: ``"auto"`` (default: the fastest exact backend available, i.e. ``"torch"``, else
            ``"faiss"``), ``"torch"`` (:class:`TorchExactIndex`), ``"faiss"``
            (:class:`FaissFlatL2Index`) or ``"numpy"`` (exact reference implementation).
        threads: torch intra-op threads for the torch backend (``None``: torch's setting).
        device: torch device of the torch backend's screening (``"cuda"`` for a GPU; the others ignore it).

    Returns:
        A populated :class:`NearestNeighborIndex`.

    Raises:
        ValueError: unknown backend.
    """
    arr = _as_f32(x)
    if backend == "auto":
        backend = "torch" if _has_module("torch") else "faiss"
    index: NearestNeighborIndex
    if backend == "torch":
        index = TorchExactIndex(arr.shape[1], threads=threads, device=device)
    elif backend == "faiss":
        index = FaissFlatL2Index(arr.shape[1])
    elif backend == "numpy":
        index = NumpyExactIndex(arr.shape[1])
    else:
        raise ValueError(f"backend must be one of {', '.join(map(repr, BACKENDS))}, got {backend!r}")
    index.add(arr)
    return index


def _device_type(device: str) -> str:
    import torch

    return torch.device(device).type


@cache
def _int_mm_available() -> bool:
    from fedsynth.audit.quantized import int_mm_available

    return int_mm_available()


def _has_module(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None
