"""What a raydebias run prints: one log format, and known-harmless library messages kept off the console.

The CLIs call :func:`configure_logging` once; every Ray worker runs :func:`configure_worker_logging` as
its ``worker_process_setup_hook`` (set by ``runtime.init_ray``), so the same rules hold in the actors
whose output Ray forwards to the driver. Each rule names one logger and one message, and says why that
message is harmless here. Everything else (every other warning or error, from any library) passes.
Messages of Ray Data are hidden from its console handler only (``record.hide``, Ray Data's own mechanism):
they stay in the session's ``logs/ray-data/ray-data.log``. ``-v`` / ``verbose=True`` turns every rule
off, in the driver and in the workers it starts (via ``RAYDEBIAS_LOG_VERBOSE``).

Imports nothing heavy: it runs at the start of every Ray worker process.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from dataclasses import dataclass

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Set by configure_logging(verbose=True); runtime.worker_env forwards it to the Ray workers.
VERBOSE_ENV = "RAYDEBIAS_LOG_VERBOSE"


@dataclass(frozen=True)
class Quiet:
    """Keep records of ``logger`` whose message contains every string in ``contains`` off the console."""

    logger: str
    contains: tuple[str, ...]
    why: str
    only_off_rank0: bool = False  # quiet only in Ray Train workers of rank > 0 (only rank 0 prints)

    def matches(self, message: str) -> bool:
        if self.only_off_rank0 and os.environ.get("RANK", "0") == "0":
            return False
        return all(s in message for s in self.contains)


def _ray_file_logger(relative: str) -> str:
    """Name of a Ray logger created with ``logging.getLogger(__file__)``: the module's path."""
    import importlib.util

    spec = importlib.util.find_spec("ray")
    root = spec.submodule_search_locations[0] if spec and spec.submodule_search_locations else "ray"
    return os.path.join(root, relative)


def rules() -> tuple[Quiet, ...]:
    """The known-harmless messages, each with the reason it is harmless."""
    executor = "ray.data._internal.execution.streaming_executor"
    return (
        Quiet(executor, ("Starting execution of Dataset",),
              "Ray Data's per-dataset plumbing (a stage runs several small datasets); each stage logs its "
              "own counts and time, and the line stays in ray-data.log"),
        Quiet(executor, ("Execution plan of Dataset",), "as above: the plan is in ray-data.log"),
        Quiet(executor, ("Dataset", "execution finished in"), "as above: the stage summary has the time"),
        Quiet("ray.data.dataset", ("Data sink", "finished."),
              "the stage summary counts the rows it wrote (kept + quarantined)"),
        Quiet("ray.data._internal.progress", ("Progress bars disabled",),
              "raydebias turns the bars off on purpose when stderr is not a terminal "
              "(runtime.configure_data_context; RAYDEBIAS_PROGRESS=1 turns them on)"),
        Quiet("transformers.modeling_utils",
              ("specifies to tie shared.weight to lm_head.weight", "so we will NOT tie them"),
              "T5 models (google/flan-t5-*, the tiny T5): transformers 5 forces tied embeddings in T5Config, "
              "but flan-t5 checkpoints carry their own lm_head; keeping both untied IS the checkpoint"),
        Quiet(_ray_file_logger("train/v2/_internal/execution/context.py"), ("Reporting training result",),
              "Ray Train logs every report on every rank; rank 0 logs the same metrics once as 'train: {...}'"),
        Quiet("ray.train.v2._internal.execution.storage", ("Checkpoint successfully created at",),
              "every rank logs the same checkpoint path; rank 0's line is kept", only_off_rank0=True),
        Quiet("absl", ("Using default tokenizer.",), "rouge-score announces its default tokenizer on every scorer"),
    )


# Python warnings (warnings.warn) that are harmless here: (message regex, why).
WARNING_RULES = (
    (r"`ExecutionOptions\.exclude_resources` is deprecated",
     "Ray Train 2.60's own DatasetManager copies the deprecated field; nothing in raydebias sets it"),
)


# The raylet's "N PYTHON worker processes have been started on node ..., which is Kx the maximum expected
# startup concurrency" has no logger: the driver prints it (and again at every further multiple, 7 lines in
# a smoke run). Harmless here: raydebias runs one actor per pool with fractional CPUs by design (ENV.md
# HANG 2), so a 2-CPU node always holds ~25 workers. Ray's documented RAY_DEDUP_LOGS_SKIP_REGEX drops it
# from the driver's output; Ray reads it when it is imported, so configure_logging sets it before that.
RAYLET_POOL_WARNING = r"PYTHON worker processes have been started on node: .* maximum expected startup concurrency"
SKIP_REGEX_ENV = "RAY_DEDUP_LOGS_SKIP_REGEX"


class QuietFilter(logging.Filter):
    """A logger filter for the rules of one logger. Ray Data loggers: hide from the console only
    (Ray Data's console handler skips ``record.hide``, its file handler keeps the record); others: drop."""

    def __init__(self, quiet: list[Quiet]):
        super().__init__()
        self.quiet = list(quiet)

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record is not ours to judge
            return True
        if not any(q.matches(message) for q in self.quiet):
            return True
        if record.name.startswith("ray.data"):
            record.hide = True
            return True
        return False


def verbose_requested() -> bool:
    return os.environ.get(VERBOSE_ENV, "") not in ("", "0")


def install_filters() -> None:
    """Attach one QuietFilter per logger named in :func:`rules` (idempotent) and the warning filters."""
    by_logger: dict[str, list[Quiet]] = {}
    for q in rules():
        by_logger.setdefault(q.logger, []).append(q)
    for name, quiet in by_logger.items():
        logger = logging.getLogger(name)
        for f in [f for f in logger.filters if isinstance(f, QuietFilter)]:
            logger.removeFilter(f)
        logger.addFilter(QuietFilter(quiet))
    for pattern, _why in WARNING_RULES:
        warnings.filterwarnings("ignore", message=pattern)


def configure_logging(verbose: bool = False) -> None:
    """The CLIs' logging: ``FORMAT`` on stderr at INFO (DEBUG with ``verbose``), known-harmless library
    messages off the console unless ``verbose``. Call before ``init_ray`` so workers inherit the choice."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format=FORMAT, stream=sys.stderr)
    if verbose:
        os.environ[VERBOSE_ENV] = "1"
    else:
        os.environ.pop(VERBOSE_ENV, None)
        os.environ.setdefault(SKIP_REGEX_ENV, RAYLET_POOL_WARNING)  # a user's own regex wins
        install_filters()


def configure_worker_logging() -> None:
    """Ray ``worker_process_setup_hook``: the same rules in every worker process of the job.

    Must never fail (Ray kills a worker whose setup hook raises), so any error only disables the rules.
    """
    try:
        if not verbose_requested():
            install_filters()
    except Exception as exc:  # pragma: no cover - defensive: a broken filter must not kill actors
        print(f"raydebias.logs: log filters not installed in this worker: {exc!r}", file=sys.stderr)
