"""Diffusion maths: noise schedules, the forward process, the loss, reverse steps and samplers.

Notation follows Ho et al. 2020 ("DDPM") with 0-based indices: ``t = 0 .. T-1`` in code is
the paper's ``t = 1 .. T``. ``alpha_bar[t] = prod_{s<=t} (1 - beta[s])``.

Every sampler has the same call ``sampler(model, x, schedule, ..., callback=None,
disable=None)``, where ``model(x_t, t) -> eps`` predicts the noise (wrap a conditional
model with :class:`CFGDenoiser` or ``functools.partial``), ``x`` is the starting noise,
and ``callback`` receives ``{"i", "t", "x", "x0"}`` after each step.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


# --- 01: the fixed mix -------------------------------------------------------------------------

def add_noise(x: torch.Tensor, amount: float = 0.5, noise: torch.Tensor | None = None):
    """01's corruption: (1 - amount)·x + amount·eps. Not variance-preserving (0.5² + 0.5² ≠ 1)."""
    if not 0.0 <= amount <= 1.0:
        raise ValueError(f"amount must be in [0, 1], got {amount}")
    noise = torch.randn_like(x) if noise is None else noise
    return (1 - amount) * x + amount * noise


# --- 02: schedules and the forward process -----------------------------------------------------

@dataclass
class Schedule:
    """All per-step constants of a variance schedule (tensors of length T, float32 by default).

    Every constant is computed in float64 and stored in ``dtype``; float64 schedules serve as
    exact references in the tests.
    """

    betas: torch.Tensor
    dtype: torch.dtype = torch.float32

    def __post_init__(self):
        b = self.betas.double()
        if b.ndim != 1 or len(b) < 1 or (b <= 0).any() or (b >= 1).any():
            raise ValueError("betas must be a 1-D tensor with every value in (0, 1)")
        alphas = 1 - b
        alpha_bars = torch.cumprod(alphas, 0)
        alpha_bars_prev = torch.cat((alpha_bars.new_ones(1), alpha_bars[:-1]))
        f = lambda v: v.to(self.betas.device, self.dtype)  # noqa: E731
        self.betas = f(b)
        self.alphas = f(alphas)
        self.alpha_bars = f(alpha_bars)
        self.alpha_bars_prev = f(alpha_bars_prev)
        # Eq. 7: beta~_t = (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) * beta_t, and the two weights
        # of the posterior mean. All in float64: 1 - alpha_bar_t cancels in float32 near t = 0.
        self.posterior_variance = f((1 - alpha_bars_prev) / (1 - alpha_bars) * b)
        self.posterior_coef_x0 = f(alpha_bars_prev.sqrt() * b / (1 - alpha_bars))
        self.posterior_coef_xt = f(alphas.sqrt() * (1 - alpha_bars_prev) / (1 - alpha_bars))

    @property
    def T(self) -> int:
        return len(self.betas)

    def to(self, device) -> "Schedule":
        return Schedule(self.betas.to(device), self.dtype)

    def at(self, values: torch.Tensor, t: torch.Tensor | int, like: torch.Tensor) -> torch.Tensor:
        """values[t] shaped (B, 1, 1, 1) (or a scalar tensor for an int t) to broadcast over ``like``."""
        if isinstance(t, int):
            if not 0 <= t < self.T:
                raise ValueError(f"t={t} is outside [0, {self.T - 1}]")
            return values[t].to(like.device, like.dtype)
        if t.min() < 0 or t.max() >= self.T:
            raise ValueError(f"t must lie in [0, {self.T - 1}], got [{t.min()}, {t.max()}]")
        return values.to(like.device)[t.to(like.device)].reshape(-1, *[1] * (like.ndim - 1)).to(
            like.dtype)

    # Eq. 4: q(x_t | x_0) = N(sqrt(alpha_bar_t) x_0, (1 - alpha_bar_t) I)
    def q_sample(self, x0: torch.Tensor, t, noise: torch.Tensor) -> torch.Tensor:
        """Sample x_t ~ q(x_t | x_0) in one step: sqrt(ᾱ_t)·x_0 + sqrt(1 - ᾱ_t)·eps (eq. 4)."""
        ab = self.at(self.alpha_bars, t, x0)
        return ab.sqrt() * x0 + (1 - ab).sqrt() * noise

    def predict_x0(self, x_t: torch.Tensor, t, eps: torch.Tensor) -> torch.Tensor:
        """Invert eq. 4 for x_0 given the noise: (x_t - sqrt(1 - ᾱ_t)·eps) / sqrt(ᾱ_t)."""
        ab = self.at(self.alpha_bars, t, x_t)
        return (x_t - (1 - ab).sqrt() * eps) / ab.sqrt()

    def q_posterior(self, x0: torch.Tensor, x_t: torch.Tensor, t):
        """Mean and variance of q(x_{t-1} | x_t, x_0) (eqs. 6-7).

        mean = sqrt(ᾱ_{t-1})·beta_t/(1 - ᾱ_t)·x_0 + sqrt(alpha_t)·(1 - ᾱ_{t-1})/(1 - ᾱ_t)·x_t
        """
        mean = (self.at(self.posterior_coef_x0, t, x_t) * x0
                + self.at(self.posterior_coef_xt, t, x_t) * x_t)
        return mean, self.at(self.posterior_variance, t, x_t)


