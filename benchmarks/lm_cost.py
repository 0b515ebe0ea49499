"""What a language-model run costs on this machine, measured in one process: tokens/s of a
training step at the default size with Adam and with Muon (timed in turns, so a load that comes
and goes weighs on both alike; Muon's orthogonalisation dtype named), the Muon / Adam step ratio,
each step's share of the fp32 matmul peak measured here, the share of the unembedding's LAR in a
step (it is computed at every step, from the step's own forward pass), the cost of an evaluation
and the share of every matrix's LAR in it, each sweep file's projected wall time, and what each
stopping signal costs as a share of a step: LAR's rules (one update per step) and the baselines
a run records with `signals` (grokking/signals.py: each an addition to every evaluation, spread
over the `eval_every` steps between two).

    python benchmarks/lm_cost.py                # the default config, one thread
    python benchmarks/lm_cost.py --steps 40 --threads 2 data.train_tokens=200000
    python benchmarks/lm_cost.py --no-signals model=gemma2_256   # the larger size's steps only

A size other than the default is a `model=NAME` override (conf/lm/model/); the projection then
covers the runs of each sweep file at that size only (a sweep may hold both). `--no-signals`
skips the stopping signals' costs, most of the measuring time at the larger size.

The corpus is tokenized first if its cache (data.cache_dir) does not hold it yet."""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import yaml
from torch.utils.flop_counter import FlopCounterMode
from train_cost import matmul_flops  # a sibling script of benchmarks/

from grokking.lar import AcceleratingDeclineAlarm, sum_of_squares
from grokking.lar.select import OverfittingStop
from grokking.lm import load_config
from grokking.lm.config import LarLayers, Signal
from grokking.lm.engine import LMEngine
from grokking.lm.optim import ORTHOGONALIZE_DTYPE

SWEEPS = Path(__file__).resolve().parents[1] / "sweeps" / "lm"


