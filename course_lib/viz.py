"""Pictures of the course: image grids, loss curves, quality bars, strips over time, animations.

Every helper builds a ``matplotlib.figure.Figure`` directly (not through pyplot), so
a notebook cell that ends with the call shows the figure exactly once, and tests can
inspect it without a display. Importing this module changes nothing in the kernel: a notebook
turns on inline figures itself with ``%matplotlib inline`` in its first cell.
"""
from __future__ import annotations

import textwrap
from typing import Sequence

import torch
from matplotlib.animation import FuncAnimation
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from torchvision.utils import make_grid

from .data import to_display


def _finish(fig: Figure, ax, title: str | None) -> Figure:
    """Title the axes (if given) and tighten the layout: the last lines of every plot here."""
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return fig


def _as_image(x: torch.Tensor):
    """(C, H, W) in [-1, 1] -> array for imshow (H, W) grey or (H, W, 3) colour."""
    x = to_display(x)
    return x[0].numpy() if x.shape[0] == 1 else x.permute(1, 2, 0).numpy()


def show_images(batch: torch.Tensor, nrow: int = 8, title: str | None = None,
                scale: float = 1.0) -> Figure:
    """Grid of a batch (B, C, H, W) of images in [-1, 1]."""
    if batch.ndim != 4:
        raise ValueError(f"show_images wants a batch (B, C, H, W), got shape {tuple(batch.shape)}")
    grid = make_grid(to_display(batch), nrow=nrow, padding=1, pad_value=1.0)
    rows = (len(batch) + nrow - 1) // nrow
    fig = Figure(figsize=(scale * min(nrow, len(batch)) * 0.9, scale * rows * 0.9 + 0.4))
    ax = fig.add_subplot()
    ax.imshow(grid.permute(1, 2, 0).numpy(), cmap="gray", vmin=0, vmax=1)
    ax.axis("off")
    return _finish(fig, ax, title)


def show_rows(rows: Sequence[torch.Tensor], labels: Sequence[str],
              columns: Sequence[str] | None = None, title: str | None = None,
              scale: float = 1.0) -> Figure:
    """Several batches as labelled rows (e.g. original / noisy / predicted).

    ``labels`` name the rows (left of each row); ``columns``, if given, name the columns (above
    the top row, e.g. the class of each column or the time of each frame); ``title`` goes above it all.
    """
    if len(labels) != len(rows):
        raise ValueError(f"{len(rows)} rows but {len(labels)} row labels: give one label per row")
    n = max(len(r) for r in rows)
    if columns is not None and len(columns) != n:
        raise ValueError(f"the widest row has {n} images but there are {len(columns)} column "
                         "labels: give one label per column")
    width = max(8, int(scale * 0.9 * 15))     # characters that fit above one image at fontsize 9
    columns = [textwrap.fill(name, width) for name in columns or []]
    lines = max((name.count("\n") + 1 for name in columns), default=0)
    # Sizes in inches: square cells 5% apart, room at the left for the row labels and above the
    # grid for the column labels and the title.
    fig_w, left, right, gap = scale * (n + 1.5) * 0.9, 0.14, 0.98, 0.05
    cell = (right - left) * fig_w / (n + gap * (n - 1))
    grid_h = cell * (len(rows) + gap * (len(rows) - 1))
    top_in = 0.05 + (0.17 * lines + 0.08 if lines else 0.0) + (0.3 if title else 0.0)
    fig = Figure(figsize=(fig_w, grid_h + top_in + 0.05))
    fig_h = fig.get_figheight()
    axes = fig.subplots(len(rows), n, squeeze=False)
    fig.subplots_adjust(left=left, right=right, bottom=0.05 / fig_h, top=1 - top_in / fig_h,
                        wspace=gap, hspace=gap)
    if title:
        fig.suptitle(title, y=1 - 0.05 / fig_h, va="top", fontsize=10)
    for r, (batch, label) in enumerate(zip(rows, labels)):
        for c in range(n):
            ax = axes[r][c]
            ax.axis("off")
            if c < len(batch):
                ax.imshow(_as_image(batch[c]), cmap="gray", vmin=0, vmax=1)
        axes[r][0].text(-0.15, 0.5, label, transform=axes[r][0].transAxes, ha="right",
                        va="center")
    for c, name in enumerate(columns):
        axes[0][c].set_title(name, fontsize=9)
    return fig


