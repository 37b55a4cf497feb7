"""Sweep building blocks (paper Appendix H, Table 14; SPEC §6): search spaces, the Pareto front, tables.

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

import io
import itertools
import json
import logging
import math
import posixpath
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from raydebias.config import (
    Config,
    SweepConfig,
    TrainConfig,
    config_to_dict,
    load_config,
    replace_config,
)
from raydebias.errors import ConfigError, StageInputError
from raydebias.storage import StoragePath

log = logging.getLogger(__name__)

DISTRIBUTIONS = ("uniform", "loguniform", "choice", "randint")
_TRAIN_KEYS = {f.name for f in fields(TrainConfig)}
_SWEEP_KEYS = {f.name for f in fields(SweepConfig)} - {"alpha", "tau", "toxic_weight"}


@dataclass
class SearchSpace:
    grid: dict[str, list[Any]] = field(default_factory=dict)      # train key -> values (crossed)
    random: dict[str, dict[str, Any]] = field(default_factory=dict)  # train key -> {distribution: args}
    settings: dict[str, Any] = field(default_factory=dict)        # SweepConfig overrides

    def grid_points(self) -> list[dict[str, Any]]:
        """Every combination of the grid axes (one empty point without a grid)."""
        keys = list(self.grid)
        return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*(self.grid[k] for k in keys))]


def _check_value(key: str, value: Any) -> None:
    load_config(None, [f"train.{key}={json.dumps(value)}"])


def _check_distribution(key: str, spec: dict[str, Any]) -> None:
    if len(spec) != 1 or next(iter(spec)) not in DISTRIBUTIONS:
        raise ConfigError(f"space key {key!r}: a random axis is one of {{{', '.join(DISTRIBUTIONS)}: ...}}, "
                          f"got {spec!r}")
    kind, args = next(iter(spec.items()))
    if kind == "choice":
        if not isinstance(args, list) or not args:
            raise ConfigError(f"space key {key!r}: choice needs a non-empty list, got {args!r}")
        for v in args:
            _check_value(key, v)
        return
    if not (isinstance(args, list) and len(args) == 2 and all(isinstance(a, int | float) for a in args)
            and args[0] < args[1]):
        raise ConfigError(f"space key {key!r}: {kind} needs [low, high] with low < high, got {args!r}")
    if kind == "loguniform" and args[0] <= 0:
        raise ConfigError(f"space key {key!r}: loguniform needs low > 0, got {args!r}")
    for v in ((args[0], args[1] - 1) if kind == "randint" else args):
        _check_value(key, v)


def parse_space(doc: dict[str, Any], where: str = "space") -> SearchSpace:
    if not isinstance(doc, dict) or not doc:
        raise ConfigError(f"{where}: a search space is a non-empty mapping of train keys to values")
    space = SearchSpace()
    for key, spec in doc.items():
        key = str(key).removeprefix("train.")
        if key in _SWEEP_KEYS:
            space.settings[key] = spec
            continue
        if key not in _TRAIN_KEYS:
            raise ConfigError(f"{where}: unknown key {key!r}; search over train.* fields "
                              f"({', '.join(sorted(_TRAIN_KEYS))}) or set {', '.join(sorted(_SWEEP_KEYS))}")
        if isinstance(spec, list):
            if not spec:
                raise ConfigError(f"{where}: grid axis {key!r} is empty")
            for v in spec:
                _check_value(key, v)
            space.grid[key] = spec
        elif isinstance(spec, dict):
            _check_distribution(key, spec)
            space.random[key] = spec
        else:  # a single value: a one-point grid
            _check_value(key, spec)
            space.grid[key] = [spec]
    # the sweep settings must make a valid SweepConfig too
    load_config(None, [f"sweep.{k}={json.dumps(v)}"
                       for k, v in space.settings.items()])
    return space


def load_space(path: str | Path) -> SearchSpace:
    p = Path(path)
    try:
        doc = yaml.safe_load(p.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"cannot read search space {p}: {e}") from e
    return parse_space(doc, str(p))


def pareto_front(rows: Sequence[dict[str, Any]], minimize: str = "toxicity",
                 maximize: str = "faithfulness") -> list[dict[str, Any]]:
    """Rows not dominated by another (lower ``minimize`` and higher ``maximize``, one strictly), sorted by
    ``minimize``. Rows with a missing/NaN value on either axis are not on the front."""
    ok = [r for r in rows if _num(r.get(minimize)) and _num(r.get(maximize))]

    def dominates(a: dict, b: dict) -> bool:
        return (a[minimize] <= b[minimize] and a[maximize] >= b[maximize]
                and (a[minimize] < b[minimize] or a[maximize] > b[maximize]))

    front = [r for r in ok if not any(dominates(o, r) for o in ok if o is not r)]
    return sorted(front, key=lambda r: (r[minimize], -r[maximize]))


def _num(v: Any) -> bool:
    return isinstance(v, int | float) and not math.isnan(v)


# Table 14's columns, then the alignment-tax ones a trial reports when sweep.eval_tasks runs them
TABLE_COLUMNS = {"toxicity": "Toxicity", "faithfulness": "Faithfulness", "truthfulqa_bleu_acc": "TruthfulQA BLEU acc",
                 "truthfulqa_rougeL_acc": "TruthfulQA ROUGE-L acc", "truthfulqa_mc1_acc": "TruthfulQA MC1",
                 "rtp_toxicity": "RTP toxicity", "mmlu_pro_acc": "MMLU-Pro acc"}


def table_columns(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Toxicity and faithfulness, and each alignment-tax column some trial has a value for."""
    return ["toxicity", "faithfulness", *(c for c in list(TABLE_COLUMNS)[2:] if any(_num(r.get(c)) for r in rows))]


