"""The training recipe of notebook 04's flower model, measured one change at a time in the same budget.

    python bench/flower_recipe.py --budget 180    # as stored in flower_recipe.md
    python bench/flower_recipe.py --budget 180 --only H --append   # one more row
    python bench/flower_recipe.py --budget 20 --per-species 8       # a quick look

Every row trains 04's class-conditional OptimizedUNet on the 32×32 photos of daisies, roses and
sunflowers (flipped at random, a context dropped 10% of the time; row N also crops at random)
from the same seed for the same number of seconds (``--budget``, times the row's scale; 04 trained
its flowers for about 180 s when rows A-I ran), or, rows O and P, for 50 epochs as 04 did from then on
(the same steps on any machine), as do rows Q to T on top of P, then draws the same starting noises,
``--per-species`` for each species, with guidance w = 2 and DDIM-50, η = 1, x̂₀ clipped, as 04
does. The 32×32 flower judge reads them: the share read as the requested species, the share it
is confident about, and the Fréchet distance of its features to real photos (all five species);
from row P2 on, also the share of each species read as itself.
Rows add one change to the row named in "on top of" (row H combines three: "B+D+F"). Writes bench/flower_recipe.md and .json, and
one grid of samples per row to bench/out/flower_recipe/ (rows: species; to look at, not stored).
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torchvision.transforms import v2
from torchvision.utils import save_image

from course_lib import config, ddpm
from course_lib.conditioning import keep_mask, one_hot
from course_lib.data import FLOWER_CLASSES, ImageContextDataset, load_flowers, make_loader
from course_lib.metrics import confusion_shares, real_quality, sample_quality
from course_lib.pace import steps_per_second
from course_lib.train import train, warmup_cosine
from course_lib.unets import OptimizedUNet
from report import SCHEDULES, pending, write_report  # bench/report.py

HERE = Path(__file__).resolve().parent
SPECIES = ("daisy", "rose", "sunflower")     # 04's three


@dataclass
class FlowerRecipe:
    name: str
    base: str | None = None
    schedule: str = "cosine"            # cosine, or scaled linear (03's fix, 04's FashionMNIST)
    ema: float = 0.995
    lr: float = 2e-3
    lr_schedule: bool = False           # linear warm-up, cosine decay to 10% (course_lib.train)
    batch: int = 32
    channels: tuple = (16, 32, 64)
    bottleneck: int | None = None       # hidden width of the dense bottleneck (None: channels[1])
    budget_scale: float = 1.0           # training time, in units of --budget
    crop_from: int | None = None        # photos loaded at this size, a random 32-px crop per item
    epochs: int | None = None           # train this many epochs instead of for the time budget
    keep_prob: float = 0.9              # P(keep the species) in training; 1 - p_uncond
    seed: int = 0                       # the training seed (the sampling noise never changes)
    attention: bool = False             # a self-attention block at 8×8 (OptimizedUNet(attention=True))
    min_snr: float | None = None        # min-SNR-γ loss weighting (Hang et al. 2023), γ
    patch: int = 1                      # 2: the UNet runs on 2×2 patches (OptimizedUNet(patch=2))
    prediction: str = "eps"             # "v": the network learns v (ddpm.VDenoiser), sampled as eps
    lognormal: tuple | None = None      # (P_mean, P_std): t drawn as EDM draws σ (v only)
    zoom: tuple | None = None           # (lo, hi): random crops of lo-hi of each 64-px photo's area,
    #                                     resized to 32 px (v2.RandomResizedCrop)
    self_cond: float | None = None      # P(the network is shown its own x̂₀ estimate) in training:
    #                                     self-conditioning (Chen et al. 2022), SelfConditioned


def recipes() -> list[FlowerRecipe]:
    best = dict(schedule="scaled", lr_schedule=True, bottleneck=128)
    return [
        FlowerRecipe("A. 04 as it is"),
        FlowerRecipe("B. scaled-linear schedule instead of cosine", "A", schedule="scaled"),
        FlowerRecipe("C. EMA 0.999 instead of 0.995", "A", ema=0.999),
        FlowerRecipe("D. lr warm-up and cosine decay", "A", lr_schedule=True),
        FlowerRecipe("E. batch 64 instead of 32", "A", batch=64),
        FlowerRecipe("F. dense bottleneck 128 (03's row N)", "A", bottleneck=128),
        FlowerRecipe("G. wider: channels 32, 64, 128", "A", channels=(32, 64, 128)),
        FlowerRecipe("H. B, D and F together", "B+D+F", **best),
        FlowerRecipe("I. H with 2× the training time", "H", budget_scale=2.0, **best),
        FlowerRecipe("J. 2× the training time", "A", budget_scale=2.0),
        # D, E and F again, each alone on top of J (04's recipe since J), and random crops: at 2×
        # the time, on a slower machine than A-J, so J2 repeats J there as their reference
        FlowerRecipe("J2. J again, on the machine of rows K-N", "J", budget_scale=2.0),
        FlowerRecipe("K. J with batch 64", "J", batch=64, budget_scale=2.0),
        FlowerRecipe("L. J with lr warm-up and cosine decay", "J", lr_schedule=True, budget_scale=2.0),
        FlowerRecipe("M. J with dense bottleneck 128", "J", bottleneck=128, budget_scale=2.0),
        FlowerRecipe("N. J with random 32-px crops of 36-px photos", "J", crop_from=36,
                     budget_scale=2.0),
        # O and P train by epochs, as notebook 04 does: the same steps on any machine
        FlowerRecipe("O. 04 as it is, by epochs: 50 of batch 32", "A", epochs=50),
        FlowerRecipe("P. O with batch 64", "O", epochs=50, batch=64),
        # on top of P (04 since the seventh session), on a machine about half as fast as O-P's:
        # Q repeats P with another training seed, to show how far one training moves the figures
        FlowerRecipe("Q. P with training seed 1", "P", epochs=50, batch=64, seed=1),
        FlowerRecipe("R. P with the scaled-linear schedule", "P", epochs=50, batch=64,
                     schedule="scaled"),
        FlowerRecipe("S. P with the species dropped 20% of the time", "P", epochs=50, batch=64,
                     keep_prob=0.8),
        # P2 repeats P on the machine of T, with the share of each species read as itself
        FlowerRecipe("P2. P again, on the machine of row T", "P", epochs=50, batch=64),
        FlowerRecipe("T. P with 75 epochs (1.5× the time)", "P2", epochs=75, batch=64),
        # a twelfth session, in bfloat16 (train's default on this AMX machine since the eleventh):
        # P3 repeats P there; U-X each change one thing that bears on the flowers' shape
        FlowerRecipe("P3. P again, in bfloat16, on the machine of rows U-X", "P", epochs=50, batch=64),
        FlowerRecipe("U. P3 with self-attention at 8×8", "P3", epochs=50, batch=64, attention=True),
        FlowerRecipe("V. P3 with min-SNR-5 loss weighting", "P3", epochs=50, batch=64, min_snr=5.0),
        FlowerRecipe("W. P3 with dense bottleneck 128", "P3", epochs=50, batch=64, bottleneck=128),
        # X's network is 04's since the thirteenth session, trained for 30 epochs (confirmed on
        # 900 samples from two seeds each: bench/flower_channels.py, bench/RESULTS.md section 11)
        FlowerRecipe("X. P3 with channels 24, 48, 96 (1.5× as wide)", "P3", epochs=50, batch=64,
                     channels=(24, 48, 96)),
    ]


def network(recipe: FlowerRecipe) -> torch.nn.Module:
    """04's UNet for ``recipe``; with ``self_cond``, one that also reads its own x̂₀ estimate."""
    channels = 6 if recipe.self_cond else 3            # the picture, then (self_cond) its x̂₀ estimate
    unet = OptimizedUNet(img_ch=channels, size=32, channels=recipe.channels, T=150,
                         c_dim=len(SPECIES), bottleneck=recipe.bottleneck,
                         attention=recipe.attention, patch=recipe.patch)
    if not recipe.self_cond:
        return unet
    return SelfConditioned(unet, SCHEDULES[recipe.schedule](150), recipe.self_cond,
                           recipe.prediction)


