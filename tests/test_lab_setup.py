"""How the course opens, without a browser: `make course`'s launcher, the lab settings it ships,
the walkthrough links, and the repo2docker (Binder / JupyterHub) recipe. tests/browser/ checks
the same things in Chromium."""
from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def launcher():
    spec = importlib.util.spec_from_file_location("course_launcher", ROOT / "lab" / "course.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_make_course_runs_the_launcher():
    dry = subprocess.run(["make", "-n", "course"], cwd=ROOT, capture_output=True, text=True)
    assert "lab/course.py" in dry.stdout, dry.stdout


def test_launcher_opens_00_from_the_repository_root_and_allows_root_only_for_root():
    course = launcher()
    as_student = course.lab_command(["--no-browser"], uid=1000)
    assert as_student[:3] == [sys.executable, "-m", "jupyterlab"]
    assert f"--ServerApp.root_dir={ROOT}" in as_student
    assert "--LabApp.default_url=/lab/tree/notebooks/00_jupyterlab.ipynb" in as_student
    assert "--allow-root" not in as_student and as_student[-1] == "--no-browser"
    assert "--allow-root" in course.lab_command([], uid=0)


@pytest.mark.parametrize("root, path", [(ROOT, "notebooks/00_jupyterlab.ipynb"),
                                        (ROOT / "notebooks", "00_jupyterlab.ipynb")])
def test_running_server_url_opens_00_whichever_root(root, path):
    info = {"url": "http://localhost:8890/", "token": "abc", "root_dir": str(root)}
    assert launcher().course_url(info) == f"http://localhost:8890/lab/tree/{path}?token=abc"


def test_lab_settings_are_valid_for_this_jupyterlab():
    """Every override names a real setting with an allowed value (a typo is silently ignored)."""
    from jupyterlab.commands import get_app_dir

    schemas = Path(get_app_dir()) / "schemas"
    overrides = json.loads((ROOT / "lab" / "overrides.json").read_text())
    assert overrides["@jupyterlab/apputils-extension:notification"]["fetchNews"] == "false"
    for plugin, values in overrides.items():
        package, name = plugin.split(":")
        schema = json.loads((schemas / package / f"{name}.json").read_text())
        for key, value in values.items():
            spec = schema["properties"][key]
            if "oneOf" in spec:
                assert value in [choice["const"] for choice in spec["oneOf"]], (plugin, key)
            else:
                assert isinstance(value, {"boolean": bool, "object": dict}[spec["type"]])


def test_install_settings_writes_them_where_this_jupyterlab_reads_them(tmp_path, monkeypatch):
    monkeypatch.setenv("JUPYTERLAB_DIR", str(tmp_path))
    target = launcher().install_settings()
    assert target == tmp_path.resolve() / "settings" / "overrides.d" / "diffusion-course.json"
    assert target.read_text() == (ROOT / "lab" / "overrides.json").read_text()


@pytest.mark.parametrize("notebook", NOTEBOOKS[1:], ids=lambda p: p.stem)
def test_walkthrough_reference_is_a_link_that_resolves_from_notebooks(notebook):
    """A Markdown link, not `code`: [walkthrough NN](../walkthroughs/NN_..._Walkthrough.md).
    It opens in one click in a lab started at the repository (make course); in a lab started at
    notebooks/, JupyterLab keeps `..` inside its root, where notebooks/walkthroughs links to
    ../walkthroughs (tests/browser/ clicks it both ways)."""
    name = f"{notebook.stem}_Walkthrough.md"
    text = "\n".join("".join(c["source"]) for c in json.loads(notebook.read_text())["cells"]
                     if c["cell_type"] == "markdown")
    links = re.findall(rf"\]\(((?:\.\./)?walkthroughs/{re.escape(name)})\)", text)
    assert links, (f"{notebook.name}: the walkthrough reference must be a link, e.g. "
                   f"[walkthrough {notebook.stem[:2]}](../walkthroughs/{name})")
    for link in links:
        assert (ROOT / "notebooks" / link).is_file(), link
        assert (ROOT / "notebooks" / link.removeprefix("../")).is_file(), link


def test_walkthroughs_and_answers_are_reachable_from_notebooks():
    for folder in ("walkthroughs", "answers"):
        link = ROOT / "notebooks" / folder
        assert link.is_symlink() and os.readlink(link) == f"../{folder}"


def test_repo2docker_builds_the_repository():
    """Binder and JupyterHub build images with repo2docker; --no-build renders the recipe
    without Docker. The environment comes from environment.yml, course_lib and the lab
    settings are installed after the repository is copied (postBuild)."""
    repo2docker = shutil.which("repo2docker") or str(Path(sys.executable).parent / "repo2docker")
    if not Path(repo2docker).exists():
        if os.environ.get("CI") or os.environ.get("COURSE_REQUIRE_BROWSER"):
            pytest.fail("CI must check the Binder recipe: pip install -e '.[test]'")
        pytest.skip("repo2docker is not installed (pip install -e '.[test]')")
    done = subprocess.run([repo2docker, "--no-build", "--no-run", "--debug", str(ROOT)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    recipe = done.stdout + done.stderr
    copy = recipe.index("COPY --chown=0:0 src/ ${REPO_DIR}/")
    env = recipe.index('--file "environment.yml"')
    post = recipe.index("RUN ./postBuild")
    assert copy < env < post, "environment.yml (with `-e .`) must install after the copy"
    assert "lab/course.py --install-settings" in (ROOT / "postBuild").read_text()
