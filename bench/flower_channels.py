"""Row P's network against row X's (1.5× as wide) for 04's flowers: widths, epochs and seeds in one table.

    python bench/flower_channels.py            # the table, from the runs already stored
    python bench/flower_channels.py --run      # train and sample every run first (slow on a CPU)

Each run is one call of ``bench/flower_sampler.py`` (04's flower recipe with batches of 64, the
given channels, epochs and training seed; 300 starting noises per species, the same in every run,
sampled with w = 2, DDIM-50 and η = 1, and η = 0.75 where the run asked for it), stored as
bench/flower_channels_<run>.md and .json. This script gathers them into bench/flower_channels.md
and .json, one line per run, so that a width is compared with the other at the same training
time as well as at the same epochs: row X's network costs about 1.7× row P's per step in
float32 (notebook 04's run in the thirteenth session).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from report import write_report  # bench/report.py

HERE = Path(__file__).resolve().parent
RUNS = {  # stored name -> (channels, epochs, seed, the flower_sampler rows it sampled)
    "p_s0": ("16,32,64", 50, 0, "0,8"), "p_s1": ("16,32,64", 50, 1, "0,8"),
    "x_s0": ("24,48,96", 50, 0, "0,8"), "x_s1": ("24,48,96", 50, 1, "0,8"),
    "x40_s0": ("24,48,96", 40, 0, "0"), "x40_s1": ("24,48,96", 40, 1, "0"),
    "x35_s0": ("24,48,96", 35, 0, "0"), "x35_s1": ("24,48,96", 35, 1, "0"),
    "x30_s0": ("24,48,96", 30, 0, "0"), "x30_s1": ("24,48,96", 30, 1, "0"),
}


def run(name: str) -> None:
    import flower_sampler  # bench/flower_sampler.py (imports torch)
    channels, epochs, seed, rows = RUNS[name]
    flower_sampler.main(["--batch", "64", "--per-species", "300", "--channels", channels,
                         "--epochs", str(epochs), "--seed", str(seed), "--rows", rows,
                         "--report", f"flower_channels_{name}"])


def table() -> tuple[list[str], list[dict]]:
    """One line per stored run: its network, epochs, seed, steps and loss, and what the judge read."""
    lines = ["| run | channels | epochs | seed | steps | final loss | requested species | judge "
             "confident | Fréchet distance | requested species, η = 0.75 | where |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    rows = []
    for name in RUNS:
        data = json.loads((HERE / f"flower_channels_{name}.json").read_text())
        first = data["rows"][0]
        eta075 = next((r["species"] for r in data["rows"] if r["settings"].get("eta") == 0.75), None)
        r = {"run": name, "channels": data["channels"], "epochs": data["epochs"],
             "seed": data["seed"], "steps": data["steps"], "final_loss": round(data["final_loss"], 4),
             "species": first["species"], "recognised": first["recognised"],
             "frechet": first["frechet"], "species_eta075": eta075, "device": data["device"]}
        rows.append(r)
        lines.append(f"| {name} | {', '.join(map(str, r['channels']))} | {r['epochs']} | {r['seed']} "
                     f"| {r['steps']} | {r['final_loss']:.4f} | {r['species']:.0%} "
                     f"| {r['recognised']:.0%} | {r['frechet']:.1f} "
                     f"| {'-' if eta075 is None else format(eta075, '.0%')} | {r['device']} |")
    return lines, rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", action="store_true", help="train and sample every run first")
    args = parser.parse_args(argv)
    if args.run:
        for name in RUNS:
            run(name)
    lines, rows = table()
    head = ("Row P's network (channels 16, 32, 64) against row X's (24, 48, 96) for 04's flowers: "
            "batches of 64, 300 starting noises per species (the same in every run), w = 2, "
            "DDIM-50, η = 1 unless the column says otherwise, judged by the 32×32 flower judge "
            "(real held-out photos: 77% read as their species).")
    write_report("flower_channels", [head, "", *lines], {"runs": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
