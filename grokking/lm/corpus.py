"""A fixed text corpus, tokenized once, split into documents and nested training subsets.

The language-model experiment trains small decoder LMs on growing subsets of one corpus so that
the small ones overfit. For the comparison to mean anything, every run must see the same
documents and the same tokens: the corpus defaults to the Python standard library of the
interpreter running the command (the same files on every machine with that Python version), or
any folder the user names. Files are read in sorted relative-path order and hashed; the hash
(with the vocabulary size and the tokenizer recipe's version) keys a cache, so the BPE is trained
and the corpus encoded once per corpus and vocabulary, even when a sweep starts 10 jobs at once.

Splits are by document, so no validation text leaks into training, and the training documents
are put in one seeded order that does not depend on the subset size: the 50k-token training set
is a prefix of the 100k one.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import io
import json
import logging
import numbers
import operator
import os
import platform
import shutil
import stat
import sysconfig
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import numpy as np
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from grokking.runs.rundir import NOFOLLOW, DamagedFile, DiskFull

log = logging.getLogger("grokking")

EOS = "<|endoftext|>"  # appended after each document; a special token of the vocabulary
TOKENIZER_VERSION = 2  # bump when the tokenizer recipe or the cached format changes (2: hashes)
MIN_VOCAB_SIZE = 256 + 1 + 1  # the byte alphabet, EOS, and at least one merge
MAX_VOCAB_SIZE = 65535  # ids fit uint16
DATA_FILES = ("tokenizer.json", "tokens.npy", "offsets.npy")
META = "meta.json"  # the cache's description, and the sha256 of each file (its HASHES)
HASHES = "sha256"
_SKIPPED_STDLIB_DIRS = frozenset({"site-packages", "dist-packages"})  # installed packages
_ENCODE_BATCH_CHARS = 1 << 23  # bounds the memory of one encode_batch call


@dataclass(frozen=True, eq=False)  # eq=False: comparing numpy arrays with == is ambiguous
class Corpus:
    """A tokenized corpus: every document's ids followed by EOS, documents in file order.

    `tokens` is read from the cache (read-only); document i is
    `tokens[offsets[i]:offsets[i + 1]]`, its EOS included.
    """

    tokens: np.ndarray  # 1-D uint16 (uint32 for a vocabulary above 65536 ids)
    offsets: np.ndarray  # int64, n_documents + 1
    tokenizer_path: Path  # tokenizer.json in the cache
    meta: dict

    @property
    def n_documents(self) -> int:
        return len(self.offsets) - 1

    @property
    def eos_id(self) -> int:
        return int(self.meta["eos_id"])


# --- Files and their hash --------------------------------------------------------------------


def corpus_files(source: str | Path | None) -> tuple[Path, list[Path]]:
    """(root, files) of a corpus, files sorted by relative POSIX path.

    None means the standard library of this interpreter: its `*.py` files, without installed
    packages, so the corpus is the same on every machine with this Python version. A folder means
    every regular file under it, hidden files and folders (names starting with '.') excepted. A
    source that is no folder, or holds fewer than the two documents a split into training and
    validation needs, is a ValueError naming `source` and what to do.
    """
    if source is None:
        root = Path(sysconfig.get_paths()["stdlib"]).resolve()
        files = _walk(
            root,
            keep_dir=lambda name: name not in _SKIPPED_STDLIB_DIRS,
            keep_file=lambda name: name.endswith(".py"),
        )
        return root, files
    todo = "name a folder of text files, or null for Python's standard library"
    try:
        root = Path(source).expanduser().resolve()
    except (OSError, RuntimeError) as error:  # RuntimeError: a symbolic-link loop
        raise ValueError(f"source: {str(source)!r} cannot be resolved ({error}): {todo}") from None
    if not root.is_dir():
        what = "is not a folder" if os.path.lexists(root) else "does not exist"
        raise ValueError(f"source: {str(source)!r} {what}: {todo}")
    not_hidden = lambda name: not name.startswith(".")  # noqa: E731
    files = _walk(root, keep_dir=not_hidden, keep_file=not_hidden)
    if len(files) < 2:
        raise ValueError(
            f"source: {str(source)!r} holds {len(files)} non-hidden file(s); the split into "
            "training and validation documents needs at least 2 (files and folders named .* "
            "are skipped)"
        )
    return root, files


def _walk(
    root: Path, keep_dir: Callable[[str], bool], keep_file: Callable[[str], bool]
) -> list[Path]:
    """Regular files under root (symlinked folders are not entered), sorted by relative path."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root, onerror=_unreadable):
        dirnames[:] = [name for name in dirnames if keep_dir(name)]
        for name in filenames:
            path = Path(dirpath, name)
            if keep_file(name) and path.is_file():
                found.append(path)
    return sorted(found, key=lambda path: _relative(root, path))


