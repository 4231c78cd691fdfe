"""What one training step of 03's recipe costs beyond the network, and what bfloat16 would buy.

    python bench/train_overheads.py               # as stored: about 12 minutes on 2 cores
    python bench/train_overheads.py --steps 0     # parts 1 and 3 only, keeping the stored part 2

Part 1 times one step of 03's fixed recipe (OptimizedUNet 16, 32, 64 with the 128-wide
bottleneck, batches of 64, scaled-linear schedule, lr warm-up and decay, EMA 0.999 with warm-up)
with each way of doing the bookkeeping, interleaved so that a machine whose speed drifts treats
them alike (median of 5 rounds of 30 steps):

- ``before``: torch's default Adam (a Python loop over the tensors) and an EMA through
  ``AveragedModel(avg_fn=...)`` (another loop);
- ``now``: :func:`course_lib.train.adam` (``fused=True``) and
  :func:`course_lib.train.ema_warmup_avg_fn` as a ``multi_avg_fn`` (one ``_foreach_lerp_``);
- ``now + bf16``: the same step under ``torch.autocast("cpu", dtype=torch.bfloat16)``, which only
  a CPU with AMX or AVX512-BF16 runs fast (elsewhere bfloat16 is emulated: bench/bf16_isa.py).

Part 3 (printed second) times each notebook's model as it trains now, float32 against bfloat16.

Part 2 asks whether bfloat16 costs quality: the recipe trains ``--steps`` steps in float32 from
two seeds and in bfloat16 from the first, and each EMA model's loss is measured in float32 on the
same 2,000 held-out test images, noise levels and noises (L_simple). The two float32 seeds show
how far two runs of one recipe differ anyway.

Writes bench/train_overheads.md and bench/train_overheads.json.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.optim.swa_utils import AveragedModel
from tqdm.auto import tqdm

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from course_lib import config  # noqa: E402
from course_lib.data import load_fashion_mnist, make_loader  # noqa: E402
from course_lib.ddpm import add_noise, diffusion_loss, scaled_linear_schedule  # noqa: E402
from course_lib.train import (adam, ema_warmup_avg_fn, pick_memory_format,  # noqa: E402
                              train, warmup_cosine)
from course_lib.unets import OptimizedUNet, TimeUNet, UNet  # noqa: E402

T = 150


def per_tensor_ema(decay: float, warmup: float = 10.0):
    """The EMA before: the same equation as ema_warmup_avg_fn, one tensor at a time."""
    def avg_fn(averaged, current, num_averaged):
        n = float(num_averaged)
        d = min(decay, (1 + n) / (warmup + n))
        return averaged + (current - averaged) * (1 - d)
    return avg_fn


NOTEBOOK_MODELS = {   # name: (the model, batch size, image shape, context width or None), as trained now
    "01 UNet": (lambda: UNet(1, 16, (16, 32, 64)), 128, (1, 16), None),
    "02 TimeUNet": (lambda: TimeUNet(1, 16, (16, 32, 64), T=T), 128, (1, 16), None),
    "03 fixed recipe": (lambda: OptimizedUNet(1, 16, (16, 32, 64), T=T, bottleneck=128), 64, (1, 16), None),
    "04 FashionMNIST": (lambda: OptimizedUNet(1, 16, (16, 32, 64), T=T, c_dim=10, bottleneck=128),
                        64, (1, 16), 10),
    # row P's widths, as measured; 04 trains row X's (24, 48, 96) since the thirteenth session
    "04 flowers": (lambda: OptimizedUNet(3, 32, (16, 32, 64), T=T, c_dim=3), 64, (3, 32), 3),
    "05 UNet": (lambda: OptimizedUNet(3, 32, (16, 32, 64), T=T, c_dim=128), 32, (3, 32), 128),
    "06 DigitUNet": (lambda: OptimizedUNet(1, 28, (16, 32, 64), T=T, c_dim=10), 128, (1, 28), 10),
}


def build(seed: int = 0) -> OptimizedUNet:
    """03's fixed-recipe network, from ``seed``."""
    torch.manual_seed(seed)
    return NOTEBOOK_MODELS["03 fixed recipe"][0]()


