"""Instructor grading of 06_Assessment: ``python -m course_lib.grade SUBMISSION.ipynb|FOLDER``.

Every submission is untrusted. Before anything runs, every notebook is copied into a private
folder (the grader reads those copies only: ``course_lib/grade_intake.py``). Then, for each
one, three steps; each raises :class:`~course_lib.grade_checks.Rejected` with a one-line reason,
caught in one place (:func:`grade_one`) and reported as a FAIL:

1. **read** (:func:`~course_lib.grade_intake.read_submission`): a valid notebook, every cell's
   source text, no ``FIXME``;
2. **execute** (:func:`execute`): in a bubblewrap sandbox (``course_lib/sandbox.py``), run the
   notebook top to bottom in a fresh kernel; its appended last cell exports ``sample_digits``
   by value. Then the grader's own code calls it three times, each in a fresh sandboxed process
   that the notebook never ran in and a fresh copy of its folder: with hidden labels (a random
   number of each digit in a random order) and a hidden seed, with a second seed on a fifth of
   them, and with that fifth and seed again after every network weight is shuffled
   (``course_lib/grade_runner.py``); nothing carries over between the calls;
3. **judge** (:func:`judge`): outside the sandbox, read the samples file safely and check, with the
   verified judge (``course_lib/grade_checks.py``), that the samples are well formed, drawn
   afresh, not memorised, realistic (to the judge's features, and as ink on a plain background
   in pixels), drawn from the notebook's network (none left once its
   weights are shuffled), read as the digits asked for (>= ``--threshold``, and the second draw
   within five standard errors of it), and read about as well by each of the grader's private
   judges (pixels tuned to the public judge are not).

Exit status: 0 pass, 1 fail (the submission's fault, with the reason), 2 could not grade (the
grader's: its weights, data, sandbox, or a Python kernel that never started). Folders are graded
``--jobs`` at a time, each in its own sandbox with its share of the CPU threads and memory;
``python -m course_lib.grade slurm FOLDER`` grades them as a Slurm job array and
``python -m course_lib.grade collect OUT`` merges the reports into ``OUT/gradebook.csv``
(``course_lib/gradebook.py``). A folder's grading also writes ``OUT/review.html``, each
student's code beside its samples, for a person to read (``course_lib/review.py``). A grading
stopped (Ctrl-C, ``kill``, ``timeout``, ``scancel``) or killed outright ends its workers and the
notebooks they run with it, and writes no report for a notebook whose grading it cut short.

The grader's modules, each importing only those listed before it: ``grade_checks`` (the judges and
checks), ``grade_report`` (a submission's :class:`~course_lib.grade_report.Report`),
``grade_intake`` (submissions in), ``grade_out`` (the ``OUT`` folder: one grading at a time,
earlier reports set aside), ``grade_options`` (the command line), ``review`` and ``gradebook`` (a
cohort's review page, gradebook and Slurm array), and this one (running and judging).
"""
from __future__ import annotations

import contextlib
import copy
import errno
import json
import math
import os
import secrets
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from . import gradebook, sandbox
from .grade_checks import (PLAIN_SHARE, SAMPLES_FILE, CannotGrade, Judge, Rejected, check_drawn,
                           check_from_network, check_not_memorised, check_plain_background,
                           check_realistic, check_samples, check_second_draw, check_second_opinion,
                           ensure_private_judge, load_judge, load_private_judge, one_line,
                           plain_share, read_plain, read_samples)
from .grade_intake import (find_submissions, not_graded, origin_of, read_submission, snapshot,
                           student_name, unreadable_report)
from .grade_options import (DRAW_STARTUP, MARGIN_SECONDS, MIN_DRAW_SECONDS, SAMPLE_TIMEOUT,
                            build_parser, option_error, worst_case_seconds)
from .grade_out import BOOKS, claim_out, earlier_name, keep_earlier, writable_error
from .grade_report import (ERROR, FAIL, PASS, Report, per_digit_table, report_name, safe_name,
                           write_report)
from .grade_runner import GRADER_FAILED, NO_SAMPLER, NOT_EXPORTABLE
from .gradebook import (collect_command, load_reports, summary, write_gradebook,
                        write_review_page)
from .submission_code import for_report

SECOND_DRAW = 0.2                  # share of the labels (at least 20) drawn again, another seed
STOP_SECONDS = 30.0                # a worker stopped (SIGTERM) has this long to clean up
ERROR_CAP = 2**16                  # bytes of a cell's recorded error that the grader reads
WORKER_OF = "COURSE_GRADING_PID"   # in a --jobs worker's environment: the grading that started it
FOLDER_CAP = 4 * 2**30             # bytes the notebook may leave in its folder (copied for each draw)


