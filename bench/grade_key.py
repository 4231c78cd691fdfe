"""Grade the answer-key notebook in the full profile, as an instructor would, and print the figures.

    python bench/grade_key.py            # full profile (targets: >= 98% accuracy, <= 10 min training)
    python bench/grade_key.py --profile test

Fills notebooks/06_Assessment.ipynb with answers/06_Assessment_Answers.md, runs
`python -m course_lib.grade` on it, and writes the report to bench/grade_key_<profile>.md.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="full", choices=("full", "test"))
    parser.add_argument("--samples-per-digit", default="10")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        completed = Path(tmp) / "key.ipynb"
        subprocess.run([sys.executable, "-m", "course_lib.answer_key", str(completed)], check=True)
        out = ROOT / "bench" / "out"
        proc = subprocess.run([sys.executable, "-m", "course_lib.grade", str(completed),
                               "--profile", args.profile, "--samples-per-digit",
                               args.samples_per_digit, "--out", str(out)],
                              capture_output=True, text=True, env=dict(os.environ))
    print(proc.stdout, proc.stderr)
    report = json.loads((out / "key.json").read_text())
    lines = [f"Answer key graded in the {args.profile} profile on {os.cpu_count()} CPU cores "
             f"(exit status {proc.returncode})", "",
             "| digit | " + " | ".join(str(d) for d in range(10)) + " | overall |",
             "|---" * 12 + "|",
             "| accuracy | " + " | ".join(f"{a:.0%}" for a in report["per_digit"].values())
             + f" | {report['accuracy']:.1%} |" if report["per_digit"] else "| - |",
             "", f"- result: {report['status']} {report['reason']}",
             f"- notebook run (training + its own cells + sampling the graded digits): "
             f"{report['seconds_running']:.0f} s",
             f"- grading (copy check + classifier): {report['seconds_grading'] or 0:.1f} s",
             f"- near-copies of MNIST images: {report['near_copies']}"]
    text = "\n".join(lines)
    print(text)
    (ROOT / "bench" / f"grade_key_{args.profile}.md").write_text(text + "\n")
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
