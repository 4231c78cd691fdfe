"""A 2-D world with exact answers: a Gaussian mixture whose noised marginals, score and ε are known.

The data are points x_0 ∈ R^D (D = 2 for pictures) drawn from a mixture of K Gaussians,

    p(x_0) = Σ_k π_k N(x_0; μ_k, diag(s_k²)).

Under the forward process x_t = √ᾱ_t x_0 + √(1-ᾱ_t) ε (Ho et al. eq. 4) every component stays a
Gaussian, so everything a diffusion model has to learn is known in closed form:

    (1) q_t(x) = Σ_k π_k N(x; √ᾱ_t μ_k, diag(ᾱ_t s_k² + 1 - ᾱ_t))             the noised marginal
    (2) r_k(x) = π_k N_k(x) / q_t(x)                           which component x came from
    (3) ∇log q_t(x) = Σ_k r_k(x) (√ᾱ_t μ_k - x) / (ᾱ_t s_k² + 1 - ᾱ_t)        the exact score
    (4) ε*(x, t) = E[ε | x_t = x] = -√(1-ᾱ_t) ∇log q_t(x)       the exact ε-predictor (Tweedie)

ε* is the minimiser of the DDPM loss E‖ε - ε_θ(x_t, t)‖², so it is the best any network can do.
Each component belongs to a class c (one class per component, or groups of components):

    (5) q_t(x | c): (1) restricted to the components of class c, weights renormalised
    (6) p_t(c | x) = Σ_{k ∈ c} r_k(x)
    (7) ε_w(x, t, c) = (1 + w) ε*(x, t, c) - w ε*(x, t)          classifier-free guidance
    (8) p_w(x | c) ∝ p(x) p(c | x)^(1+w) ∝ p(x | c)^(1+w) p(x)^(-w)   the "tilted" target

(8) is what guidance aims at; it has no closed-form normaliser, so :meth:`GaussianMixture.
tilted_density` normalises it numerically on a grid. (CFG samples only approximate it: the
guided ε at t > 0 is not the ε of a noised (8).)

:class:`ExactDenoiser` wraps (4)/(7) as a model ``model(x, t, c=None, c_mask=None)`` for the
samplers of :mod:`course_lib.ddpm`; :class:`ToyDenoiser` is a small MLP that learns the same thing.
The pictures are in :mod:`course_lib.viz2d`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import SinusoidalPositionEmbedBlock
from .ddpm import Schedule, extract


def _f64(x) -> torch.Tensor:
    return torch.as_tensor(x, dtype=torch.float64)


# --- the mixture -------------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class GaussianMixture:
    """π_k, μ_k, s_k and the class of each component, stored in float64.

    Every method takes ``alpha_bar`` (ᾱ_t: a number, or one value per point of shape (N,) or
    (N, 1)); ``alpha_bar=1`` is the data itself. ``c`` is None (all classes), a class index, or
    one class index per point (N,).
    """

    weights: torch.Tensor          # π_k, (K,), sums to 1
    means: torch.Tensor            # μ_k, (K, D)
    stds: torch.Tensor             # s_k, (K, D): isotropic components repeat one value
    classes: torch.Tensor          # class of component k, (K,) long
    class_names: tuple[str, ...]

    @classmethod
    def create(cls, weights: Sequence[float], means: Sequence[Sequence[float]],
               stds: Sequence[float] | Sequence[Sequence[float]],
               classes: Sequence[int] | None = None,
               class_names: Sequence[str] | None = None) -> "GaussianMixture":
        """Check and store the parameters; ``stds`` per component (isotropic) or per axis."""
        w, mu, s = _f64(weights), _f64(means), _f64(stds)
        if w.ndim != 1 or mu.ndim != 2 or len(mu) != len(w):
            raise ValueError(f"need K weights and (K, D) means, got {tuple(w.shape)} and "
                             f"{tuple(mu.shape)}")
        if (w <= 0).any() or abs(w.sum().item() - 1) > 1e-6:
            raise ValueError(f"weights must be positive and sum to 1, got {w.tolist()}")
        s = s[:, None].expand_as(mu).clone() if s.ndim == 1 else s
        if s.shape != mu.shape or (s <= 0).any():
            raise ValueError(f"stds must be positive, shape (K,) or {tuple(mu.shape)}")
        k = torch.arange(len(w)) if classes is None else torch.as_tensor(classes).long()
        if k.shape != w.shape or k.min() < 0:
            raise ValueError(f"classes must give one class index >= 0 per component, got {k}")
        n_classes = int(k.max()) + 1
        if set(k.tolist()) != set(range(n_classes)):
            raise ValueError(f"every class 0..{n_classes - 1} needs a component, got {k.tolist()}")
        names = tuple(class_names) if class_names else tuple(f"class {i}" for i in range(n_classes))
        if len(names) != n_classes:
            raise ValueError(f"{len(names)} class names for {n_classes} classes")
        return cls(w, mu, s, k, names)

    @property
    def K(self) -> int:
        return len(self.weights)

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    # --- the data distribution -----------------------------------------------------------------

    def sample(self, n: int, generator: torch.Generator | None = None, c: int | None = None,
               dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
        """n points of p(x_0) (or of p(x_0 | c)) and the component each came from: (n, D), (n,)."""
        probs = self.weights * (self.classes == c) if c is not None else self.weights
        k = torch.multinomial(probs, n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        return (self.means[k] + self.stds[k] * z).to(dtype), k

    def mean(self) -> torch.Tensor:
        """E[x_0] = Σ π_k μ_k."""
        return self.weights @ self.means

    def cov(self) -> torch.Tensor:
        """Cov[x_0] = Σ π_k (diag(s_k²) + μ_k μ_kᵀ) - E[x_0] E[x_0]ᵀ."""
        second = torch.einsum("k,ki,kj->ij", self.weights, self.means, self.means)
        second = second + torch.diag(self.weights @ self.stds ** 2)
        m = self.mean()
        return second - torch.outer(m, m)

    # --- eqs. (1)-(6) under the forward process ------------------------------------------------

    def _terms(self, x: torch.Tensor, alpha_bar, c=None):
        """log(π_k N_k(x)) of eq. (1), (N, K), with x - √ᾱ μ_k and the variances (N, K, D).

        With a class ``c`` the components of other classes get log-weight -inf (eq. 5).
        """
        x = _f64(x)
        ab = _f64(alpha_bar).reshape(-1, 1, 1)                # (1 or N, 1, 1)
        diff = x[:, None, :] - ab.sqrt() * self.means          # (N, K, D)
        var = ab * self.stds ** 2 + (1 - ab)                   # (1 or N, K, D)
        log_n = -0.5 * (diff ** 2 / var + var.log() + math.log(2 * math.pi)).sum(-1)
        log_joint = self.weights.log() + log_n
        if c is not None:
            c = torch.as_tensor(c).reshape(-1, 1)
            log_joint = log_joint.masked_fill(self.classes != c, -math.inf)
        return log_joint, diff, var.expand_as(diff)

    def log_prob(self, x: torch.Tensor, alpha_bar=1.0, c=None) -> torch.Tensor:
        """log q_t(x) (eq. 1), or log q_t(x | c) (eq. 5), with logsumexp: (N,)."""
        log_joint, _, _ = self._terms(x, alpha_bar, c)
        out = log_joint.logsumexp(-1)
        if c is not None:
            in_c = self.classes == torch.as_tensor(c).reshape(-1, 1)
            out = out - (self.weights * in_c).sum(-1).log()
        return out

    def responsibilities(self, x: torch.Tensor, alpha_bar=1.0, c=None) -> torch.Tensor:
        """r_k(x) = P(component k | x_t = x) (eq. 2): (N, K), rows sum to 1."""
        log_joint, _, _ = self._terms(x, alpha_bar, c)
        return log_joint.softmax(-1)

    def score(self, x: torch.Tensor, alpha_bar=1.0, c=None) -> torch.Tensor:
        """∇_x log q_t(x) (eq. 3; eq. 5's mixture with a class): (N, D) float64."""
        log_joint, diff, var = self._terms(x, alpha_bar, c)
        r = log_joint.softmax(-1)                              # (N, K)
        return -(r[..., None] * diff / var).sum(1)

    def eps(self, x: torch.Tensor, alpha_bar, c=None) -> torch.Tensor:
        """ε*(x, t) = -√(1-ᾱ_t)·∇log q_t(x) (eq. 4): the MMSE optimum of the DDPM loss."""
        ab = _f64(alpha_bar).reshape(-1, 1)
        return -(1 - ab).sqrt() * self.score(x, alpha_bar, c)

    def class_probs(self, x: torch.Tensor, alpha_bar=1.0) -> torch.Tensor:
        """p_t(c | x) = Σ_{k in c} r_k(x) (eq. 6): (N, n_classes)."""
        r = self.responsibilities(x, alpha_bar)
        return torch.zeros(len(r), self.n_classes, dtype=r.dtype).index_add_(1, self.classes, r)

    def log_class_prob(self, x: torch.Tensor, c: int, alpha_bar=1.0) -> torch.Tensor:
        """log p_t(c | x) (eq. 6) with logsumexp: over c's terms of eq. (1) minus over all, (N,).
        Finite where p_t(c | x) itself underflows to 0 far from class c's components."""
        if not 0 <= c < self.n_classes:
            raise ValueError(f"class {c} is not one of this mixture's 0 … {self.n_classes - 1}")
        log_joint, _, _ = self._terms(x, alpha_bar)
        return log_joint[:, self.classes == c].logsumexp(-1) - log_joint.logsumexp(-1)

    # --- which mode, which class ---------------------------------------------------------------

    def assign(self, x: torch.Tensor) -> torch.Tensor:
        """The most likely component of each data point (argmax_k r_k(x) at ᾱ = 1): (N,)."""
        return self._terms(x, 1.0)[0].argmax(-1)

    def mode_shares(self, x: torch.Tensor) -> torch.Tensor:
        """Share of the points assigned to each component: (K,), to compare with π."""
        return torch.bincount(self.assign(x), minlength=self.K).double() / len(x)

    def class_shares(self, x: torch.Tensor) -> torch.Tensor:
        """Share of the points whose most likely component has each class: (n_classes,)."""
        labels = self.classes[self.assign(x)]
        return torch.bincount(labels, minlength=self.n_classes).double() / len(x)

    # --- eq. (8) on a grid ---------------------------------------------------------------------

    def tilted_density(self, grid: "Grid", c: int, w: float) -> torch.Tensor:
        """p(x)·p(c|x)^(1+w) on ``grid`` (eq. 8), normalised so that Σ density·cell_area = 1.

        w = 0 gives p(x, c) ∝ p(x | c); w = -1 gives p(x). Returns (ny, nx) float64.
        """
        log_p = self.log_prob(grid.points) + (1 + w) * self.log_class_prob(grid.points, c)
        p = (log_p - log_p.max()).exp()
        return (p / (p.sum() * grid.cell_area)).reshape(grid.shape)

    def grid_class_share(self, density: torch.Tensor, grid: "Grid", c: int) -> float:
        """Mass of a grid density on the points whose most likely component has class c."""
        in_c = (self.classes[self.assign(grid.points)] == c).reshape(grid.shape)
        return float((density * in_c).sum() * grid.cell_area)


class Grid(NamedTuple):
    """A regular grid over a rectangle: its axes, its points (ny·nx, 2) and one cell's area."""

    xs: torch.Tensor
    ys: torch.Tensor
    points: torch.Tensor
    cell_area: float

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.ys), len(self.xs)


