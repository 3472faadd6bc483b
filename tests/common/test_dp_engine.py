"""Tests for fedsynth.common.dp_engine: single-backward ("book-keeping") per-row clipping.

The reference is the definition itself: each row's gradient from its own backward pass (the mean over its copies
when ``multiplicity > 1``), clipped to ``C`` with Opacus' factor ``min(1, C / (norm + 1e-6))``, then summed.
Comparisons run in float64: in float32 both sides carry rounding errors of about 1e-4 on large norms.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from common_factories import tiny_model_config
from torch import Tensor, nn

from fedsynth.common import model as model_module
from fedsynth.common.dp_engine import BookkeepingClipper, ClippedSumDPOptimizer
from fedsynth.common.errors import ConfigError
from fedsynth.common.model import TabularUNet1D


class _ConvZoo(nn.Module):
    """Every layer variant the engine handles: Linear on 2D and 3D inputs, Conv1d with k = 1/3/4, stride 2,
    ``padding='same'``, dilation 2 and no bias, GroupNorm with and without affine parameters."""

    def __init__(self) -> None:
        super().__init__()
        self.lin_in = nn.Linear(5, 4 * 8)
        self.conv_same = nn.Conv1d(4, 6, 3, padding="same", dilation=2)
        self.norm = nn.GroupNorm(2, 6)
        self.conv_down = nn.Conv1d(6, 6, 4, stride=2, padding=1, bias=False)
        self.norm_plain = nn.GroupNorm(3, 6, affine=False)
        self.conv_point = nn.Conv1d(6, 3, 1)
        self.lin_seq = nn.Linear(3, 2)  # applied per position: a 3D input
        self.lin_out = nn.Linear(2 * 4, 5)

    def forward(self, x: Tensor) -> Tensor:
        h = self.lin_in(x).view(x.shape[0], 4, 8)
        h = torch.nn.functional.silu(self.norm(self.conv_same(h)))
        h = self.norm_plain(self.conv_down(h))
        h = self.conv_point(h).transpose(1, 2)  # (n, 4, 3)
        h = self.lin_seq(h)
        return self.lin_out(h.reshape(x.shape[0], 2 * 4))


@pytest.fixture()
def float64(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Float64 defaults, and a float64 time embedding for the U-Net (it builds float32 by design)."""
    embed = model_module.sinusoidal_embedding
    monkeypatch.setattr(model_module, "sinusoidal_embedding", lambda t, dim: embed(t, dim).double())
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(torch.float32)


def _per_row_loss(model: nn.Module, x: Tensor, y: Tensor, t: Tensor | None) -> Tensor:
    out = model(x) if t is None else model(x, t)
    return ((out - y) ** 2).mean(dim=1)