def show_captioned(images: torch.Tensor, captions: Sequence[str], ncol: int = 4,
                   scale: float = 1.0) -> Figure:
    """Images with a caption under each (e.g. photos and the text CLIP is trained on)."""
    if len(images) != len(captions):
        raise ValueError(f"{len(images)} images but {len(captions)} captions")
    rows = (len(images) + ncol - 1) // ncol
    fig = Figure(figsize=(scale * ncol * 2.2, scale * rows * 2.5))
    axes = fig.subplots(rows, ncol, squeeze=False)
    for k, ax in enumerate(axes.flat):
        ax.axis("off")
        if k < len(images):
            ax.imshow(_as_image(images[k]), cmap="gray", vmin=0, vmax=1)
            ax.set_title(textwrap.fill(captions[k], 24), fontsize=8)
    fig.tight_layout()
    return fig


def show_strip(frames: Sequence[torch.Tensor], labels: Sequence[str] | None = None,
               title: str | None = None, scale: float = 1.0) -> Figure:
    """Images of one or more samples over time: ``frames[k]`` is a batch (B, C, H, W) at time k.

    Rows are samples, columns are times; ``labels`` name the columns.
    """
    rows = len(frames[0])
    cols = len(frames)
    fig = Figure(figsize=(scale * cols * 1.0, scale * rows * 1.0 + (0.5 if title else 0.2)))
    axes = fig.subplots(rows, cols, squeeze=False)
    for c, batch in enumerate(frames):
        for r in range(rows):
            ax = axes[r][c]
            ax.imshow(_as_image(batch[r]), cmap="gray", vmin=0, vmax=1)
            ax.axis("off")
        if labels is not None:
            axes[0][c].set_title(labels[c], fontsize=8)
    if title:
        fig.suptitle(title)
    return fig


def plot_losses(curves: dict[str, Sequence[float]] | Sequence[float], smooth: int = 20,
                title: str = "training loss", log: bool = False) -> Figure:
    """Loss per step (faint) and its running mean over ``smooth`` steps; one line per curve."""
    if not isinstance(curves, dict):
        curves = {"loss": curves}
    fig = Figure(figsize=(6, 3.2))
    ax = fig.add_subplot()
    for name, values in curves.items():
        v = torch.as_tensor(list(values), dtype=torch.float32)
        line, = ax.plot(v.numpy(), alpha=0.25)
        if len(v) >= smooth > 1:
            mean = v.unfold(0, smooth, 1).mean(1)
            ax.plot(range(smooth - 1, len(v)), mean.numpy(), color=line.get_color(), label=name)
        else:
            line.set_label(name)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    if log:
        ax.set_yscale("log")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    return fig


def plot_schedules(schedules: dict) -> Figure:
    """beta_t and ᾱ_t (with the signal and noise weights sqrt(ᾱ_t), sqrt(1-ᾱ_t)) of each schedule."""
    fig = Figure(figsize=(10, 3.2))
    ax_beta, ax_ab = fig.subplots(1, 2)
    for name, s in schedules.items():
        line, = ax_beta.plot(s.betas.cpu().numpy(), label=name)
        ab = s.alpha_bars.cpu()
        ax_ab.plot(ab.sqrt().numpy(), color=line.get_color(), label=f"{name}: √ᾱ (signal)")
        ax_ab.plot((1 - ab).sqrt().numpy(), color=line.get_color(), linestyle="--",
                   label=f"{name}: √(1-ᾱ) (noise)")
    ax_beta.set(title="β_t: noise added at step t", xlabel="t")
    ax_ab.set(title="how much image and noise x_t holds", xlabel="t")
    ax_beta.legend()
    ax_ab.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_quality(results: dict, title: str = "sample quality") -> Figure:
    """Bars per named batch: % recognisable (and % as the requested class), and Fréchet distance.

    ``results`` maps a name to anything with ``recognisable``, ``frechet`` and ``accuracy``
    attributes (e.g. :class:`course_lib.metrics.Quality`); the Fréchet axis is logarithmic.
    """
    if not results:
        raise ValueError("plot_quality needs at least one named result")
    names = list(results)
    ys = range(len(names))
    has_acc = any(results[n].accuracy is not None for n in names)
    inches = 0.5 * len(names) + 1.4 + 0.3 * has_acc      # room for the legend below the bars
    fig = Figure(figsize=(10, inches))
    ax_rec, ax_fd = fig.subplots(1, 2, sharey=True)
    rec = [100 * results[n].recognisable for n in names]
    acc = [100 * (results[n].accuracy or 0) for n in names]
    height = 0.4 if has_acc else 0.7
    ax_rec.barh([y - height / 2 * has_acc for y in ys], rec, height=height,
                label="recognised (confidence ≥ 0.9)")
    if has_acc:
        ax_rec.barh([y + height / 2 for y in ys], acc, height=height,
                    label="classified as the requested class (real images: as their own)")
        fig.legend(*ax_rec.get_legend_handles_labels(), fontsize=8, loc="lower left",
                   ncol=2, frameon=False)
    for y, v in zip(ys, rec):
        ax_rec.text(v + 1, y - height / 2 * has_acc, f"{v:.0f}%", va="center", fontsize=8)
    for y, n in zip(ys, names):
        if results[n].accuracy is not None:
            ax_rec.text(acc[y] + 1, y + height / 2, f"{acc[y]:.0f}%", va="center", fontsize=8)
    ax_rec.set(xlim=(0, 115), xlabel="% of samples (higher is better)", yticks=list(ys),
               yticklabels=names)
    fds = [results[n].frechet for n in names]
    ax_fd.barh(list(ys), fds, color="tab:red", height=0.7)
    for y, v in zip(ys, fds):
        ax_fd.text(v * 1.05, y, f"{v:.1f}", va="center", fontsize=8)
    ax_fd.set_xscale("log")
    ax_fd.set(xlim=(min(fds) / 2, max(fds) * 4), xlabel="Fréchet distance (lower is better)")
    ax_rec.invert_yaxis()
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.3 * has_acc / inches, 1, 1))
    return fig


