"""Sample quality in numbers, judged by the course's small classifiers (FashionMNIST, MNIST).

Two measures of a batch of generated grey images:

* **recognisable**: the share of samples the classifier is confident about (top softmax
  probability ≥ 0.9) and, for a class-conditional model, **accuracy**: the share classified as
  the class that was asked for;
* **Fréchet distance** (the recipe of FID, Heusel et al. 2017, with our classifier in place of
  Inception): fit a Gaussian to the classifier's 128 penultimate features of the samples and
  one to those of the real test images, then
  ``d² = ||μ_g - μ_r||² + Tr(Σ_g + Σ_r - 2 (Σ_g Σ_r)^½)``. Lower is better; real images that
  the reference has never seen score near the floor set by the sample size.

Samples smaller than the classifiers' 28×28 (01–04 work at 16×16) are upsampled bilinearly, and
the real reference images are loaded at the samples' size and upsampled the same way, so only
the generative model's quality is measured. These figures compare the course's models with each
other; they are not comparable with published FIDs.

Each notebook records its figures with :func:`record_quality`, so that 03 can draw 01 → 02 → 03
side by side (:func:`recorded_quality`).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from enum import StrEnum
from functools import lru_cache

import torch
import torch.nn.functional as F

from .classifier import DigitClassifier, load_classifier
from .config import checkpoint_path
from .data import LOADERS
from .storage import save_json_atomic

CONFIDENT = 0.9            # top softmax probability that counts as "recognised"
CLASSIFIER_SIZE = 28


def as_classifier_input(images: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) samples in [-1, 1] -> (B, 1, 28, 28) on the CPU, clamped and upsampled."""
    if images.ndim != 4 or images.shape[1] != 1:
        raise ValueError(f"the quality measures take grey images (B, 1, H, W), got "
                         f"{tuple(images.shape)}")
    if len(images) < 2:
        raise ValueError("the quality measures need a batch of at least 2 images")
    if not torch.isfinite(images).all():
        raise ValueError("the samples contain NaN or inf: the sampler diverged; check the "
                         "reverse step before measuring quality")
    x = images.detach().float().cpu().clamp(-1, 1)
    if x.shape[-2:] != (CLASSIFIER_SIZE, CLASSIFIER_SIZE):
        x = F.interpolate(x, size=(CLASSIFIER_SIZE, CLASSIFIER_SIZE), mode="bilinear",
                          align_corners=False)
    return x


@torch.no_grad()
def features_and_probs(classifier: DigitClassifier, images: torch.Tensor,
                       batch_size: int = 500) -> tuple[torch.Tensor, torch.Tensor]:
    """Penultimate features (N, 128, float64) and softmax probabilities (N, 10) of the images."""
    classifier.eval()
    device = next(classifier.parameters()).device
    feats, probs = [], []
    for batch in as_classifier_input(images).split(batch_size):
        h = classifier.features(batch.to(device))
        feats.append(h.double().cpu())
        probs.append(F.softmax(classifier.head(h), dim=1).cpu())
    return torch.cat(feats), torch.cat(probs)


