"""The language-model engine: one run (a pack of one) trained a step at a time. Each step reads
its batch of training windows (data.batch_indices), computes the loss and the unembedding's LAR
from the same forward pass (a probe on `lm_head`, so LAR costs two sums of squares), clips the
gradient and steps the optimizers along the schedule. An evaluation measures the validation
loss on the fixed validation batch, and on the fixed probe batch of training windows the LAR of
every dense matrix and the unembedding's spectral summary, and the baselines `signals` names
(grokking/signals.py)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from grokking import signals
from grokking.lar import LARProbe, ProbeSet, summary_from_spectra
from grokking.lm.config import LarLayers, LMConfig
from grokking.lm.data import batch_indices, dataset
from grokking.lm.model import UNEMBED, build_model, matrix_role
from grokking.lm.optim import lr_factor, make_optimizers, set_lr
from grokking.lm.regularize import RunRegularizer
from grokking.runs.config import ConfigError


class LMEngine:
    """Model, optimizers and data of one language-model run (the loop's engine protocol)."""

    size = 1

    def __init__(self, cfgs: Sequence[LMConfig], device: torch.device):
        if len(cfgs) != 1:
            raise ConfigError("language-model runs train one at a time, not in packs")
        self.cfg = cfg = cfgs[0]
        self.device = device
        self.data = dataset(cfg)
        vocab_size = self.data.meta["vocab_size"]
        self.model = build_model(cfg.model, vocab_size, cfg.seed).to(device)
        self.optimizers = make_optimizers(self.model, cfg.optim)
        self.step = 0
        # LAR of every training step, from the step's own forward pass
        self.unembed = LARProbe(self.model.get_output_embeddings(), record_with_grad=True)
        self.regularizer = RunRegularizer(cfg.regularize, self.model, cfg.regularize.window)

    # --- training -----------------------------------------------------------------------------
    def _loss(self, windows: torch.Tensor) -> torch.Tensor:
        windows = windows.to(self.device)
        logits = self.model(input_ids=windows[:, :-1]).logits
        return F.cross_entropy(logits.flatten(0, 1).float(), windows[:, 1:].flatten())

    def lr_at(self, step: int) -> float:
        return self.cfg.optim.lr * lr_factor(step, self.cfg.max_steps, self.cfg.optim)

    def advance(self) -> list[dict]:
        """One step; its loss, the unembedding's LAR on its batch, its rate and gradient norm."""
        cfg = self.cfg
        self.model.train()
        rows = batch_indices(self.step, cfg.batch_size, self.data.n_sequences, cfg.seed)
        set_lr(self.optimizers, lr_factor(self.step, cfg.max_steps, cfg.optim))
        self.unembed.reset()
        loss = self._loss(self.data.train[rows])
        lar = self.unembed.value()
        (loss + self.regularizer.term(lar)).backward()
        self.regularizer.filter_gradients()  # on the raw gradient, as Grokfast's code does
        clip = cfg.optim.grad_clip or float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)
        for optimizer in self.optimizers:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        lr = self.lr_at(self.step)
        self.step += 1
        return [{"loss": loss.item(), "lar": lar, "lr": lr, "grad_norm": grad_norm.item()}]

    # --- measuring ----------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self) -> list[dict]:
        """The validation loss; on the probe batch its loss, every probed matrix's LAR, and the
        unembedding's spectral summary (p, q, ρ, p₁, q₁, effective rank ...)."""
        self.model.eval()
        batch = self.cfg.batch_size
        chunks = self.data.val.split(batch)  # the last may be smaller: weigh each by its rows
        val_loss = sum(self._loss(chunk) * len(chunk) for chunk in chunks) / len(self.data.val)
        pattern = "*" if self.cfg.lar_layers == LarLayers.all else UNEMBED
        with (
            ProbeSet(self.model, pattern) as probes,
            LARProbe(self.model.get_output_embeddings(), keep_gram=True) as unembed,
        ):
            probe_loss = self._loss(self.data.probe)
            p, q, s = unembed.spectra()
            matrix_lar = {
                name: dict(zip(("layer", "role"), matrix_role(name), strict=True))
                | {"lar": probe.value()}
                for name, probe in probes
            }
        summary = summary_from_spectra(p, q, s)
        row = {"val_loss": val_loss.item(), "probe_loss": probe_loss.item()}
        row["probe_lar"] = summary.pop("lar")  # the step rows' `lar` is the training batch's
        row |= self._signals()
        return [row | summary | {"p1": p[0].item(), "q1": q[0].item(), "matrix_lar": matrix_lar}]

    def _signals(self) -> dict[str, float]:
        """The baselines `signals` names, on the probe batch of training windows (none: {})."""
        names = [signal.value for signal in self.cfg.signals]
        if not names:
            return {}
        return signals.measure(self.model, self._loss, self.data.probe, names, UNEMBED)

    def after_evaluation(self, member: int, result: dict) -> dict:
        """A language model's regularizer is on from the start: the row says so."""
        return {"regularizing": float(self.regularizer.regularizing)}

    # --- the member's state -------------------------------------------------------------------
    def model_state(self, member: int) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}

    def member_state(self, member: int) -> dict:
        """Weights, every optimizer's state and the step: all a resumed run needs (the batches
        are a function of the step)."""
        return {
            "model": self.model_state(member),
            "optimizers": [optimizer.state_dict() for optimizer in self.optimizers],
            "optimizer_step": self.step,
            "regularize": self.regularizer.state(),
        }

    def load_member_states(self, states: Sequence[dict]) -> None:
        (state,) = states
        self.model.load_state_dict(state["model"])
        for optimizer, saved in zip(self.optimizers, state["optimizers"], strict=True):
            optimizer.load_state_dict(saved)
        self.step = state["optimizer_step"]
        self.regularizer.load(state.get("regularize"))

    def keep(self, members: Sequence[int]) -> None:
        """A pack of one keeps its one member."""
