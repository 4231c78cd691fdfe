"""course_lib/cgroup_limits.py finds the grader's own groups and writes each step's limits where
the kernel reads them, in both of the kernel's layouts. These tests need no root: they run it on
a fake tree of folders laid out as /sys/fs/cgroup is (the kernel's own enforcement is tried, as
root, in tests/test_sandbox.py)."""
import os
import subprocess
import sys
from pathlib import Path

from course_lib import cgroup_limits

V1_CGROUP = ("9:name=systemd:/\n8:pids:/\n4:memory:/process_api/abc\n3:cpuset:/\n"
             "1:cpu,cpuacct:/\n0::/\n")
V2_CGROUP = "0::/user.slice/user-0.slice/session-4.scope\n"


def _v1_mountinfo(root: Path) -> str:
    lines = [f"31 23 0:28 / {root} rw,relatime - tmpfs tmpfs rw,mode=755"]
    for i, name in enumerate(("cpu,cpuacct", "cpuset", "memory", "pids")):
        lines.append(f"{32 + i} 31 0:{29 + i} / {root / name} rw,relatime - cgroup cgroup rw,{name}")
    return "\n".join(lines) + "\n"


def _v2_mountinfo(root: Path) -> str:
    return (f"25 23 0:22 / /proc rw - proc proc rw\n"
            f"30 23 0:26 / {root} rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n")


def _without(mountinfo: str, tree: str) -> str:
    """The mountinfo text less the tree mounted at .../``tree``."""
    return "\n".join(line for line in mountinfo.splitlines() if Path(line.split()[4]).name != tree)


def _fake_v1(tmp_path: Path) -> Path:
    root = tmp_path / "cgroup"
    (root / "memory" / "process_api" / "abc").mkdir(parents=True)
    (root / "pids").mkdir()
    (root / "cpuset").mkdir()
    (root / "cpuset" / "cpuset.mems").write_text("0\n")
    (root / "cpuset" / "cpuset.cpus").write_text("0-3\n")
    return root


def test_the_trees_and_the_graders_own_groups_are_read_from_proc():
    found = cgroup_limits.hierarchies(_v1_mountinfo(Path("/sys/fs/cgroup")))
    assert [(h.mount.name, h.version, sorted(h.controllers)) for h in found] == [
        ("cpu,cpuacct", 1, ["cpu", "cpuacct"]), ("cpuset", 1, ["cpuset"]),
        ("memory", 1, ["memory"]), ("pids", 1, ["pids"])]
    assert cgroup_limits.hierarchies(_v2_mountinfo(Path("/sys/fs/cgroup"))) == [
        cgroup_limits.Hierarchy(Path("/sys/fs/cgroup"), "/", 2)]
    own = cgroup_limits.own_groups(V1_CGROUP)
    assert own["memory"] == "/process_api/abc" and own["cpu"] == own["cpuacct"] == "/"
    assert own[""] == "/" and own["name=systemd"] == "/"


def test_v1_a_group_under_the_graders_own_in_each_tree(tmp_path):
    root = _fake_v1(tmp_path)
    group = cgroup_limits.create(2, 3 * 2**30, 256, (1, 2), mountinfo=_v1_mountinfo(root),
                                 proc_cgroup=V1_CGROUP)
    assert group is not None, cgroup_limits.unavailable()
    name = f"{cgroup_limits.PREFIX}{os.getpid()}-2-"
    assert group.version == 1 and set(group.dirs) == {"memory", "pids", "cpuset"}
    memory, pids, cpuset = group.dirs["memory"], group.dirs["pids"], group.dirs["cpuset"]
    assert memory.parent == root / "memory" / "process_api" / "abc" and memory.name.startswith(name)
    assert pids.parent == root / "pids" and cpuset.parent == root / "cpuset"
    assert (memory / "memory.limit_in_bytes").read_text() == str(3 * 2**30)
    assert (pids / "pids.max").read_text() == "256"
    assert (cpuset / "cpuset.cpus").read_text() == "1,2" and (cpuset / "cpuset.mems").read_text() == "0"
    assert cgroup_limits.describe(group) == "cgroup v1, no swap limit"   # no memsw file here