@dataclass
class Options:
    samples_per_digit: int = 10
    threshold: float = 0.95
    timeout: float = 3600.0
    sample_timeout: float = SAMPLE_TIMEOUT
    profile: str = "full"
    out: Path = Path("grades")
    use_sandbox: bool = True
    slot: int = 0
    limits: sandbox.Limits = field(default_factory=sandbox.Limits)
    hide: tuple = ()
    seed: int | None = None  # None: a fresh secret seed per submission
    private_judge: Path | None = None   # None: this machine's (grade_checks.private_judge_path)
    keep_samples: bool = False


# --- 2. executing -------------------------------------------------------------------------------

def hidden_labels(n: int, rng: torch.Generator) -> list[int]:
    """Each digit between 0.8n and 1.2n times (a random count), in a random order."""
    low, high = max(1, math.floor(0.8 * n)), max(1, math.ceil(1.2 * n))
    counts = torch.randint(low, high + 1, (10,), generator=rng)
    labels = torch.arange(10).repeat_interleave(counts)
    return labels[torch.randperm(len(labels), generator=rng)].tolist()


@dataclass
class Run:
    draws: dict[str, torch.Tensor]   # "a", "b", "c" (c: empty when that draw gave no pictures)
    labels: list[int]
    positions_b: list[int]
    seconds_running: float
    seconds_sampling: float


def _runner(step: str, *args: str) -> list[str]:
    """The grader's step in the sandbox. ``-P``: the work folder (its current folder, the
    notebook's) is not put on ``sys.path``, so a ``json.py`` the notebook left there cannot stand
    in for a module the runner imports (``grade_runner.sample`` appends it, last, once they are
    loaded, for modules of the notebook's own)."""
    return [sys.executable, "-P", "-m", "course_lib.grade_runner", step, *args]


def _sandboxed(argv, workdir, timeout, opts: Options, env=None) -> sandbox.Result:
    try:
        return sandbox.run(argv, workdir, timeout, hide=list(opts.hide), env=env,
                           limits=opts.limits, slot=opts.slot, trusted=not opts.use_sandbox)
    except sandbox.SandboxUnavailable as err:
        raise CannotGrade(str(err)) from None


def _last_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else "no message"


def _over(who: str, over: str) -> str:
    """The reason for a step the sandbox stopped early (its folder or its memory, all processes
    together): the grading machine's disk and memory are shared by every submission."""
    return f"stopped: {who} {over}"


def _grader_failed(result: sandbox.Result) -> None:
    """CannotGrade where the runner's execute step failed in the sandbox before the notebook's
    code ran (a kernel that never started, a module missing): the grading machine's fault, exit 2
    (``grade_runner.GraderFailed``)."""
    if result.returncode == GRADER_FAILED:   # its line, not nbclient's clean-up noise after it
        said = next((ln for ln in result.stderr.splitlines() if ln.startswith("the grader's ")),
                    _last_line(result.stderr))
        raise CannotGrade(f"{said}; check the grader's Python environment (`make test` runs the "
                          "grader's own tests)")


def _memory_hint(opts: Options) -> str:
    return f" (it may have run out of its {opts.limits.memory_bytes / 2**30:.0f} GiB memory limit)"


def execute(nb, workdir: Path, opts: Options, rng: torch.Generator) -> Run:
    """Run the notebook in ``workdir``, then draw three times with the grader's code, each in a
    fresh sandboxed process and a fresh copy of ``workdir`` (:func:`_draw`); Rejected on failure."""
    import nbformat

    draw_dir = workdir.with_name(workdir.name + "-draw")
    inside = Path(sandbox.INSIDE_HOME) if opts.use_sandbox else workdir
    nbformat.write(runnable(nb), workdir / "submission.ipynb")
    sandbox.prepare_workdir(workdir, opts.slot)
    env = {"COURSE_PROFILE": opts.profile}
    result = _sandboxed(_runner("execute", str(inside / "submission.ipynb"),
                                str(inside / "export.pkl"), str(inside / "error.json")),
                        workdir, opts.timeout, opts, env)
    _grader_failed(result)
    if result.over:
        raise Rejected(_over("the notebook", result.over))
    if result.timed_out:
        raise Rejected(f"time-out: the notebook ran longer than {opts.timeout:.0f} s")
    if result.returncode == 3:
        raise Rejected(_cell_error(workdir / "error.json", len(nb.cells) + 1))
    if result.returncode != 0:
        reason = _last_line(result.stderr)
        if "DeadKernelError" in reason or "died" in reason:
            reason += _memory_hint(opts)
        raise Rejected(f"the notebook could not be executed: {reason}")
    # Step 1's processes are all gone; only now do the labels and seeds exist.
    labels = hidden_labels(opts.samples_per_digit, rng)
    positions_b = sorted(torch.randperm(len(labels), generator=rng)[
        :max(20, round(SECOND_DRAW * len(labels)))].tolist())
    seeds = torch.randint(0, 2**62, (3,), generator=rng).tolist()
    labels_b = [labels[i] for i in positions_b]
    draws, seconds, a_seconds = {}, 0.0, 0.0
    for name, seed, asked, shuffle in (("a", seeds[0], labels, False),
                                       ("b", seeds[1], labels_b, False),
                                       ("c", seeds[1], labels_b, True)):
        # b and c get the same time, so that the sampler cannot tell them apart by it either
        limit = (opts.sample_timeout if name == "a" else
                 max(MIN_DRAW_SECONDS, min(1.5 * a_seconds, (opts.sample_timeout - a_seconds) / 2)))
        spec = {"seed": seed, "labels": asked, "shuffle": shuffle, "seed_shuffle": seeds[2],
                "seconds": limit, "threads": opts.limits.threads}
        draws[name], took = _draw(workdir, draw_dir, spec, opts, env)
        seconds += took
        a_seconds = a_seconds or took
    return Run(draws, labels, positions_b, result.seconds, seconds)


