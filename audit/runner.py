"""The audit facade: sample the generator, run every check, apply the gate, write the report.

Inputs the auditor may hold (never a site's raw rows): the generator artifact, an operator reference
(holdout) table, a canary set with known membership, and per-site aggregates from
:func:`fedsynth.audit.site_stats.site_audit_stats`. The utility baseline (train on real) is trained
on half of the reference table and both baselines are tested on the other half.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fedsynth.audit.canary import CanarySet, canary_scores
from fedsynth.audit.config import AuditConfig
from fedsynth.audit.distance import dcr, nndr, summarize
from fedsynth.audit.domias import DomiasConfig, domias_scores
from fedsynth.audit.fidelity import evaluate_fidelity
from fedsynth.audit.gate import GateResult, evaluate_gate
from fedsynth.audit.jsonable import to_jsonable
from fedsynth.audit.mia import MiaResult, evaluate_attack
from fedsynth.audit.reid import reid_risks
from fedsynth.audit.shadow import ShadowConfig, ShadowTrainer, shadow_attack
from fedsynth.audit.site_stats import pool_site_stats
from fedsynth.audit.utility import evaluate_utility
from fedsynth.common.encoding import TabularTransform
from fedsynth.common.schema import Schema

log = logging.getLogger(__name__)
AUDIT_DIR = "audit"


@dataclass(frozen=True)
class AuditReport:
    """Everything the audit measured, plus the gate verdict.

    Args:
        generator: what was audited (path, version, rows sampled).
        privacy: accountant epsilon/delta (worst site) and epsilon per round.
        mia: membership attacks by name.
        distance: DCR/NNDR summaries and the (site-pooled) DCR share.
        reid: anonymeter risks (worst over sites, or on canaries), or ``None``.
        fidelity: fidelity figures against the reference, or ``None``.
        utility: TSTR vs TRTR figures, or ``None``.
        gate: the verdict.
        config: the settings used.
        notes: caveats (what was skipped and why).
        created: ISO timestamp.
    """

    generator: dict[str, Any]
    privacy: dict[str, Any]
    mia: dict[str, MiaResult]
    distance: dict[str, Any]
    reid: dict[str, Any] | None
    fidelity: dict[str, Any] | None
    utility: dict[str, Any] | None
    gate: GateResult
    config: AuditConfig
    notes: tuple[str, ...] = ()
    created: str = field(
        default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    )

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible dict (the content of ``audit.json``; NaN becomes ``null``)."""
        return to_jsonable(
            {
                "version": 1,
                "created": self.created,
                "generator": self.generator,
                "privacy": self.privacy,
                "mia": {k: v.to_dict() for k, v in self.mia.items()},
                "distance": self.distance,
                "reid": self.reid,
                "fidelity": self.fidelity,
                "utility": self.utility,
                "gate": self.gate.to_dict(),
                "config": self.config.to_dict(),
                "notes": list(self.notes),
            }
        )


def _spent_epsilons(record: Any) -> list[float]:
    """Numeric values of keys naming a spent epsilon (``epsilon``, ``epsilon-max``; not budgets)."""
    if not isinstance(record, dict):
        return []
    return [
        float(v)
        for k, v in record.items()
        if "epsilon" in str(k)
        and "budget" not in str(k)
        and isinstance(v, (int, float))
        and not isinstance(v, bool)
    ]


def _round_epsilon(entry: dict[str, Any]) -> list[float]:
    values = _spent_epsilons(entry) + _spent_epsilons(entry.get("aggregated"))
    nested = entry.get("epsilon_per_site") or entry.get("epsilons") or {}
    if isinstance(nested, dict):
        values += [float(v) for v in nested.values() if isinstance(v, (int, float))]
    for site in entry.get("sites") or []:  # per-site replies: {"site_id", "metrics": {...}}
        if isinstance(site, dict) and site.get("accepted", True):
            values += _spent_epsilons(site.get("metrics"))
    return values