def _unreadable(error: OSError) -> NoReturn:
    """Refuse a corpus with an unreadable folder or file: skipping it would change the corpus."""
    raise ValueError(
        f"source: cannot read {error.filename} ({error.strerror}): make it readable, or move it "
        "out of the corpus folder"
    ) from None


def _read_source(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        _unreadable(error)


def _relative(root: Path, path: Path) -> str:
    return (root / path).relative_to(root).as_posix()


def corpus_hash(root: str | Path, files: Iterable[str | Path]) -> str:
    """sha256 (hex) over each file's relative path and bytes: the corpus's identity.

    Both are length-prefixed, so moving bytes between a name and a content, or between files,
    changes the hash. Paths are relative, so the same tree anywhere hashes the same.
    """
    root = Path(root)
    return _digest((_relative(root, Path(f)), (root / f).read_bytes()) for f in files)


def _digest(documents: Iterable[tuple[str, bytes]]) -> str:
    digest = hashlib.sha256()
    for relative, content in documents:
        name = relative.encode("utf-8", "surrogateescape")  # undecodable names on Linux
        for part in (name, content):
            digest.update(len(part).to_bytes(8, "little"))
            digest.update(part)
    return digest.hexdigest()


def cache_key(corpus_digest: str, vocab_size: int) -> str:
    """Name of the cache folder: changes with the corpus, the vocabulary and the recipe."""
    text = f"{corpus_digest}\n{vocab_size}\n{TOKENIZER_VERSION}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# --- Tokenizer -------------------------------------------------------------------------------


def train_tokenizer(texts: Sequence[str], vocab_size: int) -> Tokenizer:
    """A byte-level BPE with `vocab_size` ids (EOS is id 0), trained on `texts`.

    Byte level, with no normalizer: every string encodes and decodes back exactly, whatever
    its characters or line endings.
    """
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer, length=len(texts))
    return tokenizer


def load_tokenizer(path: str | Path) -> Tokenizer:
    """The cached tokenizer, set to encode text the way the corpus was encoded.

    `encode_special_tokens` is not saved in tokenizer.json: without it a literal "<|endoftext|>"
    in a text would become the EOS id instead of ordinary tokens.
    """
    tokenizer = Tokenizer.from_file(str(path))
    tokenizer.encode_special_tokens = True
    return tokenizer


