"""One run's record, the half every family shares: it holds the run folder (its lock), resumes
from last.pt, keeps the metric rows, writes the resume points, the checkpoints, the summary, the
train.log and the loggers, through `RunDir`. A family subclasses `RunRecord` to say what a result
means for its runs (events, stop rule, summary fields, what its resume point holds).

The engine computes; the record decides what a result means and writes it down; the loop
(loop.py) owns the clock both read."""

from __future__ import annotations

import logging
import math
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import torch

import grokking
from grokking.runs.config import ConfigError, RunConfig, config_differences, to_dict
from grokking.runs.loggers import RunLogger, open_logger
from grokking.runs.rundir import (
    COMPLETED,
    FAILED,
    INTERRUPTED,
    RUNNING,
    DamagedCheckpoint,
    RunDir,
)
from grokking.runs.stopping import Selection, StopRule

log = logging.getLogger("grokking")


@dataclass
class Clock:
    """Where a pack is: `unit` counts the family's units (epochs, steps) and `step` the optimizer
    steps. The loop owns it and every record of the pack reads the same one."""

    unit: int = 0
    step: int = 0


def check_same_config(cfg: RunConfig, run_dir) -> dict | None:
    """The summary of the run already in `run_dir` (None if there is none); ConfigError if that
    run was made with another config, so that nothing of it is overwritten."""
    run = RunDir(run_dir)
    if not run.exists():
        return None
    summary = run.read_summary()
    _refuse_other_config(summary.get("config", {}), cfg, run.path)
    return summary


def _refuse_other_config(stored: dict, cfg: RunConfig, where: Path) -> None:
    differences = config_differences(stored, cfg)
    if differences:
        raise ConfigError(
            f"{where} holds a run with another config ({'; '.join(differences)}); "
            "choose another output directory (hydra.run.dir=...)"
        )


def _refuse_damaged(path: Path, problem: str | None) -> None:
    if problem:
        raise DamagedCheckpoint(
            f"{path} is not a resume point of this run ({problem}): move it aside to restart the "
            "run from scratch"
        )


def resume_point_problem(saved: dict, fields: dict, shapes: dict[str, torch.Size]) -> str | None:
    """What keeps `saved` from being a resume point holding `fields` ({name: type}) and a model
    of `shapes`, or None."""
    for name, kind in fields.items():
        if not isinstance(saved.get(name), kind):
            return f"no {name}"
    model_shapes = {name: tensor.shape for name, tensor in saved["model"].items()}
    if model_shapes != shapes:
        return "its model has other parameters or shapes than the config's"
    if not all(isinstance(row, dict) for row in saved["metrics"] + saved["matrix_lar"]):
        return "metric rows that are not rows"
    return None