def plot_pace(estimate, targets: dict[str, float], title: str | None = None) -> Figure:
    """Bars per notebook: minutes in the measured run (``estimate.measured``) beside the minutes
    estimated here (``estimate.minutes``), with each notebook's target (``targets``, by its two-digit
    number) as a black tick. ``estimate`` is a :class:`course_lib.pace.Estimate`."""
    if not estimate.minutes:
        raise ValueError("plot_pace needs an estimate with minutes (there is none on a GPU)")
    stems = list(estimate.minutes)
    ys = range(len(stems))
    fig = Figure(figsize=(8, 0.45 * len(stems) + 2.2))
    ax = fig.add_subplot()
    ax.barh([y - 0.2 for y in ys], [estimate.measured[s] for s in stems], height=0.4,
            color="lightgrey", label=f"measured: {estimate.machine}")
    ax.barh([y + 0.2 for y in ys], [estimate.minutes[s] for s in stems], height=0.4,
            color="tab:blue", label="estimated on this machine")
    for y, s in zip(ys, stems):
        ax.text(estimate.minutes[s] + 0.1, y + 0.2, f"{estimate.minutes[s]:.1f}", va="center",
                fontsize=8)
    limits = [targets.get(s[:2]) for s in stems]
    ax.scatter([v for v in limits if v is not None],
               [y for y, v in zip(ys, limits) if v is not None],
               marker="|", s=300, color="black", label="the notebook's time target")
    ax.set(xlabel="minutes, full profile", ylabel="notebook", yticks=list(ys), yticklabels=stems,
           xlim=(0, 1.15 * max(*estimate.minutes.values(), *estimate.measured.values(),
                               *(v for v in limits if v is not None))))
    ax.invert_yaxis()
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=2, frameon=False)
    return _finish(fig, ax, title)


