"""Datasets of the course: where they are found, and the transforms that put them in [-1, 1].

Lookup order for a dataset's root folder (the first that holds it wins):

1. ``$COURSE_DATA_DIR`` (CI points it at the offline copies),
2. the repository's ``data/`` folder,
3. system dataset folders (``/usr/share/datasets``; Debian's ``dataset-fashion-mnist``
   installs ``fashion-mnist/*.gz`` there, which are unpacked into ``data/``),
4. a download into ``data/`` (torchvision for MNIST/FashionMNIST, the TensorFlow
   flower-photos archive for flowers), unless ``COURSE_NO_DOWNLOAD=1`` (the default of
   ``allow_download``; a caller's explicit ``allow_download=True`` downloads even then).

The course was measured on an offline copy of 4,307 flower photos (the "Flowers Recognition"
set, which includes TensorFlow's flower photos) with a 128-px shorter side. A download is
TensorFlow's set, resized to the same shorter side; the flower judge's held-out photos are
named in a list (``classifier.flower_split``), so it holds out only photos the judge never saw,
fewer of them, and figures on it differ from the stored ones.

Images are decoded once and kept as one float tensor in [-1, 1]; the random
horizontal flip is applied per item when the dataset is read.
"""
from __future__ import annotations

import gzip
import os
import shutil
import socket
from pathlib import Path
from typing import Callable, Sequence

import torch
import torchvision
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from .config import REPO_ROOT, downloads_allowed

IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
FLOWER_CLASSES = ("daisy", "dandelion", "rose", "sunflower", "tulip")
DOWNLOAD_TIMEOUT = 60.0   # seconds a download may wait for the network at a time
DEFAULT_FLOWERS = ("daisy", "rose", "sunflower")
FASHION_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
DATASETS = ("FashionMNIST", "MNIST", "flowers")
SYSTEM_DIRS = (Path("/usr/share/datasets"), Path("/usr/local/share/datasets"))
# Debian's package names its folder differently from torchvision (flowers: only ``flowers/``).
SYSTEM_NAMES = {"FashionMNIST": ("FashionMNIST", "fashion-mnist"), "MNIST": ("MNIST", "mnist"),
                "flowers": ("flowers",)}
FLOWER_SHORT_SIDE = 128   # px: the offline copy's photos, and the download's once resized
FLOWERS_URL = "https://storage.googleapis.com/download.tensorflow.org/example_images/flower_photos.tgz"


class DataNotFoundError(FileNotFoundError):
    """A dataset is in none of the places the lookup searches."""


# --- 1. finding the data ---------------------------------------------------------------

def repo_data_dir() -> Path:
    return REPO_ROOT / "data"


def _has_dataset(root: Path, name: str) -> bool:
    """True when ``root`` holds ``name`` in the layout torchvision reads (flowers: a folder for
    every one of FLOWER_CLASSES)."""
    if name == "flowers":
        return (root / "flowers").is_dir() and not _flowers_lack(root / "flowers")
    raw = root / name / "raw"
    return all((raw / f).is_file() for f in IDX_FILES)


def _flowers_lack(folder: Path) -> str:
    """'' when ``folder`` holds a folder of photos per class; else which are missing, and the fix
    when they are there under TensorFlow's plural names ("roses")."""
    missing = [c for c in FLOWER_CLASSES if not (folder / c).is_dir()]
    if not missing:
        return ""
    plural = [f"{c}s" for c in missing if (folder / f"{c}s").is_dir()]
    fix = f" (rename {', '.join(plural)} to the singular)" if plural else ""
    return f"lacks the class folder(s) {', '.join(missing)}{fix}"


def _looked_at(root: Path, name: str) -> str:
    """How a searched place reads in the not-found message: the place, and for a flowers folder
    that is there but incomplete, what it lacks."""
    if name == "flowers" and (root / "flowers").is_dir():
        lack = _flowers_lack(root / "flowers")
        if lack:
            return f"{root} (its flowers/ {lack})"
    return str(root)


