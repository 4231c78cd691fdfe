"""What a student wrote in 06: the code cells of a submission that differ from the template.

The grader keeps this in each report (:func:`for_report`), so the cohort's review page
(``course_lib/review.py``) can be drawn from the reports alone, after a Slurm array or a regrade.
Each cell is diffed against the template cell it replaces: an exercise cell against the same
exercise (``# EXERCISE: name``), another against the most alike template cell, the rest shown as
new. Lines the student wrote that read files or the network, run programs or shell commands,
fingerprint data, look at the network's weights themselves, look at the interpreter or the
process, use training images, use the library's version of an assessed part or hide text are
marked with why (:data:`LOOK_AT`). A mark asks for a look; it
is no verdict (``next(model.parameters())`` is marked too), and code written to dodge the
patterns is kept in full all the same. What is kept is bounded (cells, lines, characters), and
what is left out is counted, marks included, since every line is searched.
"""
from __future__ import annotations

import difflib
import json
import re
import unicodedata
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .config import REPO_ROOT
from .grade_checks import read_plain

TEMPLATE = REPO_ROOT / "notebooks" / "06_Assessment.ipynb"   # 06 as students receive it
EXERCISE = re.compile(r"^# EXERCISE: (\w+)")   # 06's exercise cells start so (answer_key fills)
NOTEBOOK_CAP = 20 * 2**20   # bytes: a submission larger than this is refused (and not read here)
SAME_CELL = 0.5        # a cell at least this similar to a template cell is shown as a change of it
MATCH_CAP = 20_000     # characters: a longer cell is shown whole, unmatched (matching is quadratic)
CELLS_CAP = 100        # cells kept per submission; the rest are counted
LINES_CAP = 400        # lines kept per cell; the rest are counted (every line is searched)
WIDTH_CAP = 400        # characters kept per line; the rest are counted (the whole line is searched)

# What a mark says, and the pattern that sets it, on lines the student wrote.
LOOK_AT = (
    ("reads a file or the network",
     r"\bopen\(|\bFileIO\b|\b(torch|np|numpy)\.load\b|\bpickle\b|\bjoblib\b"
     r"|\bread_(bytes|text)\(|\burllib\b|\brequests\b|\bsocket\b|\bos\.(listdir|scandir|walk)\b"
     r"|\bglob\b|\bshutil\b"),
    ("runs a program, a shell command or a magic",
     r"^\s*[!%]|\bsubprocess\b|\bos\.(system|popen|exec\w*|spawn\w*|fork)\b|\bctypes\b"
     r"|\bmultiprocessing\b"),
    ("fingerprints data (a hash or checksum)",
     r"\bhashlib\b|\bhash\(|\bmd5\b|\bsha\d*\b|\bcrc32\b|checksum|fingerprint"),
    ("looks at the network's weights themselves",
     r"state_dict|parameters|\bbuffers\(|\b_buffers\b|\.weight\b|\.bias\b|\.data_ptr\("
     r"|storage\("),
    ("looks at the interpreter or the process",
     r"\bsys\._getframe\b|\binspect\b|\bgc\.|\bos\.environ\b|\bgetpid\b|\bgetuid\b|\bgethostname\b"
     r"|/proc/|\bsys\.modules\b|\b__builtins__\b|\bbuiltins\b|\bglobals\(\)|\bexec\(|\beval\("
     r"|\bcompile\(|\bimportlib\b|\bmarshal\b|\bbase64\b|\bget_ipython\b|\bgetattr\(|\bvars\("
     r"|\b__import__\b|\b__dict__\b|\b__traceback__\b|\btb_frame\b|\bf_back\b|\bf_locals\b"
     r"|\btime\.(time|perf_counter|monotonic|process_time)\b"),
    ("uses the course's digit classifier, the judge (to choose or tune samples by it?)",
     r"\bload_judge_classifier\b|\bload_classifier\b|\bDigitClassifier\b|mnist_classifier"
     r"|\bgrade_checks\b|\bcourse_lib\.(grade\w*|classifier)\b"
     r"|\bfrom\s+course_lib\s+import\b.*\b(grade\w*|classifier)\b"),
    ("uses training images directly",
     r"\bload_mnist\b|\bMNIST\(|\.images\b|\btrain_set\b|\bdataset\["),
    ("uses the course library's version of an assessed part (the schedule, UNet, loss, reverse "
     "step and guided sampling must be the student's own)",
     r"\bcourse_lib\.(ddpm|unets|editing|check|answer_key|toy2d)\b"
     r"|\bfrom\s+course_lib\s+import\b.*\b(ddpm|unets|editing|check|answer_key|toy2d)\b"),
)
_LOOK_AT = tuple((why, re.compile(pattern)) for why, pattern in LOOK_AT)
HIDES_TEXT = ("hides text: invisible characters (direction overrides, zero-width or tag "
              "characters, shown as \\u escapes), or a line longer than the part shown")
