"""Throughput of a local parallel sweep against the same runs one after another, in one run.

Runs one sweep three times into a temporary folder, each a fresh `python -m grokking.train -m`:
  1. basic launcher, one thread per run   (one after another)
  2. basic launcher, torch's default threads (one after another, all cores per run)
  3. the parallel launcher (hydra/launcher=parallel: one process per core, one thread each)
and prints wall times and the speed-ups of 3 over 1 and 2.

    python benchmarks/sweep_throughput.py [key=value ...]
"""

import argparse
import subprocess
import sys
import tempfile
import time

# Four runs of the default model on p = 53, long enough that start-up is a small share.
SWEEP = ["task.p=53", "max_epochs=120", "eval_every=20", "task=add,sub", "seed=0,1"]


def sweep_seconds(cwd: str, name: str, *overrides: str) -> float:
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "grokking.train", "-m", f"hydra.sweep.dir={name}", *overrides],
        cwd=cwd,
        check=True,
        capture_output=True,
    )
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*", help="replace the default sweep overrides")
    args = parser.parse_args()
    sweep = args.overrides or SWEEP
    with tempfile.TemporaryDirectory() as cwd:
        one_thread = sweep_seconds(cwd, "sequential_1thread", *sweep, "threads=1")
        all_threads = sweep_seconds(cwd, "sequential_default", *sweep)
        parallel = sweep_seconds(cwd, "parallel", *sweep, "hydra/launcher=parallel")
    print(f"sweep: {' '.join(sweep)}")
    print(f"one after another, 1 thread each     : {one_thread:7.1f} s")
    print(f"one after another, default threads   : {all_threads:7.1f} s")
    print(f"parallel launcher (1 process a core) : {parallel:7.1f} s")
    print(f"speed-up over 1-thread sequential     : {one_thread / parallel:7.2f}x")
    print(f"speed-up over default-thread sequential: {all_threads / parallel:6.2f}x")


if __name__ == "__main__":
    main()
