"""Calibrate and measure the grader's "generated digits" checks: false rejects and catches.

    python bench/grading_checks.py [--sets 20] [--key bench/out/key_samples.pt]

For each source, ``--sets`` sets of about 100 samples with hidden-style labels (each digit 8-12
times) go through the checks of ``course_lib/grade_checks.py``: not memorised, realistic
(Fréchet distance), ink on a plain background, read as the requested digit (>= 95%), and a second opinion (a private judge,
here one trained with seed 1 and kept in bench/out, may read at most
``grade_checks.SECOND_OPINION_GAP`` fewer as asked for). Sources: real MNIST test digits the
grader's reference leaves out and the answer key's samples (both must pass: their reject rate is
the false-reject rate), and the cheats of ``tests/adversarial/cheats.py`` (their reject rate is
the catch rate). Writes ``bench/grading_checks.md`` and ``bench/grading_checks.json``.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from course_lib import grade, grade_checks as gc  # noqa: E402


def _cheats():
    spec = importlib.util.spec_from_file_location("cheats", ROOT / "tests" / "adversarial" / "cheats.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _key_source(path: Path):
    data = torch.load(path, weights_only=True)
    images, labels = data["images"].float(), data["labels"]

    def key(wanted: torch.Tensor, seed: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        out = []
        for d in wanted.tolist():
            idx = (labels == d).nonzero()[:, 0]
            out.append(images[idx[torch.randint(len(idx), (1,), generator=g)]])
        return torch.cat(out)
    return key


MUST_PASS = ("real held-out test digits", "answer key samples")
"""The sources a correct grader passes (their reject rate is the false-reject rate)."""


def sources(key: Path, cheats: dict | None = None) -> dict:
    """Name -> ``source(labels, seed) -> images``: real held-out digits, the answer key's samples
    (when ``key`` exists) and ``cheats`` (default: every cheat of tests/adversarial/cheats.py)."""
    module = _cheats()
    found = {MUST_PASS[0]: module.held_out_real}
    if key.is_file():
        found[MUST_PASS[1]] = _key_source(key)
    else:
        print(f"no answer-key samples at {key}: run bench/grade_key.py first")
    found.update(module.CHEATS if cheats is None else cheats(module))
    return found


def seeded_judge(seed: int) -> torch.nn.Module:
    """A private judge by the grader's recipe (one epoch of classifier.train_classifier) from
    ``seed`` instead of a secret one, trained once into bench/out."""
    from course_lib.classifier import DigitClassifier, train_classifier
    from course_lib.train import load_checkpoint

    path = ROOT / "bench" / "out" / f"private_mnist_judge_seed{seed}.pt"
    if not path.is_file():
        train_classifier("mnist", epochs=1, seed=seed, out=path)
    model = DigitClassifier()
    load_checkpoint(path, model)
    return model.eval()


def private_judge() -> list[torch.nn.Module]:
    """The bench's stand-in for a grading machine's private judges: one, from seed 1
    (bench/private_judges.py measures three of them against one)."""
    return [seeded_judge(1)]


def verdict(images: torch.Tensor, labels: torch.Tensor, judge: gc.Judge) -> dict:
    """Every check on one set of samples, as the grader makes them (the second opinion by
    ``judge.second``, the strictest counting): what each finds and whether it rejects."""
    sim = gc.copy_similarity(images, judge.images, judge.coarse)
    copies = int((sim > gc.COPY_COSINE).sum())
    fd = gc.frechet(judge.features(images), judge.real_mean, judge.real_cov)
    limit = gc.FRECHET_RATIO * gc.real_frechet(judge, labels)
    acc = (judge.predict(images) == labels).float().mean().item()
    with torch.no_grad():
        second = min((j(images).argmax(1) == labels).float().mean().item() for j in judge.second)
    memorised = copies > gc.COPY_SHARE * len(images)
    fake = fd > limit
    disputed = second < acc - gc.SECOND_OPINION_GAP
    plain = gc.plain_share(images).mean().item()
    textured = plain < gc.PLAIN_SHARE
    return {"copies": copies / len(images), "frechet": fd, "ratio": fd / limit * gc.FRECHET_RATIO,
            "accuracy": acc, "second_accuracy": second,
            "memorised": memorised, "unrealistic": fake, "low_accuracy": acc < 0.95,
            "disputed": disputed, "plain": plain, "textured": textured,
            "rejected": memorised or fake or textured or acc < 0.95 or disputed,
            "sim_median": sim.median().item()}


def evaluate(source, judge: gc.Judge, sets: int, n: int = 10) -> dict:
    """Run ``sets`` sets of hidden-style labels (about ``n`` per digit) through the checks."""
    rows = []
    for s in range(sets):
        labels = torch.tensor(grade.hidden_labels(n, torch.Generator().manual_seed(1000 + s)))
        images = source(labels, s).float()
        rows.append(verdict(images, labels, judge))
    mean = lambda k: sum(r[k] for r in rows) / len(rows)  # noqa: E731
    return {"sets": sets, "samples_per_set": len(images), "rejected": mean("rejected"),
            "by_memorisation": mean("memorised"), "by_realism": mean("unrealistic"),
            "by_background": mean("textured"), "plain_min": min(r["plain"] for r in rows),
            "by_accuracy": mean("low_accuracy"), "by_second_opinion": mean("disputed"),
            "second_accuracy": mean("second_accuracy"), "copy_share": mean("copies"),
            "frechet_min": min(r["frechet"] for r in rows), "frechet_max": max(r["frechet"] for r in rows),
            "ratio_min": min(r["ratio"] for r in rows), "ratio_max": max(r["ratio"] for r in rows),
            "accuracy": mean("accuracy"), "similarity_median": mean("sim_median")}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", type=int, default=20)
    parser.add_argument("--key", type=Path, default=ROOT / "bench" / "out" / "key_samples.pt")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    judge = gc.load_judge(hold_out=gc.HOLD_OUT)  # held-out digits play unseen real ones
    judge.second = private_judge()
    results = {}
    for name, source in sources(args.key).items():
        results[name] = evaluate(source, judge, args.sets)
        r = results[name]
        print(f"{name:28s} rejected {r['rejected']:5.0%}  copies {r['copy_share']:5.0%}  "
              f"FD {r['frechet_min']:6.1f}-{r['frechet_max']:6.1f} ratio {r['ratio_min']:.2f}-{r['ratio_max']:.2f}  acc {r['accuracy']:5.1%}  "
              f"sim {r['similarity_median']:.3f}", flush=True)
    lines = [f"Grader checks on {args.sets} sets of ~{results[next(iter(results))]['samples_per_set']} "
             f"samples each (thresholds: copy cosine > {gc.COPY_COSINE} for more than "
             f"{gc.COPY_SHARE:.0%} of samples, Fréchet distance > {gc.FRECHET_RATIO:g}x that of real "
             f"digits with the same labels, less than {gc.PLAIN_SHARE:.0%} of pixels plain "
             f"background, accuracy "
             f"< 95%, a private judge reading more than {gc.SECOND_OPINION_GAP * 100:.0f} points "
             f"fewer as asked for); {time.perf_counter() - start:.0f} s on 2 CPU cores.", "",
             "| source | must | rejected | by memorisation | by realism | by plain background | by accuracy | "
             "by second opinion | near-copy share | Fréchet (min-max) | Fréchet / real digits' (min-max) "
             "| judge accuracy | private judge accuracy |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        must = "pass" if name in MUST_PASS else "fail"
        lines.append(f"| {name} | {must} | {r['rejected']:.0%} | {r['by_memorisation']:.0%} | "
                     f"{r['by_realism']:.0%} | {r['by_background']:.0%} | {r['by_accuracy']:.0%} | {r['by_second_opinion']:.0%} | "
                     f"{r['copy_share']:.0%} | "
                     f"{r['frechet_min']:.0f}-{r['frechet_max']:.0f} | {r['ratio_min']:.2f}-{r['ratio_max']:.2f} | "
                     f"{r['accuracy']:.1%} | {r['second_accuracy']:.1%} |")
    lines += ["", "False-reject rate = the \"rejected\" share of a source that must pass; catch rate "
              "= the \"rejected\" share of a source that must fail."]
    text = "\n".join(lines)
    print(text)
    (ROOT / "bench" / "grading_checks.md").write_text(text + "\n")
    (ROOT / "bench" / "grading_checks.json").write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
