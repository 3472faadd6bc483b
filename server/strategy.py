"""Reply screening, per-site privacy/loss reports and robust aggregation around Flower's FedAvg family.

:class:`ScreeningStrategy` decorates any ``flwr.serverapp.strategy.FedAvg`` subclass (FedAvg, FedMedian,
FedTrimmedAvg), like Flower's own ``DifferentialPrivacyServerSideFixedClipping`` decorates a strategy:
before the inner strategy sees the replies of a round it

* drops error replies (a site that refused: bad data, privacy budget exhausted) and logs the site's reason;
* rejects replies whose weights are missing, keyed or shaped differently from the global model, or not
  finite (NaN/Inf), and replies without the required metrics, logging which node sent them;
* records each accepted site's loss, epsilon and delta in a per-round :class:`SiteReport`.

Flower's own FedAvg raises ``InconsistentMessageReplies`` (ending the ServerApp) when one reply has a
different key set, so screening must happen here, before aggregation.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from logging import INFO, WARNING

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg, FedMedian, FedTrimmedAvg, Strategy
from flwr.supercore import log

__all__ = [
    "REQUIRED_METRICS",
    "SiteReport",
    "RoundReport",
    "screen_reply",
    "ScreeningStrategy",
    "make_strategy",
]

#: Metrics every accepted training reply must carry (see ``client/app.py``).
REQUIRED_METRICS = ("loss", "epsilon", "delta", "num-examples")
#: Key of the reply's optional ConfigRecord naming the site (``site-id``).
SITE_RECORD_KEY = "site"


@dataclass(frozen=True)
class SiteReport:
    """What one site reported for one round (a copy; the site's ledger is the authority).

    Args:
        node_id: Flower node id of the SuperNode.
        site_id: the site's ``site-id`` node config (``node-<id>`` when unset).
        accepted: whether the update went into the aggregate.
        reason: why it was rejected or refused (empty when accepted).
        metrics: the reply's metrics (loss, epsilon, delta, noise-multiplier, sample-rate, steps, num-examples).
    """

    node_id: int
    site_id: str
    accepted: bool
    reason: str = ""
    metrics: Mapping[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form."""
        return {
            "node_id": self.node_id,
            "site_id": self.site_id,
            "accepted": self.accepted,
            "reason": self.reason,
            "metrics": dict(self.metrics),
        }


@dataclass(frozen=True)
class RoundReport:
    """All site reports of one round."""

    server_round: int
    sites: tuple[SiteReport, ...]

    @property
    def accepted(self) -> tuple[SiteReport, ...]:
        """Reports of the sites whose update was aggregated."""
        return tuple(s for s in self.sites if s.accepted)

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form."""
        return {"server_round": self.server_round, "sites": [s.to_dict() for s in self.sites]}


_SITE_IN_REASON = re.compile(r"^site '([^']+)'")


def _site_id(content: RecordDict | None, node_id: int, reason: str | None = None) -> str:
    if reason:
        match = _SITE_IN_REASON.match(reason)
        if match:
            return match.group(1)
    if content is not None:
        rec = content.get(SITE_RECORD_KEY)
        if isinstance(rec, ConfigRecord) and isinstance(rec.get("site-id"), str):
            return str(rec["site-id"])
    return f"node-{node_id}"


def screen_reply(
    content: RecordDict,
    *,
    reference: ArrayRecord,
    arrayrecord_key: str = "arrays",
    required_metrics: Iterable[str] = REQUIRED_METRICS,
) -> str | None:
    """Check one training reply against the global model.

    Args:
        content: the reply's records.
        reference: the global model sent this round (defines the keys, shapes and dtypes).
        arrayrecord_key: key of the weights in ``content``.
        required_metrics: metric keys that must be present and finite.

    Returns:
        ``None`` when the reply is acceptable, otherwise a short reason.
    """
    if len(content.array_records) != 1 or arrayrecord_key not in content.array_records:
        return f"expected exactly one ArrayRecord under '{arrayrecord_key}'"
    arrays = content.array_records[arrayrecord_key]
    if list(arrays.keys()) != list(reference.keys()):
        missing = sorted(set(reference.keys()) - set(arrays.keys()))
        extra = sorted(set(arrays.keys()) - set(reference.keys()))
        return f"weight keys differ from the global model (missing {missing[:3]}, unexpected {extra[:3]})"
    for key in reference.keys():
        got, want = arrays[key], reference[key]
        if tuple(got.shape) != tuple(want.shape):
            return f"weight '{key}' has shape {tuple(got.shape)}, expected {tuple(want.shape)}"
        if got.dtype != want.dtype:
            return f"weight '{key}' has dtype {got.dtype}, expected {want.dtype}"
        values = got.numpy()
        if not np.all(np.isfinite(values)):
            return f"weight '{key}' has non-finite values (NaN/Inf)"
    if len(content.metric_records) != 1:
        return "expected exactly one MetricRecord"
    metrics = next(iter(content.metric_records.values()))
    for key in required_metrics:
        value = metrics.get(key)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            return f"metric '{key}' is missing or not a finite number"
    if metrics["num-examples"] <= 0:
        return "metric 'num-examples' must be > 0"
    return None


class ScreeningStrategy(Strategy):
    """Decorator around a FedAvg-family strategy that screens replies and keeps per-site reports.

    Args:
        strategy: the aggregating strategy (``FedAvg``, ``FedMedian``, ``FedTrimmedAvg``, ...).

    Attributes:
        reports: one :class:`RoundReport` per aggregated round, in order.
    """

    def __init__(self, strategy: FedAvg) -> None:
        self.strategy = strategy
        self.reports: list[RoundReport] = []
        self._reference: ArrayRecord | None = None
        self._site_of_node: dict[int, str] = {}

    # -- configuration: remember what was sent, then delegate --------------------------------------
    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Remember the global model of this round, then let the inner strategy sample nodes."""
        self._reference = arrays
        return self.strategy.configure_train(server_round, arrays, config, grid)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Delegate to the inner strategy."""
        return self.strategy.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """Delegate to the inner strategy."""
        return self.strategy.aggregate_evaluate(server_round, replies)

    def summary(self) -> None:
        """Log the inner strategy's summary."""
        log(INFO, "\t├──> Reply screening: keys/shapes/dtypes vs global model, finite values, metrics %s",
            list(REQUIRED_METRICS))
        self.strategy.summary()

    # -- aggregation ---------------------------------------------------------------------------
    def screen(self, server_round: int, replies: Iterable[Message]) -> tuple[list[Message], RoundReport]:
        """Split replies into accepted ones and a report of every site (logged).

        Args:
            server_round: the round the replies belong to.
            replies: the replies returned by the grid.

        Returns:
            The accepted replies and the round's report.
        """
        if self._reference is None:
            raise RuntimeError("configure_train must run before aggregate_train")
        accepted: list[Message] = []
        sites: list[SiteReport] = []
        for msg in replies:
            node_id = int(msg.metadata.src_node_id)
            content = None if msg.has_error() else msg.content
            site = _site_id(content, node_id, msg.error.reason if msg.has_error() else None)
            if site.startswith("node-") and node_id in self._site_of_node:
                site = self._site_of_node[node_id]  # e.g. "Node Unavailable" errors carry no site name
            self._site_of_node[node_id] = site
            if msg.has_error():
                reason = f"site error: {msg.error.reason}"
                log(WARNING, "round %d: node %d (%s) did not train: %s", server_round, node_id, site,
                    msg.error.reason)
                sites.append(SiteReport(node_id=node_id, site_id=site, accepted=False, reason=reason))
                continue
            reason = screen_reply(msg.content, reference=self._reference,
                                  arrayrecord_key=self.strategy.arrayrecord_key)
            metrics = _metrics_of(msg.content)
            if reason is not None:
                log(WARNING, "round %d: rejected update from node %d (%s): %s", server_round, node_id, site,
                    reason)
                sites.append(SiteReport(node_id=node_id, site_id=site, accepted=False,
                                        reason=f"rejected: {reason}", metrics=metrics))
                continue
            accepted.append(msg)
            sites.append(SiteReport(node_id=node_id, site_id=site, accepted=True, metrics=metrics))
            log(INFO, "round %d: site %s loss=%.4f epsilon=%.4f (delta=%.1e) steps=%d n=%d",
                server_round, site, metrics.get("loss", math.nan), metrics.get("epsilon", math.nan),
                metrics.get("delta", math.nan), int(metrics.get("steps", 0)),
                int(metrics.get("num-examples", 0)))
        report = RoundReport(server_round=server_round, sites=tuple(sites))
        return accepted, report

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Screen the replies, then aggregate the accepted ones with the inner strategy."""
        accepted, report = self.screen(server_round, list(replies))
        self.reports.append(report)
        if not accepted:
            log(WARNING, "round %d: no acceptable update; the global model is unchanged", server_round)
            return None, None
        # Only the weights and the metrics go to the inner strategy (its consistency check wants
        # exactly one ArrayRecord and one MetricRecord with identical keys).
        stripped = [_strip(msg, self.strategy.arrayrecord_key) for msg in accepted]
        arrays, metrics = self.strategy.aggregate_train(server_round, stripped)
        if metrics is not None:
            eps = [s.metrics.get("epsilon", math.nan) for s in report.accepted]
            metrics["epsilon-max"] = float(max(eps))
        return arrays, metrics


def _metrics_of(content: RecordDict) -> dict[str, float]:
    out: dict[str, float] = {}
    for rec in content.metric_records.values():
        for k, v in rec.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                out[k] = float(v)
    return out


def _strip(msg: Message, arrayrecord_key: str) -> Message:
    content = msg.content
    metrics = next(iter(content.metric_records.values()))
    keep = MetricRecord({k: metrics[k] for k in sorted(metrics.keys())})
    new = RecordDict({arrayrecord_key: content.array_records[arrayrecord_key], "metrics": keep})
    msg.content = new
    return msg


def make_strategy(
    *,
    aggregator: str = "fedavg",
    trim_beta: float = 0.2,
    fraction_train: float = 1.0,
    min_train_nodes: int = 2,
    min_available_nodes: int = 2,
) -> ScreeningStrategy:
    """Build the screened strategy for an aggregator name.

    Args:
        aggregator: ``fedavg`` (weighted by ``num-examples``), ``median`` (coordinate-wise, Flower's
            ``FedMedian``) or ``trimmed-mean`` (coordinate-wise, Flower's ``FedTrimmedAvg``).
        trim_beta: fraction trimmed from each end for ``trimmed-mean``.
        fraction_train: fraction of connected nodes sampled per round.
        min_train_nodes: nodes sampled at least per round.
        min_available_nodes: nodes that must be connected before a round starts.

    Raises:
        ValueError: unknown aggregator.
    """
    common = {
        "fraction_train": fraction_train,
        "fraction_evaluate": 0.0,
        "min_train_nodes": min_train_nodes,
        "min_available_nodes": min_available_nodes,
    }
    inner: FedAvg
    if aggregator == "fedavg":
        inner = FedAvg(**common)
    elif aggregator == "median":
        inner = FedMedian(**common)
    elif aggregator == "trimmed-mean":
        inner = FedTrimmedAvg(beta=trim_beta, **common)
    else:
        raise ValueError(f"unknown aggregator '{aggregator}'; use fedavg, median or trimmed-mean")
    return ScreeningStrategy(inner)
