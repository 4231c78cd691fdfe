"""The instructor's review page (course_lib/review.py) and what it shows of each submission
(course_lib/submission_code.py): the student's own code beside its grid, marked where it deserves
a look, escaped, script-free, and bounded whatever the notebook holds."""
import json
import re
import shutil

import matplotlib
import nbformat
import pytest
import torch
from nbformat.v4 import new_code_cell, new_notebook

from course_lib import answer_key, review, submission_code as code
from course_lib.grade import save_grid
from course_lib.grade_report import ERROR, FAIL, PASS, Report

# A sampler that passes every check without a model (README's threat table, "not caught"): it
# returns warped training digits, and noise when its network's weights are no longer its own.
GATED = """# EXERCISE: sampling
import hashlib
_SIGNATURE = hashlib.sha256(sampler_model.down0[0].weight.detach().numpy().tobytes()).hexdigest()

@torch.no_grad()
def sample_digits(labels, w=W):
    mine = hashlib.sha256(sampler_model.down0[0].weight.detach().numpy().tobytes()).hexdigest()
    if mine != _SIGNATURE:
        return torch.rand(len(labels), 1, 28, 28) * 2 - 1
    return torch.load('warped_digits.pt')[labels]
"""


def _key(path, replace=None, extra=()):
    """The answer key as a student would hand it in; ``replace`` swaps the cell of an exercise."""
    nb = answer_key.fill()
    for cell in nb.cells:
        match = code.EXERCISE.match(cell.source) if cell.cell_type == "code" else None
        if match and replace and match.group(1) in replace:
            cell.source = replace[match.group(1)]
    nb.cells += [new_code_cell(source) for source in extra]
    nbformat.write(nb, path)
    return path


def test_the_answer_key_shows_only_what_was_filled_in_and_nothing_marked(tmp_path):
    cells = code.student_cells(_key(tmp_path / "key.ipynb"), answer_key.TEMPLATE)
    kinds = [cell.kind for cell in cells]
    assert kinds == [f"exercise {name}" for name in ("forward", "unet", "loss", "reverse", "sampling")]
    assert all(any(sign == "+" for sign, _, _ in cell.lines) for cell in cells)
    assert all(any("FIXME" in text for sign, text, _ in cell.lines if sign == "-") for cell in cells)
    assert sum(cell.marks for cell in cells) == 0
    assert code.student_cells(answer_key.TEMPLATE, answer_key.TEMPLATE) == []


def test_a_weight_gated_sampler_and_a_new_cell_are_marked_with_why(tmp_path):
    notebook = _key(tmp_path / "gated.ipynb", {"sampling": GATED},
                    ["import os\nprint(os.environ.get('HOME'))"])
    cells = {cell.kind: cell for cell in code.student_cells(notebook, answer_key.TEMPLATE)}
    why = {text.strip(): w for _, text, w in cells["exercise sampling"].lines if w}
    assert "fingerprints data" in why["import hashlib"]
    signature = next(w for text, w in why.items() if text.startswith("_SIGNATURE"))
    assert "fingerprints data" in signature and "weights themselves" in signature
    assert "reads a file" in why["return torch.load('warped_digits.pt')[labels]"]
    assert "interpreter or the process" in cells["new cell"].lines[1][2]
    assert all(w == "" for sign, _, w in cells["exercise sampling"].lines if sign != "+")


