"""How long each notebook's full profile takes on this machine, before you run it.

A measured run, scaled by this CPU's speed:

1. time one reference step here (:func:`reference_step_ms`: 03's fixed UNet, a batch of 64, one
   Adam step, in float32);
2. take the full-profile run of a CPU that trains the way this one does
   (``config.speed``: bfloat16 on AMX, bfloat16 on AVX512-BF16, or float32), as
   ``bench/run_notebooks.py`` measured it, notebook by notebook, with the same reference step
   timed around each notebook (``measured_runs.json``, written from ``bench/notebooks_full*.md``
   by ``python bench/run_notebooks.py --pace``);
3. scale each notebook's minutes by how much slower or faster the step is here:
   ``minutes_here ≈ minutes_there · ms_here / ms_there``.

An estimate: a CPU's speed at one network is not its speed at all of them, and a busy machine
drifts. On a GPU there is no measured run to scale, so no estimate.
"""
from __future__ import annotations

import itertools
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import config
from .unets import OptimizedUNet

MEASURED_RUNS = Path(__file__).resolve().parent / "measured_runs.json"
# each notebook's time target on 2 CPU cores, and the whole course's (06 is the student's own work)
TARGET_MINUTES = {"00": 1, "01": 3, "02": 6, "03": 12, "04": 12, "05": 12}
COURSE_TARGET_MINUTES = 50
KIND_OF_SPEED = {"fast": "bfloat16 on AMX", "bf16": "bfloat16 on AVX512-BF16",
                 "float32": "float32"}


def steps_per_second(make_model, batches, loss_fn, lr: float, steps: int = 12) -> float:
    """Training steps per second of a fresh ``make_model()`` on ``loss_fn(model, batch)``, with Adam,
    timed after 3 warm-up steps."""
    model = make_model()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    batches = iter(batches)
    for i in range(steps + 3):
        if i == 3:
            start = time.perf_counter()
        loss = loss_fn(model, next(batches))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return steps / (time.perf_counter() - start)


def reference_step_ms(steps: int = 40) -> float:
    """Milliseconds per training step of 03's fixed model (batch 64, Adam, float32) on the CPU.
    The caller's random numbers are left as they were."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(64, 1, 16, 16, generator=generator)
    t = torch.randint(0, 150, (64,), generator=generator)

    def loss_fn(model, batch):
        return (model(batch, t) - batch).pow(2).mean()

    def make_model():
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return OptimizedUNet(img_ch=1, size=16, channels=(16, 32, 64), T=150, bottleneck=128)

    return 1000 / steps_per_second(make_model, itertools.repeat(x), loss_fn, lr=1e-3, steps=steps)


def measured_runs(path: Path = MEASURED_RUNS) -> dict:
    """The measured runs, by ``config.speed``: ``{"run": table name, "machine": ...,
    "notebooks": {stem: {"minutes": m, "ms": reference step}}}``."""
    return json.loads(Path(path).read_text())


@dataclass
class Estimate:
    """Minutes per notebook here, from the run of a CPU like this one (``measured``)."""
    speed: str                          # config.speed of the device
    ms_here: float | None = None        # reference step here (None: not a CPU)
    run: str = ""                       # the bench table scaled
    machine: str = ""                   # the machine it ran on
    measured: dict = field(default_factory=dict)   # stem -> minutes there
    ms_there: dict = field(default_factory=dict)   # stem -> reference step there

    @property
    def minutes(self) -> dict:
        """stem -> minutes here: minutes there · ms here / ms there (none without a step here)."""
        if self.ms_here is None:
            return {}
        return {stem: m * self.ms_here / self.ms_there[stem] for stem, m in self.measured.items()}

    @property
    def total(self) -> float:
        return sum(self.minutes.values())

    def over_target(self) -> list[str]:
        """The notebooks estimated past their time target."""
        return [stem for stem, m in self.minutes.items() if m > TARGET_MINUTES.get(stem[:2], m)]

    def summary(self) -> str:
        if self.ms_here is None:
            return "No estimate on a GPU: the course's full runs were measured on 2-core CPUs."
        ratio = self.ms_here / (sum(self.ms_there.values()) / len(self.ms_there))
        lines = [f"this machine: {self.ms_here:.0f} ms per reference step, "
                 f"trains in {KIND_OF_SPEED[self.speed]}",
                 f"the measured run of such a CPU: {self.machine}, "
                 f"{min(self.ms_there.values()):.0f}-{max(self.ms_there.values()):.0f} ms per step "
                 f"(bench/{self.run}.md)",
                 f"a step takes {ratio:.2f} times as long here, so the full profile of 00-05 "
                 f"should take about {self.total:.0f} minutes here "
                 f"({sum(self.measured.values()):.0f} there)"]
        late = self.over_target()
        if late:
            lines.append("past the course's time target here: " + ", ".join(
                f"{stem} ({self.minutes[stem]:.0f} min, target {TARGET_MINUTES[stem[:2]]})"
                for stem in late) + ". They still run to the end, only slower. Close other "
                "programs while they train; COURSE_PROFILE=test runs a notebook on tiny data "
                "in a fraction of the time, to try it first.")
        return "\n".join(lines)


def estimate(device: torch.device | str = "cpu", ms_here: float | None = None,
             runs: dict | None = None) -> Estimate:
    """Minutes of each notebook's full profile on ``device`` (``ms_here``: a reference step already
    timed; by default it is timed now, a few seconds. ``runs``: default ``measured_runs.json``)."""
    speed = config.speed(device)
    if torch.device(device).type != "cpu":
        return Estimate(speed)
    runs = measured_runs() if runs is None else runs
    if speed not in runs:
        raise KeyError(f"no measured run for CPUs of speed {speed!r} in {MEASURED_RUNS.name}; "
                       f"write it with python bench/run_notebooks.py --pace")
    run = runs[speed]
    ms_here = reference_step_ms() if ms_here is None else float(ms_here)
    measured = {stem: row["minutes"] for stem, row in run["notebooks"].items()}
    ms_there = {stem: row["ms"] for stem, row in run["notebooks"].items()}
    return Estimate(speed, ms_here, run["run"], run["machine"], measured, ms_there)