def encode_documents(tokenizer: Tokenizer, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(tokens, offsets): each text's ids followed by the EOS id, and where each document starts.

    The EOS id appears only at document ends: EOS written inside a text is encoded as text (this
    sets `tokenizer.encode_special_tokens`). Texts are encoded in parallel (Rust), in batches
    that bound the memory of the intermediate encodings.
    """
    tokenizer.encode_special_tokens = True
    eos_id = tokenizer.token_to_id(EOS)
    if eos_id is None:
        raise ValueError(f"tokenizer: has no {EOS} token")
    dtype = token_dtype(tokenizer.get_vocab_size())
    eos = np.array([eos_id], dtype=dtype)
    pieces, lengths = [], []
    for batch in _batches(texts, _ENCODE_BATCH_CHARS):
        for encoding in tokenizer.encode_batch_fast(batch, add_special_tokens=False):
            pieces += [np.asarray(encoding.ids, dtype=dtype), eos]
            lengths.append(len(encoding.ids) + 1)
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    tokens = np.concatenate(pieces) if pieces else np.zeros(0, dtype=dtype)
    return tokens, offsets


def _batches(texts: Sequence[str], max_chars: int) -> Iterator[list[str]]:
    batch: list[str] = []
    size = 0
    for text in texts:
        if batch and size + len(text) > max_chars:
            yield batch
            batch, size = [], 0
        batch.append(text)
        size += len(text)
    if batch:
        yield batch


def token_dtype(vocab_size: int) -> type[np.unsignedinteger]:
    """The smallest unsigned dtype that holds every id: halves the cache and memory maps."""
    return np.uint16 if vocab_size <= 1 << 16 else np.uint32


def _check_vocab_size(vocab_size: object) -> int:
    ok = isinstance(vocab_size, numbers.Integral) and not isinstance(vocab_size, bool)
    if not ok or not MIN_VOCAB_SIZE <= int(vocab_size) <= MAX_VOCAB_SIZE:
        raise ValueError(
            f"vocab_size: must be an int from {MIN_VOCAB_SIZE} (256 bytes, {EOS} and one merge)"
            f" to {MAX_VOCAB_SIZE} (ids fit uint16), got {vocab_size!r}"
        )
    return int(vocab_size)


# --- The cache -------------------------------------------------------------------------------


class _Damaged(Exception):
    """A cache file that is not what the build wrote; the message names it and what is wrong."""


def load_corpus(source: str | Path | None, vocab_size: int, cache_dir: str | Path) -> Corpus:
    """The corpus of `source` (a folder; None: the standard library), tokenized with a BPE of
    `vocab_size`.

    The first call for a corpus and vocabulary trains the tokenizer and encodes every document
    into `cache_dir/<key>/`; later calls, from any process, only read it, after checking every
    file against the sha256 that meta.json records. Concurrent builders wait on a lock file
    instead of tokenizing in parallel. A cache that fails the check is rebuilt (with a warning):
    it is a cache, and its source is still there. The returned meta's "source" and
    "python_version" are this call's: a cache is keyed by content, so another folder with the
    same files may have built it.

    A bad argument is a ValueError starting with its name (source, vocab_size, cache_dir); a
    damaged cache that cannot be rebuilt here is DamagedFile, a full disk DiskFull.
    """
    vocab_size = _check_vocab_size(vocab_size)
    root, files = corpus_files(source)
    contents = [_read_source(path) for path in files]  # read once: hashed and tokenized alike
    digest = _digest(zip((_relative(root, path) for path in files), contents, strict=True))
    key = cache_key(digest, vocab_size)
    origin = {
        "source": "stdlib" if source is None else str(root),
        "python_version": platform.python_version(),
    }
    meta = origin | {
        "corpus_hash": digest,
        "cache_key": key,
        "vocab_size_requested": vocab_size,
        "tokenizer_version": TOKENIZER_VERSION,
    }
    build = lambda staging: _build(staging, contents, vocab_size, meta)  # noqa: E731
    corpus = _open_or_build(_cache_root(cache_dir) / key, build)
    corpus.meta.update(origin)
    return corpus


def _cache_root(cache_dir: str | Path) -> Path:
    try:
        root = Path(cache_dir).expanduser().resolve()
        root.mkdir(parents=True, exist_ok=True)
    except (OSError, RuntimeError) as error:  # RuntimeError: a symbolic-link loop
        reason = error.strerror if isinstance(error, OSError) else error
        raise ValueError(
            f"cache_dir: {str(cache_dir)!r} is not a folder and cannot be made one ({reason}): "
            "choose another folder"
        ) from None
    return root


def _open_or_build(folder: Path, build: Callable[[Path], None]) -> Corpus:
    """The verified cache at `folder`; when it is absent or damaged, `build(staging folder)`
    writes it whole, under the lock `<key>.lock`, and it is renamed into place."""
    try:
        return _open(folder)  # no lock: a cache is renamed into place whole and never changed
    except FileNotFoundError:
        damage = None
    except _Damaged as error:
        damage = error
    try:
        with _exclusive_lock(folder.with_name(f"{folder.name}.lock")):
            # Only the lock's holder writes a staging folder: any there now is a killed one's.
            for stale in folder.parent.glob(f".{folder.name}.*.tmp"):
                log.info("removing %s, left by a process killed while tokenizing", stale)
                _remove(stale)
            try:
                return _open(folder)  # built by another process while this one waited
            except FileNotFoundError:
                pass
            except _Damaged as error:
                _remove(folder)  # first: where it cannot be, the refusal is the only line
                log.warning("%s: rebuilding the cache from the corpus", error)
            _stage(folder, build)
            return _open(folder)
    except OSError as error:
        raise _cannot_write(folder, error, damage) from None


def _cannot_write(folder: Path, error: OSError, damage: _Damaged | None) -> Exception:
    """What to tell when the cache cannot be written: the disk is full, the damaged cache
    cannot be replaced (a file to delete), or cache_dir is not writable (a value to change)."""
    if error.errno == errno.ENOSPC:
        return DiskFull(
            errno.ENOSPC,
            f"the disk is full: could not write the tokenized corpus into {folder.parent}: free "
            "some space or choose another data.cache_dir",
        )
    if damage is not None:
        return DamagedFile(
            f"{damage}, and it cannot be rebuilt here ({error.strerror}): delete {folder}, or "
            f"make {folder.parent} writable"
        )
    return ValueError(
        f"cache_dir: cannot write the tokenized corpus into {folder.parent} ({error.strerror}): "
        "make it writable, or choose another folder"
    )


@contextmanager
def _exclusive_lock(path: Path) -> Iterator[None]:
    """Holds an exclusive flock on the regular file `path` (created if absent; left behind, as
    deleting is racy). A link or anything else planted there is refused, never followed."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CREAT | NOFOLLOW, 0o666)
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise DamagedFile(f"{path} is a symbolic link; refused: remove it") from None
        raise
    with open(fd) as handle:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise DamagedFile(f"{path} is not a regular file: remove it")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for another process to tokenize the corpus (lock %s)", path)
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _remove(path: Path) -> None:
    """A folder with its files, or a file or link in a folder's place."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def _stage(folder: Path, build: Callable[[Path], None]) -> None:
    """`build` into a temporary sibling, renamed into place once whole: a kill or a failure
    never leaves a half-written cache at `folder` (a kill leaves the sibling, `.<key>.*.tmp`)."""
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
    try:
        os.chmod(staging, 0o755)  # mkdtemp's 0o700 would hide a shared cache from other users
        build(staging)
        os.replace(staging, folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _build(staging: Path, contents: list[bytes], vocab_size: int, meta: dict) -> None:
    """Trains the tokenizer, encodes the corpus and writes the cache's files into `staging`,
    meta.json recording the sha256 of each."""
    texts = [content.decode("utf-8", errors="replace") for content in contents]
    n_bytes = sum(len(content) for content in contents)
    log.info(
        "tokenizing %d files (%.1f MB) into a %d-token BPE: once per corpus and vocabulary,"
        " cached in %s",
        len(texts),
        n_bytes / 1e6,
        vocab_size,
        staging.parent,
    )
    start = time.perf_counter()
    tokenizer = train_tokenizer(texts, vocab_size)
    tokens, offsets = encode_documents(tokenizer, texts)
    # Written by Python, not by numpy or the tokenizer: a full disk is then an ENOSPC OSError.
    files = {
        "tokenizer.json": tokenizer.to_str(pretty=True).encode(),
        "tokens.npy": _npy_bytes(tokens),
        "offsets.npy": _npy_bytes(offsets),
    }
    meta = meta | {
        "n_documents": len(texts),
        "n_tokens": len(tokens),
        "n_bytes": n_bytes,
        "vocab_size": tokenizer.get_vocab_size(),
        "eos_id": tokenizer.token_to_id(EOS),
        "tokenizer": "byte-level BPE",
    }
    meta[HASHES] = _hashes(files, meta)
    files[META] = (json.dumps(meta, indent=2) + "\n").encode()
    for name, data in files.items():
        (staging / name).write_bytes(data)
    log.info(
        "tokenized the corpus in %.1f s: %d tokens, %.2f bytes per token",
        time.perf_counter() - start,
        len(tokens),
        n_bytes / max(len(tokens), 1),
    )


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def _hashes(files: dict[str, bytes], meta: dict) -> dict[str, str]:
    """sha256 of each data file, and of meta.json's own fields (all but this record)."""
    fields = json.dumps({k: v for k, v in meta.items() if k != HASHES}, sort_keys=True)
    hashes = {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}
    return hashes | {META: hashlib.sha256(fields.encode()).hexdigest()}


def _open(folder: Path) -> Corpus:
    """The cache at `folder`, each file checked against the sha256 meta.json records and the
    arrays against what the model and the splits rely on. FileNotFoundError when there is no
    cache; _Damaged, naming the file, for every way one can be wrong."""
    if not os.path.lexists(folder):
        raise FileNotFoundError(folder)
    files = {name: _read_cache_file(folder / name) for name in DATA_FILES}
    meta = _read_meta(folder / META)
    recorded = meta.get(HASHES)
    for name, digest in _hashes(files, meta).items():
        if not isinstance(recorded, dict) or recorded.get(name) != digest:
            raise _Damaged(f"{folder / name} does not match the sha256 meta.json records")
    tokens, offsets = (_load_array(folder / name, files[name]) for name in DATA_FILES[1:])
    problem = _array_problem(tokens, offsets, meta)
    if problem:
        raise _Damaged(f"{folder} {problem}")
    tokens.setflags(write=False)
    return Corpus(tokens, offsets, folder / "tokenizer.json", meta)


def _read_cache_file(path: Path) -> bytes:
    """The bytes of the regular file `path`; never through a link, never blocking on a FIFO."""
    try:
        fd = os.open(path, os.O_RDONLY | NOFOLLOW)
        with open(fd, "rb") as file:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise _Damaged(f"{path} is not a regular file")
            return file.read()
    except OSError as error:
        raise _Damaged(f"{path} cannot be read ({error.strerror})") from None


def _load_array(path: Path, data: bytes) -> np.ndarray:
    try:
        return np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, EOFError) as error:  # not an .npy file (a cut one), or one of objects
        raise _Damaged(f"{path} is not an array ({str(error)[:80]})") from None