def runnable(nb):
    """What the sandbox gets of the notebook: its cells' sources and tags (``raises-exception``,
    ``skip-execution``) and its kernel, nothing else. Outputs, attachments and other metadata
    could carry megabytes of stored pictures that no code cell, and so no review, shows."""
    nb = copy.deepcopy(nb)
    nb.metadata = {k: v for k, v in nb.metadata.items() if k in ("kernelspec", "language_info")}
    for cell in nb.cells:
        tags = cell.get("metadata", {}).get("tags")
        cell.metadata = {"tags": list(tags)} if tags else {}
        cell.pop("attachments", None)
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    return nb


def _draw(workdir: Path, draw_dir: Path, spec: dict, opts: Options, env: dict):
    """One call of ``sample_digits``, sandboxed, in a fresh copy of the notebook's folder; return
    the pictures (read safely) and the seconds. Nothing one draw leaves reaches the next."""
    inside = Path(sandbox.INSIDE_HOME) if opts.use_sandbox else draw_dir
    samples = draw_dir / SAMPLES_FILE
    sandbox.remove_tree(draw_dir)
    copy_folder(workdir, draw_dir, leave_out=("spec.json", SAMPLES_FILE))  # never the notebook's
    with open(draw_dir / "spec.json", "x") as file:   # "x": fails on anything already there
        file.write(json.dumps(spec))
    sandbox.prepare_workdir(draw_dir, opts.slot)
    result = _sandboxed(_runner("sample", str(inside / "export.pkl"), str(inside / "spec.json"),
                                str(inside / SAMPLES_FILE)),
                        draw_dir, spec["seconds"] + DRAW_STARTUP, opts, env)
    try:
        if result.over:   # a fault whichever draw it is
            raise Rejected(_over("sample_digits", result.over))
        if spec["shuffle"]:   # the network without its weights may fail: no pictures, not a fault
            ok = result.returncode == 0 and samples.exists()
            return (read_samples(samples) if ok else torch.empty(0)), result.seconds
        if result.timed_out:
            raise Rejected(f"time-out: sample_digits took longer than {spec['seconds']:.0f} s")
        if result.returncode != 0:
            reason = _last_line(result.stderr)
            if result.returncode < 0 or "Killed" in reason:
                reason += _memory_hint(opts)
            raise Rejected(f"sampling failed: {reason}")
        return read_samples(samples), result.seconds
    finally:
        sandbox.remove_tree(draw_dir)


def copy_folder(src: Path, dst: Path, cap: int = FOLDER_CAP,
                leave_out: tuple[str, ...] = (), depth: int = sandbox.Limits.folder_depth) -> None:
    """Copy the folder the notebook left: folders, regular files, and links as links (never
    followed); anything else (a pipe would block the copy) is left out, and so are the top-level
    names in ``leave_out`` (the grader's own files: a link the notebook planted under such a name
    must not redirect what the grader writes there). Rejected above ``cap`` bytes or ``depth``
    nested folders (walked with a list, not recursion: a deep tree cannot crash the grader)."""
    total = 0
    dst.mkdir()
    stack = [(src, dst, 0)]
    while stack:
        here, there, level = stack.pop()
        if level > depth:
            raise Rejected(f"the notebook left folders nested more than {depth} deep in its "
                           "folder; keep what sampling needs in a shallow folder")
        try:
            entries = sorted(os.scandir(here), key=lambda e: e.name)
        except OSError as err:   # a folder it locked, or a path it made too long: its fault
            raise _unreadable(err, here, src) from None
        for entry in entries:
            if level == 0 and entry.name in leave_out:
                continue
            path, target = Path(entry.path), there / entry.name
            try:
                info = path.lstat()
            except OSError as err:   # a folder it can list but not search: name that folder
                raise _unreadable(err, here, src) from None
            try:   # the copy's paths are a few characters longer: they may pass PATH_MAX first
                if stat.S_ISLNK(info.st_mode):
                    target.symlink_to(os.readlink(path))
                elif stat.S_ISDIR(info.st_mode):
                    target.mkdir()
                    stack.append((path, target, level + 1))
                elif stat.S_ISREG(info.st_mode):
                    total += info.st_size
                    if total > cap:
                        raise Rejected(f"the notebook left more than {cap / 2**30:.0f} GiB of files "
                                       "in its folder; each draw of sample_digits gets a copy, so "
                                       "delete what sampling does not need")
                    shutil.copyfile(path, target, follow_symlinks=False)
            except OSError as err:
                # a file it made unreadable, or a path too long to copy, is the notebook's fault;
                # the grader's own copy refusing a write (a full disk, an I/O error) is not
                copying = str(target) in (str(err.filename), str(err.filename2))
                if copying and err.errno != errno.ENAMETOOLONG:
                    raise
                raise _unreadable(err, path, src) from None


