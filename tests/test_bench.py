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
