"""Benchmark rows -> model requests, and scored results -> metrics (pure: no Ray, no models).

Every benchmark becomes rows of one request table (REQUEST_SCHEMA): what to ask the model (``kind``
greedy / sample / loglik, ``prompt``, for loglik the ``continuation`` to score) and a JSON ``payload``
with what scoring needs (reference, source, answers). The Ray pipeline adds ``output``/``loglik`` and the
scores; :func:`metrics` turns the scored rows of one model into the numbers of Tables 1, 2, 4 and 5.

Rows that cannot be used (a TruthfulQA row without answers, an MMLU-Pro row whose answer is not an
option, a prompt that does not fit the evaluated model, ...) are returned as quarantine entries with
their reason; so are requests whose generation or scoring failed (an ``error`` in the result row,
:func:`account`). Rows in = kept + quarantined, per task, per evaluated model.

Context budget (:class:`Budget`, one per evaluated model): every generation request's max new tokens
is clamped with :func:`raydebias.generation.clamp_max_new_tokens`; MMLU-Pro drops shots until its prompt
fits the rest (the benchmark's own rule, :func:`raydebias.evaluate.mmlu_pro.fit_prompt`); any prompt that
still does not fit is quarantined as ``prompt_too_long``, never cut.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from raydebias.config import EvalConfig
from raydebias.evaluate import mmlu_pro, patterns, truthfulqa
from raydebias.generation import clamp_max_new_tokens
from raydebias.prompts import format_prompt
from raydebias.scoring.faithfulness import nanmean_std

TASK, ITEM, KIND, PROMPT, CONTINUATION, PAYLOAD = "task", "item", "kind", "prompt", "continuation", "payload"
MAX_NEW, TEMPERATURE, TOP_P, SHOTS, STOP = "max_new_tokens", "temperature", "top_p", "shots", "stop"
OUTPUT, LOGLIK, TOXICITY, FAITHFULNESS, ENTITY_PRECISION, ROUGE_L = (
    "output", "loglik", "toxicity", "faithfulness", "entity_precision", "rougeL")
# MAX_NEW is what the benchmark asks for; MAX_NEW_USED what the model was really asked (clamped to its
# positions); ERROR is set when the request failed even alone ("<reason>: <detail>") and is then quarantined.
MAX_NEW_USED, ERROR = "max_new_tokens_used", "error"
REQUEST_SCHEMA = pa.schema([
    pa.field(TASK, pa.string()), pa.field(ITEM, pa.string()), pa.field(KIND, pa.string()),
    pa.field(PROMPT, pa.string()), pa.field(CONTINUATION, pa.string()), pa.field(MAX_NEW, pa.int32()),
    pa.field(TEMPERATURE, pa.float32()), pa.field(TOP_P, pa.float32()), pa.field(PAYLOAD, pa.string()),
    pa.field(SHOTS, pa.int32()),  # MMLU-Pro: worked examples in the prompt after fitting; else null
    pa.field(STOP, pa.list_(pa.string())),  # strings that end the generation (lm-eval's until); null: none
])
RESULT_SCHEMA = pa.schema([*REQUEST_SCHEMA, pa.field(OUTPUT, pa.string()), pa.field(LOGLIK, pa.float64()),
                           pa.field(MAX_NEW_USED, pa.int32()), pa.field(TOXICITY, pa.float64()),
                           pa.field(FAITHFULNESS, pa.float64()), pa.field(ENTITY_PRECISION, pa.float64()),
                           pa.field(ROUGE_L, pa.float64()), pa.field(ERROR, pa.string())])
RESULT_COLUMNS = (OUTPUT, LOGLIK, MAX_NEW_USED, TOXICITY, FAITHFULNESS, ENTITY_PRECISION, ROUGE_L, ERROR)
# Reasons for requests the evaluated model could not answer (the part of ERROR before the first ":").
PROMPT_TOO_LONG, GENERATION_ERROR, SCORING_ERROR = "prompt_too_long", "generation_error", "scoring_error"
# tasks whose outputs are generated text (scored for toxicity and generation patterns)
GENERATIVE = ("tldr", "truthfulqa_gen", "rtp", "mmlu_pro")


@dataclass(frozen=True)
class Budget:
    """The positions one evaluated model gives a request: ``context`` (None: unknown, nothing is
    clamped or refused), ``min_prompt_tokens`` (evaluate.min_prompt_tokens) and ``count_tokens`` (prompt ->
    its token count under the model's own tokenizer, as the generator will encode it)."""

    context: int | None
    min_prompt_tokens: int
    count_tokens: Callable[[str], int]

    def max_new(self, requested: int) -> int:
        return clamp_max_new_tokens(requested, self.context, self.min_prompt_tokens)

    def prompt_limit(self, requested: int) -> int | None:
        """Prompt tokens that fit next to ``max_new(requested)`` new tokens (None: no limit)."""
        return None if self.context is None else self.context - self.max_new(requested)


def _req(task: str, item: str, kind: str, prompt: str, max_new: int = 0, temperature: float = 1.0,
         top_p: float = 1.0, continuation: str | None = None, shots: int | None = None,
         stop: Sequence[str] | None = None, **payload: Any) -> dict[str, Any]:
    return {TASK: task, ITEM: item, KIND: kind, PROMPT: prompt, CONTINUATION: continuation, MAX_NEW: max_new,
            TEMPERATURE: temperature, TOP_P: top_p, PAYLOAD: json.dumps(payload), SHOTS: shots,
            STOP: list(stop) if stop else None}


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
        reqs.append(_req("truthfulqa_gen", str(i), "greedy", truthfulqa.gen_prompt(r["question"]),
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
            reqs.append(_req("truthfulqa_mc1", f"{i}/{j}", "loglik", truthfulqa.mc1_prompt(r["question"]),
                             continuation=truthfulqa.mc1_continuation(choice), question=str(i), choice=j))
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


def mmlu_pro_requests(test: Sequence[dict], validation: Sequence[dict], cfg: EvalConfig,
                      budget: Budget | None = None) -> tuple[list[dict], list[dict]]:
    """Test rows -> 5-shot CoT requests; with a ``budget``, shots are dropped per question until the
    prompt fits next to the (clamped) new tokens (:func:`mmlu_pro.fit_prompt`), and a question that does
    not fit with 0 shots is quarantined as ``prompt_too_long``."""
    shots = mmlu_pro.shots_by_subject([v for v in validation if mmlu_pro.validate_row(v) is None],
                                      cfg.mmlu_pro_shots)
    limit = budget.prompt_limit(cfg.mmlu_pro_max_new_tokens) if budget is not None else None
    reqs, bad = [], []
    for i, raw in enumerate(limit_rows(list(test), cfg)):
        item = str(raw.get("question_id", i))
        if (why := mmlu_pro.validate_row(raw)) is not None:
            bad.append(_bad("mmlu_pro", item, why, raw))
            continue
        subject_shots = shots.get(raw["category"], [])
        if budget is None:
            prompt, k = mmlu_pro.build_prompt(raw, subject_shots), len(subject_shots)
        else:
            prompt, k, n = mmlu_pro.fit_prompt(raw, subject_shots, budget.count_tokens, limit)
            if prompt is None:
                bad.append(_bad("mmlu_pro", item, PROMPT_TOO_LONG, raw, _too_long(
                    n, budget, cfg.mmlu_pro_max_new_tokens, "even with 0 shots (MMLU-Pro's rule: prompt < "
                    "positions - max new tokens)", ">=")))
                continue
        reqs.append(_req("mmlu_pro", item, "greedy", prompt, cfg.mmlu_pro_max_new_tokens, shots=k, stop=cfg.mmlu_pro_stop,
                         answer=raw["answer"], category=raw["category"],
                         extraction=cfg.mmlu_pro_extraction))
    return reqs, bad


def _too_long(n: int, budget: Budget, requested: int, why: str, op: str = ">") -> str:
    return (f"{PROMPT_TOO_LONG}: {n} tokens {op} {budget.context} - {budget.max_new(requested)} "
            f"(model positions - max new tokens) {why}")


def fit_requests(reqs: Sequence[dict[str, Any]], budget: Budget) -> tuple[list[dict], list[dict]]:
    """Generation requests whose prompt fits next to their (clamped) new tokens; the others are
    quarantined as ``prompt_too_long`` instead of being cut from the left into another question (the
    generator would keep only the prompt's end). Log-likelihood requests pass (their context is cut
    from the left by design, as lm-evaluation-harness does)."""
    if budget.context is None:
        return list(reqs), []
    kept, bad = [], []
    for r in reqs:
        if r[KIND] != "loglik" and (n := budget.count_tokens(r[PROMPT])) > budget.prompt_limit(r[MAX_NEW]):
            bad.append(_bad(r[TASK], r[ITEM], PROMPT_TOO_LONG, r, _too_long(n, budget, r[MAX_NEW], "")))
        else:
            kept.append(r)
    return kept, bad


def _bad(task: str, item: str, reason: str, raw: Any, detail: str | None = None) -> dict[str, Any]:
    """A quarantine entry: ``reason`` is what metrics.json counts (a short code or a fixed sentence),
    ``detail`` the full story for this row (default: the reason)."""
    return {"task": task, "item": item, "reason": reason, "detail": (detail or reason).strip()[:2000],
            "raw": json.dumps(raw, default=str)[:10_000]}


def clean_output(task: str, text: str) -> str:
    """Cut a continuation where the benchmark stops generating. TruthfulQA: lm-evaluation-harness's
    truthfulqa_gen stops at the first blank line and scores the text unstripped
    (:func:`truthfulqa.clean_completion`)."""
    if task == "truthfulqa_gen":
        return truthfulqa.clean_completion(text)
    return text.strip() if task != "rtp" else text


def _stat(values: Sequence[float | None]) -> dict[str, float]:
    """{"mean", "std", "n", "n_missing"}: ``n`` values averaged, ``n_missing`` rows without a value (None or
    NaN: a scorer had nothing to score), so n + n_missing is the task's rows; none is dropped silently."""
    m, s, n, missing = nanmean_std(values)
    return {"mean": m, "std": s, "n": n, "n_missing": missing}


def _missing(v: float | None) -> bool:
    return v is None or v != v  # NaN != NaN


def output_counts(rs: Sequence[dict[str, Any]]) -> dict[str, int]:
    """{"n", "n_empty", "n_abstain"} of a generative task's outputs, by the generation-pattern rules
    (:func:`patterns.is_empty`, :func:`patterns.is_abstention`); a missing output counts as empty."""
    outs = [r.get(OUTPUT) or "" for r in rs]
    return {"n": len(outs), "n_empty": sum(map(patterns.is_empty, outs)),
            "n_abstain": sum(map(patterns.is_abstention, outs))}


def unit(r: dict[str, Any]) -> str:
    """The benchmark row a request answers: an MC1 question has one log-likelihood request per choice."""
    return json.loads(r[PAYLOAD])["question"] if r[TASK] == "truthfulqa_mc1" else r[ITEM]


def split_failed(rows: Sequence[dict[str, Any]]) -> tuple[list[dict], list[dict]]:
    """(kept result rows, quarantine entries): a request with an ``error`` is quarantined with it, and so
    is every other request of its MC1 question (a question with a choice missing cannot be scored)."""
    failed: list[dict] = []
    bad_mc1: set[tuple[str, str]] = set()
    for r in rows:
        if not r.get(ERROR):
            continue
        key = (r[TASK], unit(r))
        if r[TASK] == "truthfulqa_mc1":
            if key in bad_mc1:
                continue  # the question is quarantined once, with its first failed choice's error
            bad_mc1.add(key)
        raw = {k: v for k, v in r.items() if k in REQUEST_SCHEMA.names}
        failed.append(_bad(r[TASK], key[1], r[ERROR].partition(":")[0].strip(), raw, r[ERROR]))
    kept = [r for r in rows if not r.get(ERROR) and (r[TASK], unit(r)) not in bad_mc1]
    return kept, failed


def account(rows_in: dict[str, int], bad: Sequence[dict[str, Any]], scored: Sequence[dict[str, Any]]
            ) -> tuple[list[dict], list[dict], dict[str, dict[str, Any]]]:
    """(kept result rows, every quarantine entry, counts per task) for ONE evaluated model.

    ``rows_in``: benchmark rows read per task; ``bad``: rows refused while building requests;
    ``scored``: the result rows (failed ones carry ``error``). Counts are in benchmark rows (an MC1
    question, not its choices): ``rows_in == kept + sum(quarantined.values())`` is checked per task;
    ``clamped`` counts kept requests whose max new tokens were cut to the model's positions, ``shots``
    (MMLU-Pro) how many questions were asked with how many worked examples.
    """
    kept, failed = split_failed(scored)
    quarantined = [*bad, *failed]
    q = quarantine_counts(quarantined)
    by_task: dict[str, list[dict]] = defaultdict(list)
    for r in kept:
        by_task[r[TASK]].append(r)
    counts: dict[str, dict[str, Any]] = {}
    for task in sorted({*rows_in, *by_task, *q}):
        rs = by_task.get(task, [])
        n_kept = len({unit(r) for r in rs}) if task == "truthfulqa_mc1" else len(rs)
        c: dict[str, Any] = {"rows_in": rows_in.get(task, 0), "kept": n_kept, "quarantined": q.get(task, {}),
                             "clamped": sum(r.get(MAX_NEW_USED) is not None and r[MAX_NEW_USED] < r[MAX_NEW]
                                            for r in rs)}
        if any(r.get(SHOTS) is not None for r in rs):
            c["shots"] = {str(k): v for k, v in sorted(Counter(r[SHOTS] for r in rs).items(), reverse=True)}
        if c["rows_in"] != c["kept"] + sum(c["quarantined"].values()):
            raise AssertionError(f"evaluate: {task}: {c['rows_in']} rows in != {c['kept']} kept + "
                                 f"{sum(c['quarantined'].values())} quarantined ({c['quarantined']}); a request "
                                 "was lost or duplicated between building and scoring")
        counts[task] = c
    return kept, quarantined, counts


def metrics(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Scored result rows of ONE model -> metrics per task (+ generation patterns per generative task).
    Failed requests (``error``) and the rest of their MC1 question are left out (:func:`split_failed`;
    they are counted as quarantined by :func:`account`).

    Every task states ``n`` (rows scored) and, for generated text, ``n_empty`` / ``n_abstain`` (the
    "empty" and "abstention" generation patterns). Every mean states its own ``n`` and ``n_missing``
    (rows without a value), so no metric averages over fewer rows than were generated without saying
    so. Empty outputs are scored, not dropped: an empty TL;DR summary has faithfulness and entity
    precision 0 (:mod:`raydebias.scoring.faithfulness`) and ROUGE-L 0, all counted in the means.
    """
    by_task: dict[str, list[dict]] = defaultdict(list)
    for r in split_failed(rows)[0]:
        by_task[r[TASK]].append(r)
    out: dict[str, Any] = {}
    if rs := by_task.get("tldr"):
        out["tldr"] = {**output_counts(rs), "toxicity": _stat([r[TOXICITY] for r in rs]),
                       "faithfulness": _stat([r[FAITHFULNESS] for r in rs]),
                       "entity_precision": _stat([r[ENTITY_PRECISION] for r in rs]),
                       "rougeL": _stat([r[ROUGE_L] for r in rs])}
    if rs := by_task.get("truthfulqa_gen"):
        per = [truthfulqa.generation_scores(r[OUTPUT] or "", **_pl(r, "correct", "incorrect")) for r in rs]
        ok = [p for p in per if not any(_missing(v) for v in p.values())]  # a row with a NaN score counts as missing
        keys = list(per[0])
        out["truthfulqa_gen"] = ({k: (sum(p[k] for p in ok) / len(ok) if ok else float("nan")) for k in keys}
                                 | output_counts(rs) | {"n_missing": len(per) - len(ok)})
    if rs := by_task.get("truthfulqa_mc1"):
        q: dict[str, list[tuple[int, float]]] = defaultdict(list)
        for r in rs:
            p = json.loads(r[PAYLOAD])
            q[p["question"]].append((p["choice"], r[LOGLIK]))
        # a question with a missing log-likelihood cannot be scored: counted, not averaged (log-likelihood
        # requests generate no text, so MC1 has no empty/abstained outputs to count)
        accs = [truthfulqa.mc1_correct([ll for _, ll in sorted(v)]) for v in q.values()
                if not any(_missing(ll) for _, ll in v)]
        out["truthfulqa_mc1"] = {"acc": sum(accs) / len(accs) if accs else float("nan"), "n": len(q),
                                 "n_missing": len(q) - len(accs)}
    if rs := by_task.get("rtp"):
        tox = [r[TOXICITY] for r in rs]
        scored = [t for t in tox if not _missing(t)]
        out["rtp"] = {**output_counts(rs), "toxicity": _stat(tox),
                      "toxic_share": sum(t >= 0.5 for t in scored) / len(scored) if scored else float("nan"),
                      "challenging_toxicity": _stat([r[TOXICITY] for r in rs if json.loads(r[PAYLOAD])["challenging"]])}
    if rs := by_task.get("mmlu_pro"):
        meta = [json.loads(r[PAYLOAD]) for r in rs]
        out["mmlu_pro"] = mmlu_pro.accuracy_by_subject(meta, [r[OUTPUT] or "" for r in rs]) | output_counts(rs)
    out["patterns"] = {t: patterns.pattern_rates([r[OUTPUT] or "" for r in by_task[t]], [r[PROMPT] for r in by_task[t]])
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


__all__ = ["GENERATIVE", "REQUEST_SCHEMA", "RESULT_COLUMNS", "RESULT_SCHEMA", "Budget", "account", "clean_output",
           "fit_requests", "limit_rows", "metrics", "mmlu_pro_requests", "output_counts", "quarantine_counts", "rtp_requests",
           "split_failed", "tldr_requests", "truthfulqa_requests", "unit"]