def _unreadable(err: OSError, path: Path, src: Path) -> Exception:
    """What the notebook left that the grader cannot copy: a locked file or folder (no read or
    search permission), or a path past the system's length limit, is the notebook's doing
    (Rejected); any other error (a full disk, an I/O error) is the grader's, and is raised."""
    if err.errno not in (errno.EACCES, errno.EPERM, errno.ENAMETOOLONG, errno.ELOOP):
        return err
    return Rejected(f"the notebook left what the grader cannot copy for each draw "
                    f"({one_line(path.relative_to(src))[:80]}: {err.strerror}); leave only "
                    "readable files and folders, with short paths, in its folder")


def _cell_error(path: Path, export_cell: int) -> str:
    try:   # read_plain: the notebook may have planted a link or a pipe under this name
        err = json.loads(read_plain(path, ERROR_CAP))
        cell, ename, evalue = err.get("cell"), str(err.get("ename")), str(err.get("evalue"))
    except (OSError, ValueError, AttributeError, RecursionError):
        return "a cell raised an error (no details were recorded)"
    said = evalue.split("GRADER:", 1)[1].strip() if "GRADER:" in evalue else ""
    head, tail = NOT_EXPORTABLE.split("{}")
    if cell == export_cell and (said == NO_SAMPLER or said.startswith(head) and said.endswith(tail)):
        return said   # the grader's own words, from its cell, in its own two forms only (the
                      # notebook could patch the export function the cell calls)
    where = "the grader's export cell" if cell == export_cell else f"cell {cell}"
    return f"{where} raised {ename}: {evalue}"


# --- 3. judging ---------------------------------------------------------------------------------

def judge(run: Run, judge_: Judge, report: Report, opts: Options) -> None:
    """Check the three draws and score the first; Rejected on any failed check."""
    start = time.perf_counter()
    draws = run.draws
    labels = torch.tensor(run.labels)
    check_samples(draws["a"], len(labels))
    check_samples(draws["b"], len(run.positions_b))
    first, second = draws["a"].float(), draws["b"].float()
    report.samples, report.second_draw_samples = len(labels), len(run.positions_b)
    check_drawn(first, second, run.positions_b)
    report.near_copies = check_not_memorised(torch.cat([first, second]), judge_)
    predicted = judge_.predict(first)
    correct = predicted == labels
    report.per_digit = {d: round(correct[labels == d].float().mean().item(), 4) for d in range(10)}
    report.accuracy = round(correct.float().mean().item(), 4)
    report.grid = str(save_grid(first, labels, predicted, opts.out / f"{report_name(report)}_samples.png"))
    if opts.keep_samples:
        torch.save({"images": first, "labels": labels},
                   opts.out / f"{report_name(report)}_samples.pt")
    distance, limit = check_realistic(first, labels, judge_)
    report.frechet, report.frechet_limit = round(distance, 1), round(limit, 1)
    report.plain_background = round(check_plain_background(first), 4)
    if judge_.second is not None:
        report.second_opinion = round(check_second_opinion(first, labels, report.accuracy,
                                                           judge_.second), 4)
    shuffled = check_from_network(draws["c"], labels[run.positions_b], judge_)
    report.shuffled_accuracy = None if shuffled is None else round(shuffled, 4)
    report.second_draw_accuracy = round(
        (judge_.predict(second) == labels[run.positions_b]).float().mean().item(), 4)
    report.seconds_grading = time.perf_counter() - start
    if report.accuracy < opts.threshold:
        raise Rejected(f"accuracy {report.accuracy:.1%} is below {opts.threshold:.0%}")
    check_second_draw(report.second_draw_accuracy, len(run.positions_b), opts.threshold)


