"""What a result means for a grokking run: its events (memorization, grokking), its stop (the
config's `stop`: at stop_factor × the grokking epoch validation measured, at `GrokkingStop` fed
LAR and the training accuracy, or at the budget), what its resume point holds beyond the shared
record, and its summary fields."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from grokking.algorithmic.config import TrainConfig
from grokking.algorithmic.model import Transformer
from grokking.algorithmic.tasks import make_dataset, train_size
from grokking.lar import SPECTRAL_SUMMARY
from grokking.lar.select import GrokkingStop
from grokking.runs.record import RunRecord
from grokking.runs.stopping import StopKind

# The model checkpoints a grokking run keeps (besides last.pt, its resume point): its events' and
# the final one, in the order they happen; what the analysis measures.
CHECKPOINT_KINDS = ("memorization", "grokking", "final")


@dataclass
class Events:
    memorization_epoch: int | None = None
    grokking_epoch: int | None = None

    def update(self, epoch: int, train_acc: float, val_acc: float, cfg: TrainConfig) -> list[str]:
        """Record the first memorization and the first grokking evaluation; return what
        happened at this one. Memorization: train acc ≥ its threshold while validation acc is
        still below the grokking threshold (and the run has not grokked yet)."""
        if train_acc < cfg.memorization_threshold:
            return []
        if val_acc >= cfg.grokking_threshold:
            if self.grokking_epoch is None:
                self.grokking_epoch = epoch
                return ["grokking"]
        elif self.memorization_epoch is None and self.grokking_epoch is None:
            self.memorization_epoch = epoch
            return ["memorization"]
        return []


def stop_reason(epoch: int, events: Events, cfg: TrainConfig) -> str | None:
    """Why training stops after this evaluation, or None to go on: with `stop=validation`, at
    stop_factor × the grokking epoch; under every stop, at the budget."""
    grokked = events.grokking_epoch
    validated = cfg.stop == StopKind.validation and grokked is not None
    if validated and epoch >= cfg.stop_factor * grokked:
        return f"reached {cfg.stop_factor:g} x the grokking epoch"
    if epoch >= cfg.max_epochs:
        return "reached max_epochs"
    return None


class GrokkingRecord(RunRecord):
    """A grokking run's record: the clock counts epochs."""

    UNIT = "epoch"
    METRIC_COLUMNS = [
        "epoch",
        "step",
        "wall_s",
        "lr",
        "train_loss",
        "train_acc",
        "val_loss",
        "val_acc",
        *SPECTRAL_SUMMARY,  # the unembedding, over the whole training set
        "regularizing",  # 1 once the regularizer (regularize.name) is on, else 0
    ]
    MATRIX_COLUMNS = ["epoch", "step", "name", "layer", "role", "lar"]
    RESUME_FIELDS = RunRecord.RESUME_FIELDS | {
        "events": dict,
        "optimizer": dict,
        "optimizer_step": int,
        "batch_order": torch.Tensor,
    }

    def __init__(self, cfg: TrainConfig, *args, **kwargs):
        super().__init__(cfg, *args, **kwargs)
        data = make_dataset(cfg.task.name, cfg.task.p)
        self.n_train = train_size(len(data), cfg.train_fraction)
        self.n_val = len(data) - self.n_train
        self._shapes = (data.vocab_size, data.n_classes)  # of the model: checks a resume point
        self.events = Events()

    def model_shapes(self) -> dict[str, torch.Size]:
        with torch.device("meta"):  # shapes only: nothing is allocated or initialised
            model = Transformer(*self._shapes, self.cfg.model)
        return {name: tensor.shape for name, tensor in model.state_dict().items()}

    def family_problem(self, saved: dict) -> str | None:
        shapes = self.model_shapes()
        if set(saved["optimizer"]) != set(shapes):
            return "optimizer state for other parameters"
        # AdamW makes its moments at its first step: a resume point saved before it has none
        expected = {"exp_avg", "exp_avg_sq"} if saved["optimizer_step"] else set()
        for name, moments in saved["optimizer"].items():
            if not isinstance(moments, dict) or set(moments) != expected:
                what = "no optimizer moments" if expected else "optimizer moments before step 1"
                return f"{what} of {name!r}"
            if any(
                not isinstance(value, torch.Tensor) or value.shape != shapes[name]
                for value in moments.values()
            ):
                return f"optimizer moments of {name!r} of another shape"
        events = saved["events"]
        if set(events) != {"memorization_epoch", "grokking_epoch"} or not all(
            value is None or isinstance(value, int) for value in events.values()
        ):
            return "no events"
        try:
            torch.Generator().set_state(saved["batch_order"])
        except (RuntimeError, TypeError):
            return "no batch-order state"
        return None

    def stop_rule(self) -> GrokkingStop | None:
        """`stop=lar`: the generalization alarm's stop, fed each evaluation's LAR (the
        unembedding's, on the training set) and training accuracy, in epochs; armed at the
        accuracy that counts as memorized (`memorization_threshold`)."""
        if self.cfg.stop != StopKind.lar:
            return None
        return GrokkingStop(memorized=self.cfg.memorization_threshold, unit=self.UNIT)

    def restore(self, saved: dict) -> None:
        self.events = Events(**saved["events"])

    def family_state(self) -> dict:
        return {"events": vars(self.events)}

    def describe(self, row: dict) -> str:
        return (
            f"epoch {self.clock.unit}  train_acc {row['train_acc']:.3f}  "
            f"val_acc {row['val_acc']:.3f}  train_loss {row['train_loss']:.3g}  "
            f"lar {row['lar']:.4f}"
        )

    def on_evaluation(self, row: dict, model_state) -> None:
        epoch = self.clock.unit
        for kind in self.events.update(epoch, row["train_acc"], row["val_acc"], self.cfg):
            self.log(
                f"{kind} at epoch {epoch} "
                f"(train_acc {row['train_acc']:.3f}, val_acc {row['val_acc']:.3f})"
            )
            self.run_dir.save_checkpoint(kind, self.model_checkpoint(model_state()))
        rule = self.selection.rule
        if rule is not None:
            self.decide(rule.update(epoch, row["lar"], train_acc=row["train_acc"]), model_state)

    def stop_reason(self) -> str | None:
        """Why the run stops here: the budget or stop_factor first, then a rule that stopped it
        (a rule settled at the budget, `StopRule.end`, gives the budget's reason on resume too)."""
        reason = stop_reason(self.clock.unit, self.events, self.cfg)
        return reason or (self.selection.rule.reason if self.selection.stopping else None)

    def expected_units(self) -> int:
        """The epoch training will stop at, as far as known: the budget, until the run groks
        (`stop=validation`) or the generalization alarm has fired (`stop=lar`)."""
        cfg, grokked = self.cfg, self.events.grokking_epoch
        if cfg.stop == StopKind.validation and grokked is not None:
            return min(cfg.max_epochs, math.ceil(cfg.stop_factor * grokked))
        if cfg.stop == StopKind.lar and self.selection.rule.due is not None:
            return min(cfg.max_epochs, self.selection.rule.due)
        return cfg.max_epochs

    def finish(self, reason: str, member_state: dict) -> None:
        super().finish(reason, member_state)
        if self.events.grokking_epoch is None:
            self.log(f"did not grok within {self.clock.unit} epochs")

    def summary_fields(self) -> dict:
        cfg, final = self.cfg, self.metrics[-1] if self.metrics else {}
        return {
            "task": cfg.task.name,
            "p": cfg.task.p,
            "train_fraction": cfg.train_fraction,
            "split_seed": cfg.split_seed,
            "batch_size": cfg.batch_size,
            "n_train": self.n_train,
            "n_val": self.n_val,
            "memorization_epoch": self.events.memorization_epoch,
            "grokking_epoch": self.events.grokking_epoch,
            "final": {k: final[k] for k in ("train_acc", "val_acc", "train_loss", "lar", "k_lar")}
            if final
            else {},
        }

    def progress(self) -> dict:
        last = self.metrics[-1] if self.metrics else None
        return {k: f"{last[k]:.3f}" for k in ("train_acc", "val_acc", "lar")} if last else {}

    @staticmethod
    def pack_progress(records: list[GrokkingRecord]) -> dict:
        grokked = sum(record.events.grokking_epoch is not None for record in records)
        return {"grokked": grokked}
