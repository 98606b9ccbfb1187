"""The generic registry: registration, lazy entries, did-you-mean errors, built-in discovery."""

from __future__ import annotations

import pytest

from overtrain.errors import UnknownNameError
from overtrain.registry import DATASETS, MODELS, RUN_KINDS, Registry


def test_register_get_and_duplicates():
    reg: Registry[object] = Registry("widget")
    obj = object()
    reg.register("alpha", obj)
    assert reg.get("alpha") is obj
    with pytest.raises(ValueError, match="registered twice"):
        reg.register("alpha", object())
    with pytest.raises(ValueError, match="lowercase"):
        reg.register("Bad Name", object())


def test_lazy_entry_imports_on_first_get():
    reg: Registry[object] = Registry("widget")
    reg.register("path-join", "os.path:join")
    import os.path

    assert reg.get("path-join") is os.path.join


def test_unknown_name_suggests_the_closest():
    reg: Registry[object] = Registry("widget")
    reg.register("lora_ggpo", object(), help="x")
    with pytest.raises(UnknownNameError, match=r"unknown widget 'lora_gppo' \(did you mean 'lora_ggpo'\?\)"):
        reg.get("lora_gppo")


def test_builtins_are_discovered_from_their_package():
    assert {"hmm", "copy", "repeat"} <= set(DATASETS.names())
    assert "llama-nano" in MODELS and "olmo2-medium" in MODELS and "neox-base" in MODELS
    assert "pretrain" in RUN_KINDS
