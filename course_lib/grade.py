"""Instructor grading of 06_Assessment: ``python -m course_lib.grade SUBMISSION.ipynb|FOLDER``.

Every submission is untrusted. Before anything runs, every notebook is copied into a private
folder (the grader reads those copies only). Then, for each one, three steps; each raises
:class:`~course_lib.grade_checks.Rejected` with a one-line reason, caught in one place
(:func:`grade_one`) and reported as a FAIL:

1. **read** (:func:`read_submission`): a valid notebook, every cell's source text, no ``FIXME``;
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
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import errno
import hashlib
import json
import math
import os
import re
import secrets
import shutil
import signal
import socket
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

from . import sandbox
from .grade_checks import (PLAIN_SHARE, PRIVATE_JUDGES, SAMPLES_FILE, SECOND_OPINION_GAP,
                           SHUFFLED_LIMIT, CannotGrade, Judge, NotPlain, Rejected, TooBig, check_drawn,
                           check_from_network, check_not_memorised, check_plain_background,
                           check_realistic, check_samples, check_second_draw, check_second_opinion,
                           ensure_private_judge, load_judge, load_private_judge, one_line,
                           plain_share, read_plain, read_samples, second_draw_floor)
from .grade_runner import GRADER_FAILED, NO_SAMPLER, NOT_EXPORTABLE
from .storage import save_json_atomic
from .submission_code import EXERCISE, NOTEBOOK_CAP, for_report

PASS, FAIL, ERROR = "pass", "fail", "could not grade"
SKIPPING_TAGS = ("raises-exception", "nbval-skip", "skip-execution")  # removed: every cell must run
FIXME = re.compile(r"\bFIXME\b")
SECOND_DRAW = 0.2                  # share of the labels (at least 20) drawn again, another seed
SAMPLE_TIMEOUT = 1050.0            # seconds for draw a; b and c: 1.5x a's time, at most half of
                                   # what a left (and MIN_DRAW_SECONDS at least)
DRAW_STARTUP = 120.0               # seconds more per draw's process: starting Python, loading the export
MIN_DRAW_SECONDS = 60.0            # draws b and c get at least this, whatever a took
STOP_SECONDS = 30.0                # a worker stopped (SIGTERM) has this long to clean up
MARGIN_SECONDS = 600.0             # a worker's or Slurm task's time beyond the grader's limits:
                                   # Python, MNIST and the judges loaded, the folder copied
MIN_MEMORY_GIB = 2                 # what 06's cell 0 promises each notebook at least
ERROR_CAP = 2**16                  # bytes of a cell's recorded error that the grader reads
OUT_LOCK = ".grading.lock"         # in OUT: held by the one grading writing there (hold_out)
BOOKS = ("gradebook.csv", "review.html")   # a folder run's files in OUT, beside the reports
SLURM_JOB = "slurm-job.txt"                # in OUT: the job id of the array submitted there
SLURM_BOOKS = ("roster.txt", "logs", SLURM_JOB)   # a Slurm run's too: roster, logs, its job
WORKER_OF = "COURSE_GRADING_PID"   # in a --jobs worker's environment: the grading that started it
FOLDER_CAP = 4 * 2**30             # bytes the notebook may leave in its folder (copied for each draw)


@dataclass
class Report:
    """The outcome of grading one submission."""

    submission: str
    status: str
    reason: str = ""
    student: str = ""
    accuracy: float | None = None
    per_digit: dict = field(default_factory=dict)
    threshold: float = 0.95
    samples: int | None = None
    near_copies: int | None = None
    frechet: float | None = None
    frechet_limit: float | None = None
    plain_background: float | None = None   # the samples' mean share of plain-background pixels
    shuffled_accuracy: float | None = None   # the judge on the draw with shuffled weights
    second_draw_accuracy: float | None = None   # the judge on the second draw (another seed)
    second_draw_samples: int | None = None      # how many samples that draw asked for
    second_opinion: float | None = None   # the strictest private judge's share read as asked for
    seconds_running: float | None = None
    seconds_sampling: float | None = None
    seconds_grading: float | None = None
    sandbox: str = "bubblewrap"
    grid: str | None = None
    code: dict | None = None   # what the student wrote, for the review page (submission_code)
    seed: int | None = None    # the hidden seed drawn for this grading: --seed reproduces it
    threads: int | None = None   # CPU threads the notebook ran with: the same, to reproduce it

    @property
    def exit_code(self) -> int:
        return {PASS: 0, FAIL: 1}.get(self.status, 2)

    def text(self) -> str:
        lines = [f"submission: {one_line(self.submission)}",
                 f"result:     {self.status.upper()}" + (f": {self.reason}" if self.reason else "")]
        lines += per_digit_table(self.per_digit)
        if self.accuracy is not None:
            lines.append(f"overall:    {self.accuracy:.1%} of {self.samples} samples "
                         f"(pass at >= {self.threshold:.0%})")
        if self.near_copies is not None:
            lines.append(f"near-copies of MNIST images: {self.near_copies}")
        if self.frechet is not None:
            lines.append(f"Fréchet distance to real digits: {self.frechet:.1f} "
                         f"(limit {self.frechet_limit or 0:.1f})")
        if self.plain_background is not None:
            lines.append(f"plain background: {self.plain_background:.0%} of the pixels "
                         f"(at least {PLAIN_SHARE:.0%}; real digits about 80%)")
        if self.second_opinion is not None:
            lines.append(f"independent judges (private, the strictest of {PRIVATE_JUDGES}): "
                         f"{self.second_opinion:.1%} read as asked for "
                         f"(may not fall more than {SECOND_OPINION_GAP * 100:.0f} points below "
                         "the judge's)")
        if self.second_draw_accuracy is not None:
            floor = second_draw_floor(self.threshold, self.second_draw_samples or 1)
            lines.append(f"second draw (another seed): {self.second_draw_accuracy:.0%} of "
                         f"{self.second_draw_samples} read as asked for (at least {floor:.0%})")
        if self.shuffled_accuracy is not None:
            lines.append(f"with the network's weights shuffled: {self.shuffled_accuracy:.0%} read "
                         f"as asked for (must stay under {SHUFFLED_LIMIT:.0%})")
        if self.seconds_running is not None:
            lines.append(f"time: {self.seconds_running:.0f} s running the notebook, "
                         f"{self.seconds_sampling or 0:.0f} s sampling, "
                         f"{self.seconds_grading or 0:.1f} s judging")
        lines.append(f"sandbox:    {self.sandbox}")
        if self.grid:
            lines.append(f"samples grid: {self.grid}")
        return "\n".join(lines)


def per_digit_table(per_digit: dict) -> list[str]:
    """Two aligned lines, digits and their accuracies: the report and self_check print the same."""
    if not per_digit:
        return []
    return ["digit    " + " ".join(f"{d:>5}" for d in per_digit),
            "accuracy " + " ".join(f"{a:>5.0%}" for a in per_digit.values())]


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


# --- 0. private copies --------------------------------------------------------------------------

def safe_name(text: str) -> str:
    """A file-name-safe version of a student's name."""
    return re.sub(r"[^\w.-]", "_", text)[:80].lstrip(".") or "submission"


