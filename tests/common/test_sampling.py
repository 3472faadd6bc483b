"""Tests for fedsynth.common.sampling: the unrolled DDPM/DDIM loop."""

from __future__ import annotations

import pytest
import torch
from common_factories import tiny_model_config, tiny_scheduler_config

from fedsynth.common.ddim import DDIMScheduler
from fedsynth.common.model import TabularUNet1D
from fedsynth.common.sampling import make_sampler, sample


@pytest.mark.parametrize(("kind", "steps"), [("ddpm", None), ("ddpm", 4), ("ddim", 5), ("ddim", None)])
def test_sample_is_finite_with_right_shape_and_reports_progress(kind: str, steps: int | None) -> None:
    # Arrange
    torch.manual_seed(0)
    model = TabularUNet1D(tiny_model_config(7)).train()
    calls: list[tuple[int, int]] = []

    # Act
    x = sample(
        model, make_sampler(tiny_scheduler_config(), kind), 11, n_features=7, num_inference_steps=steps,  # type: ignore[arg-type]
        batch_size=4, generator=torch.Generator().manual_seed(0), progress=lambda done, total: calls.append((done, total)),
    )

    # Assert
    assert x.shape == (11, 7) and x.dtype == torch.float32
    assert torch.isfinite(x).all()
    assert calls == [(4, 11), (8, 11), (11, 11)]
    assert model.training  # restored


def test_sample_zero_rows() -> None:
    # Arrange
    model = TabularUNet1D(tiny_model_config(3))

    # Act
    x = sample(model, make_sampler(tiny_scheduler_config(), "ddim"), 0, n_features=3, num_inference_steps=2)

    # Assert
    assert x.shape == (0, 3)


def test_ddim_sampling_is_deterministic_given_seed() -> None:
    # Arrange
    model = TabularUNet1D(tiny_model_config(5))
    scheduler = make_sampler(tiny_scheduler_config(), "ddim")

    # Act
    a = sample(model, scheduler, 6, n_features=5, num_inference_steps=4, generator=torch.Generator().manual_seed(3))
    b = sample(model, scheduler, 6, n_features=5, num_inference_steps=4, generator=torch.Generator().manual_seed(3))

    # Assert
    torch.testing.assert_close(a, b)


def test_make_sampler_and_bad_arguments() -> None:
    # Arrange
    config = tiny_scheduler_config()

    # Act
    ddim = make_sampler(config, "ddim", eta=0.5)

    # Assert
    assert isinstance(ddim, DDIMScheduler) and ddim.eta == 0.5
    with pytest.raises(ValueError, match="sampler"):
        make_sampler(config, "euler")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="n_rows"):
        sample(TabularUNet1D(tiny_model_config(3)), make_sampler(config), -1, n_features=3)
