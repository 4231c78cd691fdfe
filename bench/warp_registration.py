"""Could the grader catch warped copies of MNIST digits by undoing the warp? Measured, not adopted.

    python bench/warp_registration.py [--sets 2] [--key bench/out/key_samples.pt]

``bench/grading_checks.md`` finds that elastic and affine warps of training digits pass the
grader's "not memorised" check: its comparison tolerates shifts and blurs, not warps. The obvious
fix is image registration: warp each of a sample's ``CANDIDATES`` nearest MNIST digits (the
grader's own coarse search) onto the sample, then compare. A warped copy should then match its
source almost exactly, while new handwriting should not match anything that closely.

Two warp models, each fitted by gradient descent on the cosine similarity (the grader's 28×28,
lightly blurred, zero-mean unit-norm form):

- **affine**: 6 parameters per pair (rotation, scale, shear, shift);
- **affine + smooth field**: plus a displacement field on a 5×5 grid, upsampled bicubically.

Sources as in ``bench/grading_checks.py``: real MNIST test digits the references leave out and
the answer key's samples (must pass), exact copies, and the two warps of
``tests/adversarial/cheats.py`` (should fail). Writes ``bench/warp_registration.md`` and ``.json``.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import grading_checks  # noqa: E402  (bench/grading_checks.py: the same sources of samples)
from course_lib import grade, grade_checks as gc  # noqa: E402
from report import write_report  # noqa: E402  (bench/report.py)

STEPS, LR, GRID = 60, 0.02, 5
"""Adam steps and learning rate of each registration; the displacement field's grid size."""


def register(images: torch.Tensor, refs: torch.Tensor, field: bool) -> torch.Tensor:
    """Per sample (N, 1, 28, 28), the best cosine similarity to any of its K references
    (N, K, 1, 28, 28) after warping each reference onto the sample: x ≈ ref ∘ (A·p + d(p))."""
    n, k = refs.shape[:2]
    target = gc._fine(images, gc.BLURS[0]).reshape(n, 1, -1)
    moving = refs.reshape(n * k, 1, 28, 28).float()
    identity = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    theta = torch.zeros(n * k, 2, 3, requires_grad=True)           # A = identity + theta
    grid = torch.zeros(n * k, 2, GRID, GRID, requires_grad=True)   # d on a coarse grid
    optimizer = torch.optim.Adam([theta, grid] if field else [theta], lr=LR)
    for _ in range(STEPS):
        points = F.affine_grid(identity + theta, (n * k, 1, 28, 28), align_corners=False)
        if field:
            points = points + F.interpolate(grid, size=(28, 28), mode="bicubic",
                                            align_corners=True).permute(0, 2, 3, 1)
        warped = F.grid_sample(moving, points, align_corners=False, padding_mode="border")
        cosine = (target * gc._fine(warped, gc.BLURS[0]).reshape(n, k, -1)).sum(-1)
        optimizer.zero_grad()
        (-cosine.sum()).backward()
        optimizer.step()
    return cosine.detach().max(1).values


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", type=int, default=2)
    parser.add_argument("--key", type=Path, default=ROOT / "bench" / "out" / "key_samples.pt")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    judge = gc.load_judge(hold_out=gc.HOLD_OUT)
    results = {}
    for name, source in grading_checks.sources(
            args.key, lambda cheats: {"copies": cheats.copies, **cheats.WARPED}).items():
        sims = {"plain": [], "affine": [], "field": []}
        seconds = 0.0
        for s in range(args.sets):
            labels = torch.tensor(grade.hidden_labels(10, torch.Generator().manual_seed(1000 + s)))
            images = source(labels, s).float()
            sims["plain"].append(gc.copy_similarity(images, judge.images, judge.coarse))
            refs = judge.images[gc.candidates(images, judge.coarse)]
            t0 = time.perf_counter()
            sims["affine"].append(register(images, refs, field=False))
            sims["field"].append(register(images, refs, field=True))
            seconds += time.perf_counter() - t0
        count = sum(len(v) for v in sims["plain"])
        row = {"samples": count, "register_seconds_per_100": round(100 * seconds / count, 1)}
        for key, values in sims.items():
            v = torch.cat(values)
            row[f"{key}_median"] = round(v.median().item(), 4)
            row[f"{key}_above"] = round((v > gc.COPY_COSINE).float().mean().item(), 3)
        results[name] = row
        print(name, row, flush=True)
    lines = [f"Undoing warps before the copy check ({args.sets} sets of ~100 samples per source; "
             f"each sample registered onto its {gc.CANDIDATES} nearest MNIST digits by {STEPS} Adam "
             f"steps; cosine in the grader's fine form; \"near-copies\" are above its "
             f"{gc.COPY_COSINE}); {time.perf_counter() - start:.0f} s on "
             f"{torch.get_num_threads()} CPU threads.", "",
             "| source | must | grader as it is: median cosine | near-copies | affine: median | "
             "near-copies | affine + 5×5 field: median | near-copies | registration s per 100 samples |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        must = "pass" if name in grading_checks.MUST_PASS else "fail"
        lines.append(f"| {name} | {must} | {r['plain_median']:.3f} | {r['plain_above']:.0%} | "
                     f"{r['affine_median']:.3f} | {r['affine_above']:.0%} | {r['field_median']:.3f} | "
                     f"{r['field_above']:.0%} | {r['register_seconds_per_100']:.1f} |")
    lines += ["", "The grader rejects a set when more than "
              f"{gc.COPY_SHARE:.0%} of its samples are near-copies. A warp model that separates "
              "the warped copies from the sources that must pass would show a low share on the "
              "first two rows and a high one on the last two."]
    write_report("warp_registration", lines, {"sets": args.sets, "steps": STEPS, "grid": GRID,
                                              "rows": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
