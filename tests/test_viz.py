import pytest
import torch
from matplotlib.figure import Figure

from course_lib import viz


def test_show_images_grid():
    fig = viz.show_images(torch.rand(10, 1, 8, 8) * 2 - 1, nrow=5, title="t")
    assert isinstance(fig, Figure)
    img = fig.axes[0].get_images()[0].get_array()
    assert img.shape[:2] == (2 * 8 + 3, 5 * 8 + 6)  # 2 rows, 5 columns, 1-pixel padding
    assert fig.axes[0].get_title() == "t"


def test_show_images_rejects_single_image():
    import pytest
    with pytest.raises(ValueError, match="batch"):
        viz.show_images(torch.zeros(1, 8, 8))


def test_show_rows_and_strip_layout():
    rows = [torch.zeros(4, 1, 8, 8), torch.ones(4, 1, 8, 8)]
    assert len(viz.show_rows(rows, ["a", "b"]).axes) == 8
    assert [ax.get_title() for ax in viz.show_rows(rows, ["a", "b"]).axes] == [""] * 8
    frames = [torch.zeros(3, 3, 8, 8)] * 5
    fig = viz.show_strip(frames, labels=[f"t={i}" for i in range(5)])
    assert len(fig.axes) == 15 and fig.axes[0].get_title() == "t=0"


def test_show_rows_names_columns_and_keeps_cells_square():
    rows = [torch.zeros(3, 3, 8, 8), torch.ones(3, 3, 8, 8)]
    fig = viz.show_rows(rows, ["w = 0", "w = 2"], columns=["daisy", "rose", "sunflower"],
                        title="guidance", scale=1.3)
    assert [ax.get_title() for ax in fig.axes[:3]] == ["daisy", "rose", "sunflower"]
    assert all(ax.get_title() == "" for ax in fig.axes[3:])
    assert fig._suptitle.get_text() == "guidance"
    fig.canvas.draw()
    title_bottom = min(ax.title.get_window_extent().y0 for ax in fig.axes[:3])
    assert title_bottom > fig.axes[0].get_window_extent().y1 - 1       # labels sit above the grid
    assert fig._suptitle.get_window_extent().y0 > max(ax.title.get_window_extent().y1
                                                      for ax in fig.axes[:3]) - 1
    w_in, h_in = fig.get_size_inches()
    for ax in fig.axes:                        # each image's slot is square: no gaps between rows
        slot = ax.get_position(original=True)
        assert slot.width * w_in == pytest.approx(slot.height * h_in, rel=1e-6)
    long = viz.show_rows(rows, ["a", "b"], columns=["photo", "filled, the next species", "x"])
    assert "\n" in long.axes[1].get_title()                              # long labels wrap


def test_show_rows_says_which_labels_do_not_match():
    rows = [torch.zeros(3, 1, 8, 8), torch.ones(2, 1, 8, 8)]
    with pytest.raises(ValueError, match="2 rows but 1 row labels"):
        viz.show_rows(rows, ["only one"])
    with pytest.raises(ValueError, match="3 images but there are 2 column labels"):
        viz.show_rows(rows, ["a", "b"], columns=["x", "y"])


def test_plot_losses_smooths_each_curve():
    fig = viz.plot_losses({"a": [1.0] * 50, "b": [2.0] * 50}, smooth=10)
    lines = fig.axes[0].get_lines()
    assert len(lines) == 4
    assert len(lines[1].get_xdata()) == 41


def test_animation_has_one_frame_per_step():
    frames = [torch.full((4, 1, 8, 8), v) for v in (-1.0, 0.0, 1.0)]
    anim = viz.animate(frames, nrow=2, titles=["a", "b", "c"])
    assert len(list(anim.new_frame_seq())) == 3
    # matplotlib's jshtml player embeds every frame as a base64 PNG (rendering it also keeps
    # matplotlib from warning, when the object is collected, that it was never drawn)
    assert anim.to_jshtml().count("data:image/png;base64") == 3
    html = viz.animation_html(frames, nrow=2).data
    assert html.count("data:image/png;base64") == 3


def test_importing_viz_leaves_the_kernel_alone(monkeypatch):
    """Importing viz inside a Jupyter kernel runs no magic (notebooks say %matplotlib inline)."""
    import importlib

    import IPython
    calls = []
    ZMQInteractiveShell = type("ZMQInteractiveShell", (), {  # noqa: N806
        "run_line_magic": lambda self, *args: calls.append(args)})
    monkeypatch.setattr(IPython, "get_ipython", lambda: ZMQInteractiveShell())
    importlib.reload(viz)
    assert calls == []


