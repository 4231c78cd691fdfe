"""Gather the headline quality figures of one full run into bench/quality.json, against targets.

    python bench/run_notebooks.py --inplace     # the full run: notebooks record their figures
    python bench/grade_key.py                   # the completed assessment (its minutes count too)
    python bench/quality.py                     # -> bench/quality.json and bench/quality.md

The notebooks record each figure with `course_lib/metrics.py::record_figure` in
checkpoints/full/figures.json while they run (a figure of a notebook not re-run is carried over
from the last quality.json, which its stored outputs still show: tests/test_bench.py checks that); the minutes come from bench/notebooks_full.md and
bench/grade_key_full.md. tests/test_bench.py checks that quality.json agrees with the outputs
stored in the notebooks.
"""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from course_lib.metrics import FIGURES  # noqa: E402

HERE = ROOT / "bench"


# How many samples (or photos) each share was measured on in the full profile; tests/test_bench.py
# checks these against the notebooks' own counts. A share p measured on n has a standard error of
# sqrt(p(1 - p)/n): the yardstick for how far a figure sits from its target.
SAMPLES = {
    "fashion16_real_recognised": 500,       # 01 (and 03): real test images, N_JUDGED
    "nb03_recognised": 500,                 # 03: N_JUDGED
    "nb04_fashion_requested_w2": 200,       # 04: PER_CLASS × 10 classes
    "flowers32_real_species_acc": 430,      # the flower judge's held-out photos
    "nb04_flowers_species_w2": 150,         # 04: FLOWERS_PER_CLASS × 3 species
    "nb05_clip_zero_shot_species": 430,     # 05: the held-out photos
    "nb05_prompt_species": 100,             # 05: PER_PROMPT × 5 species
    "nb05_heldout_wording_species": 100,
}


def _se(q: dict, name: str, scale: float = 1.0) -> float:
    p = q[name]
    return scale * (p * (1 - p) / SAMPLES[name]) ** 0.5


def target_rows(q: dict) -> list[dict]:
    """Issue #10's targets, each with its figure, threshold, whether it is met and, for shares,
    the margin in standard errors (of the figure, and of the real-image ceiling it is a fraction
    of)."""
    r = q.get
    rows = []

    def add(target, figure, threshold, fmt, higher=True, se=None):
        met = figure >= threshold if higher else figure <= threshold
        margin = None if not se else (figure - threshold) / se * (1 if higher else -1)
        rows.append({"target": target, "figure": fmt.format(figure), "threshold": fmt.format(threshold),
                     "met": met, "margin": margin})

    def share(target, name, threshold, ceiling=None, factor=1.0):
        if name not in q or (ceiling and ceiling not in q):
            rows.append({"target": target, "figure": "-", "threshold": "-", "met": False, "margin": None})
            return
        variance = _se(q, name) ** 2 + (_se(q, ceiling, factor) ** 2 if ceiling else 0.0)
        add(target, q[name], threshold, "{:.1%}", se=variance ** 0.5)
        rows[-1]["threshold"] = f"{threshold:.2%}"     # 61.95%, not a 62.0% that 62.0% just meets

    add("03: Fréchet distance at most 5× the real floor", r("nb03_frechet", 1e9),
        5 * r("fashion16_real_frechet", 0), "{:.1f}", higher=False)
    rows.append({"target": "03: every class between 4% and 20% of samples",
                 "figure": f"{r('nb03_min_class_share', 0):.1%} to {r('nb03_max_class_share', 1):.1%}",
                 "threshold": "4.0% to 20.0%", "margin": None,
                 "met": r("nb03_min_class_share", 0) >= 0.04 and r("nb03_max_class_share", 1) <= 0.20})
    share("03: recognised at least 80% of the real ceiling", "nb03_recognised",
          0.8 * r("fashion16_real_recognised", 1), "fashion16_real_recognised", 0.8)
    share("04: requested FashionMNIST class at w = 2 at least 0.90", "nb04_fashion_requested_w2", 0.90)
    share("04: requested flower species at w = 2 at least 80% of the real accuracy",
          "nb04_flowers_species_w2", 0.8 * r("flowers32_real_species_acc", 1),
          "flowers32_real_species_acc", 0.8)
    share("05: CLIP zero-shot species at least 0.80", "nb05_clip_zero_shot_species", 0.80)
    share("05: prompt species at least 70% of the real ceiling", "nb05_prompt_species",
          0.7 * r("flowers32_real_species_acc", 1), "flowers32_real_species_acc", 0.7)
    share("05: held-out wordings at least 70% of the real ceiling", "nb05_heldout_wording_species",
          0.7 * r("flowers32_real_species_acc", 1), "flowers32_real_species_acc", 0.7)
    add("whole course at most 50 minutes", r("course_minutes", 1e9), 50, "{:.1f}", higher=False)
    return rows


