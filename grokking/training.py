"""The training loop for one run or a pack of runs: shuffled epochs, AdamW with linear warm-up,
an evaluation every `eval_every` epochs over the full splits with every dense matrix's LAR over the
entire training set, memorization and grokking events, and run folders that resume after a kill.

A single run is a pack of one: `train(cfg, run_dir)` is `train_pack([(cfg, run_dir)])`. The engine
(engine.py) computes; each run's record (record.py) decides what a result means for its run and
writes its folder. A member stops at its own stop epoch and then leaves the pack.

Resume: each member's `last.pt` holds its weights, AdamW moments, step, batch-order RNG state,
epoch and every metric row so far, saved at each evaluation and when SIGTERM/SIGUSR2 arrives.
Training from it replays exactly what an uninterrupted run computes (bit-identical on the CPU at
a fixed thread count), since nothing else feeds the loop.
"""

from __future__ import annotations

import logging
import math
import signal
import sys
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path

import torch
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from grokking.config import ConfigError, TrainConfig
from grokking.engine import Engine, resolve_device
from grokking.packing import pack_key
from grokking.record import RunRecord
from grokking.rundir import FAILED, DiskFull

log = logging.getLogger("grokking")

# What SLURM sends before a time limit or a preemption (USR2 through submitit), and `kill`.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR2)


class RunFailed(RuntimeError):
    """Training diverged; the run directory says where (status failed)."""


class Interrupted(RuntimeError):
    """A stop signal arrived; last.pt is saved and rerunning the command resumes."""

    def __init__(self, signum: int):
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum = signum


class _SignalCatcher:
    """Turn STOP_SIGNALS into a flag checked between epochs, so the state saved is whole.
    Afterwards the previous handler (submitit's requeue, when running under it) gets its turn."""

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._catch) for s in STOP_SIGNALS}
        return self

    def _catch(self, signum, frame):
        self.signum = signum

    def __exit__(self, *exc):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def forward(self) -> None:
        previous = self._previous.get(self.signum)
        if callable(previous):
            previous(self.signum, None)  # submitit: checkpoint, requeue and exit
        raise Interrupted(self.signum)


def train(cfg: TrainConfig, run_dir, files: dict[str, str] | None = None) -> dict:
    """Train the run described by `cfg` into `run_dir`: start it, resume it from last.pt, or
    leave it alone when it has completed. `files` ({path in the run folder: text}, such as
    Hydra's .hydra/ record) are written once the folder is held and its config checked.
    Returns its summary; RunFailed on a NaN loss."""
    (summary,) = train_pack([(cfg, run_dir)], [files or {}])
    if summary["status"] == FAILED:
        raise RunFailed(summary["failure"])
    return summary


def train_pack(
    members: Sequence[tuple[TrainConfig, str | Path]],
    files: Sequence[dict[str, str]] | None = None,
) -> list[dict]:
    """Train runs (config, run folder) as one stacked model; each ends exactly as it would alone.
    Completed runs are skipped, interrupted ones resume; each member's `files` are written as in
    `train`. Returns every run's summary (a failed run has status failed and does not stop the
    others); Interrupted on a stop signal."""
    cfgs = [cfg for cfg, _ in members]
    keys = {pack_key(cfg) for cfg in cfgs}
    if len(keys) > 1:
        raise ConfigError("runs of one pack must agree in shapes and shared settings (packing.py)")
    if cfgs[0].threads:
        torch.set_num_threads(cfgs[0].threads)
    _log_to_console_if_nobody_does()
    device = resolve_device(cfgs[0].device)
    files = files or [{} for _ in members]
    records = [
        RunRecord(cfg, run_dir, device, member_files)
        for (cfg, run_dir), member_files in zip(members, files, strict=True)
    ]
    with ExitStack() as cleanup:
        for record in records:
            record.open(cleanup)
        todo = [record for record in records if not record.completed()]
        for record in todo:  # every folder held and checked: nothing was written before
            record.write_files()
        saved = {id(record): record.resume() for record in todo}
        by_step: dict[int, list[RunRecord]] = {}
        for record in todo:  # members must share the step count: AdamW's is shared
            state = saved[id(record)]
            by_step.setdefault(state["optimizer_step"] if state else 0, []).append(record)
        try:
            for group in by_step.values():
                _train_together(group, [saved[id(record)] for record in group], device)
        except DiskFull as error:  # the last good last.pt stays; a rerun resumes from it
            for record in todo:
                if record.active:
                    record.fail(str(error))
            raise
    return [record.summary for record in records]


