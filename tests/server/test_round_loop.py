"""The ServerApp's round loop without Flower processes: reply polling, and packed weights end to end.

A fake grid answers each pushed message by calling the real ClientApp in-process (one node per site), so the
packed weights go server -> site -> server exactly as on the Deployment Engine.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict

from fedsynth.client.app import app as client_app
from fedsynth.common.packing import LAYOUT_CONFIG_KEY, PACKED_ARRAY_KEY, PackLayout
from fedsynth.common.schema import Schema
from fedsynth.server.app import run_rounds, send_and_receive, split_run_config
from fedsynth.server.strategy import make_strategy

SCHEMA = {
    "version": 1, "name": "tiny", "target": None,
    "columns": [
        {"name": "age", "kind": "numeric", "lower": 0.0, "upper": 120.0, "integer": True},
        {"name": "unit", "kind": "categorical", "categories": ["icu", "ward", "er"]},
    ],
}
RUN_CONFIG = {
    "num-server-rounds": 2, "local-steps": 2, "batch-size": 16, "unet-dim": 8, "unet-seq-len": 4,
    "unet-dim-mults": "1,2", "diffusion-steps": 10, "noise-multiplier": 1.0, "min-train-nodes": 2,
    "min-available-nodes": 2, "public-pretrain-steps": 0, "round-timeout": 60.0,
}


class _SlowGrid:
    """Replies become available ``delay`` seconds after the push; counts the pulls."""

    def __init__(self, delay: float) -> None:
        self.delay, self.pulls, self.pushed_at = delay, 0, 0.0
        self.ids: list[str] = []

    def push_messages(self, messages):
        self.pushed_at = time.monotonic()
        self.ids = [f"m{i}" for i, _ in enumerate(messages)]
        return list(self.ids)

    def pull_messages(self, message_ids):
        self.pulls += 1
        if time.monotonic() - self.pushed_at < self.delay:
            return []
        out = []
        for mid in message_ids:
            msg = Message(RecordDict({"m": MetricRecord({"x": 1.0})}), dst_node_id=1, message_type="train")
            msg.metadata.__dict__["_reply_to_message_id"] = mid
            out.append(msg)
        return out


def test_replies_are_collected_soon_after_they_arrive_with_few_pulls() -> None:
    # Arrange
    grid = _SlowGrid(delay=1.0)
    # Act
    start = time.monotonic()
    replies = send_and_receive(grid, [object(), object()], timeout=30.0)  # type: ignore[arg-type]
    took = time.monotonic() - start
    # Assert: Flower's send_and_receive would take 3 s here (fixed 3 s pauses)
    assert len(replies) == 2
    assert took < 1.5
    assert grid.pulls <= 12


def test_an_expected_reply_time_saves_the_early_pulls_but_not_the_reply() -> None:
    # Arrange
    grid = _SlowGrid(delay=1.0)
    # Act
    start = time.monotonic()
    replies = send_and_receive(grid, [object(), object()], timeout=30.0, expected=1.0)  # type: ignore[arg-type]
    took = time.monotonic() - start
    # Assert: the first pull waits until 0.75 s, then pulls every ~0.1 s
    assert len(replies) == 2
    assert took < 1.3
    assert grid.pulls <= 5


def test_an_expected_time_longer_than_the_timeout_still_ends_at_the_timeout() -> None:
    grid = _SlowGrid(delay=60.0)

    start = time.monotonic()
    replies = send_and_receive(grid, [object()], timeout=0.5, expected=100.0)  # type: ignore[arg-type]

    assert replies == [] and 0.5 <= time.monotonic() - start < 1.5


def test_missing_replies_end_the_wait_at_the_timeout() -> None:
    grid = _SlowGrid(delay=60.0)

    start = time.monotonic()
    replies = send_and_receive(grid, [object()], timeout=0.5)  # type: ignore[arg-type]

    assert replies == [] and 0.5 <= time.monotonic() - start < 1.5


class _InProcessGrid:
    """Two nodes whose ClientApp runs in this process; records what the server sent."""

    def __init__(self, node_configs: dict[int, dict], run_config: dict) -> None:
        self.node_configs, self.run_config = node_configs, run_config
        self.sent: list[Message] = []
        self.replies: dict[str, Message] = {}

    def get_node_ids(self):
        return list(self.node_configs)

    def push_messages(self, messages):
        ids = []
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = msg.object_id
            self.sent.append(msg)
            node = msg.metadata.dst_node_id
            ctx = Context(run_id=1, node_id=node, node_config=self.node_configs[node], state=RecordDict(),
                          run_config=self.run_config)
            self.replies[msg.metadata.message_id] = client_app(msg, ctx)
            ids.append(msg.metadata.message_id)
        return ids

    def pull_messages(self, message_ids):
        return [self.replies.pop(mid) for mid in list(message_ids) if mid in self.replies]


def test_rounds_send_one_packed_vector_and_checkpoint_the_unpacked_model(tmp_path: Path) -> None:
    # Arrange: two sites' tables and the server's settings
    schema_path = tmp_path / "schema.json"
    Schema.from_dict(SCHEMA).save(schema_path)
    rng = np.random.default_rng(0)
    node_configs = {}
    for node in (11, 12):
        data = tmp_path / f"site{node}.csv"
        pd.DataFrame({"age": rng.integers(18, 90, 40), "unit": rng.choice(["icu", "ward", "er"], 40)}).to_csv(
            data, index=False)
        node_configs[node] = {"site-id": f"site{node}", "data-path": str(data), "epsilon-budget": 1e6,
                              "ledger-path": str(tmp_path / f"ledger{node}.json")}
    user_config = {**RUN_CONFIG, "output-dir": str(tmp_path / "server"), "schema-path": str(schema_path)}
    settings, cfg = split_run_config(user_config)
    grid = _InProcessGrid(node_configs, user_config)
    strategy = make_strategy(min_train_nodes=2, min_available_nodes=2)

    # Act
    artifact = run_rounds(grid, settings=settings, cfg=cfg, user_config=user_config,  # type: ignore[arg-type]
                          strategy=strategy)

    # Assert: every message carried one vector and its layout
    assert len(grid.sent) == 4
    for msg in grid.sent:
        arrays = msg.content["arrays"]
        assert isinstance(arrays, ArrayRecord) and list(arrays.keys()) == [PACKED_ARRAY_KEY]
        layout = PackLayout.from_json(str(msg.content["config"][LAYOUT_CONFIG_KEY]))
        assert tuple(arrays[PACKED_ARRAY_KEY].shape) == (layout.numel,)
    # ... and the server keeps the model's own tensors
    state = json.loads((settings.checkpoint_dir / "state.json").read_text())
    weights = torch.load(settings.checkpoint_dir / state["weights_file"], weights_only=True)
    assert list(weights) == list(layout.names)
    assert [tuple(t.shape) for t in weights.values()] == list(layout.shapes)
    assert state["completed_round"] == 2 and all(r["sites"][0]["accepted"] for r in state["rounds"])
    assert artifact.is_dir()
    # ... and records when each round began, had its replies and was aggregated, and each site's own time
    timings = [r["timing"] for r in state["rounds"]]
    assert all(t["started_at"] <= t["replies_at"] <= t["aggregated_at"] for t in timings)
    assert timings[0]["aggregated_at"] <= timings[1]["started_at"]
    assert all(s["metrics"]["site-seconds"] > 0 for r in state["rounds"] for s in r["sites"])


def test_the_serverapp_retries_a_reply_object_that_is_not_uploaded_yet_soon(monkeypatch: pytest.MonkeyPatch) -> None:
    # Arrange
    import functools

    from flwr.supercore.inflatable import inflatable_utils
    from flwr.superlink.grid import http_grid

    from fedsynth.server.app import shorten_reply_pull_backoff

    monkeypatch.setattr(http_grid, "pull_objects", inflatable_utils.pull_objects)
    # Act
    shorten_reply_pull_backoff(0.1, 0.3)
    shorten_reply_pull_backoff()  # idempotent: the last pauses win
    # Assert
    patched = http_grid.pull_objects
    assert isinstance(patched, functools.partial) and patched.func is inflatable_utils.pull_objects
    assert patched.keywords == {"initial_backoff": 0.05, "backoff_cap": 0.2, "max_tries_per_object": None}
