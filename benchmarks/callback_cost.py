"""What LARCallback costs a training step, measured in one process: the HuggingFace Trainer and
Lightning each train the language-model family's default Gemma-2 (vocabulary 1,024, hidden 128,
2 layers, context 128, batch 32; built from a config) without the callback, with it (the
unembedding), and with `every_linear=True`; the rounds alternate so that the machine's noise
falls on all three alike. Prints the median seconds per step of each and the overhead ratios,
and, since on a shared machine those ratios are only as good as its noise (a few percent between
identical runs), the time spent inside LAR's own code (the forward hooks and the callback's
methods, timed where they run) per step, as a share of the step without the callback.

    python benchmarks/callback_cost.py                 # 5 rounds of 20 steps, one thread
    python benchmarks/callback_cost.py --rounds 9 --steps 40 --threads 2
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import logging
import statistics
import time
import warnings

import lightning
import torch
import transformers

from grokking.integrations import huggingface
from grokking.integrations import lightning as lightning_callback
from grokking.lar import LARProbe
from grokking.lm.config import LMConfig
from grokking.lm.model import build_model

SETUPS = {"without": None, "unembedding": {}, "every dense layer": {"every_linear": True}}
# LAR's own code in each run: the probes' forward hook and the callback's methods
TIMED = {
    "HF Trainer": (huggingface.LARCallback, ("on_step_begin", "on_pre_optimizer_step", "on_log")),
    "Lightning": (lightning_callback.LARCallback, ("on_train_batch_start",
                                                   "on_before_optimizer_step")),
}  # fmt: skip


@contextlib.contextmanager
def timing_inside(callback_class, methods):
    """Patch LARProbe's forward hook and `methods` of `callback_class` to add their wall time
    to the list yielded (one float, seconds)."""
    spent = [0.0]
    originals = [(LARProbe, "_record")] + [(callback_class, name) for name in methods]

    def timed(function):
        @functools.wraps(function)
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                spent[0] += time.perf_counter() - start

        return wrapper

    saved = [(owner, name, getattr(owner, name)) for owner, name in originals]
    for owner, name, function in saved:
        setattr(owner, name, timed(function))
    try:
        yield spent
    finally:
        for owner, name, function in saved:
            setattr(owner, name, function)


def model_and_batches(steps: int):
    cfg = LMConfig()
    torch.manual_seed(0)
    model = build_model(cfg.model, vocab_size=cfg.data.vocab_size, seed=0)
    tokens = torch.randint(0, cfg.data.vocab_size, (cfg.batch_size * steps, cfg.model.context))
    return model, cfg.batch_size, [{"input_ids": row, "labels": row} for row in tokens]


def hf_seconds_per_step(options, steps: int, folder: str) -> float:
    model, batch, rows = model_and_batches(steps)
    args = transformers.TrainingArguments(
        output_dir=folder, max_steps=steps, per_device_train_batch_size=batch, logging_steps=10,
        report_to="none", save_strategy="no", use_cpu=True, disable_tqdm=True,
    )  # fmt: skip
    callbacks = [] if options is None else [huggingface.LARCallback(**options)]
    trainer = transformers.Trainer(model=model, args=args, train_dataset=rows, callbacks=callbacks)
    start = time.perf_counter()
    trainer.train()
    return (time.perf_counter() - start) / steps


class Wrapped(lightning.LightningModule):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def training_step(self, batch, batch_idx):
        return self.model(input_ids=batch["input_ids"], labels=batch["labels"]).loss

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=1e-3)


def lightning_seconds_per_step(options, steps: int, folder: str) -> float:
    model, batch, rows = model_and_batches(steps)
    callbacks = [] if options is None else [lightning_callback.LARCallback(**options)]
    trainer = lightning.Trainer(
        max_steps=steps, accelerator="cpu", logger=False, callbacks=callbacks,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        default_root_dir=folder,
    )  # fmt: skip
    loader = torch.utils.data.DataLoader(rows, batch_size=batch)
    start = time.perf_counter()
    trainer.fit(Wrapped(model), loader)
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--folder", default="/tmp/callback_cost")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    logging.disable(logging.WARNING)
    warnings.filterwarnings("ignore")
    for trainer, measure in (("HF Trainer", hf_seconds_per_step),
                             ("Lightning", lightning_seconds_per_step)):  # fmt: skip
        measure(None, 2, args.folder)  # warm-up: imports, first allocations
        times = {name: [] for name in SETUPS}
        inside = {name: [] for name in SETUPS}
        for _ in range(args.rounds):
            for name, options in SETUPS.items():
                with timing_inside(*TIMED[trainer]) as spent:
                    times[name].append(measure(options, args.steps, args.folder))
                inside[name].append(spent[0] / args.steps)
        base = statistics.median(times["without"])
        print(f"{trainer}: {base * 1e3:.1f} ms per step without the callback")
        for name in list(SETUPS)[1:]:
            median, own = statistics.median(times[name]), statistics.median(inside[name])
            print(f"  LAR of {name}: {median * 1e3:.1f} ms per step, overhead "
                  f"{median / base - 1:+.2%}; inside LAR's code {own * 1e3:.2f} ms per step, "
                  f"{own / base:.2%} of a step")  # fmt: skip


if __name__ == "__main__":
    main()
