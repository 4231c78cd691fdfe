"""Small CNN classifiers that judge generated images: MNIST (grading 06), FashionMNIST and flowers.

The trained weights ship with the package in ``course_lib/weights/``. Retrain them, reproducibly:

    python -m course_lib.classifier mnist          # -> course_lib/weights/mnist_classifier.pt
    python -m course_lib.classifier fashion_mnist  # -> course_lib/weights/fashion_mnist_classifier.pt
    python -m course_lib.classifier flowers        # -> course_lib/weights/flowers_classifier.pt

Each judge sees images as the notebooks make them. The MNIST judge reads 28×28 digits. The
FashionMNIST judge is trained on 16×16 images (the notebooks' size) upsampled bilinearly to 28×28,
which is exactly what :mod:`course_lib.metrics` does to samples. The flower judge reads 32×32 RGB
photos of the five species. Inputs are in [-1, 1], the course's own scaling.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .config import evaluating, seed_everything
from .data import FLOWER_CLASSES, LOADERS, load_flowers, make_loader
from .train import adam, load_checkpoint, save_checkpoint, train

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
JUDGED_SIZE = {"mnist": 28, "fashion_mnist": 16, "flowers": 32}
"""The image size each judge was trained at (samples are judged at that size)."""
FLOWER_HELD_OUT = 0.1   # share of the photos (a fixed random draw, seed 0) the flower judge never sees
FLOWER_HELD_OUT_LIST = WEIGHTS_DIR / "flowers_held_out.txt"
"""The photos the flower judge never saw, one "species/file.jpg" a line (:func:`flower_split`)."""


class DigitClassifier(nn.Module):
    """Two conv blocks (32, 64 channels, BatchNorm, max-pool) and a two-layer head; logits for
    ``n_classes`` classes (10 digits or garments, 5 flower species)."""

    def __init__(self, n_classes: int = 10, channels: int = 1, size: int = 28):
        super().__init__()
        self.channels, self.size = channels, size
        self.features = nn.Sequential(
            nn.Conv2d(channels, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
            nn.Conv2d(32, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
            nn.Conv2d(64, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Dropout(0.25), nn.Linear(64 * (size // 4) ** 2, 128), nn.ReLU(),
        )
        self.head = nn.Sequential(nn.Dropout(0.25), nn.Linear(128, n_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        want = (self.channels, self.size, self.size)
        if x.ndim != 4 or x.shape[1:] != want:
            raise ValueError(f"the classifier takes (B, {', '.join(map(str, want))}) images in "
                             f"[-1, 1], got {tuple(x.shape)}")
        return self.head(self.features(x))


def weights_path(dataset: str) -> Path:
    return WEIGHTS_DIR / f"{dataset}_classifier.pt"


def build_classifier(dataset: str) -> DigitClassifier:
    """An untrained judge shaped for ``dataset``: grey 28×28 (10 classes) or RGB 32×32 flowers."""
    if dataset not in JUDGED_SIZE:
        raise ValueError(f"unknown dataset {dataset!r}; choose from {tuple(JUDGED_SIZE)}")
    if dataset == "flowers":
        return DigitClassifier(len(FLOWER_CLASSES), channels=3, size=32)
    return DigitClassifier()


def to_judge_input(images: torch.Tensor, dataset: str) -> torch.Tensor:
    """Images in [-1, 1] -> what the judge reads: grey images upsampled bilinearly to 28×28."""
    x = images.float().clamp(-1, 1)
    if dataset != "flowers" and x.shape[-2:] != (28, 28):
        x = F.interpolate(x, size=(28, 28), mode="bilinear", align_corners=False)
    return x


def flower_split(names: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """(held-out, training) indices of flower photos named "species/file.jpg"
    (``load_flowers(...).names``): held out are those in :data:`FLOWER_HELD_OUT_LIST`.

    The list is the 430 photos (10%, drawn with seed 0) of the course's 4,307 that the flower
    judge never saw. Notebook 05 holds out the same photos, so its zero-shot test and this
    judge's held-out accuracy are measured on photos neither model trained on, in any subset of
    the photos (the test profile's) and in another copy of them (TensorFlow's 3,670, which
    the download fetches). Both parts follow one fixed random order (seed 0); on the course's
    4,307 photos that is exactly the order the list was drawn in (``tests/test_classifier.py``).
    """
    listed = set(FLOWER_HELD_OUT_LIST.read_text().split())
    order = _flower_order(len(names)).tolist()
    held = [i for i in order if names[i] in listed]
    if not held:
        raise ValueError(f"none of these {len(names)} flower photos is one the flower judge never "
                         f"saw ({FLOWER_HELD_OUT_LIST}); expected photos named like "
                         f"'daisy/100080576_f52e8ee070_n.jpg', got e.g. {list(names[:2])}. Give "
                         "load_flowers(...).names, or retrain the judge on your photos: "
                         "python -m course_lib.classifier flowers")
    training = [i for i in order if names[i] not in listed]
    return torch.tensor(held), torch.tensor(training, dtype=torch.long)


def draw_flower_held_out(names: Sequence[str]) -> list[str]:
    """The held-out names as they were first drawn: a fixed random 10% (seed 0) of ``names``
    (the course's 4,307 photos), sorted. Writes nothing; :data:`FLOWER_HELD_OUT_LIST` keeps them."""
    order = _flower_order(len(names))
    return sorted(names[i] for i in order[:int(len(names) * FLOWER_HELD_OUT)].tolist())


def _flower_order(n: int) -> torch.Tensor:
    """The fixed random order (seed 0) both the held-out draw and :func:`flower_split` follow."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(0))


def load_classifier(dataset: str = "mnist", device: torch.device | str = "cpu") -> DigitClassifier:
    """The shipped classifier for ``dataset`` ("mnist", "fashion_mnist", "flowers"), in eval mode."""
    model = build_classifier(dataset)
    load_checkpoint(weights_path(dataset), model, map_location=device)
    return model.to(device).eval()


@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """Softmax probabilities (N, classes) for images in [-1, 1], read in eval mode (the model's
    own mode is restored after)."""
    device = next(model.parameters()).device
    with evaluating(model):
        return torch.cat([F.softmax(model(b.to(device)), dim=1).cpu()
                          for b in images.split(batch_size)])


def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    return (predict(model, images).argmax(1) == labels.cpu()).float().mean().item()


def vary_intensity(x: torch.Tensor, p: float = 0.5) -> torch.Tensor:
    """Augmentation: for a random half of the batch, lift the background and lower the contrast.

    Generated digits often sit on a dark grey rather than black background; a judge trained only
    on pure black backgrounds would misread them. x' = -1 + (x + 1)·s + lift, s in [0.5, 1],
    lift in [0, 0.6], clamped to [-1, 1].
    """
    n = len(x)
    pick = (torch.rand(n, 1, 1, 1) < p).float()
    scale = 1 - pick * 0.5 * torch.rand(n, 1, 1, 1)
    lift = pick * 0.6 * torch.rand(n, 1, 1, 1)
    return (-1 + (x + 1) * scale + lift).clamp(-1, 1)


def _judge_data(dataset: str, limit: int | None):
    """(training images, labels, held-out images, labels) as the judge will read them."""
    if dataset == "flowers":
        # 40 px, so that random 32 px crops (augmentation) still show most of the flower
        photos = load_flowers(size=40, classes=FLOWER_CLASSES, flip=False, limit=limit)
        held, train_idx = flower_split(photos.names)
        held_images = F.interpolate(photos.images[held], size=(32, 32), mode="bilinear",
                                    antialias=True, align_corners=False)
        return photos.images[train_idx], photos.labels[train_idx], held_images, photos.labels[held]
    size = JUDGED_SIZE[dataset]
    train_set = LOADERS[dataset](size=size, train=True, flip=False, limit=limit)
    test_set = LOADERS[dataset](size=size, train=False, flip=False)
    return (to_judge_input(train_set.images, dataset), train_set.labels,
            to_judge_input(test_set.images, dataset), test_set.labels)


def _augment(x: torch.Tensor, dataset: str) -> torch.Tensor:
    if dataset == "flowers":     # a random 32 px crop of the 40 px photo, mirrored half the time
        i, j = torch.randint(0, x.shape[-1] - 31, (2,)).tolist()
        x = x[..., i:i + 32, j:j + 32]
        return torch.where(torch.rand(len(x), 1, 1, 1) < 0.5, x.flip(-1), x)
    # random shifts of up to 2 pixels make the judge robust to slightly off-centre samples
    dx, dy = torch.randint(-2, 3, (2,)).tolist()
    x = torch.roll(x, (dy, dx), dims=(2, 3))
    if dataset == "fashion_mnist":
        x = torch.where(torch.rand(len(x), 1, 1, 1) < 0.5, x.flip(-1), x)
    return vary_intensity(x)


def train_classifier(dataset: str, epochs: int = 3, seed: int = 0, limit: int | None = None,
                     out: Path | None = None, progress: bool = True) -> tuple[DigitClassifier, float]:
    """Train a judge with light augmentation; return it and its held-out accuracy."""
    seed_everything(seed)
    images, labels, held_images, held_labels = _judge_data(dataset, limit)
    model = build_classifier(dataset)
    batch = 64 if dataset == "flowers" else 128
    steps = epochs * (len(images) // batch)
    optimizer = adam(model.parameters(), lr=2e-3)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=3e-3, total_steps=steps)

    def loss_fn(m, b):
        x, y = b
        return F.cross_entropy(m(_augment(x, dataset)), y)

    loader = make_loader(torch.utils.data.TensorDataset(images, labels), batch, seed=seed)
    # float32 on every CPU, so that the retrain command reproduces the shipped judges
    train(model, loader, loss_fn, epochs=epochs, optimizer=optimizer, scheduler=scheduler,
          progress=progress, desc=f"{dataset} classifier", bf16=False)
    model.eval()
    acc = accuracy(model, held_images, held_labels)
    if out is not None:
        save_checkpoint(out, model, dataset=dataset, test_accuracy=acc, epochs=epochs, seed=seed,
                        size=JUDGED_SIZE[dataset])
    return model, acc


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Retrain a shipped classifier reproducibly.")
    parser.add_argument("dataset", choices=tuple(JUDGED_SIZE))
    parser.add_argument("--epochs", type=int, default=None,
                        help="passes over the data (default: 3; 30 for the small flower set)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None,
                        help="where to write the weights (default: the shipped file)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    out = args.out or weights_path(args.dataset)
    epochs = args.epochs or (30 if args.dataset == "flowers" else 3)
    _, acc = train_classifier(args.dataset, epochs, args.seed, out=out)
    print(f"{args.dataset}: held-out accuracy {acc:.2%} in {time.perf_counter() - start:.0f} s "
          f"-> {out}")


if __name__ == "__main__":
    main()
