"""Audit DCR, 100k synthetic vs 100k real rows: torch (the auditor's default), FAISS and NumPy brute force; the
auditor's default and FAISS also with a DP-trained generator's rows as the queries, on one thread and on two."""

from __future__ import annotations

import os
import time

import numpy as np

from bench.data import rhc_encoded, rows_like
from bench.timing import Figure
from fedsynth.audit.distance import dcr
from fedsynth.audit.index import make_index

TARGET_ROWS = 100_000
#: DP-SGD steps of the generator whose rows are the last DCR figure's queries (25 rounds of 40 local steps).
GENERATOR_STEPS = 1000


def generator_rows(n: int, *, steps: int = GENERATOR_STEPS, seed: int = 0) -> np.ndarray:
    """``n`` rows as the auditor sees a generator's output: the default denoiser DP-trained on RHC for ``steps``
    book-keeping steps (noise multiplier 1), sampled with DDIM-10, decoded to a table and encoded again (so the
    categorical columns are exact one-hots and the numbers within bounds)."""
    import torch

    from fedsynth.common.config import RunConfig
    from fedsynth.common.demo_data import rhc_schema
    from fedsynth.common.encoding import TabularTransform
    from fedsynth.common.model import TabularUNet1D
    from fedsynth.common.sampling import make_sampler, sample
    from fedsynth.common.training import train_dp

    cfg = RunConfig()
    data = rhc_encoded()
    torch.manual_seed(seed)
    model = TabularUNet1D(cfg.model_config(data.shape[1]))
    trained = train_dp(model, data, scheduler_config=cfg.scheduler_config(), noise_multiplier=1.0,
                       max_grad_norm=cfg.max_grad_norm, batch_size=cfg.batch_size, steps=steps, lr=cfg.lr,
                       delta=cfg.target_delta, seed=seed, grad_sample_mode="bookkeeping")
    model.load_state_dict(trained.state_dict)
    model.eval()
    encoded = sample(model, make_sampler(cfg.scheduler_config(), "ddim"), n, n_features=data.shape[1],
                     num_inference_steps=10, batch_size=4096, generator=torch.Generator().manual_seed(seed + 1))
    t = TabularTransform(rhc_schema())
    return t.transform(t.inverse_transform(np.asarray(encoded, dtype=np.float32)))


def _timed_search(
    reference: np.ndarray, queries: np.ndarray, **index_kw: object
) -> tuple[np.ndarray, np.ndarray, float]:
    """Each query's nearest reference row ``(distances, indices)`` and the seconds it took, the index build included
    (``index_kw`` go to :func:`make_index`)."""
    start = time.perf_counter()
    d, i = make_index(reference, **index_kw).search(queries, 1)  # type: ignore[arg-type]
    return d, i, time.perf_counter() - start


def _agreement(d: np.ndarray, i: np.ndarray, d_ref: np.ndarray, i_ref: np.ndarray) -> str:
    return f"max |d - d_numpy| = {float(np.abs(d - d_ref).max()):.1e}, {int((i != i_ref).sum())} neighbour(s) differ"


