"""Execute notebooks in a profile and report wall time and peak memory of each.

    python bench/run_notebooks.py                      # every notebook, full profile, outputs discarded
    python bench/run_notebooks.py --inplace 01 02      # store full-profile outputs in 01 and 02
    python bench/run_notebooks.py --profile test       # the nbval profile
    python bench/run_notebooks.py --tidy               # only tidy the stored outputs (below)

Each notebook runs in its own `jupyter nbconvert --execute` process; its peak memory is the
largest resident set of that process and its kernel (read with os.wait4). The table is printed
and written to bench/notebooks_<profile>.md, with each notebook's headline figure (read from its
printed output) and the total. Targets: each notebook under 4 GiB, the time its issue names
(01 <= 3 min, 02 <= 6, 03, 04 and 05 <= 12 on 2 CPU cores), the course <= 50 min.

Machines with the same core count differ in speed, and partial runs merge into one table, so each
row also records the machine's speed: the milliseconds of one reference step (03's fixed model,
one Adam step on a batch of 64), timed before and after each notebook: a row records the mean of
the two, since a shared machine's speed can drift within a run.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

import torch

# each notebook's time limit and the course's (06: grade_key.py) are the ones 00's estimate draws
from course_lib.pace import COURSE_TARGET_MINUTES as COURSE_TARGET_MIN
from course_lib.pace import MEASURED_RUNS, reference_step_ms
from course_lib.pace import TARGET_MINUTES as TARGET_MIN

ROOT = Path(__file__).resolve().parent.parent

# the run of each kind of CPU (course_lib.config.speed) that 00 scales into its estimate
# (bench/RESULTS.md, sections 3, 18 and 19)
PACE_RUNS = {"fast": ("notebooks_full", "2 cores of an Intel CPU with AMX"),
             "bf16": ("notebooks_full_avx512bf16", "2 cores of an AMD EPYC with AVX512-BF16"),
             "float32": ("notebooks_full_float32", "2 cores of an AMD EPYC kept in float32")}
# the headline figure of each notebook: patterns over its printed output (first group kept)
HEADLINES = {
    "01": [r"01 ink blots: \d+ samples: (.*)"],
    "02": [r"02 DDPM, 150 steps: \d+ samples: (.*)", r"final loss (\d\.\d+)"],
    "03": [r"03 with the fix: +\d+ samples: (.*)", r"03, autoguided, w = 2: \d+ samples: (.*)"],
    "04": [r"w = \+0\.0: \d+ samples: \d+% recognisable, (\d+%) as the requested class",
           r"w = \+2\.0: \d+ samples: \d+% recognisable, (\d+%) as the requested class"],
    "05": [r"THIS RUN USES: (.*)", r"zero-shot species accuracy (\S+)",
           r"CLIP score, own prompt: +(\S+)", r"CLIP score, shifted prompt: +(\S+)"],
}
HEADLINE_FORMAT = {
    "02": "DDPM: {0}; final loss {1}",
    "03": "fix: {0}; autoguided: {1}",
    "04": "requested class recognised: {0} at w = 0, {1} at w = 2",
    "05": "{0}: zero-shot species {1}; CLIP score {2} (shifted prompts {3})",
}


def headline(executed: Path) -> str:
    """The notebook's headline figure, read from its printed output ('-' if none)."""
    key = executed.name[:2]
    if key not in HEADLINES or not executed.exists():
        return "-"
    from report import stream_text  # bench/report.py

    text = stream_text(executed)
    found = [re.search(p, text) for p in HEADLINES[key]]
    if not all(found):
        return "(headline not found)"
    return HEADLINE_FORMAT.get(key, "{0}").format(*(m.group(1) for m in found))


