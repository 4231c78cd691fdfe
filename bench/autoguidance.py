"""Guiding a model by an early snapshot of itself: 03's unconditional samples and 04's flowers.

    python bench/autoguidance.py                          # the tables, from the stored runs
    python bench/autoguidance.py --run 03 --seed 0        # train 03's fixed recipe, sample, store
    python bench/autoguidance.py --run flowers --seed 1   # the same for 04's flower model
    python bench/autoguidance.py --run 03 --epochs 8      # 03's recipe cut to 8 epochs
    python bench/autoguidance.py --run flowers --only 0,1,7,10   # four of the flower samplers

Autoguidance (Karras et al. 2024) samples with eps_bad + w·(eps_good − eps_bad): the good model
is the EMA at the end of training, the bad one the EMA as it was after an early epoch of the same
run (``train(..., snapshot_epochs=...)``), so training costs nothing more; sampling costs two
forward passes per step. For 04's class-conditional flowers the early snapshot can also give the
*unconditional* prediction of classifier-free guidance (``CFGDenoiser(uncond=...)``); that is the
"CFG, unconditional from epoch e" row. Each ``--run`` trains one model exactly as its notebook
does (03: section 10's recipe; 04: section 6's row X, 30 epochs), then draws the same starting
noises with every setting: 2000 for 03, judged by the 16×16 FashionMNIST judge (recognised =
judge confidence ≥ 0.9); 300 per species for the flowers, judged by the 32×32 flower judge. The
run is stored in bench/autoguidance_runs.json (one entry per model; a re-run replaces its entry);
without ``--run`` the script writes bench/autoguidance.md and .json from the stored runs, one
table per notebook with each setting's mean over the seeds and every seed's figure.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

from report import device_name, write_report  # bench/report.py

HERE = Path(__file__).resolve().parent
RUNS = HERE / "autoguidance_runs.json"
N_03 = 2000            # 03's starting noises per run
PER_SPECIES = 300      # flower starting noises per species per run


def settings_03(epochs: int) -> list[tuple[str, int | None, float | None, int]]:
    """(name, snapshot epoch or None, w, DDIM steps); epoch 0 means the last weights, no EMA."""
    plain = [("DDIM-50, η = 1 (03 until now)", None, None, 50), ("DDIM-100, η = 1", None, None, 100),
             ("DDIM-50, η = 1, the last weights (no EMA)", 0, None, 50)]
    early = sorted(e for e in {1, 2, 3, epochs // 2} if 1 <= e < epochs)   # copies before the end
    return plain + [(f"autoguided by epoch {e}, w = {w:g}", e, w, 50)
                    for e in early for w in (1.5, 2.0, 2.5, 3.0)]


SETTINGS_FLOWERS = [("CFG w = 2 (04 until now)", None, "cfg", 2.0), ("CFG w = 3", None, "cfg", 3.0)] + [
    row for e in (5, 10, 15) for row in (
        (f"autoguided by epoch {e}, w = 2 (no CFG)", e, "auto", 2.0),
        (f"autoguided by epoch {e}, w = 3 (no CFG)", e, "auto", 3.0),
        (f"CFG w = 2, unconditional from epoch {e}", e, "uncond", 2.0))]


def run_03(seed: int, epochs: int, channels: tuple[int, ...] = (16, 32, 64)) -> dict:
    """03's section 10 recipe (``sampler_settings.train_fixed_model``), one seed, with snapshots."""
    import torch
    from course_lib import config
    from course_lib.data import load_fashion_mnist
    from course_lib.ddpm import AutoGuidance, sample_ddim
    from report import judged_figures
    from sampler_settings import train_fixed_model  # bench/sampler_settings.py
    device = config.get_device(verbose=True)
    start = time.perf_counter()
    model, history, schedule, _ = train_fixed_model(
        load_fashion_mnist(size=16, flip=False), seed=seed, epochs=epochs, channels=channels,
        device=device, snapshot_epochs={e for _, e, _, _ in settings_03(epochs) if e})
    seconds = time.perf_counter() - start
    good = history.ema.module.eval()
    noise = torch.randn(N_03, 1, 16, 16, generator=torch.Generator().manual_seed(1000)).to(device)
    rows = []
    for name, epoch, w, steps in settings_03(epochs):
        if epoch is None:
            denoiser = good
        elif epoch == 0:
            denoiser = model.eval()
        else:
            denoiser = AutoGuidance(good, history.snapshots[epoch], w)
        samples = sample_ddim(denoiser, noise, schedule, steps=steps,
                              generator=torch.Generator().manual_seed(4)).cpu()
        rows.append({"name": name, **judged_figures(samples)})
        print(rows[-1], flush=True)
    return {"notebook": "03", "seed": seed, "epochs": epochs, "channels": list(channels),
            "steps": len(history.losses), "train_seconds": round(seconds, 1),
            "device": device_name(), "rows": rows}


