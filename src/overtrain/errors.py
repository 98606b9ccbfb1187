"""Error types and the exit codes they map to.

Exit codes (stable interface): 0 success, 1 a run failed, 2 bad input. Every `UserError` is printed by
the CLI as one line on stderr naming the problem, never as a traceback.
"""

from __future__ import annotations


class OvertrainError(Exception):
    """Base class of every error this package raises on purpose."""

    exit_code = 1


class UserError(OvertrainError):
    """Bad input: a wrong key or value, a missing file, an unknown name, a corrupt checkpoint."""

    exit_code = 2


class ConfigError(UserError):
    """A config file or override that does not validate."""


class UnknownNameError(UserError):
    """A name that no registry holds (dataset, preset, probe, method, study, executor, run kind)."""


class DataError(UserError):
    """A data source that cannot be read or prepared (missing file, bad hash, empty corpus)."""


class CheckpointError(UserError):
    """A checkpoint that is missing, incomplete, corrupt or not safetensors."""


class RunBusy(OvertrainError):
    """Another process holds the lock of the run directory this process wants to write."""


class RunFailed(OvertrainError):
    """A run stopped with an error; its manifest says `failed` and why."""
