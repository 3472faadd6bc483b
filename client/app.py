"""fedsynth ClientApp: a thin Flower adapter around :func:`fedsynth.client.site.train_round`.

The reply carries only the updated weights (``ArrayRecord`` under ``arrays``; packed into one vector when the
server sent a ``weights-layout``, see :mod:`fedsynth.common.packing`), a ``MetricRecord`` (loss, epsilon,
delta, noise-multiplier, sample-rate, steps, num-examples, site-seconds) and the site's name
(``ConfigRecord`` ``site``) — never rows. A site that cannot or must not train (invalid table, budget exhausted) answers with a Flower
``Error`` whose reason says why; the federation goes on with the other sites. Validation errors report only
file, row and column to the server; the full messages (which may quote a cell) stay in the site's log.
"""

from __future__ import annotations

import json
import logging

from flwr.app import ArrayRecord, ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedsynth.client.site import RoundRequest, SiteSettings, run_config_from, train_round
from fedsynth.common.errors import DataValidationError, FedsynthError, PrivacyBudgetExceeded
from fedsynth.common.packing import LAYOUT_CONFIG_KEY, PACKED_ARRAY_KEY, PackLayout, pack_state_dict, unpack_state_dict
from fedsynth.common.schema import Schema

log = logging.getLogger("fedsynth.client")

#: Error codes in refusal replies (Flower ``Error.code``).
ERROR_DATA_VALIDATION = 4001
ERROR_PRIVACY = 4002
ERROR_OTHER = 4009

app = ClientApp()


def _describe_validation(site: str, err: DataValidationError, *, max_listed: int = 5) -> str:
    where = []
    for issue in err.issues[:max_listed]:
        parts = [issue.file]
        if issue.row is not None:
            parts.append(f"row {issue.row}")
        if issue.column is not None:
            parts.append(f"column '{issue.column}'")
        where.append(", ".join(parts))
    more = f" (+{len(err.issues) - max_listed} more)" if len(err.issues) > max_listed else ""
    return (f"site '{site}': data validation failed with {len(err.issues)} issue(s) at: "
            f"{'; '.join(where)}{more}; details are in the site's log")


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Train one round with DP-SGD on the site's table and reply with weights and metrics."""
    site = str(context.node_config.get("site-id", f"node-{context.node_id}"))
    try:
        settings = SiteSettings.from_node_config(context.node_config, node_id=context.node_id)
        config = msg.content["config"]
        layout = PackLayout.from_json(str(config[LAYOUT_CONFIG_KEY])) if LAYOUT_CONFIG_KEY in config else None
        state_dict = msg.content["arrays"].to_torch_state_dict()
        if layout is not None:
            state_dict = unpack_state_dict(state_dict[PACKED_ARRAY_KEY], layout)
        request = RoundRequest(
            run_key=str(config["run-key"]),
            server_round=int(config["server-round"]),
            schema=Schema.from_dict(json.loads(str(config["schema-json"]))),
            run_config=run_config_from(context.run_config),
            state_dict=state_dict,
        )
        outcome = train_round(settings, request)
    except DataValidationError as err:
        log.error("site '%s': %s", site, err)
        print(f"[fedsynth] site '{site}': {err}", flush=True)
        return Message(Error(code=ERROR_DATA_VALIDATION, reason=_describe_validation(site, err)), reply_to=msg)
    except FedsynthError as err:
        print(f"[fedsynth] site '{site}' refused: {err}", flush=True)
        code = ERROR_PRIVACY if isinstance(err, PrivacyBudgetExceeded) else ERROR_OTHER
        return Message(Error(code=code, reason=f"site '{site}': {err}"), reply_to=msg)
    print(f"[fedsynth] site '{site}' round {request.server_round}: "
          f"{'replayed cached update' if outcome.replayed else 'trained'} "
          f"loss={outcome.metrics['loss']:.4f} epsilon={outcome.metrics['epsilon']:.4f}", flush=True)
    weights = outcome.state_dict
    if layout is not None:
        weights = {PACKED_ARRAY_KEY: pack_state_dict(outcome.state_dict, layout)[0]}
    return Message(
        RecordDict({
            "arrays": ArrayRecord(weights),
            "metrics": MetricRecord(outcome.metrics),
            "site": ConfigRecord({"site-id": settings.site_id}),
        }),
        reply_to=msg,
    )
