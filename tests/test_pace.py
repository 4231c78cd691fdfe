"""course_lib/pace.py: 00's estimate of each notebook's minutes, scaled from a measured run."""
import math

import pytest
import torch

from course_lib import pace
from course_lib.viz import plot_pace


RUNS = {"fast": {"run": "notebooks_fast", "machine": "a fast CPU",
                 "notebooks": {"00_jupyterlab": {"minutes": 0.1, "ms": 50.0},
                               "03_Optimizations": {"minutes": 6.0, "ms": 50.0},
                               "04_Classifier_Free_Diffusion": {"minutes": 8.0, "ms": 40.0}}},
        "float32": {"run": "notebooks_slow", "machine": "a float32 CPU",
                    "notebooks": {"03_Optimizations": {"minutes": 9.0, "ms": 70.0}}}}


def test_minutes_scale_with_the_reference_step(monkeypatch):
    monkeypatch.setattr(pace.config, "speed", lambda device: "fast")
    same = pace.estimate("cpu", ms_here=50.0, runs=RUNS)
    assert same.minutes["03_Optimizations"] == pytest.approx(6.0)
    assert same.minutes["04_Classifier_Free_Diffusion"] == pytest.approx(10.0)  # 40 ms there
    assert same.over_target() == []
    slow = pace.estimate("cpu", ms_here=100.0, runs=RUNS)
    assert slow.minutes["03_Optimizations"] == pytest.approx(12.0)
    assert slow.total == pytest.approx(0.2 + 12.0 + 20.0)
    assert slow.over_target() == ["04_Classifier_Free_Diffusion"]          # 20 > 12; 03's 12 is not past
    text = slow.summary()
    assert "04_Classifier_Free_Diffusion (20 min, target 12)" in text and "COURSE_PROFILE=test" in text
    assert "about 32 minutes here (14 there)" in text


def test_the_run_follows_how_the_cpu_trains(monkeypatch):
    monkeypatch.setenv("COURSE_BF16", "0")                 # any CPU kept in float32
    est = pace.estimate("cpu", ms_here=140.0, runs=RUNS)
    assert (est.speed, est.run, est.machine) == ("float32", "notebooks_slow", "a float32 CPU")
    assert est.minutes == {"03_Optimizations": pytest.approx(18.0)}
    monkeypatch.setattr(pace.config, "speed", lambda device: "bf16")
    with pytest.raises(KeyError, match="--pace"):
        pace.estimate("cpu", ms_here=50.0, runs=RUNS)


def test_no_estimate_on_a_gpu():
    est = pace.estimate(torch.device("cuda"), runs=RUNS)
    assert est.ms_here is None and est.minutes == {} and "No estimate on a GPU" in est.summary()
    with pytest.raises(ValueError, match="GPU"):
        plot_pace(est, pace.TARGET_MINUTES)


def test_steps_per_second_times_a_fresh_model_on_the_given_loss():
    """It also sizes the learning-rate schedules of bench/recipe.py and bench/flower_recipe.py: it
    builds its own model, runs the loss on the batches given (3 warm-up steps, then the timed ones),
    and leaves the caller's model alone."""
    built, seen = [], []

    def make_model():
        built.append(torch.nn.Linear(4, 1))
        return built[-1]

    def loss_fn(model, batch):
        seen.append(batch.shape)
        return model(batch).square().mean()

    rate = pace.steps_per_second(make_model, [torch.randn(8, 4) for _ in range(20)], loss_fn,
                                 lr=1e-2, steps=5)
    assert len(built) == 1 and len(seen) == 8 and math.isfinite(rate) and rate > 0


def test_the_reference_step_is_timed_here_and_leaves_the_random_numbers_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    ms = pace.reference_step_ms(steps=2)
    assert isinstance(ms, float) and 0 < ms < 60_000
    assert torch.equal(torch.rand(3), expected)      # a notebook's seeded run goes on as it would


def test_the_picture_shows_both_runs_and_the_targets(monkeypatch):
    monkeypatch.setattr(pace.config, "speed", lambda device: "fast")
    est = pace.estimate("cpu", ms_here=100.0, runs=RUNS)
    fig = plot_pace(est, pace.TARGET_MINUTES, title="t")
    ax = fig.axes[0]
    assert ax.get_xlabel() == "minutes, full profile" and ax.get_ylabel() == "notebook"
    assert [t.get_text() for t in ax.get_yticklabels()] == list(est.minutes)
    widths = sorted(round(p.get_width(), 3) for p in ax.patches)
    assert widths == sorted([0.1, 6.0, 8.0, 0.2, 12.0, 20.0])
    limits = ax.collections[0].get_offsets()
    assert sorted(limits[:, 0].tolist()) == [1, 12, 12]
    legend = {t.get_text() for t in ax.get_legend().get_texts()}
    assert legend == {"measured: a fast CPU", "estimated on this machine",
                      "the notebook's time target"}
