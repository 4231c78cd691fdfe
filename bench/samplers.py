"""DDPM against DDIM on the 06 answer-key model: accuracy, Fréchet distance and sampling time.

    python bench/samplers.py                       # full profile, 50 samples per digit (~17 min)
    python bench/samplers.py --profile test --per-digit 5

Runs the completed 06 notebook (template + answers/06_Assessment_Answers.md) once in a kernel,
then, in the same kernel, samples the same starting noise and the same labels (guidance w = W of
the notebook) with each sampler of ``course_lib.ddpm``:

- DDPM, all T = 150 steps (σ² = β_t: what the key's ``sample_digits`` does);
- DDIM with 50, 25 and 10 steps, η = 0 (deterministic), without clipping;
- DDIM 25 with x_0 clipped to [-1, 1], for comparison;
- DDIM with 50, 25 and 10 steps, η = 1 (fresh noise at every step, as in DDPM).

Accuracy is what the grader computes (the MNIST classifier against the requested digits);
the Fréchet distance is :func:`course_lib.metrics.sample_quality` against the MNIST test set.
Target: DDIM-25 within 1 point of DDPM's accuracy at >= 5× less sampling time.
Writes ``bench/samplers_<profile>.md``.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import nbformat
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from course_lib.answer_key import fill  # noqa: E402
from course_lib.metrics import real_quality, sample_quality  # noqa: E402

BENCH_CELL = """
# --- added by bench/samplers.py ---
import time as _time
import torch as _torch
from course_lib.conditioning import one_hot as _one_hot
from course_lib.ddpm import CFGDenoiser as _CFG, Schedule as _Schedule
from course_lib.ddpm import sample_ddim as _ddim, sample_ddpm as _ddpm

_schedule = _Schedule(betas.detach().cpu().double()).to(device)
_labels = _torch.arange(10).repeat_interleave({per_digit})
_denoiser = _CFG(sampler_model.eval(), _one_hot(_labels, N_CLASSES).to(device), W)
_noise = _torch.randn(len(_labels), IMG_CH, IMG_SIZE, IMG_SIZE,
                      generator=_torch.Generator().manual_seed(2026)).to(device)
_runs = {{
    "DDPM": (T, lambda: _ddpm(_denoiser, _noise, _schedule,
                              generator=_torch.Generator().manual_seed(7))),
    "DDIM-50": (50, lambda: _ddim(_denoiser, _noise, _schedule, steps=50)),
    "DDIM-25": (25, lambda: _ddim(_denoiser, _noise, _schedule, steps=25)),
    "DDIM-10": (10, lambda: _ddim(_denoiser, _noise, _schedule, steps=10)),
    "DDIM-25, x_0 clipped": (25, lambda: _ddim(_denoiser, _noise, _schedule, steps=25,
                                                clip_x0=True)),
    "DDIM-50, η = 1": (50, lambda: _ddim(_denoiser, _noise, _schedule, steps=50, eta=1.0,
                                          generator=_torch.Generator().manual_seed(7))),
    "DDIM-25, η = 1": (25, lambda: _ddim(_denoiser, _noise, _schedule, steps=25, eta=1.0,
                                          generator=_torch.Generator().manual_seed(7))),
    "DDIM-10, η = 1": (10, lambda: _ddim(_denoiser, _noise, _schedule, steps=10, eta=1.0,
                                          generator=_torch.Generator().manual_seed(7))),
}}
_results = {{}}
for _name, (_steps, _run) in _runs.items():
    _start = _time.perf_counter()
    _x = _run()
    _results[_name] = {{"steps": _steps, "seconds": _time.perf_counter() - _start,
                       "images": _x.clamp(-1, 1).cpu()}}
    print(_name, f"{{_results[_name]['seconds']:.1f}} s")
_torch.save({{"labels": _labels, "results": _results, "w": W, "T": T}}, {out!r})
"""


def run_key(profile: str, per_digit: int, out: Path) -> float:
    """Execute the completed 06 notebook plus the bench cell; return the seconds it took."""
    from nbclient import NotebookClient

    nb = fill()
    nb.cells.append(nbformat.v4.new_code_cell(BENCH_CELL.format(per_digit=per_digit, out=str(out))))
    env_profile = os.environ.get("COURSE_PROFILE")
    os.environ["COURSE_PROFILE"] = profile          # inherited by the kernel
    try:
        start = time.perf_counter()
        NotebookClient(nb, timeout=None, kernel_name="python3",
                       resources={"metadata": {"path": str(ROOT / "notebooks")}}).execute()
        return time.perf_counter() - start
    finally:
        if env_profile is None:
            os.environ.pop("COURSE_PROFILE")
        else:
            os.environ["COURSE_PROFILE"] = env_profile


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="full", choices=("full", "test"))
    parser.add_argument("--per-digit", type=int, default=50, help="samples of each digit")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "samples.pt"
        notebook_s = run_key(args.profile, args.per_digit, out)
        saved = torch.load(out, weights_only=True)
    labels, results = saved["labels"], saved["results"]
    ddpm = results["DDPM"]
    rows = ["| sampler | steps | accuracy (grader) | recognisable | Fréchet distance | "
            "sampling s | speed-up |", "|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        q = sample_quality(r["images"], "mnist", labels=labels)
        r["quality"] = q
        rows.append(f"| {name} | {r['steps']} | {q.accuracy:.1%} | {q.recognisable:.1%} | "
                    f"{q.frechet:.1f} | {r['seconds']:.1f} | "
                    f"{ddpm['seconds'] / r['seconds']:.1f}× |")
    real = real_quality("mnist", 28, n=len(labels))
    rows.append(f"| real MNIST training images | - | {real.accuracy:.1%} | "
                f"{real.recognisable:.1%} | {real.frechet:.1f} | - | - |")
    verdicts = []
    for name in ("DDIM-25", "DDIM-25, η = 1"):
        gap = 100 * (ddpm["quality"].accuracy - results[name]["quality"].accuracy)
        speedup = ddpm["seconds"] / results[name]["seconds"]
        verdicts.append(f"{name}: {'met' if gap <= 1 and speedup >= 5 else 'MISSED'} "
                        f"({gap:.1f} points below DDPM, {speedup:.1f}× faster)")
    text = "\n".join([
        f"Samplers on the 06 answer-key model ({args.profile} profile, {os.cpu_count()} CPU "
        f"cores, torch {torch.__version__}): {len(labels)} samples ({args.per_digit} per digit), "
        f"the same starting noise for every sampler, guidance w = {saved['w']:g}, "
        f"T = {saved['T']}. Notebook run (training + cells) {notebook_s / 60:.1f} min.", "",
        *rows, "",
        "Target (DDIM-25 within 1 point of DDPM's accuracy at >= 5× less time): "
        + "; ".join(verdicts) + "."])
    print(text)
    (ROOT / "bench" / f"samplers_{args.profile}.md").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
