"""One training loop for every model of the course, and safe checkpoints.

``train`` runs ``loss_fn(model, batch)`` over a DataLoader with (fused) Adam, one ``tqdm.auto``
progress bar for the whole run (the epoch and its mean loss so far beside it), optional
gradient clipping and an exponential
moving average (EMA) of the weights, and stops on a NaN/inf loss with a hint.
Checkpoints are written to a temporary file and renamed, so a crash never leaves a
half-written file behind.
"""
from __future__ import annotations

import copy
import math
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel
from tqdm.auto import tqdm

from .config import native_bf16
from .storage import load_tensors, save_atomic


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite; training stopped before the optimizer stepped with it."""


def _spoiled(model: nn.Module) -> tuple[list[str], list[str]]:
    """(weights that hold NaN or ±inf, buffers that hold NaN). Not a buffer's ±inf: an attention
    mask (open_clip's text tower) holds -inf on purpose."""
    weights = [name for name, v in model.named_parameters() if not torch.isfinite(v).all()]
    buffers = [name for name, v in model.named_buffers()
               if v.is_floating_point() and v.isnan().any()]
    return weights, buffers


def non_finite(model: nn.Module) -> str:
    """The weights and buffers of :func:`_spoiled`, named ("" where none are)."""
    return _named(sum(_spoiled(model), []))


def _named(names: list[str]) -> str:
    return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def _rebuild_hint(model: nn.Module) -> str:
    """After a NaN loss: what else it spoiled. The forward pass that computed it has already
    updated BatchNorm's running statistics, which no later training can repair."""
    weights, buffers = _spoiled(model)
    if not weights and not buffers:
        return ""
    why = (" (the forward pass updates BatchNorm's running statistics before the loss is "
           "checked)" if buffers else "")
    return (f" The model itself now holds NaN or inf in {_named(weights + buffers)}{why}: re-run "
            "the cell that builds the model before training again.")


class CheckpointError(RuntimeError):
    """A checkpoint file is unreadable or does not fit the model."""


@dataclass
class History:
    """What a training run leaves behind: the loss of every step and per-epoch timing."""

    losses: list[float] = field(default_factory=list)
    epoch_seconds: list[float] = field(default_factory=list)
    ema: nn.Module | None = None
    bf16: bool = False          # trained under bfloat16 autocast (see :func:`bf16_pays`)
    snapshots: dict[int, nn.Module] = field(default_factory=dict)   # epoch -> frozen copy

    @property
    def final_loss(self) -> float:
        """Mean loss over the last 10% of steps (at least one)."""
        if not self.losses:
            raise ValueError("no loss was recorded: this history has no training steps (a "
                             "checkpoint saved without its losses, or a run that never stepped)")
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


def ema_warmup_avg_fn(decay: float, warmup: float = 10.0) -> Callable:
    """EMA update with warm-up: avg ← avg + (1 - d_n)·(w - avg), d_n = min(decay, (1 + n)/(warmup + n)).

    A fixed decay of 0.999 over the ~1,000 steps of a CPU run leaves the average dominated by
    the random initial weights (measured in issue #10: samples turned to noise). With the
    warm-up (as in TensorFlow's ExponentialMovingAverage with num_updates, and diffusers'
    EMAModel) the first update copies the weights (``AveragedModel``), and each early update after
    it keeps only a fraction of the old average (d_1 ≈ 0.18, d_2 = 0.25 for warmup 10): the
    average spans a window that widens with n (about the last (n + warmup)/(warmup - 1)
    updates), so the initial weights wash out at once, and the decay reaches ``decay`` only after
    ~(warmup - 1)/(1 - decay) steps.

    It updates all parameters at once (``AveragedModel(model, multi_avg_fn=...)``): one
    ``torch._foreach_lerp_`` per step, as torch's own ``get_ema_multi_avg_fn`` does, instead of a
    Python loop over the tensors (with :func:`adam`: 7-13% less time a step of 03's recipe,
    bench/train_overheads.md).
    """
    if not 0.0 < decay < 1.0:
        raise ValueError(f"ema_decay must be in (0, 1), got {decay}")

    def multi_avg_fn(averaged: list[torch.Tensor], current: list[torch.Tensor], num_averaged) -> None:
        n = float(num_averaged)
        d = min(decay, (1 + n) / (warmup + n))
        torch._foreach_lerp_(averaged, current, 1 - d)   # avg + (1 - d)·(w - avg), in place

    return multi_avg_fn


def bf16_pays(model: nn.Module, device: torch.device | str) -> bool:
    """``train``'s default for ``bf16``: a native-bfloat16 CPU (:func:`~course_lib.config.native_bf16`)
    and a model with convolutions. Small matrix products (02's ``ToyDenoiser``, an MLP of 10k
    weights) cost more in casts than bfloat16 saves (bench/bf16_sampling.md), so they stay float32."""
    return native_bf16(device) and any(isinstance(m, nn.modules.conv._ConvNd) for m in model.modules())


def adam(params, lr: float = 1e-3, **kwargs) -> torch.optim.Adam:
    """torch's Adam with its fused kernel: one update for all parameters per step, the same
    numbers as the default per-tensor loop, and less time (bench/train_overheads.md)."""
    return torch.optim.Adam(params, lr=lr, fused=True, **kwargs)


def warmup_cosine(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int = 100,
                  final_factor: float = 0.1) -> torch.optim.lr_scheduler.LRScheduler:
    """Learning rate: linear warm-up from ~0 over ``warmup_steps``, then cosine decay to
    ``final_factor``× the base rate at ``total_steps`` (torch's LinearLR + CosineAnnealingLR)."""
    if total_steps < 2:
        raise ValueError(f"warmup_cosine needs total_steps >= 2 (one to warm up, one to decay), got "
                         f"{total_steps}: count the optimizer steps as epochs × len(loader)")
    warmup_steps = max(1, min(warmup_steps, total_steps - 1))
    base = optimizer.param_groups[0]["lr"]
    return torch.optim.lr_scheduler.SequentialLR(optimizer, [
        torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=1e-3, total_iters=warmup_steps),
        torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps - warmup_steps,
                                                   eta_min=base * final_factor),
    ], milestones=[warmup_steps])


