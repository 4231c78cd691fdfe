"""Is the flower a close-up? A linear probe on the locked EfficientNet-Lite0's features, for 05's captions.

A caption says "a close-up photo" when the flower fills the frame. Counting the pixels of the
flower's colour cannot tell one big bloom from a field of small ones, nor see a grey seed head
filling the frame: against a person's labels that rule (``clip.is_close_up``) agreed on 61% and
44% of two held-out sets, where always saying "a photo" scores 42% and 48% (bench/captions.md). An
ImageNet network's pooled features carry how much of the frame an object fills, so a logistic
regression on them (a *linear probe*, the usual test of what pretrained features hold) learns
framing from few labels:

* :func:`course_lib.image_tower.lite0_features` gives the 1,280 pooled features of each photo,
  read at 128 px, exactly as 05's small CLIP reads it;
* :func:`fit_probe` standardises them and fits p(close-up) = σ(w·z + b) by L-BFGS, with an L2
  penalty chosen by leave-one-out on the training photos;
* :func:`close_ups` applies the probe that ships in ``course_lib/weights/framing_probe.pt``.

The labels are ``course_lib/weights/framing_labels.json`` (a person's close-up or not for the 180
photos of bench/caption_labels.json); the probe trains on the "tuning" set only, and the two
held-out sets report. Retrain it, reproducibly:

    python -m course_lib.framing        # -> course_lib/weights/framing_probe.pt, prints agreement
"""
from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from .image_tower import lite0_features, lite0_weights
from .storage import error_line, save_atomic

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
PROBE_PATH = WEIGHTS_DIR / "framing_probe.pt"
LABELS_PATH = WEIGHTS_DIR / "framing_labels.json"
FRAMING_PX = 128          # the photos' own size, as 05's CLIP reads them
L2_GRID = (0.03, 0.1, 0.3, 1.0, 3.0)   # penalty strengths leave-one-out chooses from


@dataclass
class FramingProbe:
    """p(close-up) = σ(w·(f − mean)/std + b) on Lite0's pooled features f."""

    mean: torch.Tensor
    std: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor
    l2: float = 0.0

    def probability(self, features: torch.Tensor) -> torch.Tensor:
        z = (features.float() - self.mean) / self.std
        return torch.sigmoid(z @ self.weight + self.bias)

    def state_dict(self) -> dict:
        return {"mean": self.mean, "std": self.std, "weight": self.weight, "bias": self.bias,
                "l2": self.l2}


def fit_probe(features: torch.Tensor, labels: torch.Tensor, l2: float) -> FramingProbe:
    """Logistic regression on standardised features: minimise the mean log-loss + l2·|w|²/2 (L-BFGS)."""
    features, labels = features.double(), labels.double()
    mean, std = features.mean(0), features.std(0).clamp_min(1e-6)
    z = (features - mean) / std
    w = torch.zeros(z.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=500, tolerance_grad=1e-9,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.binary_cross_entropy_with_logits(z @ w + b, labels) + 0.5 * l2 * w.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return FramingProbe(mean.float(), std.float(), w.detach().float(), b.detach().float(), l2)


def leave_one_out(features: torch.Tensor, labels: torch.Tensor, l2: float) -> float:
    """Share of the photos a probe fitted on all the others reads right."""
    hits = 0
    for i in range(len(labels)):
        keep = torch.arange(len(labels)) != i
        probe = fit_probe(features[keep], labels[keep], l2)
        hits += bool((probe.probability(features[i:i + 1]) > 0.5).item()) == bool(labels[i])
    return hits / len(labels)


def load_probe(path: str | Path = PROBE_PATH) -> FramingProbe:
    """The probe saved at ``path`` (the shipped one by default); one clear error where it is
    missing or cannot be read."""
    try:
        return FramingProbe(**torch.load(path, map_location="cpu", weights_only=True))
    except Exception as err:   # missing, cut or foreign: torch.load raises many kinds
        raise FileNotFoundError(f"the framing probe {path} is missing or cannot be read "
                                f"({error_line(err)}): restore the course's copy (git "
                                "checkout course_lib/weights/framing_probe.pt), or fit it again: "
                                "python -m course_lib.framing") from err


def close_ups(photos: torch.Tensor, probe: FramingProbe | None = None,
              batch_size: int = 64) -> torch.Tensor | None:
    """Close-up or not for photos (B, 3, 128, 128) in [-1, 1], by the shipped probe; None when the
    EfficientNet-Lite0 weights are not installed (captions then use ``clip.is_close_up``)."""
    if photos.ndim != 4 or photos.shape[1] != 3:
        raise ValueError(f"close_ups wants RGB photos (B, 3, H, W), got {tuple(photos.shape)}")
    if tuple(photos.shape[-2:]) != (FRAMING_PX, FRAMING_PX):
        raise ValueError(f"close_ups reads the photos at {FRAMING_PX}×{FRAMING_PX}, as its probe was "
                         f"fitted, got {photos.shape[-2]}×{photos.shape[-1]}: load them with "
                         f"load_flowers(size={FRAMING_PX})")
    if lite0_weights() is None:
        return None
    probe = probe or load_probe()
    return probe.probability(lite0_features(photos, batch_size=batch_size)) > 0.5


def labelled_photos_from(names: list[str], size: int = FRAMING_PX) -> torch.Tensor:
    """Flower photos named "species/file.jpg", loaded as 05 loads them (short side resized,
    centre-cropped to ``size``; 128 px for framing, 32 for the UNet and the caption colour)."""
    import torchvision

    from .data import find_data_root, image_transform

    folder = find_data_root("flowers") / "flowers"
    to_px = image_transform(size, 3)
    return torch.stack([to_px(torchvision.io.decode_image(
        str(folder / rel), mode=torchvision.io.ImageReadMode.RGB)) for rel in names])


def labelled_photos(name: str, labels: dict | None = None):
    """The labelled photos of one set (128 px), their labels (True: close-up) and names."""
    labels = labels or json.loads(LABELS_PATH.read_text())
    names = [rel for rel, close in labels[name].items() if close is not None]
    return labelled_photos_from(names), torch.tensor([labels[name][rel] for rel in names]), names


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=PROBE_PATH)
    args = parser.parse_args(argv)
    labels = json.loads(LABELS_PATH.read_text())
    sets = {name: labelled_photos(name, labels) for name in ("tuning", "held_out", "held_out_2")}
    feats = {name: lite0_features(photos) for name, (photos, _, _) in sets.items()}
    x, y = feats["tuning"], sets["tuning"][1]
    loo = {l2: leave_one_out(x, y, l2) for l2 in L2_GRID}
    for l2, share in loo.items():
        print(f"l2 = {l2:g}: leave-one-out on the tuning set {share:.1%}")
    best = max(L2_GRID, key=lambda l2: (loo[l2], l2))   # ties: the stronger penalty
    probe = fit_probe(x, y, best)
    for name in ("held_out", "held_out_2"):
        hit = ((probe.probability(feats[name]) > 0.5) == sets[name][1]).float().mean()
        print(f"{name}: the probe (l2 = {best:g}) agrees with the person on {hit:.1%}")
    save_atomic(probe.state_dict(), args.out)
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
