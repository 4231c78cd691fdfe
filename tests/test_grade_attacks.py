"""Adversarial submissions, graded together in one sandboxed folder run, as a cohort would be.

Each notebook attacks the grader one way: tampering with the judge, other students' notebooks or
reports, the network, the instructor's secrets; leaving processes behind; replacing what is
graded (monkeypatched ``torch.save``, an IPython input transformer, cheating only when it detects
grading, or only in the draw it guesses has shuffled weights, by counting its calls in memory or
in a file); taking the machine's memory with forked processes, or its inodes; making itself root
of a user namespace; and passing without a model (stored, shifted, blurred or elastically warped training
digits, fonts, fixed pictures; or warped digits only when asked for as many as the first draw asks
for). Every one must end as a FAIL (exit 1) with the reason that shows
the attack was blocked or caught, and nothing of the instructor's or of another submission may
change. One more, a sampler that tells the shuffled draw by checking its own weights, passes,
as README's threat table says; the cohort's review page (course_lib/review.py) must mark it.
Needs bubblewrap and root (CI has both); skipped with the reason elsewhere.
"""
import base64
import io
import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import nbformat
import pytest
import torch
from nbformat.v4 import new_code_cell, new_notebook

from course_lib import sandbox


def _required() -> bool:
    """CI (.ci/run) sets COURSE_REQUIRE_SANDBOX: there a missing sandbox or Slurm is a failure."""
    return bool(os.environ.get("COURSE_REQUIRE_SANDBOX") or os.environ.get("CI"))

ROOT = Path(__file__).resolve().parent.parent
CHEATS = ROOT / "tests" / "adversarial"
WEIGHTS = ROOT / "course_lib" / "weights" / "mnist_classifier.pt"
# The sandbox shows the course's package, not its tests: a notebook brings its cheats along, as a
# student would, by writing tests/adversarial/cheats.py into its own folder (which every draw copies).
WRITE_CHEATS = f"open('cheats.py', 'w').write({(CHEATS / 'cheats.py').read_text()!r})\n"
IMPORT_CHEATS = WRITE_CHEATS + "import sys, torch\nsys.path.insert(0, '.')\nimport cheats\n"
HONEST_ZEROS = "def sample_digits(labels):\n    return torch.zeros(len(labels), 1, 28, 28)\n"


def cheat(name: str, fixed: bool = False) -> str:
    """A sample_digits that returns one of tests/adversarial/cheats.py's fakes (self-contained)."""
    seed = "0" if fixed else "int(torch.randint(0, 10**6, (1,)))"
    return (f"{WRITE_CHEATS}def sample_digits(labels):\n    import sys, torch\n    sys.path.insert(0, '.')\n"
            f"    import cheats\n    return cheats.{name}(labels, {seed})\n")


def _write(path: Path, *sources: str) -> None:
    nb = new_notebook(cells=[new_code_cell(s) for s in sources])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)


def _embedded_digits() -> str:
    """30 training digits of each class, as base64 text in the notebook (the stored-answers cheat)."""
    from course_lib.data import load_mnist

    data = load_mnist(size=28, train=True)
    picked = torch.cat([data.images[data.labels == d][:30] for d in range(10)])
    buffer = io.BytesIO()
    torch.save(picked.clone(), buffer)
    return base64.b64encode(buffer.getvalue()).decode()


