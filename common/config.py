"""Run configuration: Flower run-config keys (kebab-case) validated once into a frozen dataclass."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

from fedsynth.common.errors import ConfigError
from fedsynth.common.model import ModelConfig
from fedsynth.common.scheduler import SchedulerConfig

Aggregator = Literal["fedavg", "median", "trimmed-mean"]
_AGGREGATORS = ("fedavg", "median", "trimmed-mean")


GRAD_SAMPLE_MODES = ("bookkeeping", "ghost", "hooks", "functorch", "ew")


@dataclass(frozen=True)
class RunConfig:
    """Everything a federated run needs, with defaults that fit the RHC demo on 2 CPU cores.

    Keys in Flower's run config are the field names with ``-`` for ``_`` (``num-server-rounds``).
    ``noise_multiplier = 0`` (the default) means: each site calibrates its own noise so that the planned run
    (``num_server_rounds * local_steps`` steps at its sample rate) spends exactly
    ``min(target_epsilon, site budget)``; a positive value fixes the noise multiplier for every site.
    (Flower's run config has no null, so 0 stands for "calibrate".)
    ``public_pretrain_steps`` non-private steps on rows drawn from the public schema warm-start the global
    model before round 1 (no privacy cost; see :mod:`fedsynth.common.prior`). ``grad_sample_mode`` picks
    the per-sample clipping engine: ``bookkeeping`` (the default; one backward pass, see
    :mod:`fedsynth.common.dp_engine`) or one of Opacus' own (``ghost``, ``hooks``, ``functorch``, ``ew``); all give
    the same clipped gradient, with Opacus' noise and accounting.
    ``multiplicity`` is the number of ``(t, eps)`` draws per row averaged before clipping (see
    :func:`fedsynth.common.training.train_dp`).
    """

    num_server_rounds: int = 5
    local_steps: int = 40
    batch_size: int = 512
    lr: float = 2e-3
    max_grad_norm: float = 1.0
    noise_multiplier: float = 0.0
    multiplicity: int = 1
    grad_sample_mode: str = "bookkeeping"
    public_pretrain_steps: int = 1500
    ema_decay: float = 0.9
    target_epsilon: float = 3.0
    target_delta: float = 1e-5
    accountant: str = "rdp"
    seed: int = 0
    diffusion_steps: int = 1000
    beta_schedule: str = "cosine"
    schedule_power: float = 1.0
    logsnr_max: float = 10.0
    logsnr_min: float = -10.0
    unet_dim: int = 8
    unet_seq_len: int = 16
    unet_dim_mults: tuple[int, ...] = (1, 2)
    aggregator: str = "fedavg"
    trim_beta: float = 0.2
    fraction_train: float = 1.0
    min_train_nodes: int = 2
    min_available_nodes: int = 2
    round_timeout: float = 900.0

    def __post_init__(self) -> None:
        checks: list[tuple[bool, str]] = [
            (self.num_server_rounds >= 1, "num-server-rounds must be >= 1"),
            (self.local_steps >= 1, "local-steps must be >= 1"),
            (self.batch_size >= 1, "batch-size must be >= 1"),
            (self.lr > 0, "lr must be > 0"),
            (self.max_grad_norm > 0, "max-grad-norm must be > 0"),
            (self.noise_multiplier >= 0, "noise-multiplier must be >= 0 (0 = calibrate to target-epsilon)"),
            (self.multiplicity >= 1, "multiplicity must be >= 1"),
            (self.grad_sample_mode in GRAD_SAMPLE_MODES,
             f"grad-sample-mode must be one of {', '.join(GRAD_SAMPLE_MODES)}"),
            (self.multiplicity == 1 or self.grad_sample_mode in ("hooks", "bookkeeping"),
             "multiplicity > 1 needs grad-sample-mode bookkeeping or hooks"),
            (self.public_pretrain_steps >= 0, "public-pretrain-steps must be >= 0"),
            (0.0 <= self.ema_decay < 1.0, "ema-decay must be in [0, 1)"),
            (self.target_epsilon > 0, "target-epsilon must be > 0"),
            (0 < self.target_delta < 1, "target-delta must be in (0, 1)"),
            (self.accountant in ("rdp", "prv", "gdp"), "accountant must be rdp, prv or gdp"),
            (self.aggregator in _AGGREGATORS, f"aggregator must be one of {_AGGREGATORS}"),
            (0 <= self.trim_beta < 0.5, "trim-beta must be in [0, 0.5)"),
            (0 < self.fraction_train <= 1, "fraction-train must be in (0, 1]"),
            (self.min_train_nodes >= 1, "min-train-nodes must be >= 1"),
            (self.min_available_nodes >= 1, "min-available-nodes must be >= 1"),
            (self.round_timeout > 0, "round-timeout must be > 0"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        self.scheduler_config()  # validates the schedule keys
        self.model_config(1)  # validates the unet-* keys now, not when the first client builds its model

    @classmethod
    def from_user_config(cls, config: Mapping[str, Any]) -> RunConfig:
        """Build from Flower's ``context.run_config`` (kebab-case keys; unknown keys are an error).

        Raises:
            ConfigError: an unknown key, a value of the wrong type, or a value out of range.
        """
        by_key = {f.name.replace("_", "-"): f for f in fields(cls)}
        kwargs: dict[str, Any] = {}
        for key, value in config.items():
            f = by_key.get(key)
            if f is None:
                raise ConfigError(f"unknown run-config key '{key}'; known keys: {sorted(by_key)}")
            kwargs[f.name] = _coerce(key, value, f.type)
        return cls(**kwargs)

    def to_user_config(self) -> dict[str, Any]:
        """Inverse of :meth:`from_user_config` (values as Flower config scalars)."""
        out: dict[str, Any] = {}
        for k, v in asdict(self).items():
            if v is None:
                continue
            out[k.replace("_", "-")] = ",".join(map(str, v)) if isinstance(v, tuple) else v
        return out

    def scheduler_config(self) -> SchedulerConfig:
        """The diffusion schedule."""
        return SchedulerConfig(
            num_train_timesteps=self.diffusion_steps,
            beta_schedule=self.beta_schedule,  # type: ignore[arg-type]
            schedule_power=self.schedule_power,
            logsnr_max=self.logsnr_max,
            logsnr_min=self.logsnr_min,
        )

    def model_config(self, n_features: int) -> ModelConfig:
        """The denoiser's configuration for rows of ``n_features`` encoded features."""
        return ModelConfig(
            n_features=n_features, seq_len=self.unet_seq_len, dim=self.unet_dim, dim_mults=self.unet_dim_mults
        )


def _coerce(key: str, value: Any, annotation: Any) -> Any:
    text = str(annotation)
    try:
        if "tuple" in text:
            if isinstance(value, str):
                return tuple(int(v) for v in value.replace(" ", "").split(",") if v)
            return tuple(int(v) for v in value)
        if text.startswith("float"):
            return float(value)
        if text == "int":
            if isinstance(value, float) and not value.is_integer():
                raise ValueError("not a whole number")
            return int(value)
        if text == "str":
            return str(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"run-config key '{key}': cannot use {value!r} ({exc})") from exc
    return value
