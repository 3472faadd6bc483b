"""The embedded demo data: RHC (SUPPORT right heart catheterization, 5,735 ICU patients) from ``survset``.

``time`` (follow-up time) is dropped because it leaks the target ``event``; ``pid`` is an identifier and is
never a feature. The schema (``schemas/rhc.json``) declares public clinical ranges, not data-read bounds.
"""

from __future__ import annotations

from importlib import resources

import numpy as np
import pandas as pd

from fedsynth.common.schema import Schema


def rhc_schema() -> Schema:
    """The declared schema of the RHC demo table (54 columns, target ``event``)."""
    text = resources.files("fedsynth.common").joinpath("schemas/rhc.json").read_text(encoding="utf-8")
    import json

    return Schema.from_dict(json.loads(text))


def load_rhc() -> pd.DataFrame:
    """Load RHC from the offline ``survset`` package, with the schema's columns in declared order."""
    from SurvSet.data import SurvLoader

    df = SurvLoader().load_dataset("rhc")["df"]
    schema = rhc_schema()
    return df[list(schema.names)].reset_index(drop=True)


def split_non_iid(
    df: pd.DataFrame,
    n_sites: int,
    *,
    by: str,
    alpha: float = 0.8,
    holdout_fraction: float = 0.2,
    min_rows: int = 50,
    seed: int = 0,
) -> tuple[list[pd.DataFrame], pd.DataFrame]:
    """Split a table into non-IID site tables plus a holdout kept by the auditor.

    Each category of ``by`` is spread over the sites with Dirichlet(``alpha``) proportions (smaller alpha,
    more skew), as hospitals differ in case mix.

    Args:
        df: the full table.
        n_sites: number of sites.
        by: the column whose distribution differs between sites.
        alpha: Dirichlet concentration.
        holdout_fraction: share of rows held out for the auditor (never sent to a site).
        min_rows: minimum rows per site (retries with new proportions until met).
        seed: random seed.

    Returns:
        ``(site_tables, holdout)``.
    """
    if n_sites < 1:
        raise ValueError("n_sites must be >= 1")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(df))
    n_hold = int(round(len(df) * holdout_fraction))
    holdout = df.iloc[order[:n_hold]].reset_index(drop=True)
    rest = df.iloc[order[n_hold:]].reset_index(drop=True)
    for _ in range(100):
        assignment = np.empty(len(rest), dtype=int)
        for _, idx in rest.groupby(rest[by].astype(str)).indices.items():
            idx = rng.permutation(idx)
            props = rng.dirichlet(np.full(n_sites, alpha))
            cuts = (np.cumsum(props)[:-1] * len(idx)).astype(int)
            for site, part in enumerate(np.split(idx, cuts)):
                assignment[part] = site
        counts = np.bincount(assignment, minlength=n_sites)
        if counts.min() >= min_rows:
            break
    else:
        raise ValueError(f"could not give every site at least {min_rows} rows; lower n_sites or min_rows")
    sites = [rest[assignment == s].reset_index(drop=True) for s in range(n_sites)]
    return sites, holdout
