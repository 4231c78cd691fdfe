"""Grade the answer-key notebook in the full profile, as an instructor would, and print the figures.

    python bench/grade_key.py            # full profile (targets: >= 98% accuracy, <= 10 min training)
    python bench/grade_key.py --profile test
    python bench/grade_key.py --no-cgroups --table no_cgroup   # the checks each second alone

Fills notebooks/06_Assessment.ipynb with answers/06_Assessment_Answers.md, runs
`python -m course_lib.grade` on it (sandboxed, hidden seeds and labels, every check), keeps the
judged samples in bench/out/key_samples.pt (bench/grading_checks.py calibrates on them) and
writes the report to bench/grade_key_<profile>.md (``--table NAME``: grade_key_<profile>_<NAME>.md).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from course_lib.grade_checks import PLAIN_SHARE  # noqa: E402
NO_CGROUPS = ("import runpy, sys; from course_lib import cgroup_limits; "
              "cgroup_limits.create = lambda *a, **k: None; "
              "cgroup_limits._reason = 'turned off for a control'; sys.argv[0] = 'course_lib.grade'; "
              "runpy.run_module('course_lib.grade', run_name='__main__', alter_sys=True)")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="full", choices=("full", "test"))
    parser.add_argument("--samples-per-digit", default="10")
    parser.add_argument("--no-sandbox", action="store_true")
    parser.add_argument("--no-cgroups", action="store_true",
                        help="grade with the checks each second alone, as where no cgroup can be "
                             "made (a control for bench/kernel_limits.py's section)")
    parser.add_argument("--table", default="",
                        help="write bench/grade_key_<profile>_<TABLE>.md instead (another kind of machine)")
    args = parser.parse_args(argv)
    out = ROOT / "bench" / "out"
    with tempfile.TemporaryDirectory() as tmp:
        completed = Path(tmp) / "key.ipynb"
        subprocess.run([sys.executable, "-m", "course_lib.answer_key", str(completed)], check=True)
        start = time.perf_counter()
        grader = ["-c", NO_CGROUPS] if args.no_cgroups else ["-m", "course_lib.grade"]
        proc = subprocess.run([sys.executable, *grader, str(completed),
                               "--profile", args.profile, "--samples-per-digit",
                               args.samples_per_digit, "--out", str(out), "--keep-samples",
                               *(["--no-sandbox"] if args.no_sandbox else [])],
                              capture_output=True, text=True, env=dict(os.environ))
        total = time.perf_counter() - start
    print(proc.stdout, proc.stderr)
    report = json.loads((out / "key.json").read_text())
    per_digit = report["per_digit"]
    lines = [f"Answer key graded in the {args.profile} profile on {os.cpu_count()} CPU cores, "
             f"sandbox: {report['sandbox']} (exit status {proc.returncode})", "",
             "| digit | " + " | ".join(str(d) for d in range(10)) + " | overall |",
             "|---" * 12 + "|",
             ("| accuracy | " + " | ".join(f"{a:.0%}" for a in per_digit.values())
              + f" | {report['accuracy']:.1%} |") if per_digit else "| accuracy | - |",
             "", f"- result: {report['status']} {report['reason']}",
             f"- samples judged: {report['samples']} (hidden count and order), plus a second draw "
             "with another seed and a third with shuffled weights",
             f"- notebook run (training + its own cells): {report['seconds_running'] or 0:.0f} s",
             f"- the grader's three draws of sample_digits: {report['seconds_sampling'] or 0:.0f} s",
             f"- judging (all checks + classifier): {report['seconds_grading'] or 0:.1f} s",
             f"- whole grading, wall clock: {total:.0f} s",
             f"- near-copies of MNIST images: {report['near_copies']}; Fréchet distance to real "
             f"digits: {report['frechet']}",
             "- the draw with every network weight shuffled, read as the digits asked for: "
             + ("no pictures" if report.get("shuffled_accuracy") is None
                else f"{report['shuffled_accuracy']:.0%}")
             + " (a sampler that does not draw from its network keeps its digits there)"]
    if report.get("plain_background") is not None:   # reports since RESULTS section 23
        lines.append(f"- plain background: {report['plain_background']:.0%} of the pixels (at least "
                     f"{PLAIN_SHARE:.0%} needed)")
    if report.get("second_opinion") is not None:
        lines.append(f"- the strictest private judge: {report['second_opinion']:.1%} read as asked for")
    text = "\n".join(lines)
    print(text)
    suffix = f"_{args.table}" if args.table else ""
    (ROOT / "bench" / f"grade_key_{args.profile}{suffix}.md").write_text(text + "\n")
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