def train(model: nn.Module, loader: Iterable, loss_fn: Callable, epochs: int = 1,
          lr: float = 1e-3, device: torch.device | str = "cpu",
          optimizer: torch.optim.Optimizer | None = None, scheduler=None,
          grad_clip: float | None = None,
          ema_decay: float | None = None, max_steps: int | None = None,
          max_seconds: float | None = None, on_epoch_end: Callable | None = None,
          progress: bool = True, desc: str = "train",
          memory_format: torch.memory_format | None = None, bf16: bool | None = None,
          snapshot_epochs: Iterable[int] = ()) -> History:
    """Minimise ``loss_fn(model, batch)`` for ``epochs`` passes over ``loader``.

    ``scheduler`` (a learning-rate scheduler) is stepped after every optimizer step.
    ``max_steps`` / ``max_seconds`` stop early (benchmarks compare recipes at the same budget).
    ``on_epoch_end(epoch, model)`` runs after each epoch (in eval mode, without gradients), e.g.
    to draw a few samples and watch the model learn.
    ``memory_format`` (default: :func:`pick_memory_format`) is the layout of the weights and
    of the 4-D tensors of each batch.
    ``bf16`` computes the forward pass and the loss under bfloat16 autocast (weights, gradients
    and Adam stay float32); default (:func:`bf16_pays`): for a model with convolutions on a CPU
    that multiplies bfloat16 in hardware (AMX or AVX512-BF16). The progress bar then says "bf16".
    Returns a :class:`History` and leaves the model (and its EMA) in eval mode, ready to
    sample; with ``ema_decay`` its ``ema`` holds the averaged copy
    (``AveragedModel``, with warm-up: :func:`ema_warmup_avg_fn`) whose ``.module`` is usually
    the better model to sample from.
    ``snapshot_epochs`` (1-based) keeps a frozen copy of the model to sample from (the EMA's
    ``.module`` when there is one) at the end of each of those epochs, in
    ``history.snapshots[epoch]``: an early, weaker version of the model for autoguidance
    (:class:`course_lib.ddpm.AutoGuidance`).
    """
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    snapshot_epochs = sorted(set(snapshot_epochs))
    if any(not 1 <= e <= epochs for e in snapshot_epochs):
        raise ValueError(f"snapshot_epochs must lie in 1..{epochs} (the epochs trained), "
                         f"got {snapshot_epochs}")
    broken = non_finite(model)
    if broken:
        raise ValueError(f"the model already holds NaN or infinite values ({broken}): an earlier "
                         "training diverged. Re-run the cell that builds the model, then train "
                         "with a smaller learning rate (e.g. lr/10) or grad_clip=1.0.")
    memory_format = memory_format or pick_memory_format(model, device)
    model.to(device, memory_format=memory_format).train()
    optimizer = optimizer or adam(model.parameters(), lr=lr)
    ema = AveragedModel(model, multi_avg_fn=ema_warmup_avg_fn(ema_decay)) if ema_decay else None
    bf16 = bf16_pays(model, device) if bf16 is None else bf16
    history = History(ema=ema, bf16=bf16)
    step, started = 0, time.perf_counter()

    def out_of_budget() -> bool:
        return ((max_steps is not None and step >= max_steps)
                or (max_seconds is not None and time.perf_counter() - started >= max_seconds))

    # one bar for the whole run (its time left is the run's); the postfix says which epoch
    try:
        per_epoch = len(loader)
    except TypeError:   # an iterable without a length (a generator, an IterableDataset): a counter
        per_epoch = None
    total = None if per_epoch is None else epochs * per_epoch
    if total is not None and max_steps is not None:
        total = min(total, max_steps)
    bar = tqdm(total=total, desc=desc + (" (bf16)" if bf16 else ""), unit="step",
               disable=not progress)
    kind = torch.device(device).type
    try:
        for epoch in range(epochs):
            start = time.perf_counter()
            epoch_total, epoch_steps, broke = 0.0, 0, False
            for batch in loader:
                with torch.autocast(kind, dtype=torch.bfloat16, enabled=bf16):
                    loss = loss_fn(model, _to(batch, device, memory_format))
                value = loss.item()
                if not math.isfinite(value):
                    raise NonFiniteLossError(
                        f"loss became {value} at step {step} (epoch {epoch + 1}); the optimizer "
                        "did not step with it. Try a smaller learning rate (e.g. lr/10), pass "
                        "grad_clip=1.0, and check that the inputs are finite and scaled to [-1, 1]."
                        + _rebuild_hint(model))
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
                epoch_total, epoch_steps = epoch_total + value, epoch_steps + 1
                mean = epoch_total / epoch_steps   # the epoch's mean, not a batch's jumps
                bar.set_postfix({"epoch": f"{epoch + 1}/{epochs}", "mean loss": f"{mean:.4f}"},
                                refresh=False)
                bar.update()
                step += 1
                if out_of_budget():
                    broke = True
                    break
            if epoch_steps == 0:
                raise ValueError(
                    f"the loader gave no batch in epoch {epoch + 1}: " + (
                        "an iterator without a length is used up after one pass; pass a DataLoader "
                        "(or a list of batches), which starts again every epoch"
                        if per_epoch is None and epoch > 0 else
                        "it is empty" if per_epoch is None else
                        "a dataset smaller than one batch gives none when its loader drops the "
                        "last, short batch (make_loader does when it shuffles); use a smaller "
                        "batch_size or more images"))
            history.epoch_seconds.append(time.perf_counter() - start)
            whole = not broke if per_epoch is None else epoch_steps == per_epoch
            if epoch + 1 in snapshot_epochs and whole:   # an epoch cut short is no epoch's snapshot
                kept = ema.module if ema is not None else model
                history.snapshots[epoch + 1] = copy.deepcopy(kept)
                history.snapshots[epoch + 1].eval().requires_grad_(False)
            if on_epoch_end is not None:
                model.eval()
                with torch.no_grad():
                    on_epoch_end(epoch, model)
                model.train()
            if out_of_budget():   # the budget ended it, not an error: the bar reads as done
                _done_here(bar)
                break
    finally:   # an error or Ctrl-C too: the bar ends, the model is left ready to sample
        bar.close()
        model.eval()
        if ema is not None:
            ema.eval()
    missed = [e for e in snapshot_epochs if e not in history.snapshots]
    if missed:   # max_steps or max_seconds stopped training first
        warnings.warn(f"training stopped after {len(history.epoch_seconds)} epoch(s), before the "
                      f"snapshots of epoch(s) {missed} were taken: history.snapshots has only "
                      f"{sorted(history.snapshots)}; raise max_steps / max_seconds or ask for "
                      "earlier epochs", stacklevel=2)
    return history


