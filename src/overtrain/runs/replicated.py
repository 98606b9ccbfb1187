"""One run executed by every process of a multi-process launch (DDP), written by rank 0 alone.

`Store.execute` comes here when a launcher started several processes (`overtrain.distributed.launched`).
Rank 0 goes through the ordinary one-process path (skip if done, lock, manifest, ``kind.run``, fsync,
``success`` last) and broadcasts, exactly once, what it decided before the work starts: ``skip``,
``run``, or the error it hit (a busy lock, say). The other ranks follow that decision: they run
``kind.run`` with a `ReplicaRun`, a handle that reads the run directory (a resume state, a parent's
checkpoint) but never writes it, and after the run they wait for rank 0's ``success`` so that no process
reports a run done before its manifest says so.

Only kinds marked ``data_parallel`` (pre-training, fine-tuning) may run this way: their code shards
batches, wraps the model for DDP and guards checkpoint writes with ``run.writes``. Every other kind is
refused, identically on every rank. A run that raises after the work started ends rank 0 with the usual
``failed`` manifest; the launcher then stops the others (they wait in a collective).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from overtrain import distributed
from overtrain.config import BaseConfig
from overtrain.errors import OvertrainError, RunBusy, RunFailed, UserError
from overtrain.runs.kinds import RunKind
from overtrain.runs.manifest import one_line_error
from overtrain.runs.run import ProgressCallback, Run, RunOutcome

if TYPE_CHECKING:  # the store calls this module; it hands itself in
    from overtrain.runs.store import Store


class ReplicaRun(Run):
    """The run handle of a rank other than 0: reads like a `Run`, writes nothing (records, info,
    truncation, progress are dropped; kinds skip checkpoint writes when ``writes`` is False)."""

    writes = False

    def _append(self, name: str, record: Any) -> None:
        pass

    def set_info(self, **kv: Any) -> None:
        self._manifest.setdefault("info", {}).update(kv)

    def truncate(self, name: str, n_lines: int) -> None:
        pass

    def sync(self) -> None:
        pass

    def close(self) -> None:
        pass

    def progress(self, completed: int, total: int | None = None) -> None:
        pass


def execute_replicated(
    store: Store,
    kind: RunKind,
    cfg: BaseConfig,
    on_progress: ProgressCallback | None,
    parents: Any,
) -> RunOutcome:
    """`Store.execute` on one rank of a launch (see the module docstring)."""
    w = distributed.world()
    if not kind.data_parallel:
        raise UserError(
            f"run kind {kind.name!r} does not run data-parallel over {w.size} processes; "
            "launch it without accelerate/torchrun (pretrain and finetune do)"
        )
    distributed.init(str(getattr(cfg, "device", "cpu")))
    run_id = kind.run_id(cfg)
    if w.is_main:
        return _lead(store, kind, cfg, on_progress, parents)
    return _follow(store, kind, cfg, run_id)


def _lead(store: Store, kind: RunKind, cfg: BaseConfig, on_progress, parents) -> RunOutcome:
    told = False

    def run_and_tell(cfg_: BaseConfig, run: Run) -> None:
        nonlocal told
        distributed.broadcast(("run", None))
        told = True
        kind.run(cfg_, run)

    try:
        outcome = store._execute_here(dataclasses.replace(kind, run=run_and_tell), cfg, on_progress, parents)
    except BaseException as exc:
        if not told:  # failed before the work started (a busy lock, an unwritable store): the others stop too
            distributed.broadcast(("error", one_line_error(exc), isinstance(exc, RunBusy)))
        raise
    if not told:
        distributed.broadcast(("skip", None))
    else:
        distributed.broadcast(("success", outcome.wall_s))
    return outcome


def _follow(store: Store, kind: RunKind, cfg: BaseConfig, run_id: str) -> RunOutcome:
    decision = distributed.broadcast()
    run_dir = store.run_dir(kind.name, run_id)
    if decision[0] == "skip":
        return RunOutcome(kind.name, run_id, run_dir, "success", skipped=True)
    if decision[0] == "error":
        error: type[OvertrainError] = RunBusy if decision[2] else RunFailed
        raise error(f"rank 0: {decision[1]}")
    kind.run(cfg, ReplicaRun(store, kind.name, run_id, cfg, {}))
    status, wall_s = distributed.broadcast()
    return RunOutcome(kind.name, run_id, run_dir, status, skipped=False, wall_s=wall_s)