def test_plot_schedules_draws_each_schedule():
    from course_lib.ddpm import cosine_schedule, linear_schedule
    fig = viz.plot_schedules({"linear": linear_schedule(50), "cosine": cosine_schedule(50)})
    beta_ax, ab_ax = fig.axes
    assert len(beta_ax.get_lines()) == 2 and len(ab_ax.get_lines()) == 4
    signal = ab_ax.get_lines()[0].get_ydata()
    assert signal[0] > 0.99 and signal[-1] < signal[0]


def test_show_captioned_titles_every_image():
    import pytest
    fig = viz.show_captioned(torch.zeros(5, 3, 8, 8), [f"caption {i}" for i in range(5)], ncol=3)
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[:5] == [f"caption {i}" for i in range(5)] and titles[5] == ""
    with pytest.raises(ValueError, match="captions"):
        viz.show_captioned(torch.zeros(2, 3, 8, 8), ["one"])


def test_plot_quality_draws_one_bar_per_batch_and_measure():
    from course_lib.metrics import Quality

    fig = viz.plot_quality({"real": Quality(100, 0.9, 10.0, 0.95),
                            "noise": Quality(100, 0.1, 800.0, 0.1)})
    ax_rec, ax_fd = fig.axes
    assert [t.get_text() for t in ax_rec.get_yticklabels()] == ["real", "noise"]
    assert len(ax_rec.patches) == 4          # recognisable + accuracy, for each batch
    assert [round(p.get_width()) for p in ax_fd.patches] == [10, 800]
    assert ax_fd.get_xscale() == "log"
    with pytest.raises(ValueError, match="at least one"):
        viz.plot_quality({})


def test_plot_sweep_puts_right_curves_on_a_second_axis():
    fig = viz.plot_sweep([0, 1, 2], {"accuracy": [0.5, 0.7, 0.9]}, "w", "share",
                         right={"Fréchet": [10, 12, 20]}, right_label="distance")
    left, right = fig.axes
    assert list(left.lines[0].get_ydata()) == [0.5, 0.7, 0.9]
    assert list(right.lines[0].get_ydata()) == [10, 12, 20]
    assert right.get_ylabel() == "distance"


def test_plot_sweep_draws_references_in_their_curves_colours_and_keeps_the_legend_off_the_data():
    fig = viz.plot_sweep([0, 1, 2], {"accuracy": [0.5, 0.7, 0.9]}, "w", "share",
                         right={"Fréchet": [10, 12, 20]}, reference={"accuracy": 0.8, "Fréchet": 11})
    left, right = fig.axes
    level = [line for line in left.lines if line.get_linestyle() == ":"]
    assert len(level) == 1 and list(level[0].get_ydata()) == [0.8, 0.8]
    assert level[0].get_color() == left.lines[0].get_color()
    assert [list(line.get_ydata()) for line in right.lines if line.get_linestyle() == ":"] == [[11, 11]]
    legend = left.get_legend()
    assert "dotted: real images" in [t.get_text() for t in legend.get_texts()]
    assert legend.get_bbox_to_anchor().y1 < left.get_window_extent().y0 + 1   # below the axes
    with pytest.raises(ValueError, match="not curves"):
        viz.plot_sweep([0, 1], {"a": [1, 2]}, "w", "y", reference={"b": 1.0})


def test_plot_class_shares_draws_a_bar_per_class_and_batch():
    fig = viz.plot_class_shares({"a": [0.5, 0.5, 0.0], "b": [0.2, 0.3, 0.5]}, ["x", "y", "z"])
    ax = fig.axes[0]
    assert sorted(round(p.get_height()) for p in ax.patches) == [0, 20, 30, 50, 50, 50]
    with pytest.raises(ValueError, match="2 shares for 3 classes"):
        viz.plot_class_shares({"a": [0.5, 0.5]}, ["x", "y", "z"])


def test_plot_confusion_writes_the_share_in_every_cell_and_checks_shapes():
    m = torch.tensor([[0.5, 0.25, 0.25], [0.0, 1.0, 0.0]])
    fig = viz.plot_confusion({"gen": m, "real": m.flip(1)}, ["a", "b"], ["x", "y", "z"], title="t")
    left, right = fig.axes[:2]
    assert [t.get_text() for t in left.texts] == ["50%", "25%", "25%", "0%", "100%", "0%"]
    assert [t.get_text() for t in right.texts][:3] == ["25%", "25%", "50%"]
    assert left.get_xlabel() == "the judge reads" and left.get_ylabel() == "asked for"
    assert [t.get_text() for t in left.get_yticklabels()] == ["a", "b"]
    with pytest.raises(ValueError, match="expected \\(2, 3\\)"):
        viz.plot_confusion({"gen": m.T}, ["a", "b"], ["x", "y", "z"])
    with pytest.raises(ValueError, match="at least one"):
        viz.plot_confusion({}, ["a"], ["x"])
