import os
import shutil
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest

# The tests' models are tiny, so a second OpenMP thread buys nothing, and where the cores are
# shared, threads that spin waiting for each other multiply the CPU time (the example
# lar_on_your_model.py: 85 s of CPU on 2 threads, 12 s on 1). Set before torch is imported, it
# holds for this process and for every command a test starts (they inherit the environment);
# a run's own `threads` still sets its count.
os.environ.setdefault("OMP_NUM_THREADS", "1")

from grokking.algorithmic.config import TrainConfig  # noqa: E402
from grokking.algorithmic.model import ModelConfig  # noqa: E402

REPO = Path(__file__).resolve().parents[1]

# A run that trains in a second or two: p = 11, a narrow model, small batches.
TINY_OVERRIDES = [
    "task.p=11",
    "model.d_model=32",
    "model.n_heads=2",
    "model.d_ff=64",
    "batch_size=16",
    "eval_every=5",
    "max_epochs=20",
    "threads=1",
    "save_every_s=0",  # a resume point at every evaluation, so tests can kill at any of them
]


def tiny_config(**fields) -> TrainConfig:
    """TrainConfig for a tiny run; `fields` override it, nested ones as "task__p"."""
    top = {k: v for k, v in fields.items() if "__" not in k}
    cfg = TrainConfig(
        **{
            "model": ModelConfig(d_model=32, n_heads=2, d_ff=64),
            "batch_size": 16,
            "eval_every": 5,
            "max_epochs": 20,
            "threads": 1,
            "save_every_s": 0,
        }
        | top
    )
    cfg.task.p = 11
    for key, value in fields.items():
        if "__" in key:
            parent, leaf = key.split("__")
            setattr(getattr(cfg, parent), leaf, value)
    return cfg


@contextmanager
def copies_after_each_evaluation(monkeypatch, whole: Path):
    """Within: after every evaluation of a run (or pack) training into `whole`, a copy of that
    folder, killed_<i> beside it (the list yielded): what a kill -9 at that instant leaves."""
    from grokking.runs import loop

    killed, evaluate = [], loop._evaluate

    def evaluate_then_copy(engine, due, pack=None):
        evaluate(engine, due, pack)
        if due:
            killed.append(shutil.copytree(whole, whole.parent / f"killed_{len(killed)}"))

    with monkeypatch.context() as patch:
        patch.setattr(loop, "_evaluate", evaluate_then_copy)
        yield killed


def run_cli(*args, cwd, module="grokking.train", timeout=300, check=False):
    """Run `python -m <module> args...` in `cwd`; returns the CompletedProcess (text)."""
    env = os.environ | {"HYDRA_FULL_ERROR": "0"}
    result = subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"exit {result.returncode}\n{result.stdout}\n{result.stderr}")
    return result


@pytest.fixture
def refusal(tmp_path, monkeypatch, capsys):
    """`refusal(*arguments, family="algorithmic")` -> (exit code, stderr) of the pre-launch check
    that `python -m grokking.train *arguments` (family "lm": `python -m grokking.lm`) runs before
    Hydra writes anything, run in this process with the working directory `tmp_path/work` (the
    same function the command calls first)."""
    from grokking.lm import COMMAND as LM_COMMAND
    from grokking.train import COMMAND

    commands = {"algorithmic": COMMAND, "lm": LM_COMMAND}
    cwd = tmp_path / "work"
    cwd.mkdir()
    monkeypatch.chdir(cwd)

    def check(*arguments: str, family: str = "algorithmic") -> tuple[int, str]:
        capsys.readouterr()
        with pytest.raises(SystemExit) as exited:
            commands[family].check_command_line(list(arguments))
        return exited.value.code, capsys.readouterr().err

    return check


@pytest.fixture
def tiny_overrides():
    return list(TINY_OVERRIDES)


def completed_summaries(sweep_dir: Path) -> dict[str, dict]:
    """{run folder name: summary} of every run under a sweep folder."""
    import json

    return {p.parent.name: json.loads(p.read_text()) for p in sweep_dir.rglob("summary.json")}


