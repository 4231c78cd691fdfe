"""The prose must point at things that exist, and the answer key's solutions must pass the checkers.

Citation forms understood in walkthroughs/, answers/, bench/ and the README:
* `course_lib/ddpm.py::ddpm_step` or `course_lib/unets.py::OptimizedUNet.forward`: file and symbol;
* `course_lib/ddpm.py`: the file;
* `notebooks/02_Diffusion_Models.ipynb` § "5. The reverse process": notebook and a heading in it.
A solution is a ```python block right after `<!-- check: check_xxx(name) -->`; the test runs the
block and then the check, which must return True.
"""
from __future__ import annotations

import ast
import importlib
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = sorted([*ROOT.glob("walkthroughs/*.md"), *ROOT.glob("answers/*.md"),
               *ROOT.glob("bench/*.md"), ROOT / "README.md"])
NOTEBOOKS = sorted(ROOT.glob("notebooks/[0-9][0-9]_*.ipynb"))
CODE_REF = re.compile(r"course_lib/([\w/]+)\.py(?:::([\w.]+))?")
NB_REF = re.compile(r"notebooks/(\w+\.ipynb)`?(?:\s*§\s*\"([^\"]+)\")?")
SOLUTION = re.compile(r"<!--\s*check:\s*(.+?)\s*-->\s*```python\n(.*?)```", re.S)


def _headings(notebook: Path) -> list[str]:
    cells = json.loads(notebook.read_text())["cells"]
    return [line.lstrip("#").strip() for c in cells if c["cell_type"] == "markdown"
            for line in "".join(c["source"]).splitlines() if line.startswith("#")]


