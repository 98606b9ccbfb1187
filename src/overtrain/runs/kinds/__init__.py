"""Run kinds: the unit of work the store records and executors schedule.

A kind pairs a config class with a function that does the work inside an open run directory. Built-in
kinds register in modules of this package (``pretrain.py``); adding a kind is adding a file here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from overtrain.config import BaseConfig
    from overtrain.runs.store import Run


def _no_parents(cfg: Any) -> list[tuple[str, str]]:
    return []


@dataclass(frozen=True)
class RunKind:
    """A kind of run (``pretrain``; later ``finetune``, ``probe``, ...).

    Attributes:
        name: the kind's name; run dirs live under ``runs/<name>/<run_id>/``.
        config_cls: the pydantic config class of one run of this kind.
        run: ``run(cfg, run)`` does the work, logging through the open `Run`; it must resume from the
            run's own newest complete checkpoint when one exists, and raise on failure.
        parents: ``parents(cfg) -> [(kind, run_id), ...]``, the upstream runs this one reads.
        total_steps: ``total_steps(cfg) -> int`` units of work, for the progress bar (None: unknown).
        help: one line for ``overtrain ls kinds``.
        data_parallel: `run` may execute on every process of a multi-process launch (DDP): it shards
            batches and wraps the model through `overtrain.distributed` and writes checkpoints only when
            ``run.writes`` (`overtrain.runs.replicated`). Other kinds are refused under a launch.
    """

    name: str
    config_cls: type[BaseConfig]
    run: Callable[[BaseConfig, Run], None]
    parents: Callable[[Any], list[tuple[str, str]]] = field(default=_no_parents)
    total_steps: Callable[[Any], int] | None = None
    help: str = ""
    data_parallel: bool = False
