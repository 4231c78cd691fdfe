"""Limits the kernel itself keeps for one sandboxed step: a control group (cgroup).

The sandbox's rlimits bind one process at a time, and its checks each second
(``sandbox.memory_over``) can miss a burst between two checks, or a memory file passed to another
process in flight. A cgroup is counted by the kernel, page by page, for every process in it:

- ``memory``: what all its processes hold together, anonymous memory, in-memory files (its /tmp,
  /dev/shm, memfds), kernel memory and (where the kernel counts it) swap, can never pass the
  group's limit; past it the kernel reclaims, then kills a process of the group (an OOM kill);
- ``pids``: at most ``tasks`` processes and threads;
- ``cpuset``: it runs only on the cores given (``sched_setaffinity`` cannot widen a cpuset).

Both of the kernel's layouts are handled, one directory per step, named ``course-step-…``:

- cgroup v1 (a tree per controller, /sys/fs/cgroup/memory, …/pids, …/cpuset): under the grader's
  own group in each tree, so the step also counts towards whatever limits the grader runs under;
- cgroup v2 (one tree): beside the grader's own group, since a group that holds processes may not
  pass controllers to groups below it (only the real root may). So limits set on the grader's own
  group do not cover the steps; those on the groups above it do. Where the grader's group is the
  root of its cgroup namespace (in a container) and holds processes, no controller can be handed
  down, and no group is made.

Creating groups takes root (as grading with the sandbox does) or a tree delegated to the grader.
Where neither is there :func:`create` returns None, :func:`unavailable` says why, and the sandbox
keeps to its rlimits and checks each second. Cores (a cpuset) and swap are counted where the
kernel offers them; a group without them still holds memory and processes, and
:func:`describe` names what it lacks.
"""
from __future__ import annotations

import itertools
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

PREFIX = "course-step-"
MOUNT_OPTIONS = {"rw", "ro", "noprefix", "clone_children", "xattr", "cpuset_v2_mode",
                 "favordynmods"}
"""A v1 tree's options that are not controllers (nor are ``name=…`` and ``release_agent=…``)."""
_numbers = itertools.count()
CHARGE_AHEAD = 8 * 2**20   # what a group may be charged in advance on all cores together


@dataclass(frozen=True)
class Hierarchy:
    """One mounted cgroup tree: where it is mounted, the tree's path at that mount point (the 4th
    field of /proc/self/mountinfo), its version and, for v1, its controllers."""

    mount: Path
    root: str
    version: int
    controllers: frozenset[str] = frozenset()


def hierarchies(mountinfo: str) -> list[Hierarchy]:
    """The cgroup trees in a /proc/self/mountinfo text."""
    found = []
    for line in mountinfo.splitlines():
        before, _, after = line.partition(" - ")
        fields, tail = before.split(), after.split()
        if len(fields) < 5 or len(tail) < 3 or tail[0] not in ("cgroup", "cgroup2"):
            continue
        mount = Path(fields[4].replace("\\040", " "))
        if tail[0] == "cgroup2":
            found.append(Hierarchy(mount, fields[3], 2))
        else:
            options = {o for o in tail[2].split(",") if "=" not in o} - MOUNT_OPTIONS
            found.append(Hierarchy(mount, fields[3], 1, frozenset(options)))
    return found


def own_groups(proc_cgroup: str) -> dict[str, str]:
    """The groups of a /proc/PID/cgroup text: controller → path ("" → the v2 tree's path)."""
    groups = {}
    for line in proc_cgroup.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        for controller in parts[1].split(",") if parts[1] else [""]:
            groups[controller] = parts[2]
    return groups


def _below(hierarchy: Hierarchy, path: str) -> Path | None:
    """The directory of group ``path`` in ``hierarchy``'s mount, None where it lies outside it."""
    root = hierarchy.root.rstrip("/")
    if path != hierarchy.root and not path.startswith(root + "/"):
        return None
    return hierarchy.mount / path[len(root):].lstrip("/")


def _read(path: Path) -> str:
    return path.read_text().strip()


def _write(path: Path, value) -> None:
    with open(path, "w") as file:
        file.write(str(value))


