"""A rich progress bar for one run's steps, on stderr, quiet when stderr is not a terminal."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator


@contextlib.contextmanager
def step_progress(description: str, total: int | None) -> Iterator[Callable[[int, int | None], None]]:
    """Yield ``on_progress(completed, total)`` that drives a bar over a run's steps."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from overtrain.distributed import world

    console = Console(stderr=True)
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
        disable=not console.is_terminal or not world().is_main,  # one bar per launch, from rank 0
    )
    with progress:
        task = progress.add_task(description, total=total)

        def on_progress(completed: int, new_total: int | None = None) -> None:
            progress.update(task, completed=completed, total=new_total or total)

        yield on_progress
