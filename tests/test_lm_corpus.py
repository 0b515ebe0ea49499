"""grokking.lm.corpus: file listing and hashing, the tokenization cache, nested subsets."""

import fcntl
import logging
import os
import random
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from grokking.lm import corpus as lm
from grokking.lm.corpus import (
    EOS,
    cache_key,
    corpus_files,
    corpus_hash,
    load_corpus,
    load_tokenizer,
    sequences,
    split_documents,
    training_stream,
    validation_stream,
)

REPO = Path(__file__).resolve().parents[1]
VOCAB = 300
WORDS = "alpha beta gamma delta return import def class self lambda yield über naïve 数据".split()


def write_corpus(folder: Path, n_files: int = 30, seed: int = 0) -> Path:
    """A small folder corpus: nested folders, plus the files that tokenizers tend to get wrong."""
    rng = random.Random(seed)
    for i in range(n_files):
        lines = [
            " ".join(rng.choices(WORDS, k=rng.randint(3, 12))) for _ in range(rng.randint(2, 8))
        ]
        path = folder / f"part{i % 3}" / f"doc_{i:02d}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"# document {i}\n" + "\n".join(lines) + "\n", encoding="utf-8")
    (folder / "crlf.txt").write_bytes(b"line one\r\nline two\r\n\tindented  twice\r\n")
    (folder / "latin1.txt").write_bytes("caf\xe9 cr\xe8me\n".encode("latin-1"))  # not UTF-8
    (folder / "eos_inside.txt").write_text(f"before {EOS} after\n", encoding="utf-8")
    (folder / "empty.txt").write_bytes(b"")
    (folder / ".hidden.txt").write_text("skipped\n")
    (folder / ".git").mkdir()
    (folder / ".git" / "config").write_text("skipped too\n")
    return folder


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def corpus(folder, tmp_path_factory) -> lm.Corpus:
    return load_corpus(folder, VOCAB, tmp_path_factory.mktemp("cache"))


def documents(corpus: lm.Corpus) -> list[np.ndarray]:
    return [
        corpus.tokens[a:b] for a, b in zip(corpus.offsets[:-1], corpus.offsets[1:], strict=True)
    ]


def cache_folders(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.iterdir() if p.is_dir())


# --- Files and hash --------------------------------------------------------------------------


def test_folder_files_are_sorted_and_skip_hidden_ones(folder):
    root, files = corpus_files(folder)
    relative = [p.relative_to(root).as_posix() for p in files]
    assert root == folder.resolve()
    assert relative == sorted(relative)
    assert len(files) == 34
    assert not any(part.startswith(".") for r in relative for part in r.split("/"))
    assert "part0/doc_00.txt" in relative and "latin1.txt" in relative


def test_stdlib_files():
    root, files = corpus_files(None)
    relative = [p.relative_to(root).as_posix() for p in files]
    assert len(files) > 100
    assert relative == sorted(relative)
    assert all(r.endswith(".py") for r in relative)
    assert not any("site-packages" in r.split("/") for r in relative)
    assert "os.py" in relative and "json/__init__.py" in relative
    assert len(corpus_hash(root, files)) == 64


# What each bad `data.source` is refused with (after "source: '<path>' ").
BAD_SOURCES = {
    "missing": "does not exist: name a folder of text files, or null for",
    "empty": "holds 0 non-hidden file(s); the split into training and validation documents",
    "only_hidden": "holds 0 non-hidden file(s)",
    "a_file": "is not a folder: name a folder",
    "one_document": "holds 1 non-hidden file(s); the split",
    "symlink_loop": "cannot be resolved (Symlink loop",
}