class SelfConditioned(torch.nn.Module):
    """Self-conditioning (Chen et al. 2022, "Analog Bits", section 3.2): the network also reads
    its own latest estimate of x̂₀, as three more input channels.

    Training: for a share ``p`` of the batch, a first pass without gradients (the estimate input
    zero) gives x̂₀, and the second pass, the one the loss sees, reads it; the rest read zeros.
    Sampling (eval mode): each call reads the x̂₀ of the call before, which was one step noisier;
    a call at a timestep not below the last one's starts a new run, with zeros (and every call
    reads zeros with ``feedback = False``: the same network, sampled as if never
    self-conditioned). x̂₀ comes from the network's output as ``prediction`` says (v:
    sqrt(ᾱ)·x_t - sqrt(1-ᾱ)·v; eps: (x_t - sqrt(1-ᾱ)·eps)/sqrt(ᾱ)), clipped to [-1, 1]. The UNet
    is built for 6 channels in and out; only the first 3 outputs are used.
    """

    def __init__(self, unet: OptimizedUNet, schedule: ddpm.Schedule, p: float = 0.5,
                 prediction: str = "v"):
        super().__init__()
        self.unet, self.p, self.prediction = unet, p, prediction
        self.register_buffer("alpha_bars", schedule.alpha_bars.clone(), persistent=False)
        self.last = self.last_t = None
        self.feedback = True

    def estimate(self, x_t, t, out):
        ab = self.alpha_bars[t].reshape(-1, 1, 1, 1).to(x_t.dtype)
        if self.prediction == "v":
            x0 = ab.sqrt() * x_t - (1 - ab).sqrt() * out
        else:
            x0 = (x_t - (1 - ab).sqrt() * out) / ab.sqrt()
        return x0.clamp(-1, 1)

    def run(self, x_t, x0, t, c, c_mask):
        return self.unet(torch.cat((x_t, x0.to(x_t.dtype)), dim=1), t, c=c, c_mask=c_mask)[:, :3]

    def forward(self, x_t, t, c=None, c_mask=None):
        zeros = torch.zeros_like(x_t)
        if self.training:
            x0 = zeros
            shown = (torch.rand(len(x_t), device=x_t.device) < self.p).nonzero()[:, 0]
            if len(shown):
                with torch.no_grad():
                    first = self.run(x_t[shown], zeros[shown], t[shown], c[shown], c_mask[shown])
                x0 = zeros.index_copy(0, shown, self.estimate(x_t[shown], t[shown], first).to(zeros.dtype))
            return self.run(x_t, x0, t, c, c_mask)
        fresh = (not self.feedback or self.last is None or self.last.shape != x_t.shape
                 or int(t.max()) >= self.last_t)
        out = self.run(x_t, zeros if fresh else self.last, t, c, c_mask)
        self.last, self.last_t = self.estimate(x_t, t, out).detach(), int(t.max())
        return out