def _reference(
    model: nn.Module, x: Tensor, y: Tensor, t: Tensor | None, c_norm: float, k: int
) -> tuple[list[Tensor], Tensor]:
    """Clipped gradient sum and per-row norms, one backward pass per row."""
    params = [p for p in model.parameters() if p.requires_grad]
    total = [torch.zeros_like(p) for p in params]
    norms = []
    for r in range(x.shape[0] // k):
        sl = slice(r * k, (r + 1) * k)
        loss = _per_row_loss(model, x[sl], y[sl], None if t is None else t[sl]).mean()
        grads = torch.autograd.grad(loss, params)
        norm = torch.sqrt(sum((g**2).sum() for g in grads))
        factor = min(1.0, c_norm / (float(norm) + 1e-6))
        norms.append(float(norm))
        for acc, g in zip(total, grads, strict=True):
            acc += factor * g
    return total, torch.tensor(norms)


def _engine(
    model: nn.Module, x: Tensor, y: Tensor, t: Tensor | None, c_norm: float, k: int
) -> tuple[list[Tensor], Tensor]:
    clipper = BookkeepingClipper(model, max_grad_norm=c_norm, multiplicity=k)
    with clipper.capture():
        loss = _per_row_loss(model, x, y, t)
    norms = clipper.backward(loss)
    clipper.remove()
    grads = [p.grad.clone() for p in model.parameters() if p.requires_grad]
    model.zero_grad(set_to_none=True)
    return grads, norms


def _assert_close(got: list[Tensor], want: list[Tensor]) -> None:
    flat_got = torch.cat([g.flatten() for g in got])
    flat_want = torch.cat([g.flatten() for g in want])
    assert flat_want.norm() > 0
    assert (flat_got - flat_want).norm() / flat_want.norm() < 1e-10


@pytest.mark.parametrize("c_norm", [1e-3, 0.05, 1e3], ids=["all-clipped", "some-clipped", "none-clipped"])
@pytest.mark.parametrize("k", [1, 3], ids=["multiplicity-1", "multiplicity-3"])
def test_layer_zoo_matches_per_row_reference(float64: None, c_norm: float, k: int) -> None:
    # Arrange
    torch.manual_seed(0)
    model = _ConvZoo()
    x, y = torch.randn(7 * k, 5), torch.randn(7 * k, 5)

    # Act
    got, norms = _engine(model, x, y, None, c_norm, k)
    want, ref_norms = _reference(model, x, y, None, c_norm, k)

    # Assert
    assert torch.allclose(norms.double(), ref_norms.double(), rtol=1e-10)
    _assert_close(got, want)


@pytest.mark.parametrize("k", [1, 2])
def test_unet_matches_per_row_reference(float64: None, k: int) -> None:
    # Arrange
    torch.manual_seed(1)
    model = TabularUNet1D(tiny_model_config(6))
    x, y = torch.randn(5 * k, 6), torch.randn(5 * k, 6)
    t = torch.randint(0, 50, (5 * k,))

    # Act
    got, norms = _engine(model, x, y, t, 0.01, k)
    want, ref_norms = _reference(model, x, y, t, 0.01, k)

    # Assert
    assert torch.allclose(norms.double(), ref_norms.double(), rtol=1e-10)
    _assert_close(got, want)


def test_one_clipper_over_batches_of_changing_size_matches_the_reference(float64: None) -> None:
    # Arrange: the engine reuses per-layer scratch buffers between steps; Poisson batches change size
    torch.manual_seed(5)
    model = _ConvZoo()
    clipper = BookkeepingClipper(model, max_grad_norm=0.05)
    params = [p for p in model.parameters() if p.requires_grad]

    for n in (6, 7, 11, 3, 11, 14):  # 7 fits the buffer allocated for 6: rows never written before
        x, y = torch.randn(n, 5), torch.randn(n, 5)

        # Act
        with clipper.capture():
            loss = _per_row_loss(model, x, y, None)
        clipper.backward(loss)
        got = [p.grad.clone() for p in params]
        model.zero_grad(set_to_none=True)
        want, _ = _reference(model, x, y, None, 0.05, 1)

        # Assert
        _assert_close(got, want)


def test_group_norm_with_a_tiny_scale_recomputes_the_normalised_input(float64: None) -> None:
    # Arrange: |gamma| below the threshold for inverting the layer's output
    torch.manual_seed(2)
    model = _ConvZoo()
    with torch.no_grad():
        model.norm.weight[0] = 1e-4
    x, y = torch.randn(6, 5), torch.randn(6, 5)

    # Act
    got, norms = _engine(model, x, y, None, 0.05, 1)
    want, ref_norms = _reference(model, x, y, None, 0.05, 1)

    # Assert
    assert torch.allclose(norms.double(), ref_norms.double(), rtol=1e-10)
    _assert_close(got, want)


def test_frozen_parameters_get_no_gradient_and_count_for_nothing(float64: None) -> None:
    # Arrange
    torch.manual_seed(3)
    model = _ConvZoo()
    model.lin_in.weight.requires_grad_(False)
    model.conv_down.weight.requires_grad_(False)
    x, y = torch.randn(6, 5), torch.randn(6, 5)

    # Act
    got, norms = _engine(model, x, y, None, 0.05, 1)
    want, ref_norms = _reference(model, x, y, None, 0.05, 1)

    # Assert
    assert model.lin_in.weight.grad is None and model.conv_down.weight.grad is None
    assert torch.allclose(norms.double(), ref_norms.double(), rtol=1e-10)
    _assert_close(got, want)


def test_empty_batch_gives_zero_gradients() -> None:
    # Arrange
    model = _ConvZoo()
    clipper = BookkeepingClipper(model, max_grad_norm=1.0)

    # Act
    with clipper.capture():
        loss = _per_row_loss(model, torch.zeros(0, 5), torch.zeros(0, 5), None)
    norms = clipper.backward(loss)

    # Assert
    assert norms.shape == (0,)
    assert all(p.grad is not None and not p.grad.any() for p in model.parameters())


def test_remove_gives_each_layer_its_own_forward_back_and_records_nothing_outside_capture() -> None:
    # Arrange: one layer already has an instance-level forward of its own (doubling its output)
    model = _ConvZoo()
    plain = model.lin_out.forward
    model.lin_out.forward = lambda h: 2 * plain(h)
    own = model.lin_out.forward
    x = torch.randn(3, 5)
    want = model(x)
    clipper = BookkeepingClipper(model, max_grad_norm=1.0)

    # Act
    outside = model(x)
    recorded_outside = len(clipper._records)
    with clipper.capture():
        inside = model(x)
    recorded_inside = len(clipper._records)
    clipper.remove()

    # Assert: same outputs wrapped, the earlier forward kept, and no instance-level forward left on the others
    assert torch.equal(outside, want) and torch.equal(inside, want)
    assert recorded_outside == 0 and recorded_inside == 7  # the layers with parameters (not norm_plain)
    assert model.lin_out.forward is own
    assert all("forward" not in m.__dict__ for m in model.modules() if m is not model.lin_out)
    assert torch.equal(model(x), want)


def test_gradients_are_laid_out_like_their_parameters_so_a_fused_adam_step_matches() -> None:
    # Arrange: the same clipped step on two copies of the U-Net
    torch.manual_seed(0)
    models = [TabularUNet1D(tiny_model_config(7)) for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    x, t = torch.randn(16, 7), torch.randint(0, 50, (16,))
    for model in models:
        clipper = BookkeepingClipper(model, max_grad_norm=1.0)
        with clipper.capture():
            loss = _per_row_loss(model, x, x, t)
        clipper.backward(loss)
        clipper.remove()

    # Act: a fused and a multi-tensor Adam step (the fused kernel reads a gradient as laid out like its parameter)
    torch.optim.Adam(models[0].parameters(), lr=0.1, fused=True).step()
    torch.optim.Adam(models[1].parameters(), lr=0.1, foreach=True).step()

    # Assert
    assert all(p.grad.is_contiguous() and p.grad.stride() == p.stride() for p in models[0].parameters())
    for fused, plain in zip(models[0].parameters(), models[1].parameters(), strict=True):
        torch.testing.assert_close(fused, plain, rtol=1e-5, atol=1e-6)


def test_unsupported_layer_is_refused_by_name() -> None:
    # Arrange
    model = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4))

    # Act / Assert
    with pytest.raises(ConfigError, match=r"'1' \(LayerNorm\)"):
        BookkeepingClipper(model, max_grad_norm=1.0)


