"""Sweeps (paper Appendix H, Table 14; SPEC §6): space.py (search spaces), trial.py (one trial), driver.py
(Ray Tune), results.py (Pareto front, tables, best.yaml).

A search space is a small YAML file: ``train.*`` field -> values, plus optional sweep settings::

    alpha: [1, 2, 4, 8, 16]            # a list is a grid axis
    tau: {loguniform: [0.05, 2.0]}     # random axes: uniform / loguniform [low, high], choice [...],
    toxic_weight: {choice: [1.0, 1.5]} #   randint [low, high)
    num_samples: 4                     # SweepConfig fields may be set here too

Every value a space can produce is validated like any config value (``train.alpha=-1`` is refused with
the dotted key named) before a trial starts.

The driver (:func:`run_sweep`, CLI ``tune/sweep.py``) on Ray Tune, Train V2 style::

    DIR/augmented ──read once──► DIR/sweep/data/{train,val}   (val: sweep.val_fraction of the groups, by hash)
    Tuner(run_trial) ── each trial ─► TorchTrainer on data/train, val_* losses every epoch ─► Tune (FIFO|ASHA)
                                   └► its model on the val groups' TL;DR prompts (toxicity, faithfulness) and
                                      on sweep.eval_tasks' first sweep.eval_limit items (TruthfulQA, RTP, patterns)
    DIR/sweep/results.parquet, alpha_table.md (Table 14), pareto.md + pareto.png, best.yaml

A trial's training lives in ``DIR/sweep/trials/<trial id>/`` (checkpoints, model, eval results); a
re-run with the same ``--output`` restores the Tuner (``Tuner.restore``) and unfinished trials resume
from their last checkpoint. Every trial runs to the end by default (``sweep.scheduler: fifo``: the alpha
ablation must compare every alpha); with ``asha``, trials whose per-epoch ``sweep.metric`` lags are stopped
and kept in the results with ``status = stopped`` and no evaluation.
"""

from __future__ import annotations

from raydebias.sweep.driver import TUNER_NAME, build_tuner, run_sweep
from raydebias.sweep.results import (
    RESULT_COLUMNS,
    TABLE_COLUMNS,
    alpha_table,
    best_trial,
    pareto_front,
    pareto_plot,
    result_rows,
    table_columns,
    write_results,
)
from raydebias.sweep.space import (
    DISTRIBUTIONS,
    SearchSpace,
    default_space,
    load_space,
    param_space,
    parse_space,
    sweep_settings,
    trial_config,
)
from raydebias.sweep.trial import (
    evaluate_trial,
    prepare_sweep_data,
    run_trial,
    sweep_benchmarks,
    trial_metrics,
)

__all__ = ["DISTRIBUTIONS", "RESULT_COLUMNS", "TABLE_COLUMNS", "TUNER_NAME", "SearchSpace", "alpha_table", "best_trial",
           "build_tuner", "default_space", "evaluate_trial", "load_space", "param_space", "pareto_front", "pareto_plot",
           "parse_space", "prepare_sweep_data", "result_rows", "run_sweep", "run_trial", "sweep_benchmarks",
           "sweep_settings", "table_columns", "trial_config", "trial_metrics", "write_results"]
