"""The grading sandbox blocks what an untrusted notebook could do to the instructor's machine.

Each attack runs as Python code inside ``course_lib.sandbox.run``, exactly as a submission's kernel
would, and each has a control where the same code, run without the sandbox, succeeds, so the
test can fail. Needs bubblewrap (``apt-get install bubblewrap``) and root (the sandbox then drops
to an unprivileged uid); without them the tests skip, except under CI, where .ci/run installs
bubblewrap and they must run.
"""
import errno
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from course_lib import sandbox


def _required() -> bool:
    """CI (.ci/run) sets COURSE_REQUIRE_SANDBOX: there a missing sandbox or Slurm is a failure."""
    return bool(os.environ.get("COURSE_REQUIRE_SANDBOX") or os.environ.get("CI"))

ROOT = Path(__file__).resolve().parent.parent
WEIGHTS = ROOT / "course_lib" / "weights" / "mnist_classifier.pt"


def _need(condition: bool, why: str):
    if condition:
        return
    if _required():
        pytest.fail(f"CI must run the sandbox tests: {why}")
    pytest.skip(why)


@pytest.fixture
def sandboxed(tmp_path):
    _need(sandbox.bwrap_path() is not None,
          "bubblewrap is not installed (enable with: sudo apt-get install bubblewrap)")
    _need(os.geteuid() == 0, "the sandbox tests drop to an unprivileged uid: run them as root "
                             "(CI does)")
    work = tmp_path / "work"
    work.mkdir()
    hidden = tmp_path / "hidden"
    hidden.mkdir()
    (hidden / "other_student.ipynb").write_text("{}")
    sandbox.prepare_workdir(work)

    def run(code: str, timeout: float = 60, trusted: bool = False, **kw):
        return sandbox.run([sys.executable, "-c", code], work, timeout,
                           hide=[hidden, Path(os.path.expanduser("~"))],
                           trusted=trusted, **kw)
    run.work, run.hidden = work, hidden
    return run


def _attempts(code_lines: dict) -> str:
    """Python that tries each action and prints NAME:ok or NAME:blocked."""
    body = ["import os, sys"]
    for name, action in code_lines.items():
        body += ["try:", f"    {action}", f"    print('{name}:ok')",
                 "except Exception as e:", f"    print('{name}:blocked', type(e).__name__)"]
    return "\n".join(body)


def test_cannot_write_the_judge_the_repo_etc_or_home(sandboxed, tmp_path):
    import sysconfig
    home = Path(os.path.expanduser("~"))
    before = WEIGHTS.read_bytes()
    # control for the read-only binds: a folder anyone may write to on the host, inside data/
    # (which the sandbox binds back read-only, and git ignores), so that only the sandbox's
    # mounts, not the dropped uid's permissions, can refuse the write
    open_dir = ROOT / "data" / f"sandbox-probe-{os.getpid()}"
    open_dir.mkdir(parents=True, exist_ok=True)
    open_dir.chmod(0o777)
    site = Path(sysconfig.get_paths()["purelib"])   # a .pth here would run in every later step
    code = _attempts({
        "weights": f"open({str(WEIGHTS)!r}, 'ab').write(b'junk')",
        "repo": f"open({str(ROOT / 'course_lib' / 'evil.py')!r}, 'w').write('x')",
        "etc": "open('/etc/evil', 'w').write('x')",
        "bashrc": f"open({str(home / '.bashrc')!r}, 'a').write('echo pwned')",
        "stdlib": f"open({str(Path(os.__file__).parent / 'evil.py')!r}, 'w').write('x')",
        "sitepackages": f"open({str(site / 'evil.pth')!r}, 'w').write('import os')",
        "openrepo": f"open({str(open_dir / 'evil.txt')!r}, 'w').write('x')",
        "hidden": f"open({str(sandboxed.hidden / 'other_student.ipynb')!r}, 'w').write('x')",
        "workdir": "open('mine.txt', 'w').write('x')",
    })
    try:
        result = sandboxed(code)
        out = result.stdout
        for name in ("weights", "repo", "etc", "bashrc", "stdlib", "sitepackages", "openrepo",
                     "hidden"):
            assert f"{name}:blocked" in out, out + result.stderr
        assert "workdir:ok" in out and (sandboxed.work / "mine.txt").is_file(), out
        assert WEIGHTS.read_bytes() == before
        assert not (ROOT / "course_lib" / "evil.py").exists() and not (site / "evil.pth").exists()
        assert not (open_dir / "evil.txt").exists()
        assert (sandboxed.hidden / "other_student.ipynb").read_text() == "{}"
        # the control: outside the sandbox the same write to that folder succeeds
        (open_dir / "evil.txt").write_text("x")
    finally:
        for f in open_dir.glob("*"):
            f.unlink()
        open_dir.rmdir()


def test_hidden_folders_and_home_are_invisible(sandboxed):
    import ast
    home = Path(os.path.expanduser("~")).resolve()
    # what the sandbox binds back from the home: the folders on the way to the interpreter
    needed = {p.relative_to(home).parts[0] for p in sandbox.exposed() if p.is_relative_to(home)}
    private = set(os.listdir(home)) - needed
    assert os.listdir(sandboxed.hidden) and private   # the control: both hold files on the host
    code = (f"import os; print(sorted(os.listdir({str(sandboxed.hidden)!r})));"
            f"print(sorted(os.listdir({str(home)!r})))")
    out = sandboxed(code).stdout.splitlines()
    assert out[0] == "[]", out
    assert set(ast.literal_eval(out[1])) <= needed, (out, needed)


def test_no_network_not_even_the_hosts_localhost(sandboxed):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(5)
    port = server.getsockname()[1]
    threading.Thread(target=lambda: [server.accept() for _ in range(2)], daemon=True).start()
    code = _attempts({"connect": f"__import__('socket').create_connection(('127.0.0.1', {port}), 3)"})
    try:
        assert "connect:blocked" in sandboxed(code).stdout
        assert "connect:ok" in sandboxed(code, trusted=True).stdout  # the control
    finally:
        server.close()


def test_the_graders_python_runs_inside_even_under_a_hidden_home(sandboxed):
    code = "import sys, subprocess; print(sys.prefix); subprocess.run([sys.executable, '-c', 'print(42)'])"
    out = sandboxed(code).stdout.split()
    assert sorted(out) == sorted([sys.prefix, "42"]), out


def test_environment_is_cleared(sandboxed, monkeypatch):
    monkeypatch.setenv("COURSE_GRADER_SECRET", "s3cret-token")
    monkeypatch.setenv("COURSE_BF16", "0")      # the instructor's choice of arithmetic goes in
    out = sandboxed("import os; print(sorted(os.environ.items()))").stdout
    assert "s3cret-token" not in out and "COURSE_GRADER_SECRET" not in out
    assert "'COURSE_BF16', '0'" in out
    assert "'HOME', '/home/student'" in out and "'COURSE_NO_DOWNLOAD', '1'" in out


