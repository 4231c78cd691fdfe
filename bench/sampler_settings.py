"""Sampler settings for notebook 03's fixed model: the same trained network, four ways to sample it.

    python bench/sampler_settings.py                 # row F's recipe and steps, 500 judged samples
    python bench/sampler_settings.py --judged 64     # a quick look

Trains 03's OptimizedUNet once with recipe row F of bench/recipe.md (scaled-linear schedule, EMA
with warm-up, lr 2e-3 with warm-up and cosine decay, batches of 64) for the number of optimiser
steps that row took, then draws the same 500 starting noises with each setting below and judges
them with the 16×16 FashionMNIST judge: recognised share, Fréchet distance, smallest and largest
class share, and sampling seconds. Only the sampler changes between rows. Writes
bench/sampler_settings.md and bench/sampler_settings.json.
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from course_lib import config, ddpm
from course_lib.data import load_fashion_mnist, make_loader
from course_lib.metrics import class_shares, real_quality, sample_quality
from course_lib.train import train, warmup_cosine
from course_lib.unets import OptimizedUNet
from report import write_report  # bench/report.py

HERE = Path(__file__).resolve().parent
SETTINGS = {   # name -> sampler(model, noise, schedule, generator)
    "DDIM-50, η = 1 (03 as it is)": lambda m, x, s, g: ddpm.sample_ddim(m, x, s, steps=50, generator=g),
    "DDIM-50, η = 1, x̂₀ clipped to [-1, 1]": lambda m, x, s, g: ddpm.sample_ddim(
        m, x, s, steps=50, generator=g, clip_x0=True),
    "DDPM, all 150 steps": lambda m, x, s, g: ddpm.sample_ddpm(m, x, s, generator=g),
    "DDPM, all 150 steps, x̂₀ clipped to [-1, 1]": lambda m, x, s, g: ddpm.sample_ddpm(
        m, x, s, generator=g, clip_x0=True),
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--judged", type=int, default=500)
    args = parser.parse_args(argv)
    row_f = next(r for r in json.loads((HERE / "recipe.json").read_text())["rows"]
                 if r["name"].startswith("F."))
    data = load_fashion_mnist(size=16, flip=True)
    real = real_quality("fashion_mnist", 16, n=args.judged)
    config.seed_everything(0)
    schedule = ddpm.scaled_linear_schedule(150)
    model = OptimizedUNet(1, 16, channels=(32, 64, 128), T=150)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    steps = row_f["steps"]
    scheduler = warmup_cosine(optimizer, steps, warmup_steps=steps // 20)
    history = train(model, make_loader(data, 64), lambda m, b: ddpm.diffusion_loss(m, b[0], schedule),
                    epochs=100, optimizer=optimizer, scheduler=scheduler, ema_decay=0.999,
                    max_steps=steps, desc="row F")
    ema = history.ema.module.eval()
    noise = torch.randn(args.judged, 1, 16, 16, generator=torch.Generator().manual_seed(5))
    rows = []
    for name, sample in SETTINGS.items():
        start = time.perf_counter()
        samples = sample(ema, noise, schedule, torch.Generator().manual_seed(6))
        seconds = time.perf_counter() - start
        q, shares = sample_quality(samples), class_shares(samples)
        rows.append({"name": name, "recognised": round(q.recognisable, 3),
                     "frechet": round(q.frechet, 1), "min_class_share": round(shares.min().item(), 3),
                     "max_class_share": round(shares.max().item(), 3),
                     "sampling_s": round(seconds, 1)})
        print(rows[-1], flush=True)
    lines = [f"Sampler settings for 03's fixed model (2 CPU cores, {platform.machine()}, torch "
             f"{torch.__version__}): one OptimizedUNet trained with recipe row F for {steps} steps "
             f"(final loss {history.final_loss:.4f}), the same {args.judged} starting noises, judged by "
             f"the 16×16 FashionMNIST judge. Real 16×16 test images: {real.recognisable:.0%} "
             f"recognised, Fréchet distance {real.frechet:.1f}.", "",
             "| sampler | recognised | Fréchet distance | smallest class | largest class | seconds |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['name']} | {r['recognised']:.0%} | {r['frechet']:.1f} | "
              f"{r['min_class_share']:.0%} | {r['max_class_share']:.0%} | {r['sampling_s']:.0f} |"
              for r in rows]
    write_report("sampler_settings", lines, {
        "steps": steps, "judged": args.judged, "real_recognised": real.recognisable,
        "real_frechet": real.frechet, "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
