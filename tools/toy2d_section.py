"""Insert the section "A 2-D world with exact answers" into a notebook.

    .venv/bin/python tools/toy2d_section.py NOTEBOOK.ipynb CELL_INDEX [--out OUT.ipynb]

The section's cells are inserted before cell CELL_INDEX (use -1, or the number of cells, to append);
the notebook is rewritten in place unless --out is given. The section imports what it needs in
its first code cell, so it runs after any notebook's setup cell.
"""
from __future__ import annotations

import argparse
import sys

import nbformat

IGNORE = {"tags": ["nbval-ignore-output"]}

CELLS: list[tuple[str, str, dict]] = [
    ("markdown", r"""## 11. A 2-D world with exact answers

On images we can only *judge* samples (a classifier, a Fréchet distance). In two dimensions we
can do better: if the data are a mixture of Gaussians, everything the network is supposed to
learn is known in closed form. Noising a Gaussian blob gives a wider Gaussian blob, so the noised
marginal q_t, its score ∇log q_t and the best possible noise prediction ε* = −√(1−ᾱ_t)·∇log q_t
are exact formulas (`course_lib/toy2d.py`). Every plot below compares against the truth, and
everything runs in seconds.""", {}),
    ("code", r"""import time

import torch
from torch.utils.data import DataLoader, TensorDataset

from course_lib import config
from course_lib.conditioning import keep_mask, one_hot
from course_lib.ddpm import (CFGDenoiser, FrameRecorder, diffusion_loss, linear_schedule,
                             sample_ddim, sample_ddpm, scaled_linear_schedule)
from course_lib.toy2d import ExactDenoiser, ToyDenoiser, eps_error, example_mixture
from course_lib.train import train
from course_lib.viz2d import (plot_eps_fields, plot_forward_cloud, plot_guidance,
                              plot_mode_shares, plot_paths)

TOY_T = 150
TOY_N_DATA = config.pick(full=20_000, test=2_000)      # training points
TOY_EPOCHS = config.pick(full=30, test=2)
TOY_N_SAMPLES = config.pick(full=4_000, test=500)      # samples per measurement
toy_gen = config.seed_everything(0)
world = example_mixture()
toy_schedule = scaled_linear_schedule(TOY_T)           # ends at ᾱ_T ≈ 3e-5: pure noise
for k in range(world.K):
    print(f"mode {k}: class {world.class_names[world.classes[k]]}, π = {world.weights[k]:.2f}, "
          f"μ = {world.means[k].tolist()}, s = {world.stds[k, 0]:.2f}")""", {}),
    ("code", r"""plot_forward_cloud(world, toy_schedule, [0, 20, 40, 70, 149], n=1500, generator=toy_gen)""",
     IGNORE),
    ("markdown", r"""Each blob slides towards the origin (its centre is multiplied by √ᾱ_t) and widens
(its variance becomes ᾱ_t s² + 1 − ᾱ_t) until, at t = 149, the cloud is N(0, I). The grey lines
are the exact q_t, not a fit.

Now train a small MLP, `ToyDenoiser` (x_t, a sinusoidal embedding of t and the class, about
ten thousand weights), with the very same `diffusion_loss` and `train` as the UNets. The class is
dropped 20% of the time, so one network learns both ε(x, t, c) and ε(x, t), as in 04.""", {}),
    ("code", r"""toy_x, toy_k = world.sample(TOY_N_DATA, generator=toy_gen)
toy_loader = DataLoader(TensorDataset(toy_x, world.classes[toy_k]), batch_size=256, shuffle=True)
toy_net = ToyDenoiser(TOY_T, n_classes=world.n_classes)
print(f"{sum(p.numel() for p in toy_net.parameters()):,} parameters")


def toy_loss(model, batch):
    x0, labels = batch
    return diffusion_loss(model, x0, toy_schedule, c=one_hot(labels, world.n_classes),
                          c_mask=keep_mask(len(x0), 0.8))


start = time.perf_counter()
toy_history = train(toy_net, toy_loader, toy_loss, epochs=TOY_EPOCHS, lr=3e-3, desc="ToyDenoiser",
                    progress=False)            # seconds in all: no progress bars needed
print(f"trained in {time.perf_counter() - start:.1f} s, final loss {toy_history.final_loss:.3f}")""",
     IGNORE),
    ("code", r"""toy_err = eps_error(toy_net, world, toy_schedule, generator=toy_gen)
print(f"mean ‖ε_θ − ε*‖ = {toy_err['error']:.3f} (mean ‖ε*‖ = {toy_err['scale']:.2f}); "
      f"DDPM loss: MLP {toy_err['loss']:.3f}, exact ε* {toy_err['floor']:.3f} (the floor)")
plot_eps_fields(toy_net, world, toy_schedule, [5, 40, 100])""", IGNORE),
    ("markdown", r"""The loss can never reach 0: even the exact ε* scores the "floor" printed above,
because a noisy point could have come from several blobs. (That floor is for ε without the class.
Training keeps the class 80% of the time, and knowing the class narrows down the blobs, which is
why the training loss above can end below it.) What the network can reach is the
floor, and the figure shows where it falls short: the error is largest at small t far from the
data (few training points ever land there) and between blobs, where ε* turns sharply.

Next, three samplers from the **same eight starting points**, all driven by the exact ε*.""", {}),
    ("code", r"""toy_exact = ExactDenoiser(world, toy_schedule)
toy_starts = torch.randn(8, 2, generator=toy_gen, dtype=torch.float64)
toy_paths = {}
for name, sampler in [("DDPM, 150 steps", lambda x, cb: sample_ddpm(toy_exact, x, toy_schedule, callback=cb, generator=toy_gen)),
                      ("DDIM η = 0, 50 steps", lambda x, cb: sample_ddim(toy_exact, x, toy_schedule, eta=0.0, callback=cb)),
                      ("DDIM η = 1, 50 steps", lambda x, cb: sample_ddim(toy_exact, x, toy_schedule, eta=1.0, callback=cb, generator=toy_gen))]:
    rec = FrameRecorder(n=1000)
    sampler(toy_starts, rec)
    toy_paths[name] = torch.stack([toy_starts] + rec.frames)
plot_paths(world, toy_paths)""", IGNORE),
    ("markdown", r"""DDIM with η = 0 is deterministic: its paths are smooth curves (the "probability-flow"
ODE), and the same start always lands on the same sample. DDPM and DDIM η = 1 add fresh noise at
every step, so their paths jitter and a start can end in a different blob.

### Predict, then run

The notebook's linear schedule with T = 150 ends at ᾱ_T = 0.22, not 0: x_T still holds
√0.22 ≈ 0.47 of the data, yet we start sampling from pure N(0, I). **Before running: with
ᾱ_T = 0.22 and the exact ε, which modes will be over-sampled, and which under-sampled?**
(Hint: where does q_T put its mass, and where does N(0, I) put it?)""", {}),
    ("code", r"""trap_schedule = linear_schedule(TOY_T)
print(f"ᾱ_T: linear {trap_schedule.alpha_bars[-1]:.3f}, scaled linear {toy_schedule.alpha_bars[-1]:.1e}")
x_T = torch.randn(TOY_N_SAMPLES, 2, generator=toy_gen, dtype=torch.float64)
x0_ref, _ = world.sample(TOY_N_SAMPLES, generator=toy_gen, dtype=torch.float64)
right_start = trap_schedule.q_sample(x0_ref, TOY_T - 1, x_T)           # x_T ~ q_T, the truth
trap = {
    "scaled linear, x_T ~ N(0, I)": sample_ddpm(toy_exact, x_T, toy_schedule, generator=toy_gen),
    "linear (ᾱ_T = 0.22), x_T ~ N(0, I)": sample_ddpm(ExactDenoiser(world, trap_schedule), x_T,
                                                     trap_schedule, generator=toy_gen),
    "linear, x_T ~ q_T": sample_ddpm(ExactDenoiser(world, trap_schedule), right_start,
                                     trap_schedule, generator=toy_gen),
}
print("π           ", [round(v, 3) for v in world.weights.tolist()])
for name, x in trap.items():
    print(f"{name:35s}", [round(v, 3) for v in world.mode_shares(x).tolist()])
# the deterministic sampler (DDIM, η = 0, 50 steps) from the same starts, with the exact ε too
ode = {"scaled linear, DDIM η = 0": sample_ddim(toy_exact, x_T, toy_schedule, eta=0.0),
       "linear (ᾱ_T = 0.22), DDIM η = 0": sample_ddim(ExactDenoiser(world, trap_schedule), x_T,
                                                     trap_schedule, eta=0.0)}
for name, x in ode.items():
    print(f"{name:35s}", [round(v, 3) for v in world.mode_shares(x).tolist()])
plot_mode_shares(world, trap, title="the ᾱ_T ≠ 0 trap, with the exact ε (DDPM)")""", IGNORE),
    ("markdown", r"""### What happened

The blobs near the origin and below it are **over-sampled** (mode 2, the central C blob, and the
two lower blobs 3 and 4) and the two upper blobs far from the origin are **under-sampled**, the
heavy A blob at (2, 2) most (about a fifth of its weight lost). The true q_T with ᾱ_T = 0.22 is
still a mixture, each blob at 0.47·μ_k, so it is centred at 0.47·E[x_0], up and to the right of
the origin, where N(0, I) is centred. Starting from N(0, I) gives the central and lower regions
too many starting points and the upper ones too few, and even the exact
ε cannot repair a wrong start: the third row, the same schedule started from q_T, recovers π. So
the distortion comes from the schedule, not from the network; with images it erased whole
classes (03). The fix is a schedule that ends at pure noise (`scaled_linear_schedule`, cosine).

The two deterministic rows (DDIM, η = 0, printed below the table) follow one smooth path from each
start. With the scaled schedule they land near π (the heavy A blob gets 33% instead of 35%: 50
steps of an ODE solver are close, not exact). With ᾱ_T = 0.22 they do worse than DDPM: the A blob
gets 24% instead of DDPM's 28%. A deterministic path keeps every wrong start where it leads,
while DDPM's fresh noise lets a sample drift partway back towards where q_t puts its mass. That is
part of why η = 0 did worse than η = 1 on this notebook's images (section 9).

Finally, classifier-free guidance towards class C, the wide central blob that overlaps its
neighbours. The grey image is the exact tilted target p(x)·p(C|x)^(1+w), normalised on a grid;
the red dots are DDPM samples with the exact guided ε = (1+w)·ε*(x, t, C) − w·ε*(x, t).""", {}),
    ("code", r"""toy_c = one_hot(torch.full((TOY_N_SAMPLES,), 2), world.n_classes)       # class C
x_T = torch.randn(TOY_N_SAMPLES, 2, generator=toy_gen)
guided = {w: sample_ddpm(CFGDenoiser(toy_exact, w), x_T, toy_schedule, extra_args={"c": toy_c},
                         generator=toy_gen) for w in (0.0, 1.0, 3.0)}
for w, x in guided.items():
    print(f"w = {w:g}: {100 * world.class_shares(x)[2]:.1f}% of samples in class C")
plot_guidance(world, 2, guided)""", IGNORE),
    ("markdown", r"""At w = 0 the exact conditional model samples p(x | C), and a slice of the wide C
blob lies where the A and B blobs are more likely: those samples count as A or B. Guidance
multiplies the density by p(C|x)^w, which is close to 1 at the blob's core and small where the
neighbours dominate, so the samples pull away from the boundaries and the class share rises. The
samples sharpen even faster than the tilted density (compare the two percentages in each title):
the guided ε is not exactly the ε of a noised p(x)·p(c|x)^(1+w), so CFG only approximates its
target, in this exact world as in 04.""", {}),
]


def section_cells() -> list:
    """The section as nbformat cells (fresh objects each call)."""
    make = {"markdown": nbformat.v4.new_markdown_cell, "code": nbformat.v4.new_code_cell}
    return [make[kind](source, metadata=dict(meta)) for kind, source, meta in CELLS]


def insert_section(nb, index: int):
    """Insert the section's cells before cell ``index`` of ``nb`` (-1 appends); returns nb."""
    n = len(nb.cells)
    if index < 0:
        index = n + 1 + index
    if not 0 <= index <= n:
        raise ValueError(f"cell index must be in [0, {n}] (or -1 to append), got {index}")
    nb.cells[index:index] = section_cells()
    return nb


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebook")
    parser.add_argument("index", type=int, help="insert before this cell; -1 appends")
    parser.add_argument("--out", help="write here instead of rewriting NOTEBOOK")
    args = parser.parse_args(argv)
    nb = nbformat.read(args.notebook, as_version=4)
    insert_section(nb, args.index)
    nbformat.validate(nb)
    nbformat.write(nb, args.out or args.notebook)
    print(f"inserted {len(CELLS)} cells at {args.index} -> {args.out or args.notebook}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
