"""What an attacker with judges of their own training gets past the grader, with no model at all.

    python bench/transfer_ascent.py [--sets 3] [--own 3]

``tests/adversarial/cheats.py::judge_ascent`` optimises pixels from noise until the course's public
judge reads the label asked for. The grader's private judges (trained from secret seeds by the
public recipe) disputed every such set (section 22). An attacker can train judges of their own by
that same recipe (``--own`` of them, seeds 101, 102, ..., about a minute each) and tune against
them too, so that more carries over to the private ones. Five attacks, from the plain one to one
tuned against every check:

* ``public``: the plain ascent against the course's judge;
* ``+ own``: also read as the label by the attacker's judges;
* ``+ own, features``: also matching a real digit's features in each of them;
* ``+ own, features, ink w``: also pulled towards a black background (weight w), against the
  plain-background check.

Each reads ``--sets`` sets of about 100 samples with hidden-style labels, as do three sources that
must pass: real held-out test digits, the answer key's samples, and those samples made grainy
(Gaussian noise of 0.3, clamped: a weaker sampler). Per source: the course's judge, the private
judges (seeds 1 to 6, as in bench/private_judges.py: a set is disputed when the strictest of three
reads more than ``SECOND_OPINION_GAP`` fewer as asked for, over every choice of three), the
Fréchet distance in the private judges' own features (a measured alternative: the highest of
three over real digits' own), the share of plain background (``grade_checks.plain_share``), and
the grader's verdict: every check of ``bench/grading_checks.py`` (near-copies, realism, accuracy,
second opinion by seeds 1 to 3) and the plain background. Writes bench/transfer_ascent.md, .json
and .png (one row of samples per source).
"""
from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from course_lib import grade, grade_checks as gc  # noqa: E402
from course_lib.data import load_mnist  # noqa: E402
from course_lib.viz import show_rows  # noqa: E402
from grading_checks import MUST_PASS, _cheats, _key_source, seeded_judge, verdict  # noqa: E402  (bench/)
from report import write_report  # noqa: E402  (bench/report.py)

GRAINY = "answer key samples, grainy (noise 0.3)"
PRIVATE = range(1, 7)          # the private judges' seeds (section 22's six)
OWN = 101                      # the attacker's judges' first seed


def feature_space(network: torch.nn.Module, public: gc.Judge, real: torch.Tensor) -> gc.Judge:
    """A private judge as a ``grade_checks.Judge``: its own features of real MNIST test digits
    (those the grader's reference keeps), for a Fréchet distance there."""
    space = gc.Judge(network, public.images, public.labels, public.coarse)
    feats = space.features(real).double()
    space.real_mean, space.real_cov = feats.mean(0), torch.cov(feats.T)
    return space


def private_ratio(space: gc.Judge, images: torch.Tensor, labels: torch.Tensor) -> float:
    """The Fréchet distance in ``space`` over what real digits with these labels reach there."""
    return (gc.frechet(space.features(images), space.real_mean, space.real_cov)
            / gc.real_frechet(space, labels))


def attacks(cheats, own: list[torch.nn.Module]) -> dict:
    """Name -> ``source(labels, seed)``: the five ascents, each a step past the last."""
    ascent = cheats.judge_ascent
    n = len(own)
    return {"judge ascent (no model): public": ascent,
            f"+ {n} own judges": lambda lab, s: ascent(lab, s, own_judges=own),
            f"+ {n} own judges, features": lambda lab, s: ascent(lab, s, own_judges=own, match_own=True),
            f"+ {n} own judges, features, ink 10": lambda lab, s: ascent(lab, s, own_judges=own, match_own=True, ink=10.0),
            f"+ {n} own judges, features, ink 30": lambda lab, s: ascent(lab, s, own_judges=own, match_own=True, ink=30.0)}


def grainy(key):
    def source(labels: torch.Tensor, seed: int) -> torch.Tensor:
        images = key(labels, seed)
        g = torch.Generator().manual_seed(seed)
        return (images + 0.3 * torch.randn(images.shape, generator=g)).clamp(-1, 1)
    return source


