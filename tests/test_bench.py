"""bench/RESULTS.md quotes the tables the benchmark scripts wrote, unchanged."""
import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _results_module():
    spec = importlib.util.spec_from_file_location("bench_results", ROOT / "bench" / "results.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _bench_module(name):
    """A bench script imported as a module (bench/ on the path for its `report` import)."""
    import sys
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "bench" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module      # dataclasses look their module up there
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(ROOT / "bench"))
    return module


def test_recipe_row_o_lets_the_encoder_see_the_noise_level():
    """03's network feeds t to its decoder only; row O's variant adds it after down0 and down1."""
    import torch

    from course_lib.unets import OptimizedUNet

    recipe = _bench_module("recipe")
    torch.manual_seed(0)
    x = torch.randn(2, 1, 16, 16)
    for kind, sees_t in ((OptimizedUNet, False), (recipe.EncoderTimeUNet, True)):
        model = kind(channels=(16, 32, 64)).eval()
        seen = []
        model.down2.register_forward_hook(lambda mod, args, out: seen.append(out))
        out = model(x, torch.tensor([0, 0]))
        model(x, torch.tensor([100, 100]))
        assert out.shape == x.shape
        assert torch.allclose(seen[0], seen[1]) != sees_t
    row_o = next(r for r in recipe.recipes() if r.name.startswith("O."))
    assert isinstance(recipe.network(row_o), recipe.EncoderTimeUNet)


def test_results_tables_match_the_benchmark_outputs():
    results = _results_module()
    text = results.RESULTS.read_text()
    assert len(results.BLOCK.findall(text)) >= 4, "RESULTS.md lost its table markers"
    assert results.refresh(text) == text, "run: python bench/results.py"


def test_refresh_replaces_only_the_marked_block(tmp_path, monkeypatch):
    results = _results_module()
    (tmp_path / "demo.md").write_text("| a |\n|---|\n| 1 |\n")
    monkeypatch.setattr(results, "BENCH", tmp_path)
    text = "intro\n<!-- table: demo -->\nstale\n<!-- end -->\noutro\n"
    assert results.refresh(text) == "intro\n<!-- table: demo -->\n| a |\n|---|\n| 1 |\n<!-- end -->\noutro\n"


# --- bench/quality.json: the headline figures of the full run, as the notebooks show them --------

QUALITY_SHOWN = {   # figure -> (notebook prefix, the stored output's line, with {v} for the figure)
    "fashion16_real_frechet": ("01", "{:.1f}", r"real images: .*; Fréchet distance {v}$"),
    "fashion16_real_recognised": ("01", "{:.0%}", r"real images: +\d+ samples: {v} recognisable"),
    "nb03_frechet": ("03", "{:.1f}", r"03, autoguided, w = 2: .*; Fréchet distance {v}$"),
    "nb03_recognised": ("03", "{:.0%}", r"03, autoguided, w = 2: \d+ samples: {v} recognisable"),
    "nb03_min_class_share": ("03", "{:.1%}", r"class shares from {v} to "),
    "nb03_max_class_share": ("03", "{:.1%}", r"class shares from [\d.]+% to {v} "),
    "nb04_fashion_requested_w2": ("04", "{:.0%}", r"w = \+2\.0: \d+ samples: .*, {v} as the requested class"),
    "flowers32_real_species_acc": ("04", "{:.1%}", r"real held-out photos of all five species: {v} read correctly"),
    "nb04_flowers_species_w2": ("04", "{:.1%}", r"generated, w = 2: {v} read as the requested species"),
    "nb05_clip_zero_shot_species": ("05", "{:.1%}", r"zero-shot species accuracy {v} "),
    "nb05_prompt_species": ("05", "{:.1%}", r"training wordings: {v} of samples read as the prompt's species"),
    "nb05_heldout_wording_species": ("05", "{:.1%}", r"new wordings: {v} of samples read as the prompt's species"),
}


def _stored_text(prefix: str) -> str:
    notebook = next((ROOT / "notebooks").glob(f"{prefix}_*.ipynb"))
    return _bench_module("report").stream_text(notebook)


def test_quality_json_agrees_with_the_stored_notebook_outputs():
    import json

    import pytest
    path = ROOT / "bench" / "quality.json"
    if not path.is_file():
        pytest.fail("bench/quality.json is missing: run python bench/quality.py after a full run")
    quality = json.loads(path.read_text())
    from course_lib.metrics import FIGURES
    assert set(quality) == set(FIGURES) | {"course_minutes"}
    assert all(isinstance(v, (int, float)) for v in quality.values())
    import re
    for name, (prefix, fmt, line) in QUALITY_SHOWN.items():   # on its own labelled line, not anywhere
        shown = fmt.format(quality[name])
        pattern = r"^\s*" + line.replace("{v}", re.escape(shown))
        assert re.search(pattern, _stored_text(prefix), re.M), (
            f"{name} = {shown} is not on its line ({line}) of notebook {prefix}'s outputs")
    table = (ROOT / "bench" / "notebooks_full.md").read_text()
    notebooks = float(re.search(r"\*\*whole course\*\* \| \*\*([\d.]+)\*\*", table).group(1))
    assert notebooks <= quality["course_minutes"] <= notebooks + 15


def test_readme_notebook_table_quotes_the_measured_minutes():
    """The README's table of notebooks gives each one's minutes from bench/notebooks_full.md, and
    06's grading minutes and accuracy from bench/grade_key_full.md."""
    import re
    measured = {m.group(1): m.group(2) for m in re.finditer(
        r"^\| (\d\d_\w+) \| ([\d.]+) \|", (ROOT / "bench" / "notebooks_full.md").read_text(), re.M)}
    quoted = {m.group(1): m.group(2) for m in re.finditer(
        r"^\| `notebooks/(\d\d_\w+)\.ipynb` \|.*\| ([\d.]+) min", (ROOT / "README.md").read_text(), re.M)}
    assert set(quoted) == set(measured), (sorted(quoted), sorted(measured))
    key = (ROOT / "bench" / "grade_key_full.md").read_text()
    seconds = float(re.search(r"whole grading, wall clock: ([\d.]+) s", key).group(1))
    accuracy = re.search(r"\| accuracy \|.* ([\d.]+%) \|$", key, re.M).group(1)
    for name, minutes in quoted.items():
        expected = f"{seconds / 60:.1f}" if name.startswith("06") else measured[name]
        assert minutes == expected, f"README quotes {name} at {minutes} min; measured {expected}"
    row06 = next(line for line in (ROOT / "README.md").read_text().splitlines()
                 if line.startswith("| `notebooks/06_"))
    assert f"graded {accuracy}" in row06, (row06, accuracy)


def test_stored_progress_bars_read_as_finished():
    """A reader without widgets sees each bar's text: it must not say 0/468 (an untrained look)."""
    import json
    import re
    for notebook in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        for cell in json.loads(notebook.read_text())["cells"]:
            for out in cell.get("outputs", []):
                if "application/vnd.jupyter.widget-view+json" not in out.get("data", {}):
                    continue
                text = "".join(out["data"].get("text/plain", ""))
                assert not re.search(r"\|\s*0/\d+ \[", text), f"{notebook.name}: stored bar {text!r}"


def test_stored_outputs_have_no_stderr():
    """Red stderr text in a stored notebook reads as something gone wrong (the first full run left
    21 lines of font-cache warnings in 01 to 03 that way)."""
    import json
    for notebook in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        for i, cell in enumerate(json.loads(notebook.read_text())["cells"]):
            for out in cell.get("outputs", []):
                assert out.get("name") != "stderr", (
                    f"{notebook.name} cell {i} stores stderr: {''.join(out['text'])[:200]!r}")


