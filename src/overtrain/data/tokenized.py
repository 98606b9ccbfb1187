"""A text corpus as token windows: tokenising its documents, the on-disk cache of the token arrays, and
the batches (`CorpusSource`, a `TokenSource`).

Every corpus source turns its documents (`overtrain.data.corpus.Documents`) into two token arrays,
``train`` and ``val``:

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
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from overtrain.data.files import rename_into_place
from overtrain.data.hmm import check_request
from overtrain.data.tokenizer import BYTE_VOCAB_SIZE, EOS_TOKEN, byte_tokenizer, train_bpe
from overtrain.errors import DataError
from overtrain.paths import data_cache
from overtrain.seed import numpy_rng

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerFast

    from overtrain.data.corpus import CorpusConfig, Documents


CACHE_FORMAT = 1
"""Version of the tokenised-cache layout; part of every cache key."""


BYTE_SEPARATOR = b"\n\n"
"""Joins documents under the byte tokenizer (it has no special tokens)."""


class CorpusSource:
    """Token windows of a tokenised text corpus (a `TokenSource`).

    Attributes:
        tokens: ``{"train": array, "val": array}`` of token ids (memory-mapped from the cache).
        cache_dir: the cache entry holding them.
    """

    def __init__(
        self, cfg: CorpusConfig, docs: Documents, tokenizer: PreTrainedTokenizerFast | None = None
    ) -> None:
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


def _write_cache(
    target: Path, cfg: CorpusConfig, docs: Documents, given: PreTrainedTokenizerFast | None
) -> None:
    """Tokenise `docs` into a temporary directory beside `target` and rename it into place."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        if given is not None:
            vocab = len(given)
            if given.eos_token is None:  # e.g. the byte tokenizer: documents joined like `byte`
                ids = given.backend_tokenizer.encode(BYTE_SEPARATOR.decode()).ids
                arrays = {
                    split: _joined_tokens(given, getattr(docs, split), ids) for split in ("train", "val")
                }
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
        rename_into_place(tmp, target, "meta.json")
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


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
