"""The tokenized corpus's cache (grokking.lm.corpus) under damage and hostile folders: every file
checked against the sha256 its meta.json records, a damaged cache rebuilt from the corpus with
one warning, and each thing that cannot be fixed one line naming the file or the field."""

import json
import logging
import os
import random
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest

from grokking.lm import corpus as lm
from grokking.lm.corpus import load_corpus
from grokking.runs.rundir import DamagedFile, DiskFull

VOCAB = 260  # the smallest files: 256 bytes, EOS and three merges


def write_corpus(folder: Path) -> Path:
    folder.mkdir(parents=True)
    for i in range(6):
        (folder / f"doc_{i}.txt").write_text(f"document {i}: " + "abc def " * (i + 2) + "\n")
    return folder


@pytest.fixture
def source(tmp_path) -> Path:
    return write_corpus(tmp_path / "corpus")


def build(source: Path, cache: Path) -> tuple[lm.Corpus, Path]:
    """The corpus of `source` and its cache folder, `cache/<key>`."""
    corpus = load_corpus(source, VOCAB, cache)
    return corpus, cache / corpus.meta["cache_key"]


def same_corpus(a: lm.Corpus, b: lm.Corpus) -> bool:
    return np.array_equal(a.tokens, b.tokens) and np.array_equal(a.offsets, b.offsets)


def save_npy(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as file:  # np.save(path) would add ".npy" to a name without it
        np.save(file, array)


def out_of_range(folder: Path) -> None:
    tokens = np.load(folder / "tokens.npy").copy()
    tokens[3] = 65000  # past the vocabulary: an IndexError in the embedding, mid-run
    save_npy(folder / "tokens.npy", tokens)


# Each way a cache file is found damaged: (the file named, how it is damaged).
DAMAGES = {
    "tokens truncated": ("tokens.npy", lambda f: f.write_bytes(f.read_bytes()[:200])),
    "tokens garbage": ("tokens.npy", lambda f: f.write_bytes(random.Random(0).randbytes(300))),
    "tokens empty": ("tokens.npy", lambda f: f.write_bytes(b"")),
    "tokens zeros of the same length": (
        "tokens.npy",
        lambda f: save_npy(f, np.zeros_like(np.load(f))),
    ),
    "tokens 2-D": ("tokens.npy", lambda f: save_npy(f, np.load(f)[None, :])),
    "tokens out of range": ("tokens.npy", lambda f: out_of_range(f.parent)),
    "tokens a directory": ("tokens.npy", lambda f: (f.unlink(), f.mkdir())),
    "tokens a FIFO": ("tokens.npy", lambda f: (f.unlink(), os.mkfifo(f))),
    "tokens a link": ("tokens.npy", lambda f: (f.rename(f.with_name("x")), f.symlink_to("x"))),
    "offsets garbage": ("offsets.npy", lambda f: f.write_bytes(b"\x93NUMPY garbage")),
    "offsets missing": ("offsets.npy", Path.unlink),
    "tokenizer truncated": ("tokenizer.json", lambda f: f.write_text(f.read_text()[:100])),
    "meta garbage": ("meta.json", lambda f: f.write_bytes(b"{not json")),
    "meta a list": ("meta.json", lambda f: f.write_text("[]")),
    "meta edited": (
        "meta.json",
        lambda f: f.write_text(f.read_text().replace('"vocab_size": 260', '"vocab_size": 200')),
    ),
}


def mount_tmpfs(path: Path, size: str) -> str | None:
    """Mount a tmpfs of `size` at `path` (created); None, or why it cannot be mounted here."""
    path.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True
    )
    return None if result.returncode == 0 else result.stderr.decode().strip()


@pytest.fixture
def disk(tmp_path):
    """`disk(size)`: a tmpfs of `size`, unmounted at the end. Where none can be mounted, the
    test is skipped, or with `or_folder=True` gets a plain folder."""
    path = tmp_path / "disk"

    def mount(size: str = "1m", or_folder: bool = False) -> Path:
        problem = mount_tmpfs(path, size)
        if problem and not or_folder:
            pytest.skip(f"cannot mount a tmpfs here: {problem}")
        return path

    yield mount
    if path.is_mount():
        subprocess.run(["umount", "--lazy", str(path)], check=True)


@pytest.mark.parametrize("damage", DAMAGES)
def test_a_damaged_cache_is_rebuilt_with_one_warning(source, tmp_path, caplog, damage):
    good, folder = build(source, tmp_path / "cache")
    name, spoil = DAMAGES[damage]
    spoil(folder / name)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="grokking"):
        rebuilt = load_corpus(source, VOCAB, tmp_path / "cache")
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warning.startswith(str(folder / name)) or warning.startswith(f"{folder} holds")
    assert warning.endswith(": rebuilding the cache from the corpus")
    assert same_corpus(rebuilt, good) and rebuilt.meta == good.meta
    assert not caplog.records[-1].getMessage().startswith("waiting")
    assert same_corpus(lm._open(folder), good)  # whole again: the next load only reads it


