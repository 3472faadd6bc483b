"""Exact nearest-row screening on 8-bit integers: the int8 GEMM of :class:`~fedsynth.audit.index.TorchExactIndex`.

Why integers: a brute-force screen of 100k x 100k rows is one big matrix product. In float32 its rounding error
depends on how the BLAS library sums, so the exact re-check has to assume a worst case. Here both sides are
rounded to int8 on a common grid (step ``s``) and multiplied by ``torch._int_mm``, which accumulates in int32:
the products are exact integers, about 4x faster than float32 on a CPU with AVX-512 VNNI. The only error is the
rounding of the inputs, and that is measured row by row:

* a row ``x`` is stored as ``s * a`` with ``a`` integer and ``e(x) = ||x - s a||`` computed in float64;
* for a query ``q`` and a reference row ``r``: ``| ||q - r|| - s ||a - b|| | <= e(q) + e(r)`` (triangle
  inequality), and ``||a - b||^2`` is an exact integer.

So a row can only be (or tie) the nearest if its integer distance lies within ``2 (e(q) + max e(r)) / s`` of the
best integer distance (for ``k`` neighbours: of the ``k``-th best); those few rows are cut again with their own
``e(r)`` and re-measured in float64 and ranked, as in every other path of the index. Rows encoded by
:class:`~fedsynth.common.encoding.TabularTransform` lie in [-1, 1] with their one-hot and binary features at
exactly +-1, which the grid ``s = 1 / 127`` holds without error: only the numeric features contribute to ``e``.

The reference's squared norms ride along in the product: each reference row carries the digits of
``h = (||b||^2 - C) // 2`` in extra columns (base 127, ``C`` the smallest norm), each query the constants
``-127`` and ``-1`` there, so one ``_int_mm`` gives ``P = a.b - h`` and ``||a - b||^2 = ||a||^2 + C - 2 P + {0, 1}``
(the ``{0, 1}`` from halving an odd number, kept in the band): the first pass is the product and an ``amax`` per
group of rows, the second re-multiplies the few (query, group) pairs that can hold a candidate
(:meth:`Int8Screen.band_search`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: largest int8 magnitude used (symmetric grid, so -128 is never produced)
Q = 127
#: slack on the band in integer units, for float64 rounding of the band itself
_SLACK_REL, _SLACK_ABS = 1e-9, 1e-6


def int_mm_available() -> bool:
    """Whether this torch has a working CPU ``torch._int_mm`` (int8 x int8 -> int32)."""
    import torch

    if not hasattr(torch, "_int_mm"):
        return False
    try:
        a = torch.ones((1, 4), dtype=torch.int8)
        return int(torch._int_mm(a, a.T)[0, 0]) == 4
    except (RuntimeError, NotImplementedError):
        return False


class Int8Screen:
    """The reference rows on an int8 grid, with their norm digits and rounding errors.

    Args:
        data: reference rows, float32 ``(n, d)``.

    Attributes:
        GROUP: rows per group of the first pass (see :meth:`band_search`).
        MIN_REVISIT: groups per query the second pass may always revisit.
        TOP_ENTRIES: (query, group) maxima held at a time (int32: 64 MiB); more queries go in chunks.
        scale: grid step ``s`` (``max |x| / 127`` of the reference).
        width: columns of the int8 rows: features, norm digits and zero padding to a multiple of 4.
    """

    GROUP = 512
    MIN_REVISIT = 16
    TOP_ENTRIES = 1 << 24

    def __init__(self, data: np.ndarray) -> None:
        import torch

        n, self.dim = data.shape
        peak = float(np.abs(data).max()) if data.size else 0.0
        self.scale = peak / Q if peak > 0 else 1.0
        b, err = self._round(data)
        rn = (b * b).sum(1)  # exact in int64
        self.offset = int(rn.min()) if n else 0  # C
        h = (rn - self.offset) // 2
        hi, lo = np.divmod(h, Q)  # h = 127 * hi + lo
        self.n_digits = int(-(-int(hi.max()) // Q)) if n and hi.max() > 0 else 0
        self.width = -(-(self.dim + self.n_digits + 1) // 4) * 4
        rows = np.zeros((n, self.width), dtype=np.int8)
        rows[:, : self.dim] = b
        for t in range(self.n_digits):  # hi spread over columns of at most 127 each
            rows[:, self.dim + t] = np.clip(hi - Q * t, 0, Q)
        rows[:, self.dim + self.n_digits] = lo
        self.rows = torch.from_numpy(rows)
        self.parity = torch.from_numpy(rn - self.offset - 2 * h)  # 0 or 1: ||b||^2 = C + 2 h + parity
        self.err = torch.from_numpy(err)
        self.err_max = float(err.max()) if n else 0.0
        #: int32 products stay exact while every |P| < 2**31
        self.exact = self.dim * Q * Q + Q * Q * (self.n_digits + 1) < 2**31

    @property
    def n_groups(self) -> int:
        """Groups of :attr:`GROUP` rows (the last one may be partial)."""
        return -(-len(self.rows) // self.GROUP)

    def _round(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Grid integers of ``x`` (int64) and each row's rounding error ``||x - s a||`` (float64)."""
        x64 = np.asarray(x, dtype=np.float64)
        a = np.clip(np.rint(x64 / self.scale), -Q, Q)
        err = np.sqrt(((x64 - a * self.scale) ** 2).sum(1))
        return a.astype(np.int64), err

    def queries(self, q: np.ndarray) -> tuple[Any, Any, Any]:
        """Int8 query rows (with the constants that subtract the norm digits), ``||a||^2`` and rounding errors."""
        import torch

        a, err = self._round(q)
        rows = np.zeros((len(q), self.width), dtype=np.int8)
        rows[:, : self.dim] = a
        rows[:, self.dim : self.dim + self.n_digits] = -Q
        rows[:, self.dim + self.n_digits] = -1
        return torch.from_numpy(rows), torch.from_numpy((a * a).sum(1)), torch.from_numpy(err)

    def threshold(self, best: Any, a_sq: Any, err_q: Any) -> Any:
        """Lowest product ``P`` a row may have and still be (or tie) the nearest, given the best ``P`` so far.

        With ``m = ||a||^2 + C - 2 best + 1`` (>= the best row's squared integer distance) and
        ``delta = 2 (e(q) + max e(r)) / s``: a row needs ``sqrt(||a||^2 + C - 2 P) <= sqrt(m) + delta``.
        """
        import torch

        m = (a_sq + self.offset + 1 - 2 * best.long()).double().clamp_min(0)
        delta = 2.0 * (err_q + self.err_max) / self.scale
        band = (1.0 + 2.0 * delta * m.sqrt() + delta * delta) / 2.0
        band = band * (1 + _SLACK_REL) + _SLACK_ABS
        return torch.floor(best.double() - band).long()

    def band_search(
        self, q: np.ndarray, k: int = 1, *, q_block: int, r_block: int, max_revisit: float
    ) -> tuple[Any, Any] | None:
        """Every (query, reference row) pair that may be among the query's ``k`` nearest: ``(query indices, row
        indices)``, at least ``k`` per query.

        Two passes. The first multiplies every query with every row, tile by tile, and keeps only the largest
        ``P`` of each group of :attr:`GROUP` consecutive rows. With each query's best ``P`` then known, only the
        groups whose largest ``P`` reaches the query's threshold can hold a candidate; the second pass multiplies
        those (query, group) pairs again and keeps the rows at or above the threshold. For ``k > 1`` the threshold
        comes from the ``k``-th largest group maximum: ``k`` distinct rows at least that good.
        ``None`` if the second pass would revisit more than ``max_revisit`` of the groups (and more than
        :attr:`MIN_REVISIT` per query) on average: rounding too coarse for these rows' distances, the caller screens
        another way, as for ``k`` above the number of groups.
        """
        import torch

        n_groups = self.n_groups
        if k > n_groups:
            return None
        step = max(1, self.TOP_ENTRIES // n_groups)  # queries per chunk: bounds the (query, group) table
        rows, cols = [], []
        for s in range(0, len(q), step):
            got = self._band_chunk(q[s : s + step], k, q_block=q_block, r_block=r_block, max_revisit=max_revisit)
            if got is None:
                return None
            rows.append(got[0] + s)
            cols.append(got[1])
        return torch.cat(rows), torch.cat(cols)

    def _band_chunk(
        self, q: np.ndarray, k: int, *, q_block: int, r_block: int, max_revisit: float
    ) -> tuple[Any, Any] | None:
        """:meth:`band_search` for one chunk of queries."""
        import torch

        a, a_sq, err_q = self.queries(q)
        m, n, g = len(a), len(self.rows), self.GROUP
        r_block = max(g, r_block // g * g)  # whole groups per tile
        n_groups = -(-n // g)
        top = torch.empty((m, n_groups), dtype=torch.int32)  # largest P per (query, group)
        bufs: dict[tuple[int, int], Any] = {}
        for rs in range(0, n, r_block):
            r = self.rows[rs : rs + r_block].T
            full = r.shape[1] // g
            g0 = rs // g
            for qs in range(0, m, q_block):
                aq = a[qs : qs + q_block]
                shape = (len(aq), r.shape[1])
                out = bufs.get(shape)
                if out is None:
                    out = bufs[shape] = torch.empty(shape, dtype=torch.int32)
                p = torch._int_mm(aq, r, out=out)
                if full:
                    blocks = p[:, : full * g].view(len(aq), full, g)
                    torch.amax(blocks, dim=2, out=top[qs : qs + len(aq), g0 : g0 + full])
                if full * g < r.shape[1]:  # the last, partial group
                    top[qs : qs + len(aq), g0 + full] = torch.amax(p[:, full * g :], dim=1)
        best = torch.amax(top, dim=1) if k == 1 else torch.topk(top, k, dim=1, sorted=False).values.amin(dim=1)
        thr = self.threshold(best, a_sq, err_q).clamp_min(-(2**31)).int()
        pairs = torch.nonzero((top >= thr.unsqueeze(1)).T.contiguous())  # (group, query), sorted by group
        del top
        if len(pairs) > max(max_revisit * n_groups, self.MIN_REVISIT) * m:
            return None
        g_of, q_of = pairs[:, 0], pairs[:, 1]
        bounds = [0, *torch.cumsum(torch.bincount(g_of, minlength=n_groups), 0).tolist()]
        rows, cols, prods = [], [], []
        for grp in torch.unique(g_of).tolist():
            sel = q_of[bounds[grp] : bounds[grp + 1]]
            p = torch._int_mm(a.index_select(0, sel), self.rows[grp * g : (grp + 1) * g].T)
            i, j = torch.nonzero(p >= thr.index_select(0, sel).unsqueeze(1), as_tuple=True)
            rows.append(sel[i])
            cols.append(j + grp * g)
            prods.append(p[i, j])
        row, col, prod = torch.cat(rows), torch.cat(cols), torch.cat(prods)
        # Each candidate's integer distance is exact, and so are its own rounding errors: keep a row only if
        # its lower bound ||a - b|| s - e(q) - e(r) reaches no further than the query's k-th smallest upper bound.
        dist = (a_sq[row] + self.offset - 2 * prod.long() + self.parity[col]).double().sqrt() * self.scale
        slack = err_q[row] + self.err[col]
        upper = _kth_per_row(row.numpy(), (dist + slack).numpy(), m, k)
        keep = dist - slack <= torch.from_numpy(upper)[row] * (1 + _SLACK_REL) + _SLACK_ABS * self.scale
        return row[keep], col[keep]


def _kth_per_row(row: np.ndarray, value: np.ndarray, m: int, k: int) -> np.ndarray:
    """The ``k``-th smallest ``value`` of each of ``m`` rows (every row has at least ``k`` entries)."""
    return value[first_k_per_row(row, m, k, value)[:, -1]]


def first_k_per_row(row: np.ndarray, m: int, k: int, *keys: np.ndarray) -> np.ndarray:
    """Positions ``(m, k)`` of the first ``k`` entries of each of ``m`` rows, ordered by ``keys`` within a row
    (the last key first, as :func:`numpy.lexsort`). Every row has at least ``k`` entries."""
    o = np.lexsort((*keys, row))
    start = np.concatenate([[0], np.cumsum(np.bincount(row, minlength=m))[:-1]])
    return o[start[:, None] + np.arange(k)[None, :]]
