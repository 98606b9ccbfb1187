"""Runs that start from a checkpoint of a finished pre-training run (fine-tuning, probes)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import field_validator

from overtrain.config import BaseConfig, build_config
from overtrain.errors import UserError
from overtrain.training.pretrain_config import PretrainConfig


class ParentCheckpoint(BaseConfig):
    """A checkpoint of a pre-training run, named by the run's id and the checkpoint's name."""

    parent: str
    """The pre-training run: ``<run_id>`` or ``pretrain/<run_id>`` (12 hex digits)."""

    checkpoint: str
    """Checkpoint name in the parent's ``ckpt/`` (``budget_<tokens>`` or ``step_<N>``)."""

    @field_validator("parent")
    @classmethod
    def _parent(cls, value: str | None) -> str | None:
        if value is None:  # a fine-tune of a local directory (FinetuneConfig.model_dir) has no parent run
            return None
        kind, _, run_id = value.rpartition("/")
        if (
            kind not in ("", "pretrain")
            or len(run_id) != 12
            or any(c not in "0123456789abcdef" for c in run_id)
        ):
            raise ValueError("must be a pre-training run id: 12 hex digits, optionally after 'pretrain/'")
        return f"pretrain/{run_id}"

    @field_validator("checkpoint")
    @classmethod
    def _checkpoint(cls, value: str | None) -> str | None:
        if value is None:
            return None
        # a name inside the parent's ckpt/, never a path that could leave it
        if not value or value in (".", "..") or value.startswith(".") or any(c in value for c in "/\\\0"):
            raise ValueError(
                "must be a checkpoint name in the parent's ckpt/ (budget_<tokens>, step_<N>), not a path"
            )
        return value

    @property
    def parent_id(self) -> str | None:
        return self.parent.split("/", 1)[1] if self.parent else None


def parents(cfg: ParentCheckpoint) -> list[tuple[str, str]]:
    """The run-kind `parents` function for configs with a `ParentCheckpoint` (none for a local directory)."""
    return [("pretrain", cfg.parent_id)] if cfg.parent else []


def resolve_parent(cfg: ParentCheckpoint, store) -> tuple[Path, Any]:
    """The parent's run directory and its `PretrainConfig`; a missing parent is a `UserError`."""
    if cfg.parent is None:
        raise UserError("this run reads a checkpoint of a pre-training run: give parent and checkpoint")
    parent_dir = store.run_dir("pretrain", cfg.parent_id)
    if not (parent_dir / "config.yaml").is_file():
        raise UserError(f"parent run {cfg.parent} not found in {store.root}")
    return parent_dir, build_config(PretrainConfig, parent_dir / "config.yaml")