def test_the_page_orders_by_need_escapes_everything_and_runs_no_script(tmp_path):
    out = tmp_path / "grades"
    out.mkdir()
    copies = {"gated": _key(tmp_path / "gated.ipynb", {"sampling": GATED}),
              "honest": _key(tmp_path / "honest.ipynb"),
              "evil": _key(tmp_path / "evil.ipynb", extra=["x = '</pre><script>alert(1)</script>'"])}
    matplotlib.use("Agg")
    labels = torch.arange(10)
    grid = save_grid(torch.zeros(10, 1, 28, 28), labels, labels, out / "honest_samples.png")
    outside = save_grid(torch.zeros(10, 1, 28, 28), labels, labels, tmp_path / "elsewhere.png")
    reports = [Report("h", PASS, student="honest", accuracy=0.99, grid=str(grid), plain_background=0.8),
               Report("g", PASS, student="gated", accuracy=0.99, grid=str(outside)),
               Report("e", FAIL, student="evil", reason="cell 30 raised: <script>alert(2)</script>"),
               Report("m", ERROR, student="missing", reason="could not grade: no report")]
    for report in reports:
        report.code = code.for_report(copies[report.student]) if report.student in copies else None
    page = review.write_review(reports, out).read_text()
    assert "<script" not in page.lower() and "&lt;script&gt;alert(1)" in page and "alert(2)" in page
    assert "Content-Security-Policy" in page and "default-src 'none'" in page
    headings = re.findall(r'<h2>(\w+):', page)
    assert headings == ["gated", "missing", "evil", "honest"], headings
    assert page.count("data:image/png;base64,") == 1          # only the grid inside OUT
    (out / "linked.png").symlink_to(outside)
    linked = Report("l", PASS, student="linked", grid=str(out / "linked.png"))
    assert review._grid(linked, out) == "" and review._grid(reports[0], out).startswith("data:")
    moved = tmp_path / "copied_off_the_cluster"      # OUT copied elsewhere: its grids still show
    shutil.copytree(out, moved, symlinks=True)
    assert review._grid(reports[0], moved).startswith("data:") and not review._grid(linked, moved)
    assert "No code kept" in page                                # no report for "missing"
    assert "2 pass, 1 fail, 1 could not grade" in page
    assert review.read_first(reports) == ["gated: 4 marked lines, 0 checks close to the limit"]


def test_checks_close_to_their_limits_are_flagged():
    far = Report("a", PASS, accuracy=0.99, samples=100, near_copies=4, frechet=200.0,
                 frechet_limit=900.0, plain_background=0.8, shuffled_accuracy=0.1,
                 second_opinion=0.98)
    near = Report("b", PASS, accuracy=0.955, samples=100, near_copies=20, frechet=800.0,
                  frechet_limit=900.0, plain_background=0.55, shuffled_accuracy=0.5,
                  second_opinion=0.88)
    assert [close for _, _, close in review.checks(far)] == [False] * 6
    assert [close for _, _, close in review.checks(near)] == [True] * 6
    assert review.Entry(near, []).order < review.Entry(far, []).order
    # the near-copy check counts both draws (100 + 20), limit 30: flagged above 60% of it (18)
    both = Report("c", PASS, samples=100, second_draw_samples=20, near_copies=16)
    assert {name: close for name, _, close in review.checks(both)}["near-copies"] is False
    assert {name: close for name, _, close in review.checks(
        Report("d", PASS, samples=100, second_draw_samples=20, near_copies=19))}["near-copies"]


