"""The instructor's review page of a graded cohort: ``OUT/review.html``.

The grader's checks catch what they can; a few attacks pass them all (README's threat table):
pictures hidden in a network's weights, a sampler that tells the shuffled draw apart by checking
its own weights, a generator shipped as code. Only a person catches those, by reading what the
student wrote beside the samples it drew. This page puts both on one page for a whole cohort:

1. a table, one row per student: result, accuracy, each check's figure against its limit (in
   bold where it came close), and how many lines of the student's code are marked;
2. for each student, the graded grid and the code the student wrote, as each report keeps it
   (``course_lib/submission_code.py``: the code cells that differ from the 06 template, diffed
   against the cells they replace, with the lines worth a look marked and why).

Students are listed most in need of a look first: passes with marks or a close check, then those
that could not be graded, then fails, then clean passes. Everything a student controls (names,
reasons, code) is escaped, and the page runs no script (its Content-Security-Policy forbids any),
so an instructor can open it safely. It is drawn from the reports alone: ``grade FOLDER`` writes it
next to the gradebook, ``grade collect OUT`` after a Slurm array or a regrade of one student.
"""
from __future__ import annotations

import base64
import html
from dataclasses import dataclass
from pathlib import Path

from .grade_report import ERROR, FAIL, PASS, Report, report_name
from .grade_checks import (COPY_SHARE, PLAIN_SHARE, SECOND_OPINION_GAP, SHUFFLED_LIMIT, one_line,
                           read_plain, second_draw_floor)
from .storage import write_atomic
from .submission_code import StudentCell, from_report, invisible

GRID_CAP = 4 * 2**20   # bytes of a grid PNG embedded in the page


def checks(report: Report) -> list[tuple[str, str, bool]]:
    """Each check's figure against its limit, as (name, text, close). Close: accuracy within 2
    points of the pass mark, near-copies past 60% of their limit, the Fréchet distance past 80% of
    its limit, plain background within 10 points of its floor, the second draw within 5 points of
    its floor, the shuffled draw read above 40% as asked for (limit 60%), the strictest private
    judge more than 60% of its gap below. The
    answer key stays clear of each (bench/grading_checks.md: near-copies 4%, Fréchet at most 0.69
    of its limit, private judges above the course's; bench/grade_key_full.md)."""
    rows = []
    if report.accuracy is not None:
        rows.append(("accuracy", f"{report.accuracy:.1%} (pass at {report.threshold:.0%})",
                     report.accuracy < report.threshold + 0.02))
    if report.near_copies is not None:
        drawn = (report.samples or 0) + (report.second_draw_samples or 0)   # what the check counts
        rows.append(("near-copies", f"{report.near_copies} (fails above {COPY_SHARE:.0%} of "
                     "the two draws)", report.near_copies > 0.6 * COPY_SHARE * drawn))
    if report.frechet is not None and report.frechet_limit:
        rows.append(("Fréchet", f"{report.frechet:.1f} (limit {report.frechet_limit:.1f})",
                     report.frechet > 0.8 * report.frechet_limit))
    if report.plain_background is not None:
        rows.append(("plain background", f"{report.plain_background:.0%} (at least "
                     f"{PLAIN_SHARE:.0%})", report.plain_background < PLAIN_SHARE + 0.1))
    if report.second_draw_accuracy is not None and report.second_draw_samples:
        floor = second_draw_floor(report.threshold, report.second_draw_samples)
        rows.append(("second draw", f"{report.second_draw_accuracy:.0%} of "
                     f"{report.second_draw_samples} read as asked for (at least {floor:.0%})",
                     report.second_draw_accuracy < floor + 0.05))
    if report.shuffled_accuracy is not None:
        rows.append(("shuffled weights", f"{report.shuffled_accuracy:.0%} read as asked for "
                     f"(at most {SHUFFLED_LIMIT:.0%})", report.shuffled_accuracy > 0.4))
    if report.second_opinion is not None and report.accuracy is not None:
        gap = report.accuracy - report.second_opinion
        rows.append(("private judges", f"{report.second_opinion:.1%} read as asked for "
                     f"({gap:+.1%} below; at most {SECOND_OPINION_GAP:.0%})",
                     gap > 0.6 * SECOND_OPINION_GAP))
    return rows