def test_v1_without_cores_needs_no_cpuset_and_swap_counts_where_the_kernel_counts_it(tmp_path):
    root = _fake_v1(tmp_path)
    swap = root / "memory" / "process_api" / "abc"
    real_mkdir = Path.mkdir

    def mkdir_with_swap_file(self, *args, **kw):   # as the kernel makes memsw's file in each group
        real_mkdir(self, *args, **kw)
        if self.parent == swap:
            (self / "memory.memsw.limit_in_bytes").write_text("9223372036854771712")
    Path.mkdir = mkdir_with_swap_file
    try:
        group = cgroup_limits.create(0, 2**30, 64, mountinfo=_v1_mountinfo(root),
                                     proc_cgroup=V1_CGROUP)
    finally:
        Path.mkdir = real_mkdir
    assert set(group.dirs) == {"memory", "pids"}
    assert (group.dirs["memory"] / "memory.memsw.limit_in_bytes").read_text() == str(2**30)


def test_v2_a_group_beside_the_graders_own_with_its_controllers_handed_down(tmp_path):
    root = tmp_path / "cgroup"
    slice_ = root / "user.slice" / "user-0.slice"
    (slice_ / "session-4.scope").mkdir(parents=True)
    (slice_ / "cgroup.subtree_control").write_text("memory pids\n")
    group = cgroup_limits.create(0, 2**30, 100, (3,), mountinfo=_v2_mountinfo(root),
                                 proc_cgroup=V2_CGROUP)
    assert group is not None, cgroup_limits.unavailable()
    path = group.dirs[""]
    assert group.version == 2 and path.parent == slice_   # beside session-4.scope, not in it
    assert (slice_ / "cgroup.subtree_control").read_text() == "+cpuset"   # the one missing
    assert {f: (path / f).read_text() for f in ("memory.max", "memory.oom.group", "pids.max",
                                                "cpuset.cpus")} == {
        "memory.max": str(2**30), "memory.oom.group": "1", "pids.max": "100", "cpuset.cpus": "3"}
    assert cgroup_limits.describe(group) == "cgroup v2, no swap limit"   # no swap.max here


def test_v2_in_the_root_group_the_step_goes_under_the_root(tmp_path):
    root = tmp_path / "cgroup"
    root.mkdir()
    (root / "cgroup.subtree_control").write_text("cpuset cpu memory pids\n")
    group = cgroup_limits.create(0, 2**30, 100, mountinfo=_v2_mountinfo(root), proc_cgroup="0::/\n")
    assert group.dirs[""].parent == root
    assert (root / "cgroup.subtree_control").read_text() == "cpuset cpu memory pids\n"  # untouched


def test_without_a_cpuset_the_memory_and_process_limits_still_hold(tmp_path, monkeypatch):
    """Cores are the one optional limit: where no cpuset can be had (no v1 tree of it, or a v2
    parent that will not hand it down), the group is made without it, and says so."""
    root = _fake_v1(tmp_path)
    no_cpuset = _without(_v1_mountinfo(root), "cpuset")
    group = cgroup_limits.create(0, 2**30, 64, (1,), mountinfo=no_cpuset, proc_cgroup=V1_CGROUP)
    assert group is not None, cgroup_limits.unavailable()
    assert set(group.dirs) == {"memory", "pids"} and group.missing == ("cpuset", "swap limit")
    assert cgroup_limits.describe(group) == "cgroup v1, no cpuset, no swap limit"
    (root / "cpuset" / "cpuset.mems").unlink()   # a cpuset tree that refuses the cores asked for
    group = cgroup_limits.create(0, 2**30, 64, (1,), mountinfo=_v1_mountinfo(root), proc_cgroup=V1_CGROUP)
    assert set(group.dirs) == {"memory", "pids"} and group.missing[0] == "cpuset"
    assert list((root / "cpuset").glob(cgroup_limits.PREFIX + "*")) == []
    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "cgroup.subtree_control").write_text("memory pids\n")
    real = cgroup_limits._write

    def refuse_cpuset(path, value):
        if str(value) == "+cpuset":
            raise PermissionError(13, "Permission denied", str(path))
        real(path, value)
    monkeypatch.setattr(cgroup_limits, "_write", refuse_cpuset)
    group = cgroup_limits.create(0, 2**30, 64, (1,), mountinfo=_v2_mountinfo(v2), proc_cgroup="0::/\n")
    assert group.missing[0] == "cpuset" and not (group.dirs[""] / "cpuset.cpus").exists()
    assert (group.dirs[""] / "memory.max").read_text() == str(2**30)


