"""One trial: the sweep's train/validation split (drawn once), the trial function Ray Tune runs (train,
then evaluate through the evaluate stage's code), and the metrics it reports."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from raydebias.config import Config, SweepConfig, replace_config
from raydebias.errors import ConfigError, StageInputError
from raydebias.storage import StoragePath
from raydebias.sweep.space import trial_config


def _hash_order(ids: Sequence[str], seed: int) -> list[str]:
    import hashlib

    return sorted(ids, key=lambda i: hashlib.sha1(f"{seed}:{i}".encode()).hexdigest())


def prepare_sweep_data(cfg: Config, out: Any) -> dict[str, Any]:
    """Read the augmented parts ONCE and split them into the trials' training and validation groups,
    written to ``DIR/sweep/data/{train,val}`` (kept across resumes: every trial of a sweep, and every
    attempt of it, sees the same split). ``DIR/augmented`` must be complete (raydebias/stages.py runs
    the augment stage first when it is not).

    Only the id column is read whole (to draw the validation ids); the rows stream part by part."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from raydebias.schema import AUGMENTED_SCHEMA

    root = out.root / "sweep" / "data"
    split = {name: root / name for name in ("train", "val")}
    if all(p.complete for p in split.values()):
        counts = {name: p.parquet_rows() for name, p in split.items()}
        return {"dirs": split, "groups": sum(counts.values()), **counts, "reused": True}
    if not out.augmented_dir.glob("*.parquet"):
        raise StageInputError(f"sweep: no augmented groups in {out.augmented_dir}: run --stage augment first")
    ids = out.augmented_dir.read_table(columns=["id"]).column("id").to_pylist()
    if len(ids) < 2:
        raise ConfigError(f"sweep: {out.augmented_dir} holds {len(ids)} augmented group(s); a sweep needs at "
                          "least 2 (one to train on, one to validate on): raise data.limit")
    n_val = min(len(ids) - 1, max(1, round(cfg.sweep.val_fraction * len(ids))))
    val_ids = pa.array(sorted(_hash_order(ids, cfg.seed)[:n_val]), pa.string())
    written = {"train": 0, "val": 0}
    with split["train"].replacing() as train_dir, split["val"].replacing() as val_dir:
        for i, f in enumerate(out.augmented_dir.glob("*.parquet")):
            part = f.read_table(schema=AUGMENTED_SCHEMA)
            is_val = pc.is_in(part.column("id"), value_set=val_ids)
            for name, dest, rows in (("train", train_dir, part.filter(pc.invert(is_val))),
                                     ("val", val_dir, part.filter(is_val))):
                if rows.num_rows:
                    (dest / f"part-{i:05d}.parquet").write_parquet(rows)
                    written[name] += rows.num_rows
    if written != {"train": len(ids) - n_val, "val": n_val}:  # an invariant: a bug if it fires
        raise AssertionError(f"sweep: {len(ids)} groups split into {written}, expected {n_val} for validation")
    return {"dirs": split, "groups": len(ids), **written, "reused": False}


def _epoch_report_callback() -> Any:
    """Ray Train -> Ray Tune: forward only the epoch reports (they carry the val_* metrics the
    scheduler compares), with ``epochs_done`` as the scheduler's time axis."""
    from ray.tune.integration.ray_train import TuneReportCallback

    class EpochReport(TuneReportCallback):
        def after_report(self, run_context, metrics, checkpoint):
            if metrics and metrics[0].get("epoch_done"):
                first = {**metrics[0], "epochs_done": metrics[0]["epoch"] + 1}
                super().after_report(run_context, [first, *metrics[1:]], checkpoint)

    return EpochReport()


def sweep_benchmarks(cfg: Config) -> dict[str, list[dict[str, Any]]]:
    """The alignment-tax benchmarks of ``sweep.eval_tasks``, read ONCE by the driver and handed to every
    trial: the first ``sweep.eval_limit`` items of each (MMLU-Pro's validation split, the shots, whole)."""
    tasks = list(cfg.sweep.eval_tasks)
    if not tasks:
        return {}
    from raydebias.evaluate.pipeline import read_benchmarks

    bench = read_benchmarks(replace_config(cfg, {"evaluate.tasks": tasks}), out=None)  # no tldr: out unused
    n = cfg.sweep.eval_limit
    return {k: (v if k == "mmlu_pro_validation" else v[:n]) for k, v in bench.items()}


