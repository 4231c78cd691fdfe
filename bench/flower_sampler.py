"""Sampler settings for notebook 04's flower model: the same trained network, several ways to sample it.

    python bench/flower_sampler.py                    # row O's model, 100 samples per species
    python bench/flower_sampler.py --epochs 2 --per-species 8   # a quick look
    python bench/flower_sampler.py --batch 64 --per-species 300 --rows 0,4,8 \
        --report flower_sampler_64                    # row P's model (04's until the thirteenth session)
    python bench/flower_sampler.py --batch 64 --per-species 300 --rows 0 --channels 24,48,96 \
        --epochs 30 --seed 1 --report flower_channels_x30_s1   # row X (04's in the thirteenth session)
    python bench/flower_sampler.py --batch 64 --per-species 300 --rows 10 --channels 24,48,96 \
        --prediction v --min-snr 5 --epochs 60 --report flower_channels_x60v_s0_minsnr5   # 04's now

Trains 04's class-conditional flower model once, as notebook 04 did before its batches of 64
(flower_recipe row O: channels 16, 32, 64; cosine schedule, T = 150; batches of 32, lr 2e-3,
EMA 0.995, the context dropped 10% of the time; 50 epochs of the flipped 32×32 photos of daisies,
roses and sunflowers), then draws the same starting noises, ``--per-species`` for each species, with each setting below. Only the sampler
changes between rows. The 32×32 flower judge reads every set: the share read as the requested
species, the share it is confident about, and the Fréchet distance of its features to real photos.
A last column counts the pixel values at the ends of the colour range (|x| ≥ 0.95), where
over-saturated, burnt colours pile up, beside the same count for real held-out photos of the three
species. Writes bench/flower_sampler.md and .json (or ``--report``'s name), and one grid per row
to bench/out/<report>/. ``--batch 64`` trains 04's recipe of the twelfth session (flower_recipe
row P), ``--rows`` picks rows of ``SETTINGS`` by index, ``--channels 24,48,96`` gives the network
04 trains now (row X), ``--prediction v --min-snr 5 --epochs 60`` its training (as
bench/flower_channels.py's run x60v_s0_minsnr5 does) and ``--seed`` another training seed. It trains
on CUDA or MPS when there is one.
"""
from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import torch
from torchvision.utils import save_image

from course_lib import config, ddpm
from course_lib.conditioning import one_hot
from course_lib.data import FLOWER_CLASSES
from course_lib.classifier import load_classifier
from course_lib.metrics import (features_and_probs, frechet_distance, real_quality, real_split,
                                sample_quality, within_class_spread)
from flower_recipe import SPECIES, FlowerRecipe, network, train_by_epochs  # bench/flower_recipe.py
from report import AT_LIMITS, SCHEDULES, at_limits, device_name, write_report  # bench/report.py

