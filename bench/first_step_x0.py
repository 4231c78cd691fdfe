"""What a flower network's first sampling step sees: x̂₀ at t = T − 1, for ε- and v-prediction.

    python bench/first_step_x0.py     # after bench/flower_channels.py --run x30cpu_s0 x30v_s0

Loads the two networks that ``bench/flower_sampler.py`` trained and saved for the fifteenth
session's runs (row X's network, 30 epochs, training seed 0; ε-prediction and v-prediction), feeds
both the same 300 starting noises (100 per species) at t = 149, where the cosine schedule's ᾱ_t is
about 1e-7, and reports the share of the estimate x̂₀ = (x_t − √(1−ᾱ_t)·ε̂)/√ᾱ_t that lies outside
[-1, 1], the range the sampler clips to, and its mean |x̂₀|. Writes bench/first_step_x0.md and .json.
"""
from __future__ import annotations

import torch

from course_lib import ddpm
from course_lib.conditioning import one_hot
from flower_recipe import FlowerRecipe, network  # bench/flower_recipe.py
from flower_sampler import HERE  # bench/flower_sampler.py
from report import write_report  # bench/report.py

MODELS = {"ε": "model_30_b64_c24-48-96_s0.pt", "v": "model_30_b64_c24-48-96_s0_v.pt"}


def main() -> int:
    schedule = ddpm.cosine_schedule(150)
    t = schedule.T - 1
    ab = schedule.alpha_bars[t]
    x = torch.randn(300, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    c = one_hot(torch.arange(3).repeat_interleave(100), 3)
    rows = []
    for prediction, file in MODELS.items():
        model = network(FlowerRecipe(prediction, channels=(24, 48, 96)))
        saved = HERE / "out" / "flower_sampler" / file
        model.load_state_dict(torch.load(saved, weights_only=True)["weights"])
        denoiser = ddpm.VDenoiser(model.eval(), schedule) if prediction == "v" else model.eval()
        with torch.no_grad():
            eps = denoiser(x, torch.full((len(x),), t), c=c)
        x0 = (x - (1 - ab).sqrt() * eps) / ab.sqrt()
        rows.append({"prediction": prediction, "outside": round((x0.abs() > 1).float().mean().item(), 4),
                     "mean_abs": round(x0.abs().mean().item(), 2)})
    lines = [f"The first sampling step of 04's flower network (row X, 30 epochs, seed 0): x̂₀ at "
             f"t = {t} (ᾱ_t = {ab:.1e}) from 300 starting noises.", "",
             "| network predicts | x̂₀ outside [-1, 1] | mean \\|x̂₀\\| |", "|---|---|---|"]
    lines += [f"| {r['prediction']} | {r['outside']:.1%} | {r['mean_abs']:.2f} |" for r in rows]
    write_report("first_step_x0", lines, {"t": t, "alpha_bar": ab.item(), "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