def finish_progress_bars(path: Path) -> int:
    """Rewrite each tqdm widget's text fallback from the widget's final stored state.

    nbconvert stores a progress bar as a widget view plus the text it showed when it was created
    ("0/468"); the widget state in the notebook's metadata holds the finished bar. Viewers without
    widgets (GitHub, a terminal) show the text, so it should read as finished. Returns the count.
    """
    import html
    import json

    nb = json.loads(path.read_text())
    state = nb.get("metadata", {}).get("widgets", {}).get(
        "application/vnd.jupyter.widget-state+json", {}).get("state", {})
    fixed = 0
    for cell in nb.get("cells", []):
        if "outputs" not in cell:
            continue
        # a bar hidden at the end of its loop (leave=False) was gone from the screen when the run
        # finished, so its stale "0/N" text goes too
        def hidden(o) -> bool:
            view = o.get("data", {}).get("application/vnd.jupyter.widget-view+json")
            if view is None:
                return False
            box = state.get(view["model_id"])
            layout = state.get(box["state"].get("layout", "").removeprefix("IPY_MODEL_"), {}) if box else {}
            return box is None or layout.get("state", {}).get("visibility") == "hidden"

        cell["outputs"] = [o for o in cell["outputs"] if not hidden(o)]
        for out in cell["outputs"]:
            view = out.get("data", {}).get("application/vnd.jupyter.widget-view+json")
            box = state.get(view["model_id"]) if view else None
            if not box or box["model_name"] != "HBoxModel":
                continue
            parts = [state.get(c.removeprefix("IPY_MODEL_"), {}).get("state", {})
                     for c in box["state"].get("children", [])]
            bars = [p for p in parts if "max" in p]
            texts = [p.get("value", "") for p in parts if "max" not in p]
            if len(bars) != 1 or len(texts) != 2:
                continue
            done = bars[0]["value"] / bars[0]["max"] if bars[0]["max"] else 1.0
            filled = int(round(10 * done))
            left, right = (html.unescape(t).replace("\u2007", " ") for t in texts)
            out["data"]["text/plain"] = [f"{left}|{'█' * filled}{' ' * (10 - filled)}|{right}"]
            fixed += 1
    path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
    return fixed


FONT_WARNING = re.compile(r"findfont: Font family \[.*\] not found\. Falling back to [^\n]*\n?")


def drop_font_warnings(path: Path) -> int:
    """Remove matplotlib's "findfont: Font family [...] not found" lines from the stored stderr.

    They report the executing machine's font cache (a cache that lists no mathtext fonts prints
    one line per font the first time a figure uses math text, as log-scale tick labels do), not
    anything the course did; the figure is drawn with DejaVu Sans all the same. Any other stderr
    text stays. Returns the count of lines removed.
    """
    import json

    nb = json.loads(path.read_text())
    dropped = 0
    for cell in nb.get("cells", []):
        kept = []
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream" and out.get("name") == "stderr":
                text = "".join(out["text"])
                rest, n = FONT_WARNING.subn("", text)
                dropped += n
                if not rest:
                    continue
                out["text"] = rest.splitlines(keepends=True)
            kept.append(out)
        if "outputs" in cell:
            cell["outputs"] = kept
    path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
    return dropped


def tidy(path: Path) -> str:
    """The stored outputs as a reader should see them: :func:`finish_progress_bars`, then
    :func:`drop_font_warnings`. Returns what was done, for the log."""
    bars = finish_progress_bars(path)
    fonts = drop_font_warnings(path)
    return f"{bars} progress bars finished, {fonts} font-cache warnings dropped"


def pace_runs() -> dict:
    """What ``course_lib/measured_runs.json`` holds: for each kind of CPU, its run's minutes and
    reference step of notebooks 00-05, read from its table (``--pace`` writes it)."""
    runs = {}
    for speed, (table, machine) in PACE_RUNS.items():
        rows = {}
        for line in (ROOT / "bench" / f"{table}.md").read_text().splitlines():
            cells = [c.strip() for c in line.strip("|").split("|")]
            if line.startswith("| 0") and cells[0][:2] in TARGET_MIN:
                if cells[-1] == "-":
                    raise ValueError(f"bench/{table}.md: {cells[0]} has no reference-step time "
                                     f"(a row from before they were timed); run it again")
                rows[cells[0]] = {"minutes": float(cells[1]), "ms": float(cells[-1])}
        runs[speed] = {"run": table, "machine": machine, "notebooks": rows}
    return runs


def bf16_hardware() -> str:
    """How this CPU multiplies bfloat16 (course_lib.config.native_bf16), for the table's header."""
    from course_lib import config

    forced = config.bf16_override()
    if forced is not None:
        return "bfloat16 (COURSE_BF16=1)" if forced else "float32 (COURSE_BF16=0)"
    if config.cpu_has("amx_tile"):
        return "bfloat16 on AMX"
    if config.native_bf16("cpu"):
        return "bfloat16 on AVX512-BF16 (no AMX)"
    return "float32 (no bfloat16 instructions)"


