"""Where the trainer's time goes at the default setting, measured in one run.

Prints the training step time (beside the same step computing every position of every layer, as
the trainer did before, and beside a plain one-run loop over `Transformer`), its achieved FLOP/s
against a single-thread fp32 matmul peak measured in this process, and the share of training time
(per `eval_every` epochs) spent in evaluation + LAR, LAR alone (unembedding; every matrix),
saving a resume point and logging.

    python benchmarks/train_cost.py [--threads 1] [--epochs 3] [--rounds 3] [key=value ...]

Extra key=value pairs override the default config (e.g. task.p=53 batch_size=128).
"""

import argparse
import logging
import statistics
import tempfile
import time

import torch
from packed_throughput import plain_loop, time_epochs  # a sibling script of benchmarks/
from torch.utils.flop_counter import FlopCounterMode

from grokking.algorithmic.engine import Engine
from grokking.algorithmic.record import GrokkingRecord
from grokking.algorithmic.stacked import MatrixSums, StackedTransformer
from grokking.train import load_config


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


def every_position(engine: Engine, fn):
    """`fn()` with the engine's model computing every position of every layer, as the trainer
    did before it computed the last layer at the last position only (an empty MatrixSums asks
    for the full forward and records nothing)."""
    model = engine.model
    model.features = lambda tokens, sums=None: StackedTransformer.features(
        model, tokens, sums if sums is not None else MatrixSums(())
    )
    try:
        return fn()
    finally:
        del model.features


def step_flops(engine: Engine) -> int:
    batch = torch.arange(engine.batch_size)[None] % engine.train_y.shape[1]
    tokens = torch.gather(engine.train_x, 1, batch[..., None].expand(-1, -1, engine.seq_len))
    with FlopCounterMode(display=False) as counter:
        losses, term = engine._loss(tokens, torch.gather(engine.train_y, 1, batch))
        (losses + term).sum().backward()
    engine.optimizer.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=3, help="epochs timed in each round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of each way, in turns")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    cfg = load_config([f"threads={args.threads}", "device=cpu", *args.overrides])
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    peak = matmul_flops(1024, 1024, 1024)

    engine = Engine([cfg], torch.device("cpu"))
    n_train = engine.train_y.shape[1]
    steps_per_epoch = -(-n_train // cfg.batch_size)
    plain_epoch, _ = plain_loop(cfg, torch.device("cpu"))
    ways = {  # timed in turns, so that a load on the machine weighs on each alike
        "engine": engine.advance,
        "every position": lambda: every_position(engine, engine.advance),
        "plain": plain_epoch,
    }
    epoch_times = {name: [] for name in ways}
    for _ in range(args.rounds):
        for name, epoch in ways.items():
            epoch_times[name].append(time_epochs(epoch, args.epochs, engine.device))
    epoch_s, full_epoch_s, plain_epoch_s = (statistics.median(epoch_times[n]) for n in ways)
    step_s = epoch_s / steps_per_epoch
    flops = step_flops(engine)
    full_flops = every_position(engine, lambda: step_flops(engine))
    interval_s = cfg.eval_every * epoch_s  # training time between two evaluations
    rows = cfg.batch_size * cfg.model.seq_len  # the MLP's first matmul, at the model's shape
    model_mm = matmul_flops(rows, cfg.model.d_model, cfg.model.d_ff)

    def passes(sums):  # the evaluation's two passes, recording `sums` on the training set
        engine._pass(engine.val_x, engine.val_y, None)
        engine._pass(engine.train_x, engine.train_y, sums)

    t_eval_all = seconds(engine.evaluate)  # evaluation + LAR of every matrix + read-out
    t_plain = seconds(lambda: passes(None))
    t_unembed = seconds(lambda: passes(MatrixSums(["unembed"], grams=["unembed"])))
    with tempfile.TemporaryDirectory() as run_dir:
        record = GrokkingRecord(cfg, run_dir, engine.device)
        record.record(engine.evaluate()[0], lambda: engine.model_state(0))
        t_save = seconds(lambda: record.save_last(engine.member_state(0)))
        t_log = seconds(lambda: record.log("epoch 1  train_acc 0.5  lar 0.6", console=False))
        record.close()

    print(
        f"config: task {cfg.task.name} p={cfg.task.p}, batch {cfg.batch_size}, "
        f"{n_train} train rows, {steps_per_epoch} steps/epoch, "
        f"eval every {cfg.eval_every} epochs, {args.threads} thread(s)"
    )
    print(f"training step              : {step_s * 1e3:8.2f} ms  ({epoch_s:.3f} s/epoch)")
    full_step_s = full_epoch_s / steps_per_epoch
    print(
        f"  every position (as before): {full_step_s * 1e3:8.2f} ms  -> "
        f"{full_step_s / step_s:.2f}x fewer ms/step now; "
        f"FLOPs {full_flops / 1e9:.3f} -> {flops / 1e9:.3f} GFLOP"
    )
    print(
        f"  plain one-run loop       : {plain_epoch_s / steps_per_epoch * 1e3:8.2f} ms  "
        f"(nn.Module Transformer, fused AdamW): engine/plain = {epoch_s / plain_epoch_s:.2f}"
    )
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
    print(f"evaluation + LAR ({len(engine.matrices):2d} mats): {share(t_eval_all)}")
    print(f"evaluation alone           : {share(t_plain)}")
    print(f"LAR, unembedding only      : {share(max(t_unembed - t_plain, 0.0))}")
    print(f"LAR, every matrix          : {share(max(t_eval_all - t_plain, 0.0))}")
    print(
        f"resume point (last.pt etc.): {share(t_save)}  (every save_every_s={cfg.save_every_s:g})"
    )
    print(f"one log line               : {share(t_log)}")


if __name__ == "__main__":
    main()
