"""Atomic per-round server checkpoints: global weights, round number and the per-site epsilon report.

Layout of a checkpoint folder (``<output-dir>/checkpoint``)::

    state.json      # {"version", "run_key", "completed_round", "num_server_rounds", "weights_file",
                    #  "weights_sha256", "rounds": [RoundReport...], "sites": {site_id: {...latest...}}}
    weights-rNNNN.pt

``weights-rNNNN.pt`` is written first (atomically), then ``state.json`` is replaced atomically, so a crash at
any point leaves the previous complete checkpoint readable; stale weight files are pruned afterwards.

The epsilon values are the sites' own reports (a copy). Each site's durable ledger is the authority; the
``run_key`` lets a site recognise a replayed round after a restart and answer it from its cache without
spending epsilon twice.
"""

from __future__ import annotations

import io
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from fedsynth.common.errors import CheckpointError
from fedsynth.common.io import atomic_write_bytes, atomic_write_json, read_json, state_dict_digest

__all__ = ["Checkpoint", "save_checkpoint", "load_checkpoint", "new_run_key", "weights_digest"]

CHECKPOINT_VERSION = 1
STATE_FILE = "state.json"


def new_run_key() -> str:
    """A fresh identifier for one federated training run (kept across ServerApp restarts)."""
    return uuid.uuid4().hex


weights_digest = state_dict_digest


@dataclass(frozen=True)
class Checkpoint:
    """The server's state after ``completed_round`` rounds.

    Args:
        run_key: identifier of the training run (survives restarts).
        completed_round: last fully aggregated round (0 = initial weights only).
        num_server_rounds: rounds planned for the run.
        state_dict: global denoiser weights.
        rounds: per-round site reports (JSON-ready dicts, see ``server.strategy.RoundReport.to_dict``), with the
            aggregated metrics and the round's ``timing`` (Unix times ``started_at``, ``replies_at``,
            ``aggregated_at``, from the ServerApp's clock).
        sites: latest report per site id (epsilon, delta, loss, rounds trained).
    """

    run_key: str
    completed_round: int
    num_server_rounds: int
    state_dict: dict[str, torch.Tensor]
    rounds: tuple[dict[str, Any], ...] = ()
    sites: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def finished(self) -> bool:
        """Whether all planned rounds are aggregated."""
        return self.completed_round >= self.num_server_rounds


def save_checkpoint(directory: str | os.PathLike[str], checkpoint: Checkpoint) -> Path:
    """Atomically write ``checkpoint`` under ``directory`` and prune older weight files.

    Returns:
        The path of ``state.json``.
    """
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    weights_name = f"weights-r{checkpoint.completed_round:04d}.pt"
    buffer = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in checkpoint.state_dict.items()}, buffer)
    atomic_write_bytes(folder / weights_name, buffer.getvalue())
    state = {
        "version": CHECKPOINT_VERSION,
        "run_key": checkpoint.run_key,
        "completed_round": checkpoint.completed_round,
        "num_server_rounds": checkpoint.num_server_rounds,
        "weights_file": weights_name,
        "weights_sha256": weights_digest(checkpoint.state_dict),
        "rounds": list(checkpoint.rounds),
        "sites": checkpoint.sites,
    }
    path = atomic_write_json(folder / STATE_FILE, state)
    for old in folder.glob("weights-r*.pt"):
        if old.name != weights_name:
            old.unlink(missing_ok=True)
    return path


def load_checkpoint(directory: str | os.PathLike[str]) -> Checkpoint | None:
    """Load the checkpoint under ``directory``, or ``None`` when there is none yet.

    Raises:
        CheckpointError: the checkpoint exists but is corrupt, of another version, or its weights do not match.
    """
    folder = Path(directory)
    if not (folder / STATE_FILE).exists():
        return None
    state = read_json(folder / STATE_FILE, what="server checkpoint")
    if not isinstance(state, dict) or state.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(f"server checkpoint {folder / STATE_FILE} has an unknown version")
    weights_path = folder / str(state["weights_file"])
    try:
        state_dict = torch.load(weights_path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError) as exc:
        raise CheckpointError(f"checkpoint weights {weights_path} cannot be read ({exc})") from exc
    if weights_digest(state_dict) != state["weights_sha256"]:
        raise CheckpointError(f"checkpoint weights {weights_path} do not match state.json (sha256)")
    return Checkpoint(
        run_key=str(state["run_key"]),
        completed_round=int(state["completed_round"]),
        num_server_rounds=int(state["num_server_rounds"]),
        state_dict=dict(state_dict),
        rounds=tuple(state.get("rounds", [])),
        sites=dict(state.get("sites", {})),
    )