def test_tidy_drops_only_font_cache_warnings(tmp_path):
    """bench/run_notebooks.py::drop_font_warnings removes matplotlib's findfont lines, keeps every
    other stderr line and every other output, and drops a stderr output left empty."""
    import json
    run_notebooks = _bench_module("run_notebooks")
    font = "findfont: Font family ['STIXGeneral'] not found. Falling back to DejaVu Sans.\n"
    other = "UserWarning: something the student should see\n"
    stdout = {"output_type": "stream", "name": "stdout", "text": [font]}
    nb = {"cells": [
        {"cell_type": "code", "source": "", "outputs": [
            {"output_type": "stream", "name": "stderr", "text": [font, font]}, stdout]},
        {"cell_type": "code", "source": "", "outputs": [
            {"output_type": "stream", "name": "stderr", "text": [font, other, font]}]},
        {"cell_type": "markdown", "source": "findfont"}],
        "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    path = tmp_path / "nb.ipynb"
    path.write_text(json.dumps(nb))
    assert run_notebooks.drop_font_warnings(path) == 4
    cells = json.loads(path.read_text())["cells"]
    assert cells[0]["outputs"] == [stdout]       # stdout is the notebook's own text: kept
    assert cells[1]["outputs"] == [{"output_type": "stream", "name": "stderr", "text": [other]}]
    assert cells[2] == nb["cells"][2]
    assert run_notebooks.drop_font_warnings(path) == 0


def test_stored_figures_are_pictures_not_their_text():
    """A figure that reached the notebook only as "<Figure size 1800x130 with 1 Axes>" was never
    drawn (no ``%matplotlib inline``): the reader sees no picture."""
    import json
    for notebook in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        for i, cell in enumerate(json.loads(notebook.read_text())["cells"]):
            for out in cell.get("outputs", []):
                data = out.get("data", {})
                text = "".join(data.get("text/plain", ""))
                assert "image/png" in data or not text.startswith("<Figure size"), \
                    f"{notebook.name} cell {i}: a figure stored as text only: {text!r}"


def test_fixed_model_training_runs_the_extra_averages_after_every_step(monkeypatch):
    """bench/ema_decay.py keeps its extra weight averages through this hook: one call per step."""
    import torch
    from torch.utils.data import TensorDataset

    sampler_settings = _bench_module("sampler_settings")
    monkeypatch.setattr(sampler_settings, "EPOCHS", 1)
    torch.manual_seed(0)
    data = TensorDataset(torch.rand(192, 1, 16, 16) * 2 - 1, torch.zeros(192, dtype=torch.long))
    seen = []
    model, history, _, steps = sampler_settings.train_fixed_model(data, seen.append)
    assert steps == 3 == len(history.losses) == len(seen)
    assert all(m is model for m in seen) and history.ema is not None


def test_nb03_choices_samples_one_training_four_ways_and_appends_the_other(tmp_path, monkeypatch):
    """bench/nb03_choices.py: each training gives four rows (EMA 0.999/0.998 × x̂₀ clipped or
    not) from the same model; --append replaces the rows of its own training only."""
    import json
    import sys

    import torch
    from torch.utils.data import TensorDataset

    choices = _bench_module("nb03_choices")
    monkeypatch.setattr(sys.modules["sampler_settings"], "EPOCHS", 1)
    monkeypatch.setattr(sys.modules["report"], "HERE", tmp_path)
    monkeypatch.setattr(choices, "HERE", tmp_path)
    flips = []

    def tiny_fashion(size, flip):
        flips.append(flip)
        return TensorDataset(torch.rand(128, 1, size, size) * 2 - 1, torch.zeros(128, dtype=torch.long))

    monkeypatch.setattr(choices, "load_fashion_mnist", tiny_fashion)
    choices.main(["--judged", "16"])
    choices.main(["--judged", "16", "--no-flip", "--append"])
    choices.main(["--judged", "16", "--append"])     # the flipped training again: replaced
    rows = json.loads((tmp_path / "nb03_choices.json").read_text())["rows"]
    assert flips == [True, False, True]
    assert [(r["training"], r["ema"], r["clip_x0"]) for r in rows] == [
        (t, d, c) for t in ("no flips", "flips (03 as it is)") for d in (0.999, 0.998)
        for c in (False, True)]
    assert {r["steps"] for r in rows} == {2}
    assert (tmp_path / "nb03_choices.md").read_text().count("| flips (03 as it is) |") == 4


def test_recipe_row_u_adds_depth_not_width():
    import torch

    from course_lib.blocks import ResidualConvBlock
    from course_lib.unets import OptimizedUNet, count_parameters

    recipe = _bench_module("recipe")
    row_u = next(r for r in recipe.recipes() if r.name.startswith("U."))
    model, n2 = recipe.network(row_u).eval(), OptimizedUNet(channels=(16, 32, 64), bottleneck=128)
    assert isinstance(model, recipe.DeeperUNet)
    extra = count_parameters(ResidualConvBlock(32, 32)) + count_parameters(ResidualConvBlock(64, 64))
    assert count_parameters(model) == count_parameters(n2) + extra
    seen = []
    for block in (model.deep1, model.deep2):
        block.register_forward_hook(lambda mod, args, out: seen.append(out.shape))
    x = torch.randn(2, 1, 16, 16)
    assert model(x, torch.tensor([3, 90])).shape == x.shape
    assert seen == [(2, 32, 8, 8), (2, 64, 4, 4)]


def test_flower_recipe_rows_change_one_thing_each():
    """bench/flower_recipe.py: every row differs from the row it names in exactly one setting
    (none for a row that repeats another on a new machine: "again")."""
    from dataclasses import asdict

    flower_recipe = _bench_module("flower_recipe")
    rows = {r.name.split(".")[0]: r for r in flower_recipe.recipes()}
    assert rows["A"].base is None
    for key, row in rows.items():
        if row.base is None or "+" in row.base:     # a row combining winners names them all
            continue
        mine, theirs = asdict(row), asdict(rows[row.base])
        changed = [f for f in mine if f not in ("name", "base") and mine[f] != theirs[f]]
        assert len(changed) == (0 if "again" in row.name else 1), \
            f"row {key} changes {changed} on top of {row.base}"


def test_flower_recipe_network_and_loss_follow_the_row():
    import torch

    from course_lib.unets import count_parameters

    flower_recipe = _bench_module("flower_recipe")
    rows = {r.name.split(".")[0]: r for r in flower_recipe.recipes()}
    a, wide = flower_recipe.network(rows["A"]), flower_recipe.network(rows["G"])
    assert count_parameters(wide) > 3 * count_parameters(a)
    torch.manual_seed(0)
    images = torch.rand(4, 3, 32, 32) * 2 - 1
    loss_fn = flower_recipe.conditional_loss(flower_recipe.SCHEDULES["scaled"](150))
    loss = loss_fn(a, (images, torch.tensor([0, 1, 2, 0])))
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert a.out[-1].weight.grad is not None


def test_flower_recipe_crop_row_trains_on_shifted_32px_views(monkeypatch):
    """Row N's data: the photos loaded at 36 px, each item a random 32-px window (maybe mirrored)."""
    import torch

    from course_lib.data import ImageDataset

    flower_recipe = _bench_module("flower_recipe")
    rows = {r.name.split(".")[0]: r for r in flower_recipe.recipes()}
    photos = torch.rand(5, 3, 36, 36) * 2 - 1
    asked = []

    def fake_load(size, classes, flip):
        asked.append(size)
        return ImageDataset(photos, torch.arange(5) % 3, classes, flip)
    monkeypatch.setattr(flower_recipe, "load_flowers", fake_load)
    plain = object()
    assert flower_recipe.training_data(rows["J"], plain) is plain and not asked
    data = flower_recipe.training_data(rows["N"], plain)
    assert asked == [36] and len(data) == 5
    torch.manual_seed(0)
    views = [data[2][0] for _ in range(40)]
    assert all(v.shape == (3, 32, 32) for v in views) and data[2][1] == 2
    windows = [photos[2, :, i:i + 32, j:j + 32] for i in range(5) for j in range(5)]
    windows += [w.flip(-1) for w in windows]
    assert all(any(torch.equal(v, w) for w in windows) for v in views)
    assert len({tuple(v.flatten()[:8].tolist()) for v in views}) > 5     # not always the same window


def test_pending_skips_rows_already_run_and_keeps_the_asked_prefixes():
    from types import SimpleNamespace

    report = _bench_module("report")
    rows = [SimpleNamespace(name=n) for n in ("A. base", "B. one", "C. two", "N2. again")]
    done = [{"name": "B. one"}]
    assert [r.name for r in report.pending(rows, done, None)] == ["A. base", "C. two", "N2. again"]
    assert [r.name for r in report.pending(rows, done, "B,C")] == ["C. two"]
    assert [r.name for r in report.pending(rows, [], "N")] == ["N2. again"]


def test_flower_sampler_rows_change_one_setting_and_count_the_range_ends():
    """bench/flower_sampler.py: its first row is 04's sampler, and every other row differs from
    an earlier row in exactly one setting; at_limits counts the values at |x| ≥ 0.95."""
    import torch

    flower_sampler = _bench_module("flower_sampler")
    settings = list(flower_sampler.SETTINGS.values())
    assert settings[0] == dict(w=2.0, steps=50, clip_x0=True)
    defaults = dict(eta=1.0, rescale=0.0, sigmas=None)
    full = [{**defaults, **s} for s in settings]
    for i, row in enumerate(full[1:], 1):
        assert any(sum(row[k] != earlier[k] for k in row) == 1 for earlier in full[:i]), settings[i]
    x = torch.tensor([-1.0, -0.96, -0.5, 0.0, 0.94, 0.95, 1.0, 0.2])
    assert flower_sampler.at_limits(x) == 0.5
    # a σ band becomes the guidance interval in the schedule's timesteps (04's cosine, T = 150)
    cosine = flower_sampler.ddpm.cosine_schedule(150)
    assert flower_sampler.sampler_kwargs(dict(w=2.0, sigmas=(0.28, 5.42)), cosine) == \
        dict(w=2.0, interval=(25, 131))
    assert flower_sampler.sampler_kwargs(dict(w=2.0), cosine) == dict(w=2.0)


def test_flower_sampler_trains_the_asked_widths_and_seed_and_keeps_each_model_apart(tmp_path, monkeypatch):
    """flower_sampler.py --channels/--seed: the network has the asked widths, the seed changes the
    trained weights, and each (epochs, batch, channels, seed) is saved under its own name."""
    import torch

    flower_sampler = _bench_module("flower_sampler")
    from course_lib.data import ImageDataset

    def tiny(size=32, classes=(), flip=True, limit=None):
        g = torch.Generator().manual_seed(0)
        return ImageDataset(torch.rand(8, 3, 32, 32, generator=g) * 2 - 1,
                            torch.arange(8) % 3, classes, flip)
    import sys
    # the training goes through bench/flower_recipe.py::train_by_epochs, imported by flower_sampler
    monkeypatch.setattr(sys.modules["flower_recipe"], "load_flowers", tiny)
    monkeypatch.setattr(flower_sampler, "HERE", tmp_path)
    monkeypatch.setattr(flower_sampler.config, "get_device", lambda verbose=False: torch.device("cpu"))
    wide, _, _ = flower_sampler.train_flower_model(1, 4, (24, 48, 96), seed=0)
    other, _, _ = flower_sampler.train_flower_model(1, 4, (24, 48, 96), seed=1)
    narrow, _, _ = flower_sampler.train_flower_model(1, 4, (16, 32, 64), seed=0)
    assert wide.out[0].out_channels == 24 and narrow.out[0].out_channels == 16
    differ = [not torch.equal(a, b) for a, b in zip(wide.state_dict().values(), other.state_dict().values())]
    assert any(differ)
    saved = sorted(p.name for p in (tmp_path / "out" / "flower_sampler").iterdir())
    assert saved == ["model_1_b4_c16-32-64_s0.pt", "model_1_b4_c24-48-96_s0.pt",
                     "model_1_b4_c24-48-96_s1.pt"]
    again, _, _ = flower_sampler.train_flower_model(1, 4, (24, 48, 96), seed=1)   # loaded, not retrained
    assert all(torch.equal(a, b) for a, b in zip(other.state_dict().values(), again.state_dict().values()))
    patched, _, _ = flower_sampler.train_flower_model(1, 4, (16, 32, 64), seed=0, patch=2)
    assert patched.down0[0](torch.zeros(1, 3, 32, 32)).shape == (1, 12, 16, 16)
    v_model, _, schedule = flower_sampler.train_flower_model(1, 4, (16, 32, 64), seed=0,
                                                             prediction="v")
    assert isinstance(v_model, flower_sampler.ddpm.VDenoiser)   # the samplers read it as eps
    x, t = torch.randn(2, 3, 32, 32), torch.tensor([149, 10])
    with torch.no_grad():
        ab = schedule.alpha_bars[t].view(2, 1, 1, 1)
        assert torch.allclose(v_model(x, t), ab.sqrt() * v_model.model(x, t) + (1 - ab).sqrt() * x)
    saved = sorted(p.name for p in (tmp_path / "out" / "flower_sampler").iterdir())
    assert "model_1_b4_c16-32-64_s0_p2.pt" in saved and "model_1_b4_c16-32-64_s0_v.pt" in saved
    again_v, _, _ = flower_sampler.train_flower_model(1, 4, (16, 32, 64), seed=0, prediction="v")
    assert isinstance(again_v, flower_sampler.ddpm.VDenoiser)    # loaded, and wrapped again


def test_flower_recipe_v_loss_is_the_eps_loss_weighted_by_one_over_alpha_bar():
    """flower_recipe.conditional_loss(prediction="v"): for one noise level and one noise draw,
    the v-loss equals the eps-loss of the same network read through VDenoiser, divided by ᾱ_t."""
    import pytest
    import torch

    flower_recipe = _bench_module("flower_recipe")
    from course_lib import ddpm
    from course_lib.unets import OptimizedUNet

    torch.manual_seed(0)
    schedule = ddpm.cosine_schedule(150)
    net = OptimizedUNet(3, 32, channels=(16, 32, 64), c_dim=3).eval()
    x0 = torch.rand(1, 3, 32, 32) * 2 - 1
    v_model = ddpm.VDenoiser(net, schedule)
    generator = torch.Generator().manual_seed(3)
    v_loss = v_model.loss(x0, generator=generator)
    generator = torch.Generator().manual_seed(3)
    eps_loss = ddpm.diffusion_loss(v_model, x0, schedule, generator=generator)
    t = torch.randint(0, 150, (1,), generator=torch.Generator().manual_seed(3))
    assert v_loss.item() == pytest.approx(eps_loss.item() / schedule.alpha_bars[t].item(), rel=1e-3)
    with pytest.raises(ValueError, match="'eps' or 'v'"):
        flower_recipe.conditional_loss(schedule, prediction="x0")
    # the bench's own loss: with prediction="v" it is VDenoiser's loss with 04's one-hot context
    from course_lib.conditioning import keep_mask, one_hot
    x0, labels = torch.rand(4, 3, 32, 32) * 2 - 1, torch.tensor([0, 1, 2, 1])
    torch.manual_seed(7)
    bench_v = flower_recipe.conditional_loss(schedule, keep_prob=1.0, min_snr=5, prediction="v")(
        net, (x0, labels))
    torch.manual_seed(7)
    mask = keep_mask(4, 1.0)
    library_v = v_model.loss(x0, min_snr_gamma=5, c=one_hot(labels, 3), c_mask=mask)
    assert bench_v.item() == pytest.approx(library_v.item(), rel=1e-6)
    torch.manual_seed(7)
    bench_eps = flower_recipe.conditional_loss(schedule, keep_prob=1.0, min_snr=5)(net, (x0, labels))
    assert bench_eps.item() != pytest.approx(bench_v.item(), rel=1e-3)


def test_clip_context_rows_change_one_thing_each():
    """bench/clip_context.py: every row changes one setting of the row it names; a row that
    repeats another ("again") changes none."""
    from dataclasses import asdict

    clip_context = _bench_module("clip_context")
    rows = {r.name.split(".")[0]: r for r in clip_context.rows()}
    assert rows["A"].base is None and rows["K"].rescale == 0.7
    assert rows["J"].vision == "vit" and rows["M"].vision == "lite0"
    for key, row in rows.items():
        if row.base is None:
            continue
        mine, theirs = asdict(row), asdict(rows[row.base])
        # "fresh" is bookkeeping (train again rather than reuse a training), not a setting
        changed = [f for f in mine if f not in ("name", "base", "fresh") and mine[f] != theirs[f]]
        if key == "V":   # width at (about) equal training time: one decision, two fields
            assert changed == ["unet_epochs", "channels"], (key, changed)
            continue
        if key == "Z":   # 04's flower loss (v weighted by min-SNR-5): one decision, two fields;
            #              row S measured v alone
            assert changed == ["prediction", "min_snr"] and rows["S"].prediction == "v", (key, changed)
            continue
        assert len(changed) == (0 if "again" in row.name else 1), (key, changed)
    assert rows["Q"].fresh and rows["R"].fresh and rows["R"].bf16 and rows["Q"].bf16 is False


def test_notebook_table_merges_partial_runs_and_records_the_machine_speed():
    """bench/run_notebooks.py: a partial run replaces only its notebooks' rows; older rows, from
    before the speed column, get "-" there; the reference step times a real training step."""
    run_notebooks = _bench_module("run_notebooks")
    previous = ("Notebooks, full profile\n\n| notebook | minutes |\n|---|---|\n"
                "| 01_UNets | 1.7 | 3 | 1349 | ok | 24% |\n"
                "| 03_Optimizations | 10.5 | 12 | 1285 | ok | 56% |\n"
                "| **whole course** | **12.2** | 50 | - | ok | - |\n")
    now = ["| 03_Optimizations | 19.0 | 12 | 1290 | MISSED | 57% | 105 |"]
    body = run_notebooks.merge_rows(previous, now)
    assert body == ["| 01_UNets | 1.7 | 3 | 1349 | ok | 24% | - |", now[0]]
    assert run_notebooks.merge_rows("", now) == now
    assert run_notebooks.reference_step_ms(steps=3) > 0



def test_quality_margins_use_the_notebooks_sample_counts():
    """bench/quality.py's margin (in standard errors) counts the samples each notebook judges."""
    import json
    import re

    quality = _bench_module("quality")

    def source(prefix):
        notebook = next((ROOT / "notebooks").glob(f"{prefix}_*.ipynb"))
        return "\n".join("".join(c["source"]) for c in json.loads(notebook.read_text())["cells"])

    def full(prefix, name):
        return int(re.search(rf"{name} = config\.pick\(full=(\d+)", source(prefix)).group(1))
    counts = quality.SAMPLES
    assert counts["fashion16_real_recognised"] == full("01", "N_JUDGED") == full("03", "N_JUDGED")
    assert counts["nb03_recognised"] == full("03", "N_JUDGED")
    assert counts["nb04_fashion_requested_w2"] == 10 * full("04", "PER_CLASS")
    assert counts["nb04_flowers_species_w2"] == 3 * full("04", "FLOWERS_PER_CLASS")
    assert counts["nb05_prompt_species"] == counts["nb05_heldout_wording_species"] == 5 * full("05", "PER_PROMPT")
    held_out = int(re.search(r"(\d+) held out", _stored_text("05")).group(1))
    assert counts["nb05_clip_zero_shot_species"] == counts["flowers32_real_species_acc"] == held_out

    import pytest

    def row(q, words):
        return next(r for r in quality.target_rows(q) if words in r["target"])
    fashion = row({"nb04_fashion_requested_w2": 0.95}, "FashionMNIST class")
    assert fashion["met"] and fashion["margin"] == pytest.approx(0.05 / (0.95 * 0.05 / 200) ** 0.5)
    flowers = row({"nb04_flowers_species_w2": 0.5, "flowers32_real_species_acc": 0.75}, "flower species")
    se = (0.5 * 0.5 / 150 + 0.8 ** 2 * 0.75 * 0.25 / 430) ** 0.5     # the samples' and the ceiling's
    assert not flowers["met"] and flowers["margin"] == pytest.approx((0.5 - 0.6) / se)
    minutes = row({"course_minutes": 40.0}, "minutes")
    assert minutes["met"] and minutes["margin"] is None
    assert not row({}, "prompt species")["met"]            # a missing figure is not met


def test_autoguidance_tables_come_from_the_stored_runs_and_back_the_notebooks_settings():
    """bench/autoguidance.md/.json are rebuilt from bench/autoguidance_runs.json, and the setting
    notebook 03 samples with is a row that beats the unguided one on both measures."""
    import json
    import re
    autoguidance = _bench_module("autoguidance")
    lines, data = autoguidance.tables()
    assert (ROOT / "bench" / "autoguidance.md").read_text() == "\n".join(lines) + "\n"
    assert json.loads((ROOT / "bench" / "autoguidance.json").read_text()) == data
    fashion = {r["name"]: r for r in data["03, channels 16, 32, 64, 10 epochs"]}
    plain, guided = fashion["DDIM-50, η = 1 (03 until now)"], fashion["autoguided by epoch 2, w = 2"]
    assert guided["seeds"] == plain["seeds"] == 2
    assert guided["recognised"] > plain["recognised"] and guided["frechet"] < plain["frechet"]
    def source(prefix):
        notebook = next((ROOT / "notebooks").glob(f"{prefix}_*.ipynb"))
        return "\n".join("".join(c["source"]) for c in json.loads(notebook.read_text())["cells"])
    nb03 = source("03")
    assert re.search(r"EARLY_EPOCH = config\.pick\(full=2,", nb03)
    assert "AutoGuidance(fixed_ema, fixed_history.snapshots[EARLY_EPOCH], w=2.0)" in nb03


def test_flower_prediction_table_comes_from_the_stored_runs_and_backs_notebook_04():
    """bench/flower_channels.md and flower_prediction.md rebuild exactly from the stored runs; the
    v-prediction runs beat the ε run of the same machine on the species share, at both seeds, and
    deterministic DDIM beats η = 1 for them; and notebook 04 trains and samples its flowers as
    those runs did (v through VDenoiser, η = 0)."""
    import json
    flower_channels = _bench_module("flower_channels")
    lines, _ = flower_channels.table()
    assert (ROOT / "bench" / "flower_channels.md").read_text().splitlines()[2:] == lines
    lines, rows = flower_channels.table(flower_channels.CPU_RUNS)
    assert (ROOT / "bench" / "flower_prediction.md").read_text().splitlines()[2:] == lines
    runs = {r["run"]: r for r in rows}
    eps = runs["x30cpu_s0"]
    assert eps["prediction"] == "eps" and eps["w"] == 2
    for name in ("x30v_s0", "x30v_s1"):
        v = runs[name]
        assert (v["prediction"], v["w"], v["epochs"], v["channels"]) == ("v", 2, 30, [24, 48, 96])
        assert v["species"] > eps["species"] + 0.1
    # sixteenth session: the same v-networks sampled with deterministic DDIM (η = 0) beat η = 1
    # at both seeds on the species share and on the distance to the three species' photos
    for eta_0, eta_1 in (("x30v_s0_eta", "x30v_s0"), ("x30v_s1_eta0", "x30v_s1")):
        assert (runs[eta_0]["eta"], runs[eta_1]["eta"]) == (0, 1)
        assert runs[eta_0]["species"] > runs[eta_1]["species"] + 0.05
        assert runs[eta_0]["frechet_species"] < runs[eta_1]["frechet_species"]
    notebook = next((ROOT / "notebooks").glob("04_*.ipynb"))
    source = "\n".join("".join(c["source"]) for c in json.loads(notebook.read_text())["cells"])
    assert 'conditional_loss(3, flower_schedule, prediction="v", min_snr_gamma=5)' in source
    assert "flower_denoiser = VDenoiser(flower_ema, flower_schedule)" in source
    assert "sample_guided(flower_denoiser," in source
    assert "FLOWER_ETA = 0.0" in source and "eta=FLOWER_ETA" in source


def test_min_snr_weighting_backs_04s_flower_loss():
    """bench/flower_weighting.md rebuilds from the stored runs (RESULTS section 16): at both training
    seeds, on machines of one kind, the v-loss weighted by min-SNR-5 draws samples closer to the
    three species' photos and more varied than the plain v-loss, at a species share within the two
    seeds' spread; and loss_by_noise_level.json shows the weighting moving the loss to the middle
    noise levels."""
    import json
    flower_channels = _bench_module("flower_channels")
    lines, rows = flower_channels.table(flower_channels.WEIGHTING_RUNS)
    assert (ROOT / "bench" / "flower_weighting.md").read_text().splitlines()[2:] == lines
    runs = {r["run"]: r for r in rows}
    for plain, weighted in (("x30v_s0_interval", "x30v_s0_minsnr5"), ("x30v_s1_eta0_bf16", "x30v_s1_minsnr5")):
        p, w = runs[plain], runs[weighted]
        assert (p["training"], w["training"]) == ("plain", "min-SNR-5")
        assert (p["seed"], p["eta"], p["epochs"]) == (w["seed"], w["eta"], w["epochs"])
        assert w["frechet_species"] < p["frechet_species"] - 50 and w["frechet"] < p["frechet"]
        assert w["variety"] > p["variety"]
    species = lambda *names: sum(runs[n]["species"] for n in names) / len(names)
    assert abs(species("x30v_s0_minsnr5", "x30v_s1_minsnr5")
               - species("x30v_s0_interval", "x30v_s1_eta0_bf16")) < 0.03
    bands = {r["network"]: r for r in json.loads((ROOT / "bench" / "loss_by_noise_level.json").read_text())["rows"]}
    for r in bands.values():
        assert r["middle_share_weighted"] > 2 * r["middle_share_plain"]
        assert abs(r["clean_share_plain"] + r["middle_share_plain"] + r["noisy_share_plain"] - 1) < 0.01
    plain, weighted = bands["plain v-loss"], bands["v-loss weighted by min-SNR-5"]
    assert plain["plain_loss"] < weighted["plain_loss"] and weighted["weighted_loss"] < plain["weighted_loss"]


def test_twice_the_epochs_backs_04s_flower_training():
    """bench/flower_epochs.md rebuilds from the stored runs (RESULTS section 17): at both training
    seeds, 60 epochs of 04's recipe read at least as many samples as the species asked for, draw
    them closer to the three species' photos and more varied than 30; and notebook 04 trains its
    flowers for 60 epochs in the full profile where training is fast (30 on a plain CPU)."""
    import json
    import re
    flower_channels = _bench_module("flower_channels")
    lines, rows = flower_channels.table(flower_channels.EPOCH_RUNS)
    assert (ROOT / "bench" / "flower_epochs.md").read_text().splitlines()[2:] == lines
    runs = {r["run"]: r for r in rows}
    for seed in (0, 1):
        short, long = runs[f"x30v_s{seed}_minsnr5"], runs[f"x60v_s{seed}_minsnr5"]
        assert (short["epochs"], long["epochs"]) == (30, 60)
        assert short["training"] == long["training"] == "min-SNR-5" and short["seed"] == long["seed"]
        assert (short["w"], short["eta"]) == (long["w"], long["eta"]) == (2, 0)
        assert long["species"] >= short["species"]
        assert long["frechet_species"] < short["frechet_species"] - 50
        assert long["variety"] > short["variety"] + 0.05
    notebook = next((ROOT / "notebooks").glob("04_*.ipynb"))
    source = "\n".join("".join(c["source"]) for c in json.loads(notebook.read_text())["cells"])
    assert re.search(r"FLOWER_EPOCHS = config\.pick\(full=config\.by_speed\(device, fast=60, bf16=30, "
                     r"float32=20\),", source)


def test_fashion_guidance_backs_04_keeping_its_unclipped_sampler():
    """bench/fashion_guidance.json: at every w, clipping x̂₀ removes the burnt white but reads fewer
    samples as the class asked for at a larger distance, and guidance rescale leaves the white;
    so notebook 04 samples FashionMNIST without either, as RESULTS section 14 says."""
    import json
    data = json.loads((ROOT / "bench" / "fashion_guidance.json").read_text())
    rows = {(r["w"], r["clip_x0"], r["rescale"]): r for r in data["rows"] if not r.get("sigmas")}
    assert data["real_burnt"] < 0.01
    for w in (1.0, 2.0, 3.0):
        plain, clipped = rows[(w, False, 0.0)], rows[(w, True, 0.0)]
        assert clipped["burnt"] < plain["burnt"] / 10 and plain["burnt"] > 0.03
        assert clipped["requested"] <= plain["requested"] and clipped["frechet"] > plain["frechet"]
    for w in (2.0, 3.0):
        assert rows[(w, False, 0.7)]["burnt"] >= rows[(w, False, 0.0)]["burnt"] * 0.9
    lines = (ROOT / "bench" / "fashion_guidance.md").read_text().splitlines()
    assert sum(line.startswith("| ") and line[2].isdigit() for line in lines) == len(data["rows"])
    notebook = next((ROOT / "notebooks").glob("04_*.ipynb"))
    cells = json.loads(notebook.read_text())["cells"]
    fashion = next("".join(c["source"]) for c in cells if "def fashion_samples" in "".join(c["source"]))
    assert "clip_x0" not in fashion and "rescale" not in fashion


def test_clip_context_eta_rows_back_05_keeping_eta_1():
    """Rows T and U (η = 0) are stored beside Q and S, and notebook 05 samples with the default
    η = 1: T's gain over Q is under two standard errors of 100 samples on both wording sets,
    and its variety is lower."""
    import json
    rows = {r["name"].split(".")[0]: r for r in
            json.loads((ROOT / "bench" / "clip_context.json").read_text())["rows"]}
    q, t = rows["Q"], rows["T"]
    assert t["eta"] == 0.0 and rows["U"]["eta"] == 0.0 and q.get("eta", 1.0) == 1.0
    for wording in ("training_wordings", "new_wordings"):
        se = (q[wording] * (1 - q[wording]) / 100) ** 0.5
        assert t[wording] - q[wording] < 2 * se
        assert t[f"{wording}_variety"] < q[f"{wording}_variety"]
    notebook = next((ROOT / "notebooks").glob("05_*.ipynb"))
    source = "\n".join("".join(c["source"]) for c in json.loads(notebook.read_text())["cells"])
    assert "eta=" not in source


def test_clip_context_wider_unet_rows_back_notebook_05():
    """Rows V and W (04's flower widths for 20 epochs, two seeds) read more prompt samples as the
    prompt's species than the narrow recipe (row Q) on both wording sets, on average and at no
    cost in variety; notebook 05 trains that UNet."""
    import json
    rows = {r["name"].split(".")[0]: r for r in
            json.loads((ROOT / "bench" / "clip_context.json").read_text())["rows"]}
    q, wide = rows["Q"], (rows["V"], rows["W"])
    assert [r["seed"] for r in wide] == [0, 1]
    for r in wide:
        assert (r["channels"], r["unet_epochs"]) == ([24, 48, 96], 20)
    for wording in ("training_wordings", "new_wordings"):
        assert sum(r[wording] for r in wide) / 2 > q[wording] + 0.04
        assert min(r[f"{wording}_variety"] for r in wide) > q[f"{wording}_variety"] - 0.05
    notebook = next((ROOT / "notebooks").glob("05_*.ipynb"))
    source = "\n".join("".join(c["source"]) for c in json.loads(notebook.read_text())["cells"])
    assert "UNET_EPOCHS = config.pick(full=config.by_speed(device, fast=20, bf16=20," in source
    assert "channels=(24, 48, 96), T=T, c_dim=clip.embed_dim" in source


def test_05s_epoch_rows_and_runs_back_keeping_20_epochs():
    """Rows X16-X19 (05's UNet as the notebook trains it, for 20 and 40 epochs, two seeds): at
    both seeds and on both wording sets, 40 epochs read more of the bench's prompt samples as the
    prompt's species; but notebook 05 run in full with 40 (bench/nb05_epochs.md) read no more of
    its own than the stored 20-epoch run, for over 1.8× the UNet's time, so 05 keeps 20 (RESULTS
    section 17); the stored run is the 20-epoch row."""
    import json
    rows = {r["name"].split(".")[0]: r for r in
            json.loads((ROOT / "bench" / "clip_context.json").read_text())["rows"]}
    for short, long in ((rows["X16"], rows["X17"]), (rows["X18"], rows["X19"])):
        assert (short["unet_epochs"], long["unet_epochs"]) == (20, 40) and short["seed"] == long["seed"]
        assert short["channels"] == long["channels"] == [24, 48, 96]
        for wording in ("training_wordings", "new_wordings"):
            assert long[wording] > short[wording]
    assert {rows["X16"]["seed"], rows["X18"]["seed"]} == {0, 1}
    runs = {r["unet_epochs"]: r for r in json.loads((ROOT / "bench" / "nb05_epochs.json").read_text())["rows"]}
    assert set(runs) == {20, 40}
    assert runs[40]["unet_s"] > 1.8 * runs[20]["unet_s"]
    assert (runs[40]["training_wordings"] + runs[40]["new_wordings"]
            <= runs[20]["training_wordings"] + runs[20]["new_wordings"])
    notebook = next((ROOT / "notebooks").glob("05_*.ipynb"))
    source = "\n".join("".join(c["source"]) for c in json.loads(notebook.read_text())["cells"])
    assert "UNET_EPOCHS = config.pick(full=config.by_speed(device, fast=20, bf16=20, float32=14), test=1)" in source
    stored = _bench_module("nb05_epochs").figures(notebook)   # what the stored run printed
    assert stored["unet_epochs"] == 20
    assert stored == {key: value for key, value in runs[20].items() if key != "label"}


def test_guidance_interval_rows_back_where_the_notebooks_use_it():
    """RESULTS section 15: guidance only for σ in (0.28, 5.42] halves 04's burnt FashionMNIST
    pixels at w = 2 for at most two points of the class share, and lowers the distance, so 04
    shows it; on 04's flowers it changes the species share by under three points (not adopted),
    and on 05 (row Y against row X) it reads fewer prompt samples as the prompt's species on both
    wording sets (not adopted). The notebooks' own samplers follow."""
    import json
    fashion = json.loads((ROOT / "bench" / "fashion_guidance.json").read_text())["rows"]
    plain = {r["w"]: r for r in fashion if not r.get("sigmas") and not r["clip_x0"] and not r["rescale"]}
    banded = {r["w"]: r for r in fashion if r.get("sigmas") == [0.28, 5.42]}
    assert set(banded) == {2.0, 3.0} and banded[2.0]["interval"] == [12, 85]
    assert banded[2.0]["burnt"] < plain[2.0]["burnt"] / 2
    assert banded[2.0]["requested"] > plain[2.0]["requested"] - 0.02
    assert banded[2.0]["frechet"] < plain[2.0]["frechet"]
    assert banded[3.0]["burnt"] < plain[2.0]["burnt"] and banded[3.0]["requested"] >= plain[2.0]["requested"]

    flowers = json.loads((ROOT / "bench" / "flower_channels_x30v_s0_interval.json").read_text())["rows"]
    base = flowers[0]
    assert base["settings"] == {"w": 2.0, "steps": 50, "clip_x0": True, "eta": 0.0}
    for r in flowers[1:]:
        assert abs(r["species"] - base["species"]) < 0.03 and abs(r["variety"] - base["variety"]) < 0.03

    rows = {r["name"].split(".")[0]: r for r in
            json.loads((ROOT / "bench" / "clip_context.json").read_text())["rows"]}
    x, y = rows["X"], rows["Y"]
    assert x["sigmas"] is None and y["sigmas"] == [0.28, 5.42]
    for wording in ("training_wordings", "new_wordings"):
        assert y[wording] < x[wording]

    def source(pattern):
        notebook = next((ROOT / "notebooks").glob(pattern))
        return "\n".join("".join(c["source"]) for c in json.loads(notebook.read_text())["cells"])
    nb04, nb05 = source("04_*.ipynb"), source("05_*.ipynb")
    assert "interval = guidance_interval(schedule, 0.28, 5.42)" in nb04
    flower_sampler = nb04[nb04.index("def flower_samples"):nb04.index("def flower_samples") + 400]
    assert "interval" not in flower_sampler and "interval" not in nb05


def test_more_ddim_steps_do_not_pay_for_04s_flowers():
    """RESULTS section 15: DDIM-100 and -150 at η = 0 read the species within three points of
    DDIM-50 (which repeats the interval run's baseline to the digit) at up to 2.7× the time, so
    notebook 04 keeps 50 sampling steps."""
    import json
    steps = json.loads((ROOT / "bench" / "flower_channels_x30v_s0_steps.json").read_text())["rows"]
    interval = json.loads((ROOT / "bench" / "flower_channels_x30v_s0_interval.json").read_text())["rows"]
    assert [r["settings"]["steps"] for r in steps] == [50, 100, 150]
    assert {k: steps[0][k] for k in ("species", "frechet", "variety")} == \
        {k: interval[0][k] for k in ("species", "frechet", "variety")}
    for r in steps[1:]:
        assert abs(r["species"] - steps[0]["species"]) < 0.03 and r["seconds"] > 1.5 * steps[0]["seconds"]
    notebook = next((ROOT / "notebooks").glob("04_*.ipynb"))
    source = "\n".join("".join(c["source"]) for c in json.loads(notebook.read_text())["cells"])
    assert "SAMPLE_STEPS = config.pick(full=50" in source


def test_clip_context_distance_rows_back_05_keeping_eps_at_w3():
    """Rows X3-Z4 (RESULTS section 6): X3 and Z1 reproduce X and Z; the v-UNet weighted by
    min-SNR-5 stays further from the real photos and less varied than the ε-UNet at w = 3 at every
    guidance strength and η tried; for the ε-UNet the distance is smallest at w = 3 on both wording
    sets while the species share keeps rising with w; η = 0 or 0.5 or DDIM-100 (X7-X9) do not beat
    η = 1 with 50 steps; projected guidance (X11, X13) brings the colourfulness to the photos' but
    the samples further from them. Notebook 05 samples its ε-UNet with plain guidance, w = 3, η = 1
    and DDIM-50."""
    import json
    rows = {r["name"].split(".")[0]: r for r in
            json.loads((ROOT / "bench" / "clip_context.json").read_text())["rows"]}
    figures = ("training_wordings", "new_wordings", "training_wordings_variety", "new_wordings_variety")
    for again, first in (("X3", "X"), ("Z1", "Z")):
        assert [rows[again][f] for f in figures] == [rows[first][f] for f in figures]
    eps = {rows[k]["w"]: rows[k] for k in ("X4", "X3", "X5", "X6")}
    assert sorted(eps) == [2.0, 3.0, 4.0, 5.0] and all(r["prediction"] == "eps" for r in eps.values())
    for wording in ("training_wordings", "new_wordings"):
        shares = [eps[w][wording] for w in sorted(eps)]
        assert shares == sorted(shares)
        assert min(eps, key=lambda w: eps[w][f"{wording}_frechet"]) == 3.0
        for k in ("Z1", "Z2", "Z3", "Z4"):
            v = rows[k]
            assert v["prediction"] == "v" and v["min_snr"] == 5.0
            assert v[f"{wording}_frechet"] > eps[3.0][f"{wording}_frechet"]
            assert v[f"{wording}_variety"] < eps[3.0][f"{wording}_variety"] - 0.1
    # X7-X9: η = 0, DDIM-100 and η = 0.5 on X3's training are not closer on both wording sets and
    # read fewer of the new wordings' species
    for k in ("X7", "X8", "X9"):
        other = rows[k]
        assert other["w"] == 3.0 and (other["eta"], other["steps"]) != (1.0, 50)
        assert any(other[f"{wording}_frechet"] > eps[3.0][f"{wording}_frechet"]
                   for wording in ("training_wordings", "new_wordings"))
        assert other["new_wordings"] < eps[3.0]["new_wordings"]
    # X10-X13: 05's samples are more colourful than the photos, more so at w = 5; projected guidance
    # brings them to the photos' level but further from the photos and less varied
    data = json.loads((ROOT / "bench" / "clip_context.json").read_text())
    real = data["real_colourfulness"]
    for plain, projected, w in (("X10", "X11", 3.0), ("X12", "X13", 5.0)):
        p, q = rows[plain], rows[projected]
        assert (p["w"], q["w"], p["projected"], q["projected"]) == (w, w, None, 0.0)
        for wording in ("training_wordings", "new_wordings"):
            assert p[f"{wording}_colourfulness"] > 1.1 * real
            assert abs(q[f"{wording}_colourfulness"] - real) < abs(p[f"{wording}_colourfulness"] - real) / 2
            assert q[f"{wording}_frechet"] > p[f"{wording}_frechet"]
            assert q[f"{wording}_variety"] < p[f"{wording}_variety"]
    # X14, X15: keeping half the part along x̂₀ lands in between: less colourful, further, less varied
    for plain, half in (("X10", "X14"), ("X12", "X15")):
        p, q = rows[plain], rows[half]
        assert q["projected"] == 0.5 and q["w"] == p["w"]
        for wording in ("training_wordings", "new_wordings"):
            assert q[f"{wording}_colourfulness"] < p[f"{wording}_colourfulness"]
            assert q[f"{wording}_frechet"] > p[f"{wording}_frechet"]
            assert q[f"{wording}_variety"] < p[f"{wording}_variety"]
    assert [rows["X10"][f] for f in figures] == [rows["X3"][f] for f in figures]
    notebook = next((ROOT / "notebooks").glob("05_*.ipynb"))
    source = "\n".join("".join(c["source"]) for c in json.loads(notebook.read_text())["cells"]
                       if c["cell_type"] == "code")
    assert "GUIDANCE = 3.0" in source and "VDenoiser" not in source and "projected=" not in source
    assert "SAMPLE_STEPS = config.pick(full=50" in source and "eta=" not in source


def test_zoomed_crops_do_not_pay_for_04s_flowers():
    """RESULTS section 16: 04's network trained on random zoomed-in crops of its photos (same seed,
    epochs, loss and sampler) reads fewer of the species asked for, draws further from the three
    species' photos and no more varied samples, so notebook 04 trains on the whole photos."""
    import json
    flower_channels = _bench_module("flower_channels")
    _, rows = flower_channels.table(("x30v_s0_minsnr5", "x30v_s0_minsnr5_zoom"))
    whole, zoom = rows
    assert zoom["training"].startswith("min-SNR-5, zoomed crops") and whole["training"] == "min-SNR-5"
    assert [whole[k] for k in ("seed", "epochs", "eta", "w")] == [zoom[k] for k in ("seed", "epochs", "eta", "w")]
    assert zoom["species"] < whole["species"] and zoom["frechet_species"] > whole["frechet_species"] + 50
    assert zoom["variety"] <= whole["variety"]
    stored = json.loads((ROOT / "bench" / "flower_channels_x30v_s0_minsnr5_zoom.json").read_text())
    assert stored["zoom"] == [0.5, 1.0]
    notebook = next((ROOT / "notebooks").glob("04_*.ipynb"))
    source = "\n".join("".join(c["source"]) for c in json.loads(notebook.read_text())["cells"])
    assert "RandomResizedCrop" not in source and "RandomCrop" not in source


def test_warp_registration_rows_back_the_grader_keeping_its_copy_check():
    """bench/warp_registration.md: undoing a warp before the copy check cannot separate warped
    copies from new handwriting, so the grader keeps its shift-and-blur check; walkthrough 06
    quotes the shares as measured."""
    import json
    rows = json.loads((ROOT / "bench" / "warp_registration.json").read_text())["rows"]
    real, key = rows["real held-out test digits"], rows["answer key samples"]
    elastic, affine = rows["elastic (alpha 34, sigma 4)"], rows["affine (10 deg, 6%, 0.9-1.1x)"]
    from course_lib.grade_checks import COPY_SHARE as limit
    for model in ("plain", "affine", "field"):     # no warp model catches elastic copies ...
        assert elastic[f"{model}_above"] <= limit
    for model in ("affine", "field"):              # ... and each one raises the false matches
        assert real[f"{model}_above"] > real["plain_above"]
    assert real["field_above"] > limit and key["field_above"] > limit   # would reject real digits
    assert rows["copies"]["plain_above"] == 1.0
    text = " ".join((ROOT / "walkthroughs" / "06_Assessment_Walkthrough.md").read_text().split())
    quoted = (f"from {real['plain_above']:.0%} to {real['affine_above']:.0%} and of the answer key's "
              f"samples to {key['affine_above']:.0%}, while affine copies reach only "
              f"{affine['affine_above']:.0%} and elastic ones {elastic['affine_above']:.0%}",
              f"{real['field_above']:.0%} of real unseen digits, {key['field_above']:.0%} of the key's "
              f"samples, and still only {elastic['field_above']:.0%} of elastic copies")
    for phrase in quoted:
        assert phrase in text, phrase


def test_network_check_passes_the_key_and_catches_samplers_without_a_network():
    """bench/network_check.md: with its weights shuffled, the answer key's network draws far fewer
    digits than the grader's limit, and no handwriting, while every sampler that needs no network
    keeps its digits, or its handwriting where a classifier routes it, and is rejected; what
    other shuffled networks may draw passes; walkthrough 06 quotes the figures as measured."""
    import json
    from math import comb

    from course_lib.grade_checks import DISTINCT_SHARE, PLAIN_SHARE, SHUFFLED_LIMIT, STROKES
    data = json.loads((ROOT / "bench" / "network_check.json").read_text())
    assert data["limit"] == SHUFFLED_LIMIT and data["trained_share"] >= 0.95
    assert (data["strokes"], data["plain_share"], data["distinct_share"]) == (
        STROKES, PLAIN_SHARE, DISTINCT_SHARE)
    results = dict(data["results"])
    key = results.pop("answer key, weights shuffled")
    assert key["rejected"] == 0 and key["max"] < SHUFFLED_LIMIT and key["no_pictures"] == 0
    assert key["mean"] == sum(key["shares"]) / len(key["shares"]) and key["handwriting"] == 0
    stand_ins = {k: results.pop(k) for k in list(results) if k.startswith("stand-in")}
    assert len(stand_ins) == 3 and all(r["rejected"] == 0 for r in stand_ins.values()), stand_ins
    routed = {k: results.pop(k) for k in list(results) if ", routed" in k}
    assert len(routed) == 4 and all(r["max"] < SHUFFLED_LIMIT and r["handwriting"] == 1
                                    for r in routed.values()), routed
    assert {"elastic (alpha 34, sigma 4)", "affine (10 deg, 6%, 0.9-1.1x)"} <= set(results)
    assert all(r["rejected"] == 1.0 for r in [*results.values(), *routed.values()]), results
    lowest = min(r["min"] for r in results.values())
    n, need = 20, round(SHUFFLED_LIMIT * 20)
    false_fail = sum(comb(n, k) * key["mean"] ** k * (1 - key["mean"]) ** (n - k)
                     for k in range(need, n + 1))
    text = " ".join((ROOT / "walkthroughs" / "06_Assessment_Walkthrough.md").read_text().split())
    assert (f"read {key['mean']:.0%} on average as asked for ({key['max']:.0%} at most), while every "
            f"sampler that needs no network, warped copies included, reads {lowest:.0%} or more") in text
    assert f"fails the submission when {SHUFFLED_LIMIT:.0%} or more" in text
    assert 1 / 3e6 < false_fail < 1 / 1e6 and "about once in two million gradings" in text
    ratio = key["ratio"]
    assert (f"the answer key's shuffled draws lie {ratio['min']:.1f} to {ratio['max']:.1f} times past "
            f"that limit, with strokes of {key['strokes']['max']:.2f} at most") in text
    assert (f"the routed digits lie within {max(r['ratio']['max'] for r in routed.values()):.2f} "
            "of it") in text


def test_self_conditioning_does_not_pay_for_04s_flowers():
    """RESULTS section 16: 04's min-SNR-5 network, self-conditioned on its own x̂₀ (seeds 0 and 1,
    same epochs and sampler), draws further from the three species' photos with less variety and
    faded colours; without the feedback the two seeds land on either side of 04's own network, so
    notebook 04 keeps it."""
    import json
    flower_channels = _bench_module("flower_channels")
    _, rows = flower_channels.table(("x30v_s0_minsnr5", "x30v_s1_minsnr5", "x30v_s0_minsnr5_sc",
                                     "x30v_s1_minsnr5_sc", "x30v_s0_minsnr5_sc_nofb",
                                     "x30v_s1_minsnr5_sc_nofb"))
    plain, fed, zero = rows[:2], rows[2:4], rows[4:]
    for p, f, z in zip(plain, fed, zero):
        assert p["seed"] == f["seed"] == z["seed"] and p["epochs"] == f["epochs"] and p["eta"] == f["eta"]
        assert f["frechet_species"] > p["frechet_species"] + 50 and f["variety"] < p["variety"]
        assert f["train_seconds"] > p["train_seconds"]
    assert (zero[0]["frechet_species"] < plain[0]["frechet_species"]) != (
        zero[1]["frechet_species"] < plain[1]["frechet_species"])     # the seeds disagree
    burnt = json.loads((ROOT / "bench" / "flower_channels_x30v_s0_minsnr5.json").read_text()
                       )["rows"][0]["at_limits"]     # the plain run's, 04's network
    for name in ("x30v_s0_minsnr5_sc", "x30v_s1_minsnr5_sc_nofb"):
        stored = json.loads((ROOT / "bench" / f"flower_channels_{name}.json").read_text())
        fed_back = stored.get("feedback", True)      # runs before the --feedback flag fed it back
        assert stored["self_cond"] == 0.5 and fed_back is name.endswith("_sc")
        assert stored["rows"][0]["at_limits"] < burnt or not fed_back      # faded
    text = " ".join((ROOT / "bench" / "RESULTS.md").read_text().split())
    frechet = [f"{r['frechet_species']:.1f}" for r in (*plain, *fed)]
    variety = [f"{r['variety']:.2f}" for r in (*plain, *fed)]
    assert (f"grow from {frechet[0]} and {frechet[1]} to {frechet[2]} and {frechet[3]}, the variety "
            f"falls from {variety[0]} and {variety[1]} to {variety[2]} and {variety[3]}") in text
    notebook = next((ROOT / "notebooks").glob("04_*.ipynb"))
    assert "SelfConditioned" not in notebook.read_text()


def test_caption_colours_agree_with_the_person_as_the_documents_say():
    """RESULTS section 7: counting bright orange and yellow pixels below saturation 0.4 as cream
    (white) petals agrees better with a person's labels on the tuning set and on both held-out
    sets; the walkthrough, the answers and the README quote bench/captions.json."""
    import json
    from course_lib import clip as course_clip
    stored = json.loads((ROOT / "bench" / "captions.json").read_text())
    labels = json.loads((ROOT / "bench" / "caption_labels.json").read_text())
    assert stored["adopted_warm_sat"] == course_clip.WARM_PETAL_SATURATION
    before, now = stored["sweep"][str(stored["before_warm_sat"])], stored["sweep"][str(stored["adopted_warm_sat"])]
    for name in ("tuning", "held_out", "held_out_2"):
        assert now[name]["labelled"] == before[name]["labelled"] == sum(
            c is not None for c in labels[name].values())
        assert now[name]["agree"] > before[name]["agree"]
        assert stored[name] == now[name]
    assert not set(labels["held_out_2"]) & (set(labels["tuning"]) | set(labels["held_out"]))

    def pct(r):
        return f"{r['agreement']:.0%}"

    def text(path):
        return " ".join((ROOT / path).read_text().split())
    walk = text("walkthroughs/05_CLIP_Walkthrough.md")
    for r in (now["tuning"], now["held_out"], now["held_out_2"]):
        assert f"{r['agree']} of {r['labelled']}" in walk and pct(r) in walk
    assert f"{before['tuning']['agree']} of {before['tuning']['labelled']} photos" in walk
    answers = text("answers/05_CLIP_Answers.md")
    assert (f"agrees on {pct(now['tuning'])} of the photos used to look at the rules and on "
            f"{pct(now['held_out'])} and {pct(now['held_out_2'])}") in answers
    assert f"({pct(before['held_out'])} and {pct(before['held_out_2'])} before" in answers
    readme = text("README.md")
    assert f"labels on {pct(now['held_out'])} and {pct(now['held_out_2'])} of two held-out sets" in readme
    results = text("bench/RESULTS.md")
    both_now = now["held_out"]["agree"] + now["held_out_2"]["agree"]
    both_before = before["held_out"]["agree"] + before["held_out_2"]["agree"]
    total = now["held_out"]["labelled"] + now["held_out_2"]["labelled"]
    assert (f"{both_now} of {total} ({both_now / total:.0%}) against {both_before} "
            f"({both_before / total:.0%})") in results


def test_caption_framing_figures_are_the_stored_ones():
    """RESULTS section 7: the linear probe on the locked Lite0 reads "close-up or not" as the person
    does far more often than the pixel rule it replaced, on both held-out sets; the documents quote
    bench/captions.json."""
    import json
    framed = json.loads((ROOT / "bench" / "captions.json").read_text())["framing"]
    for name in ("held_out", "held_out_2"):
        r = framed[name]
        assert r["probe"] >= r["pixel_rule"] + 8 and r["probe"] >= r["always_photo"] + 8

    def text(path):
        return " ".join((ROOT / path).read_text().split())

    def pct(name, key):
        return f"{framed[name][key] / framed[name]['labelled']:.0%}"
    walk, results = text("walkthroughs/05_CLIP_Walkthrough.md"), text("bench/RESULTS.md")
    ho, ho2 = framed["held_out"], framed["held_out_2"]
    assert (f"agrees on {ho['probe']} of {ho['labelled']} ({pct('held_out', 'probe')}) and "
            f"{ho2['probe']} of {ho2['labelled']} ({pct('held_out_2', 'probe')})") in walk
    assert f"agreed on {ho['pixel_rule']} of {ho['labelled']} and {ho2['pixel_rule']} of {ho2['labelled']}" in walk
    assert f"agrees on {ho['probe']} of {ho['labelled']} ({pct('held_out', 'probe')}) and {ho2['probe']} of {ho2['labelled']}" in results
    readme = text("README.md")
    assert (f"on {pct('held_out', 'probe')} and {pct('held_out_2', 'probe')} "
            f"({pct('held_out', 'pixel_rule')} and {pct('held_out_2', 'pixel_rule')} for the pixel rule") in readme


def test_05_negative_prompt_prose_quotes_its_stored_run():
    """05's "What happened" after the negative-prompt demo, walkthrough 05 and answers 05 Q19
    quote the demo's printed shares and red counts; a re-run that moves them must move the prose."""
    import json
    import re
    printed = {m.group(1).strip(): (m.group(2), int(m.group(3))) for m in re.finditer(
        r"^(.+?)\s+(\d+%) of \d+ read as a \w+;\s+(\d+) mostly red", _stored_text("05"), re.M)}
    rose = printed["a photo of a red rose"]
    tulip = printed["avoiding “a photo of a tulip”"]
    red_tulip = printed["avoiding “a photo of a red tulip”"]
    sunflower = printed["a photo of a yellow sunflower"]
    sky = printed["avoiding “sunflowers against the sky”"]
    cells = json.loads((ROOT / "notebooks" / "05_CLIP.ipynb").read_text())["cells"]
    prose = next("".join(c["source"]) for c in cells if c["cell_type"] == "markdown"
                 and "".join(c["source"]).startswith("**What happened.** In the stored run, avoiding"))
    prose = " ".join(prose.split())
    assert f"from {rose[0]} to {tulip[0]}" in prose and f"left it at {red_tulip[0]}" in prose
    assert (f"{rose[1]} of the 40 plain samples are mostly red, {tulip[1]} with the first negative "
            f"prompt and {red_tulip[1]} with the second") in prose
    assert f"({sunflower[0]} to {sky[0]})" in prose
    walk = " ".join((ROOT / "walkthroughs" / "05_CLIP_Walkthrough.md").read_text().split())
    for quote in (f"a rose in {rose[0]} of 40 samples; avoiding \"a photo of a tulip\" makes that "
                  f"{tulip[0]}", f"leaves {red_tulip[0]}",
                  f"({rose[1]}, {tulip[1]} and {red_tulip[1]} of the 40 samples mostly red)",
                  f"({sunflower[0]} to {sky[0]})"):
        assert quote in walk, quote
    answers = " ".join((ROOT / "answers" / "05_CLIP_Answers.md").read_text().split())
    for quote in (f"read {sunflower[0]} of the plain samples as sunflowers and {sky[0]} with the",
                  f"({rose[1]} of 40 samples mostly red, {red_tulip[1]} with the negative prompt)",
                  f"from {rose[0]} to {tulip[0]}"):
        assert quote in answers, quote


def test_bf16_isa_backs_bfloat16_on_amx_or_avx512_bf16_only():
    """bench/bf16_isa.json (RESULTS section 18): with AVX512-BF16 every notebook network's step and
    05's sampling take less time in bfloat16 than in float32; with the instructions capped below
    it (bfloat16 emulated) every one takes more. So config.native_bf16 says yes on that machine,
    and trains_fast (60 flower epochs) no; the README, RESULTS and the markdown table agree."""
    import json
    data = json.loads((ROOT / "bench" / "bf16_isa.json").read_text())
    assert data["cpu"] == {"avx512_bf16": True, "amx_tile": False, "native_bf16": True,
                           "trains_fast": False}
    own = data["settings"]["this CPU"]["ms"]
    assert len(own) == 5 and all(bf16 < 0.8 * f32 for f32, bf16 in own.values())
    for capped in ("without AVX512-BF16", "AVX2 only"):
        assert all(bf16 > 1.5 * f32 for f32, bf16 in data["settings"][capped]["ms"].values())
    table = (ROOT / "bench" / "bf16_isa.md").read_text()
    assert table.count("\n| ") == 1 + sum(len(s["ms"]) for s in data["settings"].values())
    steps = [round(100 * (1 - bf16 / f32)) for name, (f32, bf16) in own.items() if "sampling" not in name]
    quoted = f"{min(steps)}–{max(steps)}% less"
    section = " ".join((ROOT / "bench" / "RESULTS.md").read_text().split("## 18. ")[1].split())
    assert f"this CPU takes {quoted} time a training step" in section
    assert f"with AVX512-BF16 (AMD Zen 4) {quoted}" in " ".join((ROOT / "README.md").read_text().split())


def _whole_course_run(table: str, section: str):
    """One full run kept beside the stored one (bench/notebooks_full_<table>.md and
    grade_key_full_<table>.md): every notebook ok and under 4 GiB, the total their sum, the answer
    key passing, and RESULTS section ``section`` quoting the course's minutes as the two tables' sum.
    Returns (the notebook table's header, notebook minutes, grading minutes, the course's minutes
    as quoted, the README's text with its line breaks as spaces)."""
    import re
    notebooks = (ROOT / "bench" / f"notebooks_full_{table}.md").read_text()
    rows = re.findall(r"^\| (\d\d_\w+) \| ([\d.]+) \| (\S+) \| (\d+) \| (\w+) \|", notebooks, re.M)
    assert len(rows) == 7 and all(status == "ok" and int(mib) < 4096 for *_, mib, status in rows)
    total = float(re.search(r"\*\*whole course\*\* \| \*\*([\d.]+)\*\*", notebooks).group(1))
    assert abs(total - sum(float(m) for _, m, *_ in rows)) < 0.051
    grade = (ROOT / "bench" / f"grade_key_full_{table}.md").read_text()
    assert "- result: pass" in grade and "exit status 0" in grade
    grading = int(re.search(r"whole grading, wall clock: (\d+) s", grade).group(1)) / 60
    course = f"{total + round(grading, 1):.1f}"
    text = " ".join((ROOT / "bench" / "RESULTS.md").read_text().split(f"## {section}. ")[1].split())
    assert f"**{course} minutes for the course** (the notebooks in {total:.1f} and {grading:.1f}" in text
    readme = " ".join((ROOT / "README.md").read_text().split())
    return notebooks.splitlines()[0], total, grading, course, readme


def test_the_avx512_bf16_course_run_adds_up_as_its_documents_say():
    """bench/notebooks_full_avx512bf16.md and grade_key_full_avx512bf16.md (a full run on a CPU with
    AVX512-BF16, no AMX): every notebook within its time and memory, the answer key passing, and
    the course minutes quoted in RESULTS section 18 and the README are the two tables' sum."""
    header, total, grading, course, readme = _whole_course_run("avx512bf16", "18")
    assert "bfloat16 on AVX512-BF16 (no AMX)" in header
    assert f"the notebooks took {total:.1f} minutes and the grading {grading:.1f}, {course} in all" in readme
    assert f"the course took {course} minutes" in readme


def test_notebook_table_header_names_how_the_cpu_multiplies_bfloat16(monkeypatch):
    """bench/run_notebooks.py's header says AMX, AVX512-BF16 or float32, as config.native_bf16 decides."""
    import torch
    run_notebooks = _bench_module("run_notebooks")
    for amx, avx, said in ((True, False, "bfloat16 on AMX"),
                           (False, True, "bfloat16 on AVX512-BF16 (no AMX)"),
                           (False, False, "float32 (no bfloat16 instructions)")):
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda amx=amx: amx, raising=False)
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda avx=avx: avx, raising=False)
        assert run_notebooks.bf16_hardware() == said
    monkeypatch.setenv("COURSE_BF16", "0")     # a run forced to float32 says so, whatever the CPU
    assert run_notebooks.bf16_hardware() == "float32 (COURSE_BF16=0)"


