"""Notebook 03's last choices, measured on 2,000 samples: the EMA decay, clipping x̂₀, and flips.

    python bench/nb03_choices.py                  # 03's fixed model as it is, 2,000 judged samples
    python bench/nb03_choices.py --no-flip --append   # the same, trained without mirrored images
    python bench/nb03_choices.py --judged 64      # a quick look

Rows of bench/ema_decay.py and bench/sampler_settings.py were judged on 500 samples, where one
garment in a hundred is within the spread (±2 points of "recognised"). This script trains 03's
fixed model once, exactly as notebook 03 section 10 does (``train_fixed_model``), keeps an EMA of
decay 0.998 beside the notebook's 0.999, and samples the same 2,000 starting noises four ways:
each average, with and without x̂₀ clipped to [-1, 1] (DDIM-50, η = 1). Rows of one training run
differ only in the weights averaged or in the sampler, on the same noise, so their differences are
paired and much smaller than the spread of two training runs. ``--no-flip`` trains on FashionMNIST
as it is, without random mirroring (every shoe points left in the data). Writes
bench/nb03_choices.md and .json.
"""
from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import torch
from torch.optim.swa_utils import AveragedModel

from course_lib import ddpm
from course_lib.data import load_fashion_mnist
from course_lib.metrics import real_quality
from course_lib.train import ema_warmup_avg_fn
from report import judged_figures, write_report  # bench/report.py
from sampler_settings import train_fixed_model  # bench/sampler_settings.py

HERE = Path(__file__).resolve().parent


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--judged", type=int, default=2000)
    parser.add_argument("--no-flip", action="store_true", help="train without random mirroring")
    parser.add_argument("--append", action="store_true",
                        help="add these rows to bench/nb03_choices.json instead of replacing it")
    args = parser.parse_args(argv)
    training = "no flips" if args.no_flip else "flips (03 as it is)"
    data = load_fashion_mnist(size=16, flip=not args.no_flip)
    real = real_quality("fashion_mnist", 16, n=args.judged)
    average: list[AveragedModel] = []

    def also_averaged(model):
        if not average:
            average.append(AveragedModel(model, multi_avg_fn=ema_warmup_avg_fn(0.998)))
        average[0].update_parameters(model)

    _, history, schedule, steps = train_fixed_model(data, also_averaged)
    noise = torch.randn(args.judged, 1, 16, 16, generator=torch.Generator().manual_seed(7))
    done = json.loads((HERE / "nb03_choices.json").read_text())["rows"] if args.append else []
    rows = [r for r in done if r["training"] != training]
    for decay, network in ((0.999, history.ema.module), (0.998, average[0].module)):
        for clip in (False, True):
            samples = ddpm.sample_ddim(network.eval(), noise, schedule, steps=50, eta=1.0,
                                       generator=torch.Generator().manual_seed(8), clip_x0=clip)
            rows.append({"training": training, "ema": decay, "clip_x0": clip, "steps": steps,
                         "final_loss": round(history.final_loss, 4), **judged_figures(samples)})
            print(rows[-1], flush=True)
    lines = [f"Notebook 03's last choices (2 CPU cores, {platform.machine()}, torch "
             f"{torch.__version__}): 03's fixed model trained as in notebook 03 (10 epochs of "
             f"batch 64), {args.judged} starting noises per row, the same in every row, DDIM-50, "
             f"η = 1, judged by the 16×16 FashionMNIST judge. Real 16×16 test images: "
             f"{real.recognisable:.1%} recognised, Fréchet distance {real.frechet:.1f}.", "",
             "| training | EMA | x̂₀ clipped | recognised | Fréchet distance | smallest class "
             "| largest class |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['training']} | {r['ema']} | {'yes' if r['clip_x0'] else 'no'} | "
              f"{r['recognised']:.1%} | {r['frechet']:.1f} | {r['min_class_share']:.1%} | "
              f"{r['max_class_share']:.1%} |" for r in rows]
    write_report("nb03_choices", lines, {"judged": args.judged,
                                         "real_recognised": real.recognisable,
                                         "real_frechet": real.frechet, "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
