"""Sampler settings for notebook 03's fixed model: the same trained network, several ways to sample it.

    python bench/sampler_settings.py                 # 03's fixed model and recipe, 500 judged samples
    python bench/sampler_settings.py --judged 2000   # the stored table
    python bench/sampler_settings.py --judged 64     # a quick look

Trains 03's fixed model once, exactly as notebook 03 section 10 does (unmirrored FashionMNIST
16×16; channels 16, 32, 64, dense bottleneck 128; scaled-linear schedule, EMA 0.999 with warm-up, lr 2e-3 with warm-up and cosine
decay, batches of 64, 10 epochs), then draws the same starting noises with each setting below
and judges them with the 16×16 FashionMNIST judge: recognised share, Fréchet distance, smallest
and largest class share, and sampling seconds. Only the sampler changes between rows. Writes
bench/sampler_settings.md and bench/sampler_settings.json.
"""
from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path
from typing import Callable

import torch

from course_lib import config, ddpm
from course_lib.data import load_fashion_mnist, make_loader
from course_lib.metrics import real_quality
from course_lib.train import train, warmup_cosine
from course_lib.unets import OptimizedUNet
from report import judged_figures, write_report  # bench/report.py

HERE = Path(__file__).resolve().parent
EPOCHS = 10   # notebook 03's FIXED_EPOCHS
SETTINGS = {   # name -> sampler(model, noise, schedule, generator)
    "DDIM-50, η = 1 (03 as it is)": lambda m, x, s, g: ddpm.sample_ddim(m, x, s, steps=50, generator=g),
    "DDIM-50, η = 0.5": lambda m, x, s, g: ddpm.sample_ddim(m, x, s, steps=50, eta=0.5, generator=g),
    "DDIM-50, η = 0": lambda m, x, s, g: ddpm.sample_ddim(m, x, s, steps=50, eta=0.0, generator=g),
    "DDIM-25, η = 1": lambda m, x, s, g: ddpm.sample_ddim(m, x, s, steps=25, generator=g),
    "DDIM-100, η = 1": lambda m, x, s, g: ddpm.sample_ddim(m, x, s, steps=100, generator=g),
    "DDIM-50, η = 1, x̂₀ clipped to [-1, 1]": lambda m, x, s, g: ddpm.sample_ddim(
        m, x, s, steps=50, generator=g, clip_x0=True),
    "DDPM, all 150 steps": lambda m, x, s, g: ddpm.sample_ddpm(m, x, s, generator=g),
}


def train_fixed_model(data, also_averaged: Callable[[torch.nn.Module], None] | None = None,
                      seed: int = 0, epochs: int | None = None, channels: tuple[int, ...] = (16, 32, 64),
                      device: torch.device | str = "cpu", snapshot_epochs=()):
    """03's fixed model trained as notebook 03 section 10 does: (model, History, schedule, steps).

    ``also_averaged(model)``, if given, runs after every optimiser step (bench/ema_decay.py keeps
    more weight averages with it). ``seed``, ``epochs`` (default: ``EPOCHS``, read at call time)
    and ``channels`` change the training seed, its length and the widths; ``snapshot_epochs`` keeps early EMA copies (``train``'s, for
    bench/autoguidance.py).
    """
    epochs = epochs or EPOCHS
    config.seed_everything(seed)
    schedule = ddpm.scaled_linear_schedule(150).to(device)
    model = OptimizedUNet(1, 16, channels=tuple(channels), T=150, bottleneck=128)
    loader = make_loader(data, 64, seed=seed)
    steps = epochs * len(loader)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    if also_averaged is not None:
        optimizer.register_step_post_hook(lambda *_: also_averaged(model))
    scheduler = warmup_cosine(optimizer, steps, warmup_steps=steps // 20)
    history = train(model, loader, lambda m, b: ddpm.diffusion_loss(m, b[0], schedule),
                    epochs=epochs, optimizer=optimizer, scheduler=scheduler, ema_decay=0.999,
                    device=device, desc="03's fixed model", snapshot_epochs=snapshot_epochs)
    return model, history, schedule, steps


def command_line(doc: str, argv=None):
    """What the scripts on 03's fixed model start with: (args with --judged, FashionMNIST 16×16,
    the real test images' quality)."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--judged", type=int, default=500)
    args = parser.parse_args(argv)
    return (args, load_fashion_mnist(size=16, flip=False),   # unmirrored, as notebook 03 trains
            real_quality("fashion_mnist", 16, n=args.judged))


def main(argv=None) -> int:
    args, data, real = command_line(__doc__, argv)
    _, history, schedule, steps = train_fixed_model(data)
    ema = history.ema.module.eval()
    noise = torch.randn(args.judged, 1, 16, 16, generator=torch.Generator().manual_seed(5))
    rows = []
    for name, sample in SETTINGS.items():
        start = time.perf_counter()
        samples = sample(ema, noise, schedule, torch.Generator().manual_seed(6))
        seconds = time.perf_counter() - start
        rows.append({"name": name, **judged_figures(samples), "sampling_s": round(seconds, 1)})
        print(rows[-1], flush=True)
    lines = [f"Sampler settings for 03's fixed model (2 CPU cores, {platform.machine()}, torch "
             f"{torch.__version__}, speed kind \"{config.speed('cpu')}\"): 03's fixed model (channels 16, 32, 64, bottleneck 128) "
             f"trained as in notebook 03, on unmirrored images, for {steps} steps "
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