def test_data_folder_reached_through_a_link_under_tmp_is_readable_inside(sandboxed, monkeypatch,
                                                                         tmp_path_factory):
    """CI may clone the course under /tmp with ../shared a link: the kernel must still find the data."""
    data = tmp_path_factory.mktemp("datasets")
    (data / "MNIST").mkdir()
    (data / "MNIST" / "marker.txt").write_text("digits")
    for path in (data, data / "MNIST"):   # readable by the sandbox's unprivileged uid, as datasets are
        path.chmod(0o755)
    link = Path(sandboxed.work).parent / "shared_link"
    link.symlink_to(data)
    monkeypatch.setenv("COURSE_DATA_DIR", str(link))
    out = sandboxed("import os, pathlib; d = pathlib.Path(os.environ['COURSE_DATA_DIR']); "
                    "print(d, (d / 'MNIST' / 'marker.txt').read_text())")
    assert out.stdout.split() == [str(data.resolve()), "digits"], out.stdout + out.stderr


def test_the_rest_of_the_repository_and_of_the_host_is_not_there(sandboxed):
    """An allow-list, not a deny-list: notebooks kept in the course folder (a cohort's
    submissions/, say) or anywhere else on the host are absent inside, unless hidden by name;
    the course's package, its judges' weights and Python are there."""
    import shutil
    import tempfile
    peers = [Path(tempfile.mkdtemp(prefix=".sandbox-peer-", dir=ROOT)),
             Path(tempfile.mkdtemp(prefix="course-sandbox-peer-", dir="/var/tmp"))]
    try:
        for folder in peers:
            folder.chmod(0o755)
            (folder / "peer.ipynb").write_text("{}")
            (folder / "peer.ipynb").chmod(0o644)
        code = _attempts({f"peer{i}": f"open({str(f / 'peer.ipynb')!r}).read()"
                          for i, f in enumerate(peers)}
                         | {"weights": f"open({str(WEIGHTS)!r}, 'rb').read(8)",
                            "package": "import course_lib.sandbox"})
        result = sandboxed(code)
        out = result.stdout
        assert "peer0:blocked" in out and "peer1:blocked" in out, out + result.stderr
        assert "weights:ok" in out and "package:ok" in out, out + result.stderr
    finally:
        for folder in peers:
            shutil.rmtree(folder, ignore_errors=True)


ADD_KEY = {"x86_64": 248, "aarch64": 217}   # add_key(2)'s system call number per machine


def _keyring_calls():
    """add_key(2) through libc's syscall(), and keyctl's special ids; None where not known."""
    import ctypes
    import platform
    add_key = ADD_KEY.get(platform.machine())
    return (None if add_key is None else
            lambda desc, ring: ctypes.CDLL(None, use_errno=True).syscall(
                add_key, b"user", desc.encode(), b"secret", 6, ring))


REAL_FRESH_KEYRINGS = sandbox.fresh_keyrings


def _session_key_read(sandboxed) -> str:
    """Put a key in a fresh session keyring, then let sandboxed code search for it and read it:
    "hidden", "leaked" (it read the key) or "no keyrings" (this machine has none)."""
    add = _keyring_calls()
    _need(add is not None, "add_key's system call number is only known here for x86_64 and aarch64")
    pid = os.fork()
    if pid == 0:   # a child, so that the test's own session keyring is left alone
        status = 1
        try:
            REAL_FRESH_KEYRINGS()   # the real one, whatever a test patched for the sandbox
            if add("course-grader-session-secret", -3) < 0:   # -3: this session's keyring
                os._exit(2)
            # KEYCTL_SEARCH (10) of the session keyring (-3), then KEYCTL_READ (11) of what it found
            out = sandboxed("import ctypes, platform\nfrom course_lib.sandbox import KEYCTL\n"
                            "n, libc = KEYCTL[platform.machine()], ctypes.CDLL(None)\n"
                            "key = libc.syscall(n, 10, -3, b'user', b'course-grader-session-secret', 0)\n"
                            "buf = ctypes.create_string_buffer(64)\n"
                            "print('read', libc.syscall(n, 11, key, buf, 64) if key > 0 else -1, buf.value)").stdout
            status = 0 if out.startswith("read -1 ") else 3 if out.startswith("read 6 b'secret'") else 1
        finally:
            os._exit(status)
    _, status = os.waitpid(pid, 0)
    return {0: "hidden", 2: "no keyrings", 3: "leaked"}.get(os.WEXITSTATUS(status), "unexpected output")


def test_keys_of_the_graders_session_are_out_of_reach(sandboxed, monkeypatch):
    """Kernel keyrings ignore namespaces: without a fresh session keyring the sandbox possesses,
    finds and reads the keys of the grader's session (a Kerberos ticket, say). Tested without the
    seccomp filter (which refuses every keyring call anyway), so that the fresh keyring alone must
    hide the key; the control, without it too, reads the key."""
    with monkeypatch.context() as m:
        _unfiltered(m)
        seen = _session_key_read(sandboxed)
        assert seen != "no keyrings", "this machine has no keyrings to test"
        assert seen == "hidden", f"sandboxed code saw a key of the grader's session ({seen})"
        m.setattr(sandbox, "fresh_keyrings", lambda keyctl=None: True)
        assert _session_key_read(sandboxed) == "leaked", "the control could not read the key either"


def _unfiltered(monkeypatch):
    """The control: the same sandbox without its seccomp filter."""
    monkeypatch.setattr(sandbox, "filter_fd", lambda: None)


def test_no_note_can_be_left_in_the_kernel_keyrings_for_the_next_step(sandboxed, monkeypatch):
    """The sandbox uid's user keyring outlives its processes, whatever the namespaces: one draw
    (or one student) could leave a note there for the next. The seccomp filter refuses every
    keyring call; without it (the control) the note is left."""
    _need(_keyring_calls() is not None, "add_key's number is only known for x86_64 and aarch64")
    leave = (f"import ctypes, platform; n = {ADD_KEY!r}[platform.machine()];"
             "libc = ctypes.CDLL(None, use_errno=True);"
             "print(libc.syscall(n, b'user', b'course-note-for-the-next-draw', b'1', 1, -4),"
             " ctypes.get_errno())")
    refused = sandboxed(leave).stdout.split()
    assert refused == ["-1", str(errno.EPERM)], refused
    with monkeypatch.context() as m:
        _unfiltered(m)
        left = sandboxed(leave).stdout.split()
        # KEYCTL_CLEAR (7) of the user keyring (-4): leave nothing behind for other tests
        sandboxed("import ctypes, platform\nfrom course_lib.sandbox import KEYCTL\n"
                  "ctypes.CDLL(None).syscall(KEYCTL[platform.machine()], 7, -4)")
    assert int(left[0]) > 0, f"the control could not leave a note either: {left}"


def _errnos(calls: dict) -> str:
    """Python that makes each raw system call (by name, numbered by libseccomp) and prints
    NAME:errno (0 when it succeeded)."""
    return ("import ctypes\nfrom course_lib import syscall_filter\n"
            "lib, libc = syscall_filter._library(), ctypes.CDLL(None, use_errno=True)\n"
            f"for name, args in {calls!r}.items():\n"
            "    ctypes.set_errno(0)\n"
            "    number = lib.seccomp_syscall_resolve_name(name.encode())\n"
            "    code = libc.syscall(number, *args)\n"
            "    print(f'{name}:{ctypes.get_errno() if code < 0 else 0}')")


