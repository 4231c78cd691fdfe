"""The assessment's grader: reading, the samples file, blame, reports, and end-to-end runs.

End-to-end runs use tiny notebooks (one per way a submission can go wrong) and the key-filled
template in the test profile; no accuracy is asserted for the latter (one epoch on 512 images),
only a well-formed report whose exit status matches its verdict. The adversarial notebooks are in
``tests/test_grade_attacks.py``; the checks against cheats in ``tests/test_grade_checks.py``.
"""
import contextlib
import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import nbformat
import pytest
import torch
from nbformat.v4 import new_code_cell, new_notebook

from course_lib import (answer_key, grade, grade_checks, grade_intake, grade_options, grade_out,
                        grade_report, grade_runner, gradebook, sandbox)


def _required() -> bool:
    """CI (.ci/run) sets COURSE_REQUIRE_SANDBOX: there a missing sandbox or Slurm is a failure."""
    return bool(os.environ.get("COURSE_REQUIRE_SANDBOX") or os.environ.get("CI"))
from course_lib.grade_checks import CannotGrade, Rejected


def _notebook(path, *sources):
    nb = new_notebook(cells=[new_code_cell(s) for s in sources])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)
    return path


def _run_grader(*args, timeout=600):
    proc = subprocess.run([sys.executable, "-m", "course_lib.grade", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout)
    return proc.returncode, proc.stdout + proc.stderr


def _sandbox_args():
    """Grade sandboxed where possible; elsewhere (no bwrap, not root, not CI) without it."""
    if sandbox.bwrap_path() and os.geteuid() == 0:
        return []
    if _required():
        pytest.fail("CI must grade with the sandbox: install bubblewrap and run as root")
    return ["--no-sandbox"]


# --- reading -------------------------------------------------------------------------------------

def test_read_submission_reasons(tmp_path):
    ok = _notebook(tmp_path / "ok.ipynb", "x = 1")
    nb = grade_intake.read_submission(ok)
    assert nb.cells[0].source == "x = 1"
    fixme = _notebook(tmp_path / "fixme.ipynb", "x = 1", "y = FIXME")
    with pytest.raises(Rejected, match=r"FIXMEs left in cell\(s\) 2"):
        grade_intake.read_submission(fixme)
    tagged = _notebook(tmp_path / "tagged.ipynb", "x = 1", "# EXERCISE: forward\ny = FIXME")
    with pytest.raises(Rejected, match=r"cell\(s\) 2 \(EXERCISE: forward\)"):
        grade_intake.read_submission(tagged)
    (tmp_path / "broken.ipynb").write_text("{not json")
    with pytest.raises(Rejected, match="not a readable Jupyter notebook"):
        grade_intake.read_submission(tmp_path / "broken.ipynb")
    data = json.loads(ok.read_text())
    data["cells"][0]["source"] = 42
    (tmp_path / "numeric.ipynb").write_text(json.dumps(data))
    with pytest.raises(Rejected, match="cell 1's source is not text"):
        grade_intake.read_submission(tmp_path / "numeric.ipynb")
    data["cells"][0]["source"] = "x = 1  # \ud800"   # half a surrogate pair: JSON allows the escape
    (tmp_path / "surrogate.ipynb").write_text(json.dumps(data))
    with pytest.raises(Rejected, match="lone surrogate"):
        grade_intake.read_submission(tmp_path / "surrogate.ipynb")
    # malformed past the cells' text: a FAIL saying what is wrong, never a grader error
    (tmp_path / "deep.ipynb").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(Rejected, match="nested too deeply"):
        grade_intake.read_submission(tmp_path / "deep.ipynb")
    for where, value, reason in (("cell", [], "cell 1's metadata"), ("cell", {"tags": "x"}, "tags"),
                                 ("notebook", [1], "its metadata")):
        data = json.loads(ok.read_text())
        (data["cells"][0] if where == "cell" else data)["metadata"] = value
        (tmp_path / "meta.ipynb").write_text(json.dumps(data))
        with pytest.raises(Rejected, match=reason):
            grade_intake.read_submission(tmp_path / "meta.ipynb")


def test_read_submission_strips_skipping_tags(tmp_path):
    path = _notebook(tmp_path / "t.ipynb", "x = 1")
    data = json.loads(path.read_text())
    data["cells"][0]["metadata"]["tags"] = ["raises-exception", "nbval-ignore-output"]
    path.write_text(json.dumps(data))
    assert grade_intake.read_submission(path).cells[0].metadata["tags"] == ["nbval-ignore-output"]


def test_snapshot_copies_regular_files_only(tmp_path):
    real = _notebook(tmp_path / "subs" / "alice.ipynb", "x = 1")
    (tmp_path / "subs" / "bob.ipynb").symlink_to(real)
    os.mkfifo(tmp_path / "subs" / "carol.ipynb")
    private = tmp_path / "private"
    private.mkdir()
    copies = dict(grade_intake.snapshot(sorted((tmp_path / "subs").glob("*.ipynb")), private))
    assert copies["alice"].read_bytes() == real.read_bytes()
    for name in ("bob", "carol"):  # a link and a pipe: not the notebook's fault, and said so
        with pytest.raises(grade.CannotGrade, match=f"{name}.ipynb is a link or not a regular file"):
            grade_intake.read_submission(copies[name])
    real.write_text("changed later")
    assert copies["alice"].read_text() != "changed later"
    sly = tmp_path / "subs" / "eve\x1b]0;owned\x07\x1b[2J.ipynb"     # terminal escapes in its name
    sly.symlink_to(real)
    copies = dict(grade_intake.snapshot([sly], private))
    said = grade_intake.why_unreadable(next(iter(copies.values())))["why"]
    assert "is a link" in said and "\x1b" not in said and "\x07" not in said, said


def test_student_names_are_safe_and_never_merge_two_students():
    names = [grade_intake.student_name(Path(f"{n}.ipynb")) for n in ("alice", "O'Brien", "O_Brien",
                                                               "-dash", "x" * 90, "x" * 89 + "y")]
    assert names[0] == "alice" and names[2] == "O_Brien" and names[3] == "-dash"
    assert names[1].startswith("O_Brien-") and len(set(names)) == len(names)
    assert all(re.fullmatch(r"[\w.-]+", n) and len(n) <= 80 for n in names), names
    parsed = grade_options.build_parser().parse_args(["x.ipynb", f"--name={names[3]}"])
    assert parsed.name == "-dash"


def test_cpu_time_grows_with_the_threads_a_notebook_is_given(monkeypatch):
    """RLIMIT_CPU counts every thread of a process: a fixed 4 hours stopped an honest notebook on
    16 busy threads after 15 minutes, far inside its hour, as a 'dead kernel'."""
    monkeypatch.setattr(grade.sandbox, "host_cores", lambda: list(range(32)))
    whole = grade._limits(1, None, 0, 3720)
    assert whole.threads == 32 and whole.cpu_seconds >= 32 * 3720
    share = grade._limits(16, None, 3, 3720)                     # two cores each
    assert share.cpus == (6, 7) and share.threads == 2 and share.cpu_seconds >= 2 * 3720
    assert grade._limits(16, None, 3, 60).cpu_seconds == grade.sandbox.Limits.cpu_seconds   # never less


def test_a_file_name_that_is_not_utf8_is_graded_under_a_safe_name(tmp_path):
    """M\x81ller.ipynb, as an old Windows zip unpacks Müller.ipynb: Python holds its name with
    surrogate escapes, which str.encode refused, stopping a whole folder's grading."""
    subs = tmp_path / "subs"
    _notebook(subs / os.fsdecode(b"M\x81ller.ipynb"), "x = 1")
    _notebook(subs / "M_ller.ipynb", "x = 2")
    private = tmp_path / "private"
    private.mkdir()
    copies = dict(grade_intake.snapshot(grade_intake.find_submissions(subs), private))
    assert len(copies) == 2 and "M_ller" in copies
    (odd,) = [name for name in copies if name != "M_ller"]
    assert re.fullmatch(r"M_ller-[0-9a-f]{8}", odd) and odd.encode()
    assert grade_intake.read_submission(copies[odd]).cells[0].source == "x = 1"


def test_find_submissions_lists_what_it_leaves_out(tmp_path, capsys):
    subs = tmp_path / "subs"
    for name in ("alice.ipynb", "BOB.IPYNB", "._alice.ipynb", "notes.txt", "carol/carol.ipynb"):
        (subs / name).parent.mkdir(parents=True, exist_ok=True)
        (subs / name).write_text("{}")
    assert [p.name for p in grade_intake.find_submissions(subs)] == ["BOB.IPYNB", "alice.ipynb"]
    err = capsys.readouterr().err
    assert "carol/" in err and "notes.txt" in err and "._alice" not in err
    assert grade_intake.find_submissions(subs / "carol") == [subs / "carol" / "carol.ipynb"]
    empty = tmp_path / "export"
    (empty / "dave").mkdir(parents=True)
    assert grade_intake.find_submissions(empty) == []
    assert "subfolder is not searched" in capsys.readouterr().err


def test_snapshot_says_why_a_submission_is_too_big(tmp_path, monkeypatch):
    monkeypatch.setattr(grade_intake, "NOTEBOOK_CAP", 100)
    big = _notebook(tmp_path / "subs" / "dave.ipynb", "x = 1\n" * 100)
    private = tmp_path / "private"
    private.mkdir()
    copies = dict(grade_intake.snapshot([big], private))
    with pytest.raises(Rejected, match="over the 0 MiB limit") as rejected:
        grade_intake.read_submission(copies["dave"])
    assert "clear large outputs" in rejected.value.reason
    report = grade.grade_one(copies["dave"], grade.Options(use_sandbox=False), "dave")
    assert report.status == grade_report.FAIL and "dave.ipynb is 0 MiB" in report.reason
    assert report.sandbox == grade_intake.NEVER_RUN   # never run: no seed or threads to keep
    assert report.seed is None and report.threads is None


# --- hidden labels, the samples file, the judge's weights -------------------------------------

def test_hidden_labels_vary_in_count_and_order():
    a = grade.hidden_labels(10, torch.Generator().manual_seed(1))
    b = grade.hidden_labels(10, torch.Generator().manual_seed(2))
    for labels in (a, b):
        counts = torch.bincount(torch.tensor(labels), minlength=10)
        assert counts.min() >= 8 and counts.max() <= 12
    assert a != b and a != sorted(a)


def _written(path, images):
    grade_checks.write_samples(images, path)
    return path


def test_read_samples_refuses_links_pipes_big_files_and_foreign_files(tmp_path):
    good = _written(tmp_path / "good.bin", torch.linspace(-1, 1, 2 * 784).reshape(2, 1, 28, 28))
    back = grade_checks.read_samples(good)
    assert back.dtype == torch.float32 and torch.equal(back, torch.linspace(-1, 1, 2 * 784).reshape(2, 1, 28, 28))
    half = grade_checks.read_samples(_written(tmp_path / "half.bin", torch.ones(3, 1, 28, 28, dtype=torch.float64)))
    assert half.dtype == torch.float32 and half.shape == (3, 1, 28, 28)
    assert grade_checks.read_samples(_written(tmp_path / "none.bin", torch.empty(0))).shape == (0,)
    with pytest.raises(Rejected, match="wrong dtype torch.int64"):
        grade_checks.read_samples(_written(tmp_path / "int.bin", torch.zeros(2, 1, 28, 28, dtype=torch.long)))
    (tmp_path / "link.bin").symlink_to(good)
    with pytest.raises(Rejected, match="cannot be opened"):
        grade_checks.read_samples(tmp_path / "link.bin")
    os.mkfifo(tmp_path / "fifo.bin")
    with pytest.raises(Rejected, match="not a regular file"):
        grade_checks.read_samples(tmp_path / "fifo.bin")
    with pytest.raises(Rejected, match="over the"):
        grade_checks.read_samples(good, cap=100)
    with pytest.raises(Rejected, match="no samples were saved"):
        grade_checks.read_samples(tmp_path / "missing.bin")
    short = tmp_path / "short.bin"
    short.write_bytes(good.read_bytes()[:-4])
    with pytest.raises(Rejected, match=r"holds 6268 bytes of values for shape \(2, 1, 28, 28\), not 6272"):
        grade_checks.read_samples(short)
    wide = tmp_path / "wide.bin"
    wide.write_bytes(b'{"shape": [1, 1, 1, 1, 1, 1, 1, 1, 1], "dtype": "torch.float32", "floating": true}\n'
                     + bytes(4))
    with pytest.raises(Rejected, match=r"wrong output shape \(1, 1, 1, 1, 1, 1, 1, 1, 1\)"):
        grade_checks.read_samples(wide)
    for i, header in enumerate([b'{"shape": [2, 1, 28, 28], "dtype": "torch.float32"}',
                                b'{"shape": "big", "dtype": "torch.float32", "floating": true}',
                                b'{"shape": [-1], "dtype": "torch.float32", "floating": true}',
                                b"[" * 500 + b"]" * 500,
                                b'{"shape": [2.5], "dtype": "torch.float32", "floating": true}',
                                b'{"shape": [2], "dtype": "torch.float32", "floating": 1}', b"x" * 2000]):
        bad = tmp_path / f"bad{i}.bin"
        bad.write_bytes(header + b"\n" + bytes(8))
        with pytest.raises(Rejected, match="not the one the grader's sampling step writes"):
            grade_checks.read_samples(bad)


def test_read_samples_never_unpickles_or_unzips(tmp_path):
    """A draw saved by torch.save is refused unread: torch.load would run a pickle that makes a
    bytearray of any size it names (``weights_only`` allows it) and inflate compressed records
    (a zip bomb), all in the grader's own process."""
    pwned = tmp_path / "pwned-by-grader-test"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {pwned}",))
    bomb = tmp_path / "bomb.pt"
    bomb.write_bytes(b"\x80\x02cbuiltins\nbytearray\n(\x8a\x05\x00\x00\x00\x00\x10tR.")  # 64 GiB if loaded
    saved = tmp_path / "saved.pt"
    torch.save({"images": torch.zeros(2, 1, 28, 28)}, saved)
    packed = tmp_path / "packed.pt"
    with zipfile.ZipFile(saved) as src, zipfile.ZipFile(packed, "w") as dst:
        for record in src.infolist():
            dst.writestr(record.filename, src.read(record), compress_type=zipfile.ZIP_DEFLATED)
    evil = tmp_path / "evil.pt"
    torch.save({"images": Payload()}, evil)
    for path in (bomb, saved, packed, evil):
        with pytest.raises(Rejected, match="not the one the grader's sampling step writes"):
            grade_checks.read_samples(path)
    assert not pwned.exists()


def test_check_samples_reasons():
    good = torch.rand(20, 1, 28, 28) * 2 - 1
    grade_checks.check_samples(good, 20)
    cases = [(good[:, :, :16, :16], "shape"), (good.long(), "dtype"),
             (torch.where(good > 0.9, float("nan"), good), "NaN"), (good * 3, "[-1, 1]"),
             (torch.zeros(20, 1, 28, 28), "constant"), ([1, 2], "plain torch.Tensor"),
             (good.to_sparse(), "dense"), (good.as_subclass(torch.nn.Parameter), "plain")]
    for images, reason in cases:
        with pytest.raises(Rejected, match=reason.replace("[", r"\[").replace("]", r"\]")):
            grade_checks.check_samples(images, 20)


def test_rejected_reasons_are_one_capped_line():
    reason = Rejected("line one\nline two " + "x" * 2000).reason
    assert "\n" not in reason and len(reason) <= grade_checks.REASON_CAP
    # a submission's message reaches the instructor's terminal: no escapes that redraw a line
    # as PASS, ring the bell or write the clipboard (OSC 52)
    reason = Rejected("accuracy low\x1b[1G\x1b[2KPASS\x07\r\x1b]52;c;ZXZpbA==\x07").reason
    assert all(ch.isprintable() for ch in reason) and "accuracy low" in reason


def test_a_planted_link_or_pipe_as_the_error_record_neither_hangs_nor_leaks(tmp_path):
    """The notebook writes error.json inside the sandbox; the grader reads it outside. A link to
    /dev/zero (endless), a pipe (blocks) or a host file must give the plain fallback at once."""
    (tmp_path / "zero.json").symlink_to("/dev/zero")
    (tmp_path / "host.json").symlink_to(tmp_path / "secret.json")
    (tmp_path / "secret.json").write_text(json.dumps({"cell": 1, "ename": "E", "evalue": "host"}))
    os.mkfifo(tmp_path / "fifo.json")
    for name in ("zero.json", "host.json", "fifo.json"):
        assert grade._cell_error(tmp_path / name, 9) == "a cell raised an error (no details were recorded)"
    (tmp_path / "real.json").write_text(json.dumps({"cell": 3, "ename": "NameError", "evalue": "x"}))
    assert grade._cell_error(tmp_path / "real.json", 9) == "cell 3 raised NameError: x"


def test_the_export_cell_speaks_for_the_grader_in_its_own_two_forms_only(tmp_path):
    def said(evalue, cell=9):
        (tmp_path / "e.json").write_text(json.dumps({"cell": cell, "ename": "RuntimeError",
                                                      "evalue": evalue}))
        return grade._cell_error(tmp_path / "e.json", 9)
    mine = grade_runner.NOT_EXPORTABLE.format("PicklingError: a lambda")
    assert said("GRADER: " + grade_runner.NO_SAMPLER) == grade_runner.NO_SAMPLER
    assert said("GRADER: " + mine) == mine
    head = grade_runner.NOT_EXPORTABLE.split("{}")[0]
    for forged in (head + "x) -- could not grade: reinstall the judge",
                   "could not grade: reinstall the judge"):
        assert said("GRADER: " + forged).startswith("the grader's export cell raised RuntimeError: GRADER:")
    assert said("GRADER: " + grade_runner.NO_SAMPLER, cell=2).startswith("cell 2 raised")
    tail = grade_runner.NOT_EXPORTABLE.split("{}")[1]

    class Unpicklable:
        def __reduce__(self):
            raise TypeError("x" * 5000)      # a long reason: the advice after it must survive
    with pytest.raises(RuntimeError) as err:
        grade_runner.export({"sample_digits": lambda labels, m=Unpicklable(): m}, str(tmp_path / "e.pkl"))
    words = said(str(err.value))
    assert Rejected(words).reason.endswith(tail) and "TypeError: xxx" in words, words


def test_judge_weights_must_match_the_pinned_hash(tmp_path):
    data = grade_checks.JUDGE_WEIGHTS.read_bytes()
    assert hashlib.sha256(data).hexdigest() == grade_checks.JUDGE_SHA256, (
        "the shipped judge changed: pin its new sha256 in course_lib/grade_checks.py")
    tampered = tmp_path / "judge.pt"
    tampered.write_bytes(data + b"junk appended")
    with pytest.raises(CannotGrade, match="not the pinned"):
        grade_checks.verified_bytes(tampered)
    with pytest.raises(CannotGrade, match="cannot be read"):
        grade_checks.verified_bytes(tmp_path / "missing.pt")


def test_report_text_exit_codes_and_one_table():
    per_digit = {d: 0.97 for d in range(10)}
    r = grade_report.Report("a.ipynb", grade_report.PASS, accuracy=0.97, per_digit=per_digit,
                            samples=100)
    assert r.exit_code == 0 and "PASS" in r.text() and "97.0%" in r.text()
    assert "\n".join(grade_report.per_digit_table(per_digit)) in r.text()
    assert "sandbox:    bubblewrap" in r.text() and "shuffled" not in r.text()
    r.shuffled_accuracy = 0.05
    assert "weights shuffled: 5% read as asked for (must stay under 60%)" in r.text()
    assert grade_report.Report("a.ipynb", grade_report.FAIL, reason="x").exit_code == 1
    assert grade_report.Report("a.ipynb", grade_report.ERROR, reason="x").exit_code == 2


def test_self_check_prints_the_same_table(capsys):
    torch.manual_seed(0)
    result = grade.self_check(lambda labels: torch.rand(len(labels), 1, 28, 28) * 2 - 1,
                              samples_per_digit=2)
    out = capsys.readouterr().out
    table = grade_report.per_digit_table(result["per_digit"])
    assert table[0] in out and table[1] in out and "preview" in out
    # uniform noise is no plain background: the preview warns as the grader would fail it
    assert result["plain_background"] < 0.3 and "plain background" in out and "TOO LITTLE" in out


def test_save_grid_with_any_number_of_misreads(tmp_path):
    """Grey samples; only a misread one's frame is red, so the red pixels grow with the misreads."""
    import matplotlib.image
    images = torch.rand(23, 1, 28, 28) * 2 - 1
    labels = torch.tensor(grade.hidden_labels(2, torch.Generator().manual_seed(0)) + [3, 3, 3])[:23]
    red = {}
    for wrong in (0, 1, 7):
        predicted = labels.clone()
        predicted[:wrong] = (predicted[:wrong] + 1) % 10
        path = grade.save_grid(images, labels, predicted, tmp_path / f"g{wrong}.png")
        rgb = torch.from_numpy(matplotlib.image.imread(path)[..., :3].copy())
        red[wrong] = int(((rgb[..., 0] > 0.7) & (rgb[..., 1] < 0.3) & (rgb[..., 2] < 0.3)).sum())
    assert red[0] == 0 < red[1] < red[7], red


def test_answer_key_fills_every_exercise():
    nb = answer_key.fill()
    assert grade_intake.fixme_cells(nb) == []
    template = nbformat.read(answer_key.TEMPLATE, as_version=4)
    exercises = [c for c in template.cells if answer_key.EXERCISE.match(c.source)]
    assert len(exercises) == 5 and set(answer_key.solutions()) == {
        "forward", "unet", "loss", "reverse", "sampling"}
    assert not any("raises-exception" in c.metadata.get("tags", []) for c in nb.cells)


# --- the sampling step: each draw a fresh process, the third with shuffled weights --------------

EXPORT = """import torch
from course_lib import grade_runner
torch.manual_seed(0)
net = torch.nn.Linear(10, 784)                  # a "network": one layer from the label to a picture
stored = torch.rand(10, 1, 28, 28) * 2 - 1      # pictures kept as plain data, as a cheat would
first = net.weight[0, 0].item()

def from_network(labels):
    x = net(torch.nn.functional.one_hot(labels, 10).float()) + 0.1 * torch.randn(len(labels), 784)
    return x.tanh().reshape(-1, 1, 28, 28)

def from_stored(labels):
    return (stored[labels] + 0.1 * torch.randn(len(labels), 1, 28, 28)).clamp(-1, 1)

torch.save(net.state_dict(), "net.pt")

def reloads_its_network(labels):               # honest, if wasteful: the weights come from a file
    net.load_state_dict(torch.load("net.pt"))
    return from_network(labels)

def sleeps(labels):
    __import__("time").sleep(30)

calls = [0]

def counts_its_calls(labels):                  # a cheat would return noise on the third call
    calls[0] += 1
    return torch.full((len(labels), 1, 28, 28), float(calls[0]))

def fails_without_its_weights(labels):
    if net.weight[0, 0].item() != first:
        raise RuntimeError("weights changed")
    return from_network(labels)

grade_runner.export({{"sample_digits": {name}}}, {path!r})
"""


def _sample(tmp_path, name, shuffle=False, labels=tuple(range(10)), seconds=60.0):
    """Export sample_digits as the notebook's last cell would, then run one of the grader's draws
    (a fresh process, as the grader runs each); return its pictures."""
    export, spec, out = tmp_path / f"{name}.pkl", tmp_path / "spec.json", tmp_path / f"{name}.bin"
    if not export.exists():
        subprocess.run([sys.executable, "-c", EXPORT.format(name=name, path=str(export))],
                       check=True, cwd=tmp_path)
    spec.write_text(json.dumps({"seed": 2, "labels": list(labels), "shuffle": shuffle,
                                "seed_shuffle": 3, "seconds": seconds}))
    proc = subprocess.run([sys.executable, "-m", "course_lib.grade_runner", "sample", str(export),
                           str(spec), str(out)], capture_output=True, text=True, timeout=300,
                          cwd=tmp_path)
    assert not spec.exists()    # gone before the submission's code loaded: it cannot read which draw
    if proc.returncode:
        return proc.stderr
    return grade_checks.read_samples(out)


def test_sampling_step_draws_again_with_every_network_weight_shuffled(tmp_path):
    b, c = _sample(tmp_path, "from_stored"), _sample(tmp_path, "from_stored", shuffle=True)
    assert b.shape == (10, 1, 28, 28) and torch.equal(c, b)   # same seed, no network: same pictures
    b, c = _sample(tmp_path, "from_network"), _sample(tmp_path, "from_network", shuffle=True)
    assert c.shape == b.shape and (c - b).abs().mean() > 0.1
    assert _sample(tmp_path, "fails_without_its_weights", shuffle=True).numel() == 0  # no pictures
    reloaded = _sample(tmp_path, "reloads_its_network", shuffle=True)  # reloaded weights: shuffled too
    assert (reloaded - b).abs().mean() > 0.1
    assert torch.allclose(_sample(tmp_path, "reloads_its_network"), b)  # unshuffled: drew as before


def test_draws_without_shuffling_fail_loudly_and_cannot_tell_which_draw_they_are(tmp_path):
    """The draws the grader scores: an error or a time-out is the submission's failure (the
    shuffled draw forgives both), and ``sample_digits`` sees no count of its calls."""
    assert _sample(tmp_path, "fails_without_its_weights").shape == (10, 1, 28, 28)  # unshuffled
    assert "time-out: sample_digits took longer than 1 s" in _sample(tmp_path, "sleeps", seconds=1)
    assert _sample(tmp_path, "sleeps", shuffle=True, seconds=1).numel() == 0
    first, again = _sample(tmp_path, "counts_its_calls"), _sample(tmp_path, "counts_its_calls")
    assert torch.equal(first, again) and first.unique().tolist() == [1.0]    # each process: call 1


def test_shuffle_weights_keeps_values_and_loses_their_order():
    code = """import torch
from course_lib.grade_runner import shuffle_weights
torch.manual_seed(0)
net = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.BatchNorm1d(8))
plain_weight = torch.randn(64, requires_grad=True)     # a network written as plain tensors
data = torch.randn(64)                                  # not a weight: left alone
before = {k: v.clone() for k, v in net.state_dict().items()}
w, d = plain_weight.detach().clone(), data.clone()
n = shuffle_weights(torch.Generator().manual_seed(1))
after = net.state_dict()
for k in ("0.weight", "0.bias", "1.weight"):
    assert torch.equal(after[k].flatten().sort().values, before[k].flatten().sort().values), k
assert not torch.equal(after["0.weight"], before["0.weight"])
assert torch.equal(after["1.num_batches_tracked"], before["1.num_batches_tracked"])
assert not torch.equal(plain_weight.detach(), w) and torch.equal(data, d)
shuffled = {k: v.clone() for k, v in net.state_dict().items()}
kept = shuffle_weights(torch.Generator().manual_seed(1), keep=True)   # the same work, no change
assert kept == n and all(torch.equal(v, shuffled[k]) for k, v in net.state_dict().items())
print(n)
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert int(proc.stdout.split()[-1]) >= 5       # 2 Linear + 2 BatchNorm affine + plain_weight


def test_copy_folder_copies_files_and_links_never_pipes_nor_too_much(tmp_path):
    src, dst = tmp_path / "notebook", tmp_path / "draw"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "net.pt").write_bytes(b"x" * 100)
    (src / "link").symlink_to("/etc/passwd")
    os.mkfifo(src / "pipe")              # copying it would block the grader
    grade.copy_folder(src, dst)
    assert (dst / "sub" / "net.pt").read_bytes() == b"x" * 100
    assert (dst / "link").is_symlink() and os.readlink(dst / "link") == "/etc/passwd"
    assert not (dst / "pipe").exists()
    with pytest.raises(Rejected, match="delete what sampling does not need"):
        grade.copy_folder(src, tmp_path / "small", cap=50)
    victim = tmp_path / "instructors_file"
    victim.write_text("keep me")
    (src / "spec.json").symlink_to(victim)          # planted where the grader writes its spec
    (src / grade_checks.SAMPLES_FILE).mkdir()
    grade.copy_folder(src, tmp_path / "draw2", leave_out=("spec.json", grade_checks.SAMPLES_FILE))
    assert not os.path.lexists(tmp_path / "draw2" / "spec.json")
    assert not (tmp_path / "draw2" / grade_checks.SAMPLES_FILE).exists() and (tmp_path / "draw2" / "link").is_symlink()



def test_copy_folder_walks_deep_trees_without_recursion_and_refuses_them(tmp_path):
    src = tmp_path / "deep"
    (src / "/".join(["d"] * 60)).mkdir(parents=True)
    (src / "/".join(["d"] * 60) / "weights.pt").write_bytes(b"w")
    grade.copy_folder(src, tmp_path / "copy")
    assert (tmp_path / "copy" / "/".join(["d"] * 60) / "weights.pt").read_bytes() == b"w"
    deeper = tmp_path / "deeper"
    os.makedirs(deeper)
    here = deeper
    for _ in range(1200):                        # past Python's recursion limit for os.walk
        here = here / "d"
        os.mkdir(here)
    with pytest.raises(Rejected, match="nested more than 64 deep"):
        grade.copy_folder(deeper, tmp_path / "copy2")
    grade.sandbox.remove_tree(deeper)
    assert not deeper.exists()
    long = tmp_path / "long"                     # 20 names of 250 characters: past PATH_MAX
    long.mkdir()
    fd = os.open(long, os.O_RDONLY)
    for _ in range(20):
        os.mkdir("n" * 250, dir_fd=fd)
        fd, old = os.open("n" * 250, os.O_RDONLY, dir_fd=fd), fd
        os.close(old)
    os.close(fd)
    assert grade.sandbox.folder_over(long, grade.sandbox.Limits()) == (
        "made paths longer than the system allows in its work folder")
    with pytest.raises(Rejected, match="cannot copy for each draw .*File name too long"):
        grade.copy_folder(long, tmp_path / "copy3")
    grade.sandbox.remove_tree(long)
    assert not long.exists()
    near = tmp_path / "s"                        # paths that fit, whose copies do not
    near.mkdir()
    fd, length = os.open(near, os.O_RDONLY), len(str(near))
    while length < 4060:                         # ends between 4,060 and 4,080 characters
        name = "n" * min(200, 4080 - length - 1)
        os.mkdir(name, dir_fd=fd)
        fd, old = os.open(name, os.O_RDONLY, dir_fd=fd), fd
        os.close(old)
        length += 1 + len(name)
    os.close(fd)
    assert grade.sandbox.folder_over(near, grade.sandbox.Limits()) == ""
    with pytest.raises(Rejected, match="cannot copy for each draw .*File name too long"):
        grade.copy_folder(near, tmp_path / ("s" + "x" * 40))
    grade.sandbox.remove_tree(near)


def test_a_file_the_grader_cannot_copy_is_the_notebooks_fail_not_a_grader_error(tmp_path, monkeypatch):
    """Without root a notebook can leave a file no one else may read (chmod 000): that is its
    folder's fault, a FAIL with the file named, not a grader error for the cohort."""
    src = tmp_path / "notebook"
    src.mkdir()
    (src / "locked.pt").write_bytes(b"x")

    def refuse(path, target, follow_symlinks=True):
        raise PermissionError(13, "Permission denied", str(path))
    monkeypatch.setattr(grade.shutil, "copyfile", refuse)
    with pytest.raises(Rejected, match=r"cannot copy for each draw \(locked.pt: Permission denied\)"):
        grade.copy_folder(src, tmp_path / "draw")


def test_names_reach_the_terminal_as_one_printable_line(tmp_path, capsys):
    """A file name can hold terminal escapes: the report and the folder notes print none."""
    evil = "bob\x1b[2J\x07.ipynb"
    report = grade_report.Report(str(tmp_path / evil), grade_report.ERROR, reason="x")
    assert "\x1b" not in report.text() and "\x07" not in report.text()
    (tmp_path / "subs").mkdir()
    (tmp_path / "subs" / "notes\x1b]0;pwned\x07.txt").write_text("x")
    grade_intake.find_submissions(tmp_path / "subs")
    err = capsys.readouterr().err
    assert "notes" in err and "\x1b" not in err and "\x07" not in err


def test_a_draw_never_writes_through_a_link_the_notebook_left(tmp_path, monkeypatch):
    """The grader writes each draw's spec into the copy; a planted link must not redirect it."""
    work, victim = tmp_path / "notebook", tmp_path / "instructors_file"
    work.mkdir()
    victim.write_text("keep me")
    (work / "spec.json").symlink_to(victim)
    seen = {}

    def fake_sandboxed(argv, workdir, timeout, opts, env=None):
        seen["spec"] = json.loads((workdir / "spec.json").read_text())
        grade_checks.write_samples(torch.zeros(2, 1, 28, 28), workdir / grade_checks.SAMPLES_FILE)
        return grade.sandbox.Result(0, 0.1, "", "")
    monkeypatch.setattr(grade, "_sandboxed", fake_sandboxed)
    opts = grade.Options(use_sandbox=False)
    images, _ = grade._draw(work, tmp_path / "draw", {"seed": 1, "labels": [1, 2], "shuffle": False,
                                                      "seconds": 5.0}, opts, {})
    assert images.shape == (2, 1, 28, 28) and seen["spec"]["seed"] == 1
    assert victim.read_text() == "keep me" and not (tmp_path / "draw").exists()


def test_a_step_stopped_for_filling_its_folder_is_a_fail_that_says_so(tmp_path, monkeypatch):
    """Every step (the notebook, each draw, the shuffled one too) that the sandbox stopped for
    writing too much is a FAIL naming what it did, not a time-out or a grader's problem."""
    work = tmp_path / "notebook"
    work.mkdir()

    def flooded(argv, workdir, timeout, opts, env=None):
        return grade.sandbox.Result(None, 3.0, "", "", over="wrote more than 4 GiB to its work folder")
    monkeypatch.setattr(grade, "_sandboxed", flooded)
    opts = grade.Options(use_sandbox=False)
    with pytest.raises(Rejected, match="stopped: the notebook wrote more than 4 GiB to its work folder"):
        grade.execute(nbformat.v4.new_notebook(), work, opts, torch.Generator().manual_seed(0))
    for shuffle in (False, True):
        with pytest.raises(Rejected, match="stopped: sample_digits wrote more than 4 GiB"):
            grade._draw(work, tmp_path / "draw", {"seed": 1, "labels": [1], "shuffle": shuffle,
                                                  "seconds": 5.0}, opts, {})
        assert not (tmp_path / "draw").exists()



def _run_execute(tmp_path, source: str, **env) -> subprocess.CompletedProcess:
    """The runner's execute step on a one-cell notebook, unsandboxed, in a fresh process."""
    notebook = tmp_path / "submission.ipynb"
    nbformat.write(new_notebook(cells=[new_code_cell(source)]), notebook)
    return subprocess.run([sys.executable, "-P", "-m", "course_lib.grade_runner", "execute",
                           str(notebook), str(tmp_path / "export.pkl"), str(tmp_path / "error.json")],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path,
                          env=dict(os.environ, **env))


def test_a_kernel_that_never_starts_is_the_graders_problem_not_the_students(tmp_path):
    """The execute step exits GRADER_FAILED only when it failed before any of the notebook's code
    ran (here its kernelspec starts /bin/false); the grader then says "could not grade" (exit 2),
    not FAIL. A notebook that kills its own kernel is still its own failure."""
    spec = tmp_path / "jupyter" / "kernels" / "python3"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({"argv": ["/bin/false", "{connection_file}"],
                                                  "display_name": "broken", "language": "python"}))
    broken = _run_execute(tmp_path, "x = 1", JUPYTER_PATH=str(tmp_path / "jupyter"))
    assert broken.returncode == grade_runner.GRADER_FAILED, broken.stderr
    assert "the Python kernel did not start" in broken.stderr
    killed = _run_execute(tmp_path, "import os\nos._exit(1)")
    assert killed.returncode not in (0, 3, grade_runner.GRADER_FAILED), killed.stderr
    assert "DeadKernelError" in killed.stderr

    def failed(argv, workdir, timeout, opts, env=None):
        return grade.sandbox.Result(grade_runner.GRADER_FAILED, 2.0, "", broken.stderr)
    work = tmp_path / "notebook"
    work.mkdir()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(grade, "_sandboxed", failed)
        with pytest.raises(CannotGrade, match="the Python kernel did not start.*environment"):
            grade.execute(new_notebook(), work, grade.Options(use_sandbox=False),
                          torch.Generator().manual_seed(0))
        # in a draw sample_digits runs in the runner's own process and could exit 5 itself
        with pytest.raises(Rejected, match="sampling failed"):
            grade._draw(work, tmp_path / "draw", {"seed": 1, "labels": [1], "shuffle": False,
                                                  "seconds": 5.0}, grade.Options(use_sandbox=False), {})