def test_grading_checks_catch_judge_ascent_by_the_second_opinion_and_its_texture_as_documented():
    """bench/grading_checks.json: pixels optimised against the course's judge pass every other
    check and are caught by the private judge and by the plain background; no real or
    answer-key set is refused, and no other cheat is a texture; the README and walkthrough 06
    quote the private judge's figure."""
    import json
    results = json.loads((ROOT / "bench" / "grading_checks.json").read_text())
    ascent = results["judge ascent (no model)"]
    assert ascent["rejected"] == ascent["by_second_opinion"] == ascent["by_background"] == 1.0
    assert ascent["by_memorisation"] == ascent["by_realism"] == ascent["by_accuracy"] == 0.0
    for source in ("real held-out test digits", "answer key samples"):
        assert results[source]["rejected"] == 0.0 and results[source]["by_second_opinion"] == 0.0
    assert all(r["by_background"] == 0.0 for name, r in results.items() if name != "judge ascent (no model)")
    quoted = f"{ascent['second_accuracy']:.0%}"
    readme = (ROOT / "README.md").read_text()
    walkthrough = (ROOT / "walkthroughs" / "06_Assessment_Walkthrough.md").read_text()
    assert f"reads {quoted} of them" in readme and f"reads {quoted} of them" in walkthrough
    assert f"real digits {results['real held-out test digits']['second_accuracy']:.1%}" in readme


