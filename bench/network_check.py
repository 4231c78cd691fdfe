"""Measure the grader's "drawn from the network" check on real samplers and on network-free ones.

    python bench/network_check.py [--sets 20] [--profile full]

The grader draws a fifth of the hidden labels once more after shuffling every network weight of
the exported ``sample_digits`` (``course_lib/grade_runner.py::shuffle_weights``) and rejects the
submission when the judge reads ``SHUFFLED_LIMIT`` or more of those pictures as the digits asked
for, or when they are still handwriting, whatever their digits: within the Fréchet limit, ink in
strokes on a plain background, mostly distinct pictures (``course_lib/grade_checks.py::check_from_network``,
``still_handwriting``). This script:

1. runs the answer-key notebook once, as the grader's first step does but without the sandbox (it
   is trusted), to export its ``sample_digits``;
2. in a fresh process, draws ``--sets`` sets of labels of the size of the grader's shuffled draw
   (a fifth of ~100 hidden labels), each from a fresh copy of the export whose weights are
   shuffled with another seed, and one set with the weights as trained, for reference;
3. judges every set with the grader's judge; the cheats of ``tests/adversarial/cheats.py`` and
   stored real digits use no network, so their shuffled draw is their ordinary one; "routed"
   rows are stored digits that a classifier in the notebook picks for each label, so their
   shuffled draw holds digits of random classes (the classifier's weights are shuffled too).

The key must pass (its reject rate is the false-reject rate); the network-free samplers must fail.
Writes ``bench/network_check.md`` and ``bench/network_check.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from course_lib import answer_key, grade, grade_checks as gc  # noqa: E402
from grading_checks import MUST_PASS, _cheats, sources  # noqa: E402
from report import write_report  # noqa: E402  (bench/report.py)

DRAW = """
import json, pickle, sys, torch
from course_lib.grade_runner import shuffle_weights
export, spec, out = sys.argv[1:]
sets = json.loads(open(spec).read())
draws = []
for k, labels in enumerate(sets):
    with open(export, "rb") as f:
        sample_digits = pickle.load(f)          # a fresh copy of the trained network each time
    if k > 0:                                   # set 0: the weights as trained
        shuffle_weights(torch.Generator().manual_seed(k))
    torch.manual_seed(k)
    try:
        with torch.no_grad():
            draws.append(sample_digits(torch.tensor(labels)).float().cpu())
    except Exception as err:
        draws.append(torch.empty(0))
    print(f"set {k}: {len(labels)} labels", flush=True)
torch.save(draws, out)
"""


def shuffled_sets(sets: int) -> list[list[int]]:
    """Labels as the grader's shuffled draw has them: a fifth of ~10 of each digit."""
    out = []
    for s in range(sets):
        g = torch.Generator().manual_seed(2000 + s)
        labels = grade.hidden_labels(10, g)
        keep = max(20, round(grade.SECOND_DRAW * len(labels)))
        out.append([labels[i] for i in torch.randperm(len(labels), generator=g)[:keep].tolist()])
    return out


def key_draws(label_sets: list[list[int]], profile: str, workdir: Path) -> tuple[list, float]:
    """Set 0 with the key's trained weights, then one set per shuffle of them."""
    import nbformat

    notebook, export = workdir / "key.ipynb", workdir / "export.pkl"
    nbformat.write(answer_key.fill(), notebook)
    env = dict(os.environ, COURSE_PROFILE=profile)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "course_lib.grade_runner", "execute", str(notebook),
                    str(export), str(workdir / "error.json")], check=True, env=env, cwd=ROOT)
    (workdir / "sets.json").write_text(json.dumps(label_sets))
    subprocess.run([sys.executable, "-c", DRAW, str(export), str(workdir / "sets.json"),
                    str(workdir / "draws.pt")], check=True, env=env, cwd=ROOT)
    return torch.load(workdir / "draws.pt", weights_only=True), time.perf_counter() - start


