"""What a regularizer (regularize=lar|p1q1|grokfast|weight_norm, switched on from the start)
costs per training step, measured in one process: each regularizer's engine and a plain one are
timed in turns (so a load that comes and goes weighs on each alike), and each ratio to the plain
step is printed.

    python benchmarks/regularize_cost.py                  # grokking, the default config
    python benchmarks/regularize_cost.py --family lm regularize.window=1  # a language model
                                          # (window 1: its hinge is computed from the 2nd step)
    python benchmarks/regularize_cost.py --threads 2 --units 5 task.p=53

Extra key=value pairs override the family's default config. A grokking unit is an epoch, a
language model's a step; the language model's corpus is tokenized first if its cache lacks it."""

from __future__ import annotations

import argparse
import statistics

import torch
from packed_throughput import time_epochs  # a sibling script of benchmarks/

from grokking.lar.regularize import Regularizer

NAMES = tuple(regularizer.name for regularizer in Regularizer)


def engines(family: str, overrides: list[str]) -> dict:
    """{regularizer: its engine's one-unit training function}, each from the start."""
    if family == "lm":
        from grokking.lm import load_config
        from grokking.lm.engine import LMEngine as Engine
    else:
        from grokking.algorithmic.engine import Engine
        from grokking.train import load_config
    made = {}
    for name in NAMES:
        cfg = load_config([f"regularize={name}", "regularize.trigger=start", *overrides])
        made[name] = Engine([cfg], torch.device(cfg.device)).advance
    return made


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", choices=("algorithmic", "lm"), default="algorithmic")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--units", type=int, default=3, help="units timed in each round")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of each way, in turns")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    overrides = [f"threads={args.threads}", "device=cpu", *args.overrides]
    ways = engines(args.family, overrides)
    times = {name: [] for name in ways}
    for _ in range(args.rounds):
        for name, advance in ways.items():
            times[name].append(time_epochs(advance, args.units, torch.device("cpu")))
    plain = statistics.median(times["none"])
    unit = "step" if args.family == "lm" else "epoch"
    print(f"{args.family}, {args.threads} thread(s), median of {args.rounds} rounds")
    for name, measured in times.items():
        median = statistics.median(measured)
        print(f"{name:12s}: {median * 1e3:8.1f} ms/{unit}  ratio to none {median / plain:.3f}")


if __name__ == "__main__":
    main()
