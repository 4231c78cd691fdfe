"""Editing real images with a trained diffusion model: image-to-image (SDEdit) and inpainting.

Neither trains anything: both run the DDIM steps of ``course_lib/ddpm.py`` on a photo that is
partly noise. Any denoiser works, a ``CFGDenoiser`` asking for a class or a prompt included
(notebook 04, section 6).
"""
from __future__ import annotations

from typing import Callable

import torch

from course_lib.data import require_float_images
from course_lib.ddpm import (DEFAULT_ETA, Schedule, StepOutput, _noise_like, _sample_loop,
                             ddim_step, ddim_timesteps, sample_ddim)


def _noise(like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Standard normal noise shaped like ``like``, from ``generator`` when given (drawn on the
    generator's device, so a CPU generator gives the same numbers whatever the photos' device),
    else on the CPU. Unlike the samplers' per-step noise it is never None: the start of a sampler
    and the pasted-back pixels always need one."""
    require_float_images(like, "the photos to edit")
    return _noise_like(like, torch.default_generator if generator is None else generator)


@torch.no_grad()
def img2img(model: Callable, images: torch.Tensor, schedule: Schedule, strength: float,
            steps: int = 50, eta: float = DEFAULT_ETA, extra_args: dict | None = None,
            generator: torch.Generator | None = None, clip_x0: bool = False,
            disable: bool | None = None) -> torch.Tensor:
    """SDEdit (Meng et al. 2022): noise the images part of the way, then denoise them back.

    1. t_0 = the largest DDIM timestep at or below round(strength·(T − 1)) (none: the images
       come back)
    2. x_{t_0} ~ q(x_{t_0} | x_0)                                  (``Schedule.q_sample``)
    3. DDIM from t_0 down to 0 with ``model``                      (``sample_ddim(t_start=t_0)``)
    The noise hides detail first and layout last, so a low strength keeps the photo and changes
    its texture, a high one keeps only its rough layout and colours; strength 0 returns the
    images unchanged, 1 forgets them on a schedule that ends at pure noise (on 02's linear one,
    ᾱ_T = 0.22, some of the photo survives even then).
    """
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"strength is the share of the noise schedule to go back through, in "
                         f"[0, 1]; got {strength}")
    if strength == 0:
        return images.clone()
    t_0 = max((t for t in ddim_timesteps(schedule.T, steps) if t <= round(strength * (schedule.T - 1))),
              default=None)
    if t_0 is None:                      # no step of the run lies that low: nothing to go back
        return images.clone()
    x = schedule.q_sample(images, t_0, _noise(images, generator))
    return sample_ddim(model, x, schedule, steps=steps, eta=eta, extra_args=extra_args,
                       generator=generator, clip_x0=clip_x0, disable=disable, t_start=t_0)


def paste_back(x: torch.Tensor, images: torch.Tensor, keep: torch.Tensor, t_prev: int,
               schedule: Schedule, noise: torch.Tensor) -> torch.Tensor:
    """Step 3 of :func:`inpaint`: keep·q(x_{t_prev} | x_0) + (1 − keep)·x.

    The known pixels (``keep`` = 1) become the photo noised to the level of t_prev, with
    ``noise``; the others stay the sampler's. After the last step (t_prev = −1) no noise is
    left, and the photo's own pixels go back.
    """
    known = images if t_prev < 0 else schedule.q_sample(images, t_prev, noise)
    return keep * known + (1 - keep) * x


@torch.no_grad()
def inpaint(model: Callable, images: torch.Tensor, keep: torch.Tensor, schedule: Schedule,
            steps: int = 50, eta: float = DEFAULT_ETA, extra_args: dict | None = None,
            generator: torch.Generator | None = None, clip_x0: bool = False,
            disable: bool | None = None) -> torch.Tensor:
    """Fill the pixels where ``keep`` is 0 to fit those where it is 1 (RePaint, Lugmayr et al.
    2022, without its resampling).

    From pure noise, at each DDIM step t → t_prev:
    1. x_prev = the DDIM step of the whole picture: the network sees the known pixels
    2. known = the photo itself noised to t_prev, q(x_{t_prev} | x_0)
    3. x_prev = keep·known + (1 − keep)·x_prev                     (:func:`paste_back`)
    so the unknown pixels are always drawn next to the photo at their own noise level; the last
    step (t_prev = −1, no noise) puts the photo's own pixels back.
    """
    try:
        fits = torch.broadcast_shapes(keep.shape, images.shape) == images.shape
    except RuntimeError:
        fits = False
    if not fits or keep.ndim != images.ndim:
        raise ValueError(f"keep must be a mask with the images' height and width, shaped like "
                         f"{tuple(images.shape)} or broadcastable to it (say (N, 1, H, W)); got "
                         f"{tuple(keep.shape)}")
    if keep.min() < 0 or keep.max() > 1:
        raise ValueError(f"keep holds 1 where a pixel is known and 0 where it is to be filled "
                         f"(values between blend the two); got values from {keep.min().item():g} "
                         f"to {keep.max().item():g}")
    keep = keep.to(images.device, images.dtype)

    def step(x_t, t, eps, t_prev, noise):
        out = ddim_step(x_t, t, eps, schedule, t_prev, eta=eta, noise=noise, clip_x0=clip_x0)
        pasted = paste_back(out.x_prev, images, keep, t_prev, schedule, _noise(images, generator))
        return StepOutput(pasted, out.x0)

    ts = ddim_timesteps(schedule.T, steps)
    return _sample_loop(model, _noise(images, generator), ts, step, f"inpainting ({len(ts)} steps)",
                        extra_args, None, disable, generator, bf16=False)