def interleaved_ms(step_fns: dict, rounds: int, steps: int) -> dict[str, float]:
    """Median ms per call of each ``step_fns[name](i)``: ``rounds`` rounds of ``steps`` calls, the
    variants taking turns within each round (a drifting machine treats them alike), after one
    warm-up round."""
    times = {name: [] for name in step_fns}
    for r in tqdm(range(rounds + 1), desc="timing rounds", leave=False):
        for name, step in step_fns.items():
            start = time.perf_counter()
            for i in range(steps):
                step(r * steps + i)
            if r:
                times[name].append((time.perf_counter() - start) / steps * 1000)
    return {name: statistics.median(t) for name, t in times.items()}


def training_step(model, opt, loss_fn, bf16: bool, sched=None, ema=None):
    """One step as ``course_lib.train.train`` takes it, as a function of the batch index."""
    def step(i):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = loss_fn(model, i)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if sched is not None:
            sched.step()
        if ema is not None:
            ema.update_parameters(model)
    return step


def step_ms(batches: list[torch.Tensor], rounds: int = 5, steps: int = 30) -> dict[str, float]:
    """Median ms per training step of each bookkeeping variant, measured in interleaved rounds."""
    schedule = scaled_linear_schedule(T)

    def loss_fn(model, i):
        return diffusion_loss(model, batches[i % len(batches)], schedule)

    variants = {}
    for name in ("before", "now", "now + bf16"):
        model = build()
        if name == "before":
            opt = torch.optim.Adam(model.parameters(), lr=2e-3)
            ema = AveragedModel(model, avg_fn=per_tensor_ema(0.999))
        else:
            opt = adam(model.parameters(), lr=2e-3)
            ema = AveragedModel(model, multi_avg_fn=ema_warmup_avg_fn(0.999))
        sched = warmup_cosine(opt, total_steps=10_000, warmup_steps=500)
        variants[name] = training_step(model, opt, loss_fn, name.endswith("bf16"), sched, ema)
    return interleaved_ms(variants, rounds, steps)


def notebook_models_ms(rounds: int = 4, steps: int = 10) -> dict[str, tuple[float, float]]:
    """(float32, bf16) median ms per step of each notebook's model, fused Adam, in its memory
    format (NHWC for 01-02 on a CPU), interleaved rounds: 01 with its reconstruction loss, the
    others with L_simple."""
    schedule = scaled_linear_schedule(T)
    out = {}
    for name, (make, batch, (ch, size), c_dim) in tqdm(NOTEBOOK_MODELS.items(), desc="notebook models"):
        torch.manual_seed(0)
        variants = {}
        for bf16 in (False, True):
            model = make()
            fmt = pick_memory_format(model, "cpu")
            model = model.to(memory_format=fmt)
            x = (torch.rand(batch, ch, size, size) * 2 - 1).contiguous(memory_format=fmt)
            extra = {} if c_dim is None else {"c": torch.randn(batch, c_dim)}
            if name.startswith("01"):
                def loss_fn(m, i, x=x):
                    return F.mse_loss(m(add_noise(x, 0.5)), x)
            else:
                def loss_fn(m, i, x=x, extra=extra):
                    return diffusion_loss(m, x, schedule, **extra)
            variants[bf16] = training_step(model, adam(model.parameters(), lr=1e-3), loss_fn, bf16)
        ms = interleaved_ms(variants, rounds, steps)
        out[name] = (ms[False], ms[True])
    return out


def held_out_loss(model, images: torch.Tensor, schedule, repeats: int = 3) -> float:
    """L_simple in float32 on fixed test images, noise levels and noises."""
    g = torch.Generator().manual_seed(123)
    model.eval()
    with torch.no_grad():
        losses = [diffusion_loss(model, chunk, schedule, generator=g).item()
                  for _ in range(repeats) for chunk in images.split(500)]
    return sum(losses) / len(losses)


