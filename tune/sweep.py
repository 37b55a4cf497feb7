"""Ray Tune sweeps over the contrastive fine-tuning: the paper's alpha ablation (Appendix H, Table 14),
tau, toxic_weight, or any train.* field.

    python tune/sweep.py --config jobs/configs/smoke.yaml --space tune/spaces/alpha.yaml --output out/sweep
    ray job submit --working-dir . -- python tune/sweep.py --config jobs/configs/paper-gpt2.yaml \\
        --space tune/spaces/alpha.yaml --output /shared/sweep1
    python tune/sweep.py --config jobs/configs/paper-gpt2.yaml --space tune/spaces/alpha.yaml --rehearse --output out/r

Runs the data and augment stages first when DIR lacks them (the augmented Parquet is then read once
and split into training and validation groups for every trial). Each trial fits a Ray Train
TorchTrainer (FSDP2) and reports validation losses per epoch to Ray Tune (ASHA stops weak trials), then
evaluates its model on the validation groups. Outputs under DIR/sweep: results.parquet, alpha_table.md,
pareto.md, pareto.png, best.yaml (a ready config). Re-running with the same --output resumes the sweep
(Tuner.restore). Without --space, the config's sweep.alpha x sweep.tau x sweep.toxic_weight grid runs.
``--rehearse`` runs the sweep on this machine, on CPU, offline, exactly as jobs/pipeline.py --rehearse
does (tiny models, shipped samples, a small slice; the search space is kept; table in DIR/rehearsal.md).

Exit codes: 0 done; 2 bad config, space or arguments; 3 unreadable input; 4 an actor pool could not
get its resources; 5 no trial finished its evaluation.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from raydebias import rehearse  # noqa: E402
from raydebias.config import ConfigError, load_config  # noqa: E402
from raydebias.outputs import RunDir  # noqa: E402
from raydebias.runtime import init_ray, job_exit_code  # noqa: E402
from raydebias.sweep import load_space, run_sweep  # noqa: E402

log = logging.getLogger("raydebias.sweep")


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="tune/sweep.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Overrides: trailing key.sub=value arguments (train.epochs=2 sweep.max_concurrent_trials=2).")
    p.add_argument("--config", help="YAML config (e.g. jobs/configs/smoke.yaml)")
    p.add_argument("--space", help="search space YAML (tune/spaces/*.yaml); default: the config's sweep grid")
    p.add_argument("--output", help="run directory, a local path or a filesystem URI (s3://bucket/prefix): "
                                    "the sweep writes DIR/sweep, and reuses DIR/augmented")
    rehearse.add_arguments(p)
    p.add_argument("-v", "--verbose", action="store_true")
    p.add_argument("overrides", nargs="*", metavar="key.sub=value")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    env_changes = rehearse.rehearsal_environment(os.environ) if args.rehearse else []
    try:
        cfg = production = load_config(args.config, args.overrides)
        if args.rehearse:
            cfg, changes = rehearse.rehearse_config(production, rows=args.rehearse_rows,
                                                    items=args.rehearse_items, keep=rehearse.override_keys(args.overrides))
        space = load_space(args.space) if args.space else None
        if not args.output:
            raise ConfigError("--output DIR is required")
        out = RunDir(args.output)
        rehearse.check_run_dir(out, rehearse=args.rehearse)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.rehearse:
        rehearse.announce(out, production, changes + env_changes, config=args.config, space=args.space,
                          overrides=args.overrides, rows=args.rehearse_rows, items=args.rehearse_items)
    init_ray(cfg)
    try:
        summary = run_sweep(cfg, out, space)
    except Exception as e:
        if (code := job_exit_code(e)) is None:
            raise
        print(f"error: {e}", file=sys.stderr)
        return code
    print(json.dumps({"stage": "sweep", "stats": summary}, default=str))
    if not summary["status"]["evaluated"]:
        print("error: no trial finished its evaluation (see the trial errors in DIR/sweep/results.parquet)",
              file=sys.stderr)
        return 5
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
