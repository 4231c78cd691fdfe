"""Diffusion maths: noise schedules, the forward process, the loss, reverse steps and samplers.

Notation follows Ho et al. 2020 ("DDPM") with 0-based indices: ``t = 0 .. T-1`` in code is
the paper's ``t = 1 .. T``. ``alpha_bar[t] = prod_{s<=t} (1 - beta[s])``.

Every sampler has the same call (k-diffusion's convention)::

    sampler(model, x, schedule, ..., extra_args=None, callback=None, disable=None, generator=None,
            bf16=None)

where ``model(x_t, t, **extra_args) -> eps`` predicts the noise (for guidance, wrap a
conditional model in :class:`CFGDenoiser` and pass ``extra_args={"c": c}``), ``x`` is the
starting noise, and ``callback`` receives ``{"i", "n", "t", "t_prev", "x", "x0"}`` after each step (``n``
is the number of steps, ``x0`` the step's prediction x̂_0). ``bf16`` runs the model's calls
under bfloat16 autocast (the step's arithmetic stays in x's dtype); default: for image batches
on a CPU that multiplies bfloat16 in hardware, with AMX or AVX512-BF16
(:func:`course_lib.config.native_bf16`). Every reverse step takes
``(x_t, t, eps, schedule, ...)`` and returns a :class:`StepOutput` ``(x_prev, x0)``.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, fields, replace
from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .config import draw_device, native_bf16

Denoiser = Callable[..., torch.Tensor]   # model(x_t, t, **extra_args) -> eps


# --- 01: the fixed mix -------------------------------------------------------------------------

def add_noise(x: torch.Tensor, amount: float | torch.Tensor = 0.5,
              noise: torch.Tensor | None = None):
    """01's corruption: (1 - amount)·x + amount·eps. Not variance-preserving (0.5² + 0.5² ≠ 1).

    ``amount``: one number for the batch, or a (B,) tensor with one amount per image.
    """
    a = torch.as_tensor(amount, dtype=x.dtype, device=x.device)
    if a.ndim > 1 or (a.ndim == 1 and len(a) != len(x)):
        raise ValueError(f"amount must be a number or one per image, shape ({len(x)},); got "
                         f"shape {tuple(a.shape)}")
    if not bool(((a >= 0) & (a <= 1)).all()):
        raise ValueError(f"amount must be in [0, 1], got {amount}")
    a = a.reshape(-1, *[1] * (x.ndim - 1)) if a.ndim == 1 else a
    noise = torch.randn_like(x) if noise is None else noise
    return (1 - a) * x + a * noise


# --- 02: schedules and the forward process -----------------------------------------------------

def same_shape(name: str, value: torch.Tensor, like_name: str, like: torch.Tensor) -> None:
    """Refuse a tensor that would broadcast silently against another it must match (a model
    returning one channel for RGB images, one noise for a whole batch)."""
    if value.shape != like.shape:
        raise ValueError(f"{name} has shape {tuple(value.shape)} but must have {like_name}'s "
                         f"shape {tuple(like.shape)}: does the model return img_ch channels, and "
                         "is there one noise per image?")


def extract(values: torch.Tensor, t: torch.Tensor | int, like: torch.Tensor) -> torch.Tensor:
    """``values[t]`` shaped to broadcast over ``like``: (B, 1, 1, 1) for a (B,) tensor ``t``.

    For an int ``t`` it returns a 0-d tensor. Either way the result has ``like``'s device and
    dtype, so a float64 schedule can serve float32 images.
    """
    T = len(values)
    if isinstance(t, numbers.Integral):   # int, or numpy's
        t = int(t)
        if not 0 <= t < T:
            raise ValueError(f"t={t} is outside [0, {T - 1}]")
        return values[t].to(like.dtype).to(like.device)
    if not isinstance(t, torch.Tensor) or t.is_floating_point() or t.is_complex():
        raise TypeError(f"t must be an integer step or a tensor of integer steps (torch.long), "
                        f"got {t!r}")
    if t.numel() and (t.min() < 0 or t.max() >= T):
        raise ValueError(f"t must lie in [0, {T - 1}], got [{t.min()}, {t.max()}]")
    # indexed where the schedule lives, cast, then moved: MPS has no float64
    out = values[t.to(values.device)].to(like.dtype).to(like.device)
    return out.reshape(-1, *[1] * (like.ndim - 1))


@dataclass(frozen=True, eq=False)
class Schedule:
    """All per-step constants of a variance schedule: tensors of length T, one value per step.

    Build one with :meth:`from_betas` (or :func:`linear_schedule`, :func:`cosine_schedule`):
    every constant is computed from the betas in float64 and then stored in ``dtype``. A
    Schedule is a value: :meth:`to` moves the stored tensors, it never recomputes them.
    """

    betas: torch.Tensor
    alphas: torch.Tensor                 # 1 - beta_t
    alpha_bars: torch.Tensor             # ᾱ_t = prod_{s<=t} alpha_s
    alpha_bars_prev: torch.Tensor        # ᾱ_{t-1}, with ᾱ_{-1} = 1
    posterior_variance: torch.Tensor     # beta~_t (eq. 7)
    posterior_coef_x0: torch.Tensor      # weight of x_0 in the posterior mean (eq. 7)
    posterior_coef_xt: torch.Tensor      # weight of x_t in the posterior mean (eq. 7)

    @classmethod
    def from_betas(cls, betas: torch.Tensor, dtype: torch.dtype = torch.float32) -> "Schedule":
        b = torch.as_tensor(betas).detach().double()
        if b.ndim != 1 or len(b) < 1 or (b <= 0).any() or (b >= 1).any():
            raise ValueError("betas must be a 1-D tensor with every value in (0, 1)")
        alphas = 1 - b
        alpha_bars = torch.cumprod(alphas, 0)
        alpha_bars_prev = torch.cat((alpha_bars.new_ones(1), alpha_bars[:-1]))
        device = torch.as_tensor(betas).device
        f = lambda v: v.to(device, dtype)  # noqa: E731
        # Eq. 7: beta~_t = (1 - ᾱ_{t-1}) / (1 - ᾱ_t)·beta_t, and the two weights of the posterior
        # mean, built in float64, where 1 - ᾱ_t does not cancel near t = 0. (q_sample and the
        # steps take 1 - ᾱ_t from the stored float32 ᾱ: off by 2e-4 of itself at worst, at t = 0.)
        return cls(
            betas=f(b), alphas=f(alphas), alpha_bars=f(alpha_bars),
            alpha_bars_prev=f(alpha_bars_prev),
            posterior_variance=f((1 - alpha_bars_prev) / (1 - alpha_bars) * b),
            posterior_coef_x0=f(alpha_bars_prev.sqrt() * b / (1 - alpha_bars)),
            posterior_coef_xt=f(alphas.sqrt() * (1 - alpha_bars_prev) / (1 - alpha_bars)),
        )

    @property
    def T(self) -> int:
        return len(self.betas)

    @property
    def dtype(self) -> torch.dtype:
        return self.betas.dtype

    def to(self, device) -> "Schedule":
        """The same constants on ``device`` (moved, not recomputed: float64 stays float64)."""
        return replace(self, **{f.name: getattr(self, f.name).to(device) for f in fields(self)})

    # Eq. 4: q(x_t | x_0) = N(sqrt(ᾱ_t) x_0, (1 - ᾱ_t) I)
    def q_sample(self, x0: torch.Tensor, t, noise: torch.Tensor) -> torch.Tensor:
        """Sample x_t ~ q(x_t | x_0) in one step: sqrt(ᾱ_t)·x_0 + sqrt(1 - ᾱ_t)·eps (eq. 4)."""
        same_shape("noise", noise, "x0", x0)
        ab = extract(self.alpha_bars, t, x0)
        return ab.sqrt() * x0 + (1 - ab).sqrt() * noise

    def predict_x0(self, x_t: torch.Tensor, t, eps: torch.Tensor) -> torch.Tensor:
        """Invert eq. 4 for x_0 given the noise: (x_t - sqrt(1 - ᾱ_t)·eps) / sqrt(ᾱ_t)."""
        same_shape("eps", eps, "x_t", x_t)
        ab = extract(self.alpha_bars, t, x_t)
        return (x_t - (1 - ab).sqrt() * eps) / ab.sqrt()

    def q_posterior(self, x0: torch.Tensor, x_t: torch.Tensor, t):
        """Mean and variance of q(x_{t-1} | x_t, x_0) (eqs. 6-7).

        mean = sqrt(ᾱ_{t-1})·beta_t/(1 - ᾱ_t)·x_0 + sqrt(alpha_t)·(1 - ᾱ_{t-1})/(1 - ᾱ_t)·x_t
        """
        mean = (extract(self.posterior_coef_x0, t, x_t) * x0
                + extract(self.posterior_coef_xt, t, x_t) * x_t)
        return mean, extract(self.posterior_variance, t, x_t)


def linear_schedule(T: int = 150, beta_start: float = 1e-4, beta_end: float = 0.02) -> Schedule:
    """Ho et al. 2020: betas evenly spaced from beta_start to beta_end."""
    if T < 1:
        raise ValueError(f"T must be >= 1, got {T}")
    return Schedule.from_betas(torch.linspace(beta_start, beta_end, T, dtype=torch.float64))


def cosine_schedule(T: int = 150, s: float = 0.008, max_beta: float = 0.999) -> Schedule:
    """Nichol & Dhariwal 2021, eq. 17: ᾱ_t = f(t)/f(0), f(t) = cos²(((t/T + s)/(1 + s))·π/2), beta capped at max_beta."""
    if T < 1:
        raise ValueError(f"T must be >= 1, got {T}")
    steps = torch.arange(T + 1, dtype=torch.float64) / T
    f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
    betas = (1 - f[1:] / f[:-1]).clamp(max=max_beta)
    return Schedule.from_betas(betas)


def scaled_linear_schedule(T: int = 150, beta_start: float = 1e-4, beta_end: float = 0.02
                           ) -> Schedule:
    """DDPM's 1000-step linear betas rescaled to T steps (×1000/T), so ᾱ_T ≈ 0 as in the paper.

    With T = 150 the plain :func:`linear_schedule` ends at ᾱ_T ≈ 0.22: x_T still holds the image,
    and sampling from pure noise starts from the wrong distribution (Lin et al. 2024, "Common
    Diffusion Noise Schedules and Sample Steps Are Flawed"). Scaling keeps the shape of the curve
    and ends at ᾱ_T ≈ 3e-5.

    Not diffusers' ``beta_schedule="scaled_linear"`` (Stable Diffusion's), which squares a linear
    ramp of √β from √0.00085 to √0.012 and ends at ᾱ_T ≈ 0.0047 after 1000 steps.
    """
    if T < 1:
        raise ValueError(f"T must be >= 1, got {T}")
    scale = 1000 / T
    if beta_end * scale >= 1:
        raise ValueError(f"T={T} is too small to scale DDPM's betas (beta_end·1000/T >= 1)")
    return linear_schedule(T, beta_start * scale, beta_end * scale)


# --- the training objective --------------------------------------------------------------------

def min_snr_weight(snr: torch.Tensor, gamma: float, prediction: str = "eps") -> torch.Tensor:
    """min-SNR-γ (Hang et al. 2023) as a weight on each image's error: min(SNR_t, γ)/SNR_t for an
    eps-target, min(SNR_t, γ)/(SNR_t + 1) for a v-target. Either way the loss becomes
    min(SNR_t, γ)·||x̂_0 - x_0||² (bench/RESULTS.md, section 16). :func:`diffusion_loss` writes
    the eps form out in its own body, which notebook 02 prints for students."""
    if not gamma > 0:
        raise ValueError(f"min-SNR-γ needs γ > 0 (Hang et al. use 5; None: unweighted), got {gamma}: "
                         "γ = 0 zeroes the loss and γ < 0 turns it upside down")
    if prediction not in ("eps", "v"):
        raise ValueError(f"prediction is 'eps' or 'v' (what the network learns), got {prediction!r}")
    return snr.clamp(max=gamma) / (snr + 1 if prediction == "v" else snr)



def diffusion_loss(model: Callable, x0: torch.Tensor, schedule: Schedule,
                   generator: torch.Generator | None = None, min_snr_gamma: float | None = None,
                   **model_kwargs) -> torch.Tensor:
    """L_simple (Ho et al. eq. 14): E_{t, eps} ||eps - eps_theta(sqrt(ᾱ_t)x_0 + sqrt(1-ᾱ_t)eps, t)||².

    ``min_snr_gamma`` weights each image's error by min(SNR_t, γ)/SNR_t, SNR_t = ᾱ_t/(1 - ᾱ_t)
    (Hang et al. 2023, "Efficient Diffusion Training via Min-SNR Weighting Strategy"): the eps
    error is the picture's error times SNR_t, so the nearly clean steps, whose picture is all but
    known, stop dominating the gradient. ``model_kwargs`` (e.g. ``c=..., c_mask=...``) are passed
    to the model by keyword, exactly as the samplers pass their ``extra_args``.
    """
    if min_snr_gamma is not None and not min_snr_gamma > 0:
        raise ValueError(f"min_snr_gamma must be > 0 (Hang et al. use 5; None: unweighted), got "
                         f"{min_snr_gamma}")
    t = torch.randint(0, schedule.T, (len(x0),), device=x0.device, generator=generator)
    noise = torch.randn(x0.shape, device=x0.device, dtype=x0.dtype, generator=generator)
    x_t = schedule.q_sample(x0, t, noise)
    if min_snr_gamma is None:
        return F.mse_loss(model(x_t, t, **model_kwargs), noise)
    ab = extract(schedule.alpha_bars, t, x0).flatten()
    snr = ab / (1 - ab)
    weight = snr.clamp(max=min_snr_gamma) / snr
    per_image = (model(x_t, t, **model_kwargs) - noise).square().flatten(1).mean(1)
    return (weight * per_image).mean()


class VDenoiser:
    """A v-prediction network seen as a noise predictor (Salimans & Ho 2022, "Progressive Distillation").

    The network learns v = sqrt(ᾱ_t)·eps - sqrt(1-ᾱ_t)·x_0 (:meth:`loss`); calling the wrapper
    returns eps = sqrt(ᾱ_t)·v + sqrt(1-ᾱ_t)·x_t, so every sampler and :class:`CFGDenoiser` work
    unchanged. Where ᾱ_t ≈ 0 (a schedule that ends at pure noise) an eps-network's x̂_0 =
    (x_t - sqrt(1-ᾱ_t)·eps)/sqrt(ᾱ_t) divides its error by sqrt(ᾱ_t) ≈ 0; a v-network's x̂_0 =
    sqrt(ᾱ_t)·x_t - sqrt(1-ᾱ_t)·v does not (Lin et al. 2024, section 3.2).
    """

    def __init__(self, model: Callable, schedule: Schedule):
        self.model, self.schedule = model, schedule

    def _scales(self, t: torch.Tensor, like: torch.Tensor):
        ab = extract(self.schedule.alpha_bars, t, like)
        return ab.sqrt(), (1 - ab).sqrt()

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor, **model_kwargs) -> torch.Tensor:
        a, s = self._scales(t, x_t)
        return a * self.model(x_t, t, **model_kwargs) + s * x_t

    def loss(self, x0: torch.Tensor, generator: torch.Generator | None = None,
             min_snr_gamma: float | None = None, lognormal: tuple[float, float] | None = None,
             **model_kwargs) -> torch.Tensor:
        """E_{t, eps} ||v - v_theta(x_t, t)||², the v-target of the same x_t as :func:`diffusion_loss`.

        ``min_snr_gamma`` weights each image's error by min(SNR_t, γ)/(SNR_t + 1), min-SNR-γ for
        a v-target (Hang et al. 2023); ``lognormal=(P_mean, P_std)`` draws t by
        :func:`lognormal_timesteps` instead of uniformly.
        """
        draw = draw_device(generator, x0.device)
        if lognormal is None:
            t = torch.randint(0, self.schedule.T, (len(x0),), device=draw, generator=generator)
        else:
            t = lognormal_timesteps(self.schedule, len(x0), *lognormal, generator=generator)
        t = t.to(x0.device)
        noise = torch.randn(x0.shape, device=draw, dtype=x0.dtype, generator=generator).to(x0.device)
        a, s = self._scales(t, x0)
        x_t = a * x0 + s * noise
        v = a * noise - s * x0
        if min_snr_gamma is None:
            return F.mse_loss(self.model(x_t, t, **model_kwargs), v)
        error = self.model(x_t, t, **model_kwargs) - v
        weight = min_snr_weight((a / s).square().flatten(), min_snr_gamma, prediction="v")
        return (weight * error.square().flatten(1).mean(1)).mean()


def lognormal_timesteps(schedule: Schedule, n: int, p_mean: float = -1.2, p_std: float = 1.2,
                        generator: torch.Generator | None = None) -> torch.Tensor:
    """n timesteps whose σ_t = sqrt((1-ᾱ_t)/ᾱ_t) lie nearest, in log σ, to ln σ ~ N(P_mean, P_std²).

    EDM's training noise levels (Karras et al. 2022, Table 1; P_mean = -1.2, P_std = 1.2 for
    32×32 images): most steps go to the low and middle noise levels (on 04's cosine schedule,
    about half below t = 29, where SNR_t > 9), few to the nearly pure-noise end.
    """
    if not p_std > 0:
        raise ValueError(f"lognormal timesteps need P_std > 0 (EDM: 1.2), got {p_std}")
    device = schedule.alpha_bars.device
    log_sigmas = (0.5 * ((1 - schedule.alpha_bars) / schedule.alpha_bars).log()).float()
    noise = torch.randn(n, device=draw_device(generator, device), generator=generator)
    drawn = (p_mean + p_std * noise).to(device)
    return (drawn[:, None] - log_sigmas[None, :]).abs().argmin(dim=1)


# --- reverse steps -----------------------------------------------------------------------------

class StepOutput(NamedTuple):
    """What one reverse step returns: the next sample and the x_0 it predicted on the way."""

    x_prev: torch.Tensor     # x_{t-1} (DDPM) or x_{t_prev} (DDIM)
    x0: torch.Tensor         # x̂_0, the model's current guess of the clean image


def ddpm_step(x_t: torch.Tensor, t: int, eps: torch.Tensor, schedule: Schedule,
              noise: torch.Tensor | None = None, variance: str = "beta",
              clip_x0: bool = False) -> StepOutput:
    """One step of Ho et al. Algorithm 2: x_{t-1} = mean + sigma_t·z, no noise at t = 0.

    1. mean = (x_t - beta_t / sqrt(1 - ᾱ_t)·eps) / sqrt(alpha_t)      (eq. 11)
       (with ``clip_x0``: x_0 = clamp(predict_x0, -1, 1), mean = posterior mean, eq. 7)
    2. sigma_t² = beta_t (``variance="beta"``) or beta~_t (``"posterior"``), of the same t.
    3. x_{t-1} = mean + sigma_t·z, z ~ N(0, I); z = 0 at t = 0 (the last step).
    """
    if variance not in ("beta", "posterior"):
        raise ValueError(f"variance must be 'beta' or 'posterior', got {variance!r}")
    x0 = schedule.predict_x0(x_t, t, eps)
    # 1. the mean of p(x_{t-1} | x_t)
    if clip_x0:
        x0 = x0.clamp(-1, 1)
        mean, _ = schedule.q_posterior(x0, x_t, t)
    else:
        beta = extract(schedule.betas, t, x_t)
        ab = extract(schedule.alpha_bars, t, x_t)
        mean = (x_t - beta / (1 - ab).sqrt() * eps) / extract(schedule.alphas, t, x_t).sqrt()
    if t == 0:
        return StepOutput(mean, x0)
    # 2. the variance, of step t itself
    var = extract(schedule.betas if variance == "beta" else schedule.posterior_variance, t, x_t)
    # 3. add fresh noise
    noise = torch.randn_like(x_t) if noise is None else noise
    return StepOutput(mean + var.sqrt() * noise, x0)


DEFAULT_ETA = 1.0
"""The η that sample_ddim uses unless told otherwise: the best the course measured.