def make_grid(lim: float | tuple[float, float, float, float] = 4.0, n: int = 200) -> Grid:
    """n × n points over [-lim, lim]² (or over (xmin, xmax, ymin, ymax)), float64."""
    x0, x1, y0, y1 = (-lim, lim, -lim, lim) if isinstance(lim, (int, float)) else lim
    xs = torch.linspace(x0, x1, n, dtype=torch.float64)
    ys = torch.linspace(y0, y1, n, dtype=torch.float64)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    points = torch.stack((gx.flatten(), gy.flatten()), 1)
    return Grid(xs, ys, points, float((xs[1] - xs[0]) * (ys[1] - ys[0])))


def example_mixture() -> GaussianMixture:
    """The course's 2-D world: five blobs of unequal weight in three classes A, B, C.

    Asymmetric on purpose: the heaviest blob (A, π = 0.35) sits far from the origin and a light,
    wide one (C) at it, so a sampler that starts from the wrong noise (ᾱ_T ≠ 0) visibly changes
    the shares of the modes; C overlaps its neighbours, so guidance towards C has work to do.
    """
    return GaussianMixture.create(
        weights=[0.35, 0.25, 0.15, 0.15, 0.10],
        means=[[2.0, 2.0], [-2.0, 1.5], [0.0, -0.3], [-1.2, -1.8], [1.4, -1.8]],
        stds=[0.45, 0.45, 0.75, 0.45, 0.45],
        classes=[0, 1, 2, 1, 0],
        class_names=["A", "B", "C"],
    )