def run(notebook: Path, profile: str, inplace: bool) -> tuple[float, float, int]:
    """(seconds, peak MiB, exit status) of executing one notebook."""
    cmd = [sys.executable, "-m", "jupyter", "nbconvert", "--to", "notebook", "--execute",
           "--ExecutePreprocessor.timeout=-1", str(notebook)]
    cmd += ["--inplace"] if inplace else ["--output-dir", str(ROOT / "bench" / "out")]
    env = dict(os.environ, COURSE_PROFILE=profile)
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    return seconds, usage.ru_maxrss / 1024, os.waitstatus_to_exitcode(status)


def merge_rows(previous: str, rows: list[str]) -> list[str]:
    """The notebook rows of the table ``previous``, with ``rows`` (this run's) replacing theirs.

    Rows from before the machine-speed column get "-" there (their machine was not measured)."""
    columns = rows[0].count("|") if rows else 8
    merged = {row.split("|")[1].strip(): row if row.count("|") == columns else row + " - |"
              for row in previous.splitlines() if row.startswith("| 0")}
    merged.update({row.split("|")[1].strip(): row for row in rows})
    return [merged[k] for k in sorted(merged)]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("which", nargs="*", help="notebook number prefixes (default: all)")
    parser.add_argument("--profile", default="full", choices=("full", "test"))
    parser.add_argument("--inplace", action="store_true", help="store the outputs in the notebooks")
    parser.add_argument("--table", default="",
                        help="write bench/notebooks_<profile>_<TABLE>.md instead (a run on another "
                             "kind of machine, kept beside the stored run's table)")
    parser.add_argument("--pace", action="store_true",
                        help="only write course_lib/measured_runs.json (00's time estimate) from "
                             "the tables of " + ", ".join(t for t, _ in PACE_RUNS.values()))
    parser.add_argument("--tidy", action="store_true",
                        help="only tidy the stored outputs: finish the progress bars' text, drop "
                             "font-cache warnings")
    args = parser.parse_args(argv)
    notebooks = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    if args.pace:
        MEASURED_RUNS.write_text(json.dumps(pace_runs(), indent=1) + "\n")
        print(f"wrote {MEASURED_RUNS.relative_to(ROOT)}")
        return 0
    if args.tidy:
        for nb in notebooks:
            print(f"{nb.name}: {tidy(nb)}")
        return 0
    if args.which:
        notebooks = [nb for nb in notebooks if nb.name[:2] in args.which]
    rows, failed = [], 0
    before = reference_step_ms()
    print(f"this machine: {before:.0f} ms per reference step", flush=True)
    for nb in notebooks:
        print(f"--- {nb.name} ({args.profile} profile)", flush=True)
        seconds, mib, code = run(nb, args.profile, args.inplace)
        failed += code != 0
        target = TARGET_MIN.get(nb.name[:2])
        ok = code == 0 and mib < 4096 and (args.profile != "full" or target is None
                                            or seconds <= 60 * target)
        executed = nb if args.inplace else ROOT / "bench" / "out" / nb.name
        if code == 0 and executed.exists():
            print(f"{nb.name}: {tidy(executed)}", flush=True)
        after = reference_step_ms()
        speed, before = (before + after) / 2, after
        print(f"this machine after {nb.name[:2]}: {after:.0f} ms per reference step", flush=True)
        rows.append(f"| {nb.stem} | {seconds / 60:.1f} | {target or '-'} | {mib:.0f} | "
                    f"{'ok' if ok else 'MISSED' if code == 0 else f'FAILED ({code})'} | "
                    f"{headline(executed)} | {speed:.0f} |")
        print(rows[-1], flush=True)
    header = [f"Notebooks, {args.profile} profile, on {os.cpu_count()} CPU cores "
              f"({platform.processor() or platform.machine()}), torch {torch.__version__}, "
              f"threads {torch.get_num_threads()}, {bf16_hardware()}", "",
              "| notebook | minutes | target (min) | peak memory (MiB) | status | headline "
              "| ms per reference step |",
              "|---|---|---|---|---|---|---|"]
    # keep earlier rows of notebooks not run this time, so partial runs add up to one table
    suffix = f"_{args.table}" if args.table else ""
    out = ROOT / "bench" / f"notebooks_{args.profile}{suffix}.md"
    body = merge_rows(out.read_text() if out.exists() else "", rows)
    total = sum(float(row.split("|")[2]) for row in body)
    body.append(f"| **whole course** | **{total:.1f}** | {COURSE_TARGET_MIN} | - | "
                f"{'ok' if total <= COURSE_TARGET_MIN else 'MISSED'} | 06 graded separately: "
                f"grade_key_{args.profile}{suffix}.md | - |")
    table = "\n".join(header + body)
    print("\n" + table)
    out.write_text(table + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
