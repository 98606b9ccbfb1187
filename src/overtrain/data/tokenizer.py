"""Hugging Face tokenizers for every data source, built locally and hermetically.

Three kinds, all returned as `transformers.PreTrainedTokenizerFast` so that a checkpoint directory that
holds one loads with ``AutoTokenizer.from_pretrained(dir)``:

- `id_tokenizer`: synthetic languages (HMM, copy streams). Token ``i`` is the word ``t{i}``; text is
  the ids written as space-separated words (``"t3 t0 t17"``). No special tokens: ``vocab_size`` counts
  exactly the ids ``0..V-1`` the source emits.
- `byte_tokenizer`: natural text without training. Token id ``b`` *is* byte ``b`` of the UTF-8 encoding
  (256 ids, no merges, no special tokens), so ``encode(text) == list(text.encode())`` and decoding a
  whole encoding round-trips any Unicode text. The corpus loaders rely on the identity and tokenise
  bytes with numpy directly.
- `train_bpe`: byte-level BPE trained locally with the ``tokenizers`` library on the training split.
  One special token, ``<|endoftext|>`` (id 0, `EOS_TOKEN`), separates documents and is the tokenizer's
  ``eos_token``; it *is* part of ``vocab_size`` (the trained vocabulary is exactly ``vocab_size`` ids).
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache
from typing import TYPE_CHECKING

from overtrain.errors import DataError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

EOS_TOKEN = "<|endoftext|>"
"""Document separator of trained BPE tokenizers (id 0, counted in the vocabulary)."""

BYTE_VOCAB_SIZE = 256
"""Ids of the byte tokenizer: one per byte value."""

MIN_BPE_VOCAB_SIZE = BYTE_VOCAB_SIZE + 1
"""A byte-level BPE needs the 256 byte symbols plus `EOS_TOKEN`; merges come on top."""


def _wrap(tokenizer, **special: str) -> PreTrainedTokenizerFast:
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, **special)


def id_tokenizer(vocab_size: int) -> PreTrainedTokenizerFast:
    """A word-level tokenizer over the words ``t0 .. t{vocab_size-1}`` (token ``t{i}`` has id ``i``).

    Args:
        vocab_size: number of ids; every id in ``[0, vocab_size)`` has a word, nothing else does.

    Returns:
        A tokenizer without special tokens: ``tok("t3 t0").input_ids == [3, 0]`` and
        ``tok.decode([3, 0]) == "t3 t0"``. Encoding a word outside the vocabulary raises (there is no
        unknown token, because a synthetic language has no unknown words).
    """
    from tokenizers import Tokenizer, models, pre_tokenizers

    if vocab_size < 1:
        raise DataError(f"id_tokenizer: vocab_size must be at least 1, got {vocab_size}")
    tok = Tokenizer(models.WordLevel(vocab={f"t{i}": i for i in range(vocab_size)}))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    # Without a decoder, `tokenizers` joins decoded words with single spaces: the inverse of the
    # whitespace pre-tokenizer.
    return _wrap(tok)


@lru_cache(maxsize=1)
def _byte_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from the 256 byte values to printable characters.

    The ByteLevel pre-tokenizer of ``tokenizers`` rewrites bytes with this map, so the vocabulary of a
    byte-level model must be spelled in these characters.
    """
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    chars = list(printable)
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {b: chr(c) for b, c in zip(printable, chars)}


def byte_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level tokenizer with 256 ids, id ``b`` = byte value ``b``, no merges, no special tokens.

    Returns:
        A tokenizer for which ``tok(text).input_ids == list(text.encode("utf-8"))`` and
        ``tok.decode(ids) == text`` for any ``text``.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    mapping = _byte_to_unicode()
    vocab = {mapping[b]: b for b in range(BYTE_VOCAB_SIZE)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    # No regex split: with no merges, word boundaries cannot change the result.
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    return _wrap(tok)


def train_bpe(
    texts: Iterable[str],
    vocab_size: int,
    *,
    min_frequency: int = 2,
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on `texts`, locally.

    The pre-tokenizer is ``ByteLevel`` (GPT-2's regex split, no prefix space), every one of the 256
    byte symbols is in the initial alphabet (so any text encodes, nothing is unknown), and
    `EOS_TOKEN` is id 0. Merges are learned until the vocabulary holds `vocab_size` ids or no pair
    occurs `min_frequency` times.

    Args:
        texts: training documents (the training split only, so validation text does not shape merges).
        vocab_size: total ids including the byte alphabet and `EOS_TOKEN`; at least `MIN_BPE_VOCAB_SIZE`.
        min_frequency: a pair must occur this often to become a merge.

    Returns:
        A tokenizer whose ``eos_token`` is `EOS_TOKEN`; ``len(tok) <= vocab_size``.

    Raises:
        DataError: `vocab_size` is too small to hold the byte alphabet.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    if vocab_size < MIN_BPE_VOCAB_SIZE:
        raise DataError(
            f"BPE vocab_size must be at least {MIN_BPE_VOCAB_SIZE} (256 bytes + {EOS_TOKEN}), got {vocab_size}"
        )
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[EOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return _wrap(tok, eos_token=EOS_TOKEN)
