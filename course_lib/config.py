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
from contextlib import contextmanager
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


DEVICES = ("cpu", "cuda", "mps")


def _available(kind: str) -> bool:
    """Whether this machine's PyTorch has a ``kind`` device."""
    if kind == "cuda":
        return torch.cuda.is_available()
    if kind == "mps":
        mps = getattr(torch.backends, "mps", None)
        return mps is not None and mps.is_available()
    return True


def get_device(verbose: bool = False) -> torch.device:
    """CUDA if present, else Apple's MPS, else the CPU; ``COURSE_DEVICE`` (cpu, cuda or mps)
    chooses instead, e.g. the CPU on a Mac whose MPS lacks an operation or runs slower."""
    chosen = os.environ.get("COURSE_DEVICE", "").strip().lower()
    if chosen:
        if chosen not in DEVICES:
            raise ValueError(f"COURSE_DEVICE={chosen!r} is not one of {', '.join(DEVICES)}; "
                             "unset it to let the course choose")
        if not _available(chosen):
            raise ValueError(f"COURSE_DEVICE={chosen} but this machine's PyTorch has no {chosen} "
                             "device; unset it to let the course choose")
        device = torch.device(chosen)
    else:
        device = torch.device(next(kind for kind in ("cuda", "mps", "cpu") if _available(kind)))
    if verbose:
        extra = f" ({torch.get_num_threads()} CPU threads)" if device.type == "cpu" else ""
        print(f"device: {device}{extra}")
    return device


def cpu_has(feature: str) -> bool:
    """Whether this CPU has ``feature`` ("amx_tile", "avx512_bf16"), as PyTorch's probe reads it
    (``torch.cpu._is_<feature>_supported``; False where this torch has no such probe)."""
    probe = getattr(torch.cpu, f"_is_{feature}_supported", None)
    return bool(probe and probe())


def native_bf16(device: torch.device | str) -> bool:
    """Whether ``device`` is a CPU that multiplies bfloat16 matrices in hardware: Intel's AMX
    tiles, or the AVX512-BF16 dot products (AMD since Zen 4, Intel since Cooper Lake).

    There the course's convolutions take a fifth to a half less time under
    ``torch.autocast("cpu", dtype=torch.bfloat16)``, in training and in sampling, with the same
    losses and judged samples (bench/train_overheads.md, bench/bf16_sampling.md on AMX;
    bench/bf16_isa.md and bench/RESULTS.md section 18 on AVX512-BF16). Without either, bfloat16
    is emulated and 1.6 to 18 times as slow as float32 (bench/bf16_isa.md), so the course stays
    in float32 there (and on GPUs).

    ``COURSE_BF16=0`` keeps a CPU in float32 whatever it has (to compare, or to rule bfloat16 out
    of a bug); ``COURSE_BF16=1`` asks for bfloat16 where the flags are not read right.
    """
    if torch.device(device).type != "cpu":
        return False
    forced = bf16_override()
    if forced is not None:
        return forced
    return cpu_has("amx_tile") or cpu_has("avx512_bf16")


def bf16_override() -> bool | None:
    """``COURSE_BF16`` read as a yes (1/true/yes), a no (0/false/no) or unset (None: the CPU's
    flags decide)."""
    value = os.environ.get("COURSE_BF16", "").strip().lower()
    if value in ("", "auto"):
        return None
    if value in ("1", "true", "yes"):
        return True
    if value in ("0", "false", "no"):
        return False
    raise ValueError(f"COURSE_BF16={value!r} is not understood; use 0 (float32), 1 (bfloat16) "
                     "or unset it to let the CPU's instructions decide.")


def speed(device: torch.device | str) -> str:
    """How fast ``device`` trains the course's UNets, in three kinds that notebooks size their
    training by (:func:`by_speed`), so that each keeps within its minutes on a 2-core CPU:

    * ``"fast"``: a GPU, or a CPU with AMX in bfloat16 (04's 30 flower epochs in 190 s);
    * ``"bf16"``: a CPU with AVX512-BF16 but no AMX (the same 30 epochs in 321 s);
    * ``"float32"``: a CPU that trains in float32 (no bfloat16 instructions, or ``COURSE_BF16=0``;
      509 s), where 03, 04 and 05 took 12.1, 14.3 and 12.8 minutes with the epochs of a
      ``"bf16"`` CPU (bench/RESULTS.md, section 19).
    """
    if torch.device(device).type != "cpu":
        return "fast"
    if not native_bf16(device):
        return "float32"
    return "fast" if cpu_has("amx_tile") else "bf16"


def by_speed(device: torch.device | str, *, fast, bf16, float32):
    """The value for ``device``'s :func:`speed`, e.g. ``by_speed(device, fast=60, bf16=30, float32=20)``."""
    return {"fast": fast, "bf16": bf16, "float32": float32}[speed(device)]


def trains_fast(device: torch.device | str) -> bool:
    """Whether ``device`` trains 04's flower UNet fast enough for 60 epochs in the notebook's 12
    minutes: :func:`speed` is ``"fast"`` (a GPU, or a CPU with AMX in bfloat16; section 17). A CPU
    with only AVX512-BF16 trains in bfloat16 too, but more slowly, and 60 epochs would take 04
    past its 12 minutes (section 18). An AMX CPU kept in float32 (``COURSE_BF16=0``) is slower still.
    """
    return speed(device) == "fast"


def draw_device(generator: torch.Generator | None, device) -> torch.device:
    """Where to draw random numbers: on ``generator``'s own device when one is given (a generator
    draws only there), else on ``device``; the caller moves the draw to its data."""
    return generator.device if generator is not None else torch.device(device or "cpu")


@contextmanager
def evaluating(model: torch.nn.Module):
    """``model`` in eval mode inside the ``with``; afterwards every submodule is back in its own
    mode (a model mid-training trains on, and a locked tower inside it stays in eval)."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes:
            module.training = training


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