bench/RESULTS.md ("Samplers"): on the 06 model DDIM-25 with η = 1 is recognised 99.6% of the
time, η = 0 only 55%. η = 0 is still there for when determinism is the point (say eta=0.0).
"""


def ddim_step(x_t: torch.Tensor, t: int, eps: torch.Tensor, schedule: Schedule, t_prev: int,
              eta: float = DEFAULT_ETA, noise: torch.Tensor | None = None,
              clip_x0: bool = False) -> StepOutput:
    """One DDIM step from t to t_prev < t (Song et al. 2021, eq. 12); t_prev = -1 means ᾱ = 1.

    η sets how much fresh noise each step adds, as in diffusers: η = 0 is deterministic DDIM,
    η = 1 is DDPM-like (over all T steps, without ``clip_x0``, it is DDPM with the posterior
    variance; with it, this step keeps the raw eps in its direction term, as diffusers does).

    1. x_0 = (x_t - sqrt(1 - ᾱ_t)·eps) / sqrt(ᾱ_t)
    2. sigma = eta · sqrt((1 - ᾱ_prev)/(1 - ᾱ_t)) · sqrt(1 - ᾱ_t/ᾱ_prev)     (eq. 16)
    3. x_prev = sqrt(ᾱ_prev)·x_0 + sqrt(1 - ᾱ_prev - sigma²)·eps + sigma·z
    """
    if not -1 <= t_prev < t:
        raise ValueError(f"DDIM steps go backwards: need -1 <= t_prev < t, got t={t}, "
                         f"t_prev={t_prev}")
    if not 0 <= eta <= 1:   # above 1, sigma² can pass 1 - ᾱ_prev: noisier than q(x_t_prev | x_0)
        raise ValueError(f"eta must lie in [0, 1] (0: deterministic DDIM, 1: DDPM's posterior "
                         f"variance), got {eta}")
    # 1. predicted x_0
    x0 = schedule.predict_x0(x_t, t, eps)
    if clip_x0:
        x0 = x0.clamp(-1, 1)
    ab = extract(schedule.alpha_bars, t, x_t)
    ab_prev = (extract(schedule.alpha_bars, t_prev, x_t) if t_prev >= 0
               else torch.ones((), dtype=x_t.dtype, device=x_t.device))
    # 2. how much fresh noise this step adds
    sigma = eta * ((1 - ab_prev) / (1 - ab)).sqrt() * (1 - ab / ab_prev).sqrt()
    # 3. jump to t_prev along the predicted direction
    x_prev = ab_prev.sqrt() * x0 + (1 - ab_prev - sigma ** 2).clamp(min=0).sqrt() * eps
    if eta > 0 and t_prev >= 0:
        x_prev = x_prev + sigma * (torch.randn_like(x_t) if noise is None else noise)
    return StepOutput(x_prev, x0)


# --- samplers ----------------------------------------------------------------------------------

def _noise_like(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor | None:
    """Fresh noise from ``generator``, drawn on its own device (a CPU generator: the same numbers
    whatever the device of ``x``), then moved to ``x``'s."""
    if generator is None:
        return None
    return torch.randn(x.shape, generator=generator, dtype=x.dtype,
                       device=draw_device(generator, x.device)).to(x.device)