def save_grid(images: torch.Tensor, labels: torch.Tensor, predicted: torch.Tensor,
              path: Path) -> Path:
    """One row per digit (in label order); a red frame marks a sample the judge read otherwise."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from torchvision.utils import make_grid

    order = torch.argsort(labels, stable=True)
    framed = ((images[order].clamp(-1, 1) + 1) / 2).repeat(1, 3, 1, 1)
    wrong = (predicted != labels)[order]
    for edge in (0, -1):
        framed[wrong, :, edge, :] = torch.tensor([1.0, 0, 0]).reshape(1, 3, 1)
        framed[wrong, :, :, edge] = torch.tensor([1.0, 0, 0]).reshape(1, 3, 1)
    per_row = int(torch.bincount(labels, minlength=10).max())
    rows = []
    for d in range(10):
        digit = framed[labels[order] == d]
        pad = torch.zeros(per_row - len(digit), 3, 28, 28)
        rows.append(torch.cat([digit, pad]))
    grid = make_grid(torch.cat(rows), nrow=per_row, padding=2, pad_value=0.5)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig = plt.figure(figsize=(per_row * 0.45 + 0.5, 5))
    plt.imshow(grid.permute(1, 2, 0).numpy())
    plt.axis("off")
    plt.title("graded samples (rows: digits 0-9; red: misread)", fontsize=8)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


# --- one submission, with the one place that turns a Rejected into a FAIL ------------------------

_JUDGE: Judge | None = None


def grade_one(copy: Path, opts: Options, name: str | None = None,
              origin: str | None = None) -> Report:
    """Grade one private copy; never raises: pass, FAIL with a reason, or could not grade."""
    global _JUDGE
    name, origin = name or student_name(copy), origin or str(copy)
    report = unreadable_report(copy, name, origin, opts.threshold)
    if report is not None:   # never copied: nothing to run
        return report
    report = Report(origin, ERROR, student=name, threshold=opts.threshold)
    report.seed = secrets.randbits(62) if opts.seed is None else opts.seed
    report.threads = opts.limits.threads
    rng = torch.Generator().manual_seed(report.seed)
    try:   # for the review page; kept even when the notebook then fails, and never grades
        report.code = for_report(copy)
    except Exception as err:  # the grader's own bug here must not cost the grade
        print(f"note: the review page will show no code for {copy.name}: {type(err).__name__}",
              file=sys.stderr)
    try:
        nb = read_submission(copy)
        _JUDGE = _JUDGE or load_judge()
        _JUDGE.second = _JUDGE.second or load_private_judge(opts.private_judge)
        tmp = Path(tempfile.mkdtemp(prefix="work-", dir=copy.parent))
        try:   # sandbox.remove_tree: whatever the notebook left there (locked or deep folders) goes
            (tmp / "notebook").mkdir()
            run = execute(nb, tmp / "notebook", opts, rng)
            report.seconds_running, report.seconds_sampling = run.seconds_running, run.seconds_sampling
            judge(run, _JUDGE, report, opts)
        finally:
            sandbox.remove_tree(tmp)
        report.status = PASS
    except Rejected as rejected:
        report.status, report.reason = FAIL, rejected.reason
    except CannotGrade as err:
        report.status, report.reason = ERROR, one_line(f"could not grade: {err}")
    except Exception as err:  # the grader's own bug: say so, never a false pass or fail
        report.status = ERROR
        report.reason = Rejected(f"grader error {type(err).__name__}: {err}").reason
    # after the steps: one may lose its group
    report.sandbox = sandbox_label(opts.use_sandbox, opts.slot)
    return report


def sandbox_label(use_sandbox: bool, slot: int = 0) -> str:
    """How the report names the isolation: without root, the sandbox runs as the grader's uid;
    where the grader can make cgroups, the kernel holds each step's memory, processes and cores,
    elsewhere the checks each second do (and the report says why)."""
    if not use_sandbox:
        return "NONE (--no-sandbox)"
    label = "bubblewrap" if os.geteuid() == 0 else "bubblewrap, as your own uid (not root)"
    kernel = sandbox.kernel_limits(slot)
    if kernel.startswith("cgroup"):
        held = "memory and processes" if "no cpuset" in kernel else "memory, processes and cores"
        return f"{label}; {held} held by the kernel ({kernel})"
    return f"{label}; memory checked each second ({kernel})"


NOT_ROOT = ("note: not running as root, so each notebook runs as your own uid inside the sandbox "
            "(read-only files, no network, homes hidden) instead of a separate unprivileged uid: "
            "the process limit then comes on top of what your own processes use, and leftovers "
            "are killed only through the sandbox's PID namespace. Grade with sudo for the full "
            "isolation.")


# --- the command line ---------------------------------------------------------------------------

def _limits(jobs: int, memory_gib: float | None, slot: int = 0,
            longest_run: float = 3600 + DRAW_STARTUP) -> sandbox.Limits:
    """A slot's share of the machine: its cores (and as many threads), its memory, and CPU time
    for twice the ``longest_run`` seconds of its threads all busy (RLIMIT_CPU counts every thread
    of a process: a fixed 4 hours stopped a 16-thread notebook after 15 minutes)."""
    import psutil

    cpus = sandbox.slot_cpus(slot, jobs)
    threads = len(cpus) or max(1, len(sandbox.host_cores()) // jobs)
    share = psutil.virtual_memory().total * 0.8 / jobs
    memory = int(memory_gib * 2**30) if memory_gib else int(min(8 * 2**30, max(2 * 2**30, share)))
    cpu_seconds = max(sandbox.Limits.cpu_seconds, math.ceil(2 * threads * longest_run))
    return sandbox.Limits(memory_bytes=memory, threads=threads, cpus=cpus, cpu_seconds=cpu_seconds)


def main(argv=None) -> int:
    with sandbox.exit_on_sigterm():   # stopped by kill or scancel, it still cleans up after itself
        return _main(argv)


def _main(argv) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] in (["collect"], ["slurm"]):
        return gradebook.main(argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    problem = option_error(args)
    if problem:
        parser.error(problem)
    parent = os.environ.pop(WORKER_OF, None)
    if args.slot is not None and parent and not sandbox.end_with_parent(int(parent)):
        print("could not grade: the grading that started this worker has already ended",
              file=sys.stderr)
        return 2
    if args.submission.is_dir():
        submissions = find_submissions(args.submission)
        if not submissions:
            return 2
    elif args.submission.exists():
        if args.submission.suffix.lower() != ".ipynb":
            print(f"could not grade: {args.submission} is not a .ipynb notebook; give a student's "
                  "notebook, or a folder of them", file=sys.stderr)
            return 2
        submissions = [args.submission]
    else:
        print(f"could not grade: {args.submission} does not exist", file=sys.stderr)
        return 2
    problem = args.json and writable_error(args.json.resolve().parent, "--json", also=())
    if problem:
        print(f"could not grade: {problem}", file=sys.stderr)
        return 2
    index = args.slot or 0   # this worker's share of the cores; its sandbox slot is claimed:
    slot = index             # another grader on this machine may hold that one
    if not args.no_sandbox:
        try:
            slot = sandbox.claim_slot(index)
        except sandbox.SandboxUnavailable as err:
            print(f"could not grade: {err}", file=sys.stderr)
            return 2
    try:
        return _grade_all(args, submissions, index, slot)
    finally:
        sandbox.release_slot(slot)


def _grade_all(args, submissions: list[Path], index: int, slot: int) -> int:
    """:func:`main`'s work, in sandbox ``slot`` (held), with core share ``index``."""
    if not args.no_sandbox:
        try:
            sandbox.require(slot)
        except sandbox.SandboxUnavailable as err:
            print(f"could not grade: {err}", file=sys.stderr)
            return 2
        if os.geteuid() != 0:
            print(NOT_ROOT, file=sys.stderr)
    out = args.out.resolve()
    problem = writable_error(out)
    if problem:
        print(f"could not grade: {problem}", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as held:   # a worker's or task's OUT: its parent's, submit's
        if args.slot is None and not claim_out(held, out, "nothing was moved or graded"):
            return 2
        return _grade_into(out, args, submissions, index, slot)


def _grade_into(out: Path, args, submissions: list[Path], index: int, slot: int) -> int:
    """:func:`_grade_all`'s work once ``out`` is this grading's to write."""
    try:   # before any worker starts: they all read the one file
        judge_file = ensure_private_judge(args.private_judge).resolve()
    except CannotGrade as err:
        print(f"could not grade: {err}", file=sys.stderr)
        return 2
    private = Path(tempfile.mkdtemp(prefix="course-grade-"))
    try:
        copies = snapshot(submissions, private)
        given = args.name
        if given is None and args.slot is None and not args.submission.is_dir():
            given = earlier_name(out, args.submission, copies[0][0])
        if args.slot is None:   # the instructor's own command (workers, tasks: set aside already)
            try:
                keep_earlier(out, [safe_name(given)] if given and len(copies) == 1 else
                              [name for name, _ in copies],
                              books=BOOKS if args.submission.is_dir() else ())
            except OSError as err:
                print(f"could not grade: cannot set the earlier reports in {out} aside "
                      f"({one_line(err)}); nothing was moved or graded", file=sys.stderr)
                return 2
        opts = Options(args.samples_per_digit, args.threshold, args.timeout, args.sample_timeout,
                       args.profile, out, not args.no_sandbox, slot,
                       _limits(args.jobs, args.memory_gib, index,
                               max(args.timeout, args.sample_timeout + DRAW_STARTUP)),
                       hide=_hidden(args.submission, out, private,
                                    [*args.hide, judge_file.parent]), seed=args.seed,
                       keep_samples=args.keep_samples, private_judge=judge_file)
        if len(copies) == 1 or args.jobs == 1:
            origins = {name: origin_of(path) for (name, _), path in zip(copies, submissions)}
            reports = [_grade_here(c, opts, given if len(copies) == 1 else None,
                                   args.origin or origins[c[0]]) for c in copies]
        else:
            reports = _grade_parallel(copies, submissions, args, out, opts, private)
        if args.submission.is_dir():
            print(summary(reports))
            skipped = not_graded(args.submission)
            if skipped:   # again, beside the summary: the first note scrolled away hours ago
                print(skipped)
            write_gradebook(reports, out / "gradebook.csv")
            write_review_page(reports, out)
            others = {r.student for r in load_reports(out)} - {r.student for r in reports}
            if others:
                print(f"note: {out} also holds reports of {len(others)} other student(s) from "
                      "earlier runs, left out of this gradebook; one gradebook for them all: "
                      f"{collect_command(out)}")
    finally:
        sandbox.remove_tree(private)
    if args.json:   # a folder's reports as a list (one student or many), a notebook's as one
        data = [asdict(r) for r in reports]
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(data if args.submission.is_dir() else data[0], indent=2))
    codes = {r.exit_code for r in reports}
    return 2 if 2 in codes else 1 if 1 in codes else 0