def alpha_table(rows: Sequence[dict[str, Any]], by: str = "alpha",
                columns: Sequence[str] = ("toxicity", "faithfulness")) -> str:
    """The paper's Table 14: one line per value of ``by`` (mean over trials sharing it), as Markdown."""
    from raydebias.evaluate.report import markdown_table

    groups: dict[Any, list[dict]] = defaultdict(list)
    for r in rows:
        groups[r[by]].append(r)
    lines = []
    for value in sorted(groups):
        cells = []
        for c in columns:
            vals = [r[c] for r in groups[value] if _num(r.get(c))]
            cells.append(f"{sum(vals) / len(vals):.3f}" if vals else "n/a")
        lines.append([f"{value:g}", *cells, str(len(groups[value]))])
    return markdown_table([by, *(TABLE_COLUMNS.get(c, c) for c in columns), "trials"], lines)


def best_trial(rows: Sequence[dict[str, Any]], sweep: SweepConfig) -> dict[str, Any] | None:
    """The Pareto-front trial with the best ``sweep.select_metric`` (never a dominated trial); None
    when no trial was evaluated."""
    front = pareto_front(rows)
    front = [r for r in front if _num(r.get(sweep.select_metric))]
    if not front:
        return None
    sign = 1 if sweep.select_mode == "min" else -1
    return min(front, key=lambda r: (sign * r[sweep.select_metric], r["toxicity"], -r["faithfulness"]))


# --------------------------------------------------------------------------------------------------
# The Ray Tune driver
# --------------------------------------------------------------------------------------------------

TUNER_NAME = "tuner"
TRIAL_KEYS = ("seed",)  # trial parameters that are not train.* fields


def default_space(cfg: Config) -> SearchSpace:
    """The config's own grid (``sweep.alpha`` x ``sweep.tau`` x ``sweep.toxic_weight``)."""
    s = cfg.sweep
    return SearchSpace(grid={"alpha": list(s.alpha), "tau": list(s.tau), "toxic_weight": list(s.toxic_weight)})


def sweep_settings(cfg: Config, space: SearchSpace) -> SweepConfig:
    """``cfg.sweep`` with the space file's settings applied (validated by ``parse_space`` already)."""
    import dataclasses

    return dataclasses.replace(cfg.sweep, **space.settings)