def test_where_no_group_can_be_made_it_says_why_and_leaves_nothing(tmp_path, monkeypatch):
    root = _fake_v1(tmp_path)
    only_memory = _without(_v1_mountinfo(root), "pids")
    assert cgroup_limits.create(0, 2**30, 64, mountinfo=only_memory, proc_cgroup=V1_CGROUP) is None
    assert cgroup_limits.unavailable() == "no cgroup v1 tree has the pids controller"
    assert list((root / "memory" / "process_api" / "abc").iterdir()) == []   # nothing half-made
    assert cgroup_limits.create(0, 2**30, 64, mountinfo="", proc_cgroup="") is None
    assert "no cgroup tree with a memory controller" in cgroup_limits.describe(None)
    real = cgroup_limits._write

    def refuse_pids(path, value):   # a tree the grader may not write (root writes a chmod-ed one)
        if path.name == "pids.max":
            raise PermissionError(13, "Permission denied", str(path))
        real(path, value)
    monkeypatch.setattr(cgroup_limits, "_write", refuse_pids)
    assert cgroup_limits.create(0, 2**30, 64, mountinfo=_v1_mountinfo(root),
                                proc_cgroup=V1_CGROUP) is None
    assert "Permission denied" in cgroup_limits.unavailable()
    assert list((root / "pids").rglob(cgroup_limits.PREFIX + "*")) == []   # its empty group removed


def test_groups_a_killed_grader_left_behind_are_removed(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    left = tmp_path / f"{cgroup_limits.PREFIX}{dead.pid}-0-3"
    mine = tmp_path / f"{cgroup_limits.PREFIX}{os.getpid()}-0-0"
    other = tmp_path / "someone-elses"
    for path in (left, mine, other):
        path.mkdir()
    cgroup_limits.remove_stale(tmp_path)
    assert not left.exists() and mine.exists() and other.exists()


def test_the_report_says_whether_the_kernel_or_the_checks_held_each_step(monkeypatch):
    from course_lib import grade, sandbox
    monkeypatch.setattr(sandbox, "kernel_limits", lambda slot=0: "cgroup v1")
    held = grade.sandbox_label(True)
    assert held.endswith("; memory, processes and cores held by the kernel (cgroup v1)"), held
    monkeypatch.setattr(sandbox, "kernel_limits", lambda slot=0: "cgroup v2, no cpuset")
    assert grade.sandbox_label(True).endswith(
        "; memory and processes held by the kernel (cgroup v2, no cpuset)")
    monkeypatch.setattr(sandbox, "kernel_limits", lambda slot=0: "no cgroup (Permission denied)")
    checked = grade.sandbox_label(True)
    assert checked.endswith("; memory checked each second (no cgroup (Permission denied))"), checked
    assert grade.sandbox_label(False) == "NONE (--no-sandbox)"


def test_only_a_kill_at_the_groups_own_limit_is_the_steps_doing(tmp_path):
    """The kernel counts an OOM kill in the killed process's group whatever limit was reached:
    the machine's own shortage, with the group under its limit, must not fail a student."""
    v1 = cgroup_limits.Group(1, {"memory": tmp_path, "pids": tmp_path}, memory=2**30)
    (tmp_path / "memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 1\n")
    (tmp_path / "memory.max_usage_in_bytes").write_text(f"{2**29}\n")   # half its limit
    assert v1.oom_kills() == 1 and not v1.killed_at_its_limit()
    (tmp_path / "memory.max_usage_in_bytes").write_text(f"{2**30}\n")   # all of it
    assert v1.killed_at_its_limit()
    v2 = cgroup_limits.Group(2, {"": tmp_path})
    (tmp_path / "memory.events").write_text("low 0\nhigh 0\nmax 0\noom 0\noom_kill 1\n")
    assert v2.oom_kills() == 1 and not v2.killed_at_its_limit()
    (tmp_path / "memory.events").write_text("low 0\nhigh 0\nmax 9\noom 1\noom_kill 1\n")
    assert v2.killed_at_its_limit()
    (tmp_path / "memory.events").write_text("low 0\nhigh 0\nmax 9\noom 0\noom_kill 0\n")
    assert not v2.killed_at_its_limit()
