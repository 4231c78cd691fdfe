"""Run profiles, device choice and seeding: the settings every notebook starts from.

Two profiles, chosen with the ``COURSE_PROFILE`` environment variable:

* ``full`` (the default) is what students run: real epochs, real sample counts.
* ``test`` uses tiny subsets, one short epoch and few sampling steps so that
  ``pytest --nbval notebooks/`` executes every notebook in minutes.

Notebooks never branch on the profile themselves; they ask :func:`pick` for the
value of the current one, e.g. ``EPOCHS = pick(full=3, test=1)``.
"""
from __future__ import annotations

import os
import random
from pathlib import Path

import torch

PROFILES = ("full", "test")
REPO_ROOT = Path(__file__).resolve().parent.parent


def profile() -> str:
    """The active profile, read from ``COURSE_PROFILE`` (default ``full``)."""
    name = os.environ.get("COURSE_PROFILE", "full").strip().lower() or "full"
    if name not in PROFILES:
        raise ValueError(
            f"COURSE_PROFILE={name!r} is not a profile; use one of {PROFILES} "
            "(unset it to get 'full')."
        )
    return name


def pick(full, test):
    """Return ``full`` or ``test`` depending on the active profile."""
    return full if profile() == "full" else test


def get_device(verbose: bool = False) -> torch.device:
    """CUDA if present, else Apple's MPS, else the CPU."""
    if torch.cuda.is_available():
        device = torch.device("cuda")
    elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        device = torch.device("mps")
    else:
        device = torch.device("cpu")
    if verbose:
        extra = f" ({torch.get_num_threads()} CPU threads)" if device.type == "cpu" else ""
        print(f"device: {device}{extra}")
    return device


def native_bf16(device: torch.device | str) -> bool:
    """Whether ``device`` is a CPU that multiplies bfloat16 matrices natively (Intel AMX tiles).

    There the course's convolutions run a fifth to a half faster under
    ``torch.autocast("cpu", dtype=torch.bfloat16)``, in training (bench/train_overheads.md) and
    in sampling (bench/bf16_sampling.md), with the same losses and samples; elsewhere bfloat16 is
    emulated and slower, so the course stays in float32 there (and on GPUs).
    """
    if torch.device(device).type != "cpu":
        return False
    probe = getattr(torch.cpu, "_is_amx_tile_supported", None)
    return bool(probe and probe())


def trains_fast(device: torch.device | str) -> bool:
    """Whether ``device`` trains the course's UNets at least twice as fast as a float32 CPU: a GPU,
    or a CPU with AMX, where they train in bfloat16 (:func:`native_bf16`).

    04 gives its flower UNet twice the epochs there (bench/RESULTS.md, section 17), and the 30
    measured before that elsewhere, so the notebook takes about the same minutes on any 2-core
    CPU.
    """
    return torch.device(device).type != "cpu" or native_bf16(device)


def seed_everything(seed: int = 0) -> torch.Generator:
    """Seed Python, PyTorch (CPU and GPU) and return a CPU generator with the same seed."""
    random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device
    return torch.Generator().manual_seed(seed)


def downloads_allowed() -> bool:
    """False when ``COURSE_NO_DOWNLOAD`` is set (1/true/yes): nothing may be fetched at run time."""
    return os.environ.get("COURSE_NO_DOWNLOAD", "").strip().lower() not in ("1", "true", "yes")


def checkpoint_path(name: str) -> Path:
    """Where notebooks keep trained models: ``checkpoints/<profile>/<name>.pt`` in the repository."""
    return REPO_ROOT / "checkpoints" / profile() / f"{name}.pt"


def describe() -> str:
    """One line naming the profile, the device and the library versions."""
    import torchvision

    return (
        f"profile={profile()} device={get_device()} torch={torch.__version__} "
        f"torchvision={torchvision.__version__}"
    )
