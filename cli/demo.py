"""The RHC demo's sites: the declared schema, non-IID hospital tables and the auditor's holdout.

:func:`prepare_demo_sites` writes them; :mod:`fedsynth.cli.pipeline` (``fedsynth demo``) runs the federation, the
audit and the release-gated sampling on top. The holdout is never given to a site.
"""

from __future__ import annotations

import os
from pathlib import Path

from fedsynth.cli.federation import SiteSpec
from fedsynth.common.demo_data import load_rhc, rhc_schema, split_non_iid

__all__ = ["prepare_demo_sites", "DEMO_SITES"]

DEMO_SITES = ("hospital-a", "hospital-b", "hospital-c")


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
