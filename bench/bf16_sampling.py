"""Sampling in bfloat16: the same samples in less time? And where bfloat16 does not pay.

    python bench/bf16_sampling.py       # about 7 minutes on 2 cores; needs notebook 02's checkpoint

Training already runs under bfloat16 autocast on CPUs with AMX units (train_overheads.py; and
since the twenty-sixth session with AVX512-BF16, bf16_isa.py). This
script measures the samplers the same way, on this machine, one setting at a time:

1. **Unguided**: notebook 02's stored TimeUNet (``checkpoints/full/02_time_unet.pt``; run
   notebook 02 in the full profile first). 500 starting noises, the same step noises, three
   samplers (DDPM's 150 steps, DDIM-25 with η = 1, and deterministic DDIM-50, η = 0, which
   amplifies any error of the network), each in float32 and under bfloat16 autocast; the 16×16
   FashionMNIST judge reads every set.
2. **Guided**: 04's FashionMNIST network and recipe, trained here for one epoch, sampled as 04
   samples (``sample_guided``, DDIM-50, η = 1, w = 2), 20 of each class, in both precisions.
   Guidance amplifies the difference of two predictions, (1 + w)·ε_c − w·ε_∅, so it is the
   hardest case for a 3-significant-digit format (``CFGDenoiser`` mixes in float32).
3. **A network too small to gain**: 02's ``ToyDenoiser`` (an MLP of 10k weights on 2-D points),
   one training step (batch 256) and one DDPM run over 4,000 points, in both precisions.

Times are the faster of two interleaved runs (the machine drifts). Writes bench/bf16_sampling.md
and bench/bf16_sampling.json.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from course_lib import config  # noqa: E402
from course_lib.conditioning import keep_mask, one_hot  # noqa: E402
from course_lib.data import load_fashion_mnist, make_loader  # noqa: E402
from course_lib.ddpm import (diffusion_loss, linear_schedule, sample_ddim, sample_ddpm,  # noqa: E402
                             sample_guided, scaled_linear_schedule)
from course_lib.metrics import sample_quality  # noqa: E402
from course_lib.toy2d import ToyDenoiser, example_mixture  # noqa: E402
from course_lib.train import adam, load_checkpoint, train, warmup_cosine  # noqa: E402
from course_lib.unets import OptimizedUNet, TimeUNet  # noqa: E402
from train_overheads import interleaved_ms, training_step  # noqa: E402

T = 150


def timed_pair(sample) -> dict:
    """``sample(bf16)`` in float32 and in bfloat16, twice each, interleaved: the faster time of
    each, and the samples (the runs are seeded, so both runs of one precision agree)."""
    out = {}
    for _ in range(2):
        for bf16 in (False, True):
            start = time.perf_counter()
            x = sample(bf16)
            seconds = time.perf_counter() - start
            best = out.get(bf16, (None, float("inf")))[1]
            out[bf16] = (x, min(best, seconds))
    return out


def judged_rows(name: str, pair: dict, dataset="fashion_mnist", labels=None) -> list[dict]:
    rows = []
    for bf16, (x, seconds) in pair.items():
        q = sample_quality(x.float(), dataset, labels=labels)
        rows.append({"sampler": name, "precision": "bf16 autocast" if bf16 else "float32",
                     "seconds": round(seconds, 1), "recognised": round(q.recognisable, 3),
                     "frechet": round(q.frechet, 1),
                     "requested": None if labels is None else round(q.accuracy, 3),
                     "mean_abs_diff": round((pair[True][0] - pair[False][0]).abs().mean().item(), 4)})
    return rows


def unguided(checkpoint: Path, n: int) -> list[dict]:
    model = TimeUNet(img_ch=1, size=16, channels=(16, 32, 64), T=T)
    load_checkpoint(checkpoint, model)
    model.eval()
    schedule = linear_schedule(T)                   # 02's schedule
    noise = torch.randn(n, 1, 16, 16, generator=torch.Generator().manual_seed(5))
    samplers = {
        "DDPM, 150 steps": lambda bf16: sample_ddpm(model, noise, schedule, disable=True, bf16=bf16,
                                                    generator=torch.Generator().manual_seed(1)),
        "DDIM-25, η = 1": lambda bf16: sample_ddim(model, noise, schedule, steps=25, disable=True,
                                                   bf16=bf16, generator=torch.Generator().manual_seed(1)),
        "DDIM-50, η = 0": lambda bf16: sample_ddim(model, noise, schedule, steps=50, eta=0.0,
                                                   disable=True, bf16=bf16),
    }
    rows = []
    for name, sample in samplers.items():
        rows += judged_rows(f"02 TimeUNet, {name}", timed_pair(sample))
        print(rows[-2], rows[-1], sep="\n", flush=True)
    return rows


def guided(per_class: int) -> list[dict]:
    config.seed_everything(0)
    data = load_fashion_mnist(size=16, flip=False)
    loader = make_loader(data, 64)
    model = OptimizedUNet(img_ch=1, size=16, channels=(16, 32, 64), T=T, c_dim=10, bottleneck=128)
    schedule = scaled_linear_schedule(T)

    def loss_fn(m, batch):
        images, labels = batch
        return diffusion_loss(m, images, schedule, c=one_hot(labels, 10),
                              c_mask=keep_mask(len(images), 0.9))
    opt = adam(model.parameters(), lr=2e-3)
    history = train(model, loader, loss_fn, optimizer=opt, ema_decay=0.999, desc="04's FashionMNIST",
                    scheduler=warmup_cosine(opt, len(loader), len(loader) // 20))
    ema = history.ema.module.eval()
    labels = torch.arange(10).repeat_interleave(per_class)
    c = one_hot(labels, 10)
    pair = timed_pair(lambda bf16: sample_guided(ema, c, (1, 16, 16), schedule, w=2.0, seed=7,
                                                 disable=True, bf16=bf16))
    rows = judged_rows("04 FashionMNIST, 1 epoch, guided w = 2 (DDIM-50, η = 1)", pair, labels=labels)
    print(*rows, sep="\n", flush=True)
    return rows


def toy() -> dict:
    world = example_mixture()
    schedule = scaled_linear_schedule(T)
    gen = torch.Generator().manual_seed(0)
    x0, k = world.sample(20_000, generator=gen)
    labels = world.classes[k]
    batches = [(x0[i:i + 256], labels[i:i + 256]) for i in range(0, 256 * 20, 256)]
    steps = {}
    for bf16 in (False, True):
        torch.manual_seed(0)
        net = ToyDenoiser(T, n_classes=world.n_classes)

        def loss_fn(m, i):
            x, y = batches[i % len(batches)]
            return diffusion_loss(m, x, schedule, c=one_hot(y, world.n_classes),
                                  c_mask=keep_mask(len(x), 0.8))
        steps[bf16] = training_step(net, adam(net.parameters(), lr=3e-3), loss_fn, bf16)
    ms = interleaved_ms(steps, rounds=5, steps=40)
    net = ToyDenoiser(T, n_classes=world.n_classes).eval()
    c = one_hot(world.classes[torch.zeros(4000, dtype=torch.long)], world.n_classes)
    pair = timed_pair(lambda bf16: sample_ddpm(net, torch.randn(4000, 2, generator=torch.Generator().manual_seed(0)),
                                               schedule, extra_args={"c": c, "c_mask": torch.ones(4000, 1)},
                                               disable=True, bf16=bf16))
    out = {"train_step_ms": [round(ms[False], 2), round(ms[True], 2)],
           "sampling_s": [round(pair[False][1], 2), round(pair[True][1], 2)]}
    print("ToyDenoiser:", out, flush=True)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=500, help="unguided samples per row")
    parser.add_argument("--per-class", type=int, default=20, help="guided samples per class")
    args = parser.parse_args(argv)
    checkpoint = config.REPO_ROOT / "checkpoints" / "full" / "02_time_unet.pt"
    if not checkpoint.is_file():
        raise SystemExit(f"{checkpoint} is missing: run notebook 02 in the full profile first "
                         "(python bench/run_notebooks.py 02)")
    rows = unguided(checkpoint, args.samples) + guided(args.per_class)
    toy_row = toy()
    result = {"machine": f"{torch.get_num_threads()} threads, {platform.machine()}, torch {torch.__version__}",
              "native_bf16": config.native_bf16("cpu"), "rows": rows, "toy": toy_row}
    (HERE / "bf16_sampling.json").write_text(json.dumps(result, indent=1) + "\n")
    lines = [f"Sampling in float32 and under bfloat16 autocast ({result['machine']}; native bfloat16 "
             f"(AMX): {'yes' if result['native_bf16'] else 'no'}): the same starting noise and step "
             "noises for both precisions, judged by the 16×16 FashionMNIST judge; seconds are the "
             "faster of two interleaved runs; the last column is the mean |difference| between the "
             "two precisions' samples (pixels in [-1, 1]).", "",
             "| model and sampler | precision | samples | seconds | recognised | requested class | "
             "Fréchet distance | mean abs. difference |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        n = args.samples if r["requested"] is None else 10 * args.per_class
        req = "-" if r["requested"] is None else f"{100 * r['requested']:.0f}%"
        lines.append(f"| {r['sampler']} | {r['precision']} | {n} | {r['seconds']} | "
                     f"{100 * r['recognised']:.0f}% | {req} | {r['frechet']} | {r['mean_abs_diff']} |")
    (a, b), (c, d) = toy_row["train_step_ms"], toy_row["sampling_s"]
    lines += ["", "02's ToyDenoiser (an MLP of 9,858 weights on 2-D points): where bfloat16 does not pay.", "",
              "| ToyDenoiser | float32 | bf16 autocast | change |", "|---|---|---|---|",
              f"| one training step, batch 256 (ms) | {a} | {b} | {100 * (b / a - 1):+.0f}% |",
              f"| DDPM over 4,000 points, 150 steps (s) | {c} | {d} | {100 * (d / c - 1):+.0f}% |"]
    (HERE / "bf16_sampling.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
