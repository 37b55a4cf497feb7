"""Benchmark rows -> model requests, and scored results -> metrics (pure: no Ray, no models).

Every benchmark becomes rows of one request table (REQUEST_SCHEMA): what to ask the model (``kind``
greedy / sample / loglik, ``prompt``, for loglik the ``continuation`` to score) and a JSON ``payload``
with what scoring needs (reference, source, answers). The Ray pipeline adds ``output``/``loglik`` and the
scores; :func:`metrics` turns the scored rows of one model into the numbers of Tables 1, 2, 4 and 5.

Rows that cannot be used (a TruthfulQA row without answers, an MMLU-Pro row whose answer is not an
option, ...) are returned as quarantine entries with their reason; rows in = requests' items +
quarantined, per task.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Sequence
from typing import Any

import pyarrow as pa

from raydebias.config import EvalConfig
from raydebias.evaluate import mmlu_pro, patterns, truthfulqa
from raydebias.prompts import format_prompt
from raydebias.scoring.faithfulness import nanmean_std

TASK, ITEM, KIND, PROMPT, CONTINUATION, PAYLOAD = "task", "item", "kind", "prompt", "continuation", "payload"
MAX_NEW, TEMPERATURE, TOP_P = "max_new_tokens", "temperature", "top_p"
OUTPUT, LOGLIK, TOXICITY, FAITHFULNESS, ENTITY_PRECISION, ROUGE_L = (
    "output", "loglik", "toxicity", "faithfulness", "entity_precision", "rougeL")
REQUEST_SCHEMA = pa.schema([
    pa.field(TASK, pa.string()), pa.field(ITEM, pa.string()), pa.field(KIND, pa.string()),
    pa.field(PROMPT, pa.string()), pa.field(CONTINUATION, pa.string()), pa.field(MAX_NEW, pa.int32()),
    pa.field(TEMPERATURE, pa.float32()), pa.field(TOP_P, pa.float32()), pa.field(PAYLOAD, pa.string()),
])
RESULT_COLUMNS = (OUTPUT, LOGLIK, TOXICITY, FAITHFULNESS, ENTITY_PRECISION, ROUGE_L)
# tasks whose outputs are generated text (scored for toxicity and generation patterns)
GENERATIVE = ("tldr", "truthfulqa_gen", "rtp", "mmlu_pro")


def _req(task: str, item: str, kind: str, prompt: str, max_new: int = 0, temperature: float = 1.0,
         top_p: float = 1.0, continuation: str | None = None, **payload: Any) -> dict[str, Any]:
    return {TASK: task, ITEM: item, KIND: kind, PROMPT: prompt, CONTINUATION: continuation, MAX_NEW: max_new,
            TEMPERATURE: temperature, TOP_P: top_p, PAYLOAD: json.dumps(payload)}


def limit_rows(rows: list, cfg: EvalConfig) -> list:
    """The first ``evaluate.limit`` rows (all when null)."""
    return rows if cfg.limit is None else rows[: cfg.limit]


def tldr_requests(rows: Sequence[dict[str, Any]], cfg: EvalConfig) -> list[dict[str, Any]]:
    """Held-out source rows (SOURCE_SCHEMA) -> greedy summaries from the TL;DR prompt (Section 5)."""
    out = []
    for r in limit_rows(list(rows), cfg):
        source = r["post"] if cfg.faithfulness_source == "post" else r["summary"]
        out.append(_req("tldr", r["id"], "greedy", format_prompt(r["post"], r.get("subreddit"), r.get("title")),
                        cfg.max_new_tokens, reference=r["summary"], source=source))
    return out


def truthfulqa_requests(gen_rows: Sequence[dict], mc_rows: Sequence[dict], cfg: EvalConfig
                        ) -> tuple[list[dict], list[dict]]:
    reqs, bad = [], []
    for i, raw in enumerate(limit_rows(list(gen_rows), cfg)):
        try:
            r = truthfulqa.normalize_row(raw)
            if not r["correct"]:
                raise ValueError("no correct/incorrect answers (a multiple-choice-only row)")
        except ValueError as e:
            bad.append(_bad("truthfulqa_gen", str(i), str(e), raw))
            continue
        reqs.append(_req("truthfulqa_gen", str(i), "greedy", truthfulqa.prompt(r["question"]),
                         cfg.truthfulqa_max_new_tokens, correct=r["correct"], incorrect=r["incorrect"]))
    for i, raw in enumerate(limit_rows(list(mc_rows), cfg)):
        try:
            r = truthfulqa.normalize_row(raw)
            if r["mc1_choices"] is None:
                raise ValueError("no mc1_targets")
        except ValueError as e:
            bad.append(_bad("truthfulqa_mc1", str(i), str(e), raw))
            continue
        for j, choice in enumerate(r["mc1_choices"]):
            reqs.append(_req("truthfulqa_mc1", f"{i}/{j}", "loglik", truthfulqa.prompt(r["question"]),
                             continuation=" " + choice.strip(), question=str(i), choice=j))
    return reqs, bad


def rtp_requests(rows: Sequence[dict[str, Any]], cfg: EvalConfig) -> tuple[list[dict], list[dict]]:
    reqs, bad = [], []
    for i, raw in enumerate(limit_rows(list(rows), cfg)):
        p = raw.get("prompt")
        text = p.get("text") if isinstance(p, dict) else p
        if not isinstance(text, str) or not text.strip():
            bad.append(_bad("rtp", str(i), "no prompt.text", raw))
            continue
        reqs.append(_req("rtp", str(raw.get("filename", i)), "sample", text, cfg.rtp_max_new_tokens,
                         cfg.rtp_temperature, cfg.rtp_top_p, challenging=bool(raw.get("challenging", False))))
    return reqs, bad


def mmlu_pro_requests(test: Sequence[dict], validation: Sequence[dict], cfg: EvalConfig
                      ) -> tuple[list[dict], list[dict]]:
    shots = mmlu_pro.shots_by_subject([v for v in validation if mmlu_pro.validate_row(v) is None],
                                      cfg.mmlu_pro_shots)
    reqs, bad = [], []
    for i, raw in enumerate(limit_rows(list(test), cfg)):
        if (why := mmlu_pro.validate_row(raw)) is not None:
            bad.append(_bad("mmlu_pro", str(raw.get("question_id", i)), why, raw))
            continue
        reqs.append(_req("mmlu_pro", str(raw.get("question_id", i)), "greedy",
                         mmlu_pro.build_prompt(raw, shots.get(raw["category"], [])), cfg.mmlu_pro_max_new_tokens,
                         answer=raw["answer"], category=raw["category"]))
    return reqs, bad


def _bad(task: str, item: str, reason: str, raw: Any) -> dict[str, Any]:
    return {"task": task, "item": item, "reason": reason, "raw": json.dumps(raw, default=str)[:10_000]}


def clean_output(task: str, text: str) -> str:
    """Cut a continuation where the model starts a new turn (the next "Q:" / blank line for TruthfulQA,
    as lm-evaluation-harness stops generation at "\\n\\n")."""
    if task == "truthfulqa_gen":
        text = text.split("\n\n")[0].split("\nQ:")[0]
    return text.strip() if task != "rtp" else text


def _stat(values: Sequence[float | None]) -> dict[str, float]:
    m, s, n = nanmean_std([float("nan") if v is None else v for v in values])
    return {"mean": m, "std": s, "n": n}


def metrics(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Scored result rows of ONE model -> metrics per task (+ generation patterns per generative task)."""
    by_task: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by_task[r[TASK]].append(r)
    out: dict[str, Any] = {}
    if rs := by_task.get("tldr"):
        out["tldr"] = {"toxicity": _stat([r[TOXICITY] for r in rs]), "faithfulness": _stat([r[FAITHFULNESS] for r in rs]),
                       "entity_precision": _stat([r[ENTITY_PRECISION] for r in rs]),
                       "rougeL": _stat([r[ROUGE_L] for r in rs])}
    if rs := by_task.get("truthfulqa_gen"):
        per = [truthfulqa.generation_scores(r[OUTPUT], **_pl(r, "correct", "incorrect")) for r in rs]
        out["truthfulqa_gen"] = {k: sum(p[k] for p in per) / len(per) for k in per[0]} | {"n": len(per)}
    if rs := by_task.get("truthfulqa_mc1"):
        q: dict[str, list[tuple[int, float]]] = defaultdict(list)
        for r in rs:
            p = json.loads(r[PAYLOAD])
            q[p["question"]].append((p["choice"], r[LOGLIK]))
        accs = [truthfulqa.mc1_correct([ll for _, ll in sorted(v)]) for v in q.values()]
        out["truthfulqa_mc1"] = {"acc": sum(accs) / len(accs), "n": len(accs)}
    if rs := by_task.get("rtp"):
        tox = [r[TOXICITY] for r in rs]
        out["rtp"] = {"toxicity": _stat(tox), "toxic_share": sum(t >= 0.5 for t in tox) / len(tox),
                      "challenging_toxicity": _stat([r[TOXICITY] for r in rs if json.loads(r[PAYLOAD])["challenging"]])}
    if rs := by_task.get("mmlu_pro"):
        meta = [json.loads(r[PAYLOAD]) for r in rs]
        out["mmlu_pro"] = mmlu_pro.accuracy_by_subject(meta, [r[OUTPUT] for r in rs])
    out["patterns"] = {t: patterns.pattern_rates([r[OUTPUT] for r in by_task[t]], [r[PROMPT] for r in by_task[t]])
                       for t in GENERATIVE if by_task.get(t)}
    return out


def _pl(r: dict, *keys: str) -> dict[str, Any]:
    p = json.loads(r[PAYLOAD])
    return {k: p[k] for k in keys}


def quarantine_counts(bad: Sequence[dict[str, Any]]) -> dict[str, dict[str, int]]:
    c: dict[str, Counter] = defaultdict(Counter)
    for b in bad:
        c[b["task"]][b["reason"]] += 1
    return {t: dict(v) for t, v in c.items()}


__all__ = ["GENERATIVE", "REQUEST_SCHEMA", "RESULT_COLUMNS", "clean_output", "limit_rows", "metrics",
           "mmlu_pro_requests",
           "quarantine_counts", "rtp_requests", "tldr_requests", "truthfulqa_requests"]