def privacy_from_ledger(ledger: dict[str, Any]) -> dict[str, Any]:
    """Worst-site accountant epsilon/delta and epsilon per round from an artifact's
    ``privacy_ledger.json``.

    Reads ``sites.<id>.epsilon/delta`` and, per ``history`` entry, the round number (``round`` or
    ``server_round``) and the largest spent epsilon found at the top level, under ``aggregated``, in
    an ``epsilon_per_site`` mapping or in the ``sites[].metrics`` replies (budgets are ignored).
    """
    sites = ledger.get("sites") or {}
    eps = [float(s["epsilon"]) for s in sites.values() if s.get("epsilon") is not None]
    deltas = [float(s["delta"]) for s in sites.values() if s.get("delta") is not None]
    per_round: list[dict[str, float]] = []
    for i, entry in enumerate(ledger.get("history") or []):
        values = _round_epsilon(entry) if isinstance(entry, dict) else []
        if values:
            number = entry.get("round", entry.get("server_round", i + 1))
            per_round.append({"round": float(number), "epsilon": max(values)})
    return {
        "accountant_epsilon": max(eps) if eps else None,
        "delta": max(deltas) if deltas else (ledger.get("delta") or None),
        "per_site": {
            k: {"epsilon": v.get("epsilon"), "delta": v.get("delta")} for k, v in sites.items()
        },
        "epsilon_per_round": per_round,
    }


def _worst_reid(per_site: list[dict[str, Any]]) -> dict[str, Any] | None:
    worst: dict[str, Any] = {}
    for stats in per_site:
        for kind, fig in (stats.get("reid") or {}).items():
            if "risk" in fig and (kind not in worst or fig["risk"] > worst[kind]["risk"]):
                worst[kind] = {**fig, "site": stats.get("site")}
    return worst or None


