"""The instructor's review page of a graded cohort: ``OUT/review.html``.

The grader's checks catch what they can; a few attacks pass them all (README's threat table):
pictures hidden in a network's weights, a sampler that tells the shuffled draw apart by checking
its own weights, a generator shipped as code. Only a person catches those, by reading what the
student wrote beside the samples it drew. This page puts both on one page for a whole cohort:

1. a table, one row per student: result, accuracy, each check's figure against its limit (in
   bold where it came close), and how many lines of the student's code are worth a look;
2. for each student, the graded grid and the code the student wrote: every code cell that differs
   from the 06 template (an exercise cell, a changed template cell, a new cell), shown as a diff
   against the template cell it replaces. Lines the student wrote that read files or the network,
   run programs or shell commands, fingerprint data, look at the network's weights themselves,
   look at the interpreter or the process, or use training images are marked with why
   (:data:`LOOK_AT`): a mark asks for a look, it is no verdict (``next(model.parameters())`` is
   marked too), and code written to dodge the patterns is shown in full all the same.

Students are listed most in need of a look first: passes with marks or a close check, then those
that could not be graded, then fails, then clean passes. Everything a student controls (names,
reasons, code) is escaped, and the page runs no script (its Content-Security-Policy forbids any),
so an instructor can open it safely. ``grade FOLDER`` writes it next to the gradebook, from the
private copies it graded; ``grade collect OUT`` from the copies ``grade slurm`` made.
"""
from __future__ import annotations

import base64
import difflib
import html
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from .grade import ERROR, EXERCISE, FAIL, NOTEBOOK_CAP, PASS, Report, report_name
from .grade_checks import COPY_SHARE, PLAIN_SHARE, SECOND_OPINION_GAP, SHUFFLED_LIMIT, one_line

GRID_CAP = 4 * 2**20   # bytes of a grid PNG embedded in the page
SAME_CELL = 0.5        # a cell at least this similar to a template cell is shown as a change of it
MATCH_CAP = 20_000     # characters: a longer cell is shown whole, not matched (matching is quadratic)
CELLS_CAP = 100        # cells shown per student; the rest are counted
LINES_CAP = 400        # lines shown per cell; the rest are counted (every line is searched)
WIDTH_CAP = 400        # characters shown per line; the rest are counted (the whole line is searched)

# What a mark says, and the pattern that sets it, on lines the student wrote.
LOOK_AT = (
    ("reads a file or the network",
     r"\bopen\(|\b(torch|np|numpy)\.load\b|\bpickle\b|\bjoblib\b|\bread_(bytes|text)\(|\burllib\b"
     r"|\brequests\b|\bsocket\b|\bos\.(listdir|scandir|walk)\b|\bglob\b|\bshutil\b"),
    ("runs a program, a shell command or a magic",
     r"^\s*[!%]|\bsubprocess\b|\bos\.(system|popen|exec\w*|spawn\w*|fork)\b|\bctypes\b"
     r"|\bmultiprocessing\b"),
    ("fingerprints data (a hash or checksum)",
     r"\bhashlib\b|\bhash\(|\bmd5\b|\bsha\d*\b|\bcrc32\b|checksum|fingerprint"),
    ("looks at the network's weights themselves",
     r"state_dict|named_parameters|\.parameters\(|\.buffers\(|\.weight\b|\.bias\b|\.data_ptr\("
     r"|\.storage\(|\.untyped_storage\("),
    ("looks at the interpreter or the process",
     r"\bsys\._getframe\b|\binspect\b|\bgc\.|\bos\.environ\b|\bgetpid\b|\bgetuid\b|\bgethostname\b"
     r"|/proc/|\bsys\.modules\b|\b__builtins__\b|\bbuiltins\b|\bglobals\(\)|\bexec\(|\beval\("
     r"|\bcompile\(|\bimportlib\b|\bmarshal\b|\bbase64\b|\bget_ipython\b|\bgetattr\(|\bvars\("
     r"|\b__import__\b|\b__dict__\b"
     r"|\btime\.(time|perf_counter|monotonic|process_time)\b"),
    ("uses training images directly",
     r"\bload_mnist\b|\bMNIST\(|\.images\b|\btrain_set\b|\bdataset\["),
)
_LOOK_AT = tuple((why, re.compile(pattern)) for why, pattern in LOOK_AT)


