"""End to end on real generator artifacts: a genuinely overfitted non-private diffusion model is
flagged and blocked; a DP-trained one passes the privacy checks and is released. Also drives the
``fedsynth audit`` CLI."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import torch
import typer
from typer.testing import CliRunner

from fedsynth.audit.canary import CanarySet, make_canaries
from fedsynth.audit.config import AuditConfig
from fedsynth.audit.gate import GateConfig
from fedsynth.audit.runner import privacy_from_ledger, run_audit, sample_for_audit
from fedsynth.audit.site_stats import site_audit_stats
from fedsynth.cli.audit import register
from fedsynth.common.artifact import release_status, require_released, save_artifact
from fedsynth.common.config import RunConfig
from fedsynth.common.encoding import TabularTransform
from fedsynth.common.errors import ReleaseBlocked
from fedsynth.common.model import TabularUNet1D
from fedsynth.common.training import train_dp, train_nonprivate

# A 100-step toy model is not trained for quality, so fidelity/utility are not gated here (they are
# gated in test_report.py); every privacy check keeps its default threshold.
TOML = """
[audit]
n_synthetic = 1000
sample_steps = 20
shadow_models = 2
shadow_targets = 8
shadow_steps = 10
reid_attacks = 30

[gate]
fidelity_min = false
utility_auc_gap_max = false
"""
CONFIG = AuditConfig(
    n_synthetic=1000,
    sample_steps=20,
    shadow_models=2,
    shadow_targets=8,
    shadow_steps=10,
    reid_attacks=30,
    gate=GateConfig(fidelity_min=None, utility_auc_gap_max=None),
)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, schema, toy) -> SimpleNamespace:
    """One site of 64 patients (+ 8 member canaries), an auditor's holdout, and two trained
    artifacts."""
    root = tmp_path_factory.mktemp("artifacts")
    t = TabularTransform(schema)
    reference = toy.population(600, 3)
    canaries = make_canaries(schema, n=16, reference=reference, seed=4)
    site = toy.population(64, 1)
    x = t.transform(pd.concat([site, canaries.members], ignore_index=True))
    run = RunConfig(diffusion_steps=100, unet_dim=16, beta_schedule="linear")
    mc, sc = run.model_config(t.n_features), run.scheduler_config()
    torch.manual_seed(0)
    model = TabularUNet1D(mc)
    overfit = train_nonprivate(
        model, x, scheduler_config=sc, batch_size=64, steps=800, lr=5e-3, seed=0
    )
    dp = train_dp(
        model,
        x,
        scheduler_config=sc,
        noise_multiplier=1.0,
        max_grad_norm=1.0,
        batch_size=24,
        steps=60,
        lr=2e-3,
        delta=1e-5,
        seed=0,
    )
    common = {
        "schema": schema,
        "model_config": mc,
        "scheduler_config": sc,
        "run_config": run.to_user_config(),
    }
    ledger = {
        "sites": {
            "hospital-a": {
                "epsilon": dp.epsilon,
                "delta": 1e-5,
                "rounds": 1,
                "num_examples": len(x),
            }
        }
    }
    history = [{"round": 1, "epsilon": dp.epsilon}]
    return SimpleNamespace(
        reference=reference,
        canaries=canaries,
        site=site,
        overfit=save_artifact(root, state_dict=overfit.state_dict, ledger={"sites": {}}, **common),
        dp=save_artifact(root, state_dict=dp.state_dict, ledger=ledger, history=history, **common),
        dp_epsilon=dp.epsilon,
    )


def test_overfitted_generator_is_flagged_and_blocked(
    world: SimpleNamespace, schema, tmp_path: Path
) -> None:
    # the per-site job: the auditor draws the sample, the site computes aggregates on its own rows
    synthetic = sample_for_audit(world.overfit, config=CONFIG)
    stats = site_audit_stats(
        world.site, synthetic, schema=schema, reference=world.reference, site="hospital-a"
    )
    report = run_audit(
        world.overfit,
        reference=world.reference,
        canaries=world.canaries,
        site_stats=[stats],
        synthetic=synthetic,
        config=CONFIG,
        out_dir=tmp_path / "report",
    )
    assert report.mia["site_distance"].auc > 0.75, report.mia["site_distance"]
    assert not report.gate.passed
    assert "mia_auc[site_distance]" in {c.name for c in report.gate.failed_checks}
    assert (tmp_path / "report" / "report.html").exists() and (
        world.overfit / "audit" / "audit.json"
    ).exists()
    status = release_status(world.overfit)
    assert status.audited and not status.released
    with pytest.raises(ReleaseBlocked, match=r"mia_auc\[site_distance\]"):
        require_released(world.overfit)


def test_dp_generator_passes_through_the_cli(
    world: SimpleNamespace, schema, tmp_path: Path
) -> None:
    app = typer.Typer()
    register(app)
    runner = CliRunner()
    (tmp_path / "gate.toml").write_text(TOML)
    world.reference.to_csv(tmp_path / "holdout.csv", index=False)
    world.site.to_csv(tmp_path / "site.csv", index=False)
    world.canaries.save(tmp_path / "canaries")
    # Act: auditor samples, the site runs its job, the auditor audits
    res = runner.invoke(
        app,
        [
            "audit",
            "sample",
            "-g",
            str(world.dp),
            "-c",
            str(tmp_path / "gate.toml"),
            "-o",
            str(tmp_path / "syn.csv"),
        ],
    )
    assert res.exit_code == 0, res.output
    res = runner.invoke(
        app,
        [
            "audit",
            "site-stats",
            "--site-data",
            str(tmp_path / "site.csv"),
            "--synthetic",
            str(tmp_path / "syn.csv"),
            "-s",
            str(world.dp / "schema.json"),
            "-r",
            str(tmp_path / "holdout.csv"),
            "--no-reid",
            "-o",
            str(tmp_path / "stats.json"),
        ],
    )
    assert res.exit_code == 0, res.output
    res = runner.invoke(
        app,
        [
            "audit",
            "-g",
            str(world.dp),
            "-r",
            str(tmp_path / "holdout.csv"),
            "-c",
            str(tmp_path / "gate.toml"),
            "--canaries",
            str(tmp_path / "canaries"),
            "--site-stats",
            str(tmp_path / "stats.json"),
            "--synthetic",
            str(tmp_path / "syn.csv"),
            "-o",
            str(tmp_path / "out"),
        ],
    )
    # Assert
    assert res.exit_code == 0, res.output
    assert "released" in res.output
    data = json.loads((tmp_path / "out" / "audit.json").read_text())
    assert data["gate"]["passed"] is True
    assert {"canary", "site_distance", "site_domias", "shadow"} <= set(data["mia"])
    assert data["privacy"]["accountant_epsilon"] == pytest.approx(world.dp_epsilon)
    assert data["privacy"]["epsilon_per_round"] == [
        {"round": 1.0, "epsilon": pytest.approx(world.dp_epsilon)}
    ]
    assert all(v["epsilon_lower_bound"] <= world.dp_epsilon for v in data["mia"].values())
    assert release_status(world.dp).released
    assert AuditConfig.from_toml(tmp_path / "gate.toml") == CONFIG


def test_cli_reports_failed_checks_and_exit_code(world: SimpleNamespace, tmp_path: Path) -> None:
    app = typer.Typer()
    register(app)
    (tmp_path / "gate.toml").write_text(
        "[audit]\nn_synthetic = 300\nsample_steps = 10\nshadow = false\nreid = false\n"
        "[gate]\nfidelity_min = 0.999\n"
    )
    world.reference.to_csv(tmp_path / "holdout.csv", index=False)
    res = CliRunner().invoke(
        app,
        [
            "audit",
            "-g",
            str(world.dp),
            "-r",
            str(tmp_path / "holdout.csv"),
            "-c",
            str(tmp_path / "gate.toml"),
            "-o",
            str(tmp_path / "out"),
        ],
    )
    assert res.exit_code == 1
    assert "fidelity" in res.output and "BLOCKED" in res.output
    assert (
        "mia_evidence" in res.output
    )  # no canaries, no site stats, no shadow: no membership evidence
    assert not release_status(world.dp).released
    res = CliRunner().invoke(app, ["audit", "-o", str(tmp_path / "x")])
    assert res.exit_code != 0 and "--generator" in res.output


def test_canaries_command(tmp_path: Path, world: SimpleNamespace) -> None:
    app = typer.Typer()
    register(app)
    world.reference.to_csv(tmp_path / "holdout.csv", index=False)
    res = CliRunner().invoke(
        app,
        [
            "audit",
            "canaries",
            "-s",
            str(world.dp / "schema.json"),
            "-r",
            str(tmp_path / "holdout.csv"),
            "-n",
            "10",
            "-o",
            str(tmp_path / "can"),
        ],
    )
    assert res.exit_code == 0, res.output
    assert sum(CanarySet.load(tmp_path / "can").member) == 5


def test_privacy_from_ledger() -> None:
    ledger = {
        "sites": {"a": {"epsilon": 1.5, "delta": 1e-5}, "b": {"epsilon": 2.5, "delta": 1e-5}},
        "history": [
            {"round": 1, "epsilon_per_site": {"a": 0.5, "b": 0.9}},
            {"round": 2, "max_epsilon": 2.5},
            "junk",
        ],
    }
    p = privacy_from_ledger(ledger)
    assert p["accountant_epsilon"] == 2.5 and p["delta"] == 1e-5
    assert p["epsilon_per_round"] == [
        {"round": 1.0, "epsilon": 0.9},
        {"round": 2.0, "epsilon": 2.5},
    ]


def test_privacy_from_server_history_shape() -> None:
    # the shape written by the server: aggregated metrics plus per-site replies; budgets are not
    # spent epsilon
    entry = {
        "server_round": 3,
        "aggregated": {"epsilon": 1.1, "epsilon-max": 1.3, "epsilon-budget": 3.0},
        "sites": [
            {"accepted": True, "metrics": {"epsilon": 1.3, "epsilon-budget": 3.0}, "site_id": "a"},
            {"accepted": False, "metrics": {"epsilon": 9.0}, "site_id": "rejected"},
        ],
    }
    p = privacy_from_ledger({"delta": 1e-5, "sites": {}, "history": [entry]})
    assert p["epsilon_per_round"] == [{"round": 3.0, "epsilon": 1.3}]
    assert p["accountant_epsilon"] is None and p["delta"] == 1e-5