def student_name(path: Path) -> str:
    """The file's name, made file-name safe; where that changed it (O'Brien, a long name), a
    short hash of the original follows, so that O'Brien and O_Brien never share a report."""
    name = safe_name(path.stem)
    if name != path.stem:
        name = f"{name[:71]}-{hashlib.sha256(path.stem.encode()).hexdigest()[:8]}"
    return name


def snapshot(submissions: list[Path], private: Path) -> list[tuple[str, Path]]:
    """Copy every submission into ``private`` before any runs: (student, copy) pairs.

    Each file is read once with :func:`~course_lib.grade_checks.read_plain` (no links, regular
    files under NOTEBOOK_CAP bytes); anything else becomes an empty copy, and why goes beside it
    (:func:`why_unreadable`) for :func:`read_submission` to say. Nothing later reads the originals.
    """
    copies, seen = [], set()
    for path in submissions:
        name = base = student_name(path)
        count = 1
        while name in seen:   # two files, one name (A.ipynb, A.IPYNB): a number, within the cap
            count += 1
            name = f"{base[:76]}_{count}"
        seen.add(name)
        target = private / f"{name}.ipynb"
        data, why = b"", None
        try:
            data = read_plain(path, NOTEBOOK_CAP)
        except TooBig as err:    # a regular file: only its size is wrong, the student's to fix
            why = {"too_big": True, "why": str(err)}
        except OSError as err:   # read_plain opens no link (ELOOP) and reads no pipe (NotPlain)
            if isinstance(err, NotPlain) or err.errno == errno.ELOOP:
                why = {"too_big": False, "why": f"{path.name} is a link or not a regular file; "
                       "put the notebook file itself in the folder (e.g. cp -L), since the "
                       "grader never follows a link"}
            else:
                why = {"too_big": False, "why": f"{path.name} cannot be read ({err.strerror}); "
                       "make it readable by the grader"}
        target.write_bytes(data)
        if why is not None:   # beside the copy, in the grader's private folder: no student wrote it
            why["why"] = one_line(why["why"])   # the file's name is the student's: no escapes
            _unreadable_note(target).write_text(json.dumps(why))
        copies.append((name, target))
    return copies