@dataclass
class Group:
    """One step's group: a directory per v1 controller, or one v2 directory."""

    version: int
    dirs: dict[str, Path]                       # controller → its directory ("" for v2)
    memory: int = 0                             # its memory limit, bytes
    missing: tuple[str, ...] = ()               # "cpuset", "swap limit": asked for, not there
    _procs: list[bytes] = field(default_factory=list, repr=False)

    def __post_init__(self):   # built here, so that the child only opens and writes
        self._procs = [os.fsencode(p / "cgroup.procs") for p in sorted(set(self.dirs.values()))]

    def _dir(self, controller: str) -> Path:
        return self.dirs[""] if self.version == 2 else self.dirs[controller]

    def join(self) -> None:
        """Move the calling process into the group (the child between fork and exec, so that all
        it starts is counted from its first page). Plain system calls: a child forked from a
        threaded process must not take locks another thread may have held."""
        pid = str(os.getpid()).encode()
        for path in self._procs:
            fd = os.open(path, os.O_WRONLY)
            try:
                os.write(fd, pid)
            finally:
                os.close(fd)

    def _counter(self, name: str, key: str | None = None) -> int:
        try:
            text = _read(self._dir("memory") / name)
            if key is None:
                return int(text)
            for line in text.splitlines():
                if line.startswith(key + " "):
                    return int(line.split()[1])
        except (OSError, ValueError):
            pass
        return 0

    def oom_kills(self) -> int:
        """How many of its processes the kernel killed for lack of memory (its limit's, or the
        whole machine's: the kernel counts either in the killed process's group)."""
        return self._counter("memory.events" if self.version == 2 else "memory.oom_control",
                             "oom_kill")

    def killed_at_its_limit(self) -> bool:
        """Whether the kernel killed one of its processes because the group reached its own
        limit (a kill for the machine's memory, with the group under its limit, is not its
        fault)."""
        if not self.oom_kills():
            return False
        if self.version == 2:
            return self._counter("memory.events", "oom") > 0
        # v1's count of limit hits (memory.failcnt) stayed 0 on kernel 6.18 as a step was killed
        # at its limit, so: did it ever hold its limit, less what cores may charge ahead?
        peak = max(self._counter("memory.max_usage_in_bytes"),
                   self._counter("memory.memsw.max_usage_in_bytes"))
        return peak >= self.memory - CHARGE_AHEAD

    def peak_memory(self) -> int:
        """The most memory the group held at once, in bytes, by the kernel's count (0: unknown)."""
        return self._counter("memory.peak" if self.version == 2 else "memory.max_usage_in_bytes")

    def pids(self) -> list[int]:
        found = set()
        for path in set(self.dirs.values()):
            try:
                found.update(int(p) for p in _read(path / "cgroup.procs").split())
            except (OSError, ValueError):
                pass
        return sorted(found)

    def kill(self) -> None:
        """Kill every process in the group (``cgroup.kill`` where the kernel has it, 5.14+)."""
        killer = self.dirs.get("") and self.dirs[""] / "cgroup.kill"
        if killer and killer.exists():
            try:
                _write(killer, 1)
                return
            except OSError:
                pass
        for _ in range(50):   # a process may fork while we kill: go until none is left
            left = self.pids()
            if not left:
                return
            for pid in left:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.02)

    def remove(self, wait: float = 5.0) -> bool:
        """Kill what is left, then remove the directories (once the last process is reaped)."""
        self.kill()
        deadline = time.monotonic() + wait
        left = set(self.dirs.values())
        while left:
            for path in list(left):
                try:
                    if self.version == 1 and path == self.dirs.get("memory"):
                        try:   # give back the file pages it read, rather than keep a removed
                            _write(path / "memory.force_empty", 0)   # group alive for them
                        except OSError:
                            pass
                    path.rmdir()
                    left.discard(path)
                except FileNotFoundError:
                    left.discard(path)
                except OSError:
                    pass
            if left:
                if time.monotonic() > deadline:
                    return False   # a process not yet reaped; remove_stale() takes it next time
                time.sleep(0.05)
        return True


_reason = "not tried yet"


def unavailable() -> str:
    """Why the last :func:`create` gave no group ("" when it gave one)."""
    return _reason


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale(parent: Path) -> None:
    """Remove the empty groups a grader that was killed left behind in ``parent``."""
    try:
        entries = list(parent.glob(PREFIX + "*"))
    except OSError:
        return
    for path in entries:
        owner = path.name[len(PREFIX):].split("-")[0]
        if owner.isdigit() and not _alive(int(owner)):
            try:
                path.rmdir()
            except OSError:
                pass


def _plan_v1(found: list[Hierarchy], own: dict[str, str], required: tuple[str, ...],
             optional: tuple[str, ...]) -> dict[str, Path]:
    """Where each controller's group goes: under the grader's own group in that controller's
    tree. Without a tree for a ``required`` controller, OSError; an ``optional`` one is left out."""
    parents = {}
    for controller in required + optional:
        tree = next((h for h in found if h.version == 1 and controller in h.controllers), None)
        parent = tree and _below(tree, own.get(controller, "/"))
        if parent is not None and parent.is_dir():
            parents[controller] = parent
        elif controller in required:
            raise OSError(f"no cgroup v1 tree has the {controller} controller" if tree is None
                          else f"the grader's own {controller} group is not in {tree.mount}")
    return parents


