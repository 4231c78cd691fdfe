"""The UNets of the course, each built from :mod:`course_lib.blocks`.

* :class:`UNet` (01): image -> image, no notion of time.
* :class:`TimeUNet` (02): the same network told the time step t through :class:`EmbedBlock`.
* :class:`OptimizedUNet` (03, and with ``c_dim`` 04-06): GroupNorm/GELU blocks, Rearrange
  pooling, sinusoidal time embedding, residual blocks, and optionally a context vector
  (one-hot class or CLIP embedding) that scales the decoder features: ``c·h + t``.

All share the layout: down0 (full size) -> down1 (1/2) -> down2 (1/4) -> dense bottleneck
-> up0 -> up1 (+skip down2) -> up2 (+skip down1) -> out (+skip down0 in 03).
"""
from __future__ import annotations

import torch
from einops.layers.torch import Rearrange
from torch import nn

from .blocks import (DownBlock, EmbedBlock, GELUConvBlock, GELUDownBlock, GELUUpBlock,
                     ResidualConvBlock, SelfAttentionBlock, SinusoidalPositionEmbedBlock, UpBlock,
                     conv_bn_relu)
from .config import evaluating


def check_images(x: torch.Tensor, channels: int, size: int) -> None:
    """Raise a clear error unless ``x`` is a batch (B, channels, size, size)."""
    if x.ndim != 4 or x.shape[1] != channels or x.shape[-2:] != (size, size):
        raise ValueError(f"expected images of shape (B, {channels}, {size}, {size}), got "
                         f"{tuple(x.shape)}; build the model with the image size and channels "
                         "of your data.")


def check_timesteps(t: torch.Tensor, batch: int, T: int) -> None:
    """Raise a clear error unless ``t`` holds ``batch`` integer steps in [0, T)."""
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"t must be a tensor of {batch} integer steps, got {type(t).__name__} "
                         f"{t!r}: for one step for the whole batch, pass "
                         f"torch.full(({batch},), t)")
    if t.shape != (batch,) or t.dtype.is_floating_point:
        raise ValueError(f"t must be an integer tensor of shape ({batch},), got {t.dtype} "
                         f"{tuple(t.shape)}")
    if t.min() < 0 or t.max() >= T:
        raise ValueError(f"t must lie in [0, {T - 1}] (T={T}), got values in "
                         f"[{t.min().item()}, {t.max().item()}]")


def _check_size(size: int) -> None:
    if size % 4:
        raise ValueError(f"image size {size} must be divisible by 4 (the UNet halves it twice)")


def dense_bottleneck(ch: int, hidden: int, side: int, act: type[nn.Module]) -> nn.Sequential:
    """Flatten (B, ch, side, side) -> 3 Linear layers -> Unflatten back: every pixel sees every other.

    ``act`` is the activation after the flattening and after each Linear layer.
    """
    flat = ch * side * side
    return nn.Sequential(nn.Flatten(), act(), nn.Linear(flat, hidden), act(),
                         nn.Linear(hidden, hidden), act(), nn.Linear(hidden, flat), act(),
                         nn.Unflatten(1, (ch, side, side)))


class Encoder(nn.Module):
    """The shared first half of every course UNet: down0 -> down1 -> down2 -> bottleneck -> up0.

    Subclasses build the five modules; :meth:`encode` runs them and returns the three skips
    and the decoder's first features.
    """

    def encode(self, x: torch.Tensor):
        check_images(x, self.img_ch, self.size)
        down0 = self.down0(x)
        down1 = self.down1(down0)
        down2 = self.down2(down1)
        return down0, down1, down2, self.up0(self.bottleneck(down2))


