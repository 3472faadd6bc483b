"""TabularUNet1D: a 1D U-Net denoiser for tabular rows, built only from Opacus-native layers.

Adapted from lucidrains/denoising-diffusion-pytorch ``denoising_diffusion_pytorch_1d.py`` (MIT), pre-2024
GroupNorm version: ``Conv1d`` ResNet blocks with FiLM time conditioning, strided ``Conv1d`` downsampling and
``Upsample + Conv1d`` upsampling (``ConvTranspose1d`` is not supported by Opacus' expanded weights).

A row of ``F`` encoded features is lifted by a ``Linear`` layer to a short learned sequence of ``seq_len``
positions with ``dim`` channels, so every position sees every column (the column order in the file has no
meaning) and the U-Net works on a power-of-two length; a final ``Linear`` maps back to ``F`` features.

Layers used: ``nn.Linear``, ``nn.Conv1d``, ``nn.GroupNorm``, ``nn.SiLU``, ``nn.Upsample`` — all have Opacus
grad samplers or no parameters; no BatchNorm, no buffers, no bare ``nn.Parameter``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from fedsynth.common.errors import ConfigError

# helpers


def _groups(channels: int, preferred: int) -> int:
    return math.gcd(preferred, channels)


def sinusoidal_embedding(t: Tensor, dim: int) -> Tensor:
    """Transformer-style sinusoidal embedding of (possibly fractional) timesteps.

    Args:
        t (`Tensor` of shape `(batch,)`): timesteps.
        dim: embedding size (even).

    Returns:
        `Tensor` of shape `(batch, dim)`.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / max(half - 1, 1))
    args = t.float()[:, None] * freqs[None, :]
    return torch.cat([args.sin(), args.cos()], dim=-1)


# configuration


