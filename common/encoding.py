"""Public, schema-derived encoding of mixed numeric/categorical rows into [-1, 1] feature vectors.

Nothing here is fitted on data: scaling comes from the schema's declared bounds and category lists, so every
site uses the identical, invertible transform and preprocessing spends no privacy budget.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from fedsynth.common.errors import DataValidationError, ValidationIssue
from fedsynth.common.schema import Column, Schema, canonical

MISSING = "__missing__"


@dataclass(frozen=True)
class FeatureBlock:
    """Where one column lives in the encoded vector.

    Args:
        column: the schema column.
        start: first feature index.
        width: number of features (1 for numeric/binary values, k for one-hot, +1 for a missingness flag).
        keys: for categorical blocks, the canonical category keys in one-hot order (may include ``MISSING``).
    """

    column: Column
    start: int
    width: int
    keys: tuple[str, ...] = ()


class TabularTransform:
    """Invertible map between a table and ``float32`` features in [-1, 1], built from the schema only.

    * numeric: ``(g(x) - g(lower)) / (g(upper) - g(lower))`` mapped to [-1, 1], with ``g`` the identity or
      ``log1p``; a nullable column adds a missingness flag (+1 missing, -1 present);
    * binary: one feature, -1 for the first declared category and +1 for the second;
    * categorical (and nullable binary): one-hot in {-1, +1}, decoded by argmax, so decoded values are always
      declared categories.

    >>> from fedsynth.common.schema import Column, Schema
    >>> t = TabularTransform(Schema((Column("age", "numeric", 0, 100), Column("sex", "binary", categories=("F", "M")))))
    >>> t.transform(pd.DataFrame({"age": [50.0], "sex": ["M"]})).tolist()
    [[0.0, 1.0]]
    """

    def __init__(self, schema: Schema) -> None:
        self.schema = schema
        blocks: list[FeatureBlock] = []
        start = 0
        for col in schema.columns:
            if col.kind == "numeric":
                width = 2 if col.nullable else 1
                blocks.append(FeatureBlock(col, start, width))
            elif col.kind == "binary" and not col.nullable:
                width = 1
                blocks.append(FeatureBlock(col, start, width, col.category_keys))
            else:
                keys = col.category_keys + ((MISSING,) if col.nullable else ())
                width = len(keys)
                blocks.append(FeatureBlock(col, start, width, keys))
            start += width
        self.blocks: tuple[FeatureBlock, ...] = tuple(blocks)
        self.n_features = start

    # numeric helpers
    @staticmethod
    def _g(col: Column, x: np.ndarray) -> np.ndarray:
        return np.log1p(x) if col.transform == "log1p" else x

    @staticmethod
    def _g_inv(col: Column, y: np.ndarray) -> np.ndarray:
        return np.expm1(y) if col.transform == "log1p" else y

    def _scale(self, col: Column) -> tuple[float, float]:
        lo = float(self._g(col, np.asarray(col.lower)))
        hi = float(self._g(col, np.asarray(col.upper)))
        return lo, hi

    def transform(self, df: pd.DataFrame) -> np.ndarray:
        """Encode a validated table.

        Args:
            df: table with (at least) the schema's columns, as returned by
                :func:`fedsynth.common.validation.load_table`.

        Returns:
            ``float32`` array of shape ``(len(df), n_features)`` with values in [-1, 1].

        Raises:
            DataValidationError: a value is missing where not nullable, out of bounds or an unknown category.
        """
        n = len(df)
        out = np.empty((n, self.n_features), dtype=np.float32)
        issues: list[ValidationIssue] = []
        for block in self.blocks:
            col = block.column
            if col.name not in df.columns:
                raise DataValidationError([ValidationIssue("<table>", None, col.name, "column is missing")])
            series = df[col.name]
            if col.kind == "numeric":
                x = pd.to_numeric(series, errors="coerce").to_numpy(dtype=float)
                miss = np.isnan(x)
                if miss.any() and not col.nullable:
                    issues.append(ValidationIssue("<table>", int(np.argmax(miss)) + 1, col.name, "missing value"))
                bad = ~miss & ((x < col.lower) | (x > col.upper))
                if bad.any():
                    i = int(np.argmax(bad))
                    issues.append(ValidationIssue("<table>", i + 1, col.name, f"value {x[i]:g} out of bounds"))
                lo, hi = self._scale(col)
                with np.errstate(invalid="ignore"):
                    y = 2.0 * (self._g(col, np.where(miss, col.lower, x)) - lo) / (hi - lo) - 1.0
                y = np.where(miss, 0.0, y)
                out[:, block.start] = y
                if col.nullable:
                    out[:, block.start + 1] = np.where(miss, 1.0, -1.0)
            else:
                keys = series.map(lambda v: MISSING if v is None or (isinstance(v, float) and np.isnan(v)) else canonical(v))
                index = {k: i for i, k in enumerate(block.keys)}
                codes = keys.map(index)
                if codes.isna().any():
                    i = int(np.argmax(codes.isna().to_numpy()))
                    issues.append(
                        ValidationIssue("<table>", i + 1, col.name, f"unknown or missing category {series.iloc[i]!r}")
                    )
                    codes = codes.fillna(0)
                codes_arr = codes.to_numpy(dtype=int)
                if block.width == 1:
                    out[:, block.start] = np.where(codes_arr == 1, 1.0, -1.0)
                else:
                    onehot = -np.ones((n, block.width), dtype=np.float32)
                    onehot[np.arange(n), codes_arr] = 1.0
                    out[:, block.start : block.start + block.width] = onehot
        if issues:
            raise DataValidationError(issues)
        return out

    def inverse_transform(self, x: np.ndarray) -> pd.DataFrame:
        """Decode features back to a table with the schema's columns and value types.

        Numeric values are clipped to the declared bounds (and rounded for integer columns); categorical
        values are the argmax category, so they are always valid.

        Args:
            x: array of shape ``(n, n_features)``.

        Returns:
            A DataFrame with the schema's columns in declared order.
        """
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.n_features:
            raise ValueError(f"expected features of shape (n, {self.n_features}), got {x.shape}")
        x = np.nan_to_num(x, nan=0.0, posinf=1.0, neginf=-1.0)
        data: dict[str, object] = {}
        for block in self.blocks:
            col = block.column
            if col.kind == "numeric":
                lo, hi = self._scale(col)
                y = np.clip(x[:, block.start], -1.0, 1.0)
                v = self._g_inv(col, (y + 1.0) / 2.0 * (hi - lo) + lo)
                v = np.clip(v, col.lower, col.upper)
                if col.integer:
                    v = np.clip(np.round(v), np.ceil(col.lower), np.floor(col.upper))
                if col.nullable:
                    v = np.where(x[:, block.start + 1] > 0.0, np.nan, v)
                    data[col.name] = pd.Series(v, dtype="Int64") if col.integer else v
                else:
                    data[col.name] = v.astype(np.int64) if col.integer else v
            else:
                if block.width == 1:
                    codes = (x[:, block.start] > 0.0).astype(int)
                else:
                    codes = np.argmax(x[:, block.start : block.start + block.width], axis=1)
                values = list(col.categories) + ([None] if col.nullable else [])
                data[col.name] = pd.Series([values[c] for c in codes], dtype=object)
        return pd.DataFrame(data, columns=list(self.schema.names))
