"""Tests for fedsynth.common.schema (and the shipped RHC schema in demo_data)."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pandas as pd
import pytest

from fedsynth.common.errors import SchemaError
from fedsynth.common.schema import Schema, canonical, infer_schema
from fedsynth.common.validation import validate_frame


def test_to_dict_from_dict_round_trip(mixed_schema: Schema) -> None:
    # Arrange
    data = mixed_schema.to_dict()

    # Act
    again = Schema.from_dict(json.loads(json.dumps(data)))

    # Assert
    assert again == mixed_schema
    assert again.to_dict() == data


def test_save_load_round_trip(tmp_path, mixed_schema: Schema) -> None:
    # Arrange
    path = tmp_path / "schemas" / "toy.json"

    # Act
    mixed_schema.save(path)
    loaded = Schema.load(path)

    # Assert
    assert loaded == mixed_schema
    assert loaded.names == mixed_schema.names
    assert loaded.target == "death"
    assert [p.name for p in path.parent.iterdir()] == ["toy.json"]  # no temp files left


def test_canonical_merges_int_float_and_string_forms() -> None:
    # Arrange / Act
    forms = {canonical(1), canonical(1.0), canonical("1"), canonical(np.int64(1)), canonical(" 1 "), canonical(True)}

    # Assert
    assert forms == {"1"}
    assert canonical(1.5) == "1.5"


@pytest.mark.parametrize(
    ("column", "message"),
    [
        ({"name": "", "kind": "binary", "categories": [0, 1]}, "empty name"),
        ({"name": "x", "kind": "text"}, "kind must be one of"),
        ({"name": "x", "kind": "numeric", "lower": 0}, "needs both 'lower' and 'upper'"),
        ({"name": "x", "kind": "numeric", "lower": 5, "upper": 5}, "finite lower < upper"),
        ({"name": "x", "kind": "numeric", "lower": 0, "upper": float("inf")}, "finite lower < upper"),
        ({"name": "x", "kind": "numeric", "lower": -1, "upper": 5, "transform": "log1p"}, "log1p"),
        ({"name": "x", "kind": "numeric", "lower": 0, "upper": 5, "transform": "sqrt"}, "transform must be"),
        ({"name": "x", "kind": "numeric", "lower": 0, "upper": 5, "categories": [1, 2]}, "must not list categories"),
        ({"name": "x", "kind": "categorical", "categories": ["a"]}, "at least two categories"),
        ({"name": "x", "kind": "categorical", "categories": [1, "1", 2]}, "duplicate categories"),
        ({"name": "x", "kind": "binary", "categories": ["a", "b", "c"]}, "exactly two categories"),
        ({"name": "x", "kind": "binary", "categories": [0, 1], "colour": "red"}, "unknown key"),
        ({"kind": "binary", "categories": [0, 1]}, "needs 'name' and 'kind'"),
        ({"name": "x", "kind": "numeric", "lower": "low", "upper": 5}, "'x'"),
        ({"name": "x", "kind": "categorical", "categories": "abc"}, "'x'"),
    ],
)
def test_bad_column_raises_schema_error_with_message(column: dict, message: str) -> None:
    # Arrange
    data = {"version": 1, "columns": [column]}

    # Act / Assert
    with pytest.raises(SchemaError, match=message):
        Schema.from_dict(data)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([], "JSON object with a 'columns' list"),
        ({"columns": "age"}, "'columns' must be a list"),
        ({"columns": []}, "at least one column"),
        ({"version": 99, "columns": [{"name": "a", "kind": "binary", "categories": [0, 1]}]}, "version 99"),
        (
            {"columns": [{"name": "a", "kind": "binary", "categories": [0, 1]}] * 2},
            "duplicate column name",
        ),
        (
            {"target": "b", "columns": [{"name": "a", "kind": "binary", "categories": [0, 1]}]},
            "target 'b'",
        ),
        ({"columns": ["age"]}, "column"),
    ],
)
def test_bad_schema_raises_schema_error_with_message(data: object, message: str) -> None:
    # Arrange / Act / Assert
    with pytest.raises(SchemaError, match=message):
        Schema.from_dict(data)  # type: ignore[arg-type]


def test_load_missing_or_corrupt_file_raises_schema_error(tmp_path) -> None:
    # Arrange
    corrupt = tmp_path / "corrupt.json"
    corrupt.write_text('{"columns": [', encoding="utf-8")

    # Act / Assert
    with pytest.raises(SchemaError, match="does not exist"):
        Schema.load(tmp_path / "missing.json")
    with pytest.raises(SchemaError, match="corrupt"):
        Schema.load(corrupt)


def test_infer_schema_warns_and_infers_kinds_bounds_nullable() -> None:
    # Arrange
    rng = np.random.default_rng(0)
    df = pd.DataFrame(
        {
            "pid": np.arange(50),
            "age": rng.integers(20, 90, 50),
            "weight": np.r_[rng.uniform(40, 120, 49), np.nan],
            "sex": rng.choice(["F", "M"], 50),
            "race": rng.choice(["a", "b", "c"], 50),
            "stage": rng.choice([1, 2, 3, 4], 50),
            "flag": rng.choice([True, False], 50),
        }
    )

    # Act
    with pytest.warns(UserWarning, match="not differentially private"):
        schema = infer_schema(df, target="flag", exclude=["pid"], max_categories=10)

    # Assert
    assert schema.names == ("age", "weight", "sex", "race", "stage", "flag")
    age, weight = schema.column("age"), schema.column("weight")
    assert (age.kind, age.integer, age.nullable) == ("numeric", True, False)
    assert (age.lower, age.upper) == (float(df["age"].min()), float(df["age"].max()))
    assert (weight.kind, weight.integer, weight.nullable) == ("numeric", False, True)
    assert weight.lower == pytest.approx(df["weight"].min())
    assert schema.column("sex").kind == "binary"
    assert schema.column("sex").categories == ("F", "M")
    assert schema.column("race").kind == "categorical"
    assert schema.column("stage").categories == (1, 2, 3, 4)
    assert schema.column("flag").category_keys == ("0", "1")
    assert validate_frame(df, schema) == []


def test_infer_schema_margin_and_constant_column() -> None:
    # Arrange
    df = pd.DataFrame({"x": np.linspace(0.5, 10.5, 30), "c": [7.5] * 30})

    # Act
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        schema = infer_schema(df, margin=0.1, max_categories=0)

    # Assert
    assert schema.column("x").lower == pytest.approx(-0.5)
    assert schema.column("x").upper == pytest.approx(11.5)
    assert schema.column("c").lower < schema.column("c").upper


def test_rhc_schema_has_54_columns_without_time_or_pid() -> None:
    # Arrange
    from fedsynth.common.demo_data import rhc_schema

    # Act
    schema = rhc_schema()

    # Assert
    assert len(schema.columns) == 54
    assert "time" not in schema.names
    assert "pid" not in schema.names
    assert schema.target == "event"


def test_rhc_schema_validates_real_rhc_table() -> None:
    # Arrange
    from fedsynth.common.demo_data import load_rhc, rhc_schema

    schema = rhc_schema()

    # Act
    df = load_rhc()
    issues = validate_frame(df, schema, source="rhc")

    # Assert
    assert issues == []
    assert list(df.columns) == list(schema.names)
    assert len(df) == 5735
