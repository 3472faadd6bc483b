"""Re-identification risks with anonymeter (Giomi et al., PoPETs 2023).

Three attacks: singling out, linkability and attribute inference.

anonymeter compares attacks on the records a generator was trained on (``ori``) with the same
attacks on records it never saw (``control``); the risk is the excess success on ``ori``. The
auditor never holds a site's rows, so this runs either at the site
(:func:`fedsynth.audit.site_stats.site_audit_stats` with ``reid=True``: ``ori`` = the site's rows,
``control`` = reference rows) or centrally on canaries (``ori`` = member canaries, ``control`` =
held-out canaries), a worst case since canaries are outliers. Attack counts are bounded to keep the
cost small on 2 cores.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd

from fedsynth.common.schema import Schema, canonical


@dataclass(frozen=True)
class RiskFigure:
    """One anonymeter risk.

    Args:
        risk: estimated privacy risk in [0, 1] (0 = no excess success over the control attack).
        ci: 95% confidence interval of the risk.
        attack_rate: success rate of the attack on training records.
        control_rate: success rate on control records.
        baseline_rate: success rate of a random-guess attack.
        n_attacks: attacks run.
    """

    risk: float
    ci: tuple[float, float]
    attack_rate: float
    control_rate: float
    baseline_rate: float
    n_attacks: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible dict."""
        d = asdict(self)
        d["ci"] = list(self.ci)
        return d


def _figure(evaluator: Any, n_attacks: int) -> RiskFigure:
    risk = evaluator.risk(confidence_level=0.95)
    res = evaluator.results(confidence_level=0.95)
    return RiskFigure(
        risk=float(risk.value),
        ci=(float(risk.ci[0]), float(risk.ci[1])),
        attack_rate=float(res.attack_rate.value),
        control_rate=float(res.control_rate.value)
        if res.control_rate is not None
        else float("nan"),
        baseline_rate=float(res.baseline_rate.value),
        n_attacks=n_attacks,
    )


def _harmonise(df: pd.DataFrame, schema: Schema) -> pd.DataFrame:
    """Give every frame the same columns and dtypes (anonymeter refuses e.g. CSV ints vs floats)."""
    out = {}
    for col in schema.columns:
        if col.kind == "numeric":
            out[col.name] = pd.to_numeric(df[col.name], errors="coerce").astype(float)
        else:
            out[col.name] = (
                df[col.name].map(lambda v: None if pd.isna(v) else canonical(v)).astype(object)
            )
    return pd.DataFrame(out, columns=list(schema.names)).reset_index(drop=True)


def reid_risks(
    ori: pd.DataFrame,
    synthetic: pd.DataFrame,
    control: pd.DataFrame,
    *,
    schema: Schema,
    secret: str | None = None,
    n_attacks: int = 200,
    max_rows: int = 2000,
    seed: int = 0,
) -> dict[str, dict[str, Any]]:
    """Run anonymeter's three evaluators.

    Args:
        ori: training records (at a site, or member canaries).
        synthetic: synthetic rows.
        control: records from the same population not used for training.
        schema: the schema (column order, default secret = ``schema.target``).
        secret: the column the inference attack tries to guess.
        n_attacks: attacks per evaluator (capped by the control size).
        max_rows: cap on synthetic rows (seeded subsample).
        seed: random seed.

    Returns:
        ``{"singling_out": ..., "linkability": ..., "inference": ...}`` as dicts of
        :class:`RiskFigure`; an evaluator that fails is reported as ``{"error": message}``.
    """
    from anonymeter.evaluators import InferenceEvaluator, LinkabilityEvaluator, SinglingOutEvaluator

    cols = list(schema.names)
    ori, control = _harmonise(ori, schema), _harmonise(control, schema)
    syn = _harmonise(synthetic.sample(n=min(max_rows, len(synthetic)), random_state=seed), schema)
    n = int(max(1, min(n_attacks, len(control), len(ori))))
    rng = np.random.default_rng(seed)
    shuffled = list(rng.permutation(cols))
    half = len(shuffled) // 2
    secret = secret or schema.target or cols[-1]
    aux = [c for c in cols if c != secret]
    out: dict[str, dict[str, Any]] = {}
    jobs = {
        "singling_out": lambda: SinglingOutEvaluator(
            ori=ori, syn=syn, control=control, n_attacks=n, n_cols=3, max_attempts=20 * n, seed=seed
        ),
        "linkability": lambda: LinkabilityEvaluator(
            ori=ori,
            syn=syn,
            control=control,
            n_attacks=n,
            aux_cols=(shuffled[:half], shuffled[half:]),
        ),
        "inference": lambda: InferenceEvaluator(
            ori=ori,
            syn=syn,
            control=control,
            n_attacks=n,
            aux_cols=aux,
            secret=secret,
            regression=schema.column(secret).kind == "numeric",
        ),
    }
    for name, make in jobs.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ev = make()
                ev.evaluate(n_jobs=1) if name != "singling_out" else ev.evaluate(
                    mode="multivariate"
                )
                out[name] = _figure(ev, n).to_dict()
        except Exception as exc:  # anonymeter raises plain exceptions (e.g. too few queries found)
            out[name] = {"error": f"{type(exc).__name__}: {exc}"}
    return out
