"""Tests for fedsynth.common.validation.load_table: good files load, bad ones name file, row and column."""

from __future__ import annotations

import string
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from common_factories import make_mixed_frame, make_mixed_schema
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedsynth.common.encoding import TabularTransform
from fedsynth.common.errors import DataValidationError, ValidationIssue
from fedsynth.common.schema import Column, Schema
from fedsynth.common.validation import load_table, validate_frame

SMALL = Schema(
    columns=(
        Column("age", "numeric", 0, 120, integer=True),
        Column("hr", "numeric", 20, 250),
        Column("sex", "binary", categories=("F", "M")),
        Column("race", "categorical", categories=("white", "black", "other")),
    ),
    name="small",
)
HEADER = "age,hr,sex,race\n"


def _issues(path: Path, schema: Schema = SMALL) -> list[ValidationIssue]:
    with pytest.raises(DataValidationError) as info:
        load_table(path, schema)
    assert info.value.issues, "a DataValidationError must carry issues"
    assert all(issue.file == str(path) for issue in info.value.issues)
    return info.value.issues


def _write(tmp_path: Path, text: str, name: str = "site.csv") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_good_file_loads_with_schema_columns_and_types(tmp_path, mixed_schema, mixed_frame, suffix) -> None:
    # Arrange
    path = tmp_path / f"site{suffix}"
    if suffix == ".csv":
        mixed_frame.assign(pid=range(len(mixed_frame))).to_csv(path, index=False)
    else:
        mixed_frame.assign(pid=range(len(mixed_frame))).to_parquet(path)

    # Act
    df = load_table(path, mixed_schema)

    # Assert
    assert list(df.columns) == list(mixed_schema.names)  # undeclared 'pid' dropped
    assert len(df) == len(mixed_frame)
    for col in mixed_schema.columns:
        if col.kind == "numeric":
            assert df[col.name].dtype == np.float64
            np.testing.assert_allclose(df[col.name], mixed_frame[col.name].astype(float), equal_nan=True)
        else:
            assert set(df[col.name].dropna()) <= set(col.category_keys)
    assert df["stage"].isna().sum() == mixed_frame["stage"].isna().sum()
    features = TabularTransform(mixed_schema).transform(df)
    assert features.shape == (len(mixed_frame), TabularTransform(mixed_schema).n_features)


def test_csv_and_parquet_agree_on_float_written_categories(tmp_path, mixed_schema) -> None:
    # Arrange: a nullable integer category stored as float is written as "1.0" in CSV
    frame = make_mixed_frame(12, seed=3)
    frame["stage"] = pd.to_numeric(frame["stage"]).astype(float)
    frame.to_csv(tmp_path / "a.csv", index=False)
    frame.to_parquet(tmp_path / "a.parquet")

    # Act
    from_csv = load_table(tmp_path / "a.csv", mixed_schema)
    from_parquet = load_table(tmp_path / "a.parquet", mixed_schema)

    # Assert
    pd.testing.assert_frame_equal(from_csv, from_parquet)


def test_drop_extra_false_reports_undeclared_column(tmp_path) -> None:
    # Arrange
    path = _write(tmp_path, "age,hr,sex,race,pid\n30,80,F,white,7\n")

    # Act
    with pytest.raises(DataValidationError) as info:
        load_table(path, SMALL, drop_extra=False)

    # Assert
    assert [(i.row, i.column) for i in info.value.issues] == [(None, "pid")]


def test_missing_column(tmp_path) -> None:
    # Arrange
    path = _write(tmp_path, "age,hr,sex\n30,80,F\n")

    # Act
    issues = _issues(path)

    # Assert
    assert [(i.row, i.column) for i in issues] == [(None, "race")]
    assert "missing" in issues[0].message


@pytest.mark.parametrize(
    ("rows", "row", "column", "message"),
    [
        ("30,abc,F,white\n", 1, "hr", "expected a number"),
        ("30,80,F,white\n30,300,M,black\n", 2, "hr", "outside the declared bounds"),
        ("30,80,F,white\n31,80,M,white\n30,80,X,white\n", 3, "sex", "unknown category 'X'"),
        ("30,80,F,asian\n", 1, "race", "unknown category 'asian'"),
        ("30,,F,white\n", 1, "hr", "missing value"),
        ("30,NaN,F,white\n", 1, "hr", "missing value"),
        ("30,80,,white\n", 1, "sex", "missing value"),
        ("30,80,F,white\n30.5,80,F,white\n", 2, "age", "not a whole number"),
        ("30,inf,F,white\n", 1, "hr", "not finite"),
    ],
)
def test_bad_value_names_file_row_and_column(tmp_path, rows, row, column, message) -> None:
    # Arrange
    path = _write(tmp_path, HEADER + rows)

    # Act
    issues = _issues(path)

    # Assert
    assert len(issues) == 1
    assert (issues[0].row, issues[0].column) == (row, column)
    assert message in issues[0].message
    assert f"row {row}" in str(issues[0]) and f"column '{column}'" in str(issues[0])


def test_many_bad_rows_are_capped_and_counted(tmp_path) -> None:
    # Arrange
    path = _write(tmp_path, HEADER + "30,999,F,white\n" * 50)

    # Act
    issues = _issues(path)

    # Assert
    assert [i.row for i in issues[:-1]] == list(range(1, 21))
    assert issues[-1].row is None and "30 more row(s)" in issues[-1].message


