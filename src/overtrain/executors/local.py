"""The local executor: carry out a plan on this machine, in-process or in a pool of processes.

Runs start in dependency order. A run already ``success`` in the store is skipped, so running the same
plan again finishes what was left (a non-success run is redone and resumes from its own checkpoints).
A failed run blocks every run that depends on it, directly or not; independent runs continue. A run that
another process is writing (a second sweep on the same store) is waited for, then skipped once that
process has finished it: two sweeps sharing runs neither fail nor run anything twice.

With ``workers=1`` runs execute in this process, under a `rich` progress display on stderr: an overall
bar over runs and a bar over the current run's steps. With ``workers>1`` each run executes in a process
of a ``spawn`` pool (fork is unsafe once torch has started threads); the display shows the overall bar.

Ready runs whose kind gives them equal ``group_key`` execute as one group (`Store.execute_group`: each
member still recorded as its own run), split once into one share per worker; a fine-tuning grid is the
case today (`overtrain.training.finetune_group`).
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
from collections.abc import Callable, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from overtrain import distributed
from overtrain.config import to_plain
from overtrain.errors import RunBusy, UserError
from overtrain.registry import EXECUTORS, RUN_KINDS
from overtrain.runs.kinds import RunKind
from overtrain.runs.manifest import one_line_error
from overtrain.runs.plan import Plan, PlanItem
from overtrain.runs.store import Store


@dataclass
class PlanResult:
    """What happened to each run of a plan (run ids, in the order they were settled).

    Attributes:
        done: runs executed to success by this call.
        skipped: runs that were already a success.
        failed: ``(run_id, one-line error)`` of runs that raised.
        blocked: runs not started because a dependency failed or was blocked (or, with
            ``stop_on_failure``, because something failed).
    """

    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    blocked: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every run is a success (done or skipped)."""
        return not self.failed and not self.blocked

    @property
    def exit_code(self) -> int:
        """The CLI exit code: 0 when `ok`, else 1 (a run failed)."""
        return 0 if self.ok else 1

    def summary(self) -> str:
        """``"3 done, 1 skipped, 1 failed, 1 blocked"``."""
        return (
            f"{len(self.done)} done, {len(self.skipped)} skipped, "
            f"{len(self.failed)} failed, {len(self.blocked)} blocked"
        )


# --- progress display ----------------------------------------------------------------------------------


class _Display:
    """The rich progress bars and the one-line run reports, all on stderr (stdout stays for data)."""

    def __init__(self, enabled: bool, n_runs: int) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self.enabled = enabled
        self.console = Console(stderr=True, highlight=False)
        # Bars only on a terminal: in a log (CI, a pipe, tests) a bar is a frozen snapshot, while the
        # one-line reports of `line` say the same thing readably.
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=self.console,
            disable=not (enabled and self.console.is_terminal),
        )
        self.overall = self.progress.add_task("runs", total=n_runs)

    def __enter__(self) -> _Display:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def settled(self) -> None:
        self.progress.advance(self.overall)

    def line(self, status: str, style: str, text: str) -> None:
        if self.enabled:
            from rich.text import Text

            # Text, not markup: an error message may contain [brackets]; soft_wrap keeps paths whole
            self.console.print(Text.assemble((f"{status:>7} ", style), text), soft_wrap=True)

    def run_bar(self, item: PlanItem, total: int | None) -> tuple[int, Callable[..., None]]:
        task = self.progress.add_task(f"  {item.kind}/{item.run_id}", total=total)

        def on_progress(completed: int, total: int | None = None) -> None:
            if total is not None:
                self.progress.update(task, completed=completed, total=total)
            else:
                self.progress.update(task, completed=completed)

        return task, on_progress

    def drop(self, task: int) -> None:
        # a finished run's bar goes: a sweep of hundreds of runs must not grow the display
        self.progress.remove_task(task)


# --- bookkeeping shared by both modes ------------------------------------------------------------------