def find_submissions(folder: Path) -> list[Path]:
    """The notebooks directly in ``folder`` (``*.ipynb``, any case, not hidden), sorted; what else
    is there is listed on stderr (:func:`not_graded`), so that no student is left out unseen."""
    try:
        entries = sorted(folder.iterdir())
    except OSError as err:
        print(f"could not grade: cannot list {folder} ({err.strerror}); make it readable by the "
              "grader", file=sys.stderr)
        return []
    notebooks = [e for e in entries if _is_submission(e)]
    note = not_graded(folder, entries)
    if note:
        print(note, file=sys.stderr)
    if not notebooks:
        print(f"could not grade: no .ipynb files in {folder} (a notebook in a subfolder is not "
              "searched: put each student's notebook directly in the folder)", file=sys.stderr)
    return notebooks


def _is_submission(entry: Path) -> bool:
    return (not entry.name.startswith(".") and entry.suffix.lower() == ".ipynb"
            and not entry.is_dir())


def not_graded(folder: Path, entries: list[Path] | None = None) -> str:
    """A note naming what in ``folder`` is not graded (a subfolder, a hidden or other file), or
    "": macOS's ``._x`` files and Jupyter's checkpoints are never a student's, and not named."""
    try:   # ``entries``: the folder as already listed
        other = [e for e in (sorted(folder.iterdir()) if entries is None else entries)
                 if not _is_submission(e) and not e.name.startswith("._")
                 and e.name not in (".ipynb_checkpoints", ".DS_Store")]
    except OSError:
        return ""
    if not other:
        return ""
    return (f"note: not graded, not a notebook directly in {folder}: "
            + ", ".join(one_line(e.name) + ("/" if e.is_dir() else "") for e in other[:20])
            + (f" and {len(other) - 20} more" if len(other) > 20 else ""))


def origin_of(path: Path) -> str:
    """What a report names as its submission: the file's absolute path (not followed if a link),
    so that a regrade from another folder finds it (:func:`earlier_name`)."""
    return os.path.abspath(path)


def _unreadable_note(copy: Path) -> Path:
    """Where :func:`snapshot` notes why a submission could not be copied."""
    return copy.with_name(copy.name + ".unreadable")


def why_unreadable(copy: Path) -> dict | None:
    """What :func:`snapshot` noted beside ``copy`` ({"too_big": bool, "why": str}), or None when
    the submission was copied."""
    note = _unreadable_note(copy)
    return json.loads(note.read_text()) if note.is_file() else None


# --- 1. reading ---------------------------------------------------------------------------------

