"""Shared fixtures. Tests never touch the network: downloads are disabled here."""
import os
from pathlib import Path

import matplotlib
import pytest

matplotlib.use("Agg")
os.environ["COURSE_NO_DOWNLOAD"] = "1"
# the grader trains its private judge once per machine; tests keep theirs in the (ignored)
# checkpoints folder rather than in the user's home
os.environ.setdefault("COURSE_GRADER_DIR", str(Path(__file__).resolve().parent.parent
                                               / "checkpoints" / "grader"))


def _required() -> bool:
    """CI, or .ci/run's COURSE_REQUIRE_DATA: the datasets and pretrained weights must be there."""
    return bool(os.environ.get("CI") or os.environ.get("COURSE_REQUIRE_DATA"))


def _stop(why: str) -> None:
    """Skip with ``why`` on a student's machine; fail under CI, which must have it."""
    if _required():
        pytest.fail(f"CI must have it: {why}")
    pytest.skip(why)


@pytest.fixture(scope="session")
def absent():
    """``absent(why)``: :func:`_stop` for what CI installs, every package ``pyproject.toml``
    names (the pretrained towers' weights among them)."""
    return _stop


@pytest.fixture(autouse=True)
def _cpu_flags_decide_bfloat16(monkeypatch):
    """A maintainer's exported COURSE_BF16 (config.native_bf16) must not change what tests see."""
    monkeypatch.delenv("COURSE_BF16", raising=False)


def _need(*names: str) -> None:
    """Skip (or, under CI, fail) unless each named offline dataset is reachable."""
    from course_lib.data import DataNotFoundError, find_data_root

    try:
        for name in names:
            find_data_root(name, allow_download=False)
    except DataNotFoundError as err:
        _stop(f"offline datasets not found (set COURSE_DATA_DIR): {err}")


@pytest.fixture(scope="session")   # session: module-scoped fixtures (a judge, a cohort) use it too
def data_available():
    """All three offline datasets (FashionMNIST, MNIST, flowers)."""
    _need("FashionMNIST", "MNIST", "flowers")


@pytest.fixture(scope="session")
def mnist_available():
    """MNIST alone: all the grader needs (its judges and references are MNIST's)."""
    _need("MNIST")
