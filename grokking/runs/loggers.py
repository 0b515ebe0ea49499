"""Send each evaluation to TensorBoard or Weights & Biases as well as to the run directory.

`open_logger(cfg, run_dir, run_name, config)` gives a `RunLogger`; the trainer calls
`log_evaluation(row, matrix_rows)` after each evaluation (and each step of a language-model
run) and `close()` at the end (or uses it as a context manager). Every value is logged at x =
the row's unit (its family's: epoch or step): the metrics row under its own column names (`lar` is
the unembedding's LAR) and each dense matrix's LAR as `matrix_lar/<name>`. The logger packages
are optional (`pip install "grokking[loggers]"`) and imported only when used.
"""

from __future__ import annotations

import importlib.util
import json
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import pandas as pd

from grokking.runs.rundir import atomic_write

# logger name -> the package it needs (None: nothing)
PACKAGES = {"none": None, "tensorboard": "tensorboard", "wandb": "wandb"}
WANDB_MODES = ("online", "offline", "disabled")
TENSORBOARD_DIR = "tensorboard"
WANDB_DIR = "wandb"  # wandb.init(dir=run_dir) writes its runs here
WANDB_RUN_ID = "run_id.txt"  # in WANDB_DIR: the id every process of this run resumes


@dataclass
class LoggerConfig:
    name: str = "none"  # none | tensorboard | wandb
    project: str = "grokking"  # W&B project
    entity: Optional[str] = None  # noqa: UP045 — W&B user or team; None: your default entity
    tags: list[str] = field(default_factory=list)  # W&B run tags
    mode: Optional[str] = None  # noqa: UP045 — W&B online | offline | disabled; None: WANDB_MODE


def validate_logger(cfg: LoggerConfig) -> None:
    """Refuse, before any work: a name or mode not allowed (ValueError whose message starts with
    the field, for runs.config to pass on as a ConfigError: that module imports this one, so
    this one cannot import it), or a missing package (ImportError naming the pip extra)."""
    if cfg.name not in PACKAGES:
        raise ValueError(f"logger.name: must be one of {', '.join(PACKAGES)}, got {cfg.name!r}")
    if cfg.mode is not None and cfg.mode not in WANDB_MODES:
        allowed = ", ".join(WANDB_MODES)
        raise ValueError(f"logger.mode: must be null or one of {allowed}, got {cfg.mode!r}")
    package = PACKAGES[cfg.name]
    if package is not None and importlib.util.find_spec(package) is None:
        raise ImportError(
            f"logger.name={cfg.name} needs the {package} package: "
            f'pip install "grokking[loggers]" (or pip install {package})'
        )


def open_logger(
    cfg: LoggerConfig, run_dir: Path, run_name: str, config: dict, unit: str = "epoch"
) -> RunLogger:
    """The logger `cfg` names, writing under `run_dir`; `config` (a plain nested dict) is logged
    as the run's hyper-parameters."""
    validate_logger(cfg)
    if cfg.name == "tensorboard":
        return TensorBoardLogger(Path(run_dir) / TENSORBOARD_DIR, config, unit)
    if cfg.name == "wandb":
        return WandbLogger(cfg, Path(run_dir), run_name, config, unit)
    return RunLogger(unit)


def scalars(row: dict, matrix_rows: list[dict], unit: str = "epoch") -> dict[str, float]:
    """What one evaluation logs: every metric of `row` but the unit (the x axis) and values
    not measured at it (NaN), and the LAR of each matrix as `matrix_lar/<name>`."""
    values = {key: value for key, value in row.items() if key != unit and value == value}
    values.update({f"matrix_lar/{matrix['name']}": matrix["lar"] for matrix in matrix_rows})
    return values


class RunLogger:
    """The `none` logger, and the base of the others: takes every evaluation, keeps nothing.
    `unit` names the rows' x axis (epoch, step)."""

    def __init__(self, unit: str = "epoch"):
        self.unit = unit

    def log_evaluation(self, row: dict, matrix_rows: list[dict]) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> RunLogger:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class TensorBoardLogger(RunLogger):
    """Event files in `log_dir`, step = the row's unit, and the config in the HParams dashboard.

    The writer opens at the first evaluation with purge_step = its epoch: a resumed run starts
    again from its last checkpoint, so whatever an earlier process logged from that epoch on is
    superseded, and TensorBoard hides it instead of drawing each of those epochs twice."""

    def __init__(self, log_dir: Path, config: dict, unit: str = "epoch"):
        super().__init__(unit)
        self.log_dir = log_dir
        self.hparams = _flat_hparams(config)
        self._writer = None

    def log_evaluation(self, row: dict, matrix_rows: list[dict]) -> None:
        at = row[self.unit]
        if self._writer is None:
            self._writer = self._open(at)
        for tag, value in scalars(row, matrix_rows, self.unit).items():
            self._writer.add_scalar(tag, value, global_step=at)

    def _open(self, at: int):
        from torch.utils.tensorboard import SummaryWriter
        from torch.utils.tensorboard.summary import hparams

        writer = SummaryWriter(log_dir=str(self.log_dir), purge_step=at)
        # Only the session's values: with no experiment summary, TensorBoard builds the HParams
        # table from every run's values and every scalar, so runs of a sweep line up in one table.
        _, session_start, _ = hparams(self.hparams, {})
        writer.file_writer.add_summary(session_start, global_step=at)
        return writer

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


def _flat_hparams(config: dict) -> dict[str, bool | int | float | str]:
    """`config` flattened to dotted keys ("optim.lr"), with every value TensorBoard cannot hold
    (None, lists) as its JSON text."""
    flat = pd.json_normalize(config, sep=".").to_dict(orient="records")[0]
    return {
        key: value if isinstance(value, bool | int | float | str) else json.dumps(value)
        for key, value in flat.items()
    }


class WandbLogger(RunLogger):
    """One W&B run per run folder, step = the row's unit. Its id is kept in
    `<run_dir>/wandb/run_id.txt`, so a resumed run (a new process) continues the same W&B run;
    W&B drops the steps a resumed run logs again (at or below the last one it has), which are
    the same values anyway."""

    def __init__(
        self, cfg: LoggerConfig, run_dir: Path, run_name: str, config: dict, unit: str = "epoch"
    ):
        import wandb

        super().__init__(unit)
        self.run = wandb.init(
            project=cfg.project,
            entity=cfg.entity,
            name=run_name,
            id=_wandb_run_id(run_dir / WANDB_DIR),
            resume="allow",
            dir=run_dir,
            config=config,
            tags=cfg.tags,
            mode=cfg.mode,
            reinit="create_new",  # the members of a pack each keep their own run in one process
        )

    def log_evaluation(self, row: dict, matrix_rows: list[dict]) -> None:
        self.run.log(scalars(row, matrix_rows, self.unit), step=row[self.unit])

    def close(self) -> None:
        self.run.finish()


def _wandb_run_id(wandb_dir: Path) -> str:
    """The W&B run id stored in `wandb_dir`, made on first use (random: two sweeps' runs may
    share a run name in one W&B project)."""
    path = wandb_dir / WANDB_RUN_ID
    if not path.exists():
        atomic_write(path, lambda tmp: tmp.write_text(secrets.token_hex(8) + "\n"))
    return path.read_text().strip()
