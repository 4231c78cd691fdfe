"""Ways to get digits without a diffusion model, written to attack the grader's checks.

Each ``cheat(labels, seed) -> images`` returns (len(labels), 1, 28, 28) images in [-1, 1] for the
requested digits. Used by ``tests/test_grade_checks.py`` (the checks must reject them), by the
adversarial notebooks of ``tests/test_grade_attacks.py`` (the same cheats as a submission's
``sample_digits``) and by ``bench/grading_checks.py`` (catch rates).
"""
from __future__ import annotations

from pathlib import Path

import torch


def _mnist(train: bool = True):
    from course_lib.data import load_mnist
    return load_mnist(size=28, train=train)


def _pick(labels: torch.Tensor, seed: int, train: bool = True) -> torch.Tensor:
    """One random MNIST image of each requested digit."""
    data = _mnist(train)
    g = torch.Generator().manual_seed(seed)
    out = []
    for d in labels.tolist():
        idx = (data.labels == d).nonzero()[:, 0]
        out.append(data.images[idx[torch.randint(len(idx), (1,), generator=g)]])
    return torch.cat(out)


def copies(labels, seed=0):
    return _pick(labels, seed)


def shifted(labels, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = _pick(labels, seed)
    out = []
    for img in x:
        dy, dx = (torch.randint(1, 3, (2,), generator=g) * (torch.randint(0, 2, (2,), generator=g) * 2 - 1)).tolist()
        out.append(torch.roll(img, (dy, dx), dims=(1, 2)))
    return torch.stack(out)


def noised(labels, seed=0, sigma=0.15):
    g = torch.Generator().manual_seed(seed)
    x = _pick(labels, seed)
    return (x + sigma * torch.randn(x.shape, generator=g)).clamp(-1, 1)


def blurred(labels, seed=0):
    from torchvision.transforms.functional import gaussian_blur
    return gaussian_blur(_pick(labels, seed), kernel_size=5, sigma=1.0)


def elastic(labels, seed=0):
    from torchvision.transforms import v2
    torch.manual_seed(seed)
    warp = v2.ElasticTransform(alpha=34.0, sigma=4.0)
    return torch.stack([warp(img) for img in _pick(labels, seed)]).clamp(-1, 1)


def affine(labels, seed=0):
    from torchvision.transforms import v2
    torch.manual_seed(seed)
    warp = v2.RandomAffine(degrees=10, translate=(0.06, 0.06), scale=(0.9, 1.1), shear=5)
    return torch.stack([warp(img + 1) - 1 for img in _pick(labels, seed)]).clamp(-1, 1)


def brightened(labels, seed=0):
    """Lifted grey background and lower contrast, like many generated digits."""
    return (-1 + (_pick(labels, seed) + 1) * 0.7 + 0.3).clamp(-1, 1)


def class_means(labels, seed=0, sigma=0.1):
    data = _mnist(True)
    means = torch.stack([data.images[data.labels == d].mean(0) for d in range(10)])
    g = torch.Generator().manual_seed(seed)
    x = means[labels]
    return (x + sigma * torch.randn(x.shape, generator=g)).clamp(-1, 1)


def fonts(labels, seed=0):
    """Digits typed in matplotlib's fonts, at random sizes, offsets and slants, lightly blurred."""
    import matplotlib
    from PIL import Image, ImageDraw, ImageFont
    from torchvision.transforms.functional import gaussian_blur

    folder = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    faces = sorted(folder.glob("DejaVu*.ttf")) + sorted(folder.glob("STIXGeneral*.ttf"))
    g = torch.Generator().manual_seed(seed)
    out = []
    for d in labels.tolist():
        face = faces[int(torch.randint(len(faces), (1,), generator=g))]
        size = int(torch.randint(18, 25, (1,), generator=g))
        img = Image.new("L", (28, 28), 0)
        draw = ImageDraw.Draw(img)
        font = ImageFont.truetype(str(face), size)
        box = draw.textbbox((0, 0), str(d), font=font)
        w, h = box[2] - box[0], box[3] - box[1]
        ox, oy = (torch.randint(-1, 2, (2,), generator=g)).tolist()
        draw.text(((28 - w) / 2 - box[0] + ox, (28 - h) / 2 - box[1] + oy), str(d), fill=255,
                  font=font)
        angle = float(torch.empty(1).uniform_(-12, 12, generator=g))
        img = img.rotate(angle, resample=Image.BILINEAR)
        t = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8).float().reshape(1, 28, 28) / 127.5 - 1
        out.append(t)
    return gaussian_blur(torch.stack(out), kernel_size=3, sigma=0.6)


def held_out_real(labels, seed=0):
    """Real test digits the grader's reference leaves out (its false-reject control)."""
    from course_lib.grade_checks import HOLD_OUT

    data = _mnist(False)
    start = len(data.labels) - HOLD_OUT
    g = torch.Generator().manual_seed(seed)
    out = []
    for d in labels.tolist():
        idx = (data.labels[start:] == d).nonzero()[:, 0] + start
        out.append(data.images[idx[torch.randint(len(idx), (1,), generator=g)]])
    return torch.cat(out)


def judge_ascent(labels, seed=0, steps=200, own_judges=(), match_own=False, ink=0.0):
    """No model at all: pixels optimised from noise against the course's public judge, until it
    reads each as its label and its features match those of a random real digit of that label
    (so the Fréchet check sees digits, and no pixel is copied). Optionally also against
    ``own_judges``, MNIST classifiers of the attacker's own training by the course's public
    recipe, read as the label too (and, with ``match_own``, matching that digit's features in
    each), with ``ink`` weighing a pull of every pixel towards the black background. What each
    variant gets past is measured in bench/transfer_ascent.md: each leaves texture where digits
    have a plain background, until ``ink`` is strong enough (30 there) to pass that check too."""
    import torch.nn.functional as F
    from course_lib.classifier import load_classifier

    labels = torch.as_tensor(labels)
    judges = [load_classifier("mnist").requires_grad_(False), *own_judges]
    real = _pick(labels, seed)
    with torch.no_grad():
        targets = [j.features(real) for j in judges]
    g = torch.Generator().manual_seed(seed)
    z = (0.5 * torch.randn(len(labels), 1, 28, 28, generator=g)).requires_grad_()
    optimizer = torch.optim.Adam([z], lr=0.05)
    with torch.enable_grad():   # the grader calls sample_digits under no_grad
        for _ in range(steps):
            x = torch.tanh(z)
            loss = ink * (x + 1).mean()
            for i, (judge, target) in enumerate(zip(judges, targets)):
                features = judge.features(x)
                loss = loss + F.cross_entropy(judge.head(features), labels)
                if i == 0 or match_own:
                    loss = loss + (features - target).square().mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return torch.tanh(z).detach()


MEMORISED = {"copies": copies, "shifted 1-2 px": shifted, "noise 0.15": noised,
             "blurred": blurred, "brightened": brightened}
# Not caught (measured in bench/grading_checks.md): warps this strong make digits that neither
# the aligned pixel comparison nor the judge's features tell from new handwriting.
WARPED = {"elastic (alpha 34, sigma 4)": elastic, "affine (10 deg, 6%, 0.9-1.1x)": affine}
FAKE = {"fonts": fonts, "class means + noise": class_means}
# Caught by the private judges only: tuned to the public judge, whose every other check it passes.
JUDGED = {"judge ascent (no model)": judge_ascent}
CHEATS = {**MEMORISED, **WARPED, **FAKE, **JUDGED}

