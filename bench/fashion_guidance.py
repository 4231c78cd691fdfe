"""04's FashionMNIST model guided with and without clipping x̂₀ or rescaling: does strong guidance burn garments white?

    python bench/fashion_guidance.py                 # about 5 minutes on 2 cores
    python bench/fashion_guidance.py --per-class 5   # a quick look

Trains 04's class-conditional FashionMNIST model as notebook 04 does (03's fixed network with
c_dim = 10, scaled-linear schedule with T = 150, batches of 64, Adam lr 2e-3 with warm-up and
cosine decay, EMA 0.999 with warm-up, the class dropped 10% of the time, 3 epochs, seed 0), then
samples the same ``--per-class`` starting noises of every class with ``ddpm.sample_guided``
(DDIM-50, η = 1) at several guidance weights w: as 04 does (x̂₀ not clipped), with x̂₀ clipped
to [-1, 1] at every step (``clip_x0=True``, as 04's flowers and 05 sample), and with guidance
rescale φ = 0.7 (Lin et al. 2024, section 3.4: the guided ε rescaled towards the conditional
one's standard deviation, their cure for over-exposed images), and (seventeenth session) with
guidance only at the noise levels σ ∈ (0.28, 5.42] (Kynkäänniemi et al. 2024; ``interval`` of
``ddpm.CFGDenoiser``, from ``ddpm.guidance_interval``), the conditional prediction alone elsewhere.

Guidance extrapolates, ε = (1 + w)·ε_c − w·ε_∅. Where the schedule ends at pure noise (ᾱ_T =
2.7·10⁻⁵ here), the x̂₀ of the first steps divides that extrapolated ε by √ᾱ_t ≈ 0.005, far outside
the pixel range, and an unclipped sampler carries it on: a garment burnt into a white silhouette.
The judge reads each set: share read as the class asked for, share it is confident about,
Fréchet distance of its features to real test images, and the share of "burnt" pixels (x ≥ 0.95,
the white end of the range) beside the same share for real 16×16 test images. Writes
bench/fashion_guidance.md and .json and one grid per row to bench/out/fashion_guidance/.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from torchvision.utils import save_image

from course_lib import config
from course_lib.conditioning import keep_mask, one_hot
from course_lib.data import load_fashion_mnist, make_loader
from course_lib.ddpm import diffusion_loss, guidance_interval, sample_guided, scaled_linear_schedule
from course_lib.metrics import real_split, sample_quality
from course_lib.train import adam, train, warmup_cosine
from course_lib.unets import OptimizedUNet
from report import device_name, write_report  # bench/report.py

HERE = Path(__file__).resolve().parent
T = 150
EPOCHS = 3            # notebook 04's FASHION_EPOCHS (full profile)
SETTINGS = [  # (w, clip x̂₀, guidance rescale φ, guided only for σ in (σ_lo, σ_hi] or None: always)
    (1.0, False, 0.0, None), (1.0, True, 0.0, None),
    (2.0, False, 0.0, None), (2.0, True, 0.0, None), (2.0, False, 0.7, None),
    (3.0, False, 0.0, None), (3.0, True, 0.0, None), (3.0, False, 0.7, None),
    # seventeenth session: guidance in a limited interval (Kynkäänniemi et al. 2024's σ range)
    (2.0, False, 0.0, (0.28, 5.42)), (3.0, False, 0.0, (0.28, 5.42)),
]
BURNT = 0.95


def burnt(images: torch.Tensor) -> float:
    """Share of pixel values at the white end of the range (x ≥ 0.95): a burnt, blank garment."""
    return (images >= BURNT).float().mean().item()


def train_fashion_model(epochs: int = EPOCHS):
    """04's FashionMNIST model, trained as notebook 04 trains it: (EMA model, figures, schedule).
    Kept in bench/out/fashion_guidance/ and loaded from there the next time."""
    device = config.get_device(verbose=True)
    schedule = scaled_linear_schedule(T).to(device)

    def network():
        return OptimizedUNet(img_ch=1, size=16, channels=(16, 32, 64), T=T, c_dim=10, bottleneck=128)
    saved = HERE / "out" / "fashion_guidance" / f"model_{epochs}.pt"
    if saved.exists():
        state = torch.load(saved, weights_only=True)
        model = network()
        model.load_state_dict(state["weights"])
        print(f"loaded the model of an earlier run from {saved}")
        return model.to(device).eval(), state["trained"], schedule
    config.seed_everything(0)   # then data, loader and network in 04's order: the notebook's weights
    data = load_fashion_mnist(size=16, flip=False)
    loader = make_loader(data, 64)
    model = network()

    def loss_fn(m, batch):
        images, labels = batch
        return diffusion_loss(m, images, schedule, c=one_hot(labels, 10),
                              c_mask=keep_mask(len(images), 0.9, device=images.device))
    optimizer = adam(model.parameters(), lr=2e-3)
    scheduler = warmup_cosine(optimizer, epochs * len(loader), epochs * len(loader) // 20)
    start = time.perf_counter()
    history = train(model, loader, loss_fn, epochs=epochs, optimizer=optimizer, scheduler=scheduler,
                    ema_decay=0.999, device=device, desc="04's FashionMNIST")
    ema = history.ema.module.eval()
    trained = {"steps": len(history.losses), "final_loss": history.final_loss,
               "train_seconds": round(time.perf_counter() - start, 1)}
    saved.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"weights": ema.state_dict(), "trained": trained}, saved)
    return ema, trained, schedule


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-class", type=int, default=50, help="samples judged per class")
    args = parser.parse_args(argv)
    model, trained, schedule = train_fashion_model()
    device = schedule.betas.device
    labels = torch.arange(10).repeat_interleave(args.per_class)
    c = one_hot(labels, 10).to(device)
    out = HERE / "out" / "fashion_guidance"
    real, _, _ = real_split("fashion_mnist", 16)
    real_burnt = burnt(real)
    rows = []
    for w, clip, rescale, sigmas in SETTINGS:
        interval = guidance_interval(schedule, *sigmas) if sigmas else None
        start = time.perf_counter()
        samples = sample_guided(model, c, (1, 16, 16), schedule, w=w, clip_x0=clip, seed=7,
                                rescale=rescale, interval=interval, disable=True).cpu()
        seconds = time.perf_counter() - start
        q = sample_quality(samples, "fashion_mnist", labels=labels)
        rows.append({"w": w, "clip_x0": clip, "rescale": rescale, "sigmas": sigmas,
                     "interval": interval, "requested": round(q.accuracy, 3),
                     "recognised": round(q.recognisable, 3), "frechet": round(q.frechet, 1),
                     "burnt": round(burnt(samples), 4), "seconds": round(seconds, 1)})
        print(rows[-1], flush=True)
        grid = samples.view(10, args.per_class, 1, 16, 16)[:, :10].transpose(0, 1).flatten(0, 1)
        name = (f"w{w:g}" + ("_clipped" if clip else "") + (f"_rescale{rescale:g}" if rescale else "")
                + (f"_sigma{sigmas[0]:g}-{sigmas[1]:g}" if sigmas else ""))
        save_image(grid * 0.5 + 0.5, out / f"{name}.png", nrow=10)
    where = device_name()
    head = (f"04's FashionMNIST model ({where}, torch {torch.__version__}): trained as notebook 04 "
            f"does, {trained['steps']} steps (final loss {trained['final_loss']:.4f}), sampled "
            f"with DDIM-50, η = 1, from the same {args.per_class} starting noises per class in "
            f"every row; x̂₀ clipped to [-1, 1] at every step or not (04 as it is: not), guidance "
            f"rescale φ where the row gives one (04: 0), guidance only at the noise levels σ the "
            f"row gives (04: every step; Kynkäänniemi et al. 2024). Burnt: "
            f"share of pixel values at x ≥ {BURNT} (real 16×16 test images: {real_burnt:.1%}).")
    lines = [head, "", "| w | x̂₀ clipped | φ | guided for σ in | class asked for | judge confident "
             "| Fréchet distance | burnt pixels | seconds |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        where_guided = (f"({r['sigmas'][0]:g}, {r['sigmas'][1]:g}] (t {r['interval'][0]}–"
                        f"{r['interval'][1]})" if r["sigmas"] else "every step")
        lines.append(f"| {r['w']:g} | {'yes' if r['clip_x0'] else 'no'} | {r['rescale']:g} "
                     f"| {where_guided} "
                     f"| {r['requested']:.1%} "
                     f"| {r['recognised']:.1%} | {r['frechet']:.1f} | {r['burnt']:.1%} "
                     f"| {r['seconds']:.0f} |")
    write_report("fashion_guidance", lines, {"device": where, "per_class": args.per_class,
                                             **trained, "real_burnt": real_burnt, "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