def conditional_loss(schedule: ddpm.Schedule, keep_prob: float = 0.9, min_snr: float | None = None,
                     prediction: str = "eps", lognormal: tuple | None = None):
    """04's loss: one-hot species, kept with probability ``keep_prob`` (04: 0.9); ``min_snr``
    weights it by min-SNR-γ; ``prediction="v"`` trains a v-prediction network instead, whose
    timesteps ``lognormal=(P_mean, P_std)`` draws as EDM draws its noise levels."""
    if prediction not in ("eps", "v") or (prediction == "eps" and lognormal is not None):
        raise ValueError(f"prediction must be 'eps' or 'v' (lognormal with v only), got {prediction!r}")

    def loss_fn(model, batch):
        images, labels = batch
        context = dict(c=one_hot(labels, len(SPECIES)),
                       c_mask=keep_mask(len(images), keep_prob, device=images.device))
        if prediction == "v":
            return ddpm.VDenoiser(model, schedule).loss(images, min_snr_gamma=min_snr,
                                                        lognormal=lognormal, **context)
        return ddpm.diffusion_loss(model, images, schedule, min_snr_gamma=min_snr, **context)
    return loss_fn


def train_by_epochs(recipe: FlowerRecipe, schedule: ddpm.Schedule, epochs: int, device=None,
                    **train_kwargs):
    """``recipe`` trained for ``epochs`` as notebook 04 trains its flowers: (history, seconds).

    Seeds with ``recipe.seed``, then loads the flipped 32×32 photos and builds the network, in
    04's order, so the same recipe gives the same weights in every script that calls this; a
    recipe with ``crop_from`` or ``zoom`` trains on cut-out views instead (:func:`training_data`).
    ``train_kwargs`` go on to ``course_lib.train.train`` (say, ``snapshot_epochs``).
    """
    config.seed_everything(recipe.seed)
    data = training_data(recipe, load_flowers(size=32, classes=SPECIES, flip=True))
    model = network(recipe)
    start = time.perf_counter()
    history = train(model, make_loader(data, recipe.batch, seed=recipe.seed),
                    conditional_loss(schedule, recipe.keep_prob, recipe.min_snr, recipe.prediction,
                                     recipe.lognormal), epochs=epochs,
                    lr=recipe.lr, ema_decay=recipe.ema, device=device, desc="04's flowers",
                    **train_kwargs)
    return history, time.perf_counter() - start


