"""bench/RESULTS.md quotes the tables the benchmark scripts wrote, unchanged."""
import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _results_module():
    spec = importlib.util.spec_from_file_location("bench_results", ROOT / "bench" / "results.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_results_tables_match_the_benchmark_outputs():
    results = _results_module()
    text = results.RESULTS.read_text()
    assert len(results.BLOCK.findall(text)) >= 4, "RESULTS.md lost its table markers"
    assert results.refresh(text) == text, "run: python bench/results.py"


def test_refresh_replaces_only_the_marked_block(tmp_path, monkeypatch):
    results = _results_module()
    (tmp_path / "demo.md").write_text("| a |\n|---|\n| 1 |\n")
    monkeypatch.setattr(results, "BENCH", tmp_path)
    text = "intro\n<!-- table: demo -->\nstale\n<!-- end -->\noutro\n"
    assert results.refresh(text) == "intro\n<!-- table: demo -->\n| a |\n|---|\n| 1 |\n<!-- end -->\noutro\n"


# --- bench/quality.json: the headline figures of the full run, as the notebooks show them --------

QUALITY_SHOWN = {   # figure -> (notebook prefix, how its stored output prints it)
    "fashion16_real_frechet": ("01", "{:.1f}"), "fashion16_real_recognised": ("01", "{:.0%}"),
    "nb03_frechet": ("03", "{:.1f}"), "nb03_recognised": ("03", "{:.0%}"),
    "nb03_min_class_share": ("03", "{:.1%}"), "nb03_max_class_share": ("03", "{:.1%}"),
    "nb04_fashion_requested_w2": ("04", "{:.0%} as the requested class"),
    "flowers32_real_species_acc": ("04", "{:.1%}"), "nb04_flowers_species_w2": ("04", "{:.1%}"),
    "nb05_clip_zero_shot_species": ("05", "{:.1%}"), "nb05_prompt_species": ("05", "{:.1%}"),
    "nb05_heldout_wording_species": ("05", "{:.1%}"),
}


def _stored_text(prefix: str) -> str:
    import json
    notebook = next((ROOT / "notebooks").glob(f"{prefix}_*.ipynb"))
    cells = json.loads(notebook.read_text())["cells"]
    return "\n".join("".join(o.get("text", "")) for c in cells if c["cell_type"] == "code"
                     for o in c.get("outputs", []) if o.get("output_type") == "stream")


def test_quality_json_agrees_with_the_stored_notebook_outputs():
    import json

    import pytest
    path = ROOT / "bench" / "quality.json"
    if not path.is_file():
        pytest.fail("bench/quality.json is missing: run python bench/quality.py after a full run")
    quality = json.loads(path.read_text())
    from course_lib.metrics import FIGURES
    assert set(quality) == set(FIGURES) | {"course_minutes"}
    assert all(isinstance(v, (int, float)) for v in quality.values())
    for name, (prefix, fmt) in QUALITY_SHOWN.items():
        shown = fmt.format(quality[name])
        assert shown in _stored_text(prefix), f"{name} = {shown} is not in notebook {prefix}'s outputs"
    table = (ROOT / "bench" / "notebooks_full.md").read_text()
    import re
    notebooks = float(re.search(r"\*\*whole course\*\* \| \*\*([\d.]+)\*\*", table).group(1))
    assert notebooks <= quality["course_minutes"] <= notebooks + 15


def test_stored_progress_bars_read_as_finished():
    """A reader without widgets sees each bar's text: it must not say 0/468 (an untrained look)."""
    import json
    import re
    for notebook in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        for cell in json.loads(notebook.read_text())["cells"]:
            for out in cell.get("outputs", []):
                if "application/vnd.jupyter.widget-view+json" not in out.get("data", {}):
                    continue
                text = "".join(out["data"].get("text/plain", ""))
                assert not re.search(r"\|\s*0/\d+ \[", text), f"{notebook.name}: stored bar {text!r}"
