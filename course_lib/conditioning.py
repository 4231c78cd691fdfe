"""Context for conditional diffusion (04-06): one-hot classes and the keep-mask of classifier-free training.

Classifier-free guidance trains one network for two jobs: with the context (conditional) and
without it (unconditional). During training each image keeps its context with probability
``keep_prob`` and has it zeroed otherwise; the UNet sees ``c · mask`` (see
``OptimizedUNet.context``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .config import draw_device


def one_hot(labels: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Integer labels (B,) -> float one-hot vectors (B, n_classes)."""
    if labels.ndim != 1:
        raise ValueError(f"labels must be one class index per image, shape (B,); got shape "
                         f"{tuple(labels.shape)} (one-hot rows already? labels.argmax(1) gives "
                         "the indices)")
    if len(labels) == 0:
        return torch.zeros(0, n_classes, device=labels.device)
    if labels.is_floating_point() and not torch.equal(labels, labels.round()):
        raise ValueError("labels must be whole class indices; got fractions (a class index is "
                         "an integer: labels.long() after rounding)")
    if labels.min() < 0 or labels.max() >= n_classes:
        raise ValueError(f"labels must lie in [0, {n_classes - 1}], got [{labels.min()}, "
                         f"{labels.max()}]")
    return F.one_hot(labels.long(), n_classes).float()


def keep_mask(batch: int, keep_prob: float = 0.9, device=None,
              generator: torch.Generator | None = None) -> torch.Tensor:
    """Bernoulli(keep_prob) mask of shape (B, 1): 1 keeps the context, 0 drops it."""
    if not 0.0 <= keep_prob <= 1.0:
        raise ValueError(f"keep_prob must be in [0, 1], got {keep_prob}")
    probs = torch.full((batch, 1), keep_prob, device=draw_device(generator, device))
    return torch.bernoulli(probs, generator=generator).to(device)


def mix_contexts(image_c: torch.Tensor, text_c: torch.Tensor, p_text: float,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """Per row, the text embedding with probability ``p_text``, else the image embedding.

    05 samples from CLIP *text* embeddings but, with ``p_text = 0``, trains only on *image*
    embeddings; the two sit in different regions of CLIP's space (the modality gap, Liang et al.
    2022), so a prompt hands the UNet a context it never saw. Training on the captions' text
    embeddings some of the time narrows that gap for prompts worded like the captions
    (bench/clip_context.md: 52% of samples of the prompt's species at p_text = 0.5, 45% at 0).
    """
    if image_c.shape != text_c.shape:
        raise ValueError(f"image and text contexts must have the same shape, got "
                         f"{tuple(image_c.shape)} and {tuple(text_c.shape)}")
    if not 0.0 <= p_text <= 1.0:
        raise ValueError(f"p_text must be in [0, 1], got {p_text}")
    use_text = torch.rand(len(image_c), 1, device=draw_device(generator, image_c.device),
                          generator=generator) < p_text
    use_text = use_text.to(image_c.device)
    return torch.where(use_text, text_c, image_c)