def test_the_cache_folder_replaced_by_a_file_is_rebuilt(source, tmp_path):
    good, folder = build(source, tmp_path / "cache")
    for path in folder.iterdir():
        path.unlink()
    folder.rmdir()
    folder.write_text("not a cache")
    assert same_corpus(load_corpus(source, VOCAB, tmp_path / "cache"), good)
    assert folder.is_dir()


def rehash(folder: Path) -> None:
    """Recompute meta.json's hashes over the files as they are now."""
    meta = json.loads((folder / "meta.json").read_text())
    files = {name: (folder / name).read_bytes() for name in lm.DATA_FILES}
    meta["sha256"] = lm._hashes(files, meta)
    (folder / "meta.json").write_text(json.dumps(meta))


@pytest.mark.parametrize(
    "spoil, problem",
    [
        (out_of_range, "holds token ids ≥ its vocabulary size 260"),
        (
            lambda f: save_npy(f / "offsets.npy", np.load(f / "offsets.npy")[::-1].copy()),
            "holds offsets that do not cut its tokens into documents ending with EOS",
        ),
        (
            lambda f: save_npy(f / "tokens.npy", np.load(f / "tokens.npy").astype(np.int64)),
            "holds tokens of shape (219,) and dtype int64",
        ),
    ],
)
def test_arrays_are_checked_even_when_their_hashes_match(source, tmp_path, caplog, spoil, problem):
    """A cache edited with its hashes recomputed (or written by a faulty build)."""
    good, folder = build(source, tmp_path / "cache")
    spoil(folder)
    rehash(folder)
    with pytest.raises(lm._Damaged, match=f"^{re.escape(f'{folder} {problem}')}$"):
        lm._open(folder)
    with caplog.at_level(logging.WARNING, logger="grokking"):
        assert same_corpus(load_corpus(source, VOCAB, tmp_path / "cache"), good)
    assert f"{folder} {problem}: rebuilding the cache from the corpus" in caplog.text


def test_every_truncation_and_random_bytes_of_each_cache_file_are_one_typed_error(source, disk):
    """As round two fuzzed last.pt: whatever a file holds, reading the cache says which file is
    damaged, in one line (and load_corpus rebuilds it), never anything else."""
    _, folder = build(source, disk(or_folder=True) / "cache")  # ext4 truncates in 3 ms, tmpfs not
    rng = random.Random(0)
    tried = 0
    for name in (*lm.DATA_FILES, lm.META):
        path = folder / name
        real = path.read_bytes()
        whole = len(real.rstrip(b"\n"))  # meta.json without its last newline is still whole
        blobs = [real[:cut] for cut in range(whole)]
        blobs += [rng.randbytes(rng.randrange(1, 2 * len(real))) for _ in range(30)]
        for blob in blobs:
            path.write_bytes(blob)
            with pytest.raises(lm._Damaged) as damaged:
                lm._open(folder)
            message = str(damaged.value)
            assert message.startswith(str(path)) and "\n" not in message, blob[:40]
            tried += 1
        path.write_bytes(real)
    assert tried > 5000
    lm._open(folder)  # restored whole


# --- what cannot be rebuilt: one line, naming the file or the field --------------------------
def read_only(path: Path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(path)], check=True)


def test_a_read_only_cache_is_read_without_its_lock(source, disk):
    cache = disk() / "cache"
    good, folder = build(source, cache)
    folder.with_name(f"{folder.name}.lock").unlink()  # as if copied without it
    read_only(cache.parent)
    assert same_corpus(load_corpus(source, VOCAB, cache), good)


def test_a_damaged_cache_that_cannot_be_rebuilt_is_one_line(source, disk, refusal, caplog):
    cache = disk() / "cache"
    _, folder = build(source, cache)
    DAMAGES["tokens zeros of the same length"][1](folder / "tokens.npy")
    read_only(cache.parent)
    with pytest.raises(DamagedFile) as damaged:
        load_corpus(source, VOCAB, cache)
    assert "rebuilding" not in caplog.text  # the refusal is the only line
    assert str(damaged.value) == (
        f"{folder}/tokens.npy does not match the sha256 meta.json records, and it cannot be "
        f"rebuilt here (Read-only file system): delete {folder}, or make {cache} "
        "writable"
    )
    code, stderr = refusal(*lm_overrides(source, cache), family="lm")
    assert (code, stderr) == (1, f"error: {damaged.value}\n")


def lm_overrides(source: Path, cache: Path) -> list[str]:
    return [f"data.source={source}", f"data.cache_dir={cache}", f"data.vocab_size={VOCAB}"]


