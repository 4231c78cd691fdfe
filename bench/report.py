"""What the bench scripts share: the judge's figures of a set of samples, the share of their
pixel values at the ends of the colour range, the machine it ran on,
and the report every script ends with (its Markdown table printed, then written with its JSON
beside the scripts)."""
from __future__ import annotations

import json
import platform
from pathlib import Path

import torch

from course_lib import ddpm
from course_lib.metrics import class_shares, sample_quality

HERE = Path(__file__).resolve().parent


SCHEDULES = {"linear": ddpm.linear_schedule, "scaled": ddpm.scaled_linear_schedule,
             "cosine": ddpm.cosine_schedule}
"""The noise schedules recipe rows name: 02's linear (ᾱ_T = 0.22), scaled linear (03's fix), cosine."""


def pending(rows: list, done: list[dict], only: str | None) -> list:
    """The rows still to run: those not in ``done`` (an earlier run's results, for --append) and,
    with ``only``, those whose name starts with one of its comma-separated prefixes."""
    ran = {r["name"] for r in done}
    return [row for row in rows if row.name not in ran
            and (not only or row.name.startswith(tuple(only.split(","))))]


def judged_figures(samples: torch.Tensor) -> dict:
    """The 16×16 FashionMNIST judge on ``samples``: recognised share, Fréchet distance, and the
    smallest and largest class share, rounded as the tables print them."""
    q, shares = sample_quality(samples), class_shares(samples)
    return {"recognised": round(q.recognisable, 3), "frechet": round(q.frechet, 1),
            "min_class_share": round(shares.min().item(), 3),
            "max_class_share": round(shares.max().item(), 3)}


AT_LIMITS = 0.95
"""|x| at or above this counts as the end of the colour range (images in [-1, 1])."""


def at_limits(images: torch.Tensor) -> float:
    """Share of pixel values at the ends of the range, |x| ≥ AT_LIMITS: where burnt,
    over-saturated colours (and unclipped samples) pile up. Real flower photos: about 5%."""
    return (images.abs() >= AT_LIMITS).float().mean().item()


def device_name() -> str:
    """Where a bench ran, as its tables name it: the CUDA device, or the CPU threads and machine."""
    return (torch.cuda.get_device_name() if torch.cuda.is_available()
            else f"{torch.get_num_threads()} CPU threads, {platform.machine()}")


def stream_text(notebook: Path) -> str:
    """Everything an executed notebook printed (its code cells' stream outputs), one output per
    line: where run_notebooks.py reads each headline and nb05_epochs.py its figures."""
    cells = json.loads(Path(notebook).read_text())["cells"]
    return "\n".join("".join(o.get("text", "")) for c in cells if c["cell_type"] == "code"
                     for o in c.get("outputs", []) if o.get("output_type") == "stream")


def write_report(stem: str, lines: list[str], data: dict) -> str:
    """Print ``lines`` and write them to bench/<stem>.md, and ``data`` to bench/<stem>.json."""
    text = "\n".join(lines) + "\n"
    print(text)
    (HERE / f"{stem}.md").write_text(text)
    (HERE / f"{stem}.json").write_text(json.dumps(data, indent=1) + "\n")
    return text