def test_the_float32_course_run_fits_as_its_documents_say():
    """bench/notebooks_full_float32.md and grade_key_full_float32.md (the whole course in float32,
    COURSE_BF16=0, with config.speed's float32 epochs): every notebook within its time and memory,
    the answer key passing, and the course minutes quoted in RESULTS section 19 and the README the
    two tables' sum. The run before it, with a bfloat16 CPU's epochs, missed 03's, 04's and 05's
    minutes, which is what the float32 epochs are for; the notebooks ask config.by_speed for them."""
    import json
    import re
    before = (ROOT / "bench" / "notebooks_full_float32_bf16epochs.md").read_text()
    missed = re.findall(r"^\| (\d\d)_\w+ \| [\d.]+ \| \S+ \| \d+ \| MISSED \|", before, re.M)
    assert missed == ["03", "04", "05"]
    header, total, grading, course, readme = _whole_course_run("float32", "19")
    assert "float32 (COURSE_BF16=0)" in header
    assert float(course) <= 50
    assert f"in float32 the notebooks took {total:.1f} minutes and the grading {grading:.1f}, {course} in all" in readme
    sources = {nb.name[:2]: "\n".join("".join(c["source"]) for c in json.loads(nb.read_text())["cells"])
               for nb in (ROOT / "notebooks").glob("0[345]_*.ipynb")}
    assert "FIXED_EPOCHS = config.pick(full=config.by_speed(device, fast=10, bf16=10, float32=8)," in sources["03"]
    assert "UNET_EPOCHS = config.pick(full=config.by_speed(device, fast=20, bf16=20, float32=14)," in sources["05"]


