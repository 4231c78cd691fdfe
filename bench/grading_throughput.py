"""Grading throughput on this machine: submissions per hour with --jobs 1 and --jobs 2.

    python bench/grading_throughput.py [--submissions 4] [--profile test]

Grades the same folder of answer-key notebooks (sandboxed, every check) once per --jobs value and
writes bench/grading_throughput.md and .json. The test profile keeps this to minutes; for the full
profile, bench/grade_key_full.md gives the time of one submission.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--submissions", type=int, default=4)
    parser.add_argument("--profile", default="test", choices=("test", "full"))
    parser.add_argument("--jobs", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        subs = Path(tmp) / "subs"
        subprocess.run([sys.executable, "-m", "course_lib.answer_key", str(subs / "key0.ipynb")],
                       check=True, capture_output=True)
        for i in range(1, args.submissions):
            shutil.copy(subs / "key0.ipynb", subs / f"key{i}.ipynb")
        for jobs in args.jobs:
            out = Path(tmp) / f"grades{jobs}"
            start = time.perf_counter()
            proc = subprocess.run([sys.executable, "-m", "course_lib.grade", str(subs), "--jobs",
                                   str(jobs), "--profile", args.profile, "--out", str(out)],
                                  capture_output=True, text=True)
            seconds = time.perf_counter() - start
            reports = [json.loads(p.read_text()) for p in out.glob("key*.json")]
            graded = sum(r["status"] in ("pass", "fail") for r in reports)
            rows.append({"jobs": jobs, "submissions": args.submissions, "graded": graded,
                         "seconds": round(seconds, 1),
                         "per_hour": round(3600 * args.submissions / seconds, 1),
                         "statuses": sorted(r["status"] for r in reports)})
            print(rows[-1], flush=True)
            if graded != args.submissions:
                print(proc.stdout[-3000:], proc.stderr[-3000:])
    lines = [f"Grading throughput, {args.submissions} answer-key submissions in the {args.profile} "
             f"profile, sandboxed, on {os.cpu_count()} CPU cores (`python bench/grading_throughput.py`)",
             "", "| --jobs | wall clock | submissions/hour | graded |", "|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['jobs']} | {r['seconds']:.0f} s | {r['per_hour']:.0f} | "
                     f"{r['graded']}/{r['submissions']} |")
    text = "\n".join(lines)
    print(text)
    (ROOT / "bench" / "grading_throughput.md").write_text(text + "\n")
    (ROOT / "bench" / "grading_throughput.json").write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