class _Book:
    def __init__(self, plan_ids: set[str], result: PlanResult, display: _Display, stop_on_failure: bool):
        self.plan_ids = plan_ids
        self.result = result
        self.display = display
        self.stop_on_failure = stop_on_failure
        self.succeeded: set[str] = set()
        self.bad: set[str] = set()  # failed or blocked

    def state(self, item: PlanItem) -> str:
        """``blocked``, ``ready`` or ``waiting`` (deps outside the plan were checked by `Plan.order`)."""
        if self.stop_on_failure and self.result.failed:
            return "blocked"
        deps = [d for d in item.deps if d in self.plan_ids]
        if any(d in self.bad for d in deps):
            return "blocked"
        return "ready" if all(d in self.succeeded for d in deps) else "waiting"

    def block(self, item: PlanItem) -> None:
        self.bad.add(item.run_id)
        self.result.blocked.append(item.run_id)
        self.display.settled()
        self.display.line("blocked", "yellow", f"{item.kind}/{item.run_id}")

    def finish(self, item: PlanItem, skipped: bool, wall_s: float | None) -> None:
        self.succeeded.add(item.run_id)
        if skipped:
            self.result.skipped.append(item.run_id)
        else:
            self.result.done.append(item.run_id)
            took = f" in {wall_s:.1f} s" if wall_s is not None else ""
            self.display.line("done", "green", f"{item.kind}/{item.run_id}{took}")
        self.display.settled()

    def fail(self, item: PlanItem, error: str, store: Store) -> None:
        self.bad.add(item.run_id)
        self.result.failed.append((item.run_id, error))
        self.display.settled()
        trace = store.run_dir(item.kind, item.run_id) / "traceback.txt"
        where = f" (traceback: {trace})" if trace.exists() else ""
        self.display.line("failed", "red", f"{item.kind}/{item.run_id}: {error}{where}")


def refuse_under_launch() -> None:
    """A plan is not executed by several launched processes at once: their runs would have to fail and skip
    in lockstep. Data parallelism is per run (``accelerate launch ... pretrain``); plans scale over runs."""
    if distributed.launched():
        raise UserError(
            "a plan of runs does not execute under accelerate launch/torchrun: launch one "
            "pretrain or finetune run at a time, and spread sweeps with --workers or --executor ray"
        )


def _lookup(kinds: Any, name: str) -> RunKind:
    kind = kinds.get(name)  # a Registry raises UnknownNameError; a Mapping returns None
    if kind is None:
        raise UserError(f"unknown run kind {name!r}")
    return kind


def _total_steps(kind: RunKind, cfg: Any) -> int | None:
    if kind.total_steps is None:
        return None
    try:
        return kind.total_steps(cfg)
    except Exception:  # a progress bar is not worth failing a run over
        return None


# --- the executor --------------------------------------------------------------------------------------


@EXECUTORS.register("local", help="this machine: in-process (workers=1) or a spawn process pool")
def run_plan(
    plan: Plan,
    store: Store | None = None,
    *,
    workers: int = 1,
    progress: bool = True,
    stop_on_failure: bool = False,
    kinds: Mapping[str, RunKind] | Any = None,
) -> PlanResult:
    """Execute every run of `plan` that is not already a success, in dependency order.

    Args:
        plan: the runs.
        store: the run store (default ``Store()``).
        workers: processes running at once; 1 runs in this process.
        progress: show progress bars and one line per settled run on stderr.
        stop_on_failure: after the first failure start nothing new (the rest counts as blocked).
        kinds: where run kinds are looked up by name (default `RUN_KINDS`). With ``workers>1`` a kind
            not in `RUN_KINDS` is pickled to the workers, so its functions must be importable
            module-level names.

    Returns:
        A `PlanResult`. Failures do not raise: they are in ``result.failed`` (and each run's manifest).

    Raises:
        UserError: bad `workers`, an unknown kind, a dependency cycle, or a dependency that is neither in
            the plan nor finished.
    """
    if workers < 1:
        raise UserError(f"workers must be >= 1, got {workers}")
    refuse_under_launch()
    store = store or Store()
    kinds = RUN_KINDS if kinds is None else kinds
    ordered = plan.order(store)
    kind_of = {item.kind: _lookup(kinds, item.kind) for item in ordered}
    result = PlanResult()
    with _Display(progress, len(ordered)) as display:
        book = _Book({item.run_id for item in ordered}, result, display, stop_on_failure)
        if workers == 1 or len(ordered) <= 1:
            _run_inline(ordered, kind_of, store, book)
        else:
            _run_pool(ordered, kind_of, kinds, store, book, workers)
    if progress:
        display.console.print(f"runs: {result.summary()}", highlight=False)
    return result


