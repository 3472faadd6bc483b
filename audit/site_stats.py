"""The per-site audit job: distance and membership statistics computed at a site, as aggregates.

A site runs :func:`site_audit_stats` on its own rows, the synthetic sample and the operator's
reference table (both sent by the auditor; neither is another site's data). It returns a small
JSON-compatible dict of histograms, quantiles, counts and ROC summaries: no rows leave the site. The
auditor pools these with :func:`pool_site_stats`.

What the aggregates reveal: the number of rows (rounded to tens) and low-resolution distance
distributions. Quantiles of distances between synthetic rows and a site's rows are not
differentially private; they are meant for a trusted audit channel, not for publication.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from fedsynth.audit.distance import dcr, dcr_share, nndr, share_from_counts, summarize
from fedsynth.audit.domias import DomiasConfig, domias_scores
from fedsynth.audit.index import Backend
from fedsynth.audit.jsonable import to_jsonable
from fedsynth.audit.mia import MiaResult, evaluate_attack
from fedsynth.common.encoding import TabularTransform
from fedsynth.common.schema import Schema

STATS_VERSION = 1


def site_audit_stats(
    site_rows: pd.DataFrame,
    synthetic: pd.DataFrame,
    *,
    schema: Schema,
    reference: pd.DataFrame | None = None,
    site: str = "site",
    max_rows: int = 5000,
    delta: float = 0.0,
    backend: Backend = "auto",
    reid: bool = False,
    reid_attacks: int = 200,
    seed: int = 0,
    exclude: pd.DataFrame | None = None,
) -> dict[str, Any]:
    """Compute the site's audit aggregates.

    Args:
        site_rows: the site's training rows (schema columns), never sent anywhere.
        synthetic: the synthetic sample from the generator under audit.
        schema: the public schema.
        reference: the operator's holdout rows (same population, not used in training). Needed for
            the DCR share and the membership attacks; without it only distance summaries are
            returned.
        site: a label for the report.
        max_rows: rows of each table used (seeded subsample), bounding the cost.
        delta: delta for the empirical epsilon bounds.
        backend: nearest-neighbour backend.
        reid: also run the anonymeter evaluators (``ori`` = the site's rows, ``control`` = reference
            rows).
        reid_attacks: attacks per anonymeter evaluator.
        exclude: rows the site inserted for the auditor (its ``insert.csv`` canaries); they are
            dropped from ``site_rows`` first, since outliers planted on purpose would bias the
            site-level attacks.
        seed: random seed.

    Returns:
        A JSON-compatible dict (see module docstring).
    """
    rng = np.random.default_rng(seed)
    t = TabularTransform(schema)
    cols = list(schema.names)

    def enc(df: pd.DataFrame) -> np.ndarray:
        x = t.transform(df[cols])
        return x if len(x) <= max_rows else x[rng.choice(len(x), max_rows, replace=False)]

    if exclude is not None and len(exclude):
        planted = (
            dcr(t.transform(site_rows[cols]), t.transform(exclude[cols]), backend=backend) < 1e-4
        )
        site_rows = site_rows[~planted]
    own, syn = enc(site_rows), enc(synthetic)
    max_d = 2.0 * float(np.sqrt(t.n_features))
    out: dict[str, Any] = {
        "version": STATS_VERSION,
        "site": site,
        "n_rows": int(round(len(site_rows), -1)),
        "dcr_synthetic_to_site": summarize(
            dcr(syn, own, backend=backend), max_distance=max_d
        ).to_dict(),
        "nndr_synthetic_to_site": summarize(
            nndr(syn, own, backend=backend), max_distance=1.0
        ).to_dict(),
    }
    if reference is None or len(reference) < 4:
        return to_jsonable(out)
    ref = enc(reference)
    ref = ref[rng.permutation(len(ref))]
    half = len(ref) // 2
    ref_density, ref_nonmember = ref[:half], ref[half:]
    out["dcr_synthetic_to_reference"] = summarize(
        dcr(syn, ref, backend=backend), max_distance=max_d
    ).to_dict()
    out["dcr_share"] = dcr_share(syn, own, ref, backend=backend, seed=seed).to_dict()
    m = min(len(own), len(ref_nonmember))
    members = own[rng.choice(len(own), m, replace=False)]
    nonmembers = ref_nonmember[:m]
    cand = np.concatenate([members, nonmembers])
    labels = np.r_[np.ones(m, dtype=int), np.zeros(m, dtype=int)]
    dist_scores = -dcr(cand, syn, backend=backend)
    dens_scores = domias_scores(cand, syn, ref_density, config=DomiasConfig(seed=seed))
    out["mia"] = {
        "distance": evaluate_attack(
            "distance", dist_scores, labels, delta=delta, seed=seed
        ).to_dict(),
        "domias": evaluate_attack("domias", dens_scores, labels, delta=delta, seed=seed).to_dict(),
    }
    if reid:
        from fedsynth.audit.reid import reid_risks

        out["reid"] = reid_risks(
            site_rows, synthetic, reference, schema=schema, n_attacks=reid_attacks, seed=seed
        )
    return to_jsonable(out)


def pool_site_stats(stats: list[dict[str, Any]]) -> dict[str, Any]:
    """Combine per-site aggregates: pooled DCR share, worst-case (highest AUC) attack per kind.

    Args:
        stats: dicts returned by :func:`site_audit_stats`.

    Returns:
        ``{"n_sites", "dcr_share", "mia": {kind: MiaResult dict of the worst site}, "per_site"}``.
    """
    closer = sum(float(s["dcr_share"]["n_closer_train"]) for s in stats if "dcr_share" in s)
    n = sum(int(s["dcr_share"]["n"]) for s in stats if "dcr_share" in s)
    worst: dict[str, MiaResult] = {}
    for s in stats:
        for kind, d in s.get("mia", {}).items():
            r = MiaResult.from_dict(d)
            if kind not in worst or r.auc > worst[kind].auc:
                worst[kind] = r
    return {
        "n_sites": len(stats),
        "dcr_share": share_from_counts(closer, n).to_dict() if n else None,
        "mia": {k: v.to_dict() for k, v in worst.items()},
        "per_site": [
            {
                "site": s.get("site"),
                "n_rows": s.get("n_rows"),
                "dcr_p5": s["dcr_synthetic_to_site"]["quantiles"]["p5"],
                "dcr_share": s.get("dcr_share", {}).get("share"),
                **{f"{k}_auc": v["auc"] for k, v in s.get("mia", {}).items()},
            }
            for s in stats
        ],
    }