def read_submission(path: Path):
    """The notebook, checked to be well formed and finished; Rejected otherwise (CannotGrade when
    :func:`snapshot` could not copy it through no fault of the notebook's: a link, unreadable)."""
    import nbformat

    why = why_unreadable(path)
    if why is not None:
        if why["too_big"]:
            raise Rejected(f"{why['why']}: submit the .ipynb file saved by Jupyter (clear large "
                           "outputs first)")
        raise CannotGrade(why["why"])
    raw = path.read_bytes()
    if len(raw) > NOTEBOOK_CAP:
        raise Rejected(f"the notebook is larger than {NOTEBOOK_CAP // 2**20} MiB")
    try:
        data = json.loads(raw)
        cells = data["cells"]
        for i, cell in enumerate(cells, 1):
            source = cell["source"]
            if isinstance(source, list) and all(isinstance(s, str) for s in source):
                cell["source"] = "".join(source)
            elif not isinstance(source, str):
                raise ValueError(f"cell {i}'s source is not text")
            if cell.get("cell_type") not in ("code", "markdown", "raw"):
                raise ValueError(f"cell {i} has no valid cell_type")
            if not isinstance(cell.get("metadata", {}), dict):
                raise ValueError(f"cell {i}'s metadata is not a JSON object")
            if not isinstance(cell.get("metadata", {}).get("tags", []), list):
                raise ValueError(f"cell {i}'s tags are not a list")
        nb = nbformat.from_dict(data)
        if nb.get("nbformat") != 4:
            raise ValueError("it is not an nbformat 4 notebook")
        if not isinstance(nb.get("metadata", {}), dict):
            raise ValueError("its metadata is not a JSON object")
    except RecursionError:
        raise Rejected("not a readable Jupyter notebook: its JSON is nested too deeply; submit the "
                       ".ipynb file saved by Jupyter") from None
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise Rejected(f"not a readable Jupyter notebook: {err}; submit the .ipynb file "
                       "saved by Jupyter") from None
    left = fixme_cells(nb)
    if left:
        raise Rejected(f"FIXMEs left in cell(s) {', '.join(left)} (counting every cell from 1): "
                       "finish them before submitting; the word FIXME may not stay in any code "
                       "cell, comments included")
    for cell in nb.cells:
        tags = cell.get("metadata", {}).get("tags", [])
        if tags:
            cell.metadata["tags"] = [t for t in tags if t not in SKIPPING_TAGS]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    return nb


def fixme_cells(nb) -> list[str]:
    """Code cells that still hold FIXME: each one's number (1-based, every cell counted), with
    its ``# EXERCISE: name`` line where it has one (Jupyter shows no cell numbers)."""
    left = []
    for i, cell in enumerate(nb.cells, 1):
        if cell.cell_type == "code" and FIXME.search(cell.source):
            tag = EXERCISE.match(cell.source)
            left.append(f"{i} (EXERCISE: {tag.group(1)})" if tag else str(i))
    return left


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


def report_name(report: Report) -> str:
    return safe_name(report.student or Path(report.submission).stem)


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
    report = Report(origin or str(copy), ERROR, student=name or student_name(copy),
                    threshold=opts.threshold)
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
    report.sandbox = ("none needed: the notebook was never run" if why_unreadable(copy) else
                      sandbox_label(opts.use_sandbox, opts.slot))
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


