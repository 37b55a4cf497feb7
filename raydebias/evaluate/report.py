"""metrics.json -> report.md with Table-1/4/5-style tables (value and delta vs. base) and PNG plots."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

TLDR_ROWS = (("toxicity", "Toxicity ↓"), ("faithfulness", "Faithfulness (NLI) ↑"),
             ("entity_precision", "Entity precision ↑"), ("rougeL", "ROUGE-L ↑"))
TQA_KEYS = ("bleu_max", "bleu_diff", "bleu_acc", "rouge1_max", "rouge1_diff", "rouge1_acc", "rouge2_max",
            "rouge2_diff", "rouge2_acc", "rougeL_max", "rougeL_diff", "rougeL_acc")


def _fmt(v: float | None, std: float | None = None) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return f"{v:.3f} ± {std:.3f}" if std is not None and not math.isnan(std) else f"{v:.3f}"


def _delta(v: float | None, b: float | None) -> str:
    if v is None or b is None or math.isnan(v) or math.isnan(b):
        return ""
    return f"{v - b:+.3f}"


def _get(m: dict, *path: str) -> Any:
    for p in path:
        if not isinstance(m, dict) or p not in m:
            return None
        m = m[p]
    return m


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def scalar_rows(models: dict[str, Any]) -> list[tuple[str, tuple[str, ...], bool]]:
    """(label, path into a model's metrics, has_std) for every scalar metric of the report."""
    rows = [(f"TL;DR {label}", ("tldr", key), True) for key, label in TLDR_ROWS]
    rows += [(f"TruthfulQA {k}", ("truthfulqa_gen", k), False) for k in TQA_KEYS]
    rows += [("TruthfulQA MC1 acc ↑", ("truthfulqa_mc1", "acc"), False),
             ("RTP toxicity ↓", ("rtp", "toxicity"), True), ("RTP share toxic ≥ 0.5 ↓", ("rtp", "toxic_share"), False),
             ("MMLU-Pro acc ↑", ("mmlu_pro", "overall"), False)]
    return [r for r in rows if any(_get(m["metrics"], *r[1]) is not None for m in models.values())]


def output_rows(models: dict[str, Any]) -> list[list[str]]:
    """One row per (model, task) with the task's n, empty and abstained outputs and, per metric, the rows
    it had no value for (only metrics with some missing are named)."""
    rows = []
    for name, m in models.items():
        for task, v in (m["metrics"] or {}).items():
            if task == "patterns" or not isinstance(v, dict) or "n" not in v:
                continue
            missing = {k: s["n_missing"] for k, s in v.items() if isinstance(s, dict) and s.get("n_missing")}
            if v.get("n_missing"):
                missing = {"rows": v["n_missing"], **missing}
            rows.append([name, task, str(v["n"]), str(v.get("n_empty", "–")), str(v.get("n_abstain", "–")),
                         ", ".join(f"{k}: {c}" for k, c in missing.items()) or "0"])
    return rows


def _value(m: dict, path: tuple[str, ...], has_std: bool) -> tuple[float | None, float | None]:
    v = _get(m["metrics"], *path)
    if has_std and isinstance(v, dict):
        return v.get("mean"), v.get("std")
    return v, None


def write_report(metrics: dict[str, Any], out_dir: Path) -> Path:
    models = metrics["models"]
    names = list(models)
    base = "base" if "base" in models else None
    md = ["# Evaluation report\n"]
    md.append("Models: " + ", ".join(f"**{n}** = `{m['id']}`" for n, m in models.items()) + "\n")
    header = ["metric", *names] + (["Δ model − base"] if base and "model" in models else [])
    rows = []
    for label, path, has_std in scalar_rows(models):
        vals = {n: _value(models[n], path, has_std) for n in names}
        row = [label] + [_fmt(*vals[n]) for n in names]
        if base and "model" in models:
            row.append(_delta(vals["model"][0], vals["base"][0]))
        rows.append(row)
    md.append("## Summaries (Table 4) and the alignment-tax benchmark (Tables 1-2)\n")
    md.append(markdown_table(header, rows))
    pat_rows = []
    for n in names:
        for task, rates in (_get(models[n]["metrics"], "patterns") or {}).items():
            pat_rows.append([n, task, *(f"{rates[k]:.1f}" for k in
                                        ("empty", "abstention", "repetitive", "incomplete", "non_sequitur",
                                         "punctuation")), str(rates["n"])])
    if pat_rows:
        md.append("## Generation patterns (Table 5, % of outputs)\n")
        md.append(markdown_table(["model", "task", "empty", "abstention", "repetitive", "incomplete", "non-sequitur",
                          "punctuation", "n"], pat_rows))
    if out_rows := output_rows(models):
        md.append("## Outputs per task\n")
        md.append("*n*: rows scored; *empty* / *abstained*: outputs matching those generation patterns (they are "
                  "scored and counted in the means: an empty summary has faithfulness 0); *missing*: rows a "
                  "metric had no value for (e.g. a summary without entities), left out of that mean only.\n")
        md.append(markdown_table(["model", "task", "n", "empty", "abstained", "missing"], out_rows))
    subj = {n: _get(models[n]["metrics"], "mmlu_pro", "subjects") or {} for n in names}
    if any(subj.values()):
        all_s = sorted({s for v in subj.values() for s in v})
        md.append("## MMLU-Pro per subject (accuracy)\n")
        md.append(markdown_table(["subject", *names], [[s, *(_fmt(_get(subj[n], s, "acc")) for n in names)] for s in all_s]))
    md.append("## Rows per benchmark\n")
    md.append("Per evaluated model: rows in = kept + quarantined (quarantine/evaluate says why, per row); "
              "*clamped*: kept requests whose max new tokens were cut to the model's positions "
              "(evaluate.min_prompt_tokens); *shots*: MMLU-Pro questions per number of worked examples.\n")
    md.append(markdown_table(
        ["model", "task", "rows in", "kept", "quarantined", "clamped", "shots"],
        [[n, t, str(c["rows_in"]), str(c["kept"]),
          ", ".join(f"{k}: {v}" for k, v in c["quarantined"].items()) or "0", str(c.get("clamped", 0)),
          ", ".join(f"{k}: {v}" for k, v in (c.get("shots") or {}).items())]
         for n, per_task in metrics["counts"].items() for t, c in per_task.items()]))
    for png in _plots(models, subj, out_dir):
        md.append(f"![{png.stem}]({png.name})\n")
    path = out_dir / "report.md"
    path.write_text("\n".join(md))
    return path


def _plots(models: dict[str, Any], subj: dict[str, dict], out_dir: Path) -> list[Path]:
    """toxicity_vs_faithfulness.png (TL;DR means ± std, labelled without collisions) and mmlu_pro_subjects.png
    (accuracy per subject; a subject a model has no value for gets no bar, not a 0), through the readable
    helpers of :mod:`raydebias.plots` (no offset tick labels at any value range)."""
    from raydebias import plots

    made = []
    names = list(models)

    def tl(n: str, k: str, s: str) -> Any:
        return _get(models[n]["metrics"], "tldr", k, s)

    if any(tl(n, "toxicity", "mean") is not None and tl(n, "faithfulness", "mean") is not None for n in names):
        fig = plots.tradeoff_figure(names, [tl(n, "toxicity", "mean") for n in names],
                                    [tl(n, "faithfulness", "mean") for n in names],
                                    [tl(n, "toxicity", "std") for n in names],
                                    [tl(n, "faithfulness", "std") for n in names],
                                    highlight=["base"] if "base" in models else [],
                                    title="TL;DR summaries: toxicity vs. faithfulness", width=6.0, height=4.5)
        made.append(plots.save(fig, out_dir / "toxicity_vs_faithfulness.png"))
    if any(subj.values()):
        all_s = sorted({s for v in subj.values() for s in v})
        fig, ax = plots.new_figure(max(6.0, len(all_s) * 0.7 + 2), 4.5)
        width = 0.8 / max(len(subj), 1)
        for k, (n, v) in enumerate(subj.items()):
            acc = [_get(v, s, "acc") for s in all_s]
            ax.bar([i + k * width for i in range(len(all_s))], [math.nan if a is None else a for a in acc],
                   width=width, label=n)
        ax.set_xticks([i + width * (len(subj) - 1) / 2 for i in range(len(all_s))], all_s)
        plots.plain_axis(ax, x=False)
        ax.set_ylabel("accuracy (0-1; higher is better)")
        ax.set_xlabel("MMLU-Pro subject")
        ax.legend(fontsize=7, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=min(len(subj), 4), frameon=False)
        fig.suptitle("MMLU-Pro accuracy per subject", fontsize=10)
        missing = {n: [s for s in all_s if _get(v, s, "acc") is None] for n, v in subj.items()}
        missing = "; ".join(f"{n}: {', '.join(ss)}" for n, ss in missing.items() if ss)
        lines = plots.footnote(fig, f"No value (no bar): {missing}." if missing else "")
        plots.finish_layout(fig, ax, lines)
        made.append(plots.save(fig, out_dir / "mmlu_pro_subjects.png"))
    return made


__all__ = ["markdown_table", "output_rows", "scalar_rows", "write_report"]
