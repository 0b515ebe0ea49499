"""PC95, LAR, k_LAR and the spectra at a run's memorization, grokking and final checkpoints.

Each checkpoint's model is reloaded and the whole training set passed through it; a LARProbe on
the unembedding collects its inputs (for PCA) and XᵀX (for p and q). Results are cached in the
run directory (checkpoint_measures.parquet), keyed by checkpoint epoch and variance threshold;
a run folder that cannot be written (a colleague's read-only results) is measured uncached.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import torch
from sklearn.decomposition import PCA

from grokking.algorithmic.build import build, load_model, run_config
from grokking.algorithmic.record import CHECKPOINT_KINDS
from grokking.analysis.collect import Results, reason
from grokking.lar import LARProbe, k_lar, summary_from_spectra
from grokking.runs.rundir import RunDir

log = logging.getLogger("grokking.analysis")

MEASURES = "checkpoint_measures.parquet"  # this analysis' cache in each run folder


def pc95(activations: np.ndarray | torch.Tensor, threshold: float = 0.95) -> int:
    """How many principal components explain `threshold` of the variance (scikit-learn PCA)."""
    if isinstance(activations, torch.Tensor):
        activations = activations.double().cpu().numpy()
    ratios = PCA(svd_solver="full").fit(activations).explained_variance_ratio_
    # the first count whose cumulative share reaches the threshold (guarding float round-off)
    return int(np.searchsorted(np.cumsum(ratios), threshold - 1e-12) + 1)


def measure_checkpoint(run: RunDir, kind: str, threshold: float = 0.95, batch_size=2048) -> dict:
    """One checkpoint's measures: epoch, lar, k_lar, pc95, the spectral summary, p and q."""
    (train_x, *_), _ = build(run_config(run))
    model = load_model(run, kind)
    probe = LARProbe(model.unembed, keep_gram=True, keep_inputs=True)
    with torch.no_grad():
        for chunk in train_x.split(batch_size):
            model(chunk)
    p, q, s = probe.spectra()
    lar_value = probe.value()
    epoch = run.read_summary()[f"{kind}_epoch"]
    row = {"kind": kind, "epoch": epoch} | summary_from_spectra(p, q, s)
    row |= {
        "lar": lar_value,
        "k_lar": k_lar(lar_value, model.unembed.in_features),
        "pc95": pc95(probe.inputs, threshold),
        "threshold": threshold,
        "p": p.tolist(),
        "q": q.tolist(),
    }
    probe.remove()
    return row


def measure_run(run: RunDir, threshold: float = 0.95) -> pd.DataFrame:
    """Measures of every checkpoint kind the run has; reads the run's cache when it matches."""
    kinds = [kind for kind in CHECKPOINT_KINDS if run.has_checkpoint(kind)]
    cached = read_cache(run, MEASURES, "kind", "measures")
    if cached is not None and _cache_matches(cached, run, kinds, threshold):
        return cached
    frame = pd.DataFrame([measure_checkpoint(run, kind, threshold) for kind in kinds])
    keep_cache(run, MEASURES, frame, "measures")
    return frame


def read_cache(run: RunDir, name: str, key: str, what: str) -> pd.DataFrame | None:
    """The run's analysis cache `name` (RunDir.read_cache), or None when it is absent or
    damaged: a damaged cache is measured afresh, never trusted."""
    try:
        return run.read_cache(name, key)
    except Exception as error:
        log.warning("ignoring the cache of the %s of %s (%s)", what, run.path, reason(error))
        return None


def keep_cache(run: RunDir, name: str, frame: pd.DataFrame, what: str) -> None:
    """Write the analysis cache `name`; in read-only results the values are still good, just
    not kept."""
    try:
        run.write_cache(name, frame)
    except OSError as error:
        log.warning("not caching the %s of %s (%s)", what, run.path, reason(error))


def measure_each_run(results: Results, measure, what: str) -> list[pd.DataFrame]:
    """`measure(row)` for every run of `results` (a row of `results.runs`); a run it cannot
    measure (a truncated, crafted or missing checkpoint) is taken out of `results`, every table,
    with its reason."""
    frames = []
    for row in results.runs.itertuples(index=False):
        try:
            frames.append(measure(row))
        except Exception as error:
            results.skip(row.run, f"cannot measure its {what}: {reason(error, row.path)}")
    return frames


def _cache_matches(cached: pd.DataFrame, run: RunDir, kinds: list[str], threshold: float) -> bool:
    if sorted(cached["kind"]) != sorted(kinds) or not (cached["threshold"] == threshold).all():
        return False
    summary = run.read_summary()  # the checkpoints' epochs, without loading them
    epochs = {kind: summary[f"{kind}_epoch"] for kind in kinds}
    return all(epochs[k] == e for k, e in zip(cached["kind"], cached["epoch"], strict=True))


def measure_all(results: Results, threshold: float = 0.95) -> pd.DataFrame:
    """`measure_run` for every completed run, with `run` and `grokked` columns. A run whose
    checkpoints cannot be measured is taken out of `results` (every table) with its reason."""

    def measure(row):
        return measure_run(RunDir(row.path), threshold).assign(run=row.run, grokked=row.grokked)

    frames = measure_each_run(results, measure, "checkpoints")
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
