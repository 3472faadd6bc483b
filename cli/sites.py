"""Site tools: draft a schema from a local file, validate a file, validate the denoiser."""

from __future__ import annotations

import warnings
from pathlib import Path

import typer

from fedsynth.common.config import RunConfig
from fedsynth.common.encoding import TabularTransform
from fedsynth.common.errors import DataValidationError
from fedsynth.common.model import TabularUNet1D
from fedsynth.common.schema import Schema, infer_schema
from fedsynth.common.validation import load_table


def infer_schema_file(
    data: Path, *, output: Path, target: str | None, max_categories: int, exclude: list[str]
) -> Schema:
    """Draft a schema from ``data`` and write it to ``output`` (with the privacy warning shown)."""
    import pandas as pd

    df = pd.read_parquet(data) if data.suffix.lower() in (".parquet", ".pq") else pd.read_csv(data)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        schema = infer_schema(df, max_categories=max_categories, target=target, name=data.stem, exclude=exclude)
    for w in caught:
        typer.secho(f"warning: {w.message}", fg=typer.colors.YELLOW, err=True)
    schema.save(output)
    typer.echo(f"wrote schema with {len(schema.columns)} columns to {output}")
    return schema


def validate_file(data: Path, schema_path: Path) -> None:
    """Validate ``data`` against a schema; raises :class:`DataValidationError` listing the issues."""
    schema = Schema.load(schema_path)
    try:
        df = load_table(data, schema)
    except DataValidationError:
        raise
    typer.echo(f"{data}: {len(df)} rows, {len(schema.columns)} columns, all valid")


def validate_model(schema_path: Path) -> None:
    """Build the default denoiser for a schema and run Opacus' ModuleValidator on it."""
    from opacus.validators import ModuleValidator

    schema = Schema.load(schema_path)
    n_features = TabularTransform(schema).n_features
    model = TabularUNet1D(RunConfig().model_config(n_features))
    ModuleValidator.validate(model, strict=True)
    n_params = sum(p.numel() for p in model.parameters())
    typer.echo(f"denoiser for {n_features} encoded features: {n_params:,} parameters, Opacus-compatible")
