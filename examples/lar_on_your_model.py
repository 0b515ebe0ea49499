"""LAR on a model this project did not write: a small torch.nn classifier trained on a toy task.

    python examples/lar_on_your_model.py [STEPS]   (200 training steps by default)

Attach probes by name pattern, run no-grad passes over the data you care about, read a table.
The attention's `2.self_attn.out_proj` comes out with no rows and a note: nn.MultiheadAttention
never calls that nn.Linear (its fused attention reads the weight directly).
"""

import sys

import torch
from torch import nn

from grokking.lar import LARProbe, attach_probes

argument = sys.argv[1] if len(sys.argv) > 1 else "200"  # the tests pass fewer: LAR rises early
if not argument.isdigit():
    sys.exit(f"STEPS: a whole number of training steps, got {argument!r}")
training_steps = int(argument)
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


def measure() -> None:
    """One no-grad pass over the inputs, in eval mode (no dropout); only it is recorded."""
    probes.reset()
    head.reset()
    model.eval()
    with torch.no_grad():
        for batch in inputs.split(128):
            model(batch)
    model.train()


def train(steps: int) -> None:
    """Full-batch AdamW; these passes run with grad, so the probes ignore them."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(steps):
        loss = nn.functional.cross_entropy(model(inputs), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


# "*": every nn.Linear; glob patterns on qualified names pick some, e.g. ["0", "2.linear*"].
# Leaving the `with` block removes the hooks.
with attach_probes(model, "*") as probes, LARProbe(model[4], keep_gram=True) as head:
    measure()
    before = probes.table().set_index("name")["lar"]
    train(training_steps)
    measure()
    table = probes.table()
    k = head.summary()["k_lar"]  # keep_gram: spectra and the spectral summary too
    head_line = f"head: LAR {head.value():.3f}, k_LAR {k:.1f} of {head.in_features}"

table["lar_at_init"] = table["name"].map(before)
print(table.drop(columns="note").to_string(index=False))
for name, note in zip(table["name"], table["note"], strict=True):
    if note:
        print(f"{name}: {note}")
print(head_line)
