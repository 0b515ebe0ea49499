"""Does bf16 change what a run finds? The same pack of runs (4 tasks x 3 seeds) in fp32 and in
bf16: grokking epochs and LAR at memorization, grokking and the end, per precision (mean, sd,
count) and run by run (|bf16 - fp32|).

    python benchmarks/precision_comparison.py [--out DIR] [key=value ...]

The default is a small setting that groks within 1,500 epochs on a CPU (p = 11, 90 % train data,
a 32-wide model; about 5 minutes on one core); pass overrides for another (e.g. device=cuda
task.p=97 model.d_model=128 ... on a GPU). Runs go under --out and are resumed if there.
"""

import argparse
import logging
import tempfile

import numpy as np
import pandas as pd

from grokking.algorithmic import train_pack
from grokking.runs.rundir import RunDir
from grokking.train import load_config

TASKS = ("add", "sub", "x2_plus_y2", "x2_xy_y2")  # one shape: they share a pack
SMALL = [
    "task.p=11",
    "train_fraction=0.9",
    "optim.lr=3e-3",
    "model.d_model=32",
    "model.n_heads=2",
    "model.d_ff=64",
    "batch_size=16",
    "eval_every=10",
    "max_epochs=1500",
    "threads=1",
]


def lar_at(run: RunDir, epoch) -> float:
    if epoch is None:
        return np.nan
    return run.read_metrics().set_index("epoch").loc[epoch, "lar"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="folder for the runs (default: a temporary)")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    logging.disable(logging.INFO)
    out = args.out or tempfile.mkdtemp(prefix="precision-")
    rows = []
    for precision in ("fp32", "bf16"):
        members = [
            (
                load_config(
                    [*SMALL, *args.overrides, f"task={t}", f"seed={s}", f"precision={precision}"]
                ),
                f"{out}/{precision}/{t}-{s}",
            )
            for t in TASKS
            for s in range(3)
        ]
        for summary, (_, path) in zip(train_pack(members), members, strict=True):
            run = RunDir(path)
            rows.append(
                {
                    "precision": precision,
                    "run": f"{summary['task']}-{summary['seed']}",
                    "grokking_epoch": summary["grokking_epoch"],
                    "lar_memorization": lar_at(run, summary["memorization_epoch"]),
                    "lar_grokking": lar_at(run, summary["grokking_epoch"]),
                    "lar_final": summary["final"]["lar"],
                }
            )
    table = pd.DataFrame(rows)
    measures = ["grokking_epoch", "lar_memorization", "lar_grokking", "lar_final"]
    print(f"runs in {out}\n")
    print(table.groupby("precision")[measures].agg(["mean", "std", "count"]).round(3).to_string())
    wide = table.pivot(index="run", columns="precision", values=measures)
    print("\nrun by run:")
    print(wide.round(3).to_string())
    for measure in measures[1:]:
        gap = (wide[measure]["bf16"] - wide[measure]["fp32"]).abs().dropna()
        print(f"{measure}: |bf16 - fp32| mean {gap.mean():.4f}, max {gap.max():.4f}, n {len(gap)}")


if __name__ == "__main__":
    main()
