"""``fedsynth sample``: synthetic rows from a released generator, with progress."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.progress import Progress

from fedsynth.common.artifact import load_generator, require_released
from fedsynth.common.io import atomic_write_bytes


def sample_to_file(
    generator: Path, *, n: int, output: Path, sampler: str = "ddim", steps: int | None = None,
    seed: int | None = None, device: str = "cpu",
) -> Path:
    """Sample ``n`` rows from a released generator into ``output`` (CSV, or Parquet by suffix).

    ``device`` runs the denoiser there (``"cuda"`` for a GPU; a seeded draw gives the same rows on either).

    Raises:
        ReleaseBlocked: the generator was not audited or failed its audit.
        ConfigError: ``device`` is not ``cpu`` / ``cuda``, or names a GPU that torch cannot see.
    """
    require_released(generator)
    gen = load_generator(generator)
    with Progress(transient=True) as progress:
        task = progress.add_task(f"sampling {n} rows ({sampler})", total=n)
        df = gen.sample(
            n, sampler=sampler, steps=steps, seed=seed, device=device,  # type: ignore[arg-type]
            progress=lambda done, total: progress.update(task, completed=done),
        )
    output.parent.mkdir(parents=True, exist_ok=True)
    if output.suffix.lower() in (".parquet", ".pq"):
        df.to_parquet(output, index=False)
    else:
        atomic_write_bytes(output, df.to_csv(index=False).encode("utf-8"))
    typer.echo(f"wrote {len(df)} rows x {df.shape[1]} columns to {output} (generator v{gen.version})")
    return output
