"""The run folder's guarantees: one process per folder, full disks, damaged checkpoints,
leftovers of interrupted writes, durable renames and file modes."""

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from grokking.rundir import (
    INTERRUPTED,
    RUNNING,
    RunDir,
    RunLocked,
)


def temporary_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*.tmp"))


# --- one process per run folder -----------------------------------------------------------
HOLD_LOCK = textwrap.dedent(
    """
    import sys, time
    from grokking.rundir import RunDir
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
    run.write_summary({"status": RUNNING})
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
