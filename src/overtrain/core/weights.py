"""Model directories on disk: integrity checks and safetensors-only weight loading.

Below probes and training: both read checkpoint directories, and neither may import the other for it.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

from overtrain.core.atomic import CHECKSUMS, verify_checksums
from overtrain.errors import CheckpointError


def verify_checkpoint(path: Path, what: str = "checkpoint") -> None:
    """Raise a one-line `CheckpointError` naming the first file of `path` that does not match its
    ``checksums.json`` (truncated, altered or missing); a directory without the sidecar passes."""
    problems = verify_checksums(path)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise CheckpointError(f"corrupt {what} {path}: {problems[0]}{more} (checked against its {CHECKSUMS})")


def check_model_dir(path: Path) -> None:
    """Raise `CheckpointError` unless `path` holds safetensors weights and a config, intact by its
    ``checksums.json`` when it has one."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"checkpoint not found: {path}")
    if not (path / "config.json").is_file():
        raise CheckpointError(f"not a model checkpoint (no config.json): {path}")
    if not any(path.glob("*.safetensors")):
        pickled = sorted(p.name for p in path.glob("*.bin")) + sorted(p.name for p in path.glob("*.pt"))
        if pickled:
            raise CheckpointError(
                f"refusing to unpickle {pickled[0]} in {path}: convert the weights to safetensors "
                f"(`overtrain convert {path}`, for files you trust)"
            )
        raise CheckpointError(f"no safetensors weights in {path}")
    verify_checkpoint(path)


def fingerprint(path: Path) -> str:
    """Names, sizes and modification times of a directory's weight and config files: part of the id of a
    run that reads a checkpoint from outside the store, so a checkpoint rewritten in place is a new run."""
    path = Path(path)
    files = sorted([*path.glob("*.safetensors"), path / "config.json"])
    return ";".join(f"{f.name}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in files if f.is_file())


def load_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint directory's ``*.safetensors`` files (sharded or not), on the CPU.

    Reads only safetensors (never pickle), without building a model.
    """
    path = Path(path)
    check_model_dir(path)
    state: dict[str, torch.Tensor] = {}
    for file in sorted(path.glob("*.safetensors")):
        state.update(load_file(str(file)))
    return state