def seconds(work, repeats: int) -> float:
    """Median wall time of `work` over `repeats` calls, after one warm-up call."""
    work()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def seconds_in_turns(works: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """{name: median wall time of `work`}, the works called in turns `repeats` times, after one
    warm-up call each."""
    for work in works.values():
        work()
    times = {name: [] for name in works}
    for _ in range(repeats):
        for name, work in works.items():
            start = time.perf_counter()
            work()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def lar_seconds(engine: LMEngine, repeats: int) -> float:
    """Seconds of one step's LAR: the probe's work on the unembedding's captured input and
    output of a training batch."""
    captured = {}
    head = engine.model.get_output_embeddings()
    hook = head.register_forward_hook(lambda m, a, out: captured.update(x=a[0], y=out))
    engine.advance()
    hook.remove()
    x, y = captured["x"].detach(), captured["y"].detach()

    def lar_work():
        sum_of_squares(x.reshape(-1, x.shape[-1]))
        sum_of_squares(y.reshape(-1, y.shape[-1]))

    return seconds(lar_work, repeats)


def rule_seconds(make, updates: int = 20_000) -> float:
    """Seconds of one update of a fresh rule `make()` fed a LAR curve that climbs from 1/2 to
    0.8 over the first 5 % of the values, then falls linearly to 0.71: a third of the way back,
    too little for the overfitting alarm, and never faster, so neither rule ever stops and both
    do their whole work on every value (the accelerating decline fits a slope to each)."""
    progress = torch.linspace(0, 1, updates)
    lars = 0.5 + 0.3 * (progress / 0.05).clamp(max=1) * (1 - 0.3 * progress)
    rule = make()
    start = time.perf_counter()
    for step, value in enumerate(lars.tolist()):
        rule.update(step, value)
    elapsed = time.perf_counter() - start
    assert not getattr(rule, "alarm", rule).fired, "it fired, and skipped its work after that"
    return elapsed / updates


def signal_seconds(engine: LMEngine, repeats: int = 3) -> dict[str, float]:
    """{signal: seconds it adds to an evaluation}: the evaluation with each signal on, and with
    none, timed in turns (a load that comes and goes weighs on each alike)."""
    cfg = engine.cfg

    def evaluate_with(signals: list[Signal]) -> Callable[[], object]:
        def work():
            cfg.signals = signals
            return engine.evaluate()

        return work

    works = {"none": evaluate_with([])} | {s.value: evaluate_with([s]) for s in Signal}
    times = seconds_in_turns(works, repeats)
    cfg.signals = []
    return {name: times[name] - times["none"] for name in works if name != "none"}


def step_flops(engine: LMEngine) -> int:
    """FLOPs of one whole step (forward, backward, the optimizers: Muon's orthogonalisation)."""
    with FlopCounterMode(display=False) as counter:
        engine.advance()
    return counter.get_total_flops()


def optimizer_path(engine: LMEngine) -> str:
    optimizer = engine.optimizers[-1]
    dtype = optimizer.param_groups[0].get(ORTHOGONALIZE_DTYPE)
    return f"muon, orthogonalising in {dtype}" if dtype else "adam"


def sweep_runs(path: Path) -> list[dict]:
    """Each run of a sweep file as {key: value} of its swept keys."""
    params = yaml.safe_load(path.read_text())["hydra"]["sweeper"]["params"]
    runs = [{}]
    for key, values in params.items():
        runs = [run | {key: value} for run in runs for value in str(values).split(",")]
    return runs


def runs_at_size(path: Path, measured) -> list[dict]:
    """The runs of sweep file `path` whose model is `measured` (a ModelConfig): a run's model is
    its `model` option, the config's default where the sweep names none."""
    runs = sweep_runs(path)
    names = {run.get("model") for run in runs}
    models = {name: load_config([f"model={name}"] if name else []).model for name in names}
    return [run for run in runs if models[run.get("model")] == measured]


def print_signals(engine: LMEngine, step: float) -> None:
    """What each stopping signal costs, as a share of a step of `step` seconds."""
    rules = {
        "LAR's OverfittingStop": rule_seconds(OverfittingStop),
        "LAR's accelerating decline": rule_seconds(AcceleratingDeclineAlarm),
    }
    added_s = signal_seconds(engine)
    print(f"stopping signals, as a share of an Adam step ({step * 1e3:.0f} ms):")
    for name, rule_s in rules.items():
        print(f"  {name}: {rule_s * 1e6:.1f} µs per step = {rule_s / step:.3%} of a step")
    every = engine.cfg.eval_every
    for name, extra in added_s.items():
        print(
            f"  {name}: {extra:.2f} s per evaluation = {extra / step:.1f} steps; evaluated every "
            f"{every} steps: {extra / every / step:.1%} of a step"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20, help="timed steps (median)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cores", type=int, default=2, help="runs of a sweep at once")
    parser.add_argument(
        "--no-signals", action="store_true", help="skip the stopping signals' costs"
    )
    parser.add_argument(
        "overrides", nargs="*", help="config overrides, as on the command line (model=gemma2_256)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    engines = {}
    for optimizer in ("adam", "muon"):
        cfg = load_config(["eval_every=25", "token_budget=2000000", f"optim={optimizer}",
                           *args.overrides])  # fmt: skip
        start = time.perf_counter()
        engines[optimizer] = engine = LMEngine([cfg], torch.device("cpu"))
        if len(engines) == 1:  # the first engine builds the data; the second reuses it
            setup_s = time.perf_counter() - start
    step_s = seconds_in_turns({name: e.advance for name, e in engines.items()}, args.steps)
    lar_s = {name: lar_seconds(e, args.steps * 5) for name, e in engines.items()}
    flops = {name: step_flops(e) for name, e in engines.items()}
    peak = matmul_flops(1024, 1024, 1024)
    eval_all_s = seconds(engine.evaluate, 3)
    cfg.lar_layers = LarLayers.unembed
    eval_unembed_s = seconds(engine.evaluate, 3)

    tokens = cfg.tokens_per_step
    print(
        f"config: vocabulary {engine.data.meta['vocab_size']}, hidden {cfg.model.hidden_size}, "
        f"{cfg.model.n_layers} layers, context {cfg.model.context}, batch {cfg.batch_size}, "
        f"{args.threads} thread(s); corpus {engine.data.meta['n_tokens']:,} tokens"
    )
    print(f"fp32 matmul peak (1024^3): {peak / 1e9:.1f} GFLOP/s")
    for optimizer, seconds_per_step in step_s.items():
        share = lar_s[optimizer] / seconds_per_step
        print(
            f"training step, {optimizer_path(engines[optimizer])}: "
            f"{seconds_per_step * 1e3:.0f} ms = {tokens / seconds_per_step:,.0f} tokens/s, "
            f"{flops[optimizer] / 1e9:.1f} GFLOP = {flops[optimizer] / seconds_per_step / peak:.0%}"
            f" of the matmul peak; the unembedding's LAR at every step "
            f"{lar_s[optimizer] * 1e3:.2f} ms = {share:.2%} of it"
        )
    print(f"Muon step / Adam step: {step_s['muon'] / step_s['adam']:.2f}")
    print(
        f"evaluation ({cfg.val_batches} x {cfg.batch_size} validation sequences + the probe "
        f"batch): {eval_all_s:.2f} s with every matrix's LAR, {eval_unembed_s:.2f} s with the "
        f"unembedding's only: every matrix costs {(eval_all_s - eval_unembed_s) / eval_all_s:.1%}"
        " of an evaluation"
    )
    if not args.no_signals:
        print_signals(engines["adam"], step_s["adam"])
    print(f"setup (data, model): {setup_s:.1f} s")
    print(f"sweeps, their runs at this size ({cfg.model.size}):")
    for path in sorted(SWEEPS.glob("*.yaml")):
        sweep = yaml.safe_load(path.read_text())
        steps = sweep.get("token_budget", cfg.token_budget) // tokens
        evals = steps // sweep.get("eval_every", cfg.eval_every) + 1
        runs = [
            setup_s + steps * step_s[run.get("optim", "adam")] + evals * eval_all_s
            for run in runs_at_size(path, cfg.model)
        ]
        if not runs:
            continue
        # the launcher hands runs to `cores` workers as they free up: longest first bounds it
        finish = [0.0] * args.cores
        for run_s in sorted(runs, reverse=True):
            finish[finish.index(min(finish))] += run_s
        print(
            f"  {path.stem}: {len(runs)} runs, {min(runs) / 60:.1f}-{max(runs) / 60:.1f} min each "
            f"({steps} steps, {evals} evaluations): ~{max(finish) / 60:.0f} min on "
            f"{args.cores} cores"
        )


if __name__ == "__main__":
    main()
