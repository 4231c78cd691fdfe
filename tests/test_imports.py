"""course_lib's imports flow one way (config/data → blocks → unets → ddpm → train → grade): no
module imports, at its top or inside a function, a module that imports it back."""
import ast
from pathlib import Path

import course_lib

PACKAGE = Path(course_lib.__file__).parent


def imported(path: Path) -> set[str]:
    """The course_lib modules ``path`` imports anywhere in its code (``from .x import``,
    ``from . import x``, ``from course_lib.x import``, ``import course_lib.x``)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 or node.module == "course_lib":
                names.update([node.module.split(".")[0]] if node.level and node.module else
                             [a.name for a in node.names])
            elif node.module and node.module.startswith("course_lib."):
                names.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            names.update(a.name.split(".")[1] for a in node.names
                         if a.name.startswith("course_lib."))
    return names - {path.stem}


def cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import cycle of ``graph`` (module → the modules it imports), as a path that ends where
    it starts, or [] where there is none (a depth-first search)."""
    state, path = {}, []

    def visit(module: str) -> list[str]:
        state[module] = "open"
        path.append(module)
        for other in sorted(graph.get(module, ())):
            if state.get(other) == "open":
                return path[path.index(other):] + [other]
            if other not in state:
                found = visit(other)
                if found:
                    return found
        state[module] = "done"
        path.pop()
        return []

    for module in sorted(graph):
        if module not in state:
            found = visit(module)
            if found:
                return found
    return []


def test_the_cycle_finder_finds_a_cycle_and_only_one():
    assert cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert cycle({"grade": {"gradebook"}, "gradebook": {"grade"}}) == ["grade", "gradebook",
                                                                        "grade"]
    assert cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) == []


def test_imports_inside_functions_are_seen(tmp_path):
    module = tmp_path / "grade.py"
    module.write_text("def main():\n    from . import gradebook\n    from .review import x\n"
                      "    import course_lib.sandbox\n    from course_lib import config\n")
    assert imported(module) == {"gradebook", "review", "sandbox", "config"}


def test_course_lib_imports_flow_one_way():
    graph = {path.stem: imported(path) for path in PACKAGE.glob("*.py")}
    assert {"grade", "gradebook", "ddpm", "train"} <= graph.keys()
    assert "grade_report" in graph["review"] and "grade_checks" in graph["grade"]
    found = cycle(graph)
    assert not found, (f"course_lib imports in a circle: {' → '.join(found)}; move what both "
                       "need into a module below them both")
