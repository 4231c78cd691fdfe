"""Submissions in: which files of a folder are graded, each student's name, a private copy of
every notebook taken before anything runs, and the checks a notebook passes before it is run.

Nothing after :func:`snapshot` reads a student's file again: the grader reads its private copies
only, and a file that could not be copied (a link, unreadable, too big) is noted beside its copy
and reported without running (:func:`unreadable_report`).
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import sys
from pathlib import Path

from .grade_checks import CannotGrade, NotPlain, Rejected, TooBig, one_line, read_plain
from .grade_report import ERROR, FAIL, Report, safe_name
from .submission_code import EXERCISE, NOTEBOOK_CAP

SKIPPING_TAGS = ("raises-exception", "nbval-skip", "skip-execution")  # removed: every cell must run
FIXME = re.compile(r"\bFIXME\b")
NEVER_RUN = "none needed: the notebook was never run"   # the report's sandbox, where nothing ran


def student_name(path: Path) -> str:
    """The file's name, made file-name safe; where that changed it (O'Brien, a long name, a name
    that is not UTF-8 from an old zip), a short hash of the original bytes follows, so that O'Brien
    and O_Brien never share a report."""
    name = safe_name(path.stem)
    if name != path.stem:
        name = f"{name[:71]}-{hashlib.sha256(os.fsencode(path.stem)).hexdigest()[:8]}"
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
    so that a regrade from another folder finds it (:func:`~course_lib.grade_out.earlier_name`)."""
    return os.path.abspath(path)


def _unreadable_note(copy: Path) -> Path:
    """Where :func:`snapshot` notes why a submission could not be copied."""
    return copy.with_name(copy.name + ".unreadable")


def why_unreadable(copy: Path) -> dict | None:
    """What :func:`snapshot` noted beside ``copy`` ({"too_big": bool, "why": str}), or None when
    the submission was copied."""
    note = _unreadable_note(copy)
    return json.loads(note.read_text()) if note.is_file() else None


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
        try:   # JSON may escape half a surrogate pair ("\ud800"): no text, and Jupyter never saves one
            json.dumps(data, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("it holds a lone surrogate escape (such as \\ud800), which is not "
                             "text") from None
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



def unreadable_report(copy: Path, name: str, origin: str,
                      threshold: float = 0.95) -> Report | None:
    """The report of a submission :func:`snapshot` could not copy (None for any other): a FAIL
    where it is too big, could not grade where the grader could not read it. Its reason lives
    beside this copy only, so the process that copied it reports it, never a ``--jobs`` worker or
    a Slurm task, which would copy the empty copy again without it."""
    if why_unreadable(copy) is None:
        return None
    report = Report(origin, ERROR, student=name, threshold=threshold, sandbox=NEVER_RUN)
    try:
        read_submission(copy)
    except Rejected as rejected:
        report.status, report.reason = FAIL, rejected.reason
    except CannotGrade as err:
        report.reason = one_line(f"could not grade: {err}")
    return report