# --- groups: runs that execute as one computation ---------------------------------------------------


class _Groups:
    """Which ready runs execute together (`RunKind.group_key`), and the keys computed so far."""

    def __init__(self, kind_of: dict[str, RunKind], store: Store, book: _Book) -> None:
        self.kind_of, self.store, self.book = kind_of, store, book
        self.keys: dict[str, Any] = {}
        self.solo: set[str] = set()  # runs that must execute alone (a member another process was writing)
        self.shares: dict[Any, int] = {}

    def share(self, group: list[PlanItem], workers: int) -> int:
        """Members per group for `group`'s key: its first ready set split once into one share per worker, so
        a grid keeps every worker busy and later shares are not split again."""
        key = self.key(group[0])
        if key not in self.shares:
            self.shares[key] = -(-len(group) // workers)
        return self.shares[key]

    def key(self, item: PlanItem) -> Any:
        kind = self.kind_of[item.kind]
        if kind.run_group is None or kind.group_key is None or item.redo or item.run_id in self.solo:
            return None
        if item.run_id not in self.keys:
            try:
                self.keys[item.run_id] = kind.group_key(item.config, self.store)
            except Exception:  # a key is an optimisation: the run alone reports any real problem
                self.keys[item.run_id] = None
        return self.keys[item.run_id]

    def mates(self, item: PlanItem, candidates: list[PlanItem]) -> list[PlanItem]:
        """`item` and the ready `candidates` of its kind with its key (just `item` when it has none)."""
        key = self.key(item)
        if key is None or self.book.state(item) != "ready":
            return [item]
        out = [item]
        for other in candidates:
            if (
                other is not item
                and other.kind == item.kind
                and self.book.state(other) == "ready"
                and self.key(other) == key
            ):
                out.append(other)
        # members of one parent checkpoint side by side: a group evaluates each checkpoint once
        return sorted(
            out,
            key=lambda i: (str(getattr(i.config, "parent", "")), str(getattr(i.config, "checkpoint", ""))),
        )


def _settle_group(
    group: list[PlanItem], replies: list[dict], book: _Book, store: Store, groups: _Groups
) -> list[PlanItem]:
    """Record each member's outcome; return the members to run again alone (another process held them)."""
    again = []
    for item, reply in zip(group, replies, strict=True):
        if reply.get("busy"):
            groups.solo.add(item.run_id)
            again.append(item)
        elif reply["ok"]:
            book.finish(item, reply["skipped"], reply["wall_s"])
        else:
            book.fail(item, reply["error"], store)
    return again


def _group_replies(outcomes: list) -> list[dict]:
    """`Store.execute_group`'s outcomes as plain data (exceptions flattened to one line)."""
    replies = []
    for outcome in outcomes:
        if isinstance(outcome, RunBusy):
            replies.append({"ok": False, "busy": True})
        elif isinstance(outcome, BaseException):
            replies.append({"ok": False, "error": one_line_error(outcome)})
        else:
            replies.append({"ok": True, "skipped": outcome.skipped, "wall_s": outcome.wall_s})
    return replies


def _run_inline(ordered: list[PlanItem], kind_of: dict[str, RunKind], store: Store, book: _Book) -> None:
    groups = _Groups(kind_of, store, book)
    queue = list(ordered)
    while queue:
        item = queue.pop(0)
        if book.state(item) == "blocked":
            book.block(item)
            continue
        kind = kind_of[item.kind]
        group = groups.mates(item, queue)
        if len(group) > 1:
            for member in group:
                if member is not item:
                    queue.remove(member)
            total = sum(_total_steps(kind, m.config) or 0 for m in group) or None
            label = PlanItem(item.kind, item.config, f"{item.run_id} +{len(group) - 1} grouped")
            task, on_progress = book.display.run_bar(label, total)
            try:
                outcomes = store.execute_group(kind, [m.config for m in group], on_progress=on_progress)
                replies = _group_replies(outcomes)
            except Exception as exc:  # the group's members are marked failed by the store
                replies = [{"ok": False, "error": one_line_error(exc)}] * len(group)
            finally:
                book.display.drop(task)
            queue[:0] = _settle_group(group, replies, book, store, groups)
            continue
        task, on_progress = book.display.run_bar(item, _total_steps(kind, item.config))
        try:
            # wait=True: a run another sweep is writing is waited for, then skipped (or resumed)
            outcome = store.execute(kind, item.config, on_progress=on_progress, wait=True, redo=item.redo)
        except Exception as exc:  # KeyboardInterrupt stops the plan; the store marked the run failed
            book.fail(item, one_line_error(exc), store)
        else:
            book.finish(item, outcome.skipped, outcome.wall_s)
        finally:
            book.display.drop(task)


def _kind_ref(kind: RunKind, kinds: Any) -> str | RunKind:
    """What a worker needs to find `kind`: its name if `RUN_KINDS` has it, else the pickled kind."""
    if kinds is RUN_KINDS or (kind.name in RUN_KINDS and RUN_KINDS.get(kind.name) is kind):
        return kind.name
    try:
        pickle.dumps(kind)
    except Exception as exc:
        raise UserError(
            f"run kind {kind.name!r} cannot be sent to worker processes ({one_line_error(exc)}); "
            "register it in RUN_KINDS from an importable module, or use workers=1"
        ) from None
    return kind


def _execute_in_worker(
    kind_ref: str | RunKind, plain: dict[str, Any], run_id: str, root: str, redo: bool = False
) -> dict:
    """Worker side: rebuild the kind and config, execute, and return plain data (never an exception).

    Exceptions are flattened to their one-line message here because arbitrary exception objects do not
    always pickle back to the parent.
    """
    try:
        kind = RUN_KINDS.get(kind_ref) if isinstance(kind_ref, str) else kind_ref
        cfg = kind.config_cls.model_validate(plain)
        if kind.run_id(cfg) != run_id:
            why = (
                "the code its id is versioned on changed while the plan ran (run the command again), or its "
                "config does not round-trip through to_plain()"
                if kind.version is not None
                else "its to_plain() does not round-trip"
            )
            raise RuntimeError(
                f"config of {kind.name}/{run_id} changed in transit to the worker (hash {kind.run_id(cfg)}): {why}"
            )
        outcome = Store(root).execute(kind, cfg, wait=True, redo=redo)  # another sweep's run: wait, then skip
    except BaseException as exc:  # noqa: BLE001 - reported to the parent as data
        return {"ok": False, "error": one_line_error(exc)}
    return {"ok": True, "skipped": outcome.skipped, "wall_s": outcome.wall_s}


def _execute_group_in_worker(
    kind_ref: str | RunKind, plains: list[dict], run_ids: list[str], root: str
) -> list[dict]:
    """Worker side of a group: `Store.execute_group`, one plain reply per member (never an exception)."""
    try:
        kind = RUN_KINDS.get(kind_ref) if isinstance(kind_ref, str) else kind_ref
        cfgs = [kind.config_cls.model_validate(p) for p in plains]
        for cfg, run_id in zip(cfgs, run_ids, strict=True):
            if kind.run_id(cfg) != run_id:
                raise RuntimeError(
                    f"config of {kind.name}/{run_id} changed in transit to the worker (run the command again)"
                )
        return _group_replies(Store(root).execute_group(kind, cfgs))
    except BaseException as exc:  # noqa: BLE001 - reported to the parent as data
        return [{"ok": False, "error": one_line_error(exc)}] * len(plains)


def _init_worker(threads: int) -> None:
    """Give each worker its share of the cores: torch's default (all cores in every process) makes the
    small matrix products of tiny models orders of magnitude slower when processes fight for cores."""
    if "OMP_NUM_THREADS" not in os.environ:
        import torch

        torch.set_num_threads(threads)


def _run_pool(
    ordered: list[PlanItem],
    kind_of: dict[str, RunKind],
    kinds: Any,
    store: Store,
    book: _Book,
    workers: int,
) -> None:
    refs = {name: _kind_ref(kind, kinds) for name, kind in kind_of.items()}
    context = multiprocessing.get_context("spawn")
    pending = list(ordered)
    running: dict[Future, PlanItem | list[PlanItem]] = {}
    groups = _Groups(kind_of, store, book)
    pool = ProcessPoolExecutor(
        max_workers=workers,
        mp_context=context,
        initializer=_init_worker,
        initargs=(max(1, (os.cpu_count() or 1) // workers),),
    )
    try:
        while pending or running:
            # settle blocked runs and start ready ones, in plan order, keeping `workers` in flight
            for item in list(pending):
                if item not in pending:  # taken into a group earlier in this pass
                    continue
                state = book.state(item)
                if state == "blocked":
                    pending.remove(item)
                    book.block(item)
                elif state == "ready" and len(running) < workers:
                    group = groups.mates(item, pending)
                    if len(group) > 1:
                        group = group[: groups.share(group, workers)]
                    for member in group:
                        pending.remove(member)
                    if len(group) > 1:
                        future = pool.submit(
                            _execute_group_in_worker,
                            refs[item.kind],
                            [to_plain(m.config) for m in group],
                            [m.run_id for m in group],
                            str(Path(store.root).absolute()),
                        )
                        running[future] = group
                    else:
                        future = pool.submit(
                            _execute_in_worker,
                            refs[item.kind],
                            to_plain(item.config),
                            item.run_id,
                            str(Path(store.root).absolute()),
                            item.redo,
                        )
                        running[future] = item
            if not running:
                # nothing in flight and nothing startable: every pending run waits on a bad dep
                for item in pending:
                    book.block(item)
                break
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            broken = False
            for future in finished:
                item = running.pop(future)
                try:
                    reply = future.result()
                except BrokenProcessPool as exc:
                    # a worker died hard (killed, out of memory); its run's manifest still says running
                    broken = True
                    reply = {"ok": False, "error": one_line_error(exc)}
                except Exception as exc:
                    reply = {"ok": False, "error": one_line_error(exc)}
                if isinstance(item, list):  # a group: one reply per member
                    replies = reply if isinstance(reply, list) else [reply] * len(item)
                    pending[:0] = _settle_group(item, replies, book, store, groups)
                    continue
                if reply["ok"]:
                    book.finish(item, reply["skipped"], reply["wall_s"])
                else:
                    book.fail(item, reply["error"], store)
            if broken:
                for future, item in list(running.items()):
                    running.pop(future)
                    for member in item if isinstance(item, list) else [item]:
                        book.fail(member, "BrokenProcessPool: a worker process died", store)
                pool.shutdown(wait=False, cancel_futures=True)
                pool = ProcessPoolExecutor(
                    max_workers=workers,
                    mp_context=context,
                    initializer=_init_worker,
                    initargs=(max(1, (os.cpu_count() or 1) // workers),),
                )
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
