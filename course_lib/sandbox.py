"""Run an untrusted command in a bubblewrap sandbox, with limits, a capped output and a time limit.

What the command can do inside (``course_lib/grade.py`` runs every submission's kernel this way):

- read the system (``SYSTEM``: /usr, /etc, the libraries, /sys), Python, the venv, the course's
  package and the datasets, but write nothing there; nothing else of the host's file system
  exists inside (an allow-list: a cohort's notebooks kept in the course folder, or elsewhere on
  the machine, are not there to read). The one writable place is its own work folder, mounted at
  ``/home/student`` and owned by the sandbox's uid, besides a /tmp and a /dev/shm of its own
  (in memory, size-capped; DataLoader workers and multiprocessing locks need /dev/shm);
- not see the instructor's home, the submissions, the grades or the grader's private folders
  (each hidden under an empty tmpfs), nor any other process (new PID namespace), nor the grader's
  environment (cleared, then a short allow-list);
- not reach any network, the host's 127.0.0.1 included (new network namespace: only its own lo);
- run as an unprivileged uid (not root), so file permissions and ``RLIMIT_NPROC`` bind, with
  limits on memory (``RLIMIT_DATA``, ``RLIMIT_AS``), CPU time, processes, file size and open files,
  and on what its work folder holds and what all its processes use together (checked each
  second: :func:`folder_over`, :func:`memory_over`; stopped beyond); where the grader can make
  cgroups (as root), the kernel also holds all its processes together to their memory, their
  number and their cores (``course_lib/cgroup_limits.py``, :func:`kernel_memory`);
- not reach the kernel keys of the grader's session (a fresh, empty session keyring: keyrings are
  shared by a uid's processes whatever the namespaces; :func:`fresh_keyrings`);
- not make the system calls a notebook never needs, through which a shared kernel is most often
  attacked: new namespaces (a user namespace of its own, where it would be root), mounts, kernel
  keys, ptrace, BPF, io_uring and the like (a seccomp filter, ``course_lib/syscall_filter.py``).

Output is kept to the last ``OUTPUT_CAP`` bytes of each stream, every wait has a time limit, and on
the way out the whole tree is killed (the PID namespace dies with its first process, and every
process of the sandbox uid is killed as well). Without bubblewrap, :func:`require_bwrap` refuses
with the install command, and so do :func:`require` and :func:`run` without libseccomp;
``trusted=True`` (the grader's ``--no-sandbox``) runs the same command without isolation.
"""
from __future__ import annotations

import contextlib
import errno
import functools
import os
import resource
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from . import cgroup_limits, syscall_filter

INSIDE_HOME = "/home/student"       # where the work folder appears inside the sandbox
OUTPUT_CAP = 64 * 1024              # bytes kept of stdout and of stderr (the tail)
POLL_SECONDS = 1.0                  # how often its folder and memory are checked while it runs
BASE_UID = 64000                    # sandbox uid = BASE_UID + slot: one uid per parallel job
# the instructor's: locale, data, threads, and float32 or bfloat16 (course_lib/config.py::native_bf16)
ENV_ALLOW = ("LANG", "LC_ALL", "TZ", "COURSE_DATA_DIR", "OMP_NUM_THREADS", "COURSE_BF16")
INSTALL_HINT = "install bubblewrap (Debian/Ubuntu: sudo apt-get install bubblewrap)"


class SandboxUnavailable(RuntimeError):
    """The sandbox cannot be used on this machine (the grader's problem, not the submission's)."""


@dataclass
class Limits:
    """Per-sandbox resource limits."""

    memory_bytes: int = 6 * 2**30     # RLIMIT_DATA (heap and anonymous maps) per process, and
                                      # all its processes together (PSS + swap, checked each second)
    address_bytes: int = 64 * 2**30   # RLIMIT_AS (torch reserves much more than it uses)
    cpu_seconds: int = 4 * 3600       # RLIMIT_CPU (per process, summed over its threads; the
                                      # grader gives more to many threads: grade._limits)
    processes: int = 256              # RLIMIT_NPROC for the sandbox uid
    file_bytes: int = 2 * 2**30       # RLIMIT_FSIZE: largest file it may write
    folder_bytes: int = 4 * 2**30     # what its work folder may hold on disk (checked each second)
    folder_entries: int = 100_000     # files and folders in it (inodes)
    folder_depth: int = 64            # folders nested in it (deeper, Python 3.11's tree walks
                                      # recurse past their limit, and paths grow past PATH_MAX)
    shm_bytes: int = 2**30            # its own /tmp, and its /dev/shm (DataLoader workers), each
    open_files: int = 1024
    threads: int = 1                  # OMP/MKL threads (its CPU share)
    cpus: tuple[int, ...] = ()        # the cores it may run on (empty: all of the grader's)


