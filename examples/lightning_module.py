"""LAR in Lightning: a small classifier (your LightningModule) trained with `LARCallback`, which
logs the LAR of its last nn.Linear (or the layer you name) and of every dense layer at every
step through `LightningModule.log`, so it reaches whatever logger the trainer has (here CSV).

    python examples/lightning_module.py [LOG_DIR]     (default: outputs/examples/lightning)

Needs the `integrations` extra: pip install -e ".[integrations]".
"""

import sys

import lightning
import pandas as pd
import torch
from lightning.pytorch.loggers import CSVLogger
from torch import nn

from grokking.integrations.lightning import LARCallback

log_dir = sys.argv[1] if len(sys.argv) > 1 else "outputs/examples/lightning"


class Classifier(lightning.LightningModule):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU())
        self.head = nn.Linear(64, 2)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self.head(self.body(x)), y)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-3)


torch.manual_seed(0)
x = torch.randn(1024, 16)
y = (x[:, 0] > 0).long()  # depends on one input direction only
loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=64)
logger = CSVLogger(log_dir)
trainer = lightning.Trainer(
    max_epochs=3, logger=logger, log_every_n_steps=1, accelerator="cpu",
    # the alarm at its defaults reads 50-step means: in these 48 steps lar_alarm stays 0
    callbacks=[LARCallback(module="head", every_linear=True)],
    enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
)  # fmt: skip
trainer.fit(Classifier(), loader)

metrics = pd.read_csv(f"{logger.log_dir}/metrics.csv")
columns = ["step", "lar", "lar/body.0", "lar/body.2", "lar_alarm"]
print(metrics[columns].iloc[::8].to_string(index=False))