def test_the_sandbox_section_quotes_its_gradings_and_overheads():
    """RESULTS section 20: the answer key graded before the new protections, with a filter that
    refused sched_setaffinity, and after; every quoted second is its table's, and the overhead
    table's figures are the JSON's. The sandbox really lets PyTorch start its threads again:
    sched_setaffinity is not refused."""
    import json
    import re
    from course_lib import syscall_filter
    runs = {}
    for name in ("before", "one_thread", "after"):
        text = (ROOT / "bench" / f"grade_key_full_sandbox_{name}.md").read_text()
        assert "- result: pass" in text and "| 100.0% |" in text, name
        runs[name] = int(re.search(r"notebook run \(training \+ its own cells\): (\d+) s", text).group(1))
    section = " ".join((ROOT / "bench" / "RESULTS.md").read_text().split("## 20. ")[1].split())
    assert f"ran for {runs['one_thread']} s instead of {runs['before']}" in section
    assert f"{runs['after']} s for its notebook against {runs['before']} s" in section
    assert runs["one_thread"] > 1.4 * runs["before"] and "sched_setaffinity" not in syscall_filter.DENIED
    figures = json.loads((ROOT / "bench" / "sandbox_overhead.json").read_text())
    table = (ROOT / "bench" / "sandbox_overhead.md").read_text()
    for key, unit in (("start_with_filter_s", "s"), ("folder_check_ms", "ms"),
                      ("memory_check_ms", "ms"), ("memory_exact_count_ms", "ms"),
                      ("step_ms_sandbox", "ms"), ("step_ms_sandbox_bare", "ms")):
        digits = 3 if unit == "s" else (1 if key.startswith("step") else 2)
        assert f"| {figures[key]:.{digits}f} {unit} |" in table, key
    assert (f"took {figures['step_ms_sandbox']:.1f} ms with them and "
            f"{figures['step_ms_sandbox_bare']:.1f} ms without them") in section
    assert figures["step_ms_sandbox"] < 1.05 * figures["step_ms_sandbox_bare"]   # "no cost"
    assert figures["memory_check_ms"] < figures["memory_exact_count_ms"] / 5   # the quick bound first


