"""The training recipe of notebook 03, measured one change at a time in the same wall-clock budget.

    python bench/recipe.py --budget 150    # as stored in recipe.md: 150 s per row, 500 judged samples
    python bench/recipe.py --budget 150 --only R --append   # one more row
    python bench/recipe.py --budget 150 --only N3,V --append --report recipe_flower_loss
    python bench/recipe.py --budget 150 --only N4,W,X --report recipe_lr   # D's schedule taken away
    python bench/recipe.py --budget 20 --judged 64    # a quick look
    python bench/recipe.py --only F.,H.,N. --seeds 0,1,2 --report recipe_seeds   # seed spread

Every row trains 03's OptimizedUNet (channels 32, 64, 128 unless the row says otherwise; rows
L-V start from row H's 16, 32, 64; FashionMNIST 16×16, T = 150) from the same seed for the same
number of seconds, then draws the same 500 starting noises with DDIM-50, η = 1, and judges them
with the 16×16 FashionMNIST judge (course_lib/metrics.py): recognised share, Fréchet distance,
and the smallest and largest class share (real data: 10% each).
Rows add one change to the row named in "on top of". Writes bench/recipe.md and bench/recipe.json,
which notebook 03 draws; rows N3 and V (04's flower loss on 03's recipe, eighteenth session) went
to bench/recipe_flower_loss.md and .json instead, and rows N4, W and X (row D's learning-rate
schedule taken away again, thirty-fifth session) to bench/recipe_lr.md and .json. With
``--seeds``, each chosen row is trained once per seed (the training seed: weights, batches, steps'
noise; the judged starting noises stay the same) on one machine, into bench/recipe_seeds.md and
.json with the mean and spread of each row (thirty-seventh session: rows F, H and N, on which 03's
network rests, each decided on one training seed).
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from course_lib import config, ddpm
from course_lib.blocks import EmbedBlock, ResidualConvBlock
from course_lib.data import load_fashion_mnist, make_loader
from course_lib.metrics import real_quality
from course_lib.pace import steps_per_second
from course_lib.train import train, warmup_cosine
from course_lib.unets import OptimizedUNet, check_images, check_timesteps
from report import SCHEDULES, judged_figures, pending, write_report  # bench/report.py

HERE = Path(__file__).resolve().parent


@dataclass
class Recipe:
    name: str
    base: str | None = None
    schedule: str = "linear"            # linear (ᾱ_T = 0.22), scaled (×1000/T), cosine
    ema: float | None = None
    lr: float = 1e-3
    lr_schedule: bool = False           # linear warm-up, cosine decay to 10%
    min_snr: float | None = None
    batch: int = 128
    max_period: float = 10000.0         # the sinusoidal time embedding's slowest period
    channels: tuple = (32, 64, 128)     # width of the three levels
    bottleneck: int | None = None       # hidden width of the dense bottleneck (None: channels[1])
    encoder_time: bool = False          # t's embedding also added in the encoder
    deeper: bool = False                # a residual block more at 8×8 and at 4×4 (DeeperUNet)
    attention: bool = False             # a self-attention block on the 4×4 level
    budget_scale: float = 1.0           # training time, in units of --budget
    prediction: str = "eps"             # what the network predicts: eps, or v (ddpm.VDenoiser)
    betas: tuple = (0.9, 0.999)         # Adam's moment decay rates


def recipes() -> list[Recipe]:
    r = []
    r.append(Recipe("A. 03 as it was", schedule="linear"))
    r.append(Recipe("B. schedule ends at pure noise (scaled linear)", "A", schedule="scaled"))
    r.append(Recipe("B'. cosine schedule instead", "A", schedule="cosine"))
    r.append(Recipe("C. + EMA 0.999 with warm-up", "B", schedule="scaled", ema=0.999))
    r.append(Recipe("C'. EMA with warm-up, on the ᾱ_T = 0.22 schedule", "A", schedule="linear",
                    ema=0.999))
    r.append(Recipe("D. + lr 2e-3, warm-up and cosine decay", "C", schedule="scaled", ema=0.999,
                    lr=2e-3, lr_schedule=True))
    r.append(Recipe("E. + min-SNR-5 loss weighting", "D", schedule="scaled", ema=0.999, lr=2e-3,
                    lr_schedule=True, min_snr=5.0))
    r.append(Recipe("F. batch 64 instead of 128", "D", schedule="scaled", ema=0.999, lr=2e-3,
                    lr_schedule=True, batch=64))
    r.append(Recipe("G. + time-embedding max period P = T", "D", schedule="scaled", ema=0.999,
                    lr=2e-3, lr_schedule=True, max_period=150.0))
    # rows H-J were run in a later session on another machine: F2 re-runs F there as their reference
    f = dict(schedule="scaled", ema=0.999, lr=2e-3, lr_schedule=True, batch=64)
    r.append(Recipe("F2. F again, on the machine of rows H-J", "F", **f))
    r.append(Recipe("H. narrower: channels 16, 32, 64", "F2", channels=(16, 32, 64), **f))
    r.append(Recipe("I. wider: channels 48, 96, 192", "F2", channels=(48, 96, 192), **f))
    r.append(Recipe("J. 3× the training time", "F2", budget_scale=3.0, **f))
    r.append(Recipe("K. narrower, 2× the training time", "H", channels=(16, 32, 64),
                    budget_scale=2.0, **f))
    h = dict(f, channels=(16, 32, 64))
    r.append(Recipe("L. v-prediction", "H", prediction="v", **h))
    r.append(Recipe("M. batch 32 instead of 64", "H", **dict(h, batch=32)))
    r.append(Recipe("N. dense bottleneck 4× wider (128)", "H", bottleneck=128, **h))
    r.append(Recipe("O. time embedding in the encoder too", "H", encoder_time=True, **h))
    r.append(Recipe("P. N and O together", "N", bottleneck=128, encoder_time=True, **h))
    r.append(Recipe("Q. dense bottleneck 8× wider (256)", "N", bottleneck=256, **h))
    r.append(Recipe("R. + self-attention at 4×4", "N", bottleneck=128, attention=True, **h))
    n = dict(h, bottleneck=128)
    # rows S-T were run in a later session on a faster machine: N2 re-runs N there as their reference
    r.append(Recipe("N2. N again, on the machine of rows S-T", "N", **n))
    r.append(Recipe("S. lr 4e-3 instead of 2e-3", "N2", **dict(n, lr=4e-3)))
    r.append(Recipe("T. Adam β₂ 0.99 instead of 0.999", "N2", betas=(0.9, 0.99), **n))
    r.append(Recipe("U. deeper: a residual block more at 8×8 and 4×4", "N2", deeper=True, **n))
    # eighteenth session: 04's flower loss (v-prediction weighted by min-SNR-5, bench/RESULTS.md
    # section 16) on 03's recipe; N3 re-runs N on the same machine as its reference (row L: v alone)
    r.append(Recipe("N3. N again, on the machine of row V", "N", **n))
    r.append(Recipe("V. v-prediction weighted by min-SNR-5", "N3", **dict(n, prediction="v", min_snr=5.0)))
    # thirty-fifth session: row D bundled a higher rate with its warm-up and decay, and no row took
    # them away again; on the adopted network (N), N4 re-runs N as the reference of rows W and X
    r.append(Recipe("N4. N again, on the machine of rows W-X", "N", **n))
    r.append(Recipe("W. constant lr 2e-3 (no warm-up, no decay)", "N4", **dict(n, lr_schedule=False)))
    r.append(Recipe("X. constant lr 1e-3 (row C's)", "N4", **dict(n, lr=1e-3, lr_schedule=False)))
    return r




class EncoderTimeUNet(OptimizedUNet):
    """Row O: 03's network with t's embedding also added after down0 and down1, as DDPM's UNet
    adds it in every block, so that the encoder knows the noise level too (unconditional only)."""

    def __init__(self, *args, channels=(32, 64, 128), t_dim: int = 32, **kwargs):
        super().__init__(*args, channels=channels, t_dim=t_dim, **kwargs)
        self.t_emb_down0 = EmbedBlock(t_dim, channels[0])
        self.t_emb_down1 = EmbedBlock(t_dim, channels[1])

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        check_timesteps(t, len(x), self.T)
        check_images(x, self.img_ch, self.size)
        t = self.sinusoidal(t)
        down0 = self.down0(x) + self.t_emb_down0(t)
        down1 = self.down1(down0) + self.t_emb_down1(t)
        down2 = self.down2(down1)
        up1 = self.up1(self.up0(self.bottleneck(down2)) + self.t_emb1(t), down2)
        up2 = self.up2(up1 + self.t_emb2(t), down1)
        return self.out(torch.cat((up2, down0), dim=1))


class DeeperUNet(OptimizedUNet):
    """Row U: depth instead of width, 03's network with a ResidualConvBlock more after down1
    (8×8) and after down2 (4×4): each level computes more without getting wider."""

    def __init__(self, *args, channels=(32, 64, 128), **kwargs):
        super().__init__(*args, channels=channels, **kwargs)
        self.deep1 = ResidualConvBlock(channels[1], channels[1])
        self.deep2 = ResidualConvBlock(channels[2], channels[2])

    def encode(self, x: torch.Tensor):
        check_images(x, self.img_ch, self.size)
        down0 = self.down0(x)
        down1 = self.deep1(self.down1(down0))
        down2 = self.deep2(self.down2(down1))
        return down0, down1, down2, self.up0(self.bottleneck(down2))


def network(recipe: Recipe) -> OptimizedUNet:
    kind = (EncoderTimeUNet if recipe.encoder_time else DeeperUNet if recipe.deeper
            else OptimizedUNet)
    return kind(1, 16, channels=recipe.channels, T=150, max_period=recipe.max_period,
                bottleneck=recipe.bottleneck, attention=recipe.attention)


def run(recipe: Recipe, data, budget: float, judged: int, seed: int = 0) -> dict:
    schedule = SCHEDULES[recipe.schedule](150)
    budget = budget * recipe.budget_scale
    scheduler = None
    if recipe.lr_schedule:      # total steps from this recipe's measured speed on this machine
        total = int(budget * steps_per_second(
            lambda: network(recipe), make_loader(data, recipe.batch),
            lambda m, batch: ddpm.diffusion_loss(m, batch[0], schedule), recipe.lr))
    config.seed_everything(seed)
    model = network(recipe)
    optimizer = torch.optim.Adam(model.parameters(), lr=recipe.lr, betas=recipe.betas)
    if recipe.lr_schedule:
        scheduler = warmup_cosine(optimizer, total, warmup_steps=max(1, total // 20))

    def loss_fn(m, batch):
        if recipe.prediction == "v":
            return ddpm.VDenoiser(m, schedule).loss(batch[0], min_snr_gamma=recipe.min_snr)
        return ddpm.diffusion_loss(m, batch[0], schedule, min_snr_gamma=recipe.min_snr)

    start = time.perf_counter()
    history = train(model, make_loader(data, recipe.batch), loss_fn, epochs=100,
                    optimizer=optimizer, scheduler=scheduler, ema_decay=recipe.ema,
                    max_seconds=budget, desc=recipe.name[:2])
    seconds = time.perf_counter() - start
    sampler = (history.ema.module if history.ema is not None else model).eval()
    if recipe.prediction == "v":
        sampler = ddpm.VDenoiser(sampler, schedule)
    noise = torch.randn(judged, 1, 16, 16, generator=torch.Generator().manual_seed(5))
    samples = ddpm.sample_ddim(sampler, noise, schedule, steps=50, eta=1.0,
                               generator=torch.Generator().manual_seed(6))
    return {"name": recipe.name, "base": recipe.base, "seed": seed, "steps": len(history.losses),
            "train_s": round(seconds, 1), "final_loss": round(history.final_loss, 4),
            **judged_figures(samples)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=150.0, help="training seconds per row "
                        "(150: every row of bench/recipe.md)")
    parser.add_argument("--judged", type=int, default=500)
    parser.add_argument("--only", default=None, help="run only rows whose name starts with this")
    parser.add_argument("--append", action="store_true",
                        help="add the rows run now to the report's .json instead of replacing it")
    parser.add_argument("--report", default="recipe",
                        help="name of the .md/.json written (rows N3 and V: recipe_flower_loss; "
                        "N4, W and X: recipe_lr)")
    parser.add_argument("--seeds", default=None,
                        help="comma-separated training seeds: each chosen row once per seed, into "
                             "a table with each row's mean and spread (use with --only, --report)")
    args = parser.parse_args(argv)
    data = load_fashion_mnist(size=16, flip=True)
    real = real_quality("fashion_mnist", 16, n=args.judged)
    stored = HERE / f"{args.report}.json"
    rows = json.loads(stored.read_text())["rows"] if args.append and stored.exists() else []
    if args.seeds is not None:
        seeds = [int(s) for s in args.seeds.split(",")]
        done = {(r["name"], r.get("seed", 0)) for r in rows}
        for seed in seeds:          # one seed of every row, then the next: machine drift spreads evenly
            for recipe in pending(recipes(), [], args.only):
                if (recipe.name, seed) not in done:
                    rows.append(run(recipe, data, args.budget, args.judged, seed))
                    print(rows[-1], flush=True)
                    report(args.report, rows, args.budget, args.judged, real.recognisable,
                           real.frechet, seeded=True)
        return 0
    for recipe in pending(recipes(), rows, args.only):
        rows.append(run(recipe, data, args.budget, args.judged))
        print(rows[-1], flush=True)
    report(args.report, rows, args.budget, args.judged, real.recognisable, real.frechet)
    return 0


def report(name: str, rows: list[dict], budget: float, judged: int, real_recognised: float,
           real_frechet: float, seeded: bool = False) -> None:
    """The rows as bench/<name>.md (a table) and .json; ``seeded``: rows trained from several
    seeds, with a seed column and each recipe's mean and range below."""
    head = (f"Recipe rows for 03 (2 CPU cores, {platform.machine()}, torch {torch.__version__}): "
            f"{budget:.0f} s of training each{', from the training seed in the seed column' if seeded else ''}, "
            f"{judged} samples (DDIM-50, η = 1, same "
            f"noise), judged by the 16×16 FashionMNIST judge. Real 16×16 test images: "
            f"{real_recognised:.0%} recognised, Fréchet distance {real_frechet:.1f}.")
    seed_head, seed_rule = ("| seed ", "|---") if seeded else ("", "")
    lines = [head, "", f"| recipe {seed_head}| on top of | seconds | steps | final loss | recognised "
             "| Fréchet distance | smallest class | largest class |",
             f"|---{seed_rule}|---|---|---|---|---|---|---|---|"]
    for r in rows:
        seed = f"| {r['seed']} " if seeded else ""
        lines.append(f"| {r['name']} {seed}| {r['base'] or '-'} | {r['train_s']:.0f} | {r['steps']} "
                     f"| {r['final_loss']:.4f} "
                     f"| {r['recognised']:.0%} | {r['frechet']:.1f} | {r['min_class_share']:.0%} "
                     f"| {r['max_class_share']:.0%} |")
    if seeded:
        lines += ["", "| recipe | seeds | recognised: mean (range) | Fréchet distance: mean (range) |",
                  "|---|---|---|---|"]
        for recipe in dict.fromkeys(r["name"] for r in rows):
            rec = [r["recognised"] for r in rows if r["name"] == recipe]
            fd = [r["frechet"] for r in rows if r["name"] == recipe]
            lines.append(f"| {recipe} | {len(rec)} | {sum(rec) / len(rec):.0%} "
                         f"({min(rec):.0%}–{max(rec):.0%}) | {sum(fd) / len(fd):.1f} "
                         f"({min(fd):.1f}–{max(fd):.1f}) |")
    write_report(name, lines, {
        "budget_s": budget, "judged": judged, "real_recognised": real_recognised,
        "real_frechet": real_frechet, "rows": rows})


if __name__ == "__main__":
    raise SystemExit(main())
