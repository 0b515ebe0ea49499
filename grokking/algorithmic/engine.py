"""The training engine: R ≥ 1 runs of the same shapes trained as one stacked model. It knows
nothing of files, events or stop rules (that is `record.GrokkingRecord`): it trains an epoch,
measures the full splits and every dense matrix's LAR per member, and gives and takes each
member's state.

Each member computes what it would compute alone: its own initialisation (built from its own
config, `build.build`), its own split, its own batch order (a generator seeded with its seed), its
own loss (the pack's loss is the sum of the members' mean losses, so each member's gradient is its
own), and AdamW, which acts element by element, on its own slice of the stacked parameters.

On CUDA the training step is captured once per batch shape as a CUDA graph (static input buffers,
fused AdamW with `capturable=True`), so a step costs one launch whatever R is.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from grokking.algorithmic.build import build
from grokking.algorithmic.config import LarLayers, Precision, TrainConfig
from grokking.algorithmic.model import matrix_role
from grokking.algorithmic.regularize import PackRegularizer
from grokking.algorithmic.stacked import MatrixSums, StackedTransformer
from grokking.lar import k_lar, lar_from_sums, spectra_from_gram, summary_from_spectra

log = logging.getLogger("grokking")

WARMUP_STEPS_BEFORE_CAPTURE = 3  # eager steps on a side stream before the graph is captured


class Engine:
    """Stacked model, optimizer and data of the runs `cfgs` (shapes must agree: see
    `packing.pack_key`). Members are addressed by their index in the current pack."""

    def __init__(self, cfgs: Sequence[TrainConfig], device: torch.device):
        self.device = device
        first = cfgs[0]
        self.optim_cfg, self.batch_size = first.optim, first.batch_size
        self.eval_batch_size = first.eval_batch_size
        self.precision = first.precision
        if device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = self.precision == Precision.tf32
            torch.backends.cudnn.allow_tf32 = self.precision == Precision.tf32
        built = [build(cfg, device) for cfg in cfgs]
        self.train_x, self.train_y, self.val_x, self.val_y = (
            torch.stack([splits[i] for splits, _ in built]) for i in range(4)
        )
        self.model = StackedTransformer([model for _, model in built])
        self.matrices = self.model.matrices if first.lar_layers == LarLayers.all else ["unembed"]
        self.batch_orders = [torch.Generator().manual_seed(cfg.seed) for cfg in cfgs]
        self.step = 0
        self.regularizer = PackRegularizer(cfgs, list(self.model.parameters()))
        self._make_optimizer()

    @property
    def size(self) -> int:
        return self.model.size

    # --- optimizer ----------------------------------------------------------------------------
    def _make_optimizer(self, state: dict | None = None) -> None:
        o, cuda = self.optim_cfg, self.device.type == "cuda"
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(),
            # a tensor, so a captured graph reads the warm-up's current value
            lr=torch.tensor(o.lr, device=self.device) if cuda else o.lr,
            betas=(o.beta1, o.beta2),
            weight_decay=o.weight_decay,
            fused=self.device.type in ("cpu", "cuda"),  # one kernel: 3x faster step on CPU
            capturable=cuda,
        )
        if state is not None:
            self.optimizer.load_state_dict(
                {"state": state, "param_groups": self.optimizer.state_dict()["param_groups"]}
            )
        self._graphs: dict[int, _CapturedStep] = {}  # a new optimizer or model: capture again

    def lr_at(self, step: int) -> float:
        """Linear warm-up over `warmup_steps`, then constant; `step` counts the steps done."""
        warmup = max(self.optim_cfg.warmup_steps, 1)
        return self.optim_cfg.lr * min(1.0, (step + 1) / warmup)

    def _set_lr(self) -> None:
        group = self.optimizer.param_groups[0]
        lr = self.lr_at(self.step)
        if isinstance(group["lr"], torch.Tensor):
            group["lr"].fill_(lr)
        else:
            group["lr"] = lr

    # --- training -----------------------------------------------------------------------------
    def _kernels(self) -> contextlib.ExitStack:
        """How the forward runs: bf16 autocast when asked and, on a CPU, PyTorch's plain ("math")
        attention kernel, which at 4 positions is ~2x faster there than the flash kernel made
        for long sequences (measured: benchmarks/train_cost.py)."""
        kernels = contextlib.ExitStack()
        if self.precision == Precision.bf16:
            # no weight-cast cache: a captured CUDA graph must recompute the casts at each replay
            kernels.enter_context(
                torch.autocast(self.device.type, dtype=torch.bfloat16, cache_enabled=False)
            )
        if self.device.type == "cpu":
            kernels.enter_context(sdpa_kernel(SDPBackend.MATH))
        return kernels

    def _loss(self, tokens: torch.Tensor, labels: torch.Tensor):
        """Each member's mean cross-entropy on its batch [R], and its regularizer's term [R]
        from the same forward pass."""
        with self._kernels():
            features = self.model.features(tokens)
            logits = self.model.unembed(features)
        losses = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), reduction="none")
        weight = self.model.param("unembed.weight")
        term = self.regularizer.term(features, logits, weight, self.model.parameters())
        return losses.view(labels.shape).mean(dim=1), term

    def _step(self, tokens: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """One optimizer step; each member's cross-entropy (without the term) [R]."""
        losses, term = self._loss(tokens, labels)
        self.optimizer.zero_grad(set_to_none=True)
        (losses + term).sum().backward()
        self.regularizer.filter_gradients(list(self.model.parameters()))
        self.optimizer.step()
        return losses.detach()

    def advance(self) -> list[dict]:
        """One epoch: a shuffled pass over every member's training set; each member's summed
        batch losses as `loss`, to tell a diverged run (one sync per epoch, not per step)."""
        self.model.train()
        n_train = self.train_y.shape[1]
        order = torch.stack([torch.randperm(n_train, generator=g) for g in self.batch_orders])
        order = order.to(self.device)
        loss_sum = torch.zeros(self.size, device=self.device)
        for batch in order.split(self.batch_size, dim=1):
            tokens = torch.gather(self.train_x, 1, batch[..., None].expand(-1, -1, self.seq_len))
            labels = torch.gather(self.train_y, 1, batch)
            self._set_lr()
            if self.device.type == "cuda":
                loss_sum += self._cuda_step(tokens, labels)
            else:
                loss_sum += self._step(tokens, labels)
            self.step += 1
        return [{"loss": loss} for loss in loss_sum.tolist()]

    @property
    def seq_len(self) -> int:
        return self.train_x.shape[-1]

    def _cuda_step(self, tokens: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """A step on CUDA: eager on a side stream for the first steps of each batch shape (as
        graph capture requires), then captured once per shape (full batches, and the epoch's
        last, smaller one) and replayed."""
        rows = tokens.shape[1]
        if rows not in self._graphs:
            self._graphs[rows] = _CapturedStep(self)
        return self._graphs[rows](tokens, labels)

    # --- measuring ----------------------------------------------------------------------------
    @torch.no_grad()
    def _pass(self, tokens, labels, sums: MatrixSums | None) -> tuple[list[float], list[float]]:
        """(mean cross-entropy, accuracy) of every member over all of its rows."""
        self.model.eval()
        loss_sum = torch.zeros(self.size, dtype=torch.float64, device=self.device)
        correct = torch.zeros(self.size, dtype=torch.int64, device=self.device)
        for x, y in zip(
            tokens.split(self.eval_batch_size, dim=1),
            labels.split(self.eval_batch_size, dim=1),
            strict=True,
        ):
            with self._kernels():
                logits = self.model(x, sums)
            losses = F.cross_entropy(logits.flatten(0, 1).double(), y.flatten(), reduction="none")
            loss_sum += losses.view(y.shape).sum(dim=1)
            correct += (logits.argmax(dim=-1) == y).sum(dim=1)
        rows = labels.shape[1]
        return (loss_sum / rows).tolist(), (correct.double() / rows).tolist()

    def evaluate(self) -> list[dict]:
        """Per member: the learning rate, loss and accuracy on the full splits, the unembedding's
        LAR and spectral summary over the entire training set, and `matrix_lar`
        {name: {layer, role, lar}} of every probed matrix over the same pass."""
        val_loss, val_acc = self._pass(self.val_x, self.val_y, None)
        sums = MatrixSums(self.matrices, grams=["unembed"])
        train_loss, train_acc = self._pass(self.train_x, self.train_y, sums)
        lars = {
            name: lar_from_sums(
                sums.sum_y2[name], sums.sum_x2[name], sums.rows[name], self._weight(name)
            ).tolist()
            for name in self.matrices
        }
        unembed = self._weight("unembed").double().cpu()
        grams = sums.grams["unembed"].cpu()
        lr = self.lr_at(self.step)
        results = []
        for r in range(self.size):
            row = {
                "lr": lr,
                "train_loss": train_loss[r],
                "train_acc": train_acc[r],
                "val_loss": val_loss[r],
                "val_acc": val_acc[r],
            }
            row |= summary_from_spectra(*spectra_from_gram(unembed[r], grams[r]))
            row["lar"] = lars["unembed"][r]  # Eq. 1 (the spectral form agrees to ~1e-7)
            row["k_lar"] = k_lar(row["lar"], unembed.shape[-1])
            row["matrix_lar"] = {
                name: dict(zip(("layer", "role"), matrix_role(name), strict=True))
                | {"lar": values[r]}
                for name, values in lars.items()
            }
            results.append(row)
        return results

    def after_evaluation(self, member: int, result: dict) -> dict:
        """The member's record notes this evaluation: its regularizer's switch sees it."""
        return self.regularizer.update(member, self.step, result)

    def _weight(self, name: str) -> torch.Tensor:
        return self.model.param(f"{name}.weight").detach()

    # --- members' state -----------------------------------------------------------------------
    def model_state(self, member: int) -> dict[str, torch.Tensor]:
        """The member's weights under `Transformer`'s names: loads into `Transformer`."""
        return self.model.member_state_dict(member)

    def member_state(self, member: int) -> dict:
        """All a member needs to go on: its weights, its AdamW moments, the step count and its
        batch order — independent of the pack, so it resumes in a pack of any size."""
        moments = {}
        for name, param in zip(self.model.names, self.model.parameters(), strict=True):
            state = self.optimizer.state.get(param, {})
            moments[name] = {
                key: state[key][member].detach().cpu().clone()
                for key in ("exp_avg", "exp_avg_sq")
                if key in state
            }
        return {
            "model": self.model_state(member),
            "optimizer": moments,
            "optimizer_step": self.step,
            "batch_order": self.batch_orders[member].get_state(),
            "regularize": self.regularizer.member_state(member, self.model.names),
        }

    def load_member_states(self, states: Sequence[dict]) -> None:
        """Restore every member from `member_state` dicts (one per member, in order; all at the
        same step)."""
        steps = {state["optimizer_step"] for state in states}
        if len(steps) != 1:
            raise ValueError(f"members of one pack must be at the same step, got {sorted(steps)}")
        self.step = steps.pop()
        for member, state in enumerate(states):
            self.model.load_member_state_dict(member, state["model"])
            self.batch_orders[member].set_state(state["batch_order"])
        self.regularizer.load([state.get("regularize") for state in states], self.model.names)
        if self.step == 0:
            return
        optimizer_state = {}
        for index, name in enumerate(self.model.names):
            optimizer_state[index] = {
                key: torch.stack([state["optimizer"][name][key] for state in states])
                for key in ("exp_avg", "exp_avg_sq")
            } | {"step": torch.tensor(float(self.step))}
        self._make_optimizer(optimizer_state)

    def keep(self, members: Sequence[int]) -> None:
        """Go on with `members` only (indices into the current pack, in order)."""
        if list(members) == list(range(self.size)):
            return
        index = torch.tensor(members, dtype=torch.long, device=self.device)
        old_params = list(self.model.parameters())
        optimizer_state = {}
        for i, param in enumerate(old_params):
            state = self.optimizer.state.get(param)
            if state:
                optimizer_state[i] = {
                    key: value.index_select(0, index) if value.dim() else value
                    for key, value in state.items()
                }
        self.model.keep(members)
        for name in ("train_x", "train_y", "val_x", "val_y"):
            setattr(self, name, getattr(self, name).index_select(0, index))
        self.batch_orders = [self.batch_orders[m] for m in members]
        self.regularizer.keep(index)
        self._make_optimizer(optimizer_state or None)


class _CapturedStep:
    """The engine's training step for one batch shape as one CUDA graph, replayed with the batch
    copied into static buffers. The first steps run eagerly on a side stream (lazy initialisation
    must happen outside a capture); if capture fails, training goes on eagerly with a warning."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self.eager_steps = 0
        self.graph: torch.cuda.CUDAGraph | None = None
        self.failed = False

    def __call__(self, tokens: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.graph is not None:
            self.tokens.copy_(tokens)
            self.labels.copy_(labels)
            self.graph.replay()
            return self.losses.clone()
        if self.eager_steps >= WARMUP_STEPS_BEFORE_CAPTURE and not self.failed:
            self._capture(tokens, labels)
            if self.graph is not None:
                return self(tokens, labels)
        self.eager_steps += 1
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            losses = self.engine._step(tokens, labels)
        torch.cuda.current_stream().wait_stream(side)
        return losses

    def _capture(self, tokens: torch.Tensor, labels: torch.Tensor) -> None:
        self.tokens, self.labels = tokens.clone(), labels.clone()
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                self.losses = self.engine._step(self.tokens, self.labels)
        except RuntimeError as error:
            self.failed = True
            log.warning("CUDA graph capture failed (%s); training without it", error)
            return
        self.graph = graph