def test_system_calls_a_notebook_never_needs_are_refused(sandboxed, monkeypatch):
    """Without the filter a submission can make itself root of a user namespace of its own and
    mount file systems there, or trace its processes; with it each such call fails with EPERM
    (clone3 with ENOSYS, so that the C library falls back to clone, whose flags are checked)."""
    nested = ("import subprocess\nfor argv in (['unshare', '-U', '-r', 'id', '-u'],"
              " ['unshare', '-U', '-r', '-m', 'sh', '-c', 'mount -t tmpfs none /tmp && echo mounted']):\n"
              "    r = subprocess.run(argv, capture_output=True, text=True)\n"
              "    print(repr(r.stdout.strip() or r.stderr.strip()))")
    calls = {"ptrace": (0, 0, 0, 0), "unshare": (0x10000000,), "bpf": (0, 0, 0),
             "perf_event_open": (0, 0, -1, -1, 0), "io_uring_setup": (1, 0), "userfaultfd": (0,),
             "clone3": (0, 0)}
    filtered = dict(line.split(":") for line in sandboxed(_errnos(calls)).stdout.split())
    inside = sandboxed(nested).stdout
    with monkeypatch.context() as m:
        _unfiltered(m)
        control = dict(line.split(":") for line in sandboxed(_errnos(calls)).stdout.split())
        control_inside = sandboxed(nested).stdout
    assert control_inside.split() == ["'0'", "'mounted'"], control_inside   # root, then a mount
    assert "Operation not permitted" in inside and "mounted" not in inside, inside
    assert {k: v for k, v in filtered.items() if k != "clone3"} == \
        {k: str(errno.EPERM) for k in calls if k != "clone3"}, filtered
    assert filtered["clone3"] == str(errno.ENOSYS), filtered
    # the control's answers differ where no sysctl of the host's already refuses the call
    assert control["ptrace"] == "0" and control["unshare"] == "0", control
    assert control["clone3"] != str(errno.ENOSYS), control


def test_threads_processes_and_torch_still_work_under_the_filter(sandboxed):
    code = ("import multiprocessing, subprocess, threading, torch\n"
            "t = threading.Thread(target=print, args=('thread',)); t.start(); t.join()\n"
            "print('subprocess', subprocess.run(['true']).returncode)\n"
            "p = multiprocessing.get_context('fork').Process(target=print, args=('forked',))\n"
            "p.start(); p.join()\n"
            "torch.set_num_threads(2)\n"
            "print('torch', round(float(torch.ones(256, 256).mm(torch.ones(256, 256))[0, 0])))\n"
            "print(open('/proc/self/status').read().count('Seccomp:\\t2'))")
    result = sandboxed(code, limits=sandbox.Limits(threads=2))
    assert result.stdout.split() == ["thread", "subprocess", "0", "forked", "torch", "256", "1"], \
        result.stdout + result.stderr


def test_unprivileged_uid_and_own_pid_namespace(sandboxed):
    out = sandboxed(f"import os; print(os.getuid(), os.path.exists('/proc/{os.getpid()}'),"
                    f" len([p for p in os.listdir('/proc') if p.isdigit()]))").stdout.split()
    assert out[0] == str(sandbox.sandbox_uid(0)) and out[1] == "False", out
    assert int(out[2]) < 10, out  # only the sandbox's own few processes


def test_memory_limit_binds(sandboxed):
    """1 GiB fits any test machine's memory, so only the limit stops it (the control: 2 GiB)."""
    code = _attempts({"alloc1g": "x = bytearray(2**30); x[::4096] = b'\\x01' * (2**30 // 4096)"})
    result = sandboxed(code, limits=sandbox.Limits(memory_bytes=512 * 2**20))
    assert "alloc1g:blocked MemoryError" in result.stdout, result.stdout + result.stderr
    control = sandboxed(code, limits=sandbox.Limits(memory_bytes=2 * 2**30))
    assert "alloc1g:ok" in control.stdout and control.over == "", control


def test_memory_of_all_its_processes_together_is_limited(sandboxed):
    """RLIMIT_DATA binds each process alone: four processes of 300 MiB each pass a 512 MiB limit
    one by one, and are stopped together (the control: the same under 2 GiB runs to its end)."""
    code = ("import multiprocessing as mp, time\n"
            "def hold():\n    x = b'\\x01' * (300 * 2**20)\n    time.sleep(6)\n"
            "if __name__ == '__main__':\n"
            "    ps = [mp.get_context('fork').Process(target=hold) for _ in range(4)]\n"
            "    [p.start() for p in ps]; [p.join() for p in ps]\n    print('done')")
    stopped = sandboxed(code, limits=sandbox.Limits(memory_bytes=512 * 2**20))
    assert stopped.over == "used more than 512 MiB of memory in all its processes together", stopped
    assert "done" not in stopped.stdout and stopped.seconds < 6, stopped
    control = sandboxed(code, limits=sandbox.Limits(memory_bytes=2 * 2**30))
    assert control.returncode == 0 and "done" in control.stdout and control.over == "", control


def test_the_quick_memory_bound_holds_the_exact_count_and_forks_count_once(tmp_path):
    """No sandbox needed: after a fork the parent's 200 MiB are mapped by two processes; the
    exact count (smaps_rollup) splits them, the quick one (status) counts them twice, so it is
    an upper bound that needs the exact count only near the limit."""
    _need(Path("/proc/self/smaps_rollup").exists(), "counts memory through Linux's /proc (4.14+)")
    code = ("import os, time\nx = b'\\x01' * (200 * 2**20)\n"
            "if os.fork() == 0:\n    time.sleep(30)\n    os._exit(0)\n"
            "print('ready', flush=True)\ntime.sleep(30)")
    import psutil
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    pids = [proc.pid]
    try:
        assert proc.stdout.readline().strip() == "ready"
        pids += [c.pid for c in psutil.Process(proc.pid).children()]
        exact = sum(sandbox.process_memory(p) for p in pids) / 2**20
        quick = sum(sandbox.process_memory(p, "status") for p in pids) / 2**20
        assert len(pids) == 2 and 200 <= exact < 260 and quick >= 400, (exact, quick)
        mib = 2**20
        assert sandbox.process_tree(proc.pid) == pids
        assert sandbox.memory_over(pids, sandbox.Limits(memory_bytes=300 * mib)) == ""
        assert sandbox.memory_over(pids, sandbox.Limits(memory_bytes=150 * mib)) != ""
    finally:
        for pid in reversed(pids):
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
        proc.wait()
        proc.stdout.close()


def test_held_files_count_unmapped_memory_files_and_deleted_ones_once(tmp_path):
    """No sandbox needed: a memory file it maps is in its Pss_Shmem, so only the unmapped one
    counts here; a file deleted while open still holds the disk; a duplicated descriptor is one
    file."""
    _need(Path("/proc/self/smaps_rollup").exists(), "counts through Linux's /proc")
    code = ("import mmap, os, time\n"
            "a, b = os.memfd_create('unmapped'), os.memfd_create('mapped')\n"
            "os.write(a, bytes(40 * 2**20)); os.write(b, bytes(24 * 2**20)); os.dup(a)\n"
            "view = mmap.mmap(b, 24 * 2**20); view[:] = bytes(24 * 2**20)\n"
            "gone = open('gone.bin', 'wb'); gone.write(bytes(8 * 2**20)); gone.flush()\n"
            "os.unlink('gone.bin')\nprint('ready', flush=True)\ntime.sleep(30)")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                            cwd=tmp_path)
    try:
        assert proc.stdout.readline().strip() == "ready"
        memory, deleted = sandbox.held_files([proc.pid], os.stat(tmp_path).st_dev)
        assert (memory, deleted) == (40 * 2**20, 8 * 2**20)
        assert sandbox.process_memory(proc.pid) >= 24 * 2**20   # the mapped one, as Pss_Shmem
        assert sandbox.held_files([proc.pid], device=None)[1] == 0   # another device's: not ours
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()


