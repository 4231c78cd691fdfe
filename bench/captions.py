"""How often 05's captions name the colour a person sees: course_clip.dominant_colour against hand labels.

    python bench/captions.py

bench/caption_labels.json holds the dominant flower colour of 120 photos (two sets of 12 per
species), labelled by a person looking at each photo at its full 128-px size. Each photo is loaded
exactly as 05 loads it (32×32, short side resized, centre-cropped) and its colour measured by
``course_clip.dominant_colour``; the agreement is the share of labelled photos where both name the
same colour. The "tuning" set may guide changes to the captioner; the "held_out" set only reports.
Writes bench/captions.md and bench/captions.json (agreement per set and species, every miss).
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import torchvision

from course_lib import clip as course_clip
from course_lib.data import find_data_root, image_transform
from report import write_report  # bench/report.py

HERE = Path(__file__).resolve().parent
SETS = ("tuning", "held_out")


def agreement(labels: dict, folder: Path) -> dict:
    """Agreement of the caption colour with the person's label, overall and per species."""
    to_32 = image_transform(32, 3)
    hits, total, misses = Counter(), Counter(), []
    for rel, colour in labels.items():
        if colour is None:
            continue
        image = to_32(torchvision.io.decode_image(str(folder / rel),
                                                  mode=torchvision.io.ImageReadMode.RGB))
        measured = course_clip.dominant_colour(image)
        species = rel.split("/")[0]
        total[species] += 1
        hits[species] += measured == colour
        if measured != colour:
            misses.append({"photo": rel, "person": colour, "caption": measured})
    return {"agree": sum(hits.values()), "labelled": sum(total.values()),
            "agreement": round(sum(hits.values()) / sum(total.values()), 3),
            "left_out": len(labels) - sum(total.values()),
            "per_species": {s: [hits[s], total[s]] for s in sorted(total)}, "misses": misses}


def main() -> int:
    labels = json.loads((HERE / "caption_labels.json").read_text())
    folder = find_data_root("flowers") / "flowers"
    result = {name: agreement(labels[name], folder) for name in SETS}
    lines = ["Caption colours (course_clip.dominant_colour, on 05's 32×32 photos) against a "
             "person's labels (bench/caption_labels.json; photos with no visible flower colour "
             "left out).", "", "| species | " + " | ".join(SETS) + " |", "|---|---|---|"]
    for species in result[SETS[0]]["per_species"]:
        lines.append(f"| {species} | " + " | ".join(
            "{} of {}".format(*result[s]["per_species"][species]) for s in SETS) + " |")
    lines.append("| **all** | " + " | ".join(
        f"**{result[s]['agree']} of {result[s]['labelled']} ({result[s]['agreement']:.0%})**"
        for s in SETS) + " |")
    lines += ["", "Misses on the held-out set:", "", "| photo | person | caption |", "|---|---|---|"]
    lines += [f"| {m['photo']} | {m['person']} | {m['caption']} |" for m in result["held_out"]["misses"]]
    write_report("captions", lines, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
