"""Release gate: thresholds (from TOML, with defaults) applied to an audit report.

A generator is released only if every check passes. Each failed check carries a message that says
which figure crossed which threshold, so ``fedsynth`` can tell the operator why it refuses to
release.

Example ``gate.toml``::

    [gate]
    mia_auc_max = 0.6
    dcr_share_max = 0.6
    fidelity_min = 0.6
    max_epsilon = false   # false disables a check
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Literal

from fedsynth.common.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

Status = Literal["pass", "fail", "skipped"]


@dataclass(frozen=True)
class GateConfig:
    """Release thresholds. ``None`` (``false`` in TOML) disables a check.

    Args:
        mia_auc_max: highest acceptable membership-inference AUC, for every attack run.
        mia_auc_use_ci: compare the lower end of the AUC's 95% interval rather than the point
            estimate, so that small canary sets do not fail by chance.
        mia_tpr_at_1pct_fpr_max: highest acceptable TPR at 1% FPR (attacks with >= 100 non-members
            only).
        epsilon_lb_within_accountant: fail when an empirical epsilon lower bound exceeds the
            accountant's epsilon (the DP guarantee is then contradicted: a bug or a leak).
        max_epsilon: highest acceptable accountant epsilon.
        require_mia: fail when no membership attack could be run (no canaries, site stats or shadow
            models).
        dcr_share_max: highest acceptable share of synthetic rows closer to training than holdout
            rows.
        fidelity_min: lowest acceptable overall fidelity score.
        utility_auc_gap_max: largest acceptable TRTR - TSTR AUC gap.
        singling_out_risk_max: highest acceptable anonymeter singling-out risk.
        linkability_risk_max: highest acceptable anonymeter linkability risk.
        inference_risk_max: highest acceptable anonymeter attribute-inference risk.
        reid_use_ci: compare the lower end of each anonymeter risk's 95% interval (few attacks make
            the point estimate noisy).
    """

    mia_auc_max: float | None = 0.6
    mia_auc_use_ci: bool = True
    mia_tpr_at_1pct_fpr_max: float | None = None
    epsilon_lb_within_accountant: bool = True
    max_epsilon: float | None = None
    require_mia: bool = True
    dcr_share_max: float | None = 0.6
    fidelity_min: float | None = 0.5
    utility_auc_gap_max: float | None = 0.25
    singling_out_risk_max: float | None = 0.2
    linkability_risk_max: float | None = 0.2
    inference_risk_max: float | None = 0.3
    reid_use_ci: bool = True

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible dict."""
        return asdict(self)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> GateConfig:
        """Build from a mapping (a ``[gate]`` table); unknown keys raise.

        Raises:
            ConfigError: unknown key or wrong type.
        """
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ConfigError(f"unknown gate key(s) {unknown}; known keys: {sorted(known)}")
        clean: dict[str, Any] = {}
        for key, value in data.items():
            default = getattr(cls(), key)
            if isinstance(default, bool):
                if not isinstance(value, bool):
                    raise ConfigError(f"gate key '{key}' must be true or false, got {value!r}")
            elif value is False:  # TOML has no null: `key = false` disables a threshold
                value = None
            elif isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(
                    f"gate key '{key}' must be a number (or false to disable), got {value!r}"
                )
            clean[key] = (
                float(value) if isinstance(value, int) and not isinstance(value, bool) else value
            )
        return cls(**clean)

    @classmethod
    def from_toml(cls, path: str | os.PathLike[str]) -> GateConfig:
        """Load thresholds from the ``[gate]`` table of a TOML file (or its top level).

        Raises:
            ConfigError: unreadable file, unknown key or wrong type.
        """
        try:
            data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read gate config {path}: {exc}") from exc
        return cls.from_mapping(data.get("gate", data))


@dataclass(frozen=True)
class CheckResult:
    """Outcome of one gate check.

    Args:
        name: check id, e.g. ``mia_auc[canary]``.
        status: ``pass``, ``fail`` or ``skipped``.
        value: the measured figure (``None`` when skipped).
        threshold: the threshold applied.
        message: a human sentence saying what was compared.
    """

    name: str
    status: Status
    value: float | None
    threshold: float | None
    message: str