def plot_class_shares(shares: dict[str, Sequence[float]], classes: Sequence[str],
                      title: str = "which classes are drawn") -> Figure:
    """Grouped bars: the share of each batch that a classifier puts in each class."""
    if not shares:
        raise ValueError("plot_class_shares needs at least one named batch")
    fig = Figure(figsize=(10, 3.2))
    ax = fig.add_subplot()
    width = 0.8 / len(shares)
    for k, (name, values) in enumerate(shares.items()):
        values = [100 * float(v) for v in values]
        if len(values) != len(classes):
            raise ValueError(f"{name!r} has {len(values)} shares for {len(classes)} classes")
        ax.bar([i + (k - (len(shares) - 1) / 2) * width for i in range(len(classes))], values,
               width=width, label=name)
    ax.axhline(100 / len(classes), color="grey", linestyle="--", lw=1,
               label="real data (equal shares)")
    ax.set_xticks(range(len(classes)), classes, rotation=20)
    ax.set(ylabel="% of samples", title=title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_confusion(matrices: dict[str, torch.Tensor], asked: Sequence[str], read: Sequence[str],
                   title: str = "what the judge reads") -> Figure:
    """One heat map per named matrix: row = what was asked for, column = what the judge reads,
    each cell the % of that row's images (e.g. :func:`course_lib.metrics.confusion_shares`)."""
    if not matrices:
        raise ValueError("plot_confusion needs at least one named matrix")
    for name, m in matrices.items():
        if tuple(m.shape) != (len(asked), len(read)):
            raise ValueError(f"{name!r} is {tuple(m.shape)}; expected ({len(asked)}, {len(read)}):"
                             f" one row per name in asked, one column per name in read")
    fig = Figure(figsize=(1.1 * len(read) * len(matrices) + 1.5, 0.6 * len(asked) + 1.8))
    axes = fig.subplots(1, len(matrices), squeeze=False)[0]
    for ax, (name, m) in zip(axes, matrices.items()):
        pct = 100 * m.detach().cpu().float()
        ax.imshow(pct.numpy(), cmap="Blues", vmin=0, vmax=100)
        for i, row in enumerate(pct.tolist()):
            for j, v in enumerate(row):
                ax.text(j, i, f"{v:.0f}%", ha="center", va="center", fontsize=8,
                        color="white" if v > 60 else "black")
        ax.set_xticks(range(len(read)), read, rotation=30)
        ax.set_yticks(range(len(asked)), asked)
        ax.set(xlabel="the judge reads", ylabel="asked for", title=name)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_sweep(x: Sequence[float], curves: dict[str, Sequence[float]], xlabel: str,
               ylabel: str, title: str | None = None,
               right: dict[str, Sequence[float]] | None = None,
               right_label: str | None = None,
               reference: dict[str, float] | None = None,
               reference_label: str = "real images") -> Figure:
    """Measures against a setting (e.g. accuracy against guidance w); ``right`` on a second axis.

    ``reference``: for any curve's name, a level to draw as a dotted line in that curve's colour
    (what ``reference_label`` scores, e.g. real images). The legend sits below the axes, so it
    never hides a point.
    """
    reference = dict(reference or {})
    unknown = set(reference) - set(curves) - set(right or {})
    if unknown:
        raise ValueError(f"reference names {sorted(unknown)} are not curves: "
                         f"{sorted(curves) + sorted(right or {})}")
    fig = Figure(figsize=(6.5, 4.2))
    ax = fig.add_subplot()
    for name, ys in curves.items():
        line, = ax.plot(list(x), list(ys), marker="o", label=name)
        if name in reference:
            ax.axhline(reference[name], color=line.get_color(), ls=":", lw=1)
    ax.set(xlabel=xlabel, ylabel=ylabel)
    handles, labels = ax.get_legend_handles_labels()
    if right:
        ax2 = ax.twinx()
        for name, ys in right.items():
            ax2.plot(list(x), list(ys), marker="s", linestyle="--", color="tab:red", label=name)
            if name in reference:
                ax2.axhline(reference[name], color="tab:red", ls=":", lw=1)
        ax2.set_ylabel(right_label or "")
        h2, l2 = ax2.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    if reference:
        handles.append(Line2D([], [], color="grey", ls=":", lw=1))
        labels.append(f"dotted: {reference_label}")
    ax.legend(handles, labels, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16),
              ncol=2, frameon=False)
    ax.grid(alpha=0.3)
    return _finish(fig, ax, title)


def animate(frames: Sequence[torch.Tensor], nrow: int = 8, interval: int = 80,
            titles: Sequence[str] | None = None) -> FuncAnimation:
    """Animation of a batch over time (e.g. the reverse process); ``frames[k]`` is (B, C, H, W).

    In a notebook, show it with ``HTML(anim.to_jshtml())`` or use :func:`animation_html`.
    """
    grids = [make_grid(to_display(f), nrow=nrow, padding=1, pad_value=1.0).permute(1, 2, 0).numpy()
             for f in frames]
    fig = Figure(figsize=(min(nrow, len(frames[0])) * 0.8, ((len(frames[0]) + nrow - 1) // nrow)
                          * 0.8 + 0.4))
    ax = fig.add_subplot()
    ax.axis("off")
    image = ax.imshow(grids[0], cmap="gray", vmin=0, vmax=1)
    title = ax.set_title(titles[0] if titles else "")

    def update(k):
        image.set_data(grids[k])
        if titles:
            title.set_text(titles[k])
        return image, title

    return FuncAnimation(fig, update, frames=len(grids), interval=interval, blit=False)


def animation_html(frames: Sequence[torch.Tensor], **kwargs):
    """The animation of :func:`animate` as an inline, playable HTML widget for JupyterLab."""
    from IPython.display import HTML

    return HTML(animate(frames, **kwargs).to_jshtml(default_mode="once"))
