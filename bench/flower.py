"""Flower overhead: rounds on the Deployment Engine against the same local training without Flower.

Both sides run :func:`fedsynth.client.site.train_round` (load + validate the table, ledger, ``train_dp``) with
the same run config. A Flower figure is the wall time from ``flwr run`` to the run's end (ServerApp start,
the sites' ClientApps, aggregation, checkpoints, artifact export); the cost of a further round is
``(3-round run - 1-round run) / 2``. Start-up (SuperLink, site agents, the executors' imports) is reported on
its own line. Two site set-ups are measured in the same run, against the same baseline:

* ``fedsynth site-agent`` (the default of :class:`~fedsynth.cli.federation.Federation` and of ``deploy/``):
  SuperNode with ``--isolation process`` and a 0.5 s idle poll, ClientApps forked from a warm executor;
* stock ``flower-supernode``: Flower's SuperExec starts a fresh ``flwr-clientapp`` (imports included) per
  message, 3 s idle poll (skipped with ``stock=False``).

Both use the packed weights and the short reply polling of the ServerApp. ClientApps of different sites run
concurrently, so there are two baselines: the sites' rounds one after another in this process (the issue's
figure; on an idle 2-core machine that ratio is in Flower's favour) and the same rounds at the same time, one
spawned process per site, imports excluded (the stricter one: only Flower's own cost is left).
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


def _local_round(paths: list[Path], schema_path: Path, run_config: dict[str, object], root: Path,
                 tag: str = "") -> float:
    from fedsynth.client.site import RoundRequest, SiteSettings, run_config_from, train_round
    from fedsynth.common.encoding import TabularTransform
    from fedsynth.common.model import TabularUNet1D
    from fedsynth.common.schema import Schema

    schema = Schema.load(schema_path)
    cfg = run_config_from(run_config)
    state = TabularUNet1D(cfg.model_config(TabularTransform(schema).n_features)).state_dict()
    start = time.perf_counter()
    for i, p in enumerate(paths):
        settings = SiteSettings(data_path=p, epsilon_budget=1e6, ledger_path=root / f"local-ledger{tag}-{i}.json",
                                site_id=f"site{i}")
        train_round(settings, RoundRequest(run_key="bench-local", server_round=1, schema=schema, run_config=cfg,
                                           state_dict=state))
    return time.perf_counter() - start


def _site_worker(path: str, schema_path: str, run_config: dict[str, object], ledger: str, site_id: str,
                 barrier: object, out: object) -> None:
    """One site's local round in its own (spawned) process; imports happen before the barrier, off the clock."""
    from fedsynth.client.site import RoundRequest, SiteSettings, run_config_from, train_round
    from fedsynth.common.encoding import TabularTransform
    from fedsynth.common.model import TabularUNet1D
    from fedsynth.common.schema import Schema

    schema = Schema.load(schema_path)
    cfg = run_config_from(run_config)
    state = TabularUNet1D(cfg.model_config(TabularTransform(schema).n_features)).state_dict()
    settings = SiteSettings(data_path=Path(path), epsilon_budget=1e6, ledger_path=Path(ledger), site_id=site_id)
    barrier.wait()  # type: ignore[attr-defined]
    start = time.time()
    train_round(settings, RoundRequest(run_key="bench-local", server_round=1, schema=schema, run_config=cfg,
                                       state_dict=state))
    out.put((start, time.time()))  # type: ignore[attr-defined]