def _sample_loop(model: Denoiser, x: torch.Tensor, timesteps: list[int], step: Callable,
                 desc: str, extra_args: dict | None, callback: Callable | None,
                 disable: bool | None, generator: torch.Generator | None,
                 bf16: bool | None) -> torch.Tensor:
    """Walk the (t, t_prev) pairs: eps = model(x, t, **extra_args), then ``step`` to t_prev."""
    extra_args = extra_args or {}
    if bf16 is None:
        bf16 = x.ndim == 4 and native_bf16(x.device)
    pairs = list(zip(timesteps, timesteps[1:] + [-1]))
    for i, (t, t_prev) in enumerate(tqdm(pairs, desc=desc + (" (bf16)" if bf16 else ""),
                                         disable=disable, leave=False)):
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
            eps = model(x, torch.full((len(x),), t, device=x.device, dtype=torch.long), **extra_args)
        out = step(x, t, eps.to(x.dtype), t_prev, _noise_like(x, generator))
        if callback is not None:
            callback({"i": i, "n": len(pairs), "t": t, "t_prev": t_prev, "x": out.x_prev,
                      "x0": out.x0})
        x = out.x_prev
    return x


@torch.no_grad()
def sample_ddpm(model: Denoiser, x: torch.Tensor, schedule: Schedule,
                extra_args: dict | None = None, callback: Callable | None = None,
                disable: bool | None = None, generator: torch.Generator | None = None,
                variance: str = "beta", clip_x0: bool = False, bf16: bool | None = None
                ) -> torch.Tensor:
    """Ancestral sampling, Ho et al. 2020 Algorithm 2: all T steps from x_T = x to x_0."""
    def step(x_t, t, eps, t_prev, noise):
        return ddpm_step(x_t, t, eps, schedule, noise=noise, variance=variance, clip_x0=clip_x0)

    return _sample_loop(model, x, list(range(schedule.T - 1, -1, -1)), step, "DDPM sampling",
                        extra_args, callback, disable, generator, bf16)