@pytest.fixture(scope="module")
def cohort(tmp_path_factory, request, mnist_available):
    if sandbox.bwrap_path() is None or os.geteuid() != 0:
        why = "the attack tests need bubblewrap (sudo apt-get install bubblewrap) and root"
        if _required():
            pytest.fail(f"CI must run them: {why}")
        pytest.skip(why)
    tmp = tmp_path_factory.mktemp("cohort")
    subs, out = tmp / "subs", tmp / "grades"
    subs.mkdir()
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(5)
    threading.Thread(target=lambda: [server.accept() for _ in range(5)], daemon=True).start()
    port = server.getsockname()[1]
    victim, forged = subs / "b_victim.ipynb", out / "b_victim.json"

    _write(subs / "a_daemon.ipynb",  # leaves a process that would swap the next samples file
           IMPORT_CHEATS + HONEST_ZEROS,
           "import subprocess\nsubprocess.Popen([sys.executable, '-c', '''\nimport time, torch, sys\n"
           f"sys.path.insert(0, {sandbox.INSIDE_HOME!r})\nimport cheats\n"
           "from course_lib.grade_checks import SAMPLES_FILE, write_samples\n"
           "fake = cheats.copies(torch.arange(10).repeat(12))\nfor _ in range(600):\n"
           "    try: write_samples(fake, '/home/student/' + SAMPLES_FILE)\n"
           "    except Exception: pass\n    time.sleep(0.2)\n'''], start_new_session=True,"
           " stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)")
    _write(victim, IMPORT_CHEATS + HONEST_ZEROS)
    _write(subs / "c_vandal.ipynb",
           "import os, socket\nr = []\n"
           "def attempt(name, action):\n    try:\n        action()\n        r.append(name + ':DONE')\n"
           "    except Exception:\n        r.append(name + ':blocked')\n"
           f"attempt('sibling', lambda: open({str(victim)!r}, 'a').write('x'))\n"
           f"attempt('forged', lambda: open({str(forged)!r}, 'w').write('{{\"status\": \"pass\"}}'))\n"
           f"attempt('weights', lambda: open({str(WEIGHTS)!r}, 'ab').write(b'junk'))\n"
           f"attempt('bashrc', lambda: open(os.path.expanduser('~root/.bashrc'), 'a').write('x'))\n"
           f"attempt('net', lambda: socket.create_connection(('127.0.0.1', {port}), 3))\n"
           "r.append('secret:' + ('SEEN' if 'COURSE_GRADER_SECRET' in os.environ else 'absent'))\n"
           "raise RuntimeError('VANDAL ' + ' '.join(r))")
    _write(subs / "d_monkeypatch.ipynb",  # the appended code would save other images
           IMPORT_CHEATS + HONEST_ZEROS,
           "import pickle\n_real = torch.save\n"
           "def _fake(obj, f, *a, **k):\n    return _real({'a': cheats.copies(torch.arange(10).repeat(12)),"
           " 'b': cheats.copies(torch.arange(10).repeat(2), 1)}, f)\n"
           "torch.save = _fake\npickle.dump = lambda obj, f, *a, **k: _real(obj, f)")
    _write(subs / "e_transformer.ipynb",  # rewrites the grader's appended cell
           "import torch\n" + HONEST_ZEROS,
           f"_cheat = {cheat('copies')!r}\n"
           "def _swap(lines):\n    if any('grade' in line for line in lines):\n"
           "        return _cheat.splitlines(True) + lines\n    return lines\n"
           "get_ipython().input_transformers_post.append(_swap)")
    _write(subs / "f_detector.ipynb",  # honest when run by the student, cheats when graded
           "import torch\n" + HONEST_ZEROS,
           "import os, socket\ngraded = (os.getuid() != 0 or socket.gethostname() == 'sandbox' or "
           "'grade' in open('/proc/1/cmdline').read())\nif graded:\n" + "\n".join(
               "    " + line for line in cheat("shifted").splitlines()))
    _write(subs / "g_base64.ipynb",
           "import base64, io, torch\n"
           f"_stored = torch.load(io.BytesIO(base64.b64decode('{_embedded_digits()}')))\n"
           "def sample_digits(labels):\n    pick = torch.randint(0, 30, (len(labels),))\n"
           "    return _stored[labels * 30 + pick]")
    _write(subs / "h_blurred.ipynb", cheat("blurred"))
    _write(subs / "i_fonts.ipynb", cheat("fonts"))
    _write(subs / "j_fixed.ipynb", cheat("class_means", fixed=True))
    _write(subs / "k_memory.ipynb", "x = bytearray(6 * 2**30)   # over --memory-gib 3, within any CI machine")
    _write(subs / "m_counter.ipynb",  # warped digits, noise on the third call (the shuffled one)
           "import torch\n_calls = [0]\n" + cheat("elastic").replace(
               "    return cheats", "    _calls[0] += 1\n    if _calls[0] == 3:\n"
               "        return torch.rand(len(labels), 1, 28, 28) * 2 - 1\n    return cheats"))
    _write(subs / "n_file_counter.ipynb",  # the same, counting its calls in a file of its folder
           "import torch\n" + cheat("elastic").replace(
               "    return cheats", "    import os\n    n = os.path.getsize('calls') if os.path.exists("
               "'calls') else 0\n    open('calls', 'a').write('x')\n    if n == 2:\n"
               "        return torch.rand(len(labels), 1, 28, 28) * 2 - 1\n    return cheats"))
    _write(subs / "o_forks.ipynb",  # four processes of 1 GiB: each within --memory-gib 3, not together
           "import multiprocessing as mp, time\ndef hold():\n    x = b'\\x01' * 2**30\n"
           "    time.sleep(60)\nps = [mp.get_context('fork').Process(target=hold) for _ in range(4)]\n"
           "[p.start() for p in ps]\n[p.join() for p in ps]")
    _write(subs / "p_inodes.ipynb",  # the grading machine's inodes, with empty files
           "for i in range(150_000):\n    open(f'f{i}', 'w').close()\nimport time\ntime.sleep(30)")
    _write(subs / "q_userns.ipynb",  # root of a user namespace of its own, to mount there
           "import subprocess\nsubprocess.run(['unshare', '-U', '-r', 'true'], check=True)")
    _write(subs / "r_ascent.ipynb", cheat("judge_ascent"))  # pixels tuned against the course's judge
    _write(subs / "l_elastic.ipynb",  # warped training digits: new handwriting to every other check
           "import torch\nnet = torch.nn.Linear(4, 4)   # a network it never uses\n" + cheat("elastic"))
    _write(subs / "s_weight_gate.ipynb",  # the same, and noise once its network's weights change
           "import torch\nnet = torch.nn.Linear(4, 4)\n"
           "_SIGNATURE = float((net.weight.detach().flatten() * torch.arange(1.0, 17.0)).sum())\n"
           + cheat("elastic").replace(
               "    return cheats",
               "    now = float((net.weight.detach().flatten() * torch.arange(1.0, 17.0)).sum())\n"
               "    if abs(now - _SIGNATURE) > 1e-4:\n"
               "        return torch.rand(len(labels), 1, 28, 28) * 2 - 1\n    return cheats"))

    _write(subs / "t_size_gate.ipynb",  # warped digits when asked for many, noise otherwise:
           "import torch\nnet = torch.nn.Linear(4, 4)\n" + cheat("elastic").replace(  # so in b and c
               "    return cheats", "    if len(labels) < 50:\n"
               "        return torch.rand(len(labels), 1, 28, 28) * 2 - 1\n    return cheats"))
    _write(subs / "u_router.ipynb",  # warped digits of random classes; the course's judge picks,
           "import torch\n" + WRITE_CHEATS +  # for each label, one it reads so (no generator at all)
           "def sample_digits(labels):\n    import sys, torch\n    sys.path.insert(0, '.')\n"
           "    import cheats\n    from course_lib.classifier import load_classifier\n"
           "    judge = load_classifier('mnist')   # in the shuffled draw, shuffled as it loads\n"
           "    pool = cheats.elastic(torch.randint(0, 10, (8 * len(labels),)),\n"
           "                          int(torch.randint(0, 10**6, (1,))))\n"
           "    with torch.no_grad():\n        read = judge(pool).argmax(1)\n    picked = []\n"
           "    for label in labels.tolist():\n        found = (read == label).nonzero()[:, 0]\n"
           "        found = found if len(found) else torch.arange(len(pool))\n"
           "        picked.append(pool[found[torch.randint(len(found), (1,))]])\n"
           "    return torch.cat(picked)\n")

    env = dict(os.environ, COURSE_GRADER_SECRET="s3cret")
    victim_before = victim.read_bytes()
    weights_before = WEIGHTS.read_bytes()
    proc = subprocess.run([sys.executable, "-m", "course_lib.grade", str(subs), "--out", str(out),
                           "--samples-per-digit", "10", "--memory-gib", "3", "--timeout", "300"],
                          capture_output=True, text=True, timeout=1500, env=env)
    server.close()
    reports = {p.stem: json.loads(p.read_text()) for p in out.glob("*.json")}
    review = (out / "review.html").read_text() if (out / "review.html").exists() else ""
    left = subprocess.run(["pgrep", "-u", ",".join(str(sandbox.sandbox_uid(s)) for s in range(4))],
                          capture_output=True, text=True).stdout.strip()
    return dict(code=proc.returncode, out=proc.stdout + proc.stderr, reports=reports, left=left,
                review=review,
                victim_changed=victim.read_bytes() != victim_before,
                weights_changed=WEIGHTS.read_bytes() != weights_before)


