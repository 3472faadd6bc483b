"""Single-backward DP-SGD clipping ("book-keeping", Bu et al. 2023) for the Opacus-native layers of the denoiser.

Opacus' ``hooks`` mode builds every row's gradient of every parameter; its ``ghost`` mode gets the per-row gradient
norms without building them but then needs a second backward pass to form the clipped sum. This engine needs one
forward and one backward pass, and the backward pass computes no weight gradients at all:

1. During the forward pass a hook keeps each parametrised layer's input ``a`` and output ``z``.
2. ``torch.autograd.grad(sum_n loss_n, [z for each layer])`` gives the output gradients ``g`` only (the
   weights are not asked for, so autograd skips their gradients, the bulk of a normal backward pass).
3. Per layer, each row's squared gradient norm comes from ``(a, g)``: ``||a_n||^2 ||g_n||^2`` for ``Linear``
   (the ghost-norm identity), the (small) per-row gradients for ``Conv1d`` and ``GroupNorm``.
4. The clip factor ``c_n = min(1, C / (||grad_n|| + 1e-6))`` (Opacus' formula) is known once all layers are done;
   each layer's clipped gradient sum is then one weighted product, e.g. ``(c * g)^T a`` for ``Linear``.

The result is the clipped gradient sum that Opacus' ``hooks`` mode produces (``tests/common/test_dp_engine.py``);
the noise, the ``1 / expected batch`` scaling and the accounting stay Opacus' own
(``DPOptimizerFastGradientClipping`` and the accountant's optimizer hook, see ``training.train_dp``).

Augmentation multiplicity (``k`` consecutive copies of each row, their gradients averaged *before* clipping) is
supported exactly: the copies' contributions are averaged per row, with the Gram-matrix form for ``Linear``.

Supported: ``nn.Linear``, ``nn.Conv1d`` (``groups=1``), ``nn.GroupNorm``; every other module must have no trainable
parameters of its own, and each layer must run once per forward pass (no weight sharing).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from opacus.optimizers import DPOptimizerFastGradientClipping
from torch import Tensor, nn

from fedsynth.common.errors import ConfigError

__all__ = ["BookkeepingClipper", "ClippedSumDPOptimizer", "SUPPORTED_LAYERS", "conv1d_pads"]

SUPPORTED_LAYERS: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.GroupNorm)

# a layer's contribution: squared per-row norms (R,) and a function from clip factors (R,) to
# {parameter: clipped gradient sum}
_Contribution = tuple[Tensor, Callable[[Tensor], list[tuple[nn.Parameter, Tensor]]]]


def _rows(t: Tensor, k: int) -> Tensor:
    """`(R * k, ...)` -> `(R, k, ...)`: the ``k`` copies of each row side by side."""
    return t.reshape(t.shape[0] // k, k, *t.shape[1:])


def _row_weights(c: Tensor, k: int) -> Tensor:
    """Per-copy weights ``c_r / k`` of shape `(R * k,)` for clip factors ``c`` of shape `(R,)`."""
    return c.repeat_interleave(k) / k if k > 1 else c


def _linear(layer: nn.Linear, a: Tensor, z: Tensor, g: Tensor, k: int, cache: dict[str, Tensor]) -> _Contribution:
    a2 = a.reshape(a.shape[0], -1, a.shape[-1])  # (B, T, in)
    g2 = g.reshape(g.shape[0], -1, g.shape[-1])  # (B, T, out)
    rows, span = a2.shape[0] // k, k * a2.shape[1]
    if span == 1:  # one position per row: ||g a^T||^2 = ||g||^2 ||a||^2
        gsq = g2.reshape(-1, g2.shape[-1]).pow(2).sum(1)
        sq = a2.reshape(-1, a2.shape[-1]).pow(2).sum(1) * gsq if layer.weight.requires_grad else 0.0
        bias_sq = gsq
    else:  # Gram form over the row's positions and copies, divided by k^2 for the average
        ar, gr = a2.reshape(rows, span, -1), g2.reshape(rows, span, -1)
        gg = torch.bmm(gr, gr.transpose(1, 2))
        sq = (torch.bmm(ar, ar.transpose(1, 2)) * gg).sum((1, 2)) / (k * k) if layer.weight.requires_grad else 0.0
        bias_sq = gg.sum((1, 2)) / (k * k)
    total = sq + (bias_sq if layer.bias is not None and layer.bias.requires_grad else 0.0)

    def clipped(c: Tensor) -> list[tuple[nn.Parameter, Tensor]]:
        w = _row_weights(c, k).repeat_interleave(a2.shape[1]) if a2.shape[1] > 1 else _row_weights(c, k)
        gw = g2.reshape(-1, g2.shape[-1]) * w[:, None]
        out = []
        if layer.weight.requires_grad:
            out.append((layer.weight, gw.t() @ a2.reshape(-1, a2.shape[-1])))
        if layer.bias is not None and layer.bias.requires_grad:
            out.append((layer.bias, gw.sum(0)))
        return out

    return _as_tensor(total, a), clipped


def conv1d_pads(layer: nn.Conv1d) -> tuple[int, int]:
    """Zeros a ``Conv1d`` adds on the left and right of its input (``padding`` as ints, ``"same"`` or ``"valid"``)."""
    k, d = layer.kernel_size[0], layer.dilation[0]
    if isinstance(layer.padding, str):
        total = 0 if layer.padding == "valid" else d * (k - 1)
        return total // 2, total - total // 2
    return layer.padding[0], layer.padding[0]


def _conv1d(
    layer: nn.Conv1d, a: Tensor, z: Tensor, g: Tensor, k: int, cache: dict[str, Tensor]
) -> _Contribution:
    if layer.groups != 1:
        raise ConfigError("book-keeping clipping supports Conv1d with groups=1 only; use grad-sample-mode hooks")
    left, right = conv1d_pads(layer)
    if layer.padding_mode != "zeros" and (left or right):
        raise ConfigError(f"book-keeping clipping supports zero-padded Conv1d only, got {layer.padding_mode!r}")
    want_w = layer.weight.requires_grad
    want_b = layer.bias is not None and layer.bias.requires_grad
    ks, s, d = layer.kernel_size[0], layer.stride[0], layer.dilation[0]
    n, c_in, t_out = a.shape[0], a.shape[1], g.shape[2]
    # Per-row gradients as ONE batched product g_n @ U_n, with U_n the row's im2col matrix (T x k*C_in, taps
    # outer) plus a column of ones for the bias: batched BLAS pays per matrix, so one wide product is much
    # cheaper than one per tap. U is gathered from the channels-last padded input through a strided view.
    # The buffers live across steps (per layer, grown for the largest Poisson batch seen): fresh multi-MB
    # temporaries each step would be page-faulted in again, and the padding and the ones column stay as written.
    cols = ks * c_in if want_w else 0
    ones = (lambda buf: buf[:, :, cols].fill_(1.0)) if want_b else None
    u = _buffer(cache, "u", (n, t_out, cols + (1 if want_b else 0)), a, ones)
    if want_w:
        length = a.shape[2]
        xt = _buffer(cache, "xt", (n, left + length + right, c_in), a)  # zero-padded, channels last
        xt[:, left : left + length].copy_(a.transpose(1, 2))
        win = xt.as_strided((n, t_out, ks, c_in), (xt.stride(0), s * c_in, d * c_in, 1))  # [n, t, j, i]
        u[:, :, :cols].view(n, t_out, ks, c_in).copy_(win)
    gs = _buffer(cache, "gs", (n, g.shape[1], u.shape[2]), a)
    torch.bmm(g, u, out=gs)  # (n, C_out, k*C_in [+ 1])
    if k > 1:
        gs = _rows(gs, k).mean(1)
    c_out = g.shape[1]

    def clipped(c: Tensor) -> list[tuple[nn.Parameter, Tensor]]:
        total = (c @ gs.reshape(gs.shape[0], -1)).view(c_out, -1)
        out = []
        if want_w:
            out.append((layer.weight, total[:, :cols].reshape(c_out, ks, c_in).transpose(1, 2)))
        if want_b:
            out.append((layer.bias, total[:, cols]))
        return out

    return _sq(gs), clipped


def _buffer(
    cache: dict[str, Tensor], key: str, shape: tuple[int, ...], like: Tensor,
    init: Callable[[Tensor], object] | None = None,
) -> Tensor:
    """A scratch tensor of ``shape`` whose first dimension may vary from call to call: the first ``shape[0]``
    rows (contiguous) of a cached buffer, zeroed and passed to ``init`` whole when it is (re)allocated."""
    buf = cache.get(key)
    if (buf is None or buf.shape[0] < shape[0] or buf.shape[1:] != shape[1:] or buf.dtype != like.dtype
            or buf.device != like.device):
        buf = like.new_zeros((shape[0] + shape[0] // 8 + 1, *shape[1:]))  # headroom for Poisson batch sizes
        if init is not None:
            init(buf)
        cache[key] = buf
    return buf[: shape[0]]


def _sq(t: Tensor) -> Tensor:
    """Squared L2 norm of each row of ``t`` (all but the first dimension)."""
    return torch.linalg.vector_norm(t.reshape(t.shape[0], -1), dim=1).square()


def _group_norm(
    layer: nn.GroupNorm, a: Tensor, z: Tensor, g: Tensor, k: int, cache: dict[str, Tensor]
) -> _Contribution:
    want_w = layer.weight is not None and layer.weight.requires_grad
    want_b = layer.bias is not None and layer.bias.requires_grad
    g3 = g.reshape(g.shape[0], g.shape[1], -1)
    gb = g3.sum(2)  # per-row bias gradient (n, C)
    parts: list[Tensor] = []
    if want_w:
        gamma = layer.weight.detach()
        if layer.bias is not None and bool(gamma.abs().min() >= _GN_INVERT_MIN):
            # z = xhat * gamma + beta, so sum_l g * xhat = (sum_l g * z - beta * sum_l g) / gamma: the layer's own
            # output replaces normalising the input again (safe while no |gamma| is small)
            gw = ((g3 * z.reshape(g3.shape)).sum(2) - gb * layer.bias.detach()) / gamma
        else:
            xhat = F.group_norm(a, layer.num_groups, eps=layer.eps).reshape(g3.shape)
            gw = (g3 * xhat).sum(2)
        parts.append(gw)
    if want_b:
        parts.append(gb)
    gs = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]  # (n, C [+ C])
    if k > 1:
        gs = _rows(gs, k).mean(1)
    c = g.shape[1]

    def clipped(cf: Tensor) -> list[tuple[nn.Parameter, Tensor]]:
        total = cf @ gs
        out = []
        if want_w:
            out.append((layer.weight, total[:c]))
        if want_b:
            out.append((layer.bias, total[-c:]))
        return out

    return _sq(gs), clipped


_GN_INVERT_MIN = 0.05  # smallest |gamma| for which GroupNorm's output is inverted rather than recomputed


def _as_tensor(v: Tensor | float, like: Tensor) -> Tensor:
    return v if isinstance(v, Tensor) else like.new_full((like.shape[0],), float(v))


_RULES: dict[type[nn.Module], Callable[[Any, Tensor, Tensor, Tensor, int, dict[str, Tensor]], _Contribution]] = {
    nn.Linear: _linear,
    nn.Conv1d: _conv1d,
    nn.GroupNorm: _group_norm,
}


class BookkeepingClipper:
    """Per-row clipped gradient sums of ``model`` in one forward and one backward pass.

    Args:
        model: the module to train; every module holding trainable parameters of its own must be one of
            :data:`SUPPORTED_LAYERS`.
        max_grad_norm: the per-row clipping norm ``C``.
        multiplicity: consecutive copies per row in a batch whose gradients are averaged before clipping.

    Example:
        >>> clipper = BookkeepingClipper(model, max_grad_norm=1.0)
        >>> with clipper.capture():
        ...     per_row_loss = loss_fn(model, batch)
        >>> norms = clipper.backward(per_row_loss)   # sets p.grad = sum_n c_n grad_n
    """

    def __init__(self, model: nn.Module, *, max_grad_norm: float, multiplicity: int = 1) -> None:
        if max_grad_norm <= 0:
            raise ConfigError("max_grad_norm must be > 0")
        if multiplicity < 1:
            raise ConfigError("multiplicity must be >= 1")
        self.max_grad_norm = float(max_grad_norm)
        self.multiplicity = int(multiplicity)
        self.params = [p for p in model.parameters() if p.requires_grad]
        self._layers: list[nn.Module] = []
        for name, m in model.named_modules():
            own = [p for p in m.parameters(recurse=False) if p.requires_grad]
            if not own:
                continue
            if type(m) not in _RULES:
                raise ConfigError(
                    f"book-keeping clipping does not support layer {name!r} ({type(m).__name__}); "
                    f"supported: {', '.join(t.__name__ for t in SUPPORTED_LAYERS)}"
                )
            self._layers.append(m)
        self._records: list[tuple[nn.Module, Tensor, Tensor]] = []
        self._buffers: dict[int, dict[str, Tensor]] = {}  # per-layer scratch tensors reused across steps
        self._capturing = False
        self._handles = [m.register_forward_hook(self._hook) for m in self._layers]

    def _hook(self, module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
        if self._capturing:
            self._records.append((module, inputs[0].detach(), output))

    def capture(self) -> _Capture:
        """Context manager: record the layers' inputs and outputs of the forward pass run inside it."""
        return _Capture(self)

    def remove(self) -> None:
        """Remove the forward hooks."""
        for h in self._handles:
            h.remove()
        self._handles = []

    def backward(self, per_row_loss: Tensor) -> Tensor:
        """Set each trained parameter's ``.grad`` to the clipped gradient sum over rows.

        Args:
            per_row_loss (`Tensor` of shape `(R * multiplicity,)`): one loss per row copy, from the forward pass
                run under :meth:`capture`; a row's gradient is the mean over its copies.

        Returns:
            `Tensor` of shape `(R,)`: each row's gradient norm before clipping.
        """
        records, self._records = self._records, []
        k = self.multiplicity
        n = per_row_loss.shape[0]
        if n % k:
            raise ConfigError(f"batch of {n} row copies is not a multiple of multiplicity {k}")
        if n == 0:  # empty Poisson batch: a zero clipped sum (noise is still added by the optimizer)
            for p in self.params:
                p.grad = torch.zeros_like(p)
            return per_row_loss.new_zeros(0)
        seen: set[int] = set()
        for module, _, _ in records:
            if id(module) in seen:
                raise ConfigError(
                    f"{type(module).__name__} ran twice in one forward pass (shared weights); "
                    "book-keeping clipping needs each layer once: use grad-sample-mode hooks"
                )
            seen.add(id(module))
        outs = [z for _, _, z in records]
        grads = torch.autograd.grad(per_row_loss.sum(), outs, allow_unused=True)
        sqs: list[Tensor] = []
        parts = []
        for (module, a, z), g in zip(records, grads, strict=True):
            if g is None:
                g = torch.zeros_like(z)
            rule = _RULES[type(module)]
            contrib_sq, clipped = rule(module, a, z.detach(), g.detach(), k, self._buffers.setdefault(id(module), {}))
            sqs.append(contrib_sq)
            parts.append(clipped)
        norms = torch.stack(sqs).sum(0).clamp(min=0).sqrt()
        c = (self.max_grad_norm / (norms + 1e-6)).clamp(max=1.0)
        done: set[int] = set()
        for clipped in parts:
            for p, grad in clipped(c):
                p.grad = grad.view_as(p).detach()
                done.add(id(p))
        for p in self.params:  # parameters of layers that did not run this pass get a zero sum
            if id(p) not in done:
                p.grad = torch.zeros_like(p)
        return norms


class _Capture:
    def __init__(self, clipper: BookkeepingClipper) -> None:
        self._clipper = clipper

    def __enter__(self) -> BookkeepingClipper:
        self._clipper._records = []
        self._clipper._capturing = True
        return self._clipper

    def __exit__(self, *exc: object) -> None:
        self._clipper._capturing = False


class ClippedSumDPOptimizer(DPOptimizerFastGradientClipping):
    """Opacus' optimizer for an already clipped gradient sum in ``p.grad`` (noise, scaling, accounting hook).

    Identical to ``DPOptimizerFastGradientClipping`` except that ``accumulate`` takes ``p.grad`` as the summed
    gradient instead of deep-copying it (``add_noise`` then replaces ``p.grad`` with a new tensor), which saves a
    copy of every parameter per step. Gradient accumulation over several backward passes is not supported.
    """

    def accumulate(self) -> None:
        for p in self.params:
            if p.summed_grad is not None:
                raise RuntimeError("ClippedSumDPOptimizer does not accumulate over backward passes; step each batch")
            p.summed_grad = p.grad.detach()