def _from_system_dir(sys_dir: Path, name: str, target: Path) -> bool:
    """Use a system copy: torchvision layout as is, Debian's ``*.gz`` files unpacked into ``target``."""
    if _has_dataset(sys_dir, name):
        return True
    for folder in SYSTEM_NAMES[name]:
        src = sys_dir / folder
        if name != "flowers" and all((src / f"{f}.gz").is_file() for f in IDX_FILES):
            raw = target / name / "raw"
            raw.mkdir(parents=True, exist_ok=True)
            for f in IDX_FILES:
                with gzip.open(src / f"{f}.gz", "rb") as fin, open(raw / f, "wb") as fout:
                    shutil.copyfileobj(fin, fout)
            return True
    return False


def _download(name: str, target: Path) -> None:
    target.mkdir(parents=True, exist_ok=True)
    if name == "flowers":
        from torchvision.datasets.utils import download_and_extract_archive

        folder = target / "flowers"
        if folder.exists():   # never download over what someone made there
            what = _flowers_lack(folder) if folder.is_dir() else "is not a folder"
            raise FileExistsError(f"{folder} is there but {what}; complete it, or remove it to "
                                  "download the photos again")
        # Prepared in a folder of its own and moved into place last: an interrupted run leaves
        # no half-made flowers/ for the next lookup to take.
        partial = target / ".flowers-partial"
        shutil.rmtree(partial, ignore_errors=True)
        archive = target / Path(FLOWERS_URL).name
        try:
            download_and_extract_archive(FLOWERS_URL, download_root=str(target),
                                         extract_root=str(partial))
            # The archive names its classes in the plural ("roses"); the course uses the singular.
            for plural in (partial / "flower_photos").iterdir():
                if plural.is_dir() and plural.name.endswith("s") and plural.name[:-1] in FLOWER_CLASSES:
                    plural.rename(plural.with_name(plural.name[:-1]))
            shrink_photos(partial / "flower_photos")
            (partial / "flower_photos").rename(target / "flowers")
        finally:
            shutil.rmtree(partial, ignore_errors=True)
            archive.unlink(missing_ok=True)   # 218 MiB once extracted; truncated, reused next time
    else:
        getattr(torchvision.datasets, name)(str(target), train=True, download=True)
        getattr(torchvision.datasets, name)(str(target), train=False, download=True)


def shrink_photos(folder: Path, short_side: int = FLOWER_SHORT_SIDE) -> int:
    """Resize every JPEG under ``folder`` whose shorter side is longer than ``short_side``, in
    place, to that shorter side (aspect kept): the layout of the offline copy the course was
    measured on. Returns how many were resized."""
    from PIL import Image
    from tqdm.auto import tqdm

    resized = 0
    for path in tqdm(sorted(folder.rglob("*.jpg")), desc="resizing flower photos"):
        with Image.open(path) as photo:
            w, h = photo.size
            if min(w, h) <= short_side:
                continue
            scale = short_side / min(w, h)
            small = photo.convert("RGB").resize((max(short_side, round(w * scale)),
                                                 max(short_side, round(h * scale))),
                                                Image.Resampling.LANCZOS)
        small.save(path, quality=95)
        resized += 1
    return resized


