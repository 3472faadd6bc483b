"""Declared table schema: column kinds and public domains (bounds, category lists), loaded from JSON.

The schema is public knowledge (clinical ranges, code lists). Encoding is derived from it alone, so nothing
about a site's private rows leaks through preprocessing.
"""

from __future__ import annotations

import math
import os
import re
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from fedsynth.common.errors import SchemaError
from fedsynth.common.io import atomic_write_json, read_json

ColumnKind = Literal["numeric", "categorical", "binary"]
NumericTransform = Literal["linear", "log1p"]
SCHEMA_VERSION = 1
_KINDS = ("numeric", "categorical", "binary")
_TRANSFORMS = ("linear", "log1p")


_WHOLE_FLOAT_TEXT = re.compile(r"[+-]?\d+\.0*")


def canonical(value: Any) -> str:
    """Return the canonical string form of a category value (``1``, ``1.0``, ``"1"`` and ``"1.0"`` are one category)."""
    if isinstance(value, (bool, np.bool_)):
        return "1" if value else "0"
    if isinstance(value, (float, np.floating)) and math.isfinite(value) and float(value).is_integer():
        return str(int(value))
    if isinstance(value, (np.integer,)):
        return str(int(value))
    text = str(value).strip()
    if _WHOLE_FLOAT_TEXT.fullmatch(text):  # a float column written to CSV ("1.0") reads back as text
        return str(int(text.split(".")[0]))
    return text


@dataclass(frozen=True)
class Column:
    """One declared column.

    Args:
        name: column name as it appears in the site files.
        kind: ``numeric``, ``categorical`` or ``binary`` (a categorical column with exactly two categories).
        lower: public lower bound (numeric only).
        upper: public upper bound (numeric only).
        categories: the public list of allowed categories (categorical/binary only).
        integer: numeric values are whole numbers (rounded on decode).
        nullable: missing values are allowed (encoded with a missingness indicator).
        transform: ``linear`` or ``log1p`` scaling of a numeric column before mapping to [-1, 1].
        description: free text for the model card.
    """

    name: str
    kind: ColumnKind
    lower: float | None = None
    upper: float | None = None
    categories: tuple[Any, ...] = ()
    integer: bool = False
    nullable: bool = False
    transform: NumericTransform = "linear"
    description: str = ""

    def __post_init__(self) -> None:
        if not self.name:
            raise SchemaError("a column has an empty name")
        if self.kind not in _KINDS:
            raise SchemaError(f"column '{self.name}': kind must be one of {_KINDS}, got {self.kind!r}")
        if self.kind == "numeric":
            if self.lower is None or self.upper is None:
                raise SchemaError(f"numeric column '{self.name}' needs both 'lower' and 'upper' bounds")
            if not (math.isfinite(self.lower) and math.isfinite(self.upper)) or self.lower >= self.upper:
                raise SchemaError(
                    f"numeric column '{self.name}': need finite lower < upper, got [{self.lower}, {self.upper}]"
                )
            if self.transform not in _TRANSFORMS:
                raise SchemaError(f"column '{self.name}': transform must be one of {_TRANSFORMS}")
            if self.transform == "log1p" and self.lower < 0:
                raise SchemaError(f"column '{self.name}': log1p transform needs lower >= 0")
            if self.categories:
                raise SchemaError(f"numeric column '{self.name}' must not list categories")
        else:
            if len(self.categories) < 2:
                raise SchemaError(f"column '{self.name}': a {self.kind} column needs at least two categories")
            keys = [canonical(c) for c in self.categories]
            if len(set(keys)) != len(keys):
                raise SchemaError(f"column '{self.name}': duplicate categories in {list(self.categories)}")
            if self.kind == "binary" and len(self.categories) != 2:
                raise SchemaError(f"binary column '{self.name}' needs exactly two categories")

    @property
    def category_keys(self) -> tuple[str, ...]:
        """Canonical string forms of the categories, in declared order."""
        return tuple(canonical(c) for c in self.categories)

    def to_dict(self) -> dict[str, Any]:
        """Serialise to a JSON-compatible dict (only the fields that apply to the kind)."""
        out: dict[str, Any] = {"name": self.name, "kind": self.kind}
        if self.kind == "numeric":
            out.update(lower=self.lower, upper=self.upper, integer=self.integer, transform=self.transform)
        else:
            out["categories"] = list(self.categories)
        if self.nullable:
            out["nullable"] = True
        if self.description:
            out["description"] = self.description
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Column:
        """Build from a dict as written by :meth:`to_dict`.

        Raises:
            SchemaError: unknown keys or invalid values.
        """
        if not isinstance(data, Mapping):
            raise SchemaError(f"every column is a JSON object with 'name' and 'kind', got {data!r}")
        allowed = {"name", "kind", "lower", "upper", "categories", "integer", "nullable", "transform", "description"}
        unknown = set(data) - allowed
        if unknown:
            raise SchemaError(f"column {data.get('name')!r}: unknown key(s) {sorted(unknown)}")
        if "name" not in data or "kind" not in data:
            raise SchemaError(f"every column needs 'name' and 'kind', got {dict(data)}")
        name = str(data["name"])
        lower = data.get("lower")
        upper = data.get("upper")
        categories = data.get("categories", ())
        if not isinstance(categories, (list, tuple)):
            raise SchemaError(f"column '{name}': 'categories' must be a list, got {categories!r}")
        try:
            lower_f = None if lower is None else float(lower)
            upper_f = None if upper is None else float(upper)
        except (TypeError, ValueError) as exc:
            raise SchemaError(f"column '{name}': 'lower'/'upper' must be numbers, got {lower!r}, {upper!r}") from exc
        return cls(
            name=name,
            kind=data["kind"],
            lower=lower_f,
            upper=upper_f,
            categories=tuple(categories),
            integer=bool(data.get("integer", False)),
            nullable=bool(data.get("nullable", False)),
            transform=data.get("transform", "linear"),
            description=str(data.get("description", "")),
        )


