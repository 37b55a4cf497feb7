"""The raydebias job: config -> data -> augment -> train -> evaluate | benchmark (``--stage`` runs one).

    python jobs/pipeline.py --config jobs/configs/smoke.yaml --stage all --output out/smoke
    python jobs/pipeline.py --config jobs/configs/smoke.yaml --stage benchmark --output out/smoke
    python jobs/pipeline.py --config jobs/configs/paper-gpt2.yaml --rehearse --output out/rehearse-gpt2
    ray job submit --working-dir . -- python jobs/pipeline.py --config jobs/configs/paper-gpt2.yaml --output /shared/run1

``--stage all`` (and ``augment+train``) streams the augmentation pools straight into the Ray Train workers
(training starts with the first augmented batches; the rows are written to DIR/augmented on the way);
``--stage train`` trains on DIR/augmented as written by ``--stage augment``. ``--stage benchmark`` builds
the six debiasing baselines and compares them with the base and the trained model (DIR/benchmark/report.md).

Starts an embedded local Ray cluster unless ``ray.address`` / ``RAY_ADDRESS`` names one (``ray job
submit`` sets ``RAY_ADDRESS`` for the driver, so submitted jobs join their cluster). Trailing
``key.sub=value`` arguments override the config file (``train.alpha=8 data.limit=100``).

``--rehearse`` runs the config on this machine, on CPU, offline (raydebias/rehearse.py): every model
becomes the tiny model of its class, hub data sources the shipped samples, and only what cannot fit
shrinks (device, world size, pools, a data slice); the table of every change is printed and written to
DIR/rehearsal.md. Overrides apply first and the rehearsal keeps the values they set (model ids and
data sources are still substituted). A rehearsal and a production run never share a run directory.

A stage runs the upstream stages whose outputs are missing first (the graph: raydebias/stages.py).

Exit codes: 0 done; 2 bad config/arguments or a missing stage input; 3 unreadable input; 4 an actor pool
could not get its resources within ray.wait_for_min_actors_s.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

# Run from a checkout without installing: make the package importable (ray job submit's working dir).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from raydebias import cli, logs, stages  # noqa: E402
from raydebias.config import describe  # noqa: E402
from raydebias.runtime import init_ray, use_gpus  # noqa: E402

log = logging.getLogger("raydebias.job")

# Shorthands: `model=PATH_OR_ID base=PATH_OR_ID` for the evaluate stage.
SHORTHANDS = {"model": "evaluate.model", "base": "evaluate.base"}


def parse_args(argv: list[str]):
    p = cli.parser("jobs/pipeline.py", __doc__,
                   epilog="Overrides: trailing key.sub=value arguments, e.g. data.limit=50 train.alpha=8. "
                          "--help-config lists every key with its default and help.",
                   output_help="run directory (created): a local path or a pyarrow filesystem URI "
                               "(s3://bucket/prefix, gs://...); stages read and write here")
    p.add_argument("--stage", default="all", choices=stages.TARGETS,
                   help="stage to run, after the upstream stages whose outputs are missing (default: all = data, "
                        "augment streamed into train, evaluate)")
    p.add_argument("--help-config", action="store_true", help="list every config key, default and help, then exit")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    logs.configure_logging(args.verbose)
    if args.help_config:
        for key, tp, default, help_ in describe():
            print(f"{key} ({tp}, default {default!r})\n    {help_}")
        return 0
    overrides = [SHORTHANDS[o.split("=", 1)[0]] + "=" + o.split("=", 1)[1]
                 if o.split("=", 1)[0] in SHORTHANDS else o for o in args.overrides]
    job = cli.prepare(args, overrides)
    if isinstance(job, int):
        return job
    cli.announce(job, args)
    cfg, out = job.cfg, job.out
    out.write_config(cfg)  # the config this run really uses: the rehearsal's, under --rehearse

    def run() -> int:
        todo = stages.plan(args.stage, cfg, out)
        stages.check(todo, cfg, out)  # before Ray starts or any stage runs
        info = init_ray(cfg)
        log.info("run dir %s | stages %s | device=%s (GPUs requested: %s) | ray %s", out.root, " -> ".join(todo),
                 cfg.device, use_gpus(cfg.device), info.get("mode", info.get("address")))
        timings = {}
        for name in todo:
            log.info("stage %s: start", name)
            t0 = time.perf_counter()
            stats = stages.run_stage(name, cfg, out)
            timings[name] = round(time.perf_counter() - t0, 2)
            print(json.dumps({"stage": name, "seconds": timings[name], "stats": _summary(stats)}))
        log.info("done in %s; outputs under %s", timings, out.root)
        return 0

    return cli.guarded(run)


_STAGE_KEYS = ("rows_in", "kept", "quarantined", "rows_out", "trainable", "steps", "epochs", "model", "seconds")


def _summary(stats: dict) -> dict:
    """One short line per stage for the console (per split / per sub-stage); the full counts are in
    stats.json. Nested dicts that are stage or split stats are cut to their headline counts; other
    nested dicts (the evaluated models, rows per benchmark) are printed whole."""
    out = {}
    for k, v in stats.items():
        if k == "counts" and isinstance(v, dict):  # evaluate: rows per model and task -> totals per model
            out[k] = {m: {"kept": sum(c["kept"] for c in tasks.values()),
                          "quarantined": sum(sum(c["quarantined"].values()) for c in tasks.values())}
                      for m, tasks in v.items()}
        elif isinstance(v, dict) and any(kk in v for kk in ("rows_in", "steps")):
            out[k] = {kk: v[kk] for kk in _STAGE_KEYS if kk in v}
        else:
            out[k] = v
    return out


if __name__ == "__main__":
    cli.entry(main)
