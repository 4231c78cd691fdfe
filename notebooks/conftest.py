"""`pytest --nbval notebooks/` runs every notebook in the fast `test` profile.

The kernels nbval starts inherit this environment, so setting the variable here is
enough; export COURSE_PROFILE=full yourself to check the stored full-profile outputs.

Without the datasets, and with downloads forbidden (``COURSE_NO_DOWNLOAD=1``), every notebook
would fail on its first data cell; they are skipped instead, with the reason (under CI they run,
and fail, since CI must have the data).
"""
import os

import pytest

os.environ.setdefault("COURSE_PROFILE", "test")
os.environ.setdefault("MPLBACKEND", "module://matplotlib_inline.backend_inline")


def missing_data() -> str | None:
    """Why the notebooks cannot get their data here, or None when they can (found or downloadable)."""
    from course_lib.config import downloads_allowed
    from course_lib.data import DATASETS, DataNotFoundError, find_data_root

    if downloads_allowed():
        return None
    try:
        for name in DATASETS:
            find_data_root(name, allow_download=False)
    except DataNotFoundError as err:
        return str(err)
    return None


def pytest_collection_modifyitems(config, items):
    if os.environ.get("CI") or os.environ.get("COURSE_REQUIRE_DATA") or not items:
        return
    reason = missing_data()
    if reason:
        skip = pytest.mark.skip(reason="offline datasets not found and COURSE_NO_DOWNLOAD is set "
                                       f"(point COURSE_DATA_DIR at them, or allow downloads): {reason}")
        for item in items:
            item.add_marker(skip)