def test_a_layer_run_twice_is_refused() -> None:
    # Arrange
    lin = nn.Linear(3, 3)
    clipper = BookkeepingClipper(lin, max_grad_norm=1.0)

    # Act
    with clipper.capture():
        loss = lin(lin(torch.randn(4, 3))).sum(1)

    # Assert
    with pytest.raises(ConfigError, match="twice"):
        clipper.backward(loss)


def test_batch_not_a_multiple_of_multiplicity_is_refused() -> None:
    # Arrange
    lin = nn.Linear(3, 3)
    clipper = BookkeepingClipper(lin, max_grad_norm=1.0, multiplicity=2)

    # Act
    with clipper.capture():
        loss = lin(torch.randn(5, 3)).sum(1)

    # Assert
    with pytest.raises(ConfigError, match="multiple of multiplicity 2"):
        clipper.backward(loss)


def test_optimizer_adds_no_copy_noise_and_scales_by_the_expected_batch() -> None:
    # Arrange: SGD with lr 1 and no noise, so the update is minus the clipped sum over the expected batch
    torch.manual_seed(4)
    model = _ConvZoo()
    x, y = torch.randn(8, 5), torch.randn(8, 5)
    before = [p.detach().clone() for p in model.parameters()]
    opt = ClippedSumDPOptimizer(
        torch.optim.SGD(model.parameters(), lr=1.0), noise_multiplier=0.0, max_grad_norm=0.05, expected_batch_size=4
    )
    clipper = BookkeepingClipper(model, max_grad_norm=0.05)
    with clipper.capture():
        loss = _per_row_loss(model, x, y, None)
    clipper.backward(loss)
    clipped = [p.grad.clone() for p in model.parameters()]

    # Act
    opt.step()

    # Assert
    for b, p, g in zip(before, model.parameters(), clipped, strict=True):
        assert torch.allclose(b - p.detach(), g / 4, atol=1e-7)


def test_optimizer_refuses_to_accumulate_two_backward_passes() -> None:
    # Arrange
    model = nn.Linear(3, 2)
    opt = ClippedSumDPOptimizer(
        torch.optim.SGD(model.parameters(), lr=1.0), noise_multiplier=1.0, max_grad_norm=1.0, expected_batch_size=2
    )
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.accumulate()

    # Act / Assert
    with pytest.raises(RuntimeError, match="does not accumulate"):
        opt.accumulate()