def param_space(space: SearchSpace, cfg: Config, settings: SweepConfig) -> tuple[dict[str, Any], int]:
    """Ray Tune's param_space and num_samples for a space. A pure grid repeated ``num_samples`` times
    would train identical trials: the repeats become a ``seed`` grid axis instead."""
    from ray import tune

    ps: dict[str, Any] = {k: tune.grid_search(list(v)) for k, v in space.grid.items()}
    makers = {"uniform": tune.uniform, "loguniform": tune.loguniform, "randint": tune.randint}
    for key, spec in space.random.items():
        kind, args = next(iter(spec.items()))
        ps[key] = tune.choice(list(args)) if kind == "choice" else makers[kind](*args)
    samples = settings.num_samples
    if not space.random and samples > 1:
        ps["seed"] = tune.grid_search([cfg.seed + i for i in range(samples)])
        samples = 1
    return ps, samples


def trial_config(cfg: Config, params: dict[str, Any]) -> Config:
    """The sweep's config with one trial's parameters (train.* fields, and ``seed``), coerced and
    validated like config values (Tune hands numpy scalars and YAML ints for float fields)."""
    values = {("" if k in TRIAL_KEYS else "train.") + k: (v.item() if hasattr(v, "item") else v)
              for k, v in params.items()}
    return replace_config(cfg, values)


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


def _param_keys(space: SearchSpace) -> list[str]:
    """The searched keys, and alpha / tau / toxic_weight always (the tables group by them)."""
    return list(dict.fromkeys([*space.grid, *space.random, "alpha", "tau", "toxic_weight"]))


RESULT_COLUMNS = ("trial_id", "status", *SweepConfig.EPOCH_METRICS, *SweepConfig.EVAL_METRICS, "toxicity_std",
                  "faithfulness_std", "epochs", "epochs_done", "eval_rows", "eval_quarantined", "model", "error")
EXTRA_PREFIXES = ("truthfulqa_", "rtp_", "mmlu_pro_", "patterns_")  # sweep.eval_tasks' metrics (trial_metrics)


def result_rows(grid: Any, space: SearchSpace, cfg: Config) -> list[dict[str, Any]]:
    """One row per trial: its parameters, status (evaluated / stopped by the scheduler / error), the
    last validation losses and its evaluation."""
    keys = _param_keys(space)
    rows = []
    for res in grid:
        m = dict(res.metrics or {})
        hist = res.metrics_dataframe
        epochs_done = int(hist["epochs_done"].max()) if hist is not None and "epochs_done" in hist else 0
        status = "error" if res.error else "evaluated" if "eval_rows" in m else "stopped"
        row = {"trial_id": m.get("trial_id") or posixpath.basename(res.path.rstrip("/")), "status": status,
               **{k: res.config.get(k, getattr(cfg.train, k, None)) for k in keys},
               "seed": res.config.get("seed", cfg.seed)}
        for c in RESULT_COLUMNS[2:]:
            row.setdefault(c, m.get(c))
        row["epochs_done"] = epochs_done
        row["error"] = str(res.error).splitlines()[0][:500] if res.error else None
        for c in (*SweepConfig.EPOCH_METRICS, *SweepConfig.EVAL_METRICS, "toxicity_std", "faithfulness_std"):
            row[c] = float("nan") if row.get(c) is None else float(row[c])
        row |= {k: float(v) for k, v in m.items() if k.startswith(EXTRA_PREFIXES)}
        rows.append(row)
    extra = sorted({k for r in rows for k in r if k.startswith(EXTRA_PREFIXES)})
    rows = [r | {k: r.get(k, float("nan")) for k in extra} for r in rows]  # one schema for results.parquet
    return sorted(rows, key=lambda r: [str(r[k]) for k in keys] + [r["trial_id"]])


