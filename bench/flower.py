"""Flower overhead: one round on the Deployment Engine against the same local training without Flower.

Both sides run :func:`fedsynth.client.site.train_round` (load + validate the table, ledger, ``train_dp``) with
the same run config. The Flower figure is the wall time from ``flwr run`` to the run's end (ServerApp start,
one ``flwr-clientapp`` process per site and message, aggregation, artifact export); SuperLink/SuperNode
start-up is reported on its own line. Clientapps of different sites run concurrently; the baseline trains
the sites one after another in this process, so the ratio is, if anything, in Flower's favour on 2 cores.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import torch

from bench.timing import Figure
from fedsynth.common.config import RunConfig


def _write_sites(root: Path, n_sites: int) -> tuple[list[Path], Path]:
    from fedsynth.common.demo_data import load_rhc, rhc_schema

    df = load_rhc()
    schema_path = root / "schema.json"
    rhc_schema().save(schema_path)
    paths = []
    for i in range(n_sites):
        p = root / f"site{i}.csv"
        df.iloc[i::n_sites].to_csv(p, index=False)
        paths.append(p)
    return paths, schema_path


def _local_round(paths: list[Path], schema_path: Path, run_config: dict[str, object], root: Path) -> float:
    from fedsynth.client.site import RoundRequest, SiteSettings, run_config_from, train_round
    from fedsynth.common.encoding import TabularTransform
    from fedsynth.common.model import TabularUNet1D
    from fedsynth.common.schema import Schema

    schema = Schema.load(schema_path)
    cfg = run_config_from(run_config)
    state = TabularUNet1D(cfg.model_config(TabularTransform(schema).n_features)).state_dict()
    start = time.perf_counter()
    for i, p in enumerate(paths):
        settings = SiteSettings(data_path=p, epsilon_budget=1e6, ledger_path=root / f"local-ledger{i}.json",
                                site_id=f"site{i}")
        train_round(settings, RoundRequest(run_key="bench-local", server_round=1, schema=schema, run_config=cfg,
                                           state_dict=state))
    return time.perf_counter() - start


def run(*, quick: bool, device: str, local_steps: int | None = None) -> list[Figure]:
    """One federated round with 2 sites vs. the same two local trainings in-process."""
    from fedsynth.cli.federation import Federation, SiteSpec

    steps = local_steps or (5 if quick else 40)
    # no public warm start: the local baseline has none either (it is server start-up work, not round work)
    run_config = {**RunConfig().to_user_config(), "num-server-rounds": 1, "local-steps": steps,
                  "noise-multiplier": 1.0, "min-train-nodes": 2, "min-available-nodes": 2,
                  "public-pretrain-steps": 0}
    with tempfile.TemporaryDirectory(prefix="fedsynth-bench-") as tmp:
        root = Path(tmp)
        paths, schema_path = _write_sites(root, 2)
        local = _local_round(paths, schema_path, run_config, root)
        # clientapps are separate processes: give them the thread count this process uses
        os.environ.setdefault("OMP_NUM_THREADS", str(torch.get_num_threads()))
        sites = [SiteSpec(f"site{i}", p, 1e6, ledger_path=root / f"fl-ledger{i}.json") for i, p in enumerate(paths)]
        with Federation(root / "fed", tls=False, node_auth=False, echo=None) as fed:
            start = time.perf_counter()
            fed.start(sites)
            startup = time.perf_counter() - start
            times: dict[int, float] = {}
            for rounds in (1, 3):  # the difference isolates the cost of a round from per-run fixed costs
                start = time.perf_counter()
                run_id = fed.submit(run_config={**run_config, "num-server-rounds": rounds,
                                                "output-dir": str(root / f"server-{rounds}"),
                                                "schema-path": str(schema_path)})
                status = fed.wait(run_id, timeout=1800)
                times[rounds] = time.perf_counter() - start
                if status != "finished:completed":
                    break
            flower = times[1]
            per_round = (times.get(3, float("nan")) - times[1]) / 2
    if status != "finished:completed":
        raise RuntimeError(f"bench federation ended with status {status}")
    baseline = "local train_round x2 (no Flower)"
    note = f"2 sites x {steps} DP steps, batch {run_config['batch-size']}"
    return [
        Figure("flower", baseline, local, "s", note=note),
        Figure("flower", "1-round run, Deployment Engine (with run start-up and export)", flower, "s", flower / local,
               baseline, "", f"{note}; status {status}"),
        Figure("flower", "each further round, Deployment Engine ((3-round run - 1-round run) / 2)", per_round, "s",
               per_round / local, baseline, "overhead < 10% (ratio < 1.10)", note),
        Figure("flower", "SuperLink + 2 SuperNodes start-up", startup, "s", note="once per federation, not per round"),
    ]
