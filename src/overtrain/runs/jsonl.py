"""The append-only record files of a run (``metrics.jsonl``, ``probes.jsonl``, ``evals.jsonl``): reading
them back, tolerating the half-written last line a crash can leave.

Each line is one JSON object, written with a single ``write`` and flushed (`overtrain.runs.run.Run`), so a
crash leaves at most one partial *last* line; a resumed run truncates the file back to the line count its
checkpoint saved (`Run.truncate`, using `complete_lines_end`).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

JSONL_FILES = ("metrics", "probes", "evals")
"""The append-only record files of a run (``<name>.jsonl``)."""


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """The records of a JSONL file; a missing file is empty.

    A crash can leave the last line half-written: an unterminated last line that does not parse is
    skipped silently. A bad line elsewhere (or a non-object) is skipped with a warning, so that one
    damaged file never hides every other run from a query.

    Args:
        path: the ``.jsonl`` file.

    Returns:
        One dict per complete line, in file order.
    """
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return []
    lines = data.split(b"\n")
    # split leaves "" after a final newline; anything else in the last slot is an unterminated line
    tail = lines.pop()
    if not tail.strip():
        # fast path for the intact file: one json.loads over all lines instead of one per line
        filled = [line for line in lines if line.strip()]
        try:
            whole = json.loads(b"[" + b",".join(filled) + b"]")
        except (ValueError, UnicodeDecodeError):
            pass
        else:
            # one object per line, or the slow path finds and reports the odd line
            if len(whole) == len(filled) and all(isinstance(r, dict) for r in whole):
                return whole
    records: list[dict[str, Any]] = []
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        record = _parse_line(raw)
        if record is None:
            warnings.warn(f"{path}: line {number} is not a JSON object; skipped", stacklevel=2)
        else:
            records.append(record)
    if tail.strip():
        record = _parse_line(tail)
        if record is not None:  # a complete record whose newline never made it
            records.append(record)
    return records


def _parse_line(raw: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None
    return value if isinstance(value, dict) else None


def complete_lines_end(data: bytes, n_lines: int | None = None) -> tuple[int, int]:
    """(byte offset just past the last kept complete line, number of complete lines kept)."""
    end, count = 0, 0
    while n_lines is None or count < n_lines:
        newline = data.find(b"\n", end)
        if newline < 0:
            break
        end, count = newline + 1, count + 1
    return end, count
