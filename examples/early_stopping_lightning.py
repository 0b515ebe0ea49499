"""Early stopping without a validation set in Lightning: `LAREarlyStopping` stops the fit when
LAR says the model overfits, and restores the weights of the step it selected. The
LightningModule wraps a small Gemma-2 built from a config (nothing downloaded), trained on 64
noisy copies of a token pattern, few enough that LAR peaks and declines within 100 steps; there
is no val_dataloader. A toy: it shows the mechanics; whether the kept step is the best one is
measured on the language-model runs (docs/method.md §5, "Stopping without a validation set").

    python examples/early_stopping_lightning.py [LOG_DIR]   (outputs/examples/lightning_stop)

Needs the `integrations` extra: pip install -e ".[integrations]".
"""

import sys

import lightning
import torch
from tiny_gemma import noisy_pattern, tiny_gemma  # examples/tiny_gemma.py

from grokking.integrations.lightning import LAREarlyStopping

log_dir = sys.argv[1] if len(sys.argv) > 1 else "outputs/examples/lightning_stop"


class LanguageModel(lightning.LightningModule):
    def __init__(self):
        super().__init__()
        self.model = tiny_gemma(hidden_size=32, layers=1)

    def training_step(self, batch, batch_idx):
        (tokens,) = batch
        return self.model(input_ids=tokens, labels=tokens).loss

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=1e-2)


torch.manual_seed(0)
tokens = noisy_pattern(64)  # 64 noisy copies of a token pattern
loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(tokens), batch_size=8)
# window=10: this fit is 200 steps, not the thousands the default 50-step window is made for
stopper = LAREarlyStopping(window=10)
trainer = lightning.Trainer(
    max_steps=200, callbacks=[stopper], default_root_dir=log_dir, accelerator="cpu",
    logger=False, enable_checkpointing=False, enable_progress_bar=False,
    enable_model_summary=False,
)  # fmt: skip
trainer.fit(LanguageModel(), loader)

rule = stopper.rule
print(f"stopped at step {rule.stopped_at} of 200 (epoch {stopper.stopped_epoch}), "
      f"kept step {rule.selected}")  # fmt: skip
print(f"why: {rule.reason}")
