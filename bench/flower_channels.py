"""04's flower network, one run per line: widths, epochs, seeds, patches and the prediction target.

    python bench/flower_channels.py            # the table, from the runs already stored
    python bench/flower_channels.py --run      # train and sample every run first (slow on a CPU)
    python bench/flower_channels.py --run x30v_s1   # train and sample one run

Each run is one call of ``bench/flower_sampler.py`` (04's flower recipe with batches of 64, the
given channels, epochs and training seed, ``--patch`` and ``--prediction``; 300 starting noises
per species, the same in every run, sampled with w = 2, DDIM-50 and η = 1, or with the sampler
rows the run names: η = 0.75, w = 3, w = 1, and since the sixteenth session η = 0; in the
seventeenth, guidance in a limited interval and DDIM-100 and -150; in the eighteenth, the
v-loss weighted by min-SNR-5 or -1 or its timesteps drawn as EDM draws σ; in the nineteenth,
trained on random zoomed-in crops of the photos; in the twenty-fifth, trained for 60 epochs instead
of 30), stored as
bench/flower_channels_<run>.md and .json. This script gathers them
into bench/flower_channels.md and .json, one line per run, so that a network is compared with the
others at the same training time as well as at the same epochs: row X's network costs about 1.7×
row P's per step in float32 (notebook 04's run in the thirteenth session), and one on 2×2 patches
with channels 32, 64, 128 about 0.41 of row X's (run p2c32e85_s0).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from report import write_report  # bench/report.py

HERE = Path(__file__).resolve().parent
RUNS = {  # stored name -> (channels, epochs, seed, the flower_sampler rows it sampled[, patch, prediction])
    "p_s0": ("16,32,64", 50, 0, "0,8"), "p_s1": ("16,32,64", 50, 1, "0,8"),
    "x_s0": ("24,48,96", 50, 0, "0,8"), "x_s1": ("24,48,96", 50, 1, "0,8"),
    "x40_s0": ("24,48,96", 40, 0, "0"), "x40_s1": ("24,48,96", 40, 1, "0"),
    "x35_s0": ("24,48,96", 35, 0, "0"), "x35_s1": ("24,48,96", 35, 1, "0"),
    "x30_s0": ("24,48,96", 30, 0, "0"), "x30_s1": ("24,48,96", 30, 1, "0"),
    # fifteenth session, on 2 CPU cores: row X's 30 epochs again, on 2×2 patches, and with v-prediction
    # (rows 6 and 9: the same trainings sampled with w = 3 and w = 1)
    "x30cpu_s0": ("24,48,96", 30, 0, "0"), "x30cpu_s0_w3": ("24,48,96", 30, 0, "6"),
    "p2c32e85_s0": ("32,64,128", 85, 0, "0", 2, "eps"),
    "x30v_s0": ("24,48,96", 30, 0, "0", 1, "v"), "x30v_s1": ("24,48,96", 30, 1, "0", 1, "v"),
    "x30v_s0_w1": ("24,48,96", 30, 0, "9", 1, "v"),
    # sixteenth session: the same trainings sampled with deterministic DDIM (row 10, η = 0); the
    # first run also samples rows 4 (η = 0.5), 3 (x̂₀ not clipped) and 0 (η = 1) from its model
    "x30v_s0_eta": ("24,48,96", 30, 0, "10,4,3,0", 1, "v"),
    "x30v_s1_eta0": ("24,48,96", 30, 1, "10", 1, "v"),
    "x30cpu_s0_eta0": ("24,48,96", 30, 0, "10"),
    # seventeenth session: 04's v-network sampled with guidance in a limited interval of noise
    # levels (rows 11-14), beside row 10, 04's sampler
    "x30v_s0_interval": ("24,48,96", 30, 0, "10,11,12,13,14", 1, "v"),
    # and with more DDIM steps (rows 15-16), row 10 again first: the same weights, so its figures repeat
    "x30v_s0_steps": ("24,48,96", 30, 0, "10,15,16", 1, "v"),
    # eighteenth session: the same v-network, its training changed in where its timesteps fall
    # (loss weighting, then the timesteps' distribution), sampled as 04 samples (row 10)
    "x30v_s0_minsnr5": ("24,48,96", 30, 0, "10", 1, "v", {"min-snr": "5"}),
    "x30v_s0_lognormal": ("24,48,96", 30, 0, "10", 1, "v", {"lognormal": "-1.2,1.2"}),
    "x30v_s1_minsnr5": ("24,48,96", 30, 1, "10", 1, "v", {"min-snr": "5"}),
    # and seed 1's plain v-network again, trained in bfloat16 as the three runs above
    "x30v_s1_eta0_bf16": ("24,48,96", 30, 1, "10", 1, "v"),
    # min-SNR-1: the weight's peak moved from SNR 5 (t ≈ 38) to SNR 1 (t ≈ 73), noisier levels
    "x30v_s0_minsnr1": ("24,48,96", 30, 0, "10", 1, "v", {"min-snr": "1"}),
    # nineteenth session: 04's network (min-SNR-5) on random zoomed-in crops of the photos, half to
    # all of each photo's area (issue #10's "random crops from the larger photos")
    "x30v_s0_minsnr5_zoom": ("24,48,96", 30, 0, "10", 1, "v", {"min-snr": "5", "zoom": "0.5,1"}),
    # twenty-first session: 04's network (min-SNR-5), self-conditioned on its own x̂₀ estimate
    "x30v_s0_minsnr5_sc": ("24,48,96", 30, 0, "10", 1, "v", {"min-snr": "5", "self-cond": "0.5"}),
    "x30v_s1_minsnr5_sc": ("24,48,96", 30, 1, "10", 1, "v", {"min-snr": "5", "self-cond": "0.5"}),
    # the same two networks (their stored weights), sampled with the estimate input always zero
    "x30v_s0_minsnr5_sc_nofb": ("24,48,96", 30, 0, "10", 1, "v",
                                {"min-snr": "5", "self-cond": "0.5", "feedback": "0"}),
    "x30v_s1_minsnr5_sc_nofb": ("24,48,96", 30, 1, "10", 1, "v",
                                {"min-snr": "5", "self-cond": "0.5", "feedback": "0"}),
    # twenty-fifth session: 04's network (min-SNR-5) trained twice as long, 60 epochs, both seeds
    "x60v_s0_minsnr5": ("24,48,96", 60, 0, "10", 1, "v", {"min-snr": "5"}),
    "x60v_s1_minsnr5": ("24,48,96", 60, 1, "10", 1, "v", {"min-snr": "5"}),
}
WEIGHTING_RUNS = ("x30v_s0_interval", "x30v_s1_eta0_bf16", "x30v_s0_minsnr5", "x30v_s1_minsnr5",
                  "x30v_s0_minsnr1", "x30v_s0_lognormal")   # bench/RESULTS.md, section 16
EPOCH_RUNS = ("x30v_s0_minsnr5", "x30v_s1_minsnr5", "x60v_s0_minsnr5",
              "x60v_s1_minsnr5")   # bench/RESULTS.md, section 17
CPU_RUNS = ("x30cpu_s0", "x30cpu_s0_w3", "x30cpu_s0_eta0", "p2c32e85_s0", "x30v_s0", "x30v_s0_w1",
            "x30v_s1", "x30v_s0_eta", "x30v_s1_eta0", "x30v_s0_interval", "x30v_s0_minsnr5",
            "x30v_s1_eta0_bf16", "x30v_s1_minsnr5", "x30v_s0_minsnr1", "x30v_s0_lognormal",
            "x30v_s0_minsnr5_zoom", "x30v_s0_minsnr5_sc", "x30v_s1_minsnr5_sc",
            "x30v_s0_minsnr5_sc_nofb", "x30v_s1_minsnr5_sc_nofb", "x60v_s0_minsnr5", "x60v_s1_minsnr5")


def run(name: str) -> None:
    import flower_sampler  # bench/flower_sampler.py (imports torch)
    defaults = (1, "eps", {})                       # patch, prediction, other options
    channels, epochs, seed, rows, patch, prediction, extra = RUNS[name] + defaults[len(RUNS[name]) - 4:]
    options = [f"--{key}={value}" for key, value in extra.items()]
    flower_sampler.main([*options, "--batch", "64", "--per-species", "300", "--channels", channels,
                         "--epochs", str(epochs), "--seed", str(seed), "--rows", rows,
                         "--patch", str(patch), "--prediction", prediction,
                         "--report", f"flower_channels_{name}"])


def _cell(value, spec: str) -> str:
    """A table cell: ``value`` formatted by ``spec``, or '-' where the run did not record it."""
    return "-" if value is None else format(value, spec)


def _training(data: dict) -> str:
    """How a run's training differed from 04's plain one: min-SNR-γ weighting (with zoomed-in crops
    of the photos, or self-conditioning), log-normal timesteps."""
    parts = [f"min-SNR-{data['min_snr']:g}" if data.get("min_snr") else None,
             "log-normal t ({:g}, {:g})".format(*data["lognormal"]) if data.get("lognormal") else None,
             "zoomed crops ({:g}-{:g})".format(*data["zoom"]) if data.get("zoom") else None,
             f"self-conditioned (p = {data['self_cond']:g})" if data.get("self_cond") else None,
             "sampled without its estimate" if data.get("feedback") is False else None]
    return ", ".join(p for p in parts if p) or "plain"


def table(names=tuple(RUNS)) -> tuple[list[str], list[dict]]:
    """One line per stored run: its network, epochs, seed, steps and loss, and what the judge read."""
    lines = ["| run | channels | patch | predicts | loss | epochs | seed | steps | training seconds "
             "| final loss | w | η | requested species | judge confident | Fréchet distance "
             "| Fréchet, three species | variety | requested species, η = 0.75 | where |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    rows = []
    for name in names:
        data = json.loads((HERE / f"flower_channels_{name}.json").read_text())
        first = data["rows"][0]
        eta075 = next((r["species"] for r in data["rows"] if r["settings"].get("eta") == 0.75), None)
        r = {"run": name, "channels": data["channels"], "patch": data.get("patch", 1),
             "prediction": data.get("prediction", "eps"), "training": _training(data),
             "epochs": data["epochs"],
             "seed": data["seed"], "steps": data["steps"], "train_seconds": data.get("train_seconds"),
             "final_loss": round(data["final_loss"], 4), "w": first["settings"]["w"],
             "eta": first["settings"].get("eta", 1.0),
             "species": first["species"],
             "recognised": first["recognised"], "frechet": first["frechet"],
             "frechet_species": first.get("frechet_species"), "variety": first.get("variety"),
             "species_eta075": eta075, "device": data["device"]}
        rows.append(r)
        lines.append(f"| {name} | {', '.join(map(str, r['channels']))} | {r['patch']} "
                     f"| {r['prediction']} | {r['training']} | {r['epochs']} | {r['seed']} | {r['steps']} "
                     f"| {_cell(r['train_seconds'], '.0f')} | {r['final_loss']:.4f} "
                     f"| {r['w']:g} | {r['eta']:g} "
                     f"| {r['species']:.0%} | {r['recognised']:.0%} | {r['frechet']:.1f} "
                     f"| {_cell(r['frechet_species'], '.1f')} | {_cell(r['variety'], '.2f')} "
                     f"| {_cell(eta075, '.0%')} | {r['device']} |")
    return lines, rows


def epochs_figure(runs=("x30v_s0_minsnr5", "x60v_s0_minsnr5"), path=HERE / "flower_epochs.png") -> None:
    """The sample grids that ``runs`` saved (bench/out, 12 samples per species, the same starting
    noises), one above the other, labelled: RESULTS section 17's picture. Skipped where a grid
    is missing (bench/out is not in git)."""
    grids = [HERE / "out" / f"flower_channels_{name}" / "0.png" for name in runs]
    if not all(g.is_file() for g in grids):
        return
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(len(grids), 1, figsize=(12, 3.4 * len(grids)))
    for ax, name, grid in zip(axes, runs, grids):
        data = json.loads((HERE / f"flower_channels_{name}.json").read_text())
        ax.imshow(plt.imread(grid), interpolation="nearest")
        ax.set_title(f"{name}: {data['epochs']} epochs, training seed {data['seed']}")
        ax.set_yticks([18 + 34 * i for i in range(3)], ["daisy", "rose", "sunflower"])   # make_grid, padding 2
        ax.set_xticks([])
        ax.set_xlabel("12 samples per species, the same starting noises in both runs")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", nargs="*", choices=list(RUNS), metavar="RUN",
                        help="train and sample these runs first (no names: every run)")
    args = parser.parse_args(argv)
    for name in (RUNS if args.run == [] else args.run or []):
        run(name)
    lines, rows = table()
    head = ("04's flower network, one run per line: row P's channels (16, 32, 64), row X's "
            "(24, 48, 96), on 2×2 patches or not, predicting ε or v; batches of 64, 300 starting "
            "noises per species (the same in every run), w = 2, DDIM-50, η = 1 unless the column "
            "says otherwise, judged by the 32×32 flower judge (real held-out photos: 77% read as "
            "their species). Fréchet distances to the 430 held-out photos of all five species, "
            "and (from the fifteenth session) to those of the three species only; variety is the "
            "samples' mean judge-feature distance within a species over the real photos' (1: as "
            "varied as real photos); training seconds where the run recorded them.")
    write_report("flower_channels", [head, "", *lines], {"runs": rows})
    lines, rows = table(CPU_RUNS)
    head = ("04's flower network on 2 CPU cores (fifteenth to twenty-fifth sessions), predicting ε "
            "or v, on 2×2 patches, with its v-loss weighted by min-SNR-γ or its timesteps "
            "drawn log-normal in σ, trained on zoomed-in crops of the photos, and self-conditioned "
            "on its own x̂₀ estimate, or trained for 60 epochs: the runs of "
            "bench/flower_channels.md made on 2-core CPUs, "
            "with w and η as the columns say (300 starting noises per species, the same in every "
            "run); float32 on a machine without AMX, except x30v_s0_interval (seventeenth "
            "session) and the twelve runs after it (eighteenth to twenty-fifth), trained in bfloat16 "
            "on a machine with AMX.")
    write_report("flower_prediction", [head, "", *lines], {"runs": rows})
    lines, rows = table(WEIGHTING_RUNS)
    head = ("04's v-network (channels 24, 48, 96, 30 epochs, batches of 64), its loss as 04 had it "
            "(plain: t uniform, every step's v-error weighted alike) and weighted by min-SNR-5, "
            "each from training seeds 0 and 1, then weighted by min-SNR-1 and with t drawn "
            "log-normal in σ as EDM draws it (seed 0), on 2-core machines with AMX (bfloat16), sampled as 04 samples (w = 2, "
            "DDIM-50, η = 0; "
            "300 starting noises per species, the same in every run).")
    write_report("flower_weighting", [head, "", *lines], {"runs": rows})
    lines, rows = table(EPOCH_RUNS)
    head = ("04's v-network (channels 24, 48, 96, batches of 64, v-loss weighted by min-SNR-5) "
            "trained for 30 epochs and for 60, each from training seeds 0 and 1, on 2-core "
            "machines with AMX (bfloat16), sampled as 04 samples (w = 2, DDIM-50, η = 0; 300 "
            "starting noises per species, the same in every run).")
    write_report("flower_epochs", [head, "", *lines], {"runs": rows})
    epochs_figure()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
