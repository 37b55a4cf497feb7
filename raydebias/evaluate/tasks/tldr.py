"""TL;DR summaries (paper Section 5, Table 4; SPEC §7): greedy summaries of the held-out split.

Rows are the data stage's held-out source rows (SOURCE_SCHEMA, ``DIR/sources/eval``); each becomes one greedy
request from the TL;DR prompt of §1 (``evaluate.tldr.max_new_tokens``, 128). The scoring pool adds toxicity,
SummaC-style NLI faithfulness and entity precision against the post (or the reference summary,
``evaluate.tldr.faithfulness_source``), and ROUGE-L against the reference; the metrics are their mean ± std.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from raydebias.evaluate.tasks.base import (
    ENTITY_PRECISION,
    FAITHFULNESS,
    ROUGE_L,
    TOXICITY,
    _req,
    _stat,
    limit_rows,
    output_counts,
)
from raydebias.prompts import format_prompt

if TYPE_CHECKING:
    from raydebias.config import EvalConfig

NAME = "tldr"
ROWS = ("tldr",)  # the row sets read() returns (keys of the benchmark rows dict)
TASKS = ("tldr",)  # the task names of its requests and metrics
GENERATIVE = ("tldr",)  # tasks whose outputs are generated text (toxicity, generation patterns)
GROUPED: tuple[str, ...] = ()  # tasks where several requests answer one benchmark row


def read(e: EvalConfig, out: Any) -> dict[str, list[dict[str, Any]]]:
    """The data stage's held-out split in ``out`` (raydebias/stages.py runs the data stage first when it is
    missing)."""
    from raydebias.errors import StageInputError

    src = out.sources_dir("eval")
    if not src.complete:
        raise StageInputError(f"evaluate: the held-out TL;DR split {src} is missing or incomplete: run --stage "
                              "data first (or drop tldr from evaluate.tasks)")
    return {"tldr": src.read_table().to_pylist() if src.glob("*.parquet") else []}


def requests(rows: Sequence[dict[str, Any]], e: EvalConfig) -> list[dict[str, Any]]:
    """Held-out source rows (SOURCE_SCHEMA) -> greedy summaries from the TL;DR prompt (Section 5)."""
    c = e.tldr
    out = []
    for r in limit_rows(list(rows), e):
        source = r["post"] if c.faithfulness_source == "post" else r["summary"]
        out.append(_req("tldr", r["id"], "greedy", format_prompt(r["post"], r.get("subreddit"), r.get("title")),
                        c.max_new_tokens, reference=r["summary"], source=source))
    return out


def from_bench(bench: dict[str, list[dict]], e: EvalConfig, budget: Any = None
               ) -> tuple[list[dict], list[dict], dict[str, int]]:
    """(requests, quarantined rows, rows in per task); the data stage already quarantined bad rows
    (quarantine/data), so none is refused here."""
    return requests(bench["tldr"], e), [], {"tldr": len(limit_rows(bench["tldr"], e))}


def clean_output(task: str, text: str) -> str:
    return text.strip()


def metrics(by_task: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Toxicity, faithfulness, entity precision and ROUGE-L (mean ± std, with n / n_missing) and the
    empty / abstained output counts."""
    if not (rs := by_task.get("tldr")):
        return {}
    return {"tldr": {**output_counts(rs), "toxicity": _stat([r[TOXICITY] for r in rs]),
                     "faithfulness": _stat([r[FAITHFULNESS] for r in rs]),
                     "entity_precision": _stat([r[ENTITY_PRECISION] for r in rs]),
                     "rougeL": _stat([r[ROUGE_L] for r in rs])}}


__all__ = ["GENERATIVE", "GROUPED", "NAME", "ROWS", "TASKS", "clean_output", "from_bench", "metrics", "read",
           "requests"]