@dataclass
class StudentCell:
    """One code cell the student wrote or changed: its number (every cell counted from 1, as the
    grader's messages count), what it is, and its lines as (sign, text, why) with sign '+' for a
    line the student wrote, '-' for a template line the student removed, ' ' for one kept."""

    number: int
    kind: str
    lines: list[tuple[str, str, str]] = field(default_factory=list)

    @property
    def marks(self) -> int:
        return sum(bool(why) for _, _, why in self.lines)


def look_at(line: str) -> str:
    """Why a line the student wrote deserves a look ('' if it does not): see :data:`LOOK_AT`.
    Comments are searched too (cutting them off at '#' would miss code after a '#' in a string);
    code written to dodge the patterns is still shown in full."""
    return "; ".join(why for why, pattern in _LOOK_AT if pattern.search(line))


def _code_cells(path: Path) -> list[tuple[int, str]] | None:
    """(number, source) of each code cell of a notebook file; None if it is not one."""
    try:
        raw = path.read_bytes()
        if len(raw) > NOTEBOOK_CAP:
            return None
        cells = json.loads(raw)["cells"]
        found = []
        for number, cell in enumerate(cells, 1):
            source = cell.get("source", "")
            source = "".join(source) if isinstance(source, list) else source
            if cell.get("cell_type") == "code" and isinstance(source, str):
                found.append((number, source))
        return found
    except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError):
        return None


def _diff(old: str, new: str) -> list[tuple[str, str, str]]:
    """Every line of both, in order: kept (' '), removed ('-'), written ('+', with why to look)."""
    a, b = old.splitlines(), new.splitlines()
    lines = []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        if op == "equal":
            lines += [(" ", text, "") for text in a[i1:i2]]
            continue
        lines += [("-", text, "") for text in a[i1:i2]]
        lines += [("+", text, look_at(text)) for text in b[j1:j2]]
    return lines


def _most_alike(cells: list[str], source: str) -> str | None:
    """The template cell most like ``source``, if at least SAME_CELL alike."""
    if len(source) > MATCH_CAP:
        return None
    best, score = None, SAME_CELL
    for cell in cells:
        matcher = difflib.SequenceMatcher(None, cell, source)
        if matcher.real_quick_ratio() >= score and matcher.quick_ratio() >= score \
                and matcher.ratio() >= score:
            best, score = cell, matcher.ratio()
    return best


def student_cells(notebook: Path, template: Path | None) -> list[StudentCell] | None:
    """The code cells of ``notebook`` that differ from ``template`` (06 as handed out): exercise
    cells diffed against the template's cell of the same exercise, other cells against the most
    similar template cell (at least :data:`SAME_CELL` alike), the rest as new. Cells equal to a
    template cell are left out. None if ``notebook`` is not a readable notebook; without a
    template, every code cell is new."""
    cells = _code_cells(notebook)
    if cells is None:
        return None
    given = _code_cells(template) if template is not None else None
    given = [source for _, source in given or []]
    exercises = {m.group(1): s for s in given if (m := EXERCISE.match(s))}
    plain = [s for s in given if not EXERCISE.match(s)]
    unchanged = {s.strip() for s in given}
    found = []
    for number, source in cells:
        if source.strip() in unchanged:
            continue
        exercise = EXERCISE.match(source)
        if exercise and exercise.group(1) in exercises:
            found.append(StudentCell(number, f"exercise {exercise.group(1)}",
                                     _diff(exercises[exercise.group(1)], source)))
            continue
        alike = _most_alike(plain, source)
        if alike is not None:
            found.append(StudentCell(number, "changed template cell", _diff(alike, source)))
        else:
            found.append(StudentCell(number, "new cell",
                                     [("+", line, look_at(line)) for line in source.splitlines()]))
    return found


