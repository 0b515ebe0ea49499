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
# # Table 1: does the LAR-predicted dimension match PC95?
#
# For every run under `RESULTS`, each checkpoint (memorization, grokking, final) is reloaded, the
# training set passed through it, and two numbers compared: PC95, the principal components that
# explain 95 % of the variance of the unembedding's inputs, and k_LAR = n^(2(1 − LAR)).
# The paper's claim: they agree at the grokking and final checkpoints, not at memorization.
#
# Set `GROKKING_RESULTS` (or edit the cell below) to a sweep folder, e.g.
# `outputs/sweeps/table1_ops`, after `python -m grokking.train +sweeps=table1_ops`.

# %% tags=["parameters"]
import os

RESULTS = os.environ.get("GROKKING_RESULTS", "../outputs/sweeps/smoke")
PCA_THRESHOLD = 0.95

# %%
from grokking.analysis.algorithmic import collect, measure_all, per_task_table, table1
from grokking.analysis.algorithmic.tables import per_task_display, table1_wide

results = collect(RESULTS)
print(f"{len(results.runs)} completed runs; left out: {results.left_out() or 'none'}")
columns = ["run", "condition", "seed", "memorization_epoch", "grokking_epoch"]
results.runs[columns]

# %% [markdown]
# ## PC95 and k_LAR at each checkpoint (cached in each run folder after the first pass)
#
# A run whose checkpoints cannot be measured leaves `results` here, with its reason.

# %%
measures = measure_all(results, PCA_THRESHOLD)
print(f"skipped: {results.skipped or 'none'}")
measures[["run", "kind", "epoch", "lar", "k_lar", "pc95"]]

# %% [markdown]
# ## Table 1: RMSE(k_LAR, PC95), with the runs behind each cell

# %%
tidy = table1(measures, results.runs)
table1_wide(tidy)

# %% [markdown]
# ## Per condition (runs that differ only in their seeds): how often it grokked, when, and LAR,
# k_LAR, PC95 at each checkpoint

# %%
per_task_display(per_task_table(results.runs, measures))