class UNet(Encoder):
    """01's plain UNet: denoise an image in one pass (no time input)."""

    # train() uses NHWC on a CPU: ~15-30% faster for BatchNorm/ReLU nets (bench/throughput.py)
    memory_format = torch.channels_last

    def __init__(self, img_ch: int = 1, size: int = 16, channels=(16, 32, 64)):
        super().__init__()
        _check_size(size)
        c0, c1, c2 = channels
        self.img_ch, self.size = img_ch, size
        self.down0 = nn.Sequential(*conv_bn_relu(img_ch, c0))
        self.down1 = DownBlock(c0, c1)
        self.down2 = DownBlock(c1, c2)
        self.bottleneck = dense_bottleneck(c2, c1, size // 4, nn.ReLU)
        self.up0 = nn.Sequential(*conv_bn_relu(c2, c2))
        self.up1 = UpBlock(c2, c1)
        self.up2 = UpBlock(c1, c0)
        self.out = nn.Sequential(*conv_bn_relu(c0, c0), nn.Conv2d(c0, img_ch, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, down1, down2, up0 = self.encode(x)
        up1 = self.up1(up0, down2)
        up2 = self.up2(up1, down1)
        return self.out(up2)


class TimeUNet(UNet):
    """02's UNet: 01's network plus t/T embedded and added to the decoder features."""

    def __init__(self, img_ch: int = 1, size: int = 16, channels=(16, 32, 64), T: int = 150):
        super().__init__(img_ch, size, channels)
        self.T = T
        self.t_emb1 = EmbedBlock(1, channels[2])
        self.t_emb2 = EmbedBlock(1, channels[1])

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        check_timesteps(t, len(x), self.T)
        t = (t.float() / self.T).unsqueeze(1)
        _, down1, down2, up0 = self.encode(x)
        up1 = self.up1(up0 + self.t_emb1(t), down2)
        up2 = self.up2(up1 + self.t_emb2(t), down1)
        return self.out(up2)


class OptimizedUNet(Encoder):
    """03's UNet; with ``c_dim`` it also takes a context c (04-06): up = c_emb·h + t_emb.

    ``max_period`` is P in the sinusoidal embedding's slowest frequency 1/P (a period of 2π·P
    steps; P = 10,000 as in transformers, P = T suits T steps, see notebook 03).
    ``forward(x, t, c=None, c_mask=None)``: c is (B, c_dim) (one-hot class or CLIP
    embedding); c_mask (B, 1) is 1 to keep the context and 0 to drop it. A missing c
    means "no context", the same as a mask of 0.
    ``bottleneck`` is the width of the dense bottleneck's hidden layers (default: channels[1]).
    ``attention=True`` puts a :class:`SelfAttentionBlock` on the lowest level (size/4), before
    the dense bottleneck.
    ``patch=2`` first moves each 2×2 patch of pixels into channels (the Rearrange of 03's
    pooling; the "patchify" of DiT, Peebles & Xie 2023) and moves them back at the end: the whole
    UNet then runs at size/patch, for a fraction of the cost per step (measured for 04's flowers
    and not adopted: bench/RESULTS.md, section 13).
    """

    def __init__(self, img_ch: int = 1, size: int = 16, channels=(32, 64, 128), T: int = 150,
                 groups: int = 8, t_dim: int = 32, c_dim: int | None = None,
                 max_period: float = 10000.0, bottleneck: int | None = None,
                 attention: bool = False, patch: int = 1):
        super().__init__()
        if patch < 1 or size % patch:
            raise ValueError(f"patch must be a whole divisor of the image size {size}, got {patch}")
        if patch == 1:
            _check_size(size)
        elif size % (4 * patch):
            raise ValueError(f"image size {size} must be divisible by {4 * patch} (patches of "
                             f"{patch}, then the UNet halves the size twice)")
        c0, c1, c2 = channels
        self.img_ch, self.size, self.T, self.c_dim = img_ch, size, T, c_dim
        self.down0 = ResidualConvBlock(img_ch * patch * patch, c0, groups)
        self.down1 = GELUDownBlock(c0, c1, groups)
        self.down2 = GELUDownBlock(c1, c2, groups)
        self.bottleneck = dense_bottleneck(c2, bottleneck or c1, size // patch // 4, nn.GELU)
        if attention:
            self.bottleneck = nn.Sequential(SelfAttentionBlock(c2, groups=groups), self.bottleneck)
        self.up0 = GELUConvBlock(c2, c2, groups)
        self.up1 = GELUUpBlock(c2, c1, groups)
        self.up2 = GELUUpBlock(c1, c0, groups)
        self.out = nn.Sequential(nn.Conv2d(2 * c0, c0, 3, padding=1), nn.GroupNorm(groups, c0),
                                 nn.ReLU(), nn.Conv2d(c0, img_ch * patch * patch, 3, padding=1))
        if patch > 1:   # pixels -> patches before down0, patches -> pixels after out
            self.down0 = nn.Sequential(
                Rearrange("b c (h p1) (w p2) -> b (c p1 p2) h w", p1=patch, p2=patch), self.down0)
            self.out.append(Rearrange("b (c p1 p2) h w -> b c (h p1) (w p2)", p1=patch, p2=patch))
        self.sinusoidal = SinusoidalPositionEmbedBlock(t_dim, max_period)
        self.t_emb1 = EmbedBlock(t_dim, c2)
        self.t_emb2 = EmbedBlock(t_dim, c1)
        if c_dim is not None:
            self.c_emb1 = EmbedBlock(c_dim, c2)
            self.c_emb2 = EmbedBlock(c_dim, c1)

    def forward(self, x: torch.Tensor, t: torch.Tensor, c: torch.Tensor | None = None,
                c_mask: torch.Tensor | None = None) -> torch.Tensor:
        check_timesteps(t, len(x), self.T)
        down0, down1, down2, up0 = self.encode(x)
        t = self.sinusoidal(t)
        scale1 = scale2 = 1.0
        if self.c_dim is not None:
            c = self.context(c, c_mask, x)
            scale1, scale2 = self.c_emb1(c), self.c_emb2(c)
        elif c is not None:
            raise ValueError("this UNet was built without a context; pass c_dim=... to use c")
        up1 = self.up1(scale1 * up0 + self.t_emb1(t), down2)
        up2 = self.up2(scale2 * up1 + self.t_emb2(t), down1)
        return self.out(torch.cat((up2, down0), dim=1))

    def context(self, c, c_mask, like: torch.Tensor) -> torch.Tensor:
        """The context actually seen for the batch ``like``: c·mask, zeros when c is None."""
        batch = len(like)
        if c is None:
            return like.new_zeros(batch, self.c_dim)
        if c.shape != (batch, self.c_dim):
            raise ValueError(f"context c must have shape ({batch}, {self.c_dim}), got "
                             f"{tuple(c.shape)}")
        c = c.float()
        if c_mask is not None:
            c = c * c_mask.reshape(batch, 1).to(c.device, c.dtype)
        return c


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def layer_shapes(model: nn.Module, *inputs) -> list[tuple[str, tuple, int]]:
    """(name, output shape, parameters) of each top-level child, in the order they run (the
    probe runs in eval mode, so a BatchNorm's running statistics never see it)."""
    rows, hooks = [], []
    for name, child in model.named_children():
        def hook(mod, args, out, name=name):
            rows.append((name, tuple(out.shape), count_parameters(mod)))
        hooks.append(child.register_forward_hook(hook))
    try:
        with torch.no_grad(), evaluating(model):
            model(*inputs)
    finally:
        for h in hooks:
            h.remove()
    return rows