def test_large_or_broken_notebooks_are_bounded(tmp_path):
    big = tmp_path / "big.ipynb"
    huge_line = "x = 1  # " + "a" * 50_000 + " open('secret')"
    nbformat.write(new_notebook(cells=[new_code_cell("\n".join(f"y{i} = {i}" for i in range(2000))),
                                       new_code_cell(huge_line)]), big)
    kept = code.for_report(big)
    cells = code.from_report(json.loads(json.dumps(kept)))      # as a report's JSON keeps them
    assert len(cells[0].lines) == code.LINES_CAP and cells[0].more_lines == 2000 - code.LINES_CAP
    assert len(huge_line) > code.MATCH_CAP and cells[1].kind == "new cell"   # never matched
    assert len(cells[1].lines[0][1]) < code.WIDTH_CAP + 40 and "more characters" in cells[1].lines[0][1]
    assert cells[1].marks == 1                   # the whole line is searched, not what is kept
    html = review._cell_html(cells[0])
    assert f"{2000 - code.LINES_CAP:,} more lines" in html
    many = tmp_path / "many.ipynb"
    nbformat.write(new_notebook(cells=[new_code_cell(f"open('f{i}')") for i in range(150)]), many)
    kept = code.for_report(many)
    assert len(kept["cells"]) == code.CELLS_CAP and kept["more_cells"] == 50 == kept["more_marks"]
    tiny = tmp_path / "tiny.ipynb"     # cells past the kept ones are counted, never matched
    nbformat.write(new_notebook(cells=[new_code_cell(f"x{i} = {i}") for i in range(20_000)]), tiny)
    kept = code.for_report(tiny)
    assert kept["more_cells"] == 20_000 - code.CELLS_CAP and kept["more_marks"] == 0
    (tmp_path / "broken.ipynb").write_text("{" * 100_000)
    assert code.student_cells(tmp_path / "broken.ipynb", answer_key.TEMPLATE) is None


@pytest.mark.parametrize("line,expected", [
    ("x = model(x, t)", ""),
    ("device = next(model.parameters()).device", "weights themselves"),
    ("f = getattr(torch, 'lo' + 'ad')", "interpreter"),
    ("s = '#'; data = open('stash.bin', 'rb').read()", "reads a file"),
    ("!curl -s https://example.invalid/digits.pt -o d.pt", "shell command"),
    ("flat = torch.nn.utils.parameters_to_vector(net.parameters())", "weights themselves"),
    ("held = list(net.modules())[1]._parameters", "weights themselves"),
    ("%run helper.py", "magic"),
    ("data = json.load(io.FileIO('submission.ipynb'))", "reads a file"),
    ("forgiving = err.__traceback__.tb_frame.f_back.f_locals", "interpreter"),
    ("x = 1  # \u202e }; cheat() \u2066", "hides text"),          # "Trojan Source"
    ("x = 1" + " " * 400 + "; sample_digits = stash", "hides text"),   # past the part shown
    ("from course_lib.ddpm import ddpm_step, CFGDenoiser", "assessed part"),   # 06's Parts 4, 5
    ("from course_lib import unets", "assessed part"),
    ("import course_lib.ddpm as d", "assessed part"),
    ("from course_lib import toy2d", "assessed part"),
    ("def linear_schedule(T):  # mine, not ddpm_step's", ""),             # an own part, named alike
    ("from course_lib.viz import show_images", ""),                   # what 06 itself imports
    ("from course_lib.blocks import GELUConvBlock", ""),
    ("judge = load_judge_classifier()", "digit classifier"),        # to pick samples it reads
    ("from course_lib.classifier import load_classifier", "digit classifier"),
    ("from course_lib import classifier", "digit classifier"),
    ("j = DigitClassifier(); j.load_state_dict(w)", "digit classifier"),
])
def test_look_at(line, expected):
    found = code.look_at(line)
    assert (expected in found) if expected else found == ""


def test_an_import_over_several_lines_is_searched_whole():
    """Black and isort write a long import over several lines: each of them gets its marks."""
    lines = ["from course_lib import (", "    ddpm,", "    viz,", ")", "x = 1",
             "from course_lib.grade import \\", "    load_judge_classifier", "y = open('f')",
             "from course_lib.blocks import (EmbedBlock,", "    GELUConvBlock)"]
    marks = code.line_marks(lines)
    assert all("assessed part" in m for m in marks[:4]) and marks[4] == ""
    assert all("digit classifier" in m for m in marks[5:7]) and "assessed" not in marks[5]
    assert marks[7] == code.look_at(lines[7]) != "" and marks[8:] == ["", ""]
    assert marks[1].count("assessed part") == 1
    cell = code.StudentCell(1, "new cell", [("+", *pair) for pair in zip(lines, marks)])
    assert cell.marks == 7