def write_report(report: Report, out: Path) -> Path:
    """``OUT/<student>.json``: what ``collect`` merges into the gradebook."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{report_name(report)}.json"   # whole or not at all, even if stopped midway
    return save_json_atomic(asdict(report), path)


def set_aside(out: Path, students: list[str], to: Path, books: tuple[str, ...] = ()) -> list[Path]:
    """Move these students' reports and sample grids, and the files ``books`` of ``OUT`` (its
    gradebook, review page; a Slurm run's roster and logs), to folder ``to``: nothing is deleted,
    and no earlier report can stand in for a grading that fails. A report moved names its grid's
    new place. Returns the paths moved, at their new place."""
    names = [*books, *(f"{s}{end}" for s in students for end in (".json", "_samples.png",
                                                                  "_samples.pt"))]
    moved = []
    try:
        for name in names:
            if (out / name).is_file() or (name == "logs" and (out / name).is_dir()):
                to.mkdir(parents=True, exist_ok=True)
                if os.path.lexists(to / name):   # never over an earlier grade set aside there
                    raise FileExistsError(errno.EEXIST, "already set aside", str(to / name))
                moved.append((out / name).replace(to / name))
    except BaseException:   # an error or Ctrl-C: all or nothing, a half-moved OUT loses track
        put_back(moved, out)
        raise
    for report in (p for p in moved if p.suffix == ".json"):
        _follow_grid(report, out, {p.name for p in moved})
    return moved


def _follow_grid(report: Path, left: Path, moved: set[str]) -> None:
    """A report moved from folder ``left`` names its own grid, moved beside it (set aside: not
    the new grid a regrade writes where it was; put back: not the folder it left). A report that
    is not one (unreadable JSON) is left as it is."""
    try:
        data = json.loads(report.read_text())
        grid = data.get("grid") and Path(data["grid"])
        if grid and grid.parent == left and grid.name in moved:
            data["grid"] = str(report.parent / grid.name)
            save_json_atomic(data, report)   # as write_report writes it
    except (OSError, ValueError, AttributeError, TypeError):
        pass


def put_back(moved: list[Path], out: Path) -> None:
    """Undo :func:`set_aside`: each path it moved goes back to ``out``, every one tried; an
    OSError at the end names those left where they were moved to."""
    left, names = [], {p.name for p in moved}
    for path in moved:
        try:
            path.replace(out / path.name)
        except OSError:
            left.append(str(path))
        else:
            if path.suffix == ".json":   # its grid is back in OUT too: the report says so again
                _follow_grid(out / path.name, path.parent, names)
    if left:
        raise OSError(f"could not move back to {out}: {', '.join(left)}")


class OutBusy(Exception):
    """Another grading holds ``OUT`` (:func:`hold_out`)."""


def array_state(out: Path) -> tuple[str, str]:
    """(state, job) of the Slurm array ``grade slurm`` submitted into ``OUT``
    (``OUT/slurm-job.txt``: its id, and its cluster after a ";" as ``sbatch --parsable`` prints
    them): "running" while ``squeue`` lists it, "ended" once it does not (or when there is none),
    "unknown" when ``squeue`` cannot answer (not installed, its controller unreachable)."""
    try:
        job, _, cluster = (out / SLURM_JOB).read_text().strip().partition(";")
    except (OSError, ValueError):
        return "ended", ""
    if not job.isdigit():
        return "ended", ""
    if shutil.which("squeue") is None:
        return "unknown", job
    env = {k: v for k, v in os.environ.items() if not k.startswith("SQUEUE_")}  # its own states
    try:
        listed = subprocess.run(["squeue", "--noheader", f"--jobs={job}", "--name=grade06",
                                 "--format=%i", *([f"--clusters={cluster}"] if cluster else [])],
                                capture_output=True, text=True, timeout=60, env=env)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown", job
    if listed.returncode == 0:
        return ("running" if listed.stdout.strip() else "ended"), job
    return ("ended" if "Invalid job id" in listed.stderr else "unknown"), job


def running_array(out: Path) -> str:
    """Why ``OUT`` is still being written by the Slurm array submitted there, or "" (none, ended,
    or ``squeue`` cannot say: then a note on stderr names the job to check)."""
    state, job = array_state(out)
    if state == "unknown":
        print(f"note: squeue cannot say whether Slurm job {job}, submitted into {out}, still runs; "
              "make sure it has ended before grading there", file=sys.stderr)
    if state != "running":
        return ""
    return f"Slurm job {job} is still grading into {out} (squeue lists it; scancel {job} stops it)"


@contextlib.contextmanager
def hold_out(out: Path, arrays: bool = True):
    """Hold ``OUT`` for this grading alone, an exclusive ``flock`` on ``OUT/.grading.lock``
    (released when the process ends, however it ends): two gradings setting reports aside and
    writing one gradebook at once would mix or lose grades. OutBusy names the holder. Where
    ``flock`` fails (some NFS mounts), a note says so and the grading goes on; on a mount without
    locking (``nolock``) it locks against gradings on the same machine only. A Slurm array's tasks
    take no lock: ``grade slurm`` holds ``OUT`` while it submits them, and with ``arrays`` a
    grading is refused while they run (:func:`running_array`; ``collect`` may read them)."""
    fd = _lock(out)
    try:
        busy = arrays and running_array(out)
        if busy:
            raise OutBusy(busy)
        yield
    finally:
        if fd is not None:
            with contextlib.suppress(OSError):   # its holder's note goes with it (EBADF where
                os.ftruncate(fd, 0)                # read-only: the note is not this grading's)
            os.close(fd)


def _lock(out: Path) -> int | None:
    """The locked ``OUT/.grading.lock`` (its descriptor, the holder written in it), None where no
    lock can be had (a note says so, except on a read-only OUT, whose own error says what to do);
    OutBusy while another grading holds it. Another user's lock file (an OUT its group shares)
    is locked read-only: a local ``flock`` needs no write access, only the holder goes unwritten
    (NFS's needs it: there the note says the lock could not be had)."""
    import fcntl

    path, flags = out / OUT_LOCK, os.O_NOFOLLOW
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | flags, 0o644)
        with contextlib.suppress(OSError):   # readable by the others, whatever our umask
            os.fchmod(fd, 0o644)
    except PermissionError:
        try:
            fd = os.open(path, os.O_RDONLY | flags)
        except OSError as err:   # another user's, unreadable to us (none: OUT is not ours to
            if err.errno != errno.ENOENT:   # write, which the caller says)
                _no_lock_note(out, err)
            return None
    except OSError as err:
        if err.errno != errno.EROFS:
            _no_lock_note(out, err)
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 300, 0).decode(errors="replace").strip() or "it did not say who"
        os.close(fd)
        raise OutBusy(f"another grading is writing to {out} ({holder})") from None
    except OSError as err:
        os.close(fd)
        _no_lock_note(out, err)
        return None
    with contextlib.suppress(OSError):   # EBADF where read-only
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}, since "
                      f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode(), 0)
    return fd