# --- end to end ---------------------------------------------------------------------------------

SAMPLER = "import torch\ndef sample_digits(labels):\n    return {}\n"


@pytest.mark.usefixtures("mnist_available")
def test_grader_blames_the_submission_in_one_line(tmp_path):
    """Each broken notebook is a FAIL (exit 1) with its own one-line reason; one folder run."""
    cases = {
        "shape": (SAMPLER.format("torch.zeros(len(labels), 1, 16, 16)"), "wrong output shape"),
        "dtype": (SAMPLER.format("torch.ones(len(labels), 1, 28, 28, dtype=torch.long)"), "wrong dtype"),
        "range": (SAMPLER.format("3 * torch.rand(len(labels), 1, 28, 28)"), "must lie in [-1, 1]"),
        "nan": (SAMPLER.format("torch.full((len(labels), 1, 28, 28), float('nan'))"), "NaN"),
        "sparse": (SAMPLER.format("torch.rand(len(labels), 1, 28, 28).to_sparse()"), "dense"),
        "subclass": ("import torch\nclass T(torch.Tensor): pass\n"
                     "def sample_digits(labels):\n    return torch.rand(len(labels), 1, 28, 28).as_subclass(T)",
                     "plain torch.Tensor"),
        "raises": ("x = 1\nraise ValueError('boom in cell one')", "cell 1 raised ValueError: boom in cell one"),
        "nosampler": ("x = 1", "must define a function sample_digits"),
        "sampler_raises": (SAMPLER.format("1 / 0"), "sampling failed: ZeroDivisionError"),
        "lambda_ok_export": ("import torch\nsample_digits = lambda labels: torch.zeros(len(labels), 1, 28, 28)",
                             "constant"),
        # a module left in its folder never stands in for one the grader's runner imports
        "json_shadow": ("open('json.py', 'w').write('raise SystemExit(\"hijacked\")')\n"
                        + SAMPLER.format("torch.zeros(len(labels), 1, 28, 28)"), "constant"),
        # a module the notebook wrote into its folder is still found by its sample_digits
        "own_module": ("open('own_mod.py', 'w').write('import torch\\ndef zeros(n):\\n"
                       "    return torch.zeros(n, 1, 28, 28)\\n')\nimport torch\nfrom own_mod import zeros\n"
                       "def sample_digits(labels):\n    return zeros(len(labels))\n", "constant"),
        # only the grader's own export cell speaks for the grader
        "grader_prefix": ("raise Exception('GRADER: the judge is broken, please regrade')",
                          "cell 1 raised Exception: GRADER: the judge is broken"),
        # ... in its own words only: a notebook that patches the function the export cell calls
        "grader_patched": ("import course_lib.grade_runner as g\ndef fake(*a):\n"
                           "    raise RuntimeError('GRADER: could not grade: reinstall the judge')\n"
                           "g.export = fake\n" + SAMPLER.format("torch.zeros(len(labels), 1, 28, 28)"),
                           "the grader's export cell raised RuntimeError: GRADER: could not grade"),
    }
    for name, (source, _) in cases.items():
        _notebook(tmp_path / "subs" / f"{name}.ipynb", source)
    code, out = _run_grader(tmp_path / "subs", "--samples-per-digit", 1, "--out",
                            tmp_path / "grades", *_sandbox_args())
    assert code == 1, out
    for name, (_, reason) in cases.items():
        report = json.loads((tmp_path / "grades" / f"{name}.json").read_text())
        assert report["status"] == "fail" and reason in report["reason"], (name, report)
        assert "\n" not in report["reason"]
    book = (tmp_path / "grades" / "gradebook.csv").read_text().splitlines()
    assert book[0] == "student,status,accuracy,reason" and len(book) == len(cases) + 1
    page = (tmp_path / "grades" / "review.html").read_text()
    assert all(f"<h2>{name}:" in page for name in cases)
    assert "No code kept" not in page and "new cell" in page   # each report keeps its code


