"""Flower overhead: rounds on the Deployment Engine against the same local rounds without Flower.

Both sides run :func:`fedsynth.client.site.train_round` (table, ledger, ``train_dp``) with the same run config,
round after round in long-lived processes, and both time rounds 2..N only: round 1 pays one-off costs on both
sides (the first validation of the site table, the first RDP terms, the run's first ClientApps).

* **Flower**: one run of ``rounds`` rounds. The ServerApp records when each round began, when its replies were
  in and when it was aggregated (``timing`` in the checkpoint's round reports); a round's time is the span from
  the previous round's aggregation to its own (checkpoint, push, the sites' ClientApps, replies, aggregation).
  Each site reports ``site-seconds``, its own time in ``train_round``; a round's time minus the slower site's
  ``site-seconds`` is what Flower adds (messages, polls, forks, checkpoint).
* **Local**: one spawned process per site running the same rounds at the same time (a barrier starts each
  round; the ClientApps of a Flower round also run concurrently), and the same rounds one site after the other
  in this process. A local round's time is the span from the first start to the last end.

The local rounds are measured before, between and after the federations, so a drift of a shared machine's load
hits both sides; the figures are medians over all timed rounds, with the range. Two site set-ups are measured:

* ``fedsynth site-agent`` (the default of :class:`~fedsynth.cli.federation.Federation` and of ``deploy/``):
  SuperNode with ``--isolation process`` and short adaptive polls, ClientApps forked from a warm executor that
  keeps the validated table and the RDP terms in memory;
* stock ``flower-supernode`` (skipped with ``stock=False`` and in quick runs): a fresh ``flwr-clientapp``
  (imports included) per message, 3 s idle poll.
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from bench.timing import Figure
from fedsynth.common.config import RunConfig


@dataclass(frozen=True)
class Rounds:
    """Timed rounds (2..N) of one set-up: wall seconds per round and the slower site's ``site-seconds``."""

    seconds: tuple[float, ...]
    site_seconds: tuple[float, ...]

    @property
    def median(self) -> float:
        """Median round time."""
        return statistics.median(self.seconds)

    @property
    def overhead(self) -> tuple[float, ...]:
        """Per round: wall time minus the slower site's own time."""
        return tuple(s - t for s, t in zip(self.seconds, self.site_seconds, strict=True))

    def spread(self, values: tuple[float, ...] | None = None) -> str:
        """``min-max`` of ``values`` (default: the round times)."""
        vals = self.seconds if values is None else values
        return f"{min(vals):.2f}-{max(vals):.2f}"


def _count(n: int, thing: str) -> str:
    """``"1 site"``, ``"2 sites"``."""
    return f"{n} {thing}{'s' if n != 1 else ''}"


def _pooled(blocks: list[Rounds]) -> Rounds:
    return Rounds(tuple(s for b in blocks for s in b.seconds), tuple(s for b in blocks for s in b.site_seconds))


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


def _site_setup(path: Path, schema_path: Path, run_config: dict[str, Any], ledger: Path,
                site_id: str) -> tuple[Any, Any, Any, dict[str, torch.Tensor]]:
    from fedsynth.client.site import SiteSettings, run_config_from
    from fedsynth.common.encoding import TabularTransform
    from fedsynth.common.model import TabularUNet1D
    from fedsynth.common.schema import Schema

    schema = Schema.load(schema_path)
    cfg = run_config_from(run_config)
    state = TabularUNet1D(cfg.model_config(TabularTransform(schema).n_features)).state_dict()
    settings = SiteSettings(data_path=path, epsilon_budget=1e6, ledger_path=ledger, site_id=site_id)
    return settings, schema, cfg, state


def _site_worker(path: str, schema_path: str, run_config: dict[str, Any], ledger: str, site_id: str, rounds: int,
                 barrier: Any, out: Any) -> None:
    """One site's local rounds in its own (spawned) process; imports happen before the first barrier."""
    from fedsynth.client.site import RoundRequest, train_round

    settings, schema, cfg, state = _site_setup(Path(path), Path(schema_path), run_config, Path(ledger), site_id)
    for server_round in range(1, rounds + 1):
        barrier.wait()
        start = time.time()
        outcome = train_round(settings, RoundRequest(run_key="bench-local", server_round=server_round,
                                                     schema=schema, run_config=cfg, state_dict=state))
        out.put((server_round, start, time.time(), outcome.metrics["site-seconds"]))
        state = outcome.state_dict