def _sqrtm_psd(m: torch.Tensor) -> torch.Tensor:
    """Square root of a symmetric positive semi-definite matrix, by eigen-decomposition."""
    vals, vecs = torch.linalg.eigh(m)
    return vecs @ torch.diag(vals.clamp(min=0).sqrt()) @ vecs.T


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Squared Fréchet distance (as FID reports it) of Gaussians fitted to rows of a (N, D), b (M, D).

    d² = ||μ_a - μ_b||² + Tr(Σ_a) + Tr(Σ_b) - 2 Tr((Σ_a Σ_b)^½), with
    Tr((Σ_a Σ_b)^½) = Tr((Σ_a^½ Σ_b Σ_a^½)^½), a symmetric form that eigh handles stably.
    """
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"need two feature matrices (N, D) with the same D, got "
                         f"{tuple(a.shape)} and {tuple(b.shape)}")
    if len(a) < 2 or len(b) < 2:
        raise ValueError("a covariance needs at least 2 rows in each set")
    a, b = a.double(), b.double()
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = torch.cov(a.T), torch.cov(b.T)
    root_a = _sqrtm_psd(cov_a)
    cross = torch.linalg.eigvalsh(root_a @ cov_b @ root_a).clamp(min=0).sqrt().sum()
    d2 = (mu_a - mu_b).square().sum() + cov_a.trace() + cov_b.trace() - 2 * cross
    return float(d2.clamp(min=0))


@lru_cache(maxsize=8)
def reference_features(dataset: str, size: int) -> torch.Tensor:
    """Penultimate features of all real test images of ``dataset`` at ``size``×``size``, upsampled."""
    if dataset not in LOADERS:
        raise ValueError(f"unknown dataset {dataset!r}; choose from {tuple(LOADERS)}")
    real = LOADERS[dataset](size=size, train=False, flip=False)
    return features_and_probs(_classifier(dataset), real.images)[0]


@lru_cache(maxsize=2)
def _classifier(dataset: str) -> DigitClassifier:
    return load_classifier(dataset)


@dataclass
class Quality:
    """The measures of one batch of samples."""

    n: int
    recognisable: float                 # share with top probability >= CONFIDENT
    frechet: float                      # Fréchet distance to the real test images
    accuracy: float | None = None       # share classified as the requested class

    def __str__(self) -> str:
        acc = "" if self.accuracy is None else f", {self.accuracy:.0%} as the requested class"
        return (f"{self.n} samples: {self.recognisable:.0%} recognisable{acc}; "
                f"Fréchet distance {self.frechet:.1f}")


def sample_quality(images: torch.Tensor, dataset: str = "fashion_mnist",
                   labels: torch.Tensor | None = None) -> Quality:
    """Judge a batch of generated images (B, 1, H, W) in [-1, 1]; ``labels`` = the classes asked for."""
    if labels is not None and len(labels) != len(images):
        raise ValueError(f"{len(labels)} labels for {len(images)} images")
    if dataset not in LOADERS:
        raise ValueError(f"unknown dataset {dataset!r}; choose from {tuple(LOADERS)}")
    feats, probs = features_and_probs(_classifier(dataset), images)
    top, predicted = probs.max(1)
    acc = None if labels is None else (predicted == labels.cpu()).float().mean().item()
    return Quality(n=len(images), recognisable=(top >= CONFIDENT).float().mean().item(),
                   frechet=frechet_distance(feats, reference_features(dataset, images.shape[-1])),
                   accuracy=acc)


def class_shares(images: torch.Tensor, dataset: str = "fashion_mnist") -> torch.Tensor:
    """Share of the images the classifier puts in each class (10 values summing to 1)."""
    _, probs = features_and_probs(_classifier(dataset), images)
    return torch.bincount(probs.argmax(1), minlength=probs.shape[1]).float() / len(images)


def real_quality(dataset: str = "fashion_mnist", size: int = 16, n: int = 500,
                 mix: torch.Tensor | None = None) -> Quality:
    """The same measures for ``n`` real *training* images: the best a model could score.

    With ``mix`` (class shares, e.g. from :func:`class_shares`), the real images are drawn in
    those proportions: what the distance would be if a model drew perfect images of each class
    but in the wrong mix.
    """
    if mix is None:
        real = LOADERS[dataset](size=size, train=True, flip=False, limit=n)
        return sample_quality(real.images, dataset, labels=real.labels)
    mix = torch.as_tensor(mix, dtype=torch.float64)
    if mix.ndim != 1 or (mix < 0).any() or mix.sum() <= 0:
        raise ValueError("mix must be a 1-D tensor of non-negative class shares")
    real = LOADERS[dataset](size=size, train=True, flip=False)
    counts = (mix / mix.sum() * n).round().long()
    keep = torch.cat([torch.nonzero(real.labels == c).flatten()[:k] for c, k in enumerate(counts)])
    return sample_quality(real.images[keep], dataset, labels=real.labels[keep])


# --- keeping the figures of each notebook, for side-by-side comparisons ------------------------

class Key(StrEnum):
    """The names under which notebooks record their figures: a misspelt key is an AttributeError,
    not a row that silently goes missing from a later plot."""

    REAL = "real images"
    NB01_BLOTS = "01 UNet, one pass from noise"
    NB02_DDPM = "02 DDPM, 150 steps"
    NB02_DDIM25 = "02 DDIM, 25 steps, η = 0"
    NB02_DDIM150 = "02 DDIM, 150 steps, η = 0"
    NB02_DDIM25_ETA1 = "02 DDIM, 25 steps, η = 1"
    NB03_TRAP = "03 OptimizedUNet, ᾱ_T = 0.22"
    NB03 = "03 OptimizedUNet, ᾱ_T ≈ 0"


def _quality_file():
    return checkpoint_path("quality").with_suffix(".json")


def record_quality(key: Key, quality: Quality) -> None:
    """Store ``quality`` under ``key`` in checkpoints/<profile>/quality.json (atomically)."""
    key = Key(key)          # raises ValueError for a name that is not a Key
    table = recorded_quality()
    table[key] = quality
    save_json_atomic({k.value: asdict(v) for k, v in table.items()}, _quality_file())


def recorded_quality() -> dict[Key, Quality]:
    """Everything recorded so far in this profile, by key (empty if nothing yet).

    Rows written under names that are no longer keys (an older version of the course) are
    skipped.
    """
    path = _quality_file()
    if not path.is_file():
        return {}
    try:
        rows = json.loads(path.read_text())
        return {Key(k): Quality(**v) for k, v in rows.items() if k in Key._value2member_map_}
    except (ValueError, TypeError) as err:
        raise ValueError(f"{path} is not a quality record ({err}); delete it and re-run the "
                         f"notebooks that write it") from err
