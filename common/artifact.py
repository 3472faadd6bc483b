"""Versioned generator artifact: weights + schema + config + privacy ledger report + model card + audit status.

Layout of ``<root>/generator-v<N>/``::

    manifest.json          format, version, creation time, SHA-256 of every file below
    weights.pt             denoiser state_dict (torch.save, loaded with weights_only=True)
    schema.json            the declared schema (public)
    config.json            model, scheduler and run configuration
    privacy_ledger.json    per-site epsilon report (the sites' own ledgers are the authority)
    MODEL_CARD.md          human-readable summary
    audit_status.json      written by the auditor: passed/failed checks, bound to the weights' hash

A generator is *released* only when ``audit_status.json`` says the audit passed for these exact weights.
"""

from __future__ import annotations

import copy
import datetime as _dt
import hashlib
import io
import json
import os
import re
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from fedsynth.common.encoding import TabularTransform
from fedsynth.common.errors import ArtifactError, ConfigError, ReleaseBlocked
from fedsynth.common.io import atomic_write_bytes, atomic_write_json, atomic_write_text, read_json
from fedsynth.common.model import ModelConfig, TabularUNet1D
from fedsynth.common.sampling import Sampler, make_sampler, sample
from fedsynth.common.scheduler import SchedulerConfig
from fedsynth.common.schema import Schema

FORMAT = "fedsynth-generator"
FORMAT_VERSION = 1
HASHED_FILES = ("weights.pt", "schema.json", "config.json", "privacy_ledger.json", "MODEL_CARD.md")
AUDIT_STATUS = "audit_status.json"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def next_version(root: str | os.PathLike[str]) -> int:
    """The next free artifact version number under ``root``."""
    found = [int(m.group(1)) for p in Path(root).glob("generator-v*") if (m := re.fullmatch(r"generator-v(\d+)", p.name))]
    return max(found, default=0) + 1


def model_card(
    *, schema: Schema, run_config: Mapping[str, Any], ledger: Mapping[str, Any], version: int, n_params: int,
    extra: str = "",
) -> str:
    """Render the short model card (Markdown)."""
    sites = ledger.get("sites", {})
    rows = "\n".join(
        f"| {site} | {info.get('epsilon', float('nan')):.3f} | {info.get('delta', float('nan')):g} | "
        f"{info.get('rounds', 0)} | {info.get('num_examples', 0)} |"
        for site, info in sorted(sites.items())
    ) or "| (none) | | | | |"
    eps_max = max((float(i.get("epsilon", 0.0)) for i in sites.values()), default=0.0)
    n_num = sum(c.kind == "numeric" for c in schema.columns)
    return f"""# fedsynth generator v{version}

A denoising-diffusion generator of synthetic rows for the table **{schema.name}**, trained with federated
DP-SGD (Opacus) across {len(sites)} site(s). Raw rows never left the sites.

## Data schema
{len(schema.columns)} columns ({n_num} numeric, {len(schema.columns) - n_num} categorical/binary); target:
`{schema.target}`. Encoding is derived from the declared (public) schema only.

## Privacy
Each site's guarantee is (epsilon, delta)-DP with respect to its own rows (example-level, add/remove one row),
accounted with Opacus' `{run_config.get('accountant', 'rdp')}` accountant over all rounds.
Worst site: epsilon = {eps_max:.3f}.

| site | epsilon | delta | rounds | rows |
|---|---|---|---|---|
{rows}

The sites' own ledgers are the authority; this table is the server's report of them.

## Model
1D U-Net denoiser, {n_params:,} parameters; diffusion schedule `{run_config.get('beta-schedule', '?')}` with
{run_config.get('diffusion-steps', '?')} steps; {run_config.get('num-server-rounds', '?')} federated rounds of
{run_config.get('local-steps', '?')} local steps.

## Intended use and limits
For development, testing and method research on data shaped like the source table. Synthetic rows are not
real patients; do not use them for clinical decisions. Rare categories and extreme values are
under-represented under DP. Release requires a passing privacy audit (see `audit_status.json`).
{extra}"""


