"""The steering table: each regularized run against the baseline of the same experiment, the
speed-up exact or a bound when one of them did not grok, and the summary's counts."""

import math

import pandas as pd
import pytest

from grokking.analysis.algorithmic import steering

LAR = {"config.regularize.name": "lar", "config.regularize.strength": 0.3}
MEM = {"config.regularize.trigger": "memorization"}


def _run(name, task, grokking_epoch, final_epoch, weight_decay=1.0, **regularize):
    return {
        "run": name,
        "task": task,
        "p": 97,
        "train_fraction": 0.3,
        "seed": 0,
        "split_seed": 0,
        "config.optim.lr": 1e-3,
        "config.optim.weight_decay": weight_decay,
        "grokked": grokking_epoch is not None,
        "grokking_epoch": math.nan if grokking_epoch is None else grokking_epoch,
        "final_epoch": final_epoch,
    } | regularize


RUNS = pd.DataFrame(
    [
        _run("add base", "add", 1000, 1500),  # from before the option: no regularizer columns
        _run("add lar", "add", 400, 480, **LAR, **MEM),
        _run("add grokfast", "add", None, 1500, **{"config.regularize.name": "grokfast",
                                                   "config.regularize.strength": 2.0}),
        _run("sub base", "sub", None, 3000, **{"config.regularize.name": "none"}),
        _run("sub lar", "sub", 600, 720, **LAR, **MEM),
        _run("div base", "div", None, 3000),
        _run("div lar", "div", None, 1500, **LAR, **MEM),
        _run("add lar wd0", "add", 500, 600, weight_decay=0.0, **LAR, **MEM),  # no baseline
    ]
)  # fmt: skip


def _metrics():
    rows = [{"run": r, "epoch": e, "val_acc": a} for r in RUNS["run"] for e, a in [(0, 0), (9, 1)]]
    return pd.DataFrame(rows).assign(
        val_acc=lambda f: f["val_acc"].where(f["run"] != "div lar", 0.02)
    )


def _measures():
    rows = [{"run": r, "kind": "final", "k_lar": 10.0, "pc95": 11} for r in RUNS["run"]]
    rows[1]["pc95"] = 14  # add lar: k_LAR 4 below PC95
    return pd.DataFrame(rows + [{"run": "add lar", "kind": "memorization", "k_lar": 1, "pc95": 1}])


def test_each_regularized_run_is_scored_against_its_own_baseline():
    table = steering.steering_table(RUNS, _metrics(), _measures()).set_index("run")
    assert list(table.index) == ["add lar", "add grokfast", "sub lar", "div lar"]  # wd0: none
    assert table.loc["add lar", "speedup"] == pytest.approx(2.5)
    assert table.loc["add lar", "speedup_bound"] == "="
    # The variant did not grok in 1500 epochs: it groks at least 1.5x later than the baseline.
    assert table.loc["add grokfast", "speedup"] == pytest.approx(1000 / 1500)
    assert table.loc["add grokfast", "speedup_bound"] == "<"
    assert table.loc["sub lar", "speedup"] == pytest.approx(3000 / 600)
    assert table.loc["sub lar", "speedup_bound"] == ">"
    assert math.isnan(table.loc["div lar", "speedup"])
    assert table.loc["div lar", "speedup_bound"] == "?"
    assert table.loc["add lar", "variant"] == "lar 0.3 from memorization"
    assert table.loc["add grokfast", "variant"] == "grokfast 2"
    assert table.loc["add lar", "pc95_final"] == 14  # the final checkpoint's, not memorization's
    assert table.loc["div lar", "final_val_acc"] == pytest.approx(0.02)


def test_the_summary_counts_only_certain_speedups():
    table = steering.steering_table(RUNS, _metrics(), _measures())
    per_variant = steering.summary(table).set_index("variant")
    lar = per_variant.loc["lar 0.3 from memorization"]
    assert lar["runs"] == 3
    assert lar["at_least_2x"] == 2  # add (2.5) and sub (> 5); div unknown
    assert lar["final_val_acc_099"] == 2
    assert lar["k_lar_within_2_of_pc95"] == 2  # add lar is 4 off
    assert lar["median_speedup"] == pytest.approx(3.75)  # of 2.5 and 5; the unknown is left out


def test_the_display_marks_bounds():
    shown = steering.display(steering.steering_table(RUNS, _metrics(), _measures()))
    assert list(shown["speedup"]) == ["2.50", "< 0.67", "> 5.00", "?"]
    assert list(shown["grokking_epoch"]) == ["400", "–", "600", "–"]


def test_no_regularized_run_is_an_empty_table():
    runs = RUNS[~RUNS["run"].str.contains("lar|grokfast")]
    assert steering.steering_table(runs, _metrics(), _measures()).empty