def bad_source(tmp_path: Path, make: str) -> Path:
    target = tmp_path / "corpus"
    if make in ("empty", "only_hidden", "one_document"):
        target.mkdir()
    if make == "only_hidden":
        (target / ".only").write_text("x")
        (target / ".git").mkdir()
        (target / ".git" / "config").write_text("x")
    elif make == "one_document":
        (target / "only.txt").write_text("one document cannot be split\n")
    elif make == "a_file":
        target.write_text("x")
    elif make == "symlink_loop":
        target.symlink_to(tmp_path / "loop")
        (tmp_path / "loop").symlink_to(target)
    return target


@pytest.mark.parametrize("make", BAD_SOURCES)
def test_bad_source_is_refused_by_name(tmp_path, make):
    target = bad_source(tmp_path, make)
    message = f"source: '{target}' {BAD_SOURCES[make]}"
    with pytest.raises(ValueError) as refused:
        corpus_files(target)
    assert str(refused.value).startswith(message)
    with pytest.raises(ValueError) as refused:
        load_corpus(target, VOCAB, tmp_path / "cache")
    assert str(refused.value).startswith(message)
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize("make", BAD_SOURCES)
def test_the_command_refuses_a_bad_source_in_one_line(refusal, tmp_path, make):
    target = bad_source(tmp_path, make)
    code, stderr = refusal(f"data.source={target}", family="lm")
    assert code == 2
    assert stderr.startswith(f"error: data.source: '{target}' {BAD_SOURCES[make]}")
    assert stderr.count("\n") == 1
    assert not any(Path.cwd().iterdir())  # no run folder, no cache


def test_an_unreadable_file_is_refused_by_name(tmp_path, monkeypatch):
    folder = write_corpus(tmp_path / "corpus")

    def refuse(path):  # what a file without read permission gives (root reads any)
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(Path, "read_bytes", refuse)
    unreadable = corpus_files(folder)[1][0]
    message = f"source: cannot read {unreadable} (Permission denied): make it readable, or move"
    with pytest.raises(ValueError, match=f"^{re.escape(message)}"):
        load_corpus(folder, VOCAB, tmp_path / "cache")
    assert not (tmp_path / "cache").exists()