def ddim_timesteps(T: int, steps: int) -> list[int]:
    """``steps`` timesteps evenly spread over [0, T-1], descending from T-1 (pure noise's level);
    two or more end at 0, one jumps from T-1 straight to x̂₀."""
    if not 1 <= steps <= T:
        raise ValueError(f"DDIM needs 1 <= steps <= T={T}, got {steps}")
    if steps == 1:
        return [T - 1]
    ts = torch.linspace(0, T - 1, steps, dtype=torch.float64).round().long().unique()
    return ts.flip(0).tolist()


@torch.no_grad()
def sample_ddim(model: Denoiser, x: torch.Tensor, schedule: Schedule, steps: int = 50,
                eta: float = DEFAULT_ETA, extra_args: dict | None = None,
                callback: Callable | None = None, disable: bool | None = None,
                generator: torch.Generator | None = None, clip_x0: bool = False,
                bf16: bool | None = None, t_start: int | None = None) -> torch.Tensor:
    """DDIM sampling, Song et al. 2021: ``steps`` jumps; η = 0 deterministic, η = 1 DDPM-like.

    ``x`` is x_{T-1}, pure noise; with ``t_start`` it is x_{t_start}, a partly noised image
    (image-to-image, ``course_lib/editing.py``), and the jumps run from t_start down through
    the DDIM timesteps below it.
    """
    def step(x_t, t, eps, t_prev, noise):
        return ddim_step(x_t, t, eps, schedule, t_prev, eta=eta, noise=noise, clip_x0=clip_x0)

    ts = ddim_timesteps(schedule.T, steps)
    if t_start is not None:
        if not 0 <= t_start < schedule.T:
            raise ValueError(f"t_start is a timestep in [0, {schedule.T - 1}], got {t_start}")
        ts = [t_start] + [t for t in ts if t < t_start]
    return _sample_loop(model, x, ts, step, f"DDIM sampling ({len(ts)} steps, η={eta:g})",
                        extra_args, callback, disable, generator, bf16)