@dataclass
class Entry:
    """A report with the student's cells read back (None: the report kept no code)."""

    report: Report
    cells: list[StudentCell] | None = None
    more_cells: int = 0
    more_marks: int = 0

    @classmethod
    def of(cls, report: Report) -> "Entry":
        code = report.code if isinstance(report.code, dict) else None
        if code is None:
            return cls(report)
        return cls(report, from_report(code), int(code.get("more_cells", 0)),
                   int(code.get("more_marks", 0)))

    @property
    def marks(self) -> int:
        return sum(cell.marks for cell in self.cells or []) + self.more_marks

    @property
    def cuts(self) -> int:
        """Cells with lines left out of the page, and one more if cells were: what is not shown
        asks for a look as much as what is marked."""
        return sum(bool(cell.more_lines) for cell in self.cells or []) + bool(self.more_cells)

    @property
    def close(self) -> int:
        return sum(close for _, _, close in checks(self.report))

    @property
    def order(self) -> tuple:
        status = self.report.status
        first = (0 if status == PASS and (self.marks or self.cuts or self.close) else
                 1 if status == ERROR else 2 if status == FAIL else 3)
        return first, -(self.marks + self.cuts + self.close), self.report.student


def in_order(reports: list[Report]) -> list[Entry]:
    """The reports as the page lists them, most in need of a look first (:attr:`Entry.order`)."""
    return sorted((Entry.of(r) for r in reports), key=lambda e: e.order)


def read_first(reports: list[Report]) -> list[str]:
    """The passes to read before any other, one line each: those with marked code or a check
    close to its limit (the top of the page), most marks and close checks first."""
    entries = in_order(reports)
    return [f"{one_line(e.report.student)}: {e.marks} marked line{'s' * (e.marks != 1)}, "
            + (f"{e.cuts} cut from the page, " if e.cuts else "")
            + f"{e.close} check{'s' * (e.close != 1)} close to the limit"
            for e in entries if e.order[0] == 0]


def _grid(report: Report, out: Path) -> str:
    """The report's grid as a data URI, read only from OUT (a PNG the grader wrote there), by its
    file name: the report's path may name where OUT was when it was graded (a copied folder)."""
    if not report.grid:
        return ""
    try:   # read_plain: a regular file, never through a link, at most GRID_CAP bytes
        path = out / Path(report.grid).name
        if path.suffix != ".png":
            return ""
        data = read_plain(path, GRID_CAP)
        if not data.startswith(b"\x89PNG\r\n\x1a\n"):
            return ""
    except OSError:   # NotPlain included
        return ""
    return "data:image/png;base64," + base64.b64encode(data).decode()


def _e(text) -> str:
    return html.escape(one_line(text), quote=True)


STYLE = """
body { font-family: sans-serif; margin: 1.5em; max-width: 70em; }
table { border-collapse: collapse; } td, th { border: 1px solid #bbb; padding: 0.2em 0.5em; }
th { background: #eee; text-align: left; } .pass { color: #060; } .fail { color: #a00; }
.error { color: #a60; } .close { font-weight: bold; color: #a00; }
section { border-top: 2px solid #888; margin-top: 2em; }
pre { background: #f6f6f6; padding: 0.5em; font-size: 0.85em; white-space: pre-wrap;
      overflow-wrap: anywhere; }
pre > span { display: block; } .add { background: #e6ffe6; } .del { background: #ffe6e6; }
.mark { background: #fff0a0; } .why { color: #a00; font-style: italic; }
img { max-width: 100%; border: 1px solid #bbb; } summary { cursor: pointer; font-weight: bold; }
"""
_CSS_CLASS = {PASS: "pass", FAIL: "fail", ERROR: "error"}


def visible(text: str) -> str:
    """``text`` with every invisible character (:func:`course_lib.submission_code.invisible`)
    written as its escape (``\\u202e``, ``\\U000e0041``), so a line reads on the page as Python
    reads it."""
    return "".join((f"\\u{ord(ch):04x}" if ord(ch) <= 0xFFFF else f"\\U{ord(ch):08x}")
                   if invisible(ch) else ch for ch in text)


