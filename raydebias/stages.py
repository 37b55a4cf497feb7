"""The stage graph, in one place: every stage, what it reads and writes in the run directory, and the
order they run in. Stage functions never run each other; :func:`plan` decides what runs.

    data ──► augment ──► train ──► evaluate
       │           │         └───► benchmark (the contrastive row)
       │           └───► sweep
       └──────────────────────────► evaluate, benchmark (tldr: the held-out split; the baselines' corpus)

    stage          reads                                   writes
    data           data.source, data.eval_source           data/sources, data/eval, quarantine/data
    augment        data/sources                            augmented, quarantine/augment
    train          augmented                               train (checkpoints), model
    augment+train  data/sources (streamed into training)   augmented, quarantine/augment, train, model
    evaluate       model (or evaluate.model), data/eval,   eval, quarantine/evaluate
                   the benchmarks' sources
    sweep          augmented                               sweep
    benchmark      model (or benchmark.contrastive_model),  benchmark (variants, generations, scores,
                   data/eval, data/sources (corpus: tldr),  metrics.json, report), quarantine/benchmark
                   benchmark.corpus, benchmark.general_text

Asking for a stage runs the upstream stages whose outputs are missing or incomplete first, then the stage
itself (which resumes from whatever it finds). ``all`` is data, augment streamed into train, evaluate.
The evaluate stage never trains: without a model in the run directory (and no ``evaluate.model``) it
stops with a clear error. Every stage's stats are written to ``DIR/stats.json``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from raydebias.config import Config

log = logging.getLogger(__name__)

Run = Callable[[Config, Any], dict[str, Any]]


@dataclass(frozen=True)
class Stage:
    """One node of the graph. ``needs(cfg)``: the stages whose outputs it reads (may depend on the config:
    evaluate reads the held-out split only when tldr is evaluated); ``done(cfg, out)``: its outputs are
    complete in ``out``; ``run(cfg, out)`` -> its stats; ``check(cfg, out, planned)``: raises when an input
    that none of the ``planned`` stages produces is missing (checked before Ray starts or anything runs)."""

    name: str
    needs: Callable[[Config], tuple[str, ...]]
    done: Callable[[Config, Any], bool]
    run: Run
    check: Callable[[Config, Any, list[str]], None] | None = None


def _run_data(cfg: Config, out: Any) -> dict[str, Any]:
    from raydebias.data import run_data_stage

    return run_data_stage(cfg, out)


def _data_check(cfg: Config, out: Any, planned: list[str]) -> None:
    from raydebias.data import resolve_source

    # a missing local file or an unknown sample is a DataError now, not after the cluster started
    resolve_source(cfg.data.source, cfg.data.split)
    if cfg.data.eval_source:
        resolve_source(cfg.data.eval_source, cfg.data.eval_split)


def _data_done(cfg: Config, out: Any) -> bool:
    return out.sources_dir("train").complete and (not cfg.data.eval_source or out.sources_dir("eval").complete)


def _run_augment(cfg: Config, out: Any) -> dict[str, Any]:
    from raydebias.augment.pipeline import run_augment_stage

    return run_augment_stage(cfg, out)


def _augment_done(cfg: Config, out: Any) -> bool:
    from raydebias.augment.pipeline import augment_complete

    return augment_complete(out)


def _run_train(cfg: Config, out: Any) -> dict[str, Any]:
    from raydebias.train.trainer import run_train_stage

    return run_train_stage(cfg, out)


def _train_check(cfg: Config, out: Any, planned: list[str]) -> None:
    from raydebias.train.trainer import check_resumable, latest_checkpoint

    # a checkpoint of other settings in this run directory is refused before the cluster starts
    check_resumable(cfg, latest_checkpoint(out.train_dir))


def _train_done(cfg: Config, out: Any) -> bool:
    return out.model_dir.complete


def run_augment_and_train(cfg: Config, out: Any) -> dict[str, Any]:
    """Augmentation streamed into training: one Ray Data pipeline feeding the Ray Train workers (training
    starts with the first augmented batches; the rows are written to DIR/augmented on the way)."""
    from raydebias.augment.pipeline import (
        augment_stream,
        finish_augment,
        pool_cpus,
        pool_start_error,
        prepare_augment,
    )
    from raydebias.train.trainer import parts_dataset, run_train_stage

    run = prepare_augment(cfg, out)
    stream = None
    if run.pending is not None:
        stream = augment_stream(cfg, out, run, written=parts_dataset(out.augmented_dir))
    try:
        train = run_train_stage(cfg, out, stream=stream, rows=run.rows_in if stream is not None else None,
                                stream_cpus=pool_cpus(cfg.augment))
    except Exception as e:
        if (err := pool_start_error(cfg, run.gpu, e)) is not None:
            raise err from e
        raise
    return {"augment": finish_augment(cfg, out, run), "train": train}


def _run_evaluate(cfg: Config, out: Any) -> dict[str, Any]:
    from raydebias.evaluate.pipeline import run_evaluate_stage

    return run_evaluate_stage(cfg, out)


def _evaluate_check(cfg: Config, out: Any, planned: list[str]) -> None:
    from raydebias.evaluate.pipeline import models_to_evaluate

    if not {"train", "augment+train"} & set(planned):  # evaluate alone never trains: no model is a ConfigError
        models_to_evaluate(cfg, out)


def _never_done(cfg: Config, out: Any) -> bool:
    return False  # stages nothing downstream reads: they run (and resume) whenever asked for


def _run_sweep(cfg: Config, out: Any, space: Any = None) -> dict[str, Any]:
    from raydebias.sweep import run_sweep

    return run_sweep(cfg, out, space)


def _benchmark_needs(cfg: Config) -> tuple[str, ...]:
    from raydebias.benchmark.corpus import TLDR

    b = cfg.benchmark
    needs = ("data",) if "tldr" in cfg.evaluate.tasks or b.corpus == TLDR else ()
    if "contrastive" in b.methods and not b.contrastive_model:
        needs += ("train",)  # this run's contrastive model
    return needs


def _run_benchmark(cfg: Config, out: Any) -> dict[str, Any]:
    from raydebias.benchmark.stage import run_benchmark_stage

    return run_benchmark_stage(cfg, out)


def _benchmark_check(cfg: Config, out: Any, planned: list[str]) -> None:
    from raydebias.benchmark.stage import check_inputs

    check_inputs(cfg, out, planned)


STAGES: dict[str, Stage] = {
    "data": Stage("data", lambda cfg: (), _data_done, _run_data, _data_check),
    "augment": Stage("augment", lambda cfg: ("data",), _augment_done, _run_augment),
    "train": Stage("train", lambda cfg: ("augment",), _train_done, _run_train, _train_check),
    "augment+train": Stage("augment+train", lambda cfg: ("data",), _train_done, run_augment_and_train, _train_check),
    "evaluate": Stage("evaluate", lambda cfg: ("data",) if "tldr" in cfg.evaluate.tasks else (), _never_done,
                      _run_evaluate, _evaluate_check),
    "sweep": Stage("sweep", lambda cfg: ("augment",), _never_done, _run_sweep),
    "benchmark": Stage("benchmark", _benchmark_needs, _never_done, _run_benchmark, _benchmark_check),
}
# Targets that are a fixed sequence of stages, each run whatever is already there.
SEQUENCES: dict[str, tuple[str, ...]] = {"all": ("data", "augment+train", "evaluate")}
TARGETS = ("data", "augment", "train", "augment+train", "evaluate", "benchmark", "all")  # jobs/pipeline.py --stage


def plan(target: str, cfg: Config, out: Any) -> list[str]:
    """The stages to run for ``target``, in order: a sequence as it is; a stage after every upstream stage
    whose outputs are not complete in ``out`` (depth first, each once)."""
    if target in SEQUENCES:
        return list(SEQUENCES[target])
    if target not in STAGES:
        raise KeyError(f"unknown stage {target!r}; stages: {', '.join(STAGES)}; sequences: {', '.join(SEQUENCES)}")
    order: list[str] = []

    def visit(name: str) -> None:
        for up in STAGES[name].needs(cfg):
            if up not in order and not STAGES[up].done(cfg, out):
                visit(up)
        if name not in order:
            order.append(name)

    visit(target)
    return order


def check(planned: list[str], cfg: Config, out: Any) -> None:
    """Before anything runs: every planned stage's inputs that no planned stage produces (sources that do
    not exist, an evaluation without a model)."""
    for name in planned:
        if STAGES[name].check is not None:
            STAGES[name].check(cfg, out, planned)


def run_stage(name: str, cfg: Config, out: Any, **kwargs: Any) -> dict[str, Any]:
    """Run ONE stage (no upstream): ``kwargs`` go to its function (the sweep's ``space``)."""
    return STAGES[name].run(cfg, out, **kwargs)


__all__ = ["SEQUENCES", "STAGES", "TARGETS", "Stage", "check", "plan", "run_augment_and_train", "run_stage"]
