"""One training loop for every model of the course, and safe checkpoints.

``train`` runs ``loss_fn(model, batch)`` over a DataLoader with Adam, a ``tqdm.auto``
progress bar showing the live loss, optional gradient clipping and an exponential
moving average (EMA) of the weights, and stops on a NaN/inf loss with a hint.
Checkpoints are written to a temporary file and renamed, so a crash never leaves a
half-written file behind.
"""
from __future__ import annotations

import math
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm.auto import tqdm


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite; training stopped before the weights were updated."""


class CheckpointError(RuntimeError):
    """A checkpoint file is unreadable or does not fit the model."""


@dataclass
class History:
    """What a training run leaves behind: the loss of every step and per-epoch timing."""

    losses: list[float] = field(default_factory=list)
    epoch_seconds: list[float] = field(default_factory=list)
    ema: nn.Module | None = None

    @property
    def final_loss(self) -> float:
        """Mean loss over the last 10% of steps (at least one)."""
        tail = self.losses[-max(1, len(self.losses) // 10):]
        return sum(tail) / len(tail)


def _to(batch, device, memory_format=torch.contiguous_format):
    if isinstance(batch, torch.Tensor):
        batch = batch.to(device)
        return batch.contiguous(memory_format=memory_format) if batch.ndim == 4 else batch
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to(b, device, memory_format) for b in batch)
    return batch


def pick_memory_format(model: nn.Module, device: torch.device | str) -> torch.memory_format:
    """The model's preferred layout (its ``memory_format`` attribute) on a CPU, else NCHW.

    bench/throughput.py measured it: on 2 CPU cores the BatchNorm/ReLU UNets of 01-02 train
    ~15-30% faster in channels_last (NHWC), the GroupNorm UNets of 03-06 3-11% slower.
    """
    if torch.device(device).type != "cpu":
        return torch.contiguous_format
    return getattr(model, "memory_format", torch.contiguous_format)


def train(model: nn.Module, loader: Iterable, loss_fn: Callable, epochs: int = 1,
          lr: float = 1e-3, device: torch.device | str = "cpu",
          optimizer: torch.optim.Optimizer | None = None, scheduler=None,
          grad_clip: float | None = None,
          ema_decay: float | None = None, max_steps: int | None = None,
          progress: bool = True, desc: str = "train",
          memory_format: torch.memory_format | None = None) -> History:
    """Minimise ``loss_fn(model, batch)`` for ``epochs`` passes over ``loader``.

    ``scheduler`` (a learning-rate scheduler) is stepped after every optimizer step.
    ``memory_format`` (default: :func:`pick_memory_format`) is the layout of the weights and
    of the 4-D tensors of each batch.
    Returns a :class:`History`; with ``ema_decay`` its ``ema`` holds the averaged copy
    (``AveragedModel``) whose ``.module`` is usually the better model to sample from.
    """
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    memory_format = memory_format or pick_memory_format(model, device)
    model.to(device, memory_format=memory_format).train()
    optimizer = optimizer or torch.optim.Adam(model.parameters(), lr=lr)
    ema = (AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(ema_decay))
           if ema_decay else None)
    history = History(ema=ema)
    step = 0
    for epoch in range(epochs):
        start = time.perf_counter()
        bar = tqdm(loader, desc=f"{desc} epoch {epoch + 1}/{epochs}", disable=not progress,
                   leave=True)
        for batch in bar:
            loss = loss_fn(model, _to(batch, device, memory_format))
            value = loss.item()
            if not math.isfinite(value):
                raise NonFiniteLossError(
                    f"loss became {value} at step {step} (epoch {epoch + 1}); the weights were "
                    "not updated with it. Try a smaller learning rate (e.g. lr/10), pass "
                    "grad_clip=1.0, and check that the inputs are finite and scaled to [-1, 1]."
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if grad_clip is not None:
                nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            if ema is not None:
                ema.update_parameters(model)
            history.losses.append(value)
            bar.set_postfix(loss=f"{value:.4f}")
            step += 1
            if max_steps is not None and step >= max_steps:
                break
        history.epoch_seconds.append(time.perf_counter() - start)
        if max_steps is not None and step >= max_steps:
            break
    model.eval()
    if ema is not None:
        ema.eval()
    return history


# --- checkpoints ---------------------------------------------------------------------------

def save_checkpoint(path: str | os.PathLike, model: nn.Module, **extra) -> Path:
    """Write ``model``'s weights (plus any ``extra`` values) atomically: temp file, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"model": model.state_dict(), "model_class": type(model).__name__, **extra}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it private; a checkpoint is an ordinary file
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: str | os.PathLike, model: nn.Module,
                    map_location: str | torch.device = "cpu") -> dict:
    """Load weights saved by :func:`save_checkpoint` into ``model``; return the whole payload."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}; train the model first (or fix the path).")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
        state = payload["model"]
    except Exception as err:
        raise CheckpointError(
            f"{path} is not a readable course checkpoint ({type(err).__name__}: {err}). "
            "It may be truncated or from another program: delete it and train again."
        ) from None
    saved = payload.get("model_class")
    if saved and saved != type(model).__name__:
        raise CheckpointError(f"{path} holds a {saved}, but the model given is a "
                              f"{type(model).__name__}; build a {saved} to load it.")
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        first = str(err).splitlines()[:4]
        raise CheckpointError(
            f"{path} does not fit this model (different channels or layers?): "
            + " ".join(first) + " Build the model with the settings it was trained with, "
            "or delete the checkpoint and train again."
        ) from None
    return payload
