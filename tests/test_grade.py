"""The assessment's grader, classifier and answer key.

End-to-end runs use tiny notebooks (one per way a submission can go wrong) and the key-filled
template in the test profile; no accuracy is asserted for the latter, only a well-formed report
whose exit status matches its verdict.
"""
import json
import subprocess
import sys

import nbformat
import pytest
import torch
from nbformat.v4 import new_code_cell, new_notebook

from course_lib import answer_key, grade


def _notebook(path, *sources):
    nb = new_notebook(cells=[new_code_cell(s) for s in sources])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    nbformat.write(nb, path)
    return path


def _run_grader(*args):
    proc = subprocess.run([sys.executable, "-m", "course_lib.grade", *map(str, args)],
                          capture_output=True, text=True, timeout=600)
    return proc.returncode, proc.stdout + proc.stderr


# --- unit tests ---------------------------------------------------------------------------------

def test_check_samples_reasons():
    good = torch.rand(20, 1, 28, 28) * 2 - 1
    assert grade.check_samples(good, 20) is None
    assert "shape" in grade.check_samples(good[:, :, :16, :16], 20)
    assert "shape" in grade.check_samples(good, 30)
    assert "dtype" in grade.check_samples(good.long(), 20)
    assert "NaN" in grade.check_samples(torch.where(good > 0.9, float("nan"), good), 20)
    assert "[-1, 1]" in grade.check_samples(good * 3, 20)
    assert "constant" in grade.check_samples(torch.zeros(20, 1, 28, 28), 20)
    assert "tensor" in grade.check_samples([1, 2], 20)


def test_near_copy_detection():
    torch.manual_seed(0)
    reference = torch.rand(500, 1, 28, 28) * 2 - 1
    copies = reference[:5] + 0.02 * torch.randn(5, 1, 28, 28)
    fresh = torch.rand(5, 1, 28, 28) * 2 - 1
    assert grade.count_near_copies(torch.cat([copies, fresh]), reference) == 5


def test_fixme_cells_and_prepare_strip_tags():
    nb = new_notebook(cells=[new_code_cell("x = 1"), new_code_cell("y = FIXME")])
    nb.cells[1].metadata["tags"] = ["raises-exception", "nbval-ignore-output"]
    assert grade.fixme_cells(nb) == [2]
    ready = grade.prepare(nb, seed=3, n=2, out="/tmp/x.pt")
    assert ready.cells[1].metadata["tags"] == ["nbval-ignore-output"]
    assert "manual_seed(3)" in ready.cells[-1].source and "repeat_interleave(2)" in ready.cells[-1].source
    assert len(nb.cells) == 2  # the original is untouched


def test_report_text_and_exit_codes():
    r = grade.Report("a.ipynb", grade.PASS, accuracy=0.97, per_digit={d: 0.97 for d in range(10)})
    assert r.exit_code == 0 and "PASS" in r.text() and "97.0%" in r.text()
    assert grade.Report("a.ipynb", grade.FAIL, reason="x").exit_code == 1
    assert grade.Report("a.ipynb", grade.ERROR, reason="x").exit_code == 2


def test_save_grid_with_any_number_of_misreads(tmp_path):
    images = torch.rand(20, 1, 28, 28) * 2 - 1
    labels = torch.arange(10).repeat_interleave(2)
    for wrong in (0, 1, 2, 7):
        predicted = labels.clone()
        predicted[:wrong] = (predicted[:wrong] + 1) % 10
        grade.save_grid(images, labels, predicted, tmp_path / f"g{wrong}.png", 2)
        assert (tmp_path / f"g{wrong}.png").stat().st_size > 1000


def test_answer_key_fills_every_exercise(tmp_path):
    nb = answer_key.fill()
    assert grade.fixme_cells(nb) == []
    template = nbformat.read(answer_key.TEMPLATE, as_version=4)
    exercises = [c for c in template.cells if answer_key.EXERCISE.match(c.source)]
    assert len(exercises) == 5 and set(answer_key.solutions()) == {
        "forward", "unet", "loss", "reverse", "sampling"}
    assert not any("raises-exception" in c.metadata.get("tags", []) for c in nb.cells)


# --- end to end ---------------------------------------------------------------------------------

