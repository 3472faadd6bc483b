"""The RHC demo: three non-IID hospital sites federated on loopback (TLS + SuperNode authentication).

:func:`run_demo` writes the site tables and the declared schema, runs the federation with real Flower processes
(:func:`fedsynth.cli.federation.run_federation`) and returns the generator artifact. The holdout split is written
for the auditor and is never given to a site.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedsynth.cli.federation import FederationResult, SiteSpec, run_federation
from fedsynth.common.demo_data import load_rhc, rhc_schema, split_non_iid

__all__ = ["DemoResult", "prepare_demo_sites", "run_demo", "DEMO_SITES"]

DEMO_SITES = ("hospital-a", "hospital-b", "hospital-c")


@dataclass(frozen=True)
class DemoResult:
    """Where the demo put things.

    Args:
        artifact: the exported ``generator-vN`` folder.
        schema_path: the declared schema used by every site.
        site_paths: site id -> its CSV.
        ledger_paths: site id -> its durable privacy ledger.
        holdout_path: rows kept back for the audit (never seen by any site).
        federation: the run's details (run id, logs).
    """

    artifact: Path
    schema_path: Path
    site_paths: dict[str, Path]
    ledger_paths: dict[str, Path]
    holdout_path: Path
    federation: FederationResult


def prepare_demo_sites(
    out_dir: str | os.PathLike[str], *, n_sites: int = 3, seed: int = 0, by: str = "fac_cat1",
    epsilon_budget: float = 3.0,
) -> tuple[Path, list[SiteSpec], Path]:
    """Write the RHC schema, ``n_sites`` non-IID site CSVs and the holdout under ``out_dir``.

    Returns:
        ``(schema_path, sites, holdout_path)``.
    """
    out = Path(out_dir).resolve()
    schema = rhc_schema()
    schema_path = schema.save(out / "schema.json")
    df = load_rhc()
    split_col = by if by in df.columns else (schema.target or df.columns[0])
    tables, holdout = split_non_iid(df, n_sites, by=split_col, seed=seed)
    names = list(DEMO_SITES[:n_sites]) + [f"hospital-{i}" for i in range(len(DEMO_SITES), n_sites)]
    sites = []
    for name, table in zip(names, tables):
        path = out / "sites" / name / "data.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        table.to_csv(path, index=False)
        sites.append(SiteSpec(name, path, epsilon_budget, ledger_path=path.parent / "privacy_ledger.json"))
    holdout_path = out / "holdout.csv"
    holdout.to_csv(holdout_path, index=False)
    return Path(schema_path), sites, holdout_path


def run_demo(
    out_dir: str | os.PathLike[str] = "fedsynth-demo",
    *,
    n_sites: int = 3,
    epsilon_budget: float = 3.0,
    run_config: Mapping[str, Any] | None = None,
    tls: bool = True,
    node_auth: bool = True,
    seed: int = 0,
    timeout: float = 3600.0,
    echo: Callable[[str], None] | None = print,
) -> DemoResult:
    """Run the federated RHC demo end to end and return the artifact.

    Args:
        out_dir: everything goes here (``sites/``, ``schema.json``, ``holdout.csv``, ``run/``).
        n_sites: number of hospital SuperNodes.
        epsilon_budget: each site's total epsilon budget.
        run_config: run-config overrides (kebab-case :class:`~fedsynth.common.config.RunConfig` keys).
        tls: TLS between SuperNodes/CLI and the SuperLink.
        node_auth: SuperNode authentication (registered keys only).
        seed: seed of the non-IID split.
        timeout: seconds to wait for the run.
        echo: progress sink (per-round loss and epsilon per site).

    Raises:
        FederationError: a Flower process or the run failed.
    """
    out = Path(out_dir).resolve()
    schema_path, sites, holdout_path = prepare_demo_sites(out, n_sites=n_sites, seed=seed,
                                                          epsilon_budget=epsilon_budget)
    config = {"min-available-nodes": n_sites, "min-train-nodes": n_sites, **dict(run_config or {})}
    result = run_federation(
        run_dir=out / "run", sites=sites, schema_path=schema_path, run_config=config, tls=tls,
        node_auth=node_auth, timeout=timeout, echo=echo,
    )
    return DemoResult(
        artifact=result.artifact,
        schema_path=schema_path,
        site_paths={s.site_id: s.data_path for s in sites},
        ledger_paths={s.site_id: s.ledger_path for s in sites if s.ledger_path is not None},
        holdout_path=holdout_path,
        federation=result,
    )
