"""Release gate: thresholds from TOML, pass/fail verdicts and their messages."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedsynth.audit.config import AuditConfig
from fedsynth.audit.gate import GateConfig, GateResult, evaluate_gate
from fedsynth.common.errors import ConfigError


def _mia(auc: float, lo: float, hi: float, eps: float = 0.0) -> dict:
    return {
        "auc": auc,
        "auc_ci": [lo, hi],
        "tpr_at_fpr": {"0.01": 0.01},
        "epsilon_lower_bound": eps,
        "n_nonmembers": 50,
    }


def _report(**over: object) -> dict:
    base = {
        "privacy": {"accountant_epsilon": 3.0, "delta": 1e-5},
        "mia": {"canary": _mia(0.52, 0.41, 0.63)},
        "distance": {"dcr_share": {"share": 0.51}},
        "fidelity": {"overall": 0.82},
        "utility": {"max_auc_gap": 0.05},
        "reid": {
            "singling_out": {"risk": 0.01},
            "linkability": {"risk": 0.0},
            "inference": {"risk": 0.02},
        },
    }
    base.update(over)
    return base


def test_good_report_passes() -> None:
    res = evaluate_gate(_report())
    assert res.passed, res.summary()
    assert not res.failed_checks
    assert "passed" in res.summary()


def test_each_failure_names_the_check_and_the_figures() -> None:
    report = _report(
        mia={"canary": _mia(0.97, 0.93, 1.0, eps=3.4)},
        distance={"dcr_share": {"share": 0.93}},
        fidelity={"overall": 0.31},
        utility={"max_auc_gap": 0.4},
    )
    res = evaluate_gate(report)
    assert not res.passed
    failed = {c.name: c.message for c in res.failed_checks}
    assert set(failed) == {
        "mia_auc[canary]",
        "epsilon_lower_bound[canary]",
        "dcr_share",
        "fidelity",
        "utility_auc_gap",
    }
    assert (
        "canary attack AUC 0.970" in failed["mia_auc[canary]"]
        and "exceeds the limit 0.600" in failed["mia_auc[canary]"]
    )
    assert "3.400 exceeds the limit 3.000" in failed["epsilon_lower_bound[canary]"]
    assert "0.310 is below the minimum 0.500" in failed["fidelity"]
    assert "mia_auc[canary]" in res.summary()
    assert GateResult.from_dict(res.to_dict()) == res


def test_point_estimate_mode_and_missing_evidence() -> None:
    report = _report(mia={"canary": _mia(0.64, 0.52, 0.75)})
    assert evaluate_gate(report).passed  # lower CI end 0.52 <= 0.6
    assert not evaluate_gate(report, GateConfig(mia_auc_use_ci=False)).passed
    res = evaluate_gate(_report(mia={}))
    assert [c.name for c in res.failed_checks] == ["mia_evidence"]
    assert evaluate_gate(_report(mia={}), GateConfig(require_mia=False)).passed


def test_unmeasured_checks_are_skipped_not_failed() -> None:
    res = evaluate_gate({"mia": {"canary": _mia(0.5, 0.4, 0.6)}, "privacy": {}})
    assert res.passed
    assert {c.name for c in res.checks if c.status == "skipped"} >= {
        "fidelity",
        "dcr_share",
        "utility_auc_gap",
    }


def test_config_from_toml(tmp_path: Path) -> None:
    path = tmp_path / "gate.toml"
    path.write_text(
        "[audit]\nn_synthetic = 1000\nshadow = false\n\n"
        "[gate]\nmia_auc_max = 0.55\nfidelity_min = 0.9\nmax_epsilon = 5\ndcr_share_max = false\n"
    )
    cfg = AuditConfig.from_toml(path)
    assert cfg.n_synthetic == 1000 and cfg.shadow is False
    assert (
        cfg.gate.mia_auc_max == 0.55
        and cfg.gate.max_epsilon == 5.0
        and cfg.gate.dcr_share_max is None
    )
    assert GateConfig.from_toml(path) == cfg.gate
    res = evaluate_gate(_report(), cfg.gate)
    assert [c.name for c in res.failed_checks] == ["fidelity"]


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("[gate]\nmia_auc = 0.5\n", "unknown gate key"),
        ("[gate]\nmia_auc_max = 'high'\n", "must be a number"),
        ("[gate]\nrequire_mia = 1\n", "true or false"),
        ("[audit]\nn_synthetic = 'many'\n", "must be of type int"),
        ("[audit]\nbackend = 'annoy'\n", "backend"),
        ("[gates]\n", "unknown table"),
        ("[gate\n", "cannot read"),
    ],
)
def test_config_errors_name_the_key(tmp_path: Path, text: str, match: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=match):
        AuditConfig.from_toml(path)


def test_failed_reid_evaluator_is_reported() -> None:
    report = _report(
        reid={"singling_out": {"risk": 0.0}, "linkability": {"error": "RuntimeError: boom"}}
    )
    res = evaluate_gate(report)
    link = next(c for c in res.checks if c.name == "reid[linkability]")
    assert res.passed and link.status == "skipped" and "boom" in link.message
