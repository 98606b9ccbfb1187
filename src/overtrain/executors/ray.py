"""The Ray executor: carry out a plan as Ray tasks, on a local Ray instance or on a cluster.

Same contract as the local executor (`overtrain.executors.local`), same `PlanResult`: runs start in
dependency order (a run's task is submitted once every parent it has in the plan is a success), a run
already ``success`` in the store is skipped, a failed run blocks its dependents only, and the runs write
to the one store the driver uses, so on a cluster `OVERTRAIN_HOME` must be a filesystem every node mounts
at the same path (NFS, Lustre, a cloud file share). The store needs no server: run directories are
content-addressed and written atomically, and a run's ``.lock`` (flock) keeps two tasks off one run.

Each task asks Ray for ``cpus_per_run`` CPUs (and gives torch that many threads) and for one GPU when the
run's config has ``device: cuda...`` (``auto`` too when the cluster has GPUs); Ray places the task and
sets ``CUDA_VISIBLE_DEVICES``, so ``cuda`` is the task's own GPU. Tasks get the driver's
``OVERTRAIN_HOME`` (the data cache lives there) and the store's absolute path. A worker process that dies
(killed, out of memory, node lost) is retried ``max_retries`` times by Ray, and the retry resumes the run
from its newest checkpoint; an exception inside a run is a failure, reported once and never retried.

Without an address a local Ray instance is started (and stopped at the end); an address (``auto``,
``host:6379``, ``ray://host:10001``) joins a running cluster; an already-initialised Ray (a notebook, a
test) is used as it is. Ray is an optional dependency (``pip install -e '.[ray]'``), imported only here
and only when the executor runs.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from overtrain import paths
from overtrain.config import to_plain
from overtrain.errors import UserError
from overtrain.executors.local import (
    PlanResult,
    _Book,
    _Display,
    _execute_in_worker,
    _kind_ref,
    _lookup,
    refuse_under_launch,
)
from overtrain.registry import EXECUTORS, RUN_KINDS
from overtrain.runs.kinds import RunKind
from overtrain.runs.manifest import one_line_error
from overtrain.runs.plan import Plan, PlanItem
from overtrain.runs.store import Store


def _import_ray():
    try:
        import ray
    except ImportError:
        raise UserError(
            "the ray executor needs Ray: pip install -e '.[ray]' (or pip install 'ray>=2.9')"
        ) from None
    return ray


def gpus_needed(config: Any, cluster_has_gpus: bool) -> int:
    """GPUs a run asks for: 1 when its ``device`` is ``cuda``/``cuda:N`` (or ``auto`` on a GPU cluster)."""
    device = str(getattr(config, "device", None) or "cpu")
    if device.startswith("cuda"):
        return 1
    return 1 if device == "auto" and cluster_has_gpus else 0


def _task(
    kind_ref: str | RunKind, plain: dict[str, Any], run_id: str, root: str, threads: int, redo: bool = False
) -> dict:
    """Ray task body: give torch the task's CPUs, check the store is visible, run (errors come back as
    data)."""
    import torch

    torch.set_num_threads(threads)
    if not Path(root).is_dir():
        return {
            "ok": False,
            "error": f"StoreNotVisible: the run store {root} does not exist on node "
            f"{socket.gethostname()}; put OVERTRAIN_HOME on a filesystem shared by every node",
        }
    return _execute_in_worker(kind_ref, plain, run_id, root, redo)


def _connect(ray, address: str | None, num_cpus: int | None) -> bool:
    """Initialise Ray unless it already is; returns whether this call started it (and must stop it)."""
    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "logging_level": "warning"}
    if address is None:
        kwargs["num_cpus"] = num_cpus
    try:
        ray.init(address=address, **kwargs)
    except (ConnectionError, ValueError, RuntimeError) as exc:
        where = f"the Ray cluster at {address}" if address else "a local Ray instance"
        raise UserError(f"cannot start or reach {where}: {one_line_error(exc)}") from None
    return True


@EXECUTORS.register("ray", help="Ray tasks, local or on a cluster (--address); needs overtrain[ray]")
def run_plan(
    plan: Plan,
    store: Store | None = None,
    *,
    workers: int | None = None,
    progress: bool = True,
    stop_on_failure: bool = False,
    kinds: Mapping[str, RunKind] | Any = None,
    address: str | None = None,
    cpus_per_run: int = 1,
    max_retries: int = 1,
    num_cpus: int | None = None,
) -> PlanResult:
    """Execute every run of `plan` that is not already a success as Ray tasks, in dependency order.

    Args:
        plan: the runs.
        store: the run store (default ``Store()``); on a cluster it must be on a shared filesystem.
        workers: most runs in flight at once (default: no cap; Ray queues tasks until resources free up).
        progress: show the overall bar and one line per settled run on stderr.
        stop_on_failure: after the first failure submit nothing new (the rest counts as blocked).
        kinds: where run kinds are looked up (default `RUN_KINDS`); a kind not in `RUN_KINDS` is pickled.
        address: a Ray cluster to join (``auto``, ``host:port``, ``ray://host:port``); None starts a local
            Ray instance for the duration of the call.
        cpus_per_run: CPUs each task reserves and torch threads it uses.
        max_retries: Ray retries of a task whose worker process died (not of a run that raised).
        num_cpus: CPUs of the local instance (default: all); ignored with `address`.

    Returns:
        A `PlanResult`. Failures do not raise: they are in ``result.failed`` (and each run's manifest).

    Raises:
        UserError: Ray is not installed or cannot be reached, bad arguments, an unknown kind, a dependency
            cycle, or a dependency that is neither in the plan nor finished.
    """
    if workers is not None and workers < 1:
        raise UserError(f"workers must be >= 1, got {workers}")
    if cpus_per_run < 1:
        raise UserError(f"cpus_per_run must be >= 1, got {cpus_per_run}")
    refuse_under_launch()
    store = store or Store()
    kinds = RUN_KINDS if kinds is None else kinds
    ordered = plan.order(store)
    kind_of = {item.kind: _lookup(kinds, item.kind) for item in ordered}
    refs = {name: _kind_ref(kind, kinds) for name, kind in kind_of.items()}
    ray = _import_ray()
    root = Path(store.root).absolute()
    root.mkdir(parents=True, exist_ok=True)
    started = _connect(ray, address, num_cpus)
    result = PlanResult()
    try:
        has_gpus = ray.cluster_resources().get("GPU", 0) > 0
        task = ray.remote(_task)
        # a cluster's workers do not inherit the driver's environment: the data cache must be the driver's
        env = {"env_vars": {"OVERTRAIN_HOME": str(paths.home())}}
        with _Display(progress, len(ordered)) as display:
            book = _Book({item.run_id for item in ordered}, result, display, stop_on_failure)

            def submit(item: PlanItem):
                options = {
                    "num_cpus": cpus_per_run,
                    "num_gpus": gpus_needed(item.config, has_gpus),
                    "max_retries": max_retries,
                    "name": f"{item.kind}/{item.run_id}",
                    "runtime_env": env,
                }
                return task.options(**options).remote(
                    refs[item.kind], to_plain(item.config), item.run_id, str(root), cpus_per_run, item.redo
                )

            _schedule(ray, ordered, book, store, submit, workers)
        if progress:
            display.console.print(f"runs: {result.summary()}", highlight=False)
    finally:
        if started:
            ray.shutdown()
    return result


def _schedule(ray, ordered: list[PlanItem], book: _Book, store: Store, submit, workers: int | None) -> None:
    """Submit ready runs (plan order, at most `workers` in flight), settle each as its task returns."""
    pending = list(ordered)
    running: dict[Any, PlanItem] = {}
    try:
        while pending or running:
            for item in list(pending):
                state = book.state(item)
                if state == "blocked":
                    pending.remove(item)
                    book.block(item)
                elif state == "ready" and (workers is None or len(running) < workers):
                    pending.remove(item)
                    running[submit(item)] = item
            if not running:  # nothing in flight and nothing startable: every pending run waits on a bad dep
                for item in pending:
                    book.block(item)
                break
            finished, _ = ray.wait(list(running), num_returns=1)
            for ref in finished:
                item = running.pop(ref)
                try:
                    reply = ray.get(ref)
                except Exception as exc:  # the worker died past its retries, or the task was cancelled
                    reply = {"ok": False, "error": one_line_error(exc)}
                if reply["ok"]:
                    book.finish(item, reply["skipped"], reply["wall_s"])
                else:
                    book.fail(item, reply["error"], store)
    except BaseException:
        for ref in running:  # interrupted: do not leave the runs going on a cluster
            ray.cancel(ref, force=True)
        raise
