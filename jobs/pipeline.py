"""The raydebias job: config -> data -> augment -> train -> evaluate (``--stage`` runs one).

    python jobs/pipeline.py --config jobs/configs/smoke.yaml --stage all --output out/smoke
    python jobs/pipeline.py --config jobs/configs/paper-gpt2.yaml --rehearse --output out/rehearse-gpt2
    ray job submit --working-dir . -- python jobs/pipeline.py --config jobs/configs/paper-gpt2.yaml --output /shared/run1

``--stage all`` (and ``augment+train``) streams the augmentation pools straight into the Ray Train workers
(training starts with the first augmented batches; the rows are written to DIR/augmented on the way);
``--stage train`` trains on DIR/augmented as written by ``--stage augment``.

Starts an embedded local Ray cluster unless ``ray.address`` / ``RAY_ADDRESS`` names one (``ray job
submit`` sets ``RAY_ADDRESS`` for the driver, so submitted jobs join their cluster). Trailing
``key.sub=value`` arguments override the config file (``train.alpha=8 data.limit=100``).

``--rehearse`` runs the config on this machine, on CPU, offline (raydebias/rehearse.py): every model
becomes the tiny model of its class, hub data sources the shipped samples, and only what cannot fit
shrinks (device, world size, pools, a data slice); the table of every change is printed and written to
DIR/rehearsal.md. Overrides apply first and the rehearsal keeps the values they set (model ids and
data sources are still substituted). A rehearsal and a production run never share a run directory.

Exit codes: 0 done; 2 bad config/arguments or a stage that is not implemented yet; 3 unreadable input;
4 an actor pool could not get its resources within ray.wait_for_min_actors_s.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

# Run from a checkout without installing: make the package importable (ray job submit's working dir).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from raydebias import rehearse  # noqa: E402
from raydebias.augment.pipeline import (  # noqa: E402
    augment_stream,
    finish_augment,
    pool_start_error,
    prepare_augment,
    run_augment_stage,
)
from raydebias.config import ConfigError, describe, load_config  # noqa: E402
from raydebias.data import run_data_stage  # noqa: E402
from raydebias.evaluate.pipeline import run_evaluate_stage  # noqa: E402
from raydebias.outputs import RunDir  # noqa: E402
from raydebias.runtime import init_ray, job_exit_code, use_gpus  # noqa: E402
from raydebias.train.trainer import parts_dataset, run_train_stage  # noqa: E402

log = logging.getLogger("raydebias.job")



def run_augment_and_train(cfg, out) -> dict:
    """Augmentation streamed into training: one Ray Data pipeline feeding the Ray Train workers."""
    run = prepare_augment(cfg, out)
    stream = None
    if run.pending is not None:
        stream = augment_stream(cfg, out, run, written=parts_dataset(out.augmented_dir))
    try:
        train = run_train_stage(cfg, out, stream=stream, rows=run.rows_in if stream is not None else None)
    except Exception as e:
        if (err := pool_start_error(cfg, run.gpu, e)) is not None:
            raise err from e
        raise
    return {"augment": finish_augment(cfg, out, run), "train": train}


STAGES = ("data", "augment", "train", "evaluate")
# The stages that exist. The others are built by their own issues and must not be faked meanwhile.
IMPLEMENTED = {"data": run_data_stage, "augment": run_augment_stage, "train": run_train_stage,
               "augment+train": run_augment_and_train, "evaluate": run_evaluate_stage}
NOT_YET: dict[str, str] = {}
# Shorthands: `model=PATH_OR_ID base=PATH_OR_ID` for the evaluate stage.
SHORTHANDS = {"model": "evaluate.model", "base": "evaluate.base"}


class StageNotImplemented(RuntimeError):
    pass


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="jobs/pipeline.py", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Overrides: trailing key.sub=value arguments, e.g. data.limit=50 train.alpha=8. "
               "--help-config lists every key with its default and help.",
    )
    p.add_argument("--config", help="YAML config (e.g. jobs/configs/smoke.yaml); defaults: the paper's values")
    p.add_argument("--output", help="run directory (created): a local path or a pyarrow filesystem URI "
                                    "(s3://bucket/prefix, gs://...); stages read and write here")
    p.add_argument("--stage", default="all", choices=(*STAGES, "augment+train", "all"),
                   help="stage to run (default: all = data, augment streamed into train, evaluate)")
    p.add_argument("--help-config", action="store_true", help="list every config key, default and help, then exit")
    rehearse.add_arguments(p)
    p.add_argument("-v", "--verbose", action="store_true")
    p.add_argument("overrides", nargs="*", metavar="key.sub=value")
    return p.parse_args(argv)


def stages_for(stage: str) -> list[str]:
    if stage == "all":
        # `all` runs what exists and says loudly what it skipped (printed and logged, never silent).
        return ["data", "augment+train", *(s for s in ("evaluate",) if s in IMPLEMENTED)]
    wanted = [stage]
    missing = [s for s in wanted if s not in IMPLEMENTED]
    if missing:
        raise StageNotImplemented(
            f"stage {', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not implemented yet "
            f"({'; '.join(NOT_YET[s] for s in missing)}). Implemented: {', '.join(IMPLEMENTED)} "
            f"(run with --stage {'/'.join(IMPLEMENTED)})."
        )
    return wanted


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if args.help_config:
        for key, tp, default, help_ in describe():
            print(f"{key} ({tp}, default {default!r})\n    {help_}")
        return 0
    # Before anything loads a model: offline hubs, no RAY_ADDRESS (a rehearsal stays on this machine).
    env_changes = rehearse.rehearsal_environment(os.environ) if args.rehearse else []
    try:
        overrides = [SHORTHANDS[o.split("=", 1)[0]] + "=" + o.split("=", 1)[1]
                     if o.split("=", 1)[0] in SHORTHANDS else o for o in args.overrides]
        cfg = production = load_config(args.config, overrides)
        if args.rehearse:
            cfg, changes = rehearse.rehearse_config(production, rows=args.rehearse_rows,
                                                    items=args.rehearse_items, keep=rehearse.override_keys(overrides))
        stages = stages_for(args.stage)
        if not args.output:
            raise ConfigError("--output DIR is required")
        out = RunDir(args.output)
        rehearse.check_run_dir(out, rehearse=args.rehearse)
    except (ConfigError, StageNotImplemented) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    if args.rehearse:
        rehearse.announce(out, production, changes + env_changes, config=args.config, overrides=overrides,
                          rows=args.rehearse_rows, items=args.rehearse_items)
    out.write_config(cfg)  # the config this run really uses: the rehearsal's, under --rehearse
    info = init_ray(cfg)
    gpus = use_gpus(cfg.device)
    log.info("run dir %s | stages %s | device=%s (GPUs requested: %s) | ray %s", out.root, stages,
             cfg.device, gpus, info.get("mode", info.get("address")))
    timings = {}
    if args.stage == "all":
        for stage, why in NOT_YET.items():
            log.warning("stage %s is not implemented yet (%s): --stage all skips it", stage, why)
            print(json.dumps({"stage": stage, "skipped": f"not implemented yet: {why}"}))
    try:
        for stage in stages:
            t0 = time.perf_counter()
            stats = IMPLEMENTED[stage](cfg, out)
            timings[stage] = round(time.perf_counter() - t0, 2)
            print(json.dumps({"stage": stage, "seconds": timings[stage], "stats": _summary(stats)}))
    except Exception as e:
        if (code := job_exit_code(e)) is None:
            raise
        print(f"error: {e}", file=sys.stderr)
        return code
    log.info("done in %s; outputs under %s", timings, out.root)
    return 0


_STAGE_KEYS = ("rows_in", "kept", "quarantined", "rows_out", "trainable", "steps", "epochs", "model", "seconds")


def _summary(stats: dict) -> dict:
    """One short line per stage for the console (per split / per sub-stage); the full counts are in
    stats.json. Nested dicts that are stage or split stats are cut to their headline counts; other
    nested dicts (the evaluated models, rows per benchmark) are printed whole."""
    out = {}
    for k, v in stats.items():
        if isinstance(v, dict) and any(kk in v for kk in ("rows_in", "steps")):
            out[k] = {kk: v[kk] for kk in _STAGE_KEYS if kk in v}
        else:
            out[k] = v
    return out


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
