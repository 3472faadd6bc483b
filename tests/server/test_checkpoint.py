"""Server checkpoint round trip, integrity check and atomic replacement."""

from __future__ import annotations

import json

import pytest
import torch

from fedsynth.common.errors import CheckpointError
from fedsynth.server.checkpoint import Checkpoint, load_checkpoint, save_checkpoint


def _ckpt(round_: int, value: float = 1.0) -> Checkpoint:
    return Checkpoint(run_key="k", completed_round=round_, num_server_rounds=3,
                      state_dict={"w": torch.full((2, 2), value)}, rounds=({"server_round": round_},),
                      sites={"a": {"epsilon": 0.5, "rounds": round_}})


def test_missing_checkpoint_is_none(tmp_path) -> None:
    assert load_checkpoint(tmp_path / "nothing") is None


def test_round_trip_keeps_weights_round_and_sites(tmp_path) -> None:
    # Act
    save_checkpoint(tmp_path, _ckpt(1))
    save_checkpoint(tmp_path, _ckpt(2, 3.0))
    loaded = load_checkpoint(tmp_path)
    # Assert
    assert loaded is not None and loaded.completed_round == 2 and not loaded.finished
    assert torch.equal(loaded.state_dict["w"], torch.full((2, 2), 3.0))
    assert loaded.sites["a"]["rounds"] == 2
    assert sorted(p.name for p in tmp_path.glob("weights-*.pt")) == ["weights-r0002.pt"]


def test_tampered_weights_are_detected(tmp_path) -> None:
    save_checkpoint(tmp_path, _ckpt(1))
    torch.save({"w": torch.zeros(2, 2)}, tmp_path / "weights-r0001.pt")
    with pytest.raises(CheckpointError, match="sha256"):
        load_checkpoint(tmp_path)


def test_truncated_state_is_reported(tmp_path) -> None:
    save_checkpoint(tmp_path, _ckpt(1))
    (tmp_path / "state.json").write_text('{"version": 1, "run_')
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(tmp_path)


def test_state_json_is_plain_json(tmp_path) -> None:
    save_checkpoint(tmp_path, _ckpt(1))
    state = json.loads((tmp_path / "state.json").read_text())
    assert state["completed_round"] == 1 and state["run_key"] == "k"
