"""What the grading sandbox's protections cost: its start with and without the seccomp filter, one
round of the checks it makes each second while a step runs (folder and memory), and a training
step of a small convolutional network (bfloat16 autocast, 2 threads) outside the sandbox, inside
it, and inside it without the filter and the checks, in alternating rounds.

    sudo .venv/bin/python bench/sandbox_overhead.py      # needs bubblewrap and root, as grading does

Writes bench/sandbox_overhead.json and bench/sandbox_overhead.md (RESULTS section 20).
"""
from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from course_lib import sandbox  # noqa: E402
from report import write_report  # noqa: E402  (bench/report.py)

RUNS = 15
ROUNDS = 5
STEP = """import time, torch
torch.manual_seed(0)
net = torch.nn.Sequential(torch.nn.Conv2d(1, 64, 3, padding=1), torch.nn.GELU(),
                          torch.nn.Conv2d(64, 64, 3, padding=1), torch.nn.GELU(),
                          torch.nn.Conv2d(64, 1, 3, padding=1))
opt, x = torch.optim.Adam(net.parameters()), torch.randn(128, 1, 28, 28)
def step():
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = net(x).float().pow(2).mean()
    opt.zero_grad(); loss.backward(); opt.step()
for _ in range(3):
    step()
start, n = time.perf_counter(), 0
while time.perf_counter() - start < 6:
    step(); n += 1
print(1000 * (time.perf_counter() - start) / n, torch.get_num_threads())
"""


def _median_seconds(work: Path, filtered: bool) -> float:
    """Median wall time of a sandboxed ``python -c pass``, with or without the seccomp filter."""
    real = sandbox.filter_fd
    sandbox.filter_fd = real if filtered else (lambda: None)
    try:
        times = []
        for _ in range(RUNS):
            result = sandbox.run([sys.executable, "-c", "pass"], work, 60)
            assert result.returncode == 0, result.stderr
            times.append(result.seconds)
    finally:
        sandbox.filter_fd = real
    return statistics.median(times)


def _step_ms(work: Path) -> dict[str, float]:
    """Median ms per training step: on the host, sandboxed, sandboxed without filter and checks."""
    (work / "step.py").write_text(STEP)
    sandbox.prepare_workdir(work)
    real = sandbox.filter_fd, sandbox.folder_over, sandbox.memory_over
    bare = (lambda: None, lambda *a: "", lambda *a: "")
    times: dict[str, list[float]] = {"host": [], "sandbox": [], "sandbox_bare": []}
    env = dict(os.environ, OMP_NUM_THREADS="2", MKL_NUM_THREADS="2")
    try:
        for _ in range(ROUNDS):
            out = subprocess.run([sys.executable, str(work / "step.py")], capture_output=True,
                                 text=True, env=env, check=True).stdout.split()
            times["host"].append(float(out[0]))
            for name, parts in (("sandbox", real), ("sandbox_bare", bare)):
                sandbox.filter_fd, sandbox.folder_over, sandbox.memory_over = parts
                result = sandbox.run([sys.executable, "step.py"], work, 120,
                                     limits=sandbox.Limits(threads=2))
                ms, threads = result.stdout.split()
                assert threads == "2", result.stdout
                times[name].append(float(ms))
    finally:
        sandbox.filter_fd, sandbox.folder_over, sandbox.memory_over = real
    return {name: statistics.median(values) for name, values in times.items()}


def _median_ms(call, runs: int = 50) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def main() -> int:
    if sandbox.bwrap_path() is None or os.geteuid() != 0:
        print("needs bubblewrap and root, as grading does", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp) / "work"
        work.mkdir()
        sandbox.prepare_workdir(work)
        start_filtered = _median_seconds(work, True)
        start_plain = _median_seconds(work, False)
        step = _step_ms(work)
        # a work folder like a graded notebook's: 1,000 small files in 10 folders, 200 MiB of weights
        for folder in range(10):
            (work / f"f{folder}").mkdir()
            for i in range(100):
                (work / f"f{folder}" / f"{i}.txt").write_text("x" * 1000)
        (work / "weights.pt").write_bytes(bytes(200 * 2**20))
        limits = sandbox.Limits()
        folder_ms = _median_ms(lambda: sandbox.folder_over(work, limits))
        # memory: a process holding torch and 500 MiB, with two forked workers
        code = ("import multiprocessing as mp, time, torch\nx = torch.ones(500 * 2**18)\n"
                "ps = [mp.get_context('fork').Process(target=time.sleep, args=(60,)) for _ in range(2)]\n"
                "[p.start() for p in ps]\nprint('ready', flush=True)\ntime.sleep(60)")
        proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
        try:
            assert proc.stdout.readline().strip() == "ready"
            memory_ms = _median_ms(lambda: sandbox.over_limits(proc.pid, work, limits))
            pids = sandbox.process_tree(proc.pid)
            exact_ms = _median_ms(lambda: sum(sandbox.process_memory(p) for p in pids), runs=20)
            held = sum(sandbox.process_memory(p) for p in pids)
        finally:
            proc.kill()
            proc.wait()
    figures = {"start_with_filter_s": round(start_filtered, 3),
               "start_without_filter_s": round(start_plain, 3),
               "folder_check_ms": round(folder_ms, 2), "memory_check_ms": round(memory_ms, 2),
               "memory_exact_count_ms": round(exact_ms, 2),
               "memory_counted_mib": round(held / 2**20), "runs": RUNS,
               **{f"step_ms_{name}": round(ms, 1) for name, ms in step.items()}}
    write_report("sandbox_overhead", [
        f"The grading sandbox's costs on {os.cpu_count()} CPU cores (medians: {RUNS} starts, 50 checks,"
        f" {ROUNDS} alternating rounds of 6 s of training steps)",
        "", "| what | cost |", "|---|---|",
        f"| start and end of a sandboxed `python -c pass`, with the seccomp filter | {start_filtered:.3f} s |",
        f"| the same without the filter | {start_plain:.3f} s |",
        f"| one folder check (1,000 files in 10 folders, 200 MiB) | {folder_ms:.2f} ms |",
        f"| one round of the checks: the folder and 3 processes' memory (torch, {held / 2**20:.0f} MiB, far under the limit) | {memory_ms:.2f} ms |",
        f"| its exact count (smaps_rollup), made only near the limit | {exact_ms:.2f} ms |",
        f"| a training step, outside the sandbox | {step['host']:.1f} ms |",
        f"| the same step in the sandbox (filter, checks each second) | {step['sandbox']:.1f} ms |",
        f"| the same step in the sandbox without the filter and the checks | {step['sandbox_bare']:.1f} ms |"],
        figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
