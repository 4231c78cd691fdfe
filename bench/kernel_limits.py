"""What a cgroup per sandboxed step (``course_lib/cgroup_limits.py``) stops that the checks each
second do not, and what it costs: three attacks run in the sandbox with the step's cgroup and
without it (the checks each second alone), then a sandboxed start and a training step with and
without it, in alternating rounds.

    sudo .venv/bin/python bench/kernel_limits.py      # needs bubblewrap, root and a cgroup tree

Writes bench/kernel_limits.json and bench/kernel_limits.md (RESULTS section 21).
"""
from __future__ import annotations

import contextlib
import os
import statistics
import sys
import tempfile
from pathlib import Path
from unittest import mock

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from course_lib import cgroup_limits, sandbox  # noqa: E402
from report import write_report  # noqa: E402  (bench/report.py)
from sandbox_overhead import STEP  # noqa: E402  (bench/: the same training step as section 20)

RUNS = 15
ROUNDS = 10
MIB = 2**20
SMALL = sandbox.Limits(memory_bytes=512 * MIB, shm_bytes=128 * MIB)   # the kernel's: 768 MiB
CORES = sorted(os.sched_getaffinity(0))

ATTACKS = {
    "burst": ("six processes fork, take 250 MiB each and end, all within a second",
              "import os, time\nkids = []\nfor _ in range(6):\n    pid = os.fork()\n    if pid == 0:\n"
              "        block = bytearray(250 * 2**20)\n        block[::4096] = bytes(len(block) // 4096)\n"
              "        time.sleep(0.2)\n        os._exit(0)\n    kids.append(pid)\n"
              "codes = [os.waitpid(k, 0)[1] for k in kids]\nprint('ended', codes.count(0), 'of 6')",
              "ended 6 of 6", SMALL),
    "in_flight": ("six 200 MiB memory files sent through a socket, then closed, held 4 s",
                  "import os, socket, time\nleft, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)\n"
                  "for n in range(6):\n    fd = os.memfd_create(str(n))\n"
                  "    os.ftruncate(fd, 200 * 2**20)\n    os.pwrite(fd, b'\\x01' * (200 * 2**20), 0)\n"
                  "    socket.send_fds(left, [b'.'], [fd])\n    os.close(fd)\n"
                  "time.sleep(4)\nprint('held 1200 MiB')", "held 1200 MiB", SMALL),
    "widen": ("a step given one core asks for all of them",
              f"import os\nos.sched_setaffinity(0, {set(CORES)})\n"
              f"print('runs on', len(os.sched_getaffinity(0)), 'of {len(CORES)} cores')",
              f"runs on {len(CORES)} of {len(CORES)} cores", sandbox.Limits(cpus=(CORES[-1],))),
}


def _cgroups(on: bool):
    """A context in which the sandbox makes its cgroups, or none (as where it cannot)."""
    return contextlib.nullcontext() if on else mock.patch.object(cgroup_limits, "create",
                                                                   return_value=None)


def _attack(work: Path, code: str, limits: sandbox.Limits) -> dict:
    result = sandbox.run([sys.executable, "-c", code], work, 60, limits=limits)
    return {"stdout": result.stdout.strip(), "over": result.over, "seconds": round(result.seconds, 2),
            "returncode": result.returncode, "peak_mib": round(result.peak_memory / MIB)}


def _outcome(run: dict, done: str) -> str:
    if run["over"]:
        peak = f", the kernel's peak count {run['peak_mib']} MiB" if run["peak_mib"] else ""
        return f"stopped after {run['seconds']:.1f} s: {run['over']}{peak}"
    if run["stdout"] == done:
        return f"ran to its end in {run['seconds']:.1f} s, unseen: \"{run['stdout']}\""
    return f"held to its share: \"{run['stdout'] or 'no output'}\" (exit {run['returncode']})"


def _costs(work: Path) -> dict:
    """Median sandboxed start, and median ms per training step, with and without cgroups."""
    (work / "step.py").write_text(STEP)
    sandbox.prepare_workdir(work)
    starts: dict[str, list[float]] = {"cgroup": [], "none": []}
    steps: dict[str, list[float]] = {"cgroup": [], "none": []}
    for run in range(RUNS):   # each goes first in half the runs
        for name in ("cgroup", "none") if run % 2 == 0 else ("none", "cgroup"):
            with _cgroups(name == "cgroup"):
                starts[name].append(sandbox.run([sys.executable, "-c", "pass"], work, 60).seconds)
    for round_ in range(ROUNDS):   # and in half the rounds
        for name in ("cgroup", "none") if round_ % 2 == 0 else ("none", "cgroup"):
            with _cgroups(name == "cgroup"):
                result = sandbox.run([sys.executable, "step.py"], work, 120,
                                     limits=sandbox.Limits(threads=2))
            ms, threads = result.stdout.split()
            assert threads == "2", result.stdout
            steps[name].append(float(ms))
    return {f"start_{k}_s": round(statistics.median(v), 3) for k, v in starts.items()} | {
        f"step_{k}_ms": round(statistics.median(v), 1) for k, v in steps.items()} | {
        f"step_{k}_rounds_ms": [round(ms, 1) for ms in v] for k, v in steps.items()}


def main() -> int:
    if sandbox.bwrap_path() is None or os.geteuid() != 0:
        print("needs bubblewrap and root, as grading does", file=sys.stderr)
        return 2
    kind = sandbox.kernel_limits()
    if not kind.startswith("cgroup"):
        print(f"no cgroup can be made here: {kind}", file=sys.stderr)
        return 2
    attacks = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp) / "work"
        work.mkdir()
        sandbox.prepare_workdir(work)
        for name, (what, code, done, limits) in ATTACKS.items():
            held = _attack(work, code, limits)
            with _cgroups(False):
                checked = _attack(work, code, limits)
            attacks[name] = {"what": what, "cgroup": held, "checks_only": checked,
                             "stopped_with_cgroup": held["stdout"] != done,
                             "stopped_by_checks": checked["stdout"] != done}
        costs = _costs(work)
    figures = {"kernel_limits": kind, "cores": len(CORES), "runs": RUNS, "rounds": ROUNDS,
               "attacks": attacks, **costs}
    share = f"memory share {SMALL.memory_bytes // MIB} MiB, /tmp and /dev/shm {SMALL.shm_bytes // MIB} MiB each"
    rows = [f"| {a['what']} | {_outcome(a['checks_only'], ATTACKS[n][2])} | "
            f"{_outcome(a['cgroup'], ATTACKS[n][2])} |" for n, a in attacks.items()]
    write_report("kernel_limits", [
        f"Three attacks in the grading sandbox on {len(CORES)} CPU cores ({kind}; the memory "
        f"attacks under a {share}), with the checks each second alone and with the step's "
        f"cgroup; then the cost of the cgroup (medians: {RUNS} starts, {ROUNDS} alternating "
        "rounds of 6 s of training steps)",
        "", "| attack | checks each second alone | with the step's cgroup |", "|---|---|---|",
        *rows,
        f"| cost: start and end of a sandboxed `python -c pass` | {costs['start_none_s']:.3f} s | "
        f"{costs['start_cgroup_s']:.3f} s |",
        f"| cost: a training step in the sandbox | {costs['step_none_ms']:.1f} ms | "
        f"{costs['step_cgroup_ms']:.1f} ms |"], figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
