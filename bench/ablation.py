"""Notebook 03's optimizations added one at a time: what each one buys, in the same training steps.

    python bench/ablation.py                      # 500 steps per row, 300 judged samples
    python bench/ablation.py --steps 100 --judged 64   # a quick look

Row 0 is 03's layout (channels 32, 64, 128; FashionMNIST 16×16) with every 03 piece switched back
to 02's: BatchNorm, ReLU, max-pooling, the time step fed as t/T, no residual block. Each later row
adds one 03 piece on top of the row above; the last row is exactly 03's ``OptimizedUNet``. Every
row trains from the same seed for the same number of optimiser steps with 03's adopted recipe
(bench/recipe.md row F: scaled-linear schedule, EMA with warm-up, lr 2e-3 with warm-up and cosine
decay, batches of 64), then samples the same 300 starting noises (DDIM-50, η = 1) for the
16×16 FashionMNIST judge. Reported: parameters, training images per second, the mean loss of
the last 100 steps, recognised share and Fréchet distance. Writes bench/ablation.md and
bench/ablation.json.
"""
from __future__ import annotations

import argparse
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from einops.layers.torch import Rearrange
from torch import nn

from course_lib import config, ddpm
from course_lib.blocks import (EmbedBlock, SinusoidalPositionEmbedBlock, UpBlock, conv_norm_act,
                               group_norm)
from course_lib.data import load_fashion_mnist, make_loader
from course_lib.metrics import real_quality, sample_quality
from course_lib.train import train, warmup_cosine
from course_lib.unets import Encoder, OptimizedUNet, count_parameters, dense_bottleneck
from report import write_report  # bench/report.py

HERE = Path(__file__).resolve().parent
ROWS = ["0. 02's pieces in 03's layout", "1. + GroupNorm instead of BatchNorm", "2. + GELU instead of ReLU",
        "3. + Rearrange pooling instead of max-pooling", "4. + sinusoidal time embedding instead of t/T",
        "5. + residual first block (= 03's OptimizedUNet)"]


@dataclass(frozen=True)
class Pieces:
    group_norm: bool = False
    gelu: bool = False
    rearrange: bool = False
    sinusoidal: bool = False
    residual: bool = False


class _Residual(nn.Module):
    def __init__(self, conv1: nn.Module, conv2: nn.Module):
        super().__init__()
        self.conv1, self.conv2 = conv1, conv2

    def forward(self, x):
        x1 = self.conv1(x)
        return x1 + self.conv2(x1)


class AblationUNet(Encoder):
    """03's OptimizedUNet with each of its pieces switchable back to 02's."""

    def __init__(self, p: Pieces, channels=(32, 64, 128), size: int = 16, T: int = 150):
        super().__init__()
        c0, c1, c2 = channels
        self.img_ch, self.size, self.T, self.p = 1, size, T, p
        norm = group_norm(8) if p.group_norm else nn.BatchNorm2d
        act = nn.GELU if p.gelu else nn.ReLU

        def unit(i, o):
            return nn.Sequential(*conv_norm_act(i, o, norm, act))

        def down(i, o):
            pool = ([Rearrange("b c (h p1) (w p2) -> b (c p1 p2) h w", p1=2, p2=2), unit(4 * o, o)]
                    if p.rearrange else [nn.MaxPool2d(2), unit(o, o)])
            return nn.Sequential(unit(i, o), unit(o, o), *pool)

        self.down0 = _Residual(unit(1, c0), unit(c0, c0)) if p.residual else nn.Sequential(
            unit(1, c0), unit(c0, c0))
        self.down1, self.down2 = down(c0, c1), down(c1, c2)
        self.bottleneck = dense_bottleneck(c2, c1, size // 4, act)
        self.up0 = unit(c2, c2)
        self.up1, self.up2 = UpBlock(c2, c1, norm, act), UpBlock(c1, c0, norm, act)
        self.out = nn.Sequential(nn.Conv2d(2 * c0, c0, 3, padding=1), norm(c0), nn.ReLU(),
                                 nn.Conv2d(c0, 1, 3, padding=1))
        t_dim = 32 if p.sinusoidal else 1
        self.sinusoidal = SinusoidalPositionEmbedBlock(32) if p.sinusoidal else None
        self.t_emb1, self.t_emb2 = EmbedBlock(t_dim, c2), EmbedBlock(t_dim, c1)

    def forward(self, x, t):
        down0, down1, down2, up0 = self.encode(x)
        t = self.sinusoidal(t) if self.sinusoidal else (t.float() / self.T).unsqueeze(1)
        up1 = self.up1(up0 + self.t_emb1(t), down2)
        up2 = self.up2(up1 + self.t_emb2(t), down1)
        return self.out(torch.cat((up2, down0), dim=1))


def pieces(row: int) -> Pieces:
    names = ("group_norm", "gelu", "rearrange", "sinusoidal", "residual")
    return Pieces(**{n: i < row for i, n in enumerate(names)})


def run(row: int, data, steps: int, judged: int) -> dict:
    config.seed_everything(0)
    schedule = ddpm.scaled_linear_schedule(150)
    model = AblationUNet(pieces(row))
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    scheduler = warmup_cosine(optimizer, steps, warmup_steps=steps // 20)
    start = time.perf_counter()
    history = train(model, make_loader(data, 64), lambda m, b: ddpm.diffusion_loss(m, b[0], schedule),
                    epochs=100, optimizer=optimizer, scheduler=scheduler, ema_decay=0.999,
                    max_steps=steps, desc=ROWS[row][:2])
    seconds = time.perf_counter() - start
    noise = torch.randn(judged, 1, 16, 16, generator=torch.Generator().manual_seed(5))
    samples = ddpm.sample_ddim(history.ema.module.eval(), noise, schedule, steps=50,
                               generator=torch.Generator().manual_seed(6))
    q = sample_quality(samples)
    return {"name": ROWS[row], "parameters": count_parameters(model),
            "images_per_s": round(steps * 64 / seconds), "loss_last_100": round(
                sum(history.losses[-100:]) / len(history.losses[-100:]), 4),
            "recognised": round(q.recognisable, 3), "frechet": round(q.frechet, 1)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--judged", type=int, default=300)
    args = parser.parse_args(argv)
    full = AblationUNet(pieces(len(ROWS) - 1))
    assert count_parameters(full) == count_parameters(OptimizedUNet(1, 16, (32, 64, 128), T=150)), \
        "the last row must be 03's OptimizedUNet"
    data = load_fashion_mnist(size=16, flip=True)
    real = real_quality("fashion_mnist", 16, n=args.judged)
    rows = []
    for row in range(len(ROWS)):
        rows.append(run(row, data, args.steps, args.judged))
        print(rows[-1], flush=True)
    lines = [f"03's optimizations one at a time (2 CPU cores, {platform.machine()}, torch "
             f"{torch.__version__}): {args.steps} steps of batch 64 each with recipe row F, "
             f"{args.judged} samples (DDIM-50, η = 1, same noise), 16×16 FashionMNIST judge. "
             f"Real 16×16 test images: {real.recognisable:.0%} recognised, Fréchet distance "
             f"{real.frechet:.1f}.", "",
             "| row | parameters | images/s | loss (last 100 steps) | recognised | Fréchet distance |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['name']} | {r['parameters']:,} | {r['images_per_s']} | {r['loss_last_100']:.4f} | "
              f"{r['recognised']:.0%} | {r['frechet']:.1f} |" for r in rows]
    write_report("ablation", lines, {
        "steps": args.steps, "judged": args.judged, "real_recognised": real.recognisable,
        "real_frechet": real.frechet, "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