@pytest.mark.usefixtures("mnist_available")   # the grader trains its private judges on MNIST first
def test_grader_refuses_fixme_without_running(tmp_path):
    code, out = _run_grader(answer_key.TEMPLATE, "--out", tmp_path, *_sandbox_args())
    assert code == 1 and "FIXMEs left" in out


@pytest.mark.usefixtures("mnist_available")   # the grader trains its private judges on MNIST first
def test_grader_time_limit(tmp_path):
    sub = _notebook(tmp_path / "slow.ipynb", "import time\ntime.sleep(120)")
    code, out = _run_grader(sub, "--timeout", 8, "--out", tmp_path, *_sandbox_args())
    assert code == 1 and "time-out" in out, out


@pytest.mark.usefixtures("mnist_available")   # the grader trains its private judges on MNIST first
def test_grader_could_not_grade(tmp_path):
    code, out = _run_grader(tmp_path / "missing.ipynb")
    assert code == 2 and "does not exist" in out
    (tmp_path / "broken.ipynb").write_text("{not json")  # the student's fault: a FAIL
    code, out = _run_grader(tmp_path / "broken.ipynb", "--out", tmp_path, *_sandbox_args())
    assert code == 1 and "not a readable Jupyter notebook" in out, out


def test_grader_refuses_without_bubblewrap_unless_told(tmp_path):
    sub = _notebook(tmp_path / "x.ipynb", "x = 1")
    env = dict(os.environ, PATH="/nonexistent")
    proc = subprocess.run([sys.executable, "-m", "course_lib.grade", str(sub), "--out",
                           str(tmp_path / "g")], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2 and "apt-get install bubblewrap" in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_grader_refuses_without_libseccomp_before_any_submission_runs(tmp_path, monkeypatch,
                                                                       capsys):
    """The sandbox's system-call filter is part of it: no filter, no sandboxed grading."""
    from course_lib import syscall_filter
    sub = _notebook(tmp_path / "x.ipynb", "x = 1")

    def missing():
        raise syscall_filter.Unavailable(f"libseccomp is not installed: {syscall_filter.INSTALL_HINT}")
    monkeypatch.setattr(sandbox, "bwrap_path", lambda: "/usr/bin/bwrap")
    monkeypatch.setattr(syscall_filter, "program", missing)
    code = grade.main([str(sub), "--out", str(tmp_path / "g")])
    err = capsys.readouterr().err
    assert code == 2 and "apt-get install libseccomp2" in err and "--no-sandbox" in err, err
    assert not (tmp_path / "g").exists(), "nothing is graded or written"


@pytest.mark.usefixtures("mnist_available")
def test_key_filled_template_grades_end_to_end_in_test_profile(tmp_path):
    """Fast: one epoch on 512 images, so no accuracy is asserted; the report must be well formed."""
    completed = tmp_path / "subs" / "key.ipynb"
    assert answer_key.main([str(completed)]) == 0
    _notebook(tmp_path / "subs" / "broken.ipynb", "raise RuntimeError('x')")
    (tmp_path / "subs" / "linked.ipynb").symlink_to(completed)   # graded here, not by a worker
    (tmp_path / "subs" / "erin.zip").write_text("not a notebook")
    earlier = tmp_path / "grades"
    earlier.mkdir()
    for name in ("broken.json", "gradebook.csv", "carol.json", "roster.txt"):   # carol: not in
        (earlier / name).write_text(f"earlier {name}")   # this folder; the roster: a Slurm run's
    code, out = _run_grader(tmp_path / "subs", "--profile", "test", "--samples-per-digit", 1,
                            "--jobs", 2, "--out", tmp_path / "grades", "--json",
                            tmp_path / "all.json", *_sandbox_args())
    reports = json.loads((tmp_path / "all.json").read_text())
    key = next(r for r in reports if r["student"] == "key")
    assert key["status"] in ("pass", "fail") and key["accuracy"] is not None, key
    assert set(key["per_digit"]) == {str(d) for d in range(10)}
    assert key["status"] == "pass" or any(
        w in key["reason"] for w in ("below", "do not look", "plain background", "second draw")), key
    assert (tmp_path / "grades" / "key_samples.png").is_file()
    linked = next(r for r in reports if r["student"] == "linked")
    assert linked["status"] == grade_report.ERROR and "is a link" in linked["reason"], linked
    assert code == 2 and "broken" in out and "student" in out  # summary table
    assert out.count("erin.zip") == 2   # named when found, and again beside the summary
    kept = {p.name: p.read_text() for p in (earlier / "previous").glob("grade-*/*")}
    assert kept == {"broken.json": "earlier broken.json", "gradebook.csv": "earlier gradebook.csv"}
    assert (earlier / "carol.json").read_text() == "earlier carol.json"
    assert (earlier / "roster.txt").read_text() == "earlier roster.txt"   # the cohort's: kept
    assert json.loads((earlier / "broken.json").read_text())["student"] == "broken"   # regraded


def test_a_worker_that_leaves_no_report_gets_one_saying_why(tmp_path, monkeypatch):
    """A worker killed or crashed: its student keeps a report (collect lists them), with the cause."""
    out = tmp_path / "grades"
    copies = [(name, _notebook(tmp_path / f"{name}.ipynb", "x = 1")) for name in ("alice", "bob", "carol")]
    args = grade_options.build_parser().parse_args([str(tmp_path), "--jobs", "3",
                                                    "--threshold", "0.9"])
    opts = grade.Options(threshold=0.9, out=out, use_sandbox=False)

    scratch = tmp_path / "scratch"
    scratch.mkdir()

    def worker(self, cmd, timeout, env):   # its temporary files where the caller removes them
        assert Path(env["TMPDIR"]).parent == scratch and Path(env["TMPDIR"]).is_dir()
        assert env[grade.WORKER_OF] == str(os.getpid())   # each asks to end with this grading
        if "--name=bob" in cmd:
            raise subprocess.TimeoutExpired(cmd, timeout)
        if "--name=carol" in cmd:
            return subprocess.CompletedProcess(cmd, -9, f"{grade.NOT_ROOT}\n")
        return subprocess.CompletedProcess(cmd, 1, "Traceback (most recent call last):\nMemoryError\n")
    monkeypatch.setattr(grade._Workers, "run", worker)
    reports = grade._grade_parallel(copies, [p for _, p in copies], args, out, opts, scratch)
    alice, bob, carol = reports
    assert alice.status == bob.status == carol.status == grade_report.ERROR
    assert alice.threshold == 0.9
    assert "worker was killed by signal 9 (SIGKILL: often out of memory)" in carol.reason
    assert "worker exited with code 1 (MemoryError)" in alice.reason, alice.reason
    limit = (grade_options.worst_case_seconds(args.timeout, args.sample_timeout)
             + grade_options.MARGIN_SECONDS)
    assert f"worker was stopped after {limit:.0f} s" in bob.reason, bob.reason
    for r in reports:
        assert json.loads((out / f"{r.student}.json").read_text())["reason"] == r.reason


@pytest.mark.usefixtures("mnist_available")
@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL], ids=["stopped", "killed"])
def test_a_grading_stopped_or_killed_leaves_no_worker_or_notebook_running(tmp_path, how):
    """``kill``, ``timeout`` or a batch system ends a --jobs grading (here: a signal to its whole
    process group, as ``timeout`` and Ctrl-C send): its workers, their sandboxes and the notebooks
    in them end too (two notebooks' kernels would otherwise hold the cores for hours), and a
    grading stopped writes no report that blames a student."""
    import psutil

    for name in ("alice", "bob"):
        _notebook(tmp_path / "subs" / f"{name}.ipynb", "import time\ntime.sleep(900)")
    log, scratch = tmp_path / "grading.log", tmp_path / "tmp"   # what a killed grading leaves
    scratch.mkdir()
    with log.open("w") as said:
        grading = subprocess.Popen([sys.executable, "-m", "course_lib.grade",
                                    str(tmp_path / "subs"), "--jobs", "2",
                                    "--out", str(tmp_path / "grades"), *_sandbox_args()],
                                   stdout=said, stderr=subprocess.STDOUT, start_new_session=True,
                                   env={**os.environ, "TMPDIR": str(scratch)})
    tree = []
    try:   # a fresh machine first trains the private judges: minutes
        deadline, kernels = time.monotonic() + 900, []
        while len(kernels) < 2 and time.monotonic() < deadline and grading.poll() is None:
            time.sleep(0.5)
            tree = psutil.Process(grading.pid).children(recursive=True)
            kernels = [p for p in tree if "ipykernel_launcher" in " ".join(_cmdline(p))]
        assert len(kernels) == 2, f"both notebooks should run by now: {log.read_text()[-2000:]}"
        os.killpg(grading.pid, how)
        grading.wait(timeout=90)
        _, alive = psutil.wait_procs(tree, timeout=30)
        assert not alive, f"still running after the grading ended: {[p.pid for p in alive]}"
    finally:   # whatever went wrong, nothing of it goes on running
        grading.kill()
        for process in tree:
            with contextlib.suppress(psutil.Error):
                process.kill()
    if how == signal.SIGTERM:
        assert grading.returncode == 128 + signal.SIGTERM, log.read_text()[-2000:]   # cleaned up
        assert not list((tmp_path / "grades").glob("*.json")), "no report for a grading stopped"


