"""The ``probe`` run kind: one registered probe run on one checkpoint of a pre-training run.

A probe (``overtrain ls probes``) is a class registered in `PROBES` with ``config_cls``,
``__init__(cfg)``, ``batches(source, seq_len) -> [LongTensor]`` and
``run(model, batches, *, init_state, autocast_dtype) -> result`` whose ``rows(**extra)`` go to
``probes.jsonl`` and ``summary_rows(**extra)`` to ``evals.jsonl``. Adding a probe adds no run kind.
"""

from __future__ import annotations

import json
import time
from typing import Any, Literal

import torch
from pydantic import Field, ValidationError, model_validator

from overtrain.config import NotInId, Registered, format_validation_error, identity
from overtrain.errors import UnknownNameError
from overtrain.registry import DATASETS, PROBES, RUN_KINDS
from overtrain.runs.kinds import RunKind
from overtrain.training import checkpoint as ckpt
from overtrain.training.parent import ParentCheckpoint, parents, resolve_parent
from overtrain.training.pretrain import resolve_device


class ProbeRunConfig(ParentCheckpoint):
    """One probe on one checkpoint (``overtrain probe``)."""

    schema_version: int = 1
    """Config schema version."""

    probe: str = "noise"
    """Registered probe name (``overtrain ls probes``)."""

    settings: dict[str, Any] = {}
    """The probe's own config (validated against its config class; unset keys take its defaults)."""

    data: Registered(DATASETS) | None = None
    """Data the probe evaluates on (default: the parent's pre-training source, ``val`` split)."""

    init_checkpoint: str | None = "step_00000000"
    """The parent's initialisation checkpoint, the scale of init-scale noise (None: the config's
    ``initializer_range``)."""

    dtype: Literal["float32", "bfloat16"] = "float32"
    """Compute precision (bf16 autocast)."""

    device: str = NotInId("auto")
    """``auto`` (cuda, else mps, else cpu), ``cpu``, ``cuda``, ``cuda:N`` or ``mps``."""

    eval_seq_len: int | None = Field(None, ge=2)
    """Sequence length of the probe's batches (default: the parent's)."""

    @model_validator(mode="after")
    def _settings(self) -> ProbeRunConfig:
        try:
            cls = PROBES.get(self.probe).config_cls
        except UnknownNameError as exc:  # pydantic reports ValueErrors as one line under the config
            raise ValueError(str(exc)) from None
        try:
            # identity(): every default spelled out (a stable run id), execution-only fields left out
            normalised = json.loads(json.dumps(identity(cls.model_validate(self.settings))))
        except ValidationError as exc:
            raise ValueError(format_validation_error(exc, prefix="settings.")) from None
        if normalised != self.settings:
            object.__setattr__(self, "settings", normalised)
        return self


def run_probe(cfg: ProbeRunConfig, run) -> None:
    started = time.perf_counter()
    for name in ("probes", "evals"):
        run.truncate(name, 0)  # probes are redone whole on a restart
    parent_dir, parent = resolve_parent(cfg, run.store)
    device = resolve_device(cfg.device)
    model, _, meta = ckpt.load_checkpoint(parent_dir / "ckpt" / cfg.checkpoint, device=str(device))
    entry = PROBES.get(cfg.probe)
    probe = entry(entry.config_cls.model_validate(cfg.settings))
    source = (cfg.data or parent.data).build()
    batches = probe.batches(source, cfg.eval_seq_len or parent.train.seq_len)
    init_dir = parent_dir / "ckpt" / cfg.init_checkpoint if cfg.init_checkpoint else None
    init_state = init_dir if init_dir is not None and init_dir.is_dir() else None
    bf16 = cfg.dtype == "bfloat16" and not getattr(entry, "float32_only", False)  # curvature: float32 only
    result = probe.run(model, batches, init_state=init_state, autocast_dtype=torch.bfloat16 if bf16 else None)
    extra = {
        "parent": cfg.parent_id,
        "checkpoint": cfg.checkpoint,
        "tokens_seen": meta.get("tokens_seen"),
        "budget": meta.get("budget"),
        "tokens_per_param": meta.get("tokens_per_param"),
    }
    for row in result.rows(**extra):
        run.log_probe(row)
    for row in result.summary_rows(**extra):
        run.log_eval(row)
    run.set_info(wall_s=time.perf_counter() - started, init_state=str(init_state) if init_state else None)


RUN_KINDS.register(
    "probe",
    RunKind(
        name="probe",
        config_cls=ProbeRunConfig,
        run=run_probe,
        parents=parents,
        help="run one registered probe (noise sensitivity, ...) on one pre-training checkpoint",
    ),
)