# --- models: the exact one and a learned one ---------------------------------------------------

def _class_labels(c: torch.Tensor | None, n_classes: int):
    """(labels (N,), has_context (N,) bool) from one-hot rows (N, C) or labels (N,); None -> None.

    A one-hot row of zeros (a dropped context, c·mask) means "no class".
    """
    if c is None:
        return None, None
    c = torch.as_tensor(c)
    if c.ndim == 2:
        if c.shape[1] != n_classes:
            raise ValueError(f"one-hot context needs {n_classes} columns, got {c.shape[1]}")
        return c.argmax(1), c.abs().sum(1) > 0
    return c.long(), torch.ones(len(c), dtype=torch.bool)


class ExactDenoiser:
    """The exact ε* (eq. 4) as a model: ``model(x_t, t, c=None, c_mask=None) -> eps``.

    ``t`` is a LongTensor (N,) of steps of ``schedule``; ``c`` one-hot (N, C) or labels (N,);
    rows with ``c_mask`` 0 (or a zero one-hot row) get the unconditional ε*. So it plugs into
    ``sample_ddpm``, ``sample_ddim`` and ``CFGDenoiser`` like a trained network.
    """

    def __init__(self, mixture: GaussianMixture, schedule: Schedule):
        self.mixture, self.schedule = mixture, schedule

    def __call__(self, x: torch.Tensor, t: torch.Tensor, c: torch.Tensor | None = None,
                 c_mask: torch.Tensor | None = None) -> torch.Tensor:
        x64 = x.double()
        ab = extract(self.schedule.alpha_bars.double(), t, x64)          # (N, 1)
        eps = self.mixture.eps(x64, ab)
        labels, keep = _class_labels(c, self.mixture.n_classes)
        if labels is not None:
            if c_mask is not None:
                keep = keep & (c_mask.reshape(-1).to(keep.device) > 0)
            if keep.any():
                eps_c = self.mixture.eps(x64[keep], ab[keep], labels[keep])
                eps = eps.clone()
                eps[keep] = eps_c
        return eps.to(x.dtype)


