"""Checkpoints: Hugging Face model directories for science, and one resumable trainer state.

- ``ckpt/<name>/`` (``step_<N>``, ``budget_<T>``): a `save_pretrained` directory (safetensors) plus the
  tokenizer and ``meta.json``; loads with ``AutoModelForCausalLM.from_pretrained`` alone.
- ``ckpt/resume/``: the newest resumable state: model and optimizer tensors (safetensors), the torch RNG,
  and a JSON record of where training stands. Only the newest is kept: old optimizer states are dead
  weight (two extra copies of the model each).

Everything is written into a temporary directory and renamed into place, so a directory that exists is
complete. Weights are read with safetensors only; pickle files are refused.

Every directory written here carries ``checksums.json`` (sha256 of each file). Loading verifies it first:
a truncated or altered file is a one-line `CheckpointError` naming the file, never a silently used
checkpoint. A damaged resume state is moved aside (``ckpt/.damaged-resume-*``) as it is reported, so the
run's next attempt starts over instead of failing on it again. Directories without the sidecar (written
before hashes were kept, or by other tools) load as before, checked only by the safetensors reader.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import torch

from overtrain.core.atomic import atomic_dir, atomic_write_json
from overtrain.core.weights import check_model_dir, verify_checkpoint
from overtrain.errors import CheckpointError

META = "meta.json"
RESUME = "resume"


def _quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # one bar per checkpoint would drown the run's own progress bar


def save_checkpoint(path: Path, model, tokenizer, meta: dict[str, Any]) -> Path:
    """Write `model` (+ `tokenizer`, `meta`) as a `from_pretrained`-loadable directory at `path`."""
    _quiet_transformers()
    with atomic_dir(path, checksums=True) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        (tmp / META).write_text(json.dumps(meta, indent=1, sort_keys=True))
    return path


def load_checkpoint(
    path: Path,
    *,
    device: str = "cpu",
    attn_implementation: str | None = None,
    dtype: torch.dtype | None = None,
):
    """Load a causal LM saved by `save_checkpoint` (or any HF directory with safetensors weights).

    Weights that do not fit the config (a missing tensor, a shape mismatch) are refused: transformers
    would re-initialise them at random and only log a report.

    Returns:
        ``(model, tokenizer_or_None, meta_dict)``.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    path = Path(path)
    check_model_dir(path)
    _quiet_transformers()
    kwargs: dict[str, Any] = {"use_safetensors": True}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    if dtype is not None:
        kwargs["dtype"] = dtype
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # its multi-line load report goes to stderr; we raise one line instead
    try:
        model, info = AutoModelForCausalLM.from_pretrained(path, output_loading_info=True, **kwargs)
    except Exception as exc:  # transformers/safetensors raise many types for a damaged file
        raise CheckpointError(f"corrupt checkpoint {path}: {_one_line(exc)}") from None
    finally:
        hf_logging.set_verbosity(verbosity)
    unfit = sorted(info.get("missing_keys") or [])
    unfit += sorted(str(k[0]) for k in info.get("mismatched_keys") or [])
    if unfit:
        raise CheckpointError(
            f"corrupt checkpoint {path}: weights do not fit config.json "
            f"({len(unfit)} tensors missing or misshapen, e.g. {unfit[0]})"
        )
    model = model.to(device)
    tokenizer = None
    if (path / "tokenizer.json").is_file() or (path / "tokenizer_config.json").is_file():
        try:
            tokenizer = AutoTokenizer.from_pretrained(path)
        except Exception as exc:
            raise CheckpointError(f"corrupt tokenizer in {path}: {_one_line(exc)}") from None
    meta = read_meta(path)
    return model, tokenizer, meta


def read_meta(path: Path) -> dict[str, Any]:
    file = Path(path) / META
    if not file.is_file():
        return {}
    try:
        return json.loads(file.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"corrupt {file}: {exc}") from None


