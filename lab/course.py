"""`make course`: start JupyterLab for the course, opened on notebooks/00_jupyterlab.ipynb.

    python lab/course.py [jupyter lab options]   # what `make course` runs
    python lab/course.py --install-settings      # only install the course's lab settings

* The lab serves the whole repository (so course_lib/, walkthroughs/ and answers/ are in its
  file browser) and opens the first notebook rather than a bare file list.
* The course's lab settings (lab/overrides.json: no "Jupyter news" pop-up, Markdown files open
  rendered) go into this environment's JupyterLab settings folder, so a lab started by hand from
  the same environment (`jupyter lab notebooks/`) gets them too.
* If the course's JupyterLab already runs, this says where instead of starting a second one.
* As root (many containers), JupyterLab refuses to start without --allow-root: it is added, and
  said so.
* Once the server answers, the URL to open is printed last, where it is easy to find.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIRST_NOTEBOOK = "notebooks/00_jupyterlab.ipynb"
SETTINGS = Path(__file__).resolve().parent / "overrides.json"
SETTINGS_NAME = "diffusion-course.json"   # in <app dir>/settings/overrides.d/


def say(message: str) -> None:
    print(f"==> {message}", flush=True)


def settings_target() -> Path:
    """Where this environment's JupyterLab reads packaged setting overrides from."""
    from jupyterlab.commands import get_app_dir

    return Path(get_app_dir()) / "settings" / "overrides.d" / SETTINGS_NAME


def install_settings() -> Path:
    target = settings_target()
    if not target.is_file() or target.read_bytes() != SETTINGS.read_bytes():
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(SETTINGS, target)
    json.loads(target.read_text())   # a broken file would silently disable every override
    return target


def lab_command(extra_args: list[str] = (), uid: int | None = None) -> list[str]:
    """The `jupyter lab` command line: this environment's Python, the repository as root."""
    uid = os.geteuid() if uid is None else uid
    command = [sys.executable, "-m", "jupyterlab", f"--ServerApp.root_dir={ROOT}",
               f"--LabApp.default_url=/lab/tree/{FIRST_NOTEBOOK}"]
    if uid == 0 and "--allow-root" not in extra_args:
        command.append("--allow-root")
    return command + list(extra_args)


def course_url(info: dict) -> str:
    """The URL that opens the first notebook on a running server (token included)."""
    root = Path(info["root_dir"]).resolve()
    first = (ROOT / FIRST_NOTEBOOK).relative_to(root).as_posix()
    url = info["url"].rstrip("/") + "/lab/tree/" + first
    return url + (f"?token={info['token']}" if info.get("token") else "")


def running_course_servers() -> list[dict]:
    """Live Jupyter servers (of this user) that serve this repository or its notebooks/."""
    from jupyter_server.serverapp import list_running_servers

    roots = {ROOT, ROOT / "notebooks"}
    return [info for info in list_running_servers()
            if Path(info.get("root_dir", "")).resolve() in roots]


def wait_for_server(process: subprocess.Popen, timeout: float = 120) -> dict | None:
    from jupyter_server.serverapp import list_running_servers

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        for info in list_running_servers():
            if info.get("pid") == process.pid:
                return info
        time.sleep(0.25)
    return None


def main(argv: list[str]) -> int:
    target = install_settings()
    if argv[:1] == ["--install-settings"]:
        say(f"course lab settings installed in {target}")
        return 0

    running = running_course_servers()
    if running:
        info = running[0]
        say(f"The course's JupyterLab is already running (pid {info['pid']}, serving "
            f"{info['root_dir']}). Open:\n    {course_url(info)}\n"
            f"    To start a new one, stop it first: Ctrl+C (twice) in its terminal, or\n"
            f"    {Path(sys.executable).parent / 'jupyter'} server stop {info['port']}")
        return 0

    command = lab_command(argv)
    if "--allow-root" in command and "--allow-root" not in argv:
        say("Running as root (uid 0), as in many containers: JupyterLab refuses that unless "
            "told --allow-root, so the course adds it.")
    say(f"Starting JupyterLab on {ROOT}, opened on {FIRST_NOTEBOOK}:\n    "
        + " ".join(command))

    process = subprocess.Popen(command)
    # Ctrl+C reaches JupyterLab directly (same terminal); this wrapper just waits for it, and
    # passes a termination request on.
    signal.signal(signal.SIGINT, lambda *_: None)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda signum, _: process.send_signal(signum))
    info = wait_for_server(process)
    if info is not None:
        say(f"The course is open at:\n    {course_url(info)}\n"
            "    (open that URL in your browser; Ctrl+C twice here stops JupyterLab)")
    return process.wait()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
