"""GPU checks: training, sampling and the DCR index on ``cuda`` give what they give on the CPU.

Skipped where torch sees no GPU (CI); run on a GPU machine with ``python -m pytest tests/common/test_cuda.py``.
TF32 is switched off for these comparisons, so float32 results differ from the CPU's by rounding only; training
uses plain SGD here, because Adam's first steps (about ``lr * sign(grad)``) blow rounding differences in tiny
gradients up to ``lr``.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch
from common_factories import tiny_model_config, tiny_scheduler_config

from fedsynth.audit.index import NumpyExactIndex, make_index
from fedsynth.common.model import TabularUNet1D
from fedsynth.common.sampling import make_sampler, sample
from fedsynth.common.training import train_dp, train_nonprivate

pytestmark = [
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
    pytest.mark.filterwarnings("ignore:Optimal order:UserWarning"),
]
N_FEATURES = 7


@pytest.fixture(autouse=True)
def _sgd_instead_of_adam(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.optim, "Adam", lambda params, lr, **_: torch.optim.SGD(params, lr=lr))


@pytest.fixture(autouse=True)
def _no_tf32() -> Iterator[None]:
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def _data(n: int) -> np.ndarray:
    return np.random.default_rng(0).uniform(-1, 1, (n, N_FEATURES)).astype(np.float32)


def _max_weight_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max(float((a[k] - b[k]).abs().max()) for k in a)


@pytest.mark.parametrize("mode", ["bookkeeping", "hooks"])
def test_train_dp_on_cuda_matches_cpu_without_noise(mode: str) -> None:
    # Arrange: same seed, so the same Poisson batches, timesteps and diffusion noise on both devices
    torch.manual_seed(0)
    model = TabularUNet1D(tiny_model_config(N_FEATURES))
    kw = {"scheduler_config": tiny_scheduler_config(), "noise_multiplier": 0.0, "max_grad_norm": 0.5, "batch_size": 32,
              "steps": 5, "lr": 0.1, "delta": 1e-5, "seed": 3, "grad_sample_mode": mode}
    # Act
    cpu = train_dp(model, _data(256), **kw)  # type: ignore[arg-type]
    gpu = train_dp(model, _data(256), device="cuda", **kw)  # type: ignore[arg-type]
    # Assert: weights come back on the CPU, equal up to float32 rounding; same accounting
    assert all(v.device.type == "cpu" for v in gpu.state_dict.values())
    assert _max_weight_diff(cpu.state_dict, gpu.state_dict) < 1e-4
    np.testing.assert_allclose(cpu.losses, gpu.losses, rtol=1e-4)
    assert gpu.epsilon == cpu.epsilon and gpu.steps == cpu.steps


def test_train_dp_on_cuda_adds_noise_from_a_cuda_generator() -> None:
    # Arrange
    torch.manual_seed(0)
    model = TabularUNet1D(tiny_model_config(N_FEATURES))
    kw = {"scheduler_config": tiny_scheduler_config(), "noise_multiplier": 1.0, "max_grad_norm": 1.0, "batch_size": 32,
              "steps": 3, "lr": 1e-2, "delta": 1e-5, "grad_sample_mode": "bookkeeping", "device": "cuda"}
    # Act
    a = train_dp(model, _data(256), seed=5, **kw)  # type: ignore[arg-type]
    b = train_dp(model, _data(256), seed=5, **kw)  # type: ignore[arg-type]
    c = train_dp(model, _data(256), seed=6, **kw)  # type: ignore[arg-type]
    # Assert: seeded noise is reproducible on the GPU, and a different seed moves the weights
    assert _max_weight_diff(a.state_dict, b.state_dict) == 0.0
    assert _max_weight_diff(a.state_dict, c.state_dict) > 1e-3


def test_train_nonprivate_on_cuda_matches_cpu() -> None:
    # one step: unclipped, this tiny model's training is chaotic after a few steps (two CPUs with different
    # BLAS kernels already part by the fourth), so only the first update is compared
    torch.manual_seed(0)
    model = TabularUNet1D(tiny_model_config(N_FEATURES))
    kw = {"scheduler_config": tiny_scheduler_config(), "batch_size": 32, "steps": 1, "lr": 1e-3, "seed": 1}
    cpu = train_nonprivate(model, _data(256), **kw)  # type: ignore[arg-type]
    gpu = train_nonprivate(model, _data(256), device="cuda", **kw)  # type: ignore[arg-type]
    assert _max_weight_diff(cpu.state_dict, gpu.state_dict) < 1e-4


def test_ddim_sampling_on_cuda_matches_cpu() -> None:
    torch.manual_seed(0)
    model = TabularUNet1D(tiny_model_config(N_FEATURES)).eval()
    sched = make_sampler(tiny_scheduler_config(), "ddim")
    kw = {"n_features": N_FEATURES, "num_inference_steps": 5, "batch_size": 64}
    cpu = sample(model, sched, 100, generator=torch.Generator().manual_seed(0), **kw)  # type: ignore[arg-type]
    gpu = sample(model.cuda(), sched, 100, generator=torch.Generator().manual_seed(0), device="cuda",
                 **kw)  # type: ignore[arg-type]
    np.testing.assert_allclose(cpu.cpu().numpy(), gpu.cpu().numpy(), atol=1e-4)


def test_dcr_index_on_cuda_equals_numpy() -> None:
    # Arrange: clustered rows plus exact copies (distance exactly 0) and duplicates (ties to the lower index;
    # NumPy's BLAS expansion need not give identical rows identical distances, so those are checked apart)
    rng = np.random.default_rng(0)
    centres = rng.uniform(-1, 1, (30, 12))
    ref = (centres[rng.integers(0, 30, 20_000)] + rng.normal(0, 0.05, (20_000, 12))).astype(np.float32)
    ref[100:110] = ref[0]
    qry = (centres[rng.integers(0, 30, 5_000)] + rng.normal(0, 0.05, (5_000, 12))).astype(np.float32)
    qry[:50] = ref[:50]
    want = NumpyExactIndex(12)
    want.add(ref)
    # Act
    d, i = make_index(ref, backend="torch", device="cuda").search(qry, 3)
    d_ref, i_ref = want.search(qry, 3)
    # Assert
    np.testing.assert_allclose(d, d_ref, rtol=1e-9, atol=1e-6)
    group = [0, *range(100, 110)]
    clean = ~np.isin(i, group).any(axis=1) & ~np.isin(i_ref, group).any(axis=1)
    assert clean.sum() > 4_000
    np.testing.assert_array_equal(i[clean], i_ref[clean])
    assert (d[:50, 0] == 0).all()
    assert i[0].tolist() == [0, 100, 101] and (d[0] == 0).all()
