"""Flower-free training core: the diffusion loss, DP-SGD local training with Opacus, and noise calibration.

Only the denoiser is wrapped by Opacus; the scheduler's ``add_noise`` runs outside it. The accountant's
history is run state: it is passed in and returned, so epsilon is accounted over all rounds, not per round.
"""

from __future__ import annotations

import copy
import functools
import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from fedsynth.common.dp_engine import BookkeepingClipper, ClippedSumDPOptimizer
from fedsynth.common.errors import ConfigError
from fedsynth.common.scheduler import DDPMScheduler, SchedulerConfig

AccountantState = dict[str, Any]


@dataclass(frozen=True)
class TrainResult:
    """Outcome of one local training call.

    Args:
        state_dict: the trained denoiser weights (detached CPU tensors).
        loss: mean diffusion loss over the steps.
        steps: optimizer steps taken in this call.
        num_examples: rows in the local table.
        epsilon: cumulative epsilon after this call (``0.0`` when non-private).
        delta: the delta epsilon is reported at.
        noise_multiplier: DP-SGD noise multiplier used (``0.0`` when non-private).
        sample_rate: Poisson sampling rate used.
        accountant_state: the accountant's ``state_dict()`` (history over all rounds).
        losses: per-step losses.
    """

    state_dict: dict[str, Tensor]
    loss: float
    steps: int
    num_examples: int
    epsilon: float = 0.0
    delta: float = 0.0
    noise_multiplier: float = 0.0
    sample_rate: float = 0.0
    accountant_state: AccountantState = field(default_factory=dict)
    losses: tuple[float, ...] = ()


def diffusion_loss(
    model: nn.Module, scheduler: DDPMScheduler, x0: Tensor, *, generator: torch.Generator | None = None
) -> Tensor:
    """Per-sample epsilon-prediction loss ``mean_f (eps - model(x_t, t))**2``.

    Args:
        model: the denoiser.
        scheduler: provides ``add_noise``.
        x0 (`Tensor` of shape `(batch, n_features)`): clean encoded rows.
        generator: randomness for ``t`` and ``eps``.

    Returns:
        `Tensor` of shape `(batch,)`.
    """
    b = x0.shape[0]
    t = torch.randint(0, scheduler.config.num_train_timesteps, (b,), generator=generator).to(x0.device)
    noise = torch.randn(x0.shape, generator=generator).to(x0.device)
    x_t = scheduler.add_noise(x0, noise, t)
    pred = model(x_t, t)
    # flatten, not reshape(b, -1): an empty Poisson batch (b = 0) has no size to infer -1 from
    return ((pred - noise) ** 2).flatten(start_dim=1).mean(dim=1)


class PerSampleLoss(nn.Module):
    """Pass-through criterion for Opacus ghost clipping: the per-sample diffusion loss is already computed.

    ``make_private(grad_sample_mode="ghost")`` wraps a criterion whose ``reduction`` it switches to ``"none"``
    to get one loss per row; this one returns its input then, and the batch mean otherwise.
    """

    def __init__(self) -> None:
        super().__init__()
        self.reduction = "mean"

    def forward(self, per_sample: Tensor) -> Tensor:
        """Return ``per_sample`` (shape `(batch,)`) as is, or reduced per ``self.reduction``."""
        if self.reduction == "none":
            return per_sample
        return _batch_mean(per_sample) if self.reduction == "mean" else per_sample.sum()


def _batch_mean(per_sample: Tensor) -> Tensor:
    # Poisson sampling can give an empty batch: a sum keeps the graph valid and is 0
    return per_sample.mean() if per_sample.shape[0] > 0 else per_sample.sum()


def expected_batch_size(n_rows: int, batch_size: int) -> int:
    """Clamp the requested logical batch size to the table size."""
    return max(1, min(batch_size, n_rows))


def planned_sample_rate(n_rows: int, batch_size: int) -> float:
    """The Poisson sampling rate Opacus will use for ``batch_size`` out of ``n_rows`` rows."""
    if n_rows < 1:
        raise ConfigError("a site needs at least one row to train")
    bs = expected_batch_size(n_rows, batch_size)
    return 1.0 / math.ceil(n_rows / bs)