def linear_schedule(T: int = 150, beta_start: float = 1e-4, beta_end: float = 0.02) -> Schedule:
    """Ho et al. 2020: betas evenly spaced from beta_start to beta_end."""
    if T < 1:
        raise ValueError(f"T must be >= 1, got {T}")
    return Schedule(torch.linspace(beta_start, beta_end, T, dtype=torch.float64))


def cosine_schedule(T: int = 150, s: float = 0.008, max_beta: float = 0.999) -> Schedule:
    """Nichol & Dhariwal 2021, eq. 17: ᾱ(t) = cos²(((t/T + s)/(1 + s))·π/2), beta capped at max_beta."""
    if T < 1:
        raise ValueError(f"T must be >= 1, got {T}")
    steps = torch.arange(T + 1, dtype=torch.float64) / T
    f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
    betas = (1 - f[1:] / f[:-1]).clamp(max=max_beta)
    return Schedule(betas)


# --- the training objective --------------------------------------------------------------------

def diffusion_loss(model: Callable, x0: torch.Tensor, schedule: Schedule,
                   generator: torch.Generator | None = None, **model_kwargs) -> torch.Tensor:
    """L_simple (Ho et al. eq. 14): E_{t, eps} ||eps - eps_theta(sqrt(ᾱ_t)x_0 + sqrt(1-ᾱ_t)eps, t)||²."""
    t = torch.randint(0, schedule.T, (len(x0),), device=x0.device, generator=generator)
    noise = torch.randn(x0.shape, device=x0.device, dtype=x0.dtype, generator=generator)
    x_t = schedule.q_sample(x0, t, noise)
    return F.mse_loss(model(x_t, t, **model_kwargs), noise)


# --- reverse steps -----------------------------------------------------------------------------