def test_a_file_deleted_while_open_still_counts_as_its_folders(sandboxed):
    code = ("import os, time\nf = open('big.bin', 'wb')\nos.unlink('big.bin')\n"
            "f.write(bytes(96 * 2**20)); f.flush()\ntime.sleep(5)\nprint('done')")
    stopped = sandboxed(code, limits=sandbox.Limits(folder_bytes=64 * 2**20))
    assert stopped.over == "wrote more than 64 MiB to its work folder", stopped
    assert sandboxed(code).stdout.strip() == "done"


def test_folders_nested_too_deep_stop_the_step_even_made_between_two_checks(sandboxed, tmp_path):
    """1,500 nested folders: Python's tree walks (os.walk, shutil.rmtree) recurse past their
    limit there, so the grader could neither copy nor delete them. Made in a blink, they are
    found by the check after the step ends, and remove_tree deletes them."""
    code = "import os\nfor _ in range(1500):\n    os.mkdir('d'); os.chdir('d')\nprint('done')"
    stopped = sandboxed(code)
    assert stopped.over == "nested folders more than 64 deep in its work folder", stopped
    work = tmp_path / "work"
    if sys.version_info < (3, 12, 4):    # CPython's rmtree recursed until 3.12.4 (gh-89727)
        with pytest.raises(RecursionError):
            shutil.rmtree(work / "d", ignore_errors=True)
    sandbox.remove_tree(work / "d")
    assert not (work / "d").exists()
    assert sandboxed("import os\nos.makedirs('/'.join(['d'] * 60))\nprint('done')").over == ""


def test_remove_tree_deletes_locked_folders_and_never_follows_links(tmp_path):
    keep = tmp_path / "instructors"
    keep.mkdir()
    (keep / "grades.csv").write_text("keep")
    tree = tmp_path / "draw"
    (tree / "x" / "y").mkdir(parents=True)
    (tree / "x" / "y" / "f").write_text("1")
    (tree / "x" / "link").symlink_to(keep)
    os.chmod(tree / "x", 0)
    sandbox.remove_tree(tree)
    assert not tree.exists() and (keep / "grades.csv").read_text() == "keep"
    (tmp_path / "alias").symlink_to(keep)           # a link in the folder's place: only the link goes
    sandbox.remove_tree(tmp_path / "alias")
    assert not (tmp_path / "alias").is_symlink() and (keep / "grades.csv").exists()


def test_memory_files_it_never_maps_count_too(sandboxed):
    """memfd_create's files live in memory; written, not mapped, no rlimit sees them."""
    code = ("import os, time\nfds = [os.memfd_create(f'm{i}') for i in range(4)]\n"
            "for fd in fds: os.write(fd, bytes(200 * 2**20))\n"
            "dup = os.dup(fds[0])\ntime.sleep(6)\nprint('done')")
    stopped = sandboxed(code, limits=sandbox.Limits(memory_bytes=512 * 2**20))
    assert stopped.over.startswith("used more than 512 MiB") and "done" not in stopped.stdout, stopped
    # 800 MiB and Python's own few dozen: under 900 MiB only if the duplicated one counts once
    control = sandboxed(code, limits=sandbox.Limits(memory_bytes=900 * 2**20))
    assert control.returncode == 0 and "done" in control.stdout and control.over == "", control


def _cgroup_writable() -> bool:
    """The library's own finding checked without the library: a memory cgroup tree (v1's memory
    hierarchy, or v2's unified one) in which a group can be made here and removed."""
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        kind, options = fields[fields.index("-") + 1], fields[-1].split(",")
        controllers = Path(fields[4]) / "cgroup.controllers"   # v2: memory must be on offer
        if (kind == "cgroup2" and controllers.is_file() and "memory" in controllers.read_text().split()) \
                or (kind == "cgroup" and "memory" in options):
            probe = Path(fields[4]) / f"course-test-probe-{os.getpid()}"
            try:
                probe.mkdir()
                probe.rmdir()
                return True
            except OSError:
                continue
    return False


def _need_cgroups(cores: bool = False):
    """Kernel limits need a cgroup tree the grader may write (root, or a delegated one); without
    one the sandbox keeps to its checks each second, so these tests skip, even under CI, unless
    CI can make a group here after all (then the library's finding is wrong: a failure)."""
    found = sandbox.kernel_limits()
    if not found.startswith("cgroup"):
        if _required() and _cgroup_writable():
            pytest.fail(f"a memory cgroup can be made here, yet the sandbox finds: {found}")
        pytest.skip(f"no cgroup can be made here, so the kernel limits are not tested: {found}")
    if cores and "no cpuset" in found:
        pytest.skip(f"cgroups here hold no cores ({found})")


def _groups_left() -> list[Path]:
    mounts = {h.mount for h in sandbox.cgroup_limits.hierarchies(Path("/proc/self/mountinfo").read_text())}
    return [p for m in mounts for p in m.rglob(f"{sandbox.cgroup_limits.PREFIX}{os.getpid()}-*")]


BURST = ("import multiprocessing as mp\n"
         "def take():\n    x = bytearray(200 * 2**20); x[::4096] = b'\\x01' * len(x[::4096])\n"
         "if __name__ == '__main__':\n"
         "    ps = [mp.get_context('fork').Process(target=take) for _ in range(4)]\n"
         "    [p.start() for p in ps]; [p.join() for p in ps]\n    print('done', [p.exitcode for p in ps])")


def test_the_kernel_stops_a_burst_between_two_checks(sandboxed, monkeypatch):
    """Four processes take 200 MiB each and are gone between two checks (here 5 s apart, so that
    a slow start cannot bring a check into the burst): the checks never see them (the control,
    without a cgroup), the kernel's count does."""
    _need_cgroups()
    monkeypatch.setattr(sandbox, "POLL_SECONDS", 5.0)
    small = sandbox.Limits(memory_bytes=256 * 2**20, shm_bytes=64 * 2**20)   # kernel: 384 MiB
    stopped = sandboxed(BURST, limits=small)
    assert stopped.over == ("used more than 384 MiB of memory, its /tmp and /dev/shm included "
                            "(the kernel stopped it)"), stopped
    assert "done [0, 0, 0, 0]" not in stopped.stdout, stopped
    assert _groups_left() == [], "the step's cgroup was not removed"
    roomy = sandboxed(BURST, limits=sandbox.Limits(memory_bytes=2 * 2**30))
    assert "done [0, 0, 0, 0]" in roomy.stdout and roomy.over == "", roomy
    monkeypatch.setattr(sandbox.cgroup_limits, "create", lambda *a, **k: None)
    unseen = sandboxed(BURST, limits=small)
    assert "done [0, 0, 0, 0]" in unseen.stdout and unseen.over == "", unseen


