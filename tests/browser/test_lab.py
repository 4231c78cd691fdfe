"""The course as a student meets it: `make course`'s JupyterLab in Chromium, step by step.

Each test saves a screenshot of what it checked (folder printed at the end of the run). The
notebooks run in the test profile; autosave is off, so the repository's notebooks stay as they are.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time

import pytest

import jlab
from jlab import ROOT

NOTEBOOKS = sorted(p.name for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
WITH_WALKTHROUGH = [n for n in NOTEBOOKS if not n.startswith("00_")]
FIRST = "00_jupyterlab.ipynb"


def printed_url(lab) -> str:
    """The last URL the launcher printed (`==> The course is open at:` and the URL under it)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        text = lab.log.read_text()
        match = re.search(r"==> The course is open at:\n\s+(\S+)", text)
        if match:
            return match.group(1)
        time.sleep(0.25)
    raise AssertionError("`make course` printed no URL:\n" + lab.log.read_text()[-2000:])


def open_first_notebook(page, lab):
    if jlab.active_panel(page).count() == 0 or jlab.active_tab_title(page) != FIRST:
        jlab.open_lab(page, lab, f"lab/tree/notebooks/{FIRST}")
    jlab.wait_kernel_idle(page)


def test_make_course_opens_the_first_notebook_quietly(course_lab, page, shots):
    url = printed_url(course_lab)
    assert url.endswith(f"/lab/tree/notebooks/{FIRST}?token={course_lab.token}"), url
    page.goto(url.replace("localhost", "127.0.0.1"))
    page.wait_for_selector(".jp-DirListing-content")
    jlab.wait_kernel_idle(page)
    assert jlab.active_tab_title(page) == FIRST
    assert jlab.current_folder(page).strip("/ ") == "notebooks"
    listed = jlab.listed_files(page)
    assert len(NOTEBOOKS) == 7 and all(n in listed for n in NOTEBOOKS), listed
    page.wait_for_timeout(3000)   # the news question used to pop up within a second or two
    shots(page, "make_course_first_screen")
    assert not jlab.news_toasts(page), f"news pop-up shown: {jlab.news_toasts(page)}"
    if os.geteuid() == 0:
        assert "--allow-root" in course_lab.log.read_text().split("\n==> Starting")[0]


def test_second_make_course_says_it_is_already_running(course_lab):
    env = jlab.lab_env(course_lab.log.parent)   # same runtime dir: sees the running server
    done = subprocess.run([sys.executable, str(ROOT / "lab" / "course.py"), "--no-browser"],
                          env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "already running" in done.stdout, done.stdout
    assert course_lab.token in done.stdout and f"/lab/tree/notebooks/{FIRST}" in done.stdout


def test_kernel_is_the_course_environment(course_lab, page, shots):
    open_first_notebook(page, course_lab)
    report = jlab.probe_kernel(page)
    shots(page, "kernel_probe_console")
    jlab.check_kernel(report, expected_prefix=sys.prefix)


def test_run_all_on_00_without_errors_and_with_a_figure(course_lab, page, shots):
    open_first_notebook(page, course_lab)
    result = jlab.run_all(page, timeout=120)
    shots(page, "00_after_run_all")
    jlab.check_run(result, ROOT / "notebooks" / FIRST)
    jlab.check_figures_rendered(page, shots, "00_figure")


def test_training_shows_a_live_progress_bar(course_lab, page, shots):
    jlab.open_lab(page, course_lab, f"lab/tree/notebooks/{FIRST}")
    jlab.open_in_file_browser(page, "notebooks", "01_UNets.ipynb")
    page.wait_for_function("() => document.querySelector("
                           "'#jp-main-dock-panel .lm-TabBar-tab.lm-mod-current')"
                           "?.innerText.includes('01_UNets')")
    jlab.wait_kernel_idle(page)
    panel = jlab.active_panel(page)
    bar = panel.locator(jlab.PROGRESS_BAR)

    def show_bar(name):
        if bar.count():
            bar.first.scroll_into_view_if_needed()
            page.wait_for_timeout(300)   # let the cells scrolled into view render
        shots(page, name)

    result = jlab.run_all(page, timeout=600, on_progress=lambda: show_bar("01_progress_bar_live"))
    show_bar("01_progress_bar_after_run_all")
    jlab.check_live_progress_bar(result)
    jlab.check_run(result, ROOT / "notebooks" / "01_UNets.ipynb")
    course_lab.shut_down_kernels()


@pytest.mark.parametrize("notebook", WITH_WALKTHROUGH)
def test_walkthrough_opens_in_one_click(course_lab, page, shots, notebook):
    check_walkthrough_link(course_lab, page, shots, f"notebooks/{notebook}", notebook)


@pytest.mark.parametrize("notebook", WITH_WALKTHROUGH)
def test_walkthrough_opens_in_one_click_from_jupyter_lab_notebooks(by_hand_lab, page, shots,
                                                                   notebook):
    check_walkthrough_link(by_hand_lab, page, shots, notebook, notebook)


def check_walkthrough_link(lab, page, shots, path, notebook):
    walkthrough = ROOT / "walkthroughs" / notebook.replace(".ipynb", "_Walkthrough.md")
    jlab.open_lab(page, lab, f"lab/tree/{path}")
    jlab.active_panel(page).wait_for()
    links = jlab.active_panel(page).locator(
        f".jp-MarkdownOutput a[href*='walkthroughs/{walkthrough.name}']")
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:  # the panel shows before its Markdown cells are rendered: give them time
        links.first.wait_for(state="attached", timeout=60_000)
    except PlaywrightTimeout:
        pass
    assert links.count() > 0, (f"{notebook} has no link to walkthroughs/{walkthrough.name} "
                               "(a `code` reference cannot be clicked)")
    links.first.click()
    jlab.check_markdown_rendered(page, walkthrough)
    shots(page, f"walkthrough_{notebook.split('_')[0]}_root_{lab.root.name}")
    lab.shut_down_kernels()


@pytest.mark.parametrize("lab_fixture", ["course_lab", "by_hand_lab"])
def test_answers_open_rendered_from_the_file_browser(request, page, shots, lab_fixture):
    lab = request.getfixturevalue(lab_fixture)
    answers = ROOT / "answers" / "01_UNets_Answers.md"
    jlab.open_lab(page, lab, "lab")
    jlab.open_in_file_browser(page, "answers", answers.name)
    jlab.check_markdown_rendered(page, answers)
    shots(page, f"answers_root_{lab.root.name}")
