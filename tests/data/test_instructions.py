"""The instruction-like text task: answers are right, splits are disjoint, batches are deterministic bytes."""

from __future__ import annotations

import re

import numpy as np
import pytest

from overtrain.config import validate
from overtrain.data.instructions import TASKS, InstructionsConfig, render, word_list
from overtrain.errors import ConfigError
from overtrain.registry import DATASETS
from overtrain.seed import numpy_rng


@pytest.fixture(autouse=True)
def _home(home):
    return home


def _parse(text: str) -> tuple[str, list[str], str]:
    m = re.fullmatch(r"Instruction: (.+)\nInput: (.+)\nResponse: (.+)", text)
    assert m, text
    return m.group(1), m.group(2).split(" "), m.group(3)


def test_every_task_answers_correctly():
    words = word_list()
    assert len(words) > 300 and all(w.isalpha() and w.islower() for w in words)
    rng = numpy_rng(0, "test")
    for task in TASKS:
        for _ in range(20):
            _, source, answer = _parse(render(task, rng, words, 2, 6))
            expected = {
                "reverse": lambda s=source: " ".join(reversed(s)),
                "sort": lambda s=source: " ".join(sorted(s)),
                "upper": lambda s=source: " ".join(w.upper() for w in s),
                "count": lambda s=source: str(len(s)),
                "first_letters": lambda s=source: " ".join(w[0] for w in s),
                "add": lambda s=source: str(int(s[0]) + int(s[2])),
            }[task]()
            assert answer == expected
            if task != "add":
                assert 2 <= len(source) <= 6


def test_splits_are_disjoint_and_deterministic():
    cfg = validate(InstructionsConfig, {"name": "instructions", "examples": 500, "val_examples": 100})
    docs = cfg.documents()
    assert len(docs.train) == 500 and len(docs.val) == 100
    assert not set(docs.val) & set(docs.train)
    assert docs.train == cfg.documents().train
    other = validate(
        InstructionsConfig, {"name": "instructions", "examples": 500, "val_examples": 100, "content_seed": 1}
    )
    assert other.documents().train != docs.train
    assert docs.digest() != other.documents().digest()


def test_task_mix_follows_the_config():
    cfg = validate(
        InstructionsConfig, {"name": "instructions", "tasks": ["add"], "examples": 50, "val_examples": 10}
    )
    assert all(d.startswith("Instruction: Add the two numbers.") for d in cfg.documents().train)


def test_batches_are_bytes_of_the_examples():
    assert DATASETS.get("instructions") is InstructionsConfig
    src = validate(InstructionsConfig, {"name": "instructions", "examples": 300, "val_examples": 50}).build()
    assert src.vocab_size == 256 and src.loss_floor(32) is None
    x = src.batch("train", 3, 4, 48)
    assert x.shape == (4, 48)
    assert np.array_equal(x.numpy(), src.batch("train", 3, 4, 48).numpy())
    joined = "\n\n".join(
        src_doc for src_doc in InstructionsConfig(examples=300, val_examples=50).documents().train
    )
    for row in x:
        assert bytes(row.tolist()).decode("utf-8", errors="replace") in joined


def test_bad_settings_are_config_errors():
    with pytest.raises(ConfigError, match="max_words"):
        validate(InstructionsConfig, {"name": "instructions", "min_words": 5, "max_words": 3})
    with pytest.raises(ConfigError, match="tasks"):
        validate(InstructionsConfig, {"name": "instructions", "tasks": ["juggle"]})