def audit_synthetic(
    synthetic: pd.DataFrame,
    *,
    schema: Schema,
    reference: pd.DataFrame | None = None,
    canaries: CanarySet | None = None,
    site_stats: list[dict[str, Any]] | None = None,
    privacy: dict[str, Any] | None = None,
    config: AuditConfig | None = None,
    shadow_trainer: ShadowTrainer | None = None,
    generator_info: dict[str, Any] | None = None,
) -> AuditReport:
    """Audit a synthetic sample.

    Args:
        synthetic: rows sampled from the generator (schema columns).
        schema: the public schema.
        reference: the operator's holdout table (never seen by the sites' training), or ``None``.
        canaries: the canary set whose members the sites inserted, or ``None``.
        site_stats: aggregates returned by the per-site audit jobs, or ``None``.
        privacy: accountant figures (see :func:`privacy_from_ledger`).
        config: audit settings and gate thresholds.
        shadow_trainer: trains shadow generators; ``None`` skips the shadow attack.
        generator_info: what is being audited, copied into the report.

    Returns:
        The report (with the gate verdict).
    """
    cfg = config or AuditConfig()
    backend = cfg.backend  # type: ignore[assignment]
    t = TabularTransform(schema)
    cols = list(schema.names)
    syn = t.transform(synthetic[cols])
    privacy = privacy or {"accountant_epsilon": None, "delta": None, "epsilon_per_round": []}
    delta = float(privacy.get("delta") or 0.0)
    notes: list[str] = []
    mia: dict[str, MiaResult] = {}
    distance: dict[str, Any] = {}
    reid: dict[str, Any] | None = None
    max_d = 2.0 * float(np.sqrt(t.n_features))
    rng = np.random.default_rng(cfg.seed)
    ref = None
    if reference is not None:
        ref = t.transform(reference[cols])
        ref_sub = (
            ref
            if len(ref) <= cfg.max_rows
            else ref[rng.choice(len(ref), cfg.max_rows, replace=False)]
        )
        distance["dcr_synthetic_to_reference"] = summarize(
            dcr(syn, ref_sub, backend=backend), max_distance=max_d
        ).to_dict()
        distance["nndr_synthetic_to_reference"] = summarize(
            nndr(syn, ref_sub, backend=backend), max_distance=1.0
        ).to_dict()
    if canaries is not None:
        labels = canaries.labels
        scores = canary_scores(canaries, syn, t, backend=backend)
        mia["canary"] = evaluate_attack(
            "canary",
            scores,
            labels,
            delta=delta,
            seed=cfg.seed,
            notes="distance of each canary to the closest synthetic row",
        )
        distance["canary_dcr"] = {
            "members": summarize(-scores[labels == 1], max_distance=max_d).to_dict(),
            "nonmembers": summarize(-scores[labels == 0], max_distance=max_d).to_dict(),
        }
        if ref is not None:
            enc = t.transform(canaries.records[cols])
            dens = domias_scores(
                enc, syn, ref, config=DomiasConfig(model=cfg.domias_model, seed=cfg.seed)
            )  # type: ignore[arg-type]
            mia["canary_domias"] = evaluate_attack(
                "canary_domias",
                dens,
                labels,
                delta=delta,
                seed=cfg.seed,
                notes="density ratio p_synthetic/p_reference at each canary",
            )
    else:
        notes.append("no canaries given: the canary membership test was skipped")
    if site_stats:
        pooled = pool_site_stats(site_stats)
        distance["dcr_share"] = pooled["dcr_share"]
        distance["per_site"] = pooled["per_site"]
        for kind, res in pooled["mia"].items():
            mia[f"site_{kind}"] = MiaResult.from_dict({**res, "attack": f"site_{kind}"})
        site_reid = _worst_reid(site_stats)
        if site_reid:
            reid = {**site_reid, "source": "sites"}
    else:
        notes.append(
            "no per-site stats given: the DCR share test and site-level attacks were skipped"
        )
    if reid is None and cfg.reid and canaries is not None:
        # no site ran anonymeter: probe the worst case centrally, member canaries vs held-out
        # canaries
        members = canaries.records[canaries.labels == 1]
        reid = {
            **reid_risks(
                members,
                synthetic,
                canaries.records[canaries.labels == 0],
                schema=schema,
                n_attacks=cfg.reid_attacks,
                seed=cfg.seed,
            ),
            "source": "canaries",
        }
    elif reid is None:
        why = "disabled in the config" if not cfg.reid else "no site ran anonymeter and no canaries"
        notes.append(f"re-identification risks not computed ({why})")
    if shadow_trainer is not None and cfg.shadow and ref is not None:
        shadow_cfg = ShadowConfig(
            n_shadow=cfg.shadow_models,
            n_targets=cfg.shadow_targets,
            seed=cfg.seed,
            train_size=min(300, len(ref) // 2),
            n_synthetic=300,
        )
        mia["shadow"] = shadow_attack(
            ref, trainer=shadow_trainer, config=shadow_cfg, delta=delta, backend=backend
        )
    elif cfg.shadow:
        notes.append("shadow attack skipped (needs a reference table and a trainer)")
    fidelity = utility = None
    if reference is not None:
        fidelity = evaluate_fidelity(
            reference, synthetic, schema=schema, max_rows=cfg.max_rows, seed=cfg.seed
        ).to_dict()
        util = evaluate_utility(
            reference, synthetic, schema=schema, max_rows=cfg.max_rows, seed=cfg.seed
        )
        utility = util.to_dict() if util else None
        if util is None:
            notes.append("utility skipped: the schema has no categorical target")
    else:
        notes.append("no reference table: fidelity and utility were skipped")
    partial = {
        "privacy": privacy,
        "mia": {k: v.to_dict() for k, v in mia.items()},
        "distance": distance,
        "reid": reid,
        "fidelity": fidelity,
        "utility": utility,
    }
    gate = evaluate_gate(to_jsonable(partial), cfg.gate)
    return AuditReport(
        generator=generator_info or {"n_synthetic": len(synthetic)},
        privacy=privacy,
        mia=mia,
        distance=distance,
        reid=reid,
        fidelity=fidelity,
        utility=utility,
        gate=gate,
        config=cfg,
        notes=tuple(notes),
    )


def _default_trainer(
    generator: Any, cfg: AuditConfig, privacy: dict[str, Any], n_pool: int
) -> ShadowTrainer | None:
    """Shadow trainer that repeats the artifact's recipe in miniature, with noise giving the same
    epsilon."""
    try:
        from fedsynth.audit.shadow import diffusion_trainer
        from fedsynth.common.training import calibrate_noise, planned_sample_rate

        run = generator.run_config
        eps, delta = (
            privacy.get("accountant_epsilon"),
            float(privacy.get("delta") or run.get("target-delta", 1e-5)),
        )
        batch = 64
        noise = None
        if eps:  # a DP artifact: shadow models spend the same epsilon in their few steps
            noise = calibrate_noise(
                target_epsilon=float(eps),
                delta=delta,
                steps=cfg.shadow_steps,
                sample_rate=planned_sample_rate(n_pool, batch),
            )
        return diffusion_trainer(
            n_features=generator.transform.n_features,
            model_config=generator.model.config,
            scheduler_config=generator.scheduler_config,
            steps=cfg.shadow_steps,
            batch_size=batch,
            noise_multiplier=noise,
            max_grad_norm=float(run.get("max-grad-norm", 1.0)),
            delta=delta,
            grad_sample_mode=str(run.get("grad-sample-mode", "bookkeeping")),
        )
    except Exception as exc:  # the shadow attack is optional; report why it was skipped
        log.warning("shadow attack disabled: %s", exc)
        return None


def run_audit(
    generator_dir: str | os.PathLike[str],
    *,
    reference: pd.DataFrame | None = None,
    canaries: CanarySet | None = None,
    site_stats: list[dict[str, Any]] | None = None,
    config: AuditConfig | None = None,
    out_dir: str | os.PathLike[str] | None = None,
    shadow_trainer: ShadowTrainer | None = None,
    synthetic: pd.DataFrame | None = None,
    mark_artifact: bool = True,
) -> AuditReport:
    """Audit a generator artifact, write ``audit.json`` + ``report.html``, and record the verdict.

    Args:
        generator_dir: the ``generator-vN`` folder.
        reference: the operator's holdout table.
        canaries: the canary set used in training.
        site_stats: per-site aggregates.
        config: settings and thresholds.
        out_dir: where to write the report (default ``<generator_dir>/audit``); the report is also
            copied there when another folder is given.
        shadow_trainer: override the shadow-model trainer (default: the artifact's own recipe,
            tiny).
        synthetic: the sample to audit, when it was drawn beforehand with :func:`sample_for_audit`
            and sent to the sites for their per-site jobs; by default a fresh sample of
            ``config.n_synthetic`` rows.
        mark_artifact: write ``audit_status.json`` into the artifact (release or block it).

    Raises:
        ArtifactError: the artifact is missing or corrupt.
    """
    from fedsynth.audit.report import write_report
    from fedsynth.common.artifact import load_generator, write_audit_status
    from fedsynth.common.io import read_json

    cfg = config or AuditConfig()
    path = Path(generator_dir)
    generator = load_generator(path)
    ledger = read_json(path / "privacy_ledger.json", what="privacy ledger")
    if synthetic is None:
        synthetic = generator.sample(cfg.n_synthetic, steps=cfg.sample_steps, seed=cfg.seed)
    privacy = privacy_from_ledger(ledger)
    trainer = shadow_trainer
    if trainer is None and cfg.shadow and reference is not None:
        trainer = _default_trainer(
            generator, cfg, privacy, min(300, len(reference) // 2) + cfg.shadow_targets // 2
        )
    report = audit_synthetic(
        synthetic,
        schema=generator.schema,
        reference=reference,
        canaries=canaries,
        site_stats=site_stats,
        privacy=privacy,
        config=cfg,
        shadow_trainer=trainer,
        generator_info={
            "path": str(path),
            "version": generator.version,
            "n_synthetic": len(synthetic),
        },
    )
    targets = [path / AUDIT_DIR] + (
        [Path(out_dir)]
        if out_dir is not None and Path(out_dir).resolve() != (path / AUDIT_DIR).resolve()
        else []
    )
    for target in targets:
        write_report(report, target, real=reference, synthetic=synthetic, schema=generator.schema)
    if mark_artifact:
        write_audit_status(
            path,
            passed=report.gate.passed,
            failed_checks=[f"{c.name}: {c.message}" for c in report.gate.failed_checks],
            report=f"{AUDIT_DIR}/report.html",
            summary=headline(report),
        )
    return report


def sample_for_audit(
    generator_dir: str | os.PathLike[str], *, config: AuditConfig | None = None
) -> pd.DataFrame:
    """Draw the audit sample from an artifact that need not be released yet (the auditor's
    privilege).

    Send it to the sites for :func:`~fedsynth.audit.site_stats.site_audit_stats`, then pass it to
    :func:`run_audit` as ``synthetic`` so that every figure refers to the same rows.
    """
    from fedsynth.common.artifact import load_generator

    cfg = config or AuditConfig()
    return load_generator(generator_dir).sample(
        cfg.n_synthetic, steps=cfg.sample_steps, seed=cfg.seed
    )


def headline(report: AuditReport) -> dict[str, Any]:
    """The few figures shown in the CLI and the artifact's audit status."""
    d = report.to_dict()
    return to_jsonable(
        {
            "passed": report.gate.passed,
            "fidelity": (d["fidelity"] or {}).get("overall"),
            "utility_auc_gap": (d["utility"] or {}).get("max_auc_gap"),
            "mia_auc": {k: v["auc"] for k, v in d["mia"].items()},
            "accountant_epsilon": report.privacy.get("accountant_epsilon"),
            "empirical_epsilon_lower_bound": max(
                (v.epsilon_lower_bound for v in report.mia.values()), default=None
            ),
        }
    )
