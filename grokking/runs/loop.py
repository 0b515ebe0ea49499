"""The one training loop of every family, for one run or a pack of runs: train a unit (the
family's: an epoch, a step), evaluate when a run's `eval_every` comes round, save resume points,
stop each run when its record says so, and catch the signals SLURM and `kill` send.

A single run is a pack of one: `train(family, cfg, run_dir)` is `train_pack(family, [(cfg,
run_dir)])`. The family's engine computes; each run's record decides what a result means for its
run and writes its folder. A member stops at its own unit and then leaves the pack. The loop owns
the clock (units and optimizer steps) that the pack's records read.

Resume: each member's `last.pt` holds its weights, optimizer state, data order, clock and every
metric row so far, saved at evaluations (every `save_every_s`) and when SIGTERM/SIGUSR2 arrives.
Training from it replays exactly what an uninterrupted run computes (bit-identical on the CPU at
a fixed thread count), since nothing else feeds the loop.
"""

from __future__ import annotations

import logging
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

from grokking.runs.config import ConfigError, RunConfig
from grokking.runs.family import Engine, Family
from grokking.runs.record import Clock, RunRecord
from grokking.runs.rundir import FAILED, DiskFull

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
    """Turn STOP_SIGNALS into a flag checked between units, so the state saved is whole.
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


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def train(family: Family, cfg: RunConfig, run_dir, files: dict[str, str] | None = None) -> dict:
    """Train the run described by `cfg` into `run_dir`: start it, resume it from last.pt, or
    leave it alone when it has completed. `files` ({path in the run folder: text}, such as
    Hydra's .hydra/ record) are written once the folder is held and its config checked.
    Returns its summary; RunFailed on a NaN loss."""
    (summary,) = train_pack(family, [(cfg, run_dir)], [files or {}])
    if summary["status"] == FAILED:
        raise RunFailed(summary["failure"])
    return summary


def train_pack(
    family: Family,
    members: Sequence[tuple[RunConfig, str | Path]],
    files: Sequence[dict[str, str]] | None = None,
) -> list[dict]:
    """Train runs (config, run folder) together; each ends exactly as it would alone.
    Completed runs are skipped, interrupted ones resume; each member's `files` are written as in
    `train`. Returns every run's summary (a failed run has status failed and does not stop the
    others); Interrupted on a stop signal."""
    cfgs = [cfg for cfg, _ in members]
    keys = {family.pack_key(cfg) if family.pack_key else id(cfg) for cfg in cfgs}
    if len(keys) > 1:
        raise ConfigError("runs of one pack must agree in shapes and shared settings")
    if cfgs[0].threads:
        torch.set_num_threads(cfgs[0].threads)
    _log_to_console_if_nobody_does()
    device = resolve_device(cfgs[0].device)
    files = files or [{} for _ in members]
    records = [
        family.record(cfg, run_dir, device, member_files, family=family.name)
        for (cfg, run_dir), member_files in zip(members, files, strict=True)
    ]
    with ExitStack() as cleanup:
        for record in records:
            record.open(cleanup)
        todo = [record for record in records if not record.completed()]
        for record in todo:  # every folder held and checked: nothing was written before
            record.write_files()
        saved = {id(record): record.resume() for record in todo}
        by_clock: dict[tuple, list[RunRecord]] = {}
        for record in todo:  # members must share the clock: the optimizer's step is shared
            by_clock.setdefault((record.clock.unit, record.clock.step), []).append(record)
        try:
            for group in by_clock.values():
                engine = family.engine([record.cfg for record in group], device)
                _train_together(engine, group, [saved[id(record)] for record in group])
        except DiskFull as error:  # the last good last.pt stays; a rerun resumes from it
            for record in todo:
                if record.active:
                    record.fail(str(error))
            raise
    return [record.summary for record in records]


def _train_together(engine: Engine, records: list[RunRecord], saved: list[dict | None]) -> None:
    clock = Clock(records[0].clock.unit, records[0].clock.step)
    for record in records:
        record.clock = clock
    if saved[0] is None:
        for record in records:
            record.start()
        _evaluate(engine, records)  # unit 0: the models at initialisation
    else:
        engine.load_member_states(saved)
        for index, record in enumerate(records):  # killed between its last evaluation and final
            reason = record.stop_reason()
            if reason:
                record.finish(reason, engine.member_state(index))
    records = _keep_active(engine, records)
    with _SignalCatcher() as signals, _progress(records) as bar:
        while records:
            results = engine.advance()
            clock.unit, clock.step = clock.unit + 1, engine.step
            bar.update(1)
            for index, (record, result) in enumerate(zip(records, results, strict=True)):
                record.after_unit(result, lambda i=index: engine.model_state(i))
                if record.checkpoint_due():
                    record.save_unit_checkpoint(engine.model_state(index))
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
    # the members save together, so after a kill they resume at one step, as one pack again
    save_now = any(record.save_due() for record in due)
    saves = []
    for record in due:
        index = pack.index(record)
        result = results[index] | engine.after_evaluation(index, results[index])
        reason = record.record(result, lambda i=index: engine.model_state(i))
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
    """A progress bar over the family's units on a terminal or in a notebook; nothing otherwise
    (then each evaluation logs a line)."""
    shown = sys.stderr.isatty() or _in_notebook()
    for record in records:
        record.evaluations_on_console = not shown
    first = records[0] if records else None
    bar = tqdm(
        total=max((r.expected_units() for r in records), default=0),
        initial=first.clock.unit if first else 0,
        desc=first.label if len(records) == 1 else f"pack of {len(records)} runs",
        unit=first.UNIT if first else "epoch",
        disable=not shown or not records,
        dynamic_ncols=True,
    )
    _show(bar, records)
    return _BarWithLogging(bar)


def _show(bar, records: list[RunRecord]) -> None:
    if not records:
        return
    bar.total = max(record.expected_units() for record in records)
    if len(records) == 1:
        bar.set_postfix(records[0].progress())
    else:
        bar.set_postfix({"training": len(records)} | records[0].pack_progress(records))


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
