"""The 12 binary-operation tasks of Power et al. (2022), as token sequences `x ∘ y =`.

Modular tasks: token id r means the residue r (0 ≤ r < p), the label is a residue.
S5 tasks: `elements` lists the 120 permutations of range(5) as tuples in lexicographic order;
token id i means `elements[i]`, and so does label i. Composition follows Power et al.'s code,
`(x·y)[i] = y[x[i]]`: apply x first, then y.

After the operand ids come two special tokens: `op_token` (the operation) and `eq_token` ('='),
so every example is `[x, op_token, y, eq_token]` and the vocabulary has `n_classes + 2` ids.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable
from dataclasses import dataclass

import torch

TASK_NAMES: tuple[str, ...] = (
    "add",
    "sub",
    "div",
    "div_or_sub",
    "x2_plus_y2",
    "x2_xy_y2",
    "x2_xy_y2_x",
    "x3_xy",
    "x3_xy2_y",
    "s5_compose",
    "s5_conjugate",
    "s5_xyx",
)

Permutation = tuple[int, ...]


def _inverse_mod(y: int, p: int) -> int:
    return pow(y, p - 2, p)  # Fermat: y^(p-2) is y⁻¹ mod a prime p


# Each modular operation maps (x, y, p) to a residue.
MODULAR_OPS: dict[str, Callable[[int, int, int], int]] = {
    "add": lambda x, y, p: (x + y) % p,
    "sub": lambda x, y, p: (x - y) % p,
    "div": lambda x, y, p: (x * _inverse_mod(y, p)) % p,
    "div_or_sub": lambda x, y, p: (x * _inverse_mod(y, p)) % p if y % 2 else (x - y) % p,
    "x2_plus_y2": lambda x, y, p: (x * x + y * y) % p,
    "x2_xy_y2": lambda x, y, p: (x * x + x * y + y * y) % p,
    "x2_xy_y2_x": lambda x, y, p: (x * x + x * y + y * y + x) % p,
    "x3_xy": lambda x, y, p: (x**3 + x * y) % p,
    "x3_xy2_y": lambda x, y, p: (x**3 + x * y * y + y) % p,
}
DIVISION_TASKS = frozenset({"div", "div_or_sub"})


def compose(x: Permutation, y: Permutation) -> Permutation:
    """x·y in S5: apply x, then y — `(x·y)[i] = y[x[i]]`."""
    return tuple(y[x[i]] for i in range(len(x)))


def invert(x: Permutation) -> Permutation:
    inverse = [0] * len(x)
    for i, xi in enumerate(x):
        inverse[xi] = i
    return tuple(inverse)


S5_OPS: dict[str, Callable[[Permutation, Permutation], Permutation]] = {
    "s5_compose": compose,
    "s5_conjugate": lambda x, y: compose(compose(x, y), invert(x)),
    "s5_xyx": lambda x, y: compose(compose(x, y), x),
}
S5_ELEMENTS: tuple[Permutation, ...] = tuple(itertools.permutations(range(5)))


@dataclass(frozen=True)
class Dataset:
    """Every pair of one task's table: `inputs` [N, 4] = (x, op, y, '='), `labels` [N]."""

    name: str
    p: int | None  # the modulus; None for the S5 tasks
    inputs: torch.Tensor
    labels: torch.Tensor
    n_classes: int
    elements: tuple[Permutation, ...] | None = None  # S5 only: token id -> permutation

    @property
    def op_token(self) -> int:
        return self.n_classes

    @property
    def eq_token(self) -> int:
        return self.n_classes + 1

    @property
    def vocab_size(self) -> int:
        return self.n_classes + 2

    def __len__(self) -> int:
        return len(self.labels)


class TaskError(ValueError):
    """A task argument that is not allowed: `argument` names it (task, p or train_fraction)."""

    def __init__(self, argument: str, reason: str):
        super().__init__(f"{argument}: {reason}")
        self.argument = argument
        self.reason = reason


def is_prime(n: int) -> bool:
    return n >= 2 and all(n % d for d in range(2, int(n**0.5) + 1))


# Every modular task is the table of all p² pairs, built in Python and evaluated in full at
# every evaluation: p = 1000 is a million examples (~100x the paper's p = 97) and takes seconds
# to build; a larger p would take minutes and gigabytes before training a single step.
MAX_P = 1000


def check_task(name: str, p: int | None) -> None:
    """Raise TaskError naming the argument when `name` or `p` is not allowed."""
    if name not in TASK_NAMES:
        raise TaskError("task", f"unknown task {name!r}; allowed: {', '.join(TASK_NAMES)}")
    if name in S5_OPS:
        return
    if p is None or not 2 <= p <= MAX_P:
        raise TaskError("p", f"modulus must be an integer in [2, {MAX_P}], got {p}")
    if name in DIVISION_TASKS and not is_prime(p):
        raise TaskError("p", f"task {name!r} divides modulo p, so p must be prime, got {p}")


@functools.lru_cache(maxsize=64)
def make_dataset(name: str, p: int | None = 97) -> Dataset:
    """All examples of task `name` (one of TASK_NAMES); `p` is ignored by the S5 tasks. Built
    once per process and (name, p): the check, the pack planner, the record and the engine of a
    run all ask for it, so treat its tensors as read-only."""
    check_task(name, p)
    if name in S5_OPS:
        op = S5_OPS[name]
        index = {element: i for i, element in enumerate(S5_ELEMENTS)}
        pairs = [(i, j) for i in range(len(S5_ELEMENTS)) for j in range(len(S5_ELEMENTS))]
        labels = [index[op(S5_ELEMENTS[i], S5_ELEMENTS[j])] for i, j in pairs]
        return _build(name, None, pairs, labels, len(S5_ELEMENTS), S5_ELEMENTS)
    op = MODULAR_OPS[name]
    y_start = 1 if name in DIVISION_TASKS else 0  # y = 0 has no inverse
    pairs = [(x, y) for x in range(p) for y in range(y_start, p)]
    labels = [op(x, y, p) for x, y in pairs]
    return _build(name, p, pairs, labels, p, None)


def _build(name, p, pairs, labels, n_classes, elements) -> Dataset:
    xy = torch.tensor(pairs, dtype=torch.long)
    op = torch.full((len(pairs),), n_classes, dtype=torch.long)
    eq = torch.full((len(pairs),), n_classes + 1, dtype=torch.long)
    inputs = torch.stack([xy[:, 0], op, xy[:, 1], eq], dim=1)
    return Dataset(name, p, inputs, torch.tensor(labels, dtype=torch.long), n_classes, elements)


def train_size(n_examples: int, train_fraction: float) -> int:
    """round(fraction · N), after checking that both splits are non-empty."""
    if not 0.0 < train_fraction < 1.0:
        raise TaskError("train_fraction", f"must lie in (0, 1), got {train_fraction}")
    size = round(train_fraction * n_examples)
    if not 0 < size < n_examples:
        raise TaskError(
            "train_fraction",
            f"{train_fraction} of {n_examples} examples leaves "
            f"{size} for training and {n_examples - size} for validation; both must be ≥ 1",
        )
    return size


def split(dataset: Dataset, train_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(train_idx, val_idx): a random subset of size round(fraction · N), fixed by `seed`."""
    n_train = train_size(len(dataset), train_fraction)
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(dataset), generator=generator)
    return order[:n_train].sort().values, order[n_train:].sort().values