def _cell_html(cell: StudentCell) -> str:
    rows = []
    for sign, text, why in cell.lines:
        css = "mark" if why else {"+": "add", "-": "del"}.get(sign, "")
        note = f' <span class="why">&larr; {html.escape(why)}</span>' if why else ""
        line = html.escape(visible(text))
        rows.append(f'<span class="{css}">{html.escape(sign)} {line}{note}</span>')
    if cell.more_lines:
        rows.append(f"<span>… {cell.more_lines:,} more lines, {cell.more_marks} of them "
                    "marked</span>")
    title = f"cell {cell.number}: {html.escape(cell.kind)}" + \
        (f" ({cell.marks} line{'s' if cell.marks > 1 else ''} marked)" if cell.marks else "")
    return (f"<details{' open' if cell.marks else ''}><summary>{title}</summary><pre>"
            + "".join(rows) + "</pre></details>")


def render(reports: list[Report], out: Path) -> str:
    """The whole page, as text."""
    entries = in_order(reports)
    counts = {s: sum(e.report.status == s for e in entries) for s in (PASS, FAIL, ERROR)}
    head = ['<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">',
            '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
            'img-src data:; style-src \'unsafe-inline\'">',
            f"<title>06 review: {len(entries)} submissions</title><style>{STYLE}</style>",
            "</head><body>",
            f"<h1>06 Assessment: review of {len(entries)} submissions</h1>",
            f"<p>{counts[PASS]} pass, {counts[FAIL]} fail, {counts[ERROR]} could not grade. "
            "Listed most in need of a look first: passes with marked code or a check close to its "
            "limit, then those that could not be graded, then fails, then clean passes. Some "
            "attacks pass every check (the README's threat table): read each student's code "
            "beside the samples it drew. A mark asks for a look; it is no verdict.</p>"]
    if any(isinstance(e.report.code, dict) and not e.report.code.get("template", True)
           for e in entries):
        head.append("<p><b>The 06 template was not found where the grader ran, so every code "
                    "cell of those submissions is shown as the student's.</b></p>")
    table = ["<table><tr><th>student</th><th>result</th><th>checks (bold: close to the limit)"
             "</th><th>marked lines</th></tr>"]
    sections = []
    for i, entry in enumerate(entries):
        r = entry.report
        css = _CSS_CLASS.get(r.status, "error")
        figures = "<br>".join(f'<span class="{"close" if close else ""}">{name}: '
                              f"{html.escape(text)}</span>"
                              for name, text, close in checks(r)) or "-"
        table.append(f'<tr><td><a href="#s{i}">{_e(r.student or report_name(r))}</a></td>'
                     f'<td class="{css}">{_e(r.status)}</td><td>{figures}</td>'
                     f"<td>{entry.marks if entry.cells is not None else '-'}"
                     f"{f' ({entry.cuts} cut)' if entry.cuts else ''}</td></tr>")
        body = [f'<section id="s{i}"><h2>{_e(r.student or report_name(r))}: '
                f'<span class="{css}">{_e(r.status)}</span></h2>']
        if r.reason:
            body.append(f"<p>{_e(r.reason)}</p>")
        grid = _grid(r, out)
        body.append(f'<img alt="graded samples of {_e(r.student)}" src="{grid}">' if grid else
                    "<p>No grid: grading stopped before the grid was drawn (the reason is "
                    "above).</p>")
        if entry.cells is None:
            body.append("<p>No code kept: the file was no readable notebook, or no report was "
                        "written.</p>")
        elif not entry.cells:
            body.append("<p>Every code cell is the template's, unchanged.</p>")
        else:
            body.append("<h3>The code the student wrote: a diff against the template (cells with "
                        "marked lines open; click a closed one to read it)</h3>")
            body += [_cell_html(cell) for cell in entry.cells]
            if entry.more_cells:
                body.append(f"<p>… and {entry.more_cells} more cells, {entry.more_marks} lines "
                            "of them marked.</p>")
        sections.append("".join(body) + "</section>")
    return "\n".join(head + table + ["</table>"] + sections + ["</body></html>"])


def write_review(reports: list[Report], out: Path) -> Path:
    """Write ``OUT/review.html`` for ``reports`` (their grids are read from OUT), atomically: a
    page that fails to render leaves the earlier one as it was."""
    page = render(reports, out).encode("utf-8")
    return write_atomic(out / "review.html", lambda f: f.write(page))