def checks(report: Report) -> list[tuple[str, str, bool]]:
    """Each check's figure against its limit, as (name, text, close): ``close`` where the figure
    used most of its allowance (the answer key stays far from every one: bench/grading_checks.md,
    bench/network_check.md)."""
    rows = []
    if report.accuracy is not None:
        rows.append(("accuracy", f"{report.accuracy:.1%} (pass at {report.threshold:.0%})",
                     report.accuracy < report.threshold + 0.02))
    if report.near_copies is not None:
        rows.append(("near-copies", f"{report.near_copies} (fails above {COPY_SHARE:.0%} of "
                     "the two draws)", report.near_copies > 0.6 * COPY_SHARE * (report.samples or 0)))
    if report.frechet is not None and report.frechet_limit:
        rows.append(("Fréchet", f"{report.frechet:.1f} (limit {report.frechet_limit:.1f})",
                     report.frechet > 0.8 * report.frechet_limit))
    if report.plain_background is not None:
        rows.append(("plain background", f"{report.plain_background:.0%} (at least "
                     f"{PLAIN_SHARE:.0%})", report.plain_background < PLAIN_SHARE + 0.1))
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
    report: Report
    cells: list[StudentCell] | None

    @property
    def marks(self) -> int:
        return sum(cell.marks for cell in self.cells or [])

    @property
    def close(self) -> int:
        return sum(close for _, _, close in checks(self.report))

    @property
    def order(self) -> tuple:
        status = self.report.status
        first = (0 if status == PASS and (self.marks or self.close) else
                 1 if status == ERROR else 2 if status == FAIL else 3)
        return first, -(self.marks + self.close), self.report.student


