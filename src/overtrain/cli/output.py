"""What the CLI writes for people: tables, and errors and warnings on stderr.

Errors are one line each (a line break inside a path or value is shown escaped, never broken), so a
script can read them; the one exception is a config with several problems, which is a headline and one
indented line per problem (`overtrain.errors.ConfigError.lines`).
"""

from __future__ import annotations

import sys
import warnings

from overtrain.errors import ConfigError, UserError

_LINE_BREAKS = {ord(c): c.encode("unicode_escape").decode() for c in "\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029"}


def console(stderr: bool = False):
    from rich.console import Console

    return Console(stderr=stderr, highlight=False, soft_wrap=True)


def print_rows(rows: list[dict], title: str | None = None) -> None:
    from rich.markup import escape
    from rich.table import Table

    if not rows:
        console().print("(nothing)")
        return
    # cells are plain text: "overtrain[ray]" or "[random block; same block]" must not be read as markup
    table = Table(title=None if title is None else escape(title), show_lines=False)
    for key in rows[0]:
        table.add_column(escape(str(key)))
    for row in rows:
        table.add_row(*("" if v is None else escape(str(v)) for v in row.values()))
    console().print(table)


def set_globals(home, tensorboard) -> None:
    """Apply the root options: ``--home`` (the store and data root) and ``--tensorboard`` (the metrics
    mirror). Both go through the environment so that pool workers started by this process see them."""
    import os

    from overtrain.paths import set_home

    if home is not None:
        set_home(home)
    if tensorboard is not None:
        os.environ["OVERTRAIN_TENSORBOARD"] = str(tensorboard.expanduser().absolute())
    if os.environ.get("OVERTRAIN_WANDB"):  # without wandb: exit 2 before any run starts
        from overtrain.runs.sinks import check_environment

        check_environment()


def run_facts(store, kind: str, run_id: str, cfg) -> str:
    """``device: cpu (auto)`` (the device the run resolved, as its manifest recorded it, and the setting
    when that differs) and ``store: /abs/path``, as one line each."""
    manifest = store.manifest(kind, run_id) or {}
    lines = []
    resolved, setting = manifest.get("device"), getattr(cfg, "device", None)
    if resolved is not None:
        lines.append(f"device: {resolved}" + (f" ({setting})" if setting and setting != resolved else ""))
    lines.append(f"store: {store.root}")
    return "\n".join(lines)


def plan_facts(store, plan) -> str:
    """``device: cpu`` (the devices the plan's runs resolved, from their manifests; runs without one, such
    as analyses, do not count) and ``store: /abs/path``, one line each, for a study's or sweep's summary."""
    devices = sorted(
        {d for item in plan.items if (d := (store.manifest(item.kind, item.run_id) or {}).get("device"))}
    )
    lines = [f"device: {', '.join(devices)}"] if devices else []
    return "\n".join([*lines, f"store: {store.root}"])


def one_line(text: str) -> str:
    """`text` as one line: a line break inside a message (a path, a value) is shown escaped, never broken."""
    return text.translate(_LINE_BREAKS)


def say(text: str) -> None:
    # plain stderr, not rich: no markup, emoji codes or wrapping may change a message, and stderr's
    # backslashreplace error handler prints any path, even one that is not valid UTF-8
    sys.stderr.write(one_line(text) + "\n")
    sys.stderr.flush()


def say_user_error(exc: UserError) -> None:
    """``overtrain: error: ...``: one line, or for a config with several problems one line per problem."""
    lines = exc.lines() if isinstance(exc, ConfigError) else [str(exc)]
    say(f"overtrain: error: {lines[0]}")
    for line in lines[1:]:
        say(line)


def show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    if category.__module__.startswith("overtrain"):  # ours are one line for the user, like the errors
        say(f"overtrain: warning: {message}")
    else:
        _default_showwarning(message, category, filename, lineno, file, line)


_default_showwarning = warnings.showwarning
