"""One run's record: its events (memorization, grokking), its stop rule, its metric rows, its
checkpoints, its summary and its log, written into its run folder through `RunDir`. The engine
computes; the record decides what a result means for its run and writes it down."""

from __future__ import annotations

import logging
import math
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import torch

import grokking
from grokking.config import ConfigError, TrainConfig, config_differences, to_dict
from grokking.loggers import RunLogger, open_logger
from grokking.model import Transformer, matrix_role
from grokking.rundir import (
    COMPLETED,
    FAILED,
    INTERRUPTED,
    RUNNING,
    DamagedCheckpoint,
    RunDir,
)
from grokking.tasks import make_dataset, train_size

log = logging.getLogger("grokking")


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
    """Why training stops after this evaluation, or None to go on."""
    if events.grokking_epoch is not None and epoch >= cfg.stop_factor * events.grokking_epoch:
        return f"reached {cfg.stop_factor:g} x the grokking epoch"
    if epoch >= cfg.max_epochs:
        return "reached max_epochs"
    return None


def check_same_config(cfg: TrainConfig, run_dir) -> dict | None:
    """The summary of the run already in `run_dir` (None if there is none); ConfigError if that
    run was made with another config, so that nothing of it is overwritten."""
    run = RunDir(run_dir)
    if not run.exists():
        return None
    summary = run.read_summary()
    _refuse_other_config(summary.get("config", {}), cfg, run.path)
    return summary


def _refuse_other_config(stored: dict, cfg: TrainConfig, where: Path) -> None:
    differences = config_differences(stored, to_dict(cfg))
    if differences:
        raise ConfigError(
            f"{where} holds a run with another config ({'; '.join(differences)}); "
            "choose another output directory (hydra.run.dir=...)"
        )


# What a resume point (last.pt) holds besides the model, and of which type.
RESUME_FIELDS = {
    "config": dict,
    "epoch": int,
    "step": int,
    "wall_s": (int, float),
    "events": dict,
    "metrics": list,
    "matrix_lar": list,
    "optimizer": dict,
    "optimizer_step": int,
    "batch_order": torch.Tensor,
}


def check_resume_point(saved: dict, shapes: dict[str, torch.Size], path: Path) -> None:
    """DamagedCheckpoint naming `path` unless `saved` holds all a resume needs: the fields above,
    a model of the config's `shapes`, AdamW moments of the same shapes, a batch-order RNG state
    and the events."""
    problem = _resume_point_problem(saved, shapes)
    if problem:
        raise DamagedCheckpoint(
            f"{path} is not a resume point of this run ({problem}): move it aside to restart "
            "the run from scratch"
        )


def _resume_point_problem(saved: dict, shapes: dict[str, torch.Size]) -> str | None:
    for name, kind in RESUME_FIELDS.items():
        if not isinstance(saved.get(name), kind):
            return f"no {name}"
    model_shapes = {name: tensor.shape for name, tensor in saved["model"].items()}
    if model_shapes != shapes:
        return "its model has other parameters or shapes than the config's"
    if set(saved["optimizer"]) != set(shapes):
        return "optimizer state for other parameters"
    for name, moments in saved["optimizer"].items():
        if not isinstance(moments, dict) or set(moments) != {"exp_avg", "exp_avg_sq"}:
            return f"no optimizer moments of {name!r}"
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
    if not all(isinstance(row, dict) for row in saved["metrics"] + saved["matrix_lar"]):
        return "metric rows that are not rows"
    return None