def _hidden(submission: Path, out: Path, private: Path, more=()) -> tuple:
    """Folders no sandbox may see: the submissions, the reports, the private copies, the home."""
    folder = submission if submission.is_dir() else submission.parent
    hide = [folder.resolve(), out, private, *(Path(p).resolve() for p in more)]
    home = Path(os.path.expanduser("~")).resolve()
    if home != Path("/"):
        hide.append(home)
    return tuple(hide)


def _grade_here(copy: tuple[str, Path], opts: Options, name: str | None, origin: str) -> Report:
    student, path = copy
    report = grade_one(path, opts, name or student, origin)
    write_report(report, opts.out)
    print(report.text() + "\n", flush=True)
    return report


def _grade_parallel(copies, submissions, args, out: Path, opts: Options,
                    scratch: Path) -> list[Report]:
    """One worker process per submission, ``--jobs`` at a time, each in its own sandbox slot,
    with its temporary files under ``scratch`` (removed by the caller, even after a worker that
    was killed and could not remove its own)."""
    slots = list(range(args.jobs))
    forwarded = ["--samples-per-digit", str(args.samples_per_digit), "--threshold",
                 str(args.threshold), "--timeout", str(args.timeout), "--sample-timeout",
                 str(args.sample_timeout), "--profile", args.profile, "--out", str(out),
                 "--jobs", str(args.jobs)]
    if args.no_sandbox:
        forwarded.append("--no-sandbox")
    if args.memory_gib:
        forwarded += ["--memory-gib", str(args.memory_gib)]
    if args.seed is not None:
        forwarded += ["--seed", str(args.seed)]
    if args.keep_samples:
        forwarded.append("--keep-samples")
    if args.private_judge:
        forwarded += ["--private-judge", str(args.private_judge)]
    for path in opts.hide:
        forwarded += ["--hide", str(path)]
    origins = {name: origin_of(path) for (name, _), path in zip(copies, submissions)}

    def work(copy):
        student, path = copy
        unreadable = unreadable_report(path, student, origins[student], args.threshold)
        if unreadable is not None:
            write_report(unreadable, out)
            print(unreadable.text() + "\n", flush=True)
            return unreadable
        report_file = out / f"{safe_name(student)}.json"   # none now: keep_earlier moved it
        limit = worst_case_seconds(args.timeout, args.sample_timeout) + MARGIN_SECONDS
        slot = slots.pop()
        tmp = Path(tempfile.mkdtemp(prefix=f"worker-{slot}-", dir=scratch))
        env = {**os.environ, "TMPDIR": str(tmp), WORKER_OF: str(os.getpid())}
        try:
            proc = workers.run([sys.executable, "-m", "course_lib.grade", str(path),
                                *forwarded, "--slot", str(slot), f"--name={student}",
                                f"--origin={origins[student]}"],   # "=": a name may start with -
                               limit, env)
            if workers.stopped:   # by the instructor: no report says the student's notebook failed
                return None
            print(proc.stdout[-4000:], flush=True)
            said = _last_line("\n".join(ln for ln in proc.stdout.splitlines()   # not the grader's
                                        if not ln.startswith("note:")))[:200]   # own notes
            ended = (f"was killed by signal {-proc.returncode} (SIGKILL: often out of memory)"
                     if proc.returncode == -signal.SIGKILL else
                     f"was killed by signal {-proc.returncode}" if proc.returncode < 0 else
                     f"exited with code {proc.returncode} ({said})")
        except subprocess.TimeoutExpired:
            if workers.stopped:   # its time ran out as the grading was stopped: not its fault
                return None
            ended = f"was stopped after {limit:.0f} s"
        finally:
            slots.append(slot)
        try:
            return Report(**json.loads(report_file.read_text()))
        except (OSError, ValueError, TypeError):   # kept, so that collect lists this student too
            report = Report(origins[student], ERROR, student=student, threshold=args.threshold,
                            sandbox=sandbox_label(opts.use_sandbox, slot),
                            reason=one_line(f"could not grade: the grading worker {ended} and "
                                            "wrote no report; grade this notebook alone to see "
                                            "why"))
            write_report(report, out)
            return report

    workers = _Workers()
    with ThreadPoolExecutor(args.jobs) as pool:
        try:
            return list(pool.map(work, copies))
        except BaseException:   # Ctrl-C or SIGTERM: no worker goes on, none starts
            pool.shutdown(wait=False, cancel_futures=True)
            workers.stop()
            raise


