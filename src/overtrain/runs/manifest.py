"""What a run's ``manifest.json`` records besides its status: provenance (git commit and dirty flag,
package versions, host), UTC timestamps, one-line errors, parent references, and the sha256 of every
output file that a later skip checks the run against (docs/design.md, "Run directory contract").
"""

from __future__ import annotations

import functools
import importlib.metadata
import json
import platform
import subprocess
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from overtrain import paths
from overtrain.core.atomic import (
    CHECKSUMS,
    read_checksums,
    sha256_file,
    tree_files,
)

STATUSES = ("running", "success", "failed")
"""Values of a manifest's ``status``."""


NOT_OUTPUTS = ("manifest.json", "traceback.txt")
"""Files of a run directory that its ``outputs`` hashes leave out (besides dot-names such as ``.lock``)."""


def now_iso() -> str:
    """The current UTC time as ISO 8601 with milliseconds (``2026-05-09T07:35:25.123+00:00``)."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def one_line_error(exc: BaseException) -> str:
    """``"<ExcType>: <message>"`` on one line (newlines and runs of spaces collapsed)."""
    message = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


@functools.lru_cache(maxsize=1)
def git_info() -> dict[str, Any] | None:
    """``{commit, dirty}`` of the source checkout this package runs from, or None (no git, no repo).

    Cached per process: a sweep of thousands of runs should not fork git thousands of times.
    ``dirty`` counts modified tracked files only (as ``git describe --dirty`` does).
    """
    root = paths.repo_root()
    if root is None:
        return None
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10
        )
        if commit.returncode != 0:
            return None
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    dirty = bool(status.stdout.strip()) if status.returncode == 0 else None
    return {"commit": commit.stdout.strip(), "dirty": dirty}


@functools.lru_cache(maxsize=1)
def package_versions() -> dict[str, str | None]:
    """Versions of python and the packages that decide a run's numbers (missing ones are None)."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in ("torch", "transformers", "peft", "overtrain", "numpy"):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def output_hashes(run_dir: Path) -> dict[str, str]:
    """sha256 of every file of a finished run (`tree_files`, less `NOT_OUTPUTS`). A checkpoint directory's
    files take the hashes its ``checksums.json`` recorded as it was written (re-reading gigabytes of
    weights would only repeat them); every other file, the sidecar included, is read and hashed."""
    outputs: dict[str, str] = {}
    sidecars: dict[str, dict[str, str]] = {}
    for rel in tree_files(run_dir):
        if rel in NOT_OUTPUTS:
            continue
        parent, _, name = rel.rpartition("/")
        if parent and name != CHECKSUMS:
            if parent not in sidecars:
                try:
                    sidecars[parent] = read_checksums(run_dir / parent) or {}
                except ValueError:
                    sidecars[parent] = {}
            if name in sidecars[parent]:
                outputs[rel] = sidecars[parent][name]
                continue
        outputs[rel] = sha256_file(run_dir / rel)
    return outputs


def read_manifest(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        # written atomically, so this is outside damage: treat the run as never finished (it is redone)
        warnings.warn(f"unreadable manifest {path}; treating the run as not started", stacklevel=3)
        return None
    return value if isinstance(value, dict) else None


def parent_ref(parent: str | tuple[str, str]) -> str:
    if isinstance(parent, str):
        if "/" not in parent:
            raise ValueError(f"parent {parent!r} must be 'kind/run_id'")
        return parent
    kind, run_id = parent
    return f"{kind}/{run_id}"
