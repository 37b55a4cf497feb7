"""The baselines comparison (issue #15 item 3) as the paper's tables: flat metrics per method -> report.md,
a self-contained report.html (inline CSS, PNGs as base64 data URIs) and the PNGs. Pure: no Ray, no models.

Input: ``{method: {metric: value}}``, one FLAT dict per method (:func:`flatten_metrics` turns the evaluate
stage's nested metrics, ``DIR/eval/metrics.json`` ``models[name]["metrics"]``, into it), and ``failed``:
``{method: why}`` for methods that produced nothing (a row "failed: why" in every table, never a gap).

Every flat metric is described ONCE, in :data:`METRICS` (static keys) and :func:`metric_spec` (the keys named
after an MMLU-Pro subject or a generation pattern): its label, family (for Table 7), direction (↑ higher
is better, ↓ lower is better) and table. The tables follow the paper (arXiv "Paying the alignment tax"):

- Table 1: TruthfulQA ROUGE-L / BLEU (max and acc, lm-eval's ``truthfulqa_gen``), MC1; RTP toxicity;
- Tables 2 / 8 / 9: MMLU-Pro accuracy on the qualitative subjects / quantitative subjects / overall;
- Table 4: TL;DR toxicity ± std, faithfulness ± std (and entity precision, ROUGE-L);
- Table 5: generation patterns (% of outputs), one table per generative task;
- Table 7: per method, the share of its metrics in each family that degrade vs. base (:func:`degradation`);
- the alignment-tax measures of SPEC §7b (single-cluster rate, general-text perplexity) with Δ vs. base;
- the toxicity x faithfulness scatter (± std, Pareto front, labelled points).

Every metric cell shows the value and its Δ vs. base with an arrow for the direction of the change (↑/↓),
marked ✓ (better) or ✗ (worse) given the metric's direction (green / red in HTML); "n/a" where a method has
no value. Δ needs both values.
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from raydebias.evaluate.patterns import PATTERNS

# The paper's row order (Tables 1, 4, 5); methods not listed are appended in their input order.
METHOD_ORDER = ("base", "cda_gender", "cda_race", "cda_religion", "dropout", "inlp_gender", "inlp_race",
                "sentence_debias_gender", "sentence_debias_race", "self_debias", "instructive", "contrastive")
METHOD_LABELS = {"base": "Base", "cda_gender": "CDA (gender)", "cda_race": "CDA (race)",
                 "cda_religion": "CDA (religion)", "dropout": "Dropout", "inlp_gender": "INLP (gender)",
                 "inlp_race": "INLP (race)", "sentence_debias_gender": "Sentence Debiasing (gender)",
                 "sentence_debias_race": "Sentence Debiasing (race)", "self_debias": "Self-Debiasing",
                 "instructive": "Instructive Debiasing", "contrastive": "Contrastive Learning"}
BASE = "base"

UP, DOWN = "↑", "↓"
# Table 7's families (the paper's categories, plus toxicity, generation patterns and SPEC §7b's tax measures)
FAMILIES = ("toxicity", "truthfulness", "knowledge", "summarization", "coherence", "tax")
FAMILY_LABELS = {"toxicity": "Toxicity", "truthfulness": "Truthfulness (TruthfulQA)",
                 "knowledge": "Knowledge (MMLU-Pro subjects)", "summarization": "Summarization (TL;DR)",
                 "coherence": "Coherence (generation patterns)", "tax": "Tax measures"}


@dataclass(frozen=True)
class Metric:
    """One flat metric: ``family`` None means it is shown but not counted in Table 7 (a std, a subset or an
    aggregate of counted metrics); ``direction`` None: no better/worse (a std); ``table`` where it is shown
    (None: next to its mean, as ``std``)."""

    key: str
    label: str
    family: str | None
    direction: str | None
    table: str | None
    decimals: int = 3
    std: str | None = None  # the key of its std, shown as "mean ± std"


def _m(key: str, label: str, family: str | None, direction: str | None, table: str | None, decimals: int = 3,
       std: bool = False) -> Metric:
    return Metric(key, label, family, direction, table, decimals, f"{key}_std" if std else None)


_TQA = [_m(f"truthfulqa_{s}_{k}", f"{name} {k}", "truthfulness" if s in ("rougeL", "bleu") and k != "diff" else None,
           UP, "1" if s in ("rougeL", "bleu") and k != "diff" else "1+")
        for s, name in (("rougeL", "ROUGE-L"), ("bleu", "BLEU"), ("rouge1", "ROUGE-1"), ("rouge2", "ROUGE-2"))
        for k in ("max", "acc", "diff")]
# The static flat metrics, in column order. Table 1 counts the metrics the paper's Table 1 shows (ROUGE-L and
# BLEU max/acc, MC1, RTP toxicity); the other lm-eval TruthfulQA numbers are in "1+" (details).
METRICS: dict[str, Metric] = {m.key: m for m in [
    *[m for m in _TQA if m.table == "1"],
    _m("truthfulqa_mc1", "MC1 acc", "truthfulness", UP, "1"),
    _m("rtp_toxicity", "RTP toxicity", "toxicity", DOWN, "1", std=True),
    _m("rtp_toxic_share", "RTP share toxic ≥ 0.5", "toxicity", DOWN, "1"),
    *[m for m in _TQA if m.table == "1+"],
    _m("rtp_challenging_toxicity", "RTP toxicity (challenging prompts)", None, DOWN, "1+", std=True),
    _m("tldr_toxicity", "Toxicity", "toxicity", DOWN, "4", std=True),
    _m("tldr_faithfulness", "Faithfulness (NLI)", "summarization", UP, "4", std=True),
    _m("tldr_entity_precision", "Entity precision", "summarization", UP, "4", std=True),
    _m("tldr_rougeL", "ROUGE-L", "summarization", UP, "4", std=True),
    _m("mmlu_pro_overall", "Overall", None, UP, "9"),
    _m("mmlu_pro_extraction_failed", "Answer not extracted (share)", None, DOWN, "9"),
    _m("single_cluster_rate", "Single-cluster rate (homogenization)", "tax", DOWN, "tax"),
    _m("general_ppl", "General-text perplexity (forgetting)", "tax", DOWN, "tax", decimals=2),
]}
for _k in [m.std for m in METRICS.values() if m.std]:
    METRICS[_k] = Metric(_k, "std", None, None, None)

# The paper's split of MMLU-Pro subjects: Table 2 (qualitative) and Table 8 (quantitative; also any other).
QUALITATIVE = ("business", "health", "history", "law", "other", "philosophy", "psychology")
QUANTITATIVE = ("biology", "chemistry", "computer science", "economics", "engineering", "math", "physics")
TAX_KEYS = ("single_cluster_rate", "general_ppl")
_COUNTS = ("n", "n_empty", "n_abstain", "n_missing")  # row counts, not metrics (the evaluate report shows them)

TABLES = {
    "1": ("Table 1: TruthfulQA and RealToxicityPrompts",
          "TruthfulQA as lm-evaluation-harness's truthfulqa_gen (BLEU / ROUGE on 0-100, *max*: best score against "
          "a correct answer, *acc*: share of answers closer to a correct than to an incorrect one) and MC1 "
          "accuracy; RealToxicityPrompts continuations scored by toxic-bert."),
    "1+": ("Table 1 (details): every TruthfulQA generation metric",
           "*diff*: best correct − best incorrect score. Not counted in Table 7 (Table 1's columns are)."),
    "2": ("Table 2: MMLU-Pro, qualitative subjects (accuracy)", ""),
    "8": ("Table 8: MMLU-Pro, quantitative subjects (accuracy)", ""),
    "9": ("Table 9: MMLU-Pro overall (accuracy)", "*Answer not extracted*: share of outputs without a parsable "
          "answer (counted wrong)."),
    "4": ("Table 4: Reddit TL;DR summaries", "Mean ± std over the summaries; Δ on the mean."),
    "tax": ("Alignment-tax measures (SPEC §7b)", "Single-cluster rate: share of TruthfulQA questions whose 10 "
            "samples form one cluster (homogenization, lower is better); general-text perplexity: held-out "
            "language-modelling perplexity (forgetting, lower is better)."),
    "other": ("Other metrics (no direction known)", "Flat keys this report does not describe: shown with Δ, "
              "not marked better or worse and not counted in Table 7."),
}


def metric_spec(key: str) -> Metric:
    """The description of a flat metric key: :data:`METRICS`, or ``mmlu_pro_<subject>`` (↑, knowledge,
    Table 2 or 8) or ``patterns_<task>_<pattern>`` (↓ percent, coherence, Table 5); other keys get a
    direction-less entry in the "other" table."""
    if key in METRICS:
        return METRICS[key]
    if key.startswith("patterns_"):
        for p in PATTERNS:
            if key.endswith("_" + p) and len(key) > len("patterns_") + len(p) + 1:
                return Metric(key, p.replace("_", "-"), "coherence", DOWN, "5:" + key[len("patterns_"):-len(p) - 1], 1)
    if key.startswith("mmlu_pro_"):
        subject = key[len("mmlu_pro_"):].replace("_", " ")
        return Metric(key, subject, "knowledge", UP, "2" if subject in QUALITATIVE else "8")
    return Metric(key, key, None, None, "other")


# --------------------------------------------------------------------------------------------------
# Nested evaluate metrics -> flat keys
# --------------------------------------------------------------------------------------------------


def _num(v: Any) -> float:
    if v is None:
        return math.nan
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise ValueError(f"flatten_metrics: expected a number, got {v!r}")
    return float(v)


def _need(d: Any, task: str, *keys: str) -> dict[str, Any]:
    if not isinstance(d, dict) or any(k not in d for k in keys):
        got = sorted(d) if isinstance(d, dict) else type(d).__name__
        raise ValueError(f"flatten_metrics: {task!r} must be a dict with {list(keys)} (the shape "
                         f"raydebias.evaluate.tasks.metrics returns), got {got}")
    return d


def _flat_tldr(v: dict) -> dict[str, float]:
    out = {}
    for k in ("toxicity", "faithfulness", "entity_precision", "rougeL"):
        s = _need(_need(v, "tldr", k)[k], f"tldr.{k}", "mean", "std")
        out |= {f"tldr_{k}": _num(s["mean"]), f"tldr_{k}_std": _num(s["std"])}
    return out


def _flat_tqa_gen(v: dict) -> dict[str, float]:
    return {f"truthfulqa_{k}": _num(x) for k, x in _need(v, "truthfulqa_gen").items() if k not in _COUNTS}


def _flat_mc1(v: dict) -> dict[str, float]:
    return {"truthfulqa_mc1": _num(_need(v, "truthfulqa_mc1", "acc")["acc"])}


def _flat_rtp(v: dict) -> dict[str, float]:
    _need(v, "rtp", "toxicity", "toxic_share")
    out = {"rtp_toxicity": _num(v["toxicity"]["mean"]), "rtp_toxicity_std": _num(v["toxicity"]["std"]),
           "rtp_toxic_share": _num(v["toxic_share"])}
    if c := v.get("challenging_toxicity"):
        out |= {"rtp_challenging_toxicity": _num(c["mean"]), "rtp_challenging_toxicity_std": _num(c["std"])}
    return out


def _flat_mmlu(v: dict) -> dict[str, float]:
    _need(v, "mmlu_pro", "overall", "subjects")
    out = {"mmlu_pro_overall": _num(v["overall"])}
    if "extraction_failed" in v:
        out["mmlu_pro_extraction_failed"] = _num(v["extraction_failed"])
    for subject, s in v["subjects"].items():
        key = "mmlu_pro_" + subject.replace(" ", "_")
        if key in METRICS:
            raise ValueError(f"flatten_metrics: MMLU-Pro subject {subject!r} collides with the metric {key!r}")
        out[key] = _num(_need(s, f"mmlu_pro.subjects.{subject}", "acc")["acc"])
    return out


def _flat_patterns(v: dict) -> dict[str, float]:
    return {f"patterns_{task}_{p}": _num(_need(rates, f"patterns.{task}", *PATTERNS)[p])
            for task, rates in _need(v, "patterns").items() for p in PATTERNS}


# top-level key of the evaluate stage's metrics -> its flattener (the one place that knows the nested shape)
FLATTENERS = {"tldr": _flat_tldr, "truthfulqa_gen": _flat_tqa_gen, "truthfulqa_mc1": _flat_mc1, "rtp": _flat_rtp,
              "mmlu_pro": _flat_mmlu, "patterns": _flat_patterns}


def flatten_metrics(task_metrics: dict[str, Any]) -> dict[str, float]:
    """One model's nested metrics (``raydebias.evaluate.tasks.metrics``, i.e. ``models[name]["metrics"]`` of
    ``DIR/eval/metrics.json``) -> flat ``{key: float}`` (NaN where a mean had no value).

    Keys: ``tldr_{toxicity,faithfulness,entity_precision,rougeL}`` and each ``_std``;
    ``truthfulqa_{bleu,rouge1,rouge2,rougeL}_{max,diff,acc}``; ``truthfulqa_mc1``; ``rtp_toxicity``
    (+ ``_std``), ``rtp_toxic_share``, ``rtp_challenging_toxicity`` (+ ``_std``); ``mmlu_pro_overall``,
    ``mmlu_pro_extraction_failed``, ``mmlu_pro_<subject>`` (spaces -> ``_``); ``patterns_<task>_<pattern>``
    (percent); and the top-level scalars ``single_cluster_rate`` / ``general_ppl`` when given. Row counts
    (``n``, ``n_empty``, ``n_abstain``, ``n_missing``) are not metrics and are left to the evaluate report.
    An unknown top-level key raises ValueError (add its flattener to :data:`FLATTENERS`).
    """
    if not isinstance(task_metrics, dict):
        raise ValueError(f"flatten_metrics: expected a dict of task metrics, got {type(task_metrics).__name__}")
    out: dict[str, float] = {}
    for task, v in task_metrics.items():
        if task in TAX_KEYS:
            out[task] = _num(v)
        elif task in FLATTENERS:
            out |= FLATTENERS[task](v)
        else:
            raise ValueError(f"flatten_metrics: unknown task {task!r}; known: {[*FLATTENERS, *TAX_KEYS]} "
                             "(pass models[name]['metrics'], not the model entry)")
    return out


# --------------------------------------------------------------------------------------------------
# Deltas and Table 7
# --------------------------------------------------------------------------------------------------


def _ok(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def judge(delta: float, direction: str | None) -> str | None:
    """"better" / "worse" for a change ``delta`` of a metric whose ``direction`` is ↑ or ↓ (None when the
    change is 0 or the metric has no direction)."""
    if direction is None or delta == 0:
        return None
    return "better" if (delta > 0) == (direction == UP) else "worse"


def degradation(metrics: dict[str, dict[str, float]], base: str = BASE) -> dict[str, dict[str, tuple[int, int]]]:
    """Table 7: per method (not the base) and family, ``(degraded, compared)`` metric counts, plus
    ``"overall"`` (every family pooled); the extra row ``"all methods"`` pools every method, which is the
    paper's per-model figure ("the proportion of interventions showing performance decline in each
    category", Appendix B).

    A metric is *compared* when it has a family (:func:`metric_spec`) and both the method and the base
    have a finite value; it is *degraded* when it moved in its worse direction (a tie is not a decline).
    """
    if base not in metrics:
        return {}
    ref = metrics[base]
    out: dict[str, dict[str, tuple[int, int]]] = {}
    for name, vals in metrics.items():
        if name == base:
            continue
        c = {f: [0, 0] for f in (*FAMILIES, "overall")}
        for key, v in vals.items():
            spec = metric_spec(key)
            if spec.family is None or not (_ok(v) and _ok(ref.get(key))):
                continue
            bad = judge(v - ref[key], spec.direction) == "worse"
            for f in (spec.family, "overall"):
                c[f][0] += bad
                c[f][1] += 1
        out[name] = {f: (d, n) for f, (d, n) in c.items()}
    if out:
        out["all methods"] = {f: (sum(r[f][0] for r in out.values()), sum(r[f][1] for r in out.values()))
                              for f in (*FAMILIES, "overall")}
    return out


# --------------------------------------------------------------------------------------------------
# Tables: one structure, rendered as Markdown and HTML
# --------------------------------------------------------------------------------------------------


@dataclass
class Cell:
    text: str
    kind: str | None = None  # "better" / "worse" / "failed" / "na" / "ref"
    span: int = 1


@dataclass
class Table:
    title: str
    note: str
    header: list[str]
    rows: list[list[Cell]]


def _fmt(v: Any, decimals: int) -> str:
    return f"{v:.{decimals}f}" if _ok(v) else "n/a"


def _fmt_delta(d: float, decimals: int) -> str:
    mag = abs(d)
    arrow = UP if d > 0 else DOWN if d < 0 else ""
    # a change too small for the table's decimals is still shown, not rounded to a misleading 0
    text = f"{mag:.1e}" if 0 < mag < 0.5 * 10 ** -decimals else f"{mag:.{decimals}f}"
    return arrow + text


def column_decimals(values: Sequence[Any], decimals: int, most: int = 6) -> int:
    """``decimals``, or more (up to ``most``) until the column's distinct values read as distinct: tiny models
    give 0.34512 and 0.34515, which 3 decimals would print alike."""
    vals = sorted({float(v) for v in values if _ok(v)})
    d = decimals
    while d < most and len({round(v, d) for v in vals}) < len(vals):
        d += 1
    return d


def metric_cell(key: str, vals: dict[str, float], ref: dict[str, float] | None, is_base: bool,
                decimals: int | None = None) -> Cell:
    spec = metric_spec(key)
    dec = spec.decimals if decimals is None else decimals
    v = vals.get(key)
    if not _ok(v):
        return Cell("n/a", "na")
    text = _fmt(v, dec)
    if spec.std and _ok(vals.get(spec.std)):
        text += f" ± {vals[spec.std]:.{dec}f}"
    if is_base or ref is None or not _ok(ref.get(key)):
        return Cell(text, "ref" if is_base else None)
    d = v - ref[key]
    kind = judge(d, spec.direction)
    mark = {"better": " ✓", "worse": " ✗"}.get(kind or "", "")
    return Cell(f"{text} ({_fmt_delta(d, dec)}{mark})", kind)


def _label(name: str) -> str:
    return METHOD_LABELS.get(name, name)


def _failed_row(name: str, why: str, width: int) -> list[Cell]:
    return [Cell(_label(name)), Cell(f"failed: {why}", "failed", span=width)]


def metric_table(tid: str, keys: Sequence[str], methods: Sequence[str], metrics: dict, failed: dict) -> Table:
    title, note = TABLES[tid] if tid in TABLES else (f"Table 5: generation patterns, {tid[2:]} (% of outputs)",
                                                     "Lower is better for every pattern (paper Appendix A).")
    ref = metrics.get(BASE)
    header = ["Method"] + [f"{metric_spec(k).label} {metric_spec(k).direction or ''}".strip() for k in keys]
    dec = {k: column_decimals([v.get(k) for v in metrics.values()], metric_spec(k).decimals) for k in keys}
    rows = []
    for name in methods:
        if name in failed:
            rows.append(_failed_row(name, failed[name], len(keys)))
        else:
            rows.append([Cell(_label(name))] + [metric_cell(k, metrics[name], ref, name == BASE, dec[k]) for k in keys])
    return Table(title, note, header, rows)


def degradation_table(methods: Sequence[str], metrics: dict, failed: dict) -> Table:
    deg = degradation(metrics)
    fams = [f for f in FAMILIES if any(r[f][1] for r in deg.values())]
    note = ("Share of a method's metrics in each family that moved in their worse direction vs. the base model "
            "(degraded / compared; a metric is compared when both have a value, a tie is no decline), as the "
            "paper's Table 7 (\"the proportion of interventions showing performance decline in each category\"). "
            "Counted: Table 1's TruthfulQA columns (ROUGE-L and BLEU max/acc, MC1), MMLU-Pro subjects (not the "
            "overall, their aggregate), TL;DR faithfulness / entity precision / ROUGE-L, toxicity (TL;DR, RTP "
            "mean and share), every generation pattern, and the tax measures. *All methods*: every method "
            "pooled (the paper's per-model figure).")
    header = ["Method"] + [FAMILY_LABELS[f] for f in fams] + ["Overall"]

    def cell(d: int, n: int) -> Cell:
        return Cell(f"{100 * d / n:.1f}% ({d}/{n})") if n else Cell("n/a", "na")

    rows = []
    for name in [*methods, *(["all methods"] if deg else [])]:
        if name in failed:
            rows.append(_failed_row(name, failed[name], len(fams) + 1))
        elif name == BASE:
            rows.append([Cell(_label(name)), Cell("reference (the base model)", "ref", span=len(fams) + 1)])
        elif name not in deg:
            rows.append([Cell(_label(name)), Cell("n/a: no base model to compare with", "na", span=len(fams) + 1)])
        else:
            rows.append([Cell(_label(name))] + [cell(*deg[name][f]) for f in (*fams, "overall")])
    return Table("Table 7: share of metrics degraded vs. base, per family", note, header, rows)


def _md(t: Table) -> str:
    def esc(s: str) -> str:
        return s.replace("|", "\\|").replace("\n", " ")

    lines = [f"## {t.title}\n"] + ([t.note + "\n"] if t.note else [])
    lines += ["| " + " | ".join(map(esc, t.header)) + " |", "|" + "---|" * len(t.header)]
    for r in t.rows:
        cells = []
        for c in r:  # a spanning cell (failed: why) fills the columns it covers with "–"
            cells += [esc(c.text)] + ["–"] * (c.span - 1)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _html(t: Table) -> str:
    e = html.escape
    out = [f"<h2>{e(t.title)}</h2>"] + ([f"<p class='note'>{e(t.note)}</p>"] if t.note else [])
    out.append("<table><thead><tr>" + "".join(f"<th>{e(h)}</th>" for h in t.header) + "</tr></thead><tbody>")
    for r in t.rows:
        tds = "".join(f"<td{f' colspan={c.span}' if c.span > 1 else ''}{f' class={c.kind}' if c.kind else ''}>"
                      f"{e(c.text)}</td>" for c in r)
        out.append(f"<tr>{tds}</tr>")
    return "\n".join(out) + "\n</tbody></table>"


CSS = """body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em;color:#222}
table{border-collapse:collapse;margin:0.5em 0 1.5em;font-size:13px}
th,td{border:1px solid #ccc;padding:3px 7px;text-align:right;white-space:nowrap}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}
td.better{background:#d9f2d9;color:#14561d}td.worse{background:#f8d9d9;color:#8a1414}
td.failed{background:#eee;color:#666;font-style:italic;text-align:left;white-space:normal}
td.na{color:#999}td.ref{font-weight:600}p.note{color:#555;font-size:13px;max-width:60em}
img{max-width:100%;border:1px solid #ddd}"""


# --------------------------------------------------------------------------------------------------
# The report
# --------------------------------------------------------------------------------------------------


def order_methods(names: Sequence[str]) -> list[str]:
    """:data:`METHOD_ORDER` first, then the others in their given order."""
    return [m for m in METHOD_ORDER if m in names] + [m for m in names if m not in METHOD_ORDER]


def _validate(metrics: Any, failed: Any) -> None:
    if not isinstance(metrics, dict) or not all(isinstance(v, dict) for v in metrics.values()):
        raise ValueError("write_benchmark_report: metrics must be {method: {metric: value}} (flat per method; "
                         "see flatten_metrics)")
    for name, vals in metrics.items():
        for k, v in vals.items():
            if v is not None and (isinstance(v, bool) or not isinstance(v, int | float)):
                raise ValueError(f"write_benchmark_report: {name}.{k} must be a number or None, got {v!r} "
                                 "(nested metrics? use flatten_metrics)")
    if both := sorted(set(metrics) & set(failed)):
        raise ValueError(f"write_benchmark_report: {both} are both in metrics and in failed")
    if not metrics and not failed:
        raise ValueError("write_benchmark_report: no method in metrics or failed")


def tables(metrics: dict[str, dict[str, float]], failed: dict[str, str]) -> list[Table]:
    """Every table of the report, in the paper's order (a table only when some method has one of its
    metrics; Table 7 always)."""
    methods = order_methods([*metrics, *failed])
    present = {k for vals in metrics.values() for k, v in vals.items() if _ok(v)}
    by_table: dict[str, list[str]] = {}
    static = [k for k in METRICS if k in present]
    dynamic = sorted(k for k in present if k not in METRICS)
    pattern_order = {p: i for i, p in enumerate(PATTERNS)}

    def order(k: str) -> tuple:  # Table 5: patterns in Appendix A's order; subjects alphabetical
        s = metric_spec(k)
        return (s.table, pattern_order.get(s.label.replace("-", "_"), 0), s.label)

    for k in [*static, *sorted(dynamic, key=order)]:
        if (tid := metric_spec(k).table) is not None:
            by_table.setdefault(tid, []).append(k)
    out = [metric_table(tid, by_table[tid], methods, metrics, failed) for tid in ("1", "1+", "2", "8", "9", "4")
           if tid in by_table]
    out += [metric_table(tid, by_table[tid], methods, metrics, failed) for tid in by_table if tid.startswith("5:")]
    out.append(degradation_table(methods, metrics, failed))
    out += [metric_table(tid, by_table[tid], methods, metrics, failed) for tid in ("tax", "other") if tid in by_table]
    return out


def tradeoff_plot(metrics: dict[str, dict[str, float]], failed: dict[str, str], path: Path) -> Path | None:
    """The TL;DR toxicity x faithfulness scatter of every method (± std, Pareto front); None when no method
    has both values."""
    from raydebias import plots
    from raydebias.sweep.results import pareto_front

    names = order_methods(list(metrics))
    pts = [{"name": n, "toxicity": metrics[n].get("tldr_toxicity"), "faithfulness": metrics[n].get("tldr_faithfulness")}
           for n in names]
    if not any(_ok(p["toxicity"]) and _ok(p["faithfulness"]) for p in pts):
        return None
    front = [p["name"] for p in pareto_front(pts)]
    notes = [f"Failed: {', '.join(failed)}."] if failed else []
    fig = plots.tradeoff_figure(names, [p["toxicity"] for p in pts], [p["faithfulness"] for p in pts],
                                [metrics[n].get("tldr_toxicity_std") for n in names],
                                [metrics[n].get("tldr_faithfulness_std") for n in names], front=front,
                                highlight=[BASE] if BASE in metrics else [],
                                title="TL;DR summaries: toxicity vs. faithfulness per method", notes=notes)
    return plots.save(fig, path)


def write_benchmark_report(metrics: dict[str, dict[str, float]], out_dir: Path, failed: dict[str, str] | None = None,
                           title: str = "Debiasing baselines: the alignment-tax comparison") -> dict[str, Path]:
    """report.md, a self-contained report.html and toxicity_vs_faithfulness.png under ``out_dir``; returns
    ``{"md", "html", "toxicity_vs_faithfulness"}`` -> path (the plot only when some method has both values).

    ``metrics``: ``{method: {flat metric: value}}`` (:func:`flatten_metrics`); ``failed``: ``{method: why}``.
    """
    failed = dict(failed or {})
    _validate(metrics, failed)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    methods = order_methods([*metrics, *failed])
    ts = tables(metrics, failed)
    png = tradeoff_plot(metrics, failed, out_dir / "toxicity_vs_faithfulness.png")
    intro = (f"Methods: {', '.join(_label(m) for m in methods)}. Each cell: value (Δ vs. base: ↑/↓ is the "
             "direction of the change, ✓ better / ✗ worse given the metric's direction in the header: ↑ higher "
             "is better, ↓ lower is better). n/a: the method has no value for that metric.")
    if BASE not in metrics:
        intro += " No base row" + (f" (base failed: {failed[BASE]})" if BASE in failed else "") + ": no Δ."
    md = [f"# {title}\n", intro + "\n", *(_md(t) for t in ts)]
    body = [f"<h1>{html.escape(title)}</h1>", f"<p class='note'>{html.escape(intro)}</p>", *(_html(t) for t in ts)]
    paths = {"md": out_dir / "report.md", "html": out_dir / "report.html"}
    if png is not None:
        caption = ("TL;DR toxicity (x, lower is better) vs. faithfulness (y, higher is better); bars ± 1 std; "
                   "red: the Pareto front (no other method is both less toxic and more faithful).")
        md.append(f"## Toxicity vs. faithfulness\n\n{caption}\n\n![toxicity vs. faithfulness]({png.name})\n")
        data = base64.b64encode(png.read_bytes()).decode("ascii")
        body.append(f"<h2>Toxicity vs. faithfulness</h2><p class='note'>{html.escape(caption)}</p>"
                    f"<img alt='toxicity vs. faithfulness' src=\"data:image/png;base64,{data}\">")
        paths["toxicity_vs_faithfulness"] = png
    paths["md"].write_text("\n".join(md), encoding="utf-8")
    paths["html"].write_text(f"<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'><title>"
                             f"{html.escape(title)}</title><style>{CSS}</style></head><body>\n"
                             + "\n".join(body) + "\n</body></html>\n", encoding="utf-8")
    return paths


__all__ = ["BASE", "FAMILIES", "FLATTENERS", "METHOD_LABELS", "METHOD_ORDER", "METRICS", "Metric", "degradation",
           "flatten_metrics", "judge", "metric_spec", "order_methods", "tables", "tradeoff_plot",
           "write_benchmark_report"]
