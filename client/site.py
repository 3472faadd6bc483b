"""One site's training round, Flower-free: load and validate the table, check the ledger, train with DP-SGD.

The site's :class:`~fedsynth.common.ledger.PrivacyLedger` is the authority on epsilon. A round is identified by
``round_key = "<run_key>:<server_round>"``. When the server replays a round after a restart (same round key,
same incoming global weights), the site answers from its local reply cache instead of training again, so epsilon
is never spent twice for one round. The cache is written before the ledger: a crash between the two leaves an
unreleased update and an unchanged ledger, and the round is simply trained again.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch

from fedsynth.client.warm import WarmHint, encoded_table, record_hint
from fedsynth.common.config import RunConfig
from fedsynth.common.encoding import TabularTransform
from fedsynth.common.errors import CheckpointError, ConfigError, PrivacyBudgetExceeded
from fedsynth.common.io import atomic_write_bytes, state_dict_digest
from fedsynth.common.ledger import PrivacyLedger
from fedsynth.common.model import TabularUNet1D
from fedsynth.common.schema import Schema
from fedsynth.common.training import calibrate_noise, planned_sample_rate, train_dp

__all__ = ["SiteSettings", "RoundRequest", "RoundOutcome", "train_round", "run_config_from", "state_digest"]


@dataclass(frozen=True)
class SiteSettings:
    """A SuperNode's facts about its site (Flower ``--node-config``).

    Args:
        data_path: the site's CSV or Parquet table (``data-path``).
        epsilon_budget: the site's own total epsilon budget (``epsilon-budget``).
        ledger_path: the durable privacy ledger (``ledger-path``; default ``<data-path>.ledger.json``).
        site_id: a name used in logs and reports (``site-id``; default ``node-<id>``).
        secure_mode: use Opacus' secure RNG for DP noise (``secure-mode``; slower, for production).
        schema_path: the schema the site itself declared (``schema-path``, optional); when set, the site refuses
            to train on any other schema the server sends.
    """

    data_path: Path
    epsilon_budget: float
    ledger_path: Path
    site_id: str
    secure_mode: bool = False
    schema_path: Path | None = None

    @classmethod
    def from_node_config(cls, node_config: Mapping[str, Any], *, node_id: int) -> SiteSettings:
        """Read the settings from a SuperNode's node config.

        Raises:
            ConfigError: ``data-path`` or ``epsilon-budget`` missing or invalid.
        """
        if "data-path" not in node_config:
            raise ConfigError("node config needs data-path=<site table>; start the SuperNode with --node-config")
        if "epsilon-budget" not in node_config:
            raise ConfigError("node config needs epsilon-budget=<float>; the site must declare its own budget")
        data_path = Path(str(node_config["data-path"])).expanduser()
        try:
            budget = float(node_config["epsilon-budget"])
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"epsilon-budget must be a number, got {node_config['epsilon-budget']!r}") from exc
        if not budget > 0:
            raise ConfigError("epsilon-budget must be > 0")
        ledger = node_config.get("ledger-path")
        secure = node_config.get("secure-mode", False)
        return cls(
            data_path=data_path,
            epsilon_budget=budget,
            ledger_path=Path(str(ledger)).expanduser() if ledger else data_path.with_name(data_path.name + ".ledger.json"),
            site_id=str(node_config.get("site-id", f"node-{node_id}")),
            secure_mode=secure if isinstance(secure, bool) else str(secure).lower() in ("1", "true", "yes"),
            schema_path=Path(str(node_config["schema-path"])).expanduser() if node_config.get("schema-path") else None,
        )

    @property
    def cache_path(self) -> Path:
        """Where the last released update is kept for replays."""
        return self.ledger_path.with_name(self.ledger_path.name + ".last-update.pt")


@dataclass(frozen=True)
class RoundRequest:
    """What the server asks for in one round."""

    run_key: str
    server_round: int
    schema: Schema
    run_config: RunConfig
    state_dict: dict[str, torch.Tensor]


@dataclass(frozen=True)
class RoundOutcome:
    """A site's answer: updated weights and the metrics it may share (never rows)."""

    state_dict: dict[str, torch.Tensor]
    metrics: dict[str, float]
    replayed: bool


def run_config_from(user_config: Mapping[str, Any]) -> RunConfig:
    """``RunConfig`` from a Flower run config, ignoring keys that belong to the server (paths, resume)."""
    known = {f.name.replace("_", "-") for f in fields(RunConfig)}
    return RunConfig.from_user_config({k: v for k, v in user_config.items() if k in known})


state_digest = state_dict_digest


def _seed(base: int, site_id: str, server_round: int) -> int:
    digest = hashlib.sha256(f"{base}:{site_id}:{server_round}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def _noise_multiplier(
    ledger: PrivacyLedger, cfg: RunConfig, *, run_key: str, server_round: int, sample_rate: float,
    budget: float,
) -> float:
    if cfg.noise_multiplier > 0:
        return float(cfg.noise_multiplier)
    if run_key in ledger.plans:
        return ledger.plans[run_key]
    rounds_left = cfg.num_server_rounds - server_round + 1
    target_total = min(budget, ledger.spent_epsilon + cfg.target_epsilon)
    try:
        sigma = calibrate_noise(
            target_epsilon=target_total, delta=cfg.target_delta, sample_rate=sample_rate,
            steps=rounds_left * cfg.local_steps, accountant=cfg.accountant, prior_state=ledger.accountant_state,
        )
    except ConfigError as exc:
        raise PrivacyBudgetExceeded(f"site '{ledger.site_id}' cannot plan this run: {exc}") from exc
    ledger.set_plan(run_key, sigma)
    return sigma


