"""The run folder's guarantees: one process per folder, full disks, damaged checkpoints,
leftovers of interrupted writes, durable renames and file modes."""

import errno
import json
import os
import pickle
import shutil
import signal
import socket
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from grokking.runs.rundir import (
    INTERRUPTED,
    RUNNING,
    DamagedCheckpoint,
    DiskFull,
    RunDir,
    RunLocked,
    atomic_write,
)


def temporary_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*.tmp"))


# --- one process per run folder -----------------------------------------------------------
HOLD_LOCK = textwrap.dedent(
    """
    import sys, time
    from grokking.runs.rundir import RunDir
    with RunDir(sys.argv[1]).lock():
        print("locked", flush=True)
        time.sleep(600)
    """
)


@pytest.fixture
def holder(tmp_path):
    """A second process holding the lock of tmp_path / "run" until it is killed."""
    process = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(tmp_path / "run")], stdout=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout.readline() == "locked\n"
        yield process
    finally:
        process.kill()
        process.wait()


def test_a_second_process_is_refused_with_the_holder_named(tmp_path, holder):
    run = RunDir(tmp_path / "run")
    started = time.perf_counter()
    with pytest.raises(RunLocked) as refused, run.lock():
        pass
    assert time.perf_counter() - started < 1.0  # refused at once, not after a wait
    message = str(refused.value)
    assert str(run.path) in message
    assert f"pid {holder.pid} on {socket.gethostname()}" in message
    assert isinstance(refused.value, RuntimeError)
    assert run.is_locked()


def test_a_second_lock_in_the_same_process_is_refused(tmp_path):
    run = RunDir(tmp_path / "run")
    with run.lock():
        assert run.is_locked()
        with pytest.raises(RunLocked, match=f"pid {os.getpid()}"), RunDir(run.path).lock():
            pass
    assert not run.is_locked()
    with run.lock():  # released on exit: it can be taken again
        pass


def test_a_killed_run_is_interrupted_and_its_folder_free(tmp_path, holder):
    run = RunDir(tmp_path / "run")
    run.write_summary({"status": RUNNING, "config": {}})
    assert run.status() == RUNNING
    holder.send_signal(signal.SIGKILL)  # no chance to clean up
    holder.wait()
    assert not run.is_locked()
    assert run.status() == INTERRUPTED
    assert run.read_summary()["status"] == RUNNING  # status() reports, it does not rewrite
    with run.lock():
        pass


def test_is_locked_takes_nothing_and_needs_no_lock_file(tmp_path):
    run = RunDir(tmp_path / "run")
    assert not run.is_locked()
    assert not run.path.exists()  # asking created nothing


def test_the_lock_file_is_cleared_on_release(tmp_path):
    run = RunDir(tmp_path)
    with run.lock():
        holder = json.loads((tmp_path / ".lock").read_text())
        assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
    assert (tmp_path / ".lock").read_text() == ""


# --- a full disk ---------------------------------------------------------------------------
@pytest.fixture
def tiny_disk(tmp_path):
    """A 1 MiB tmpfs: writes to it really run out of space."""
    mount = tmp_path / "disk"
    mount.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.decode().strip()}")
    yield mount
    # lazily: a failed write's traceback may still hold a file open on it
    subprocess.run(["umount", "--lazy", str(mount)], check=True)