def pareto_plot(rows: Sequence[dict[str, Any]], front: Sequence[dict[str, Any]], dest: StoragePath) -> StoragePath:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in rows if _num(r.get("toxicity")) and _num(r.get("faithfulness"))]
    fig, ax = plt.subplots(figsize=(5.5, 4))
    ax.scatter([r["toxicity"] for r in ok], [r["faithfulness"] for r in ok], c="0.6", label="trials")
    ax.plot([r["toxicity"] for r in front], [r["faithfulness"] for r in front], "o-", c="C3", label="Pareto front")
    for r in ok:
        label = " ".join(f"{sym}={r[k]:g}" for k, sym in (("alpha", "α"), ("tau", "τ"), ("toxic_weight", "w"))
                         if _num(r.get(k)) and len({o.get(k) for o in ok}) > 1) or r["trial_id"]
        ax.annotate(label, (r["toxicity"], r["faithfulness"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.ticklabel_format(useOffset=False)
    ax.set_xlabel("toxicity (lower is better)")
    ax.set_ylabel("faithfulness (higher is better)")
    ax.set_title("Sweep: toxicity × faithfulness on the validation groups")
    ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    dest.write_bytes(buf.getvalue())
    return dest


def _markdown(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    from raydebias.evaluate.report import markdown_table

    def cell(v: Any) -> str:
        return f"{v:.3f}" if isinstance(v, float) else f"{v:g}" if isinstance(v, int | float) else str(v)

    return markdown_table(list(columns), [[cell(r.get(c)) for c in columns] for r in rows])


def write_results(cfg: Config, out: Any, space: SearchSpace, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """results.parquet, alpha_table.md, pareto.md + pareto.png, best.yaml under DIR/sweep."""
    import pyarrow as pa

    settings = sweep_settings(cfg, space)
    d = out.root / "sweep"
    (d / "results.parquet").write_parquet(pa.Table.from_pylist(rows))
    keys = _param_keys(space)
    (d / "alpha_table.md").write_text(
        "Table 14 layout: mean over the evaluated trials with each alpha, on the validation groups "
        "(n/a: every trial with that alpha was stopped early or failed).\n\n" + alpha_table(rows, columns=table_columns(rows)))
    front = pareto_front(rows)
    cols = ["trial_id", *keys, "toxicity", "faithfulness", "rougeL", "val_l_ce", *table_columns(rows)[2:]]
    (d / "pareto.md").write_text("Pareto front, toxicity (min) x faithfulness (max):\n\n" + _markdown(front, cols))
    pareto_plot(rows, front, d / "pareto.png")
    best = best_trial(rows, settings)
    summary = {"trials": len(rows), "status": {s: sum(r["status"] == s for r in rows)
                                               for s in ("evaluated", "stopped", "error")},
               "pareto": [r["trial_id"] for r in front], "results": str(d / "results.parquet")}
    if best is None:
        log.warning("sweep: no trial was evaluated: no best config written")
        (d / "best.yaml").unlink(missing_ok=True)
        return summary
    best_cfg = trial_config(cfg, {k: best[k] for k in (*keys, "seed") if k in best})
    doc = config_to_dict(best_cfg)
    header = (f"# Best trial of the sweep in {out.root}: {best['trial_id']} (Pareto front, best "
              f"{settings.select_metric} {best[settings.select_metric]:.4f}; toxicity {best['toxicity']:.4f}, "
              f"faithfulness {best['faithfulness']:.4f}).\n# Train it: python jobs/pipeline.py --config THIS_FILE "
              "--output DIR\n")
    (d / "best.yaml").write_text(header + yaml.safe_dump(doc, sort_keys=False))
    summary["best"] = {"trial_id": best["trial_id"], **{k: best[k] for k in keys},
                       settings.select_metric: best[settings.select_metric], "config": str(d / "best.yaml")}
    return summary


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


__all__ = ["DISTRIBUTIONS", "SearchSpace", "alpha_table", "best_trial", "build_tuner", "default_space",
           "evaluate_trial", "load_space", "sweep_benchmarks", "table_columns", "trial_metrics", "param_space", "pareto_front", "parse_space", "prepare_sweep_data",
           "result_rows", "run_sweep", "run_trial", "trial_config", "write_results"]