def find_data_root(name: str, allow_download: bool | None = None) -> Path:
    """Folder that holds dataset ``name``, searched in the order given in this module's docstring."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {DATASETS}")
    if allow_download is None:
        allow_download = downloads_allowed()
    looked = []
    env = os.environ.get("COURSE_DATA_DIR")
    if env:
        root = Path(env).expanduser().resolve()
        looked.append(f"$COURSE_DATA_DIR={_looked_at(root, name)}")
        if _has_dataset(root, name):
            return root
    else:
        looked.append("$COURSE_DATA_DIR (not set)")
    local = repo_data_dir()
    looked.append(_looked_at(local, name))
    if _has_dataset(local, name):
        return local
    for sys_dir in SYSTEM_DIRS:
        looked.append(_looked_at(sys_dir, name))
        if sys_dir.is_dir() and _from_system_dir(sys_dir, name, local):
            return sys_dir if _has_dataset(sys_dir, name) else local
    reason = ("download disabled by COURSE_NO_DOWNLOAD=1" if not downloads_allowed() else
              "downloads were not asked for (allow_download=False)")
    if allow_download:
        timeout = socket.getdefaulttimeout()
        socket.setdefaulttimeout(DOWNLOAD_TIMEOUT)   # a network that drops packets fails, not hangs
        try:
            _download(name, local)
            if _has_dataset(local, name):
                return local
            reason = "the download finished but the files are not in the expected layout"
        except FileExistsError as err:   # an incomplete flowers/ in the way: nothing was fetched
            reason = f"no download was tried: {err}"
        except Exception as err:  # no network, server gone, disk full ...
            reason = f"download failed: {type(err).__name__}: {err}{_certificate_hint(err)}"
        finally:
            socket.setdefaulttimeout(timeout)
    places = "\n  - ".join(looked)
    layout = ("flowers/ with a folder per species (" + ", ".join(FLOWER_CLASSES) + ")"
              if name == "flowers" else
              f"{name}/raw/ with its four idx files (torchvision's layout)")
    online = ("unset COURSE_NO_DOWNLOAD and run once with internet access"
              if not downloads_allowed() else
              "run once with internet access so it downloads" if allow_download else
              "call it with allow_download=True (or run notebook 00) with internet access")
    raise DataNotFoundError(
        f"Dataset {name!r} was not found. Looked in:\n  - {places}\nand {reason}.\n"
        f"Fix: set COURSE_DATA_DIR to a folder that holds {layout} "
        f"(e.g. export COURSE_DATA_DIR=/path/to/datasets before starting JupyterLab, or "
        f"%env COURSE_DATA_DIR=/path/to/datasets in a notebook's first cell), or put it in {local}, "
        f"or {online}; data/README.md has the details."
    )


def _certificate_hint(err: Exception) -> str:
    """Where a download failed because Python cannot check the server's certificate (the
    python.org installer on macOS ships without the system's), how to give it one."""
    if "CERTIFICATE_VERIFY_FAILED" not in f"{err} {getattr(err, 'reason', '')}":
        return ""
    return (" (Python could not check the server's certificate: on macOS, run 'Install "
            "Certificates.command' in its /Applications/Python 3.x folder; elsewhere, or behind a "
            "proxy that inspects HTTPS, pip install certifi and export SSL_CERT_FILE=\"$(python -m "
            "certifi)\" (or your proxy's certificate) before starting JupyterLab)")


# --- 2. transforms -----------------------------------------------------------------------

def image_transform(size: int, channels: int) -> v2.Compose:
    """uint8 image(s) -> float in [-1, 1]: resize the short side, centre-crop, x/127.5 - 1."""
    return v2.Compose([
        v2.Resize(size, antialias=True),
        v2.CenterCrop(size),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize([0.5] * channels, [0.5] * channels),
    ])


def require_float_images(x: torch.Tensor, what: str = "the images") -> None:
    """Refuse integer pixels where the course's [-1, 1] floats are expected (clamped, they would
    show as white, or score as noise, with no error)."""
    if not x.is_floating_point():
        raise ValueError(f"{what} are {x.dtype}; the course's images are floats in [-1, 1] "
                         "(from [0, 255] pixels: x.float() / 127.5 - 1)")


def to_display(x: torch.Tensor) -> torch.Tensor:
    """Inverse of the course transform: [-1, 1] -> [0, 1], clamped, for plotting."""
    require_float_images(x)
    return ((x.detach().float().cpu() + 1) / 2).clamp(0, 1)


class ImageContextDataset(Dataset):
    """Images already in [-1, 1], each paired with a context (a CLIP embedding, caption tokens ...).

    Items are ``(image, context[i])``; with ``flip`` the image is mirrored at random per item,
    and ``transform`` (say a ``v2.RandomResizedCrop``) is applied to each item after that.
    """

    def __init__(self, images: torch.Tensor, context: torch.Tensor, flip: bool = False,
                 transform: Callable | None = None):
        if images.ndim != 4 or len(images) != len(context):
            raise ValueError(f"expected images (N, C, H, W) and N contexts, got "
                             f"{tuple(images.shape)} and {tuple(context.shape)}")
        self.images, self.context = images, context
        self.flip = v2.RandomHorizontalFlip() if flip else None
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i):
        x = self.images[i]
        x = self.flip(x) if self.flip else x
        return (self.transform(x) if self.transform else x), self.context[i]