class RunRecord:
    """Everything one run writes. `epoch` and `step` follow the engine; `active` is False once
    the run has completed or failed."""

    def __init__(
        self,
        cfg: TrainConfig,
        run_dir: str | Path,
        device: torch.device,
        files: dict[str, str] | None = None,
    ):
        self.cfg = cfg
        self.files = files or {}  # {path in the run folder: text}, e.g. Hydra's .hydra/ files
        self.run_dir = RunDir(run_dir)
        self.label = self.run_dir.path.name  # names the run on a console shared with others
        self.device = device
        data = make_dataset(cfg.task.name, cfg.task.p)
        self.n_train = train_size(len(data), cfg.train_fraction)
        self.n_val = len(data) - self.n_train
        self._shapes = (data.vocab_size, data.n_classes)  # of the model: checks a resume point
        self.evaluations_on_console = True  # False while a progress bar shows them
        self.events = Events()
        self.epoch = self.step = 0
        self.metrics: list[dict] = []
        self.matrix_lar: list[dict] = []
        self.summary: dict | None = None
        self._wall_before_s = 0.0  # training time of earlier processes
        self._started = time.perf_counter()
        self._file_log: logging.Logger | None = None
        self._logger: RunLogger | None = None  # TensorBoard or W&B, opened at the first record
        self._saved_at = -math.inf  # when last.pt was last written (time.monotonic)

    # --- start ----------------------------------------------------------------------------------
    def open(self, cleanup: ExitStack) -> None:
        """Hold the run folder's lock until `cleanup` closes (RunLocked when another process
        has it), and remove what an interrupted write left behind."""
        cleanup.enter_context(self.run_dir.lock())
        cleanup.callback(self.close)
        self._open_log()  # a link planted at train.log is refused before anything is written
        self.run_dir.clean_temporary_files()

    def completed(self) -> bool:
        """True (and `summary` set) when the folder holds this run, completed; ConfigError when it
        holds another run."""
        summary = check_same_config(self.cfg, self.run_dir.path)
        if summary and summary.get("status") == COMPLETED:
            self.summary = summary
            self.log(f"already completed at epoch {summary['final_epoch']}; nothing to do")
            return True
        return False

    def resume(self) -> dict | None:
        """The member state saved in last.pt (for `Engine.load_member_states`), with the record
        restored to it; None for a fresh run. Refuses a last.pt saved with another config."""
        if not self.run_dir.has_checkpoint("last"):
            return None
        saved = self.run_dir.load_checkpoint("last")
        path = self.run_dir.checkpoint_path("last")
        with torch.device("meta"):  # shapes only: nothing is allocated or initialised
            model = Transformer(*self._shapes, self.cfg.model)
        check_resume_point(saved, {k: v.shape for k, v in model.state_dict().items()}, path)
        _refuse_other_config(saved["config"], self.cfg, path)
        if saved["step"] == 0:  # saved at initialisation: starting afresh redoes it exactly
            return None
        self.epoch, self.step = saved["epoch"], saved["step"]
        self._wall_before_s = saved["wall_s"]
        self.events = Events(**saved["events"])
        self.metrics, self.matrix_lar = saved["metrics"], saved["matrix_lar"]
        self.log(f"resuming {self.run_dir.path} from epoch {self.epoch}")
        return saved

    def write_files(self) -> None:
        """Write `files` into the run folder: called once the lock is held and the folder's
        config checked, so that a refused process leaves the folder as it was."""
        for name, text in self.files.items():
            self.run_dir.write_text(name, text)

    def start(self) -> None:
        """A fresh run: its folder says so before the first evaluation."""
        self.write_summary(RUNNING)

    # --- evaluations ----------------------------------------------------------------------------
    def evaluation_due(self) -> bool:
        return self.epoch % self.cfg.eval_every == 0 or self.epoch >= self.cfg.max_epochs

    def record(self, result: dict, lr: float, model_state) -> str | None:
        """Note one evaluation (an `Engine.evaluate` entry); save an event's checkpoint from
        `model_state()` when one fires. Returns why the run stops, or None."""
        row = {"epoch": self.epoch, "step": self.step, "wall_s": self.wall_s(), "lr": lr}
        row |= {key: value for key, value in result.items() if key != "matrix_lar"}
        self.metrics.append(row)
        matrices = [
            {"epoch": self.epoch, "step": self.step, "name": name}
            | dict(zip(("layer", "role"), matrix_role(name), strict=True))
            | {"lar": value}
            for name, value in result["matrix_lar"].items()
        ]
        self.matrix_lar += matrices
        if self._logger is None:
            self._logger = open_logger(
                self.cfg.logger, self.run_dir.path, self.label, to_dict(self.cfg)
            )
        self._logger.log_evaluation(row, matrices)
        self.log(
            f"epoch {self.epoch}  train_acc {row['train_acc']:.3f}  val_acc {row['val_acc']:.3f}"
            f"  train_loss {row['train_loss']:.3g}  lar {row['lar']:.4f}",
            console=self.evaluations_on_console,
        )
        for kind in self.events.update(self.epoch, row["train_acc"], row["val_acc"], self.cfg):
            self.log(
                f"{kind} at epoch {self.epoch} "
                f"(train_acc {row['train_acc']:.3f}, val_acc {row['val_acc']:.3f})"
            )
            self.run_dir.save_checkpoint(kind, self._model_checkpoint(model_state()))
        return self.stop_reason()

    def stop_reason(self) -> str | None:
        return stop_reason(self.epoch, self.events, self.cfg)

    def expected_epochs(self) -> int:
        """The epoch training will stop at, as far as known: the budget, until the run groks."""
        grokked = self.events.grokking_epoch
        if grokked is None:
            return self.cfg.max_epochs
        return min(self.cfg.max_epochs, math.ceil(self.cfg.stop_factor * grokked))

    # --- checkpoints and endings ----------------------------------------------------------------
    def _model_checkpoint(self, model_state: dict) -> dict:
        return {"model": model_state, "epoch": self.epoch, "step": self.step}

    def save_epoch_checkpoint(self, model_state: dict) -> None:
        """checkpoint_every: keep the model of this epoch as checkpoints/epoch_<N>.pt."""
        self.run_dir.save_checkpoint(f"epoch_{self.epoch}", self._model_checkpoint(model_state))

    def save_due(self) -> bool:
        """Whether this evaluation saves a resume point: `save_every_s` since the last one."""
        return time.monotonic() - self._saved_at >= self.cfg.save_every_s

    def save_last(self, member_state: dict) -> None:
        """Everything needed to resume: the engine's member state, the record's own, the config;
        and the tables and summary as far as they go."""
        self._saved_at = time.monotonic()
        self.run_dir.write_metrics(self.metrics)
        self.run_dir.write_matrix_lar(self.matrix_lar)
        self.run_dir.save_checkpoint(
            "last",
            member_state
            | {
                "epoch": self.epoch,
                "step": self.step,
                "wall_s": self.wall_s(),
                "events": vars(self.events),
                "metrics": self.metrics,
                "matrix_lar": self.matrix_lar,
                "config": to_dict(self.cfg),
            },
        )
        self.write_summary(RUNNING)

    def finish(self, reason: str, member_state: dict) -> None:
        self.save_last(member_state)
        self.log(f"stopping at epoch {self.epoch}: {reason}")
        self.run_dir.save_checkpoint("final", self._model_checkpoint(member_state["model"]))
        self.write_summary(COMPLETED, stop_reason=reason)
        if self.events.grokking_epoch is None:
            self.log(f"did not grok within {self.epoch} epochs")

    def fail(self, message: str) -> None:
        """Status failed, when the folder can still be written (not on a full disk)."""
        self.log(message, level=logging.ERROR)
        try:
            self.write_summary(FAILED, failure=message)
        except OSError as error:
            self.log(f"could not write the summary: {error}", level=logging.ERROR)

    def interrupt(self, member_state: dict, signal_name: str) -> None:
        self.save_last(member_state)
        self.write_summary(INTERRUPTED)
        self.log(
            f"{signal_name} at epoch {self.epoch}: saved last.pt; rerun the same command to resume",
            level=logging.WARNING,
        )

    @property
    def active(self) -> bool:
        return self.summary is None or self.summary["status"] == RUNNING

    # --- summary and log ------------------------------------------------------------------------
    def wall_s(self) -> float:
        return self._wall_before_s + time.perf_counter() - self._started

    def write_summary(self, status: str, **extra) -> dict:
        cfg, final = self.cfg, self.metrics[-1] if self.metrics else {}
        self.summary = {
            "status": status,
            "task": cfg.task.name,
            "p": cfg.task.p,
            "train_fraction": cfg.train_fraction,
            "seed": cfg.seed,
            "split_seed": cfg.split_seed,
            "batch_size": cfg.batch_size,
            "sweep_name": cfg.sweep_name,
            "n_train": self.n_train,
            "n_val": self.n_val,
            "memorization_epoch": self.events.memorization_epoch,
            "grokking_epoch": self.events.grokking_epoch,
            "final_epoch": self.epoch,
            "final": {k: final[k] for k in ("train_acc", "val_acc", "train_loss", "lar", "k_lar")}
            if final
            else {},
            "wall_s": self.wall_s(),
            "device": str(self.device),
            "threads": torch.get_num_threads(),
            "version": grokking.__version__,
            "config": to_dict(cfg),
        } | extra
        self.run_dir.write_summary(self.summary)
        return self.summary

    def log(self, message: str, level: int = logging.INFO, console: bool | None = True) -> None:
        """Into the run's train.log always; on the console (named by the run) when `console`."""
        self._open_log().log(level, message)
        if console:
            log.log(level, "%s: %s", self.label, message)

    def _open_log(self) -> logging.Logger:
        if self._file_log is None:
            self._file_log = logging.Logger(f"grokking.run.{self.label}")
            handler = self.run_dir.log_handler()
            handler.setFormatter(logging.Formatter("[%(asctime)s][%(levelname)s] - %(message)s"))
            self._file_log.addHandler(handler)
        return self._file_log

    def close(self) -> None:
        if self._logger is not None:
            self._logger.close()
        if self._file_log is not None:
            for handler in self._file_log.handlers:
                handler.close()
