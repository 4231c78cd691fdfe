"""Fill the 06_Assessment template with the answer key: ``python -m course_lib.answer_key OUT.ipynb``.

Each exercise cell of the template starts with ``# EXERCISE: <name>``; the key
(``answers/06_Assessment_Answers.md``) holds, for each name, a ``<!-- solution: <name> -->``
line followed by a ```python block that replaces the whole cell. The completed notebook has
no FIXME left and none of the template's tags that skip a cell or expect it to fail.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import nbformat

from .config import REPO_ROOT
from .grade_intake import SKIPPING_TAGS
from .submission_code import EXERCISE, TEMPLATE

KEY = REPO_ROOT / "answers" / "06_Assessment_Answers.md"
SOLUTION = re.compile(r"<!--\s*solution:\s*(\w+)\s*-->\s*```python\n(.*?)```", re.S)


def solutions(key: Path = KEY) -> dict[str, str]:
    """Exercise name -> the key's code for that cell."""
    return {name: src.strip("\n") for name, src in SOLUTION.findall(key.read_text())}


def fill(template: Path = TEMPLATE, key: Path = KEY):
    """The template notebook with every exercise cell replaced by its solution."""
    nb = nbformat.read(template, as_version=4)
    answers = solutions(key)
    for cell in nb.cells:
        match = EXERCISE.match(cell.source) if cell.cell_type == "code" else None
        if match:
            name = match.group(1)
            if name not in answers:
                raise KeyError(f"the key {key} has no solution for exercise {name!r}")
            cell.source = answers[name]
            cell.outputs, cell.execution_count = [], None
        if "tags" in cell.get("metadata", {}):
            cell.metadata["tags"] = [t for t in cell.metadata["tags"]
                                     if t not in SKIPPING_TAGS]
    return nb


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="where to write the completed notebook")
    parser.add_argument("--template", type=Path, default=TEMPLATE)
    parser.add_argument("--key", type=Path, default=KEY)
    args = parser.parse_args(argv)
    nb = fill(args.template, args.key)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