IN_FLIGHT = ("import os, socket, time\n"
             "a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)\n"
             "for i in range(5):\n    fd = os.memfd_create(f'm{i}')\n"
             "    os.write(fd, bytes(200 * 2**20))\n"
             "    socket.send_fds(a, [b'x'], [fd]); os.close(fd)\n"
             "time.sleep(3)\nprint('held')")


def test_memory_files_held_in_flight_are_counted_by_the_kernel(sandboxed, monkeypatch):
    """Memory files sent through a socket and closed are open in no process and mapped by none:
    1000 MiB held where the checks each second cannot see (the control, without a cgroup), but
    charged to the step's group when written."""
    _need_cgroups()
    small = sandbox.Limits(memory_bytes=512 * 2**20, shm_bytes=64 * 2**20)   # kernel: 640 MiB
    stopped = sandboxed(IN_FLIGHT, limits=small)
    assert stopped.over.startswith("used more than 640 MiB") and "held" not in stopped.stdout, stopped
    monkeypatch.setattr(sandbox.cgroup_limits, "create", lambda *a, **k: None)
    unseen = sandboxed(IN_FLIGHT, limits=small)
    assert "held" in unseen.stdout and unseen.over == "", unseen


def test_a_step_cannot_widen_its_cores_past_its_slot(sandboxed, monkeypatch):
    """With --jobs N a slot's cores are a cpuset: sched_setaffinity (which PyTorch needs, so the
    filter allows it) cannot take the step onto another slot's cores. The control, without a
    cgroup: the same call widens them."""
    _need_cgroups(cores=True)
    cores = sorted(os.sched_getaffinity(0))
    _need(len(cores) >= 2, "needs two cores to keep the sandbox to one of them")
    code = (f"import os\nos.sched_setaffinity(0, {set(cores)})\n"
            "print(sorted(os.sched_getaffinity(0)))")
    one = sandbox.Limits(cpus=(cores[-1],))
    assert sandboxed(code, limits=one).stdout.strip() == f"{[cores[-1]]}"
    monkeypatch.setattr(sandbox.cgroup_limits, "create", lambda *a, **k: None)
    assert sandboxed(code, limits=one).stdout.strip() == f"{cores}"


def test_a_step_that_cannot_join_its_group_still_runs_and_the_report_says_why(sandboxed,
                                                                            monkeypatch):
    """Falling back to the checks each second beats failing every submission; a start that
    fails outright (no such program) leaves no group behind."""
    _need_cgroups()

    def refuse(self):
        raise PermissionError(13, "Permission denied")
    monkeypatch.setattr(sandbox.cgroup_limits.Group, "join", refuse)
    monkeypatch.setattr(sandbox, "_fell_back", "")
    result = sandboxed("print('ran')")
    assert result.returncode == 0 and result.stdout.strip() == "ran", result
    assert sandbox.kernel_limits().startswith("no cgroup (a step could not join its group"), \
        sandbox.kernel_limits()
    assert _groups_left() == []
    monkeypatch.undo()
    monkeypatch.setattr(sandbox, "bwrap_command", lambda *a, **k: ["/nonexistent/bwrap"])
    with pytest.raises(FileNotFoundError):
        sandboxed("print('never')")
    assert _groups_left() == []


def test_process_limit_binds(sandboxed):
    code = ("import os, time\nn = 0\ntry:\n    for _ in range(300):\n        if os.fork() == 0:\n"
            "            time.sleep(30); os._exit(0)\n        n += 1\nexcept OSError:\n    pass\n"
            "print('forked', n)")
    result = sandboxed(code, timeout=60, limits=sandbox.Limits(processes=40))
    forked = int(result.stdout.split()[-1])
    assert 20 <= forked < 40, result.stdout   # forking works, up to the limit


def test_output_is_capped_and_a_flood_ends(sandboxed):
    result = sandboxed("import sys\nfor _ in range(800): sys.stderr.write('x' * 65536)", timeout=60)
    assert result.returncode == 0
    assert len(result.stderr) < sandbox.OUTPUT_CAP + 100 and "bytes dropped" in result.stderr


def test_folder_over_counts_disk_use_and_entries_without_following_links(tmp_path):
    """No sandbox needed: the count behind the work folder's limits."""
    limits = sandbox.Limits(folder_bytes=3 * 2**20, folder_entries=10)
    outside = tmp_path / "outside.bin"
    outside.write_bytes(b"x" * 8 * 2**20)          # big, but not in the folder
    work = tmp_path / "work"
    (work / "sub").mkdir(parents=True)
    (work / "link").symlink_to(outside)             # not followed
    with open(work / "sparse.bin", "wb") as file:   # 1 GiB long, nothing written: no disk used
        file.truncate(2**30)
    (work / "sub" / "data.bin").write_bytes(b"y" * 2 * 2**20)
    assert sandbox.folder_over(work, limits) == ""
    (work / "sub" / "more.bin").write_bytes(b"z" * 2 * 2**20)   # 4 MiB in all, nested
    assert sandbox.folder_over(work, limits) == "wrote more than 3 MiB to its work folder"
    (work / "sub" / "more.bin").unlink()
    for i in range(10):
        (work / f"empty{i}").touch()
    assert sandbox.folder_over(work, limits) == "made more than 10 files and folders in its work folder"
    assert sandbox.folder_over(tmp_path / "empty", limits, deleted=4 * 2**20) == \
        "wrote more than 3 MiB to its work folder"   # files deleted while open, in an empty folder


def test_a_submission_filling_the_disk_is_stopped_within_a_second_or_two(sandboxed):
    """The work folder lies on the host's disk: a flood of data (or of tiny files) is stopped,
    where the same code within the limits runs to its end (the control)."""
    flood = ("import os, time\nfor i in range(12):\n"
             "    with open(f'big{i}.bin', 'wb') as f: f.write(bytes(32 * 2**20))\n"
             "print('wrote', flush=True)\ntime.sleep(4)\nprint('done')")
    start = time.perf_counter()
    stopped = sandboxed(flood, limits=sandbox.Limits(folder_bytes=64 * 2**20))
    assert stopped.over == "wrote more than 64 MiB to its work folder" and not stopped.timed_out, stopped
    assert "done" not in stopped.stdout and time.perf_counter() - start < 4 + 2
    control = sandboxed(flood)
    assert control.returncode == 0 and control.over == "" and "done" in control.stdout, control
    tiny = "import time\nfor i in range(3000): open(f'f{i}', 'w').close()\ntime.sleep(4)\nprint('done')"
    many = sandboxed(tiny, limits=sandbox.Limits(folder_entries=1000))
    assert many.over == "made more than 1,000 files and folders in its work folder" and "done" not in many.stdout


def test_detached_process_is_killed_and_cannot_stall_the_grader(sandboxed):
    code = ("import subprocess, sys\n"
            "subprocess.Popen(['sleep', 'infinity'], start_new_session=True, stderr=sys.stderr)\n"
            "print('parent done')")
    start = time.perf_counter()
    result = sandboxed(code, timeout=60)
    assert result.returncode == 0 and time.perf_counter() - start < 20
    uid = sandbox.sandbox_uid(0)
    left = subprocess.run(["pgrep", "-u", str(uid)], capture_output=True, text=True).stdout
    assert left.strip() == "", f"processes of the sandbox uid survived: {left}"


