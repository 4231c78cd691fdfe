"""Drive the course's JupyterLab in Debian's Chromium with Playwright: start and stop the server,
and the checks a student's first minutes depend on. Each check raises AssertionError with what a
person would see, so tests/browser/test_fails_when_broken.py can show that they do fail.
"""
from __future__ import annotations

import importlib.util
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path(os.environ.get("COURSE_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
HOW_TO_ENABLE = ("the browser tests need Debian's Chromium at /usr/bin/chromium (or set "
                 "COURSE_CHROMIUM): `sudo apt-get install chromium`, then `make test` again")
TRACEBACK = "Traceback (most recent call last)"


def load_launcher():
    """lab/course.py, the script `make course` runs (it is not a package)."""
    spec = importlib.util.spec_from_file_location("course_launcher", ROOT / "lab" / "course.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --------------------------------------------------------------------------------------------
# The server


@dataclass
class Lab:
    process: subprocess.Popen
    port: int
    token: str
    root: Path
    log: Path
    output: list[str] = field(default_factory=list)

    def url(self, path: str = "") -> str:
        return f"http://127.0.0.1:{self.port}/{path.lstrip('/')}?token={self.token}"

    def api(self, path: str, method: str = "GET"):
        request = urllib.request.Request(self.url("api/" + path), method=method)
        with urllib.request.urlopen(request, timeout=10) as response:
            body = response.read()
        return json.loads(body) if body else None

    def shut_down_kernels(self) -> None:
        for kernel in self.api("kernels"):
            self.api(f"kernels/{kernel['id']}", method="DELETE")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def lab_env(tmp: Path, **extra: str) -> dict[str, str]:
    """The environment a student's lab gets, plus a private runtime/workspace/user-settings dir.

    Kernels inherit it, so COURSE_PROFILE=test makes the notebooks fast. The user settings only
    turn autosave off, so that running the repository's notebooks never writes them back."""
    settings = tmp / "user-settings" / "@jupyterlab" / "docmanager-extension"
    settings.mkdir(parents=True, exist_ok=True)
    (settings / "plugin.jupyterlab-settings").write_text('{"autosave": false}')
    env = {k: v for k, v in os.environ.items() if k not in ("MPLBACKEND", "JUPYTER_PATH")}
    env.update(COURSE_PROFILE="test", PYTHONUNBUFFERED="1",
               JUPYTER_RUNTIME_DIR=str(tmp / "runtime"),
               JUPYTERLAB_WORKSPACES_DIR=str(tmp / "workspaces"),
               JUPYTERLAB_SETTINGS_DIR=str(tmp / "user-settings"))
    env.update(extra)
    return env


def start_lab(command: list[str], tmp: Path, root: Path, env: dict[str, str],
              timeout: float = 120) -> Lab:
    """Run `command` (a jupyter lab command line, or `make course`'s launcher) on a free loopback
    port with a random token and no browser of its own; return once the API answers."""
    port, token = free_port(), secrets.token_hex(24)
    command = command + ["--no-browser", "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}",
                         "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}"]
    log = tmp / f"lab-{port}.log"
    with open(log, "w") as out:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    lab = Lab(process, port, token, root, log)
    deadline = time.monotonic() + timeout
    while True:
        try:
            lab.api("status")
            return lab
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                stop_lab(lab)
                raise AssertionError(f"JupyterLab did not start ({' '.join(command)}):\n"
                                     + log.read_text()[-3000:])
            time.sleep(0.25)


def stop_lab(lab: Lab) -> None:
    """Stop the server by its PID (it shuts its kernels down), then make sure nothing of its
    process group (kernels included) is left."""
    process = lab.process
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
    try:   # the server's session: its kernels, or the launcher's jupyter lab child
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def serve(command: list[str], tmp: Path, root: Path, **env: str):
    """Generator for fixtures: the lab while the tests use it, then stopped, nothing left."""
    lab = start_lab(command, tmp, root, lab_env(tmp, **env))
    try:
        yield lab
    finally:
        stop_lab(lab)
        assert not group_alive(lab.process.pid), "a JupyterLab or kernel process was left behind"


def group_alive(pid: int) -> bool:
    try:
        os.killpg(pid, 0)
        return True
    except ProcessLookupError:
        return False


# --------------------------------------------------------------------------------------------
# The browser


def launch_chromium(playwright, user_data_dir: Path):
    """Debian's Chromium, headless, fresh profile; Playwright never downloads a browser."""
    return playwright.chromium.launch_persistent_context(
        str(user_data_dir), executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS,
        viewport={"width": 1280, "height": 900}, device_scale_factor=1)


class Shots:
    """Numbered screenshots, one per step, in one folder that the suite prints."""

    def __init__(self, folder: Path):
        self.folder, self.count = folder, 0
        folder.mkdir(parents=True, exist_ok=True)

    def __call__(self, page, name: str, full_page: bool = False) -> Path:
        self.count += 1
        path = self.folder / f"{self.count:02d}_{name}.png"
        page.screenshot(path=str(path), full_page=full_page)
        return path


def open_lab(page, lab: Lab, path: str = "") -> None:
    """Open ``path`` in a fresh workspace (``reset``): tabs restored from an earlier test, whose
    kernels that test shut down, would otherwise ask "Select Kernel" over the page."""
    page.goto(lab.url(path) + "&reset")
    page.wait_for_selector("#jp-main-dock-panel", timeout=60_000)
    page.wait_for_selector(".jp-DirListing-content", timeout=60_000)


def menu(page, top: str, item: str) -> None:
    page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(f"^{re.escape(top)}$")).click()
    page.locator(".lm-Menu-itemLabel", has_text=re.compile(f"^{re.escape(item)}")).first.click()


def news_toasts(page) -> list[str]:
    return [t for t in page.locator(".Toastify__toast").all_inner_texts() if "news" in t.lower()]


def listed_files(page) -> list[str]:
    return page.locator(".jp-DirListing-content .jp-DirListing-itemText").all_inner_texts()


def current_folder(page) -> str:
    return page.locator(".jp-FileBrowser .jp-BreadCrumbs").first.inner_text()


def open_in_file_browser(page, *parts: str) -> None:
    """Double-click folders then the file, as a student does; starts from the lab's root."""
    page.locator(".jp-FileBrowser .jp-BreadCrumbs-home").first.click()
    for name in parts:
        item = page.locator(".jp-DirListing-content .jp-DirListing-item").filter(
            has=page.locator(".jp-DirListing-itemText", has_text=re.compile(f"^{re.escape(name)}$")))
        item.first.dblclick()


def active_panel(page):
    return page.locator("#jp-main-dock-panel .jp-NotebookPanel:not(.lm-mod-hidden)").first


def active_tab_title(page) -> str:
    return page.locator("#jp-main-dock-panel .lm-TabBar-tab.lm-mod-current "
                        ".lm-TabBar-tabLabel").first.inner_text()


def wait_kernel_idle(page, timeout: float = 120) -> None:
    """The active notebook has a kernel, started and idle (the status bar says so)."""
    panel = active_panel(page)
    deadline = time.monotonic() + timeout
    while True:
        kernel = panel.locator(".jp-KernelName").first.inner_text().strip()
        status = page.locator(".jp-StatusBar-Widget", has_text=kernel).all_inner_texts()
        if kernel and "No Kernel" not in kernel and any("Idle" in s for s in status):
            return
        assert time.monotonic() < deadline, (
            f"the notebook's kernel did not become idle in {timeout:.0f} s "
            f"(kernel {kernel!r}, status bar {status})")
        time.sleep(0.25)


# --------------------------------------------------------------------------------------------
# Checks


KERNEL_PROBE = """\
import sys
print("EXECUTABLE=" + sys.executable)
print("PREFIX=" + sys.prefix)
try:
    import course_lib
    print("COURSE_LIB=" + course_lib.__file__)
except Exception as error:
    print("COURSE_LIB_ERROR=" + repr(error))
print("PROBE_DONE")"""


def probe_kernel(page, timeout: float = 60) -> dict[str, str]:
    """Ask the active notebook's kernel, through a console attached to it (the notebook itself
    is left as it is), which Python it runs and whether course_lib imports."""
    page.keyboard.press("Escape")
    page.keyboard.press("Control+Shift+c")
    palette = page.locator(".lm-CommandPalette-input")
    palette.fill("New Console for Notebook")
    page.locator(".lm-CommandPalette-item", has_text="New Console for Notebook").first.click()
    prompt = page.locator(".jp-CodeConsole:not(.lm-mod-hidden) .jp-CodeConsole-input .cm-content")
    prompt.wait_for(timeout=30_000)
    prompt.click()
    page.keyboard.insert_text(KERNEL_PROBE)
    page.keyboard.press("Shift+Enter")
    console = page.locator(".jp-CodeConsole:not(.lm-mod-hidden)")
    console.locator(".jp-OutputArea-output", has_text="PROBE_DONE").first.wait_for(
        timeout=timeout * 1000)
    text = "\n".join(console.locator(".jp-OutputArea-output").all_inner_texts())
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def check_kernel(report: dict[str, str], expected_prefix: str) -> None:
    problems = []
    if report.get("PREFIX") != expected_prefix:
        problems.append(f"the kernel runs another Python: sys.executable="
                        f"{report.get('EXECUTABLE')}, sys.prefix={report.get('PREFIX')}, "
                        f"but the course's environment is {expected_prefix}")
    if "COURSE_LIB" not in report:
        problems.append(f"the kernel cannot import course_lib: {report.get('COURSE_LIB_ERROR')}")
    elif not report["COURSE_LIB"].startswith(str(ROOT / "course_lib")):
        problems.append(f"the kernel imports another course_lib: {report['COURSE_LIB']}")
    assert not problems, "; ".join(problems)


def tagged_raises(notebook: Path) -> list[bool]:
    """For each code cell in order: is it tagged raises-exception (an exercise left to do)?"""
    cells = json.loads(notebook.read_text())["cells"]
    return ["raises-exception" in c["metadata"].get("tags", [])
            for c in cells if c["cell_type"] == "code"]


@dataclass
class RunResult:
    seconds: float
    prompts: list[str]
    errors: dict[int, str]            # code cell index -> last line of its traceback
    progress_states: dict[str, set]   # progress bar description -> texts seen while it ran
    placeholders: list[str]           # "Loading widget..." and similar seen at the end
    text_bars: list[str]              # tqdm's plain-text fallback bars ("40%|████      |")


PROGRESS_BAR = ".jp-OutputArea-output .widget-hbox:has(.widget-hprogress)"

# Records every state a progress-bar widget shows (tqdm updates it ~10 times a second, and a
# short training run is over in a second or two: polling would miss the states in between).
WATCH_PROGRESS = """panel => {
    window.__progressStates = [];
    const record = () => panel.querySelectorAll(%r).forEach(bar => {
        const text = bar.textContent.replace(/\\s+/g, ' ').trim();
        const states = window.__progressStates;
        if (!states.includes(text)) states.push(text);
    });
    new MutationObserver(record).observe(panel, {subtree: true, childList: true,
                                                 characterData: true, attributes: true});
}""" % PROGRESS_BAR.replace(".jp-OutputArea-output ", "")


def run_all(page, timeout: float = 600, poll: float = 0.2, on_progress=None) -> RunResult:
    """Clear the outputs, Run → Run All Cells, and wait until every code cell ran (or one
    failed). Watches progress-bar widgets while the cells run; calls `on_progress()` once, the
    first time a bar is seen between 10% and 90%."""
    panel = active_panel(page)
    menu(page, "Edit", "Clear Outputs of All Cells")
    panel.evaluate(WATCH_PROGRESS)
    start = time.monotonic()
    menu(page, "Run", "Run All Cells")
    states: dict[str, set] = {}
    while True:
        for text in page.evaluate("() => window.__progressStates"):
            states.setdefault(text.split(":")[0].split("%")[0].strip(), set()).add(text)
            percent = re.search(r"(\d+)%", text)
            if on_progress and percent and 0 < int(percent.group(1)) < 100:
                on_progress()
                on_progress = None
        # textContent, not innerText: cells scrolled out of view are not rendered
        # (content-visibility), and their innerText is empty
        prompts = [p.strip() for p in panel.locator(".jp-CodeCell .jp-InputPrompt").evaluate_all(
            "els => els.map(e => e.textContent)")]
        outputs = panel.locator(".jp-CodeCell").evaluate_all(
            "cells => cells.map(c => Array.from(c.querySelectorAll('.jp-OutputArea-output'))"
            ".map(o => o.textContent).join('\\n'))")
        errors = {i: [line for line in text.splitlines() if line.strip()][-1]
                  for i, text in enumerate(outputs) if TRACEBACK in text}
        running = any("*" in p for p in prompts)
        numbered = all(re.fullmatch(r"\[\d+\]:", p) for p in prompts)
        idle = panel.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']").count() > 0
        if idle and not running and (numbered or errors):
            break
        assert time.monotonic() - start < timeout, (
            f"Run All did not finish in {timeout:.0f} s; prompts: {prompts}")
        time.sleep(poll)
    placeholders = panel.locator(".jp-OutputArea-output").filter(
        has_text=re.compile("Loading widget|Error displaying widget|IProgress not found")
    ).all_inner_texts()
    text_bars = [line for text in outputs for line in text.splitlines()
                 if re.search(r"\d+%\|", line)]
    return RunResult(time.monotonic() - start, prompts, errors, states, placeholders, text_bars)


def check_run(result: RunResult, notebook: Path) -> None:
    """No error output except in exercise cells tagged raises-exception, and every cell ran."""
    expected = tagged_raises(notebook)
    assert len(result.prompts) == len(expected), (
        f"{notebook.name}: the lab shows {len(result.prompts)} code cells, the file has "
        f"{len(expected)}")
    unexpected = {i: e for i, e in result.errors.items() if not expected[i]}
    assert not unexpected, f"{notebook.name}: Run All ended with errors: " + "; ".join(
        f"code cell {i + 1}: {e}" for i, e in unexpected.items())
    not_run = [i + 1 for i, p in enumerate(result.prompts) if not re.fullmatch(r"\[\d+\]:", p)]
    assert not not_run, f"{notebook.name}: code cells {not_run} did not run"


def check_live_progress_bar(result: RunResult) -> None:
    """A tqdm bar rendered as an ipywidget, seen moving while the cell ran."""
    assert not result.placeholders, f"widget placeholders left: {result.placeholders}"
    assert not result.text_bars, f"progress shown as text, not a widget: {result.text_bars[:3]}"
    assert result.progress_states, "no progress bar widget appeared while the cells ran"
    moving = {desc: texts for desc, texts in result.progress_states.items() if len(texts) > 1}
    assert moving, f"progress bars never moved: {result.progress_states}"


def images_rendered(page) -> list[tuple[int, int]]:
    """(width, height) of each loaded image output in the active notebook."""
    return active_panel(page).locator(
        ".jp-OutputArea-output[data-mime-type='image/png'] img").evaluate_all(
        "imgs => imgs.filter(i => i.complete).map(i => [i.naturalWidth, i.naturalHeight])")


def check_figures_rendered(page, shots, name: str) -> None:
    """The notebook's last figure is on screen as an image, not as `<Figure size ...>` text."""
    panel = active_panel(page)
    panel.locator(".jp-CodeCell .jp-OutputArea").last.scroll_into_view_if_needed()
    shots(page, name)
    sizes = images_rendered(page)
    as_text = [t for t in panel.locator(".jp-OutputArea-output").evaluate_all(
        "els => els.map(e => e.textContent)") if "<Figure size" in t]
    assert not as_text, f"figures shown as text, not images: {as_text[:3]}"
    assert sizes and all(w > 50 and h > 20 for w, h in sizes), f"no figure rendered: {sizes}"


def first_heading(markdown: Path) -> str:
    return next(line.lstrip("#").strip() for line in markdown.read_text().splitlines()
                if line.startswith("# "))


def check_markdown_rendered(page, markdown: Path, timeout: float = 30) -> None:
    """The active tab is `markdown` shown rendered (not as source text)."""
    heading = first_heading(markdown)
    view = page.locator("#jp-main-dock-panel .jp-RenderedMarkdown:visible h1",
                        has_text=heading[:40])
    try:
        view.first.wait_for(timeout=timeout * 1000)
    except Exception as error:
        raise AssertionError(f"{markdown.name} did not open rendered (tab "
                             f"{active_tab_title(page)!r}); expected heading {heading!r}") from error
    assert active_tab_title(page) == markdown.name, active_tab_title(page)
