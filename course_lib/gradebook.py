"""A cohort's grades: the gradebook CSV and summary, and grading on a Slurm cluster.

    python -m course_lib.grade slurm submissions/ --out grades/ [--wait] [grader options]
    python -m course_lib.grade collect grades/

``slurm`` copies every notebook into a private folder under ``OUT`` (the sandboxes never see it),
writes ``grade.sbatch``, a job array with one task per submission, each running the same
sandboxed grader (``python -m course_lib.grade COPY --name STUDENT ...``), and submits it with
``sbatch`` (``--dry-run`` only writes the script and the private copies, and leaves the reports
alone; ``--wait`` asks ``squeue`` every half minute until the array has ended, then collects).
Each task writes ``OUT/<student>.json``. On submitting, the reports and grids these students
already had in ``OUT`` (and the old roster, gradebook, review page, task logs and job id) move to
``OUT/previous/<job>/`` (:func:`~course_lib.grade_out.set_aside`), so that none stands in for a task
that fails, and none is lost; if ``sbatch`` takes no job, they move back. ``OUT/slurm-job.txt``
then names the job, and no other grading into ``OUT`` starts while ``squeue`` lists it. A
submission that could not be copied (a link, unreadable) gets no task: its report is written at
once, with the reason. ``collect`` merges those reports into ``OUT/gradebook.csv`` (student,
status, accuracy, reason) and ``OUT/review.html`` (each student's code beside its samples,
``course_lib/review.py``) and prints the summary table; a submission without a report is listed
as "could not grade".
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import json
import math
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import fields
from pathlib import Path

from .grade_intake import find_submissions, origin_of, snapshot, unreadable_report, why_unreadable
from .grade_options import (MARGIN_SECONDS, MIN_MEMORY_GIB, build_parser, option_error,
                            worst_case_seconds)
from .grade_out import (BOOKS, SLURM_BOOKS, SLURM_JOB, OutBusy, array_state, claim_out, hold_out,
                        put_back, set_aside, writable_error)
from .grade_report import ERROR, Report, write_report
from .grade_checks import CannotGrade, ensure_private_judge, one_line, private_judge_path
from .review import read_first, write_review
from .sandbox import SLOTS

GRADEBOOK_FIELDS = ("student", "status", "accuracy", "reason")
WAIT_SECONDS = 30.0         # --wait asks squeue this often whether the array has ended
DEFAULT_TASK_MEM_GIB = 12   # a task's memory: its notebook keeps the 8 GiB a local grading gives
TASK_OVERHEAD_GIB = 4   # a task's memory beyond its notebook's: /tmp and /dev/shm (1 GiB each,
                        # sandbox.Limits.shm_bytes) and the grader (torch, MNIST, the judges)


def summary(reports: list[Report]) -> str:
    """The table printed after a folder: one line per student, then the counts."""
    lines = [f"{'student':32s} {'result':16s} {'accuracy':>8s}  reason"]
    for r in reports:
        acc = f"{r.accuracy:.1%}" if r.accuracy is not None else "-"
        lines.append(f"{one_line(r.student or r.submission)[:32]:32s} {r.status:16s} {acc:>8s}  "
                     f"{one_line(r.reason)[:70]}")
    counts = {s: sum(r.status == s for r in reports) for s in ("pass", "fail", ERROR)}
    lines.append(f"{len(reports)} submissions: {counts['pass']} pass, {counts['fail']} fail, "
                 f"{counts[ERROR]} could not grade")
    return "\n".join(lines)


def write_gradebook(reports: list[Report], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(GRADEBOOK_FIELDS)
        for r in sorted(reports, key=lambda r: r.student):
            writer.writerow([_cell(r.student), r.status,
                             "" if r.accuracy is None else f"{r.accuracy:.4f}", _cell(r.reason)])
    return path


def write_review_page(reports: list[Report], out: Path) -> None:
    """``OUT/review.html`` (:func:`course_lib.review.write_review`), after the gradebook: a fault
    in it is printed, and never costs the grades already written."""
    try:
        print(f"review page (each student's code beside its samples): "
              f"{write_review(reports, out)}")
        first = read_first(reports)
        if first:
            print("passes to read first (marked code or a check close to its limit):\n  "
                  + "\n  ".join(first))
    except Exception as err:  # the page is an aid; the gradebook and reports stand without it
        print(f"review page not written: {type(err).__name__}: {one_line(err)}", file=sys.stderr)


def _cell(text: str) -> str:
    """A text cell of the gradebook, safe to open in a spreadsheet: one printable line, and a
    leading = + - @ (which Excel, LibreOffice and Sheets would run as a formula, e.g. one that
    sends the sheet to a web address) escaped with a quote, as OWASP advises for CSV files."""
    text = one_line(text)
    return "'" + text if text.startswith(("=", "+", "-", "@")) else text


def load_reports(out: Path, expected: list[str] | None = None) -> list[Report]:
    """Every ``OUT/*.json`` report; students in ``expected`` without one are "could not grade"."""
    known = {f.name for f in fields(Report)}
    reports = {}
    for path in sorted(out.glob("*.json")):
        try:
            data = json.loads(path.read_text())
            if not isinstance(data, dict):   # e.g. a folder run's --json list, saved in OUT
                continue
            report = Report(**{k: v for k, v in data.items() if k in known})
        except OSError as err:   # unreadable, a folder named x.json
            print(f"note: {path} left out: {one_line(err)}", file=sys.stderr)
            continue
        except (ValueError, TypeError):   # not a report (a --json list, other JSON)
            continue
        if report.student:
            reports[report.student] = report
    for task, student in enumerate(expected or []):
        if student not in reports:
            reports[student] = Report(student, ERROR, student=student,
                                      reason="could not grade: no report (the task did not finish; "
                                             f"see {out / 'logs' / f'task-{task}.log'})")
    return sorted(reports.values(), key=lambda r: r.student)


def collect(out: Path) -> int:
    """Merge ``OUT``'s reports into its gradebook and review page, print the summary; exit 0 all
    passed, 1 any failed, 2 any could not be graded (as ``grade`` itself)."""
    if not os.path.isdir(out):
        print(f"could not collect: {out} is not a folder; give the --out folder the grader wrote "
              "its reports to", file=sys.stderr)
        return 2
    roster = out / "roster.txt"
    expected = [ln.split("\t")[0] for ln in roster.read_text().splitlines() if ln.strip()] \
        if roster.is_file() else None
    reports = load_reports(out, expected)
    if not reports:
        print(f"could not grade: no reports in {out}", file=sys.stderr)
        return 2
    print(summary(reports))
    try:
        print(f"gradebook: {write_gradebook(reports, out / 'gradebook.csv')}")
    except PermissionError as err:
        print(f"could not write the gradebook: {err.strerror}: {err.filename}; run collect as the "
              f"user who graded (root: {collect_command(out, sudo=True)})", file=sys.stderr)
        return 2
    write_review_page(reports, out)
    codes = {r.exit_code for r in reports}
    return 2 if 2 in codes else 1 if 1 in codes else 0


def sbatch_script(roster: Path, out: Path, n_tasks: int, grader_args: list[str], *,
                  cpus: int = 2, mem_gib: int = DEFAULT_TASK_MEM_GIB, minutes: int | None = None,
                  parallel: int = 0, python: str = sys.executable, hide: list[Path] = ()) -> str:
    """The job array: task i grades line i+1 of the roster (:func:`roster_text`);
    ``minutes`` None: what ``grader_args``' time limits need (:func:`task_minutes`)."""
    if minutes is None:
        minutes = task_minutes(grader_options(grader_args))
    array = f"0-{n_tasks - 1}" + (f"%{parallel}" if parallel else "")
    hides = " ".join(f"--hide {shlex.quote(str(h))}" for h in hide)
    return f"""#!/bin/bash
#SBATCH --job-name=grade06
#SBATCH --array={array}
#SBATCH --cpus-per-task={cpus}
#SBATCH --mem={mem_gib}G
#SBATCH --time={minutes}
#SBATCH --output={out}/logs/task-%a.log
# One array task per submission, each graded in its own bubblewrap sandbox.
# Written by `python -m course_lib.grade slurm`; merge with `python -m course_lib.grade collect {out}`.
set -euo pipefail
line=$(sed -n "$((SLURM_ARRAY_TASK_ID + 1))p" {shlex.quote(str(roster))})
student=${{line%%$'\\t'*}}
rest=${{line#*$'\\t'}}
copy=${{rest%%$'\\t'*}}
origin=${{rest#*$'\\t'}}
cd {shlex.quote(os.getcwd())}
exec {shlex.quote(python)} -m course_lib.grade "$copy" --name="$student" --origin="$origin" \\
  --slot $((SLURM_ARRAY_TASK_ID % {SLOTS})) --out {shlex.quote(str(out))} {hides} \\
  --memory-gib {mem_gib - TASK_OVERHEAD_GIB} {" ".join(shlex.quote(a) for a in grader_args)}
"""


def roster_text(copies: list[tuple[str, Path]], origins: dict[str, str] | None = None) -> str:
    """A roster: one "student<TAB>private copy<TAB>origin" line per submission (what tasks and
    collect read); the origin, the submitted file's path, is the student's name where that path
    holds a character that is not printable (a tab or a new line could forge a line)."""
    origins = origins or {}
    return "".join(f"{name}\t{path}\t{_printable(origins.get(name, ''), name)}\n"
                   for name, path in copies)


def _printable(text: str, otherwise: str) -> str:
    return text if text and text.isprintable() else otherwise


def collect_command(out: Path, sudo: bool | None = None) -> str:
    """The command that merges OUT's reports: this Python (the venv's), with sudo where the
    grader runs as root (``sudo`` None), since its reports are then root's."""
    sudo = os.geteuid() == 0 if sudo is None else sudo
    return (f"{'sudo ' if sudo else ''}{shlex.quote(sys.executable)} -m course_lib.grade collect "
            f"{shlex.quote(str(out))}")


def grader_options(grader_args: list[str]) -> argparse.Namespace:
    """The options every task's grader will get, read now by the grader's own parser, as each
    task will read them: a typo fails here, once, not in every task of the array, and an
    abbreviation (``--private-j FILE``) names the same judges here as there. Raises ValueError."""
    parser = build_parser()
    parser.exit_on_error = False
    try:
        options, unknown = parser.parse_known_args(["SUBMISSIONS", *grader_args])
    except argparse.ArgumentError as err:
        raise ValueError(str(err)) from None
    if unknown:
        raise ValueError(f"unrecognized arguments: {' '.join(unknown)}")
    problem = option_error(options)
    if problem:
        raise ValueError(problem)
    return options


def task_minutes(options: argparse.Namespace) -> int:
    """The minutes a task needs: the grader's worst case for one submission, and a margin."""
    return math.ceil((worst_case_seconds(options.timeout, options.sample_timeout)
                      + MARGIN_SECONDS) / 60)


def task_problem(options: argparse.Namespace, cpus: int, mem_gib: int, minutes: int,
                 parallel: int) -> str:
    """What is wrong with the Slurm options for these grader options ("" if nothing)."""
    if cpus < 1 or parallel < 0:
        return "--cpus must be >= 1 and --parallel >= 0 (0: no limit)"
    share = mem_gib - TASK_OVERHEAD_GIB   # what the task's notebook gets
    if share < MIN_MEMORY_GIB:
        return (f"--mem-gib must be at least {MIN_MEMORY_GIB + TASK_OVERHEAD_GIB}: the notebook "
                f"gets {TASK_OVERHEAD_GIB} GiB less (its /tmp and /dev/shm live in memory, and the "
                f"grader itself runs in the task), and 06 promises it {MIN_MEMORY_GIB} GiB")
    if options.memory_gib is not None and options.memory_gib > share:
        return (f"--memory-gib {options.memory_gib:g} is more than a task of --mem-gib {mem_gib} "
                f"leaves its notebook ({share} GiB): raise --mem-gib to "
                f"{math.ceil(options.memory_gib) + TASK_OVERHEAD_GIB}, or leave --memory-gib out")
    needed = task_minutes(options)
    if minutes < needed:
        return (f"--minutes {minutes} is shorter than a submission may take with --timeout "
                f"{options.timeout:.0f} and --sample-timeout {options.sample_timeout:.0f}: at "
                f"least {needed} (leave --minutes out to get that)")
    return ""


def submit(submissions: Path, out: Path, grader_args: list[str], *, dry_run: bool = False,
           wait: bool = False, cpus: int = 2, mem_gib: int = DEFAULT_TASK_MEM_GIB,
           minutes: int | None = None,
           parallel: int = 0) -> int:
    """Snapshot the cohort, write the array script, and submit it (or only write it).
    ``minutes`` None: what the grader's time limits need (:func:`task_minutes`)."""
    if not submissions.exists():
        print(f"could not grade: {submissions} does not exist", file=sys.stderr)
        return 2
    if not submissions.is_dir() and submissions.suffix.lower() != ".ipynb":
        print(f"could not grade: {submissions} is not a .ipynb notebook; give a folder of "
              "notebooks (or one)", file=sys.stderr)
        return 2
    try:
        options = grader_options(grader_args)
    except ValueError as err:
        print(f"could not grade: {one_line(err)}; the grader's options are listed by "
              "python -m course_lib.grade --help (nothing was copied or submitted)", file=sys.stderr)
        return 2
    minutes = task_minutes(options) if minutes is None else minutes
    problem = task_problem(options, cpus, mem_gib, minutes, parallel)
    if problem:
        print(f"could not grade: {problem} (nothing was copied or submitted)", file=sys.stderr)
        return 2
    problem = writable_error(out.resolve())
    if problem:
        print(f"could not grade: {problem}", file=sys.stderr)
        return 2
    notebooks = find_submissions(submissions) if submissions.is_dir() else [submissions]
    if not notebooks:
        return 2
    if not dry_run and shutil.which("sbatch") is None:   # before anything is trained or moved
        print("could not grade: sbatch not found; install Slurm (Debian: apt-get install "
              "slurm-wlm), or write the script with --dry-run and submit it from a login node",
              file=sys.stderr)
        return 2
    if wait and shutil.which("squeue") is None:
        print("could not grade: --wait asks squeue when the array has ended, and squeue is not "
              "found; put Slurm's bin folder on PATH, or submit without --wait and collect "
              "later", file=sys.stderr)
        return 2
    judge = options.private_judge
    if judge is None:
        judge = private_judge_path()
        grader_args = [*grader_args, "--private-judge", str(judge)]
    if not dry_run:   # one set of private judges for the cohort, trained here, not in each task
        try:          # (first: nothing is copied or moved for a grader that cannot judge)
            ensure_private_judge(judge)
        except CannotGrade as err:
            print(f"could not grade: {err}", file=sys.stderr)
            return 2
    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as held:   # a dry run moves no report: another may grade there
        if not dry_run and not claim_out(held, out, "nothing was copied or submitted"):
            return 2
        code, job_id = _submit_into(out, submissions, notebooks, grader_args, options, judge,
                                    dry_run=dry_run, cpus=cpus, mem_gib=mem_gib,
                                    minutes=minutes, parallel=parallel)
    # OUT is let go while the array runs: running_array keeps other gradings out, and a collect
    # in another terminal may look
    return wait_for_array(out, job_id) if wait and job_id else code


def _submit_into(out: Path, submissions: Path, notebooks: list[Path], grader_args: list[str],
                 options: argparse.Namespace, judge: Path, *, dry_run: bool, cpus: int,
                 mem_gib: int, minutes: int, parallel: int) -> tuple[int, str]:
    """:func:`submit`'s work once ``out`` is this grading's to write: (exit status, the job id
    submitted, or "")."""
    job = Path(tempfile.mkdtemp(prefix=f".slurm-{time.strftime('%Y%m%d-%H%M%S')}-", dir=out))
    (job / "copies").mkdir()   # mkdtemp made the job folder private (0700) and unique
    copies = snapshot(notebooks, job / "copies")
    origins = {name: origin_of(path) for (name, _), path in zip(copies, notebooks)}
    # a copy snapshot could not make is graded here, where its reason is: no task for it
    unreadable = [(name, copy) for name, copy in copies if why_unreadable(copy) is not None]
    tasks = [c for c in copies if c not in unreadable]
    roster = job / "roster.txt"          # the script's; OUT/roster.txt only once it is submitted
    roster.write_text(roster_text(tasks, origins))
    folder = submissions if submissions.is_dir() else submissions.parent
    script = job / "grade.sbatch"
    script.write_text(sbatch_script(roster, out, max(1, len(tasks)), grader_args, cpus=cpus,
                                    mem_gib=mem_gib, minutes=minutes, parallel=parallel,
                                    hide=[folder.resolve()]))
    print(f"wrote {script} ({len(tasks)} array tasks)")
    for name, copy in unreadable:
        print(f"not a task: {name}: {one_line(why_unreadable(copy)['why'])}", file=sys.stderr)
    if dry_run:
        judges = "" if judge.is_file() else (f", and first trains the private judges ({judge} is "
                                              "not there yet: tasks submitted by hand would each "
                                              "train their own)")
        (out / "logs").mkdir(exist_ok=True)   # where the script's tasks write their logs
        print(f"the reports in {out} are untouched: this script, and the private copies of the "
              f"notebooks beside it in {job}, are for reading. To grade, run the same command "
              "without --dry-run, which also sets old reports aside, writes "
              f"{out / 'roster.txt'} for collect and reports the notebooks that are not tasks"
              f"{judges}; submitted by hand (sbatch {script}), none of that happens")
        return 0, ""
    # no stale report may stand in for a task that fails: set aside, restored if sbatch refuses
    to = out / "previous" / job.name[1:]
    try:
        aside = set_aside(out, [name for name, _ in copies], to, books=(*BOOKS, *SLURM_BOOKS))
        try:   # the old logs went with the old reports: task i's is logs/task-i.log
            (out / "logs").mkdir(exist_ok=True)
        except OSError:
            put_back(aside, out)
            raise
    except OSError as err:
        print(f"could not grade: cannot set the earlier reports in {out} aside ({one_line(err)}); "
              "nothing was submitted", file=sys.stderr)
        return 2, ""
    # line i+1: task i's student
    (out / "roster.txt").write_text(roster_text(tasks + unreadable, origins))
    for name, copy in unreadable:
        write_report(unreadable_report(copy, name, origins[name], options.threshold), out)
    if not tasks:
        print("no notebook to run: every submission was unreadable")
        return collect(out), ""
    # not sbatch --wait: its job id would come only when the array ends, too late for slurm-job.txt
    proc = subprocess.run(["sbatch", "--parsable", str(script)], capture_output=True, text=True)
    job_id = proc.stdout.strip().split(";")[0]
    if not job_id:    # nothing was submitted (with --wait too): put everything back
        for name, _ in unreadable:
            (out / f"{name}.json").unlink(missing_ok=True)
        (out / "roster.txt").unlink()
        if not any((out / "logs").iterdir()):
            (out / "logs").rmdir()   # the one made for this job, so that the old one comes back
        put_back(aside, out)
        if to.is_dir() and not any(to.iterdir()):
            to.rmdir()
        print(f"could not grade: sbatch failed: {proc.stderr.strip()} (nothing in {out} "
              "changed)", file=sys.stderr)
        return 2, ""
    (out / SLURM_JOB).write_text(proc.stdout.strip() + "\n")   # no other grading while it runs
    if proc.returncode != 0:
        print(f"warning: sbatch took job {job_id} but said: {proc.stderr.strip()}; check it "
              "with squeue", file=sys.stderr)
    print(f"submitted job {job_id}; when it ends: {collect_command(out)}", flush=True)
    return 0, job_id


def wait_for_array(out: Path, job_id: str, every: float = WAIT_SECONDS) -> int:
    """``--wait``: ask ``squeue`` every ``every`` seconds until the array has ended, then
    :func:`collect`. Ctrl-C stops the waiting, not the job."""
    said = False
    try:
        while True:
            state, _ = array_state(out)
            if state == "ended":
                return collect(out)
            if state == "unknown" and not said:   # a controller restarting: ask again
                print(f"note: squeue cannot say whether job {job_id} still runs; asking again "
                      f"every {every:.0f} s (Ctrl-C stops the waiting, not the job)", file=sys.stderr)
                said = True
            time.sleep(every)
    except KeyboardInterrupt:
        print(f"\nstopped waiting; Slurm job {job_id} goes on (squeue -j {job_id}); when it "
              f"ends: {collect_command(out)}", file=sys.stderr)
        return 130


def main(argv: list[str]) -> int:
    command, rest = argv[0], argv[1:]
    if command == "collect":
        parser = argparse.ArgumentParser(prog="python -m course_lib.grade collect",
                                         description="Merge OUT/*.json into OUT/gradebook.csv.")
        parser.add_argument("out", type=Path)
        out = parser.parse_args(rest).out
        if not os.path.isdir(out):
            return collect(out)   # says so
        try:
            with hold_out(out, arrays=False):   # a look at a running array's reports: allowed
                return collect(out)
        except OutBusy as err:
            print(f"could not collect: {err}; collect once it has ended", file=sys.stderr)
            return 2
    parser = argparse.ArgumentParser(
        prog="python -m course_lib.grade slurm",
        description="Grade a folder as a Slurm job array, one sandboxed task per submission. "
                    "Options not listed here (--samples-per-digit, --profile, --timeout, ...) "
                    "are passed to every task's grader.")
    parser.add_argument("submissions", type=Path)
    parser.add_argument("--out", type=Path, default=Path("grades"))
    parser.add_argument("--cpus", type=int, default=2, help="CPUs per task (default %(default)s)")
    parser.add_argument("--mem-gib", type=int, default=DEFAULT_TASK_MEM_GIB,
                        help=f"memory per task (default %(default)s); its notebook gets "
                             f"{TASK_OVERHEAD_GIB} GiB less, what the grader's own default gives")
    parser.add_argument("--minutes", type=int, default=None,
                        help="time limit per task (default: what --timeout and --sample-timeout "
                             "need, with a margin: "
                             f"{task_minutes(grader_options([]))} with the "
                             "grader's defaults)")
    parser.add_argument("--parallel", type=int, default=0,
                        help="at most this many tasks at once (default 0: no limit)")
    parser.add_argument("--dry-run", action="store_true", help="write the script, do not submit")
    parser.add_argument("--wait", action="store_true", help="wait for the array, then collect")
    args, grader_args = parser.parse_known_args(rest)
    return submit(args.submissions, args.out, grader_args, dry_run=args.dry_run, wait=args.wait,
                  cpus=args.cpus, mem_gib=args.mem_gib, minutes=args.minutes,
                  parallel=args.parallel)