def test_empty_file(tmp_path) -> None:
    # Arrange
    path = _write(tmp_path, "")

    # Act
    issues = _issues(path)

    # Assert
    assert "empty" in issues[0].message


def test_header_only_file(tmp_path) -> None:
    # Arrange
    path = _write(tmp_path, HEADER)

    # Act
    issues = _issues(path)

    # Assert
    assert [i.message for i in issues] == ["file has a header but no data rows"]


def test_ragged_csv_names_the_row(tmp_path) -> None:
    # Arrange
    path = _write(tmp_path, HEADER + "30,80,F,white\n30,80,F,white,extra,more\n")

    # Act
    issues = _issues(path)

    # Assert
    assert issues[0].row == 2
    assert "cannot be parsed as CSV" in issues[0].message


def test_binary_garbage(tmp_path) -> None:
    # Arrange
    path = tmp_path / "site.csv"
    path.write_bytes(bytes(range(256)) * 4)

    # Act
    issues = _issues(path)

    # Assert
    assert issues[0].row is None


def test_corrupt_parquet(tmp_path) -> None:
    # Arrange
    path = _write(tmp_path, HEADER + "30,80,F,white\n", name="site.parquet")

    # Act
    issues = _issues(path)

    # Assert
    assert "cannot be parsed as Parquet" in issues[0].message


def test_nonexistent_file_and_directory(tmp_path) -> None:
    # Arrange
    missing = tmp_path / "nope.csv"
    folder = tmp_path / "folder.csv"
    folder.mkdir()

    # Act
    missing_issues = _issues(missing)
    folder_issues = _issues(folder)

    # Assert
    assert "does not exist" in missing_issues[0].message
    assert folder_issues[0].row is None


def test_validate_frame_returns_issue_list_for_typed_frame(mixed_schema) -> None:
    # Arrange
    frame = make_mixed_frame(5, seed=2)
    frame.loc[3, "age"] = 5

    # Act
    issues = validate_frame(frame, mixed_schema, source="mem")

    # Assert
    assert [(i.file, i.row, i.column) for i in issues] == [("mem", 4, "age")]


# fuzzing: load_table returns an encodable frame or raises DataValidationError, never anything else

FUZZ = make_mixed_schema()
_cell = st.one_of(
    st.sampled_from(["", "NaN", "nan", "inf", "-inf", "1e400", "abc", "F", "M", "white", "1", "2", "3", "0",
                     "1.0", "2.5", "-1", "18", "100", "20.0000001", '"', "'", "\\", " ", "None", "null", "True"]),
    st.text(alphabet=string.printable, max_size=6),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.integers(-10**20, 10**20).map(str),
)


def _assert_loads_or_rejects(path: Path) -> None:
    try:
        df = load_table(path, FUZZ)
    except DataValidationError as exc:
        assert exc.issues
        return
    features = TabularTransform(FUZZ).transform(df)
    assert features.shape == (len(df), TabularTransform(FUZZ).n_features)
    assert np.isfinite(features).all() and np.abs(features).max() <= 1.0 + 1e-6


_FUZZ_SETTINGS = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@_FUZZ_SETTINGS
@given(data=st.binary(max_size=300), suffix=st.sampled_from([".csv", ".parquet", ".txt"]))
def test_fuzz_random_bytes(tmp_path_factory, data: bytes, suffix: str) -> None:
    # Arrange
    path = tmp_path_factory.mktemp("fuzz") / f"site{suffix}"
    path.write_bytes(data)

    # Act / Assert
    _assert_loads_or_rejects(path)


@_FUZZ_SETTINGS
@given(
    header=st.lists(st.sampled_from([*FUZZ.names, "pid", "", " age", "x,y", '"q']), max_size=10),
    rows=st.lists(st.lists(_cell, max_size=10), max_size=6),
    sep=st.sampled_from([",", ";", "\t"]),
)
def test_fuzz_csv_like_text(tmp_path_factory, header: list[str], rows: list[list[str]], sep: str) -> None:
    # Arrange
    path = tmp_path_factory.mktemp("fuzz") / "site.csv"
    path.write_text("\n".join(sep.join(r) for r in [header, *rows]) + "\n", encoding="utf-8")

    # Act / Assert
    _assert_loads_or_rejects(path)


@_FUZZ_SETTINGS
@given(
    n=st.integers(0, 6),
    junk=st.dictionaries(st.sampled_from(FUZZ.names), st.lists(_cell | st.none(), min_size=6, max_size=6), max_size=4),
    drop=st.lists(st.sampled_from(FUZZ.names), max_size=2),
    parquet=st.booleans(),
)
def test_fuzz_frames_with_mixed_junk(tmp_path_factory, n, junk, drop, parquet) -> None:
    # Arrange
    frame = make_mixed_frame(6, seed=n).astype(object)
    for col, values in junk.items():
        frame[col] = values
    frame = frame.drop(columns=drop).head(n)
    path = tmp_path_factory.mktemp("fuzz") / ("site.parquet" if parquet else "site.csv")
    if parquet:
        frame.astype(str).where(frame.notna(), None).to_parquet(path)
    else:
        frame.to_csv(path, index=False)

    # Act / Assert
    _assert_loads_or_rejects(path)
