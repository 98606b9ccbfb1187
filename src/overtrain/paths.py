"""Where things live on disk. Every path is under OVERTRAIN_HOME (default `./.overtrain`)."""

from __future__ import annotations

import os
from pathlib import Path


def home() -> Path:
    """Root of the run store and data cache: `$OVERTRAIN_HOME`, else `./.overtrain`."""
    return Path(os.environ.get("OVERTRAIN_HOME") or ".overtrain").expanduser().absolute()


def set_home(path: str | Path) -> Path:
    """Make `path` the root for this process and the processes it starts (``overtrain --home``).

    It is set as ``$OVERTRAIN_HOME`` (absolute), not kept in a variable, because pool workers and Ray
    tasks started from here find the store through the environment they inherit.
    """
    root = Path(path).expanduser().absolute()
    os.environ["OVERTRAIN_HOME"] = str(root)
    return root


def runs_root() -> Path:
    return home() / "runs"


def data_cache() -> Path:
    """Prepared corpora and downloaded source distributions (never model weights)."""
    return home() / "data"


def repo_root() -> Path | None:
    """The source checkout this package runs from (for `configs/` and the git commit), if any."""
    here = Path(__file__).resolve()
    for parent in here.parents:
        if (parent / "pyproject.toml").is_file() and (parent / "src" / "overtrain").is_dir():
            return parent
    return None


def configs_dir() -> Path:
    """The shipped configs (study presets, pretrain and sweep examples): package data, so an installed
    `overtrain` finds its presets outside a checkout too (the repo's top-level ``configs`` links here)."""
    return Path(__file__).resolve().parent / "configs"
