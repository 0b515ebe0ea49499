import pytest
import torch

from grokking.algorithmic.tasks import (
    MODULAR_OPS,
    S5_ELEMENTS,
    TASK_NAMES,
    compose,
    invert,
    make_dataset,
    split,
)

DIRECT = {  # the task table's arithmetic (docs/method.md §2), written independently of tasks.py
    "add": lambda x, y, p: (x + y) % p,
    "sub": lambda x, y, p: (x - y) % p,
    "div": lambda x, y, p: next(z for z in range(p) if (z * y) % p == x),
    "div_or_sub": lambda x, y, p: (
        next(z for z in range(p) if (z * y) % p == x) if y % 2 == 1 else (x - y) % p
    ),
    "x2_plus_y2": lambda x, y, p: (x**2 + y**2) % p,
    "x2_xy_y2": lambda x, y, p: (x**2 + x * y + y**2) % p,
    "x2_xy_y2_x": lambda x, y, p: (x**2 + x * y + y**2 + x) % p,
    "x3_xy": lambda x, y, p: (x**3 + x * y) % p,
    "x3_xy2_y": lambda x, y, p: (x**3 + x * y**2 + y) % p,
}


def test_task_names_are_the_twelve_of_spec_in_order():
    assert len(TASK_NAMES) == 12
    assert TASK_NAMES[:4] == ("add", "sub", "div", "div_or_sub")
    assert TASK_NAMES[9:] == ("s5_compose", "s5_conjugate", "s5_xyx")
    assert set(MODULAR_OPS) == set(TASK_NAMES[:9])


@pytest.mark.parametrize("p", [7, 97])
@pytest.mark.parametrize("name", list(DIRECT))
def test_modular_labels_match_direct_arithmetic(name, p):
    data = make_dataset(name, p)
    division = name in ("div", "div_or_sub")
    assert len(data) == (p * (p - 1) if division else p * p)
    assert data.n_classes == p and data.vocab_size == p + 2 and data.p == p
    x, op, y, eq = data.inputs.T
    assert (op == p).all() and (eq == p + 1).all()
    if division:
        assert (y != 0).all()
    expected = [DIRECT[name](int(a), int(b), p) for a, b in zip(x, y, strict=True)]
    assert data.labels.tolist() == expected
    pairs = set(zip(x.tolist(), y.tolist(), strict=True))
    assert len(pairs) == len(data)  # every pair exactly once


def test_s5_elements_identity_and_inverse():
    assert len(S5_ELEMENTS) == 120 and len(set(S5_ELEMENTS)) == 120
    identity = (0, 1, 2, 3, 4)
    for x in S5_ELEMENTS:
        assert compose(identity, x) == x == compose(x, identity)
        assert compose(x, invert(x)) == identity == compose(invert(x), x)


def test_s5_composition_applies_x_first_then_y():
    x, y = (1, 0, 2, 3, 4), (0, 2, 1, 3, 4)  # swap 0,1 then swap 1,2
    assert compose(x, y) == (2, 0, 1, 3, 4)  # (x·y)[i] = y[x[i]]


@pytest.mark.parametrize(
    "name, rule",
    [
        ("s5_compose", lambda x, y: compose(x, y)),
        ("s5_conjugate", lambda x, y: compose(compose(x, y), invert(x))),
        ("s5_xyx", lambda x, y: compose(compose(x, y), x)),
    ],
)
def test_s5_labels_match_composing_elements(name, rule):
    data = make_dataset(name)
    assert len(data) == 120 * 120 and data.n_classes == 120 and data.p is None
    assert data.elements == S5_ELEMENTS
    for (xi, _, yi, _), label in zip(data.inputs.tolist(), data.labels.tolist(), strict=True):
        assert S5_ELEMENTS[label] == rule(S5_ELEMENTS[xi], S5_ELEMENTS[yi])


def test_split_sizes_disjoint_and_deterministic():
    data = make_dataset("add", 11)
    train, val = split(data, 0.3, seed=4)
    assert len(train) == round(0.3 * 121) and len(train) + len(val) == 121
    assert set(train.tolist()).isdisjoint(val.tolist())
    assert set(train.tolist()) | set(val.tolist()) == set(range(121))
    again, _ = split(data, 0.3, seed=4)
    assert torch.equal(train, again)
    other, _ = split(data, 0.3, seed=5)
    assert not torch.equal(train, other)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: make_dataset("mul", 7), "task: unknown task 'mul'; allowed: add, sub, div"),
        (lambda: make_dataset("div", 8), "p: task 'div' divides modulo p, so p must be prime"),
        (
            lambda: make_dataset("div_or_sub", 1),
            "p: modulus must be an integer in [2, 1000], got 1",
        ),
        (lambda: make_dataset("add", 1), "p: modulus must be an integer in [2, 1000]"),
        # the tables have p² rows: a bound before anything is built
        (lambda: make_dataset("add", 100_000), "p: modulus must be an integer in [2, 1000]"),
        (lambda: split(make_dataset("add", 7), 1.0, 0), "train_fraction: must lie in (0, 1)"),
        (lambda: split(make_dataset("add", 7), 0.0, 0), "train_fraction: must lie in (0, 1)"),
        (lambda: split(make_dataset("add", 7), 0.001, 0), "leaves 0 for training"),
        (lambda: split(make_dataset("add", 7), 0.999, 0), "and 0 for validation"),
    ],
)
def test_bad_input_errors_name_the_field(call, message):
    with pytest.raises(ValueError) as error:
        call()
    assert message in str(error.value)
    if "unknown task" in message:
        assert "s5_xyx" in str(error.value)  # every allowed name is listed
