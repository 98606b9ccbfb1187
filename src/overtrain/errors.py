"""Error types and the exit codes they map to.

Exit codes (stable interface): 0 success, 1 a run failed, 2 bad input. Every `UserError` is printed by
the CLI as one line on stderr naming the problem, never as a traceback; a `ConfigError` with several
problems is a headline and one indented line per problem.
"""

from __future__ import annotations


class OvertrainError(Exception):
    """Base class of every error this package raises on purpose."""

    exit_code = 1


class UserError(OvertrainError):
    """Bad input: a wrong key or value, a missing file, an unknown name, a corrupt checkpoint."""

    exit_code = 2


class ConfigError(UserError):
    """A config file or override that does not validate.

    Args:
        message: the whole message; with `problems`, the source (``pretrain.yaml with overrides``).
        problems: one line per problem (``train.lr: Input should be greater than 0 (got -1)``). One
            problem reads ``<message>: <problem>``; several read ``<message>: N problems`` followed by
            one indented line each, and the CLI prints each as its own line (`lines`).
    """

    def __init__(self, message: str, problems: list[str] | tuple[str, ...] = ()) -> None:
        self.problems = tuple(problems)
        if len(self.problems) == 1:
            message = f"{message}: {self.problems[0]}"
        elif self.problems:
            message = f"{message}: {len(self.problems)} problems"
        self.headline = message
        super().__init__("\n  ".join((message, *self.problems)) if len(self.problems) > 1 else message)

    def lines(self) -> list[str]:
        """The message as lines: the headline, then one indented line per problem when there are several."""
        return (
            [self.headline, *(f"  {p}" for p in self.problems)] if len(self.problems) > 1 else [self.headline]
        )


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
