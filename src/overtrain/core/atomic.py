"""Crash-safe writes: a reader sees the old file (or dir) or the new one, never half of one.

Every writer puts its bytes in a temporary sibling (same directory, hence same filesystem, so the final
``os.replace`` is an atomic rename), fsyncs the data, renames it into place, then fsyncs the directory so
the rename itself survives a power loss. Temporary names start with ``.tmp-``: anything that lists run
or checkpoint directories must ignore dot-names (a crash can leave a ``.tmp-*`` behind).

Content hashes: `atomic_dir(..., checksums=True)` writes ``checksums.json`` (sha256 of every file) into the
directory before it is renamed into place, and `verify_checksums` compares a directory with it, so a
truncated or altered file is found before it is used (`overtrain.training.checkpoint`).

Fault injection: `fault_point` marks the moments a crash is most harmful (inside a checkpoint write, before
a rename, mid-line). It does nothing unless ``OVERTRAIN_FAULT=<point>@<n>`` is set, in which case the
process SIGKILLs itself at the n-th time it reaches that point (`bench/fault_injection.py`).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import signal
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

TMP_PREFIX = ".tmp-"
"""Prefix of every temporary file or directory these helpers create."""

CHECKSUMS = "checksums.json"
"""The sidecar `atomic_dir(..., checksums=True)` writes: ``{"sha256": {relative path: hex digest}}``."""

FAULT_POINTS = (
    "atomic_dir.filled",
    "atomic_dir.rename",
    "atomic_write.rename",
    "jsonl.partial_line",
    "store.before_success",
)
"""The places `fault_point` can kill the process (see `bench/fault_injection.py`)."""

_FILE_MODE = 0o644  # mkstemp creates 0600; results are meant to be shared like any other file
_DIR_MODE = 0o755


# --- fault injection -----------------------------------------------------------------------------------


def _fault_spec() -> tuple[str, int] | None:
    spec = os.environ.get("OVERTRAIN_FAULT", "").strip()
    if not spec:
        return None
    point, _, nth = spec.partition("@")
    if point not in FAULT_POINTS or not nth.isdigit() or int(nth) < 1:
        points = ", ".join(FAULT_POINTS)
        raise ValueError(f"OVERTRAIN_FAULT={spec!r}: expected <point>@<n>, point one of {points}")
    return point, int(nth)


_fault_hits: dict[str, int] = {}


def fault_point(name: str, before_kill: Callable[[], None] | None = None) -> None:
    """SIGKILL this process the n-th time it gets here, if ``OVERTRAIN_FAULT=<name>@<n>``; else nothing.

    ``OVERTRAIN_FAULT_COUNT=<file>`` appends `name` to that file at every call instead (how often each
    point is reached in a run, so a harness can pick an n that happens).

    Args:
        name: one of `FAULT_POINTS`.
        before_kill: called just before the kill (to leave, e.g., half a line behind).
    """
    count_file = os.environ.get("OVERTRAIN_FAULT_COUNT")
    if count_file:
        with open(count_file, "a", encoding="utf-8") as f:
            f.write(name + "\n")
    if "OVERTRAIN_FAULT" not in os.environ:
        return
    spec = _fault_spec()
    if spec is None or spec[0] != name:
        return
    _fault_hits[name] = _fault_hits.get(name, 0) + 1
    if _fault_hits[name] == spec[1]:
        if before_kill is not None:
            before_kill()
        os.kill(os.getpid(), signal.SIGKILL)


# --- hashes --------------------------------------------------------------------------------------------


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes (read in 1 MiB chunks)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def tree_files(root: str | Path) -> list[str]:
    """Relative POSIX paths of the regular files under `root`, sorted; dot-names (temporary files, locks,
    quarantined copies) are skipped at every level, and so are symlinks."""
    root = Path(root)
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            full = Path(dirpath) / name
            if not name.startswith(".") and not full.is_symlink():
                out.append(full.relative_to(root).as_posix())
    return sorted(out)


def hash_tree(root: str | Path, exclude: tuple[str, ...] = ()) -> dict[str, str]:
    """``{relative path: sha256}`` of every file `tree_files` lists under `root`, except `exclude`."""
    return {rel: sha256_file(Path(root) / rel) for rel in tree_files(root) if rel not in exclude}


def verify_hashes(root: str | Path, expected: dict[str, str]) -> list[str]:
    """Problems of `root` against ``{relative path: sha256}``: ``"<path>: missing"`` or
    ``"<path>: sha256 mismatch"`` per damaged file (empty when everything matches)."""
    problems = []
    for rel, digest in expected.items():
        path = Path(root) / rel
        if not path.is_file():
            problems.append(f"{rel}: missing")
        elif sha256_file(path) != digest:
            problems.append(f"{rel}: sha256 mismatch")
    return problems


def read_checksums(path: str | Path) -> dict[str, str] | None:
    """The ``{relative path: sha256}`` of a directory's ``checksums.json``; None when it has none.

    Raises:
        ValueError: the sidecar exists but is not a valid checksums file (it is damaged itself).
    """
    file = Path(path) / CHECKSUMS
    try:
        data = json.loads(file.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise ValueError(f"{CHECKSUMS} is unreadable ({type(exc).__name__})") from None
    table = data.get("sha256") if isinstance(data, dict) else None
    if not isinstance(table, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in table.items()
    ):
        raise ValueError(f"{CHECKSUMS} is not a checksums file")
    return table


def verify_checksums(path: str | Path) -> list[str] | None:
    """Compare a directory with its ``checksums.json``.

    Returns:
        None when the directory has no sidecar (written before hashes were kept, or by another tool);
        otherwise the problems (`verify_hashes`), empty when every listed file matches.
    """
    try:
        expected = read_checksums(path)
    except ValueError as exc:
        return [str(exc)]
    return None if expected is None else verify_hashes(path, expected)


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
        fault_point("atomic_write.rename")
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


def _share_tree(root: Path) -> None:
    """Every file `_FILE_MODE` and every subdirectory `_DIR_MODE`: tools that write into the temporary
    directory (safetensors) create their files 0600, and a finished run is meant to be read by others."""
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames:
            os.chmod(os.path.join(dirpath, name), _DIR_MODE)
        for name in filenames:
            full = os.path.join(dirpath, name)
            if not os.path.islink(full):
                os.chmod(full, _FILE_MODE)


def _fsync_tree(root: Path) -> None:
    for dirpath, _dirnames, filenames in os.walk(root):
        for name in filenames:
            full = os.path.join(dirpath, name)
            if not os.path.islink(full):
                fsync_file(full)
        fsync_dir(dirpath)


@contextmanager
def atomic_dir(final_path: str | Path, *, checksums: bool = False) -> Iterator[Path]:
    """Build a directory under a temporary name and move it to `final_path` only if the block succeeds.

    Yields a fresh empty directory beside `final_path` (name starting with ``.tmp-``). On a clean exit its
    files are fsynced (after ``checksums.json`` is added, when `checksums`) and it is renamed to
    `final_path`. An existing `final_path` is swapped out in one
    atomic step where Linux ``renameat2(RENAME_EXCHANGE)`` exists; elsewhere it is renamed aside, the new
    one renamed in, and the old one deleted (a crash between those two renames leaves no `final_path`
    and a ``.tmp-old-*`` sibling). If the block raises, the temporary directory is removed and
    `final_path` is untouched.

    Args:
        final_path: where the finished directory should appear; its parent is created.
        checksums: also write ``checksums.json`` with the sha256 of every file (see `verify_checksums`).

    Yields:
        The temporary directory to fill.
    """
    final = Path(final_path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{final.name}.", dir=final.parent))
    os.chmod(tmp, _DIR_MODE)
    try:
        yield tmp
        fault_point("atomic_dir.filled")
        if checksums:
            table = hash_tree(tmp, exclude=(CHECKSUMS,))
            (tmp / CHECKSUMS).write_text(json.dumps({"sha256": table}, indent=1, sort_keys=True) + "\n")
        _share_tree(tmp)
        _fsync_tree(tmp)
        fault_point("atomic_dir.rename")
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
