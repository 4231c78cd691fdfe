"""The small ``nn.Module`` pieces the UNets of the course are built from.

01 uses :class:`DownBlock` and :class:`UpBlock` (Conv-BatchNorm-ReLU, max-pooling,
transposed convolution). 02 adds :class:`EmbedBlock` to feed a number (the time
step, later a class) into the network. 03 replaces the pieces one by one:
:class:`GELUConvBlock` (GroupNorm + GELU), :class:`RearrangePoolBlock` (lossless
space-to-depth instead of max-pooling), :class:`SinusoidalPositionEmbedBlock`,
:class:`ResidualConvBlock`, and :class:`GELUDownBlock` / :class:`GELUUpBlock`;
:class:`SelfAttentionBlock` is an option its recipe bench measured.
"""
from __future__ import annotations

import math
from functools import partial
from typing import Callable

import torch
from einops import rearrange
from einops.layers.torch import Rearrange
from torch import nn


Norm = Callable[[int], nn.Module]   # channels -> normalisation layer, e.g. nn.BatchNorm2d


def conv_norm_act(in_ch: int, out_ch: int, norm: Norm = nn.BatchNorm2d,
                  act: type[nn.Module] = nn.ReLU) -> list[nn.Module]:
    """3x3 convolution (same size), a normalisation, an activation."""
    return [nn.Conv2d(in_ch, out_ch, 3, padding=1), norm(out_ch), act()]


def conv_bn_relu(in_ch: int, out_ch: int) -> list[nn.Module]:
    """3x3 convolution (same size), BatchNorm, ReLU: the unit 01 stacks everywhere."""
    return conv_norm_act(in_ch, out_ch)


def group_norm(groups: int) -> Norm:
    """GroupNorm with ``groups`` groups, as a ``channels -> layer`` factory."""
    return partial(nn.GroupNorm, groups)


class DownBlock(nn.Sequential):
    """(Conv-BN-ReLU) x2 then MaxPool: doubles the features' depth, halves height and width."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__(*conv_bn_relu(in_ch, out_ch), *conv_bn_relu(out_ch, out_ch),
                         nn.MaxPool2d(2))


class UpBlock(nn.Module):
    """Concatenate the skip connection, ConvTranspose (x2 size), then (Conv-norm-act) x2.

    01 uses BatchNorm and ReLU (the defaults); 03's :class:`GELUUpBlock` is the same block with
    GroupNorm and GELU.
    """

    def __init__(self, in_ch: int, out_ch: int, norm: Norm = nn.BatchNorm2d,
                 act: type[nn.Module] = nn.ReLU):
        super().__init__()
        self.model = nn.Sequential(
            nn.ConvTranspose2d(2 * in_ch, out_ch, kernel_size=2, stride=2), norm(out_ch), act(),
            *conv_norm_act(out_ch, out_ch, norm, act), *conv_norm_act(out_ch, out_ch, norm, act),
        )

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        if x.shape != skip.shape:
            if x.shape[0] != skip.shape[0]:
                why = "batch size: both must be computed from the same batch"
            else:
                why = ("channels" if x.shape[1] != skip.shape[1] else "height and width") + \
                    ": the skip must come from the down block of the same level (up1 with down2, " \
                    "up2 with down1)"
            raise ValueError(f"UpBlock: input {tuple(x.shape)} and skip {tuple(skip.shape)} differ "
                             f"in {why}, so they cannot be concatenated")
        return self.model(torch.cat((x, skip), dim=1))


class EmbedBlock(nn.Sequential):
    """Vector (B, in_dim) -> (B, emb_dim, 1, 1): Linear-GELU-Linear, shaped to broadcast over pixels."""

    def __init__(self, in_dim: int, emb_dim: int):
        super().__init__(nn.Linear(in_dim, emb_dim), nn.GELU(), nn.Linear(emb_dim, emb_dim),
                         nn.Unflatten(1, (emb_dim, 1, 1)))


class GELUConvBlock(nn.Sequential):
    """3x3 convolution, GroupNorm (``groups`` groups), GELU."""

    def __init__(self, in_ch: int, out_ch: int, groups: int = 8):
        if out_ch % groups:
            raise ValueError(f"GroupNorm needs out_ch ({out_ch}) divisible by groups ({groups})")
        super().__init__(*conv_norm_act(in_ch, out_ch, group_norm(groups), nn.GELU))


class RearrangePoolBlock(nn.Sequential):
    """Halve H and W by moving each 2x2 patch into channels (nothing is lost), then a GELU conv."""

    def __init__(self, in_ch: int, out_ch: int, groups: int = 8):
        super().__init__(Rearrange("b c (h p1) (w p2) -> b (c p1 p2) h w", p1=2, p2=2),
                         GELUConvBlock(4 * in_ch, out_ch, groups))


class ResidualConvBlock(nn.Module):
    """Two GELU conv blocks with a residual sum: y = f1(x) + f2(f1(x))."""

    def __init__(self, in_ch: int, out_ch: int, groups: int = 8):
        super().__init__()
        self.conv1 = GELUConvBlock(in_ch, out_ch, groups)
        self.conv2 = GELUConvBlock(out_ch, out_ch, groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.conv1(x)
        return x1 + self.conv2(x1)


class GELUDownBlock(nn.Sequential):
    """03's down block: two GELU conv blocks, then Rearrange pooling."""

    def __init__(self, in_ch: int, out_ch: int, groups: int = 8):
        super().__init__(GELUConvBlock(in_ch, out_ch, groups), GELUConvBlock(out_ch, out_ch, groups),
                         RearrangePoolBlock(out_ch, out_ch, groups))