HERE = Path(__file__).resolve().parent
FOURS = FlowerRecipe("04 as it is")          # 04's network and recipe: flower_recipe.py's row A
EPOCHS = 50                                  # rows O and P (04 now: row X's network, v, 60 epochs)
SETTINGS = {   # name -> keyword arguments of ddpm.sample_guided
    "w = 2, DDIM-50, η = 1, x̂₀ clipped (04 as it is)": dict(w=2.0, steps=50, clip_x0=True),
    "guidance rescale φ = 0.3": dict(w=2.0, steps=50, clip_x0=True, rescale=0.3),
    "guidance rescale φ = 0.7": dict(w=2.0, steps=50, clip_x0=True, rescale=0.7),
    "x̂₀ not clipped": dict(w=2.0, steps=50, clip_x0=False),
    "η = 0.5": dict(w=2.0, steps=50, clip_x0=True, eta=0.5),
    "DDIM-100": dict(w=2.0, steps=100, clip_x0=True),
    "w = 3": dict(w=3.0, steps=50, clip_x0=True),
    "w = 3, guidance rescale φ = 0.7": dict(w=3.0, steps=50, clip_x0=True, rescale=0.7),
    "η = 0.75": dict(w=2.0, steps=50, clip_x0=True, eta=0.75),
    "w = 1": dict(w=1.0, steps=50, clip_x0=True),
    "η = 0 (deterministic DDIM)": dict(w=2.0, steps=50, clip_x0=True, eta=0.0),
    # seventeenth session: guidance in a limited interval of noise levels (Kynkäänniemi et al.
    # 2024; their ImageNet interval σ ∈ (0.28, 5.42]), η = 0 as 04 samples since the sixteenth
    "η = 0, guided only for σ in (0.28, 5.42]": dict(w=2.0, steps=50, clip_x0=True, eta=0.0,
                                                     sigmas=(0.28, 5.42)),
    "η = 0, guided only for σ ≤ 5.42": dict(w=2.0, steps=50, clip_x0=True, eta=0.0, sigmas=(0.0, 5.42)),
    "η = 0, w = 3": dict(w=3.0, steps=50, clip_x0=True, eta=0.0),
    "η = 0, w = 3, guided only for σ in (0.28, 5.42]": dict(w=3.0, steps=50, clip_x0=True, eta=0.0,
                                                            sigmas=(0.28, 5.42)),
    "η = 0, DDIM-100": dict(w=2.0, steps=100, clip_x0=True, eta=0.0),
    "η = 0, DDIM-150 (every step of T = 150)": dict(w=2.0, steps=150, clip_x0=True, eta=0.0),
}


def sampler_kwargs(settings: dict, schedule) -> dict:
    """A SETTINGS row as keyword arguments of ``ddpm.sample_guided``: ``sigmas`` = (σ_lo, σ_hi)
    becomes the guidance ``interval`` in this schedule's timesteps."""
    kwargs = dict(settings)
    if "sigmas" in kwargs:
        kwargs["interval"] = ddpm.guidance_interval(schedule, *kwargs.pop("sigmas"))
    return kwargs


