"""Draw the walkthroughs' figures from the library, so that they show what the code computes.

    .venv/bin/python tools/walkthrough_figures.py

walkthroughs/figures/02_log_snr.png: the log signal-to-noise ratio of 02's and 03's schedules at
T = 150, with the level that 02's linear schedule stops at (the ᾱ_T = 0.22 trap).
"""
from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
from matplotlib.figure import Figure  # noqa: E402

from course_lib.ddpm import cosine_schedule, linear_schedule, scaled_linear_schedule  # noqa: E402

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


def main() -> int:
    print(draw_log_snr(FIGURES / "02_log_snr.png"))
    for name, row in summary().items():
        print(f"{name}: ᾱ_T {row['alpha_bar_T']:.2e}, log SNR_T {row['log_snr_T']:.2f}, "
              f"{row['steps_above_0']} of {T} steps hold more image than noise, "
              f"{row['steps_below_minus_5']} are nearly pure noise")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