def read_as_asked(judge: gc.Judge, images: torch.Tensor, labels: list[int]) -> tuple:
    """The check's figures for one set: (share read as asked for, ``shuffled_realism``'s dict);
    (None, None): no pictures."""
    asked = torch.tensor(labels)
    return gc.shuffled_share(images, asked, judge), gc.shuffled_realism(images, asked, judge)


def routed(source):
    """``source``'s pictures for random labels: what a classifier (its weights shuffled) picks."""
    def pick(labels: torch.Tensor, seed: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(10_000 + seed)
        return source(torch.randint(0, 10, (len(labels),), generator=g), seed)
    return pick


def judge_routed(source):
    """``source``'s pictures of random classes, 8 per label asked for, and for each label one that
    the course's classifier, its weights shuffled as the grader shuffles them (each tensor's
    entries in a random order), reads as that label, or any where it reads none so: the routing
    cheat of tests/test_grade_attacks.py (``u_router``) in its shuffled draw."""
    from course_lib.classifier import load_classifier

    def pick(labels: torch.Tensor, seed: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(20_000 + seed)
        classifier = load_classifier("mnist")
        with torch.no_grad():   # this classifier's own weights only: the bench's judge stays
            for tensor in (*classifier.parameters(), *classifier.buffers()):
                if tensor.is_floating_point() and tensor.numel() > 1:
                    flat = tensor.reshape(-1).clone()
                    tensor.copy_(flat[torch.randperm(flat.numel(), generator=g)].reshape(tensor.shape))
            pool = source(torch.randint(0, 10, (8 * len(labels),), generator=g), seed)
            read = classifier(pool.float()).argmax(1)
        picked = []
        for label in labels.tolist():
            found = (read == label).nonzero()[:, 0]
            found = found if len(found) else torch.arange(len(pool))
            picked.append(pool[found[torch.randint(len(found), (1,), generator=g)]])
        return torch.cat(picked)
    return pick


def _dots(labels: torch.Tensor, seed: int) -> torch.Tensor:
    """Scattered white dots on black (a tenth of the pixels): thresholded noise."""
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(len(labels), 1, 28, 28, generator=g) < 0.1).float() * 2 - 1


def _smooth_noise(labels: torch.Tensor, seed: int) -> torch.Tensor:
    """Noise blurred over 5 pixels: blobs, as an upsampling network's last layer may leave."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(len(labels), 1, 32, 32, generator=g)
    return torch.nn.functional.avg_pool2d(noise, 5, 1).mul(3).clamp(-1, 1)


# what else a shuffled network may draw: must never read as handwriting
STAND_INS = {"stand-in: one black picture": lambda labels, seed: -torch.ones(len(labels), 1, 28, 28),
             "stand-in: scattered dots": _dots, "stand-in: blurred noise": _smooth_noise}


def _spread(values: list) -> dict:
    drawn = [v for v in values if v is not None]
    return {"mean": sum(drawn) / len(drawn) if drawn else None,
            "min": min(drawn, default=None), "max": max(drawn, default=None)}


def summarise(figures: list[tuple]) -> dict:
    shares = [s for s, _ in figures]
    realism = [r for _, r in figures]
    drawn = [s for s in shares if s is not None]
    handwriting = [gc.still_handwriting(r) for r in realism]
    rejected = [s is not None and (s >= gc.SHUFFLED_LIMIT or h) for s, h in zip(shares, handwriting)]
    return {"sets": len(shares), "no_pictures": len(shares) - len(drawn), "shares": shares,
            **_spread(shares), "realism": realism,
            "ratio": _spread([r and r["frechet_over_limit"] for r in realism]),
            "strokes": _spread([r and r["strokes"] for r in realism]),
            "handwriting": sum(handwriting) / len(figures), "rejected": sum(rejected) / len(figures)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", type=int, default=20)
    parser.add_argument("--profile", default="full", choices=("full", "test"))
    args = parser.parse_args(argv)
    start = time.perf_counter()
    label_sets = shuffled_sets(args.sets + 1)
    with tempfile.TemporaryDirectory() as tmp:
        draws, seconds = key_draws(label_sets, args.profile, Path(tmp))
    judge = gc.load_judge()
    trained = read_as_asked(judge, draws[0], label_sets[0])[0]
    results = {"answer key, weights shuffled": summarise(
        [read_as_asked(judge, d, labels) for d, labels in zip(draws[1:], label_sets[1:])])}
    for name, source in STAND_INS.items():
        results[name] = summarise([read_as_asked(judge, source(torch.tensor(labels), s), labels)
                                   for s, labels in enumerate(label_sets[1:])])
    key_samples = ROOT / "bench" / "out" / "key_samples.pt"   # a retrieval source here: left out
    stored = {k: v for k, v in sources(key_samples).items() if k != MUST_PASS[1]}
    cheats = _cheats()
    stored.update({"real held-out test digits, routed": routed(cheats.held_out_real),
                   "elastic, routed": routed(cheats.elastic),
                   "affine, routed": routed(cheats.affine),
                   "elastic, routed by the course's judge, shuffled": judge_routed(cheats.elastic)})
    for name, source in stored.items():
        results[name] = summarise([read_as_asked(judge, source(torch.tensor(labels), s).float(), labels)
                                   for s, labels in enumerate(label_sets[1:])])
    n = len(label_sets[1])
    lines = [f"The grader's \"drawn from the network\" check: {args.sets} sets of about {n} labels (the "
             f"size of its shuffled draw), each drawn after shuffling every network weight; a set is "
             f"rejected when the judge reads {gc.SHUFFLED_LIMIT:.0%} or more as asked for, or when it is "
             f"still handwriting, of whatever digits: its Fréchet distance to real digits within the "
             f"limit samples keep (a ratio of 1 or less), at least {gc.PLAIN_SHARE:.0%} plain "
             f"background, strokes (neighbouring pixels correlating {gc.STROKES} or more) and at least "
             f"{gc.DISTINCT_SHARE:.0%} of its pictures distinct. The answer "
             f"key ({args.profile} profile; its notebook and draws took {seconds:.0f} s) reads "
             f"{trained:.0%} of its reference set with the weights as trained; the other samplers use "
             f"no network, so shuffling leaves their pictures as they are. "
             f"{time.perf_counter() - start:.0f} s on {os.cpu_count()} CPU cores.", "",
             "| sampler | must | sets | no pictures | read as asked for, mean (min-max) "
             "| Fréchet distance / limit, mean (min-max) | strokes, mean (min-max) "
             "| still handwriting | rejected |",
             "|---|---|---|---|---|---|---|---|---|"]

    def spread(q: dict, form: str) -> str:
        return "-" if q["mean"] is None else f"{q['mean']:{form}} ({q['min']:{form}}-{q['max']:{form}})"
    for name, r in results.items():
        must = "pass" if name.startswith(("answer key", "stand-in")) else "fail"
        lines.append(f"| {name} | {must} | {r['sets']} | {r['no_pictures']} | {spread(r, '.0%')} | "
                     f"{spread(r['ratio'], '.2f')} | {spread(r['strokes'], '.2f')} | "
                     f"{r['handwriting']:.0%} | {r['rejected']:.0%} |")
    lines += ["", "\"real held-out test digits\" here are stored real pictures returned by a sampler: "
              "retrieval, which must fail. \"Routed\" rows are stored pictures that a classifier "
              "in the notebook picks for each label: with its weights shuffled it picks digits at "
              "random (or, where it reads a label in only a few of them, the same few again), "
              "which few read as asked for, but they are still handwriting. \"Stand-in\" "
              "rows are what other shuffled networks may draw, which must pass."]
    write_report("network_check", lines, {"trained_share": trained, "limit": gc.SHUFFLED_LIMIT,
                                          "strokes": gc.STROKES, "plain_share": gc.PLAIN_SHARE,
                                          "distinct_share": gc.DISTINCT_SHARE,
                                          "profile": args.profile, "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