SAMPLER = "import torch\ndef sample_digits(labels):\n    return {}\n"


@pytest.mark.parametrize("body,reason", [
    ("torch.zeros(len(labels), 1, 16, 16)", "wrong output shape"),
    ("torch.ones(len(labels), 1, 28, 28, dtype=torch.long)", "wrong dtype"),
    ("3 * torch.rand(len(labels), 1, 28, 28)", "must lie in [-1, 1]"),
    ("torch.full((len(labels), 1, 28, 28), float('nan'))", "NaN"),
])
def test_grader_rejects_bad_samples(tmp_path, body, reason):
    sub = _notebook(tmp_path / "bad.ipynb", SAMPLER.format(body))
    code, out = _run_grader(sub, "--samples-per-digit", 1, "--out", tmp_path / "grades")
    assert code == 1 and "FAIL" in out and reason in out, out
    report = json.loads((tmp_path / "grades" / "bad.json").read_text())
    assert report["status"] == "fail" and reason in report["reason"]


@pytest.mark.usefixtures("data_available")
def test_grader_rejects_copies_of_training_images(tmp_path):
    body = ("torch.stack([_mnist.images[(_mnist.labels == int(d)).nonzero()[k % 5, 0]] "
            "for k, d in enumerate(labels)])")
    sub = _notebook(tmp_path / "copy.ipynb",
                    "from course_lib.data import load_mnist\n_mnist = load_mnist(train=True)",
                    SAMPLER.format(body))
    code, out = _run_grader(sub, "--samples-per-digit", 2, "--out", tmp_path)
    assert code == 1 and "near-copies" in out, out


def test_grader_refuses_fixme_without_running(tmp_path):
    code, out = _run_grader(answer_key.TEMPLATE, "--out", tmp_path)
    assert code == 1 and "FIXMEs left" in out


def test_grader_reports_the_raising_cell(tmp_path):
    sub = _notebook(tmp_path / "raises.ipynb", "x = 1", "raise ValueError('boom in cell two')")
    code, out = _run_grader(sub, "--out", tmp_path)
    assert code == 1 and "cell 2 raised ValueError: boom in cell two" in out, out


def test_grader_needs_sample_digits(tmp_path):
    sub = _notebook(tmp_path / "nosampler.ipynb", "x = 1")
    code, out = _run_grader(sub, "--out", tmp_path)
    assert code == 1 and "must define sample_digits" in out, out


def test_grader_time_limit(tmp_path):
    sub = _notebook(tmp_path / "slow.ipynb", "import time\ntime.sleep(120)")
    code, out = _run_grader(sub, "--timeout", 8, "--out", tmp_path)
    assert code == 1 and "time-out" in out, out


def test_grader_could_not_grade(tmp_path):
    code, out = _run_grader(tmp_path / "missing.ipynb")
    assert code == 2 and "does not exist" in out
    (tmp_path / "broken.ipynb").write_text("{not json")
    code, out = _run_grader(tmp_path / "broken.ipynb", "--out", tmp_path)
    assert code == 2 and "not a readable notebook" in out


@pytest.mark.usefixtures("data_available")
def test_key_filled_template_grades_end_to_end_in_test_profile(tmp_path):
    """Fast: one epoch on 512 images, so no accuracy is asserted; the report must be well formed."""
    completed = tmp_path / "subs" / "key.ipynb"
    assert answer_key.main([str(completed)]) == 0
    _notebook(tmp_path / "subs" / "broken.ipynb", "raise RuntimeError('x')")
    code, out = _run_grader(tmp_path / "subs", "--profile", "test", "--samples-per-digit", 1,
                            "--out", tmp_path / "grades", "--json", tmp_path / "all.json")
    reports = json.loads((tmp_path / "all.json").read_text())
    key = next(r for r in reports if r["submission"].endswith("key.ipynb"))
    assert key["status"] in ("pass", "fail") and key["accuracy"] is not None, key
    assert set(key["per_digit"]) == {str(d) for d in range(10)}
    assert key["status"] == "pass" or "below" in key["reason"]
    assert (tmp_path / "grades" / "key_samples.png").is_file()
    assert code == 1 and "broken.ipynb" in out and "submission" in out  # summary table
