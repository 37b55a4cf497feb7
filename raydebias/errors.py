"""Every error a job reports as one ``error:`` line with an exit code; anything else raises with its
traceback (a bug, not an expected failure). Imported by every layer, importing nothing of the project.

    ConfigError (2)        a config file or override is wrong; the message names the dotted key
      StorageError (2)     a storage location that cannot be used
      StageInputError (2)  a stage's input is not in the run directory; the message names the stage to run
    DataError (3)          input that cannot be read at all
    PoolStartError (4)     an actor pool could not get its resources in time (ENV.md HANG 1)
    ModelLoadError         a model, tokenizer or pipeline could not be loaded (raised inside workers)
"""

from __future__ import annotations


class ConfigError(ValueError):
    """A config file or override is wrong; the message names the dotted key."""


class StorageError(ConfigError):
    """A storage location that cannot be used (unknown scheme, unreachable, missing credentials)."""


class StageInputError(ConfigError):
    """A stage was asked to run without its input in the run directory (raydebias/stages.py runs the
    upstream stages first; calling a stage function directly does not)."""


class DataError(RuntimeError):
    """Input that cannot be read at all (missing/unreadable file, unknown layout, offline hub)."""


class PoolStartError(RuntimeError):
    """An actor pool could not get its resources in time (instead of waiting forever: ENV.md HANG 1)."""


class ModelLoadError(RuntimeError):
    """A model, tokenizer or pipeline could not be loaded; the message says what to do instead."""


EXIT_CODES: tuple[tuple[type[BaseException], int], ...] = ((ConfigError, 2), (DataError, 3), (PoolStartError, 4))


def job_exit_code(e: BaseException) -> int | None:
    """The exit code a job (jobs/pipeline.py, tune/sweep.py) reports ``e`` with, as one ``error:`` line:
    2 bad config or storage or a missing stage input, 3 unreadable input data, 4 an actor pool the cluster
    cannot start. None: not an expected failure (let it raise with its traceback)."""
    return next((code for kind, code in EXIT_CODES if isinstance(e, kind)), None)


__all__ = ["EXIT_CODES", "ConfigError", "DataError", "ModelLoadError", "PoolStartError", "StageInputError",
           "StorageError", "job_exit_code"]