class FrameRecorder:
    """Sampler callback that keeps ``n`` evenly spaced frames of x (or of x̂_0 with key="x0").

    Each step goes from t to t_prev: an x frame is the sample *after* the step, labelled with
    t_prev ("final" after the last step); an x̂_0 frame is the prediction made *at* the step,
    from x_t, labelled with t.
    """

    def __init__(self, n: int = 10, key: str = "x"):
        if key not in ("x", "x0"):
            raise ValueError(f"key must be 'x' or 'x0', got {key!r}")
        self.n, self.key = n, key
        self.frames: list[torch.Tensor] = []
        self.labels: list[str] = []

    def __call__(self, info: dict) -> None:
        total = info["n"]
        keep = torch.linspace(0, total - 1, min(self.n, total)).round().long().tolist()
        if info["i"] in keep:
            self.frames.append(info[self.key].detach().cpu().clone())
            if self.key == "x0":
                self.labels.append(f"t={info['t']}")
            else:
                self.labels.append(f"t={info['t_prev']}" if info["t_prev"] >= 0 else "final")


# --- 04: classifier-free guidance --------------------------------------------------------------

class CFGDenoiser:
    """Classifier-free guidance (Ho & Salimans 2022): eps = (1 + w)·eps(x, c) - w·eps(x, ∅).

    Wraps a conditional model ``model(x, t, c=..., c_mask=...)`` as ``denoiser(x, t, c=...)``;
    give the context to a sampler as ``extra_args={"c": c}``. The conditional and unconditional
    predictions come from one forward pass of a doubled batch (mask 1, then mask 0).
    With ``rescale`` = φ > 0 the guided eps is pulled back towards the conditional one's spread
    (see ``rescale_guidance``), against the over-saturated colours of large w.
    With ``uncond`` (another network of the same kind, say an early snapshot of ``model``) the
    unconditional prediction eps(x, ∅) comes from it instead: guidance then also pushes away
    from what a weaker model would draw, as in autoguidance (Karras et al. 2024, see
    :class:`AutoGuidance`). The two predictions then take two forward passes of the batch.
    With ``interval`` = (t_lo, t_hi), guidance acts only on steps with t_lo ≤ t ≤ t_hi and the
    other steps take eps(x, c) alone, in one pass of the batch (Kynkäänniemi et al. 2024,
    "Applying Guidance in a Limited Interval Improves Sample and Distribution Quality in
    Diffusion Models"), whose argument is that at the noisiest steps guidance drives every sample
    of a class towards the same layout and at the cleanest only sharpens what is already there.
    What it buys depends on the model: bench/RESULTS.md, section 15.
    With ``c_neg`` (a sampler's extra argument like ``c``, one row per image) the prediction for
    that context takes the place of eps(x, ∅): eps = (1 + w)·eps(x, c) − w·eps(x, c_neg) steers
    towards ``c`` and away from ``c_neg``, the *negative prompt* of text-to-image tools.
    """

    def __init__(self, model: Callable, w: float = 1.0, rescale: float = 0.0,
                 uncond: Callable | None = None, interval: tuple[int, int] | None = None):
        if not 0.0 <= rescale <= 1.0:
            raise ValueError(f"rescale is the blend φ in [0, 1] (Lin et al. 2024 use 0.7), got {rescale}")
        if interval is not None and not (len(interval) == 2 and 0 <= interval[0] <= interval[1]):
            raise ValueError(f"interval is (t_lo, t_hi) with 0 <= t_lo <= t_hi, the timesteps where "
                             f"guidance acts; got {interval!r}")
        self.model, self.w, self.rescale, self.uncond = model, w, rescale, uncond
        self.interval = interval

    def guided_rows(self, t: torch.Tensor) -> torch.Tensor:
        """Which rows of the batch, at timesteps ``t``, are guided (a bool per row)."""
        t = t.reshape(-1)
        if self.w == 0:
            return torch.zeros_like(t, dtype=torch.bool)
        if self.interval is None:
            return torch.ones_like(t, dtype=torch.bool)
        return (t >= self.interval[0]) & (t <= self.interval[1])

    def __call__(self, x: torch.Tensor, t: torch.Tensor, c: torch.Tensor,
                 c_neg: torch.Tensor | None = None) -> torch.Tensor:
        if len(c) != len(x):
            raise ValueError(f"context has {len(c)} rows for a batch of {len(x)} images")
        if c_neg is not None and c_neg.shape != c.shape:
            raise ValueError(f"the negative context must have the context's shape {tuple(c.shape)}, "
                             f"got {tuple(c_neg.shape)}: one negative prompt per image")
        if c_neg is not None and self.uncond is not None:
            raise ValueError("a negative context replaces eps(x, ∅), which uncond gives: pass one")
        t = t.reshape(-1).expand(len(x)) if t.numel() == 1 else t   # one step for the batch
        keep = torch.ones(len(x), 1, device=x.device)
        rows = self.guided_rows(t)
        if not rows.any():
            return self.model(x, t, c=c, c_mask=keep)
        if self.uncond is None:   # the other half: c masked out (∅), or the negative context
            other, other_mask = (c, torch.zeros_like(keep)) if c_neg is None else (c_neg, keep)
            eps = self.model(torch.cat((x, x)), torch.cat((t, t)), c=torch.cat((c, other)),
                             c_mask=torch.cat((keep, other_mask)))
            eps_cond, eps_uncond = eps.to(x.dtype).chunk(2)   # mix in x's precision (bf16 sampling)
        else:
            eps_cond = self.model(x, t, c=c, c_mask=keep).to(x.dtype)
            eps_uncond = self.uncond(x, t, c=c, c_mask=torch.zeros_like(keep)).to(x.dtype)
        guided = (1 + self.w) * eps_cond - self.w * eps_uncond
        if self.rescale:
            guided = self._rescaled(guided, eps_cond, x, t)
        if rows.all():
            return guided
        return torch.where(rows.reshape(-1, *[1] * (x.ndim - 1)), guided, eps_cond)

    def _rescaled(self, guided: torch.Tensor, cond: torch.Tensor, x: torch.Tensor,
                  t: torch.Tensor) -> torch.Tensor:
        """:func:`rescale_guidance` of what the network predicts: v for a :class:`VDenoiser`
        (Lin et al. 2024 rescale a v-network's v, as diffusers rescales a pipeline's raw
        output). Its ε = √ᾱ·v + √(1−ᾱ)·x_t shares the term √(1−ᾱ)·x_t between the guided and the
        conditional prediction, which dominates both spreads where ᾱ ≈ 0: rescaled as ε, the
        noisy steps would hardly change."""
        if not isinstance(self.model, VDenoiser):
            return rescale_guidance(guided, cond, self.rescale)
        _, s = self.model._scales(t, x)   # ε - √(1−ᾱ)·x_t = √ᾱ·v, and the rescale commutes with
        return s * x + rescale_guidance(guided - s * x, cond - s * x, self.rescale)  # the factor √ᾱ


