"""Validate shipped or user config files: run configs (``configs/<kind>/*.yaml``) and sweep files."""

from __future__ import annotations

from pathlib import Path

from overtrain.config import build_config, load_yaml
from overtrain.errors import UserError
from overtrain.registry import RUN_KINDS
from overtrain.runs.plan import load_sweep


def validate_file(path: str | Path) -> str:
    """Load and validate one YAML file; return what it is (``"pretrain"``, ``"sweep of 4 runs"``).

    A sweep file has ``kind`` and ``base`` (or ``axes``); a run config is of the kind named by its parent
    directory, ``configs/<kind>/name.yaml``.
    """
    path = Path(path)
    data = load_yaml(path)
    if "axes" in data or ("kind" in data and "base" in data):
        return f"sweep of {len(load_sweep(path).items)} runs"
    kind = path.parent.name
    if kind not in RUN_KINDS:
        raise UserError(
            f"{path}: cannot tell which run kind this config is for (put it under configs/<kind>/)"
        )
    build_config(RUN_KINDS.get(kind).config_cls, path)
    return kind
