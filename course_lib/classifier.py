"""Small CNN classifiers that judge generated images: MNIST (grading 06) and FashionMNIST (metrics).

The trained weights ship with the package in ``course_lib/weights/``. Retrain them, reproducibly:

    python -m course_lib.classifier mnist          # -> course_lib/weights/mnist_classifier.pt
    python -m course_lib.classifier fashion_mnist  # -> course_lib/weights/fashion_mnist_classifier.pt

Inputs are 28×28 grey images in [-1, 1], the course's own scaling (no other normalisation).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .config import seed_everything
from .data import LOADERS, make_loader
from .train import load_checkpoint, save_checkpoint, train

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"


class DigitClassifier(nn.Module):
    """Two conv blocks (32, 64 channels, BatchNorm, max-pool) and a two-layer head; logits for 10 classes."""

    def __init__(self, n_classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
            nn.Conv2d(32, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
            nn.Conv2d(64, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Dropout(0.25), nn.Linear(64 * 7 * 7, 128), nn.ReLU(),
        )
        self.head = nn.Sequential(nn.Dropout(0.25), nn.Linear(128, n_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1:] != (1, 28, 28):
            raise ValueError(f"the classifier takes (B, 1, 28, 28) images in [-1, 1], got "
                             f"{tuple(x.shape)}")
        return self.head(self.features(x))


def weights_path(dataset: str) -> Path:
    return WEIGHTS_DIR / f"{dataset}_classifier.pt"


def load_classifier(dataset: str = "mnist", device: torch.device | str = "cpu") -> DigitClassifier:
    """The shipped classifier for ``dataset`` ("mnist" or "fashion_mnist"), in eval mode."""
    if dataset not in LOADERS:
        raise ValueError(f"unknown dataset {dataset!r}; choose from {tuple(LOADERS)}")
    model = DigitClassifier()
    load_checkpoint(weights_path(dataset), model, map_location=device)
    return model.to(device).eval()


@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """Softmax probabilities (N, 10) for images in [-1, 1]."""
    model.eval()
    device = next(model.parameters()).device
    return torch.cat([F.softmax(model(b.to(device)), dim=1).cpu()
                      for b in images.split(batch_size)])


def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    return (predict(model, images).argmax(1) == labels).float().mean().item()


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


def train_classifier(dataset: str, epochs: int = 3, seed: int = 0, limit: int | None = None,
                     out: Path | None = None, progress: bool = True) -> tuple[DigitClassifier, float]:
    """Train on the training split with light augmentation; return the model and its test accuracy."""
    seed_everything(seed)
    train_set = LOADERS[dataset](size=28, train=True, flip=dataset == "fashion_mnist", limit=limit)
    test_set = LOADERS[dataset](size=28, train=False, flip=False)
    model = DigitClassifier()
    steps = epochs * (len(train_set) // 128)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=3e-3, total_steps=steps)

    def loss_fn(m, batch):
        x, y = batch
        # random shifts of up to 2 pixels make the classifier robust to slightly off-centre samples
        dx, dy = torch.randint(-2, 3, (2,)).tolist()
        return F.cross_entropy(m(vary_intensity(torch.roll(x, (dy, dx), dims=(2, 3)))), y)

    train(model, make_loader(train_set, 128, seed=seed), loss_fn, epochs=epochs,
          optimizer=optimizer, scheduler=scheduler, progress=progress,
          desc=f"{dataset} classifier")
    model.eval()
    acc = accuracy(model, test_set.images, test_set.labels)
    if out is not None:
        save_checkpoint(out, model, dataset=dataset, test_accuracy=acc, epochs=epochs, seed=seed)
    return model, acc


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Retrain a shipped classifier reproducibly.")
    parser.add_argument("dataset", choices=tuple(LOADERS))
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None,
                        help="where to write the weights (default: the shipped file)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    out = args.out or weights_path(args.dataset)
    _, acc = train_classifier(args.dataset, args.epochs, args.seed, out=out)
    print(f"{args.dataset}: test accuracy {acc:.2%} in {time.perf_counter() - start:.0f} s -> {out}")


if __name__ == "__main__":
    main()