def save_rows(rows: dict[str, torch.Tensor], path: Path) -> None:
    """One row of ten samples (digits 0 to 9) per source, each row named."""
    fig = show_rows(list(rows.values()), [name.replace(": ", ":\n").replace(", ", ",\n", 1)
                                          for name in rows],
                    columns=[f"asked: {d}" for d in range(10)],
                    title="Samples by source (one per digit asked for); bench/transfer_ascent.py")
    fig.savefig(path, dpi=110, bbox_inches="tight")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", type=int, default=3)
    parser.add_argument("--own", type=int, default=3)
    parser.add_argument("--key", type=Path, default=ROOT / "bench" / "out" / "key_samples.pt")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    cheats = _cheats()
    public = gc.load_judge(hold_out=gc.HOLD_OUT)
    private = {seed: seeded_judge(seed) for seed in PRIVATE}
    test = load_mnist(size=28, train=False)
    real = test.images[:len(test.images) - gc.HOLD_OUT]
    spaces = {seed: feature_space(net, public, real) for seed, net in private.items()}
    public.second = [private[seed] for seed in (1, 2, 3)]   # the grader's verdict asks three
    own = [seeded_judge(OWN + i).requires_grad_(False) for i in range(args.own)]
    key = _key_source(args.key)
    sources = {MUST_PASS[0]: cheats.held_out_real, MUST_PASS[1]: key, GRAINY: grainy(key),
               **attacks(cheats, own)}
    must_pass = (*MUST_PASS, GRAINY)
    seeds = [str(s) for s in PRIVATE]
    results, shown = {}, {}
    for name, source in sources.items():
        rows = []
        for s in range(args.sets):
            labels = torch.tensor(grade.hidden_labels(10, torch.Generator().manual_seed(2000 + s)))
            t0 = time.perf_counter()
            images = source(labels, 100 + s).float()
            seconds = time.perf_counter() - t0
            if s == 0:
                firsts = [int((labels == d).nonzero()[0, 0]) for d in range(10)]
                shown[name] = images[firsts]
            with torch.no_grad():
                reads = {str(seed): (net(images).argmax(1) == labels).float().mean().item()
                         for seed, net in private.items()}
            checks = verdict(images, labels, public)   # the grader's, bench/grading_checks.py
            row = {"seconds": round(seconds, 1), "public": checks["accuracy"], "reads": reads,
                   "copies": checks["copies"], "ratio": checks["ratio"],
                   "private_ratios": {str(seed): private_ratio(sp, images, labels)
                                      for seed, sp in spaces.items()},
                   "plain": checks["plain"], "caught": checks["rejected"],
                   "caught_before": any(checks[k] for k in ("memorised", "unrealistic",
                                                             "low_accuracy", "disputed"))}
            rows.append(row)
            print(name, s, {k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()
                            if k not in ("reads", "private_ratios")}, flush=True)

        def disputed(row, chosen):
            return any(row["reads"][c] < row["public"] - gc.SECOND_OPINION_GAP for c in chosen)
        triples = list(itertools.combinations(seeds, 3))
        mean = lambda field: sum(r[field] for r in rows) / len(rows)  # noqa: E731
        results[name] = {
            "must": "pass" if name in must_pass else "fail", "rows": rows,
            "public": mean("public"),
            "strictest_of_three": sum(min(r["reads"][c] for c in t) for r in rows for t in triples)
            / (len(rows) * len(triples)),
            "disputed": sum(disputed(r, t) for r in rows for t in triples) / (len(rows) * len(triples)),
            "private_ratio": sum(max(r["private_ratios"][c] for c in t) for r in rows for t in triples)
            / (len(rows) * len(triples)),
            "ratio": mean("ratio"), "plain": mean("plain"), "plain_lowest": min(r["plain"] for r in rows),
            "caught_before": mean("caught_before"), "caught": mean("caught"),
            "seconds_per_set": mean("seconds")}
    save_rows(shown, ROOT / "bench" / "transfer_ascent.png")
    figures = {"sets": args.sets, "own_judges": args.own, "gap": gc.SECOND_OPINION_GAP,
               "plain_share": gc.PLAIN_SHARE, "plain_margin": gc.PLAIN_MARGIN,
               "frechet_ratio": gc.FRECHET_RATIO, "seconds": round(time.perf_counter() - start),
               "results": results}
    lines = [f"Pixels optimised against the course's judge and {args.own} judges of the attacker's "
             f"own training, against the grader's checks: {args.sets} sets of ~100 samples per "
             f"source; private judges from seeds 1-6, a set disputed when the strictest of three "
             f"reads more than {gc.SECOND_OPINION_GAP * 100:.0f} points fewer than the course's "
             f"judge (over all 20 choices of three); plain background: the share of pixels within "
             f"{gc.PLAIN_MARGIN:g} of each picture's darkest shade (at least {gc.PLAIN_SHARE:.0%} "
             f"needed); {figures['seconds']} s on 2 CPU cores", "",
             "| source | must | course's judge | strictest of three private judges | disputed | "
             "Fréchet / real digits': course's judge | the same, private judges (highest of three) "
             "| plain background | caught before | caught with the plain background | s per set |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        lines.append(f"| {name} | {r['must']} | {r['public']:.1%} | {r['strictest_of_three']:.1%} | "
                     f"{r['disputed']:.0%} | {r['ratio']:.2f} | {r['private_ratio']:.2f} | "
                     f"{r['plain']:.0%} (lowest {r['plain_lowest']:.0%}) | {r['caught_before']:.0%} | "
                     f"{r['caught']:.0%} | {r['seconds_per_set']:.0f} |")
    lines += ["", "Limits: Fréchet ratio at most "
              f"{gc.FRECHET_RATIO:g} (the course's judge; the private judges' column is a measured "
              "alternative, not a check). Samples: bench/transfer_ascent.png."]
    write_report("transfer_ascent", lines, figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