def _grid(report: Report, out: Path) -> str:
    """The report's grid as a data URI, read only from OUT (a PNG the grader wrote there)."""
    if not report.grid:
        return ""
    try:
        path = Path(report.grid)
        if path.is_symlink() or path.resolve().parent != out.resolve() or path.suffix != ".png":
            return ""
        data = path.read_bytes()
        if len(data) > GRID_CAP or not data.startswith(b"\x89PNG\r\n\x1a\n"):
            return ""
    except OSError:
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
pre { background: #f6f6f6; padding: 0.5em; font-size: 0.85em; white-space: pre-wrap; overflow-wrap: anywhere; }
pre > span { display: block; } .add { background: #e6ffe6; } .del { background: #ffe6e6; }
.mark { background: #fff0a0; } .why { color: #a00; font-style: italic; }
img { max-width: 100%; border: 1px solid #bbb; } summary { cursor: pointer; font-weight: bold; }
"""
_CSS_CLASS = {PASS: "pass", FAIL: "fail", ERROR: "error"}


def _cell_html(cell: StudentCell) -> str:
    rows = []
    for sign, text, why in cell.lines[:LINES_CAP]:
        css = "mark" if why else {"+": "add", "-": "del"}.get(sign, "")
        note = f' <span class="why">&larr; {html.escape(why)}</span>' if why else ""
        more = f" … ({len(text) - WIDTH_CAP:,} more characters)" if len(text) > WIDTH_CAP else ""
        rows.append(f'<span class="{css}">{sign} {html.escape(text[:WIDTH_CAP])}{more}{note}</span>')
    if len(cell.lines) > LINES_CAP:
        hidden = cell.lines[LINES_CAP:]
        rows.append(f"<span>… {len(hidden):,} more lines, {sum(bool(w) for _, _, w in hidden)} "
                    "of them marked</span>")
    title = f"cell {cell.number}: {html.escape(cell.kind)}" + \
        (f" ({cell.marks} line{'s' if cell.marks > 1 else ''} marked)" if cell.marks else "")
    return (f"<details{' open' if cell.marks else ''}><summary>{title}</summary><pre>"
            + "".join(rows) + "</pre></details>")


def render(entries: list[Entry], out: Path, template_found: bool) -> str:
    """The whole page, as text."""
    entries = sorted(entries, key=lambda e: e.order)
    counts = {s: sum(e.report.status == s for e in entries) for s in (PASS, FAIL, ERROR)}
    head = ['<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">',
            '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
            'img-src data:; style-src \'unsafe-inline\'">',
            f"<title>06 review: {len(entries)} submissions</title><style>{STYLE}</style></head><body>",
            f"<h1>06 Assessment: review of {len(entries)} submissions</h1>",
            f"<p>{counts[PASS]} pass, {counts[FAIL]} fail, {counts[ERROR]} could not grade. "
            "Listed most in need of a look first: passes with marked code or a check close to its "
            "limit, then those that could not be graded, then fails, then clean passes. Some "
            "attacks pass every check (the README's threat table): read each student's code "
            "beside the samples it drew. A mark asks for a look; it is no verdict.</p>"]
    if not template_found:
        head.append("<p><b>The 06 template was not found, so every code cell is shown as the "
                    "student's.</b></p>")
    table = ["<table><tr><th>student</th><th>result</th><th>checks (bold: close to the limit)"
             "</th><th>marked lines</th></tr>"]
    sections = []
    for i, entry in enumerate(entries):
        r = entry.report
        css = _CSS_CLASS.get(r.status, "error")
        figures = "<br>".join(f'<span class="{"close" if close else ""}">{name}: {html.escape(text)}'
                              "</span>" for name, text, close in checks(r)) or "-"
        table.append(f'<tr><td><a href="#s{i}">{_e(r.student or report_name(r))}</a></td>'
                     f'<td class="{css}">{_e(r.status)}</td><td>{figures}</td>'
                     f"<td>{entry.marks if entry.cells is not None else '-'}</td></tr>")
        body = [f'<section id="s{i}"><h2>{_e(r.student or report_name(r))}: '
                f'<span class="{css}">{_e(r.status)}</span></h2>']
        if r.reason:
            body.append(f"<p>{_e(r.reason)}</p>")
        grid = _grid(r, out)
        body.append(f'<img alt="graded samples of {_e(r.student)}" src="{grid}">' if grid else
                    "<p>No grid: the submission stopped before its samples were judged.</p>")
        if entry.cells is None:
            body.append("<p>Its notebook could not be read for review.</p>")
        elif not entry.cells:
            body.append("<p>Every code cell is the template's, unchanged.</p>")
        else:
            body.append("<h3>The code the student wrote: a diff against the template (cells with "
                        "marked lines open; click a closed one to read it)</h3>")
            body += [_cell_html(cell) for cell in entry.cells[:CELLS_CAP]]
            if len(entry.cells) > CELLS_CAP:
                body.append(f"<p>… and {len(entry.cells) - CELLS_CAP} more cells, "
                            f"{sum(c.marks for c in entry.cells[CELLS_CAP:])} lines of them "
                            "marked.</p>")
        sections.append("".join(body) + "</section>")
    return "\n".join(head + table + ["</table>"] + sections + ["</body></html>"])


def write_review(reports: list[Report], out: Path, notebooks: dict[str, Path],
                 template: Path | None = None) -> Path:
    """Write ``OUT/review.html`` for ``reports``; ``notebooks`` maps each student to the private
    copy that was graded (a student without one is shown without code)."""
    if template is None:
        from .answer_key import TEMPLATE as template
    found = template is not None and template.is_file()
    entries = []
    for report in reports:
        copy = notebooks.get(report.student)
        cells = student_cells(copy, template if found else None) if copy else None
        entries.append(Entry(report, cells))
    out.mkdir(parents=True, exist_ok=True)
    path = out / "review.html"
    path.write_text(render(entries, out, found), encoding="utf-8")
    return path