def run_flowers(seed: int, epochs: int, only: list[int] | None = None) -> dict:
    """04's section 6 flower model (row X: channels 24, 48, 96, cosine T = 150, batches of 64,
    lr 2e-3, EMA 0.995, context dropped 10%), one seed, with snapshots."""
    import torch
    from course_lib import config, ddpm
    from course_lib.conditioning import one_hot
    from course_lib.data import FLOWER_CLASSES
    from course_lib.metrics import sample_quality
    from flower_recipe import SPECIES, FlowerRecipe, train_by_epochs  # bench/flower_recipe.py
    from report import SCHEDULES
    recipe = dataclasses.replace(FlowerRecipe("04 as it is"), batch=64, channels=(24, 48, 96), seed=seed)
    device = config.get_device(verbose=True)
    schedule = SCHEDULES[recipe.schedule](150).to(device)
    history, seconds = train_by_epochs(recipe, schedule, epochs, device, snapshot_epochs=(5, 10, 15))
    good = history.ema.module.eval()
    asked = torch.arange(len(SPECIES)).repeat_interleave(PER_SPECIES)
    to_species = torch.tensor([FLOWER_CLASSES.index(s) for s in SPECIES])
    c = one_hot(asked, len(SPECIES)).to(device)
    rows = []
    for name, epoch, kind, w in [SETTINGS_FLOWERS[i] for i in only] if only else SETTINGS_FLOWERS:
        bad = None if epoch is None else history.snapshots[epoch]
        denoiser = (ddpm.AutoGuidance(good, bad, w) if kind == "auto"
                    else ddpm.CFGDenoiser(good, w, uncond=bad))
        generator = torch.Generator().manual_seed(12)
        x = torch.randn(len(c), 3, 32, 32, generator=generator).to(device)
        samples = ddpm.sample_ddim(denoiser, x, schedule, steps=50, extra_args={"c": c},
                                   generator=generator, clip_x0=True).cpu()
        q = sample_quality(samples, "flowers", labels=to_species[asked])
        rows.append({"name": name, "species": round(q.accuracy, 4), "recognised": round(q.recognisable, 4),
                     "frechet": round(q.frechet, 1)})
        print(rows[-1], flush=True)
    return {"notebook": "04 flowers", "seed": seed, "epochs": epochs, "channels": [24, 48, 96],
            "steps": len(history.losses),
            "train_seconds": round(seconds, 1), "device": device_name(), "rows": rows}


def store(entry: dict) -> None:
    runs = json.loads(RUNS.read_text()) if RUNS.exists() else []
    def key(r):
        return r["notebook"], r["seed"], r["epochs"], r["channels"], r["device"]
    runs = [r for r in runs if key(r) != key(entry)] + [entry]
    RUNS.write_text(json.dumps(runs, indent=1) + "\n")


def _mean(values):
    return sum(values) / len(values)


def tables() -> tuple[list[str], dict]:
    runs = json.loads(RUNS.read_text())
    lines, data = [], {}
    for notebook, measures in (("03", (("recognised", "{:.1%}"), ("frechet", "{:.1f}"),
                                       ("min_class_share", "{:.1%}"), ("max_class_share", "{:.1%}"))),
                               ("04 flowers", (("species", "{:.1%}"), ("recognised", "{:.1%}"),
                                               ("frechet", "{:.1f}")))):
        header = {"recognised": "recognised" if notebook == "03" else "judge confident",
                  "frechet": "Fréchet distance", "min_class_share": "smallest class",
                  "max_class_share": "largest class", "species": "species asked for"}
        models = sorted({(r["epochs"], tuple(r["channels"])) for r in runs if r["notebook"] == notebook},
                        key=lambda m: (m[1], -m[0]))
        for epochs, channels in models:
            group = sorted((r for r in runs if r["notebook"] == notebook and r["epochs"] == epochs
                            and tuple(r["channels"]) == channels), key=lambda r: r["seed"])
            seeds = "; ".join(f"seed {r['seed']}: {r['steps']} steps on {r['device']}" for r in group)
            title = f"{notebook}, channels {', '.join(map(str, channels))}, {epochs} epochs"
            lines += ["", f"**{title}** ({seeds}). Each cell: the mean, then each seed's figure "
                      "('-': that run stopped before this sampler).", "",
                      "| sampler | " + " | ".join(header[m] for m, _ in measures) + " |",
                      "|---|" + "---|" * len(measures)]
            names = list(dict.fromkeys(row["name"] for r in group for row in r["rows"]))
            table = []
            for name in names:
                found = [{row["name"]: row for row in r["rows"]}.get(name) for r in group]
                cells, means = [], {}
                for m, fmt in measures:
                    values = [f[m] for f in found if f]
                    means[m] = round(_mean(values), 4)
                    each = " / ".join(fmt.format(f[m]) if f else "-" for f in found)
                    cells.append(f"{fmt.format(means[m])} ({each})")
                lines.append(f"| {name} | " + " | ".join(cells) + " |")
                table.append({"name": name, "seeds": sum(1 for f in found if f), **means})
            data[title] = table
    head = ("Autoguidance by an early snapshot of the same run (bench/autoguidance.py): the good model "
            "is the EMA at the end of training, the bad one the EMA after the epoch named. Each run "
            f"draws the same starting noises with every sampler ({N_03} for 03, judged by the 16×16 "
            f"FashionMNIST judge, recognised = confidence ≥ 0.9; {PER_SPECIES} per species for 04's "
            "flowers, judged by the 32×32 flower judge). Runs on a GPU are float32 (TF32 off).")
    return [head] + lines, data


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", choices=("03", "flowers"), help="train and sample one model first")
    parser.add_argument("--seed", type=int, default=0, help="the training seed")
    parser.add_argument("--epochs", type=int, help="default: the notebook's (03: 10, flowers: 30)")
    parser.add_argument("--channels", default="16,32,64", help="03's UNet widths (03: 16,32,64)")
    parser.add_argument("--only", help="flowers: comma-separated indices into SETTINGS_FLOWERS "
                        "(default: all; sampling 900 flowers takes minutes on a CPU)")
    args = parser.parse_args(argv)
    if args.run == "03":
        store(run_03(args.seed, args.epochs or 10, tuple(int(c) for c in args.channels.split(","))))
    elif args.run == "flowers":
        only = [int(i) for i in args.only.split(",")] if args.only else None
        store(run_flowers(args.seed, args.epochs or 30, only))
    lines, data = tables()
    write_report("autoguidance", lines, data)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
