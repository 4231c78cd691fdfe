"""The grader's command line (``python -m course_lib.grade --help``), its checks, and the time and
memory one submission's grading may take; the Slurm tasks (``course_lib/gradebook.py``) are sized
from the same options.
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

SAMPLE_TIMEOUT = 1050.0            # seconds for draw a; b and c: 1.5x a's time, at most half of
                                   # what a left (and MIN_DRAW_SECONDS at least)
DRAW_STARTUP = 120.0               # seconds more per draw's process: starting Python, loading
                                   # the export
MIN_DRAW_SECONDS = 60.0            # draws b and c get at least this, whatever a took
MARGIN_SECONDS = 600.0             # a worker's or Slurm task's time beyond the grader's limits:
                                   # Python, MNIST and the judges loaded, the folder copied
MIN_MEMORY_GIB = 2                 # what 06's cell 0 promises each notebook at least


def option_error(args: argparse.Namespace) -> str:
    """What is wrong with options the parser took ("" if nothing)."""
    if args.samples_per_digit < 1 or not 0 < args.threshold <= 1 or args.jobs < 1:
        return "--samples-per-digit and --jobs must be >= 1 and --threshold in (0, 1]"
    if not all(0 < v < math.inf for v in (args.timeout, args.sample_timeout)):
        return "--timeout and --sample-timeout are seconds, and must be > 0 (and finite)"
    if args.memory_gib is not None and not MIN_MEMORY_GIB <= args.memory_gib < math.inf:
        return (f"--memory-gib must be at least {MIN_MEMORY_GIB} (notebook 06 promises students "
                f"{MIN_MEMORY_GIB} GiB); leave it out for 80% of RAM / jobs")
    return ""


def worst_case_seconds(timeout: float, sample_timeout: float) -> float:
    """The longest one submission's grading may take: the notebook, then the three draws (a up to
    ``sample_timeout``; b and c each at most half of what a left, and at least a minute), each
    draw with its process's start-up."""
    return timeout + sample_timeout + 2 * MIN_DRAW_SECONDS + 3 * DRAW_STARTUP


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m course_lib.grade",
        description="Grade 06_Assessment submissions, each in a sandbox: run it in a fresh kernel, "
                    "sample digits with hidden seeds and labels, judge them. Exit 0 pass, 1 fail, "
                    "2 could not grade. Also: `grade slurm FOLDER` and `grade collect OUT`.")
    parser.add_argument("submission", type=Path, help="a notebook, or a folder of notebooks")
    parser.add_argument("--samples-per-digit", "-n", type=int, default=10,
                        help="about this many samples of each digit (a hidden count within ±20%%; "
                             "default %(default)s)")
    parser.add_argument("--threshold", type=float, default=0.95,
                        help="accuracy needed to pass (default %(default)s)")
    parser.add_argument("--timeout", type=float, default=3600,
                        help="seconds the notebook may run (default 3600: generous for a CPU)")
    parser.add_argument("--sample-timeout", type=float, default=SAMPLE_TIMEOUT,
                        help="seconds the first call of sample_digits may take; the other two "
                             "get 1.5 times what it took, at most half of what it left and at "
                             "least 60 s each (default %(default)s)")
    parser.add_argument("--jobs", "-j", type=int, default=1,
                        help="submissions graded at once, each with its share of CPUs and memory "
                             "(default %(default)s)")
    parser.add_argument("--memory-gib", type=float, default=None,
                        help=f"memory limit per submission, at least {MIN_MEMORY_GIB} "
                             "(default: 80%% of RAM / jobs, 2-8 GiB)")
    parser.add_argument("--seed", type=int, default=None,
                        help="fix the hidden seeds, e.g. a report's \"seed\" to reproduce its "
                             "grade (same --jobs, same private judges); default: a secret one each")
    parser.add_argument("--profile", choices=("full", "test"), default="full",
                        help="COURSE_PROFILE the submission runs in (default full; test is for CI)")
    parser.add_argument("--out", type=Path, default=Path("grades"),
                        help="folder for the JSON reports, grids and gradebook (default ./grades)")
    parser.add_argument("--json", type=Path, default=None, help="also write the report(s) here")
    parser.add_argument("--keep-samples", action="store_true",
                        help="also save the judged samples as OUT/<student>_samples.pt")
    parser.add_argument("--no-sandbox", action="store_true",
                        help="run notebooks WITHOUT isolation (trusted notebooks only)")
    parser.add_argument("--private-judge", type=Path, default=None,
                        help="the grader's private second judges, one file (default: "
                             "~/.cache/course_lib/grader/private_mnist_judges.pt, or under "
                             "$COURSE_GRADER_DIR; trained there on first use, about a minute each)")
    parser.add_argument("--slot", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--name", default=None,
                        help="the student's name in a notebook's report (default: its earlier "
                             "report's in --out, else the file's name)")
    parser.add_argument("--origin", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--hide", type=Path, action="append", default=[], help=argparse.SUPPRESS)
    return parser
