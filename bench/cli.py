"""Command line of the bench: pick sections, run them, print one table of figures and ratios.

Usage (from the repository root)::

    .venv/bin/python -m bench                      # all sections, full sizes (about 10-15 min on 2 cores)
    .venv/bin/python -m bench --quick              # smoke run, small sizes, a few seconds per section
    .venv/bin/python -m bench --sections train,audit --threads 1 --device cuda
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict

from bench.timing import Figure

SECTIONS = ("train", "sample", "audit", "flower")


def main_parser() -> argparse.ArgumentParser:
    """The argument parser (kept separate so tests can inspect it)."""
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="small sizes: a smoke run, figures not meaningful")
    p.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}")
    p.add_argument("--device", default="cpu",
                   help="torch device (cpu, cuda): sampling and training run there; the audit adds GPU DCR rows")
    p.add_argument("--threads", type=int, default=1,
                   help="torch intra-op threads (default 1: fastest on a shared 2-core box, see RESULTS.md)")
    p.add_argument("--sample-rows", type=int, default=None, help="rows to sample (default 8192; quick 512)")
    p.add_argument("--audit-rows", type=int, default=None, help="rows per side for DCR (default 100000)")
    p.add_argument("--train-batch", type=int, default=None, help="expected batch of the train section (default 512)")
    p.add_argument("--train-lean", action="store_true",
                   help="train section: default denoiser only, non-private vs the default DP engine")
    p.add_argument("--local-steps", type=int, default=None, help="DP steps per site in the Flower round (default 40)")
    p.add_argument("--flower-sites", type=int, default=2,
                   help="sites in the Flower section (default 2; 1 leaves a core free for Flower's own processes)")
    p.add_argument("--json", default=None, help="also write the figures to this JSON file")
    return p


def machine_facts(device: str) -> dict[str, object]:
    """What the figures depend on."""
    import torch

    facts: dict[str, object] = {
        "nproc": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu": platform.processor() or platform.machine(),
        "device": device,
    }
    if hasattr(os, "getloadavg"):
        facts["loadavg_1m"] = round(os.getloadavg()[0], 2)
    if device.startswith("cuda") and torch.cuda.is_available():
        facts["gpu"] = torch.cuda.get_device_name(0)
    return facts


def format_table(figures: Sequence[Figure]) -> str:
    """A Markdown table of the figures."""
    lines = ["| section | figure | value | ratio | vs. baseline | goal | note |", "|---|---|---|---|---|---|---|"]
    for f in figures:
        value = f"{f.value:,.0f} {f.unit}" if f.value >= 100 else f"{f.value:.3g} {f.unit}"
        ratio = f"{f.ratio:.2f}" if f.ratio is not None else "baseline"
        lines.append(f"| {f.section} | {f.name} | {value} | {ratio} | {f.baseline} | {f.goal} | {f.note} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the selected sections and print the table; returns the exit code."""
    args = main_parser().parse_args(argv)
    wanted = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = sorted(set(wanted) - set(SECTIONS))
    if unknown:
        main_parser().error(f"unknown section(s) {unknown}; choose from {SECTIONS}")
    if args.flower_sites < 1:
        main_parser().error("--flower-sites must be >= 1")
    import torch

    torch.set_num_threads(args.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        main_parser().error("--device cuda asked for, but torch sees no GPU")
    extra = {"train": {"batch_size": args.train_batch, "lean": args.train_lean},
             "sample": {"rows": args.sample_rows}, "audit": {"rows": args.audit_rows},
             "flower": {"local_steps": args.local_steps, "sites": args.flower_sites}}
    figures: list[Figure] = []
    print(f"# fedsynth bench: {' '.join(['python -m bench', *(argv if argv is not None else sys.argv[1:])])}")
    print(f"# machine: {json.dumps(machine_facts(args.device))}", flush=True)
    for name in wanted:
        start = time.perf_counter()
        module = importlib.import_module(f"bench.{name}")
        got = module.run(quick=args.quick, device=args.device, **extra.get(name, {}))
        figures.extend(got)
        print(f"# {name}: {time.perf_counter() - start:.1f} s", flush=True)
        print(format_table(got), flush=True)
    print("\n" + format_table(figures))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump({"machine": machine_facts(args.device), "figures": [asdict(f) for f in figures]}, fh, indent=2)
    return 0


def entrypoint() -> None:
    """``python -m bench``."""
    sys.exit(main())
