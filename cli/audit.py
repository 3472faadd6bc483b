"""``fedsynth audit``: audit a generator artifact, and the helper commands the audit workflow needs.

* ``fedsynth audit --generator DIR [--reference holdout.csv] [--config gate.toml] -o REPORT_DIR``
  runs the audit, writes ``audit.json`` + ``report.html`` and releases or blocks the artifact (exit
  code 1 when the gate fails, naming the failed checks).
* ``fedsynth audit canaries`` makes a canary set (``insert.csv`` goes to the sites).
* ``fedsynth audit sample`` draws the audit sample from a not-yet-released artifact.
* ``fedsynth audit site-stats`` is the per-site job: run at a site, it writes aggregates only.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    help="Audit a generator (privacy, fidelity, utility) and release or block it.",
    context_settings={"help_option_names": ["-h", "--help"]},
    invoke_without_command=True,
    add_completion=False,
)


@app.callback()
def audit(
    ctx: typer.Context,
    generator: Annotated[
        Path | None,
        typer.Option("--generator", "-g", help="Generator artifact folder (generator-vN)."),
    ] = None,
    reference: Annotated[
        Path | None,
        typer.Option(
            "--reference",
            "-r",
            help="Operator holdout table (CSV/Parquet), never seen by the sites.",
        ),
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option("--config", "-c", help="TOML with [audit] settings and [gate] thresholds."),
    ] = None,
    canaries: Annotated[
        Path | None,
        typer.Option("--canaries", help="Canary folder made by `fedsynth audit canaries`."),
    ] = None,
    site_stats: Annotated[
        list[Path] | None, typer.Option("--site-stats", help="A site's stats JSON (repeatable).")
    ] = None,
    synthetic: Annotated[
        Path | None,
        typer.Option(
            "--synthetic", help="The audit sample sent to the sites (default: draw a fresh one)."
        ),
    ] = None,
    no_shadow: Annotated[
        bool, typer.Option("--no-shadow", help="Skip the shadow-model attack (the slowest part).")
    ] = False,
    output: Annotated[
        Path | None, typer.Option("-o", "--output", help="Report folder (audit.json, report.html).")
    ] = None,
) -> None:
    """Audit a generator artifact and release or block it."""
    if ctx.invoked_subcommand is not None:
        return
    if generator is None or output is None:
        raise typer.BadParameter(
            "--generator and -o/--output are required", param_hint="--generator / -o"
        )
    from dataclasses import replace

    from fedsynth.audit.canary import CanarySet
    from fedsynth.audit.config import AuditConfig
    from fedsynth.audit.runner import headline, run_audit
    from fedsynth.common.schema import Schema
    from fedsynth.common.validation import load_table

    cfg = AuditConfig.from_toml(config)
    if no_shadow:
        cfg = replace(cfg, shadow=False)
    schema = Schema.load(generator / "schema.json")
    report = run_audit(
        generator,
        reference=load_table(reference, schema) if reference else None,
        canaries=CanarySet.load(canaries) if canaries else None,
        site_stats=[json.loads(p.read_text(encoding="utf-8")) for p in site_stats or []] or None,
        synthetic=load_table(synthetic, schema) if synthetic else None,
        config=cfg,
        out_dir=output,
    )
    typer.echo(json.dumps(headline(report), indent=2))
    typer.echo(f"report: {output / 'report.html'}")
    if report.gate.passed:
        typer.secho(
            report.gate.summary() + f"; generator {generator} released", fg=typer.colors.GREEN
        )
        return
    typer.secho(
        report.gate.summary() + f"\ngenerator {generator} is BLOCKED from release",
        fg=typer.colors.RED,
        err=True,
    )
    raise typer.Exit(1)


@app.command("canaries")
def canaries_cmd(
    schema: Annotated[Path, typer.Option("--schema", "-s", help="Declared schema JSON.")],
    output: Annotated[
        Path,
        typer.Option(
            "-o",
            "--output",
            help="Folder for canaries.csv, membership.json (keep) and insert.csv (send).",
        ),
    ],
    reference: Annotated[
        Path | None,
        typer.Option("--reference", "-r", help="Holdout table the canaries should stay far from."),
    ] = None,
    n: Annotated[
        int, typer.Option("-n", min=2, help="Number of canaries (even; half are inserted).")
    ] = 100,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
) -> None:
    """Make canary records; send only ``insert.csv`` to the sites."""
    from fedsynth.audit.canary import make_canaries
    from fedsynth.common.schema import Schema
    from fedsynth.common.validation import load_table

    s = Schema.load(schema)
    make_canaries(
        s, n=n, reference=load_table(reference, s) if reference else None, seed=seed
    ).save(output)
    typer.echo(
        f"canaries written to {output}; send {output / 'insert.csv'} to the sites, "
        "keep membership.json"
    )


@app.command("sample")
def sample_cmd(
    generator: Annotated[
        Path, typer.Option("--generator", "-g", help="Generator artifact folder.")
    ],
    output: Annotated[Path, typer.Option("-o", "--output", help="CSV to write.")],
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="Audit TOML (n_synthetic, seed).")
    ] = None,
) -> None:
    """Draw the audit sample (works before release; for the auditor and the per-site jobs only)."""
    from fedsynth.audit.config import AuditConfig
    from fedsynth.audit.runner import sample_for_audit

    sample_for_audit(generator, config=AuditConfig.from_toml(config)).to_csv(output, index=False)
    typer.echo(f"audit sample written to {output}")


@app.command("site-stats")
def site_stats_cmd(
    site_data: Annotated[
        Path, typer.Option("--site-data", help="This site's own table (stays here).")
    ],
    synthetic: Annotated[
        Path, typer.Option("--synthetic", help="The audit sample from the auditor.")
    ],
    schema: Annotated[Path, typer.Option("--schema", "-s", help="Declared schema JSON.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Aggregates JSON to send back.")],
    reference: Annotated[
        Path | None, typer.Option("--reference", "-r", help="The auditor's holdout table.")
    ] = None,
    site: Annotated[str, typer.Option(help="Site label.")] = "site",
    reid: Annotated[bool, typer.Option(help="Also run the anonymeter evaluators.")] = True,
    exclude: Annotated[
        Path | None,
        typer.Option(
            "--exclude", help="Canary rows this site inserted (insert.csv); left out of the stats."
        ),
    ] = None,
) -> None:
    """Per-site audit job: distance/membership aggregates from this site's rows (no rows are
    written)."""
    from fedsynth.audit.site_stats import site_audit_stats
    from fedsynth.common.io import atomic_write_json
    from fedsynth.common.schema import Schema
    from fedsynth.common.validation import load_table

    s = Schema.load(schema)
    stats = site_audit_stats(
        load_table(site_data, s),
        load_table(synthetic, s),
        schema=s,
        reference=load_table(reference, s) if reference else None,
        site=site,
        reid=reid,
        exclude=load_table(exclude, s) if exclude else None,
    )
    atomic_write_json(output, stats)
    typer.echo(f"site stats written to {output}")


def register(root: typer.Typer) -> None:
    """Mount ``audit`` on the ``fedsynth`` CLI (called by :mod:`fedsynth.cli.main`)."""
    root.add_typer(app, name="audit")
