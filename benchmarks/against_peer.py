"""This project's trainer against a peer's on the same work, whole processes in turns.

The peer is danielmamay/grokking (a three-file repository: the same 2-layer, d = 128, 4-head
transformer on `x ∘ y =`, AdamW, batch 512). Both train modular addition, p = 97, 50 % train data,
for the same number of optimizer steps on one thread, each evaluating as it does by default (the
project every 20 epochs over the full splits with every matrix's LAR; the peer every 100 steps).
Each process's wall time counts everything a user waits for: start-up, data, training, files.

    git clone <danielmamay/grokking> /tmp/peer && pip install einops
    python benchmarks/against_peer.py --peer /tmp/peer [--steps 1000] [--pairs 3]

Prints each pair's wall times and the project/peer ratio, then the median ratio.
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STEPS_PER_EPOCH = 10  # 4,704 training examples in batches of 512


def wall_s(command: list[str], cwd: Path, env: dict) -> float:
    start = time.perf_counter()
    subprocess.run(command, cwd=cwd, env=env, check=True, capture_output=True)
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peer", type=Path, required=True, help="a checkout of the peer")
    parser.add_argument("--steps", type=int, default=1000, help="a multiple of 10")
    parser.add_argument("--pairs", type=int, default=3)
    args = parser.parse_args()
    one_thread = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    env = os.environ | one_thread
    peer = [sys.executable, "cli.py", "--operation", "x+y", "--prime", "97"]
    peer += ["--training_fraction", "0.5", "--num_steps", str(args.steps), "--device", "cpu"]
    ratios = []
    for pair in range(args.pairs):
        with tempfile.TemporaryDirectory() as run_dir:
            project = [sys.executable, "-m", "grokking.train", "task=add", "train_fraction=0.5"]
            project += [f"max_epochs={args.steps // STEPS_PER_EPOCH}", "threads=1"]
            project += ["device=cpu", f"hydra.run.dir={run_dir}"]
            project_s = wall_s(project, Path.cwd(), env)
        peer_s = wall_s(peer, args.peer / "grokking", env)
        ratios.append(project_s / peer_s)
        print(
            f"pair {pair}: project {project_s:6.1f} s, peer {peer_s:6.1f} s, "
            f"ratio {ratios[-1]:.3f}",
            flush=True,
        )
    print(f"project/peer wall time, median of {args.pairs}: {statistics.median(ratios):.3f}")


if __name__ == "__main__":
    main()