def _done_here(bar) -> None:
    """A bar stopped early by a budget reads as done where it stands: its total becomes its count,
    in JupyterLab's widget too (``tqdm.notebook`` sizes the widget only when the bar is made)."""
    bar.total = bar.n
    widget = getattr(bar, "container", None)
    if widget is not None:   # (text, bar, text), as tqdm.notebook's own reset() reads it
        widget.children[1].max = bar.n
    bar.refresh()


# --- checkpoints ---------------------------------------------------------------------------

def save_checkpoint(path: str | os.PathLike, model: nn.Module, **extra) -> Path:
    """Write ``model``'s weights (plus any ``extra`` values) atomically: temp file, then rename."""
    payload = {"model": model.state_dict(), "model_class": type(model).__name__, **extra}
    return save_atomic(payload, path)


def load_checkpoint(path: str | os.PathLike, model: nn.Module,
                    map_location: str | torch.device = "cpu") -> dict:
    """Load weights saved by :func:`save_checkpoint` into ``model``; return the whole payload."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}; train the model first (or fix the path).")
    try:
        payload = load_tensors(path, map_location)
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
    own = model.state_dict()   # checked first: a failed load_state_dict leaves what fitted copied
    unfit = sorted(set(own) ^ set(state)) + [k for k in own if k in state and
                                             tuple(own[k].shape) != tuple(state[k].shape)]
    try:
        if unfit:
            raise RuntimeError(f"Error(s) in loading state_dict: {len(unfit)} entries differ, e.g. "
                               + ", ".join(unfit[:3]) + ".")
        model.load_state_dict(state)
    except RuntimeError as err:
        first = str(err).splitlines()[:4]
        raise CheckpointError(
            f"{path} does not fit this model (different channels or layers?): "
            + " ".join(first) + " Build the model with the settings it was trained with, "
            "or delete the checkpoint and train again."
        ) from None
    return payload


def train_or_load(path: str | os.PathLike, model: nn.Module, loader: Iterable, loss_fn: Callable,
                  **train_kwargs) -> History:
    """Load ``model`` from ``path`` if a checkpoint is there, else :func:`train` it and save it.

    Either way it returns the :class:`History` (losses, seconds per epoch and, with
    ``ema_decay``, the EMA model), so a later notebook can reuse an earlier one's model and
    compare its training curve. A checkpoint that does not fit is reported, moved aside (kept:
    it may be a model a student changed and trained for minutes) and retrained.
    """
    path = Path(path)
    if path.is_file():
        try:
            payload = load_checkpoint(path, model)
        except CheckpointError as err:
            when, n = time.strftime("%Y%m%d-%H%M%S"), 1
            aside = path.with_name(f"{path.stem}.unfit-{when}{path.suffix}")
            while aside.exists():
                n += 1
                aside = path.with_name(f"{path.stem}.unfit-{when}-{n}{path.suffix}")
            os.replace(path, aside)
            print(f"{err}\nTraining it here instead; the checkpoint that does not fit is kept as "
                  f"{aside} (rename it back to {path.name} to use it).")
        else:
            if train_kwargs.get("device") is not None:   # where training would have left it
                model.to(train_kwargs["device"])
            if train_kwargs.get("snapshot_epochs"):
                warnings.warn(f"{path} holds no epoch snapshots, so history.snapshots is empty; "
                              "delete it to train again with them", stacklevel=2)
            history = History(losses=list(payload.get("losses", [])),
                              epoch_seconds=list(payload.get("epoch_seconds", [])))
            if payload.get("ema") is not None:
                history.ema = AveragedModel(model)
                history.ema.module.load_state_dict(payload["ema"])
                history.ema.eval()
            model.eval()
            print(f"loaded {type(model).__name__} from {path} (delete it to train again)")
            return history
    history = train(model, loader, loss_fn, **train_kwargs)
    save_checkpoint(path, model, losses=history.losses, epoch_seconds=history.epoch_seconds,
                    ema=None if history.ema is None else history.ema.module.state_dict())
    return history