def save_artifact(
    root: str | os.PathLike[str],
    *,
    state_dict: Mapping[str, torch.Tensor],
    schema: Schema,
    model_config: ModelConfig,
    scheduler_config: SchedulerConfig,
    run_config: Mapping[str, Any],
    ledger: Mapping[str, Any],
    history: list[Mapping[str, Any]] | None = None,
    version: int | None = None,
) -> Path:
    """Write a new versioned generator artifact under ``root`` and return its folder.

    Args:
        root: folder holding ``generator-v<N>`` folders.
        state_dict: denoiser weights.
        schema: the schema the model was trained on.
        model_config: the denoiser configuration.
        scheduler_config: the diffusion schedule.
        run_config: the run configuration (kebab-case, as Flower holds it).
        ledger: the server's privacy report: ``{"sites": {site: {"epsilon", "delta", "rounds", "num_examples"}}, ...}``.
        history: per-round metrics (loss, epsilon per site) for the report.
        version: explicit version number (default: the next free one).

    Raises:
        ArtifactError: the target version already exists.
    """
    root_p = Path(root)
    version = next_version(root_p) if version is None else version
    out = root_p / f"generator-v{version}"
    if out.exists():
        raise ArtifactError(f"{out} already exists; artifacts are immutable, pick another version")
    tmp = root_p / f".generator-v{version}.tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in state_dict.items()}, buf)
    atomic_write_bytes(tmp / "weights.pt", buf.getvalue())
    schema.save(tmp / "schema.json")
    atomic_write_json(
        tmp / "config.json",
        {"model": model_config.to_dict(), "scheduler": scheduler_config.to_dict(), "run": dict(run_config)},
    )
    atomic_write_json(tmp / "privacy_ledger.json", {**dict(ledger), "history": list(history or [])})
    n_params = sum(int(v.numel()) for v in state_dict.values())
    atomic_write_text(
        tmp / "MODEL_CARD.md", model_card(schema=schema, run_config=run_config, ledger=ledger, version=version, n_params=n_params)
    )
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "version": version,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "files": {name: _sha256(tmp / name) for name in HASHED_FILES},
    }
    atomic_write_json(tmp / "manifest.json", manifest)
    os.replace(tmp, out)
    return out


def read_manifest(path: str | os.PathLike[str], *, verify: bool = True) -> dict[str, Any]:
    """Read ``manifest.json`` and (by default) check every file's SHA-256.

    Raises:
        ArtifactError: missing files, unknown format, or a hash mismatch (corruption or tampering).
    """
    p = Path(path)
    if not (p / "manifest.json").exists():
        raise ArtifactError(f"{p} is not a fedsynth generator artifact (no manifest.json)")
    try:
        manifest = read_json(p / "manifest.json", what="artifact manifest")
    except Exception as exc:
        raise ArtifactError(str(exc)) from exc
    if manifest.get("format") != FORMAT or manifest.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(f"{p}: unsupported artifact format {manifest.get('format')!r} v{manifest.get('format_version')}")
    if verify:
        for name, digest in manifest["files"].items():
            f = p / name
            if not f.exists():
                raise ArtifactError(f"{p}: {name} is missing")
            if _sha256(f) != digest:
                raise ArtifactError(f"{p}: {name} does not match its SHA-256 in manifest.json (corrupt or modified)")
    return dict(manifest)


@dataclass
class Generator:
    """A loaded generator: denoiser + schedule + schema, ready to sample rows."""

    path: Path
    model: TabularUNet1D
    schema: Schema
    transform: TabularTransform
    scheduler_config: SchedulerConfig
    run_config: dict[str, Any]
    manifest: dict[str, Any]

    @property
    def version(self) -> int:
        """The artifact's version number."""
        return int(self.manifest["version"])

    def sample_encoded(
        self, n: int, *, sampler: Sampler = "ddim", steps: int | None = None, seed: int | None = None,
        batch_size: int = 4096, progress: Callable[[int, int], None] | None = None, device: str = "cpu",
    ) -> np.ndarray:
        """Draw ``n`` encoded rows, shape ``(n, n_features)``.

        ``device`` runs the denoiser there (``"cuda"``: a GPU); the noise still comes from a CPU generator, so a
        seeded draw gives the same rows on any device, up to float rounding.

        Raises:
            ConfigError: ``device`` is not ``cpu`` or ``cuda[:N]``, or names a GPU that torch cannot see.
        """
        try:
            dev = torch.device(device)
        except RuntimeError as exc:
            raise ConfigError(f"device must be 'cpu' or 'cuda' (a GPU), got {device!r}") from exc
        if dev.type not in ("cpu", "cuda"):
            raise ConfigError(f"device must be 'cpu' or 'cuda' (a GPU), got {device!r}")
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError(f"device {device!r} asked for, but torch sees no CUDA GPU on this machine")
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        model = self.model if dev.type == "cpu" else copy.deepcopy(self.model).to(dev)
        x = sample(
            model, make_sampler(self.scheduler_config, sampler), n, n_features=self.transform.n_features,
            num_inference_steps=steps, batch_size=batch_size, generator=gen, progress=progress, device=dev,
        )
        return x.cpu().numpy()

    def sample(
        self, n: int, *, sampler: Sampler = "ddim", steps: int | None = None, seed: int | None = None,
        batch_size: int = 4096, progress: Callable[[int, int], None] | None = None, device: str = "cpu",
    ) -> pd.DataFrame:
        """Draw ``n`` synthetic rows with the schema's columns, valid categories and values within bounds
        (``device``: see :meth:`sample_encoded`)."""
        return self.transform.inverse_transform(
            self.sample_encoded(n, sampler=sampler, steps=steps, seed=seed, batch_size=batch_size, progress=progress,
                                device=device)
        )