@dataclass
class Result:
    returncode: int | None            # None: killed (at the time limit, or for ``over``)
    seconds: float
    stdout: str
    stderr: str
    over: str = ""                    # why it was stopped early: "wrote more than 4 GiB ..."
    peak_memory: int = 0              # the most its processes held at once, by the kernel's
                                      # count (its cgroup's; 0 without one)

    @property
    def timed_out(self) -> bool:
        return self.returncode is None and not self.over


def bwrap_path() -> str | None:
    return shutil.which("bwrap")


def require_bwrap() -> str:
    path = bwrap_path()
    if path is None:
        raise SandboxUnavailable(f"bubblewrap (bwrap) is not installed: {INSTALL_HINT}, "
                                 "or pass --no-sandbox to grade trusted notebooks unsandboxed")
    return path


def host_cores() -> list[int]:
    """The cores the grader may run on (all of them where the system cannot say, as on macOS)."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def slot_cpus(slot: int, jobs: int) -> tuple[int, ...]:
    """The cores parallel slot ``slot`` of ``jobs`` runs on: the grader's own cores in ``jobs``
    runs of nearly equal length, so a notebook that starts more threads than its share slows
    only itself (one that widens its affinity on purpose stays there only in a cgroup's cpuset);
    one slot (or more slots than cores) keeps them all: ()."""
    cores = host_cores()
    if jobs <= 1 or jobs > len(cores) or not hasattr(os, "sched_setaffinity"):
        return ()
    start = slot * len(cores) // jobs
    return tuple(cores[start:(slot + 1) * len(cores) // jobs])


def require(slot: int = 0) -> None:
    """Refuse, with the install command, where no sandbox can run: without bubblewrap, or without
    libseccomp to compile its filter (the grader asks once, before any submission). The trial
    sandbox runs in the caller's own ``slot`` (:func:`claim_slot`): ending it kills every
    process of that slot's uid, so a shared slot would kill another grader's running step."""
    require_bwrap()
    os.close(filter_fd())
    import tempfile   # and one sandbox, started: an old bubblewrap (before --size) fails here,
    with tempfile.TemporaryDirectory() as tmp:   # not on every student's notebook
        prepare_workdir(Path(tmp), slot)
        result = run([shutil.which("true") or "/bin/true"], Path(tmp), 60, slot=slot)
    if result.returncode != 0:
        why = (result.stderr.strip().splitlines() or ["no message"])[-1]
        raise SandboxUnavailable(f"bubblewrap could not start a sandbox here ({why}); it needs "
                                 "bubblewrap 0.6 or later, or pass --no-sandbox to grade "
                                 "trusted notebooks unsandboxed")


def sandbox_uid(slot: int = 0) -> int:
    return BASE_UID + slot


SLOTS = 1000                        # sandbox uids BASE_UID … BASE_UID + 999, and their cgroups
_claimed: dict[int, int] = {}       # slot -> the lock file this process holds open for it


def slot_lock_dir() -> Path:
    """Where root's graders on this machine lock their slots (root's own: /run is root's)."""
    return Path("/run/course-grade")


def uid_taken(uid: int) -> bool:
    """Whether ``uid`` (or the group of that number, which a work folder is also given to) belongs
    to an account of this machine: Debian gives system services numbers in the slots' range
    (64030 slurm, 64045 ceph, 64055 libvirt-qemu), and a sandbox must never run as one, nor end
    its processes."""
    import grp
    import pwd

    for lookup in (pwd.getpwuid, grp.getgrgid):
        try:
            lookup(uid)
            return True
        except KeyError:
            pass
    return False


def claim_slot(preferred: int = 0) -> int:
    """A sandbox slot that no other grader on this machine holds: ``preferred`` if free, else the
    first free one, held (``flock``) until this process ends. A slot names a uid and a cgroup,
    and ending a step kills every process of its uid: two graders at once (a second instructor,
    two Slurm arrays on one node) must never share one, and no slot whose uid belongs to an
    account (:func:`uid_taken`) is given. Without root every sandbox runs as the grader's own uid
    and nothing is killed by uid, so there is nothing to claim: ``preferred``."""
    import fcntl

    if os.geteuid() != 0:
        return preferred % SLOTS
    folder = slot_lock_dir()
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    for slot in dict.fromkeys([preferred % SLOTS, *range(SLOTS)]):
        if uid_taken(sandbox_uid(slot)):
            continue
        fd = os.open(folder / f"slot-{slot}.lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        _claimed[slot] = fd
        return slot
    raise SandboxUnavailable(f"all {SLOTS} sandbox slots are held by graders running on this "
                             f"machine (locks in {folder}), or their uids ({sandbox_uid(0)} to "
                             f"{sandbox_uid(SLOTS - 1)}) belong to accounts; wait for one to finish")


def release_slot(slot: int) -> None:
    """Give back a slot :func:`claim_slot` gave this process (nothing if it holds none)."""
    fd = _claimed.pop(slot, None)
    if fd is not None:
        os.close(fd)   # closing the file drops its flock


def remove_tree(path: Path) -> None:
    """Delete a folder that sandboxed code wrote in, whatever it left: folders it locked (chmod
    000, where the sandbox ran as the grader's own uid), folders nested past Python 3.11's
    recursion limit (where ``shutil.rmtree`` raises RecursionError, even with ignore_errors) and
    paths past PATH_MAX. coreutils walk by directory handles and never follow links; where they
    are not GNU's (no --one-file-system), ``shutil.rmtree`` tries, which never follows links
    either (and no mount lies inside: a sandbox's mounts end with its namespace); what cannot go
    stays, quietly."""
    if os.path.islink(path):
        os.unlink(path)
    if not os.path.lexists(path):
        return
    for command in (["chmod", "-R", "u+rwx", "--", str(path)],
                    ["rm", "-rf", "--one-file-system", "--", str(path)]):
        subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    if os.path.lexists(path):
        try:
            shutil.rmtree(path, ignore_errors=True)
        except RecursionError:
            pass


def prepare_workdir(path: Path, slot: int = 0) -> None:
    """Hand the work folder (and everything in it) to the sandbox uid, the only place it may write."""
    if os.geteuid() != 0:
        return
    uid = sandbox_uid(slot)
    for root, dirs, files in os.walk(path):
        for name in [*dirs, *files]:
            os.chown(os.path.join(root, name), uid, uid, follow_symlinks=False)
    os.chown(path, uid, uid)
    os.chmod(path, 0o700)


SYSTEM = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc", "/sys")
"""The host folders a sandbox sees (read-only; links such as /bin -> usr/bin stay links)."""


def exposed() -> list[Path]:
    """What the kernel needs besides ``SYSTEM``: Python, the venv, the course's package (its code
    and the judges' weights), the repository's data folder and the datasets; all read-only. Not
    the rest of the repository: its checkpoints, or submissions an instructor keeps there."""
    package = Path(__file__).resolve().parent
    paths = [Path(sys.base_prefix), Path(sys.prefix), package, package.parent / "data"]
    if os.environ.get("COURSE_DATA_DIR"):
        paths.append(Path(os.environ["COURSE_DATA_DIR"]))
    return [p.resolve() for p in paths if p.exists()]


TMPFS = (Path("/tmp"), Path("/home"), Path("/root"), Path("/run"))
"""Folders the sandbox replaces with empty ones; what it needs from them is bound back, read-only,
through folders it creates traversable (bwrap would make them 0700, unreadable to the uid)."""
EMPTY_TMPFS_BYTES = 2**20
"""The cap on every empty folder but /tmp and /dev/shm (nothing is written there). As root they
are the root's, unwritable to the sandbox uid; without root they are the grader's own, writable,
and, uncapped, each could take half of the machine's memory, which no check each second counts.
The root folder, bwrap's own tmpfs, has no cap: :func:`bwrap_command` makes it read-only."""


def bwrap_command(argv: list[str], workdir: Path, hide: list[Path], env: dict[str, str],
                  slot: int = 0, seccomp_fd: int | None = None,
                  shm_bytes: int = Limits.shm_bytes) -> list[str]:
    """The bwrap command line that runs ``argv`` in ``workdir`` (seen as INSIDE_HOME), under the
    seccomp filter that bwrap reads from ``seccomp_fd``, with a /tmp and a /dev/shm of its own of
    at most ``shm_bytes`` each (a notebook's DataLoader workers and multiprocessing locks need
    /dev/shm)."""
    cmd = [require_bwrap()]
    for name in SYSTEM:
        path = Path(name)
        if path.is_symlink():
            cmd += ["--symlink", os.readlink(path), name]
        elif path.is_dir():
            cmd += ["--ro-bind", name, name]
    cmd += ["--dev", "/dev", "--perms", "1777", "--size", str(shm_bytes), "--tmpfs", "/dev/shm",
            "--proc", "/proc"]
    small = ["--size", str(EMPTY_TMPFS_BYTES)]
    for path in TMPFS:   # empty: a course checked out under /tmp is put back below
        if path == Path("/tmp"):   # writable by anyone, as on the host, within a cap
            cmd += ["--perms", "1777", "--size", str(shm_bytes)]
        else:
            cmd += small
        cmd += ["--tmpfs", str(path)]
    hidden = [p for p in (Path(h).resolve() for h in hide)
              if p.is_dir() and p != Path("/") and not Path(INSIDE_HOME).is_relative_to(p)]
    for path in hidden:  # the instructor's home, the submissions, the grades, private folders
        cmd += [*small, "--tmpfs", str(path)]
    shown = exposed()
    for path in shown:  # back, read-only, on top of the hidden homes, through traversable folders
        for parent in reversed(path.parents):
            if parent != Path("/") and not any(parent.is_relative_to(s) for s in SYSTEM):
                cmd += ["--perms", "0755", "--dir", str(parent)]
        cmd += ["--ro-bind", str(path), str(path)]
    for path in hidden:  # and hidden again where they lie inside what was shown
        if any(path.is_relative_to(p) for p in shown):
            cmd += [*small, "--tmpfs", str(path)]
    # "/" itself is a tmpfs bwrap makes, uncapped, and without root the grader's own: read-only
    # once every mount point is made on it (not recursive: /tmp, /dev/shm and the work folder
    # keep theirs)
    cmd += ["--bind", str(workdir), INSIDE_HOME, "--remount-ro", "/", "--chdir", INSIDE_HOME,
            "--unshare-net", "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
            "--hostname", "sandbox", "--die-with-parent", "--new-session", "--clearenv"]
    if seccomp_fd is not None:
        cmd += ["--seccomp", str(seccomp_fd)]
    for key, value in env.items():
        cmd += ["--setenv", key, value]
    if os.geteuid() == 0:  # bwrap sets up the namespaces as root, then setpriv drops to the uid
        uid = str(sandbox_uid(slot))
        cmd += ["--", shutil.which("setpriv") or "/usr/bin/setpriv", "--reuid", uid, "--regid", uid,
                "--clear-groups", "--no-new-privs", "--inh-caps=-all", "--bounding-set=-all"]
    else:
        cmd += ["--cap-drop", "ALL", "--"]
    return cmd + list(argv)


def sandbox_env(extra: dict[str, str], limits: Limits) -> dict[str, str]:
    """A cleared environment: an allow-list of the grader's variables, then fixed values."""
    env = {k: os.environ[k] for k in ENV_ALLOW if k in os.environ}
    if "COURSE_DATA_DIR" in env:  # the real path, as exposed() binds it: a link under /tmp is gone inside
        env["COURSE_DATA_DIR"] = str(Path(env["COURSE_DATA_DIR"]).resolve())
    threads = str(limits.threads)
    env.update(PATH=os.pathsep.join([str(Path(sys.executable).parent), "/usr/bin", "/bin"]),
               HOME=INSIDE_HOME, TMPDIR="/tmp", MPLCONFIGDIR="/tmp/mpl", PYTHONNOUSERSITE="1",
               JUPYTER_RUNTIME_DIR="/tmp/jupyter", IPYTHONDIR="/tmp/ipython",
               COURSE_NO_DOWNLOAD="1", OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
    env.update(extra)
    return env


KEYCTL = {"x86_64": 250, "aarch64": 219, "riscv64": 219, "ppc64le": 271, "s390x": 280, "i686": 288}
"""keyctl(2)'s system call number (the C library has no wrapper) per machine."""
JOIN_SESSION_KEYRING = 1                          # keyctl's operation (linux/keyctl.h)


def _keyctl():
    """keyctl(operation, *args) through libc's syscall(), or None where its number is unknown.
    Looked up before any fork: a child of a threaded process must not load libraries."""
    import ctypes
    import platform

    number = KEYCTL.get(platform.machine())
    if number is None:
        return None
    syscall = ctypes.CDLL(None, use_errno=True).syscall
    return lambda *args: syscall(number, *args)


def fresh_keyrings(keyctl=None) -> bool:
    """Give this process a new, empty session keyring, so that keys of the session it came from
    (the grader's: Kerberos tickets, fscrypt or CIFS keys) are out of its reach, even before the
    seccomp filter refuses every keyring call inside. False where the machine has no keyrings
    (nothing to reach then)."""
    keyctl = keyctl or _keyctl()
    if keyctl is None:
        return False
    return keyctl(JOIN_SESSION_KEYRING, None) >= 0


def own_tasks() -> int:
    """The processes and threads this uid already runs: what RLIMIT_NPROC counts against a step
    that runs as the grader's own uid (not root: no sandbox uid of its own)."""
    import psutil

    uid, count = os.getuid(), 0
    for proc in psutil.process_iter(["uids", "num_threads"]):
        if proc.info["uids"] and proc.info["uids"].real == uid:
            count += proc.info["num_threads"] or 1
    return count


def _limit(limits: Limits, group: cgroup_limits.Group | None = None):
    keyctl = _keyctl()   # here, in the parent: the child only calls it
    # as root the step runs as a sandbox uid of its own; otherwise as ours, whose desktop
    # (a browser's threads) would use up the limit before the notebook starts
    processes = limits.processes + (own_tasks() if os.geteuid() != 0 else 0)
    _, hard = resource.getrlimit(resource.RLIMIT_NPROC)
    if hard != resource.RLIM_INFINITY:   # not root, it cannot be raised past the hard limit
        processes = min(processes, hard)

    def apply() -> None:  # runs in the child between fork and exec; inherited through bwrap
        if group is not None:   # first: all it starts is counted by the kernel from here on
            group.join()
        if keyctl is not None:
            fresh_keyrings(keyctl=keyctl)
        if limits.cpus:   # what threads it starts share these (widening them takes intent)
            os.sched_setaffinity(0, limits.cpus)
        for what, value in ((resource.RLIMIT_DATA, limits.memory_bytes),
                            (resource.RLIMIT_AS, limits.address_bytes),
                            (resource.RLIMIT_CPU, limits.cpu_seconds),
                            (resource.RLIMIT_NPROC, processes),
                            (resource.RLIMIT_FSIZE, limits.file_bytes),
                            (resource.RLIMIT_NOFILE, limits.open_files),
                            (resource.RLIMIT_CORE, 0)):
            resource.setrlimit(what, (value, value))
    return apply


class _Tail:
    """Reads a pipe to its end in a thread, keeping only the last ``cap`` bytes."""

    def __init__(self, pipe, cap: int = OUTPUT_CAP):
        self.data, self.cap, self.dropped = bytearray(), cap, 0
        self.thread = threading.Thread(target=self._read, args=(pipe,), daemon=True)
        self.thread.start()

    def _read(self, pipe) -> None:
        try:
            while chunk := pipe.read1(65536):
                self.data += chunk
                if len(self.data) > self.cap:
                    self.dropped += len(self.data) - self.cap
                    del self.data[:len(self.data) - self.cap]
        except (OSError, ValueError):
            pass

    def text(self, wait: float) -> str:
        self.thread.join(wait)  # bounded: a pipe still held open elsewhere cannot hang us
        head = f"[{self.dropped} bytes dropped]\n" if self.dropped else ""
        return head + bytes(self.data).decode("utf-8", "replace")


def filter_fd() -> int:
    """A file descriptor holding the seccomp filter for one sandbox; without libseccomp the
    sandbox refuses, as it does without bubblewrap."""
    try:
        return syscall_filter.program_fd()
    except syscall_filter.Unavailable as err:
        raise SandboxUnavailable(f"{err}, or pass --no-sandbox to grade trusted notebooks "
                                 "unsandboxed") from None


def kill_uid(uid: int) -> None:
    """Kill every process running as ``uid`` (the sandbox's; never the grader's own)."""
    import psutil

    if uid == 0 or uid == os.getuid():
        return
    for proc in psutil.process_iter(["uids"]):
        try:
            if proc.info["uids"] and proc.info["uids"].real == uid:
                proc.kill()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass


def run(argv: list[str], workdir: Path, timeout: float, *, hide: list[Path] = (),
        env: dict[str, str] | None = None, limits: Limits | None = None, slot: int = 0,
        trusted: bool = False) -> Result:
    """Run ``argv`` sandboxed in ``workdir`` for at most ``timeout`` seconds; never hangs."""
    limits = limits or Limits()
    env = sandbox_env(env or {}, limits)
    seccomp_fd = None
    if trusted:  # --no-sandbox: same limits and environment, no isolation
        cmd, cwd = list(argv), workdir
        env = dict(env, HOME=str(workdir))
    else:
        require_bwrap()
        seccomp_fd = filter_fd()
        cmd, cwd = bwrap_command(argv, workdir, list(hide), env, slot, seccomp_fd,
                                 limits.shm_bytes), "/"
    group = None if trusted else cgroup_limits.create(slot, kernel_memory(limits),
                                                      limits.processes, limits.cpus)
    start = time.perf_counter()
    try:
        proc, group = _start(cmd, cwd, env, limits, group, seccomp_fd)
    except BaseException:
        if group is not None:
            group.remove()
        raise
    finally:
        if seccomp_fd is not None:
            os.close(seccomp_fd)
    code, over = None, ""
    try:
        out, err = _Tail(proc.stdout), _Tail(proc.stderr)
        while True:
            left = start + timeout - time.perf_counter()
            try:
                code = proc.wait(timeout=max(0.0, min(POLL_SECONDS, left)))
                break
            except subprocess.TimeoutExpired:
                over = kernel_over(group, limits) or over_limits(proc.pid, workdir, limits)
                if over or left <= POLL_SECONDS:
                    break
    except BaseException:   # the grader stopped (Ctrl-C, SIGTERM): the step must not outlive it
        _end(proc, slot, trusted)
        if group is not None:
            group.remove()
        for pipe in (proc.stdout, proc.stderr):
            pipe.close()
        raise
    seconds = time.perf_counter() - start
    over = over or kernel_over(group, limits)   # an OOM kill may have ended it
    _end(proc, slot, trusted)
    over = over or folder_over(workdir, limits)  # what it left, counted once all of it has stopped
    peak = 0
    if group is not None:
        peak = group.peak_memory()
        group.remove()
    result = Result(code, seconds, out.text(5), err.text(5), over, peak)
    for pipe in (proc.stdout, proc.stderr):
        pipe.close()
    return result


_fell_back = ""   # why a step had to start without its cgroup (kernel_limits reports it)


PR_SET_PDEATHSIG = 1   # prctl(2)'s option (linux/prctl.h)


def end_with_parent(parent: int) -> bool:
    """Have the kernel send this process SIGTERM when ``parent`` (the process that started it)
    ends, killed or not, so that a grading worker never outlives the grading that started it.
    False where ``parent`` has already ended. The kernel watches the *thread* of ``parent`` that
    started this process: the grading's pool thread, which waits for it to end. Linux only:
    elsewhere nothing is asked (a worker of a grading killed outright runs on to its time
    limit), only whether the parent still runs."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM))
    return os.getppid() == parent   # checked after: it may have ended before the call


@contextlib.contextmanager
def exit_on_sigterm():
    """Within: SIGTERM (``kill``, ``timeout``, Slurm's ``scancel``) raises ``SystemExit(143)``, as
    Ctrl-C raises KeyboardInterrupt, so that the grader's ``finally`` blocks run (the step
    killed, its slot, folders and cgroup freed); a second SIGTERM is then ignored, so as not to
    cut that short. Python's default would end the process there and then. Outside the main
    thread (where no handler can be set): unchanged."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):   # then a handler that does nothing, not SIG_IGN: a worker
        signal.signal(signal.SIGTERM, lambda *_: None)   # started now would inherit that
        raise SystemExit(128 + signum)
    earlier = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:   # None: a handler set outside Python, which Python cannot put back
        signal.signal(signal.SIGTERM, signal.SIG_DFL if earlier is None else earlier)


def _start(cmd, cwd, env, limits: Limits, group, seccomp_fd):
    """Start the step: (the process, the group it runs in). Where it cannot join its cgroup,
    remove that and start it again without one (the checks each second still hold it) rather
    than fail every submission, and remember why."""
    global _fell_back

    def popen(group):
        return subprocess.Popen(cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                start_new_session=True, preexec_fn=_limit(limits, group),
                                pass_fds=() if seccomp_fd is None else (seccomp_fd,))
    if group is not None:
        try:
            return popen(group), group
        except subprocess.SubprocessError as err:   # the child could not join its group
            _fell_back = f"a step could not join its group: {err}"
            group.remove()
    try:
        return popen(None), None
    except subprocess.SubprocessError as err:   # setrlimit or sched_setaffinity failed
        raise SandboxUnavailable(f"could not start the step: {err}") from None


def _size(n: int) -> str:
    """Bytes as people say them: "4 GiB", "64 MiB"."""
    return f"{n / 2**30:g} GiB" if n >= 2**30 else f"{n / 2**20:g} MiB"


def folder_over(workdir: Path, limits: Limits, deleted: int = 0) -> str:
    """Why the work folder is over its limits ("" while within them): it lies on the host's disk,
    which one submission must not fill for everyone (in bytes, or in inodes with tiny files).
    Counts space allocated on disk (sparse files count what they use) and ``deleted`` bytes of
    files deleted while open, never follows links, and stops counting at the first limit passed,
    so the count itself stays quick."""
    full = f"wrote more than {_size(limits.folder_bytes)} to its work folder"
    used, entries, stack = deleted, 0, [(str(workdir), 0)]
    if used > limits.folder_bytes:
        return full
    while stack:
        folder, depth = stack.pop()
        if depth > limits.folder_depth:
            return f"nested folders more than {limits.folder_depth} deep in its work folder"
        try:
            with os.scandir(folder) as found:
                for entry in found:
                    entries += 1
                    if entries > limits.folder_entries:
                        return f"made more than {limits.folder_entries:,} files and folders in its work folder"
                    info = entry.stat(follow_symlinks=False)
                    used += info.st_blocks * 512
                    if used > limits.folder_bytes:
                        return full
                    if entry.is_dir(follow_symlinks=False):
                        stack.append((entry.path, depth + 1))
        except OSError as err:   # removed while counting, or unreadable: count what can be read
            if err.errno == errno.ENAMETOOLONG:   # below here no path-based walk sees anything
                return "made paths longer than the system allows in its work folder"
            continue
    return ""


MEMORY_FIELDS = {"smaps_rollup": ("Pss_Anon:", "Pss_Shmem:", "SwapPss:"),
                 "status": ("RssAnon:", "RssShmem:", "VmSwap:")}
"""What a process holds of the machine's memory that cannot be taken back (its library and file
pages can be read again from disk): anonymous and shared-memory pages and swap. ``smaps_rollup``
splits each page shared between processes (after a fork) among them, at the cost of a walk of the
process's page tables (15-20 ms for a PyTorch process here); ``status`` reads the kernel's counters,
an upper bound of the same (shared pages counted in each process that maps them), in microseconds."""


def process_memory(pid: int, source: str = "smaps_rollup") -> int:
    """Bytes of memory ``pid`` holds by ``MEMORY_FIELDS[source]``; 0 once it is gone."""
    try:
        with open(f"/proc/{pid}/{source}") as file:
            lines = file.read().splitlines()
    except OSError:
        return 0
    fields = MEMORY_FIELDS[source]
    if source == "smaps_rollup" and not any(line.startswith("Pss_Anon:") for line in lines):
        fields = ("Pss:", "SwapPss:")   # kernels before 5.7: file pages counted too, never fewer
    return sum(int(line.split()[1]) * 1024 for line in lines if line.startswith(fields))


def open_files(pid: int) -> list[tuple[str, os.stat_result]]:
    """What ``pid`` has open: each descriptor's target (as /proc names it) and its stat."""
    found = []
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return found
    for fd in fds:
        path = f"/proc/{pid}/fd/{fd}"
        try:
            found.append((os.readlink(path), os.stat(path)))
        except OSError:
            continue
    return found


def _mapped_inodes(pid: int) -> set[int]:
    try:
        with open(f"/proc/{pid}/maps") as file:
            return {int(line.split()[4]) for line in file if "/memfd:" in line}
    except (OSError, ValueError, IndexError):
        return set()


def held_files(pids: list[int], device: int | None = None) -> tuple[int, int]:
    """Bytes the processes hold in files no other count sees, each file once: memory files
    (memfd) they have open but not mapped (mapped ones are in their ``Pss_Shmem``), and files
    deleted while open on ``device`` (the work folder's: gone from the folder, still on disk)."""
    seen, memory, disk = set(), 0, 0
    for pid in pids:
        files = open_files(pid)
        mapped = _mapped_inodes(pid) if any(t.startswith("/memfd:") for t, _ in files) else set()
        for target, info in files:
            key = (info.st_dev, info.st_ino)
            if key in seen or not stat.S_ISREG(info.st_mode):
                continue
            seen.add(key)
            if target.startswith("/memfd:") and info.st_ino not in mapped:
                memory += info.st_blocks * 512
            elif target.endswith(" (deleted)") and info.st_dev == device:
                disk += info.st_blocks * 512
    return memory, disk


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (the sandbox: bwrap and everything in its PID namespace)."""
    import psutil

    try:
        return [pid, *(child.pid for child in psutil.Process(pid).children(recursive=True))]
    except psutil.NoSuchProcess:
        return []


def memory_over(pids: list[int], limits: Limits, files: int = 0) -> str:
    """Why the processes ``pids`` hold too much memory together, with ``files`` bytes of memory
    files ("" while they do not). ``RLIMIT_DATA`` binds one process at a time, so a notebook that
    forks, or fills memory files it never maps, could otherwise take the machine's memory from
    the grader and the other submissions. A check each second, not the kernel's own accounting
    (the step's cgroup, where there is one): a memory file passed to another process and closed
    in flight, or a burst between two checks, escapes it."""
    if files + sum(process_memory(p, "status") for p in pids) <= limits.memory_bytes:
        return ""   # the quick upper bound is within the limit; otherwise count exactly
    if files + sum(process_memory(p) for p in pids) > limits.memory_bytes:
        return f"used more than {_size(limits.memory_bytes)} of memory in all its processes together"
    return ""


def kernel_memory(limits: Limits) -> int:
    """The memory the kernel lets a step hold (its cgroup's limit, swap included where the kernel
    counts swap): its share, plus its /tmp and its /dev/shm, which live in memory. The checks
    each second stop it at its share first, with a clearer line; this limit holds where they are
    too slow."""
    return limits.memory_bytes + 2 * limits.shm_bytes


def kernel_over(group: cgroup_limits.Group | None, limits: Limits) -> str:
    """Why the kernel stopped a process of the step for passing its group's limit, or "" (and ""
    without a cgroup, or for a kill by the machine's own shortage, not the step's doing)."""
    if group is None or not group.killed_at_its_limit():
        return ""
    return (f"used more than {_size(kernel_memory(limits))} of memory, its /tmp and /dev/shm "
            "included (the kernel stopped it)")


def kernel_limits(slot: int = 0) -> str:
    """What holds a step's memory, processes and cores here: "cgroup v1" or "cgroup v2" (", no
    cpuset" where the cores cannot be held) where the grader can make a group (tried once, then
    removed), else why not; and why not once a step had to start without its group."""
    return f"no cgroup ({_fell_back})" if _fell_back else _probe(slot)


@functools.lru_cache(maxsize=None)
def _probe(slot: int) -> str:
    group = cgroup_limits.create(slot, kernel_memory(Limits()), Limits.processes,
                                 tuple(host_cores()))
    if group is not None:
        group.remove()
    return cgroup_limits.describe(group)


def over_limits(pid: int, workdir: Path, limits: Limits) -> str:
    """One round of the checks ``run`` makes each second: why the step must stop, or ""."""
    pids = process_tree(pid)
    try:
        device = os.stat(workdir).st_dev
    except OSError:
        device = None
    memory, deleted = held_files(pids, device)
    return folder_over(workdir, limits, deleted) or memory_over(pids, limits, memory)


def _end(proc: subprocess.Popen, slot: int, trusted: bool) -> None:
    """Kill whatever is left: the process group, the PID namespace (via bwrap), the sandbox uid."""
    import psutil

    try:
        left = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        left = []
    for child in left:  # without the sandbox, kernels start sessions of their own
        try:
            child.kill()
        except psutil.NoSuchProcess:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass
    if not trusted and os.geteuid() == 0:
        kill_uid(sandbox_uid(slot))