def trial_metrics(m: dict[str, Any]) -> dict[str, float]:
    """A model's ``tasks.metrics`` -> the flat scalars a trial reports to Tune (and results.parquet):
    TL;DR means (+ std), ``SweepConfig.ALIGNMENT_METRICS`` of the benchmarks run, and every generation
    pattern rate as ``patterns_<task>_<pattern>`` (percent). A TL;DR slice with no scored row gives NaN."""
    from raydebias.evaluate.patterns import PATTERNS

    nan = float("nan")
    t = m.get("tldr") or {}
    out = {k: (t[k]["mean"] if k in t else nan) for k in SweepConfig.EVAL_METRICS}
    out |= {"toxicity_std": t["toxicity"]["std"] if t else nan, "faithfulness_std": t["faithfulness"]["std"] if t else nan}
    if g := m.get("truthfulqa_gen"):
        out |= {f"truthfulqa_{k}": g[k] for k in g if k not in ("n", "n_empty", "n_abstain", "n_missing")}
    if mc1 := m.get("truthfulqa_mc1"):
        out["truthfulqa_mc1_acc"] = mc1["acc"]
    if rtp := m.get("rtp"):
        out |= {"rtp_toxicity": rtp["toxicity"]["mean"], "rtp_toxic_share": rtp["toxic_share"]}
    if mp := m.get("mmlu_pro"):
        out["mmlu_pro_acc"] = mp["overall"]
    for task, rates in (m.get("patterns") or {}).items():
        out |= {f"patterns_{task}_{p}": rates[p] for p in PATTERNS}
    return {k: float(v) for k, v in out.items()}


def evaluate_trial(cfg: Config, trial_out: Any, val_dir: StoragePath,
                   bench: dict[str, list[dict[str, Any]]] | None = None) -> dict[str, Any]:
    """The trial's model on the validation groups' TL;DR prompts and on ``bench`` (:func:`sweep_benchmarks`),
    through the evaluate stage's code: the model's own budget (over-long prompts quarantined, lengths
    clamped), the same generation and scoring pools, the same metrics and accounting. The scored rows go
    to the trial's ``eval/``, its metrics and counts to ``eval_metrics.json``, refused rows to
    ``quarantine/evaluate``."""
    import pyarrow as pa

    from raydebias.evaluate import tasks as T
    from raydebias.evaluate.pipeline import build_requests, model_budget, quarantine_table, run_model
    from raydebias.runtime import use_gpus

    model = str(trial_out.model_dir)
    requests, bad, rows_in = build_requests({"tldr": val_dir.read_table().to_pylist(), **(bench or {})}, cfg,
                                            model_budget(model, cfg.evaluate))
    scored = run_model(requests, model, cfg, use_gpus(cfg.device))
    if len(scored) != requests.num_rows:
        raise AssertionError(f"sweep: {requests.num_rows} validation requests in, {len(scored)} results out")
    trial_out.write_table(pa.Table.from_pylist(scored, schema=T.RESULT_SCHEMA), trial_out.root / "eval")
    kept, quarantined, counts = T.account(rows_in, bad, scored)
    metrics = T.metrics(kept)
    (trial_out.root / "eval_metrics.json").write_text(json.dumps({"metrics": metrics, "counts": counts}, indent=1,
                                                                 default=float))
    trial_out.write_table(quarantine_table([("model", q) for q in quarantined]), trial_out.quarantine_dir("evaluate"))
    return {**trial_metrics(metrics), "eval_rows": counts["tldr"]["kept"],
            "eval_quarantined": sum(sum(c["quarantined"].values()) for c in counts.values())}


def run_trial(params: dict[str, Any], cfg: Config, root: StoragePath,
              bench: dict[str, list[dict[str, Any]]] | None = None) -> None:
    """One Ray Tune trial: fit a TorchTrainer on the sweep's training groups (epoch reports go to Tune
    with the validation losses), then evaluate the model on the validation groups and report once more.

    The final report carries the last epoch's ``val_*`` metrics (Tune requires the scheduler's metric in
    every result) but not ``epochs_done``, so the scheduler does not rank it as another epoch."""
    import ray.tune

    from raydebias.outputs import RunDir
    from raydebias.runtime import configure_data_context
    from raydebias.train.trainer import run_train_stage

    tcfg = trial_config(cfg, params)
    configure_data_context(tcfg)
    data = root / "sweep" / "data"
    trial_id = ray.tune.get_context().get_trial_id()
    tout = RunDir(root / "sweep" / "trials" / trial_id)
    tout.write_config(tcfg)
    # every trial trains on the sweep's one training split and validates on its validation split
    stats = run_train_stage(tcfg, tout, groups=data / "train", validation=data / "val",
                            callbacks=(_epoch_report_callback(),))
    last = {k: v for k, v in stats["epoch_metrics"][-1].items() if k.startswith("val_") or k in ("l_ce", "l_cl")}
    result = {**last, **evaluate_trial(tcfg, tout, data / "val", bench), "epochs": stats["epochs"],
              "steps": stats["steps"], "model": str(tout.model_dir)}
    tout.update_stats("trial", result)
    ray.tune.report(result)
