"""Data-parallel training over several processes (DDP), launched with ``accelerate launch`` or ``torchrun``.

    accelerate launch --num_processes 2 --cpu -m overtrain.cli.main pretrain --config cfg.yaml   # gloo
    accelerate launch --num_processes 8 -m overtrain.cli.main pretrain --config cfg.yaml device=cuda  # nccl

The launcher starts N copies of the command with ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` set. Every copy
executes the same run (`overtrain.runs.replicated`): rank 0 decides whether it runs (skip if done, busy if
locked) and tells the others, and only rank 0 writes the run directory; the others get a run handle that
writes nothing. Within the run:

- every process builds the same model from the same seed and draws the same *global* batch of step s
  (indexed batches), keeping its contiguous 1/N of the rows (`shard`): the global batch is the config's
  ``batch_size`` whatever N is, so the run id and the trajectory do not depend on N;
- the model is wrapped in `DistributedDataParallel` (`wrap`), which averages gradients over the processes
  during ``backward``: each optimizer step applies the gradient of the global batch's mean loss, as one
  process would (per-process means over equal shards average to the global mean);
- the training loss of a segment is averaged over the processes (`all_mean`); evaluation is not split:
  every process evaluates the same held-out batches on the same weights (a small share of a run, and a
  collective inside the shared `evaluate_loss` would hang any caller that runs on one rank only), and
  rank 0 writes the numbers. Records match a one-process run up to float summation order.

The process group is initialised by accelerate's `PartialState` (gloo on CPU, nccl on CUDA; it also gives
each CPU process its share of the cores). Outside a launch everything here is a no-op.
"""

from __future__ import annotations

import inspect
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from overtrain.errors import UserError

if TYPE_CHECKING:  # torch is imported where it is used: the store asks `launched()` without loading torch
    import torch


@dataclass(frozen=True)
class World:
    """Where this process stands: rank 0 of 1 outside a launch.

    Attributes:
        rank: this process's global rank.
        size: number of processes.
        local_rank: rank on this machine (selects its GPU).
    """

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes the store and prints."""
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        return default


def world() -> World:
    """This process's rank and the number of processes, from the launcher's environment."""
    return World(_env_int("RANK", 0), _env_int("WORLD_SIZE", 1), _env_int("LOCAL_RANK", 0))


def launched() -> bool:
    """True when a launcher started this process as one of several (``WORLD_SIZE`` > 1)."""
    return world().size > 1


def active() -> bool:
    """True once the process group of a multi-process launch is up (collectives are live)."""
    import torch

    return (
        torch.distributed.is_available()
        and torch.distributed.is_initialized()
        and torch.distributed.get_world_size() > 1
    )


def init(device: str = "cpu") -> World:
    """Start the process group of a launch (idempotent; no-op outside one) and return the world.

    Args:
        device: the run's device (``cpu``, ``cuda``, ``cuda:N``, ``auto``): the backend is nccl when the
            run trains on CUDA, else gloo.
    """
    w = world()
    if w.size > 1 and not active():
        import torch
        from accelerate import PartialState

        cpu = not (device.startswith("cuda") or (device == "auto" and torch.cuda.is_available()))
        PartialState(cpu=cpu)
        if not active():
            raise UserError(f"could not start the process group of {w.size} processes (device {device})")
    return w


def auto_device() -> str:
    """What ``device: auto`` (every config's default) means here: ``cuda`` if available, else ``mps``
    (Apple GPUs) if available, else ``cpu``."""
    import torch

    if torch.cuda.is_available():
        return "cuda"
    mps = getattr(torch.backends, "mps", None)
    return "mps" if mps is not None and mps.is_available() else "cpu"


def device_name(setting: str) -> str:
    """The device a run with this ``device`` setting computes on, as the manifest records it: ``auto``
    resolved (`auto_device`), a bare ``cuda`` in a launch this process's ``cuda:<local_rank>``; any other
    setting as given (a bad one is refused later, by `overtrain.training.pretrain.resolve_device`)."""
    name = auto_device() if setting == "auto" else setting
    return f"cuda:{world().local_rank}" if name == "cuda" and launched() else name


def device_for(device: torch.device) -> torch.device:
    """A bare ``cuda`` becomes this process's own GPU (``cuda:<local_rank>``) in a launch."""
    if device.type == "cuda" and device.index is None and launched():
        import torch

        return torch.device("cuda", world().local_rank)
    return device


def wrap(model: torch.nn.Module) -> torch.nn.Module:
    """`model` in `DistributedDataParallel` when the process group is up, else `model` itself.

    Buffers are not synchronised at each forward (rotary tables are computed identically everywhere), and the
    replicas start equal (same seed; DDP also broadcasts rank 0's parameters on construction).
    """
    if not active():
        return model
    import torch
    from torch.nn.parallel import DistributedDataParallel

    device = next(model.parameters()).device
    ids = None
    if device.type == "cuda":
        ids = [device.index if device.index is not None else torch.cuda.current_device()]
    newer = "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters  # torch >= 2.13
    no_sync = {"forward_sync_buffers": False} if newer else {"broadcast_buffers": False}
    return DistributedDataParallel(model, device_ids=ids, **no_sync)


def is_wrapped(model: torch.nn.Module) -> bool:
    from torch.nn.parallel import DistributedDataParallel

    return isinstance(model, DistributedDataParallel)


def shard(batch: torch.Tensor) -> torch.Tensor:
    """This process's contiguous share of the rows of a global batch (the batch itself outside a launch).

    Raises:
        UserError: the batch does not split evenly (equal shards are what make the mean of the
            per-process means the global mean).
    """
    if not active():
        return batch
    import torch

    size, rank = torch.distributed.get_world_size(), torch.distributed.get_rank()
    if batch.shape[0] % size:
        raise UserError(
            f"a batch of {batch.shape[0]} sequences does not split over {size} processes; "
            f"make the batch size a multiple of {size}"
        )
    per = batch.shape[0] // size
    return batch[rank * per : (rank + 1) * per]


def all_mean(value: torch.Tensor) -> torch.Tensor:
    """The mean of a scalar tensor over the processes (one all-reduce; the value itself outside a launch)."""
    if not active():
        return value
    import torch

    out = value.detach().clone()
    torch.distributed.all_reduce(out)
    return out / torch.distributed.get_world_size()


def broadcast(obj=None):
    """Rank 0's `obj` on every process (a picklable object; `obj` itself outside a launch)."""
    if not active():
        return obj
    import torch

    box = [obj]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]
