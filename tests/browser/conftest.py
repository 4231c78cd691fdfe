"""Fixtures of the browser suite: Debian's Chromium driven by Playwright, the course's JupyterLab.

Without /usr/bin/chromium (or the playwright package) every browser test is skipped with a line
saying how to enable them; under CI (CI set) that is a failure instead, since CI installs both.
Screenshots of each step go to build/browser/ (or $COURSE_BROWSER_SHOTS), printed at the end.
"""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

from jlab import CHROMIUM, HOW_TO_ENABLE, ROOT, Shots, launch_chromium, load_launcher, serve

SHOTS = Path(os.environ.get("COURSE_BROWSER_SHOTS", ROOT / "build" / "browser"))
_skipped: list[str] = []


def _unavailable() -> str | None:
    if not CHROMIUM.exists():
        return f"{CHROMIUM} not found; {HOW_TO_ENABLE}"
    try:
        import playwright  # noqa: F401
    except ImportError:
        return "the playwright package is missing: `.venv/bin/pip install -e '.[test]'`"
    return None


@pytest.fixture(scope="session")
def browser():
    reason = _unavailable()
    if reason:
        if os.environ.get("CI") or os.environ.get("COURSE_REQUIRE_BROWSER"):
            pytest.fail(f"CI must run the browser tests: {reason}")
        _skipped.append(reason)
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    import tempfile
    with tempfile.TemporaryDirectory(prefix="course-chromium-") as profile, \
            sync_playwright() as playwright:
        context = launch_chromium(playwright, Path(profile))
        context.set_default_timeout(30_000)
        try:
            yield context
        finally:
            context.close()


@pytest.fixture(scope="session")
def shots():
    if SHOTS.exists():
        shutil.rmtree(SHOTS)
    return Shots(SHOTS)


@pytest.fixture
def page(browser):
    page = browser.new_page()
    yield page
    page.close()


@pytest.fixture(scope="session")
def course_lab(browser, tmp_path_factory):
    """JupyterLab as `make course` starts it: lab/course.py, root = the repository."""
    tmp = tmp_path_factory.mktemp("course-lab")
    yield from serve([sys.executable, str(ROOT / "lab" / "course.py")], tmp, ROOT)


@pytest.fixture(scope="session")
def by_hand_lab(browser, tmp_path_factory):
    """JupyterLab started by hand as the README's conda line does: `jupyter lab notebooks/`."""
    tmp = tmp_path_factory.mktemp("by-hand-lab")
    load_launcher().install_settings()   # what `make setup` did for this environment
    extra = ["--allow-root"] if os.geteuid() == 0 else []
    yield from serve([sys.executable, "-m", "jupyterlab", "notebooks/", *extra], tmp,
                      ROOT / "notebooks")


def pytest_terminal_summary(terminalreporter):
    if _skipped:
        terminalreporter.write_sep("!", "browser tests SKIPPED", yellow=True, bold=True)
        terminalreporter.write_line(_skipped[0])
    elif SHOTS.is_dir() and any(SHOTS.iterdir()):
        terminalreporter.write_sep("-", "browser screenshots")
        terminalreporter.write_line(f"one PNG per step in {SHOTS}")
