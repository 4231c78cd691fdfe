"""Training throughput (images/s) of every notebook's model against the options that might help a CPU.

    python bench/throughput.py                  # all models, all options (about 20 min on 2 cores)
    python bench/throughput.py --models 03 --seconds 5

For each model one training step is the notebooks' own: the loss, backward, Adam. Each option
is measured in the same process, one after the other, after warm-up steps, best of two runs:

- ``default``: what the notebooks do (eager, contiguous tensors, torch's default threads);
- ``channels_last``: model and batch in NHWC memory format;
- ``compile``: ``torch.compile(model)`` (inductor; its compile time is reported separately);
- ``threads=1``: ``torch.set_num_threads(1)``;
- ``batch ×2`` and ``batch ×½``: images/s at other batch sizes (these also change the
  optimisation: fewer or more steps per epoch, so only throughput is compared here).

Writes ``bench/throughput.md`` (the table that RESULTS.md quotes).
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from course_lib.conditioning import keep_mask, one_hot  # noqa: E402
from course_lib.ddpm import add_noise, diffusion_loss, linear_schedule  # noqa: E402
from course_lib.unets import OptimizedUNet, TimeUNet, UNet  # noqa: E402

T = 150


@dataclass
class Case:
    """One notebook's model: how to build it, a batch of its inputs, and its loss."""

    name: str
    build: Callable[[], nn.Module]
    batch: Callable[[int], tuple]
    loss: Callable[[nn.Module, tuple], torch.Tensor]
    batch_size: int


def _images(ch, size, n_classes=10):
    return lambda n: (torch.rand(n, ch, size, size) * 2 - 1, torch.randint(0, n_classes, (n,)))


def _eps_loss(schedule, c_dim=None, embed=False):
    def loss(model, batch):
        x, y = batch
        if c_dim is None:
            return diffusion_loss(model, x, schedule)
        c = F.normalize(torch.randn(len(x), c_dim), dim=1) if embed else one_hot(y, c_dim)
        return diffusion_loss(model, x, schedule, c=c, c_mask=keep_mask(len(x), 0.9))
    return loss


def _digit_unet() -> nn.Module:
    """06's DigitUNet at 28×28: the answer key builds 03's OptimizedUNet layout for MNIST (the same
    layers, 562,241 parameters), so the library's model stands in for it and no key text runs."""
    return OptimizedUNet(1, 28, (16, 32, 64), T=T, c_dim=10)


def cases() -> list[Case]:
    lin = linear_schedule(T)
    return [
        Case("01 UNet", lambda: UNet(1, 16, (16, 32, 64)), _images(1, 16),
             lambda m, b: F.mse_loss(m(add_noise(b[0], 0.5)), b[0]), 128),
        Case("02 TimeUNet", lambda: TimeUNet(1, 16, (16, 32, 64), T=T), _images(1, 16),
             _eps_loss(lin), 128),
        Case("03 OptimizedUNet", lambda: OptimizedUNet(1, 16, (32, 64, 128), T=T),
             _images(1, 16), _eps_loss(lin), 128),
        Case("04 FashionMNIST (c=class)", lambda: OptimizedUNet(1, 16, (32, 64, 128), T=T, c_dim=10),
             _images(1, 16), _eps_loss(lin, 10), 128),
        Case("04 flowers 32×32", lambda: OptimizedUNet(3, 32, (16, 32, 64), T=T, c_dim=3),
             _images(3, 32, 3), _eps_loss(lin, 3), 32),
        Case("05 UNet (c=CLIP emb.)", lambda: OptimizedUNet(3, 32, (16, 32, 64), T=T, c_dim=128),
             _images(3, 32), _eps_loss(lin, 128, embed=True), 32),
        Case("06 DigitUNet 28×28", _digit_unet, _images(1, 28),
             _eps_loss(linear_schedule(T, 1e-4 * 1000 / T, 0.02 * 1000 / T), 10), 128),
    ]


def measure(case: Case, option: str, seconds: float) -> tuple[float, float]:
    """(images/s, seconds of compilation) for ``case`` under ``option``."""
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    batch_size = {"batch ×2": 2 * case.batch_size,
                  "batch ×½": case.batch_size // 2}.get(option, case.batch_size)
    model = case.build()
    if option == "channels_last":
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    step_model = torch.compile(model) if option == "compile" else model
    if option == "threads=1":
        torch.set_num_threads(1)
    batches = [case.batch(batch_size) for _ in range(4)]
    if option == "channels_last":
        batches = [(x.contiguous(memory_format=torch.channels_last), y) for x, y in batches]

    def step(i):
        loss = case.loss(step_model, batches[i % len(batches)])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    try:
        start = time.perf_counter()
        step(0)                       # the first step pays for compilation, if any
        compile_s = time.perf_counter() - start if option == "compile" else 0.0
        for i in range(4):            # warm-up: allocator, and any recompilation
            step(i + 1)
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            step(n)
            n += 1
        return n * batch_size / (time.perf_counter() - start), compile_s
    finally:
        torch.set_num_threads(threads)


OPTIONS = ("default", "channels_last", "compile", "threads=1", "batch ×2", "batch ×½")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="timed seconds per measurement")
    parser.add_argument("--rounds", type=int, default=2,
                        help="measurements per option; the best is kept (timing noise is one-sided)")
    parser.add_argument("--models", nargs="*", default=None,
                        help="prefixes of the models to measure, e.g. 03 04")
    parser.add_argument("--options", nargs="*", default=list(OPTIONS), choices=OPTIONS)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "throughput.md")
    args = parser.parse_args(argv)
    chosen = [c for c in cases() if not args.models or c.name.split()[0] in args.models]
    header = (f"Training throughput, images/s (higher is better), {os.cpu_count()} CPU cores "
              f"({platform.machine()}), torch {torch.__version__}, default threads "
              f"{torch.get_num_threads()}; best of {args.rounds} measurements of {args.seconds:g} s "
              f"(compile: one)")
    rows = ["| model (batch) | " + " | ".join(args.options) + " | best |",
            "|---" * (len(args.options) + 2) + "|"]
    compile_notes = []
    for case in chosen:
        speeds = {}
        for option in args.options:
            try:
                # best of --rounds (one for compile, whose first step alone takes ~40 s)
                rounds = 1 if option == "compile" else args.rounds
                results = [measure(case, option, args.seconds) for _ in range(rounds)]
                speeds[option], compile_s = max(results)
                if option == "compile":
                    compile_notes.append(f"{case.name}: {compile_s:.0f} s to compile")
            except Exception as err:  # a failing option is a result too (e.g. no C++ compiler)
                speeds[option] = float("nan")
                compile_notes.append(f"{case.name} / {option}: failed, {type(err).__name__}: "
                                     f"{str(err).splitlines()[0][:120]}")
            print(f"{case.name:28s} {option:14s} {speeds[option]:8.0f} images/s", flush=True)
        base = speeds.get("default", float("nan"))
        measured = [o for o in speeds if speeds[o] == speeds[o]]
        best = max(measured, key=speeds.get) if measured else "-"
        cells = [f"{v:.0f}" if o == "default" else f"{v:.0f} ({v / base - 1:+.0%})"
                 for o, v in speeds.items()]
        rows.append(f"| {case.name} ({case.batch_size}) | " + " | ".join(cells) + f" | {best} |")
    text = "\n".join([header, "", *rows, "", *[f"- {n}" for n in compile_notes]])
    print("\n" + text)
    args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
