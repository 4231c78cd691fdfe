"""The browser checks must fail when the course is broken, or they prove nothing.

One small lab, set up the way things go wrong on a student's first day:
* its `python3` kernel runs *another* Python environment (a fresh venv that can import
  ipykernel and torch from the course's site-packages but, as any other environment, not the
  editable course_lib): the kernel check must fail, naming both problems;
* a notebook whose second cell raises: the Run All check must fail, naming the error.
"""
from __future__ import annotations

import json
import os
import site
import subprocess
import sys

import pytest

import jlab


def notebook(*sources: str) -> str:
    cells = [{"cell_type": "code", "execution_count": None, "metadata": {}, "outputs": [],
              "source": source} for source in sources]
    kernelspec = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
    return json.dumps({"cells": cells, "metadata": {"kernelspec": kernelspec}, "nbformat": 4,
                       "nbformat_minor": 5})


@pytest.fixture(scope="module")
def broken_lab(browser, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("broken-lab")
    root = tmp / "course"
    root.mkdir()
    (root / "broken.ipynb").write_text(notebook('print("first cell ran")', "1 / 0",
                                                'print("never reached")'))
    other = tmp / "other-env"
    subprocess.run([sys._base_executable, "-m", "venv", "--without-pip", str(other)], check=True)
    purelib = subprocess.run([str(other / "bin" / "python"), "-c",
                              "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    # a plain path entry: the course environment's packages, without its .pth files (so
    # without the editable install of course_lib)
    with open(os.path.join(purelib, "borrowed.pth"), "w") as pth:
        pth.write("\n".join(site.getsitepackages()) + "\n")
    kernel = tmp / "jupyter-path" / "kernels" / "python3"
    kernel.mkdir(parents=True)
    # stop_on_error_timeout: ipykernel aborts only the requests already queued when a cell
    # fails (window 0 s by default), so "Run All" sometimes ran the cell after the error when
    # its request arrived late (ipykernel's own help text names this); 2 s closes that race
    (kernel / "kernel.json").write_text(json.dumps({
        "argv": [str(other / "bin" / "python"), "-m", "ipykernel_launcher", "-f",
                 "{connection_file}", "--Kernel.stop_on_error_timeout=2"],
        "display_name": "Python 3 (ipykernel)", "language": "python"}))
    command = [sys.executable, "-m", "jupyterlab", f"--ServerApp.root_dir={root}"]
    command += ["--allow-root"] if os.geteuid() == 0 else []
    yield from jlab.serve(command, tmp, root, JUPYTER_PATH=str(tmp / "jupyter-path"))


def open_broken(page, lab):
    jlab.open_lab(page, lab, "lab/tree/broken.ipynb")
    jlab.wait_kernel_idle(page)


def test_kernel_check_fails_for_a_kernel_from_another_python(broken_lab, page, shots):
    open_broken(page, broken_lab)
    report = jlab.probe_kernel(page)
    shots(page, "broken_kernel_probe")
    with pytest.raises(AssertionError) as failure:
        jlab.check_kernel(report, expected_prefix=sys.prefix)
    assert "another Python" in str(failure.value)
    assert "cannot import course_lib" in str(failure.value)


def test_run_all_check_fails_when_a_cell_errors(broken_lab, page, shots):
    open_broken(page, broken_lab)
    result = jlab.run_all(page, timeout=120)
    shots(page, "broken_after_run_all")
    with pytest.raises(AssertionError, match="code cell 2: ZeroDivisionError"):
        jlab.check_run(result, broken_lab.root / "broken.ipynb")
    assert result.prompts[0] != "[ ]:" and result.prompts[2] == "[ ]:", result.prompts