def test_a_read_only_folder_without_a_cache_is_a_bad_cache_dir(source, disk, refusal):
    cache = disk() / "cache"
    cache.mkdir()
    read_only(cache.parent)
    message = (
        f"cache_dir: cannot write the tokenized corpus into {cache} (Read-only file system): "
        "make it writable, or choose another folder"
    )
    with pytest.raises(ValueError, match=f"^{re.escape(message)}"):
        load_corpus(source, VOCAB, cache)
    code, stderr = refusal(*lm_overrides(source, cache), family="lm")
    assert code == 2 and stderr.startswith(f"error: data.{message}") and stderr.count("\n") == 1


def test_a_full_disk_while_writing_the_cache_is_one_line_and_leaves_nothing(source, disk, refusal):
    cache = disk(size="8k") / "cache"  # two pages: tokenizer.json fits, tokens.npy does not
    with pytest.raises(DiskFull) as full:
        load_corpus(source, VOCAB, cache)
    assert str(full.value) == (
        f"the disk is full: could not write the tokenized corpus into {cache}: free some space "
        "or choose another data.cache_dir"
    )
    assert [path.suffix for path in cache.iterdir()] == [".lock"]  # no half-written cache
    code, stderr = refusal(*lm_overrides(source, cache), family="lm")
    assert (code, stderr) == (1, f"error: {full.value}\n")


@pytest.mark.parametrize("make", ["a_file", "symlink_loop"])
def test_a_cache_dir_that_is_no_folder_is_one_line(source, tmp_path, refusal, make):
    cache = tmp_path / "cache"
    if make == "a_file":
        cache.write_text("x")
    else:
        cache.symlink_to(tmp_path / "loop")
        (tmp_path / "loop").symlink_to(cache)
    message = f"cache_dir: '{cache}' is not a folder and cannot be made one ("
    with pytest.raises(ValueError, match=f"^{re.escape(message)}"):
        load_corpus(source, VOCAB, cache)
    code, stderr = refusal(*lm_overrides(source, cache), family="lm")
    assert code == 2 and stderr.startswith(f"error: data.{message}") and stderr.count("\n") == 1


def test_a_killed_builders_staging_folder_is_removed(source, tmp_path, caplog):
    cache = tmp_path / "cache"
    key = lm.cache_key(lm.corpus_hash(*lm.corpus_files(source)), VOCAB)
    stale = cache / f".{key}.x1y2.tmp"  # as _stage names it: the builder was killed mid-write
    (stale / "tokens.npy").parent.mkdir(parents=True)
    (stale / "tokens.npy").write_bytes(b"half")
    other = cache / ".0123456789abcdef.x1y2.tmp"  # another key's: its own lock guards it
    other.mkdir()
    with caplog.at_level(logging.INFO, logger="grokking"):
        load_corpus(source, VOCAB, cache)
    assert f"removing {stale}, left by a process killed while tokenizing" in caplog.text
    assert sorted(path.name for path in cache.iterdir()) == [other.name, key, f"{key}.lock"]


def test_a_lock_that_is_a_link_is_refused_not_followed(source, tmp_path, refusal):
    cache, target = tmp_path / "cache", tmp_path / "target"
    key = lm.cache_key(lm.corpus_hash(*lm.corpus_files(source)), VOCAB)
    cache.mkdir()
    (cache / f"{key}.lock").symlink_to(target)
    message = f"{cache}/{key}.lock is a symbolic link; refused: remove it"
    with pytest.raises(DamagedFile, match=f"^{re.escape(message)}$"):
        load_corpus(source, VOCAB, cache)
    assert not target.exists()
    code, stderr = refusal(*lm_overrides(source, cache), family="lm")
    assert (code, stderr) == (1, f"error: {message}\n")
    assert sorted(path.name for path in cache.iterdir()) == [f"{key}.lock"]


# --- a run on a damaged cache ----------------------------------------------------------------
@pytest.mark.parametrize("fill", [0, 65000])  # wrong data, trained on silently; ids past the vocab
def test_a_run_on_a_damaged_cache_trains_on_its_corpus(tmp_path, corpus_dir, caplog, fill):
    from conftest import tiny_lm

    from grokking.lm import load_config, train
    from grokking.lm.data import _dataset, dataset

    cfg = load_config([*tiny_lm(corpus_dir, tmp_path / "cache"), "token_budget=512"])
    clean = dataset(cfg).meta
    tokens = tmp_path / "cache" / clean["cache_key"] / "tokens.npy"
    save_npy(tokens, np.full_like(np.load(tokens), fill))
    _dataset.cache_clear()  # as a new process would
    with caplog.at_level(logging.WARNING, logger="grokking"):
        summary = train(cfg, tmp_path / "run")
    assert f"{tokens} does not match the sha256 meta.json records: rebuilding" in caplog.text
    assert summary["status"] == "completed"
    assert {key: summary["data"][key] for key in ("train_hash", "val_hash")} == {
        key: clean[key] for key in ("train_hash", "val_hash")
    }
