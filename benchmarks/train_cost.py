"""Where the trainer's time goes at the default setting, measured in one run.

Prints the training step time, its achieved FLOP/s against a single-thread fp32 matmul peak
measured in this process, and the share of training time (per `eval_every` epochs) spent in
evaluation + LAR, LAR alone (unembedding; every matrix), checkpointing and logging.

    python benchmarks/train_cost.py [--threads 1] [--epochs 5] [key=value ...]

Extra key=value pairs override the default config (e.g. task.p=53 batch_size=128).
"""

import argparse
import logging
import statistics
import tempfile
import time

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from grokking.config import LarLayers
from grokking.train import load_config
from grokking.training import Trainer, evaluate


def seconds(fn, repeat=5):
    """Median wall time of `fn()` over `repeat` calls, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def matmul_flops(m, k, n):
    """Achieved FLOP/s of an fp32 [m, k] x [k, n] matmul in this process."""
    a, b = torch.randn(m, k), torch.randn(k, n)
    return 2 * m * k * n / seconds(lambda: torch.mm(a, b), repeat=10)


def step_flops(trainer):
    batch = torch.arange(trainer.cfg.batch_size) % len(trainer.train_y)
    with FlopCounterMode(display=False) as counter:
        loss = F.cross_entropy(trainer.model(trainer.train_x[batch]), trainer.train_y[batch])
        loss.backward()
    trainer.model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=5, help="epochs timed for the step time")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    cfg = load_config([f"threads={args.threads}", *args.overrides])
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    peak = matmul_flops(1024, 1024, 1024)

    with tempfile.TemporaryDirectory() as run_dir:
        trainer = Trainer(cfg, run_dir)
        steps_per_epoch = -(-len(trainer.train_y) // cfg.batch_size)
        trainer._train_epoch()  # warm-up
        start = time.perf_counter()
        for _ in range(args.epochs):
            trainer._train_epoch()
        epoch_s = (time.perf_counter() - start) / args.epochs
        step_s = epoch_s / steps_per_epoch
        flops = step_flops(trainer)
        interval_s = cfg.eval_every * epoch_s  # training time between two evaluations
        rows = cfg.batch_size * cfg.model.seq_len  # the MLP's first matmul, at the model's shape
        model_mm = matmul_flops(rows, cfg.model.d_model, cfg.model.d_ff)

        def plain_evaluation():
            for x, y in ((trainer.val_x, trainer.val_y), (trainer.train_x, trainer.train_y)):
                evaluate(trainer.model, x, y, cfg.eval_batch_size)

        def hooks(on: bool):
            for probe in [trainer.unembed_probe, *trainer.matrix_probes.probes.values()]:
                probe.remove()
                if on:
                    probe._handle = probe.module.register_forward_hook(probe._record)

        t_eval_all = seconds(trainer._evaluate)  # evaluation + LAR of every matrix + read-out
        hooks(False)
        t_plain = seconds(plain_evaluation)
        trainer.unembed_probe._handle = trainer.model.unembed.register_forward_hook(
            trainer.unembed_probe._record
        )
        t_unembed = seconds(plain_evaluation) + seconds(trainer.unembed_probe.summary)
        hooks(True)
        t_save = seconds(trainer._save_last)
        log = logging.getLogger("grokking.bench")
        log.addHandler(logging.FileHandler(f"{run_dir}/bench.log"))
        log.setLevel(logging.INFO)
        log.propagate = False  # to the file only, as the trainer's file log
        t_log = seconds(lambda: log.info("epoch %d  train_acc %.3f  lar %.4f", 1, 0.5, 0.6))

    n_probed = len(trainer.matrix_probes.probes) if cfg.lar_layers == LarLayers.all else 1
    print(
        f"config: task {cfg.task.name} p={cfg.task.p}, batch {cfg.batch_size}, "
        f"{len(trainer.train_y)} train rows, {steps_per_epoch} steps/epoch, "
        f"eval every {cfg.eval_every} epochs, {args.threads} thread(s)"
    )
    print(f"training step              : {step_s * 1e3:8.2f} ms  ({epoch_s:.3f} s/epoch)")
    print(f"step FLOPs (fwd+bwd)       : {flops / 1e9:8.3f} GFLOP")
    print(f"achieved                   : {flops / step_s / 1e9:8.2f} GFLOP/s")
    print(f"matmul peak (1024^3 fp32)  : {peak / 1e9:8.2f} GFLOP/s")
    print(f"step / matmul peak         : {flops / step_s / peak:8.1%}")
    print(
        f"model-shaped matmul / peak : {model_mm / peak:8.1%}  ({rows}x{cfg.model.d_model} @ "
        f"{cfg.model.d_model}x{cfg.model.d_ff}: the ceiling for this model's kernels)"
    )
    print(f"per {cfg.eval_every} epochs of training  : {interval_s:8.2f} s")
    share = lambda t: f"{t * 1e3:8.1f} ms = {t / interval_s:6.2%} of training"  # noqa: E731
    print(f"evaluation + LAR ({n_probed:2d} mats): {share(t_eval_all)}")
    print(f"evaluation alone           : {share(t_plain)}")
    print(f"LAR, unembedding only      : {share(max(t_unembed - t_plain, 0.0))}")
    print(f"LAR, every matrix          : {share(max(t_eval_all - t_plain, 0.0))}")
    print(f"checkpoint + metrics write : {share(t_save)}")
    print(f"one log line               : {share(t_log)}")


if __name__ == "__main__":
    main()
