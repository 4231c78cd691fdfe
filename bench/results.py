"""Refresh the tables in bench/RESULTS.md from the files the benchmark scripts wrote.

    python bench/results.py

RESULTS.md is prose around tables. Each table sits between ``<!-- table: NAME -->`` and
``<!-- end -->`` and is replaced by the current contents of ``bench/NAME.md`` (written by
``samplers.py``, ``throughput.py``, ``run_notebooks.py`` and ``grade_key.py``), so the figures
quoted there are always those of the last real run.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "RESULTS.md"
BLOCK = re.compile(r"(<!-- table: (\S+) -->\n)(.*?)(<!-- end -->)", re.S)


def refresh(text: str) -> str:
    """``text`` with every table block replaced by its source file."""
    def replace(match: re.Match) -> str:
        source = BENCH / f"{match.group(2)}.md"
        if not source.is_file():
            raise FileNotFoundError(f"RESULTS.md wants {source.name}; run the script that writes it")
        return match.group(1) + source.read_text().strip() + "\n" + match.group(4)
    return BLOCK.sub(replace, text)


def main() -> int:
    text = RESULTS.read_text()
    new = refresh(text)
    RESULTS.write_text(new)
    print(f"{RESULTS}: {len(BLOCK.findall(new))} tables refreshed"
          + ("" if new != text else " (no change)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
