"""How often the grader's second opinion catches pixels optimised against the course's judge,
with one private judge (today) and with the strictest of three (a measured alternative).

    python bench/private_judges.py [--judges 6] [--sets 8]

Trains ``--judges`` private judges by the grader's recipe (``grade_checks.ensure_private_judge``:
one epoch of ``classifier.train_classifier``) from seeds 1, 2, …, kept in bench/out. Each reads
``--sets`` sets of about 100 samples with hidden-style labels from three sources: real MNIST test
digits the grader's reference leaves out and the answer key's samples (both must pass), and
``tests/adversarial/cheats.py::judge_ascent`` (no model; must fail). A judge disputes a set when it
reads more than ``grade_checks.SECOND_OPINION_GAP`` fewer samples as asked for than the course's
judge does. The rule of three disputes a set when any of three judges does; it is counted over
every choice of three of the trained judges. Writes bench/private_judges.md and .json.
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
from grading_checks import MUST_PASS, _cheats, _key_source, seeded_judge  # noqa: E402  (bench/)
from report import write_report  # noqa: E402  (bench/report.py)

ASCENT = "judge ascent (no model)"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--judges", type=int, default=6)
    parser.add_argument("--sets", type=int, default=8)
    parser.add_argument("--key", type=Path, default=ROOT / "bench" / "out" / "key_samples.pt")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    cheats = _cheats()
    public = gc.load_judge(hold_out=gc.HOLD_OUT)
    judges = {seed: seeded_judge(seed) for seed in range(1, args.judges + 1)}
    sources = {MUST_PASS[0]: cheats.held_out_real, MUST_PASS[1]: _key_source(args.key),
               ASCENT: cheats.judge_ascent}
    reads: dict[str, list[dict]] = {}
    for name, source in sources.items():
        reads[name] = []
        for s in range(args.sets):
            labels = torch.tensor(grade.hidden_labels(10, torch.Generator().manual_seed(2000 + s)))
            images = source(labels, 100 + s).float()
            with torch.no_grad():
                row = {"public": (public.predict(images) == labels).float().mean().item()}
                for seed, judge in judges.items():
                    row[str(seed)] = (judge(images).argmax(1) == labels).float().mean().item()
            reads[name].append(row)
            print(name, s, {k: round(v, 3) for k, v in row.items()}, flush=True)
    seeds = [str(s) for s in judges]

    def disputed(row, chosen):
        return any(row[s] < row["public"] - gc.SECOND_OPINION_GAP for s in chosen)
    rates = {}
    for name, rows in reads.items():
        one = [disputed(r, [s]) for r in rows for s in seeds]
        three = [disputed(r, c) for r in rows for c in itertools.combinations(seeds, 3)]
        rates[name] = {"one": sum(one) / len(one), "three": sum(three) / len(three),
                       "public": sum(r["public"] for r in rows) / len(rows),
                       "per_judge": {s: sum(r[s] for r in rows) / len(rows) for s in seeds},
                       "lowest": min(r[s] for r in rows for s in seeds)}
    figures = {"judges": len(judges), "sets": args.sets, "gap": gc.SECOND_OPINION_GAP,
               "seconds": round(time.perf_counter() - start), "rates": rates, "reads": reads}
    lines = [f"The second opinion on {args.sets} sets of ~100 samples per source, by {len(judges)} "
             f"private judges trained by the grader's recipe from seeds 1-{len(judges)} (a set is "
             f"disputed when a judge reads more than {gc.SECOND_OPINION_GAP * 100:.0f} points fewer "
             "as asked for than the course's judge); "
             f"{figures['seconds']} s on 2 CPU cores", "",
             "| source | must | course's judge | each private judge (mean over sets) | lowest read | "
             "disputed by one judge | disputed by the strictest of three |",
             "|---|---|---|---|---|---|---|"]
    for name, r in rates.items():
        each = ", ".join(f"{v:.0%}" for v in r["per_judge"].values())
        lines.append(f"| {name} | {'pass' if name in MUST_PASS else 'fail'} | {r['public']:.1%} | "
                     f"{each} | {r['lowest']:.0%} | {r['one']:.0%} | {r['three']:.0%} |")
    write_report("private_judges", lines, figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