def _load_cache(path: Path, round_key: str, digest: str) -> RoundOutcome | None:
    if not path.exists():
        return None
    try:
        cached = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError):
        return None
    if cached.get("round_key") != round_key or cached.get("input_digest") != digest:
        return None
    return RoundOutcome(state_dict=dict(cached["state_dict"]), metrics=dict(cached["metrics"]), replayed=True)


def train_round(settings: SiteSettings, request: RoundRequest) -> RoundOutcome:
    """Run one DP training round at a site, or replay it from the cache.

    Args:
        settings: the site's node config.
        request: the server's instruction.

    Returns:
        The update and its metrics (loss, epsilon, delta, noise-multiplier, sample-rate, steps, num-examples,
        epsilon-budget, and site-seconds: the wall seconds from taking the ledger lock to the update being ready,
        i.e. the site's own share of the round).

    Raises:
        DataValidationError: the site's table does not match the schema (names file, row, column).
        PrivacyBudgetExceeded: the round would pass the site's budget.
        CheckpointError: the round was already trained but its update is gone (refusing to spend twice).
    """
    settings.ledger_path.parent.mkdir(parents=True, exist_ok=True)
    lock_path = settings.ledger_path.with_name(settings.ledger_path.name + ".lock")
    with open(lock_path, "a+b") as lock:
        # One round at a time per ledger: two ClientApp processes (e.g. a dead run's late message and its
        # resumed replay) must not both see "not yet trained" and spend twice.
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            return _train_round_locked(settings, request)
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


def _check_pinned_schema(settings: SiteSettings, schema: Schema) -> None:
    if settings.schema_path is None:
        return
    pinned = Schema.load(settings.schema_path)
    if (pinned.columns, pinned.target) != (schema.columns, schema.target):
        raise ConfigError(
            f"site '{settings.site_id}' refuses the run: the server's schema differs from the site's declared "
            f"schema {settings.schema_path}; agree on one schema file and restart the run"
        )


def _train_round_locked(settings: SiteSettings, request: RoundRequest) -> RoundOutcome:
    cfg = request.run_config
    _check_pinned_schema(settings, request.schema)
    start = time.perf_counter()
    data = encoded_table(settings.data_path, request.schema)
    transform = TabularTransform(request.schema)
    ledger = PrivacyLedger(
        settings.ledger_path, budget_epsilon=settings.epsilon_budget, delta=cfg.target_delta,
        site_id=settings.site_id, accountant=cfg.accountant,
    )
    round_key = f"{request.run_key}:{request.server_round}"
    digest = state_digest(request.state_dict)
    if ledger.get_round(round_key) is not None:
        cached = _load_cache(settings.cache_path, round_key, digest)
        if cached is None:
            raise CheckpointError(
                f"site '{settings.site_id}' already trained round {request.server_round} of run "
                f"{request.run_key} but has no matching cached update; refusing to train it again "
                "(that would spend epsilon twice)"
            )
        return cached

    n = int(data.shape[0])
    sample_rate = planned_sample_rate(n, cfg.batch_size)
    sigma = _noise_multiplier(
        ledger, cfg, run_key=request.run_key, server_round=request.server_round, sample_rate=sample_rate,
        budget=settings.epsilon_budget,
    )
    ledger.check_can_train(noise_multiplier=sigma, sample_rate=sample_rate, steps=cfg.local_steps)

    model = TabularUNet1D(cfg.model_config(transform.n_features))
    model.load_state_dict(request.state_dict)
    result = train_dp(
        model, data, scheduler_config=cfg.scheduler_config(), noise_multiplier=sigma,
        max_grad_norm=cfg.max_grad_norm, batch_size=cfg.batch_size, steps=cfg.local_steps, lr=cfg.lr,
        delta=cfg.target_delta, accountant_state=ledger.accountant_state, accountant=cfg.accountant,
        seed=None if settings.secure_mode else _seed(cfg.seed, settings.site_id, request.server_round),
        secure_mode=settings.secure_mode, multiplicity=cfg.multiplicity, grad_sample_mode=cfg.grad_sample_mode, ema_decay=cfg.ema_decay,
    )
    metrics = {
        "loss": float(result.loss) if math.isfinite(result.loss) else -1.0,
        "epsilon": float(result.epsilon),
        "delta": float(result.delta),
        "noise-multiplier": float(result.noise_multiplier),
        "sample-rate": float(result.sample_rate),
        "steps": float(result.steps),
        "num-examples": float(result.num_examples),
        "epsilon-budget": float(settings.epsilon_budget),
        "site-seconds": time.perf_counter() - start,
    }
    state = {k: v.detach().cpu() for k, v in result.state_dict.items()}
    buf = io.BytesIO()
    torch.save({"round_key": round_key, "input_digest": digest, "state_dict": state, "metrics": metrics}, buf)
    atomic_write_bytes(settings.cache_path, buf.getvalue())
    ledger.record_round(
        round_key, accountant_state=result.accountant_state, steps=result.steps,
        noise_multiplier=result.noise_multiplier, sample_rate=result.sample_rate, loss=result.loss,
    )
    if cfg.accountant == "rdp":
        terms = tuple(sorted({(float(q), float(s)) for s, q, _ in result.accountant_state.get("history", [])}))
    else:
        terms = ()
    record_hint(WarmHint(data_path=str(settings.data_path), schema=request.schema.to_dict(), rdp_terms=terms))
    return RoundOutcome(state_dict=state, metrics=metrics, replayed=False)
