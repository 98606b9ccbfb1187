"""Run kinds: the unit of work the store records and executors schedule.

A kind pairs a config class with a function that does the work inside an open run directory. Built-in
kinds register in modules of this package (``pretrain.py``); adding a kind is adding a file here.
"""

from __future__ import annotations

import hashlib
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from overtrain.config import config_hash

if TYPE_CHECKING:
    from overtrain.config import BaseConfig
    from overtrain.runs.run import Run


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
        group_key: ``group_key(cfg, store) -> key | None``: runs of this kind with equal keys (not None) may
            execute together through `run_group`, once their parents are done (the key may read them).
            None for a run that must execute alone (a large model, a feature the group path lacks).
        run_group: ``run_group(cfgs, runs, on_progress) -> [exception | None, ...]``: the work of several
            runs as one computation, writing each member through its own `Run` exactly as `run` would;
            per member, the exception it failed with or None (`Store.execute_group`).
        version: ``version() -> str``, the version of the code whose output the run stores (a study's
            analysis: the digest of the modules that decide its verdicts, `code_digest`). It enters the
            run id, so changed code is a new run and old results are never served for it. None (every
            training and probe kind): the id is the config's hash alone.
    """

    name: str
    config_cls: type[BaseConfig]
    run: Callable[[BaseConfig, Run], None]
    parents: Callable[[Any], list[tuple[str, str]]] = field(default=_no_parents)
    total_steps: Callable[[Any], int] | None = None
    help: str = ""
    data_parallel: bool = False
    version: Callable[[], str] | None = None
    group_key: Callable[[Any, Any], Any] | None = None
    run_group: Callable[..., list[BaseException | None]] | None = None

    def run_id(self, cfg: BaseConfig) -> str:
        """The id of the run of `cfg`: `config_hash` of the config, with the kind's code version."""
        return config_hash(cfg, version=None if self.version is None else self.version())


def code_digest(*modules: str) -> str:
    """Short sha256 over the source files of `modules` (dotted names; a package counts every module in
    its folder), in the order given: the version of the code they hold."""
    digest = hashlib.sha256()
    for name in modules:
        spec = importlib.util.find_spec(name)
        if spec is None or spec.origin is None:
            raise ValueError(f"no source for module {name!r}")
        origin = Path(spec.origin)
        files = sorted(origin.parent.rglob("*.py")) if origin.name == "__init__.py" else [origin]
        for file in files:
            digest.update(str(file.relative_to(origin.parent)).encode() + b"\0" + file.read_bytes())
    return digest.hexdigest()[:12]
