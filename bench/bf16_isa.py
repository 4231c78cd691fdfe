"""Which CPUs should train and sample in bfloat16: timed with and without the bfloat16 instructions.

    python bench/bf16_isa.py          # about 8 minutes on 2 cores

``course_lib.config.native_bf16`` turns on bfloat16 autocast for the UNets on a CPU that
multiplies bfloat16 in hardware. Until the twenty-sixth session it asked for Intel's AMX tiles
only, measured in bench/train_overheads.md and bench/bf16_sampling.md. This script asks what
the other CPUs do, on one machine, by capping the instructions PyTorch may use:

- ``this CPU``: no cap. On a CPU with AVX512-BF16 (AMD since Zen 4, Intel since Cooper Lake)
  oneDNN multiplies bfloat16 with its dot-product instructions;
- ``without AVX512-BF16``: ``ONEDNN_MAX_CPU_ISA=AVX512_CORE_VNNI``, an AVX-512 CPU of the
  generation before (Intel Cascade Lake, AMD Zen 3 has no AVX-512 at all): bfloat16 emulated;
- ``AVX2 only``: ``ONEDNN_MAX_CPU_ISA=AVX2`` and ``ATEN_CPU_CAPABILITY=avx2``, as on most
  laptops: bfloat16 emulated.

Each setting runs in its own process and times, float32 against bfloat16 autocast, one training
step of each notebook's network as it trains now (fused Adam, its batch size, random inputs;
median of interleaved rounds) and 05's guided sampling (60 samples, 20 DDIM steps, w = 3).
The caps say nothing to ``native_bf16``, which reads the CPU's own flags, so its column is what
the machine itself reports. Writes bench/bf16_isa.md and bench/bf16_isa.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from course_lib import config  # noqa: E402
from course_lib.ddpm import cosine_schedule, diffusion_loss, sample_guided  # noqa: E402
from course_lib.train import adam  # noqa: E402
from course_lib.unets import OptimizedUNet  # noqa: E402
from report import write_report  # noqa: E402  (bench/)
from train_overheads import NOTEBOOK_MODELS, interleaved_ms, training_step  # noqa: E402  (bench/)

SETTINGS = {   # name: environment of the worker process
    "this CPU": {},
    "without AVX512-BF16": {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_VNNI"},
    "AVX2 only": {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"},
}
MODELS = {   # name: (the network as its notebook trains it now, batch, (channels, size), context width):
    #            train_overheads' entries, with 04's and 05's flower widths since rows X and V
    "03 fixed recipe": NOTEBOOK_MODELS["03 fixed recipe"],
    "04 flowers": (lambda: OptimizedUNet(3, 32, (24, 48, 96), T=150, c_dim=3), 64, (3, 32), 3),
    "05 UNet": (lambda: OptimizedUNet(3, 32, (24, 48, 96), T=150, c_dim=128), 32, (3, 32), 128),
    "06 DigitUNet": NOTEBOOK_MODELS["06 DigitUNet"],
}
SAMPLING = "05 guided sampling, 60 samples × 20 steps"


def measure(rounds: int, steps: int) -> dict:
    """In this process: {model: [float32 ms, bf16 ms]} per training step, and the sampling row in s."""
    schedule = cosine_schedule(150)
    out = {}
    for name, (make, batch, (ch, size), c_dim) in MODELS.items():
        variants = {}
        for bf16 in (False, True):
            torch.manual_seed(0)
            model = make()
            x = torch.rand(batch, ch, size, size) * 2 - 1
            extra = {} if c_dim is None else {"c": torch.randn(batch, c_dim)}

            def loss_fn(m, i, x=x, extra=extra):
                return diffusion_loss(m, x, schedule, **extra)
            variants[bf16] = training_step(model, adam(model.parameters(), lr=1e-3), loss_fn, bf16)
        ms = interleaved_ms(variants, rounds, steps)
        out[name] = [round(ms[False], 1), round(ms[True], 1)]
        print(name, out[name], flush=True)
    torch.manual_seed(0)
    unet = MODELS["05 UNet"][0]().eval()
    c = torch.randn(60, 128)
    seconds = {False: [], True: []}
    for _ in range(2):   # interleaved, the faster of two
        for bf16 in (False, True):
            start = time.perf_counter()
            with torch.no_grad():
                sample_guided(unet, c, (3, 32, 32), schedule, w=3.0, steps=20, seed=0, bf16=bf16,
                              disable=True)
            seconds[bf16].append(time.perf_counter() - start)
    out[SAMPLING] = [round(min(seconds[False]), 2), round(min(seconds[True]), 2)]
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds per model")
    parser.add_argument("--steps", type=int, default=6, help="training steps per round")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print("RESULT " + json.dumps(measure(args.rounds, args.steps)), flush=True)
        return 0
    results = {}
    for setting, env in SETTINGS.items():
        print(f"--- {setting}", flush=True)
        proc = subprocess.run([sys.executable, __file__, "--worker", "--rounds", str(args.rounds),
                               "--steps", str(args.steps)], env=dict(os.environ, **env),
                              capture_output=True, text=True, check=True)
        line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT "))
        results[setting] = {"env": env, "ms": json.loads(line.removeprefix("RESULT "))}
        print(results[setting], flush=True)
    cpu = {"avx512_bf16": config.cpu_has("avx512_bf16"), "amx_tile": config.cpu_has("amx_tile"),
           "native_bf16": config.native_bf16("cpu"), "trains_fast": config.trains_fast("cpu")}
    machine = f"{torch.get_num_threads()} threads, {platform.machine()}, torch {torch.__version__}"
    flags = ", ".join(f"{k}: {'yes' if v else 'no'}" for k, v in cpu.items())
    lines = [f"Float32 against bfloat16 autocast on one machine ({machine}; {flags}), with the "
             "instructions PyTorch may use capped as each setting says: median ms per training "
             f"step of each notebook's network ({args.rounds} interleaved rounds of {args.steps} "
             "steps, random inputs), and seconds for 05's guided sampling (the faster of two).", "",
             "| setting | what is timed | batch | float32 | bfloat16 | change |", "|---|---|---|---|---|---|"]
    for setting, r in results.items():
        for name, (f32, b16) in r["ms"].items():
            batch = MODELS[name][1] if name in MODELS else 60
            unit = " s" if name == SAMPLING else " ms"
            lines.append(f"| {setting} | {name} | {batch} | {f32:g}{unit} | {b16:g}{unit} "
                         f"| {100 * (b16 / f32 - 1):+.0f}% |")
    write_report("bf16_isa", lines, {"machine": machine, "cpu": cpu, "settings": results})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
