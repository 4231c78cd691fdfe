"""Measure the grader's "drawn from the network" check on real samplers and on network-free ones.

    python bench/network_check.py [--sets 20] [--profile full]

The grader draws a fifth of the hidden labels once more after shuffling every network weight of
the exported ``sample_digits`` (``course_lib/grade_runner.py::shuffle_weights``) and rejects the
submission when the judge reads ``SHUFFLED_LIMIT`` or more of those pictures as the digits asked
for (``course_lib/grade_checks.py::check_from_network``). This script:

1. runs the answer-key notebook once, as the grader's first step does but without the sandbox (it
   is trusted), to export its ``sample_digits``;
2. in a fresh process, draws ``--sets`` sets of labels of the size of the grader's shuffled draw
   (a fifth of ~100 hidden labels), each from a fresh copy of the export whose weights are
   shuffled with another seed, and one set with the weights as trained, for reference;
3. judges every set with the grader's judge; the cheats of ``tests/adversarial/cheats.py`` and
   stored real digits use no network, so their shuffled draw is their ordinary one.

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
from grading_checks import MUST_PASS, sources  # noqa: E402
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


def read_as_asked(judge: gc.Judge, images: torch.Tensor, labels: list[int]) -> float | None:
    """The check's figure for one set (None: no pictures)."""
    return gc.shuffled_share(images, torch.tensor(labels), judge)


def summarise(shares: list) -> dict:
    drawn = [s for s in shares if s is not None]
    return {"sets": len(shares), "no_pictures": len(shares) - len(drawn), "shares": shares,
            "mean": sum(drawn) / len(drawn) if drawn else None,
            "min": min(drawn, default=None), "max": max(drawn, default=None),
            "rejected": sum(s is not None and s >= gc.SHUFFLED_LIMIT for s in shares) / len(shares)}


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
    trained = read_as_asked(judge, draws[0], label_sets[0])
    results = {"answer key, weights shuffled": summarise(
        [read_as_asked(judge, d, labels) for d, labels in zip(draws[1:], label_sets[1:])])}
    key_samples = ROOT / "bench" / "out" / "key_samples.pt"   # a retrieval source here: left out
    stored = {k: v for k, v in sources(key_samples).items() if k != MUST_PASS[1]}
    for name, source in stored.items():
        results[name] = summarise([read_as_asked(judge, source(torch.tensor(labels), s).float(), labels)
                                   for s, labels in enumerate(label_sets[1:])])
    n = len(label_sets[1])
    lines = [f"The grader's \"drawn from the network\" check: {args.sets} sets of about {n} labels (the "
             f"size of its shuffled draw), each drawn after shuffling every network weight; a set is "
             f"rejected when the judge reads {gc.SHUFFLED_LIMIT:.0%} or more as asked for. The answer "
             f"key ({args.profile} profile; its notebook and draws took {seconds:.0f} s) reads "
             f"{trained:.0%} of its reference set with the weights as trained; the other samplers use "
             f"no network, so shuffling leaves their pictures as they are. "
             f"{time.perf_counter() - start:.0f} s on {os.cpu_count()} CPU cores.", "",
             "| sampler | must | sets | no pictures | read as asked for, mean (min-max) | rejected |",
             "|---|---|---|---|---|---|"]
    for name, r in results.items():
        must = "pass" if name.startswith("answer key") else "fail"
        share = "-" if r["mean"] is None else f"{r['mean']:.0%} ({r['min']:.0%}-{r['max']:.0%})"
        lines.append(f"| {name} | {must} | {r['sets']} | {r['no_pictures']} | {share} | "
                     f"{r['rejected']:.0%} |")
    lines += ["", "\"real held-out test digits\" here are stored real pictures returned by a sampler: "
              "retrieval, which must fail."]
    write_report("network_check", lines, {"trained_share": trained, "limit": gc.SHUFFLED_LIMIT,
                                          "profile": args.profile, "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
