"""What each signal of the alarm harness costs per call, at one checkpoint of a grokking run:
the forward pass over the training set that LAR and RankMe read, then what LAR, RankMe, the
unembedding's effective and stable rank, and WeightWatcher's α (of the unembedding, of every
dense layer) each add to it. Each time is the best of `--repeats` calls; ratios are to LAR's.

    python benchmarks/signal_cost.py "outputs/sweeps/alarm_grokking/seed=0,task=add"
    (any grokking run trained with checkpoint_every)
"""

from __future__ import annotations

import argparse
import contextlib
import io

import torch

from grokking.analysis.algorithmic.baselines import costs
from grokking.runs.rundir import RunDir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", help="a grokking run folder with checkpoints/epoch_N.pt")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with contextlib.redirect_stdout(io.StringIO()):  # weightwatcher's import banner
        table = costs(RunDir(args.run), args.repeats)
    lar = table.loc[table["signal"].str.startswith("LAR"), "seconds"].iloc[0]
    table["ms"] = table["seconds"] * 1e3
    table["× LAR"] = table["seconds"] / lar
    print(f"{args.run}, {args.threads} thread(s), best of {args.repeats}:")
    print(table[["signal", "ms", "× LAR"]].to_markdown(index=False, floatfmt=".3g"))


if __name__ == "__main__":
    main()