class RunRecord:
    """Everything one run writes. `clock` is the loop's; `active` is False once the run has
    completed or failed. Subclasses set UNIT and fill in the family's hooks below."""

    UNIT = "epoch"  # what the family counts: the name of `clock.unit` in rows and checkpoints
    METRIC_COLUMNS: list[str] = []  # metrics.parquet's columns, in order
    MATRIX_COLUMNS: list[str] = []  # matrix_lar.parquet's
    # What a resume point (last.pt) holds besides the model, and of which type.
    RESUME_FIELDS: dict = {
        "config": dict,
        "step": int,
        "wall_s": (int, float),
        "metrics": list,
        "matrix_lar": list,
    }

    def __init__(
        self,
        cfg: RunConfig,
        run_dir: str | Path,
        device: torch.device,
        files: dict[str, str] | None = None,
        family: str | None = None,
    ):
        self.cfg = cfg
        self.family = family  # Family.name, given by the loop: summary.json's "family"
        self.files = files or {}  # {path in the run folder: text}, e.g. Hydra's .hydra/ files
        self.run_dir = RunDir(run_dir)
        self.label = self.run_dir.path.name  # names the run on a console shared with others
        self.selection = Selection(cfg.stop, self.stop_rule(), self.run_dir, self.UNIT)
        self.device = device
        self.clock = Clock()
        self.evaluations_on_console = True  # False while a progress bar shows them
        self.metrics: list[dict] = []
        self.matrix_lar: list[dict] = []
        self.summary: dict | None = None
        self.regularized_from: int | None = None  # the unit whose evaluation switched it on
        self._wall_before_s = 0.0  # training time of earlier processes
        self._started = time.perf_counter()
        self._file_log: logging.Logger | None = None
        self._logger: RunLogger | None = None  # TensorBoard or W&B, opened at the first record
        self._saved_at = -math.inf  # when last.pt was last written (time.monotonic)

    # --- the family's hooks -----------------------------------------------------------------
    def model_shapes(self) -> dict[str, torch.Size]:
        """The shape of every tensor of the run's model state_dict: checks a resume point."""
        raise NotImplementedError

    def family_problem(self, saved: dict) -> str | None:
        """What the family needs in a resume point beyond the shared fields, or None."""
        return None

    def restore(self, saved: dict) -> None:
        """Take back the family's own state from a resume point."""

    def family_state(self) -> dict:
        """The family's own state, saved in every resume point."""
        return {}

    def stop_rule(self) -> StopRule | None:
        """The rule behind the config's `stop`, which the family's hooks feed (`decide`); None
        when the family's own test (`stop_reason`) or the budget alone ends the run."""
        return None

    def on_evaluation(self, row: dict, model_state) -> None:
        """An evaluation's row was noted: fire the family's events (`model_state()` gives the
        weights, for an event's checkpoint)."""

    def describe(self, row: dict) -> str:
        """One log line for an evaluation's row."""
        return f"{self.UNIT} {self.clock.unit}"

    def stop_reason(self) -> str | None:
        """Why training stops here, or None to go on."""
        raise NotImplementedError

    def expected_units(self) -> int:
        """The unit at which training will stop, as far as known."""
        raise NotImplementedError

    def summary_fields(self) -> dict:
        """The family's fields of summary.json (its settings, events, final values)."""
        return {}

    def progress(self) -> dict:
        """What the progress bar shows beside a single run."""
        return {}

    @staticmethod
    def pack_progress(records: list[RunRecord]) -> dict:
        """What the progress bar shows beside a pack of runs, besides how many still train."""
        return {}

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
            final = summary.get(f"final_{self.UNIT}")
            self.log(f"already completed at {self.UNIT} {final}; nothing to do")
            return True
        return False

    def resume(self) -> dict | None:
        """The member state saved in last.pt (for the engine's `load_member_states`), with the
        record restored to it; None for a fresh run. Refuses a last.pt saved with another config."""
        if not self.run_dir.has_checkpoint("last"):
            return None
        saved = self.run_dir.load_checkpoint("last")
        path = self.run_dir.checkpoint_path("last")
        fields = self.RESUME_FIELDS | {self.UNIT: int}
        problem = resume_point_problem(saved, fields, self.model_shapes())
        _refuse_damaged(path, problem or self.family_problem(saved))
        _refuse_other_config(saved["config"], self.cfg, path)
        # after the config: a last.pt of another `stop` is refused as another config, not damaged
        _refuse_damaged(path, self.selection.problem(saved))
        if saved["step"] == 0:  # saved at initialisation: starting afresh redoes it exactly
            return None
        self.clock = Clock(saved[self.UNIT], saved["step"])
        self._wall_before_s = saved["wall_s"]
        self.metrics, self.matrix_lar = saved["metrics"], saved["matrix_lar"]
        self.regularized_from = saved.get("regularized_from")  # absent: saved before the option
        self.selection.load_state_dict(saved.get("stop_rule"))
        self.restore(saved)
        self.log(f"resuming {self.run_dir.path} from {self.UNIT} {self.clock.unit}")
        return saved

    def write_files(self) -> None:
        """Write `files` into the run folder: called once the lock is held and the folder's
        config checked, so that a refused process leaves the folder as it was."""
        for name, text in self.files.items():
            self.run_dir.write_text(name, text)

    def start(self) -> None:
        """A fresh run: its folder says so before the first evaluation."""
        self.write_summary(RUNNING)

    # --- each unit and each evaluation ----------------------------------------------------------
    def after_unit(self, result: dict, model_state) -> None:
        """The engine trained one unit (`result` holds its summed `loss`; `model_state()` gives
        the weights): a loss that is not finite fails the run."""
        if not math.isfinite(result["loss"]):
            self.fail(f"loss is {result['loss']} at {self.UNIT} {self.clock.unit}")

    def evaluation_due(self) -> bool:
        """At every `eval_every` units, at the last one, and where a stop rule fed between
        evaluations stopped the run."""
        unit = self.clock.unit
        due = unit % self.cfg.eval_every == 0 or unit >= self.expected_units()
        return due or self.selection.stopping

    def decide(self, decision, model_state) -> None:
        """Carry out the stop rule's `decision` at this unit (`model_state()`: its weights)."""
        self.selection.apply(decision, self.clock.unit, self.clock.step, model_state)

    def record(self, result: dict, model_state) -> str | None:
        """Note one evaluation (an entry of the engine's `evaluate`); the family fires its events
        (with `model_state()` for their checkpoints). Returns why the run stops, or None."""
        row = {self.UNIT: self.clock.unit, "step": self.clock.step, "wall_s": self.wall_s()}
        row |= {key: value for key, value in result.items() if key != "matrix_lar"}
        self.add_row(row)
        self._note_regularizer(row)
        matrices = [
            {self.UNIT: self.clock.unit, "step": self.clock.step, "name": name} | values
            for name, values in result["matrix_lar"].items()
        ]
        self.matrix_lar += matrices
        self.send(row, matrices)
        self.log(self.describe(row), console=self.evaluations_on_console)
        self.on_evaluation(row, model_state)
        return self.stop_reason()

    def add_row(self, row: dict) -> None:
        self.metrics.append(row)

    def _note_regularizer(self, row: dict) -> None:
        """The first evaluation whose row says the regularizer is on (the engine's
        `after_evaluation`): its unit goes into train.log and summary.json."""
        if row.get("regularizing") and self.regularized_from is None:
            self.regularized_from = self.clock.unit
            self.log(f"regularizer on from {self.UNIT} {self.clock.unit}")

    def send(self, row: dict, matrices: list[dict]) -> None:
        """Hand a row (and matrix rows) to the run's logger (TensorBoard, W&B), opened at the
        first one."""
        if self._logger is None:
            self._logger = open_logger(
                self.cfg.logger, self.run_dir.path, self.label, to_dict(self.cfg), self.UNIT
            )
        self._logger.log_evaluation(row, matrices)

    # --- checkpoints and endings ----------------------------------------------------------------
    def model_checkpoint(self, model_state: dict) -> dict:
        return {"model": model_state, self.UNIT: self.clock.unit, "step": self.clock.step}

    def save_unit_checkpoint(self, model_state: dict) -> None:
        """checkpoint_every: keep the model of this unit as checkpoints/<unit>_<N>.pt."""
        name = f"{self.UNIT}_{self.clock.unit}"
        self.run_dir.save_checkpoint(name, self.model_checkpoint(model_state))

    def checkpoint_due(self) -> bool:
        every = self.cfg.checkpoint_every
        return self.active and bool(every) and self.clock.unit % every == 0

    def save_due(self) -> bool:
        """Whether this evaluation saves a resume point: `save_every_s` since the last one."""
        return time.monotonic() - self._saved_at >= self.cfg.save_every_s

    def save_last(self, member_state: dict) -> None:
        """Everything needed to resume: the engine's member state, the record's own, the config;
        and the tables and summary as far as they go."""
        self._saved_at = time.monotonic()
        self.run_dir.write_metrics(self.metrics, self.METRIC_COLUMNS)
        self.run_dir.write_matrix_lar(self.matrix_lar, self.MATRIX_COLUMNS)
        self.run_dir.save_checkpoint(
            "last",
            member_state
            | self.family_state()
            | {
                self.UNIT: self.clock.unit,
                "step": self.clock.step,
                "wall_s": self.wall_s(),
                "metrics": self.metrics,
                "matrix_lar": self.matrix_lar,
                "regularized_from": self.regularized_from,
                "stop_rule": self.selection.state_dict(),
                "config": to_dict(self.cfg),
            },
        )
        self.selection.after_resume_point()
        self.write_summary(RUNNING)

    def finish(self, reason: str, member_state: dict) -> None:
        self.selection.end(self.clock.unit, reason)
        self.save_last(member_state)
        self.log(f"stopping at {self.UNIT} {self.clock.unit}: {self.selection.reason}")
        self.run_dir.save_checkpoint("final", self.model_checkpoint(member_state["model"]))
        self.selection.write_selected(self.clock.unit, self.clock.step, member_state["model"])
        self.write_summary(COMPLETED, stop_reason=reason)
        self.selection.after_completion()

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
            f"{signal_name} at {self.UNIT} {self.clock.unit}: saved last.pt; rerun the same "
            "command to resume",
            level=logging.WARNING,
        )

    @property
    def active(self) -> bool:
        return self.summary is None or self.summary["status"] == RUNNING

    # --- summary and log ------------------------------------------------------------------------
    def wall_s(self) -> float:
        return self._wall_before_s + time.perf_counter() - self._started

    def write_summary(self, status: str, **extra) -> dict:
        self.summary = (
            {"status": status, "family": self.family}
            | self.summary_fields()
            | {
                "stop": self.selection.fields(),
                "seed": self.cfg.seed,
                "sweep_name": self.cfg.sweep_name,
                f"final_{self.UNIT}": self.clock.unit,
                f"regularized_from_{self.UNIT}": self.regularized_from,
                "wall_s": self.wall_s(),
                "device": str(self.device),
                "threads": torch.get_num_threads(),
                "version": grokking.__version__,
                "config": to_dict(self.cfg),
            }
            | extra
        )
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
