"""Pickle weights (``pytorch_model*.bin``) rewritten as safetensors, so that `overtrain audit` and the
runs that read local checkpoints (which load safetensors only) can use an older checkpoint directory.

The pickle is read with ``torch.load(weights_only=True)``: PyTorch's restricted unpickler, which builds
tensors and plain containers and refuses everything else, so no code from the file runs. The file is
still untrusted input to that unpickler, which is why the command says to convert only files one trusts.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from overtrain.core.atomic import atomic_write_bytes, atomic_write_text
from overtrain.errors import CheckpointError

TRUST_NOTE = (
    "convert reads pickle files with torch.load(weights_only=True), which runs no code from them, but a "
    "pickle is still untrusted input: convert only files you trust"
)
BIN_INDEX = "pytorch_model.bin.index.json"


@dataclass
class Converted:
    """What `convert_dir` did to one directory."""

    path: Path
    written: list[str]
    """The safetensors files written (names in `path`)."""
    tensors: int
    shared: int
    """Tensors that shared storage with another one and were stored as their own copy."""
    removed: list[str]
    """The pickle files deleted (with ``remove_bin``)."""


def _target(name: str) -> str:
    """``pytorch_model-00001-of-00002.bin`` -> ``model-00001-of-00002.safetensors`` (transformers' names)."""
    return name.replace("pytorch_model", "model", 1).removesuffix(".bin") + ".safetensors"


def _load_pickle(file: Path) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # the restricted unpickler raises many types for a file it will not read
        raise CheckpointError(f"cannot read {file} as plain weights: {' '.join(str(exc).split())}") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]  # a training checkpoint that wraps the weights
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise CheckpointError(f"{file} is not a dict of named tensors: not model weights")
    return state


def unshare(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], int]:
    """Every tensor with storage of its own, contiguous: safetensors refuses tensors that share memory
    (tied input and output embeddings). A copy per name keeps every name a loader may look up, at the cost
    of duplicated bytes; the values are bit-identical. Returns the tensors and how many were copied."""
    seen: set[int] = set()
    out, copied = {}, 0
    for name, t in state.items():
        ptr = t.untyped_storage().data_ptr() if t.numel() else None
        if ptr is not None and ptr in seen:
            t, copied = t.clone(), copied + 1
        elif ptr is not None:
            seen.add(ptr)
        out[name] = t.contiguous()
    return out, copied


def convert_dir(path: Path, *, remove_bin: bool = False) -> Converted:
    """Write ``model*.safetensors`` beside the ``pytorch_model*.bin`` files of `path` (and the shard index
    when there is one), each file atomically; check that every tensor reads back bit-identical; delete
    the pickles only with `remove_bin` and only after that check."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"checkpoint not found: {path}")
    bins = sorted(path.glob("pytorch_model*.bin"))
    if not bins:
        raise CheckpointError(f"no pytorch_model*.bin in {path}: nothing to convert")
    existing = sorted(p.name for p in path.glob("*.safetensors"))
    if existing:
        raise CheckpointError(f"{path} already has safetensors weights ({existing[0]}): nothing to convert")
    written, total, shared = [], 0, 0
    for file in bins:
        tensors, copied = unshare(_load_pickle(file))
        data = save_safetensors(tensors, metadata={"format": "pt"})
        back = load_safetensors(data)
        if back.keys() != tensors.keys() or not all(
            back[k].dtype == t.dtype and torch.equal(back[k], t) for k, t in tensors.items()
        ):
            raise CheckpointError(f"{file}: the safetensors copy does not read back identical; not written")
        atomic_write_bytes(path / _target(file.name), data)
        written.append(_target(file.name))
        total, shared = total + len(tensors), shared + copied
    index = path / BIN_INDEX
    if index.is_file():  # sharded: the safetensors index maps each name to its new shard file
        table = json.loads(index.read_text())
        table["weight_map"] = {k: _target(v) for k, v in table.get("weight_map", {}).items()}
        atomic_write_text(path / "model.safetensors.index.json", json.dumps(table, indent=2))
        written.append("model.safetensors.index.json")
    removed = []
    if remove_bin:
        for file in [*bins, *([index] if index.is_file() else [])]:
            file.unlink()
            removed.append(file.name)
    return Converted(path, written, total, shared, removed)
