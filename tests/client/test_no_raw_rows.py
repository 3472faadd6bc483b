"""No raw row ever leaves a site: the ClientApp's train reply holds only weights and scalar metrics.

The ClientApp is called in-process with a hand-made Flower ``Message``/``Context`` on a tiny site table whose
cells are distinctive strings and numbers; every string in the reply (record names, keys, values, error
reasons) is then searched for every cell, and every array is checked to be a model parameter.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, Metadata, MetricRecord, RecordDict

from fedsynth.client.app import app as client_app
from fedsynth.client.site import run_config_from
from fedsynth.common.encoding import TabularTransform
from fedsynth.common.model import TabularUNet1D
from fedsynth.common.schema import Column, Schema

RUN_CONFIG = {
    "num-server-rounds": 1, "local-steps": 2, "batch-size": 8, "noise-multiplier": 1.0, "max-grad-norm": 1.0,
    "target-epsilon": 50.0, "target-delta": 1e-5, "diffusion-steps": 10, "unet-dim": 8, "unet-seq-len": 4,
    "unet-dim-mults": "1,2", "seed": 0,
}
#: categories are public (declared in the schema) but made distinctive so a leak would be visible
WARDS = ("wardQzx", "wardKvp", "wardJmw")


def _schema() -> Schema:
    return Schema(
        columns=(
            Column("age", "numeric", 18, 100, integer=True),
            Column("lactate", "numeric", 0, 30),
            Column("ward", "categorical", categories=WARDS),
            Column("death", "binary", categories=("No", "Yes")),
        ),
        target="death",
        name="tiny",
    )


def _table(n: int = 24, seed: int = 7) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "age": rng.integers(23, 97, n),
        # six decimals: distinctive enough that a match in a string cannot be chance
        "lactate": np.round(rng.uniform(0.5, 29.5, n), 6),
        "ward": rng.choice(WARDS, n),
        "death": rng.choice(["No", "Yes"], n),
    })


def _cells(df: pd.DataFrame) -> set[str]:
    """String forms of the cells that would identify a row if they showed up in a reply."""
    out: set[str] = set()
    for col in df.columns:
        for v in df[col]:
            if isinstance(v, str):
                out.add(v)
            elif isinstance(v, (float, np.floating)):
                out.update({repr(float(v)), f"{float(v):.6f}".rstrip("0"), f"{float(v):.4f}"})
    return out


def _message(content: RecordDict) -> Message:
    meta = Metadata(
        run_id=1, message_id="m-1", src_node_id=0, dst_node_id=7, reply_to_message_id="", group_id="1",
        created_at=time.time(), ttl=3600.0, message_type="train",
    )
    return Message(content, metadata=meta)


def _request(schema: Schema) -> tuple[RecordDict, dict]:
    cfg = run_config_from(RUN_CONFIG)
    model = TabularUNet1D(cfg.model_config(TabularTransform(schema).n_features))
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    content = RecordDict({
        "arrays": ArrayRecord(state),
        "config": ConfigRecord({"run-key": "run-test", "server-round": 1, "schema-json": json.dumps(schema.to_dict())}),
    })
    return content, {k: tuple(v.shape) for k, v in state.items()}


def _site_file(tmp: Path, df: pd.DataFrame) -> Path:
    """Write the site's table where its node config points."""
    data = tmp / "site.csv"
    df.to_csv(data, index=False)
    return data


def _context(tmp: Path, data: Path, budget: float = 100.0) -> Context:
    node_config = {"site-id": "site-a", "data-path": str(data), "epsilon-budget": budget,
                   "ledger-path": str(tmp / "state" / "ledger.json")}
    return Context(run_id=1, node_id=7, node_config=node_config, state=RecordDict(), run_config=dict(RUN_CONFIG))


