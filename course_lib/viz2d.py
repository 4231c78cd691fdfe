"""Pictures of the 2-D world (:mod:`course_lib.toy2d`): clouds, ε fields, paths, mode shares, guidance.

Like :mod:`course_lib.viz`, every helper builds a ``matplotlib.figure.Figure`` without pyplot,
labels every axis and gives every panel a title, and importing this module changes nothing in
the kernel (notebook 02's first cell turns on inline figures with ``%matplotlib inline``).
"""
from __future__ import annotations

from typing import Sequence

import torch
from matplotlib.figure import Figure

from .ddpm import Schedule
from .toy2d import ExactDenoiser, GaussianMixture, Grid, make_grid


COLORS = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown"]


def _mode_legend(fig: Figure, mixture: GaussianMixture) -> None:
    """A legend below the panels: which colour is which mode (and its class)."""
    from matplotlib.lines import Line2D
    handles = [Line2D([], [], marker="o", linestyle="", color=COLORS[k % len(COLORS)],
                      label=f"mode {k} (class {mixture.class_names[c]})")
               for k, c in enumerate(mixture.classes.tolist())]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8, frameon=False)


def _frame(ax, lim: float, title: str) -> None:
    ax.set(xlim=(-lim, lim), ylim=(-lim, lim), xlabel="x₁", ylabel="x₂", title=title)
    ax.set_aspect("equal")


def _contours(ax, mixture: GaussianMixture, lim: float, alpha_bar: float = 1.0,
              density: torch.Tensor | None = None, grid: Grid | None = None, **kw) -> None:
    """Density contours of q_t (or of a given grid density) behind a scatter."""
    grid = grid or make_grid(lim, 120)
    p = density if density is not None else mixture.log_prob(grid.points, alpha_bar).exp()
    ax.contour(grid.xs.numpy(), grid.ys.numpy(), p.reshape(grid.shape).numpy(),
               levels=kw.pop("levels", 6), colors=kw.pop("colors", "0.5"),
               linewidths=kw.pop("linewidths", 0.8), **kw)


def plot_forward_cloud(mixture: GaussianMixture, schedule: Schedule, steps: Sequence[int],
                       n: int = 1000, lim: float = 4.0,
                       generator: torch.Generator | None = None) -> Figure:
    """The forward process as a moving cloud: x_t of the same n points at several steps t.

    Colours are the components the points came from (legend below); grey lines are the exact q_t
    (eq. 1).
    """
    x0, k = mixture.sample(n, generator=generator, dtype=torch.float64)
    noise = torch.randn(x0.shape, generator=generator, dtype=torch.float64)
    fig = Figure(figsize=(2.7 * len(steps), 3.3))
    axes = fig.subplots(1, len(steps), squeeze=False)[0]
    for ax, t in zip(axes, steps):
        ab = float(schedule.alpha_bars[t])
        x_t = schedule.q_sample(x0, t, noise)
        _contours(ax, mixture, lim, ab)
        ax.scatter(*x_t.T.numpy(), s=2, c=[COLORS[i % len(COLORS)] for i in k.tolist()])
        _frame(ax, lim, f"t = {t}, ᾱ = {ab:.2f}")
    fig.suptitle("forward process: each blob drifts to the origin and spreads into N(0, I)")
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    _mode_legend(fig, mixture)
    return fig


@torch.no_grad()
def plot_eps_fields(model, mixture: GaussianMixture, schedule: Schedule, steps: Sequence[int],
                    lim: float = 4.0, n_arrows: int = 15) -> Figure:
    """Learned ε_θ (red arrows) against the exact ε* (black), over the error ‖ε_θ - ε*‖ (colour)."""
    exact = ExactDenoiser(mixture, schedule)
    fine, coarse = make_grid(lim, 100), make_grid(lim * 0.9, n_arrows)
    fig = Figure(figsize=(3.6 * len(steps) + 1, 3.6), layout="constrained")
    axes = fig.subplots(1, len(steps), squeeze=False)[0]
    for ax, t in zip(axes, steps):
        tt = torch.full((len(fine.points),), t)
        err = (model(fine.points.float(), tt).double() - exact(fine.points, tt)).norm(dim=1)
        im = ax.imshow(err.reshape(fine.shape).numpy(), origin="lower", cmap="magma_r",
                       extent=(-lim, lim, -lim, lim), vmin=0, vmax=1)
        tc = torch.full((len(coarse.points),), t)
        for eps, color in ((exact(coarse.points, tc), "black"),
                           (model(coarse.points.float(), tc).double(), "tab:red")):
            ax.quiver(*coarse.points.T.numpy(), *(-eps).T.numpy(), color=color, angles="xy",
                      scale_units="xy", scale=2.0, width=0.006)
        _frame(ax, lim, f"t = {t}: grid-mean error {err.mean():.2f}")
    fig.colorbar(im, ax=list(axes), label="‖ε_θ − ε*‖", shrink=0.8)
    fig.suptitle("−ε points towards the data: exact (black) vs learned (red)")
    return fig


