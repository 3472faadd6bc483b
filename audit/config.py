"""Audit settings (``[audit]``) and release thresholds (``[gate]``), loaded from one TOML file.

Example::

    [audit]
    n_synthetic = 5000
    shadow = false

    [gate]
    mia_auc_max = 0.6
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from fedsynth.audit.gate import GateConfig
from fedsynth.audit.index import BACKENDS
from fedsynth.common.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


@dataclass(frozen=True)
class AuditConfig:
    """How much work the audit does, and the gate it applies.

    Args:
        n_synthetic: rows sampled from the generator under audit.
        sample_steps: DDIM steps when sampling it.
        seed: seed for sampling, subsampling and bootstraps.
        backend: nearest-neighbour backend (``auto``, ``torch``, ``faiss`` or ``numpy``; ``auto``
            picks the fastest exact one, see :func:`fedsynth.audit.index.make_index`).
        max_rows: cap on rows per table in the fidelity and distance computations.
        domias_model: density model of the DOMIAS attack (``kde`` or ``gmm``).
        shadow: run the shadow-model attack (trains ``shadow_models`` tiny generators).
        shadow_models: shadow generators.
        shadow_targets: target rows of the shadow attack.
        shadow_steps: optimizer steps per shadow generator.
        reid: run the anonymeter evaluators.
        reid_attacks: attacks per anonymeter evaluator.
        gate: release thresholds.
    """

    n_synthetic: int = 5000
    sample_steps: int = 50
    seed: int = 0
    backend: str = "auto"
    max_rows: int = 5000
    domias_model: str = "kde"
    shadow: bool = True
    shadow_models: int = 4
    shadow_targets: int = 20
    shadow_steps: int = 150
    reid: bool = True
    reid_attacks: int = 200
    gate: GateConfig = field(default_factory=GateConfig)

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ConfigError(
                f"audit key 'backend' must be one of {', '.join(map(repr, BACKENDS))}, "
                f"got {self.backend!r}"
            )
        if self.domias_model not in ("kde", "gmm"):
            raise ConfigError(
                f"audit key 'domias_model' must be 'kde' or 'gmm', got {self.domias_model!r}"
            )
        for key in (
            "n_synthetic",
            "sample_steps",
            "max_rows",
            "shadow_models",
            "shadow_targets",
            "shadow_steps",
            "reid_attacks",
        ):
            if getattr(self, key) < 1:
                raise ConfigError(f"audit key '{key}' must be >= 1, got {getattr(self, key)}")
        if self.shadow_models < 2:
            raise ConfigError(
                "audit key 'shadow_models' must be >= 2 (each target needs IN and OUT models)"
            )

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible dict."""
        return asdict(self)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> AuditConfig:
        """Build from a parsed TOML document with optional ``[audit]`` and ``[gate]`` tables.

        Raises:
            ConfigError: unknown key or wrong type.
        """
        unknown_top = sorted(set(data) - {"audit", "gate"})
        if unknown_top:
            raise ConfigError(
                f"unknown table(s) {unknown_top} in audit config; expected [audit] and [gate]"
            )
        audit = dict(data.get("audit", {}))
        known = {f.name: f for f in fields(cls) if f.name != "gate"}
        unknown = sorted(set(audit) - set(known))
        if unknown:
            raise ConfigError(f"unknown audit key(s) {unknown}; known keys: {sorted(known)}")
        for key, value in audit.items():
            expected = type(getattr(cls(), key))
            if expected is int and isinstance(value, bool) or not isinstance(value, expected):
                raise ConfigError(
                    f"audit key '{key}' must be of type {expected.__name__}, got {value!r}"
                )
        return cls(**audit, gate=GateConfig.from_mapping(data.get("gate", {})))

    @classmethod
    def from_toml(cls, path: str | os.PathLike[str] | None) -> AuditConfig:
        """Load from a TOML file; ``None`` gives the defaults.

        Raises:
            ConfigError: unreadable file, unknown key or wrong type.
        """
        if path is None:
            return cls()
        try:
            data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read audit config {path}: {exc}") from exc
        return cls.from_mapping(data)
