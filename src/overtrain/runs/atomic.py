"""Crash-safe writes: a reader sees the old file (or dir) or the new one, never half of one.

Every writer puts its bytes in a temporary sibling (same directory, hence same filesystem, so the final
``os.replace`` is an atomic rename), fsyncs the data, renames it into place, then fsyncs the directory so
the rename itself survives a power loss. Temporary names start with ``.tmp-``: anything that lists run
or checkpoint directories must ignore dot-names (a crash can leave a ``.tmp-*`` behind).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

TMP_PREFIX = ".tmp-"
"""Prefix of every temporary file or directory these helpers create."""

_FILE_MODE = 0o644  # mkstemp creates 0600; results are meant to be shared like any other file
_DIR_MODE = 0o755


def fsync_file(path: str | Path) -> None:
    """Flush a file's data and metadata to disk.

    Args:
        path: the file (opened read-only; fsync works on any descriptor of the inode).
    """
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str | Path) -> None:
    """Persist a directory's entries (a rename is durable only once its directory is fsynced).

    Filesystems that cannot fsync a directory (some network mounts) are ignored: there is nothing more
    to be done there.
    """
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write `data` to `path` atomically (temp file + fsync + rename + fsync of the directory).

    Args:
        path: destination; its parent directories are created.
        data: the full new content.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f"{TMP_PREFIX}{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), _FILE_MODE)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    fsync_dir(path.parent)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write `text` (UTF-8) to `path` atomically; see `atomic_write_bytes`."""
    atomic_write_bytes(path, text.encode("utf-8"))


def json_safe(obj: Any) -> Any:
    """`obj` with every value made JSON-compatible; non-finite floats become ``None``.

    JSON has no NaN or infinity (Python writes ``NaN``, which strict parsers and DuckDB reject), and a
    diverged loss must still be recorded, so NaN/inf are written as ``null``. numpy and torch scalars
    become Python numbers, small arrays and tensors lists, paths strings; anything else its ``str``.
    """
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    # numpy / torch scalars and arrays, without importing either
    if hasattr(obj, "tolist") and callable(obj.tolist):
        return json_safe(obj.tolist())
    if hasattr(obj, "item") and callable(obj.item):
        try:
            return json_safe(obj.item())
        except (TypeError, ValueError):
            pass
    return str(obj)


def dumps_json(obj: Any, *, indent: int | None = None) -> str:
    """Strict JSON text of `obj` after `json_safe` (never ``NaN``; never raises on odd values)."""
    return json.dumps(json_safe(obj), indent=indent, ensure_ascii=False, allow_nan=False)


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """Write `obj` as indented strict JSON to `path` atomically (NaN/inf become ``null``)."""
    atomic_write_text(path, dumps_json(obj, indent=2) + "\n")


_RENAME_EXCHANGE = 2  # linux/fs.h
_renameat2: Any = None


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths with Linux ``renameat2(RENAME_EXCHANGE)``; False where unsupported."""
    global _renameat2
    if _renameat2 is None:
        _renameat2 = False
        try:
            import ctypes
            import ctypes.util

            libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
            fn = libc.renameat2
            fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
            fn.restype = ctypes.c_int
            _renameat2 = fn
        except (OSError, AttributeError):
            pass  # not glibc >= 2.28 (macOS, musl, Windows): the two-rename fallback is used
    if not _renameat2:
        return False
    at_fdcwd = -100
    return _renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE) == 0


def _fsync_tree(root: Path) -> None:
    for dirpath, _dirnames, filenames in os.walk(root):
        for name in filenames:
            full = os.path.join(dirpath, name)
            if not os.path.islink(full):
                fsync_file(full)
        fsync_dir(dirpath)


@contextmanager
def atomic_dir(final_path: str | Path) -> Iterator[Path]:
    """Build a directory under a temporary name and move it to `final_path` only if the block succeeds.

    Yields a fresh empty directory beside `final_path` (name starting with ``.tmp-``). On a clean exit its
    files are fsynced and it is renamed to `final_path`. An existing `final_path` is swapped out in one
    atomic step where Linux ``renameat2(RENAME_EXCHANGE)`` exists; elsewhere it is renamed aside, the new
    one renamed in, and the old one deleted (a crash between those two renames leaves no `final_path`
    and a ``.tmp-old-*`` sibling). If the block raises, the temporary directory is removed and
    `final_path` is untouched.

    Args:
        final_path: where the finished directory should appear; its parent is created.

    Yields:
        The temporary directory to fill.
    """
    final = Path(final_path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{final.name}.", dir=final.parent))
    os.chmod(tmp, _DIR_MODE)
    try:
        yield tmp
        _fsync_tree(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if final.exists() and _exchange(tmp, final):
        # one atomic swap: `final` never disappears, not even for an instant; tmp now holds the old one
        fsync_dir(final.parent)
        shutil.rmtree(tmp, ignore_errors=True)
        return
    old: Path | None = None
    if final.exists():
        old = final.parent / f"{TMP_PREFIX}old-{final.name}.{uuid.uuid4().hex[:8]}"
        os.rename(final, old)
    try:
        os.rename(tmp, final)
    except BaseException:
        # Put the previous version back so a failed swap loses nothing.
        if old is not None:
            os.rename(old, final)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_dir(final.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