def train_flower_model(epochs: int = EPOCHS, batch: int = FOURS.batch,
                       channels: tuple = FOURS.channels, seed: int = 0, patch: int = 1,
                       prediction: str = "eps", min_snr: float | None = None,
                       lognormal: tuple | None = None, zoom: tuple | None = None,
                       self_cond: float | None = None):
    """04's flower model trained as notebook 04 does: (EMA model, figures of training, schedule).

    ``channels``, ``seed`` and ``patch`` change the network's widths, the training seed and the
    pixels per patch (``OptimizedUNet(patch=...)``); ``prediction="v"`` trains a v-prediction
    network and returns it wrapped in ``ddpm.VDenoiser``, which the samplers read as eps;
    ``min_snr`` weights its loss by min-SNR-γ and ``lognormal`` draws its timesteps as EDM does
    (``ddpm.lognormal_timesteps``); ``zoom`` trains on random zoomed-in crops of the photos
    (``FlowerRecipe.zoom``); ``self_cond`` = p shows the network its own x̂₀ estimate for a
    share p of each batch (``flower_recipe.SelfConditioned``). The EMA weights
    are kept in bench/out/flower_sampler/ (with the figures) and loaded from there the next time
    with the same settings: more sampler rows need no new training.
    """
    recipe = dataclasses.replace(FOURS, batch=batch, channels=tuple(channels), seed=seed,
                                 patch=patch, prediction=prediction, min_snr=min_snr,
                                 lognormal=lognormal, zoom=zoom, self_cond=self_cond)
    device = config.get_device(verbose=True)
    schedule = SCHEDULES[recipe.schedule](150).to(device)
    widths = "-".join(map(str, recipe.channels))

    def as_eps(model):
        return ddpm.VDenoiser(model, schedule) if prediction == "v" else model

    saved = HERE / "out" / "flower_sampler" / (
        f"model_{epochs}_b{batch}_c{widths}_s{seed}" + (f"_p{patch}" if patch > 1 else "")
        + ("_v" if prediction == "v" else "") + (f"_snr{min_snr:g}" if min_snr else "")
        + ("_ln%g,%g" % lognormal if lognormal else "") + ("_zoom%g,%g" % zoom if zoom else "")
        + (f"_sc{self_cond:g}" if self_cond else "") + ".pt")
    if saved.exists():
        state = torch.load(saved, weights_only=True)
        model = network(recipe)
        model.load_state_dict(state["weights"])
        print(f"loaded the model of an earlier run from {saved}")
        return as_eps(model.to(device).eval()), state["trained"], schedule
    history, seconds = train_by_epochs(recipe, schedule, epochs, device)
    ema = history.ema.module.eval()
    trained = {"steps": len(history.losses), "final_loss": history.final_loss,
               "train_seconds": round(seconds, 1)}
    saved.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"weights": ema.state_dict(), "trained": trained}, saved)
    return as_eps(ema), trained, schedule


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    parser.add_argument("--per-species", type=int, default=100, help="samples judged per species")
    parser.add_argument("--batch", type=int, default=FOURS.batch,
                        help="training batch (32: row O, as stored; 64: rows P and X, as 04 now)")
    parser.add_argument("--channels", default=",".join(map(str, FOURS.channels)),
                        help="the UNet's widths (row P: 16,32,64; row X, 04 now: 24,48,96)")
    parser.add_argument("--seed", type=int, default=0, help="the training seed (sampling noise stays)")
    parser.add_argument("--patch", type=int, default=1,
                        help="pixels per patch side (2: the UNet runs at 16×16 on 2×2 patches)")
    parser.add_argument("--prediction", choices=("eps", "v"), default="eps",
                        help="what the network learns to predict (v: Salimans & Ho 2022)")
    parser.add_argument("--min-snr", type=float, help="min-SNR-γ loss weighting (Hang et al. 2023)")
    parser.add_argument("--lognormal", help="P_mean,P_std: timesteps drawn as EDM draws σ (v only)")
    parser.add_argument("--zoom", help="lo,hi: train on random crops of lo-hi of each photo's area")
    parser.add_argument("--self-cond", type=float, help="p: self-conditioning in training (Chen et al. 2022)")
    parser.add_argument("--feedback", type=int, default=1,
                        help="0: sample a self-conditioned network with its estimate input always zero")
    parser.add_argument("--rows", help="comma-separated indices into SETTINGS (default: all)")
    parser.add_argument("--report", default="flower_sampler", help="name of the .md/.json written")
    args = parser.parse_args(argv)
    channels = tuple(int(c) for c in args.channels.split(","))
    lognormal = tuple(float(p) for p in args.lognormal.split(",")) if args.lognormal else None
    zoom = tuple(float(p) for p in args.zoom.split(",")) if args.zoom else None
    model, trained, schedule = train_flower_model(args.epochs, args.batch, channels, args.seed,
                                                 args.patch, args.prediction, args.min_snr,
                                                 lognormal, zoom, args.self_cond)
    if args.self_cond and not args.feedback:
        model.model.feedback = False                 # VDenoiser -> SelfConditioned
    settings = list(SETTINGS.items())
    if args.rows:
        settings = [settings[int(i)] for i in args.rows.split(",")]
    asked = torch.arange(len(SPECIES)).repeat_interleave(args.per_species)
    to_species = torch.tensor([FLOWER_CLASSES.index(s) for s in SPECIES])
    c = one_hot(asked, len(SPECIES)).to(schedule.betas.device)
    out = HERE / "out" / args.report
    out.mkdir(parents=True, exist_ok=True)
    photos, labels, _ = real_split("flowers", 32)
    ours = torch.isin(labels, to_species)     # the held-out photos of the three species
    judge = load_classifier("flowers")
    ours_features = features_and_probs(judge, photos[ours], "flowers")[0]
    real_spread = within_class_spread(photos[ours], labels[ours], "flowers")
    rows = []
    for i, (name, kwargs) in enumerate(settings):
        start = time.perf_counter()
        samples = ddpm.sample_guided(model, c, (3, 32, 32), schedule, seed=12,
                                     **sampler_kwargs(kwargs, schedule))
        seconds = time.perf_counter() - start
        samples = samples.cpu()
        q = sample_quality(samples, "flowers", labels=to_species[asked])
        rows.append({"name": name, "settings": kwargs, "species": round(q.accuracy, 3),
                     "recognised": round(q.recognisable, 3), "frechet": round(q.frechet, 1),
                     "at_limits": round(at_limits(samples), 3), "seconds": round(seconds, 1),
                     "frechet_species": round(frechet_distance(
                         features_and_probs(judge, samples, "flowers")[0], ours_features), 1),
                     "variety": round(within_class_spread(samples, asked, "flowers")
                                      / real_spread, 3)})
        print(rows[-1], flush=True)
        grid = samples.view(len(SPECIES), args.per_species, 3, 32, 32)[:, :12].flatten(0, 1)
        save_image(grid * 0.5 + 0.5, out / f"{i}.png", nrow=min(12, args.per_species))
    real = real_quality("flowers", 32, n=10_000)
    real_limits = at_limits(photos[ours])
    where = device_name()
    head = (f"Sampler settings for 04's flower model ({where}, torch {torch.__version__}): one "
            f"run of notebook 04's flower recipe (batches of {args.batch}, channels "
            f"{args.channels}{', patches of %d' % args.patch if args.patch > 1 else ''}"
            f"{', v-prediction' if args.prediction == 'v' else ''}"
            f"{', min-SNR-%g weighting' % args.min_snr if args.min_snr else ''}"
            f"{', timesteps drawn log-normal in σ (P_mean, P_std = %g, %g)' % lognormal if lognormal else ''}"
            f"{', random crops of %g-%g of the area of each photo' % zoom if zoom else ''}"
            f"{', self-conditioned (p = %g)' % args.self_cond if args.self_cond else ''}"
            f"{', sampled without feeding back its estimate' if args.self_cond and not args.feedback else ''}"
            f", training "
            f"seed {args.seed}), {trained['steps']} "
            f"steps (final loss {trained['final_loss']:.4f}); the same {args.per_species} starting "
            f"noises per species in every row, judged by the 32×32 flower judge. Real held-out "
            f"photos: {real.accuracy:.0%} read as their species; {real_limits:.1%} of the pixel "
            f"values of the three species' photos lie at |x| ≥ {AT_LIMITS}.")
    head += (" The second Fréchet distance is to the held-out photos of the three species only; "
             "variety is the samples' mean judge-feature distance within a species over the "
             "real photos' (1: as varied as real photos).")
    lines = [head, "", "| sampler | requested species | judge confident | Fréchet distance "
             f"| Fréchet, three species | variety | values at \\|x\\| ≥ {AT_LIMITS} | seconds |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['name']} | {r['species']:.0%} | {r['recognised']:.0%} "
                     f"| {r['frechet']:.1f} | {r['frechet_species']:.1f} | {r['variety']:.2f} "
                     f"| {r['at_limits']:.1%} | {r['seconds']:.0f} |")
    write_report(args.report, lines, {
        "epochs": args.epochs, "batch": args.batch, "channels": list(channels), "seed": args.seed,
        "patch": args.patch, "prediction": args.prediction, "min_snr": args.min_snr,
        "lognormal": list(lognormal) if lognormal else None,
        "zoom": list(zoom) if zoom else None, "self_cond": args.self_cond,
        "feedback": bool(args.feedback),
        "device": where, "per_species": args.per_species, **trained, "real_species": real.accuracy,
        "real_at_limits": real_limits, "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
