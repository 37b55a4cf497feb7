"""Benchmarks: rows -> model requests, and scored results -> metrics (pure: no Ray, no models).

One file per benchmark (tldr.py, truthfulqa.py, rtp.py, mmlu_pro.py), each with its requests and its metrics,
and :data:`BENCHMARKS`, the modules of the ONE registry (raydebias/evaluate/registry.py: ``evaluate.tasks``
is validated against it, and the pipeline reads, asks and scores the benchmarks in its order). Adding a
benchmark is one new file plus one line there (and its ``evaluate.<name>`` section in raydebias/config.py). A benchmark file provides:

- ``NAME`` (its ``evaluate.tasks`` name and config section), ``ROWS`` (the row sets :func:`read` returns),
  ``TASKS`` (the task names of its requests), ``GENERATIVE`` (those whose outputs are generated text: scored
  for toxicity and generation patterns), ``GROUPED`` (those where several requests answer one benchmark
  row, named by the payload's ``question``);
- ``read(evaluate_config, out) -> {row set: rows}``;
- ``from_bench(rows, evaluate_config, budget) -> (requests, quarantined rows, rows in per task)``;
- ``clean_output(task, text)`` (where the benchmark stops a generation) and ``metrics(rows by task)``.

Shared pieces live in :mod:`.base` (the request / result tables, :class:`Budget`, quarantine entries).
This module adds what spans benchmarks: fitting prompts to the model, splitting failed requests,
accounting (rows in = kept + quarantined, per task, per evaluated model) and :func:`metrics`.

Rows that cannot be used (a TruthfulQA row without answers, an MMLU-Pro row whose answer is not an
option, a prompt that does not fit the evaluated model, ...) are returned as quarantine entries with
their reason; so are requests whose generation or scoring failed (an ``error`` in the result row,
:func:`account`).

Context budget (:class:`Budget`, one per evaluated model): every generation request's max new tokens
is clamped with :func:`raydebias.generation.clamp_max_new_tokens`; MMLU-Pro drops shots until its prompt
fits the rest (the benchmark's own rule, :func:`raydebias.evaluate.tasks.mmlu_pro.fit_prompt`); any prompt
that still does not fit is quarantined as ``prompt_too_long``, never cut.
"""

from __future__ import annotations

import importlib
import json
from collections import Counter, defaultdict
from collections.abc import Sequence
from types import ModuleType
from typing import Any

from raydebias.evaluate import patterns, registry
from raydebias.evaluate.tasks.base import (
    CONTINUATION,
    ENTITY_PRECISION,
    ERROR,
    FAITHFULNESS,
    GENERATION_ERROR,
    ITEM,
    KIND,
    LOGLIK,
    MAX_NEW,
    MAX_NEW_USED,
    OUTPUT,
    PAYLOAD,
    PROMPT,
    PROMPT_TOO_LONG,
    REQUEST_SCHEMA,
    RESULT_COLUMNS,
    RESULT_SCHEMA,
    ROUGE_L,
    SCORING_ERROR,
    SHOTS,
    STOP,
    TASK,
    TEMPERATURE,
    TOP_P,
    TOXICITY,
    VARIANT,
    Budget,
    _bad,
    _req,
    _too_long,
    limit_rows,
    output_counts,
)

# The benchmark registry's modules: evaluate.tasks name -> its module. Order is the order of requests and metrics.
BENCHMARKS: dict[str, ModuleType] = {name: importlib.import_module(path) for name, path in registry.BENCHMARKS.items()}

# task name (a request's ``task``) -> its benchmark
BY_TASK: dict[str, ModuleType] = {t: b for b in BENCHMARKS.values() for t in b.TASKS}
# tasks whose outputs are generated text (scored for toxicity and generation patterns)
GENERATIVE = tuple(t for b in BENCHMARKS.values() for t in b.GENERATIVE)
GROUPED = frozenset(t for b in BENCHMARKS.values() for t in b.GROUPED)