def list_checkpoints(run_dir: Path) -> list[dict[str, Any]]:
    """Every complete model checkpoint of a run: its meta plus ``name`` and ``path``, by tokens seen."""
    out = []
    root = Path(run_dir) / "ckpt"
    if not root.is_dir():
        return out
    for d in root.iterdir():
        if d.name.startswith(".") or d.name == RESUME or not (d / META).is_file():
            continue
        meta = read_meta(d)
        out.append({**meta, "name": d.name, "path": str(d)})
    out.sort(key=lambda m: (m.get("tokens_seen", 0), m["name"]))
    return out


# --- resumable trainer state ---------------------------------------------------------------------------


def save_trainer_state(
    path: Path, model, optimizer: torch.optim.Optimizer, state: dict[str, Any], ema=None
) -> None:
    """Everything needed to continue bit-exactly: weights, AdamW moments, RNG, `state` (JSON) and, when
    given, the module `ema` that holds a running average of the weights (``ema.safetensors``)."""
    from safetensors.torch import save_file, save_model

    opt = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {"rng.torch": torch.get_rng_state()}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, entry in opt["state"].items():
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{idx}.{key}"] = value.detach().contiguous().cpu()
            else:
                scalars.setdefault(str(idx), {})[key] = value
    if torch.cuda.is_available():
        tensors["rng.cuda"] = torch.cuda.get_rng_state()
    with atomic_dir(path, checksums=True) as tmp:
        save_model(model, str(tmp / "model.safetensors"))
        if ema is not None:
            save_model(ema, str(tmp / "ema.safetensors"))
        save_file(tensors, str(tmp / "optimizer.safetensors"))
        atomic_write_json(
            tmp / "trainer_state.json",
            {"state": state, "param_groups": opt["param_groups"], "scalars": scalars},
        )


def quarantine(path: Path, exc: CheckpointError) -> CheckpointError:
    """Move a damaged resume state aside (``.damaged-<name>-<time>``, ignored by every listing) and return
    `exc` with a note saying so: the run's next attempt finds no state and starts over."""
    path = Path(path)
    aside = path.with_name(f".damaged-{path.name}-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}")
    try:
        os.rename(path, aside)
    except OSError:
        return exc
    return CheckpointError(f"{exc}; moved aside to {aside.name}: the next attempt starts the run over")


def load_trainer_state(path: Path, model, optimizer: torch.optim.Optimizer, ema=None) -> dict[str, Any]:
    """Restore what `save_trainer_state` wrote into `model`, `optimizer` (and `ema`, when given); return
    the JSON state.

    Raises:
        CheckpointError: the state is damaged (checksum mismatch, truncated or unreadable file); it has
            been moved aside (`quarantine`), so a retry starts the run over rather than failing again.
    """
    from safetensors.torch import load_file, load_model

    path = Path(path)
    try:
        verify_checkpoint(path, "resume state")
    except CheckpointError as exc:
        raise quarantine(path, exc) from None
    try:
        record = json.loads((path / "trainer_state.json").read_text())
        missing, unexpected = load_model(model, str(path / "model.safetensors"), strict=False)
        if missing or unexpected:
            raise ValueError(
                f"weights do not fit the model (missing {missing[:2]}, unexpected {unexpected[:2]})"
            )
        tensors = load_file(str(path / "optimizer.safetensors"))
        if ema is not None:
            missing, unexpected = load_model(ema, str(path / "ema.safetensors"), strict=False)
            if missing or unexpected:
                raise ValueError("the weight average does not fit the model")
    except Exception as exc:
        raise quarantine(path, CheckpointError(f"corrupt resume state {path}: {_one_line(exc)}")) from None
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("state."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = value
    for idx, entry in record.get("scalars", {}).items():
        state.setdefault(int(idx), {}).update(entry)
    groups = record["param_groups"]
    for group in groups:
        if "betas" in group:
            group["betas"] = tuple(group["betas"])
    optimizer.load_state_dict({"state": state, "param_groups": groups})
    torch.set_rng_state(tensors["rng.torch"])
    if "rng.cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng.cuda"])
    return record["state"]


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")
