"""Load a site's CSV/Parquet table and check it against the declared schema, naming file, row and column."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd

from fedsynth.common.errors import DataValidationError, ValidationIssue
from fedsynth.common.schema import Column, Schema, canonical

logger = logging.getLogger(__name__)
_MAX_ISSUES_PER_COLUMN = 20


def _read_raw(path: Path) -> pd.DataFrame:
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        df = pd.read_parquet(path)
        return df.astype(object).where(df.notna(), None)
    return pd.read_csv(path, dtype=str, keep_default_na=True, skipinitialspace=True)


def load_table(path: str | os.PathLike[str], schema: Schema, *, drop_extra: bool = True) -> pd.DataFrame:
    """Read a site table (CSV or Parquet) and validate it against ``schema``.

    Args:
        path: the site's file; ``.parquet``/``.pq`` are read as Parquet, anything else as CSV with a header.
        schema: the declared schema.
        drop_extra: silently drop (with a log line) columns that the schema does not declare, such as
            identifiers; with ``False`` they are an error.

    Returns:
        The table with the schema's columns in declared order: numeric columns as ``float64``, categorical
        and binary columns as canonical strings (``None`` where missing).

    Raises:
        DataValidationError: the file cannot be read or any row breaks the schema; every issue names the
            file, the 1-based data row (header not counted) and the column.
    """
    p = Path(path)
    name = str(p)
    if not p.exists():
        raise DataValidationError([ValidationIssue(name, None, None, "file does not exist")])
    if p.stat().st_size == 0:
        raise DataValidationError([ValidationIssue(name, None, None, "file is empty (no header, no rows)")])
    try:
        raw = _read_raw(p)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError, OSError) as exc:
        # the C parser names the file line ("Expected 2 fields in line 3"); the header is line 1
        line = re.search(r"\bline (\d+)", str(exc))
        row = int(line.group(1)) - 1 if line and int(line.group(1)) > 1 else None
        raise DataValidationError(
            [ValidationIssue(name, row, None, f"cannot be parsed as {_kind(p)}: {exc}".strip())]
        ) from exc
    df, issues = _check_frame(raw, schema, source=name, drop_extra=drop_extra)
    if issues:
        raise DataValidationError(issues)
    return df


def validate_frame(df: pd.DataFrame, schema: Schema, *, source: str = "<table>") -> list[ValidationIssue]:
    """Return every schema violation in ``df`` (an empty list means the table is valid).

    Args:
        df: the table, with raw (string or typed) values.
        schema: the declared schema.
        source: the name used in issues (usually the file path).
    """
    return _check_frame(df, schema, source=source, drop_extra=True)[1]


def _kind(path: Path) -> str:
    return "Parquet" if path.suffix.lower() in (".parquet", ".pq") else "CSV"


def _check_frame(
    raw: pd.DataFrame, schema: Schema, *, source: str, drop_extra: bool
) -> tuple[pd.DataFrame, list[ValidationIssue]]:
    issues: list[ValidationIssue] = []
    raw = raw.rename(columns=lambda c: str(c).strip())
    if len(raw) == 0:
        issues.append(ValidationIssue(source, None, None, "file has a header but no data rows"))
    missing = [c for c in schema.names if c not in raw.columns]
    for col in missing:
        issues.append(ValidationIssue(source, None, col, "declared column is missing from the file"))
    extra = [c for c in raw.columns if c not in schema.names]
    if extra:
        if drop_extra:
            logger.info("%s: ignoring %d undeclared column(s): %s", source, len(extra), extra)
        else:
            for col in extra:
                issues.append(ValidationIssue(source, None, col, "column is not declared in the schema"))
    out: dict[str, pd.Series] = {}
    for column in schema.columns:
        if column.name not in raw.columns:
            continue
        series = raw[column.name]
        if isinstance(series, pd.DataFrame):
            issues.append(ValidationIssue(source, None, column.name, "column appears more than once"))
            continue
        if column.kind == "numeric":
            values, col_issues = _check_numeric(series, column, source)
        else:
            values, col_issues = _check_categorical(series, column, source)
        out[column.name] = values
        issues.extend(col_issues)
    frame = pd.DataFrame(out, index=raw.index).reset_index(drop=True) if out else pd.DataFrame()
    return frame, issues


def _is_missing(series: pd.Series) -> np.ndarray:
    as_str = series.astype(str).str.strip()
    return np.asarray(series.isna() | as_str.isin(["", "nan", "NaN", "NA", "None", "null"]))


def _limited(issues: list[ValidationIssue], column: str, source: str, total: int) -> list[ValidationIssue]:
    if total > len(issues):
        issues.append(
            ValidationIssue(source, None, column, f"{total - len(issues)} more row(s) with the same problem")
        )
    return issues


def _check_numeric(series: pd.Series, column: Column, source: str) -> tuple[pd.Series, list[ValidationIssue]]:
    missing = _is_missing(series)
    values = pd.to_numeric(series.where(~missing, None), errors="coerce").astype(float)
    bad_type = ~missing & values.isna().to_numpy()
    issues: list[ValidationIssue] = []
    problems: list[tuple[int, str]] = []
    for i in np.flatnonzero(bad_type):
        problems.append((int(i), f"expected a number, got {series.iloc[i]!r}"))
    arr = values.to_numpy()
    nonfinite = ~missing & ~bad_type & ~np.isfinite(np.nan_to_num(arr, nan=0.0, posinf=np.inf, neginf=-np.inf))
    for i in np.flatnonzero(nonfinite):
        problems.append((int(i), f"value {arr[i]} is not finite"))
    if not column.nullable:
        for i in np.flatnonzero(missing):
            problems.append((int(i), "missing value in a column that is not nullable"))
    ok = ~missing & ~bad_type & ~nonfinite
    with np.errstate(invalid="ignore"):
        out_of_bounds = ok & ((arr < column.lower) | (arr > column.upper))
    for i in np.flatnonzero(out_of_bounds):
        problems.append((int(i), f"value {arr[i]:g} is outside the declared bounds [{column.lower:g}, {column.upper:g}]"))
    if column.integer:
        with np.errstate(invalid="ignore"):
            frac = ok & ~out_of_bounds & (np.abs(arr - np.round(arr)) > 1e-9)
        for i in np.flatnonzero(frac):
            problems.append((int(i), f"value {arr[i]:g} is not a whole number"))
    problems.sort()
    for i, msg in problems[:_MAX_ISSUES_PER_COLUMN]:
        issues.append(ValidationIssue(source, i + 1, column.name, msg))
    values = values.where(ok, np.nan)
    return values.reset_index(drop=True), _limited(issues, column.name, source, len(problems))


def _check_categorical(
    series: pd.Series, column: Column, source: str
) -> tuple[pd.Series, list[ValidationIssue]]:
    missing = _is_missing(series)
    keys = series.map(lambda v: None if v is None else canonical(v))
    allowed = set(column.category_keys)
    problems: list[tuple[int, str]] = []
    known = keys.isin(allowed).to_numpy()
    for i in np.flatnonzero(~missing & ~known):
        problems.append(
            (int(i), f"unknown category {series.iloc[i]!r}; allowed: {list(column.category_keys)}")
        )
    if not column.nullable:
        for i in np.flatnonzero(missing):
            problems.append((int(i), "missing value in a column that is not nullable"))
    problems.sort()
    issues = [ValidationIssue(source, i + 1, column.name, msg) for i, msg in problems[:_MAX_ISSUES_PER_COLUMN]]
    values = keys.where(~missing & known, None).astype(object)
    return values.reset_index(drop=True), _limited(issues, column.name, source, len(problems))