class GELUUpBlock(UpBlock):
    """03's up block: concatenate skip, ConvTranspose k2 s2 (no checkerboard overlap), GroupNorm, GELU."""

    def __init__(self, in_ch: int, out_ch: int, groups: int = 8):
        if out_ch % groups:
            raise ValueError(f"GroupNorm needs out_ch ({out_ch}) divisible by groups ({groups})")
        super().__init__(in_ch, out_ch, norm=group_norm(groups), act=nn.GELU)


class SinusoidalPositionEmbedBlock(nn.Module):
    """Sinusoidal embedding of t as DDPM builds it (Ho et al. 2020's ``get_timestep_embedding``,
    after the Transformer's position encoding, Vaswani et al. 2017, sec. 3.5):
    [sin(t·w_k), cos(t·w_k)], the sines and cosines concatenated rather than interleaved.

    Frequencies w_k = 10000^(-k/(d/2-1)), k = 0..d/2-1: periods from 2π steps to 2π·10⁴
    steps, so nearby t get similar vectors and distant t different ones.
    """

    def __init__(self, dim: int, max_period: float = 10000.0):
        super().__init__()
        if dim % 2 or dim < 4:
            raise ValueError(f"embedding dim must be even and >= 4, got {dim}")
        half = dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half) / (half - 1))
        self.register_buffer("freqs", freqs, persistent=False)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        angles = t.float().reshape(-1, 1) * self.freqs
        return torch.cat((angles.sin(), angles.cos()), dim=-1)


class SelfAttentionBlock(nn.Module):
    """Self-attention over the pixels of a feature map, with a residual: x + Attn(GroupNorm(x)).

    Each of the H·W positions is a token of ``ch`` features (``nn.MultiheadAttention``, ``heads``
    heads), as at the 16×16 level of DDPM's UNet (Ho et al. 2020, appendix B); the course's
    UNets put it at their lowest level (a quarter of the image size).
    """

    def __init__(self, ch: int, heads: int = 4, groups: int = 8):
        super().__init__()
        self.norm = nn.GroupNorm(groups, ch)
        self.to_tokens = Rearrange("b c h w -> b (h w) c")
        self.attention = nn.MultiheadAttention(ch, heads, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.to_tokens(self.norm(x))
        out, _ = self.attention(tokens, tokens, tokens, need_weights=False)
        return x + rearrange(out, "b (h w) c -> b c h w", h=x.shape[-2])
