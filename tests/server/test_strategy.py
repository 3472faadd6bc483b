"""Unit tests of reply screening and robust aggregation (no Flower processes)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict

from fedsynth.server.strategy import (
    REQUIRED_METRICS,
    ScreeningStrategy,
    make_strategy,
    screen_reply,
)


def _ar(arrays: dict[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({k: torch.from_numpy(np.asarray(v)) for k, v in arrays.items()})


def _reference() -> ArrayRecord:
    return _ar({"w": np.zeros((2, 3), dtype=np.float32), "b": np.zeros(3, dtype=np.float32)})


def _metrics(**over: float) -> MetricRecord:
    base = {"loss": 0.5, "epsilon": 1.0, "delta": 1e-5, "num-examples": 100.0, "steps": 2.0,
            "noise-multiplier": 1.1, "sample-rate": 0.1}
    base.update(over)
    return MetricRecord(base)


def _reply(node_id: int, w: float, *, site: str | None = None, arrays: ArrayRecord | None = None,
           metrics: MetricRecord | None = None) -> Message:
    instruction = Message(RecordDict({"config": ConfigRecord({"x": 1})}), dst_node_id=node_id, message_type="train")
    content = RecordDict({
        "arrays": arrays if arrays is not None else _ar(
            {"w": np.full((2, 3), w, dtype=np.float32), "b": np.full(3, w, dtype=np.float32)}),
        "metrics": metrics if metrics is not None else _metrics(),
    })
    if site:
        content["site"] = ConfigRecord({"site-id": site})
    return Message(content, reply_to=instruction)


class _Grid:
    def __init__(self, nodes: list[int]) -> None:
        self.nodes = nodes

    def get_node_ids(self) -> list[int]:
        return self.nodes


def _configured(strategy: ScreeningStrategy, nodes: list[int]) -> ScreeningStrategy:
    strategy.configure_train(1, _reference(), ConfigRecord(), _Grid(nodes))  # type: ignore[arg-type]
    return strategy


def test_screen_accepts_a_well_formed_reply() -> None:
    # Act / Assert
    assert screen_reply(_reply(1, 1.0).content, reference=_reference()) is None


@pytest.mark.parametrize(
    ("arrays", "metrics", "expected"),
    [
        (_ar({"w": np.full((2, 3), np.nan, dtype=np.float32), "b": np.zeros(3, dtype=np.float32)}),
         None, "non-finite"),
        (_ar({"w": np.full((2, 3), np.inf, dtype=np.float32), "b": np.zeros(3, dtype=np.float32)}),
         None, "non-finite"),
        (_ar({"w": np.zeros((3, 2), dtype=np.float32), "b": np.zeros(3, dtype=np.float32)}), None, "shape"),
        (_ar({"w": np.zeros((2, 3), dtype=np.float64), "b": np.zeros(3, dtype=np.float32)}), None, "dtype"),
        (_ar({"w": np.zeros((2, 3), dtype=np.float32)}), None, "keys"),
        (_ar({"w": np.zeros((2, 3), dtype=np.float32), "b": np.zeros(3, dtype=np.float32),
                      "x": np.zeros(1, dtype=np.float32)}), None, "keys"),
        (None, MetricRecord({"loss": 0.1, "num-examples": 10.0}), "epsilon"),
        (None, _metrics(epsilon=float("nan")), "epsilon"),
        (None, _metrics(**{"num-examples": 0.0}), "num-examples"),
    ],
)
def test_screen_rejects_bad_replies(arrays, metrics, expected) -> None:
    # Arrange
    reply = _reply(1, 1.0, arrays=arrays, metrics=metrics)
    # Act
    reason = screen_reply(reply.content, reference=_reference())
    # Assert
    assert reason is not None and expected in reason


def test_required_metrics_cover_privacy_report() -> None:
    assert {"epsilon", "delta", "loss", "num-examples"} <= set(REQUIRED_METRICS)


def test_fedavg_drops_nan_and_error_replies_and_reports_sites() -> None:
    # Arrange
    strategy = _configured(make_strategy(min_train_nodes=1, min_available_nodes=1), [1, 2, 3, 4])
    bad = _reply(3, 0.0, site="c", arrays=_ar(
        {"w": np.full((2, 3), np.nan, dtype=np.float32), "b": np.zeros(3, dtype=np.float32)}))
    instruction = Message(RecordDict({"c": ConfigRecord({"x": 1})}), dst_node_id=4, message_type="train")
    refused = Message(Error(code=4002, reason="site 'd': refuses to train: budget"), reply_to=instruction)
    replies = [_reply(1, 1.0, site="a"), _reply(2, 3.0, site="b", metrics=_metrics(epsilon=2.0)), bad, refused]
    # Act
    arrays, metrics = strategy.aggregate_train(1, replies)
    # Assert
    assert arrays is not None and metrics is not None
    np.testing.assert_allclose(arrays["w"].numpy(), np.full((2, 3), 2.0))
    report = strategy.reports[-1]
    assert [s.site_id for s in report.accepted] == ["a", "b"]
    rejected = {s.site_id: s.reason for s in report.sites if not s.accepted}
    assert "non-finite" in rejected["c"]
    assert "budget" in rejected["d"]
    assert metrics["epsilon-max"] == pytest.approx(2.0)


def test_all_rejected_leaves_model_unchanged() -> None:
    strategy = _configured(make_strategy(min_train_nodes=1, min_available_nodes=1), [1])
    bad = _reply(1, 0.0, arrays=_ar({"w": np.zeros((2, 3), dtype=np.float32)}))
    assert strategy.aggregate_train(1, [bad]) == (None, None)


def test_median_is_robust_to_an_outlier() -> None:
    # Arrange
    strategy = _configured(make_strategy(aggregator="median", min_train_nodes=1, min_available_nodes=1), [1, 2, 3])
    replies = [_reply(1, 1.0), _reply(2, 2.0), _reply(3, 1000.0)]
    # Act
    arrays, _ = strategy.aggregate_train(1, replies)
    # Assert
    assert arrays is not None
    np.testing.assert_allclose(arrays["b"].numpy(), np.full(3, 2.0))


def test_trimmed_mean_drops_extremes() -> None:
    strategy = _configured(
        make_strategy(aggregator="trimmed-mean", trim_beta=0.2, min_train_nodes=1, min_available_nodes=1),
        [1, 2, 3, 4, 5])
    replies = [_reply(i, v) for i, v in enumerate([-1000.0, 1.0, 2.0, 3.0, 1000.0], start=1)]
    arrays, _ = strategy.aggregate_train(1, replies)
    assert arrays is not None
    np.testing.assert_allclose(arrays["w"].numpy(), np.full((2, 3), 2.0))


def test_unknown_aggregator_is_refused() -> None:
    with pytest.raises(ValueError, match="aggregator"):
        make_strategy(aggregator="krum")


def test_unavailable_node_is_reported_under_its_known_site_name() -> None:
    # Arrange: node 1 answered as site-a in round 1
    strategy = _configured(make_strategy(min_train_nodes=1, min_available_nodes=1), [1, 2])
    strategy.aggregate_train(1, [_reply(1, 1.0, site="site-a"), _reply(2, 1.0, site="site-b")])
    instruction = Message(RecordDict({"c": ConfigRecord({"x": 1})}), dst_node_id=1, message_type="train")
    gone = Message(Error(code=3, reason="Error: Node Unavailable"), reply_to=instruction)
    # Act
    strategy.aggregate_train(2, [gone, _reply(2, 2.0, site="site-b")])
    # Assert
    failed = [s for s in strategy.reports[-1].sites if not s.accepted]
    assert [s.site_id for s in failed] == ["site-a"] and "Unavailable" in failed[0].reason