def test_the_kernel_limits_section_quotes_its_attacks_costs_and_grading():
    """RESULTS section 21: each attack of bench/kernel_limits.py ran to its end unseen with the
    checks each second alone and was held with the step's cgroup; the section's figures are the
    JSON's and the table's, and the answer key passed with the kernel holding every step."""
    import json
    import re
    figures = json.loads((ROOT / "bench" / "kernel_limits.json").read_text())
    table = (ROOT / "bench" / "kernel_limits.md").read_text()
    assert set(figures["attacks"]) == {"burst", "in_flight", "widen"}
    for name, attack in figures["attacks"].items():
        assert attack["stopped_with_cgroup"] and not attack["stopped_by_checks"], name
        assert attack["what"] in table and attack["checks_only"]["over"] == "", name
    for name in ("burst", "in_flight"):
        assert "(the kernel stopped it)" in figures["attacks"][name]["cgroup"]["over"], name
    section = " ".join((ROOT / "bench" / "RESULTS.md").read_text().split("## 21. ")[1].split())
    assert " ".join(table.split()) in section, "section 21 is not refreshed from kernel_limits.md"
    assert (f"{figures['step_cgroup_ms']:.1f} ms with its cgroup and "
            f"{figures['step_none_ms']:.1f} ms without") in section
    assert (f"{figures['start_cgroup_s']:.3f} s with its cgroup and "
            f"{figures['start_none_s']:.3f} s without") in section
    rounds = figures["step_cgroup_rounds_ms"] + figures["step_none_rounds_ms"]
    assert f"ranged from {min(rounds):.0f} to {max(rounds):.0f} ms" in section
    key = (ROOT / "bench" / "grade_key_full_cgroup.md").read_text()
    assert "- result: pass" in key and float(re.search(r"\| (\d+\.\d)% \|\n", key).group(1)) >= 95
    assert "memory, processes and cores held by the kernel (cgroup v1)" in key.splitlines()[0]
    seconds = int(re.search(r"notebook run \(training \+ its own cells\): (\d+) s", key).group(1))
    assert f"its notebook ran {seconds} s" in section


