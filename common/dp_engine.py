"""Single-backward DP-SGD clipping ("book-keeping", Bu et al. 2023) for the Opacus-native layers of the denoiser.

Opacus' ``hooks`` mode builds every row's gradient of every parameter; its ``ghost`` mode gets the per-row gradient
norms without building them but then needs a second backward pass to form the clipped sum. This engine needs one
forward and one backward pass, and the backward pass computes no weight gradients at all:

1. During the forward pass each parametrised layer's (wrapped) forward keeps its input ``a`` and output ``z``.
2. ``torch.autograd.grad(sum_n loss_n, [z for each layer])`` gives the output gradients ``g`` only (the
   weights are not asked for, so autograd skips their gradients, the bulk of a normal backward pass).
3. Per layer, each row's gradient norm comes from ``(a, g)``: ``||a_n|| ||g_n||`` for ``Linear`` (the ghost-norm
   identity), the (small) per-row gradients for ``Conv1d`` and ``GroupNorm``. Each layer writes its norms into
   one row of a `(layers, R)` matrix; the rows' total norms are one ``vector_norm`` over it.
4. The clip factor ``c_n = min(1, C / (||grad_n|| + 1e-6))`` (Opacus' formula) is known once all layers are done;
   each layer's clipped gradient sum is then one weighted product, e.g. ``(c * g)^T a`` for ``Linear``.

Each layer's rule is an object built with the clipper (:class:`_Rule`), so that a step costs a handful of tensor
operations per layer: at this model size the Python and dispatch overhead per operation is a sizeable part of it.

The result is the clipped gradient sum that Opacus' ``hooks`` mode produces (``tests/common/test_dp_engine.py``);
the noise, the ``1 / expected batch`` scaling and the accounting stay Opacus' own
(``DPOptimizerFastGradientClipping``, with the same noise draws added in one multi-tensor operation, and the
accountant's optimizer hook, see ``training.train_dp``).

Augmentation multiplicity (``k`` consecutive copies of each row, their gradients averaged *before* clipping) is
supported exactly: the copies' contributions are averaged per row, with the Gram-matrix form for ``Linear``.

Supported: ``nn.Linear``, ``nn.Conv1d`` (``groups=1``), ``nn.GroupNorm``; every other module must have no trainable
parameters of its own, and each layer must run once per forward pass (no weight sharing).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable

import torch
import torch.nn.functional as F
from opacus.optimizers import DPOptimizerFastGradientClipping
from opacus.optimizers.optimizer import _check_processed_flag, _mark_as_processed
from torch import Tensor, nn

from fedsynth.common.errors import ConfigError

__all__ = ["BookkeepingClipper", "ClippedSumDPOptimizer", "SUPPORTED_LAYERS", "conv1d_pads"]

SUPPORTED_LAYERS: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.GroupNorm)

# what a layer's rule returns from its norm pass: the function from clip factors (R,) to its
# [(parameter, clipped gradient sum)]
_Clipped = Callable[[Tensor], list[tuple[nn.Parameter, Tensor]]]


def _rows(t: Tensor, k: int) -> Tensor:
    """`(R * k, ...)` -> `(R, k, ...)`: the ``k`` copies of each row side by side."""
    return t.reshape(t.shape[0] // k, k, *t.shape[1:])


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


class _Rule(ABC):
    """Per-row gradient norms and clipped gradient sum of one layer, from its input ``a``, output ``z`` and
    output gradient ``g`` (all row copies: first dimension ``R * k``).

    One instance per layer, built when the clipper is: it checks the layer once and keeps what does not change
    between steps (which parameters train, padding) and the scratch buffers reused across steps. Each step,
    :meth:`norms` writes every row's gradient norm for this layer's parameters into ``out`` (shape `(R,)`) and
    returns the function that turns clip factors into the clipped gradient sums, so that the per-layer work is
    a handful of tensor operations.
    """

    def __init__(self, layer: nn.Module) -> None:
        self.layer = layer
        weight, bias = getattr(layer, "weight", None), getattr(layer, "bias", None)
        self.want_w = weight is not None and weight.requires_grad
        self.want_b = bias is not None and bias.requires_grad
        self.cache: dict[str, Tensor] = {}

    @abstractmethod
    def norms(self, a: Tensor, z: Tensor, g: Tensor, k: int, out: Tensor) -> _Clipped:
        """Write each row's gradient norm for this layer into ``out`` and return its clipped-sum function."""


