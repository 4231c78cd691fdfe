"""The EMA decay of notebook 03's fixed model: one training run, several averages of its weights.

    python bench/ema_decay.py                 # 03's fixed model, 500 judged samples per row
    python bench/ema_decay.py --judged 64     # a quick look

Trains 03's fixed model once, exactly as notebook 03 section 10 does (bench/sampler_settings.py's
``train_fixed_model``), and keeps, besides the notebook's EMA (decay 0.999), more exponential
moving averages of the same weights after every optimiser step, each with the same warm-up
(``course_lib/train.py::ema_warmup_avg_fn``): θ̄ ← θ̄ + (1 − d_n)(θ − θ̄), d_n = min(d, (1+n)/(10+n)).
Every row samples the same 500 starting noises with 03's sampler (DDIM-50, η = 1) and is judged by
the 16×16 FashionMNIST judge. Only the average changes between rows, so their differences are the
decay's alone, without the spread of two training runs. Writes bench/ema_decay.md and .json.
"""
from __future__ import annotations

import platform

import torch
from torch.optim.swa_utils import AveragedModel

from course_lib import ddpm
from course_lib.train import ema_warmup_avg_fn
from report import judged_figures, write_report  # bench/report.py
from sampler_settings import command_line, train_fixed_model  # bench/sampler_settings.py

MORE_DECAYS = (0.998, 0.9995, 0.9998)


def main(argv=None) -> int:
    args, data, real = command_line(__doc__, argv)
    averages: dict[float, AveragedModel] = {}

    def also_averaged(model):
        if not averages:   # made at the first step; their first update copies the weights
            averages.update({d: AveragedModel(model, multi_avg_fn=ema_warmup_avg_fn(d))
                             for d in MORE_DECAYS})
        for average in averages.values():
            average.update_parameters(model)

    model, history, schedule, steps = train_fixed_model(data, also_averaged)
    candidates = {"no average (the last weights)": model,
                  "EMA 0.998": averages[0.998].module,
                  "EMA 0.999 (03 as it is)": history.ema.module,
                  "EMA 0.9995": averages[0.9995].module,
                  "EMA 0.9998": averages[0.9998].module}
    noise = torch.randn(args.judged, 1, 16, 16, generator=torch.Generator().manual_seed(5))
    rows = []
    for name, network in candidates.items():
        samples = ddpm.sample_ddim(network.eval(), noise, schedule, steps=50, eta=1.0,
                                   generator=torch.Generator().manual_seed(6))
        rows.append({"name": name, **judged_figures(samples)})
        print(rows[-1], flush=True)
    lines = [f"EMA decays for 03's fixed model (2 CPU cores, {platform.machine()}, torch "
             f"{torch.__version__}): one run of notebook 03's recipe, {steps} steps, averaged "
             f"five ways; the same {args.judged} starting noises, DDIM-50, η = 1, judged by the "
             f"16×16 FashionMNIST judge. Real 16×16 test images: {real.recognisable:.0%} "
             f"recognised, Fréchet distance {real.frechet:.1f}.", "",
             "| weights sampled | recognised | Fréchet distance | smallest class | largest class |",
             "|---|---|---|---|---|"]
    lines += [f"| {r['name']} | {r['recognised']:.0%} | {r['frechet']:.1f} | "
              f"{r['min_class_share']:.0%} | {r['max_class_share']:.0%} |" for r in rows]
    write_report("ema_decay", lines, {"steps": steps, "judged": args.judged,
                                      "real_recognised": real.recognisable,
                                      "real_frechet": real.frechet, "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
