"""LAR on a model this project did not write: a small torch.nn classifier trained on a toy task.

    python examples/lar_on_your_model.py

Attach probes by name pattern, run no-grad passes over the data you care about, read a table.
"""

import torch
from torch import nn

from grokking.lar import LARProbe, attach_probes

torch.manual_seed(0)
model = nn.Sequential(
    nn.Linear(16, 64),
    nn.ReLU(),
    nn.TransformerEncoderLayer(64, nhead=4, dim_feedforward=128, batch_first=True),
    nn.Flatten(),
    nn.Linear(64 * 8, 2),
)
inputs = torch.randn(512, 8, 16)
labels = (inputs[:, :, 0].sum(dim=1) > 0).long()  # depends on one input direction only

probes = attach_probes(model, ["0", "2.linear*", "4"])  # glob patterns on qualified names
head = LARProbe(model[4], keep_gram=True)  # with XᵀX: spectra and the spectral summary too


def measure() -> None:
    probes.reset()
    head.reset()
    with torch.no_grad():  # only no-grad passes are recorded
        for batch in inputs.split(128):
            model(batch)


measure()
before = probes.table().set_index("name")["lar"]

optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
for _ in range(200):  # training passes run with grad: the probes ignore them
    loss = nn.functional.cross_entropy(model(inputs), labels)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()

measure()
table = probes.table()
table["lar_at_init"] = table["name"].map(before)
print(table.to_string(index=False))
k = head.summary()["k_lar"]
print(f"head: LAR {head.value():.3f}, k_LAR {k:.1f} of {head.module.in_features}")
probes.remove()
head.remove()