def calibrate_noise(
    *, target_epsilon: float, delta: float, sample_rate: float, steps: int, accountant: str = "rdp",
    prior_state: AccountantState | None = None,
) -> float:
    """Smallest noise multiplier such that ``steps`` more steps keep total epsilon <= ``target_epsilon``.

    Args:
        target_epsilon: total budget, including what ``prior_state`` already spent.
        delta: target delta.
        sample_rate: Poisson sampling rate.
        steps: steps still to take.
        accountant: ``rdp``, ``prv`` or ``gdp``.
        prior_state: accountant history already spent (none for a fresh site).

    Raises:
        ConfigError: the budget is already spent or cannot be met.
    """
    spent = epsilon_from_state(prior_state, delta=delta, accountant=accountant)
    if spent >= target_epsilon:
        raise ConfigError(f"no budget left: epsilon already spent {spent:.3f} >= target {target_epsilon:.3f}")

    def total_eps(sigma: float) -> float:
        return projected_epsilon(
            prior_state, noise_multiplier=sigma, sample_rate=sample_rate, steps=steps, delta=delta,
            accountant=accountant,
        )

    # bracket the answer, hi/2 < sigma <= hi, by doubling or halving from sigma = 1 (large sigmas are slow to
    # account), then bisect in log space to a relative tolerance of 1e-3, keeping the upper end (epsilon <= target)
    hi = 1.0
    if total_eps(hi) > target_epsilon:
        hi = 2.0
        while total_eps(hi) > target_epsilon:
            if hi >= 1024.0:
                raise ConfigError(f"target epsilon {target_epsilon} cannot be met even with noise multiplier {hi}")
            hi *= 2.0
    else:
        while hi > 1e-3 and total_eps(hi / 2.0) <= target_epsilon:
            hi /= 2.0
        if hi <= 1e-3:
            return hi
    lo = hi / 2.0
    while hi / lo > 1.001:
        mid = math.sqrt(lo * hi)
        if total_eps(mid) > target_epsilon:
            lo = mid
        else:
            hi = mid
    return hi


def epsilon_from_state(state: Mapping[str, Any] | None, *, delta: float, accountant: str = "rdp") -> float:
    """Epsilon at ``delta`` for an accountant ``state_dict`` (0 for an empty history)."""
    from opacus.accountants import create_accountant

    if not state or not state.get("history"):
        return 0.0
    history = _merged_history(state["history"])
    if accountant == "gdp" and len(history) > 1:
        # Opacus' GDP accountant reads only history[-1]: it would silently drop the earlier rounds
        raise ConfigError(
            "the gdp accountant cannot compose rounds with different noise multipliers or sample rates; "
            "use accountant 'rdp' or 'prv'"
        )
    if accountant == "rdp":
        return _rdp_epsilon(history, delta)
    acc = create_accountant(mechanism=accountant)
    acc.load_state_dict({"mechanism": accountant, **copy.deepcopy(dict(state)), "history": history})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(acc.get_epsilon(delta=delta))


@functools.lru_cache(maxsize=512)
def _rdp_per_step(sample_rate: float, noise_multiplier: float) -> np.ndarray:
    """RDP of one subsampled Gaussian step at Opacus' default orders (RDP composes additively over steps)."""
    from opacus.accountants import RDPAccountant
    from opacus.accountants.analysis import rdp as rdp_analysis

    out = rdp_analysis.compute_rdp(
        q=sample_rate, noise_multiplier=noise_multiplier, steps=1, orders=RDPAccountant.DEFAULT_ALPHAS
    )
    out.setflags(write=False)
    return out


def warm_rdp(*, sample_rate: float, noise_multiplier: float) -> None:
    """Compute and cache the one-step RDP of ``(sample_rate, noise_multiplier)`` (NumPy/SciPy only, no torch).

    A forking parent calls this so that its children find the term cached (see :mod:`fedsynth.client.warm`).
    """
    _rdp_per_step(float(sample_rate), float(noise_multiplier))


def _rdp_epsilon(history: list[tuple[float, float, int]], delta: float) -> float:
    """Opacus' RDP accountant epsilon for ``history``, with each ``(sigma, q)`` pair's RDP computed once per process.

    ``compute_rdp(q, sigma, steps)`` is ``steps`` times the one-step RDP, so this gives exactly Opacus' number;
    the cache saves the 0.1-0.2 s Opacus spends per call on the fractional orders (every round asks again).
    """
    from opacus.accountants import RDPAccountant
    from opacus.accountants.analysis import rdp as rdp_analysis

    rdp = sum(_rdp_per_step(float(q), float(sigma)) * int(steps) for sigma, q, steps in history)
    eps, _ = rdp_analysis.get_privacy_spent(orders=RDPAccountant.DEFAULT_ALPHAS, rdp=rdp, delta=delta)
    return float(eps)


