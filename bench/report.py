"""What every bench script ends with: print its Markdown table, then write it and its JSON beside the scripts."""
from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).resolve().parent


def write_report(stem: str, lines: list[str], data: dict) -> str:
    """Print ``lines`` and write them to bench/<stem>.md, and ``data`` to bench/<stem>.json."""
    text = "\n".join(lines) + "\n"
    print(text)
    (HERE / f"{stem}.md").write_text(text)
    (HERE / f"{stem}.json").write_text(json.dumps(data, indent=1) + "\n")
    return text