def test_hash_follows_contents_and_names_not_location(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    write_corpus(a)
    shutil.copytree(a, b)
    assert corpus_hash(*corpus_files(a)) == corpus_hash(*corpus_files(b))  # location-free
    (b / "empty.txt").rename(b / "empty2.txt")
    renamed = corpus_hash(*corpus_files(b))
    assert renamed != corpus_hash(*corpus_files(a))
    (b / "empty2.txt").write_text("now not empty")
    assert corpus_hash(*corpus_files(b)) != renamed


def test_hash_boundaries_are_unambiguous(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    for root, (x, y) in ((one, ("ab", "")), (two, ("a", "b"))):
        root.mkdir()
        (root / "x").write_text(x)
        (root / "y").write_text(y)
    assert corpus_hash(*corpus_files(one)) != corpus_hash(*corpus_files(two))


# --- Tokens ----------------------------------------------------------------------------------


def test_offsets_and_eos(corpus):
    eos = corpus.eos_id
    assert corpus.tokens.ndim == 1 and corpus.tokens.dtype == np.uint16
    assert corpus.offsets.dtype == np.int64
    assert corpus.offsets[0] == 0 and corpus.offsets[-1] == len(corpus.tokens)
    assert np.all(np.diff(corpus.offsets) >= 1)
    assert corpus.n_documents == 34 == corpus.meta["n_documents"]
    for document in documents(corpus):
        assert document[-1] == eos
        assert eos not in document[:-1]  # EOS written in a file is text, not a boundary
    assert int(corpus.tokens.max()) < corpus.meta["vocab_size"] <= VOCAB


def test_meta(corpus, folder):
    root, files = corpus_files(folder)
    meta = corpus.meta
    assert meta["source"] == str(root)
    assert meta["corpus_hash"] == corpus_hash(root, files)
    assert meta["cache_key"] == cache_key(meta["corpus_hash"], VOCAB)
    assert meta["n_tokens"] == len(corpus.tokens)
    assert meta["n_bytes"] == sum(p.stat().st_size for p in files)
    assert meta["tokenizer"] == "byte-level BPE"
    assert corpus.tokenizer_path == corpus.tokenizer_path.parent / "tokenizer.json"
    assert corpus.tokenizer_path.parent.name == meta["cache_key"]


def test_decoding_gives_back_each_file(corpus, folder):
    _, files = corpus_files(folder)
    tokenizer = load_tokenizer(corpus.tokenizer_path)
    for path, document in zip(files, documents(corpus), strict=True):
        text = path.read_bytes().decode("utf-8", errors="replace")
        ids = document[:-1].tolist()
        assert tokenizer.decode(ids, skip_special_tokens=False) == text, path.name
        assert tokenizer.encode(text, add_special_tokens=False).ids == ids, path.name


# --- Cache -----------------------------------------------------------------------------------


def fail(*args, **kwargs):
    raise AssertionError("the cache should have been reused")


def test_second_load_reuses_the_cache(tmp_path, monkeypatch, caplog):
    folder, cache = write_corpus(tmp_path / "corpus"), tmp_path / "cache"
    with caplog.at_level(logging.INFO, logger="grokking"):
        first = load_corpus(folder, VOCAB, cache)
    assert "tokenizing 34 files" in caplog.text
    key = first.meta["cache_key"]
    mtimes = {p.name: p.stat().st_mtime_ns for p in (cache / key).iterdir()}
    caplog.clear()
    monkeypatch.setattr(lm, "train_tokenizer", fail)
    monkeypatch.setattr(lm, "encode_documents", fail)
    with caplog.at_level(logging.INFO, logger="grokking"):
        second = load_corpus(str(folder), VOCAB, str(cache))
    assert "tokenizing" not in caplog.text
    assert np.array_equal(first.tokens, second.tokens)
    assert np.array_equal(first.offsets, second.offsets)
    assert first.meta == second.meta
    assert {p.name: p.stat().st_mtime_ns for p in (cache / key).iterdir()} == mtimes
    assert cache_folders(cache) == [key]  # and no staging folder left behind


def test_content_or_vocabulary_change_gives_a_new_key(tmp_path):
    folder, cache = write_corpus(tmp_path / "corpus"), tmp_path / "cache"
    base = load_corpus(folder, VOCAB, cache).meta["cache_key"]
    os.utime(folder / "crlf.txt", (0, 0))  # a touch alone changes nothing
    assert load_corpus(folder, VOCAB, cache).meta["cache_key"] == base
    (folder / "crlf.txt").write_bytes(b"line one\r\nline 2\r\n")
    edited = load_corpus(folder, VOCAB, cache).meta["cache_key"]
    bigger = load_corpus(folder, VOCAB + 20, cache)
    assert len({base, edited, bigger.meta["cache_key"]}) == 3
    assert cache_folders(cache) == sorted([base, edited, bigger.meta["cache_key"]])
    assert bigger.meta["vocab_size"] == VOCAB + 20


def test_same_files_elsewhere_share_the_cache(tmp_path, monkeypatch):
    a, cache = write_corpus(tmp_path / "a"), tmp_path / "cache"
    first = load_corpus(a, VOCAB, cache)
    b = tmp_path / "b"
    shutil.copytree(a, b)
    monkeypatch.setattr(lm, "train_tokenizer", fail)
    second = load_corpus(b, VOCAB, cache)
    assert second.meta["cache_key"] == first.meta["cache_key"]
    assert second.meta["source"] == str(b.resolve())  # this call's folder, not the builder's


def test_training_is_deterministic(tmp_path):
    folder = write_corpus(tmp_path / "corpus")
    one = load_corpus(folder, VOCAB, tmp_path / "one")
    two = load_corpus(folder, VOCAB, tmp_path / "two")
    assert np.array_equal(one.tokens, two.tokens)
    assert one.tokenizer_path.read_text() == two.tokenizer_path.read_text()


def test_failed_build_leaves_nothing_and_incomplete_cache_is_rebuilt(tmp_path, monkeypatch):
    folder, cache = write_corpus(tmp_path / "corpus"), tmp_path / "cache"

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    with monkeypatch.context() as patch:
        patch.setattr(lm, "encode_documents", broken)
        with pytest.raises(RuntimeError, match="disk full"):
            load_corpus(folder, VOCAB, cache)
    assert cache_folders(cache) == []
    good = load_corpus(folder, VOCAB, cache)
    (cache / good.meta["cache_key"] / "meta.json").unlink()
    rebuilt = load_corpus(folder, VOCAB, cache)
    assert np.array_equal(good.tokens, rebuilt.tokens)


@pytest.mark.parametrize("vocab_size", [257, 65536, 300.0, True, "300"])
def test_bad_vocab_size(tmp_path, folder, vocab_size):
    with pytest.raises(ValueError, match="vocab_size: must be"):
        load_corpus(folder, vocab_size, tmp_path / "cache")
    assert not (tmp_path / "cache").exists()


CHILD = """
import logging, sys, hashlib
logging.basicConfig(level=logging.INFO, format="%(message)s")
from grokking.lm.corpus import load_corpus
corpus = load_corpus(sys.argv[1], int(sys.argv[2]), sys.argv[3])
print(corpus.meta["cache_key"], hashlib.sha256(corpus.tokens.tobytes()).hexdigest())
"""


def test_concurrent_loads_tokenize_once(tmp_path):
    """Two processes start while the lock is held: both wait, one builds, the other reuses."""
    folder, cache = write_corpus(tmp_path / "corpus", n_files=200), tmp_path / "cache"
    key = cache_key(corpus_hash(*corpus_files(folder)), VOCAB)
    cache.mkdir()
    env = os.environ | {"PYTHONPATH": str(REPO), "TOKENIZERS_PARALLELISM": "true"}
    logs = [tmp_path / f"child{i}.log" for i in range(2)]
    with open(cache / f"{key}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        children = [
            subprocess.Popen(
                [sys.executable, "-c", CHILD, str(folder), str(VOCAB), str(cache)],
                stdout=subprocess.PIPE,
                stderr=log.open("w"),
                text=True,
                env=env,
            )
            for log in logs
        ]
        deadline = time.monotonic() + 180  # a guard against a hang: imports are slow on a busy CPU
        while not all("waiting for another process" in log.read_text() for log in logs):
            assert time.monotonic() < deadline, [log.read_text() for log in logs]
            assert all(child.poll() is None for child in children)
            time.sleep(0.05)
        fcntl.flock(lock, fcntl.LOCK_UN)
    outputs = [child.communicate(timeout=60)[0] for child in children]
    assert [child.returncode for child in children] == [0, 0], [p.read_text() for p in logs]
    assert outputs[0] == outputs[1] and outputs[0].split()[0] == key
    assert sum("tokenizing" in log.read_text() for log in logs) == 1
    assert cache_folders(cache) == [key]


# --- Splits and streams ----------------------------------------------------------------------


def test_split_documents():
    train, val = split_documents(100, 0.1, seed=3)
    assert len(val) == 10 and len(train) == 90
    assert train.dtype == val.dtype == np.int64
    assert np.all(np.diff(train) > 0) and np.all(np.diff(val) > 0)
    assert np.array_equal(np.union1d(train, val), np.arange(100))
    again, val_again = split_documents(100, 0.1, seed=3)
    assert np.array_equal(train, again) and np.array_equal(val, val_again)
    assert not np.array_equal(val, split_documents(100, 0.1, seed=4)[1])
    assert [len(v) for _, v in (split_documents(3, 0.01, 0), split_documents(3, 0.99, 0))] == [1, 2]


@pytest.mark.parametrize(
    "args, field",
    [((1, 0.1, 0), "n_documents"), ((10, 0.0, 0), "val_fraction"), ((10, 1.0, 0), "val_fraction")],
)
def test_split_documents_refuses(args, field):
    with pytest.raises(ValueError, match=field):
        split_documents(*args)


def test_training_subsets_are_nested_and_hold_only_training_documents(corpus):
    train, val = split_documents(corpus.n_documents, 0.2, seed=0)
    assert not set(train.tolist()) & set(val.tolist())
    full = training_stream(corpus, train, None, subset_seed=1)
    small = training_stream(corpus, train, 100, subset_seed=1)
    large = training_stream(corpus, train, 250, subset_seed=1)
    assert full.dtype == torch.int64 and len(small) == 100 and len(large) == 250
    assert torch.equal(large[:100], small) and torch.equal(full[:250], large)
    assert torch.equal(training_stream(corpus, train[::-1].copy(), 250, 1), large)  # order-free
    assert not torch.equal(training_stream(corpus, train, 250, subset_seed=2), large)
    # The full stream is the training documents, each once, cut at their EOS.
    by_content = {tuple(d.tolist()): i for i, d in enumerate(documents(corpus))}
    pieces = np.split(full.numpy(), np.flatnonzero(full.numpy() == corpus.eos_id)[:-1] + 1)
    assert sorted(by_content[tuple(p.tolist())] for p in pieces) == train.tolist()


def test_validation_is_the_same_for_every_training_size(corpus):
    train, val = split_documents(corpus.n_documents, 0.2, seed=0)
    streams = []
    for n_tokens in (50, 200, None):
        train_again, val_again = split_documents(corpus.n_documents, 0.2, seed=0)
        training_stream(corpus, train_again, n_tokens, subset_seed=0)
        streams.append(validation_stream(corpus, val_again))
    assert all(torch.equal(streams[0], s) for s in streams)
    expected = np.concatenate([documents(corpus)[i] for i in val]).astype(np.int64)
    assert torch.equal(streams[0], torch.from_numpy(expected))


def test_too_many_tokens_is_refused(corpus):
    train, _ = split_documents(corpus.n_documents, 0.2, seed=0)
    available = int(sum(np.diff(corpus.offsets)[train]))
    assert len(training_stream(corpus, train, available, 0)) == available
    with pytest.raises(ValueError, match=f"n_tokens: {available + 1} .* {available} tokens"):
        training_stream(corpus, train, available + 1, 0)
    with pytest.raises(ValueError, match="n_tokens"):
        training_stream(corpus, train, 0, 0)


@pytest.mark.parametrize("ids", [[], [0, 0], [-1], [10_000], [[0, 1]], [0.5]])
def test_bad_document_ids(corpus, ids):
    with pytest.raises(ValueError, match="train_doc_ids"):
        training_stream(corpus, np.array(ids), None, 0)


def test_sequences():
    stream = torch.arange(23)
    rows = sequences(stream, context=5)
    assert rows.shape == (4, 6)  # (23 - 1) // 5 windows; the last 2 tokens are dropped
    for i, row in enumerate(rows):
        assert torch.equal(row, stream[i * 5 : i * 5 + 6])
    assert torch.equal(rows[:-1, -1], rows[1:, 0])  # the last target is the next first input
    assert sequences(torch.arange(6), 5).shape == (1, 6)
    with pytest.raises(ValueError, match="stream: 5 tokens"):
        sequences(torch.arange(5), 5)
    with pytest.raises(ValueError, match="context"):
        sequences(stream, 0)


def test_sequences_of_a_training_stream(corpus):
    train, _ = split_documents(corpus.n_documents, 0.2, seed=0)
    stream = training_stream(corpus, train, 200, 0)
    rows = sequences(stream, 16)
    inputs, targets = rows[:, :-1], rows[:, 1:]
    assert torch.equal(inputs.reshape(-1), stream[: 16 * len(rows)])
    assert torch.equal(targets.reshape(-1), stream[1 : 16 * len(rows) + 1])
