"""The ``OUT`` folder a grading writes to: one grading there at a time, and no earlier grade lost.

:func:`hold_out` locks ``OUT`` for one grading (and refuses while a Slurm array submitted there
still runs); before a (re)grade, the students' earlier reports move to ``OUT/previous/``
(:func:`keep_earlier`, :func:`set_aside`), all or nothing, and :func:`put_back` undoes a move that
cannot go on; :func:`writable_error` finds an ``OUT`` that cannot be written before hours of
grading; :func:`earlier_name` regrades a notebook under the name its earlier report has.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .grade_checks import one_line
from .grade_intake import origin_of
from .storage import save_json_atomic

OUT_LOCK = ".grading.lock"         # in OUT: held by the one grading writing there (hold_out)
BOOKS = ("gradebook.csv", "review.html")   # a folder run's files in OUT, beside the reports
SLURM_JOB = "slurm-job.txt"                # in OUT: the job id of the array submitted there
SLURM_BOOKS = ("roster.txt", "logs", SLURM_JOB)   # a Slurm run's too: roster, logs, its job


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
        holder = _holder(os.pread(fd, 300, 0).decode(errors="replace").strip())
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


def _holder(note: str) -> str:
    """Who holds the lock, from the note in the lock file. A note naming a process of this machine
    that has ended is stale: its grading was killed outright (the kernel freed its lock, the note
    stayed), and the grading holding the lock now could not write its own (another user's file)."""
    pid, _, host = note.removeprefix("pid ").partition(" on ")
    if not note:
        return "it did not say who"
    if pid.isascii() and pid.isdigit() and host.partition(",")[0] == socket.gethostname():
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return (f"it did not say who; the note names pid {pid} of this machine, which has "
                    "ended: likely a grading killed outright, its note left behind")
        except (OSError, OverflowError):   # another user's process (it runs), a pid past range
            pass
    return note


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


def keep_earlier(out: Path, students: list[str], books: tuple[str, ...]) -> None:
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