def _read_meta(path: Path) -> dict:
    try:
        meta = json.loads(_read_cache_file(path))
    except ValueError as error:  # not JSON, or not UTF-8
        raise _Damaged(f"{path} is not JSON ({str(error)[:80]})") from None
    if not isinstance(meta, dict):
        raise _Damaged(f"{path} is not a JSON object")
    return meta


def _array_problem(tokens: np.ndarray, offsets: np.ndarray, meta: dict) -> str | None:
    """What is wrong with arrays whose hashes match: a cache written by a faulty build or edited
    with its hashes recomputed would otherwise fail mid-run (an id past the embedding)."""
    n_documents, vocab_size, eos_id = (meta.get(k) for k in ("n_documents", "vocab_size", "eos_id"))
    if not all(isinstance(v, int) for v in (n_documents, vocab_size, eos_id)):
        return "has a meta.json without the integers n_documents, vocab_size and eos_id"
    if tokens.ndim != 1 or tokens.dtype != token_dtype(vocab_size):
        return f"holds tokens of shape {tokens.shape} and dtype {tokens.dtype}"
    if len(tokens) and tokens.max() >= vocab_size:
        return f"holds token ids ≥ its vocabulary size {vocab_size}"
    if offsets.shape != (n_documents + 1,) or offsets.dtype != np.int64:
        return f"holds offsets of shape {offsets.shape} and dtype {offsets.dtype}"
    bounds = offsets[0] == 0 and offsets[-1] == len(tokens) and np.all(np.diff(offsets) >= 1)
    if not bounds or np.any(tokens[offsets[1:] - 1] != eos_id):
        return "holds offsets that do not cut its tokens into documents ending with EOS"
    return None