EXPECTED = {
    # its own zeros, judged; each draw reads a fresh copy of its folder, so this holds even if the
    # daemon lived on: that it did not is test_nothing_left_running's (pgrep)
    "a_daemon": "constant",
    "b_victim": "constant",                     # not the daemon's copies
    "d_monkeypatch": "constant",                # the monkeypatch never reaches the grader's code
    "e_transformer": "near-copies",             # what it swapped in is judged, and caught
    "f_detector": "near-copies",                # cheating only when graded is caught
    "g_base64": ("near-copies", "repeat another sample"),   # 30 stored a digit: repeats too
    "h_blurred": "near-copies",
    "i_fonts": ("do not look like handwritten digits", "below"),  # either check may catch it
    "j_fixed": "same with another seed",
    "k_memory": "MemoryError",
    "l_elastic": "do not come from the notebook's network",   # its digits outlive shuffled weights
    "m_counter": "do not come from the notebook's network",   # each draw is a fresh process: no count
    "n_file_counter": "do not come from the notebook's network",  # and a fresh copy of its folder
    "o_forks": "stopped: the notebook used more than 3 GiB of memory in all its processes together",
    "p_inodes": "stopped: the notebook made more than 100,000 files and folders in its work folder",
    "q_userns": "returned non-zero exit status 1",   # unshare: Operation not permitted (seccomp)
    "r_ascent": "plain background",              # texture the judges read as digits
    "t_size_gate": "second draw",                # noise in both later draws: the second is judged
    "u_router": "still drew handwritten digits",  # shuffled, its judge picks digits at random
}