def test_a_grader_stopped_mid_step_leaves_nothing_of_it_running(sandboxed):
    """SIGTERM (``kill``, ``timeout``, ``scancel``) ends the grader's wait as SystemExit, on the way
    out of which the step is killed (the grader itself goes on living here: bwrap's
    --die-with-parent alone would not end it) and the earlier SIGTERM handler is put back."""
    uid, done = str(sandbox.sandbox_uid(0)), threading.Event()

    def stop_once_it_runs():   # as `kill` would, once the step's sleep has started
        while not done.wait(0.1):
            if subprocess.run(["pgrep", "-u", uid, "sleep"], capture_output=True).returncode == 0:
                os.kill(os.getpid(), signal.SIGTERM)
                return
    earlier = signal.getsignal(signal.SIGTERM)
    threading.Thread(target=stop_once_it_runs, daemon=True).start()
    try:
        with sandbox.exit_on_sigterm(), pytest.raises(SystemExit) as stopped:
            sandboxed("import subprocess; subprocess.run(['sleep', '300'])", timeout=60)
    finally:
        done.set()
    assert stopped.value.code == 128 + signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is earlier
    time.sleep(0.5)
    left = subprocess.run(["pgrep", "-u", str(sandbox.sandbox_uid(0))], capture_output=True,
                          text=True).stdout
    assert left.strip() == "", f"the step outlived the grader's stop: {left}"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl is Linux's")
def test_a_worker_ends_with_the_grading_that_started_it_even_killed(tmp_path):
    """A grading killed outright (SIGKILL, out of memory) runs no clean-up: its workers must end
    anyway, by the kernel's word (PR_SET_PDEATHSIG), not go on grading for hours."""
    import psutil

    said = tmp_path / "worker.txt"
    worker = ("import os, sys, time\nfrom course_lib import sandbox\n"
              "ok = sandbox.end_with_parent(int(sys.argv[1]))\n"
              "open(sys.argv[2], 'w').write(f'{os.getpid()} {ok}')\ntime.sleep(300)")
    grading = ("import os, subprocess, sys, time\nsubprocess.Popen([sys.executable, '-c', "
               f"{worker!r}, str(os.getpid()), {str(said)!r}])\ntime.sleep(300)")
    parent = subprocess.Popen([sys.executable, "-c", grading], cwd=ROOT)
    try:
        deadline = time.monotonic() + 60
        while not (said.exists() and said.read_text()) and time.monotonic() < deadline:
            time.sleep(0.2)
        pid, ok = said.read_text().split()
        assert ok == "True"
        parent.kill()
        parent.wait()
        _, alive = psutil.wait_procs([psutil.Process(int(pid))], timeout=10)
        assert not alive, "the worker outlived the grading that started it"
    finally:
        parent.kill()
    said.unlink()   # a worker whose grading ended before it could ask: it is told so
    late = ("import os, sys, time\nfrom course_lib import sandbox\ntime.sleep(1)\n"
            "open(sys.argv[2], 'w').write(f'0 {sandbox.end_with_parent(int(sys.argv[1]))}')")
    grading = ("import os, subprocess, sys\nsubprocess.Popen([sys.executable, '-c', "
               f"{late!r}, str(os.getpid()), {str(said)!r}])")
    subprocess.run([sys.executable, "-c", grading], cwd=ROOT, check=True)   # ends at once
    deadline = time.monotonic() + 60
    while not (said.exists() and said.read_text()) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert said.read_text() == "0 False"


def test_the_process_limit_of_a_step_as_our_own_uid_comes_on_top_of_our_processes(monkeypatch):
    """Not root, a step runs as the grader's uid, whose desktop may already run hundreds of
    threads: RLIMIT_NPROC counts them all, so the step gets its 256 on top of them."""
    import resource
    set_to, hard = {}, [resource.RLIM_INFINITY]
    monkeypatch.setattr(sandbox, "_keyctl", lambda: None)
    monkeypatch.setattr(sandbox, "own_tasks", lambda: 900)
    monkeypatch.setattr(resource, "setrlimit", lambda what, values: set_to.update({what: values}))
    monkeypatch.setattr(resource, "getrlimit", lambda what: (hard[0], hard[0]))
    for euid, limit, expected in ((1000, resource.RLIM_INFINITY, 900 + 256), (0, resource.RLIM_INFINITY, 256),
                                  (1000, 1024, 1024)):   # never past a hard limit it cannot raise
        monkeypatch.setattr(sandbox.os, "geteuid", lambda: euid)
        hard[0] = limit
        sandbox._limit(sandbox.Limits(processes=256))()
        assert set_to[resource.RLIMIT_NPROC] == (expected, expected)


def test_own_tasks_counts_threads_not_only_processes(monkeypatch):
    import threading

    import psutil
    me = psutil.Process()     # this process alone: the machine's others come and go
    monkeypatch.setattr(psutil, "process_iter", lambda attrs: [
        type("P", (), {"info": {"uids": me.uids(), "num_threads": me.num_threads()}})()])
    before = sandbox.own_tasks()
    stop = threading.Event()
    extra = [threading.Thread(target=stop.wait) for _ in range(5)]
    for t in extra:
        t.start()
    try:
        assert sandbox.own_tasks() == before + 5
    finally:
        stop.set()
        for t in extra:
            t.join()


def test_time_limit_kills_the_whole_tree(sandboxed):
    start = time.perf_counter()
    result = sandboxed("import subprocess; subprocess.run(['sleep', '300'])", timeout=3)
    assert result.timed_out and time.perf_counter() - start < 20
    left = subprocess.run(["pgrep", "-u", str(sandbox.sandbox_uid(0))], capture_output=True,
                          text=True).stdout
    assert left.strip() == "", f"the child outlived the time-out: {left}"


def test_dataloader_workers_multiprocessing_and_tmp_work_bounded(sandboxed):
    """A student's DataLoader(num_workers=2) needs a writable /dev/shm (its queue's lock), and
    code that saves to /tmp a writable /tmp: the sandbox gives each step its own, in memory and
    capped, so filling them fails inside and nowhere else."""
    code = ("import multiprocessing, torch\nfrom torch.utils.data import DataLoader, TensorDataset\n"
            "data = TensorDataset(torch.randn(64, 1, 28, 28), torch.arange(64))\n"
            "print('loaded', sum(len(x) for x, _ in DataLoader(data, batch_size=16, num_workers=2)))\n"
            "with multiprocessing.Pool(2) as pool:\n    print('pool', sum(pool.map(abs, [-1, -2])))\n"
            "import tempfile\nprint('tempdir', tempfile.mkdtemp().startswith('/tmp/'))\n"
            "for where in ('/dev/shm', '/tmp'):\n"
            "    try:\n        open(f'{where}/fill', 'wb').write(bytes(32 * 2**20))\n"
            "        print(where, 'ok')\n"
            "    except OSError as err:\n        print(where, 'errno', err.errno)")
    small = sandboxed(code, limits=sandbox.Limits(shm_bytes=16 * 2**20))
    full = str(errno.ENOSPC)
    assert small.stdout.split() == ["loaded", "64", "pool", "3", "tempdir", "True",
                                    "/dev/shm", "errno", full, "/tmp", "errno", full], \
        small.stdout + small.stderr
    assert sandboxed(code).stdout.split()[-4:] == ["/dev/shm", "ok", "/tmp", "ok"]


