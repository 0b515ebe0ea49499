"""What a result means for a language-model run: a metrics row at every step (training loss, the
unembedding's LAR, rate, gradient norm) that an evaluation completes with its validation loss and
spectral summary; the stop at the token budget; and the data's provenance in summary.json."""

from __future__ import annotations

import functools
import math

import torch

from grokking.lar import SPECTRAL_SUMMARY
from grokking.lm.config import LMConfig
from grokking.lm.data import Dataset, dataset
from grokking.lm.model import build_model
from grokking.runs.record import RunRecord


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

    def family_state(self) -> dict:
        return {"train_hash": self.data.meta["train_hash"]}

    def family_problem(self, saved: dict) -> str | None:
        """A run resumes on the very tokens it started on: not after the corpus, Python's
        standard library or the tokenizer changed under it."""
        now = self.data.meta["train_hash"]
        if saved.get("train_hash") != now:
            return (
                f"it trained on other data (training-set hash {saved.get('train_hash')}, now "
                f"{now}: the corpus, the Python version or the tokenizer changed)"
            )
        return None

    def after_unit(self, result: dict) -> None:
        super().after_unit(result)
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
        if self.clock.unit >= self.cfg.max_steps:
            return f"reached the token budget ({self.cfg.token_budget} tokens)"
        return None

    def expected_units(self) -> int:
        return self.cfg.max_steps

    def summary_fields(self) -> dict:
        cfg, meta = self.cfg, self.data.meta
        evaluations = [row for row in self.metrics if "val_loss" in row]
        best = min(evaluations, key=lambda row: row["val_loss"], default=None)
        last = self.metrics[-1] if self.metrics else {}
        return {
            "optimizer": cfg.optim.name.value,
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
