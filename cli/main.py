"""The ``fedsynth`` command line: one Typer app whose subcommands are one-line calls into library code."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from fedsynth.common.errors import FedsynthError

app = typer.Typer(
    name="fedsynth",
    help="Federated, differentially private synthetic tabular data.",
    context_settings={"help_option_names": ["-h", "--help"]},
    no_args_is_help=True,
    add_completion=False,
)


@app.command()
def sample(
    generator: Annotated[Path, typer.Option("--generator", "-g", help="Generator artifact folder (generator-vN).")],
    n: Annotated[int, typer.Option("-n", "--rows", min=1, help="Number of synthetic rows.")] = 1000,
    output: Annotated[Path, typer.Option("-o", "--output", help="Output CSV (or .parquet).")] = Path("synthetic.csv"),
    sampler: Annotated[str, typer.Option(help="ddim (few-step, fast) or ddpm (full chain).")] = "ddim",
    steps: Annotated[Optional[int], typer.Option(help="Reverse steps (default: 50 for DDIM, T for DDPM).")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Random seed for reproducible rows.")] = None,
    device: Annotated[str, typer.Option(help="Where the denoiser runs: cpu, or cuda for a GPU.")] = "cpu",
) -> None:
    """Write synthetic rows from a released (audited) generator."""
    from fedsynth.cli.sampling import sample_to_file

    if sampler not in ("ddim", "ddpm"):
        raise typer.BadParameter(f"must be 'ddim' or 'ddpm', got {sampler!r}", param_hint="--sampler")
    sample_to_file(generator, n=n, output=output, sampler=sampler, steps=steps, seed=seed, device=device)


@app.command("infer-schema")
def infer_schema_cmd(
    data: Annotated[Path, typer.Argument(help="A site's CSV or Parquet file.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Schema JSON to write.")] = Path("schema.json"),
    target: Annotated[Optional[str], typer.Option(help="Target column.")] = None,
    max_categories: Annotated[int, typer.Option(help="Max distinct values of a categorical column.")] = 20,
    exclude: Annotated[Optional[list[str]], typer.Option(help="Identifier columns to leave out.")] = None,
) -> None:
    """Draft a schema from a site's own file (bounds read from data are NOT private: review them)."""
    from fedsynth.cli.sites import infer_schema_file

    infer_schema_file(data, output=output, target=target, max_categories=max_categories, exclude=exclude or [])


@app.command("validate-data")
def validate_data_cmd(
    data: Annotated[Path, typer.Argument(help="A site's CSV or Parquet file.")],
    schema: Annotated[Path, typer.Option("--schema", "-s", help="Declared schema JSON.")],
) -> None:
    """Check a site's file against the schema; lists every issue with file, row and column."""
    from fedsynth.cli.sites import validate_file

    validate_file(data, schema)


@app.command("validate-model")
def validate_model_cmd(
    schema: Annotated[Path, typer.Option("--schema", "-s", help="Declared schema JSON.")],
) -> None:
    """Build the denoiser for a schema and check it with Opacus' ModuleValidator."""
    from fedsynth.cli.sites import validate_model

    validate_model(schema)


_PASSTHROUGH = {"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": ["--agent-help"]}


@app.command("site-agent", context_settings=_PASSTHROUGH)
def site_agent_cmd(ctx: typer.Context) -> None:
    """Run a site: flower-supernode (--isolation process, 0.5 s idle poll) plus a warm ClientApp executor.

    Every option is passed to flower-supernode (see `flower-supernode --help`); exits with its exit code.
    """
    from fedsynth.cli.site_agent import run_site_agent

    try:
        code = run_site_agent(list(ctx.args))
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    sys.exit(code)


@app.command("clientapp-executor", context_settings=_PASSTHROUGH)
def clientapp_executor_cmd(ctx: typer.Context) -> None:
    """Warm SuperExec for a SuperNode started with --isolation process (`site-agent` starts it for you).

    Options: --runtime-api-address, --insecure | --root-certificates, --parent-pid,
    --superexec-auth-secret-file, --poll-interval (see `python -m fedsynth.cli.executor --help`).
    """
    from fedsynth.cli.executor import main as executor_main

    executor_main(list(ctx.args))


def _mount_optional() -> None:
    """Mount subcommands that live in their own modules."""
    import importlib
    import importlib.util

    for name in ("fedsynth.cli.pipeline", "fedsynth.cli.audit", "fedsynth.cli.serve"):
        if importlib.util.find_spec(name) is None:
            continue
        register = getattr(importlib.import_module(name), "register", None)
        if register is not None:
            register(app)


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the CLI and turn fedsynth errors into a one-line message and exit code 2."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("faiss", "faiss.loader", "httpx", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    _mount_optional()
    try:
        app(args=argv, standalone_mode=False)
    except FedsynthError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        sys.exit(2)
    except typer.Abort:
        sys.exit(130)
    except SystemExit:
        raise
    except Exception as exc:  # click usage errors
        import click

        if isinstance(exc, click.exceptions.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        raise
