"""scripts/local-slurm.sh: a cluster on loopback only, kept in a root-owned folder of its own."""

import os
import pwd
import re
import signal
import socket
import stat
import subprocess
import time
from collections import defaultdict
from pathlib import Path

import pytest
from conftest import REPO

SCRIPT = REPO / "scripts" / "local-slurm.sh"
LISTENS_ON = {
    "slurmctld": "127.0.0.1:6817",
    "slurmd": "127.0.0.1:6818",
    "slurmdbd": "127.0.0.1:6819",
}
DAEMONS = ("munged", "mariadb", "slurmdbd", "slurmctld", "slurmd")

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="the script runs as root")


def local_slurm(*args, state: Path | None = None) -> subprocess.CompletedProcess:
    """Run the script; `state` moves its state folder (GROKKING_SLURM_STATE)."""
    env = os.environ | ({"GROKKING_SLURM_STATE": str(state)} if state else {})
    return subprocess.run(
        ["bash", str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=300
    )


def output(*command: str) -> str:
    """What a command that must succeed prints."""
    return subprocess.run(command, capture_output=True, text=True, check=True).stdout


def tcp_listeners() -> dict[str, set[str]]:
    """{process name: the addresses it listens on over TCP}, read from `ss`."""
    out = output("ss", "-Hltnp")
    listeners = defaultdict(set)
    for line in out.splitlines():
        address = line.split()[3]  # State Recv-Q Send-Q Local-Address:Port Peer Process
        for name in re.findall(r'\("([^"]+)",pid=', line):
            listeners[name].add(address)
    return listeners


def state_folder() -> Path:
    return Path(os.environ["SLURM_CONF"]).parent


def owner_and_mode(path: Path) -> tuple[str, int]:
    info = path.lstat()  # a symlink shows as one
    return pwd.getpwuid(info.st_uid).pw_name, stat.S_IMODE(info.st_mode)


@pytest.mark.slow
def test_the_daemons_listen_on_loopback_only(slurm_cluster):
    listeners = tcp_listeners()
    assert {name: listeners[name] for name in LISTENS_ON} == {
        name: {address} for name, address in LISTENS_ON.items()
    }
    assert "mariadbd" not in listeners and "munged" not in listeners  # unix sockets only
    unix = output("ss", "-Hlxp")
    socket = f"{state_folder()}/mariadb/mysqld.sock"
    assert [line for line in unix.splitlines() if '"mariadbd"' in line and socket in line]


@pytest.mark.slow
def test_the_state_folder_and_its_secrets_have_safe_owners_and_modes(slurm_cluster):
    state = state_folder()
    expected = {
        ".": ("root", 0o755),  # clients read slurm.conf
        "slurm.conf": ("root", 0o644),
        "slurmdbd.conf": ("root", 0o600),
        "spool": ("root", 0o755),  # jobs run their scripts from here as their user
        "private": ("root", 0o700),
        "private/started": ("root", 0o700),
        "private/db-password": ("root", 0o600),
        "mariadb": ("mysql", 0o700),
    }
    assert {name: owner_and_mode(state / name) for name in expected} == expected


@pytest.mark.slow
def test_the_database_password_is_generated_and_used(slurm_cluster):
    state = state_folder()
    password = (state / "private" / "db-password").read_text()
    assert re.fullmatch(r"[0-9a-f]{32}", password)  # 128 random bits
    assert f"\nStoragePass={password}\n" in (state / "slurmdbd.conf").read_text()
    clusters = subprocess.run(
        ["sacctmgr", "-n", "list", "cluster", "format=cluster"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert clusters.split() == ["grokking"]  # slurmdbd reached the database with it


@pytest.mark.slow
def test_the_cluster_reads_its_own_config_and_leaves_etc_slurm_alone(slurm_cluster):
    etc = Path("/etc/slurm")
    planted = [path for path in (etc, etc / "slurm.conf") if not path.exists()]
    if planted:  # another SLURM's config, which the old script refused to start beside
        etc.mkdir(exist_ok=True)
        (etc / "slurm.conf").write_text("ClusterName=someone-else\n")
    before = (etc / "slurm.conf").read_bytes(), (etc / "slurm.conf").stat().st_mtime_ns
    try:
        result = local_slurm("start")
        after = (etc / "slurm.conf").read_bytes(), (etc / "slurm.conf").stat().st_mtime_ns
    finally:
        for path in reversed(planted):  # the file, then the folder if it was not there
            if path.is_dir():
                path.rmdir()
            else:
                path.unlink()
    assert result.returncode == 0, result.stderr
    assert after == before
    config = output("scontrol", "show", "config")
    assert re.search(rf"^SLURM_CONF\s+= {re.escape(os.environ['SLURM_CONF'])}$", config, re.M)
    assert re.search(r"^ClusterName\s+= grokking$", config, re.M)


@pytest.mark.slow
def test_the_node_has_every_core_whatever_omp_num_threads_says(slurm_cluster):
    """The tests start the cluster with OMP_NUM_THREADS=1, which GNU nproc obeys."""
    assert os.environ.get("OMP_NUM_THREADS") == "1"
    assert int(output("sinfo", "--noheader", "--format=%c")) == len(os.sched_getaffinity(0))


def stopped(status: str) -> set[str]:
    return {line.removesuffix(": stopped") for line in status.splitlines()} & set(DAEMONS)


@pytest.mark.slow
def test_start_is_idempotent_and_stop_stops_every_daemon(slurm_cluster):
    export = f"export SLURM_CONF={os.environ['SLURM_CONF']}"
    status = local_slurm("status").stdout
    assert all(re.search(rf"^{name}: running \(\d+\)$", status, re.M) for name in DAEMONS)
    again = local_slurm("start")
    assert again.returncode == 0 and again.stdout.splitlines()[-1] == export
    assert local_slurm("status").stdout == status  # the same processes, nothing restarted
    assert local_slurm("env").stdout == export + "\n"
    try:
        assert local_slurm("stop").returncode == 0
        assert stopped(local_slurm("status").stdout) == set(DAEMONS)
        assert not set(LISTENS_ON) & set(tcp_listeners())
    finally:
        restarted = local_slurm("start")  # the tests after this one need the cluster
    assert restarted.returncode == 0, restarted.stderr
    assert all(name in tcp_listeners() for name in LISTENS_ON)


def job_step_pids(job: str) -> list[int]:
    found = subprocess.run(["pgrep", "-f", rf"^slurmstepd: \[{job}\."], capture_output=True)
    return [int(pid) for pid in found.stdout.split()]


def wait_until(condition, seconds=60) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


@pytest.mark.slow
def test_a_job_whose_step_died_while_the_node_was_down_is_requeued_on_start(
    slurm_cluster, tmp_path
):
    """As after a reboot: the controller's saved state says running, but nothing runs it."""
    job = output("sbatch", "--parsable", f"--output={tmp_path}/%j.out", "--wrap", "sleep 300")
    job = job.strip()
    try:
        wait_until(lambda: job_step_pids(job))
        assert local_slurm("stop").returncode == 0  # slurmd leaves its job steps running
        for pid in job_step_pids(job):  # the step leads a session: its script and `sleep`
            subprocess.run(["pkill", "-KILL", "--session", str(os.getsid(pid))])
        wait_until(lambda: not job_step_pids(job))
        result = local_slurm("start")
        assert result.returncode == 0, result.stderr
        assert f"job {job} was running when the node went down: requeued" in result.stderr
        details = output("scontrol", "show", "job", job)
        assert re.search(r"\bRestarts=1\b", details)
        assert re.search(r"\bJobState=(PENDING|RUNNING)\b", details)
    finally:
        subprocess.run(["scancel", job])
        local_slurm("start")


@pytest.mark.slow
def test_a_taken_port_stops_start_before_it_starts_anything(slurm_cluster):
    assert local_slurm("stop").returncode == 0
    try:
        with socket.create_server(("0.0.0.0", 6817)):  # as a cluster of the old script would
            result = local_slurm("start")
            status = local_slurm("status").stdout
    finally:
        restarted = local_slurm("start")
    assert result.returncode == 1
    assert "local-slurm: error: port 6817 is taken (an older cluster?): LISTEN" in result.stderr
    assert {"mariadb", "slurmdbd", "slurmctld", "slurmd"} <= stopped(status)
    assert restarted.returncode == 0, restarted.stderr


def make_folders(state: Path, state_mode=0o755, private_mode=0o700) -> None:
    """The state folder and the private folders that stop trusts, as the script makes them."""
    private = state / "private"
    for folder, mode in (
        (state, state_mode),
        (private, private_mode),
        (private / "started", 0o700),
    ):
        folder.mkdir()
        folder.chmod(mode)  # whatever the umask


def planted_symlink(state: Path) -> str:
    (state.parent / "elsewhere").mkdir(mode=0o755)
    state.symlink_to(state.parent / "elsewhere")
    return f"{state} is a symlink; refusing to use it"


def world_writable(state: Path) -> str:
    make_folders(state, state_mode=0o777)
    return f"{state} is not a directory owned by root with mode 755; refusing to use it"


def owned_by_nobody(state: Path) -> str:
    make_folders(state)
    os.chown(state, pwd.getpwnam("nobody").pw_uid, -1)
    return f"{state} is not a directory owned by root with mode 755; refusing to use it"


def readable_private_folder(state: Path) -> str:
    make_folders(state, private_mode=0o755)
    return f"{state}/private is not a directory owned by root with mode 700; refusing to use it"


@needs_root
@pytest.mark.parametrize("command", ["start", "stop"])
@pytest.mark.parametrize(
    "plant", [planted_symlink, world_writable, owned_by_nobody, readable_private_folder]
)
def test_a_state_folder_others_could_have_planted_is_refused(tmp_path, command, plant):
    state = tmp_path / "state"
    message = plant(state)
    result = local_slurm(command, state=state)
    assert result.returncode == 1
    assert result.stderr == f"local-slurm: error: {message}\n"
    assert not (state / "slurm.conf").exists()


@needs_root
def test_stop_kills_a_recorded_process_only_while_it_is_the_same_process(tmp_path):
    state = tmp_path / "state"
    make_folders(state)
    record = state / "private" / "started" / "slurmd"
    sleeper = subprocess.Popen(["sleep", "60"])
    start_time = int(Path(f"/proc/{sleeper.pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    try:
        record.write_text(f"{sleeper.pid} {start_time + 1}\n")  # its PID, reused by another
        assert local_slurm("stop", state=state).returncode == 0
        assert sleeper.poll() is None and not record.exists()

        record.write_text(f"{sleeper.pid} {start_time}\n")
        result = local_slurm("stop", state=state)
        assert sleeper.wait(timeout=10) == -signal.SIGTERM
        assert result.stderr == f"local-slurm: stopped slurmd ({sleeper.pid})\n"
    finally:
        sleeper.kill()