"""The mark of a line that does not read as Python reads it (:func:`invisible`, ``WIDTH_CAP``)."""


IGNORABLE = ((0x034F, 0x034F), (0x115F, 0x1160), (0x17B4, 0x17B5), (0x180B, 0x180F),
             (0x3164, 0x3164), (0xFE00, 0xFE0F), (0xFFA0, 0xFFA0), (0xE0100, 0xE01EF))
"""Code points that show nothing yet are letters or marks to Python (Unicode's default-ignorable
ones outside the format category): Hangul fillers, which Python takes in a name (``ㅤ = 1``),
and variation selectors."""


def invisible(ch: str) -> bool:
    """Whether ``ch`` shows nothing where it stands: a format or control character (the direction
    overrides of "Trojan Source" code, zero-width spaces, Unicode's tag characters), a line or
    paragraph separator, half a surrogate pair (no character at all, and no page can hold one),
    or one of IGNORABLE; not the tab."""
    code = ord(ch)
    return ch != "\t" and (unicodedata.category(ch) in ("Cf", "Cc", "Zl", "Zp", "Cs")
                            or any(low <= code <= high for low, high in IGNORABLE))


def source_lines(text: str) -> list[str]:
    """``text``'s lines as Python reads them: split at \\n, \\r\\n or \\r only (``splitlines``
    also splits at form feeds and Unicode's separators, where Python sees no new line)."""
    lines = re.split(r"\r\n|\r|\n", text)
    return lines[:-1] if lines and lines[-1] == "" else lines


@dataclass
class StudentCell:
    """One code cell the student wrote or changed: its number (every cell counted from 1, as the
    grader's messages count), what it is, and its lines as (sign, text, why) with sign '+' for a
    line the student wrote, '-' for a template line the student removed, ' ' for one kept."""

    number: int
    kind: str
    lines: list[tuple[str, str, str]] = field(default_factory=list)
    more_lines: int = 0   # lines left out (beyond LINES_CAP)
    more_marks: int = 0   # marked lines among them

    @property
    def marks(self) -> int:
        return sum(bool(why) for _, _, why in self.lines) + self.more_marks

    def capped(self) -> "StudentCell":
        """This cell within LINES_CAP lines of WIDTH_CAP characters; what is cut is counted."""
        kept = [(sign, text if len(text) <= WIDTH_CAP else
                 f"{text[:WIDTH_CAP]} … ({len(text) - WIDTH_CAP:,} more characters)", why)
                for sign, text, why in self.lines[:LINES_CAP]]
        cut = self.lines[LINES_CAP:]
        return StudentCell(self.number, self.kind, kept, self.more_lines + len(cut),
                           self.more_marks + sum(bool(why) for _, _, why in cut))


def look_at(line: str) -> str:
    """Why a line the student wrote deserves a look ('' if it does not): see :data:`LOOK_AT`.
    Comments are searched too (cutting them off at '#' would miss code after a '#' in a string);
    code written to dodge the patterns is still shown in full."""
    return "; ".join(_reasons(line))


