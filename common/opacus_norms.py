"""Ghost-clipping norm samplers for ``nn.Conv1d`` and ``nn.GroupNorm`` (Opacus 1.6 ships them only for
``nn.Linear`` and ``nn.Embedding``).

Importing this module registers them with ``opacus.grad_sample.register_norm_sampler``. In
``grad_sample_mode="ghost"`` Opacus then gets each row's gradient norm for these layers from the layer's
activations and output gradients, instead of building per-sample gradients, accumulating them on the parameter
and taking their norms.

* ``Conv1d``: the weight gradient of row ``n`` is ``G_n A_n^T``, with ``A_n`` the unfolded input
  (``C_in * k`` x ``T``) and ``G_n`` the output gradient (``C_out`` x ``T``). Its squared Frobenius norm is
  ``sum_{t,s} (A_n^T A_n)_{ts} (G_n^T G_n)_{ts}`` (the Gram-matrix or "ghost" trick). ``A_n^T A_n`` is built
  from the input's own Gram matrix ``x_n^T x_n`` (``L`` x ``L``) by summing ``k`` shifted blocks, so nothing is
  unfolded. That costs about ``L^2 C_in + T^2 C_out`` per row against ``T C_in k C_out`` for building the
  gradient. The cheaper of the two is picked per call: for our ``k`` = 3, 4 convs on sequences of length 2 to
  16 it is the Gram form, for the ``k`` = 1 residual convs it is the gradient itself (no unfolding needed).
* ``GroupNorm``: the per-row gradients of ``weight`` and ``bias`` are only ``C`` numbers each, so they are
  computed directly (Opacus' own grad sampler) and reduced to norms.

These functions return the same norms as Opacus' ``hooks`` per-sample gradients (``tests/common/test_opacus_norms.py``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from opacus.grad_sample import register_norm_sampler
from opacus.grad_sample.group_norm import compute_group_norm_grad_sample
from torch import Tensor, nn

from fedsynth.common.dp_engine import conv1d_pads

__all__ = ["conv1d_norm_sample", "group_norm_norm_sample"]


def _input_gram(layer: nn.Conv1d, x: Tensor, t: int) -> Tensor:
    """``A_n^T A_n`` of the unfolded input, shape `(n, T, T)`, without unfolding.

    Entry ``(t, u)`` is ``sum_j xp[:, t*s + j*d] . xp[:, u*s + j*d]`` with ``xp`` the zero-padded input, so it is
    a sum of ``k`` strided diagonal blocks of the padded input's Gram matrix ``xp^T xp``, which is the unpadded
    input's Gram matrix ``x^T x`` padded with zeros.
    """
    k, s, d = layer.kernel_size[0], layer.stride[0], layer.dilation[0]
    left, right = conv1d_pads(layer)
    p = torch.bmm(x.transpose(1, 2), x)  # (n, L, L)
    if left or right:
        p = F.pad(p, (left, right, left, right))  # (n, Lp, Lp)
    if k == 1 and s == 1:
        return p[:, :t, :t] if p.shape[1] != t else p
    span = s * (t - 1) + 1
    out = p[:, 0:span:s, 0:span:s]
    for j in range(1, k):
        o = j * d
        out = out + p[:, o : o + span : s, o : o + span : s]
    return out


def _unfold1d(layer: nn.Conv1d, x: Tensor) -> Tensor:
    """Unfold ``x`` of shape `(n, C_in, L)` to `(n, C_in * k, T)` exactly like Opacus' conv grad sampler."""
    k, s, d = layer.kernel_size[0], layer.stride[0], layer.dilation[0]
    left, right = conv1d_pads(layer)
    if k == 1 and s == 1 and left == right == 0:
        return x
    x = F.pad(x, (left, right))
    return F.unfold(x.unsqueeze(-2), kernel_size=(1, k), stride=(1, s), dilation=(1, d))


@register_norm_sampler(nn.Conv1d)
def conv1d_norm_sample(layer: nn.Conv1d, activations: list[Tensor], backprops: Tensor) -> dict[nn.Parameter, Tensor]:
    """Per-row gradient norms of a ``Conv1d`` layer's weight and bias, shape `(n,)` each."""
    a = activations[0].to(backprops.dtype)
    n = a.shape[0]
    ret: dict[nn.Parameter, Tensor] = {}
    if n == 0:  # empty Poisson batch
        empty = backprops.new_zeros(0)
        if layer.weight.requires_grad:
            ret[layer.weight] = empty
        if layer.bias is not None and layer.bias.requires_grad:
            ret[layer.bias] = empty
        return ret
    g = backprops.reshape(n, backprops.shape[1], -1)  # (n, C_out, T)
    if layer.weight.requires_grad:
        c_in, c_out, t = a.shape[1], g.shape[1], g.shape[2]
        k = layer.kernel_size[0]
        length = a.shape[2]
        # flop counts per row; building the gradient of a k > 1 conv also pays for unfolding the input (im2col),
        # measured at about 4x its flop share on CPU, so it is only picked for long sequences
        gram_cost, direct_cost = length * length * c_in + t * t * c_out, t * c_in * k * c_out
        if layer.groups == 1 and gram_cost <= (4 if k > 1 else 1) * direct_cost:
            ggt = torch.bmm(g.transpose(1, 2), g)  # (n, T, T)
            sq = (_input_gram(layer, a, t) * ggt).flatten(1).sum(1).clamp(min=0)
        else:
            # long sequences or grouped convs: build the per-row gradients (of this layer only), as Opacus would
            u = _unfold1d(layer, a)  # (n, C_in * k, T)
            gs = torch.einsum("noq,npq->nop", g, u)
            if layer.groups > 1:
                gr = layer.groups
                gs = gs.view(n, gr, c_out // gr, gr, u.shape[1] // gr)
                gs = torch.einsum("ngrgp->ngrp", gs)
            sq = gs.flatten(1).pow(2).sum(1)
        ret[layer.weight] = sq.sqrt()
    if layer.bias is not None and layer.bias.requires_grad:
        ret[layer.bias] = g.sum(2).norm(2, dim=1)
    return ret


@register_norm_sampler(nn.GroupNorm)
def group_norm_norm_sample(
    layer: nn.GroupNorm, activations: list[Tensor], backprops: Tensor
) -> dict[nn.Parameter, Tensor]:
    """Per-row gradient norms of a ``GroupNorm`` layer's affine weight and bias, shape `(n,)` each."""
    if activations[0].shape[0] == 0:
        return {p: backprops.new_zeros(0) for p in (layer.weight, layer.bias) if p is not None and p.requires_grad}
    grads = compute_group_norm_grad_sample(layer, activations, backprops)
    return {p: gs.flatten(1).norm(2, dim=1) for p, gs in grads.items()}