def _defined(file: Path) -> set[str]:
    """The names ``file`` defines at its top level (not those it imports)."""
    names = set()
    for node in ast.parse(file.read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            for target in (node.targets if isinstance(node, ast.Assign) else [node.target]):
                names.update(n.id for n in ast.walk(target) if isinstance(n, ast.Name))
    return names


def test_a_citation_names_the_file_that_defines_it(tmp_path):
    """`course_lib/train.py::native_bf16` once passed, since train imports it: config defines it."""
    module = tmp_path / "m.py"
    module.write_text("from .config import native_bf16\nX, (Y, Z) = 1, (2, 3)\nW: int = 4\n"
                      "def f():\n    inner = 5\nclass C:\n    pass\n")
    assert _defined(module) == {"X", "Y", "Z", "W", "f", "C"}


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_code_references_exist(doc):
    for path, symbol in CODE_REF.findall(doc.read_text()):
        file = ROOT / "course_lib" / f"{path}.py"
        assert file.is_file(), f"{doc.name} cites course_lib/{path}.py, which does not exist"
        if symbol:
            assert symbol.split(".")[0] in _defined(file), (
                f"{doc.name} cites {path}.py::{symbol}, which {path}.py does not define (it may "
                "import it: cite the file that defines it)")
            obj = importlib.import_module("course_lib." + path.replace("/", "."))
            for part in symbol.split("."):
                assert hasattr(obj, part), f"{doc.name} cites {path}.py::{symbol}: no {part!r}"
                obj = getattr(obj, part)


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_notebook_references_exist(doc):
    for name, heading in NB_REF.findall(doc.read_text()):
        notebook = ROOT / "notebooks" / name
        assert notebook.is_file(), f"{doc.name} cites notebooks/{name}, which does not exist"
        if heading:
            assert heading in _headings(notebook), (
                f"{doc.name} cites heading {heading!r} of {name}; headings are "
                f"{_headings(notebook)}")


@pytest.mark.parametrize("doc", [*NOTEBOOKS, *sorted(ROOT.glob("walkthroughs/*.md"))],
                         ids=lambda p: p.name)
def test_numbered_sections_count_up_one_by_one(doc):
    """Two "## 8." headings, or a gap, send a reader told "section 9" to the wrong place."""
    if doc.suffix == ".ipynb":
        cells = json.loads(doc.read_text())["cells"]
        lines = [line for c in cells if c["cell_type"] == "markdown"
                 for line in "".join(c["source"]).splitlines()]
    else:
        lines = doc.read_text().splitlines()
    numbers = [int(m.group(1)) for line in lines if (m := re.match(r"## (\d+)\. ", line))]
    assert numbers == list(range(1, len(numbers) + 1)), f"{doc.name}: sections numbered {numbers}"


@pytest.mark.parametrize("notebook", NOTEBOOKS[1:], ids=lambda p: p.stem)
def test_each_notebook_has_walkthrough_and_answers(notebook):
    walk = ROOT / "walkthroughs" / f"{notebook.stem}_Walkthrough.md"
    answers = ROOT / "answers" / f"{notebook.stem}_Answers.md"
    assert walk.is_file(), f"missing {walk.relative_to(ROOT)}"
    assert answers.is_file(), f"missing {answers.relative_to(ROOT)}"
    text = answers.read_text()
    if notebook.stem != "06_Assessment":
        for level in ("Beginner", "Intermediate", "Advanced", "Implementation"):
            assert re.search(rf"^## .*{level}", text, re.M), f"{answers.name}: no {level} section"
        questions = re.findall(r"^### Q\d+", text, re.M)
        assert len(questions) >= 10, f"{answers.name} has {len(questions)} questions, needs 10"


ANSWER_FILES = sorted(ROOT.glob("answers/*.md"))


@pytest.mark.parametrize("answers", ANSWER_FILES, ids=lambda p: p.name)
def test_exercise_solutions_pass_their_checkers(answers, capsys):
    solutions = SOLUTION.findall(answers.read_text())
    notebook = ROOT / "notebooks" / answers.name.replace("_Answers.md", ".ipynb")
    if notebook.is_file():
        exercises = sum("FIXME" in "".join(c["source"]) for c in
                        json.loads(notebook.read_text())["cells"] if c["cell_type"] == "code")
        if notebook.stem != "06_Assessment":
            assert len(solutions) >= exercises, f"{answers.name}: {exercises} exercises, " \
                                                f"{len(solutions)} checked solutions"
    import course_lib.check as check
    for call, source in solutions:
        namespace = {name: getattr(check, name) for name in dir(check) if name.startswith("check_")}
        exec(compile(source, f"<{answers.name} solution>", "exec"), namespace)
        assert eval(call, namespace) is True, f"{answers.name}: {call} failed: {capsys.readouterr().out}"


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebooks_import_rather_than_redefine(notebook):
    """Building blocks come from course_lib; only exercise cells (with FIXME) define their own."""
    import course_lib
    names = set()
    for module in Path(course_lib.__file__).parent.glob("*.py"):
        names |= set(re.findall(r"^(?:class|def) (\w+)", module.read_text(), re.M))
    for cell in json.loads(notebook.read_text())["cells"]:
        src = "".join(cell["source"])
        if cell["cell_type"] != "code" or "FIXME" in src:
            continue
        for defined in re.findall(r"^(?:class|def) (\w+)", src, re.M):
            assert defined not in names, f"{notebook.name} redefines course_lib's {defined}"


def test_no_control_characters_in_documents():
    """A Python string that meant "\\alpha" but wrote "\alpha" leaves a BEL character where the
    LaTeX was: the formula no longer renders. No Markdown file or notebook cell holds one."""
    bad = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
    texts = {p: p.read_text() for p in ROOT.glob("**/*.md")
             if not any(part.startswith(".") or part in ("build", "node_modules") for part in p.parts)}
    for notebook in NOTEBOOKS:
        for i, cell in enumerate(json.loads(notebook.read_text())["cells"]):
            texts[f"{notebook.name} cell {i}"] = "".join(cell["source"])
    assert len(texts) > 20
    for where, text in texts.items():
        for n, line in enumerate(text.splitlines(), 1):
            assert not bad.search(line), f"{where}:{n}: control character in {line!r}"


def _walkthrough_figures_tool():
    import importlib.util
    spec = importlib.util.spec_from_file_location("walkthrough_figures",
                                                  ROOT / "tools" / "walkthrough_figures.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    return tool


def test_walkthrough_02_loss_vs_t_quotes_its_json(tmp_path):
    """walkthroughs/figures/02_loss_vs_t.json is what tools/walkthrough_figures.py measured; the
    walkthrough quotes its figures, and what it says of them holds."""
    figures = ROOT / "walkthroughs" / "figures"
    data = json.loads((figures / "02_loss_vs_t.json").read_text())
    assert (figures / "02_loss_vs_t.png").is_file()
    text = " ".join((ROOT / "walkthroughs" / "02_Diffusion_Models_Walkthrough.md").read_text().split())
    assert "](figures/02_loss_vs_t.png)" in text
    eps, x0, floor = data["eps_at"], data["x0_at"], data["toy_floor_at"]
    quoted = (f"{eps['1']:.4f} at $t = 1$, {eps['10']:.4f} at $t = 10$, {eps['75']:.4f} at $t = 75$ "
              f"and {eps['150']:.4f} at $t = 150$",
              f"is {data['eps_mean']:.4f}, and the training loss ended on "
              f"{data['training_final_loss']:.4f}",
              f"{x0['1']:.4f} at $t = 1$, {x0['150']:.4f} at $t = 150$",
              f"{floor['1']:.4f} at $t = 1$", f"{floor['75']:.4f} at $t = 75$",
              f"{floor['150']:.4f} at $t = 150$, {data['toy_floor_mean']:.4f} on average",
              f"sits {data['toy_gap_mean']:.4f} above it on average",
              f"on {data['images']} held-out FashionMNIST images",
              f"The first 50 steps carry {100 * data['eps_share_first_third']:.2f}% of the total")
    for phrase in quoted:
        assert phrase in text, phrase
    # what the text says of the figures
    assert eps["1"] > eps["10"] > eps["75"] > eps["150"] and x0["1"] < x0["75"] < x0["150"]
    assert abs(data["eps_mean"] - data["training_final_loss"]) < 0.01
    assert data["eps_share_first_third"] > 0.5          # "mostly at small t"
    assert 0 < data["toy_gap_mean"] < 0.05 * data["toy_floor_mean"]


def test_loss_by_t_scores_the_noise_prediction_at_each_step():
    """A network that outputs zeros scores E[ε²] = 1 at every t; one that knows x_0 and so
    recovers ε exactly scores 0."""
    import torch
    from course_lib.ddpm import linear_schedule
    tool = _walkthrough_figures_tool()
    schedule = linear_schedule(20)
    x0 = torch.rand(4000, 2, dtype=torch.float64) * 2 - 1
    zeros = tool.loss_by_t(lambda x, t: torch.zeros_like(x), x0, schedule)
    assert len(zeros) == 20 and all(abs(v - 1) < 0.05 for v in zeros)
    ab = schedule.alpha_bars.double()

    def oracle(x, t):
        a = ab[t].unsqueeze(1)
        return (x - a.sqrt() * x0) / (1 - a).sqrt()
    assert max(tool.loss_by_t(oracle, x0, schedule)) < 1e-20


def test_walkthrough_02_log_snr_figure_and_its_numbers_come_from_the_library(tmp_path):
    """walkthroughs/figures/02_log_snr.png is drawn by tools/walkthrough_figures.py from the
    library's schedules, and every number the walkthrough quotes about it is that tool's."""
    tool = _walkthrough_figures_tool()
    linear, scaled, cosine = tool.summary().values()
    assert linear["alpha_bar_T"] == pytest.approx(0.2192, abs=1e-4)     # the trap, as 02 says
    text = " ".join((ROOT / "walkthroughs" / "02_Diffusion_Models_Walkthrough.md").read_text().split())
    assert "](figures/02_log_snr.png)" in text
    assert (ROOT / "walkthroughs" / "figures" / "02_log_snr.png").is_file()
    assert (f"keeps {linear['steps_above_0']} of its 150 steps above 0 and ends at "
            f"${linear['log_snr_T']:.2f}$") in text
    assert (f"ends at ${scaled['log_snr_T']:.2f}$ with {scaled['steps_above_0']} steps above 0, "
            f"and {scaled['steps_below_minus_5']} of its steps are nearly pure noise") in text
    assert (f"ends at ${cosine['log_snr_T']:.2f}$ with {cosine['steps_above_0']} steps above 0, "
            f"about half, and only {cosine['steps_below_minus_5']} below $-5$") in text
    drawn = tool.draw_log_snr(tmp_path / "log_snr.png")
    assert drawn.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
