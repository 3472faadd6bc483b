"""fedsynth ServerApp: drives the rounds with checkpoint/resume and exports the generator artifact.

Flower's ``Strategy.start()`` always counts rounds from 1, so this adapter runs the round loop itself
(``configure_train`` -> :func:`send_and_receive` -> ``aggregate_train``) and checkpoints after every round
(:mod:`fedsynth.server.checkpoint`). Restarting a run with the same ``output-dir`` resumes after the last
checkpointed round with the same ``run-key``; sites answer a replayed round from their cache, so no epsilon is
spent twice.

The weights travel packed into one vector (:mod:`fedsynth.common.packing`): Flower moves each array of a
message as its own HTTP request, and the round loop polls for replies every few hundred milliseconds instead of
``Grid.send_and_receive``'s fixed 3 s. A reply is listed by the SuperLink as soon as its SuperNode has announced
it, before its objects are uploaded; a pull in that window made Flower's grid wait 1 s before trying again, so
the ServerApp retries such objects after 0.05 s instead (:func:`shorten_reply_pull_backoff`).

Server-only run-config keys (not part of :class:`~fedsynth.common.config.RunConfig`):
``output-dir`` (checkpoint, artifacts, ``result.json``) and ``schema-path`` (the declared schema JSON).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message
from flwr.serverapp import Grid, ServerApp

from fedsynth.common.artifact import save_artifact
from fedsynth.common.config import RunConfig
from fedsynth.common.encoding import TabularTransform
from fedsynth.common.errors import ConfigError
from fedsynth.common.io import atomic_write_json
from fedsynth.common.model import TabularUNet1D
from fedsynth.common.packing import LAYOUT_CONFIG_KEY, PACKED_ARRAY_KEY, pack_state_dict, unpack_state_dict
from fedsynth.common.polling import GrowingPause
from fedsynth.common.prior import pretrain_public
from fedsynth.common.schema import Schema
from fedsynth.server.checkpoint import Checkpoint, load_checkpoint, new_run_key, save_checkpoint
from fedsynth.server.strategy import RoundReport, ScreeningStrategy, make_strategy

__all__ = ["app", "ServerSettings", "split_run_config", "shorten_reply_pull_backoff", "RESULT_FILE"]

RESULT_FILE = "result.json"
SERVER_KEYS = ("output-dir", "schema-path")
#: First and longest retry pause (s) of the ServerApp pulling a reply's objects (Flower: 1 s, doubling to 10 s).
REPLY_PULL_INITIAL_BACKOFF = 0.05
REPLY_PULL_BACKOFF_CAP = 0.2

app = ServerApp()


@dataclass(frozen=True)
class ServerSettings:
    """Where the server keeps its state and reads the schema.

    Args:
        output_dir: holds ``checkpoint/``, ``artifacts/``, ``result.json`` and ``serverapp.pid``.
        schema_path: the declared schema (JSON) shared by all sites.
    """

    output_dir: Path
    schema_path: Path

    @property
    def checkpoint_dir(self) -> Path:
        """Per-round checkpoint folder."""
        return self.output_dir / "checkpoint"

    @property
    def artifact_root(self) -> Path:
        """Folder of ``generator-vN`` artifacts."""
        return self.output_dir / "artifacts"


def split_run_config(user_config: Mapping[str, Any]) -> tuple[ServerSettings, RunConfig]:
    """Split Flower's run config into server settings and the shared :class:`RunConfig`.

    Raises:
        ConfigError: ``output-dir``/``schema-path`` missing, or an invalid run-config value.
    """
    missing = [k for k in SERVER_KEYS if not str(user_config.get(k, ""))]
    if missing:
        raise ConfigError(f"run config needs {missing} (set them with flwr run --run-config)")
    known = {f.name.replace("_", "-") for f in fields(RunConfig)}
    unknown = sorted(set(user_config) - known - set(SERVER_KEYS))
    if unknown:
        raise ConfigError(f"unknown run-config keys {unknown}")
    settings = ServerSettings(
        output_dir=Path(str(user_config["output-dir"])).expanduser(),
        schema_path=Path(str(user_config["schema-path"])).expanduser(),
    )
    return settings, RunConfig.from_user_config({k: v for k, v in user_config.items() if k in known})


def _progress(server_round: int, total: int, report: RoundReport, agg_loss: float | None) -> str:
    eps = " ".join(f"{s.site_id}={s.metrics.get('epsilon', math.nan):.3f}" for s in report.accepted)
    skipped = " ".join(f"{s.site_id}({s.reason[:60]})" for s in report.sites if not s.accepted)
    loss = "n/a" if agg_loss is None else f"{agg_loss:.4f}"
    line = f"[fedsynth] round {server_round}/{total} loss={loss} epsilon: {eps or '-'}"
    return line + (f" | not aggregated: {skipped}" if skipped else "")


def _update_sites(sites: dict[str, dict[str, Any]], report: RoundReport) -> dict[str, dict[str, Any]]:
    out = {k: dict(v) for k, v in sites.items()}
    for s in report.accepted:
        prev = out.get(s.site_id, {"rounds": 0})
        out[s.site_id] = {
            "epsilon": s.metrics["epsilon"],
            "delta": s.metrics["delta"],
            "loss": s.metrics["loss"],
            "num_examples": int(s.metrics["num-examples"]),
            "noise_multiplier": s.metrics.get("noise-multiplier"),
            "rounds": int(prev.get("rounds", 0)) + 1,
            "last_round": report.server_round,
            "node_id": s.node_id,
        }
    return out


def shorten_reply_pull_backoff(initial_backoff: float = REPLY_PULL_INITIAL_BACKOFF,
                               backoff_cap: float = REPLY_PULL_BACKOFF_CAP) -> None:
    """Make the ServerApp's grid retry a reply object that is not uploaded yet after ``initial_backoff`` s.

    Flower's ``HttpGrid.pull_messages`` pulls each reply's objects with ``pull_objects`` and its defaults (first
    retry after 1 s, doubling to 10 s, at most 500 tries per object); the same function with the shorter pauses
    and no limit on the tries is put in its place (Flower's limit on the total time, 2 h, stays).

    Raises:
        RuntimeError: the installed flwr's grid no longer pulls objects with ``pull_objects``.
    """
    from flwr.supercore.inflatable import inflatable_utils
    from flwr.superlink.grid import http_grid

    from fedsynth.common.rebind import shorten_pull_retry

    shorten_pull_retry(
        http_grid, "pull_objects", inflatable_utils.pull_objects,
        changed="flwr's HttpGrid no longer pulls reply objects with pull_objects",
        initial_backoff=initial_backoff, backoff_cap=backoff_cap,
    )


def send_and_receive(grid: Grid, messages: Iterable[Message], *, timeout: float, expected: float | None = None,
                     min_interval: float = 0.1, max_interval: float = 1.0) -> list[Message]:
    """Push ``messages`` and pull their replies until all are in or ``timeout`` seconds have passed.

    Like ``Grid.send_and_receive``, but the pause between pulls grows with the time already waited
    (``min_interval`` + 3% of it, at most ``max_interval``) instead of a fixed 3 s: a reply is seen within
    a few percent of the round's duration while an idle round costs the SuperLink few requests.

    Args:
        expected: seconds the replies took in earlier rounds, if known. The first pull then waits until 75% of
            it and the growing pauses count from there: each pull costs the SuperLink and this process CPU
            that the sites' training (on a shared machine) would otherwise have.
    """
    pending = {mid for mid in grid.push_messages(messages) if mid}
    start = time.monotonic()
    if expected is not None:
        time.sleep(min(0.75 * expected, timeout))
    pause = GrowingPause(floor=min_interval, cap=max_interval)
    pause.mark()
    replies: list[Message] = []
    while pending:
        got = list(grid.pull_messages(pending))
        replies.extend(got)
        pending.difference_update(m.metadata.reply_to_message_id for m in got)
        waited = time.monotonic() - start
        if not pending or waited >= timeout:
            break
        time.sleep(min(pause.next(), max(0.0, timeout - waited)))
    return replies


def run_rounds(grid: Grid, *, settings: ServerSettings, cfg: RunConfig, user_config: Mapping[str, Any],
               strategy: ScreeningStrategy) -> Path:
    """Run (or resume) the federation and export the artifact; return its folder."""
    result_path = settings.output_dir / RESULT_FILE
    schema = Schema.load(settings.schema_path)
    transform = TabularTransform(schema)
    model_config = cfg.model_config(transform.n_features)

    ckpt = load_checkpoint(settings.checkpoint_dir)
    if ckpt is None:
        torch.manual_seed(cfg.seed)
        initial = TabularUNet1D(model_config)
        if cfg.public_pretrain_steps > 0:
            print(f"[fedsynth] public warm start: {cfg.public_pretrain_steps} steps on schema-only rows "
                  "(no privacy cost)", flush=True)
            initial.load_state_dict(pretrain_public(
                initial, transform, scheduler_config=cfg.scheduler_config(),
                steps=cfg.public_pretrain_steps, batch_size=min(cfg.batch_size, 256), lr=cfg.lr, seed=cfg.seed,
            ).state_dict)
        ckpt = Checkpoint(run_key=new_run_key(), completed_round=0, num_server_rounds=cfg.num_server_rounds,
                          state_dict=initial.state_dict())
        save_checkpoint(settings.checkpoint_dir, ckpt)
        print(f"[fedsynth] new run {ckpt.run_key}: {cfg.num_server_rounds} rounds", flush=True)
    else:
        print(f"[fedsynth] resuming run {ckpt.run_key} after round {ckpt.completed_round}", flush=True)
    if result_path.exists() and ckpt.completed_round >= cfg.num_server_rounds:
        done = json.loads(result_path.read_text())
        print(f"[fedsynth] run already finished; artifact {done['artifact']}", flush=True)
        return Path(done["artifact"])

    flat, layout = pack_state_dict(ckpt.state_dict)
    arrays = ArrayRecord({PACKED_ARRAY_KEY: flat})
    rounds, sites = list(ckpt.rounds), dict(ckpt.sites)
    reply_waits: list[float] = []  # seconds until all replies were in, per complete round of this process
    train_config = {"run-key": ckpt.run_key, "schema-json": json.dumps(schema.to_dict()),
                    LAYOUT_CONFIG_KEY: layout.to_json()}
    for server_round in range(ckpt.completed_round + 1, cfg.num_server_rounds + 1):
        started = time.time()
        messages = list(strategy.configure_train(server_round, arrays, ConfigRecord(dict(train_config)), grid))
        replies = send_and_receive(grid, messages, timeout=cfg.round_timeout,
                                   expected=min(reply_waits[-3:]) if reply_waits else None)
        replied = time.time()
        new_arrays, metrics = strategy.aggregate_train(server_round, replies)
        if new_arrays is not None:
            arrays = new_arrays
        report = strategy.reports[-1]
        timing = {"started_at": started, "replies_at": replied, "aggregated_at": time.time()}
        if len(replies) == len(messages):  # a round cut short by the timeout says nothing about the next
            reply_waits.append(replied - started)
        rounds.append({**report.to_dict(), "aggregated": dict(metrics) if metrics is not None else None,
                       "timing": timing})
        sites = _update_sites(sites, report)
        ckpt = Checkpoint(run_key=ckpt.run_key, completed_round=server_round,
                          num_server_rounds=cfg.num_server_rounds,
                          state_dict=unpack_state_dict(arrays.to_torch_state_dict()[PACKED_ARRAY_KEY], layout),
                          rounds=tuple(rounds), sites=sites)
        save_checkpoint(settings.checkpoint_dir, ckpt)
        loss = None if metrics is None else float(metrics["loss"])
        print(_progress(server_round, cfg.num_server_rounds, report, loss), flush=True)

    ledger = {"run_key": ckpt.run_key, "delta": cfg.target_delta, "sites": sites,
              "note": "copy of the sites' reports; each site's own ledger is the authority"}
    artifact = save_artifact(
        settings.artifact_root, state_dict=ckpt.state_dict, schema=schema, model_config=model_config,
        scheduler_config=cfg.scheduler_config(), run_config=dict(user_config), ledger=ledger, history=rounds,
    )
    atomic_write_json(result_path, {"artifact": str(artifact), "run_key": ckpt.run_key,
                                    "completed_round": ckpt.completed_round, "sites": sites})
    print(f"[fedsynth] artifact written: {artifact}", flush=True)
    return artifact


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Validate the run config, build the strategy and run the rounds."""
    settings, cfg = split_run_config(context.run_config)
    shorten_reply_pull_backoff()
    settings.output_dir.mkdir(parents=True, exist_ok=True)
    (settings.output_dir / "serverapp.pid").write_text(f"{os.getpid()}\n")
    strategy = make_strategy(
        aggregator=cfg.aggregator, trim_beta=cfg.trim_beta, fraction_train=cfg.fraction_train,
        min_train_nodes=cfg.min_train_nodes, min_available_nodes=cfg.min_available_nodes,
    )
    strategy.summary()
    run_rounds(grid, settings=settings, cfg=cfg, user_config=context.run_config, strategy=strategy)
