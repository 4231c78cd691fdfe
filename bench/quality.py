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


def targets(q: dict) -> list[tuple[str, bool]]:
    """Issue #10's targets, each as (description, met)."""
    r = q.get
    return [
        ("03: Fréchet distance at most 5× the real floor",
         r("nb03_frechet", 1e9) <= 5 * r("fashion16_real_frechet", 0)),
        ("03: every class between 4% and 20% of samples",
         r("nb03_min_class_share", 0) >= 0.04 and r("nb03_max_class_share", 1) <= 0.20),
        ("03: recognised at least 80% of the real ceiling",
         r("nb03_recognised", 0) >= 0.8 * r("fashion16_real_recognised", 1)),
        ("04: requested FashionMNIST class at w = 2 at least 0.90",
         r("nb04_fashion_requested_w2", 0) >= 0.90),
        ("04: requested flower species at w = 2 at least 80% of the real accuracy",
         r("nb04_flowers_species_w2", 0) >= 0.8 * r("flowers32_real_species_acc", 1)),
        ("05: CLIP zero-shot species at least 0.80", r("nb05_clip_zero_shot_species", 0) >= 0.80),
        ("05: prompt species at least 70% of the real ceiling",
         r("nb05_prompt_species", 0) >= 0.7 * r("flowers32_real_species_acc", 1)),
        ("05: held-out wordings at least 70% of the real ceiling",
         r("nb05_heldout_wording_species", 0) >= 0.7 * r("flowers32_real_species_acc", 1)),
        ("whole course at most 50 minutes", r("course_minutes", 1e9) <= 50),
    ]


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
    lines = ["Headline quality of the full run (bench/quality.json), against issue #10's targets", "",
             "| target | met |", "|---|---|"]
    lines += [f"| {name} | {'yes' if ok else 'no'} |" for name, ok in targets(quality)]
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
