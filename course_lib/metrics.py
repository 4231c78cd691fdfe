"""Sample quality in numbers, judged by the course's small classifiers (FashionMNIST, MNIST, flowers).

Two measures of a batch of generated images:

* **recognisable**: the share of samples the classifier is confident about (top softmax
  probability ≥ 0.9) and, for a class-conditional model, **accuracy**: the share classified as
  the class that was asked for;
* **Fréchet distance** (the recipe of FID, Heusel et al. 2017, with our classifier in place of
  Inception): fit a Gaussian to the classifier's 128 penultimate features of the samples and
  one to those of the real test images, then
  ``d² = ||μ_g - μ_r||² + Tr(Σ_g + Σ_r - 2 (Σ_g Σ_r)^½)``. Lower is better; real images that
  the reference has never seen score near the floor set by the sample size.

A third, for guided samples, asks whether each prompt still gets *varied* images:
**within-class spread**, the mean distance between the judge's features of two images asked for
with the same label, ``E‖φ(x) − φ(x′)‖`` (:func:`within_class_spread`). Divided by the same
figure for real images it reads 1 for real-like variety and falls towards 0 as samples of one
prompt come to look alike (strong guidance narrows them).

Grey samples smaller than 28×28 (01–04 work at 16×16) are upsampled bilinearly, the way the
FashionMNIST judge was trained (on 16×16 images, :mod:`course_lib.classifier`), and the real
images are loaded at the samples' size and upsampled the same way, so only the generative
model's quality is measured. The yardsticks are held-out real images the judges never saw
(:func:`real_split`). These figures compare the course's models with each
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

from .classifier import JUDGED_SIZE, DigitClassifier, flower_split, load_classifier, to_judge_input
from .config import checkpoint_path, evaluating
from .data import FLOWER_CLASSES, LOADERS, load_flowers, require_float_images
from .storage import save_json_atomic

CONFIDENT = 0.9            # top softmax probability that counts as "recognised"
REAL_POOL = 2000           # test images kept out of the Fréchet reference: real yardsticks come from them
DATASETS = ("mnist", "fashion_mnist", "flowers")


def _check_dataset(dataset: str) -> None:
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; choose from {DATASETS}")


def as_classifier_input(images: torch.Tensor, dataset: str = "fashion_mnist") -> torch.Tensor:
    """Samples (B, C, H, W) in [-1, 1] -> what the judge reads, on the CPU, clamped (and, for grey
    images smaller than 28×28, upsampled bilinearly as the judge was trained)."""
    _check_dataset(dataset)
    channels, side = (3, JUDGED_SIZE["flowers"]) if dataset == "flowers" else (1, None)
    if (images.ndim != 4 or images.shape[1] != channels
            or (side is not None and tuple(images.shape[-2:]) != (side, side))):
        kind = (f"RGB images (B, 3, {side}, {side}), the size the flower judge reads (resize with "
                "F.interpolate first)" if side else "grey images (B, 1, H, W)")
        raise ValueError(f"the {dataset} quality measures take {kind}, got {tuple(images.shape)}")
    if len(images) == 0:
        raise ValueError("the judge needs at least one image, got an empty batch")
    require_float_images(images, "the samples")
    if not torch.isfinite(images).all():
        raise ValueError("the samples contain NaN or inf: the sampler diverged; check the "
                         "reverse step before measuring quality")
    return to_judge_input(images.detach().float().cpu(), dataset)


@torch.no_grad()
def features_and_probs(classifier: DigitClassifier, images: torch.Tensor,
                       dataset: str = "fashion_mnist",
                       batch_size: int = 500) -> tuple[torch.Tensor, torch.Tensor]:
    """Penultimate features (N, 128, float64) and softmax probabilities (N, classes) of the
    images, read in eval mode (the classifier's own mode is restored after)."""
    device = next(classifier.parameters()).device
    feats, probs = [], []
    with evaluating(classifier):
        for batch in as_classifier_input(images, dataset).split(batch_size):
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
    return frechet_from_stats(a.mean(0), torch.cov(a.T), b.mean(0), torch.cov(b.T))


def frechet_from_stats(mu_a: torch.Tensor, cov_a: torch.Tensor, mu_b: torch.Tensor,
                       cov_b: torch.Tensor) -> float:
    """:func:`frechet_distance` of two Gaussians given by their means and covariances (what the
    grader keeps of real digits)."""
    root_a = _sqrtm_psd(cov_a)
    cross = torch.linalg.eigvalsh(root_a @ cov_b @ root_a).clamp(min=0).sqrt().sum()
    d2 = (mu_a - mu_b).square().sum() + cov_a.trace() + cov_b.trace() - 2 * cross
    return float(d2.clamp(min=0))


def _check_labels(labels: torch.Tensor, images: torch.Tensor) -> None:
    """One class number per image, or a clear error (one-hot rows are a likely mistake)."""
    if labels.ndim != 1:
        raise ValueError(f"labels must hold one class number per image, shape ({len(images)},); "
                         f"got shape {tuple(labels.shape)}: for one-hot rows, pass "
                         "labels.argmax(1)")
    if len(labels) != len(images):
        raise ValueError(f"{len(labels)} labels for {len(images)} images")


@lru_cache(maxsize=8)
def real_split(dataset: str, size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Held-out real images: (pool images, pool labels, Fréchet reference images).

    The judges never trained on any of them. For the grey datasets the test set's first
    REAL_POOL images are the pool that real-image yardsticks draw from, and the rest is the
    reference; the 430 held-out flower photos (flower_split) serve as both (flower distances are
    rough).
    """
    _check_dataset(dataset)
    if dataset == "flowers":
        photos = load_flowers(size=size, classes=FLOWER_CLASSES, flip=False)
        held, _ = flower_split(photos.names)
        return photos.images[held], photos.labels[held], photos.images[held]
    real = LOADERS[dataset](size=size, train=False, flip=False)
    return real.images[:REAL_POOL], real.labels[:REAL_POOL], real.images[REAL_POOL:]


@lru_cache(maxsize=8)
def reference_features(dataset: str, size: int) -> torch.Tensor:
    """Penultimate features of the held-out real reference images at ``size``×``size``."""
    return features_and_probs(_classifier(dataset), real_split(dataset, size)[2], dataset)[0]


@lru_cache(maxsize=3)
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
    """Judge a batch of generated images (B, C, H, W) in [-1, 1]; ``labels`` = the classes asked for."""
    if labels is not None:
        _check_labels(labels, images)
    _check_dataset(dataset)
    if len(images) < 2:   # a Fréchet distance fits a covariance; class shares need only one image
        raise ValueError("the quality measures need a batch of at least 2 images")
    feats, probs = features_and_probs(_classifier(dataset), images, dataset)
    top, predicted = probs.max(1)
    acc = None if labels is None else (predicted == labels.cpu()).float().mean().item()
    return Quality(n=len(images), recognisable=(top >= CONFIDENT).float().mean().item(),
                   frechet=frechet_distance(feats, reference_features(dataset, images.shape[-1])),
                   accuracy=acc)


def colourfulness(images: torch.Tensor) -> float:
    """Mean colourfulness of RGB images in [-1, 1] (Hasler & Süsstrunk 2003): per image,
    √(σ_rg² + σ_yb²) + 0.3·√(μ_rg² + μ_yb²), with rg = R − G and yb = (R + G)/2 − B on values in
    [0, 1], mean μ and standard deviation σ over the image's pixels. 0 for grey images; it grows
    with vivid hues, whether or not any value reaches the end of its range."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected RGB images (N, 3, H, W), got {tuple(images.shape)}")
    r, g, b = (images.float().clamp(-1, 1) * 0.5 + 0.5).unbind(1)
    rg, yb = (r - g).flatten(1), ((r + g) / 2 - b).flatten(1)
    spread = (rg.var(dim=1, correction=0) + yb.var(dim=1, correction=0)).sqrt()
    mean = (rg.mean(dim=1) ** 2 + yb.mean(dim=1) ** 2).sqrt()
    return (spread + 0.3 * mean).mean().item()


def within_class_spread(images: torch.Tensor, labels: torch.Tensor,
                        dataset: str = "fashion_mnist") -> float:
    """Mean ‖φ(x) − φ(x′)‖ over pairs of images with the same label (φ: the judge's features),
    averaged over the labels; near 0 when the images of each label look alike."""
    _check_labels(labels, images)
    _check_dataset(dataset)
    feats, _ = features_and_probs(_classifier(dataset), images, dataset)
    labels = labels.cpu()
    spreads = []
    for label in labels.unique():
        f = feats[labels == label]
        if len(f) > 1:           # the diagonal of cdist is 0: average over the n(n-1) pairs
            spreads.append(torch.cdist(f, f).sum() / (len(f) * (len(f) - 1)))
    if not spreads:
        raise ValueError("within_class_spread needs at least two images with the same label")
    return float(torch.stack(spreads).mean())


def class_shares(images: torch.Tensor, dataset: str = "fashion_mnist") -> torch.Tensor:
    """Share of the images the classifier puts in each class (one value per class, summing to 1)."""
    _, probs = features_and_probs(_classifier(dataset), images, dataset)
    return torch.bincount(probs.argmax(1), minlength=probs.shape[1]).float() / len(images)


def confusion_shares(images: torch.Tensor, labels: torch.Tensor,
                     dataset: str = "fashion_mnist") -> torch.Tensor:
    """What the judge reads for each label asked for: row k is :func:`class_shares` of the images
    whose label is the k-th of ``labels.unique()`` (sorted); each row sums to 1."""
    _check_labels(labels, images)
    if len(labels) == 0:
        raise ValueError("confusion_shares needs at least one image")
    labels = labels.cpu()
    return torch.stack([class_shares(images[(labels == k).to(images.device)], dataset)
                        for k in labels.unique()])


def real_quality(dataset: str = "fashion_mnist", size: int | None = None, n: int = 500,
                 mix: torch.Tensor | None = None) -> Quality:
    """The same measures for ``n`` held-out real images at ``size`` (default: the size its judge
    reads, ``JUDGED_SIZE``): the yardstick (samples usually score below it, though not always:
    it is not a bound).

    With ``mix`` (class shares, e.g. from :func:`class_shares`), the real images are drawn in
    those proportions (as far as the pool allows): what the distance would be if a model drew
    perfect images of each class but in the wrong mix.
    """
    images, labels, _ = real_split(dataset, JUDGED_SIZE.get(dataset, 16) if size is None else size)
    if mix is None:
        keep = torch.arange(min(n, len(images)))
    else:
        mix = torch.as_tensor(mix, dtype=torch.float64)
        if mix.ndim != 1 or (mix < 0).any() or mix.sum() <= 0:
            raise ValueError("mix must be a 1-D tensor of non-negative class shares")
        counts = (mix / mix.sum() * n).round().long()
        keep = torch.cat([torch.nonzero(labels == c).flatten()[:k] for c, k in enumerate(counts)])
    return sample_quality(images[keep], dataset, labels=labels[keep])


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
    NB03_AUTOGUIDED = "03, ᾱ_T ≈ 0, autoguided"


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


# --- the headline figures of a full run (bench/quality.py gathers them) -----------------------

FIGURES = (
    "fashion16_real_frechet", "fashion16_real_recognised",
    "nb03_frechet", "nb03_recognised", "nb03_min_class_share", "nb03_max_class_share",
    "nb04_fashion_requested_w2", "flowers32_real_species_acc", "nb04_flowers_species_w2",
    "nb05_clip_zero_shot_species", "nb05_prompt_species", "nb05_heldout_wording_species",
)
"""The names a notebook may record with :func:`record_figure` (issue #10's targets)."""


def _figures_file():
    return checkpoint_path("figures").with_suffix(".json")


def record_figure(name: str, value: float) -> None:
    """Keep one headline number of this run in checkpoints/<profile>/figures.json (atomically)."""
    if name not in FIGURES:
        raise ValueError(f"{name!r} is not one of the course's headline figures {FIGURES}")
    table = recorded_figures()
    table[name] = float(value)
    save_json_atomic(table, _figures_file())


def recorded_figures() -> dict[str, float]:
    """The headline numbers recorded so far in this profile."""
    path = _figures_file()
    if not path.is_file():
        return {}
    try:
        table = json.loads(path.read_text())
    except ValueError:   # cut short: no JSON at all
        table = None
    if not isinstance(table, dict):
        raise ValueError(f"{path} is not a record of headline figures (a JSON object); delete it "
                         "and re-run the notebooks that write it")
    return table
