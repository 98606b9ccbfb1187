"""Atomic writes: the destination holds the old or the new content, and no temporary is left behind."""

from __future__ import annotations

import json
import math

import pytest

from overtrain.core import atomic
from overtrain.core.atomic import atomic_dir, atomic_write_bytes, atomic_write_json, atomic_write_text


def _names(path):
    return sorted(p.name for p in path.iterdir())


def test_write_text_creates_parents_and_replaces(tmp_path):
    target = tmp_path / "a" / "b" / "f.txt"
    atomic_write_text(target, "one")
    atomic_write_text(target, "two")
    assert target.read_text() == "two"
    assert _names(target.parent) == ["f.txt"]


def test_failed_write_keeps_old_content_and_no_temp(tmp_path):
    target = tmp_path / "f.bin"
    atomic_write_bytes(target, b"old")
    with pytest.raises(TypeError):
        atomic_write_bytes(target, "not bytes")  # type: ignore[arg-type]
    assert target.read_bytes() == b"old"
    assert _names(tmp_path) == ["f.bin"]


def test_write_json_is_strict_json_with_nan_as_null(tmp_path):
    import numpy as np

    target = tmp_path / "m.json"
    atomic_write_json(
        target, {"loss": math.nan, "inf": -math.inf, "np": np.float32(0.5), "arr": np.arange(2)}
    )
    text = target.read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {"loss": None, "inf": None, "np": 0.5, "arr": [0, 1]}


def test_atomic_dir_moves_into_place(tmp_path):
    final = tmp_path / "ckpt" / "step_1"
    with atomic_dir(final) as tmp:
        assert tmp.name.startswith(".tmp-") and tmp.parent == final.parent
        assert not final.exists()  # nothing visible until the block succeeds
        (tmp / "w.txt").write_text("w")
    assert (final / "w.txt").read_text() == "w"
    assert _names(final.parent) == ["step_1"]


def test_atomic_dir_leaves_files_readable_by_others(tmp_path):
    import os
    import stat

    with atomic_dir(tmp_path / "ckpt") as tmp:
        (tmp / "sub").mkdir(mode=0o700)
        fd = os.open(
            tmp / "sub" / "model.safetensors", os.O_CREAT | os.O_WRONLY, 0o600
        )  # as safetensors does
        os.close(fd)
    mode = stat.S_IMODE((tmp_path / "ckpt" / "sub" / "model.safetensors").stat().st_mode)
    assert mode == 0o644 and stat.S_IMODE((tmp_path / "ckpt" / "sub").stat().st_mode) == 0o755


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "two-renames"])
def test_atomic_dir_replaces_existing(tmp_path, monkeypatch, exchange):
    if not exchange:
        monkeypatch.setattr(atomic, "_exchange", lambda a, b: False)
    final = tmp_path / "resume"
    with atomic_dir(final) as tmp:
        (tmp / "old.txt").write_text("old")
    with atomic_dir(final) as tmp:
        (tmp / "new.txt").write_text("new")
    assert _names(final) == ["new.txt"]
    assert _names(tmp_path) == ["resume"]


def test_atomic_dir_failure_leaves_no_final_and_no_temp(tmp_path):
    final = tmp_path / "step_2"
    with pytest.raises(RuntimeError, match="disk"):
        with atomic_dir(final) as tmp:
            (tmp / "half.bin").write_bytes(b"x")
            raise RuntimeError("disk full")
    assert _names(tmp_path) == []


def test_atomic_dir_failure_keeps_existing_dir(tmp_path):
    final = tmp_path / "step_3"
    with atomic_dir(final) as tmp:
        (tmp / "good.txt").write_text("good")
    with pytest.raises(KeyboardInterrupt):
        with atomic_dir(final) as tmp:
            (tmp / "bad.txt").write_text("bad")
            raise KeyboardInterrupt
    assert _names(final) == ["good.txt"]
    assert _names(tmp_path) == ["step_3"]


def test_json_safe_handles_odd_values():
    from pathlib import Path

    import torch

    out = atomic.json_safe(
        {1: (Path("/x"), {3}), "t": torch.tensor(2.5), "nan_t": torch.tensor(float("nan"))}
    )
    assert out == {"1": ["/x", [3]], "t": 2.5, "nan_t": None}