@dataclass(frozen=True)
class Schema:
    """An ordered set of declared columns, optionally naming a prediction target.

    >>> s = Schema(columns=(Column("age", "numeric", 0, 120), Column("sex", "binary", categories=("F", "M"))))
    >>> s.names
    ('age', 'sex')
    """

    columns: tuple[Column, ...]
    target: str | None = None
    name: str = "table"
    meta: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.columns:
            raise SchemaError("a schema needs at least one column")
        names = [c.name for c in self.columns]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise SchemaError(f"duplicate column name(s): {dupes}")
        if self.target is not None and self.target not in names:
            raise SchemaError(f"target '{self.target}' is not a declared column")

    @property
    def names(self) -> tuple[str, ...]:
        """Column names in declared order."""
        return tuple(c.name for c in self.columns)

    def column(self, name: str) -> Column:
        """Return the column called ``name``.

        Raises:
            KeyError: no such column.
        """
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        """Serialise to a JSON-compatible dict."""
        out: dict[str, Any] = {
            "version": SCHEMA_VERSION,
            "name": self.name,
            "target": self.target,
            "columns": [c.to_dict() for c in self.columns],
        }
        if self.meta:
            out["meta"] = dict(self.meta)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Schema:
        """Build from a dict as written by :meth:`to_dict`.

        Raises:
            SchemaError: wrong version or malformed content.
        """
        if not isinstance(data, Mapping) or "columns" not in data:
            raise SchemaError("a schema is a JSON object with a 'columns' list")
        version = data.get("version", SCHEMA_VERSION)
        if version != SCHEMA_VERSION:
            raise SchemaError(f"schema version {version} is not supported (expected {SCHEMA_VERSION})")
        cols = data["columns"]
        if not isinstance(cols, list):
            raise SchemaError("'columns' must be a list")
        return cls(
            columns=tuple(Column.from_dict(c) for c in cols),
            target=data.get("target"),
            name=str(data.get("name", "table")),
            meta=dict(data.get("meta", {})),
        )

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Atomically write the schema as JSON."""
        return atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Schema:
        """Load a schema JSON file.

        Raises:
            SchemaError: the file is missing, not JSON, or not a valid schema.
        """
        try:
            data = read_json(path, what="schema file")
        except Exception as exc:  # CheckpointError -> SchemaError for the user
            raise SchemaError(str(exc)) from exc
        return cls.from_dict(data)


def infer_schema(
    df: pd.DataFrame,
    *,
    max_categories: int = 20,
    target: str | None = None,
    name: str = "table",
    margin: float = 0.0,
    exclude: Iterable[str] = (),
) -> Schema:
    """Infer a schema from a site's own table (a convenience for site IT, with a privacy warning).

    Numeric bounds taken from the data are **not private**: the minimum and maximum of a column can single
    out a patient. Replace them with public clinical ranges before training under DP.

    Args:
        df: the table.
        max_categories: a non-float column with at most this many distinct values is categorical.
        target: optional target column name.
        name: schema name.
        margin: widen inferred numeric bounds by this fraction of the range on each side.
        exclude: columns to leave out (identifiers).

    Returns:
        The inferred schema.
    """
    warnings.warn(
        "infer_schema: bounds and category lists were read from private data and are not differentially "
        "private; review them and replace bounds with public (e.g. clinical) ranges before training.",
        UserWarning,
        stacklevel=2,
    )
    skip = set(exclude)
    columns: list[Column] = []
    for col in df.columns:
        if col in skip:
            continue
        series = df[col]
        nullable = bool(series.isna().any())
        values = series.dropna()
        is_float = pd.api.types.is_float_dtype(series) and not (values % 1 == 0).all() if len(values) else False
        numeric = pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series)
        n_unique = values.nunique()
        if numeric and (is_float or n_unique > max_categories):
            lo, hi = float(values.min()), float(values.max())
            if lo == hi:
                hi = lo + 1.0
            pad = (hi - lo) * margin
            integer = bool(len(values) and (values % 1 == 0).all())
            columns.append(Column(str(col), "numeric", lo - pad, hi + pad, integer=integer, nullable=nullable))
        else:
            cats = sorted({canonical(v) for v in values}, key=_natural_key)
            if len(cats) < 2:
                cats = cats + [f"__other_{i}" for i in range(2 - len(cats))]
            if numeric:
                cats_typed: tuple[Any, ...] = tuple(int(c) if _is_int(c) else c for c in cats)
            else:
                cats_typed = tuple(cats)
            kind: ColumnKind = "binary" if len(cats) == 2 else "categorical"
            columns.append(Column(str(col), kind, categories=cats_typed, nullable=nullable))
    return Schema(columns=tuple(columns), target=target, name=name)


def _is_int(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True


def _natural_key(text: str) -> tuple[int, float, str]:
    try:
        return (0, float(text), text)
    except ValueError:
        return (1, 0.0, text)
