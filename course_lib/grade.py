"""Instructor grading of 06_Assessment: ``python -m course_lib.grade SUBMISSION.ipynb``.

How a submission is graded (nothing the submission prints or stores decides the grade):

1. Refuse, without running anything, a notebook that still contains ``FIXME``.
2. Load the judge (classifier) and the MNIST reference images, then copy the notebook into a
   temporary folder and execute it there in a fresh kernel, in its own process with a time
   limit; every cell must run without error (skip and raises-exception tags are removed).
3. Append one cell that seeds torch with the grader's seed and calls the student's
   ``sample_digits(labels)`` for N samples of each digit, saving the tensor to a file.
4. Back in this process: check shape, dtype, range and finiteness; reject samples that are
   near-copies of MNIST images (train or test); classify them, against the labels the grader
   asked for, with the course's MNIST classifier.
5. Pass = overall accuracy >= threshold (default 95%). Report as text, JSON and a PNG grid.

Exit status: 0 pass, 1 fail, 2 could not grade. Given a folder, every ``*.ipynb`` in it is
graded and a summary table printed (exit 2 if any could not be graded, else 1 if any failed).
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import nbformat
import torch

from .classifier import load_classifier, predict
from .data import DataNotFoundError, load_mnist

PASS, FAIL, ERROR = "pass", "fail", "could not grade"
SKIPPING_TAGS = ("raises-exception", "nbval-skip", "skip-execution")  # removed: every cell must run
FIXME = re.compile(r"\bFIXME\b")
COPY_RMSE = 0.1          # a sample this close (RMS, in [-1, 1]) to a training image is a copy
COPY_SHARE = 0.1         # more than this share of copies fails the submission
RANGE_SLACK = 0.05       # samples may overshoot [-1, 1] by this much

GRADER_CELL = """
# --- added by course_lib.grade: generate the graded samples ---
import torch as _torch
if "sample_digits" not in globals() or not callable(sample_digits):
    raise RuntimeError("GRADER: the notebook must define sample_digits(labels)")
_torch.manual_seed({seed})
_labels = _torch.arange(10).repeat_interleave({n})
with _torch.no_grad():
    _samples = sample_digits(_labels.clone())
if not isinstance(_samples, _torch.Tensor):
    raise RuntimeError(f"GRADER: sample_digits must return a tensor, got {{type(_samples).__name__}}")
