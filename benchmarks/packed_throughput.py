"""Packed training throughput, measured in one run on whatever device is here.

For R runs trained as one stacked model (R in --members) and each precision, prints ms per
optimizer step and run-steps per second (R / step time), beside a plain one-run PyTorch loop over
`Transformer` (what a single run costs without the engine) on the same device in the same process,
and projects the wall time of the `table1_ops` protocol from the measured rates.

    python benchmarks/packed_throughput.py                       # CUDA if present, else CPU
    python benchmarks/packed_throughput.py --members 1,5 --epochs 1 --threads 2   # a CPU

The default config is the paper's (p = 97, 50 % train data, batch 512: 10 steps per epoch).
"""

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F

from grokking.algorithmic.build import build
from grokking.algorithmic.engine import Engine
from grokking.runs.loop import resolve_device
from grokking.train import load_config

# The table1_ops protocol as packs (launcher default: packs of up to 64 runs of one shape):
# (runs in the pack, epochs, steps per epoch), phases in which the pack's size is constant.
# Assumptions, stated: the 20 runs of tasks 6-9 never grok and train all 50,000 epochs; the other
# 40 runs grok and stop within 10,000 epochs (3 x a grokking epoch of at most ~3,300).
TABLE1_PHASES = [
    (35, 10_000, 10),  # add, sub, x2_plus_y2 + tasks 6-9 (97^2 examples), all five seeds
    (20, 40_000, 10),  # tasks 6-9 alone for the rest of the budget
    (10, 10_000, 10),  # div, div_or_sub (97 x 96 examples)
    (15, 10_000, 15),  # the three S5 tasks (120^2 examples, 7,200 train rows)
]
EVAL_EVERY = 20


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_epochs(train_epoch, epochs: int, device) -> float:
    """Seconds per epoch of `train_epoch`, after one warm-up epoch (and CUDA graph capture)."""
    train_epoch()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(epochs):
        train_epoch()
    synchronize(device)
    return (time.perf_counter() - start) / epochs


def plain_loop(cfg, device):
    """One run, the way a single-run script trains it: nn.Module, fused AdamW, a loop."""
    (train_x, train_y, *_), model = build(cfg, device)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay, fused=True
    )

    def epoch():
        for batch in torch.randperm(len(train_y), device=device).split(cfg.batch_size):
            loss = F.cross_entropy(model(train_x[batch]), train_y[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    return epoch, -(-len(train_y) // cfg.batch_size)


def project(step_s: dict[int, float], eval_s: dict[int, float]) -> float:
    """Seconds for TABLE1_PHASES: times interpolated linearly in R between measured pack sizes,
    and proportional to R past the largest (no gain assumed beyond what was measured)."""
    members = sorted(step_s)

    def at(table, r):
        if r > members[-1]:
            return table[members[-1]] * r / members[-1]
        return float(np.interp(r, members, [table[m] for m in members]))

    return sum(
        epochs * steps * at(step_s, r) + epochs / EVAL_EVERY * at(eval_s, r)
        for r, epochs, steps in TABLE1_PHASES
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", default="1,5,20,60", help="pack sizes R, comma-separated")
    parser.add_argument("--precisions", default=None, help="default: fp32,tf32,bf16 on CUDA")
    parser.add_argument("--epochs", type=int, default=5, help="epochs timed per measurement")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads; 0: torch's default")
    parser.add_argument("overrides", nargs="*", help="key=value config overrides")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    precisions = (args.precisions or ("fp32,tf32,bf16" if cuda else "fp32,bf16")).split(",")
    members = [int(r) for r in args.members.split(",")]
    cfg = load_config([f"device={device.type}", *args.overrides])
    name = torch.cuda.get_device_name(device) if cuda else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {name}; task {cfg.task.name} p={cfg.task.p}, batch {cfg.batch_size}")

    epoch, steps = plain_loop(cfg, device)
    plain_s = time_epochs(epoch, args.epochs, device) / steps
    print(f"plain one-run loop (fp32, no graph): {plain_s * 1e3:8.2f} ms/step")
    header = ("precision", "R", "ms/step", "run-steps/s", "vs plain", "eval ms")
    print(" ".join(f"{h:>{w}}" for h, w in zip(header, (9, 4, 9, 12, 9, 8), strict=True)))
    for precision in precisions:
        step_s, eval_s = {}, {}
        for r in members:
            cfgs = [
                load_config(
                    [
                        f"device={device.type}",
                        f"precision={precision}",
                        f"seed={seed}",
                        *args.overrides,
                    ]
                )
                for seed in range(r)
            ]
            engine = Engine(cfgs, device)
            step_s[r] = time_epochs(engine.advance, args.epochs, device) / steps
            start = time.perf_counter()
            engine.evaluate()
            eval_s[r] = time.perf_counter() - start
            rate = r / step_s[r]
            print(
                f"{precision:>9} {r:>4} {step_s[r] * 1e3:9.2f} {rate:12,.0f} "
                f"{rate * plain_s:8.1f}x {eval_s[r] * 1e3:8.1f}"
            )
            del engine
            if cuda:
                torch.cuda.empty_cache()
        if len(members) > 1:
            minutes = project(step_s, eval_s) / 60
            print(f"{precision:>9}: table1_ops projected at {minutes:,.1f} min (TABLE1_PHASES)")


if __name__ == "__main__":
    main()