def test_it_runs_on_the_cores_it_was_given_with_its_threads(sandboxed):
    """With --jobs N each slot runs on its own cores, and PyTorch still starts its share of
    threads there (a filter refusing sched_setaffinity left it one thread: RESULTS section 20)."""
    cores = sorted(os.sched_getaffinity(0))
    _need(len(cores) >= 2, "needs two cores to give the sandbox two of them")
    code = "import os, torch\nprint(sorted(os.sched_getaffinity(0)), torch.get_num_threads())"
    given = sandbox.Limits(cpus=tuple(cores[-2:]), threads=2)
    assert sandboxed(code, limits=given).stdout.strip() == f"{cores[-2:]} 2"
    assert sandboxed(code, limits=sandbox.Limits(threads=2)).stdout.strip() == f"{cores} 2"


def test_parallel_slots_get_disjoint_runs_of_cores(monkeypatch):
    from course_lib import grade
    monkeypatch.setattr(sandbox, "host_cores", lambda: list(range(8)))
    assert [sandbox.slot_cpus(s, 2) for s in range(2)] == [(0, 1, 2, 3), (4, 5, 6, 7)]
    assert [sandbox.slot_cpus(s, 3) for s in range(3)] == [(0, 1), (2, 3, 4), (5, 6, 7)]
    assert sandbox.slot_cpus(0, 1) == () and sandbox.slot_cpus(0, 9) == ()   # all, or shared
    limits = grade._limits(3, 2.0, slot=1)
    assert limits.cpus == (2, 3, 4) and limits.threads == 3 and limits.memory_bytes == 2 * 2**30
    assert grade._limits(1, 2.0).cpus == () and grade._limits(1, 2.0).threads == 8


def test_the_preflight_leaves_other_slots_running(sandboxed):
    """The grader's preflight (sandbox.require) starts one sandbox in its own slot: ending it
    kills its uid's processes, so with slot 0 it killed the step of another Slurm task or
    --jobs worker running in slot 0 (tests/test_slurm.py caught it)."""
    results = {}
    started = sandboxed.work / "started"
    step = threading.Thread(target=lambda: results.update(step=sandboxed(
        "import time; open('started', 'w').close(); time.sleep(4); print('survived')")))
    step.start()
    deadline = time.monotonic() + 30
    while not started.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert started.exists(), "the step in slot 0 never started"
    sandbox.require(slot=1)      # while slot 0's step runs
    step.join()
    assert results["step"].stdout.strip() == "survived", results["step"]


def test_two_graders_never_share_a_slot(tmp_path, monkeypatch):
    """A slot names the uid whose processes every step's end kills: a second grader on the same
    machine (or a second Slurm array on one node) that asks for a held slot gets another one,
    and a slot given back can be claimed again. Another process sees the same locks."""
    monkeypatch.setattr(sandbox, "slot_lock_dir", lambda: tmp_path / "locks")
    monkeypatch.setattr(sandbox.os, "geteuid", lambda: 0)    # root's graders claim slots
    first = sandbox.claim_slot(3)
    second = sandbox.claim_slot(3)
    assert first == 3 and second not in (3, first)
    other = subprocess.run([sys.executable, "-c", (
        "import os; from pathlib import Path; from course_lib import sandbox; "
        "os.geteuid = lambda: 0; "
        f"sandbox.slot_lock_dir = lambda: Path({str(tmp_path / 'locks')!r}); "
        "print(sandbox.claim_slot(3))")], capture_output=True, text=True, check=True)
    assert int(other.stdout) not in (3, second)
    sandbox.release_slot(first)
    assert sandbox.claim_slot(3) == 3
    sandbox.release_slot(3)
    sandbox.release_slot(second)
    sandbox.release_slot(99)            # one never claimed: nothing to give back
    monkeypatch.setattr(sandbox.os, "geteuid", lambda: 1000)  # without root: no uid is killed,
    assert sandbox.claim_slot(3) == sandbox.claim_slot(3) == 3  # so no slot needs claiming


def test_no_slot_runs_as_an_account_of_the_machine(tmp_path, monkeypatch):
    """Debian's slurm is uid 64030: slot 30 would run a notebook as slurm, and end slurm's
    daemons with its step. A slot whose uid or gid belongs to an account is never given."""
    import grp
    import pwd
    assert sandbox.uid_taken(0)   # root
    monkeypatch.setattr(sandbox, "slot_lock_dir", lambda: tmp_path / "locks")
    monkeypatch.setattr(sandbox.os, "geteuid", lambda: 0)

    def account(taken):
        def lookup(number):
            if number in taken:
                return "an account"
            raise KeyError(number)
        return lookup
    monkeypatch.setattr(pwd, "getpwuid", account({sandbox.sandbox_uid(30), sandbox.sandbox_uid(31)}))
    monkeypatch.setattr(grp, "getgrgid", account({sandbox.sandbox_uid(32)}))   # a group alone
    got = [sandbox.claim_slot(s) for s in (30, 32, 5)]
    try:
        assert got[0] not in (30, 31, 32) and got[1] not in (30, 31, 32) and got[2] == 5, got
    finally:
        for slot in got:
            sandbox.release_slot(slot)


def test_missing_bubblewrap_refuses_with_the_install_command(monkeypatch):
    monkeypatch.setattr(sandbox.shutil, "which", lambda name: None)
    with pytest.raises(sandbox.SandboxUnavailable, match="apt-get install bubblewrap"):
        sandbox.require_bwrap()


def test_missing_libseccomp_refuses_with_the_install_command(monkeypatch):
    def no_library(name, **kw):
        raise OSError(f"{name}: cannot open shared object file")
    monkeypatch.setattr(sandbox.syscall_filter.ctypes.util, "find_library", lambda name: None)
    monkeypatch.setattr(sandbox.syscall_filter.ctypes, "CDLL", no_library)
    sandbox.syscall_filter.program.cache_clear()
    try:
        with pytest.raises(sandbox.SandboxUnavailable, match="apt-get install libseccomp2"):
            sandbox.filter_fd()
    finally:
        sandbox.syscall_filter.program.cache_clear()


SIGNATURE = errno.EL2HLT   # an errno no kernel setting answers these calls with


