"""How often 05's captions name the colour a person sees: course_clip.dominant_colour against hand labels.

    python bench/captions.py

bench/caption_labels.json holds the dominant flower colour of 180 photos (three sets of 12 per
species), labelled by a person looking at each photo at its full 128-px size. Each photo is loaded
exactly as 05 loads it (32×32, short side resized, centre-cropped) and its colour measured by
``course_clip.dominant_colour``; the agreement is the share of labelled photos where both name the
same colour. The "tuning" set may guide changes to the captioner; the "held_out" sets only report
("held_out_2" was labelled after the warm-petal threshold had been chosen, from photos shown
without their captions).

Rows: the saturation from which an orange or yellow pixel counts as a petal's colour rather than
white or cream (``warm_sat``): 0.22, every other hue's threshold and the captioner's rule before
the twenty-second session, then higher values; ``course_clip.WARM_PETAL_SATURATION`` is the one
05 uses. Framing: a person's "close-up or not" for the same photos (course_lib/weights/framing_labels.json)
against the pixel rule (``course_clip.is_close_up``, on the 32-px photo and its measured colour)
and against the linear probe on the locked EfficientNet-Lite0's features that 05 uses
(``course_lib.framing.close_ups``, on the 128-px photo; it was fitted on the "tuning" set, so only
the held-out sets measure it), with "always a photo" as the floor. Writes bench/captions.md and
bench/captions.json (agreement per set and species, and the adopted rule's misses).
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import torch

from course_lib import clip as course_clip
from course_lib import framing
from report import write_report  # bench/report.py

HERE = Path(__file__).resolve().parent
SETS = ("tuning", "held_out", "held_out_2")
WARM_SATURATIONS = (0.22, 0.3, 0.4, 0.5)   # 0.22: the rule before; the rows of the table


def agreement(labels: dict, photos: dict, warm_sat: float) -> dict:
    """Agreement of the caption colour with the person's label, overall and per species."""
    hits, total, misses = Counter(), Counter(), []
    for rel, colour in labels.items():
        if colour is None:
            continue
        measured = course_clip.dominant_colour(photos[rel], warm_sat=warm_sat)
        species = rel.split("/")[0]
        total[species] += 1
        hits[species] += measured == colour
        if measured != colour:
            misses.append({"photo": rel, "person": colour, "caption": measured})
    return {"agree": sum(hits.values()), "labelled": sum(total.values()),
            "agreement": round(sum(hits.values()) / sum(total.values()), 3),
            "left_out": len(labels) - sum(total.values()),
            "per_species": {s: [hits[s], total[s]] for s in sorted(total)}, "misses": misses}


def framing_agreement(labels: dict, photos: dict) -> dict:
    """Close-up or not against the person, for the pixel rule, the probe and "always a photo"."""
    names = [rel for rel, close in labels.items() if close is not None]
    person = torch.tensor([labels[rel] for rel in names])
    images_128 = framing.labelled_photos_from(names)
    pixel = torch.tensor([course_clip.is_close_up(photos[rel]) for rel in names])
    probe = framing.close_ups(images_128)
    result = {"labelled": len(names), "close_ups": int(person.sum())}
    for name, guess in (("pixel_rule", pixel), ("probe", probe), ("always_photo", torch.zeros_like(person))):
        result[name] = int((guess == person).sum())
    return result


def main() -> int:
    labels = json.loads((HERE / "caption_labels.json").read_text())
    names = [rel for s in SETS for rel in labels[s]]
    photos = dict(zip(names, framing.labelled_photos_from(names, size=32)))   # as 05 loads them
    adopted = course_clip.WARM_PETAL_SATURATION
    sweep = {str(ws): {name: agreement(labels[name], photos, ws) for name in SETS}
             for ws in WARM_SATURATIONS}
    result = {"adopted_warm_sat": adopted, "before_warm_sat": WARM_SATURATIONS[0],
              **sweep[str(adopted)], "sweep": sweep}

    def cell(r):
        return f"{r['agree']} of {r['labelled']} ({r['agreement']:.0%})"

    lines = ["Caption colours (course_clip.dominant_colour, on 05's 32×32 photos) against a "
             "person's labels (bench/caption_labels.json; photos with no visible flower colour "
             "left out), for each saturation from which an orange or yellow pixel counts as the "
             f"petals' colour (below it, a bright one is white or cream). {WARM_SATURATIONS[0]}: "
             f"the rule before; {adopted}: the captioner's now.", "",
             "| orange and yellow from saturation | " + " | ".join(SETS) + " |",
             "|---|---|---|---|"]
    for ws in WARM_SATURATIONS:
        label = f"{ws}" + (" (before)" if ws == WARM_SATURATIONS[0] else "") + \
            (" (adopted)" if ws == adopted else "")
        lines.append(f"| {label} | " + " | ".join(cell(sweep[str(ws)][s]) for s in SETS) + " |")
    lines += ["", f"The adopted rule ({adopted}) per species:", "",
              "| species | " + " | ".join(SETS) + " |", "|---|---|---|---|"]
    for species in result[SETS[0]]["per_species"]:
        lines.append(f"| {species} | " + " | ".join(
            "{} of {}".format(*result[s]["per_species"][species]) for s in SETS) + " |")
    lines += ["", "Its misses on the held-out sets:", "", "| photo | person | caption |", "|---|---|---|"]
    lines += [f"| {m['photo']} | {m['person']} | {m['caption']} |"
              for s in SETS[1:] for m in result[s]["misses"]]
    framed = json.loads(framing.LABELS_PATH.read_text())
    result["framing"] = {name: framing_agreement(framed[name], photos) for name in SETS}
    lines += ["", "Close-up or not, against the person (course_lib/weights/framing_labels.json; the "
              "probe was fitted on the tuning set, so only the held-out sets measure it):", "",
              "| framing read by | " + " | ".join(SETS) + " |", "|---|---|---|---|"]
    for key, label in (("always_photo", '"a photo", always'),
                       ("pixel_rule", "the pixel rule (course_clip.is_close_up; before)"),
                       ("probe", "a linear probe on the locked Lite0 (course_lib.framing; adopted)")):
        lines.append(f"| {label} | " + " | ".join(
            f"{r[key]} of {r['labelled']} ({r[key] / r['labelled']:.0%})"
            for r in (result["framing"][s] for s in SETS)) + " |")
    write_report("captions", lines, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