def local_concurrent(paths: list[Path], schema_path: Path, run_config: dict[str, Any], root: Path, *,
                     rounds: int, tag: str) -> Rounds:
    """The sites' rounds at the same time, one long-lived process per site; rounds 2..``rounds`` timed."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    barrier, out = ctx.Barrier(len(paths)), ctx.Queue()
    procs = [ctx.Process(target=_site_worker, args=(str(p), str(schema_path), dict(run_config),
                                                    str(root / f"local-conc-{tag}-{i}.json"), f"site{i}", rounds,
                                                    barrier, out)) for i, p in enumerate(paths)]
    for proc in procs:
        proc.start()
    spans: dict[int, list[tuple[float, float, float]]] = {}
    for _ in range(rounds * len(paths)):
        server_round, start, end, site_seconds = out.get(timeout=1800)
        spans.setdefault(server_round, []).append((start, end, site_seconds))
    for proc in procs:
        proc.join(timeout=60)
    timed = [spans[r] for r in range(2, rounds + 1)]
    return Rounds(tuple(max(e for _, e, _ in s) - min(b for b, _, _ in s) for s in timed),
                  tuple(max(x for _, _, x in s) for s in timed))


def local_serial(paths: list[Path], schema_path: Path, run_config: dict[str, Any], root: Path, *,
                 rounds: int, tag: str) -> Rounds:
    """The sites' rounds one after the other in this process; rounds 2..``rounds`` timed."""
    from fedsynth.client.site import RoundRequest, train_round

    sites = [_site_setup(p, schema_path, run_config, root / f"local-serial-{tag}-{i}.json", f"site{i}")
             for i, p in enumerate(paths)]
    seconds, site_seconds = [], []
    for server_round in range(1, rounds + 1):
        start = time.perf_counter()
        own = 0.0
        for settings, schema, cfg, state in sites:
            outcome = train_round(settings, RoundRequest(run_key="bench-local", server_round=server_round,
                                                         schema=schema, run_config=cfg, state_dict=state))
            own += outcome.metrics["site-seconds"]
        if server_round > 1:
            seconds.append(time.perf_counter() - start)
            site_seconds.append(own)
    return Rounds(tuple(seconds), tuple(site_seconds))


def rounds_from_checkpoint(output_dir: Path) -> tuple[Rounds, float]:
    """Round times (2..N) from a finished run's checkpoint, and round 1's own time (push to aggregation)."""
    state = json.loads((output_dir / "checkpoint" / "state.json").read_text(encoding="utf-8"))
    reports = state["rounds"]
    seconds, site_seconds = [], []
    for prev, cur in zip(reports, reports[1:], strict=False):
        seconds.append(cur["timing"]["aggregated_at"] - prev["timing"]["aggregated_at"])
        site_seconds.append(max(s["metrics"]["site-seconds"] for s in cur["sites"] if s["accepted"]))
    first = reports[0]["timing"]
    return Rounds(tuple(seconds), tuple(site_seconds)), first["aggregated_at"] - first["started_at"]


#: Roles of the federation's long-lived processes, by a word of their command line (first match wins).
CPU_ROLES = (("flower-superlink", "SuperLink"), ("fedsynth.cli.supernode", "SuperNodes"),
             ("flower-supernode", "SuperNodes"), ("fedsynth.cli.executor", "executors"),
             ("fedsynth.cli.site_agent", "site agents"), ("flower-superexec", "SuperExec"))