def run(*, quick: bool, device: str, rows: int | None = None) -> list[Figure]:
    """Time ``dcr(synthetic, real)`` on ``rows`` x ``rows`` with the torch and FAISS backends; NumPy on a
    query subset.

    NumPy's brute force is measured on fewer queries against the full reference and scaled linearly
    (its cost is linear in the number of queries); it is the baseline of the ratios (speed-ups) and
    the reference the other backends' distances and neighbour indices are checked against. Each
    timing includes building the index. The torch backend (``backend="auto"``, what the auditor
    uses) runs with torch's intra-op threads (``--threads``); FAISS (faiss-cpu) with its OpenMP
    threads (``OMP_NUM_THREADS``, which the bench sets to ``--threads`` unless already set). Both
    run on the CPU; with a GPU ``device`` the torch backend is also timed there (brute-force float32
    screening on the GPU, float64 re-ranking on the CPU), on both row sets.
    """
    base_rows = rhc_encoded()
    n = rows or (2_000 if quick else TARGET_ROWS)
    real = rows_like(base_rows, n, seed=1)
    synthetic = rows_like(base_rows, n, seed=2)
    n_np = max(200, n // 50)
    for backend in ("auto", "faiss"):  # warm up: imports and first-call initialisation, not timed
        make_index(real[:64], backend=backend).search(synthetic[:8], 1)  # type: ignore[arg-type]

    baseline = "NumPy brute force"
    goal = "100k x 100k < 10 s"
    d_np, i_np, t_np = _timed_search(real, synthetic[:n_np], backend="numpy")
    t_np *= n / n_np
    d_torch, i_torch, t_torch = _timed_search(real, synthetic, backend="auto")
    d_faiss, i_faiss, t_faiss = _timed_search(real, synthetic, backend="faiss")

    # a copied record must come out at distance 0: copy some real rows into the synthetic set
    leaked = synthetic.copy()
    leaked[: n // 100] = real[: n // 100]
    d_leak = dcr(leaked[: max(1, n // 100)], real)
    zero = f"{int((d_leak == 0).sum())}/{len(d_leak)} copied rows at distance exactly 0"

    # the torch backend's pruning pays off on clustered rows (the jitter-0.05 resamples above are); time it
    # again on rows six times as noisy, where it has to fall back to brute force, to show the other end
    loose_real = rows_like(base_rows, n, seed=3, jitter=0.3)
    loose_syn = rows_like(base_rows, n, seed=4, jitter=0.3)
    *_, t_loose = _timed_search(loose_real, loose_syn, backend="auto")

    # the auditor's real case: a generator's rows (decoded and encoded again) against the real rows
    gen_rows = generator_rows(n, steps=20 if quick else GENERATOR_STEPS)
    d_gen, i_gen, t_gen = _timed_search(real, gen_rows, backend="auto")
    d_gen_faiss, i_gen_faiss, t_gen_faiss = _timed_search(real, gen_rows, backend="faiss")
    d_gen_np, i_gen_np, _ = _timed_search(real, gen_rows[:n_np], backend="numpy")
    # the issue's budget is two cores: the same two searches with two threads (torch's intra-op, FAISS' OpenMP)
    two: list[Figure] = []
    if (os.cpu_count() or 1) >= 2:
        import faiss

        *_, t_two = _timed_search(real, gen_rows, backend="auto", threads=2)
        before = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(2)
        try:
            *_, t_two_faiss = _timed_search(real, gen_rows, backend="faiss")
        finally:
            faiss.omp_set_num_threads(before)
        two = [
            Figure("audit", f"torch exact DCR {n:,} x {n:,}, generator rows, 2 threads", t_two, "s", t_np / t_two,
                   baseline, goal, "the auditor's default with threads=2"),
            Figure("audit", f"FAISS IndexFlatL2 DCR {n:,} x {n:,}, generator rows, 2 threads", t_two_faiss, "s",
                   t_np / t_two_faiss, baseline, goal, "OpenMP threads = 2"),
        ]

    gpu: list[Figure] = []
    if device != "cpu":
        make_index(real[:64], backend="torch", device=device).search(synthetic[:8], 1)  # CUDA context, kernels
        for label, (ref, qry) in {"": (real, synthetic), ", jitter 0.3": (loose_real, loose_syn)}.items():
            d_gpu, i_gpu, t_gpu = _timed_search(ref, qry, backend="torch", device=device)
            check = _agreement(d_gpu[:n_np], i_gpu[:n_np], d_np, i_np) if not label else "brute force on the GPU"
            gpu.append(Figure("audit", f"torch exact DCR {n:,} x {n:,} on {device}{label}", t_gpu, "s",
                              t_np / t_gpu, baseline, goal, f"index built and searched on the GPU; {check}"))
    return [
        Figure("audit", baseline, t_np, "s", note=f"{n_np} of {n:,} queries timed, scaled to {n:,}; float64"),
        Figure("audit", f"torch exact DCR {n:,} x {n:,}", t_torch, "s", t_np / t_torch, baseline, goal,
               f"auditor default (backend auto): pruned float32 GEMM + float64 re-check; speed-up shown as "
               f"ratio; {_agreement(d_torch[:n_np], i_torch[:n_np], d_np, i_np)}; {zero}"),
        Figure("audit", f"FAISS IndexFlatL2 DCR {n:,} x {n:,}", t_faiss, "s", t_np / t_faiss, baseline, goal,
               f"speed-up shown as ratio; {_agreement(d_faiss[:n_np], i_faiss[:n_np], d_np, i_np)}"),
        Figure("audit", f"torch exact DCR {n:,} x {n:,}, jitter 0.3 (less clustered)", t_loose, "s",
               t_np / t_loose, baseline, goal,
               "same backend on rows 6x as noisy: little to prune, so near brute-force cost; NumPy scaled from "
               "the clustered run (brute force does not depend on the data)"),
        Figure("audit", f"torch exact DCR {n:,} x {n:,}, generator rows as queries", t_gen, "s", t_np / t_gen,
               baseline, goal,
               f"queries: rows of the default denoiser after {20 if quick else GENERATOR_STEPS} DP steps on RHC "
               f"(noise multiplier 1), DDIM 10, decoded and encoded again as the auditor does; reference: the "
               f"clustered real rows above; median DCR {float(np.median(d_gen)):.3f} (real vs real resamples: "
               f"{float(np.median(d_torch)):.3f}); where pruning does not pay (rows this far from every real "
               f"row) the index screens by int8 GEMM; {_agreement(d_gen[:n_np], i_gen[:n_np], d_gen_np, i_gen_np)}"),
        Figure("audit", f"FAISS IndexFlatL2 DCR {n:,} x {n:,}, generator rows", t_gen_faiss, "s", t_np / t_gen_faiss,
               baseline, goal, f"{_agreement(d_gen_faiss[:n_np], i_gen_faiss[:n_np], d_gen_np, i_gen_np)}"),
        *two,
    ] + gpu