class _Workers:
    """The grading workers running now, so that a grading that is stopped stops them too and
    starts no more. (A grading killed outright cannot: each worker asks the kernel to end it
    then, :func:`sandbox.end_with_parent`.)"""

    def __init__(self):
        self.running, self.stopped, self.lock = set(), False, threading.Lock()

    def run(self, argv: list[str], timeout: float, env: dict) -> subprocess.CompletedProcess:
        """``subprocess.run(argv)``, output and errors together; past ``timeout`` stopped (SIGTERM,
        then SIGKILL if it has not ended in STOP_SECONDS) and TimeoutExpired raised; CannotGrade
        once :meth:`stop` was called. Each worker runs in a session of its own, so that Ctrl-C
        or a signal to the grading's process group reaches it once, from here."""
        with self.lock:
            if self.stopped:
                raise CannotGrade("the grading was stopped")
            proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    text=True, env=env, start_new_session=True)
            self.running.add(proc)
        try:
            output, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.terminate()   # it kills its sandbox and frees its slot on the way out
            try:
                proc.communicate(timeout=STOP_SECONDS)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
            raise
        finally:
            with self.lock:
                self.running.discard(proc)
        return subprocess.CompletedProcess(argv, proc.returncode, output)

    def stop(self) -> None:
        """SIGTERM to each (it stops its sandbox and frees its slot on the way out), and SIGKILL
        to any still running STOP_SECONDS later: a stopped grading waits no longer than that."""
        with self.lock:
            self.stopped = True
            for proc in self.running:
                proc.terminate()
        late = threading.Timer(STOP_SECONDS, self._kill_running)
        late.daemon = True
        late.start()

    def _kill_running(self) -> None:
        with self.lock:
            for proc in self.running:
                proc.kill()