def _no_lock_note(out: Path, err: OSError) -> None:
    print(f"note: cannot lock {out} ({err.strerror}); make sure no other grading writes there "
          "now", file=sys.stderr)


def claim_out(held: contextlib.ExitStack, out: Path, nothing: str) -> bool:
    """Hold ``OUT`` for the rest of ``held`` (:func:`hold_out`); False, having said why in one
    line ending in ``nothing`` (what was left undone), where another grading holds it."""
    try:
        held.enter_context(hold_out(out))
    except OutBusy as err:
        print(f"could not grade: {err}; wait for it to end, or give another --out ({nothing})",
              file=sys.stderr)
        return False
    return True


def writable_error(out: Path, option: str = "--out", also: tuple[str, ...] = ("previous",)) -> str:
    """Why files cannot be written to ``out`` or its subfolders ``also`` (where earlier reports
    are set aside) ("" if they can), found before hours of grading; nothing is created (a folder
    not there yet is tried in the nearest one that is). ``option`` named ``out``."""
    for folder in (out, *(out / name for name in also)):
        there = next(p for p in (folder, *folder.parents) if os.path.exists(p))  # False: EACCES too
        try:
            if there == folder and not os.path.isdir(folder):
                return f"{folder} is a file, not a folder; choose another {option}"
            tempfile.TemporaryFile(dir=there).close()
        except OSError as err:
            fix = (f"choose another {option}" if err.errno in (errno.EROFS, errno.ENOTDIR) else
                   f"choose another {option}, or grade as the user who owns {there} (sudo, if "
                   "it was made by a grading with sudo)")
            return f"cannot write to {folder} ({err.strerror or err}); {fix}"
        if there != folder:   # not there yet: what is above it decides
            break
    return ""


# --- the command line ---------------------------------------------------------------------------

