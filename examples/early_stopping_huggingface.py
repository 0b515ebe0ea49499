"""Early stopping without an evaluation dataset in a HuggingFace `Trainer`: `LAREarlyStopping`
stops training when LAR says the model overfits, and restores the weights of the step it
selected. A small Gemma-2 built from a config (nothing downloaded) trains on 64 noisy copies of a
token pattern, few enough that LAR peaks and declines within 100 steps. A toy: it shows the
mechanics; whether the kept step is the best one is measured on the language-model runs
(docs/method.md §5, "Stopping without a validation set").

    python examples/early_stopping_huggingface.py [OUTPUT_DIR]   (outputs/examples/hf_stop)

Needs the `integrations` extra: pip install -e ".[integrations]".
"""

import sys

import torch
from tiny_gemma import noisy_pattern, tiny_gemma  # examples/tiny_gemma.py
from transformers import Trainer, TrainingArguments

from grokking.integrations.huggingface import LAREarlyStopping

output_dir = sys.argv[1] if len(sys.argv) > 1 else "outputs/examples/hf_stop"
torch.manual_seed(0)
model = tiny_gemma(hidden_size=32, layers=1)
dataset = [{"input_ids": row, "labels": row} for row in noisy_pattern(64)]

args = TrainingArguments(
    output_dir=output_dir, max_steps=200, per_device_train_batch_size=8, learning_rate=1e-2,
    logging_steps=10, report_to="none", save_strategy="no", use_cpu=True, disable_tqdm=True,
)  # fmt: skip
trainer = Trainer(model=model, args=args, train_dataset=dataset)
# window=10: this run is 200 steps, not the thousands the default 50-step window is made for
stopper = LAREarlyStopping(window=10).attach(trainer)
trainer.train()

rule = stopper.rule
print(f"stopped at step {rule.stopped_at} of {args.max_steps}, kept step {rule.selected}")
print(f"why: {rule.reason}")