def self_check(sample_fn, samples_per_digit: int = 10, seed: int = 123,
               threshold: float = 0.95) -> dict:
    """Student-side preview: per-digit accuracy of ``sample_fn(labels)`` by the course classifier.

    Not the grade: the grader re-runs the whole notebook in a fresh kernel, with hidden seeds and
    labels, and also checks that the samples are generated (not stored, copied or drawn).
    """
    torch.manual_seed(seed)
    labels = torch.arange(10).repeat_interleave(samples_per_digit)
    with torch.no_grad():
        images = sample_fn(labels.clone())
    try:
        check_samples(images.detach().cpu() if isinstance(images, torch.Tensor) else images,
                      len(labels))
    except Rejected as problem:
        print(f"Your samples would not be graded: {problem.reason}")
        return {}
    judge_ = load_judge_classifier()
    with torch.no_grad():
        predicted = judge_(images.detach().cpu().float()).argmax(dim=1)
    per_digit = {d: (predicted[labels == d] == d).float().mean().item() for d in range(10)}
    overall = (predicted == labels).float().mean().item()
    plain = plain_share(images.detach().cpu()).mean().item()
    print("\n".join(per_digit_table(per_digit)))
    print(f"overall {overall:.1%}: {'at or above' if overall >= threshold else 'BELOW'} the "
          f"{threshold:.0%} needed to pass.")
    print(f"plain background: {plain:.0%} of the pixels "
          f"({'enough' if plain >= PLAIN_SHARE else 'TOO LITTLE'}: the grader fails samples under "
          f"{PLAIN_SHARE:.0%}; digits are ink on a plain background, and noise left in the "
          "samples lowers it).")
    print("This is a preview. Your grade is computed separately by the instructor's grader, which "
          "re-runs your whole notebook in a fresh kernel with its own seeds.")
    return {"per_digit": per_digit, "overall": overall, "plain_background": plain}


def load_judge_classifier():
    """The judge alone (no reference data), from the verified weights: for self_check."""
    import io

    from .classifier import DigitClassifier
    from .grade_checks import verified_bytes

    model = DigitClassifier()
    model.load_state_dict(torch.load(io.BytesIO(verified_bytes()), weights_only=True)["model"])
    return model.eval()


if __name__ == "__main__":
    sys.exit(main())