@dataclass(frozen=True)
class ModelConfig:
    """Hyper-parameters of :class:`TabularUNet1D`.

    Args:
        n_features: width of an encoded row.
        seq_len: length of the learned sequence the row is lifted to (power of two, at least ``2**(levels-1)``).
        dim: channels at the first level.
        dim_mults: channel multiplier per level; each level but the last halves the length.
        groups: preferred GroupNorm group count (``gcd(groups, channels)`` is used).
    """

    n_features: int
    seq_len: int = 16
    dim: int = 32
    dim_mults: tuple[int, ...] = (1, 2)
    groups: int = 8

    def __post_init__(self) -> None:
        if self.n_features < 1:
            raise ConfigError(f"model n_features must be >= 1, got {self.n_features}")
        if self.dim < 2 or not self.dim_mults or min(self.dim_mults) < 1:
            raise ConfigError("unet-dim must be >= 2 and unet-dim-mults non-empty positive integers")
        if self.dim % 2:
            # the sinusoidal time embedding has 2 * (dim // 2) features and feeds Linear(dim, ...)
            raise ConfigError(f"unet-dim must be even (sinusoidal time embedding), got {self.dim}")
        levels = len(self.dim_mults)
        if self.seq_len < 2 ** (levels - 1) or self.seq_len & (self.seq_len - 1):
            raise ConfigError(
                f"unet-seq-len must be a power of two >= 2**(levels-1) = {2 ** (levels - 1)}, got {self.seq_len}"
            )

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible dict."""
        d = asdict(self)
        d["dim_mults"] = list(self.dim_mults)
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelConfig:
        """Inverse of :meth:`to_dict`."""
        d = dict(data)
        d["dim_mults"] = tuple(d.get("dim_mults", (1, 2)))
        return cls(**d)


# building blocks


class ResnetBlock(nn.Module):
    """Two ``Conv1d → GroupNorm → SiLU`` layers with FiLM scale/shift from the time embedding."""

    def __init__(self, dim_in: int, dim_out: int, *, time_dim: int, groups: int) -> None:
        super().__init__()
        self.time_mlp = nn.Sequential(nn.SiLU(), nn.Linear(time_dim, dim_out * 2))
        self.conv1 = nn.Conv1d(dim_in, dim_out, 3, padding=1)
        self.norm1 = nn.GroupNorm(_groups(dim_out, groups), dim_out)
        self.conv2 = nn.Conv1d(dim_out, dim_out, 3, padding=1)
        self.norm2 = nn.GroupNorm(_groups(dim_out, groups), dim_out)
        self.act = nn.SiLU()
        self.res_conv = nn.Conv1d(dim_in, dim_out, 1) if dim_in != dim_out else nn.Identity()

    def forward(self, x: Tensor, t_emb: Tensor) -> Tensor:
        """Apply the block to ``x`` of shape `(batch, dim_in, length)`."""
        scale, shift = self.time_mlp(t_emb)[:, :, None].chunk(2, dim=1)
        h = self.norm1(self.conv1(x))
        h = self.act(h * (scale + 1.0) + shift)
        h = self.act(self.norm2(self.conv2(h)))
        return h + self.res_conv(x)


def downsample(dim_in: int, dim_out: int) -> nn.Module:
    """Halve the length: ``Conv1d(k=4, stride=2, padding=1)``."""
    return nn.Conv1d(dim_in, dim_out, 4, 2, 1)


def upsample(dim_in: int, dim_out: int) -> nn.Module:
    """Double the length: nearest ``Upsample`` then ``Conv1d(k=3)`` (Opacus-friendly, no ConvTranspose1d)."""
    return nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv1d(dim_in, dim_out, 3, padding=1))


# model


class TabularUNet1D(nn.Module):
    """Predicts the noise ``eps`` added to an encoded row at timestep ``t``.

    Args:
        config: the model's hyper-parameters.

    Example:
        >>> m = TabularUNet1D(ModelConfig(n_features=7))
        >>> m(torch.zeros(3, 7), torch.tensor([0, 10, 999])).shape
        torch.Size([3, 7])
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        dim, length, groups = config.dim, config.seq_len, config.groups
        time_dim = dim * 4
        self.time_mlp = nn.Sequential(nn.Linear(dim, time_dim), nn.SiLU(), nn.Linear(time_dim, time_dim))
        self.in_proj = nn.Linear(config.n_features, dim * length)
        self.init_conv = nn.Conv1d(dim, dim, 3, padding=1)

        dims = [dim, *(dim * m for m in config.dim_mults)]
        in_out = list(zip(dims[:-1], dims[1:]))
        self.downs = nn.ModuleList()
        for i, (d_in, d_out) in enumerate(in_out):
            last = i == len(in_out) - 1
            self.downs.append(
                nn.ModuleList(
                    [
                        ResnetBlock(d_in, d_in, time_dim=time_dim, groups=groups),
                        downsample(d_in, d_out) if not last else nn.Conv1d(d_in, d_out, 3, padding=1),
                    ]
                )
            )
        mid = dims[-1]
        self.mid1 = ResnetBlock(mid, mid, time_dim=time_dim, groups=groups)
        self.mid2 = ResnetBlock(mid, mid, time_dim=time_dim, groups=groups)
        self.ups = nn.ModuleList()
        for i, (d_in, d_out) in enumerate(reversed(in_out)):
            last = i == len(in_out) - 1
            self.ups.append(
                nn.ModuleList(
                    [
                        ResnetBlock(d_out + d_in, d_out, time_dim=time_dim, groups=groups),
                        upsample(d_out, d_in) if not last else nn.Conv1d(d_out, d_in, 3, padding=1),
                    ]
                )
            )
        self.final_block = ResnetBlock(dim * 2, dim, time_dim=time_dim, groups=groups)
        self.final_conv = nn.Conv1d(dim, dim, 1)
        self.out_proj = nn.Linear(dim * length, config.n_features)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        """Predict noise.

        Args:
            x (`Tensor` of shape `(batch, n_features)`): noisy encoded rows ``x_t``.
            t (`Tensor` of shape `(batch,)`): integer (or float) timesteps.

        Returns:
            `Tensor` of shape `(batch, n_features)`: predicted noise.
        """
        cfg = self.config
        t_emb = self.time_mlp(sinusoidal_embedding(t, cfg.dim))
        h = self.in_proj(x).view(x.shape[0], cfg.dim, cfg.seq_len)
        h = self.init_conv(h)
        r = h
        skips: list[Tensor] = []
        for block, down in self.downs:  # type: ignore[misc]
            h = block(h, t_emb)
            skips.append(h)
            h = down(h)
        h = self.mid2(self.mid1(h, t_emb), t_emb)
        for block, up in self.ups:  # type: ignore[misc]
            h = torch.cat((h, skips.pop()), dim=1)
            h = block(h, t_emb)
            h = up(h)
        h = self.final_block(torch.cat((h, r), dim=1), t_emb)
        h = self.final_conv(h)
        return self.out_proj(h.reshape(x.shape[0], cfg.dim * cfg.seq_len))
