"""What a reader sees in the figures: legends for the event lines, events per condition, labels
that stay in their own panel, panels that keep their tick labels, points that stay visible."""

import shutil

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from matplotlib.transforms import Bbox  # noqa: E402

from grokking.analysis.algorithmic import collect, figures  # noqa: E402
from grokking.analysis.figures import grid  # noqa: E402
from grokking.runs.rundir import RunDir, find_runs  # noqa: E402

EVENT_LABELS = {"memorization (mean epoch)", "grokking (mean epoch)"}


@pytest.fixture(scope="module")
def smoke(smoke_sweep):
    cwd, _ = smoke_sweep
    return collect(cwd / "outputs" / "sweeps" / "smoke")


def all_figures(results):
    runs, metrics = results.runs, results.metrics
    return {
        "figure1": figures.figure1(runs, metrics, "smoke"),
        "curves": figures.figure_curves(runs, metrics, "smoke"),
        "ranks": figures.figure_ranks(runs, metrics, "smoke"),
        "matrices": figures.figure_matrices(runs, results.matrix_lar, "smoke"),
    }


def legend_texts(fig) -> set[str]:
    legends = fig.legends + [ax.get_legend() for ax in fig.axes if ax.get_legend()]
    return {text.get_text() for legend in legends for text in legend.get_texts()}


def test_every_figure_with_event_lines_has_a_legend_for_them(smoke):
    for name, fig in all_figures(smoke).items():
        assert EVENT_LABELS <= legend_texts(fig), name
        plt.close(fig)


def vertical_lines(ax) -> list[tuple[float, tuple]]:
    """(epoch, colour) of every axvline of `ax`."""
    return [
        (line.get_xdata()[0], line.get_color())
        for line in ax.get_lines()
        if len(line.get_xdata()) == 2 and line.get_xdata()[0] == line.get_xdata()[1]
    ]


def test_ranks_figure_draws_each_conditions_events_in_its_colour(smoke):
    fig = figures.figure_ranks(smoke.runs, smoke.metrics, "smoke")
    lines = vertical_lines(fig.axes[0])
    palette = figures._condition_palette(smoke.runs)
    expected = [
        (runs[column].mean(), palette[condition])
        for condition, runs in smoke.runs.groupby("condition", sort=False)
        for column in ("memorization_epoch", "grokking_epoch")
        if runs[column].notna().any()
    ]
    assert len(expected) >= 2  # add and sub memorize in the smoke sweep
    assert sorted(lines) == sorted((epoch, tuple(color)) for epoch, color in expected)
    assert {name for name in legend_texts(fig)} >= set(smoke.runs["condition"])
    plt.close(fig)


