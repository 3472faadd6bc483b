"""audit.json + self-contained HTML report, rendered in headless Chromium."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from fedsynth.audit.canary import make_canaries
from fedsynth.audit.config import AuditConfig
from fedsynth.audit.report import SECTIONS, write_report
from fedsynth.audit.runner import AuditReport, audit_synthetic
from fedsynth.audit.site_stats import site_audit_stats

PRIVACY = {
    "accountant_epsilon": 3.0,
    "delta": 1e-5,
    "epsilon_per_round": [{"round": r, "epsilon": 0.6 * r} for r in range(1, 6)],
}


def _audit(schema, reference, site_rows, generator) -> tuple[AuditReport, pd.DataFrame]:
    """Audit a fake generator trained (or not) on site_rows + member canaries."""
    canaries = make_canaries(schema, n=40, reference=reference, seed=5)
    train = pd.concat([site_rows, canaries.members], ignore_index=True)
    gen = generator(train)
    synthetic = gen.sample(1500, seed=0)
    stats = [
        site_audit_stats(
            site_rows, synthetic, schema=schema, reference=reference, site="hospital-a"
        )
    ]
    cfg = AuditConfig(shadow=False, reid_attacks=60)
    report = audit_synthetic(
        synthetic,
        schema=schema,
        reference=reference,
        canaries=canaries,
        site_stats=stats,
        privacy=PRIVACY,
        config=cfg,
    )
    return report, synthetic


@pytest.fixture(scope="module")
def leaky_report(schema, reference, site_rows, toy) -> tuple[AuditReport, pd.DataFrame]:
    return _audit(schema, reference, site_rows, toy.memoriser)


def test_memoriser_is_flagged_and_independent_generator_passes(
    schema, reference, site_rows, toy, leaky_report
) -> None:
    leaky, _ = leaky_report
    safe, _ = _audit(schema, reference, site_rows, lambda _train: toy.independent())
    assert leaky.mia["canary"].auc > 0.85 and leaky.mia["site_distance"].auc > 0.85
    assert not leaky.gate.passed
    failed = {c.name for c in leaky.gate.failed_checks}
    assert {"mia_auc[canary]", "mia_auc[site_distance]", "dcr_share"} <= failed
    assert safe.gate.passed, safe.gate.summary()
    assert all(abs(r.auc - 0.5) < 0.2 for r in safe.mia.values())
    assert safe.fidelity is not None and safe.fidelity["overall"] > 0.85
    assert safe.utility is not None and safe.utility["max_auc_gap"] < 0.1


def test_audit_json_is_strict_json(tmp_path: Path, schema, reference, leaky_report) -> None:
    report, synthetic = leaky_report
    out = write_report(report, tmp_path, real=reference, synthetic=synthetic, schema=schema)
    data = json.loads((out / "audit.json").read_text())
    assert data["gate"]["passed"] is False
    assert {"canary", "canary_domias", "site_distance", "site_domias"} <= set(data["mia"])
    assert set(data["fidelity"]) >= {"overall", "column_shapes", "column_pair_trends"}
    assert data["privacy"]["accountant_epsilon"] == 3.0
    assert data["reid"]["source"] == "sites" or "singling_out" in data["reid"]


def test_html_report_renders_in_headless_chromium(
    tmp_path: Path, schema, reference, leaky_report
) -> None:
    report, synthetic = leaky_report
    out = write_report(report, tmp_path, real=reference, synthetic=synthetic, schema=schema)
    page = (out / "report.html").read_text()
    assert 'src="http' not in page and "<link" not in page  # self-contained
    for section in SECTIONS:
        assert f"id='{section}'" in page
    browser = next(
        (
            shutil.which(b)
            for b in ("chromium", "chromium-browser", "google-chrome")
            if shutil.which(b)
        ),
        None,
    )
    if browser is None:
        pytest.skip(
            "headless Chromium not installed (apt-get install -y chromium); "
            "static HTML checks passed"
        )
    dom = subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--virtual-time-budget=10000",
            "--dump-dom",
            (out / "report.html").as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    total = int(re.search(r'data-images-total="(\d+)"', dom).group(1))  # type: ignore[union-attr]
    ok = int(re.search(r'data-images-ok="(\d+)"', dom).group(1))  # type: ignore[union-attr]
    assert (
        total >= 5 and ok == total
    )  # every inline plot decoded (distributions, correlations, ROC, epsilon, DCR)
    assert 'data-verdict="fail"' in dom and "RELEASE BLOCKED" in dom
    for heading in (
        "Membership inference",
        "Fidelity",
        "Utility (train on synthetic, test on real)",
        "Privacy accounting",
        "Re-identification risks",
    ):
        assert heading in dom
    assert "mia_auc[canary]" in dom