def _train_together(records: list[RunRecord], saved: list[dict | None], device) -> None:
    engine = Engine([record.cfg for record in records], device)
    if saved[0] is None:
        for record in records:
            record.start()
        _evaluate(engine, records)  # epoch 0: the models at initialisation
    else:
        engine.load_member_states(saved)
        for index, record in enumerate(records):  # killed between its last evaluation and final
            reason = record.stop_reason()
            if reason:
                record.finish(reason, engine.member_state(index))
    records = _keep_active(engine, records)
    with _SignalCatcher() as signals, _progress(records) as bar:
        while records:
            losses = engine.train_epoch()
            bar.update(1)
            for record, loss in zip(records, losses, strict=True):
                record.epoch, record.step = record.epoch + 1, engine.step
                if not math.isfinite(loss):
                    record.fail(f"loss is {loss} at epoch {record.epoch}")
            for index, record in enumerate(records):
                every = record.cfg.checkpoint_every
                if record.active and every and record.epoch % every == 0:
                    record.save_epoch_checkpoint(engine.model_state(index))
            _evaluate(engine, [r for r in records if r.active and r.evaluation_due()], records)
            records = _keep_active(engine, records)
            _show(bar, records)
            if signals.signum is not None and records:
                name = signal.Signals(signals.signum).name
                for index, record in enumerate(records):
                    record.interrupt(engine.member_state(index), name)
                signals.forward()


def _evaluate(engine: Engine, due: list[RunRecord], pack: list[RunRecord] | None = None) -> None:
    """Evaluate the pack; the `due` records note it, save last.pt, and finish when they stop."""
    if not due:
        return
    pack = pack or due
    results = engine.evaluate()
    lr = engine.lr_at(engine.step)
    # the members save together, so after a kill they resume at one step, as one pack again
    save_now = any(record.save_due() for record in due)
    saves = []
    for record in due:
        index = pack.index(record)
        reason = record.record(results[index], lr, lambda i=index: engine.model_state(i))
        if reason:
            record.finish(reason, engine.member_state(index))
        elif save_now:
            saves.append((record, engine.member_state(index)))
    with ThreadPoolExecutor(max_workers=8) as pool:  # the writes wait on the disk, not the CPU
        list(pool.map(lambda save: save[0].save_last(save[1]), saves))


def _keep_active(engine: Engine, records: list[RunRecord]) -> list[RunRecord]:
    """Drop the members that completed or failed from the pack: they cost nothing more."""
    keep = [index for index, record in enumerate(records) if record.active]
    if keep:
        engine.keep(keep)
    return [records[index] for index in keep]


# --- following a run ------------------------------------------------------------------------
def _log_to_console_if_nobody_does() -> None:
    """From plain Python or Jupyter, with no logging set up, still show the run's log lines."""
    if not logging.getLogger().handlers and not log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("[%(asctime)s] %(message)s", "%H:%M:%S"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)


def _in_notebook() -> bool:
    return "ipykernel" in sys.modules


def _progress(records: list[RunRecord]):
    """A progress bar over epochs on a terminal or in a notebook; nothing otherwise (then each
    evaluation logs a line)."""
    shown = sys.stderr.isatty() or _in_notebook()
    for record in records:
        record.evaluations_on_console = not shown
    first = records[0] if records else None
    bar = tqdm(
        total=max((r.expected_epochs() for r in records), default=0),
        initial=first.epoch if first else 0,
        desc=first.label if len(records) == 1 else f"pack of {len(records)} runs",
        unit="epoch",
        disable=not shown or not records,
        dynamic_ncols=True,
    )
    _show(bar, records)
    return _BarWithLogging(bar)


def _show(bar, records: list[RunRecord]) -> None:
    if not records:
        return
    bar.total = max(record.expected_epochs() for record in records)
    if len(records) == 1 and records[0].metrics:
        last = records[0].metrics[-1]
        bar.set_postfix({k: f"{last[k]:.3f}" for k in ("train_acc", "val_acc", "lar")})
    else:
        grokked = sum(record.events.grokking_epoch is not None for record in records)
        bar.set_postfix({"training": len(records), "grokked": grokked})


class _BarWithLogging:
    """The bar, with log lines routed through tqdm so they do not break it."""

    def __init__(self, bar):
        self.bar = bar
        # only loggers that print: a handler added to the root would print every line twice
        loggers = [logger for logger in (logging.getLogger(), log) if logger.handlers]
        self._redirect = logging_redirect_tqdm(loggers=loggers)

    def __enter__(self):
        self._redirect.__enter__()
        return self.bar

    def __exit__(self, *exc):
        self.bar.close()
        self._redirect.__exit__(*exc)
