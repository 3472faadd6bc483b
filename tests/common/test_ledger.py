"""Tests for fedsynth.common.ledger.PrivacyLedger: durable, atomic, refuses to overspend."""

from __future__ import annotations

import json

import pytest

from fedsynth.common.errors import CheckpointError, PrivacyBudgetExceeded
from fedsynth.common.ledger import PrivacyLedger
from fedsynth.common.training import epsilon_from_state

DELTA = 1e-5


def _record(ledger: PrivacyLedger, key: str, history: list[list[float]], loss: float = 0.5) -> None:
    ledger.record_round(
        key, accountant_state={"history": history, "mechanism": "rdp"}, steps=int(history[-1][2]),
        noise_multiplier=history[-1][0], sample_rate=history[-1][1], loss=loss,
    )


def test_new_ledger_is_empty_and_not_written_until_used(tmp_path) -> None:
    # Arrange / Act
    ledger = PrivacyLedger(tmp_path / "ledger.json", budget_epsilon=3.0, delta=DELTA)

    # Assert
    assert ledger.spent_epsilon == 0.0 and ledger.remaining_epsilon == 3.0
    assert not (tmp_path / "ledger.json").exists()


def test_ledger_persists_across_restart(tmp_path) -> None:
    # Arrange
    path = tmp_path / "site" / "ledger.json"
    ledger = PrivacyLedger(path, budget_epsilon=10.0, delta=DELTA, site_id="h1")
    _record(ledger, "run:1", [[1.0, 0.1, 50]])
    _record(ledger, "run:2", [[1.0, 0.1, 100]], loss=float("nan"))
    ledger.set_plan("run", 1.0)
    spent = ledger.spent_epsilon

    # Act: a "restarted" site opens the same file
    again = PrivacyLedger(path, budget_epsilon=10.0, delta=DELTA, site_id="h1")

    # Assert
    assert again.spent_epsilon == pytest.approx(spent)
    assert spent == pytest.approx(epsilon_from_state({"history": [[1.0, 0.1, 100]]}, delta=DELTA))
    assert again.accountant_state == {"history": [[1.0, 0.1, 100]], "mechanism": "rdp"}
    assert [e.round_key for e in again.entries] == ["run:1", "run:2"]
    assert again.get_round("run:2") is not None and again.get_round("run:3") is None
    assert again.get_round("run:2").loss == -1.0  # NaN loss stored as JSON-safe sentinel
    assert again.plans == {"run": 1.0}
    on_disk = json.loads(path.read_text())
    assert on_disk["spent_epsilon"] == pytest.approx(spent) and on_disk["delta"] == DELTA


def test_check_can_train_refuses_over_budget(tmp_path) -> None:
    # Arrange
    ledger = PrivacyLedger(tmp_path / "l.json", budget_epsilon=2.0, delta=DELTA, site_id="h2")
    _record(ledger, "r1", [[3.0, 0.05, 50]])

    # Act
    ok = ledger.check_can_train(noise_multiplier=5.0, sample_rate=0.05, steps=10)

    # Assert
    assert ledger.spent_epsilon < ok <= 2.0
    with pytest.raises(PrivacyBudgetExceeded, match="site 'h2' refuses to train") as info:
        ledger.check_can_train(noise_multiplier=0.8, sample_rate=0.1, steps=500)
    assert "budget of 2.000" in str(info.value)


def test_check_can_train_refuses_once_budget_already_spent(tmp_path) -> None:
    # Arrange
    ledger = PrivacyLedger(tmp_path / "l.json", budget_epsilon=1.0, delta=DELTA)
    _record(ledger, "r1", [[0.7, 0.5, 200]])
    assert ledger.spent_epsilon > 1.0 and ledger.remaining_epsilon == 0.0

    # Act / Assert
    with pytest.raises(PrivacyBudgetExceeded):
        ledger.check_can_train(noise_multiplier=100.0, sample_rate=0.01, steps=1)


@pytest.mark.parametrize(
    "content",
    ['{"version": 1, "delta": 1e-5', "[]", '{"version": 1}', '{"version": 1, "delta": "x", "accountant": {}}',
     '{"version": 1, "delta": 1e-5, "accountant": {"history": [[1]], "mechanism": "rdp"}, "rounds": [{"a": 1}]}',
     "\x00\xff garbage"],
)
def test_corrupt_ledger_raises_checkpoint_error(tmp_path, content: str) -> None:
    # Arrange
    path = tmp_path / "ledger.json"
    path.write_bytes(content.encode("latin-1"))

    # Act / Assert
    with pytest.raises(CheckpointError, match="ledger"):
        PrivacyLedger(path, budget_epsilon=3.0, delta=DELTA)


def test_delta_mismatch_raises_checkpoint_error(tmp_path) -> None:
    # Arrange
    path = tmp_path / "ledger.json"
    _record(PrivacyLedger(path, budget_epsilon=3.0, delta=DELTA), "r1", [[1.0, 0.1, 10]])

    # Act / Assert
    with pytest.raises(CheckpointError, match="delta"):
        PrivacyLedger(path, budget_epsilon=3.0, delta=1e-6)


def test_accountant_or_version_mismatch_raises_checkpoint_error(tmp_path) -> None:
    # Arrange
    path = tmp_path / "ledger.json"
    _record(PrivacyLedger(path, budget_epsilon=3.0, delta=DELTA), "r1", [[1.0, 0.1, 10]])
    data = json.loads(path.read_text())

    # Act / Assert
    with pytest.raises(CheckpointError, match="accountant"):
        PrivacyLedger(path, budget_epsilon=3.0, delta=DELTA, accountant="prv")
    path.write_text(json.dumps({**data, "version": 2}))
    with pytest.raises(CheckpointError, match="version"):
        PrivacyLedger(path, budget_epsilon=3.0, delta=DELTA)


def test_atomic_write_leaves_no_temp_files(tmp_path) -> None:
    # Arrange
    ledger = PrivacyLedger(tmp_path / "ledger.json", budget_epsilon=5.0, delta=DELTA)

    # Act
    for i in range(1, 4):
        _record(ledger, f"r{i}", [[1.0, 0.1, 10 * i]])

    # Assert
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ledger.json"]
    json.loads((tmp_path / "ledger.json").read_text())


def test_failed_write_keeps_old_file_and_no_temp(tmp_path, monkeypatch) -> None:
    # Arrange
    path = tmp_path / "ledger.json"
    ledger = PrivacyLedger(path, budget_epsilon=5.0, delta=DELTA)
    _record(ledger, "r1", [[1.0, 0.1, 10]])
    before = path.read_bytes()

    def boom(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr("fedsynth.common.io.os.replace", boom)

    # Act
    with pytest.raises(OSError, match="disk full"):
        _record(ledger, "r2", [[1.0, 0.1, 20]])

    # Assert
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ledger.json"]