def _strings(obj: object) -> list[str]:
    """Every string reachable in a reply: record names, keys, string values (also inside lists)."""
    found: list[str] = []
    if isinstance(obj, str):
        found.append(obj)
    elif isinstance(obj, dict) or hasattr(obj, "items"):
        for k, v in obj.items():  # type: ignore[attr-defined]
            found += _strings(k) + _strings(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            found += _strings(v)
    return found


def _assert_no_cell_in(strings: list[str], cells: set[str]) -> None:
    leaks = sorted({c for s in strings for c in cells if c in s})
    assert not leaks, f"row values in the reply: {leaks[:10]}"


def test_train_reply_carries_only_weights_and_scalar_metrics(tmp_path: Path) -> None:
    # Arrange
    schema = _schema()
    df = _table()
    data = _site_file(tmp_path, df)
    content, shapes = _request(schema)

    # Act
    reply = client_app(_message(content), _context(tmp_path, data))

    # Assert
    assert not reply.has_error(), reply.error.reason if reply.has_error() else ""
    strings: list[str] = []
    n_arrays = 0
    for name, record in reply.content.items():
        strings.append(name)
        if isinstance(record, ArrayRecord):
            got = {k: tuple(v.shape) for k, v in record.to_torch_state_dict().items()}
            assert got == shapes, "an ArrayRecord holds something other than the model's parameters"
            n_arrays += 1
        elif isinstance(record, MetricRecord):
            for k, v in record.items():
                strings.append(k)
                assert isinstance(v, (int, float)) and not isinstance(v, bool), f"metric {k} is not a scalar: {v!r}"
        elif isinstance(record, ConfigRecord):
            for k, v in record.items():
                strings.append(k)
                assert isinstance(v, (int, float, bool, str)), f"config {k} is not a scalar: {type(v)}"
                strings += _strings(v)
        else:
            pytest.fail(f"unexpected record type {type(record).__name__} under {name!r}")
    assert n_arrays == 1
    assert float(reply.content["metrics"]["num-examples"]) == len(df)
    cells = _cells(df)
    _assert_no_cell_in(strings, cells)
    with pytest.raises(AssertionError):  # the search itself works: a leaked cell would be found
        _assert_no_cell_in([f"loss for lactate={float(df['lactate'][0]):.6f}"], cells)


def test_validation_refusal_names_row_and_column_but_no_cell(tmp_path: Path) -> None:
    # Arrange: out-of-range and unknown-category cells that must not be echoed to the server
    schema = _schema()
    df = _table()
    df["lactate"] = df["lactate"].astype(object)
    df.loc[3, "lactate"] = 987.654321
    df.loc[5, "ward"] = "wardSECRETxyz"
    data = _site_file(tmp_path, df)
    content, _ = _request(schema)

    # Act
    reply = client_app(_message(content), _context(tmp_path, data))

    # Assert
    assert reply.has_error()
    reason = reply.error.reason
    assert "row" in reason and ("lactate" in reason or "ward" in reason)
    _assert_no_cell_in([reason], _cells(df) | {"987.654321", "987.65", "wardSECRETxyz"})
    assert not reply.has_content()


def test_budget_refusal_carries_no_rows(tmp_path: Path) -> None:
    schema = _schema()
    df = _table()
    data = _site_file(tmp_path, df)
    content, _ = _request(schema)

    reply = client_app(_message(content), _context(tmp_path, data, budget=1e-6))

    assert reply.has_error()
    assert "site-a" in reply.error.reason
    _assert_no_cell_in([reply.error.reason], _cells(df))


def test_packed_request_gets_a_packed_reply_with_the_same_layout_and_no_rows(tmp_path: Path) -> None:
    # Arrange: the server's format (one vector + layout in the config, see fedsynth.common.packing)
    from fedsynth.common.packing import LAYOUT_CONFIG_KEY, PACKED_ARRAY_KEY, PackLayout, pack_state_dict

    schema = _schema()
    df = _table()
    data = _site_file(tmp_path, df)
    content, shapes = _request(schema)
    flat, layout = pack_state_dict(content["arrays"].to_torch_state_dict())
    content["arrays"] = ArrayRecord({PACKED_ARRAY_KEY: flat})
    content["config"][LAYOUT_CONFIG_KEY] = layout.to_json()

    # Act
    reply = client_app(_message(content), _context(tmp_path, data))

    # Assert
    assert not reply.has_error(), reply.error.reason if reply.has_error() else ""
    arrays = reply.content["arrays"].to_torch_state_dict()
    assert list(arrays) == [PACKED_ARRAY_KEY] and tuple(arrays[PACKED_ARRAY_KEY].shape) == (layout.numel,)
    assert PackLayout.from_json(layout.to_json()).names == tuple(shapes)
    assert layout.shapes == tuple(shapes.values())
    assert not bool((arrays[PACKED_ARRAY_KEY] == flat).all()), "the weights were not trained"
    strings = [k for rec in reply.content.values() if not isinstance(rec, ArrayRecord) for k in _strings(rec)]
    _assert_no_cell_in(strings + list(reply.content.keys()), _cells(df))
