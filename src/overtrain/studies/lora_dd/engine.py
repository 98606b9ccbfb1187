"""The lora-dd computation: every part's rank sweep in one run (`mlp_part`, `lm_part`). Rows:
``record = 'cell'`` (one per method, rank and seed) and ``'train_curve'`` (the training loss every
``curve_every`` steps) and ``'lr_tune'`` (the learning-rate tuning per rank), each with its part in ``task``; info: each part's ``<task>_*`` keys."""

from __future__ import annotations

from overtrain.studies.lora_dd.config import LoraDDConfig
from overtrain.studies.lora_dd.lm_part import run_lora_lm
from overtrain.studies.lora_dd.mlp_part import run_lora_mlp

RUNNERS = {"mlp": run_lora_mlp, "lm": run_lora_lm}
"""Each part's sweep, by task name."""


def compute(cfg: LoraDDConfig, progress=lambda done, total: None) -> tuple[list[dict], dict]:
    """Every cell of every part; `progress` counts cells over all parts."""
    parts = cfg.parts()
    sizes = {t: (len(p.methods) * len(p.seeds) + 1) * len(p.ranks) for t, p in parts.items()}
    total, rows, info, done = sum(sizes.values()), [], {}, 0
    for task, part in parts.items():
        part_rows, part_info = RUNNERS[task](part, lambda d, _t, offset=done: progress(offset + d, total))
        done += sizes[task]
        rows += part_rows
        info |= part_info
    return rows, {"wall_s": sum(info[f"{t}_wall_s"] for t in parts), **info}
