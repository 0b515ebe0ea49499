"""The loggers, read back with each tool's own reader: TensorBoard's EventAccumulator, and
`wandb leet inspect --json` (W&B's CLI for an offline run's .wandb log) for W&B."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams.metadata import (
    SESSION_START_INFO_TAG,
    parse_session_start_info_plugin_data,
)

from grokking.algorithmic.config import TrainConfig
from grokking.algorithmic.record import GrokkingRecord
from grokking.runs.config import to_dict
from grokking.runs.loggers import (
    WANDB_DIR,
    WANDB_RUN_ID,
    LoggerConfig,
    open_logger,
    validate_logger,
)

CONF = Path(__file__).resolve().parents[1] / "conf" / "shared" / "logger"
MATRICES = ["blocks.0.attn.q", "blocks.0.mlp.fc_in", "unembed"]
CONFIG = to_dict(TrainConfig())  # nested, with a None (sweep_name)


def evaluation(epoch: int, shift: float = 0.0) -> tuple[dict, list[dict]]:
    """A metrics row and its matrix rows, every value distinct and not a round binary number."""
    row = {key: epoch / 7 + i / 3 + shift for i, key in enumerate(GrokkingRecord.METRIC_COLUMNS)}
    row |= {"epoch": epoch, "step": 3 * epoch}
    matrix_rows = [
        {"epoch": epoch, "step": 3 * epoch, "name": name, "layer": 0, "role": "q"}
        | {"lar": 0.5 + epoch / 1000 + i / 7 + shift}
        for i, name in enumerate(MATRICES)
    ]
    return row, matrix_rows


def expected_scalars(epoch: int, shift: float = 0.0) -> dict[str, float]:
    row, matrix_rows = evaluation(epoch, shift)
    del row["epoch"]
    return row | {f"matrix_lar/{m['name']}": m["lar"] for m in matrix_rows}


def log(cfg: LoggerConfig, run_dir: Path, epochs, shift: float = 0.0) -> None:
    with open_logger(cfg, run_dir, "seed=0,task=add", CONFIG) as logger:
        for epoch in epochs:
            logger.log_evaluation(*evaluation(epoch, shift))


# --- choosing a logger ---------------------------------------------------------------------------
def test_none_logs_nothing_and_writes_nothing(tmp_path):
    log(LoggerConfig(), tmp_path, [0, 10])
    assert list(tmp_path.iterdir()) == []


def test_unknown_name_is_refused_before_any_work(tmp_path):
    message = "logger.name: must be one of none, tensorboard, wandb, got 'x'"
    with pytest.raises(ValueError) as error:
        open_logger(LoggerConfig(name="x"), tmp_path, "run", CONFIG)
    assert str(error.value) == message
    assert list(tmp_path.iterdir()) == []


def test_unknown_wandb_mode_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"^logger\.mode: must be null or one of online, "):
        open_logger(LoggerConfig(name="wandb", mode="cloud"), tmp_path, "run", CONFIG)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["tensorboard", "wandb"])
def test_missing_package_names_the_pip_extra(tmp_path, monkeypatch, name):
    monkeypatch.setitem(sys.modules, name, None)  # what importing a package that is not there does
    with pytest.raises(ImportError) as error:
        open_logger(LoggerConfig(name=name), tmp_path, "run", CONFIG)
    assert str(error.value) == (
        f"logger.name={name} needs the {name} package: "
        f'pip install "grokking[loggers]" (or pip install {name})'
    )
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["none", "tensorboard", "wandb"])
def test_hydra_group_files_hold_the_schema_defaults(name):
    # what `logger=NAME` merges into the schema: a valid config with the documented defaults
    cfg = OmegaConf.to_object(OmegaConf.merge(LoggerConfig, OmegaConf.load(CONF / f"{name}.yaml")))
    assert cfg == LoggerConfig(name=name)
    validate_logger(cfg)


# --- TensorBoard ---------------------------------------------------------------------------------
def read_tensorboard(run_dir: Path) -> tuple[dict[str, list[tuple[int, float]]], EventAccumulator]:
    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    scalars = {
        tag: [(event.step, event.value) for event in events.Scalars(tag)]
        for tag in events.Tags()["scalars"]
    }
    return scalars, events


def as_logged(epochs_and_shifts) -> dict[str, list[tuple[int, float]]]:
    """What TensorBoard should hold: each scalar at its epoch, as float32 (its scalar format)."""
    logged = {}
    for epoch, shift in epochs_and_shifts:
        for tag, value in expected_scalars(epoch, shift).items():
            logged.setdefault(tag, []).append((epoch, float(np.float32(value))))
    return logged


def test_tensorboard_logs_every_scalar_at_its_epoch(tmp_path):
    log(LoggerConfig(name="tensorboard"), tmp_path, [0, 10, 20])
    scalars, events = read_tensorboard(tmp_path)
    assert scalars == as_logged([(0, 0.0), (10, 0.0), (20, 0.0)])
    assert "matrix_lar/blocks.0.attn.q" in scalars and "lar" in scalars and "epoch" not in scalars

    content = events.PluginTagToContent("hparams")[SESSION_START_INFO_TAG]
    hparams = parse_session_start_info_plugin_data(content).hparams
    assert hparams["optim.lr"].number_value == CONFIG["optim"]["lr"]
    assert hparams["task.name"].string_value == CONFIG["task"]["name"]
    assert hparams["sweep_name"].string_value == "null"
    assert len(hparams) == len(pd.json_normalize(CONFIG).columns)  # every leaf of the config


def test_tensorboard_resumed_run_supersedes_what_it_logs_again(tmp_path):
    # A run killed after logging epoch 20 but before saving last.pt resumes from epoch 10 and
    # logs 20 again (here with other values, to tell them apart): one point per epoch remains.
    log(LoggerConfig(name="tensorboard"), tmp_path, [0, 10, 20])
    log(LoggerConfig(name="tensorboard"), tmp_path, [20, 30], shift=1.0)
    scalars, _ = read_tensorboard(tmp_path)
    assert scalars == as_logged([(0, 0.0), (10, 0.0), (20, 1.0), (30, 1.0)])


# --- Weights & Biases (offline) ------------------------------------------------------------------
@pytest.fixture
def wandb_offline(tmp_path, monkeypatch):
    """W&B without network, and with its settings and caches inside the test's folder."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    for variable in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(variable, str(tmp_path / "wandb-home" / variable))
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    return run_dir