def test_stopped_workers_end_and_no_more_start(tmp_path, monkeypatch):
    """grade._Workers: stop() ends the workers running (SIGTERM: each cleans up; SIGKILL
    STOP_SECONDS later to one that ignores it) and refuses new ones; a worker past its time gets
    SIGTERM, then SIGKILL if it ignores that."""
    monkeypatch.setattr(grade, "STOP_SECONDS", 1.0)
    killed, real_kill = [], subprocess.Popen.kill

    def kill(proc):
        killed.append(proc.args[-1])
        real_kill(proc)
    monkeypatch.setattr(subprocess.Popen, "kill", kill)
    env = dict(os.environ)

    def deaf(name):   # ignores SIGTERM, and says so in a file once it does
        return [sys.executable, "-c", "import pathlib, signal, sys, time; "
                "signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                "pathlib.Path(sys.argv[1]).touch(); time.sleep(60)", str(tmp_path / name)]
    workers, ended = grade._Workers(), {}
    def run(argv):
        ended[argv[-1]] = workers.run(argv, 120, env)
    threads = [threading.Thread(target=run, args=(argv,), daemon=True)
               for argv in (["sleep", "60"], deaf("deaf"))]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 30
    while ((len(workers.running) < 2 or not (tmp_path / "deaf").exists())
           and time.monotonic() < deadline):
        time.sleep(0.05)
    workers.stop()
    for thread in threads:
        thread.join(15)
    assert ended["60"].returncode == -signal.SIGTERM
    assert ended[str(tmp_path / "deaf")].returncode == -signal.SIGKILL
    assert killed == [str(tmp_path / "deaf")]   # only the one that would not stop
    with pytest.raises(CannotGrade, match="stopped"):
        workers.run(["true"], 10, env)
    with pytest.raises(subprocess.TimeoutExpired):   # past its time: SIGTERM, then SIGKILL
        grade._Workers().run(deaf("late"), 5, env)
    assert killed[-1] == str(tmp_path / "late")


def _cmdline(process) -> list[str]:
    import psutil

    try:
        return process.cmdline()
    except psutil.Error:
        return []


def test_grader_refuses_what_it_cannot_grade_before_anything_runs(tmp_path, capsys):
    """A file that is no notebook, a --out it cannot write to: one line each, exit 2, no report."""
    archive = tmp_path / "submissions.zip"
    archive.write_bytes(b"PK")
    assert grade.main([str(archive), "--out", str(tmp_path / "g")]) == 2
    err = capsys.readouterr().err
    assert "is not a .ipynb notebook" in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "g").exists()
    taken = tmp_path / "taken"
    taken.write_text("a file where the grades' folder should be")
    sub = _notebook(tmp_path / "x.ipynb", "x = 1")
    assert grade.main([str(sub), "--out", str(taken), "--no-sandbox"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"could not grade: {taken} is a file, not a folder") and "--out" in err, err
    assert grade.main([str(sub), "--json", str(taken / "all.json"), "--out", str(tmp_path / "g2"),
                       "--no-sandbox"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"could not grade: {taken} is a file") and "another --json" in err, err
    assert not (tmp_path / "g2").exists()
    deep = tmp_path / "new" / "grades"
    assert grade_out.writable_error(deep) == ""
    assert not (tmp_path / "new").exists()   # creates nothing


def test_set_aside_moves_all_or_nothing_and_never_over_an_earlier_one(tmp_path):
    out, to = tmp_path / "grades", tmp_path / "grades" / "previous" / "run"
    out.mkdir()
    for name in ("alice_samples.png", "bob.json", "gradebook.csv"):
        (out / name).write_text(f"earlier {name}")
    (out / "alice.json").write_text(json.dumps({"student": "alice",
                                                "grid": str(out / "alice_samples.png")}))
    to.mkdir(parents=True)
    (to / "bob.json").write_text("set aside before")
    with pytest.raises(FileExistsError):
        grade_out.set_aside(out, ["alice", "bob"], to, books=grade_out.BOOKS)
    assert sorted(p.name for p in out.glob("*.*")) == ["alice.json", "alice_samples.png",
                                                        "bob.json", "gradebook.csv"]
    assert (to / "bob.json").read_text() == "set aside before" and len(list(to.iterdir())) == 1
    assert json.loads((out / "alice.json").read_text())["grid"] == str(out / "alice_samples.png")
    moved = grade_out.set_aside(out, ["alice"], to)     # a regrade keeps the gradebook
    assert sorted(p.name for p in moved) == ["alice.json", "alice_samples.png"]
    assert (out / "gradebook.csv").is_file() and not (out / "alice.json").exists()
    # the report set aside names its own grid, not the one a regrade will write in OUT
    assert json.loads((to / "alice.json").read_text())["grid"] == str(to / "alice_samples.png")
    grade_out.put_back(moved, out)    # and once put back, the grid in OUT again
    assert json.loads((out / "alice.json").read_text())["grid"] == str(out / "alice_samples.png")


def test_a_regrade_keeps_the_name_a_folder_run_numbered(tmp_path, monkeypatch, capsys):
    """Of A.IPYNB and A.ipynb a folder run numbers the second A_2: regraded alone, from any
    folder, it replaces A_2's report and A's stays; a Slurm task's roster line finds it too."""
    subs, out, private = tmp_path / "subs", tmp_path / "grades", tmp_path / "private"
    _notebook(subs / "A.IPYNB", "x = 1")
    _notebook(subs / "A.ipynb", "x = 1  # FIXME")
    private.mkdir()
    copies = grade_intake.snapshot(grade_intake.find_submissions(subs), private)
    origins = dict(zip((name for name, _ in copies), grade_intake.find_submissions(subs)))
    assert sorted(origins) == ["A", "A_2"]
    out.mkdir()
    for student, path in origins.items():
        (out / f"{student}.json").write_text(json.dumps({"submission": grade_intake.origin_of(path),
                                                         "student": student, "status": "pass"}))
    second = origins["A_2"]
    monkeypatch.chdir(subs)   # the same file, given relative to another folder: the same report
    assert grade_out.earlier_name(out, Path(second.name), "A") == "A_2"
    assert grade_out.earlier_name(out, origins["A"], "A") == "A"
    assert grade_out.earlier_name(out, tmp_path / "elsewhere.ipynb", "elsewhere") == "elsewhere"
    (out / "A_2.json").unlink()   # a Slurm task that left no report: its roster line names it
    (out / "roster.txt").write_text(gradebook.roster_text(copies, {n: grade_intake.origin_of(p)
                                                                   for n, p in origins.items()}))
    assert grade_out.earlier_name(out, second, "A") == "A_2"
    monkeypatch.setattr(grade, "ensure_private_judge", lambda path=None: tmp_path / "judges.pt")
    assert grade.main([str(second), "--out", str(out), "--no-sandbox"]) == 1   # its FIXME
    assert "graded as A_2" in capsys.readouterr().err
    assert json.loads((out / "A_2.json").read_text())["status"] == grade_report.FAIL
    assert json.loads((out / "A.json").read_text())["status"] == "pass"


def test_no_grading_into_out_while_its_slurm_array_runs(tmp_path, monkeypatch, capsys):
    """OUT/slurm-job.txt names the array submitted there: while squeue lists it, a grading into
    OUT is refused (collect may still look); once it has ended, gradings go on."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    squeue = bin_dir / "squeue"
    squeue.write_text("#!/bin/sh\necho 42_3\necho '42_[4-9]'\n")
    squeue.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    out = tmp_path / "grades"
    out.mkdir()
    (out / grade_out.SLURM_JOB).write_text("42\n")
    sub = _notebook(tmp_path / "alice.ipynb", "x = 1  # FIXME")
    monkeypatch.setattr(grade, "ensure_private_judge", lambda path=None: tmp_path / "judges.pt")
    assert grade.main([str(sub), "--out", str(out), "--no-sandbox"]) == 2
    assert f"Slurm job 42 is still grading into {out}" in capsys.readouterr().err
    assert not (out / "alice.json").exists()
    grade.main(["collect", str(out)])
    assert "still grading" not in capsys.readouterr().err
    squeue.write_text("#!/bin/sh\necho 'slurm_load_jobs error: Unable to contact slurm controller' "
                      ">&2\nexit 1\n")   # cannot say: a note, and the grading goes on
    assert grade.main([str(sub), "--out", str(out), "--no-sandbox"]) == 1   # its FIXME
    assert "squeue cannot say whether Slurm job 42" in capsys.readouterr().err
    squeue.write_text("#!/bin/sh\necho 'slurm_load_jobs error: Invalid job id specified' >&2\n"
                      "exit 1\n")   # the job has ended
    assert grade.main([str(sub), "--out", str(out), "--no-sandbox"]) == 1
    assert "squeue" not in capsys.readouterr().err
    assert json.loads((out / "alice.json").read_text())["status"] == grade_report.FAIL


def test_two_gradings_never_write_one_out_at_once(tmp_path, capsys, monkeypatch):
    """While one grading holds OUT, another (a notebook, a folder, a Slurm submit, a collect) is
    refused in one line naming the holder, before it moves, copies or writes anything there."""
    out = tmp_path / "grades"
    out.mkdir()
    (out / "alice.json").write_text(json.dumps({"submission": "alice.ipynb", "status": "pass",
                                                "student": "alice"}))
    subs = tmp_path / "subs"
    alice = _notebook(subs / "alice.ipynb", "x = 1")
    monkeypatch.setattr(gradebook.shutil, "which", lambda name: "/usr/bin/sbatch")
    monkeypatch.setattr(gradebook, "ensure_private_judge", lambda path=None: None)
    with grade_out.hold_out(out):
        before = sorted(p.name for p in out.rglob("*"))
        for run in (lambda: grade.main([str(alice), "--out", str(out), "--no-sandbox"]),
                    lambda: grade.main([str(subs), "--out", str(out), "--no-sandbox"]),
                    lambda: gradebook.main(["slurm", str(subs), "--out", str(out),
                                            "--private-judge", str(tmp_path / "j.pt")]),
                    lambda: grade.main(["collect", str(out)])):
            assert run() == 2
            err = capsys.readouterr().err
            assert f"another grading is writing to {out} (pid {os.getpid()} on " in err, err
            assert sorted(p.name for p in out.rglob("*")) == before
    assert grade.main(["collect", str(out)]) == 0   # released: the next one may
    capsys.readouterr()


def test_an_out_shared_by_two_users_is_held_by_one_grading_at_a_time(tmp_path, monkeypatch,
                                                                    capsys):
    """Two instructors sharing OUT through their group: the second cannot write the first's lock
    file (readable whatever the first's umask), yet is refused while the first grades (``flock``
    needs no write access), holds OUT in its turn, and the first is then refused without being
    told its own, earlier, grading holds it. Where no lock can be had (NFS), a note says so and
    the holder's note is left alone."""
    import errno
    import fcntl

    out = tmp_path / "grades"
    out.mkdir()
    real_open = os.open
    umask = os.umask(0o077)
    try:
        with grade_out.hold_out(out):
            assert (out / grade_out.OUT_LOCK).stat().st_mode & 0o777 == 0o644
    finally:
        os.umask(umask)

    def other_user(path, flags, *mode):   # the lock file is the first user's, 0644
        if Path(path).name == grade_out.OUT_LOCK and flags & (os.O_RDWR | os.O_WRONLY):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, flags, *mode)

    with grade_out.hold_out(out):
        with monkeypatch.context() as second, pytest.raises(grade_out.OutBusy) as busy:
            second.setattr(os, "open", other_user)
            with grade_out.hold_out(out):
                pass
    assert f"(pid {os.getpid()} on " in str(busy.value)
    with monkeypatch.context() as second:
        second.setattr(os, "open", other_user)
        with grade_out.hold_out(out):
            second.undo()
            with pytest.raises(grade_out.OutBusy, match="it did not say who"):
                with grade_out.hold_out(out):
                    pass
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                           capture_output=True, text=True, check=True).stdout.strip()
    for pid, said in ((ended, f"did not say who; the note names pid {ended} of this machine, "
                              "which has ended"), (os.getpid(), f"(pid {os.getpid()} on ")):
        # a grading killed outright left its note; the one holding OUT now could not write its own
        (out / grade_out.OUT_LOCK).write_text(f"pid {pid} on {socket.gethostname()}, since now\n")
        with monkeypatch.context() as second:
            second.setattr(os, "open", other_user)
            with grade_out.hold_out(out):
                second.undo()
                with pytest.raises(grade_out.OutBusy) as busy:
                    with grade_out.hold_out(out):
                        pass
        assert said in str(busy.value), busy.value
    with grade_out.hold_out(out):   # released: the next one may
        pass
    (out / grade_out.OUT_LOCK).write_text("pid 7 on another machine\n")

    def no_lock(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")
    with monkeypatch.context() as nfs:
        nfs.setattr(fcntl, "flock", no_lock)
        with grade_out.hold_out(out):
            pass
    assert f"note: cannot lock {out} (No locks available)" in capsys.readouterr().err
    assert (out / grade_out.OUT_LOCK).read_text() == "pid 7 on another machine\n"


@pytest.mark.parametrize("wrong,said", [(["--timeout", "0"], "--timeout and --sample-timeout"),
                                        (["--timeout", "inf"], "--timeout and --sample-timeout"),
                                        (["--sample-timeout", "-5"], "--timeout and --sample-timeout"),
                                        (["--memory-gib", "1.5"], "--memory-gib must be at least 2"),
                                        (["--memory-gib", "0"], "--memory-gib must be at least 2")])
def test_options_that_would_fail_every_student_are_refused(tmp_path, capsys, wrong, said):
    sub = _notebook(tmp_path / "x.ipynb", "x = 1")
    with pytest.raises(SystemExit) as stop:
        grade.main([str(sub), "--out", str(tmp_path / "g"), *wrong])
    assert stop.value.code == 2 and said in capsys.readouterr().err


def test_readme_states_the_second_opinion_gap_of_the_code():
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    assert f"{grade_checks.SECOND_OPINION_GAP * 100:.0f} points fewer" in readme


def test_the_sandbox_gets_only_the_notebooks_code_tags_and_kernel():
    """Outputs, attachments and metadata could carry stored pictures no review shows."""
    import nbformat
    from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output
    nb = new_notebook(cells=[new_markdown_cell("hi", attachments={"a.png": {"image/png": "QUJD"}}),
                             new_code_cell("1 / 0", metadata={"tags": ["raises-exception"],
                                                              "stash": "x" * 1000},
                                           outputs=[new_output("stream", text="y" * 1000)],
                                           execution_count=7)],
                      metadata={"kernelspec": {"name": "python3", "display_name": "P"},
                                "stash": "z" * 1000})
    clean = grade.runnable(nb)
    assert [c.source for c in clean.cells] == ["hi", "1 / 0"]
    assert "attachments" not in clean.cells[0] and clean.cells[0].metadata == {}
    assert clean.cells[1].outputs == [] and clean.cells[1].execution_count is None
    assert clean.cells[1].metadata == {"tags": ["raises-exception"]}
    assert set(clean.metadata) == {"kernelspec"}
    assert nb.cells[1].outputs and nb.metadata["stash"]      # the submission itself is untouched
    nbformat.validate(clean)