def load_generator(path: str | os.PathLike[str], *, verify: bool = True) -> Generator:
    """Load an artifact folder (integrity-checked) into a :class:`Generator`.

    Raises:
        ArtifactError: the artifact is missing files, corrupt or incompatible.
    """
    p = Path(path)
    manifest = read_manifest(p, verify=verify)
    try:
        schema = Schema.load(p / "schema.json")
        cfg = read_json(p / "config.json", what="artifact config")
        model_config = ModelConfig.from_dict(cfg["model"])
        scheduler_config = SchedulerConfig.from_dict(cfg["scheduler"])
        model = TabularUNet1D(model_config)
        state = torch.load(p / "weights.pt", map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    except ArtifactError:
        raise
    except Exception as exc:
        raise ArtifactError(f"{p}: cannot load generator: {exc}") from exc
    transform = TabularTransform(schema)
    if transform.n_features != model_config.n_features:
        raise ArtifactError(f"{p}: schema encodes {transform.n_features} features, model expects {model_config.n_features}")
    model.eval()
    return Generator(p, model, schema, transform, scheduler_config, dict(cfg.get("run", {})), manifest)


# release gate


@dataclass(frozen=True)
class ReleaseStatus:
    """Whether an artifact may be released.

    Args:
        audited: an audit status exists for these exact weights.
        passed: the audit's release gate passed.
        failed_checks: human-readable reasons when it did not.
        report: path of the audit report (relative to the artifact), if any.
    """

    audited: bool
    passed: bool
    failed_checks: tuple[str, ...] = ()
    report: str | None = None

    @property
    def released(self) -> bool:
        """True only for an audited artifact whose gate passed."""
        return self.audited and self.passed


def write_audit_status(
    path: str | os.PathLike[str], *, passed: bool, failed_checks: list[str], report: str | None = None,
    summary: Mapping[str, Any] | None = None,
) -> Path:
    """Record the auditor's verdict for the artifact at ``path``, bound to the current weights' hash."""
    p = Path(path)
    manifest = read_manifest(p)
    return atomic_write_json(
        p / AUDIT_STATUS,
        {
            "passed": bool(passed),
            "failed_checks": list(failed_checks),
            "report": report,
            "weights_sha256": manifest["files"]["weights.pt"],
            "audited_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "summary": dict(summary or {}),
        },
    )


def release_status(path: str | os.PathLike[str]) -> ReleaseStatus:
    """Read the audit verdict of the artifact at ``path`` (integrity-checked)."""
    p = Path(path)
    manifest = read_manifest(p)
    status_file = p / AUDIT_STATUS
    if not status_file.exists():
        return ReleaseStatus(audited=False, passed=False, failed_checks=("the generator has not been audited",))
    try:
        status = json.loads(status_file.read_text())
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"{status_file} is corrupt: {exc}") from exc
    if status.get("weights_sha256") != manifest["files"]["weights.pt"]:
        return ReleaseStatus(
            audited=False, passed=False, failed_checks=("the audit was made for other weights; audit again",)
        )
    return ReleaseStatus(
        audited=True,
        passed=bool(status.get("passed")),
        failed_checks=tuple(status.get("failed_checks", [])),
        report=status.get("report"),
    )


def require_released(path: str | os.PathLike[str]) -> ReleaseStatus:
    """Return the status of a released artifact, or refuse.

    Raises:
        ReleaseBlocked: not audited, or the audit failed; the message names the failed checks.
    """
    status = release_status(path)
    if not status.released:
        reasons = "; ".join(status.failed_checks) or "unknown"
        verb = "failed its privacy audit" if status.audited else "is not released"
        raise ReleaseBlocked(f"generator {Path(path)} {verb}: {reasons}. Run `fedsynth audit` and fix the failing checks.")
    return status


def package_release(path: str | os.PathLike[str]) -> bytes:
    """Zip a released artifact (for download); refuses un-audited or failed generators.

    Raises:
        ReleaseBlocked: see :func:`require_released`.
    """
    require_released(path)
    p = Path(path)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for f in sorted(p.rglob("*")):
            if f.is_file():
                zf.write(f, arcname=f"{p.name}/{f.relative_to(p)}")
    return buf.getvalue()
