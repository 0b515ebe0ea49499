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
# # The paper's figures from a results folder
#
# Figure 1 (LAR and validation accuracy over training), the classic grokking curves (accuracy
# and loss on a log epoch axis, LAR beside them), Figure 2 (the spectra p and q),
# Figure 3 (k_LAR against PC95), Figure 9 (batch size and the early LAR dip, for runs evaluated
# every epoch), the Appendix D.1 ranks, and LAR of every dense matrix. Set `GROKKING_RESULTS`
# (or edit the next cell) to a folder of runs.

# %% tags=["parameters"]
import os

RESULTS = os.environ.get("GROKKING_RESULTS", "../outputs/sweeps/smoke")

# %%
# %matplotlib inline
import matplotlib.pyplot as plt
from IPython.display import display

from grokking.analysis.algorithmic import collect, figures, measure_all

results = collect(RESULTS)
measures = measure_all(results)
groups = list(results.runs["group"].unique())


def show(fig):
    """Display `fig` once: closed, so that the inline backend does not show it again."""
    if fig is None:
        print("nothing to plot for these runs")
    else:
        display(fig)
        plt.close(fig)


# %% [markdown]
# ## Figure 1: LAR and validation accuracy, mean over seeds (shaded: their range)

# %%
for group in groups:
    show(figures.figure1(results.runs, results.metrics, group))

# %% [markdown]
# ## Accuracy and loss on a log epoch axis, LAR beside them

# %%
for group in groups:
    in_group = results.runs[results.runs["group"] == group]
    show(figures.figure_curves(in_group, results.metrics, figures.curves_title(group)))

# %% [markdown]
# ## Figure 2: p and q at memorization, grokking and the end

# %%
show(figures.figure2(measures, figures.choose_runs(results.runs)))

# %% [markdown]
# ## Figure 3: k_LAR against PC95

# %%
show(figures.figure3(measures, results.runs))

# %% [markdown]
# ## Figure 9: batch size and the early dip (runs with `eval_every=1`)

# %%
show(figures.figure9(results.runs, results.metrics))

# %% [markdown]
# ## LAR beside stable and effective rank; LAR of every dense matrix

# %%
for group in groups:
    show(figures.figure_ranks(results.runs, results.metrics, group))
    show(figures.figure_matrices(results.runs, results.matrix_lar, group))