def process_cpu(root_pid: int) -> dict[str, tuple[float, float]] | None:
    """CPU seconds of ``root_pid``'s descendants, summed by role (:data:`CPU_ROLES`): ``(own, reaped children)``.

    Read from ``/proc`` (Linux); ``None`` elsewhere. A role's own time is its processes' ``utime + stime``; the
    children's is ``cutime + cstime``, the children they have waited for: a warm executor's forked ClientApps (the
    sites' training) and the SuperExec's ServerApp show up there once they have exited.
    """
    proc = Path("/proc")
    if not (proc / "self" / "stat").exists():
        return None
    tick = os.sysconf("SC_CLK_TCK")
    stats: dict[int, tuple[int, list[str], str]] = {}
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        stats[int(entry.name)] = (int(fields[1]), fields, cmd)
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in stats.items():
        children.setdefault(ppid, []).append(pid)
    out: dict[str, tuple[float, float]] = {}
    todo = list(children.get(root_pid, []))
    while todo:
        pid = todo.pop()
        todo += children.get(pid, [])
        _, fields, cmd = stats[pid]
        role = next((name for word, name in CPU_ROLES if word in cmd), None)
        if role is None:
            continue
        own = (int(fields[11]) + int(fields[12])) / tick
        reaped = (int(fields[13]) + int(fields[14])) / tick
        before = out.get(role, (0.0, 0.0))
        out[role] = (before[0] + own, before[1] + reaped)
    return out


def cpu_per_round(before: dict[str, tuple[float, float]] | None, after: dict[str, tuple[float, float]] | None,
                  rounds: int) -> dict[str, tuple[float, float]]:
    """Per role, ``(own, reaped children)`` CPU seconds per round between two :func:`process_cpu` snapshots."""
    if before is None or after is None:
        return {}
    return {role: ((own - before.get(role, (0.0, 0.0))[0]) / rounds, (kids - before.get(role, (0.0, 0.0))[1]) / rounds)
            for role, (own, kids) in after.items()}


def _federation(root: Path, sites: list[Any], schema_path: Path, run_config: dict[str, Any], *, warm: bool,
                rounds: int) -> tuple[float, float, Rounds, float, dict[str, tuple[float, float]]]:
    """Start a federation and run ``rounds`` rounds; return (start-up s, run s, timed rounds, round 1 s, CPU per
    round by role from :func:`cpu_per_round`)."""
    from fedsynth.cli.federation import Federation

    tag = "warm" if warm else "stock"
    output_dir = root / f"server-{tag}"
    with Federation(root / f"fed-{tag}", tls=False, node_auth=False, echo=None, warm_clientapps=warm) as fed:
        start = time.perf_counter()
        fed.start(sites)  # waits until the site agents' executors have done their imports
        startup = time.perf_counter() - start
        cpu_before = process_cpu(os.getpid())
        start = time.perf_counter()
        run_id = fed.submit(run_config={**run_config, "num-server-rounds": rounds, "output-dir": str(output_dir),
                                        "schema-path": str(schema_path)})
        status = fed.wait(run_id, timeout=1800)
        run_seconds = time.perf_counter() - start
        cpu = cpu_per_round(cpu_before, process_cpu(os.getpid()), rounds)
        if status != "finished:completed":
            raise RuntimeError(f"bench federation ({tag}) ended with status {status}")
    timed, first = rounds_from_checkpoint(output_dir)
    return startup, run_seconds, timed, first, cpu