def training_data(recipe: FlowerRecipe, data):
    """04's photos (flipped at random), or the same photos loaded larger and cut back to 32 px per
    item: with ``crop_from``, a 32-px crop at a random place (shifted views); with ``zoom``, a
    random square of lo-hi of the 64-px photo's area, resized (zoomed-in views)."""
    if recipe.crop_from is None and recipe.zoom is None:
        return data
    if recipe.zoom is None:
        size, transform = recipe.crop_from, v2.RandomCrop(32)
    else:
        size, transform = 64, v2.RandomResizedCrop(32, scale=recipe.zoom, ratio=(1.0, 1.0), antialias=True)
    larger = load_flowers(size=size, classes=SPECIES, flip=False)
    return ImageContextDataset(larger.images, larger.labels, flip=True, transform=transform)


def run(recipe: FlowerRecipe, data, budget: float, per_species: int) -> dict:
    data = training_data(recipe, data)
    schedule = SCHEDULES[recipe.schedule](150)
    budget = budget * recipe.budget_scale
    loss_fn = conditional_loss(schedule, recipe.keep_prob, recipe.min_snr)
    scheduler = None
    if recipe.epochs:
        total = recipe.epochs * len(make_loader(data, recipe.batch))
    elif recipe.lr_schedule:
        total = int(budget * steps_per_second(lambda: network(recipe),
                                              make_loader(data, recipe.batch), loss_fn, recipe.lr))
    config.seed_everything(recipe.seed)
    model = network(recipe)
    optimizer = torch.optim.Adam(model.parameters(), lr=recipe.lr)
    if recipe.lr_schedule:
        scheduler = warmup_cosine(optimizer, total, warmup_steps=max(1, total // 20))
    start = time.perf_counter()
    history = train(model, make_loader(data, recipe.batch), loss_fn, epochs=recipe.epochs or 1000,
                    optimizer=optimizer, scheduler=scheduler, ema_decay=recipe.ema,
                    max_seconds=None if recipe.epochs else budget, desc=recipe.name[:2])
    seconds = time.perf_counter() - start
    asked = torch.arange(len(SPECIES)).repeat_interleave(per_species)
    samples = ddpm.sample_guided(history.ema.module.eval(), one_hot(asked, len(SPECIES)),
                                 (3, 32, 32), schedule, w=2.0, steps=50, clip_x0=True, seed=12)
    to_species = torch.tensor([FLOWER_CLASSES.index(s) for s in SPECIES])
    q = sample_quality(samples, "flowers", labels=to_species[asked])
    read_as = confusion_shares(samples, asked, "flowers")     # rows: species asked, in SPECIES order
    read_as_asked = read_as[torch.arange(len(SPECIES)), to_species]
    out = HERE / "out" / "flower_recipe"
    out.mkdir(parents=True, exist_ok=True)
    grid = samples.view(len(SPECIES), per_species, 3, 32, 32)[:, :12].flatten(0, 1)
    save_image(grid * 0.5 + 0.5, out / f"{recipe.name.split('.')[0]}.png", nrow=min(12, per_species))
    return {"name": recipe.name, "base": recipe.base, "steps": len(history.losses),
            "train_s": round(seconds, 1), "final_loss": round(history.final_loss, 4),
            "species": round(q.accuracy, 3), "recognised": round(q.recognisable, 3),
            "per_species": [round(v, 3) for v in read_as_asked.tolist()],
            "frechet": round(q.frechet, 1)}


def per_species(row: dict) -> str:
    """Each species' share read as itself ("-" for rows run before this was recorded)."""
    return " / ".join(f"{v:.0%}" for v in row["per_species"]) if "per_species" in row else "-"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=180.0, help="training seconds per row")
    parser.add_argument("--per-species", type=int, default=100, help="samples judged per species")
    parser.add_argument("--only", default=None, help="run only rows whose name starts with this")
    parser.add_argument("--append", action="store_true",
                        help="add the rows run now to bench/flower_recipe.json instead of replacing it")
    args = parser.parse_args(argv)
    data = load_flowers(size=32, classes=SPECIES, flip=True)
    real = real_quality("flowers", 32, n=10_000)
    rows = json.loads((HERE / "flower_recipe.json").read_text())["rows"] if args.append else []
    for recipe in pending(recipes(), rows, args.only):
        rows.append(run(recipe, data, args.budget, args.per_species))
        print(rows[-1], flush=True)
    order = [r.name for r in recipes()]
    rows.sort(key=lambda r: order.index(r["name"]) if r["name"] in order else len(order))
    head = (f"Recipe rows for 04's flowers (2 CPU cores, {platform.machine()}, torch "
            f"{torch.__version__}): {args.budget:.0f} s of training each (2× for rows saying so; "
            f"rows from O on train 50 epochs instead, T 75; from P3 on in bfloat16), {args.per_species} samples "
            f"per species (w = 2, DDIM-50, η = 1, x̂₀ clipped, same noise), judged by the 32×32 "
            f"flower judge. Real held-out photos: {real.accuracy:.0%} read as their species, "
            f"{real.recognisable:.0%} confidently. The Fréchet distance is to the 430 held-out "
            f"photos of all five species: rough, for comparing rows.")
    lines = [head, "", "| recipe | on top of | seconds | steps | final loss | requested species "
             f"| {' / '.join(SPECIES)} | judge confident | Fréchet distance |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['name']} | {r['base'] or '-'} | {r['train_s']:.0f} | {r['steps']} "
                     f"| {r['final_loss']:.4f} | {r['species']:.0%} | {per_species(r)} "
                     f"| {r['recognised']:.0%} "
                     f"| {r['frechet']:.1f} |")
    write_report("flower_recipe", lines, {
        "budget_s": args.budget, "per_species": args.per_species,
        "real_species": real.accuracy, "real_recognised": real.recognisable,
        "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