@pytest.mark.parametrize("student,reason", EXPECTED.items())
def test_attack_fails_with_its_reason(cohort, student, reason):
    report = cohort["reports"][student]
    reasons = reason if isinstance(reason, tuple) else (reason,)
    assert report["status"] == "fail" and any(r in report["reason"] for r in reasons), report


def test_vandal_is_blocked_everywhere(cohort):
    reason = cohort["reports"]["c_vandal"]["reason"]
    assert "VANDAL" in reason and "DONE" not in reason and "secret:absent" in reason, reason
    assert not cohort["victim_changed"] and not cohort["weights_changed"]


def test_a_sampler_that_checks_its_own_weights_passes_and_the_review_page_marks_it(cohort):
    """README's threat table: telling the shuffled draw by checking its own weights is not caught
    by any check. It passes; the review page lists it first, with the lines that read its weights
    marked, beside its grid, and every other submission below it."""
    report = cohort["reports"]["s_weight_gate"]
    assert report["status"] == "pass" and report["shuffled_accuracy"] < 0.6, report
    page = cohort["review"]
    assert page.index("<h2>s_weight_gate:") < min(page.index(f"<h2>{s}:") for s in EXPECTED)
    gate = page[page.index("<h2>s_weight_gate:"):]
    gate = gate[:gate.index("</section>")]
    assert gate.count("looks at the network&#x27;s weights themselves") >= 2, gate[-3000:]
    assert "data:image/png;base64," in gate
    assert all(f"<h2>{student}:" in page for student in [*EXPECTED, "c_vandal"])
    assert "<script" not in page.lower()
    printed = cohort["out"][cohort["out"].index("passes to read first"):]
    assert printed.splitlines()[1].strip().startswith("s_weight_gate: 3 marked lines"), printed


def test_nothing_left_running_and_a_clean_summary(cohort):
    assert cohort["left"] == "", f"sandbox processes survived: {cohort['left']}"
    assert cohort["code"] == 1, cohort["out"][-3000:]
    assert f"{len(EXPECTED) + 2} submissions: 1 pass, {len(EXPECTED) + 1} fail, 0 could not grade" \
        in cohort["out"]