def run(*, quick: bool, device: str, local_steps: int | None = None, stock: bool = True,
        rounds: int | None = None, sites: int = 2) -> list[Figure]:
    """Rounds with ``sites`` sites (site agents, and stock SuperNodes) vs. the same local rounds without Flower.

    With 2 sites (the default) on a 2-core box the sites' training takes both cores and Flower's processes
    compete with it; with 1 site a core is left for them, as when the server and each site have machines of
    their own: what remains is the protocol's latency per round.
    """
    from fedsynth.cli.federation import SiteSpec

    steps = local_steps or (5 if quick else 40)
    n_rounds = rounds or (3 if quick else 5)
    # no public warm start: the local rounds have none either (it is server start-up work, not round work)
    run_config = {**RunConfig().to_user_config(), "num-server-rounds": n_rounds, "local-steps": steps,
                  "noise-multiplier": 1.0, "min-train-nodes": sites, "min-available-nodes": sites,
                  "public-pretrain-steps": 0}
    modes = [True, False] if stock and not quick else [True]
    feds: dict[bool, tuple[float, float, Rounds, float, dict[str, tuple[float, float]]]] = {}
    with tempfile.TemporaryDirectory(prefix="fedsynth-bench-") as tmp:
        root = Path(tmp)
        paths, schema_path = _write_sites(root, sites)
        # clientapps are separate processes: give them the thread count this process uses
        os.environ.setdefault("OMP_NUM_THREADS", str(torch.get_num_threads()))

        def baselines(tag: str) -> tuple[Rounds, Rounds]:
            return (local_concurrent(paths, schema_path, run_config, root, rounds=n_rounds, tag=tag),
                    local_serial(paths, schema_path, run_config, root, rounds=n_rounds, tag=tag))

        locals_ = [baselines("0")]
        for warm in modes:
            specs = [SiteSpec(f"site{i}", p, 1e6, ledger_path=root / f"fl-ledger-{warm}-{i}.json")
                     for i, p in enumerate(paths)]
            feds[warm] = _federation(root, specs, schema_path, run_config, warm=warm, rounds=n_rounds)
            locals_.append(baselines(str(len(locals_))))
    conc, serial = _pooled([b[0] for b in locals_]), _pooled([b[1] for b in locals_])
    n_sites = _count(sites, "site")
    conc_name = f"local round, {n_sites} at the same time (no Flower)"
    serial_name = f"local round, {n_sites} one after the other (no Flower)"
    timed = f"rounds 2-{n_rounds} of {n_rounds}"
    note = f"{n_sites} x {steps} DP steps, batch {run_config['batch-size']}; {timed}"
    blocks = "before/between/after the federations"
    figures = [
        Figure("flower", conc_name, conc.median, "s",
               note=f"{note}; one process per site; median of {len(conc.seconds)} rounds, range {conc.spread()} s; "
                    f"medians {', '.join(f'{b[0].median:.2f}' for b in locals_)} s ({blocks}); slower site's "
                    f"site-seconds {statistics.median(conc.site_seconds):.2f} s"),
        Figure("flower", serial_name, serial.median, "s",
               note=f"{note}; in this process; median of {len(serial.seconds)} rounds, range {serial.spread()} s; "
                    f"medians {', '.join(f'{b[1].median:.2f}' for b in locals_)} s ({blocks})"),
    ]
    for warm in modes:
        startup, run_seconds, fed, first, cpu = feds[warm]
        what = "fedsynth site-agent" if warm else "stock flower-supernode"
        nodes = _count(sites, "site agent" if warm else "SuperNode")
        how = ("--isolation process, ClientApps forked from a warm executor" if warm
               else "one fresh flwr-clientapp process per message, 3 s idle poll")
        spread = f"median of {len(fed.seconds)} rounds, range {fed.spread()} s"
        name = f"round, {what}"
        figures += [
            Figure("flower", name, fed.median, "s", fed.median / conc.median, conc_name,
                   "overhead < 10% (ratio < 1.10)", f"{note}; {how}; {spread}"),
            Figure("flower", name, fed.median, "s", fed.median / serial.median, serial_name,
                   "overhead < 10% (ratio < 1.10)", "same rounds against the sites one after the other"),
            Figure("flower", f"Flower's share of a round, {what}", statistics.median(fed.overhead), "s",
                   note=f"round time minus the slower site's site-seconds (median "
                        f"{statistics.median(fed.site_seconds):.2f} s); range {fed.spread(fed.overhead)} s"),
            Figure("flower", f"round 1, {what}", first, "s",
                   note="push to aggregation of the run's first round (first ClientApps, first table validation)"),
            Figure("flower", f"{n_rounds}-round run, {what}", run_seconds, "s",
                   note="flwr run to finished: ServerApp start, rounds, artifact export"),
            Figure("flower", f"SuperLink + {nodes} start-up", startup, "s",
                   note="once per federation, not per round" + ("; includes the executors' imports" if warm else "")),
        ]
        infra = {role: own for role, (own, _) in cpu.items()}
        if infra:
            training = sum(kids for role, (_, kids) in cpu.items() if role == "executors")
            parts = ", ".join(f"{role} {own:.2f}" for role, own in sorted(infra.items(), key=lambda kv: -kv[1]))
            figures.append(Figure(
                "flower", f"CPU of Flower's own processes per round, {what}", sum(infra.values()), "s",
                note=f"{parts} (own CPU, whole run / rounds); "
                     + (f"the sites' ClientApps {training:.2f} s; " if training else "")
                     + "on this box they share the cores with the sites' training"))
    return figures
