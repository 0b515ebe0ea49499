"""The baselines the alarms are scored beside, measured at a grokking run's periodic checkpoints
(`checkpoint_every`: checkpoints/epoch_N.pt): WeightWatcher's power-law exponent α of the
unembedding and its mean over every dense layer (its own rule: α < 2 reads "over-trained"), and
RankMe (Garrido et al.) of the unembedding's inputs over the training set, and the weight norm
(Omnigrok, Liu et al. 2022: the L2 norm of every parameter together) that the early forecast reads
(forecast.py). The weights' effective rank (Roy and Vetterli) and stable rank need no checkpoint:
every evaluation records them.

Results are cached in the run folder (baseline_measures.parquet), like measure.py's.
WeightWatcher is the slowest signal by far (benchmarks/signal_cost.py), so the mean over the
dense layers is measured at every `DENSE_EVERY`-th checkpoint only. Without weightwatcher (the
`baselines` extra) its columns are NaN and the alarms are scored without it.
"""

from __future__ import annotations

import logging
import math
import re
import time

import pandas as pd
import torch
from torch import nn

from grokking.algorithmic.build import build, load_model, run_config
from grokking.analysis.algorithmic.measure import keep_cache, measure_each_run, read_cache
from grokking.analysis.collect import Results
from grokking.lar import LARProbe
from grokking.runs.rundir import RunDir
from grokking.signals import weightwatcher_module, ww_alphas

log = logging.getLogger("grokking.analysis")

BASELINES = "baseline_measures.parquet"  # this analysis' cache in each run folder

DENSE_EVERY = 2  # the mean α over the dense layers at every 2nd periodic checkpoint
COLUMNS = ["epoch", "ww_alpha", "ww_alpha_mean", "rankme", "weight_norm"]


def rankme(input_gram: torch.Tensor) -> float:
    """RankMe of inputs X from XᵀX: exp of the entropy of X's singular values σ normalised to
    sum 1 (σ² are XᵀX's eigenvalues)."""
    sigma = torch.linalg.eigvalsh(input_gram.double()).clamp(min=0).sqrt()
    shares = sigma / sigma.sum()
    shares = shares[shares > 0]
    return math.exp(-(shares * shares.log()).sum().item())


def weight_norm(model: nn.Module) -> float:
    """The L2 norm of all of `model`'s parameters taken as one vector."""
    with torch.no_grad():
        return math.sqrt(sum(p.double().square().sum().item() for p in model.parameters()))


def periodic_epochs(run: RunDir) -> list[int]:
    """The epochs of the run's checkpoints/epoch_N.pt, in order."""
    found = (re.fullmatch(r"epoch_(\d+)\.pt", p.name) for p in run.checkpoint_dir.glob("*.pt"))
    return sorted(int(match[1]) for match in found if match)


def measure_checkpoint(run: RunDir, epoch: int, train_x: torch.Tensor, dense: bool) -> dict:
    model = load_model(run, f"epoch_{epoch}")
    with LARProbe(model.unembed, keep_gram=True) as probe, torch.no_grad():
        for chunk in train_x.split(2048):
            model(chunk)
        gram = probe.gram
    return {
        "epoch": epoch,
        "ww_alpha": ww_alphas(nn.ModuleList([model.unembed])).mean(),  # NaN if it fits none
        "ww_alpha_mean": ww_alphas(model).mean() if dense else math.nan,
        "rankme": rankme(gram),
        "weight_norm": weight_norm(model),
    }


def measure_run(run: RunDir) -> pd.DataFrame:
    """The baselines at every periodic checkpoint of a run (empty without any); cached."""
    epochs = periodic_epochs(run)
    cached = read_cache(run, BASELINES, "epoch", "baselines")
    if cached is not None and list(cached["epoch"]) == epochs and set(COLUMNS) <= set(cached):
        return cached  # a cache from before a column was added is measured again
    if not epochs:
        return pd.DataFrame(columns=COLUMNS)
    (train_x, *_), _ = build(run_config(run))
    rows = [
        measure_checkpoint(run, epoch, train_x, dense=i % DENSE_EVERY == DENSE_EVERY - 1)
        for i, epoch in enumerate(epochs)
    ]
    frame = pd.DataFrame(rows, columns=COLUMNS)
    if weightwatcher_module() is None:
        return frame  # not cached: measured again, α included, once weightwatcher is installed
    keep_cache(run, BASELINES, frame, "baselines")
    return frame


def measure_all(results: Results) -> pd.DataFrame:
    """`measure_run` for every completed run, with `run`. A run whose checkpoints cannot be
    measured is taken out of `results` (every table) with its reason."""
    frames = measure_each_run(
        results, lambda row: measure_run(RunDir(row.path)).assign(run=row.run), "baselines"
    )
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=COLUMNS)


def costs(run: RunDir, repeats: int = 3) -> pd.DataFrame:
    """Seconds per call of each signal at one checkpoint of `run` (its last periodic one), each
    the best of `repeats`: the forward pass over the training set that LAR and RankMe read, then
    what each signal adds to it (the weights' ranks need only the weight)."""
    epoch = periodic_epochs(run)[-1]
    model = load_model(run, f"epoch_{epoch}")
    (train_x, *_), _ = build(run_config(run))
    probe = LARProbe(model.unembed, keep_gram=True)

    def forward():
        probe.reset()
        with torch.no_grad():
            for chunk in train_x.split(2048):
                model(chunk)

    weight = model.unembed.weight.detach()
    calls = {
        "forward pass over the training set (LAR's and RankMe's inputs)": forward,
        "LAR (from the forward pass's sums)": probe.value,
        "RankMe of the unembedding's inputs (from XᵀX)": lambda: rankme(probe.gram),
        "effective and stable rank of the unembedding (its SVD)": lambda: torch.linalg.svdvals(
            weight
        ),
        "WeightWatcher α of the unembedding": lambda: ww_alphas(nn.ModuleList([model.unembed])),
        "WeightWatcher α of every dense layer": lambda: ww_alphas(model),
    }
    forward()
    rows = [{"signal": name, "seconds": _best_time(call, repeats)} for name, call in calls.items()]
    probe.remove()
    return pd.DataFrame(rows)


def _best_time(call, repeats: int) -> float:
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        best = min(best, time.perf_counter() - start)
    return best
