"""The on-disk contract of one run. The trainer writes through `RunDir`, the analysis reads
through it: the format lives here and nowhere else.

    <run>/
      summary.json            status, family, seed, the family's settings and results, config,
                              version (the family record's summary_fields)
      metrics.parquet         one tidy row per evaluation or per unit, under the family
                              record's METRIC_COLUMNS
      matrix_lar.parquet      one row per evaluation × probed matrix (its MATRIX_COLUMNS)
      NAME.parquet            an analysis' cache (read_cache, write_cache); each analysis
                              names its own
      checkpoints/
        NAME.pt               {"model": state_dict, <unit>: int, "step": int}: final.pt at the
                              last unit trained, and those the family's record keeps;
                              selected.pt the weights a stop rule chose (runs/stopping.py),
                              candidate_<unit>_N.pt those it may still choose
        last.pt               everything needed to resume (see runs/loop.py)
      .lock                   held (flock) by the one process that trains the run

Every write goes to a temporary file `.NAME.*.tmp` in the same folder, is synced to disk and
renamed over the target, and the folder is synced: a kill or a power loss at any instant leaves
each file either old or new, never half written or empty. A full disk raises `DiskFull` and
leaves the old file. Checkpoints load with weights_only=True: a file that holds anything but
tensors and plain values is refused and runs no code.

Reading: each file has one reader here, and every way a file can be wrong (truncated, garbage, of
the wrong type or shape, a directory, a symbolic link, unreadable, a table without the columns,
kinds of values or rows its reader needs) raises `DamagedFile` (for a checkpoint, its subclass
`DamagedCheckpoint`), one line naming the file and what to do. No file of a run folder is opened
through a symbolic link (O_NOFOLLOW): in a results tree that others can write, a link planted in
a run folder cannot make a run read, truncate or append to another file.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import pickle
import secrets
import shutil
import socket
import stat
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from pandas.api.types import is_bool_dtype, is_numeric_dtype, is_string_dtype

SUMMARY = "summary.json"
METRICS = "metrics.parquet"
MATRIX_LAR = "matrix_lar.parquet"
LOCK = ".lock"
LOG = "train.log"
TEMPORARY = ".*.tmp"  # what atomic_write leaves behind when it is killed mid-write
# The kinds of values a reader may need a table's column to hold (RunDir.read_metrics's `needs`).
NUMBERS, TEXT = "numbers", "text"

# Statuses a run can have in summary.json.
RUNNING, COMPLETED, FAILED, INTERRUPTED = "running", "completed", "failed", "interrupted"


class RunLocked(RuntimeError):
    """Another process (or another `lock()` in this one) holds the run folder."""


class DiskFull(OSError):
    """A write failed for lack of space; the file it was replacing is unchanged."""

    def __str__(self) -> str:
        return self.strerror  # the message alone: it says what, where, and how much is free


# Statuses `RunDir.status` adds: a summary that cannot be read back.
DAMAGED = "damaged"


class DamagedFile(RuntimeError):
    """A file of a run folder that cannot be read back as what it should hold; the message names
    the file, what is wrong with it and what to do."""


class DamagedCheckpoint(DamagedFile):
    """A checkpoint that cannot be loaded: truncated, corrupt, or not written by this project."""


# How a file of the run folder is opened: never through a symbolic link, and never blocking on
# a FIFO planted in its place.
NOFOLLOW = os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def open_regular(path: Path, flags: int, todo: str, mode: int = 0o666) -> int:
    """A file descriptor of the regular file `path` (os.open `flags`, never through a link);
    DamagedFile naming the file and `todo` when it is a link, a directory or anything but a
    regular file, or cannot be opened; FileNotFoundError when it is absent (and not created)."""
    try:
        fd = os.open(path, flags | NOFOLLOW, mode)
    except FileNotFoundError:
        raise
    except OSError as error:
        _raise_if_disk_full(error, path)
        if error.errno == errno.ELOOP:
            raise DamagedFile(
                f"{path} is a symbolic link; refused (files of run and sweep folders are never "
                f"followed through links): {todo}"
            ) from None
        what = "is a directory" if error.errno == errno.EISDIR else f"cannot be opened ({error})"
        raise DamagedFile(f"{path} {what}: {todo}") from None
    kind = os.fstat(fd).st_mode
    if not stat.S_ISREG(kind):
        os.close(fd)
        what = "is a directory" if stat.S_ISDIR(kind) else "is not a regular file"
        raise DamagedFile(f"{path} {what}: {todo}")
    return fd


def read_file(path: Path, parse: Callable[[Any], Any], todo: str) -> Any:
    """`parse(binary file object)` of the regular file `path`; DamagedFile naming the file and
    `todo` for anything that goes wrong but its absence (FileNotFoundError)."""
    fd = open_regular(path, os.O_RDONLY, todo)
    with os.fdopen(fd, "rb") as file:
        try:
            return parse(file)
        except Exception as error:
            what = "cannot be read" if isinstance(error, OSError) else "is damaged"
            detail = str(error).strip().split("\n")[0][:120]
            raise DamagedFile(f"{path} {what} ({type(error).__name__}: {detail}): {todo}") from None


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call `write(tmp)` on a temporary path beside `path`, then rename it over `path`.

    The file is synced before the rename and the folder after it, so that after a power loss
    `path` holds the old or the new content, never an empty file. A lack of space raises
    `DiskFull`; whatever fails, the temporary file is removed."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    if path.parent.is_symlink():  # its files would land wherever the link points
        raise DamagedFile(
            f"{path.parent} is a symbolic link; refused (files of a run folder are never "
            "written through links): remove it"
        )
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # created by us rather than by mkstemp (0600), so that the umask decides who may read
        # the results, as it does for every other file of the run
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        write(tmp)
        _fsync(tmp)
        os.replace(tmp, path)
    except BaseException as error:
        full = _disk_full(error, path)  # measured while the partial file still takes its space
        tmp.unlink(missing_ok=True)
        if full is not None:
            raise full from error
        raise
    _fsync(path.parent)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# torch.save reports a failed write as a RuntimeError without its errno ("unexpected pos",
# "iostream error"): one that stopped with less than this left free ran out of space
ALMOST_FULL = 2**20  # bytes


def _disk_full(error: BaseException, path: Path) -> DiskFull | None:
    """`error` as a DiskFull if it comes from a lack of space, else None."""
    no_space = isinstance(error, OSError) and error.errno == errno.ENOSPC
    if not (no_space or isinstance(error, RuntimeError)):
        return None
    usage = shutil.disk_usage(next(folder for folder in path.parents if folder.exists()))
    if not no_space and usage.free >= ALMOST_FULL:
        return None
    return DiskFull(
        errno.ENOSPC,
        f"the disk is full: could not write {path} ({_size(usage.free)} free of "
        f"{_size(usage.total)}); its previous version, if any, is unchanged",
    )


def _raise_if_disk_full(error: OSError, path: Path) -> None:
    full = _disk_full(error, path)
    if full is not None:
        raise full from error


def _size(n_bytes: int) -> str:
    if n_bytes < 1024:
        return f"{n_bytes} B"
    size = n_bytes / 1024
    for unit in ("KiB", "MiB", "GiB"):
        if size < 1024:
            return f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


class RunDir:
    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._lock_fd: int | None = None  # open while this object holds the run's lock

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    @property
    def checkpoint_dir(self) -> Path:
        return self.path / "checkpoints"

    def checkpoint_path(self, name: str) -> Path:
        return self.checkpoint_dir / f"{name}.pt"

    # --- summary -------------------------------------------------------------------------
    def exists(self) -> bool:
        """Whether anything stands at summary.json (a damaged one too: reading it says what)."""
        return os.path.lexists(self.path / SUMMARY)

    def read_summary(self) -> dict[str, Any]:
        """The summary; DamagedFile when summary.json is not one this project wrote."""
        return read_file(
            self.path / SUMMARY,
            _parse_summary,
            "move the run folder aside (or restore the file) and train the run again",
        )

    def write_summary(self, summary: dict[str, Any]) -> None:
        text = json.dumps(summary, indent=2, default=str) + "\n"
        atomic_write(self.path / SUMMARY, lambda tmp: tmp.write_text(text))

    def status(self) -> str | None:
        """The summary's status (None when there is none), except that a run said to be running
        whose lock is free is interrupted (its process is gone), and a summary that cannot be
        read back is `damaged`. Never raises for what is in the folder."""
        if not self.exists():
            return None
        try:
            status = self.read_summary()["status"]
        except DamagedFile:
            return DAMAGED
        return INTERRUPTED if status == RUNNING and not self.is_locked() else status

    # --- one process per run -------------------------------------------------------------
    @contextmanager
    def lock(self, what: str = "run folder") -> Iterator[RunDir]:
        """Hold the folder (created if need be) for the whole `with` block; RunLocked at once if
        another process, or another `lock()` in this one, holds it. The OS releases the lock
        when the process ends, however it ends. `what` names the folder in the refusal."""
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            _raise_if_disk_full(error, self.path)
            raise
        todo = f"remove it; {self.path} is then free"
        fd = open_regular(self.path / LOCK, os.O_RDWR | os.O_CREAT, todo)
        try:
            if not _try_flock(fd, fcntl.LOCK_EX, patience_s=0.1):
                raise self._in_use(_holder(fd), what)
            holder = {"pid": os.getpid(), "host": socket.gethostname(), "since": _now()}
            try:
                os.ftruncate(fd, 0)
                os.pwrite(fd, json.dumps(holder).encode(), 0)
            except OSError as error:
                _raise_if_disk_full(error, self.path / LOCK)
                raise
            self._lock_fd = fd
            try:
                yield self
            finally:
                self._lock_fd = None
                with suppress(OSError):  # a full disk cannot refuse an empty file
                    os.ftruncate(fd, 0)  # no stale holder for the next one to report
        finally:
            os.close(fd)  # releases the lock

    def holder(self) -> str | None:
        """Who holds the run folder ("pid N on HOST since T"), or None when it is free; takes
        nothing and creates nothing."""
        try:
            fd = os.open(self.path / LOCK, os.O_RDONLY | NOFOLLOW)
        except OSError:  # absent, or a link or anything else this project does not lock
            return None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return None
            # a shared lock conflicts only with a holder's exclusive one; dropped at once
            return None if _try_flock(fd, fcntl.LOCK_SH, patience_s=0) else _holder(fd)
        finally:
            os.close(fd)

    def is_locked(self) -> bool:
        """Whether a process holds the run folder; takes nothing and creates nothing."""
        return self.holder() is not None

    def check_free(self) -> None:
        """RunLocked, naming the holder, when another process holds the run folder."""
        holder = self.holder()
        if holder is not None:
            raise self._in_use(holder)

    def _in_use(self, holder: str, what: str = "run folder") -> RunLocked:
        return RunLocked(
            f"{self.path} is in use by {holder}: one process per {what}; wait for it to end or "
            "stop it"
        )

    def clean_temporary_files(self) -> list[Path]:
        """Remove what interrupted atomic writes left behind (`.NAME.*.tmp`, in the run folder
        and checkpoints/); returns the paths removed. Only under the lock: without it, a file
        could belong to a write still going on in another process."""
        if self._lock_fd is None:
            raise RuntimeError(
                f"clean_temporary_files needs the lock of {self.path}: call it inside "
                "`with run.lock():`"
            )
        leftovers = sorted([*self.path.glob(TEMPORARY), *self.checkpoint_dir.glob(TEMPORARY)])
        for path in leftovers:
            path.unlink()
        return leftovers

    def write_text(self, name: str, text: str) -> None:
        """Write `text` to the file `name` (a path inside the run folder), atomically."""
        atomic_write(self.path / name, lambda tmp: tmp.write_text(text))

    # --- log -----------------------------------------------------------------------------
    def log_handler(self) -> logging.Handler:
        """A logging handler appending to the run's train.log (opened without following a
        link). A line that cannot be written (a full disk) is dropped quietly: the error that
        matters is reported by whoever hit it, not buried under logging's own tracebacks."""
        self.path.mkdir(parents=True, exist_ok=True)
        todo = "remove it; the run writes a new one"
        fd = open_regular(self.path / LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, todo)
        return _QuietFileHandler(os.fdopen(fd, "a", encoding="utf-8"))

    # --- tables --------------------------------------------------------------------------
    def write_metrics(self, rows: list[dict], columns: list[str] | None = None) -> None:
        """metrics.parquet: `rows` under the family's `columns` (a value a row lacks is NaN;
        None: the rows' own keys)."""
        self._write_table(METRICS, pd.DataFrame(rows, columns=columns))

    def write_matrix_lar(self, rows: list[dict], columns: list[str] | None = None) -> None:
        self._write_table(MATRIX_LAR, pd.DataFrame(rows, columns=columns))

    def read_metrics(self, needs: Mapping[str, str] | None = None) -> pd.DataFrame:
        """metrics.parquet; `needs` ({column: NUMBERS or TEXT}: what the caller reads of it): a
        table that does not meet them is damaged (`unmet_needs`)."""
        return self._read_table(METRICS, ["step", "lar"], needs=needs)

    def read_matrix_lar(self, needs: Mapping[str, str] | None = None) -> pd.DataFrame:
        return self._read_table(MATRIX_LAR, ["step", "name", "lar"], needs=needs)

    def read_cache(self, name: str, key: str) -> pd.DataFrame | None:
        """The table `name` that another part keeps in the run folder and can remake (a cache,
        named by its owner), holding the column `key`; None when absent, DamagedFile when it
        cannot be read back."""
        if not os.path.lexists(self.path / name):
            return None
        return self._read_table(name, [key], todo="delete it; the analysis remakes it")

    def write_cache(self, name: str, frame: pd.DataFrame) -> None:
        self._write_table(name, frame)

    def _write_table(self, name: str, frame: pd.DataFrame) -> None:
        atomic_write(self.path / name, lambda tmp: frame.to_parquet(tmp, index=False))

    def _read_table(
        self,
        name: str,
        columns: list[str],
        todo: str | None = None,
        needs: Mapping[str, str] | None = None,
    ) -> pd.DataFrame:
        def parse(file) -> pd.DataFrame:
            frame = pd.read_parquet(file)
            missing = [column for column in columns if column not in frame.columns]
            if missing:
                raise ValueError(f"not a table of this project (no {', '.join(missing)} column)")
            problem = unmet_needs(frame, needs or {})
            if problem:
                raise ValueError(problem)
            return frame

        todo = todo or "restore it, or move the run folder aside and train the run again"
        return read_file(self.path / name, parse, todo)

    # --- checkpoints ---------------------------------------------------------------------
    def save_checkpoint(self, name: str, state: dict[str, Any]) -> None:
        atomic_write(self.checkpoint_path(name), lambda tmp: torch.save(state, tmp))

    def checkpoint_names(self, prefix: str) -> list[str]:
        """The names of the checkpoints whose names start with `prefix`, sorted."""
        return sorted(path.stem for path in self.checkpoint_dir.glob(f"{prefix}*.pt"))

    def remove_checkpoint(self, name: str) -> None:
        path = self.checkpoint_path(name)
        path.unlink(missing_ok=True)
        if self.checkpoint_dir.exists():
            _fsync(self.checkpoint_dir)  # gone for good, like a write (atomic_write)

    def has_checkpoint(self, name: str) -> bool:
        """Whether anything stands at the checkpoint's path (loading a damaged one says what)."""
        return os.path.lexists(self.checkpoint_path(name))

    def load_checkpoint(self, name: str, map_location: str | torch.device = "cpu") -> dict:
        """The checkpoint `name`, a dict holding the model's state_dict under "model";
        DamagedCheckpoint if it cannot be read back as one (FileNotFoundError if absent)."""
        path = self.checkpoint_path(name)
        todo = (
            "move it aside to restart the run from scratch"
            if name == "last"
            else "move it aside; only training the run again remakes it"
        )

        def parse(file) -> dict:
            # weights_only: a checkpoint holds tensors and plain Python values only, so a
            # crafted file cannot run code when it is loaded (torch refuses anything else)
            try:
                state = torch.load(file, map_location=map_location, weights_only=True)
            except pickle.UnpicklingError:
                raise ValueError(
                    "not a checkpoint this project wrote (it asks for more than tensors and "
                    "plain values; refused, nothing in it ran)"
                ) from None
            model = state.get("model") if isinstance(state, dict) else None
            if not isinstance(model, dict) or not all(
                isinstance(key, str) and isinstance(value, torch.Tensor)
                for key, value in model.items()
            ):
                raise ValueError("not a checkpoint this project wrote (no model state_dict)")
            return state

        try:
            return read_file(path, parse, todo)
        except DamagedFile as error:
            raise DamagedCheckpoint(str(error)) from None