@pytest.fixture(scope="session")
def slurm_cluster():
    """A real single-node SLURM on localhost, started by the project's own script; SLURM_CONF,
    which its clients (sbatch, sacct, submitit) need, is set for the rest of the session."""
    if os.geteuid() != 0 and not os.environ.get("CI"):
        pytest.skip("starting the local SLURM cluster needs root")
    script = REPO / "scripts" / "local-slurm.sh"
    result = subprocess.run(
        ["bash", str(script), "start"], capture_output=True, text=True, timeout=900
    )
    assert result.returncode == 0, f"local SLURM did not start:\n{result.stdout}\n{result.stderr}"
    last_line = result.stdout.splitlines()[-1]
    assert last_line.startswith("export SLURM_CONF="), result.stdout
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SLURM_CONF", last_line.removeprefix("export SLURM_CONF="))
        yield script


@pytest.hookimpl(tryfirst=True)  # before xdist's, which reads the groups into the test ids
def pytest_collection_modifyitems(items):
    """Tests that read the smoke sweep's runs are `slow`: the sweep is a minute or two of
    training (4 runs of up to 600 epochs), made once per session.

    The tests run on every core (pytest-xdist, `--dist loadgroup` in pyproject.toml), each where
    a worker is free, but for those that share something costly, kept on one worker so that it is
    made once: the tests of the local SLURM cluster (one per machine; test_local_slurm.py stops
    and starts it), those of the smoke sweep, and a file's tests that share a module's run.
    """
    for item in items:
        fixtures = getattr(item, "fixturenames", ())
        if "smoke_sweep" in fixtures:
            item.add_marker(pytest.mark.slow)
        group = _shared_group(item, fixtures)
        if group is not None:
            item.add_marker(pytest.mark.xdist_group(group))


def _shared_group(item, fixtures) -> str | None:
    if "slurm_cluster" in fixtures or item.path.name == "test_local_slurm.py":
        return "slurm"
    if "smoke_sweep" in fixtures:
        return "smoke_sweep"
    definitions = getattr(item, "_fixtureinfo", None)
    scopes = (
        {chain[-1].scope for chain in definitions.name2fixturedefs.values() if chain}
        if definitions is not None
        else set()
    )
    return item.path.name if scopes & {"module", "class", "package"} else None


@pytest.fixture(scope="session")
def smoke_sweep(tmp_path_factory):
    """(cwd, CompletedProcess) of `python -m grokking.train +sweeps=smoke` run in cwd."""
    cwd = tmp_path_factory.mktemp("smoke")
    result = run_cli("+sweeps=smoke", cwd=cwd, check=True)
    return cwd, result


# --- language models ---------------------------------------------------------------------------
@pytest.fixture(scope="session")
def corpus_dir(tmp_path_factory):
    """A folder of 40 small Python-like files: seconds to tokenize."""
    folder = tmp_path_factory.mktemp("corpus")
    for i in range(40):
        lines = [
            f"def function_{i}_{j}(x, y={j}):\n    return x * {i} + y - {j}\n" for j in range(60)
        ]
        (folder / f"module_{i:02d}.py").write_text("".join(lines) + f"# module {i}\n")
    return folder


def tiny_lm(corpus_dir, cache_dir) -> list[str]:
    """Overrides of `python -m grokking.lm` for a run of 60 steps that trains in seconds, on
    `corpus_dir` (the fixture), its tokens cached in `cache_dir`."""
    return [
        f"data.source={corpus_dir}",
        f"data.cache_dir={cache_dir}",
        "data.vocab_size=300",
        "data.train_tokens=8000",
        "token_budget=15360",  # 60 steps of 8 x 32 tokens: ~2 epochs of the training set
        "batch_size=8",
        "model.context=32",
        "model.hidden_size=32",
        "model.head_dim=8",
        "model.intermediate_size=64",
        "eval_every=10",
        "val_batches=2",
        "threads=1",
        "save_every_s=0",
    ]