def test_the_filter_itself_refuses_each_call_on_any_linux():
    """No root or bubblewrap needed: a forked child loads the program itself (as bubblewrap does),
    built to answer with an errno of its own, so that a refusal by the filter cannot be mistaken
    for one by a host setting (unprivileged BPF or userfaultfd are often off anyway). It still
    runs: getpid and a plain fork (clone without namespace flags) work."""
    import ctypes
    from course_lib import syscall_filter
    try:
        program, lib = syscall_filter.program(SIGNATURE), syscall_filter._library()
    except syscall_filter.Unavailable as err:
        _need(False, str(err))
    calls = {"unshare": (0x10000000,), "setns": (-1, 0), "ptrace": (0, 0, 0, 0), "bpf": (0, 0, 0),
             "perf_event_open": (0, 0, -1, -1, 0), "userfaultfd": (0,), "io_uring_setup": (1, 0),
             "keyctl": (0, -3, 0, 0, 0), "shmget": (0, 4096, 0o1600), "mount": (0, 0, 0, 0, 0),
             "clone": (0x10000000 | 17, 0, 0, 0, 0),   # CLONE_NEWUSER | SIGCHLD
             "socket": (40, 1, 0)}                     # AF_VSOCK, SOCK_STREAM
    numbers = {name: lib.seccomp_syscall_resolve_name(name.encode()) for name in calls}

    class Fprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_char_p)]

    libc = ctypes.CDLL(None, use_errno=True)
    assert len(program) % 8 == 0 and len(program) // 8 > len(syscall_filter.DENIED)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        answers = {}
        try:
            os.close(read)
            fprog = Fprog(len(program) // 8, program)
            if libc.prctl(38, 1, 0, 0, 0) != 0 or libc.prctl(22, 2, ctypes.byref(fprog), 0, 0) != 0:
                answers["load"] = ctypes.get_errno()   # PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP
            else:
                for name, args in calls.items():
                    ctypes.set_errno(0)
                    code = libc.syscall(numbers[name], *args)
                    answers[name] = ctypes.get_errno() if code < 0 else 0
                child = os.fork()   # a plain fork still works
                if child == 0:
                    os._exit(7)
                answers["fork"] = os.WEXITSTATUS(os.waitpid(child, 0)[1])
                import socket
                socket.socket(socket.AF_UNIX).close()   # other families still work
                socket.socket(socket.AF_INET).close()
                answers["unix and inet"] = 0
            os.write(write, json.dumps(answers).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        answers = json.loads(pipe.read())
    os.waitpid(pid, 0)
    assert "load" not in answers, f"this kernel would not load the filter: errno {answers}"
    assert answers == {**{name: SIGNATURE for name in calls}, "fork": 7, "unix and inet": 0}, answers


def test_the_documents_quote_the_folder_limits():
    limits = sandbox.Limits()
    quoted = f"{limits.folder_bytes / 2**30:g} GiB or {limits.folder_entries:,} files"
    assert limits.shm_bytes == 2**30, "the documents below say /dev/shm holds at most 1 GiB"
    for doc in ("README.md", "walkthroughs/06_Assessment_Walkthrough.md"):
        text = (ROOT / doc).read_text()
        assert quoted in text, f"{doc} does not say {quoted!r}"
        assert re.search(r"`/dev/shm`[^|]*at most 1 GiB", text), f"{doc}: /dev/shm's cap"


def test_the_root_folder_is_read_only(sandboxed):
    """bwrap's own root tmpfs has no size cap and, without root, is the grader's: a notebook could
    fill it with files that no check each second counts. It is remounted read-only; /tmp, /dev/shm
    and the work folder, mounted on it, stay writable."""
    code = ("import errno, os\nprint(bool(os.statvfs('/').f_flag & os.ST_RDONLY))\n"
            "try:\n    open('/junk', 'w')\nexcept OSError as err:\n    print(errno.errorcode[err.errno])\n"
            "for p in ('/tmp/x', '/dev/shm/x', 'x'):\n    open(p, 'w').write('ok')\nprint('written')")
    assert sandboxed(code).stdout.split() == ["True", "EROFS", "written"]


def test_without_root_the_root_folder_is_read_only_too():
    """Without root (most cluster accounts) the sandbox runs as the grader's own uid, which owns
    bwrap's root tmpfs and the folders made on it: there, above all, it must stay read-only. The
    grader is run as the nobody user, as such an account would."""
    import tempfile
    import textwrap
    _need(sandbox.bwrap_path() is not None,
          "bubblewrap is not installed (enable with: sudo apt-get install bubblewrap)")
    _need(os.geteuid() == 0 and shutil.which("setpriv") is not None,
          "this test grades as the nobody user: run it as root, with setpriv (util-linux)")
    as_nobody = [shutil.which("setpriv"), "--reuid", "65534", "--regid", "65534", "--clear-groups",
                 sys.executable]
    sees = subprocess.run([*as_nobody, "-c", "import os, sys; print(os.path.isdir(sys.base_prefix) "
                           "and os.path.isdir(sys.prefix))"], capture_output=True, text=True,
                          cwd=ROOT, timeout=60).stdout.strip()
    if sees != "True":   # e.g. a pyenv Python in root's own 0700 home: no other user can run it
        pytest.skip(f"the nobody user cannot read this Python ({sys.base_prefix}); a Python "
                    "installed where every user can read it runs this test")
    inside = shutil.which("python3", path="/usr/bin:/bin")   # the system's: plain to every user
    _need(inside is not None, "the system has no python3 in /usr/bin (Debian: apt-get install python3)")
    base = Path(tempfile.mkdtemp(prefix="course-nonroot-"))   # pytest's tmp_path is root's alone
    try:
        os.chmod(base, 0o755)
        os.chown(base, 65534, 65534)
        code = ("import errno, os\nprint(bool(os.statvfs('/').f_flag & os.ST_RDONLY))\n"
                "try:\n    open('/junk', 'w')\nexcept OSError as err:\n"
                "    print(errno.errorcode[err.errno])\n"
                "for p in ('/tmp/x', 'x'):\n    open(p, 'w').write('ok')\nprint('written', os.getuid())")
        grader = textwrap.dedent(f"""
            import sys
            from pathlib import Path
            from course_lib import sandbox
            work = Path({str(base)!r}) / "work"
            work.mkdir()
            result = sandbox.run([{inside!r}, "-c", {code!r}], work, 60)
            print(result.stdout, end="")
            print(result.stderr, file=sys.stderr)
        """)
        proc = subprocess.run([*as_nobody, "-c", grader], cwd=ROOT, capture_output=True, text=True,
                              timeout=120, env=dict(os.environ, HOME=str(base)))
        _need("namespace" not in proc.stderr or proc.stdout,
              f"bubblewrap cannot run without root here (user namespaces off?): {proc.stderr[-300:]}")
        assert proc.stdout.split() == ["True", "EROFS", "written", "65534"], proc.stderr[-2000:]
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_every_empty_folder_is_a_small_tmpfs(sandboxed):
    """Without root these tmpfs are the grader's own and writable: uncapped, each could fill half
    the machine's memory, which the checks each second do not count. /tmp and /dev/shm keep
    their own cap (Limits.shm_bytes)."""
    code = ("import os\nfor p in ('/run', '/root', '/home', " + repr(str(sandboxed.hidden)) + ", '/tmp'):\n"
            "    v = os.statvfs(p)\n    print(p, v.f_blocks * v.f_frsize)")
    sizes = dict(line.split() for line in sandboxed(code).stdout.splitlines())
    for path in ("/run", "/root", "/home", str(sandboxed.hidden)):
        assert int(sizes[path]) <= sandbox.EMPTY_TMPFS_BYTES, sizes
    assert int(sizes["/tmp"]) == sandbox.Limits.shm_bytes, sizes