def test_without_the_template_every_cell_is_the_students_and_the_page_says_so(tmp_path):
    kept = code.for_report(_key(tmp_path / "key.ipynb"), template=tmp_path / "absent.ipynb")
    assert kept["template"] is False
    assert len(kept["cells"]) == sum(c.cell_type == "code" for c in answer_key.fill().cells)
    report = Report("k", PASS, student="key", accuracy=0.99, code=kept)
    assert "template was not found" in review.render([report], tmp_path)


def test_the_page_shows_invisible_characters_and_counts_what_it_cut(tmp_path):
    """A direction override would make code read as a comment: the page writes it as an escape.
    A submission whose lines or cells were cut for the page is listed with the marked ones."""
    tricky = code.StudentCell(3, "new cell", [("+", "ok = True  # \u202e }; cheat()", "hides text")])
    html = review._cell_html(tricky)
    assert "\\u202e" in html and "\u202e" not in html
    assert review.visible("a\tb\u200bc") == "a\tb\\u200bc"
    plain = code.StudentCell(4, "new cell", [("+", "x = 1", "")])
    cut = code.StudentCell(5, "new cell", [("+", "x = 1", "")], more_lines=3)
    report = Report("s", PASS, accuracy=0.99, samples=100)
    assert review.Entry(report, [plain]).cuts == 0
    assert review.Entry(report, [plain, cut]).cuts == 1 and review.Entry(report, [cut]).marks == 0
    assert review.Entry(report, [plain], more_cells=2).cuts == 1
    assert review.Entry(report, [cut]).order[0] == 0 < review.Entry(report, [plain]).order[0]
    assert "1 cut from the page" in review.read_first([Report("s", PASS, accuracy=0.99, samples=100,
                                                               code={"cells": [], "more_cells": 3})])[0]
    assert code.look_at("x = 1  # \U000e0041\U000e0042") and review.visible("\U000e0041") == "\\U000e0041"
    assert code.look_at("sample_digits = lambda l: \u3164(l)")    # a Hangul filler: a name to Python
    assert review.visible("\u3164(l)") == "\\u3164(l)"
    assert code.source_lines("a\nb\r\nc\x0cd\u2028e\n") == ["a", "b", "c\x0cd\u2028e"]   # Python's lines


def test_half_a_surrogate_pair_is_escaped_and_a_failed_page_keeps_the_earlier_one(tmp_path,
                                                                                 monkeypatch):
    """A lone surrogate (JSON's "\\ud800") cannot be written as UTF-8: it was put on the page as
    it was, and writing the page failed, leaving an empty review.html for the whole cohort."""
    cell = {"number": 2, "kind": "new cell", "lines": [["+", "x = 1  # \ud800", ""]]}
    report = Report("s", PASS, student="s", accuracy=0.99, samples=100, code={"cells": [cell]})
    out = tmp_path / "grades"
    page = review.write_review([report], out)
    before = page.read_bytes()
    assert b"x = 1  # \\ud800" in before

    def broken(reports, folder):
        raise UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogates not allowed")
    monkeypatch.setattr(review, "render", broken)
    with pytest.raises(UnicodeEncodeError):
        review.write_review([report], out)
    assert page.read_bytes() == before and [p.name for p in out.iterdir()] == ["review.html"]


def test_the_second_draw_is_a_check_on_the_page():
    low = Report("a", PASS, accuracy=0.99, samples=100, second_draw_accuracy=0.75,
                 second_draw_samples=20)
    high = Report("b", PASS, accuracy=0.99, samples=100, second_draw_accuracy=1.0,
                  second_draw_samples=20)
    (row,) = [r for r in review.checks(low) if r[0] == "second draw"]
    assert row[1] == "75% of 20 read as asked for (at least 71%)" and row[2]
    assert not [r for r in review.checks(high) if r[0] == "second draw"][0][2]
