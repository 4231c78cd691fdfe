"""What the bench scripts share: the judge's figures of a set of samples, and the report every
script ends with (its Markdown table printed, then written with its JSON beside the scripts)."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from course_lib.metrics import class_shares, sample_quality

HERE = Path(__file__).resolve().parent


def judged_figures(samples: torch.Tensor) -> dict:
    """The 16×16 FashionMNIST judge on ``samples``: recognised share, Fréchet distance, and the
    smallest and largest class share, rounded as the tables print them."""
    q, shares = sample_quality(samples), class_shares(samples)
    return {"recognised": round(q.recognisable, 3), "frechet": round(q.frechet, 1),
            "min_class_share": round(shares.min().item(), 3),
            "max_class_share": round(shares.max().item(), 3)}


def write_report(stem: str, lines: list[str], data: dict) -> str:
    """Print ``lines`` and write them to bench/<stem>.md, and ``data`` to bench/<stem>.json."""
    text = "\n".join(lines) + "\n"
    print(text)
    (HERE / f"{stem}.md").write_text(text)
    (HERE / f"{stem}.json").write_text(json.dumps(data, indent=1) + "\n")
    return text
