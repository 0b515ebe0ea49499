# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # One run, up close
#
# Its training curves on a log epoch axis with LAR beside them, the spectra p and q of the
# unembedding at each checkpoint, and the LAR of every dense matrix. Set `GROKKING_RUN` (or edit
# the next cell) to a run folder, the one holding summary.json; by default the first completed
# run under `GROKKING_RESULTS`.

# %% tags=["parameters"]
import os

RESULTS = os.environ.get("GROKKING_RESULTS", "../outputs/sweeps/smoke")
RUN = os.environ.get("GROKKING_RUN")

# %%
# %matplotlib inline
import matplotlib.pyplot as plt
import pandas as pd
from IPython.display import display

from grokking.analysis.algorithmic import collect, figures, measure_run
from grokking.runs.rundir import COMPLETED, RunDir, find_runs

if RUN is None:
    RUN = next(str(r.path) for r in find_runs(RESULTS) if r.status() == COMPLETED)
run_dir = RunDir(RUN)
results = collect(RUN)  # this run alone, as the analysis sees it
run = results.runs.iloc[0]
summary = run_dir.read_summary()
pd.Series(
    {key: summary[key] for key in ("status", "task", "p", "train_fraction", "seed")}
    | {key: summary[key] for key in ("memorization_epoch", "grokking_epoch", "final_epoch")}
)


def show(fig):
    """Display `fig` once: closed, so that the inline backend does not show it again."""
    display(fig)
    plt.close(fig)


# %% [markdown]
# ## Accuracy, loss and LAR against epoch (log axis; dashed: memorization, grokking)

# %%
show(figures.figure_curves(results.runs, results.metrics, f"{run['run']}: {run['condition']}"))

# %% [markdown]
# ## p and q at each checkpoint, and the numbers behind them

# %%
measures = measure_run(run_dir).assign(run=run["run"])
show(figures.figure2(measures, [run["run"]]))
measures[["kind", "epoch", "lar", "k_lar", "pc95", "stable_rank", "effective_rank"]]

# %% [markdown]
# ## LAR of every dense matrix

# %%
show(figures.figure_matrices(results.runs, results.matrix_lar, run["group"]))
results.matrix_lar.pivot_table(index="epoch", columns="name", values="lar").tail()
