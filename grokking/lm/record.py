"""What a result means for a language-model run: a metrics row at every step (training loss, the
unembedding's LAR, rate, gradient norm) that an evaluation completes with its validation loss and
spectral summary; the stop (the config's `stop`: at the token budget, by early stopping on the
validation loss, or by `OverfittingStop` fed each step's LAR); and the data's provenance in
summary.json."""

from __future__ import annotations

import functools
import math

import torch

from grokking import signals
from grokking.lar import SPECTRAL_SUMMARY
from grokking.lar.select import OverfittingStop
from grokking.lm.config import LMConfig, OptimizerName
from grokking.lm.data import Dataset, dataset
from grokking.lm.model import build_model
from grokking.lm.optim import resolve_orthogonalize_dtype
from grokking.runs.record import RunRecord
from grokking.runs.stopping import StopKind, StopRule, ValidationStop

# The hashes of the data a run reads (lm.data), kept in last.pt and checked on resume.
DATA_HASHES = {
    "train_hash": ("trained", "training-set"),
    "val_hash": ("was validated", "validation-set"),
}
PATIENCE = 3  # evaluations without a better validation loss before stop=validation stops


class LMRecord(RunRecord):
    """A language-model run's record: the clock counts steps."""

    UNIT = "step"
    METRIC_COLUMNS = [
        "step",
        "tokens",
        "epoch",  # passes over the training set so far
        "wall_s",
        "lr",
        # every step, on its own batch
        "train_loss",
        "lar",  # the unembedding's
        "grad_norm",  # before clipping
        # at evaluations: the validation batch, then the fixed probe batch of training windows
        "val_loss",
        "probe_loss",
        "probe_lar",  # the unembedding's summary on the probe batch, its `lar` renamed
        *SPECTRAL_SUMMARY[1:],
        "p1",  # the top singular direction's share of p (weights) and of q (activations)
        "q1",
        "regularizing",  # at evaluations: 1 when the regularizer (regularize.name) is on
        *[column for columns in signals.COLUMNS.values() for column in columns],  # `signals`
    ]
    MATRIX_COLUMNS = ["step", "name", "layer", "role", "lar"]
    RESUME_FIELDS = RunRecord.RESUME_FIELDS | {"optimizers": list, "optimizer_step": int}
    cfg: LMConfig

    @functools.cached_property
    def data(self) -> Dataset:
        return dataset(self.cfg)  # the engine's, built once per process

    def model_shapes(self) -> dict[str, torch.Size]:
        with torch.device("meta"):  # shapes only: nothing is allocated or initialised
            model = build_model(self.cfg.model, self.data.meta["vocab_size"], self.cfg.seed)
        return {name: tensor.shape for name, tensor in model.state_dict().items()}

    @functools.cached_property
    def n_parameters(self) -> int:
        return sum(math.prod(shape) for shape in self.model_shapes().values())

    @functools.cached_property
    def orthogonalize_dtype(self) -> str | None:
        """The dtype of Muon's Newton–Schulz iterations (None under Adam): the config's choice on
        this machine; a resumed run's is the one it started with (`restore`), as is its Muon's,
        whose saved state names it."""
        if self.cfg.optim.name != OptimizerName.muon:
            return None
        return resolve_orthogonalize_dtype(self.cfg.optim.orthogonalize_dtype, self.device)

    def log_orthogonalization(self) -> None:
        if self.orthogonalize_dtype:
            choice = self.cfg.optim.orthogonalize_dtype.value
            self.log(
                f"Muon orthogonalises in {self.orthogonalize_dtype} "
                f"(optim.orthogonalize_dtype={choice})"
            )

    def start(self) -> None:
        super().start()
        self.log_orthogonalization()

    def stop_rule(self) -> StopRule | None:
        """`stop=validation`: early stopping on the validation loss (`PATIENCE` evaluations);
        `stop=lar`: `OverfittingStop` fed the LAR of every step, as it was tuned, its candidates
        the evaluated steps."""
        if self.cfg.stop == StopKind.validation:
            return ValidationStop(PATIENCE)
        if self.cfg.stop == StopKind.lar:
            return OverfittingStop(every=self.cfg.eval_every)
        return None

    def family_state(self) -> dict:
        return {
            **{key: self.data.meta[key] for key in DATA_HASHES},
            "orthogonalize_dtype": self.orthogonalize_dtype,
        }

    def restore(self, saved: dict) -> None:
        self.orthogonalize_dtype = saved.get("orthogonalize_dtype")
        self.log_orthogonalization()

    def family_problem(self, saved: dict) -> str | None:
        """A run resumes on the very tokens it started on, for training and for validation: not
        after the corpus (a document edited in place), Python's standard library or the
        tokenizer changed under it."""
        for key, (verb, what) in DATA_HASHES.items():
            now = self.data.meta[key]
            if saved.get(key) != now:
                return (
                    f"it {verb} on other data ({what} hash {saved.get(key)}, now {now}: the "
                    "corpus, the Python version or the tokenizer changed)"
                )
        return None

    def after_unit(self, result: dict, model_state) -> None:
        super().after_unit(result, model_state)
        step = self.clock.step
        tokens = step * self.cfg.tokens_per_step
        row = {
            "step": step,
            "tokens": tokens,
            "epoch": tokens / self.data.meta["train_tokens"],  # passes over the training set
            "wall_s": self.wall_s(),
            "lr": result["lr"],
            "train_loss": result["loss"],
            "lar": result["lar"],
            "grad_norm": result["grad_norm"],
        }
        self.metrics.append(row)
        self.send(row, [])  # the loggers see every step, not only evaluations
        if self.cfg.stop == StopKind.lar and self.active:
            self.decide(self.selection.rule.update(step, result["lar"]), model_state)

    def on_evaluation(self, row: dict, model_state) -> None:
        if self.cfg.stop == StopKind.validation:
            rule = self.selection.rule
            self.decide(rule.update(self.clock.step, row["val_loss"]), model_state)

    def add_row(self, row: dict) -> None:
        """An evaluation completes the row of its step (at step 0 it is the first row)."""
        if self.metrics and self.metrics[-1]["step"] == row["step"]:
            self.metrics[-1] |= {k: v for k, v in row.items() if k != "wall_s"}
        else:
            self.metrics.append(row)

    def describe(self, row: dict) -> str:
        last = self.metrics[-1]
        train = f"  train_loss {last['train_loss']:.4f}" if "train_loss" in last else ""
        return (
            f"step {self.clock.unit}{train}  val_loss {row['val_loss']:.4f}  "
            f"lar {last.get('lar', row['probe_lar']):.4f}"
        )

    def stop_reason(self) -> str | None:
        """The budget first: a rule settled at the budget (`StopRule.end`, saved in last.pt before
        the run completed) gives the same reason after a resume."""
        if self.clock.unit >= self.cfg.max_steps:
            return f"reached the token budget ({self.cfg.token_budget} tokens)"
        return self.selection.rule.reason if self.selection.stopping else None

    def expected_units(self) -> int:
        return self.cfg.max_steps

    def summary_fields(self) -> dict:
        cfg, meta = self.cfg, self.data.meta
        evaluations = [row for row in self.metrics if "val_loss" in row]
        best = min(evaluations, key=lambda row: row["val_loss"], default=None)
        last = self.metrics[-1] if self.metrics else {}
        return {
            "model": {"size": cfg.model.size, "parameters": self.n_parameters},
            "optimizer": cfg.optim.name.value,
            "orthogonalize_dtype": self.orthogonalize_dtype,  # Muon's Newton–Schulz; None: Adam
            "train_tokens": meta["train_tokens"],
            "token_budget": cfg.token_budget,
            "epochs": cfg.max_steps * cfg.tokens_per_step / meta["train_tokens"],
            "max_steps": cfg.max_steps,
            "data": {
                key: meta.get(key)
                for key in (
                    "source",
                    "python_version",
                    "corpus_hash",
                    "n_documents",
                    "n_tokens",
                    "n_bytes",
                    "vocab_size",
                    "n_train_documents",
                    "n_val_documents",
                    "train_sequences",
                    "val_tokens",
                    "train_hash",
                    "val_hash",
                    "cache_key",
                )
            },  # fmt: skip
            "min_val_loss": best["val_loss"] if best else None,
            "min_val_loss_step": best["step"] if best else None,
            "final": {
                "train_loss": last.get("train_loss"),
                "lar": last.get("lar"),
                "val_loss": evaluations[-1]["val_loss"] if evaluations else None,
            },
        }

    def progress(self) -> dict:
        last = self.metrics[-1] if self.metrics else {}
        evaluations = [row for row in self.metrics[-200:] if "val_loss" in row]
        shown = {"loss": last.get("train_loss"), "lar": last.get("lar")}
        if evaluations:
            shown["val"] = evaluations[-1]["val_loss"]
        return {k: f"{v:.3f}" for k, v in shown.items() if v is not None and math.isfinite(v)}
