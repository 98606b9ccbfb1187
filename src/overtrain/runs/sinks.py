"""Optional live mirrors of ``metrics.jsonl``: TensorBoard and Weights & Biases.

- ``OVERTRAIN_TENSORBOARD=DIR`` (or ``overtrain --tensorboard DIR``): one event directory per run,
  ``DIR/<kind>/<run_id>``, written with ``torch.utils.tensorboard.SummaryWriter`` (needs the
  ``tensorboard`` package: ``pip install 'overtrain[tensorboard]'``).
- ``OVERTRAIN_WANDB=<project>``: one wandb run per run (name ``<kind>/<run_id>``, the resolved config as
  its config), when ``wandb`` is importable (the CLI refuses the variable without it, exit 2).

Every numeric field of a metrics record becomes a scalar named by its key (``train/loss``); a record's
string fields (tags such as ``line: main``) are appended to the name (``train/loss/main``) so that the
lines of one run (a WSD branch, the monitor) are separate curves. The x-axis is ``tokens_seen`` (the
lab's axis: comparable across batch sizes), else ``step``. A resumed run re-logs the records after its
checkpoint, so a mirror may hold those points twice; ``metrics.jsonl`` is the record, the mirror a view.

A mirror never breaks a run and never enters a run id: a sink that cannot be opened or written is
dropped with one warning (`MetricsSinkWarning`, once per process and sink), and the run goes on.
"""

from __future__ import annotations

import importlib.util
import math
import os
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from overtrain.config import to_plain
from overtrain.errors import UserError

TENSORBOARD_ENV = "OVERTRAIN_TENSORBOARD"
WANDB_ENV = "OVERTRAIN_WANDB"
_AXES = ("step", "tokens_seen")


class MetricsSinkWarning(UserWarning):
    """A metrics mirror (TensorBoard, wandb) could not be opened or written; the run goes on without it."""


_warned: set[str] = set()


def _warn_once(sink: str, exc: BaseException) -> None:
    if sink in _warned:
        return
    _warned.add(sink)
    message = " ".join(str(exc).split()) or type(exc).__name__
    warnings.warn(f"{sink} mirror of the metrics is off: {message}", MetricsSinkWarning, stacklevel=3)


def scalars(record: Mapping[str, Any]) -> tuple[int | None, dict[str, float]]:
    """``(x, {name: value})`` of a metrics record: x is ``tokens_seen`` (else ``step``, else None); names
    carry the record's string tags as a suffix; NaN, infinite, boolean and non-numeric values are left
    out (``metrics.jsonl`` writes NaN as null)."""
    x = record.get("tokens_seen", record.get("step"))
    tags = [str(v) for k, v in record.items() if isinstance(v, str) and k not in _AXES]
    suffix = "".join(f"/{t}" for t in tags)
    out = {}
    for key, value in record.items():
        if key in _AXES or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if math.isfinite(value):
            out[f"{key}{suffix}"] = float(value)
    return (int(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else None), out


class TensorBoardSink:
    """Scalars to ``<root>/<kind>/<run_id>`` with a `SummaryWriter` (flushed after every record: live).

    Args:
        logdir: the run's event directory.
        writer_factory: ``logdir -> writer`` with ``add_scalar(tag, value, global_step)``, ``flush()``
            and ``close()`` (default: torch's `SummaryWriter`; tests pass a fake).
    """

    name = "tensorboard"

    def __init__(self, logdir: Path, writer_factory: Callable[[str], Any] | None = None) -> None:
        if writer_factory is None:
            from torch.utils.tensorboard import SummaryWriter  # ImportError without `tensorboard`

            writer_factory = SummaryWriter
        self.writer = writer_factory(str(logdir))

    def add(self, record: Mapping[str, Any]) -> None:
        x, values = scalars(record)
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, global_step=x)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbSink:
    """One wandb run per run; scalars logged against ``tokens_seen`` (wandb's own step must only grow,
    which WSD branches and resumed runs do not)."""

    name = "wandb"

    def __init__(self, project: str, kind: str, run_id: str, config: Any) -> None:
        import wandb

        self.run = wandb.init(
            project=project,
            name=f"{kind}/{run_id}",
            id=f"{kind}-{run_id}",  # a rerun or resume of one run continues one wandb run
            resume="allow",
            config=to_plain(config) if config is not None else None,
            reinit=True,
        )
        self.run.define_metric("*", step_metric="tokens_seen")

    def add(self, record: Mapping[str, Any]) -> None:
        x, values = scalars(record)
        if values:
            self.run.log({**values, "tokens_seen": x})

    def close(self) -> None:
        self.run.finish()


class MetricsMirror:
    """The sinks of one open run (none unless the environment asks for them); `add` is called with every
    metrics record after it is in ``metrics.jsonl``."""

    def __init__(self, sinks: list[Any]) -> None:
        self.sinks = sinks

    def add(self, record: Mapping[str, Any]) -> None:
        for sink in list(self.sinks):
            try:
                sink.add(record)
            except Exception as exc:  # noqa: BLE001 - a mirror must never fail the run it mirrors
                _warn_once(sink.name, exc)
                self.sinks.remove(sink)

    def close(self) -> None:
        for sink in self.sinks:
            try:
                sink.close()
            except Exception as exc:  # noqa: BLE001
                _warn_once(sink.name, exc)
        self.sinks = []


def open_mirror(kind: str, run_id: str, config: Any = None) -> MetricsMirror:
    """The mirrors the environment asks for, opened for one run; a sink that fails to open is skipped
    with a warning (once)."""
    sinks: list[Any] = []
    root = os.environ.get(TENSORBOARD_ENV)
    if root:
        try:
            sinks.append(TensorBoardSink(Path(root).expanduser() / kind / run_id))
        except Exception as exc:  # noqa: BLE001 - tensorboard missing, a directory that cannot be made
            _warn_once("tensorboard", exc)
    project = os.environ.get(WANDB_ENV)
    if project:
        try:
            sinks.append(WandbSink(project, kind, run_id, config))
        except Exception as exc:  # noqa: BLE001
            _warn_once("wandb", exc)
    return MetricsMirror(sinks)


def check_environment() -> None:
    """Refuse, before any run starts, ``OVERTRAIN_WANDB`` without wandb installed (the CLI calls this:
    exit 2, one line). A missing ``tensorboard`` is only a warning when the first run opens its mirror:
    the metrics are in ``metrics.jsonl`` either way."""
    if os.environ.get(WANDB_ENV) and importlib.util.find_spec("wandb") is None:
        raise UserError(f"{WANDB_ENV} is set but wandb is not installed: pip install wandb (or unset it)")