def _limits(jobs: int, memory_gib: float | None, slot: int = 0) -> sandbox.Limits:
    """A slot's share of the machine: its cores (and as many threads), its memory."""
    import psutil

    cpus = sandbox.slot_cpus(slot, jobs)
    threads = len(cpus) or max(1, len(sandbox.host_cores()) // jobs)
    share = psutil.virtual_memory().total * 0.8 / jobs
    memory = int(memory_gib * 2**30) if memory_gib else int(min(8 * 2**30, max(2 * 2**30, share)))
    return sandbox.Limits(memory_bytes=memory, threads=threads, cpus=cpus)


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


def main(argv=None) -> int:
    with sandbox.exit_on_sigterm():   # stopped by kill or scancel, it still cleans up after itself
        return _main(argv)


def _main(argv) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] in (["collect"], ["slurm"]):
        from . import gradebook
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
                _keep_earlier(out, [safe_name(given)] if given and len(copies) == 1 else
                              [name for name, _ in copies],
                              books=BOOKS if args.submission.is_dir() else ())
            except OSError as err:
                print(f"could not grade: cannot set the earlier reports in {out} aside "
                      f"({one_line(err)}); nothing was moved or graded", file=sys.stderr)
                return 2
        opts = Options(args.samples_per_digit, args.threshold, args.timeout, args.sample_timeout,
                       args.profile, out, not args.no_sandbox, slot,
                       _limits(args.jobs, args.memory_gib, index),
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
            from .gradebook import (collect_command, load_reports, summary, write_gradebook,
                                    write_review_page)
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


def earlier_name(out: Path, submission: Path, name: str) -> str:
    """The name under which ``OUT`` already holds a report of this same file (or, for a Slurm task
    that left none, its roster line), else ``name``: a folder run numbers the second file of one
    name (``A.ipynb`` after ``A.IPYNB`` is ``A_2``), and a regrade of that file must replace
    ``A_2``'s report, not ``A``'s. Several, or none: ``name``."""
    mine, found = origin_of(submission), set()
    try:   # student<TAB>private copy<TAB>origin (gradebook.roster_text)
        for line in (out / "roster.txt").read_text().splitlines():
            parts = line.split("\t")
            if len(parts) == 3 and parts[2] == mine:
                found.add(parts[0])
    except (OSError, UnicodeDecodeError):
        pass
    for path in out.glob("*.json"):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if (isinstance(data, dict) and isinstance(data.get("student"), str)
                and isinstance(data.get("submission"), str)
                and os.path.abspath(data["submission"]) == mine):
            found.add(data["student"])
    if len(found) != 1 or found == {name}:
        return name
    earlier = found.pop()
    print(f"note: graded as {one_line(earlier)}, the name of this notebook's earlier report in "
          f"{out} (--name gives another)", file=sys.stderr)
    return earlier


def _keep_earlier(out: Path, students: list[str], books: tuple[str, ...]) -> None:
    """Before a (re)grade: these students' earlier reports and grids, and ``books`` (a folder run's
    gradebook and review page), move to a new ``OUT/previous/grade-<time>-...``
    (:func:`set_aside`), where an appeal can still read them; a grading that then fails leaves no
    stale report in their place. Raises OSError (nothing moved) if they cannot be moved."""
    previous = out / "previous"
    previous.mkdir(exist_ok=True)
    to = Path(tempfile.mkdtemp(prefix=f"grade-{time.strftime('%Y%m%d-%H%M%S')}-", dir=previous))
    try:
        moved = set_aside(out, students, to, books=books)
    finally:
        if not any(to.iterdir()):
            to.rmdir()   # previous/ stays: another grader may be making its folder there now
    if moved:
        print(f"note: {len(moved)} earlier file(s) of this grading moved to {to}", file=sys.stderr)


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


def unreadable_report(copy: Path, name: str, origin: str, out: Path,
                      threshold: float = 0.95) -> Report | None:
    """The report of a submission :func:`snapshot` could not copy (None for any other): its
    reason lives beside this copy only, so it is graded here, by the process that copied it, and
    never by a worker or a Slurm task, which would copy the empty copy again without it."""
    if why_unreadable(copy) is None:
        return None
    report = grade_one(copy, Options(threshold=threshold, out=out, use_sandbox=False), name, origin)
    write_report(report, out)
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
        unreadable = unreadable_report(path, student, origins[student], out, args.threshold)
        if unreadable is not None:
            print(unreadable.text() + "\n", flush=True)
            return unreadable
        report_file = out / f"{safe_name(student)}.json"   # none now: _keep_earlier moved it
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