class ProjectedGuidance:
    """Adaptive projected guidance (Sadat et al. 2025, "Eliminating Oversaturation and Artifacts
    of High Guidance Scales in Diffusion Models"): guidance without its part along x̂₀.

    1. Predict x̂₀ from eps(x, c) and eps(x, ∅) (eq. 4 inverted, ``Schedule.predict_x0``).
    2. Guidance in those terms is x̂₀(c) + w·Δ with Δ = x̂₀(c) − x̂₀(∅): the same sum as
       :class:`CFGDenoiser`'s, since x̂₀ is linear in eps.
    3. Split Δ per sample, over all its pixels, into Δ∥, its projection on x̂₀(c), and
       Δ⊥ = Δ − Δ∥. Δ∥ scales the picture's own values up (the over-saturated colours of large
       w); Δ⊥ changes what is drawn.
    4. Add w·(Δ⊥ + ``parallel``·Δ∥) (the paper's default: 0) to x̂₀(c), after scaling Δ down to
       a norm of at most ``norm_threshold`` where that is > 0, and turn the guided x̂₀ back into
       eps. Only the *extra* push along x̂₀(c) goes: x̂₀(c) keeps its own part, so w → 0 is the
       conditional prediction for every ``parallel``.
    ``parallel=1`` without a threshold is plain classifier-free guidance. This is the paper's
    Algorithm 1, diffusers' ``normalized_guidance(..., use_original_formulation=True)`` on x̂₀,
    without its momentum (tests/test_diffusers_agreement.py). Until the twenty-seventh session
    the course added (1 + w)·(Δ⊥ + parallel·Δ∥) to x̂₀(∅) instead (diffusers' default form),
    which at ``parallel`` < 1 also drops part of x̂₀(c)'s own Δ∥ (bench/RESULTS.md, section 6).
    It takes a model and context as :class:`CFGDenoiser` does, with one doubled-batch pass.
    """

    def __init__(self, model: Callable, schedule: "Schedule", w: float = 1.0,
                 parallel: float = 0.0, norm_threshold: float = 0.0):
        if norm_threshold < 0:
            raise ValueError(f"norm_threshold is a largest norm of Δ (0: none), got {norm_threshold}")
        self.model, self.schedule, self.w = model, schedule, w
        self.parallel, self.norm_threshold = parallel, norm_threshold

    def __call__(self, x: torch.Tensor, t: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        if len(c) != len(x):
            raise ValueError(f"context has {len(c)} rows for a batch of {len(x)} images")
        keep = torch.ones(len(x), 1, device=x.device)
        t = t.expand(len(x)) if t.numel() == 1 else t
        if self.w == 0:
            return self.model(x, t, c=c, c_mask=keep)
        mask = torch.cat((keep, torch.zeros_like(keep)))
        eps = self.model(torch.cat((x, x)), torch.cat((t, t)), c=torch.cat((c, c)), c_mask=mask)
        x0_cond, x0_uncond = (self.schedule.predict_x0(x, t, e) for e in eps.to(x.dtype).chunk(2))
        dims = list(range(1, x.ndim))
        diff = x0_cond - x0_uncond
        if self.norm_threshold > 0:
            norm = torch.linalg.vector_norm(diff, dim=dims, keepdim=True)
            diff = diff * (self.norm_threshold / norm).clamp(max=1.0)
        unit = x0_cond / torch.linalg.vector_norm(x0_cond, dim=dims, keepdim=True).clamp_min(1e-12)
        along = (diff * unit).sum(dim=dims, keepdim=True) * unit
        x0 = x0_cond + self.w * (diff - along + self.parallel * along)
        ab = extract(self.schedule.alpha_bars, t, x)
        return (x - ab.sqrt() * x0) / (1 - ab).sqrt()


class AutoGuidance:
    """Autoguidance (Karras et al. 2024): eps = eps_bad + w·(eps_good − eps_bad).

    From "Guiding a Diffusion Model with a Bad Version of Itself" (NeurIPS 2024). Guides a model by a weaker version of itself: where the two disagree, the good model is
    pushed further from what the weak one would draw. The weak model must make the same kind of
    errors, only more of them; an early EMA snapshot of the same training run is one
    (``train(..., snapshot_epochs=...)``). Needs no context: it guides unconditional models too.
    w = 1 is the good model alone; each step costs both models' forward passes.
    ``denoiser(x, t, **extra_args)`` passes ``extra_args`` to both models.
    """

    def __init__(self, good: Callable, bad: Callable, w: float = 2.0):
        if w < 1:
            raise ValueError(f"autoguidance needs w >= 1 (1: the good model alone), got {w}")
        self.good, self.bad, self.w = good, bad, w

    def __call__(self, x: torch.Tensor, t: torch.Tensor, **extra_args) -> torch.Tensor:
        eps_good = self.good(x, t, **extra_args).to(x.dtype)
        if self.w == 1:
            return eps_good
        eps_bad = self.bad(x, t, **extra_args).to(x.dtype)
        return eps_bad + self.w * (eps_good - eps_bad)


def guidance_interval(schedule: Schedule, sigma_lo: float, sigma_hi: float) -> tuple[int, int]:
    """The timesteps (t_lo, t_hi) whose noise level σ_t = sqrt((1 − ᾱ_t)/ᾱ_t) lies in (σ_lo, σ_hi].

    Kynkäänniemi et al. 2024 give their interval in σ, which does not depend on the schedule or T;
    ``CFGDenoiser(interval=...)`` takes timesteps. σ_t grows with t, so the interval is one run.
    """
    if not 0 <= sigma_lo < sigma_hi:
        raise ValueError(f"need 0 <= sigma_lo < sigma_hi, got {sigma_lo} and {sigma_hi}")
    ab = schedule.alpha_bars.detach().cpu().double()   # to the CPU first: MPS has no float64
    sigma = ((1 - ab) / ab).sqrt()
    inside = ((sigma > sigma_lo) & (sigma <= sigma_hi)).nonzero().flatten()
    if len(inside) == 0:
        raise ValueError(f"no timestep of this schedule has σ in ({sigma_lo}, {sigma_hi}]; its σ "
                         f"runs from {float(sigma[0]):.3g} to {float(sigma[-1]):.3g}")
    return int(inside[0]), int(inside[-1])


def rescale_guidance(guided: torch.Tensor, cond: torch.Tensor, phi: float) -> torch.Tensor:
    """Guidance rescale, Lin et al. 2024 §3.4: φ·guided·σ(cond)/σ(guided) + (1 − φ)·guided.

    σ is each sample's standard deviation over all its pixels. Large w inflates the guided
    prediction's spread, which shows as burnt, over-saturated colours; scaling it back to the
    conditional prediction's spread fixes that, and the blend with φ < 1 keeps some of the
    contrast guidance adds. The same sum as diffusers' ``rescale_noise_cfg``, on the network's
    own prediction (:class:`CFGDenoiser` rescales a :class:`VDenoiser`'s v, not the ε it returns). On
    the course's ε-prediction models it changed nothing measurable (bench/flower_sampler.md,
    bench/fashion_guidance.md), so the notebooks sample without it; it is here to try on larger w
    or other models.
    """
    dims = list(range(1, guided.ndim))
    ratio = cond.std(dim=dims, keepdim=True) / guided.std(dim=dims, keepdim=True)
    return phi * guided * ratio + (1 - phi) * guided


def sample_guided(model: Callable, c: torch.Tensor, shape: tuple[int, ...], schedule: Schedule,
                  w: float = 2.0, steps: int = 50, eta: float = DEFAULT_ETA,
                  clip_x0: bool = False, seed: int = 0, callback: Callable | None = None,
                  disable: bool | None = None, rescale: float = 0.0,
                  bf16: bool | None = None, uncond: Callable | None = None,
                  interval: tuple[int, int] | None = None,
                  projected: float | None = None,
                  negative: torch.Tensor | None = None) -> torch.Tensor:
    """Guided DDIM samples, one per row of the context ``c``: what 04 and 05 draw.

    The starting noise and every step's noise come from a CPU generator seeded with ``seed``, so
    two calls with the same seed (say, two values of w) start from the same x_T. ``rescale`` is
    the guidance rescale φ of ``CFGDenoiser`` (0: plain guidance), ``uncond`` its network for the
    unconditional prediction (default: ``model`` itself), ``interval`` its guidance interval
    (timesteps; :func:`guidance_interval` turns a range of noise levels σ into one). With
    ``projected`` = p, guidance is :class:`ProjectedGuidance` instead, keeping p of its part along
    x̂₀ (0: none, as Sadat et al. 2025); it takes none of ``rescale``, ``uncond``, ``interval`` or
    ``negative``. ``negative``: a context per row (a negative prompt's embedding, say) whose
    prediction takes the place of the unconditional one, so that guidance steers away from it.
    """
    device = c.device
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(len(c), *shape, generator=generator).to(device)
    extra_args = {"c": c} if negative is None else {"c": c, "c_neg": negative.to(device)}
    if projected is None:
        denoiser = CFGDenoiser(model, w, rescale, uncond, interval)
    elif rescale or uncond is not None or interval is not None or negative is not None:
        raise ValueError("projected guidance takes none of rescale, uncond, interval or negative; "
                         "pass one kind")
    else:
        denoiser = ProjectedGuidance(model, schedule, w, parallel=projected)
    return sample_ddim(denoiser, x, schedule, steps=steps, eta=eta,
                       extra_args=extra_args, callback=callback, disable=disable,
                       generator=generator, clip_x0=clip_x0, bf16=bf16)