def ddpm_step(eps: torch.Tensor, x_t: torch.Tensor, t: int, schedule: Schedule,
              noise: torch.Tensor | None = None, variance: str = "beta",
              clip_x0: bool = False) -> torch.Tensor:
    """One step of Ho et al. Algorithm 2: x_{t-1} = mean + sigma_t·z, no noise at t = 0.

    1. mean = (x_t - beta_t / sqrt(1 - ᾱ_t)·eps) / sqrt(alpha_t)      (eq. 11)
       (with ``clip_x0``: x_0 = clamp(predict_x0, -1, 1), mean = posterior mean, eq. 7)
    2. sigma_t² = beta_t (``variance="beta"``) or beta~_t (``"posterior"``), of the same t.
    3. x_{t-1} = mean + sigma_t·z, z ~ N(0, I); z = 0 at t = 0 (the last step).
    """
    if variance not in ("beta", "posterior"):
        raise ValueError(f"variance must be 'beta' or 'posterior', got {variance!r}")
    # 1. the mean of p(x_{t-1} | x_t)
    if clip_x0:
        x0 = schedule.predict_x0(x_t, t, eps).clamp(-1, 1)
        mean, _ = schedule.q_posterior(x0, x_t, t)
    else:
        beta = schedule.at(schedule.betas, t, x_t)
        ab = schedule.at(schedule.alpha_bars, t, x_t)
        mean = (x_t - beta / (1 - ab).sqrt() * eps) / schedule.at(schedule.alphas, t, x_t).sqrt()
    if t == 0:
        return mean
    # 2. the variance, of step t itself
    var = schedule.at(schedule.betas if variance == "beta" else schedule.posterior_variance, t, x_t)
    # 3. add fresh noise
    noise = torch.randn_like(x_t) if noise is None else noise
    return mean + var.sqrt() * noise


def ddim_step(eps: torch.Tensor, x_t: torch.Tensor, t: int, t_prev: int, schedule: Schedule,
              eta: float = 0.0, noise: torch.Tensor | None = None,
              clip_x0: bool = False) -> torch.Tensor:
    """One DDIM step from t to t_prev < t (Song et al. 2021, eq. 12); t_prev = -1 means ᾱ = 1.

    1. x_0 = (x_t - sqrt(1 - ᾱ_t)·eps) / sqrt(ᾱ_t)
    2. sigma = eta · sqrt((1 - ᾱ_prev)/(1 - ᾱ_t)) · sqrt(1 - ᾱ_t/ᾱ_prev)     (eq. 16)
    3. x_prev = sqrt(ᾱ_prev)·x_0 + sqrt(1 - ᾱ_prev - sigma²)·eps + sigma·z
    """
    if not -1 <= t_prev < t:
        raise ValueError(f"DDIM steps go backwards: need -1 <= t_prev < t, got t={t}, "
                         f"t_prev={t_prev}")
    if eta < 0:
        raise ValueError(f"eta must be >= 0, got {eta}")
    # 1. predicted x_0
    x0 = schedule.predict_x0(x_t, t, eps)
    if clip_x0:
        x0 = x0.clamp(-1, 1)
    ab = schedule.at(schedule.alpha_bars, t, x_t)
    ab_prev = (schedule.at(schedule.alpha_bars, t_prev, x_t) if t_prev >= 0
               else torch.ones((), dtype=x_t.dtype, device=x_t.device))
    # 2. how much fresh noise this step adds
    sigma = eta * ((1 - ab_prev) / (1 - ab)).sqrt() * (1 - ab / ab_prev).sqrt()
    # 3. jump to t_prev along the predicted direction
    x_prev = ab_prev.sqrt() * x0 + (1 - ab_prev - sigma ** 2).clamp(min=0).sqrt() * eps
    if eta > 0 and t_prev >= 0:
        x_prev = x_prev + sigma * (torch.randn_like(x_t) if noise is None else noise)
    return x_prev


# --- samplers ----------------------------------------------------------------------------------

def _timesteps_tensor(t: int, x: torch.Tensor) -> torch.Tensor:
    return torch.full((len(x),), t, device=x.device, dtype=torch.long)


def _noise_like(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor | None:
    """Fresh noise from ``generator`` (a CPU generator: the same numbers on every device)."""
    if generator is None:
        return None
    return torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)