# --- Splits and nested training sets ---------------------------------------------------------


def split_documents(
    n_documents: int, val_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """(train_doc_ids, val_doc_ids), sorted int64 arrays: a seeded split by whole documents.

    Depends only on its arguments, so every training-set size is measured on the same
    validation documents. At least one document goes to each side.
    """
    n_documents = operator.index(n_documents)
    if n_documents < 2:
        raise ValueError(f"n_documents: need at least 2 to split, got {n_documents}")
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction: must lie strictly between 0 and 1, got {val_fraction}")
    n_val = min(max(round(val_fraction * n_documents), 1), n_documents - 1)
    order = np.random.default_rng(seed).permutation(n_documents)
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def training_stream(
    corpus: Corpus,
    train_doc_ids: Sequence[int] | np.ndarray,
    n_tokens: int | None,
    subset_seed: int,
) -> torch.Tensor:
    """The first `n_tokens` (None: all) of the training documents in a seeded order, as int64.

    The order comes from `subset_seed` and the set of training documents only, never from
    `n_tokens`: a smaller training set is a prefix of, hence nested in, every larger one. The
    last document taken may be cut.
    """
    ids = _document_ids(corpus, train_doc_ids, "train_doc_ids")
    order = ids[np.random.default_rng(subset_seed).permutation(len(ids))]
    ends = np.cumsum(np.diff(corpus.offsets)[order])
    available = int(ends[-1])
    if n_tokens is None:
        n_tokens = available
    n_tokens = operator.index(n_tokens)
    if not 1 <= n_tokens <= available:
        raise ValueError(
            f"n_tokens: {n_tokens} is not between 1 and the {available} tokens"
            f" that the {len(ids)} training documents hold"
        )
    n_used = int(np.searchsorted(ends, n_tokens)) + 1  # the first document that reaches n_tokens
    return _concatenate(corpus, order[:n_used])[:n_tokens]


def validation_stream(corpus: Corpus, val_doc_ids: Sequence[int] | np.ndarray) -> torch.Tensor:
    """The validation documents, in id order, concatenated as one int64 tensor."""
    return _concatenate(corpus, _document_ids(corpus, val_doc_ids, "val_doc_ids"))


def _document_ids(corpus: Corpus, ids: Sequence[int] | np.ndarray, name: str) -> np.ndarray:
    """`ids` as a sorted int64 array, so that results depend on the set, not its order."""
    array = np.asarray(ids)
    if array.ndim != 1 or len(array) == 0 or not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"{name}: must be a non-empty 1-D sequence of document ids")
    array = np.sort(array.astype(np.int64))
    if array[0] < 0 or array[-1] >= corpus.n_documents:
        raise ValueError(f"{name}: ids must lie in [0, {corpus.n_documents})")
    if np.any(array[1:] == array[:-1]):
        raise ValueError(f"{name}: repeats a document id")
    return array


def _concatenate(corpus: Corpus, doc_ids: np.ndarray) -> torch.Tensor:
    starts, stops = corpus.offsets[doc_ids], corpus.offsets[doc_ids + 1]
    pieces = [corpus.tokens[start:stop] for start, stop in zip(starts, stops, strict=True)]
    return torch.from_numpy(np.concatenate(pieces).astype(np.int64))


def sequences(stream: torch.Tensor, context: int) -> torch.Tensor:
    """[n, context + 1] windows of `stream` with stride `context`: inputs row[:-1], targets row[1:].

    Consecutive windows share one token, so every stream position but the first is a target
    exactly once; the tail that does not fill a window is dropped. Returns a view of `stream`.
    """
    context = operator.index(context)
    if context < 1:
        raise ValueError(f"context: must be at least 1, got {context}")
    if stream.ndim != 1:
        raise ValueError(f"stream: must be 1-D, got shape {tuple(stream.shape)}")
    if len(stream) < context + 1:
        raise ValueError(f"stream: {len(stream)} tokens are fewer than context + 1 = {context + 1}")
    return stream.unfold(0, context + 1, context)
