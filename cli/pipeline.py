"""``fedsynth demo``: the whole story on the embedded RHC data, end to end, with real processes.

1. write the declared schema, three non-IID hospital tables and the auditor's holdout;
2. the auditor makes canary records and hands the members (only) to the sites, which add them to their tables;
3. a federation over the Flower Deployment Engine (SuperLink + one SuperNode per hospital, TLS and SuperNode
   authentication on loopback) trains the generator with DP-SGD and exports the versioned artifact;
4. each site runs its audit job on its own rows and returns aggregates only;
5. the auditor attacks and scores the generator, writes ``audit.json`` + ``report.html`` and releases or blocks it;
6. a released generator is sampled, as a data scientist would with ``fedsynth sample``.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Optional

import pandas as pd
import typer

from fedsynth.common.schema import Schema
from fedsynth.common.validation import load_table

DEMO_ROUNDS = 5


@dataclass(frozen=True)
class PipelineResult:
    """Where the full demo put its outputs."""

    artifact: Path
    report_dir: Path
    released: bool
    failed_checks: tuple[str, ...]
    synthetic_csv: Path | None
    headline: dict[str, Any]


def run_pipeline(
    out_dir: str | os.PathLike[str],
    *,
    n_sites: int = 3,
    epsilon_budget: float = 3.0,
    run_config: Mapping[str, Any] | None = None,
    n_canaries: int = 60,
    n_rows: int = 1000,
    audit_overrides: Mapping[str, Any] | None = None,
    tls: bool = True,
    node_auth: bool = True,
    seed: int = 0,
    echo: Callable[[str], None] = print,
) -> PipelineResult:
    """Run the demo federation, the audit and the release-gated sampling (see module docstring)."""
    from fedsynth.audit.canary import make_canaries
    from fedsynth.audit.config import AuditConfig
    from fedsynth.cli.demo import prepare_demo_sites
    from fedsynth.cli.federation import run_federation

    out = Path(out_dir).resolve()
    t0 = time.monotonic()
    if out.exists() and any(out.iterdir()):
        # a finished demo holds spent ledgers and a finished run: start afresh, keep the old one for inspection
        kept = out.with_name(f"{out.name}.{time.strftime('%Y%m%d-%H%M%S')}")
        out.rename(kept)
        echo(f"      previous demo moved to {kept}")
    echo(f"[1/6] preparing {n_sites} hospital tables, schema and holdout in {out}")
    schema_path, sites, holdout_path = prepare_demo_sites(out, n_sites=n_sites, seed=seed, epsilon_budget=epsilon_budget)
    schema = Schema.load(schema_path)
    holdout = load_table(holdout_path, schema)
    AuditConfig.from_mapping({"audit": dict(audit_overrides or {})})  # a bad setting fails now, not after training

    echo(f"[2/6] auditor makes {n_canaries} canaries; half go to the sites, membership stays with the auditor")
    canaries = make_canaries(schema, n=n_canaries, reference=holdout, seed=seed)
    canary_dir = canaries.save(out / "auditor" / "canaries")
    for i, site in enumerate(sites):
        table = pd.read_csv(site.data_path)
        members = canaries.members_for_site(i, len(sites))
        pd.concat([table, members.reset_index(drop=True)], ignore_index=True).to_csv(site.data_path, index=False)

    echo("[3/6] federated DP-SGD training over the Flower Deployment Engine")
    config = {"min-available-nodes": n_sites, "min-train-nodes": n_sites, **dict(run_config or {})}
    fed = run_federation(
        run_dir=out / "run", sites=sites, schema_path=schema_path, run_config=config, tls=tls,
        node_auth=node_auth, echo=echo,
    )
    artifact = fed.artifact
    echo(f"      generator exported to {artifact}")

    return audit_and_release(
        out, artifact=artifact, schema_path=schema_path, site_paths={s.site_id: s.data_path for s in sites},
        holdout_path=holdout_path, canary_dir=canary_dir, audit_overrides=audit_overrides, n_rows=n_rows,
        seed=seed, echo=echo, t0=t0,
    )


def audit_and_release(
    out: Path,
    *,
    artifact: Path,
    schema_path: Path,
    site_paths: Mapping[str, Path],
    holdout_path: Path,
    canary_dir: Path,
    audit_overrides: Mapping[str, Any] | None = None,
    n_rows: int = 1000,
    seed: int = 0,
    echo: Callable[[str], None] = print,
    t0: float | None = None,
) -> PipelineResult:
    """Steps 4-6 of the demo: per-site audit jobs, the central audit and gate, release-gated sampling."""
    from fedsynth.audit.canary import CanarySet
    from fedsynth.audit.config import AuditConfig
    from fedsynth.audit.runner import headline, run_audit, sample_for_audit
    from fedsynth.audit.site_stats import site_audit_stats
    from fedsynth.cli.sampling import sample_to_file
    from fedsynth.common.artifact import release_status

    t0 = time.monotonic() if t0 is None else t0
    schema = Schema.load(schema_path)
    holdout = load_table(holdout_path, schema)
    echo("[4/6] per-site audit jobs (each site computes aggregates on its own rows)")
    audit_cfg = AuditConfig.from_mapping({"audit": dict(audit_overrides or {})})
    synthetic = sample_for_audit(artifact, config=audit_cfg)
    stats = []
    stats_dir = out / "auditor" / "site-stats"
    stats_dir.mkdir(parents=True, exist_ok=True)
    inserted = load_table(canary_dir / "insert.csv", schema)  # the sites know the canaries they planted
    for site_id, path in site_paths.items():
        rows = load_table(path, schema)
        stats.append(site_audit_stats(
            rows, synthetic, schema=schema, reference=holdout, site=site_id, seed=seed, exclude=inserted,
        ))
        (stats_dir / f"{site_id}.json").write_text(json.dumps(stats[-1], indent=2))

    echo("[5/6] central audit: membership inference, distances, re-identification, fidelity, utility")
    report_dir = out / "audit-report"
    report = run_audit(
        artifact, reference=holdout, canaries=CanarySet.load(canary_dir), site_stats=stats,
        synthetic=synthetic, config=audit_cfg, out_dir=report_dir,
    )
    status = release_status(artifact)
    summary = headline(report)
    echo(json.dumps(summary, indent=2, default=str))
    synthetic_csv = None
    if status.released:
        echo(f"[6/6] generator released; sampling {n_rows} synthetic patients")
        synthetic_csv = sample_to_file(artifact, n=n_rows, output=out / "synthetic.csv", seed=seed)
    else:
        echo("[6/6] generator BLOCKED from release: " + "; ".join(status.failed_checks))
    echo(f"report: {report_dir / 'report.html'}   (total {time.monotonic() - t0:.0f} s)")
    return PipelineResult(artifact, report_dir, status.released, status.failed_checks, synthetic_csv, summary)


def demo(
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Folder for sites, run, artifact and report.")] = Path("fedsynth-demo"),
    sites: Annotated[int, typer.Option(min=2, help="Number of hospital SuperNodes.")] = 3,
    epsilon: Annotated[float, typer.Option(help="Each site's epsilon budget (and the run's target).")] = 3.0,
    rounds: Annotated[int, typer.Option(min=1, help="Federated rounds.")] = DEMO_ROUNDS,
    local_steps: Annotated[Optional[int], typer.Option(help="DP-SGD steps per site per round.")] = None,
    insecure: Annotated[bool, typer.Option(help="Plain HTTP, no TLS, no node authentication (debugging only).")] = False,
    quick: Annotated[bool, typer.Option(help="A small, fast run (smoke test).")] = False,
) -> None:
    """Run the full demo: federation on RHC, export, audit report, release-gated sampling."""
    run_config: dict[str, Any] = {"num-server-rounds": rounds, "target-epsilon": epsilon}
    audit: dict[str, Any] = {}
    if local_steps is not None:
        run_config["local-steps"] = local_steps
    if quick:
        run_config.update({"num-server-rounds": min(rounds, 2), "local-steps": local_steps or 20, "diffusion-steps": 100})
        audit.update({"n_synthetic": 1000, "shadow": False, "reid": False})
    result = run_pipeline(
        out_dir, n_sites=sites, epsilon_budget=epsilon, run_config=run_config, audit_overrides=audit,
        tls=not insecure, node_auth=not insecure,
    )
    if not result.released:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Mount ``demo`` on the ``fedsynth`` CLI."""
    app.command("demo")(demo)