TOO_BIG = 2**21  # bytes, twice the tiny disk
WRITES = {
    "summary.json": lambda run: run.write_summary({"notes": "x" * TOO_BIG}),
    "metrics.parquet": lambda run: run.write_metrics(
        [{"epoch": i, "lar": lar} for i, lar in enumerate(torch.rand(TOO_BIG // 8).tolist())]
    ),
    "checkpoints/last.pt": lambda run: run.save_checkpoint(
        "last", {"model": {"w": torch.rand(TOO_BIG // 4)}, "epoch": 2}
    ),
}


@pytest.mark.parametrize("name", WRITES)
def test_a_full_disk_raises_disk_full_and_keeps_the_old_file(tiny_disk, name):
    run = RunDir(tiny_disk / "run")
    run.write_summary({"status": RUNNING})
    run.write_metrics([{"epoch": 0, "lar": 0.5}])
    run.save_checkpoint("last", {"model": {"w": torch.ones(3)}, "epoch": 1})
    before = (run.path / name).read_bytes()

    with pytest.raises(DiskFull) as full:
        WRITES[name](run)
    message = str(full.value)
    assert "the disk is full" in message
    assert str(run.path / name) in message
    assert "B free of 1.0 MiB" in message
    assert full.value.errno == errno.ENOSPC
    assert (run.path / name).read_bytes() == before
    assert temporary_files(run.path) == []
    assert str(pickle.loads(pickle.dumps(full.value))) == message  # survives submitit's pickle


def test_an_enospc_from_python_becomes_disk_full(tmp_path):
    def fail(tmp: Path):
        tmp.write_text("half")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with pytest.raises(DiskFull, match="the disk is full"):
        atomic_write(tmp_path / "summary.json", fail)
    assert os.listdir(tmp_path) == []


def test_a_torch_write_error_on_a_full_disk_becomes_disk_full(tmp_path, monkeypatch):
    """What torch.save raises on a full disk (as on the tmpfs above, for machines that cannot
    mount one): a RuntimeError without errno, while almost nothing is free."""

    def fail(tmp: Path):
        tmp.write_bytes(b"PK")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")

    almost_full = SimpleNamespace(total=2**30, used=2**30 - 4096, free=4096)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: almost_full)
    with pytest.raises(DiskFull, match=r"write .*last\.pt \(4\.0 KiB free of 1\.0 GiB\)"):
        atomic_write(tmp_path / "last.pt", fail)
    assert os.listdir(tmp_path) == []


def test_other_write_errors_pass_through(tmp_path):
    def fail(tmp: Path):
        raise RuntimeError("not about space")

    with pytest.raises(RuntimeError, match="not about space") as error:
        atomic_write(tmp_path / "summary.json", fail)
    assert not isinstance(error.value, DiskFull)
    assert os.listdir(tmp_path) == []


# --- damaged checkpoints -------------------------------------------------------------------
def truncated(data: bytes) -> bytes:
    return data[: len(data) // 2]


def zeroed_middle(data: bytes) -> bytes:
    return data[:100] + bytes(200) + data[300:]


@pytest.mark.parametrize("damage", [lambda data: b"", truncated, zeroed_middle])
@pytest.mark.parametrize(
    ("name", "advice"),
    [("last", "to restart the run from scratch"), ("final", "training the run again")],
)
def test_a_damaged_checkpoint_says_which_file_and_what_to_do(tmp_path, damage, name, advice):
    run = RunDir(tmp_path)
    run.save_checkpoint(name, {"model": {"w": torch.rand(100)}, "epoch": 3})
    path = run.checkpoint_path(name)
    path.write_bytes(damage(path.read_bytes()))

    with pytest.raises(DamagedCheckpoint) as damaged:
        run.load_checkpoint(name)
    message = str(damaged.value)
    assert "\n" not in message
    assert str(path) in message
    assert "move it aside" in message and advice in message
    assert isinstance(damaged.value, RuntimeError)


class RunsCode:
    """Unpickling this object would create `marker`."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_a_checkpoint_that_would_run_code_is_refused_unrun(tmp_path):
    run, marker = RunDir(tmp_path), tmp_path / "code_ran"
    torch.save({"model": RunsCode(marker), "epoch": 1}, run.path / "crafted.pt")
    run.checkpoint_dir.mkdir()
    os.replace(run.path / "crafted.pt", run.checkpoint_path("last"))

    with pytest.raises(DamagedCheckpoint, match="not a checkpoint this project wrote"):
        run.load_checkpoint("last")
    assert not marker.exists()
    torch.load(run.checkpoint_path("last"), weights_only=False)  # the file really is armed
    assert marker.exists()


def test_a_missing_checkpoint_is_not_called_damaged(tmp_path):
    with pytest.raises(FileNotFoundError):
        RunDir(tmp_path).load_checkpoint("last")


# --- leftovers of interrupted writes -------------------------------------------------------
def test_clean_temporary_files_removes_only_leftovers(tmp_path):
    run = RunDir(tmp_path / "run")
    run.write_summary({"status": RUNNING})
    run.save_checkpoint("last", {"epoch": 1})
    leftovers = [run.path / ".summary.json.k3j2.tmp", run.checkpoint_dir / ".last.pt.a8f0.tmp"]
    for path in leftovers:
        path.write_text("half written")

    with run.lock():
        kept = sorted(p for p in run.path.rglob("*") if p not in leftovers)
        assert run.clean_temporary_files() == sorted(leftovers)
        assert sorted(run.path.rglob("*")) == kept


def test_clean_temporary_files_needs_the_lock(tmp_path):
    run = RunDir(tmp_path)
    (tmp_path / ".summary.json.k3j2.tmp").write_text("another process may be writing this")
    with pytest.raises(RuntimeError, match="with run.lock"):
        run.clean_temporary_files()
    assert temporary_files(tmp_path) == [".summary.json.k3j2.tmp"]


# --- durable renames -----------------------------------------------------------------------
def test_atomic_write_syncs_the_file_before_the_rename_and_the_folder_after(tmp_path, monkeypatch):
    events = []
    fsync, replace = os.fsync, os.replace

    def spy_fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        fsync(fd)

    def spy_replace(src, dst):
        events.append(("replace", str(src), str(dst)))
        replace(src, dst)

    monkeypatch.setattr(os, "fsync", spy_fsync)
    monkeypatch.setattr(os, "replace", spy_replace)
    target = tmp_path / "summary.json"
    atomic_write(target, lambda tmp: tmp.write_text("{}"))

    [(_, tmp, dst)] = [e for e in events if e[0] == "replace"]
    assert dst == str(target)
    assert events == [("fsync", tmp), ("replace", tmp, dst), ("fsync", str(tmp_path))]


# --- file modes ----------------------------------------------------------------------------
@pytest.fixture(params=[0o022, 0o002], ids=["umask022", "umask002"])
def umask(request):
    previous = os.umask(request.param)
    yield request.param
    os.umask(previous)


def test_result_files_honour_the_umask(tmp_path, umask):
    run = RunDir(tmp_path / "run")
    with run.lock():
        run.write_summary({"status": RUNNING})
        run.write_metrics([{"epoch": 0, "lar": 0.5}])
        run.save_checkpoint("last", {"epoch": 1})
    files = ["summary.json", "metrics.parquet", "checkpoints/last.pt", ".lock"]
    modes = {name: stat.S_IMODE((run.path / name).stat().st_mode) for name in files}
    assert modes == dict.fromkeys(files, 0o666 & ~umask)
