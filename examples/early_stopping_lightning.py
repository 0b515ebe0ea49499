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
from transformers import Gemma2Config, Gemma2ForCausalLM

from grokking.integrations.lightning import LAREarlyStopping

log_dir = sys.argv[1] if len(sys.argv) > 1 else "outputs/examples/lightning_stop"


class LanguageModel(lightning.LightningModule):
    def __init__(self):
        super().__init__()
        config = Gemma2Config(
            vocab_size=256, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
            num_attention_heads=2, num_key_value_heads=1, head_dim=16, max_position_embeddings=64,
        )  # fmt: skip
        self.model = Gemma2ForCausalLM(config)

    def training_step(self, batch, batch_idx):
        (tokens,) = batch
        return self.model(input_ids=tokens, labels=tokens).loss

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=1e-2)


torch.manual_seed(0)
noise = torch.randint(0, 8, (64, 32), generator=torch.Generator().manual_seed(0))
tokens = (torch.arange(32) * 7 + noise) % 256  # a fixed token pattern plus noise
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