class _LinearRule(_Rule):
    """Ghost norms: a row's weight gradient ``g_n^T a_n`` is never built, its norm comes from ``||a_n|| ||g_n||``
    (one position per row) or from the rows' Gram matrices (several positions or copies per row)."""

    def norms(self, a: Tensor, z: Tensor, g: Tensor, k: int, out: Tensor) -> _Clipped:
        layer, want_w, want_b = self.layer, self.want_w, self.want_b
        a2 = a.reshape(-1, a.shape[-1])  # (R * k * T, in): one position per row of a 2D input
        g2 = g.reshape(-1, g.shape[-1])
        span = k * (a2.shape[0] // a.shape[0])  # positions and copies that make up one row
        if span == 1:  # ||g a^T||^2 = ||g||^2 ||a||^2, plus ||g||^2 for the bias
            if want_w:
                gsq = torch.linalg.vecdot(g2, g2)
                asq = torch.linalg.vecdot(a2, a2)
                torch.sqrt(torch.addcmul(gsq, asq, gsq) if want_b else asq.mul_(gsq), out=out)
            else:
                torch.linalg.vector_norm(g2, dim=1, out=out)
        else:  # Gram form over the row's positions and copies, divided by k^2 for the average
            rows = a2.shape[0] // span
            ar, gr = a2.reshape(rows, span, -1), g2.reshape(rows, span, -1)
            gg = torch.bmm(gr, gr.transpose(1, 2))
            sq = (torch.bmm(ar, ar.transpose(1, 2)) * gg).sum((1, 2)) if want_w else torch.zeros_like(out)
            if want_b:
                sq += gg.sum((1, 2))
            torch.sqrt(sq.clamp_(min=0.0).div_(k * k), out=out)
        per_row = a2.shape[0] // (a.shape[0] // k)  # weight per position: c_r / k for each of its k * T positions

        def clipped(c: Tensor) -> list[tuple[nn.Parameter, Tensor]]:
            w = c.repeat_interleave(per_row) / k if per_row > 1 else c
            grads = []
            if want_w:
                grads.append((layer.weight, torch.mm(g2.t(), a2 * w[:, None])))
            if want_b:
                grads.append((layer.bias, torch.mv(g2.t(), w)))
            return grads

        return clipped


def conv1d_pads(layer: nn.Conv1d) -> tuple[int, int]:
    """Zeros a ``Conv1d`` adds on the left and right of its input (``padding`` as ints, ``"same"`` or ``"valid"``)."""
    k, d = layer.kernel_size[0], layer.dilation[0]
    if isinstance(layer.padding, str):
        total = 0 if layer.padding == "valid" else d * (k - 1)
        return total // 2, total - total // 2
    return layer.padding[0], layer.padding[0]


class _Conv1dRule(_Rule):
    """Per-row gradients as ONE batched product ``g_n @ U_n``, with ``U_n`` the row's im2col matrix (T x k*C_in,
    taps outer) plus a column of ones for the bias: batched BLAS pays per matrix, so one wide product is much
    cheaper than one per tap. ``U`` is gathered from the channels-last padded input through a strided view.
    The buffers live across steps (grown for the largest Poisson batch seen): fresh multi-MB temporaries each
    step would be page-faulted in again, and the padding and the ones column stay as written."""

    def __init__(self, layer: nn.Conv1d) -> None:
        super().__init__(layer)
        if layer.groups != 1:
            raise ConfigError("book-keeping clipping supports Conv1d with groups=1 only; use grad-sample-mode hooks")
        self.left, self.right = conv1d_pads(layer)
        if layer.padding_mode != "zeros" and (self.left or self.right):
            raise ConfigError(f"book-keeping clipping supports zero-padded Conv1d only, got {layer.padding_mode!r}")
        self.ks, self.stride, self.dilation = layer.kernel_size[0], layer.stride[0], layer.dilation[0]
        self.cols = self.ks * layer.in_channels if self.want_w else 0
        # a 1x1 convolution's im2col matrix is its input, channels last: no padded copy to gather from
        self.pointwise = self.ks == 1 and self.stride == 1 and not (self.left or self.right)

    def norms(self, a: Tensor, z: Tensor, g: Tensor, k: int, out: Tensor) -> _Clipped:
        layer, want_w, want_b, cols, ks = self.layer, self.want_w, self.want_b, self.cols, self.ks
        n, c_in, c_out, t_out = a.shape[0], a.shape[1], g.shape[1], g.shape[2]
        ones = (lambda buf: buf[:, :, cols].fill_(1.0)) if want_b else None
        u = _buffer(self.cache, "u", (n, t_out, cols + (1 if want_b else 0)), a, ones)
        if want_w and self.pointwise:
            u[:, :, :cols].copy_(a.transpose(1, 2))
        elif want_w:
            left, length = self.left, a.shape[2]
            xt = _buffer(self.cache, "xt", (n, left + length + self.right, c_in), a)  # zero-padded, channels last
            xt[:, left : left + length].copy_(a.transpose(1, 2))
            win = xt.as_strided((n, t_out, ks, c_in), (xt.stride(0), self.stride * c_in, self.dilation * c_in, 1))
            u[:, :, :cols].view(n, t_out, ks, c_in).copy_(win)  # [n, t, j, i]
        gs = _buffer(self.cache, "gs", (n, c_out, u.shape[2]), a)
        torch.bmm(g, u, out=gs)  # (n, C_out, k*C_in [+ 1])
        gs = gs.view(n, -1) if k == 1 else _rows(gs.view(n, -1), k).mean(1)
        torch.linalg.vector_norm(gs, dim=1, out=out)

        def clipped(c: Tensor) -> list[tuple[nn.Parameter, Tensor]]:
            total = torch.mv(gs.t(), c).view(c_out, -1)
            grads = []
            if want_w:
                grads.append((layer.weight, total[:, :cols].view(c_out, ks, c_in).transpose(1, 2)))
            if want_b:
                grads.append((layer.bias, total[:, cols]))
            return grads

        return clipped


_GN_INVERT_MIN = 0.05  # smallest |gamma| for which GroupNorm's output is inverted rather than recomputed


class _GroupNormRule(_Rule):
    """Per-row ``[sum_l g * xhat, sum_l g]`` per channel. ``z = xhat * gamma + beta``, so
    ``sum_l g * xhat = (sum_l g * z - beta * sum_l g) / gamma``: the layer's own output replaces normalising the
    input again, while no ``|gamma|`` is below ``_GN_INVERT_MIN`` (``invert``, checked for all layers at once)."""

    invert = True

    def norms(self, a: Tensor, z: Tensor, g: Tensor, k: int, out: Tensor) -> _Clipped:
        layer, want_w, want_b = self.layer, self.want_w, self.want_b
        n, c = g.shape[0], g.shape[1]
        g3 = g.reshape(n, c, -1)
        gs = g.new_empty(n, (c if want_w else 0) + (c if want_b else 0))  # (n, [C weight] [C bias])
        gb = gs[:, -c:] if want_b else g.new_empty(n, c)
        torch.sum(g3, 2, out=gb)
        if want_w:
            if self.invert and layer.bias is not None:
                gwz = torch.linalg.vecdot(g3, z.reshape(n, c, -1))
                torch.div(torch.addcmul(gwz, gb, layer.bias.detach(), value=-1.0), layer.weight.detach(),
                          out=gs[:, :c])
            else:
                xhat = F.group_norm(a, layer.num_groups, eps=layer.eps).reshape(n, c, -1)
                torch.linalg.vecdot(g3, xhat, out=gs[:, :c])
        if k > 1:
            gs = _rows(gs, k).mean(1)
        torch.linalg.vector_norm(gs, dim=1, out=out)

        def clipped(cf: Tensor) -> list[tuple[nn.Parameter, Tensor]]:
            total = torch.mv(gs.t(), cf)
            grads = []
            if want_w:
                grads.append((layer.weight, total[:c]))
            if want_b:
                grads.append((layer.bias, total[-c:]))
            return grads

        return clipped


_UNSET = object()  # a layer had no instance-level forward before the clipper wrapped it

_RULES: dict[type[nn.Module], type[_Rule]] = {
    nn.Linear: _LinearRule,
    nn.Conv1d: _Conv1dRule,
    nn.GroupNorm: _GroupNormRule,
}


class BookkeepingClipper:
    """Per-row clipped gradient sums of ``model`` in one forward and one backward pass.

    Args:
        model: the module to train; every module holding trainable parameters of its own must be one of
            :data:`SUPPORTED_LAYERS`.
        max_grad_norm: the per-row clipping norm ``C``.
        multiplicity: consecutive copies per row in a batch whose gradients are averaged before clipping.

    Raises:
        ConfigError: an unsupported layer, or a ``Conv1d`` with groups or non-zero padding.

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
        self._rules: dict[nn.Module, _Rule] = {}
        for name, m in model.named_modules():
            own = [p for p in m.parameters(recurse=False) if p.requires_grad]
            if not own:
                continue
            if type(m) not in _RULES:
                raise ConfigError(
                    f"book-keeping clipping does not support layer {name!r} ({type(m).__name__}); "
                    f"supported: {', '.join(t.__name__ for t in SUPPORTED_LAYERS)}"
                )
            self._rules[m] = _RULES[type(m)](m)
        self._group_norms = [r for r in self._rules.values() if isinstance(r, _GroupNormRule) and r.want_w]
        self._records: list[tuple[nn.Module, Tensor, Tensor]] = []
        self._capturing = False
        # each layer's forward is wrapped on the instance rather than given a forward hook: a module with hooks
        # takes PyTorch's slow call path; across the denoiser's 48 layers the hooks' forward pass took 0.3-1.6 ms
        # per step longer than the wrapped one (four same-process A/Bs, batch 480)
        self._wrapped: list[tuple[nn.Module, object]] = []
        for m in self._rules:
            self._wrapped.append((m, m.__dict__.get("forward", _UNSET)))
            m.forward = self._recording_forward(m)

    def _recording_forward(self, module: nn.Module) -> Callable[..., Tensor]:
        inner = module.forward  # the class's forward, or an instance-level one set before ours

        def forward(x: Tensor, *args: object, **kwargs: object) -> Tensor:
            out = inner(x, *args, **kwargs)
            if self._capturing:
                self._records.append((module, x.detach(), out))
            return out

        return forward

    def capture(self) -> _Capture:
        """Context manager: record the layers' inputs and outputs of the forward pass run inside it."""
        return _Capture(self)

    def remove(self) -> None:
        """Give every layer its own forward back (the one it had before this clipper)."""
        for m, before in reversed(self._wrapped):
            if before is _UNSET:
                m.__dict__.pop("forward", None)
            else:
                m.forward = before
        self._wrapped = []

    def _check_group_norm_scales(self) -> None:
        """Set each GroupNorm rule's ``invert`` flag: all ``|gamma| >= _GN_INVERT_MIN``, in one pass for all."""
        if not self._group_norms:
            return
        inv = torch._foreach_reciprocal([r.layer.weight.detach() for r in self._group_norms])
        ok = (torch.stack(torch._foreach_norm(inv, ord=float("inf"))) <= 1.0 / _GN_INVERT_MIN).tolist()
        for rule, flag in zip(self._group_norms, ok, strict=True):
            rule.invert = flag

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
        ran = {module for module, _, _ in records}
        if len(ran) < len(records):
            twice = next(m for i, (m, _, _) in enumerate(records) if any(m is r[0] for r in records[:i]))
            raise ConfigError(
                f"{type(twice).__name__} ran twice in one forward pass (shared weights); "
                "book-keeping clipping needs each layer once: use grad-sample-mode hooks"
            )
        self._check_group_norm_scales()
        grads = torch.autograd.grad(per_row_loss.sum(), [z for _, _, z in records], allow_unused=True)
        layer_norms = per_row_loss.new_empty(len(records), n // k)  # row i: each row's norm for layer i
        parts = []
        for i, ((module, a, z), g) in enumerate(zip(records, grads, strict=True)):
            g = torch.zeros_like(z) if g is None else g
            parts.append(self._rules[module].norms(a, z.detach(), g, k, layer_norms[i]))
        norms = torch.linalg.vector_norm(layer_norms, dim=0)
        c = (self.max_grad_norm / (norms + 1e-6)).clamp_(max=1.0)
        for clipped in parts:
            for p, grad in clipped(c):
                # a rule may return a strided view (Conv1d: a transposed weight sum, a bias column); fused
                # optimizer kernels (e.g. Adam(fused=True)) read p.grad as laid out like p and would silently
                # misapply it, so every gradient is handed out contiguous (a no-op for those that are)
                p.grad = grad.contiguous()
        for module in self._rules:  # layers that did not run this pass get a zero sum
            if module not in ran:
                for p in module.parameters(recurse=False):
                    if p.requires_grad:
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

    Identical in result to ``DPOptimizerFastGradientClipping``, with less work per step:

    - ``accumulate`` takes ``p.grad`` as the summed gradient instead of deep-copying it;
    - ``add_noise`` draws the same Gaussian noise as Opacus (same calls, same order, same generator) but adds it
      to all parameters in one multi-tensor operation, and ``scale_grad`` divides them all in one, instead of a
      few Python-dispatched operations per parameter. ``secure_mode`` keeps Opacus' own per-parameter path.

    Gradient accumulation over several backward passes is not supported.
    """

    def accumulate(self) -> None:
        for p in self.params:
            if p.summed_grad is not None:
                raise RuntimeError("ClippedSumDPOptimizer does not accumulate over backward passes; step each batch")
            p.summed_grad = p.grad.detach()

    def add_noise(self) -> None:
        if self.secure_mode:
            super().add_noise()
            return
        params = self.params
        summed = [p.summed_grad for p in params]
        for s in summed:
            _check_processed_flag(s)
        std = getattr(self, "_adjusted_noise_multiplier", self.noise_multiplier) * self.max_grad_norm
        if std != 0:  # Opacus' _generate_noise: one torch.normal per parameter, none at all for std 0
            noise = [torch.normal(mean=0, std=std, size=s.shape, device=s.device, generator=self.generator)
                     for s in summed]
            noised = torch._foreach_add(summed, noise)
        else:
            noised = [s.clone() for s in summed]  # p.grad is scaled in place next: keep summed_grad as it is
        for p, s, grad in zip(params, summed, noised, strict=True):
            p.grad = grad.view_as(p)
            _mark_as_processed(s)

    def scale_grad(self) -> None:
        if self.loss_reduction == "mean":
            torch._foreach_div_([p.grad for p in self.params], self.expected_batch_size * self.accumulated_iterations)
