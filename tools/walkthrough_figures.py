"""Draw the walkthroughs' figures from the library, so that they show what the code computes.

    .venv/bin/python tools/walkthrough_figures.py

walkthroughs/figures/02_log_snr.png: the log signal-to-noise ratio of 02's and 03's schedules at
T = 150, with the level that 02's linear schedule stops at (the ᾱ_T = 0.22 trap).

walkthroughs/figures/02_loss_vs_t.png (+ .json, the figures the walkthrough quotes): the noise-
prediction loss at each step t, of the TimeUNet that notebook 02 leaves in
checkpoints/full/02_time_unet.pt (on held-out FashionMNIST), as the same error on x̂_0, and in 02's
2-D world beside the exact ε's loss, the floor no network goes below. Skipped, with a message,
until notebook 02 has run in the full profile.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
from matplotlib.figure import Figure  # noqa: E402

import torch  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

from course_lib import config  # noqa: E402
from course_lib.data import load_fashion_mnist  # noqa: E402
from course_lib.ddpm import (cosine_schedule, diffusion_loss, linear_schedule,  # noqa: E402
                             scaled_linear_schedule)
from course_lib.toy2d import ExactDenoiser, ToyDenoiser, example_mixture  # noqa: E402
from course_lib.train import load_checkpoint, train  # noqa: E402
from course_lib.unets import TimeUNet  # noqa: E402

FIGURES = Path(__file__).resolve().parent.parent / "walkthroughs" / "figures"
T = 150
SCHEDULES = {"linear (02)": linear_schedule, "scaled linear (03's fix)": scaled_linear_schedule,
             "cosine (04, 05)": cosine_schedule}


def log_snr(schedule) -> list[float]:
    """log SNR_t = log(ᾱ_t / (1 − ᾱ_t)) for t = 1..T: above 0, x_t holds more image than noise."""
    return [math.log(a / (1 - a)) for a in schedule.alpha_bars.double().tolist()]


def summary() -> dict[str, dict]:
    """Per schedule: ᾱ_T, log SNR at t = T, how many of the T steps hold more image than noise, and
    how many are nearly pure noise (log SNR below −5: ᾱ_t < 0.007)."""
    out = {}
    for name, make in SCHEDULES.items():
        schedule = make(T)
        curve = log_snr(schedule)
        out[name] = {"alpha_bar_T": float(schedule.alpha_bars[-1]), "log_snr_T": curve[-1],
                     "steps_above_0": sum(v > 0 for v in curve),
                     "steps_below_minus_5": sum(v < -5 for v in curve)}
    return out


def draw_log_snr(path: Path) -> Path:
    fig = Figure(figsize=(7.5, 4))
    ax = fig.subplots()
    for name, make in SCHEDULES.items():
        curve = log_snr(make(T))
        ax.plot(range(1, T + 1), curve, label=f"{name}: ends at {curve[-1]:.1f}")
    trap = log_snr(linear_schedule(T))[-1]
    ax.axhline(0, color="grey", linewidth=0.8)
    ax.text(3, 0.4, "as much image as noise", fontsize=8, color="grey")
    ax.axhline(trap, color="tab:blue", linestyle=":", linewidth=1)
    ax.text(3, trap - 0.6, f"02's training stops here: log SNR {trap:.2f} (ᾱ_T = 0.22);\n"
            "sampling starts from pure noise (log SNR = −∞)", fontsize=8, color="tab:blue", va="top")
    ax.set(xlabel="step t", ylabel="log SNR_t = log(ᾱ_t / (1 − ᾱ_t))",
           title=f"How much image each step's x_t holds, T = {T}")
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path


@torch.no_grad()
def loss_by_t(model, x0: torch.Tensor, schedule, seed: int = 0) -> list[float]:
    """E‖ε − ε_θ(x_t, t)‖² per element at each t = 0..T−1, on the same x_0 and ε at every t."""
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed), dtype=x0.dtype)
    out = []
    for t in range(schedule.T):
        steps = torch.full((len(x0),), t, dtype=torch.long)
        eps = model(schedule.q_sample(x0, steps, noise), steps)
        out.append(float(((noise - eps) ** 2).mean()))
    return out


def fashion_losses(checkpoint: Path, n: int = 1000) -> dict:
    """02's TimeUNet on ``n`` held-out FashionMNIST images (16×16): the ε loss at each t, and the
    same error on x̂_0 = (x_t − √(1−ᾱ_t)·ε_θ)/√ᾱ_t, which is (1−ᾱ_t)/ᾱ_t times the ε loss."""
    model = TimeUNet(img_ch=1, size=16, channels=(16, 32, 64), T=T)   # as notebook 02 builds it
    payload = load_checkpoint(checkpoint, model)
    model.eval()
    x0 = load_fashion_mnist(size=16, train=False, flip=False, limit=n).images
    schedule = linear_schedule(T)
    eps = loss_by_t(model, x0, schedule)
    ab = schedule.alpha_bars.double().tolist()
    losses = payload.get("losses", [])
    tail = losses[-max(1, len(losses) // 10):]
    return {"images": len(x0), "eps": eps, "x0": [e * (1 - a) / a for e, a in zip(eps, ab)],
            "training_final_loss": sum(tail) / len(tail) if tail else None,
            "training_steps": len(losses)}


def toy_losses(n_data: int = 20_000, epochs: int = 30, n: int = 4000) -> dict:
    """02's 2-D world: a ToyDenoiser trained as 02 trains it (unconditioned here), and the exact ε
    of the mixture, each scored at every t on the same ``n`` points."""
    torch.manual_seed(0)
    world, schedule = example_mixture(), scaled_linear_schedule(T)
    g = torch.Generator().manual_seed(0)
    data, _ = world.sample(n_data, generator=g)
    net = ToyDenoiser(T)
    loader = DataLoader(TensorDataset(data), batch_size=256, shuffle=True, generator=g)
    train(net, loader, lambda m, b: diffusion_loss(m, b[0], schedule), epochs=epochs, lr=3e-3,
          progress=False)
    x0, _ = world.sample(n, generator=g, dtype=torch.float64)
    exact = ExactDenoiser(world, schedule)
    return {"points": n, "trained": loss_by_t(lambda x, t: net(x.float(), t).double(), x0, schedule),
            "floor": loss_by_t(exact, x0, schedule)}


def draw_loss_vs_t(path: Path, fashion: dict, toy: dict) -> Path:
    steps = range(1, T + 1)
    fig = Figure(figsize=(12, 3.8))
    ax_eps, ax_x0, ax_toy = fig.subplots(1, 3)
    ax_eps.plot(steps, fashion["eps"], color="tab:blue")
    ax_eps.axhline(1, color="grey", linewidth=0.8, linestyle=":")
    ax_eps.text(T, 0.97, "a network that outputs zeros", fontsize=8, color="grey", ha="right",
                va="top")
    ax_eps.set(xlabel="step t", ylabel="E‖ε − ε_θ‖² per pixel", ylim=(0, 1.05),
               title=f"02's TimeUNet: noise-prediction loss\n({fashion['images']} held-out images, "
                     "linear schedule)")
    ax_x0.semilogy(steps, fashion["x0"], color="tab:orange")
    ax_x0.axhline(1, color="grey", linewidth=0.8, linestyle=":")
    ax_x0.set(xlabel="step t", ylabel="E‖x_0 − x̂_0‖² per pixel (log)",
              title="the same errors, on x̂_0: ×(1 − ᾱ_t)/ᾱ_t")
    ax_toy.plot(steps, toy["trained"], label="trained ToyDenoiser", color="tab:green")
    ax_toy.plot(steps, toy["floor"], label="exact ε (the floor)", color="black", linestyle="--")
    ax_toy.set(xlabel="step t", ylabel="E‖ε − ε_θ‖² per coordinate", ylim=(0, 1.05),
               title="02's 2-D world (scaled linear):\nthe loss no network goes below")
    ax_toy.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path


def loss_vs_t_summary(fashion: dict, toy: dict) -> dict:
    """The figures the walkthrough quotes (t counted from 1, as the notebooks print it)."""
    at = (1, 10, 75, 150)
    gap = [a - b for a, b in zip(toy["trained"], toy["floor"])]
    return {"images": fashion["images"], "training_final_loss": fashion["training_final_loss"],
            "eps_at": {t: round(fashion["eps"][t - 1], 4) for t in at},
            "x0_at": {t: round(fashion["x0"][t - 1], 4) for t in at},
            "eps_mean": round(sum(fashion["eps"]) / T, 4),
            "eps_share_first_third": round(sum(fashion["eps"][:T // 3]) / sum(fashion["eps"]), 4),
            "toy_floor_at": {t: round(toy["floor"][t - 1], 4) for t in at},
            "toy_trained_at": {t: round(toy["trained"][t - 1], 4) for t in at},
            "toy_floor_mean": round(sum(toy["floor"]) / T, 4),
            "toy_gap_mean": round(sum(gap) / T, 4)}


def main() -> int:
    print(draw_log_snr(FIGURES / "02_log_snr.png"))
    checkpoint = config.REPO_ROOT / "checkpoints" / "full" / "02_time_unet.pt"
    if checkpoint.is_file():
        fashion, toy = fashion_losses(checkpoint), toy_losses()
        print(draw_loss_vs_t(FIGURES / "02_loss_vs_t.png", fashion, toy))
        summary_path = FIGURES / "02_loss_vs_t.json"
        summary_path.write_text(json.dumps(loss_vs_t_summary(fashion, toy), indent=1) + "\n")
        print(summary_path.read_text())
    else:
        print(f"02_loss_vs_t.png not redrawn: it reads 02's trained model, {checkpoint}, which is "
              "not there; run notebooks/02_Diffusion_Models.ipynb in the full profile first")
    for name, row in summary().items():
        print(f"{name}: ᾱ_T {row['alpha_bar_T']:.2e}, log SNR_T {row['log_snr_T']:.2f}, "
              f"{row['steps_above_0']} of {T} steps hold more image than noise, "
              f"{row['steps_below_minus_5']} are nearly pure noise")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
