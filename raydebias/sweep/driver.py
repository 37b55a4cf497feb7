"""The Ray Tune driver: a new or restored Tuner over :func:`raydebias.sweep.trial.run_trial`, then the
results (raydebias/sweep/results.py)."""

from __future__ import annotations

import json
import logging
from typing import Any

from raydebias.config import Config, config_to_dict
from raydebias.errors import ConfigError
from raydebias.sweep.results import result_rows, write_results
from raydebias.sweep.space import SearchSpace, default_space, param_space, sweep_settings
from raydebias.sweep.trial import prepare_sweep_data, run_trial, sweep_benchmarks

log = logging.getLogger(__name__)

TUNER_NAME = "tuner"
def _space_doc(space: SearchSpace) -> dict[str, Any]:
    return {"grid": space.grid, "random": space.random, "settings": space.settings}


def build_tuner(cfg: Config, out: Any, space: SearchSpace) -> Any:
    """A new Tuner, or the restored one when ``DIR/sweep/tuner`` holds an interrupted sweep of the same
    space and training config (a different one is refused: use a new --output)."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    settings = sweep_settings(cfg, space)
    storage = out.root / "sweep"
    storage.mkdir(parents=True, exist_ok=True)
    trainable = tune.with_resources(tune.with_parameters(run_trial, cfg=cfg, root=out.root,
                                                         bench=sweep_benchmarks(cfg)), {"cpu": 0.01})
    stamp = storage / "sweep.json"
    now = {"space": _space_doc(space), "train": config_to_dict(cfg)["train"], "seed": cfg.seed}
    path = storage / TUNER_NAME
    storage_path, storage_fs = storage.ray_storage()
    if tune.Tuner.can_restore(path.path, storage_filesystem=storage_fs):
        before = json.loads(stamp.read_text()) if stamp.exists() else None
        if before != json.loads(json.dumps(now)):
            raise ConfigError(f"{path} holds a sweep of another space or train config: use a new --output, or "
                              f"delete {storage} to start over")
        log.warning("sweep: restoring the interrupted sweep in %s (finished trials are kept, unfinished ones "
                    "resume from their last checkpoint)", path)
        return tune.Tuner.restore(path.path, trainable=trainable, resume_unfinished=True, resume_errored=True,
                                  storage_filesystem=storage_fs)
    stamp.write_text(json.dumps(now, indent=1))
    ps, samples = param_space(space, cfg, settings)
    epochs = cfg.train.epochs
    if settings.scheduler == "asha":
        # time axis: epochs_done, which only the epoch reports carry. max_t lies past the last epoch, so
        # the last epoch is never cut before the trial's evaluation.
        scheduler = ASHAScheduler(time_attr="epochs_done", max_t=epochs + 1,
                                  grace_period=min(settings.grace_period, epochs),
                                  reduction_factor=settings.reduction_factor)
    else:
        scheduler = FIFOScheduler()
    return tune.Tuner(
        trainable, param_space=ps,
        tune_config=tune.TuneConfig(metric=settings.metric, mode=settings.mode, scheduler=scheduler,
                                    num_samples=samples, max_concurrent_trials=settings.max_concurrent_trials or None),
        # verbose=1: experiment-level status only (the default, 3, printed a result table per trial report)
        run_config=tune.RunConfig(name=TUNER_NAME, storage_path=storage_path, storage_filesystem=storage_fs, verbose=1,
                                  failure_config=tune.FailureConfig(max_failures=settings.max_failures)),
    )


def run_sweep(cfg: Config, out: Any, space: SearchSpace | None = None) -> dict[str, Any]:
    """The whole sweep (resuming an interrupted one in the same output directory)."""
    import time

    space = space or default_space(cfg)
    t0 = time.perf_counter()
    data = prepare_sweep_data(cfg, out)
    log.info("sweep: %d groups -> %d train / %d validation%s", data["groups"], data["train"], data["val"],
             " (split reused)" if data["reused"] else "")
    grid = build_tuner(cfg, out, space).fit()
    rows = result_rows(grid, space, cfg)
    summary = write_results(cfg, out, space, rows)
    summary |= {"groups": {"train": data["train"], "val": data["val"]}, "seconds": round(time.perf_counter() - t0, 2)}
    out.update_stats("sweep", summary)
    return summary