def _reasons(line: str) -> list[str]:
    found = [why for why, pattern in _LOOK_AT if pattern.search(line)]
    if len(line) > WIDTH_CAP or any(map(invisible, line)):
        found.append(HIDES_TEXT)
    return found


IMPORT = re.compile(r"^\s*(from\s+[\w.]+\s+)?import\b")
IMPORT_LINES_CAP = 100   # lines one import statement is followed over


def line_marks(lines: list[str]) -> list[str]:
    """:func:`look_at` of each line, where an import written over several lines (in parentheses,
    or continued by backslashes, as Black and isort write a long one) is searched as one line,
    and what that finds marks each of its lines: ``from course_lib import (`` then ``ddpm,``
    hides nothing."""
    marks = [_reasons(line) for line in lines]
    i = 0
    while i < len(lines):
        end, depth = i, 0
        if IMPORT.match(lines[i]):
            while True:
                depth += lines[end].count("(") - lines[end].count(")")
                if (depth <= 0 and not lines[end].rstrip().endswith("\\")) \
                        or end + 1 == len(lines) or end - i == IMPORT_LINES_CAP:
                    break
                end += 1
        if end > i:
            whole = " ".join(line.rstrip().rstrip("\\") for line in lines[i:end + 1])
            found = [why for why, pattern in _LOOK_AT if pattern.search(whole)]
            for k in range(i, end + 1):
                marks[k] = list(dict.fromkeys(marks[k] + found))
        i = end + 1
    return ["; ".join(found) for found in marks]


def _code_cells(path: Path) -> list[tuple[int, str]] | None:
    """(number, source) of each code cell of a notebook file; None if it is not one."""
    try:   # read_plain: a regular file under NOTEBOOK_CAP, never through a link (NotPlain)
        cells = json.loads(read_plain(path, NOTEBOOK_CAP))["cells"]
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
    a, b = source_lines(old), source_lines(new)
    marks = line_marks(b)
    lines = []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        if op == "equal":
            lines += [(" ", text, "") for text in a[i1:i2]]
            continue
        lines += [("-", text, "") for text in a[i1:i2]]
        lines += [("+", b[j], marks[j]) for j in range(j1, j2)]
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


def student_cells(notebook: Path, template: Path | None = TEMPLATE) -> list[StudentCell] | None:
    """The code cells of ``notebook`` that differ from ``template`` (06 as handed out): exercise
    cells diffed against the template's cell of the same exercise, other cells against the most
    similar template cell (at least :data:`SAME_CELL` alike), the rest as new (as is every cell
    past the first CELLS_CAP, which only count). Cells equal to a template cell are left out.
    None if ``notebook`` is not a readable notebook; without a template, every code cell is new."""
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
        alike = _most_alike(plain, source) if len(found) < CELLS_CAP else None   # kept: matched
        if alike is not None:
            found.append(StudentCell(number, "changed template cell", _diff(alike, source)))
        else:
            lines = source_lines(source)
            found.append(StudentCell(number, "new cell",
                                     [("+", *pair) for pair in zip(lines, line_marks(lines))]))
    return found


def for_report(notebook: Path, template: Path | None = TEMPLATE) -> dict | None:
    """What the grader keeps in a report (JSON): the student's cells, capped, with the counts of
    what was left out, and whether the template was there to diff against; None if
    ``notebook`` is not a readable notebook."""
    found = template is not None and template.is_file()
    cells = student_cells(notebook, template if found else None)
    if cells is None:
        return None
    kept, cut = cells[:CELLS_CAP], cells[CELLS_CAP:]
    return {"template": found, "cells": [asdict(cell.capped()) for cell in kept],
            "more_cells": len(cut), "more_marks": sum(cell.marks for cell in cut)}


def from_report(code: dict) -> list[StudentCell]:
    """The cells :func:`for_report` kept, back from a report's JSON."""
    return [StudentCell(int(c["number"]), str(c["kind"]),
                        [(str(s), str(t), str(w)) for s, t, w in c["lines"]],
                        int(c.get("more_lines", 0)), int(c.get("more_marks", 0)))
            for c in code.get("cells", [])]