def panel_boxes(fig) -> list[Bbox]:
    """Each panel's extent with its labels and tick labels (a twin axis is the same panel)."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    panels: dict[tuple, list[Bbox]] = {}
    for ax in fig.axes:
        key = tuple(np.round(ax.get_position().bounds, 6))
        panels.setdefault(key, []).append(ax.get_tightbbox(renderer))
    return [Bbox.union(boxes) for boxes in panels.values()]


@pytest.fixture
def four_panels(smoke_sweep, tmp_path):
    """The smoke runs as four conditions (seed 1 at train fraction 0.5) whose LAR varies little,
    so that its tick labels need three decimals, as in docs/figure1_train_fraction.png."""
    cwd, _ = smoke_sweep
    copy = tmp_path / "smoke"
    shutil.copytree(cwd / "outputs" / "sweeps" / "smoke", copy)
    for run in ("seed=1,task=add", "seed=1,task=sub"):
        run_dir = RunDir(copy / run)
        summary = run_dir.read_summary()
        summary["train_fraction"] = summary["config"]["train_fraction"] = 0.5
        run_dir.write_summary(summary)
    for run_dir in find_runs(copy):
        metrics = run_dir.read_metrics()
        run_dir.write_metrics(
            (metrics.assign(lar=0.5 + (metrics["lar"] - 0.5) * 0.37)).to_dict("records")
        )
    return collect(copy)


def test_no_label_runs_into_a_neighbour_panel(smoke, four_panels):
    made = all_figures(smoke) | {
        "figure1, four panels": figures.figure1(four_panels.runs, four_panels.metrics, "smoke")
    }
    for name, fig in made.items():
        boxes = panel_boxes(fig)
        assert len(boxes) >= 2, name
        for i, box in enumerate(boxes):
            for other in boxes[i + 1 :]:
                assert not box.overlaps(other), f"{name}: panels overlap"
        plt.close(fig)


def hand_measures():
    """Run a never memorized; run b has all three checkpoints, at the same points."""
    spectrum = list(np.linspace(1, 0.1, 8) / np.linspace(1, 0.1, 8).sum())
    rows = [("a", "final")] + [("b", kind) for kind in ("memorization", "grokking", "final")]
    measures = pd.DataFrame(
        [
            {"run": r, "kind": k, "lar": 0.6, "epoch": 10, "pc95": 5, "k_lar": 5.0}
            | {"p": spectrum, "q": spectrum}
            for r, k in rows
        ]
    )
    runs = pd.DataFrame({"run": ["a", "b"], "group": "g", "setting": "", "grokked": True})
    return runs, measures


def test_figure2_empty_panels_leave_the_other_panels_tick_labels(smoke):
    runs, measures = hand_measures()
    fig = figures.figure2(measures, ["a", "b"])
    fig.canvas.draw()
    drawn = [ax for ax in fig.axes if ax.get_lines()]
    assert len(drawn) == 4
    for ax in drawn:
        labels = [t.label1 for t in ax.yaxis.get_major_ticks() if t.label1.get_visible()]
        assert any(label.get_text() for label in labels), ax.get_title()
    plt.close(fig)


def test_figure3_gives_each_kind_a_marker_and_lets_hidden_points_show_through():
    runs, measures = hand_measures()
    fig = figures.figure3(measures, runs)
    points = fig.axes[0].collections[0]
    assert points.get_alpha() is not None and points.get_alpha() < 1
    shapes = {path.vertices.tobytes() for path in points.get_paths()}
    assert len(shapes) == 3  # memorization, grokking and final: three markers
    assert {"memorization", "grokking", "final", "y = x"} <= legend_texts(fig)
    plt.close(fig)


def test_curves_show_accuracy_and_loss_on_a_log_epoch_axis_beside_lar(smoke):
    fig = figures.figure_curves(smoke.runs, smoke.metrics, "smoke")
    rows = np.array(fig.axes).reshape(-1, 3)
    assert len(rows) == smoke.runs["condition"].nunique()
    for accuracy, loss, lar in rows:
        assert {ax.get_xscale() for ax in (accuracy, loss, lar)} == {"log"}
        assert [ax.get_ylabel() for ax in (accuracy, loss, lar)] == [
            "accuracy",
            "loss",
            "LAR (unembedding)",
        ]
        # train and validation, each from epoch 10 on (epoch 0 has no place on a log axis)
        curves = [line for line in accuracy.get_lines() if len(line.get_xdata()) > 2]
        assert len(curves) == 2 and min(curves[0].get_xdata()) == 10
    assert {"train", "validation", "LAR"} <= legend_texts(fig)
    plt.close(fig)


def test_figure9_minor_tick_labels_stay_off_the_log_axis(smoke):
    # figure 9 draws runs evaluated every epoch; batch fractions within one decade (0.12-0.9)
    dense = smoke.runs.assign(eval_every=1, batch_size=[25, 50, 100, 180])
    fig = figures.figure9(dense, smoke.metrics)
    fig.canvas.draw()
    assert not [t for t in fig.axes[1].get_xticklabels(minor=True) if t.get_text()]
    plt.close(fig)


def test_aligned_matrices_put_grokking_at_1_and_draw_a_run_that_never_groks_in_grey():
    runs = pd.DataFrame({
        "run": ["groks", "never"], "group": "g", "task": ["add", "sub"],
        "grokked": [True, False], "memorization_epoch": [40, 40],
        "grokking_epoch": [400, None], "final_epoch": [600, 800],
    })  # fmt: skip
    epochs = np.arange(0, 810, 10)
    matrix_lar = pd.concat(
        pd.DataFrame(
            {
                "run": run,
                "epoch": epochs[epochs <= last],
                "name": name,
                "layer": layer,
                "role": role,
                "lar": 0.6,
            }
        )
        for run, last in (("groks", 600), ("never", 800))
        for name, layer, role in (
            ("blocks.1.mlp.fc_in", 1.0, "fc_in"),
            ("unembed", np.nan, "unembed"),
        )
    )
    fig = figures.figure_matrices_aligned(runs, matrix_lar, "g")
    assert [ax.get_title() for ax in fig.axes] == ["layer 1 · fc_in", "unembed"]
    curves = [line for line in fig.axes[0].get_lines() if len(line.get_xdata()) > 2]
    grokked, never = curves
    # evaluations from memorization (40) on, up to 1.5 × the grokking epoch (or the last epoch)
    assert np.allclose(grokked.get_xdata(), np.arange(40, 610, 10) / 400)
    assert np.allclose(never.get_xdata(), np.arange(40, 810, 10) / 800)
    assert never.get_color() == "gray" and never.get_linestyle() == "--"
    assert (1.0, "green") in vertical_lines(fig.axes[0])
    assert "never grokked: epoch / last epoch" in legend_texts(fig)
    plt.close(fig)
    assert figures.figure_matrices_aligned(runs, matrix_lar, "other group") is None


@pytest.mark.parametrize("panels", [1, 4, 5, 7])
def test_a_grid_gives_one_axes_per_panel_whatever_its_columns(panels):
    """Figure 5 draws one panel per run: 5 runs on a grid of 4 columns once failed its strict zip
    over the grid's 8 axes."""
    fig, axes = grid(panels, ncols=4)
    assert len(axes) == panels
    assert len(fig.axes) == panels  # the spare cells are removed
    plt.close(fig)