def test_the_private_judges_section_quotes_its_catches_and_the_grader_trains_three():
    """RESULTS section 22 and the documents quote bench/private_judges.json: the strictest of
    three judges disputed every tuned set and no real or answer-key set, more than one judge
    alone; the grader trains that many."""
    import json
    from course_lib import grade_checks
    figures = json.loads((ROOT / "bench" / "private_judges.json").read_text())
    rates = figures["rates"]
    ascent, real, key = (rates["judge ascent (no model)"], rates["real held-out test digits"],
                         rates["answer key samples"])
    assert ascent["three"] == 1.0 and ascent["one"] < ascent["three"]
    assert real["one"] == real["three"] == key["one"] == key["three"] == 0.0
    assert grade_checks.PRIVATE_JUDGES == 3
    means = [round(100 * v) for v in ascent["per_judge"].values()]
    one = f"{ascent['one']:.0%}"
    section = " ".join((ROOT / "bench" / "RESULTS.md").read_text().split("## 22. ")[1].split())
    assert f"One judge disputed {one} of the tuned sets" in section
    assert f"lowest read by any judge was {real['lowest']:.0%} and {key['lowest']:.0%}" in section
    for doc in ("README.md", "walkthroughs/06_Assessment_Walkthrough.md", "course_lib/grade_checks.py"):
        text = " ".join((ROOT / doc).read_text().split())
        assert one in text and "strictest of three" in text, doc
    for doc in ("README.md", "walkthroughs/06_Assessment_Walkthrough.md"):
        text = " ".join((ROOT / doc).read_text().split())
        assert f"{min(means)}% to {max(means)}%" in text, doc