@torch.no_grad()
def sample_ddpm(model: Denoiser, x: torch.Tensor, schedule: Schedule, variance: str = "beta",
                clip_x0: bool = False, callback: Callable | None = None,
                disable: bool | None = None, generator: torch.Generator | None = None):
    """Ancestral sampling, Ho et al. 2020 Algorithm 2: all T steps from x_T = x to x_0."""
    for i, t in enumerate(tqdm(range(schedule.T - 1, -1, -1), desc="DDPM sampling",
                               disable=disable, leave=False)):
        eps = model(x, _timesteps_tensor(t, x))
        noise = _noise_like(x, generator)
        x_new = ddpm_step(eps, x, t, schedule, noise=noise, variance=variance, clip_x0=clip_x0)
        if callback is not None:
            callback({"i": i, "t": t, "x": x_new, "x0": schedule.predict_x0(x, t, eps)})
        x = x_new
    return x


def ddim_timesteps(T: int, steps: int) -> list[int]:
    """``steps`` timesteps evenly spread over [0, T-1], descending, always ending at 0."""
    if not 1 <= steps <= T:
        raise ValueError(f"DDIM needs 1 <= steps <= T={T}, got {steps}")
    ts = torch.linspace(0, T - 1, steps, dtype=torch.float64).round().long().unique()
    return ts.flip(0).tolist()


@torch.no_grad()
def sample_ddim(model: Denoiser, x: torch.Tensor, schedule: Schedule, steps: int = 50,
                eta: float = 0.0, clip_x0: bool = False, callback: Callable | None = None,
                disable: bool | None = None, generator: torch.Generator | None = None):
    """DDIM sampling, Song et al. 2021: ``steps`` jumps; eta=0 deterministic, eta=1 DDPM-like."""
    ts = ddim_timesteps(schedule.T, steps)
    for i, t in enumerate(tqdm(ts, desc=f"DDIM sampling ({len(ts)} steps)", disable=disable,
                               leave=False)):
        t_prev = ts[i + 1] if i + 1 < len(ts) else -1
        eps = model(x, _timesteps_tensor(t, x))
        noise = _noise_like(x, generator)
        x_new = ddim_step(eps, x, t, t_prev, schedule, eta=eta, noise=noise, clip_x0=clip_x0)
        if callback is not None:
            callback({"i": i, "t": t, "x": x_new, "x0": schedule.predict_x0(x, t, eps)})
        x = x_new
    return x


class FrameRecorder:
    """Callback for the samplers that keeps ``n`` evenly spaced frames of x (and their labels)."""

    def __init__(self, total_steps: int, n: int = 10, key: str = "x"):
        self.keep = set(torch.linspace(0, total_steps - 1, min(n, total_steps)).round().long()
                        .tolist())
        self.key = key
        self.frames: list[torch.Tensor] = []
        self.labels: list[str] = []

    def __call__(self, info: dict) -> None:
        if info["i"] in self.keep:
            self.frames.append(info[self.key].detach().cpu().clone())
            self.labels.append(f"t={info['t']}")


# --- 04: classifier-free guidance --------------------------------------------------------------

class CFGDenoiser:
    """Classifier-free guidance (Ho & Salimans 2022): eps = (1 + w)·eps(x, c) - w·eps(x, ∅).

    Wraps a conditional model ``model(x, t, c, c_mask)`` as ``denoiser(x, t)`` for any sampler.
    Conditional and unconditional predictions come from one batched forward pass.
    """

    def __init__(self, model: Callable, c: torch.Tensor, w: float = 1.0):
        self.model, self.c, self.w = model, c, w

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if len(self.c) != len(x):
            raise ValueError(f"context has {len(self.c)} rows for a batch of {len(x)} images")
        if self.w == 0:
            return self.model(x, t, self.c, torch.ones(len(x), 1, device=x.device))
        mask = torch.cat((torch.ones(len(x), 1), torch.zeros(len(x), 1))).to(x.device)
        eps = self.model(torch.cat((x, x)), torch.cat((t, t)), torch.cat((self.c, self.c)), mask)
        eps_cond, eps_uncond = eps.chunk(2)
        return (1 + self.w) * eps_cond - self.w * eps_uncond