def _local_round_concurrent(paths: list[Path], schema_path: Path, run_config: dict[str, object], root: Path,
                            tag: str = "") -> float:
    """The sites' local rounds at the same time, one process each (as the ClientApps of a Flower round run)."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    barrier, out = ctx.Barrier(len(paths)), ctx.Queue()
    procs = [ctx.Process(target=_site_worker, args=(str(p), str(schema_path), dict(run_config),
                                                    str(root / f"local-conc-ledger{tag}-{i}.json"), f"site{i}",
                                                    barrier, out)) for i, p in enumerate(paths)]
    for proc in procs:
        proc.start()
    spans = [out.get(timeout=1800) for _ in procs]
    for proc in procs:
        proc.join(timeout=60)
    return max(end for _, end in spans) - min(start for start, _ in spans)


def _federation_rounds(root: Path, sites: list, schema_path: Path, run_config: dict[str, object], *,
                       warm: bool) -> tuple[float, dict[int, float], str]:
    """Start a federation, run a 1-round and a 3-round run; return (start-up s, {rounds: s}, last status)."""
    from fedsynth.cli.federation import Federation

    tag = "warm" if warm else "stock"
    with Federation(root / f"fed-{tag}", tls=False, node_auth=False, echo=None, warm_clientapps=warm) as fed:
        start = time.perf_counter()
        fed.start(sites)  # waits until the site agents' executors have done their imports
        startup = time.perf_counter() - start
        times: dict[int, float] = {}
        status = "not started"
        for rounds in (1, 3):  # the difference isolates the cost of a round from per-run fixed costs
            start = time.perf_counter()
            run_id = fed.submit(run_config={**run_config, "num-server-rounds": rounds,
                                            "output-dir": str(root / f"server-{tag}-{rounds}"),
                                            "schema-path": str(schema_path)})
            status = fed.wait(run_id, timeout=1800)
            times[rounds] = time.perf_counter() - start
            if status != "finished:completed":
                raise RuntimeError(f"bench federation ({tag}) ended with status {status}")
    return startup, times, status


def run(*, quick: bool, device: str, local_steps: int | None = None, stock: bool = True) -> list[Figure]:
    """Rounds with 2 sites (site agents, and stock SuperNodes) vs. the same two local trainings in-process."""
    from fedsynth.cli.federation import SiteSpec

    steps = local_steps or (5 if quick else 40)
    # no public warm start: the local baseline has none either (it is server start-up work, not round work)
    run_config = {**RunConfig().to_user_config(), "num-server-rounds": 1, "local-steps": steps,
                  "noise-multiplier": 1.0, "min-train-nodes": 2, "min-available-nodes": 2,
                  "public-pretrain-steps": 0}
    modes = [True, False] if stock and not quick else [True]
    results: dict[bool, tuple[float, dict[int, float], str]] = {}
    with tempfile.TemporaryDirectory(prefix="fedsynth-bench-") as tmp:
        root = Path(tmp)
        paths, schema_path = _write_sites(root, 2)
        # clientapps are separate processes: give them the thread count this process uses
        os.environ.setdefault("OMP_NUM_THREADS", str(torch.get_num_threads()))

        def baselines(tag: str) -> tuple[float, float]:
            return (_local_round(paths, schema_path, run_config, root, tag=tag),
                    _local_round_concurrent(paths, schema_path, run_config, root, tag=tag))

        # the baselines are measured before and after each federation (fresh ledgers each time): the ratios of a
        # set-up use the mean of the two around it, so slow drifts of a shared machine's load hit both sides
        locals_ = [baselines("0")]
        for warm in modes:
            sites = [SiteSpec(f"site{i}", p, 1e6, ledger_path=root / f"fl-ledger-{warm}-{i}.json")
                     for i, p in enumerate(paths)]
            results[warm] = _federation_rounds(root, sites, schema_path, run_config, warm=warm)
            locals_.append(baselines(str(len(locals_))))
    serial_name = "local train_round x2 (no Flower)"
    conc_name = "local train_round x2 concurrently (no Flower)"
    note = f"2 sites x {steps} DP steps, batch {run_config['batch-size']}"
    figures = []
    for k, (name, how) in enumerate(((serial_name, "one after the other in-process"),
                                     (conc_name, "one process per site, at the same time, imports excluded"))):
        values = [b[k] for b in locals_]
        figures.append(Figure("flower", name, sum(values) / len(values), "s",
                              note=f"{note}, {how}; mean of {', '.join(f'{v:.1f}' for v in values)} s "
                                   "(before/between/after the federations)"))
    for i, warm in enumerate(modes):
        startup, times, status = results[warm]
        serial = (locals_[i][0] + locals_[i + 1][0]) / 2
        conc = (locals_[i][1] + locals_[i + 1][1]) / 2
        what = "fedsynth site-agent" if warm else "stock flower-supernode"
        how = ("--isolation process, ClientApps forked from a warm executor, 0.5 s idle poll" if warm
               else "one fresh flwr-clientapp process per message, 3 s idle poll")
        per_round = (times[3] - times[1]) / 2
        per_round_name = f"each further round, {what} ((3-round run - 1-round run) / 2)"
        figures += [
            Figure("flower", f"1-round run, {what} (run start-up and export included)", times[1], "s",
                   times[1] / serial, serial_name, "",
                   f"{note}; {how}; baseline {serial:.1f} s (mean of the runs before and after); status {status}"),
            Figure("flower", per_round_name, per_round, "s", per_round / serial, serial_name,
                   "overhead < 10% (ratio < 1.10)",
                   f"{note}; {how}; baseline {serial:.1f} s (mean of the runs before and after); the 2 sites train "
                   "concurrently, the baseline one after the other"),
            Figure("flower", per_round_name, per_round, "s", per_round / conc, conc_name,
                   "overhead < 10% (ratio < 1.10)",
                   f"same round against the same concurrency without Flower: baseline {conc:.1f} s (mean of the "
                   "runs before and after)"),
            Figure("flower", f"SuperLink + 2 {'site agents' if warm else 'SuperNodes'} start-up", startup, "s",
                   note="once per federation, not per round" + ("; includes the executors' imports" if warm else "")),
        ]
    return figures
