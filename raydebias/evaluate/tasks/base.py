"""What every benchmark shares: the request / result tables, the context budget, quarantine entries and
the small statistics its metrics use (pure: no Ray, no models).

Every benchmark becomes rows of one request table (REQUEST_SCHEMA): what to ask the model (``kind``
greedy / sample / loglik, ``prompt``, for loglik the ``continuation`` to score) and a JSON ``payload``
with what scoring needs (reference, source, answers). The Ray pipeline adds ``output``/``loglik`` and the
scores (RESULT_SCHEMA).

The benchmark files import this module and never each other or the registry (``tasks/__init__.py``),
so the imports stay a tree.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from raydebias.evaluate import patterns
from raydebias.generation import clamp_max_new_tokens
from raydebias.scoring.faithfulness import nanmean_std

if TYPE_CHECKING:  # config.py imports the registry to validate evaluate.tasks: no runtime import back
    from raydebias.config import EvalConfig

TASK, ITEM, KIND, PROMPT, CONTINUATION, PAYLOAD = "task", "item", "kind", "prompt", "continuation", "payload"
MAX_NEW, TEMPERATURE, TOP_P, SHOTS, STOP = "max_new_tokens", "temperature", "top_p", "shots", "stop"
OUTPUT, LOGLIK, TOXICITY, FAITHFULNESS, ENTITY_PRECISION, ROUGE_L = (
    "output", "loglik", "toxicity", "faithfulness", "entity_precision", "rougeL")
# MAX_NEW is what the benchmark asks for; MAX_NEW_USED what the model was really asked (clamped to its
# positions); ERROR is set when the request failed even alone ("<reason>: <detail>") and is then quarantined.
MAX_NEW_USED, ERROR = "max_new_tokens_used", "error"
VARIANT = "variant"
REQUEST_SCHEMA = pa.schema([
    pa.field(TASK, pa.string()), pa.field(ITEM, pa.string()), pa.field(KIND, pa.string()),
    pa.field(PROMPT, pa.string()), pa.field(CONTINUATION, pa.string()), pa.field(MAX_NEW, pa.int32()),
    pa.field(TEMPERATURE, pa.float32()), pa.field(TOP_P, pa.float32()), pa.field(PAYLOAD, pa.string()),
    pa.field(SHOTS, pa.int32()),  # MMLU-Pro: worked examples in the prompt after fitting; else null
    pa.field(STOP, pa.list_(pa.string())),  # strings that end the generation (lm-eval's until); null: none
    pa.field(VARIANT, pa.string()),  # the benchmark stage: which variant (raydebias/baselines) answers; null: the model
])
RESULT_SCHEMA = pa.schema([*REQUEST_SCHEMA, pa.field(OUTPUT, pa.string()), pa.field(LOGLIK, pa.float64()),
                           pa.field(MAX_NEW_USED, pa.int32()), pa.field(TOXICITY, pa.float64()),
                           pa.field(FAITHFULNESS, pa.float64()), pa.field(ENTITY_PRECISION, pa.float64()),
                           pa.field(ROUGE_L, pa.float64()), pa.field(ERROR, pa.string())])
RESULT_COLUMNS = (OUTPUT, LOGLIK, MAX_NEW_USED, TOXICITY, FAITHFULNESS, ENTITY_PRECISION, ROUGE_L, ERROR)
# Reasons for requests the evaluated model could not answer (the part of ERROR before the first ":").
PROMPT_TOO_LONG, GENERATION_ERROR, SCORING_ERROR = "prompt_too_long", "generation_error", "scoring_error"


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
    """One REQUEST_SCHEMA row; ``payload`` (JSON) carries what the benchmark's scoring needs."""
    return {TASK: task, ITEM: item, KIND: kind, PROMPT: prompt, CONTINUATION: continuation, MAX_NEW: max_new,
            TEMPERATURE: temperature, TOP_P: top_p, PAYLOAD: json.dumps(payload), SHOTS: shots,
            STOP: list(stop) if stop else None}


def _bad(task: str, item: str, reason: str, raw: Any, detail: str | None = None) -> dict[str, Any]:
    """A quarantine entry: ``reason`` is what metrics.json counts (a short code or a fixed sentence),
    ``detail`` the full story for this row (default: the reason)."""
    return {"task": task, "item": item, "reason": reason, "detail": (detail or reason).strip()[:2000],
            "raw": json.dumps(raw, default=str)[:10_000]}


def _too_long(n: int, budget: Budget, requested: int, why: str, op: str = ">") -> str:
    return (f"{PROMPT_TOO_LONG}: {n} tokens {op} {budget.context} - {budget.max_new(requested)} "
            f"(model positions - max new tokens) {why}")


def limit_rows(rows: list, cfg: EvalConfig) -> list:
    """The first ``evaluate.limit`` rows (all when null)."""
    return rows if cfg.limit is None else rows[: cfg.limit]


def _stat(values: Sequence[float | None]) -> dict[str, float]:
    """{"mean", "std", "n", "n_missing"}: ``n`` values averaged, ``n_missing`` rows without a value (None or
    NaN: a scorer had nothing to score), so n + n_missing is the task's rows; none is dropped silently."""
    m, s, n, missing = nanmean_std(values)
    return {"mean": m, "std": s, "n": n, "n_missing": missing}


def _missing(v: float | None) -> bool:
    return v is None or v != v  # NaN != NaN


def _pl(r: dict, *keys: str) -> dict[str, Any]:
    p = json.loads(r[PAYLOAD])
    return {k: p[k] for k in keys}


def output_counts(rs: Sequence[dict[str, Any]]) -> dict[str, int]:
    """{"n", "n_empty", "n_abstain"} of a generative task's outputs, by the generation-pattern rules
    (:func:`patterns.is_empty`, :func:`patterns.is_abstention`); a missing output counts as empty."""
    outs = [r.get(OUTPUT) or "" for r in rs]
    return {"n": len(outs), "n_empty": sum(map(patterns.is_empty, outs)),
            "n_abstain": sum(map(patterns.is_abstention, outs))}


__all__ = ["ENTITY_PRECISION", "ERROR", "FAITHFULNESS", "GENERATION_ERROR", "LOGLIK", "MAX_NEW", "MAX_NEW_USED",
           "OUTPUT", "PAYLOAD", "PROMPT", "PROMPT_TOO_LONG", "REQUEST_SCHEMA", "RESULT_COLUMNS", "RESULT_SCHEMA",
           "ROUGE_L", "SCORING_ERROR", "TOXICITY", "VARIANT", "Budget", "limit_rows", "output_counts"]