def clean_output(task: str, text: str) -> str:
    """Cut a continuation where the benchmark stops generating (its ``clean_output``)."""
    return BY_TASK[task].clean_output(task, text)


def instruct_requests(reqs: Sequence[dict[str, Any]], prefix: str) -> list[dict[str, Any]]:
    """Every request with ``prefix`` put before its prompt, after its benchmark's ``PRIMER`` where it has one
    (Instructive debiasing: :func:`raydebias.baselines.instructive.instruct`). Log-likelihood contexts (MC1)
    get it too, so the variant is the same model for every request."""
    from raydebias.baselines.instructive import instruct

    return [{**r, PROMPT: instruct(r[PROMPT], prefix, getattr(BY_TASK[r[TASK]], "PRIMER", ""))} for r in reqs]


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


def unit(r: dict[str, Any]) -> str:
    """The benchmark row a request answers: an MC1 question has one log-likelihood request per choice."""
    return json.loads(r[PAYLOAD])["question"] if r[TASK] in GROUPED else r[ITEM]


def split_failed(rows: Sequence[dict[str, Any]]) -> tuple[list[dict], list[dict]]:
    """(kept result rows, quarantine entries): a request with an ``error`` is quarantined with it, and so
    is every other request of its MC1 question (a question with a choice missing cannot be scored)."""
    failed: list[dict] = []
    bad_grouped: set[tuple[str, str]] = set()
    for r in rows:
        if not r.get(ERROR):
            continue
        key = (r[TASK], unit(r))
        if r[TASK] in GROUPED:
            if key in bad_grouped:
                continue  # the question is quarantined once, with its first failed choice's error
            bad_grouped.add(key)
        raw = {k: v for k, v in r.items() if k in REQUEST_SCHEMA.names}
        failed.append(_bad(r[TASK], key[1], r[ERROR].partition(":")[0].strip(), raw, r[ERROR]))
    kept = [r for r in rows if not r.get(ERROR) and (r[TASK], unit(r)) not in bad_grouped]
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
        n_kept = len({unit(r) for r in rs}) if task in GROUPED else len(rs)
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
    """Scored result rows of ONE model -> metrics per task (each benchmark's ``metrics``) + generation
    patterns per generative task. Failed requests (``error``) and the rest of their MC1 question are left
    out (:func:`split_failed`; they are counted as quarantined by :func:`account`).

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
    for bench in BENCHMARKS.values():
        out.update(bench.metrics(by_task))
    out["patterns"] = {t: patterns.pattern_rates([r[OUTPUT] or "" for r in by_task[t]], [r[PROMPT] for r in by_task[t]])
                       for t in GENERATIVE if by_task.get(t)}
    return out


def quarantine_counts(bad: Sequence[dict[str, Any]]) -> dict[str, dict[str, int]]:
    c: dict[str, Counter] = defaultdict(Counter)
    for b in bad:
        c[b["task"]][b["reason"]] += 1
    return {t: dict(v) for t, v in c.items()}


__all__ = ["BENCHMARKS", "BY_TASK", "VARIANT", "instruct_requests", "CONTINUATION", "ENTITY_PRECISION", "ERROR", "FAITHFULNESS", "GENERATION_ERROR",
           "GENERATIVE", "GROUPED", "ITEM", "KIND", "LOGLIK", "MAX_NEW", "MAX_NEW_USED", "OUTPUT", "PAYLOAD",
           "PROMPT", "PROMPT_TOO_LONG", "REQUEST_SCHEMA", "RESULT_COLUMNS", "RESULT_SCHEMA", "ROUGE_L",
           "SCORING_ERROR", "SHOTS", "STOP", "TASK", "TEMPERATURE", "TOP_P", "TOXICITY", "Budget", "_req",
           "account", "clean_output", "fit_requests", "limit_rows", "metrics", "mmlu_pro", "output_counts",
           "quarantine_counts", "rtp", "split_failed", "tldr", "truthfulqa", "unit"]
