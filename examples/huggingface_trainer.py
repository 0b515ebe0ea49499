"""LAR in a HuggingFace `Trainer`: a small Gemma-2 built from a config (nothing downloaded),
trained on random token sequences, with `LARCallback` logging the unembedding's LAR at every
step to the log history and to TensorBoard, and the validation-free overfitting alarm armed.

    python examples/huggingface_trainer.py [OUTPUT_DIR]     (default: outputs/examples/hf)
    tensorboard --logdir outputs/examples/hf                 (train/lar, train/lar_alarm)

Needs the `integrations` extra: pip install -e ".[integrations]".
"""

import sys

import torch
from tiny_gemma import LENGTH, VOCAB, tiny_gemma  # examples/tiny_gemma.py
from transformers import Trainer, TrainingArguments

from grokking.integrations.huggingface import LARCallback

output_dir = sys.argv[1] if len(sys.argv) > 1 else "outputs/examples/hf"
torch.manual_seed(0)
model = tiny_gemma(hidden_size=64, layers=2)
tokens = torch.randint(0, VOCAB, (64, LENGTH))
dataset = [{"input_ids": row, "labels": row} for row in tokens]

args = TrainingArguments(
    output_dir=output_dir, max_steps=20, per_device_train_batch_size=8, learning_rate=3e-3,
    logging_steps=5, report_to="tensorboard", save_strategy="no", use_cpu=True,
    disable_tqdm=True,
)  # fmt: skip
# every_linear=True would log each dense layer's LAR too, as lar/<name>;
# stop_on_alarm=True would end training when the alarm fires. At its defaults the alarm reads
# 50-step means, so it cannot fire in these 20 steps: lar_alarm stays 0 here.
trainer = Trainer(model=model, args=args, train_dataset=dataset)
# attach: first among the trainer's callbacks, so lar is in the logs before TensorBoard writes them
LARCallback().attach(trainer)
trainer.train()

for row in trainer.state.log_history:
    if "lar" in row:
        print(f"step {row['step']:3d}  loss {row['loss']:.3f}  lar {row['lar']:.4f}  "
              f"alarm {row['lar_alarm']:.0f}")  # fmt: skip