def test_the_transfer_section_quotes_what_each_check_catches():
    """RESULTS section 23, the README and walkthrough 06 quote bench/transfer_ascent.json: tuned
    against judges of the attacker's own training, the pictures pass the private judges but not
    the plain background, which refuses no real, answer-key or grainy set; the attack tuned
    against the background too passes, and the documents say so. The grader's threshold is the
    one the bench measured."""
    import json
    from course_lib import grade_checks
    figures = json.loads((ROOT / "bench" / "transfer_ascent.json").read_text())
    assert figures["plain_share"] == grade_checks.PLAIN_SHARE
    assert figures["plain_margin"] == grade_checks.PLAIN_MARGIN
    results = figures["results"]
    passing = {k: v for k, v in results.items() if v["must"] == "pass"}
    attacks = [v for v in results.values() if v["must"] == "fail"]
    assert len(passing) == 3 and len(attacks) == 5
    assert all(v["caught"] == 0.0 and v["disputed"] == 0.0 for v in passing.values())
    plain, own, *middle, tuned = attacks
    assert plain["disputed"] == plain["caught"] == 1.0
    assert own["disputed"] == 0.0 and own["caught_before"] == 0.0 and own["caught"] == 1.0
    assert all(v["caught"] == 1.0 and v["caught_before"] == 0.0 for v in middle)
    assert tuned["caught"] == 0.0 and tuned["plain_lowest"] >= grade_checks.PLAIN_SHARE
    caught_plain = [round(100 * v["plain"]) for v in (own, *middle)]
    section = " ".join((ROOT / "bench" / "RESULTS.md").read_text().split("## 23. ")[1].split())
    strictest = f"{own['strictest_of_three']:.1%}"
    assert f"strictest of three private judges read {strictest}" in section
    assert f"plain ascent of section 22 reads {plain['strictest_of_three']:.1%}" in section
    assert (f"Real digits measure {passing['real held-out test digits']['plain']:.0%}, the answer "
            f"key {passing['answer key samples']['plain']:.0%}") in section
    assert f"{plain['plain']:.0%} for the plain ascent" in section
    assert f"{tuned['plain']:.0%} plain background, every check passed" in section
    for doc in ("README.md", "walkthroughs/06_Assessment_Walkthrough.md", "course_lib/grade_checks.py"):
        text = " ".join((ROOT / doc).read_text().split())
        assert strictest in text, doc
    for doc in ("README.md", "walkthroughs/06_Assessment_Walkthrough.md"):
        text = " ".join((ROOT / doc).read_text().split())
        assert f"{min(caught_plain)}% to {max(caught_plain)}%" in text, doc
        assert f"{plain['plain']:.0%}" in text and "not caught" in text, doc


def test_the_answer_key_passes_the_plain_background_as_section_23_says():
    """bench/grade_key_full_plain.md: the answer key graded in full with the plain-background
    check passes, above the threshold, and section 23 quotes its share and notebook seconds."""
    import re
    from course_lib import grade_checks
    key = (ROOT / "bench" / "grade_key_full_plain.md").read_text()
    assert "- result: pass" in key and float(re.search(r"\| (\d+\.\d)% \|\n", key).group(1)) >= 95
    plain = int(re.search(r"plain background: (\d+)% of the pixels", key).group(1))
    assert plain / 100 >= grade_checks.PLAIN_SHARE
    seconds = int(re.search(r"notebook run \(training \+ its own cells\): (\d+) s", key).group(1))
    section = " ".join((ROOT / "bench" / "RESULTS.md").read_text().split("## 23. ")[1].split())
    assert f"with {plain}% plain background" in section and f"notebook ran {seconds} s" in section


def test_the_stored_runs_of_00s_estimate_are_the_bench_tables():
    """measured_runs.json is what `bench/run_notebooks.py --pace` reads from the three tables, and
    covers every kind of CPU that config.speed names, with every notebook that has a time target."""
    from course_lib import pace

    runs = pace.measured_runs()
    assert runs == _bench_module("run_notebooks").pace_runs()
    assert set(runs) == {"fast", "bf16", "float32"}
    for run in runs.values():
        assert sorted(stem[:2] for stem in run["notebooks"]) == sorted(pace.TARGET_MINUTES)
        assert all(row["minutes"] > 0 and row["ms"] > 0 for row in run["notebooks"].values())


def test_the_check_of_the_estimate_agrees_with_the_runs_and_its_section():
    """bench/pace_check.json: each row's estimate is what 00 computes from today's measured runs
    for that step time (so the check goes stale, and fails here, when the runs are rewritten), and
    RESULTS section 24 and notebook 00 quote its largest error."""
    import json
    import math
    import re

    import pytest

    from course_lib import pace

    rows = json.loads((ROOT / "bench" / "pace_check.json").read_text())["rows"]
    assert {r["threads"] for r in rows} == {1, 2} and len({r["notebook"] for r in rows}) >= 5
    assert {r["speed"] for r in rows} == {"bf16", "float32"}
    runs = pace.measured_runs()
    for r in rows:
        there = runs[r["speed"]]["notebooks"][r["notebook"]]
        assert r["estimated"] == pytest.approx(there["minutes"] * r["ms"] / there["ms"], abs=0.006)
        assert r["error"] == pytest.approx(r["estimated"] / r["measured"] - 1, abs=0.01)  # rounded
    worst = max(abs(r["error"]) for r in rows)
    section = (ROOT / "bench" / "RESULTS.md").read_text().split("## 24.")[1]
    quoted = int(re.search(r"Every estimate is within (\d+)% of the minutes measured", section)[1])
    assert quoted == math.ceil(100 * worst - 1e-9)
    notebook = (ROOT / "notebooks" / "00_jupyterlab.ipynb").read_text()
    assert f"it came within {quoted}% of the minutes the" in notebook