def projected_epsilon(
    state: Mapping[str, Any] | None, *, noise_multiplier: float, sample_rate: float, steps: int, delta: float,
    accountant: str = "rdp",
) -> float:
    """Epsilon after adding ``steps`` steps of ``(noise_multiplier, sample_rate)`` to ``state``."""
    history = list((state or {}).get("history", []))
    history.append((noise_multiplier, sample_rate, steps))
    return epsilon_from_state({"history": history, "mechanism": accountant}, delta=delta, accountant=accountant)


def _merged_history(history: list[Any]) -> list[tuple[float, float, int]]:
    """Merge consecutive entries with the same (noise multiplier, sample rate), as Opacus' accountants do on step.

    RDP/PRV give the same epsilon either way; GDP only reads the last entry, so unmerged rounds would be lost.
    """
    merged: list[tuple[float, float, int]] = []
    for noise_multiplier, sample_rate, steps in history:
        if merged and merged[-1][0] == noise_multiplier and merged[-1][1] == sample_rate:
            merged[-1] = (noise_multiplier, sample_rate, merged[-1][2] + int(steps))
        else:
            merged.append((float(noise_multiplier), float(sample_rate), int(steps)))
    return merged


def _adam(model: nn.Module, lr: float) -> torch.optim.Optimizer:
    """Adam for ``model``, in its fused single-kernel form (CPU and CUDA). PyTorch's default on the CPU is the
    per-tensor loop, ~10 dispatched operations for each of the denoiser's ~100 tensors: ~2.3 ms a step on one
    core, against ~1.3 ms with ``foreach`` and ~0.4 ms fused (the same update up to float rounding). The fused
    kernel reads each gradient as laid out like its parameter: the book-keeping clipper therefore hands out
    contiguous gradients (``dp_engine``; with the strided ones it gave before, fused Adam scrambled the Conv1d
    updates and the DP quality runs lost 0.03-0.08 fidelity)."""
    return torch.optim.Adam(model.parameters(), lr=lr, fused=True)


