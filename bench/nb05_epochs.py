"""Notebook 05 run in full with its UNet trained for 20 epochs and for 40: what each run printed.

    python bench/nb05_epochs.py --add "40 epochs" run_with_40.ipynb   # one executed notebook 05
    python bench/nb05_epochs.py                                         # the table, from the rows kept

Rows X16-X19 of bench/clip_context.md measured 40 epochs against 20 on the bench's samples; this
keeps the notebook's own figures from a full run of each, read from the executed notebook's
stored outputs (UNet seconds and final loss, the species shares of section 8, the CLIP score of
the prompts' own and shifted samples, and the negative prompts' shares), so that RESULTS section
17 can cite both. Writes bench/nb05_epochs.md and .json; ``--add`` replaces a row of the same label.
"""
from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from report import stream_text, write_report  # bench/report.py

HERE = Path(__file__).resolve().parent
PATTERNS = {   # figure -> the line of notebook 05's output it is read from
    "unet_epochs": r"unet epochs=(\d+)",
    "final_loss": r"final loss ([\d.]+); \d+ s\n",
    "unet_s": r"final loss [\d.]+; (\d+) s\n",
    "training_wordings": r"training wordings: ([\d.]+)% of samples",
    "new_wordings": r"new wordings: ([\d.]+)% of samples",
    "clip_score": r"CLIP score, own prompt: +(-?[\d.]+)",
    "clip_score_shifted": r"CLIP score, shifted prompt: (-?[\d.]+)",
    "rose": r"a photo of a red rose +(\d+)% of 40",
    "rose_not_tulip": r"avoiding “a photo of a tulip” +(\d+)% of 40",
    "sunflower": r"a photo of a yellow sunflower +(\d+)% of 40",
    "sunflower_not_sky": r"avoiding “sunflowers against the sky” +(\d+)% of 40",
}


def figures(notebook: Path) -> dict:
    """The figures of PATTERNS, from ``notebook``'s outputs; a missing one is an error naming it."""
    text, found = stream_text(notebook), {}
    for name, pattern in PATTERNS.items():
        match = re.search(pattern, text)
        if match is None:
            raise SystemExit(f"{notebook}: no output matches {name!r} ({pattern}); is it an "
                             "executed full-profile notebook 05?")
        found[name] = float(match.group(1))
    return found


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--add", nargs=2, metavar=("LABEL", "NOTEBOOK"),
                        help="read an executed notebook 05 and keep its figures under LABEL")
    args = parser.parse_args(argv)
    path = HERE / "nb05_epochs.json"
    rows = json.loads(path.read_text())["rows"] if path.is_file() else []
    if args.add:
        label, notebook = args.add
        rows = [r for r in rows if r["label"] != label] + [{"label": label, **figures(Path(notebook))}]
    lines = ["Notebook 05 run in full on 2 CPU cores with AMX (bfloat16), its UNet trained for the "
             "epochs given, everything else as the notebook does: the figures it printed (species "
             "shares of 100 samples per wording set, CLIP score of 42 samples, 6 for each of 7 prompts, negative prompts of "
             "40 samples each).", "",
             "| run | UNet epochs | UNet s | final loss | training wordings | new wordings "
             "| CLIP score (shifted) | rose / avoiding tulip | sunflower / avoiding sky |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['label']} | {r['unet_epochs']:.0f} | {r['unet_s']:.0f} | {r['final_loss']:.4f} "
                     f"| {r['training_wordings']:.1f}% | {r['new_wordings']:.1f}% "
                     f"| {r['clip_score']:.3f} ({r['clip_score_shifted']:.3f}) "
                     f"| {r['rose']:.0f}% / {r['rose_not_tulip']:.0f}% "
                     f"| {r['sunflower']:.0f}% / {r['sunflower_not_sky']:.0f}% |")
    write_report("nb05_epochs", lines, {"rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