def machine_speeds() -> dict[str, str]:
    """Each notebook row's machine speed (its last column) in bench/notebooks_full.md."""
    rows = [r.split("|") for r in (HERE / "notebooks_full.md").read_text().splitlines()
            if r.startswith("| 0")]
    return {r[1].strip()[:2]: r[-2].strip() if len(r) > 8 else "-" for r in rows}


def course_minutes() -> float:
    table = (HERE / "notebooks_full.md").read_text()
    notebooks = float(re.search(r"\*\*whole course\*\* \| \*\*([\d.]+)\*\*", table).group(1))
    key = (HERE / "grade_key_full.md").read_text()
    found = (re.search(r"whole grading, wall clock: ([\d.]+) s", key)
             or re.search(r"notebook run[^:]*: ([\d.]+) s", key))
    if not found:
        raise SystemExit("bench/grade_key_full.md has no 'notebook run ...: N s' line: "
                         "run python bench/grade_key.py")
    return round(notebooks + float(found.group(1)) / 60, 1)


def main() -> int:
    figures = json.loads((ROOT / "checkpoints" / "full" / "figures.json").read_text())
    # a notebook not re-run this time keeps the figures its stored outputs show (the last quality.json)
    previous = json.loads((HERE / "quality.json").read_text()) if (HERE / "quality.json").exists() else {}
    carried = [name for name in FIGURES if name not in figures and name in previous]
    if carried:
        print(f"carried over from the last bench/quality.json (their notebooks were not re-run): {carried}")
        figures.update({name: previous[name] for name in carried})
    missing = [name for name in FIGURES if name not in figures]
    if missing:
        print(f"missing figures {missing}: run the full profile of the notebooks first")
        return 1
    # 8 digits: a figure on a rounding edge (0.98500001) must print as its notebook printed it
    quality = {name: round(figures[name], 8) for name in FIGURES}
    quality["course_minutes"] = course_minutes()
    (HERE / "quality.json").write_text(json.dumps(quality, indent=1) + "\n")
    lines = ["Headline quality of the full run (bench/quality.json), against issue #10's targets. "
             "The margin is the figure's distance from its target in standard errors of the shares "
             "involved (the samples' and, where the target is a fraction of a real-image ceiling, the "
             "ceiling's): within about ±2, another run of the same notebook may land on the other side.",
             "", "| target | figure | target value | met | margin (standard errors) |",
             "|---|---|---|---|---|"]
    for row in target_rows(quality):
        margin = "-" if row["margin"] is None else f"{row['margin']:+.1f}"
        lines.append(f"| {row['target']} | {row['figure']} | {row['threshold']} "
                     f"| {'yes' if row['met'] else 'no'} | {margin} |")
    speeds = machine_speeds()
    if len(set(speeds.values())) > 1:
        lines += ["", "The minutes add notebooks timed at different machine speeds (ms per reference "
                  "step, bench/notebooks_full.md; '-': timed before the column existed), from one "
                  "run on a machine whose speed drifts or from separate runs: "
                  + ", ".join(f"{nb} {ms}" for nb, ms in speeds.items()) + "."]
    (HERE / "quality.md").write_text("\n".join(lines) + "\n")
    print(json.dumps(quality, indent=1))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
