"""Local data files: expanding file and directory arguments, reading UTF-8 text and JSON with one-line
`DataError` messages, and publishing a finished cache directory atomically.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

from overtrain.errors import DataError


def expand_paths(paths: Iterable[Path], suffix: str) -> list[Path]:
    out: list[Path] = []
    for path in paths:
        path = Path(path).expanduser()
        if path.is_dir():
            found = sorted(p for p in path.rglob(f"*{suffix}") if p.is_file())
            if not found:
                raise DataError(f"no {suffix} files under directory {path}")
            out.extend(found)
        elif path.is_file():
            out.append(path)
        else:
            raise DataError(f"data path not found: {path}")
    return out


def read_text(path: Path) -> str:
    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    try:
        return path.read_bytes().decode("utf-8").replace("\r\n", "\n")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path} is not UTF-8 text (byte {exc.start}); convert it to UTF-8") from None
    except OSError as exc:
        raise DataError(f"cannot read data file {path}: {exc.strerror}") from None


def json_file(path: Path) -> dict:
    if not path.is_file():
        raise DataError(f"file not found: {path}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read JSON file {path}: {exc}") from None


def rename_into_place(tmp: Path, target: Path, marker: str) -> None:
    """Publish the directory `tmp` as `target` atomically (files fsynced first).

    If another process published a complete `target` first (its `marker` file exists), keep theirs.
    """
    tmp.chmod(0o755)  # mkdtemp makes it private; the published entry is an ordinary directory
    for path in tmp.rglob("*"):
        if path.is_file():
            with open(path, "rb+") as fh:
                os.fsync(fh.fileno())
    try:
        os.rename(tmp, target)
    except OSError as exc:
        if not (target / marker).is_file():
            raise DataError(f"cannot write {target}: {exc.strerror}") from None
