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

import fcntl
import hashlib
import json
import logging
import numbers
import operator
import os
import platform
import shutil
import sysconfig
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

log = logging.getLogger("grokking")

EOS = "<|endoftext|>"  # appended after each document; a special token of the vocabulary
TOKENIZER_VERSION = 1  # bump when the tokenizer recipe or the cached format changes
MIN_VOCAB_SIZE = 256 + 1 + 1  # the byte alphabet, EOS, and at least one merge
MAX_VOCAB_SIZE = 65535  # ids fit uint16
CACHE_FILES = ("tokenizer.json", "tokens.npy", "offsets.npy", "meta.json")
_SKIPPED_STDLIB_DIRS = frozenset({"site-packages", "dist-packages"})  # installed packages
_ENCODE_BATCH_CHARS = 1 << 23  # bounds the memory of one encode_batch call


@dataclass(frozen=True, eq=False)  # eq=False: comparing numpy arrays with == is ambiguous
class Corpus:
    """A tokenized corpus: every document's ids followed by EOS, documents in file order.

    `tokens` is memory-mapped from the cache (read-only); document i is
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


def corpus_files(folder: str | Path | None) -> tuple[Path, list[Path]]:
    """(root, files) of a corpus, files sorted by relative POSIX path.

    None means the standard library of this interpreter: its `*.py` files, without installed
    packages, so the corpus is the same on every machine with this Python version. A folder means
    every regular file under it, hidden files and folders (names starting with '.') excepted.
    """
    if folder is None:
        root = Path(sysconfig.get_paths()["stdlib"]).resolve()
        files = _walk(
            root,
            keep_dir=lambda name: name not in _SKIPPED_STDLIB_DIRS,
            keep_file=lambda name: name.endswith(".py"),
        )
        return root, files
    root = Path(folder).expanduser().resolve()
    if not root.is_dir():
        raise ValueError(f"corpus folder {str(folder)!r}: no such folder")
    not_hidden = lambda name: not name.startswith(".")  # noqa: E731
    files = _walk(root, keep_dir=not_hidden, keep_file=not_hidden)
    if not files:
        raise ValueError(f"corpus folder {str(folder)!r}: holds no (non-hidden) files")
    return root, files


def _walk(
    root: Path, keep_dir: Callable[[str], bool], keep_file: Callable[[str], bool]
) -> list[Path]:
    """Regular files under root (symlinked folders are not entered), sorted by relative path."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root, onerror=_raise):
        dirnames[:] = [name for name in dirnames if keep_dir(name)]
        for name in filenames:
            path = Path(dirpath, name)
            if keep_file(name) and path.is_file():
                found.append(path)
    return sorted(found, key=lambda path: _relative(root, path))


def _raise(error: OSError) -> None:
    raise error  # an unreadable folder would silently change the corpus otherwise


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


def load_corpus(folder: str | Path | None, vocab_size: int, cache_dir: str | Path) -> Corpus:
    """The corpus of `folder` (None: the standard library), tokenized with a BPE of `vocab_size`.

    The first call for a corpus and vocabulary trains the tokenizer and encodes every document
    into `cache_dir/<key>/`; later calls, from any process, only read it. Concurrent callers wait
    on a lock file instead of tokenizing in parallel. The returned meta's "source" and
    "python_version" are this call's: a cache is keyed by content, so another folder with the
    same files may have built it.
    """
    vocab_size = _check_vocab_size(vocab_size)
    root, files = corpus_files(folder)
    contents = [path.read_bytes() for path in files]  # read once: hashed and tokenized alike
    digest = _digest(zip((_relative(root, path) for path in files), contents, strict=True))
    key = cache_key(digest, vocab_size)
    cache_dir = Path(cache_dir).expanduser().resolve()
    cache_dir.mkdir(parents=True, exist_ok=True)
    folder_path = cache_dir / key
    source = "stdlib" if folder is None else str(root)
    with _exclusive_lock(cache_dir / f"{key}.lock"):
        if not _is_complete(folder_path):
            meta = {
                "source": source,
                "python_version": platform.python_version(),
                "corpus_hash": digest,
                "cache_key": key,
                "vocab_size_requested": vocab_size,
                "tokenizer_version": TOKENIZER_VERSION,
            }
            _build(folder_path, contents, vocab_size, meta)
        corpus = _open(folder_path)
    corpus.meta.update(source=source, python_version=platform.python_version())
    return corpus


@contextmanager
def _exclusive_lock(path: Path) -> Iterator[None]:
    """Holds an exclusive flock on `path` (created if absent; left behind, as deleting is racy)."""
    with open(path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for another process to tokenize the corpus (lock %s)", path)
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _is_complete(folder: Path) -> bool:
    if not folder.exists():
        return False
    if all((folder / name).is_file() for name in CACHE_FILES):
        return True
    # Cannot come from _build (it renames a finished folder into place): someone edited it.
    log.warning("cache folder %s is incomplete: rebuilding it", folder)
    shutil.rmtree(folder)
    return False


def _build(folder: Path, contents: list[bytes], vocab_size: int, meta: dict) -> None:
    """Trains, encodes and writes the cache in a temporary sibling, then renames it into place."""
    texts = [content.decode("utf-8", errors="replace") for content in contents]
    n_bytes = sum(len(content) for content in contents)
    log.info(
        "tokenizing %d files (%.1f MB) into a %d-token BPE: once per corpus and vocabulary,"
        " cached in %s",
        len(texts),
        n_bytes / 1e6,
        vocab_size,
        folder,
    )
    start = time.perf_counter()
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
    try:
        os.chmod(staging, 0o755)  # mkdtemp's 0o700 would hide a shared cache from other users
        tokenizer = train_tokenizer(texts, vocab_size)
        tokens, offsets = encode_documents(tokenizer, texts)
        tokenizer.save(str(staging / "tokenizer.json"))
        np.save(staging / "tokens.npy", tokens)
        np.save(staging / "offsets.npy", offsets)
        meta = meta | {
            "n_documents": len(texts),
            "n_tokens": len(tokens),
            "n_bytes": n_bytes,
            "vocab_size": tokenizer.get_vocab_size(),
            "eos_id": tokenizer.token_to_id(EOS),
            "tokenizer": "byte-level BPE",
        }
        (staging / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
        os.replace(staging, folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info(
        "tokenized the corpus in %.1f s: %d tokens, %.2f bytes per token",
        time.perf_counter() - start,
        len(tokens),
        n_bytes / max(len(tokens), 1),
    )


def _open(folder: Path) -> Corpus:
    tokens = np.load(folder / "tokens.npy", mmap_mode="r")
    offsets = np.load(folder / "offsets.npy")
    meta = json.loads((folder / "meta.json").read_text())
    if offsets[0] != 0 or offsets[-1] != len(tokens) or len(offsets) != meta["n_documents"] + 1:
        raise RuntimeError(f"cache folder {folder} is inconsistent: delete it to rebuild it")
    return Corpus(tokens, offsets, folder / "tokenizer.json", meta)


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
