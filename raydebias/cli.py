"""What the two jobs (jobs/pipeline.py, tune/sweep.py) share: their common arguments, the
config (overrides, ``--rehearse``), the run directory, Ray, and how an expected failure becomes one
``error:`` line and an exit code (raydebias/errors.py)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from raydebias import rehearse
from raydebias.config import Config, load_config
from raydebias.errors import ConfigError, job_exit_code


def parser(prog: str, doc: str, epilog: str, output_help: str) -> argparse.ArgumentParser:
    """A job's parser with the arguments every job takes: --config, --output, --rehearse*, -v, overrides."""
    p = argparse.ArgumentParser(prog=prog, description=doc.split("\n\n")[0], epilog=epilog,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="YAML config (e.g. jobs/configs/smoke.yaml); defaults: the paper's values")
    p.add_argument("--output", help=output_help)
    rehearse.add_arguments(p)
    p.add_argument("-v", "--verbose", action="store_true")
    p.add_argument("overrides", nargs="*", metavar="key.sub=value")
    return p


def error(e: BaseException | str, code: int) -> int:
    print(f"error: {e}", file=sys.stderr)
    return code


@dataclass
class Job:
    """A job ready to run: the config it uses (the rehearsal's under --rehearse), the production config,
    its run directory, and the rehearsal's changes (empty otherwise)."""

    cfg: Config
    production: Config
    out: Any
    overrides: list[str]
    changes: list[Any] = field(default_factory=list)


def prepare(args: argparse.Namespace, overrides: Sequence[str], check: Callable[[], None] | None = None
            ) -> Job | int:
    """Config, rehearsal and run directory from the parsed arguments, or exit code 2 with one error line.
    ``check``: more argument checks that raise ConfigError (run after the config loaded)."""
    from raydebias.outputs import RunDir

    # Before anything loads a model: offline hubs, no RAY_ADDRESS (a rehearsal stays on this machine).
    env_changes = rehearse.rehearsal_environment(os.environ) if args.rehearse else []
    try:
        cfg = production = load_config(args.config, list(overrides))
        changes: list[Any] = []
        if args.rehearse:
            cfg, changes = rehearse.rehearse_config(production, rows=args.rehearse_rows, items=args.rehearse_items,
                                                    keep=rehearse.override_keys(overrides))
        if check is not None:
            check()
        if not args.output:
            raise ConfigError("--output DIR is required")
        out = RunDir(args.output)
        rehearse.check_run_dir(out, rehearse=args.rehearse)
    except ConfigError as e:
        return error(e, 2)
    return Job(cfg, production, out, list(overrides), changes + env_changes)


def announce(job: Job, args: argparse.Namespace, **meta: Any) -> None:
    """Under --rehearse: print the table of changes and write DIR/rehearsal.md (and .json)."""
    if args.rehearse:
        rehearse.announce(job.out, job.production, job.changes, config=args.config, overrides=job.overrides,
                          rows=args.rehearse_rows, items=args.rehearse_items, **meta)


def guarded(fn: Callable[[], int]) -> int:
    """``fn()``, with an expected failure (raydebias/errors.py) reported as one ``error:`` line and its
    exit code; anything else raises with its traceback."""
    try:
        return fn()
    except Exception as e:
        if (code := job_exit_code(e)) is None:
            raise
        return error(e, code)


def entry(main: Callable[[], int]) -> None:
    """``if __name__ == "__main__"`` of a job."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())


__all__ = ["Job", "announce", "entry", "error", "guarded", "parser", "prepare"]
