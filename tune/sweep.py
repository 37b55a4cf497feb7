"""Ray Tune sweeps over the contrastive fine-tuning: the paper's alpha ablation (Appendix H, Table 14),
tau, toxic_weight, or any train.* field.

    python tune/sweep.py --config jobs/configs/smoke.yaml --space tune/spaces/alpha.yaml --output out/sweep
    ray job submit --working-dir . -- python tune/sweep.py --config jobs/configs/paper-gpt2.yaml \\
        --space tune/spaces/alpha.yaml --output /shared/sweep1
    python tune/sweep.py --config jobs/configs/paper-gpt2.yaml --space tune/spaces/alpha.yaml --rehearse --output out/r

Runs the data and augment stages first when DIR lacks them (raydebias/stages.py) (the augmented Parquet is then read once
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

import json
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from raydebias import cli, logs, stages  # noqa: E402
from raydebias.runtime import init_ray  # noqa: E402
from raydebias.sweep import load_space  # noqa: E402

log = logging.getLogger("raydebias.sweep")


def parse_args(argv: list[str]):
    p = cli.parser("tune/sweep.py", __doc__,
                   epilog="Overrides: trailing key.sub=value arguments (train.epochs=2 sweep.max_concurrent_trials=2).",
                   output_help="run directory, a local path or a filesystem URI (s3://bucket/prefix): the sweep "
                               "writes DIR/sweep, and reuses DIR/augmented")
    p.add_argument("--space", help="search space YAML (tune/spaces/*.yaml); default: the config's sweep grid")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    logs.configure_logging(args.verbose)
    space = None

    def load() -> None:
        nonlocal space
        space = load_space(args.space) if args.space else None

    job = cli.prepare(args, args.overrides, check=load)
    if isinstance(job, int):
        return job
    cli.announce(job, args, space=args.space)
    cfg, out = job.cfg, job.out

    def run() -> int:
        todo = stages.plan("sweep", cfg, out)
        stages.check(todo, cfg, out)  # before Ray starts or any stage runs
        init_ray(cfg)
        for name in todo[:-1]:  # the upstream stages whose outputs are missing
            log.info("sweep: running the %s stage first (its outputs are missing in %s)", name, out.root)
            stages.run_stage(name, cfg, out)
        summary = stages.run_stage("sweep", cfg, out, space=space)
        print(json.dumps({"stage": "sweep", "stats": summary}, default=str))
        if not summary["status"]["evaluated"]:
            return cli.error("no trial finished its evaluation (see the trial errors in DIR/sweep/results.parquet)", 5)
        return 0

    return cli.guarded(run)


if __name__ == "__main__":
    cli.entry(main)
