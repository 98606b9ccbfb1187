"""Instruction-like text: short generated tasks in a fixed prompt/response format (a text fine-tuning task).

Pre-training on prose and fine-tuning on instructions is the paper's setting (Springer et al. 2025
instruction-tune OLMo checkpoints); this is a small, offline stand-in. Every example is one document::

    Instruction: Reverse the order of the words.
    Input: crown sword king
    Response: king sword crown

with words drawn from the packaged Shakespeare excerpt, so the task shares the pre-training alphabet
(byte tokens) and much of its vocabulary but differs in form: the *domain shift* is from verse to a
rigid question-answer format whose responses are deterministic functions of the inputs.

Tasks (``tasks``; each example picks one uniformly):

- ``reverse``: the input words in reverse order;
- ``sort``: the input words in alphabetical order;
- ``upper``: the input words in capitals;
- ``count``: the number of input words, in digits;
- ``first_letters``: the first letter of each input word;
- ``add``: the sum of two integers below 100.

Examples are generated from ``content_seed``: the training split from one stream, the validation split
from another with every example that also occurs in training dropped, so validation measures
generalisation, not recall. Documents then go through the corpus machinery (`CorpusSource`): byte or
BPE tokens, cached, windows of ``seq_len`` bytes at random starts. The task loss is the mean next-token
loss over whole windows, prompts included (nats per token).
"""

from __future__ import annotations

import hashlib
import re
from functools import lru_cache
from importlib import resources
from typing import Literal

import numpy as np
from pydantic import Field, field_validator

from overtrain.data.corpus import CorpusConfig, Documents
from overtrain.registry import DATASETS
from overtrain.seed import numpy_rng

TASKS = ("reverse", "sort", "upper", "count", "first_letters", "add")

INSTRUCTIONS = {
    "reverse": "Reverse the order of the words.",
    "sort": "Sort the words alphabetically.",
    "upper": "Write the words in capital letters.",
    "count": "How many words are there?",
    "first_letters": "Give the first letter of each word.",
    "add": "Add the two numbers.",
}


@lru_cache(maxsize=1)
def word_list() -> tuple[str, ...]:
    """Distinct lowercase words (letters only, length 2-9) of the packaged Shakespeare excerpt, sorted."""
    text = resources.files("overtrain.data").joinpath("fixtures/shakespeare_excerpt.txt").read_text("utf-8")
    return tuple(sorted({w for w in re.findall(r"[a-z]+", text.lower()) if 2 <= len(w) <= 9}))


def render(
    task: str, rng: np.random.Generator, words: tuple[str, ...], min_words: int, max_words: int
) -> str:
    """One example of `task` as text (format in the module docstring)."""
    if task == "add":
        a, b = (int(x) for x in rng.integers(0, 100, size=2))
        source, answer = f"{a} and {b}", str(a + b)
    else:
        n = int(rng.integers(min_words, max_words + 1))
        chosen = [words[i] for i in rng.integers(0, len(words), size=n)]
        source = " ".join(chosen)
        answer = {
            "reverse": lambda: " ".join(reversed(chosen)),
            "sort": lambda: " ".join(sorted(chosen)),
            "upper": lambda: source.upper(),
            "count": lambda: str(n),
            "first_letters": lambda: " ".join(w[0] for w in chosen),
        }[task]()
    return f"Instruction: {INSTRUCTIONS[task]}\nInput: {source}\nResponse: {answer}"


@DATASETS.register("instructions")
class InstructionsConfig(CorpusConfig):
    """Generated instruction-following examples (reverse, sort, upper, count, first letters, add)."""

    name: Literal["instructions"] = "instructions"
    """Registered dataset name."""

    tasks: list[Literal[TASKS]] = list(TASKS)
    """Task mix; each example draws one of these uniformly."""

    examples: int = Field(20_000, gt=0)
    """Training examples (about 70 bytes each)."""

    val_examples: int = Field(2_000, gt=0)
    """Validation examples (none of them also in training)."""

    min_words: int = Field(2, ge=1)
    """Fewest input words of a word task."""

    max_words: int = Field(6, ge=1)
    """Most input words of a word task."""

    content_seed: int = Field(0, ge=0)
    """Seed of the generated examples (``seed`` places the batch windows)."""

    @field_validator("tasks")
    @classmethod
    def _tasks(cls, value: list[str]) -> list[str]:
        if not value or len(set(value)) != len(value):
            raise ValueError("give at least one task, each once")
        return value

    @field_validator("max_words")
    @classmethod
    def _max_words(cls, value: int, info) -> int:
        if value < info.data.get("min_words", 1):
            raise ValueError("max_words must be at least min_words")
        return value

    def _generate(self, split: str, count: int, exclude: set[str]) -> list[str]:
        rng = numpy_rng(self.content_seed, self.name, split)
        words = word_list()
        out: list[str] = []
        # Validation drops examples seen in training; with few distinct examples (tiny settings) stop
        # after a bounded number of tries rather than loop forever.
        for _ in range(20 * count):
            if len(out) == count:
                break
            text = render(
                self.tasks[int(rng.integers(len(self.tasks)))], rng, words, self.min_words, self.max_words
            )
            if text not in exclude:
                out.append(text)
        return out

    def documents(self) -> Documents:
        settings = self.model_dump(
            include={"tasks", "examples", "val_examples", "min_words", "max_words", "content_seed"}
        )
        docs = Documents(settings={"kind": self.name, "generator": 1, **settings})
        # the word list is an input too: a changed fixture must not reuse a stale cache entry
        docs.files.append(("words", hashlib.sha256(" ".join(word_list()).encode()).hexdigest()))
        docs.train = self._generate("train", self.examples, set())
        docs.val = self._generate("val", self.val_examples, set(docs.train))
        docs.check(self.name)
        return docs
