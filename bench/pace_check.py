"""How close 00's time estimate (course_lib/pace.py) comes to the minutes a notebook really takes.

    python bench/pace_check.py                    # 01 and 02, with 2 threads and then with 1
    python bench/pace_check.py 01 --threads 2     # one notebook, one setting
    COURSE_BF16=0 python bench/pace_check.py      # the same, training in float32 (section 19's run)

For each thread count (one thread stands for a slower CPU), each notebook runs in
the full profile, its outputs discarded, as bench/run_notebooks.py runs it; the reference step is
timed before and after it, and 00's estimate for that step time (the mean of the two) is set beside
the minutes it took. Writes bench/pace_check.md and .json, keeping the rows of earlier runs that
this one does not repeat.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

from course_lib import config, pace
from report import write_report  # bench/report.py
from run_notebooks import ROOT, run

HERE = Path(__file__).resolve().parent


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("which", nargs="*", default=["01", "02"], help="notebook number prefixes")
    parser.add_argument("--threads", nargs="+", type=int, default=[2, 1])
    args = parser.parse_args(argv)
    notebooks = [nb for nb in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
                 if nb.name[:2] in args.which]
    speed = config.speed("cpu")
    stored = HERE / "pace_check.json"
    rows = json.loads(stored.read_text())["rows"] if stored.exists() else []
    for threads in args.threads:
        torch.set_num_threads(threads)
        os.environ["OMP_NUM_THREADS"] = str(threads)     # the notebook's kernel inherits it
        for nb in notebooks:
            before = pace.reference_step_ms()
            seconds, _, code = run(nb, "full", inplace=False)
            if code:
                print(f"{nb.name} failed ({code})")
                return 1
            ms = (before + pace.reference_step_ms()) / 2
            guess = pace.estimate("cpu", ms_here=ms).minutes[nb.stem]
            rows = [r for r in rows
                    if (r["notebook"], r["threads"], r["speed"]) != (nb.stem, threads, speed)]
            rows.append(dict(notebook=nb.stem, speed=speed, threads=threads, ms=round(ms, 1),
                             estimated=round(guess, 2), measured=round(seconds / 60, 2),
                             error=round(guess / (seconds / 60) - 1, 3)))
            print(rows[-1], flush=True)
    runs = pace.measured_runs()
    lines = [f"00's estimate against the measured minutes (full profile, {os.cpu_count()} CPU cores "
             f"of this machine; each row scaled from the run of its kind: "
             + "; ".join(f"{pace.KIND_OF_SPEED[s]}: bench/{runs[s]['run']}.md, {runs[s]['machine']}"
                         for s in sorted({r["speed"] for r in rows})) + ")", "",
             "| notebook | trains in | threads | ms per reference step | estimated (min) | "
             "measured (min) | estimate off by |", "|---|---|---|---|---|---|---|"]
    rows.sort(key=lambda r: (r["speed"], -r["threads"], r["notebook"]))
    lines += [f"| {r['notebook']} | {pace.KIND_OF_SPEED[r['speed']]} | {r['threads']} | "
              f"{r['ms']:.0f} | {r['estimated']:.2f} | {r['measured']:.2f} | {r['error']:+.0%} |"
              for r in rows]
    write_report("pace_check", lines, {"rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