def plot_paths(mixture: GaussianMixture, paths: dict[str, torch.Tensor], lim: float = 4.0,
               ) -> Figure:
    """Sampling paths from the same starts: ``paths[name]`` is (steps, N, 2), x_T first."""
    fig = Figure(figsize=(3.6 * len(paths), 3.8))
    axes = fig.subplots(1, len(paths), squeeze=False)[0]
    for ax, (name, path) in zip(axes, paths.items()):
        _contours(ax, mixture, lim)
        path = path.double()
        for i in range(path.shape[1]):
            color = COLORS[i % len(COLORS)]
            ax.plot(*path[:, i].T.numpy(), color=color, lw=0.9, alpha=0.8)
            ax.plot(*path[0, i].numpy(), "o", color=color, ms=3)
            ax.plot(*path[-1, i].numpy(), "*", color=color, ms=8, mec="black", mew=0.5)
        _frame(ax, lim, name)
    fig.suptitle("the same starts x_T (dots) to samples x_0 (stars)")
    fig.tight_layout()
    return fig


def plot_mode_shares(mixture: GaussianMixture, samples: dict[str, torch.Tensor],
                     lim: float = 4.0, title: str = "which modes get sampled") -> Figure:
    """A scatter per batch of samples, then bars: the share of each mode against π_k."""
    fig = Figure(figsize=(3.4 * len(samples) + 4.6, 3.6))
    axes = fig.subplots(1, len(samples) + 1, squeeze=False,
                        width_ratios=[1] * len(samples) + [1.4])[0]
    for ax, (name, x) in zip(axes, samples.items()):
        _contours(ax, mixture, lim)
        k = mixture.assign(x)
        ax.scatter(*x.double().T.numpy(), s=2, c=[COLORS[i % len(COLORS)] for i in k.tolist()])
        _frame(ax, lim, name)
    ax = axes[-1]
    K, width = mixture.K, 0.8 / len(samples)
    for j, (name, x) in enumerate(samples.items()):
        ax.bar([k + (j - (len(samples) - 1) / 2) * width for k in range(K)],
               mixture.mode_shares(x).numpy(), width=width, label=name,
               color=f"C{j}", alpha=0.75)
    ax.scatter(range(K), mixture.weights.numpy(), marker="_", s=600, color="black", zorder=3,
               label="π_k (the truth)")
    ax.set(xticks=range(K), xticklabels=[f"mode {k}\n{mixture.class_names[c]}" for k, c in
                                         enumerate(mixture.classes.tolist())],
           xlabel="mode (and its class)", ylabel="share of samples", title="mode shares vs π")
    ax.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_guidance(mixture: GaussianMixture, c: int, samples: dict[float, torch.Tensor],
                  lim: float = 4.0, grid: Grid | None = None) -> Figure:
    """Guided samples for class c at each w over the exact tilted density p(x)·p(c|x)^(1+w)."""
    grid = grid or make_grid(lim, 150)
    fig = Figure(figsize=(3.6 * len(samples), 3.9))
    axes = fig.subplots(1, len(samples), squeeze=False)[0]
    name = mixture.class_names[c]
    for ax, (w, x) in zip(axes, samples.items()):
        density = mixture.tilted_density(grid, c, w)
        ax.imshow(density.numpy(), origin="lower", extent=(-lim, lim, -lim, lim), cmap="Greys",
                  alpha=0.6)
        _contours(ax, mixture, lim, density=density.flatten(), grid=grid, colors="black",
                  levels=5)
        ax.scatter(*x.double().T.numpy(), s=2, color="tab:red", alpha=0.6)
        share = mixture.class_shares(x)[c].item()
        exact = mixture.grid_class_share(density, grid, c)
        _frame(ax, lim, f"w = {w:g}: {100 * share:.0f}% {name} (exact {100 * exact:.0f}%)")
    fig.suptitle(f"guidance towards class {name}: samples (red) and p(x)·p({name}|x)^(1+w) "
                 "(grey, contours)")
    fig.tight_layout()
    return fig
