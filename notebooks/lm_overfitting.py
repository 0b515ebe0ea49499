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
# # Language models that overfit: the paper's §5 from a results folder
#
# Per run its overfitting step (the first evaluation whose 5-evaluation mean validation loss is
# 2 % above the best such mean so far), Figure 4 (losses and unembedding LAR against step),
# Figure 5 (the LAR differential beside the generalization gap), Table 2 (LAR's decline per step
# in windows from its peak), Figures 6–8 (the top singular direction's shares p₁, q₁, p₁q₁),
# and the unembedding's effective rank beside LAR. Set `GROKKING_RESULTS` (or edit the next
# cell) to a folder of `python -m grokking.lm` runs, such as a `+sweeps=lm_overfitting` sweep.

# %% tags=["parameters"]
import os

RESULTS = os.environ.get("GROKKING_RESULTS", "../outputs/lm/sweeps/lm_overfitting")

# %%
# %matplotlib inline
import matplotlib.pyplot as plt
from IPython.display import display

from grokking.analysis.lm import collect, figures, tables

results = collect(RESULTS)


def show(fig):
    """Display `fig` once: closed, so that the inline backend does not show it again."""
    if fig is None:
        print("nothing to plot for these runs")
    else:
        display(fig)
        plt.close(fig)


# %% [markdown]
# ## Per run: overfitting step, minimum validation loss, LAR's peak (baseline: the largest set)

# %%
display(tables.runs_table(results))

# %% [markdown]
# ## Figure 4: training loss, validation loss and LAR (dashed: each run's overfitting step)

# %%
show(figures.figure4(results))

# %% [markdown]
# ## Figure 5: the LAR differential beside the generalization gap, and their correlation

# %%
show(figures.figure5(results))
display(tables.correlations(results))

# %% [markdown]
# ## Table 2: LAR's decline per step (× 10³) from its peak (*: the window of the overfitting step)

# %%
wide, tidy = tables.table2(results)
display(wide)

# %% [markdown]
# ## Figures 6–8: the top singular direction's share of p (weights), of q (activations), p₁q₁

# %%
show(figures.figure_shares(results, "p1", "p₁ (weights)"))
show(figures.figure_shares(results, "q1", "q₁ (activations)"))
show(figures.figure_shares(results, "p1q1", "p₁q₁"))

# %% [markdown]
# ## The unembedding's effective rank beside its LAR (App. D.1)

# %%
show(figures.figure_ranks(results))