_torch.save({{"images": _samples.detach().cpu()}}, {out!r})
"""


@dataclass
class Report:
    """The outcome of grading one submission."""

    submission: str
    status: str
    reason: str = ""
    accuracy: float | None = None
    per_digit: dict = field(default_factory=dict)
    threshold: float = 0.95
    samples_per_digit: int = 10
    near_copies: int | None = None
    seconds_running: float | None = None
    seconds_grading: float | None = None
    grid: str | None = None

    @property
    def exit_code(self) -> int:
        return {PASS: 0, FAIL: 1}.get(self.status, 2)

    def text(self) -> str:
        lines = [f"submission: {self.submission}",
                 f"result:     {self.status.upper()}" + (f": {self.reason}" if self.reason else "")]
        if self.per_digit:
            lines.append("digit    " + " ".join(f"{d:>5}" for d in self.per_digit))
            lines.append("accuracy " + " ".join(f"{a:>5.0%}" for a in self.per_digit.values()))
        if self.accuracy is not None:
            lines.append(f"overall:    {self.accuracy:.1%} (pass at >= {self.threshold:.0%}, "
                         f"{self.samples_per_digit} samples per digit)")
        if self.near_copies is not None:
            lines.append(f"near-copies of training images: {self.near_copies}")
        if self.seconds_running is not None:
            lines.append(f"time: {self.seconds_running:.0f} s running the notebook, "
                         f"{self.seconds_grading or 0:.1f} s grading")
        if self.grid:
            lines.append(f"samples grid: {self.grid}")
        return "\n".join(lines)


# --- 1. reading the submission -----------------------------------------------------------------

def fixme_cells(nb) -> list[int]:
    """Numbers (1-based, code cells counted with the rest) of cells that still hold FIXME."""
    return [i for i, c in enumerate(nb.cells, 1) if c.cell_type == "code" and FIXME.search(c.source)]


def prepare(nb, seed: int, n: int, out: str):
    """A copy to execute: every cell must run (no raises-exception / skip tags) + the grader cell."""
    nb = copy.deepcopy(nb)
    for cell in nb.cells:
        tags = cell.get("metadata", {}).get("tags", [])
        if tags:
            cell.metadata["tags"] = [t for t in tags if t not in SKIPPING_TAGS]
    nb.cells.append(nbformat.v4.new_code_cell(GRADER_CELL.format(seed=seed, n=n, out=out)))
    return nb


# --- 2. running it -----------------------------------------------------------------------------

def _execute(path: str, result: str) -> None:
    """Child process: execute the notebook in place; on a failing cell write its number and error."""
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=None, kernel_name="python3",
                            resources={"metadata": {"path": str(Path(path).parent)}})
    try:
        client.execute()
    except CellExecutionError as err:
        cell = next((i for i, c in enumerate(nb.cells, 1) if c.cell_type == "code"
                     and any(o.get("output_type") == "error" for o in c.get("outputs", []))), None)
        Path(result).write_text(json.dumps({"cell": cell, "ename": err.ename,
                                            "evalue": err.evalue}))
        sys.exit(3)


def _kill_tree(pid: int) -> None:
    """Kill a process and all its descendants (the kernel runs in a session of its own)."""
    import psutil

    try:
        parent = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return
    for proc in [*parent.children(recursive=True), parent]:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass


def run_submission(nb, workdir: Path, timeout: float, env: dict) -> tuple[str | None, float]:
    """Execute ``nb`` in ``workdir`` in a separate process; (error message or None, seconds)."""
    path, result = workdir / "submission.ipynb", workdir / "error.json"
    nbformat.write(nb, path)
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "course_lib.grade", "--_execute", str(path),
                             str(result)], cwd=workdir, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        _, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_tree(proc.pid)
        proc.communicate()
        return f"time-out: the notebook ran longer than {timeout:.0f} s", timeout
    seconds = time.perf_counter() - start
    if proc.returncode == 0:
        return None, seconds
    if result.is_file():
        err = json.loads(result.read_text())
        where = ("the grader's sampling cell" if err["cell"] == len(nb.cells)
                 else f"cell {err['cell']}")
        message = err["evalue"].replace("GRADER: ", "") if "GRADER:" in err["evalue"] \
            else f"{err['ename']}: {err['evalue']}"
        return f"{where} raised {message}".strip(), seconds
    tail = stderr.strip().splitlines()[-1:] or ["no message"]
    return f"the notebook could not be executed: {tail[0]}", seconds


# --- 3. judging the samples --------------------------------------------------------------------

def check_samples(images, n_expected: int) -> str | None:
    """Reason why these are not valid samples, or None."""
    if not isinstance(images, torch.Tensor):
        return f"samples must be a tensor, got {type(images).__name__}"
    if tuple(images.shape) != (n_expected, 1, 28, 28):
        return f"wrong output shape {tuple(images.shape)}; expected ({n_expected}, 1, 28, 28)"
    if not images.dtype.is_floating_point:
        return f"wrong dtype {images.dtype}; expected floating point images in [-1, 1]"
    if not torch.isfinite(images).all():
        bad = (~torch.isfinite(images)).flatten(1).any(1).sum().item()
        return f"{bad} samples contain NaN or inf values"
    lo, hi = images.min().item(), images.max().item()
    if lo < -1 - RANGE_SLACK or hi > 1 + RANGE_SLACK:
        return (f"samples range over [{lo:.2f}, {hi:.2f}]; they must lie in [-1, 1] "
                "(did you forget to scale, or to clamp the final x_0?)")
    if images.std().item() < 1e-3:
        return "all samples are (nearly) constant images"
    return None


def count_near_copies(images: torch.Tensor, reference: torch.Tensor,
                      threshold: float = COPY_RMSE) -> int:
    """How many images lie within RMS distance ``threshold`` of some reference image."""
    flat = images.flatten(1).float()
    best = torch.full((len(flat),), float("inf"))
    for chunk in reference.flatten(1).float().split(10_000):
        best = torch.minimum(best, torch.cdist(flat, chunk).min(dim=1).values)
    rmse = best / flat.shape[1] ** 0.5
    return int((rmse < threshold).sum())


def save_grid(images: torch.Tensor, labels: torch.Tensor, predicted: torch.Tensor,
              path: Path, n: int) -> None:
    """One row per digit; a red frame marks a sample the classifier read as another digit."""
    from .viz import show_images
    framed = images.clamp(-1, 1).repeat(1, 3, 1, 1)
    wrong = predicted != labels
    red = torch.tensor([1.0, -1.0, -1.0]).reshape(3, 1)
    misread = framed[wrong]
    for edge in (0, -1):
        misread[:, :, edge, :] = red
        misread[:, :, :, edge] = red
    framed[wrong] = misread
    fig = show_images(framed, nrow=n, title="graded samples (rows: digits 0-9; red: misread)")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)


def grade(submission: Path, n: int = 10, threshold: float = 0.95, timeout: float = 3600,
          seed: int = 0, out_dir: Path | None = None, profile: str = "full") -> Report:
    """Grade one notebook; a bad submission gives a non-pass Report, never an exception."""
    report = Report(str(submission), ERROR, threshold=threshold, samples_per_digit=n)
    try:
        return _grade(report, submission, n, threshold, timeout, seed, out_dir, profile)
    except Exception as err:  # a grader-side problem: say so, never a false pass or fail
        report.status = ERROR
        report.reason = f"grader error {type(err).__name__}: {err}"
        return report


def _grade(report: Report, submission: Path, n: int, threshold: float, timeout: float,
           seed: int, out_dir: Path | None, profile: str) -> Report:
    if not submission.is_file() or submission.suffix != ".ipynb":
        report.reason = f"{submission} is not a notebook file (.ipynb)"
        return report
    try:
        nb = nbformat.read(submission, as_version=4)
    except Exception as err:
        report.reason = f"{submission} is not a readable notebook: {type(err).__name__}: {err}"
        return report
    left = fixme_cells(nb)
    if left:
        report.status, report.reason = FAIL, (
            f"FIXMEs left in cell(s) {', '.join(map(str, left))} (counting every cell from 1): "
            "finish them before submitting")
        return report
    # The judge and the reference images are loaded before the submission runs, so nothing it
    # does to files on disk can change them.
    try:
        classifier = load_classifier("mnist")
        reference = torch.cat([load_mnist(size=28, train=True).images,
                               load_mnist(size=28, train=False).images])
    except (DataNotFoundError, OSError, RuntimeError) as err:
        report.reason = f"the grader's classifier or MNIST data is missing: {err}"
        return report
    labels = torch.arange(10).repeat_interleave(n)
    env = dict(os.environ, COURSE_PROFILE=profile)
    with tempfile.TemporaryDirectory(prefix="grade_") as tmp:
        workdir = Path(tmp)
        samples_file = workdir / "graded_samples.pt"
        error, report.seconds_running = run_submission(
            prepare(nb, seed, n, str(samples_file)), workdir, timeout, env)
        if error:
            report.status, report.reason = FAIL, error
            return report
        start = time.perf_counter()
        try:
            images = torch.load(samples_file, weights_only=True)["images"]
        except Exception as err:
            report.status, report.reason = FAIL, f"the samples could not be read back: {err}"
            return report
    problem = check_samples(images, 10 * n)
    if problem:
        report.status, report.reason = FAIL, problem
        return report
    images = images.float()
    report.near_copies = count_near_copies(images, reference)
    predicted = predict(classifier, images).argmax(dim=1)
    correct = predicted == labels
    report.per_digit = {d: round(correct[labels == d].float().mean().item(), 4) for d in range(10)}
    report.accuracy = round(correct.float().mean().item(), 4)
    if out_dir is not None:
        grid = out_dir / f"{Path(submission).stem}_samples.png"
        save_grid(images, labels, predicted, grid, n)
        report.grid = str(grid)
    report.seconds_grading = time.perf_counter() - start
    if report.near_copies > COPY_SHARE * len(images):
        report.status, report.reason = FAIL, (
            f"{report.near_copies} of {len(images)} samples are near-copies of MNIST images; "
            "samples must be generated by the model")
    elif report.accuracy >= threshold:
        report.status = PASS
    else:
        report.status, report.reason = FAIL, (
            f"accuracy {report.accuracy:.1%} is below {threshold:.0%}")
    return report


def self_check(sample_fn, samples_per_digit: int = 10, seed: int = 123,
               threshold: float = 0.95) -> dict:
    """Student-side preview: per-digit accuracy of ``sample_fn(labels)`` by the course classifier.

    Not the grade: the grader re-runs the whole notebook in a fresh kernel with its own seeds.
    """
    torch.manual_seed(seed)
    labels = torch.arange(10).repeat_interleave(samples_per_digit)
    with torch.no_grad():
        images = sample_fn(labels.clone())
    problem = check_samples(images.detach().cpu() if isinstance(images, torch.Tensor) else images,
                            len(labels))
    if problem:
        print(f"Your samples would not be graded: {problem}")
        return {}
    predicted = predict(load_classifier("mnist"), images.detach().cpu().float()).argmax(dim=1)
    per_digit = {d: (predicted[labels == d] == d).float().mean().item() for d in range(10)}
    overall = (predicted == labels).float().mean().item()
    print("digit    " + " ".join(f"{d:>5}" for d in per_digit))
    print("accuracy " + " ".join(f"{a:>5.0%}" for a in per_digit.values()))
    print(f"overall {overall:.1%}: {'at or above' if overall >= threshold else 'BELOW'} the "
          f"{threshold:.0%} needed to pass.")
    print("This is a preview. Your grade is computed separately by the instructor's grader, which "
          "re-runs your whole notebook in a fresh kernel with its own seeds.")
    return {"per_digit": per_digit, "overall": overall}


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--_execute"]:
        _execute(*argv[1:3])
        return 0
    parser = argparse.ArgumentParser(
        prog="python -m course_lib.grade",
        description="Grade 06_Assessment submissions: run each in a fresh kernel, sample digits with "
                    "the grader's seeds, classify them. Exit 0 pass, 1 fail, 2 could not grade.")
    parser.add_argument("submission", type=Path, help="a notebook, or a folder of notebooks")
    parser.add_argument("--samples-per-digit", "-n", type=int, default=10)
    parser.add_argument("--threshold", type=float, default=0.95, help="accuracy needed to pass")
    parser.add_argument("--timeout", type=float, default=3600,
                        help="seconds a submission may run (default 3600: generous for a CPU)")
    parser.add_argument("--seed", type=int, default=0, help="seed for the graded samples")
    parser.add_argument("--profile", choices=("full", "test"), default="full",
                        help="COURSE_PROFILE the submission runs in (default full; test is for CI)")
    parser.add_argument("--out", type=Path, default=Path("grades"),
                        help="folder for the sample grids and JSON reports (default ./grades)")
    parser.add_argument("--json", type=Path, default=None, help="also write the report(s) here")
    args = parser.parse_args(argv)
    if args.samples_per_digit < 1 or not 0 < args.threshold <= 1:
        parser.error("--samples-per-digit must be >= 1 and --threshold in (0, 1]")
    if args.submission.is_dir():
        submissions = sorted(args.submission.glob("*.ipynb"))
        if not submissions:
            print(f"no .ipynb files in {args.submission}", file=sys.stderr)
            return 2
    elif args.submission.exists():
        submissions = [args.submission]
    else:
        print(f"could not grade: {args.submission} does not exist", file=sys.stderr)
        return 2
    reports = []
    for sub in submissions:
        report = grade(sub, args.samples_per_digit, args.threshold, args.timeout, args.seed,
                       args.out, args.profile)
        reports.append(report)
        print(report.text() + "\n", flush=True)
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"{sub.stem}.json").write_text(json.dumps(asdict(report), indent=2))
    if len(reports) > 1:
        print(f"{'submission':40s} {'result':16s} {'accuracy':>8s}")
        for r in reports:
            acc = f"{r.accuracy:.1%}" if r.accuracy is not None else "-"
            print(f"{Path(r.submission).name:40s} {r.status:16s} {acc:>8s}")
    if args.json:
        data = [asdict(r) for r in reports]
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(data[0] if len(data) == 1 else data, indent=2))
    codes = {r.exit_code for r in reports}
    return 2 if 2 in codes else 1 if 1 in codes else 0


if __name__ == "__main__":
    sys.exit(main())
