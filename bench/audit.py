"""Audit DCR: FAISS exact L2 search against brute-force NumPy, 100k synthetic vs 100k real rows."""

from __future__ import annotations

import time

from bench.data import rhc_encoded, rows_like
from bench.timing import Figure
from fedsynth.audit.distance import dcr

TARGET_ROWS = 100_000


def run(*, quick: bool, device: str, rows: int | None = None) -> list[Figure]:
    """Time ``dcr(synthetic, real)`` with the FAISS backend on ``rows`` x ``rows``; NumPy on a query subset.

    NumPy's brute force is measured on fewer queries against the full reference and scaled linearly
    (its cost is linear in the number of queries). FAISS runs on the CPU (faiss-cpu), whatever ``device``.
    """
    base_rows = rhc_encoded()
    n = rows or (2_000 if quick else TARGET_ROWS)
    real = rows_like(base_rows, n, seed=1)
    synthetic = rows_like(base_rows, n, seed=2)
    n_np = max(200, n // 50)

    start = time.perf_counter()
    d_np = dcr(synthetic[:n_np], real, backend="numpy")
    t_np = (time.perf_counter() - start) * n / n_np

    start = time.perf_counter()
    d_faiss = dcr(synthetic, real, backend="faiss")
    t_faiss = time.perf_counter() - start

    agree = float(abs(d_faiss[:n_np] - d_np).max())
    baseline = "NumPy brute force"
    return [
        Figure("audit", baseline, t_np, "s", note=f"{n_np} of {n:,} queries timed, scaled to {n:,}"),
        Figure("audit", f"FAISS IndexFlatL2 DCR {n:,} x {n:,}", t_faiss, "s", t_np / t_faiss, baseline,
               "100k x 100k < 10 s", f"speed-up shown as ratio; max |d_faiss - d_numpy| = {agree:.1e}"),
    ]