def equal_steps(data, test_images, steps: int) -> list[dict]:
    schedule = scaled_linear_schedule(T)
    rows = []
    for name, seed, bf16 in (("float32, seed 0", 0, False), ("float32, seed 1", 1, False),
                             ("bfloat16 autocast, seed 0", 0, True)):
        config.seed_everything(seed)
        model = build(seed)
        opt = adam(model.parameters(), lr=2e-3)
        sched = warmup_cosine(opt, total_steps=steps, warmup_steps=steps // 20)

        def loss_fn(m, batch):
            return diffusion_loss(m, batch[0], schedule)

        loader = make_loader(data, batch_size=64)
        start = time.perf_counter()
        history = train(model, loader, loss_fn, epochs=-(-steps // len(loader)),
                        optimizer=opt, scheduler=sched, ema_decay=0.999, max_steps=steps,
                        desc=name, bf16=bf16)
        seconds = time.perf_counter() - start
        rows.append({"run": name, "steps": len(history.losses), "seconds": round(seconds, 1),
                     "train_loss": round(history.final_loss, 4),
                     "held_out_loss": round(held_out_loss(history.ema.module, test_images, schedule), 4)})
        print(rows[-1])
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=2000,
                        help="training steps per run in part 2 (0: keep the stored part 2)")
    args = parser.parse_args(argv)
    data = load_fashion_mnist(size=16, flip=False)
    test_images = load_fashion_mnist(size=16, train=False, flip=False, limit=2000).images
    config.seed_everything(0)
    batches = [b[0] for _, b in zip(range(40), make_loader(data, batch_size=64))]
    ms = step_ms(batches)
    models = notebook_models_ms()
    stored = HERE / "train_overheads.json"
    if args.steps:
        rows, steps = equal_steps(data, test_images, args.steps), args.steps
    else:
        previous = json.loads(stored.read_text())
        rows, steps = previous["equal_steps"], previous["equal_steps"][0]["steps"]
    result = {"machine": f"{torch.get_num_threads()} threads, {platform.machine()}, torch {torch.__version__}",
              "native_bf16": config.native_bf16("cpu"), "step_ms": {k: round(v, 1) for k, v in ms.items()},
              "notebook_models_ms": {k: [round(a, 1), round(b, 1)] for k, (a, b) in models.items()},
              "equal_steps": rows}
    stored.write_text(json.dumps(result, indent=1) + "\n")
    base = ms["before"]
    lines = [f"One training step of 03's fixed recipe (batch 64), {result['machine']}; native bfloat16 "
             f"(AMX): {'yes' if result['native_bf16'] else 'no'}. Median of 5 interleaved rounds of 30 steps.", "",
             "| bookkeeping | ms per step | change |", "|---|---|---|"]
    lines += [f"| {k} | {v:.1f} | {100 * (v / base - 1):+.0f}% |" for k, v in ms.items()]
    lines += ["", "Each notebook's model as it trains now (fused Adam, its batch size and memory format, random inputs), "
              "float32 against bfloat16 autocast: median ms per step of 4 interleaved rounds of 10 steps.", "",
              "| model | batch | float32 | bf16 autocast | change |", "|---|---|---|---|---|"]
    lines += [f"| {k} | {NOTEBOOK_MODELS[k][1]} | {a:.0f} | {b:.0f} | {100 * (b / a - 1):+.0f}% |"
              for k, (a, b) in models.items()]
    lines += ["", f"03's recipe for {steps} steps; EMA models judged by L_simple in float32 on "
              "2,000 held-out test images (same noise levels and noises for every run).", "",
              "| run | steps | seconds | final training loss | held-out loss |", "|---|---|---|---|---|"]
    lines += [f"| {r['run']} | {r['steps']} | {r['seconds']} | {r['train_loss']} | {r['held_out_loss']} |"
              for r in rows]
    (HERE / "train_overheads.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