class _EmaWeights:
    """Exponential moving average of a model's parameters (buffers are taken from the live model)."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.shadow = {k: p.detach().clone() for k, p in model.named_parameters()}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for k, p in model.named_parameters():
            self.shadow[k].mul_(self.decay).add_(p.detach(), alpha=1.0 - self.decay)

    def state_dict(self, model: nn.Module) -> dict[str, Tensor]:
        state = _cpu_state(model)
        for k, v in self.shadow.items():
            state[k] = v.detach().cpu().clone()
        return state


def _merge_grad_samples(model: nn.Module, k: int) -> None:
    """Average the per-draw gradients of each row's ``k`` consecutive copies into one per-sample gradient."""
    for p in model.parameters():
        gs = getattr(p, "grad_sample", None)
        if gs is None:
            continue
        if isinstance(gs, list):
            gs = torch.cat(gs, dim=0)
        p.grad_sample = gs.reshape(gs.shape[0] // k, k, *gs.shape[1:]).mean(dim=1)


def _cpu_state(model: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def train_dp(
    model: nn.Module,
    data: np.ndarray,
    *,
    scheduler_config: SchedulerConfig,
    noise_multiplier: float,
    max_grad_norm: float,
    batch_size: int,
    steps: int,
    lr: float,
    delta: float,
    accountant_state: AccountantState | None = None,
    accountant: str = "rdp",
    seed: int | None = None,
    grad_sample_mode: str = "hooks",
    secure_mode: bool = False,
    multiplicity: int = 1,
    ema_decay: float = 0.0,
    device: torch.device | str = "cpu",
) -> TrainResult:
    """Train ``model`` for ``steps`` DP-SGD steps (Opacus, Poisson sampling) on encoded ``data``.

    The input model is not modified; its trained weights are returned.

    Args:
        model: the denoiser (validated with ``ModuleValidator``).
        data: encoded rows, ``float32`` of shape ``(n, n_features)``.
        scheduler_config: the diffusion schedule.
        noise_multiplier: DP-SGD noise multiplier.
        max_grad_norm: per-sample clipping norm.
        batch_size: expected (logical) batch size; the sampling rate is ``1 / ceil(n / batch_size)``.
        steps: optimizer steps.
        lr: Adam learning rate.
        delta: delta at which epsilon is reported.
        accountant_state: history from earlier rounds; accounting continues from it.
        accountant: Opacus accountant (``rdp``, ``prv``, ``gdp``).
        seed: seeds batch sampling, timesteps, diffusion noise and DP noise.
        grad_sample_mode: per-sample clipping engine. ``bookkeeping``: one forward and one backward pass
            (:mod:`fedsynth.common.dp_engine`), with Opacus' optimizer for the noise and scaling and Opacus'
            accountant; or one of Opacus' own modes: ``hooks``, ``functorch``, ``ew``, ``ghost`` (fast gradient
            clipping: per-sample norms without per-sample gradients, then a second backward pass). All give the
            same clipped + noised gradient and the same accounting as ``hooks``.
        secure_mode: use Opacus' cryptographically secure noise (slower; for production sites).
        multiplicity: draws of ``(t, eps)`` per row whose gradients are averaged *before* per-sample
            clipping ("augmentation multiplicity", De et al. 2022; Dockhorn et al. 2023 for diffusion). Each
            row still contributes one clipped gradient, so the privacy accounting is unchanged, but the
            clipped gradient carries far less diffusion noise and DP training learns much faster.
        ema_decay: return an exponential moving average of the iterates (``0`` returns the last iterate).
            Averaging is post-processing, so it costs no privacy, and it damps the DP noise in the weights.
        device: where the model trains (``"cpu"``, ``"cuda"``). Batch sampling and the diffusion draws stay on
            the CPU generator, so a seeded run draws the same batches and timesteps on any device; the DP noise
            comes from a generator on ``device``.

    Returns:
        The trained weights (on the CPU), losses and the updated privacy accounting.
    """
    from opacus import PrivacyEngine
    from opacus.utils.uniform_sampler import UniformWithReplacementSampler
    from opacus.validators import ModuleValidator

    if steps < 1:
        raise ConfigError("steps must be >= 1")
    if multiplicity < 1:
        raise ConfigError("multiplicity must be >= 1")
    if multiplicity > 1 and grad_sample_mode not in ("hooks", "bookkeeping"):
        raise ConfigError(
            "multiplicity > 1 needs grad_sample_mode 'hooks' or 'bookkeeping' (it averages per-sample gradients)"
        )
    if not 0.0 <= ema_decay < 1.0:
        raise ConfigError("ema_decay must be in [0, 1)")
    ModuleValidator.validate(model, strict=True)
    if grad_sample_mode == "ghost":  # registers ghost norm samplers for Conv1d and GroupNorm with Opacus
        import fedsynth.common.opacus_norms  # noqa: F401
    dev = torch.device(device)
    x = torch.as_tensor(np.asarray(data, dtype=np.float32)).to(dev)
    n = x.shape[0]
    bs = expected_batch_size(n, batch_size)
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    work = copy.deepcopy(model).to(dev)
    work.train()
    optimizer = _adam(work, lr)
    loader = DataLoader(TensorDataset(x), batch_size=bs, generator=gen)
    noise_gen = torch.Generator(device=dev).manual_seed(seed + 1) if (seed is not None and not secure_mode) else None
    q = 1.0 / len(loader)  # Opacus' Poisson sampling rate for this loader, as make_private derives it
    clipper: BookkeepingClipper | None = None
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*[Ss]ecure RNG.*")
        warnings.filterwarnings("ignore", message=".*[Oo]ptimal.*")
        engine = PrivacyEngine(accountant=accountant, secure_mode=secure_mode)
        if accountant_state:
            engine.accountant.load_state_dict(copy.deepcopy(dict(accountant_state)))
        if grad_sample_mode == "bookkeeping":
            # Opacus' noise, scaling and accounting around our single-backward clipper (dp_engine.py), set up
            # the way make_private sets up ghost mode: same sample rate, expected batch size and generators
            clipper = BookkeepingClipper(work, max_grad_norm=max_grad_norm, multiplicity=multiplicity)
            dp_model, dp_criterion = work, None
            dp_opt = ClippedSumDPOptimizer(
                optimizer, noise_multiplier=noise_multiplier, max_grad_norm=max_grad_norm,
                expected_batch_size=int(n * q), loss_reduction="mean",
                generator=engine.secure_rng if secure_mode else noise_gen, secure_mode=secure_mode,
            )
            dp_opt.attach_step_hook(engine.accountant.get_optimizer_hook_fn(sample_rate=q))
            batches = UniformWithReplacementSampler(
                num_samples=n, sample_rate=q, generator=engine.secure_rng if secure_mode else gen
            )
        else:
            private = engine.make_private(
                module=work,
                optimizer=optimizer,
                data_loader=loader,
                noise_multiplier=noise_multiplier,
                max_grad_norm=max_grad_norm,
                poisson_sampling=True,
                noise_generator=noise_gen,
                grad_sample_mode=grad_sample_mode,
                **({"criterion": PerSampleLoss()} if grad_sample_mode == "ghost" else {}),
            )
            # ghost clipping also returns a criterion whose output's backward() runs both backward passes
            dp_model, dp_opt, dp_criterion, dp_loader = (
                private if len(private) == 4 else (*private[:2], None, private[2])
            )
            batches = dp_loader.batch_sampler
    scheduler = DDPMScheduler(scheduler_config)
    ema = _EmaWeights(work, ema_decay) if ema_decay > 0 else None
    losses: list[float] = []
    while len(losses) < steps:
        # Poisson batches as index lists (Opacus' sampler); rows are gathered in one indexing op, not per row
        for idx in batches:
            xb = x[torch.as_tensor(idx, dtype=torch.long, device=dev)]
            dp_opt.zero_grad(set_to_none=True)
            if multiplicity > 1:
                xb = xb.repeat_interleave(multiplicity, dim=0)
            if clipper is not None:
                with clipper.capture():
                    per_sample = diffusion_loss(dp_model, scheduler, xb, generator=gen)
                loss = _batch_mean(per_sample)
                clipper.backward(per_sample)
            else:
                per_sample = diffusion_loss(dp_model, scheduler, xb, generator=gen)
                loss = _batch_mean(per_sample) if dp_criterion is None else dp_criterion(per_sample)
                with warnings.catch_warnings():
                    warnings.filterwarnings("ignore", message=".*Full backward hook.*")
                    loss.backward()
                if multiplicity > 1:
                    _merge_grad_samples(dp_model, multiplicity)
            dp_opt.step()
            if ema is not None:
                ema.update(work)
            if per_sample.shape[0] > 0:
                losses.append(float(loss.detach()))
            else:
                losses.append(float("nan"))
            if len(losses) >= steps:
                break
    state = engine.accountant.state_dict()
    if accountant == "rdp":  # same number, cached per (sigma, q)
        eps = _rdp_epsilon(_merged_history(state["history"]), delta)
    else:
        eps = float(engine.accountant.get_epsilon(delta=delta))
    finite = [v for v in losses if math.isfinite(v)]
    weights = _cpu_state(work) if ema is None else ema.state_dict(work)
    if clipper is not None:
        clipper.remove()
    if hasattr(dp_model, "remove_hooks"):
        dp_model.remove_hooks()
    return TrainResult(
        state_dict=weights,
        loss=float(np.mean(finite)) if finite else float("nan"),
        steps=len(losses),
        num_examples=n,
        epsilon=eps,
        delta=delta,
        noise_multiplier=noise_multiplier,
        sample_rate=q,
        accountant_state={"history": [list(h) for h in state["history"]], "mechanism": state["mechanism"]},
        losses=tuple(losses),
    )


def train_nonprivate(
    model: nn.Module,
    data: np.ndarray,
    *,
    scheduler_config: SchedulerConfig,
    batch_size: int,
    steps: int,
    lr: float,
    seed: int | None = None,
    device: torch.device | str = "cpu",
) -> TrainResult:
    """Plain (non-private) training of ``model`` with shuffled mini-batches; used for baselines and shadow models.

    The input model is not modified; its trained weights are returned (on the CPU). ``device`` is where the
    model trains; shuffling and the diffusion draws use a CPU generator, as in :func:`train_dp`.
    """
    dev = torch.device(device)
    x = torch.as_tensor(np.asarray(data, dtype=np.float32)).to(dev)
    n = x.shape[0]
    bs = expected_batch_size(n, batch_size)
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    work = copy.deepcopy(model).to(dev)
    work.train()
    optimizer = _adam(work, lr)
    scheduler = DDPMScheduler(scheduler_config)
    losses: list[float] = []
    while len(losses) < steps:
        # shuffled epochs of full batches (the last, partial one dropped), gathered by one indexing op each
        perm = torch.randperm(n, generator=gen)
        for start in range(0, n - bs + 1 if n > bs else 1, bs):
            xb = x[perm[start : start + bs].to(dev)]
            optimizer.zero_grad(set_to_none=True)
            loss = diffusion_loss(work, scheduler, xb, generator=gen).mean()
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
            if len(losses) >= steps:
                break
    return TrainResult(
        state_dict=_cpu_state(work),
        loss=float(np.mean(losses)),
        steps=len(losses),
        num_examples=n,
        sample_rate=bs / n,
        losses=tuple(losses),
    )