@dataclass(frozen=True)
class GateResult:
    """All checks and the overall verdict."""

    passed: bool
    checks: tuple[CheckResult, ...]

    @property
    def failed_checks(self) -> tuple[CheckResult, ...]:
        """The checks that failed."""
        return tuple(c for c in self.checks if c.status == "fail")

    def summary(self) -> str:
        """One line per failed check, or a pass line."""
        if self.passed:
            return f"audit passed ({sum(c.status == 'pass' for c in self.checks)} checks)"
        return "audit FAILED:\n" + "\n".join(
            f"  - {c.name}: {c.message}" for c in self.failed_checks
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible dict."""
        return {"passed": self.passed, "checks": [asdict(c) for c in self.checks]}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> GateResult:
        """Inverse of :meth:`to_dict`."""
        return cls(passed=bool(d["passed"]), checks=tuple(CheckResult(**c) for c in d["checks"]))


def _upper(name: str, value: float | None, limit: float | None, what: str) -> CheckResult:
    if limit is None:
        return CheckResult(name, "skipped", value, None, f"{what}: check disabled")
    if value is None:
        return CheckResult(name, "skipped", None, limit, f"{what}: not measured")
    ok = value <= limit
    verb = "is within" if ok else "exceeds"
    return CheckResult(
        name,
        "pass" if ok else "fail",
        value,
        limit,
        f"{what} {value:.3f} {verb} the limit {limit:.3f}",
    )


def _lower(name: str, value: float | None, limit: float | None, what: str) -> CheckResult:
    if limit is None:
        return CheckResult(name, "skipped", value, None, f"{what}: check disabled")
    if value is None:
        return CheckResult(name, "skipped", None, limit, f"{what}: not measured")
    ok = value >= limit
    verb = "meets" if ok else "is below"
    return CheckResult(
        name,
        "pass" if ok else "fail",
        value,
        limit,
        f"{what} {value:.3f} {verb} the minimum {limit:.3f}",
    )


def _get(d: Mapping[str, Any] | None, *keys: str) -> Any:
    for k in keys:
        if not isinstance(d, Mapping) or d.get(k) is None:
            return None
        d = d[k]
    return d


def evaluate_gate(report: Mapping[str, Any], config: GateConfig | None = None) -> GateResult:
    """Apply the thresholds to an audit report (the ``audit.json`` content).

    Args:
        report: the audit report dict (see :class:`fedsynth.audit.runner.AuditReport`).
        config: thresholds; defaults when ``None``.

    Returns:
        The verdict and every check's outcome.
    """
    cfg = config or GateConfig()
    checks: list[CheckResult] = []
    attacks: Mapping[str, Any] = report.get("mia") or {}
    acct_eps = _get(report, "privacy", "accountant_epsilon")
    for name, res in sorted(attacks.items()):
        auc, lo, hi = res["auc"], res["auc_ci"][0], res["auc_ci"][1]
        value = lo if cfg.mia_auc_use_ci else auc
        c = _upper(
            f"mia_auc[{name}]",
            value,
            cfg.mia_auc_max,
            f"{name} attack AUC {auc:.3f} (95% CI {lo:.3f}-{hi:.3f}); "
            + ("lower CI end" if cfg.mia_auc_use_ci else "AUC"),
        )
        checks.append(c)
        if cfg.mia_tpr_at_1pct_fpr_max is not None and res.get("n_nonmembers", 0) >= 100:
            checks.append(
                _upper(
                    f"mia_tpr_at_1pct_fpr[{name}]",
                    res["tpr_at_fpr"].get("0.01"),
                    cfg.mia_tpr_at_1pct_fpr_max,
                    f"{name} attack TPR at 1% FPR",
                )
            )
        eps_lb = res.get("epsilon_lower_bound")
        if cfg.epsilon_lb_within_accountant and acct_eps is not None and eps_lb is not None:
            checks.append(
                _upper(
                    f"epsilon_lower_bound[{name}]",
                    eps_lb,
                    float(acct_eps),
                    f"{name} empirical epsilon lower bound (vs accountant epsilon)",
                )
            )
    if cfg.require_mia and not attacks:
        checks.append(
            CheckResult(
                "mia_evidence",
                "fail",
                None,
                None,
                "no membership-inference attack could be run: pass canaries (--canaries), "
                "per-site stats (--site-stats) or enable the shadow attack",
            )
        )
    checks.append(
        _upper(
            "max_epsilon",
            None if acct_eps is None else float(acct_eps),
            cfg.max_epsilon,
            "accountant epsilon",
        )
    )
    checks.append(
        _upper(
            "dcr_share",
            _get(report, "distance", "dcr_share", "share"),
            cfg.dcr_share_max,
            "share of synthetic rows closer to training than to holdout rows",
        )
    )
    checks.append(
        _lower(
            "fidelity",
            _get(report, "fidelity", "overall"),
            cfg.fidelity_min,
            "overall fidelity score",
        )
    )
    checks.append(
        _upper(
            "utility_auc_gap",
            _get(report, "utility", "max_auc_gap"),
            cfg.utility_auc_gap_max,
            "TRTR - TSTR AUC gap",
        )
    )
    for key, limit in (
        ("singling_out", cfg.singling_out_risk_max),
        ("linkability", cfg.linkability_risk_max),
        ("inference", cfg.inference_risk_max),
    ):
        what = f"anonymeter {key.replace('_', '-')} risk"
        error = _get(report, "reid", key, "error")
        if error is not None and limit is not None:
            checks.append(
                CheckResult(
                    f"reid[{key}]", "skipped", None, limit, f"{what}: evaluator failed ({error})"
                )
            )
            continue
        risk, ci = _get(report, "reid", key, "risk"), _get(report, "reid", key, "ci")
        if cfg.reid_use_ci and risk is not None and ci:
            what = f"{what} {risk:.3f} (95% CI {ci[0]:.3f}-{ci[1]:.3f}); lower CI end"
            risk = ci[0]
        checks.append(_upper(f"reid[{key}]", risk, limit, what))
    return GateResult(passed=not any(c.status == "fail" for c in checks), checks=tuple(checks))