class ImageDataset(ImageContextDataset):
    """Images in [-1, 1] with integer class labels (the context is the label) and class names."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, classes: Sequence[str],
                 flip: bool = False, names: Sequence[str] | None = None):
        super().__init__(images, labels, flip)
        self.labels, self.classes = labels, list(classes)
        # each image's file as "species/file.jpg" (flowers), or None (the idx datasets)
        self.names = None if names is None else list(names)


def _subset(n: int, limit: int | None, seed: int = 0) -> torch.Tensor:
    """Indices of a fixed random subset of size ``limit`` (all of them when limit is None)."""
    if limit is None or limit >= n:
        return torch.arange(n)
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:limit]


def _load_idx(name: str, train: bool, size: int, flip: bool, limit: int | None) -> ImageDataset:
    root = find_data_root(name)
    raw = getattr(torchvision.datasets, name)(str(root), train=train, download=False)
    keep = _subset(len(raw.data), limit)
    images = image_transform(size, 1)(raw.data[keep].unsqueeze(1))
    return ImageDataset(images, raw.targets[keep], raw.classes if name == "MNIST" else FASHION_CLASSES,
                        flip)


def load_fashion_mnist(size: int = 16, train: bool = True, flip: bool = True,
                       limit: int | None = None) -> ImageDataset:
    """FashionMNIST at ``size``x``size``, 1 channel, in [-1, 1]."""
    return _load_idx("FashionMNIST", train, size, flip, limit)


def load_mnist(size: int = 28, train: bool = True, flip: bool = False,
               limit: int | None = None) -> ImageDataset:
    """MNIST at ``size``x``size``, 1 channel, in [-1, 1] (no flip by default: digits are not symmetric)."""
    return _load_idx("MNIST", train, size, flip, limit)


def flower_files(classes: Sequence[str] = DEFAULT_FLOWERS) -> list[tuple[str, int]]:
    """(path, label) of every photo of the chosen classes, labels numbered in the order given."""
    unknown = [c for c in classes if c not in FLOWER_CLASSES]
    if unknown:
        raise ValueError(f"unknown flower classes {unknown}; choose from {FLOWER_CLASSES}")
    folder = find_data_root("flowers") / "flowers"
    found = torchvision.datasets.ImageFolder(str(folder), allow_empty=True)
    return [(path, list(classes).index(found.classes[y])) for path, y in found.samples
            if found.classes[y] in classes]


def load_flowers(size: int = 32, classes: Sequence[str] = DEFAULT_FLOWERS, flip: bool = True,
                 limit: int | None = None) -> ImageDataset:
    """Flower photos of ``classes``, short side resized to ``size`` and centre-cropped, RGB in [-1, 1]."""
    files = flower_files(classes)
    # seed 1: seed 0's first 10% are the judge's held-out photos (classifier.flower_split), and a
    # subset (the test profile's) must hold photos of both kinds
    keep = _subset(len(files), limit, seed=1).tolist()
    tf = image_transform(size, 3)
    images = torch.empty(len(keep), 3, size, size)   # filled in place: no second copy while stacking
    for row, i in enumerate(keep):
        images[row] = tf(torchvision.io.decode_image(files[i][0], mode=torchvision.io.ImageReadMode.RGB))
    labels = torch.tensor([files[i][1] for i in keep])
    names = ["/".join(Path(files[i][0]).parts[-2:]) for i in keep]
    return ImageDataset(images, labels, classes, flip, names)


LOADERS = {"mnist": load_mnist, "fashion_mnist": load_fashion_mnist}
"""The grey datasets by the names the classifiers and metrics use."""


def make_loader(dataset: Dataset, batch_size: int = 128, shuffle: bool = True,
                seed: int = 0) -> DataLoader:
    """A DataLoader in the main process (fastest for in-memory tensors on a small CPU)."""
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, drop_last=shuffle,
                      generator=torch.Generator().manual_seed(seed) if shuffle else None)