def unmet_needs(frame: pd.DataFrame, needs: Mapping[str, str]) -> str | None:
    """What `frame` lacks of `needs` ({column: NUMBERS or TEXT}), or None: every column there,
    of its kind, holding at least one value. A parquet file of another schema reads back without
    error; this finds it before the reader trips over it far from the file."""
    if needs and frame.empty:
        return "it holds no row"
    for column, kind in needs.items():
        if column not in frame.columns:
            return f"no {column} column"
        values = frame[column]
        numbers = is_numeric_dtype(values) and not is_bool_dtype(values)
        if not (numbers if kind == NUMBERS else is_string_dtype(values)):
            return f"its {column} column holds {values.dtype}, not {kind}"
        if values.isna().all():
            return f"its {column} column holds no value"
    return None


class _QuietFileHandler(logging.StreamHandler):
    def handleError(self, record: logging.LogRecord) -> None:
        pass  # see RunDir.log_handler

    def close(self) -> None:
        with suppress(OSError):
            self.stream.close()
        super().close()


def _parse_summary(file) -> dict[str, Any]:
    summary = json.load(file)
    if not (
        isinstance(summary, dict)
        and isinstance(summary.get("status"), str)
        and isinstance(summary.get("config"), dict)
    ):
        raise ValueError("not a run summary of this project (no status and config)")
    return summary


def _try_flock(fd: int, mode: int, patience_s: float) -> bool:
    """Take the flock `mode` on `fd`, retrying for `patience_s`: lock() is patient for a moment
    because is_locked() in another process may hold a shared lock for a few microseconds."""
    deadline = time.monotonic() + patience_s
    while True:
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)


def _holder(fd: int) -> str:
    """Who holds the lock, as it wrote itself into the lock file."""
    try:
        holder = json.loads(os.pread(fd, 4096, 0))
        return f"pid {holder['pid']} on {holder['host']} since {holder['since']}"
    except (ValueError, KeyError, TypeError):
        return "another process (not yet named in the lock file)"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def find_runs(*roots: str | os.PathLike) -> Iterator[RunDir]:
    """Every run (a folder holding summary.json) under `roots`, at any depth, in sorted order."""
    for root in roots:
        for summary in sorted(Path(root).rglob(SUMMARY)):
            yield RunDir(summary.parent)