def inspect_wandb(run_folder: Path, *options: str) -> str:
    command = [sys.executable, "-m", "wandb", "leet", "inspect", "--json", *options]
    return subprocess.run(
        [*command, str(run_folder)], capture_output=True, text=True, check=True
    ).stdout


def wandb_runs(run_dir: Path) -> list[Path]:
    """The offline W&B run folders of `run_dir`, oldest first (one per process that logged)."""
    return sorted((run_dir / WANDB_DIR).glob("offline-run-*"))


def test_wandb_offline_run_holds_every_scalar_at_its_epoch(wandb_offline):
    log(LoggerConfig(name="wandb", tags=["cpu"]), wandb_offline, [0, 10, 20])
    [run_folder] = wandb_runs(wandb_offline)

    records = [json.loads(line) for line in inspect_wandb(run_folder).splitlines()]
    history = [record["history"] for record in records if record["type"] == "history"]
    assert [entry["step"]["num"] for entry in history] == [0, 10, 20]
    for entry, epoch in zip(history, [0, 10, 20], strict=True):
        logged = {key: value for key, value in entry["item"].items() if not key.startswith("_")}
        assert logged == expected_scalars(epoch)  # float64, exactly

    run = json.loads(inspect_wandb(run_folder, "--summary"))
    run_id = (wandb_offline / WANDB_DIR / WANDB_RUN_ID).read_text().strip()
    assert (run["run_id"], run["name"], run["project"]) == (run_id, "seed=0,task=add", "grokking")
    assert run["config"] == CONFIG and run["tags"] == ["cpu"]
    assert {key: run["summary"][key] for key in expected_scalars(20)} == expected_scalars(20)


def test_wandb_second_open_continues_the_same_run(wandb_offline):
    log(LoggerConfig(name="wandb"), wandb_offline, [0, 10])
    log(LoggerConfig(name="wandb"), wandb_offline, [20])  # as a resumed run's new process does
    starts = [run_record(folder) for folder in wandb_runs(wandb_offline)]
    run_id = (wandb_offline / WANDB_DIR / WANDB_RUN_ID).read_text().strip()
    assert [(start["run_id"], start["resume"]) for start in starts] == [(run_id, True)] * 2


def run_record(run_folder: Path) -> dict:
    """The record wandb.init writes: the run's id, name and whether it may resume."""
    records = (json.loads(line) for line in inspect_wandb(run_folder).splitlines())
    return next(record["run"] for record in records if record["type"] == "run")


def test_wandb_runs_of_one_pack_log_side_by_side_in_one_process(wandb_offline):
    """The members of a pack train in one process, each with its own open W&B run."""
    folders = [wandb_offline / "a", wandb_offline / "b"]
    cfg = LoggerConfig(name="wandb")
    loggers = [open_logger(cfg, folder, folder.name, CONFIG) for folder in folders]
    for epoch in (0, 10):
        for shift, logger in enumerate(loggers):
            logger.log_evaluation(*evaluation(epoch, shift))
    for logger in loggers:
        logger.close()
    for shift, folder in enumerate(folders):
        [run_folder] = wandb_runs(folder)
        records = [json.loads(line) for line in inspect_wandb(run_folder).splitlines()]
        history = [record["history"] for record in records if record["type"] == "history"]
        assert [entry["step"]["num"] for entry in history] == [0, 10]
        logged = {k: v for k, v in history[-1]["item"].items() if not k.startswith("_")}
        assert logged == expected_scalars(10, shift)
