"""A finished sweep's tables: one row per trial, the Pareto front toxicity x faithfulness, the paper's
Table 14 (alpha_table), the plot, and best.yaml (the front's best trial as a ready config)."""

from __future__ import annotations

import logging
import math
import posixpath
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import yaml

from raydebias.config import Config, SweepConfig, config_to_dict
from raydebias.storage import StoragePath
from raydebias.sweep.space import SearchSpace, sweep_settings, trial_config

log = logging.getLogger(__name__)


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
    """Every evaluated trial (toxicity x faithfulness, ± std) labelled by the searched values that differ,
    the Pareto front ``front`` in red; trials without both values are named under the plot. Drawn with
    :mod:`raydebias.plots` (no offset tick labels, labels that do not collide at any value range)."""
    from raydebias import plots

    varying = [(k, sym) for k, sym in (("alpha", "α"), ("tau", "τ"), ("toxic_weight", "w"))
               if len({r.get(k) for r in rows if _num(r.get(k))}) > 1]

    def label(r: dict[str, Any]) -> str:
        return " ".join(f"{sym}={r[k]:g}" for k, sym in varying if _num(r.get(k))) or str(r["trial_id"])

    names = [label(r) for r in rows]
    if len(set(names)) < len(names):  # same parameters, e.g. several seeds: the trial id tells them apart
        names = [f"{n} ({r['trial_id']})" if names.count(n) > 1 else n for n, r in zip(names, rows, strict=True)]
    on_front = {id(r) for r in front}
    fig = plots.tradeoff_figure(names, [r.get("toxicity") for r in rows], [r.get("faithfulness") for r in rows],
                                [r.get("toxicity_std") for r in rows], [r.get("faithfulness_std") for r in rows],
                                front=[n for n, r in zip(names, rows, strict=True) if id(r) in on_front],
                                title="Sweep: toxicity × faithfulness on the validation groups", point_label="trial")
    dest.write_bytes(plots.png_bytes(fig))
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