class ToyDenoiser(nn.Module):
    """ε_θ(x_t, t, c): an MLP on [x_t, sinusoidal embedding of t, c·c_mask] (about ten thousand weights).

    Same call as the course's UNets: ``forward(x, t, c=None, c_mask=None)`` with t a LongTensor
    (N,) of steps in [0, T), c one-hot (N, n_classes) and c_mask (N, 1) 1 to keep the context.
    """

    def __init__(self, T: int = 150, n_classes: int = 0, hidden: int = 64, t_dim: int = 16,
                 dim: int = 2, depth: int = 3):
        super().__init__()
        self.T, self.n_classes = T, n_classes
        # the UNets' embedding with periods up to 2πT steps (frequencies from 1 to 1/T radians
        # per step): the slowest one moves about a radian over 0..T-1
        self.t_embed = SinusoidalPositionEmbedBlock(t_dim, max_period=T)
        layers: list[nn.Module] = [nn.Linear(dim + t_dim + n_classes, hidden), nn.SiLU()]
        for _ in range(depth - 1):
            layers += [nn.Linear(hidden, hidden), nn.SiLU()]
        self.net = nn.Sequential(*layers, nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor, t: torch.Tensor, c: torch.Tensor | None = None,
                c_mask: torch.Tensor | None = None) -> torch.Tensor:
        dtype = self.net[0].weight.dtype
        parts = [x.to(dtype), self.t_embed(t).to(dtype)]                 # (N, dim + t_dim)
        if self.n_classes:
            if c is None:
                c = torch.zeros(len(x), self.n_classes, device=x.device, dtype=dtype)
            elif c.ndim == 1 and not c.dtype.is_floating_point:   # labels, as ExactDenoiser takes
                c = F.one_hot(c.long(), self.n_classes).to(dtype)
            elif c.shape != (len(x), self.n_classes):
                raise ValueError(f"c must be one-hot rows ({len(x)}, {self.n_classes}) or "
                                 f"{len(x)} integer labels, got {c.dtype} {tuple(c.shape)}")
            else:
                c = c.to(dtype)
            if c_mask is not None:
                c = c * c_mask.reshape(-1, 1).to(dtype)
            parts.append(c)
        elif c is not None:
            raise ValueError("this ToyDenoiser has n_classes=0: build it with n_classes to pass c")
        return self.net(torch.cat(parts, 1)).to(x.dtype)


# --- measuring a learned ε against the exact one -----------------------------------------------

@torch.no_grad()
def eps_error(model, mixture: GaussianMixture, schedule: Schedule, n: int = 4096,
              generator: torch.Generator | None = None) -> dict[str, float]:
    """How far ``model``'s ε is from ε*, on x_t ~ q_t with t uniform (as in training).

    Returns ``error`` = mean ‖ε_θ - ε*‖, ``scale`` = mean ‖ε*‖, and the DDPM losses
    E‖ε - ε_θ‖²/D of the model and of ε* itself (``floor``: no network can go below it).
    """
    x0, _ = mixture.sample(n, generator=generator, dtype=torch.float64)
    t = torch.randint(0, schedule.T, (n,), generator=generator)
    noise = torch.randn(x0.shape, generator=generator, dtype=torch.float64)
    x_t = schedule.q_sample(x0, t, noise)
    exact = ExactDenoiser(mixture, schedule)(x_t, t)
    learned = model(x_t.float(), t).double()
    return {"error": float((learned - exact).norm(dim=1).mean()),
            "scale": float(exact.norm(dim=1).mean()),
            "loss": float(((noise - learned) ** 2).mean()),
            "floor": float(((noise - exact) ** 2).mean())}
