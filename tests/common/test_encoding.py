"""Tests for fedsynth.common.encoding.TabularTransform (schema-derived, invertible, in [-1, 1])."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from common_factories import make_mixed_frame
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from fedsynth.common.encoding import TabularTransform
from fedsynth.common.errors import DataValidationError
from fedsynth.common.schema import Column, Schema
from fedsynth.common.validation import validate_frame


def test_n_features_counts_flags_and_one_hots(mixed_schema) -> None:
    # Arrange / Act
    t = TabularTransform(mixed_schema)

    # Assert: age 1, income 1, lactate 2, visits 2, sex 1, race 3, stage 3+1, death 1
    assert t.n_features == 15
    assert [b.width for b in t.blocks] == [1, 1, 2, 2, 1, 3, 4, 1]


def test_transform_inverse_round_trip(mixed_schema, mixed_frame) -> None:
    # Arrange
    t = TabularTransform(mixed_schema)

    # Act
    x = t.transform(mixed_frame)
    back = t.inverse_transform(x)

    # Assert
    assert x.dtype == np.float32 and x.shape == (len(mixed_frame), t.n_features)
    assert np.abs(x).max() <= 1.0
    assert list(back.columns) == list(mixed_schema.names)
    np.testing.assert_array_equal(back["age"], mixed_frame["age"])
    np.testing.assert_allclose(back["income"], mixed_frame["income"], rtol=1e-5, atol=0.05)
    np.testing.assert_allclose(back["lactate"], mixed_frame["lactate"], atol=1e-5)  # NaN in the same places
    assert back["visits"].isna().tolist() == mixed_frame["visits"].isna().tolist()
    assert back["visits"].dropna().tolist() == mixed_frame["visits"].dropna().tolist()
    for name in ("sex", "race", "stage", "death"):
        assert back[name].tolist() == mixed_frame[name].tolist(), name
    np.testing.assert_allclose(t.transform(back), x, atol=1e-6)  # decoded table encodes again


def test_transform_values_are_exact_at_bounds() -> None:
    # Arrange
    schema = Schema((Column("v", "numeric", 0, 100, transform="log1p"), Column("b", "binary", categories=("n", "y"))))
    frame = pd.DataFrame({"v": [0.0, 100.0], "b": ["n", "y"]})

    # Act
    x = TabularTransform(schema).transform(frame)

    # Assert
    np.testing.assert_allclose(x, [[-1.0, -1.0], [1.0, 1.0]], atol=1e-6)


def test_transform_accepts_load_table_output(tmp_path, mixed_schema, mixed_frame) -> None:
    # Arrange
    from fedsynth.common.validation import load_table

    mixed_frame.to_csv(tmp_path / "s.csv", index=False)
    t = TabularTransform(mixed_schema)

    # Act
    x_loaded = t.transform(load_table(tmp_path / "s.csv", mixed_schema))

    # Assert
    np.testing.assert_allclose(x_loaded, t.transform(mixed_frame), atol=1e-6)


@pytest.mark.parametrize(
    ("column", "value", "message"),
    [("age", 5, "out of bounds"), ("race", "asian", "unknown or missing"), ("sex", None, "unknown or missing")],
)
def test_transform_rejects_invalid_values(mixed_schema, mixed_frame, column, value, message) -> None:
    # Arrange
    frame = mixed_frame.astype({column: object})
    frame.loc[2, column] = value

    # Act / Assert
    with pytest.raises(DataValidationError, match=message) as info:
        TabularTransform(mixed_schema).transform(frame)
    assert (info.value.issues[0].row, info.value.issues[0].column) == (3, column)


def test_transform_rejects_missing_column(mixed_schema, mixed_frame) -> None:
    # Arrange / Act / Assert
    with pytest.raises(DataValidationError, match="race"):
        TabularTransform(mixed_schema).transform(mixed_frame.drop(columns="race"))


def test_transform_of_empty_frame(mixed_schema) -> None:
    # Arrange
    t = TabularTransform(mixed_schema)

    # Act
    x = t.transform(make_mixed_frame(0))

    # Assert
    assert x.shape == (0, t.n_features)
    assert t.inverse_transform(x).shape == (0, len(mixed_schema.columns))


def test_inverse_rejects_wrong_width(mixed_schema) -> None:
    # Arrange / Act / Assert
    with pytest.raises(ValueError, match="expected features of shape"):
        TabularTransform(mixed_schema).inverse_transform(np.zeros((3, 4)))


@settings(max_examples=40, deadline=None)
@given(
    x=arrays(
        np.float64,
        st.tuples(st.integers(0, 8), st.just(15)),
        elements=st.floats(allow_nan=True, allow_infinity=True, width=32),
    )
)
def test_inverse_of_arbitrary_features_is_valid(x: np.ndarray) -> None:
    # Arrange
    from common_factories import make_mixed_schema

    schema = make_mixed_schema()
    t = TabularTransform(schema)

    # Act
    df = t.inverse_transform(x)

    # Assert
    assert list(df.columns) == list(schema.names) and len(df) == len(x)
    if len(df):
        assert validate_frame(df, schema) == []
    assert df["age"].dtype == np.int64
    assert df["income"].dtype == np.float64 and df["lactate"].dtype == np.float64
    assert str(df["visits"].dtype) == "Int64"
    for col in schema.columns:
        if col.kind == "numeric":
            values = df[col.name].dropna().astype(float)
            assert ((values >= col.lower) & (values <= col.upper)).all()
            if col.integer:
                assert (values % 1 == 0).all()
        else:
            allowed = set(col.categories) | ({None} if col.nullable else set())
            assert set(df[col.name]) <= allowed
    assert np.isfinite(t.transform(df)).all()
