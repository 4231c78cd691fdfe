"""One submission's grade: :class:`Report`, its text for the instructor and its JSON in ``OUT``.

``python -m course_lib.grade`` (``course_lib/grade.py``) fills a report in as it grades; the
gradebook, the review page and ``collect`` (``course_lib/gradebook.py``, ``course_lib/review.py``)
read them back. A report's status is :data:`PASS`, :data:`FAIL` (the submission's fault, with the
reason) or :data:`ERROR` (could not grade: the grader's).
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .grade_checks import (PLAIN_SHARE, PRIVATE_JUDGES, SECOND_OPINION_GAP, SHUFFLED_LIMIT,
                           one_line, second_draw_floor)
from .storage import save_json_atomic

PASS, FAIL, ERROR = "pass", "fail", "could not grade"


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


def safe_name(text: str) -> str:
    """A file-name-safe version of a student's name."""
    return re.sub(r"[^\w.-]", "_", text)[:80].lstrip(".") or "submission"


def report_name(report: Report) -> str:
    return safe_name(report.student or Path(report.submission).stem)


def write_report(report: Report, out: Path) -> Path:
    """``OUT/<student>.json``: what ``collect`` merges into the gradebook."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{report_name(report)}.json"   # whole or not at all, even if stopped midway
    return save_json_atomic(asdict(report), path)