def _plan_v2(tree: Hierarchy, own: str, required: tuple[str, ...],
             optional: tuple[str, ...]) -> tuple[Path, tuple[str, ...]]:
    """Where the group goes (beside the grader's own, or under the root), and which of the
    ``optional`` controllers it gets; each controller missing there is handed down first (the
    root may; elsewhere this needs a delegated tree). A ``required`` one that cannot be: OSError."""
    here = _below(tree, own)
    if here is None or not here.is_dir():
        raise OSError(f"the grader's own group is not in {tree.mount}")
    parent = here if here == tree.mount else here.parent
    enabled = set(_read(parent / "cgroup.subtree_control").split())
    missing = [c for c in required if c not in enabled]
    if missing:
        _write(parent / "cgroup.subtree_control", " ".join("+" + c for c in missing))
    got = []
    for controller in optional:
        try:
            if controller not in enabled:
                _write(parent / "cgroup.subtree_control", "+" + controller)
            got.append(controller)
        except OSError:
            pass
    return parent, tuple(got)


def create(slot: int, memory: int, tasks: int, cpus: tuple[int, ...] = (), *,
           mountinfo: str | None = None, proc_cgroup: str | None = None) -> Group | None:
    """A new group for one step in parallel slot ``slot``: at most ``memory`` bytes (swap
    included where the kernel counts it), ``tasks`` processes and threads, and the cores
    ``cpus`` (all where empty). None where groups cannot be made here (:func:`unavailable` says
    why)."""
    global _reason
    try:
        mountinfo = Path("/proc/self/mountinfo").read_text() if mountinfo is None else mountinfo
        proc_cgroup = Path("/proc/self/cgroup").read_text() if proc_cgroup is None else proc_cgroup
    except OSError as err:   # not Linux
        _reason = f"no cgroups on this system ({err.strerror})"
        return None
    found, own = hierarchies(mountinfo), own_groups(proc_cgroup)
    required, optional = ("memory", "pids"), (("cpuset",) if cpus else ())
    name = f"{PREFIX}{os.getpid()}-{slot}-{next(_numbers)}"
    made: list[Path] = []
    try:
        v2 = next((h for h in found if h.version == 2 and h.mount == Path("/sys/fs/cgroup")), None)
        v2 = v2 or next((h for h in found if h.version == 2), None)
        v1_memory = any(h.version == 1 and "memory" in h.controllers for h in found)
        if v2 is not None and not v1_memory and "" in own:
            parent, got = _plan_v2(v2, own[""], required, optional)
            parents = {"": parent}
            version = 2
        elif v1_memory:
            parents = _plan_v1(found, own, required, optional)
            got = tuple(c for c in optional if c in parents)
            version = 1
        else:
            raise OSError("no cgroup tree with a memory controller is mounted")
        dirs = {}
        for controller, parent in parents.items():
            remove_stale(parent)
            path = parent / name
            path.mkdir()
            made.append(path)
            dirs[controller] = path
        missing = [c for c in optional if c not in got]
        if version == 2:
            path = dirs[""]
            _write(path / "memory.max", memory)
            if (path / "memory.swap.max").exists():
                _write(path / "memory.swap.max", 0)
            else:
                missing.append("swap limit")
            _write(path / "memory.oom.group", 1)   # an OOM kill ends the whole step
            _write(path / "pids.max", tasks)
            if "cpuset" in got:
                _write(path / "cpuset.cpus", ",".join(map(str, cpus)))
        else:
            _write(dirs["memory"] / "memory.limit_in_bytes", memory)
            if (dirs["memory"] / "memory.memsw.limit_in_bytes").exists():   # swap counts too
                _write(dirs["memory"] / "memory.memsw.limit_in_bytes", memory)
            else:   # the kernel was started without swap accounting
                missing.append("swap limit")
            _write(dirs["pids"] / "pids.max", tasks)
            if "cpuset" in got:
                try:
                    parent = dirs["cpuset"].parent
                    _write(dirs["cpuset"] / "cpuset.mems", _read(parent / "cpuset.mems"))
                    _write(dirs["cpuset"] / "cpuset.cpus", ",".join(map(str, cpus)))
                except OSError:   # cores outside the grader's own cpuset: hold the rest
                    cpuset = dirs.pop("cpuset")
                    made.remove(cpuset)
                    cpuset.rmdir()
                    missing.insert(0, "cpuset")
        group = Group(version, dirs, memory, tuple(missing))
    except (OSError, ValueError) as err:
        for path in reversed(made):
            try:
                path.rmdir()
            except OSError:
                pass
        _reason = str(err)
        return None
    _reason = ""
    return group


def describe(group: Group | None) -> str:
    """How a report names the limits: "cgroup v1", "cgroup v2, no cpuset", or why none."""
    if group is None:
        return f"no cgroup ({_reason})"
    return f"cgroup v{group.version}" + "".join(f", no {c}" for c in group.missing)
