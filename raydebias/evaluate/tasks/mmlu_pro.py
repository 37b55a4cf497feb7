"""MMLU-Pro (TIGER-Lab/MMLU-Pro; paper Section 3, Table 1): 5-shot chain-of-thought per subject.

Rows in the public layout (the HF dataset's ``test`` and ``validation`` splits, as Parquet/JSONL):
``question_id`` (int), ``question`` (str), ``options`` (list of up to 10 str), ``answer`` (letter A-J),
``answer_index`` (int), ``cot_content`` (str; the worked answer, on validation rows), ``category``
(the subject), ``src``.

The prompt is lm-eval's ``mmlu_pro`` task (``lm_eval/tasks/mmlu_pro``, v3.1), byte for byte, rendered as
plain text: the subject's ``description`` (ending in ONE newline), then ``k`` shots from the VALIDATION rows
of the same subject (sampler ``first_n``), each ``fewshot_to_text + target_delimiter " " + fewshot_to_target
+ fewshot_delimiter "\\n\\n"``, then the test question's ``doc_to_text`` ending in "Answer: Let's think step
by step." (lm-eval ``ConfigurableTask.fewshot_context`` / ``build_qa_turn``). tests/test_mmlu_pro_parity.py
builds the same prompts with lm-eval's own task as the oracle. A prompt that does not fit the evaluated
model drops shots until it does (:func:`fit_prompt`, the benchmark script's own rule); with ``k`` shots left
it is exactly lm-eval's ``k``-shot prompt. One that does not fit even with 0 shots is not asked (the caller
quarantines it).

The answer is extracted with lm-eval's filter (SPEC §7): the output is cut at the task's stop sequence
"Question:" (its ``generation_kwargs.until``), then the FIRST match of ``answer is \\(?([A-J])\\)?``; an
output without a match is wrong. ``evaluate.mmlu_pro.extraction = "mmlu-pro-script"`` adds the fallbacks
of the benchmark's own script (see :func:`extract_answer`).

Config: ``evaluate.mmlu_pro.{source, shots, max_new_tokens, stop, extraction}``.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from raydebias.evaluate.tasks.base import (
    OUTPUT,
    PAYLOAD,
    PROMPT_TOO_LONG,
    Budget,
    _bad,
    _req,
    _too_long,
    limit_rows,
    output_counts,
)

if TYPE_CHECKING:
    from raydebias.config import EvalConfig

NAME = "mmlu_pro"
ROWS = ("mmlu_pro", "mmlu_pro_validation")  # test rows (asked) and validation rows (the shots)
TASKS = ("mmlu_pro",)
GENERATIVE = ("mmlu_pro",)
GROUPED: tuple[str, ...] = ()

LETTERS = "ABCDEFGHIJ"
# lm-eval mmlu_pro/_default_template_yaml filter_list: regex `answer is \(?([ABCDEFGHIJ])\)?` + take_first.
ANSWER_RE = re.compile(r"answer is \(?([A-J])\)?")
# TIGER-Lab MMLU-Pro evaluate_from_local.py extract_again / extract_final.
AGAIN_RE = re.compile(r".*[aA]nswer:\s*([A-J])")
FINAL_RE = re.compile(r"\b[A-J]\b(?!.*\b[A-J]\b)", re.DOTALL)
STOP = "Question:"  # lm-eval generation_kwargs.until (and the script's vLLM stop list)
COT_CUE = "Answer: Let's think step by step."
EXTRACTIONS = ("lm-eval", "mmlu-pro-script")
REQUIRED = ("question", "options", "answer", "category")


def validate_row(row: dict[str, Any]) -> str | None:
    """None if the row is usable, else why not."""
    for k in REQUIRED:
        if row.get(k) in (None, "", []):
            return f"missing {k}"
    if not isinstance(row["options"], Sequence) or isinstance(row["options"], str):
        return "options is not a list"
    if not 2 <= len(row["options"]) <= len(LETTERS):
        return f"{len(row['options'])} options (2-10 expected)"
    if row["answer"] not in LETTERS[: len(row["options"])]:
        return f"answer {row['answer']!r} is not one of the options' letters"
    return None


def format_question(row: dict[str, Any]) -> str:
    """lm-eval ``utils.format_cot_example`` without the cue: options are stripped (``opt.strip()``)."""
    opts = "".join(f"{LETTERS[i]}. {o.strip()}\n" for i, o in enumerate(row["options"]))
    return f"Question:\n{row['question']}\nOptions:\n{opts}"


def format_example(row: dict[str, Any]) -> str:
    """A worked shot, as lm-eval renders one: ``fewshot_to_text`` (question + the CoT cue), the target
    delimiter " ", ``fewshot_to_target`` (``cot_content`` with EVERY "A: Let's think step by step. "
    removed, nothing else touched) and the fewshot delimiter "\\n\\n". An empty target has no answer turn in
    lm-eval (``build_qa_turn``: no delimiters either), so the next question follows the cue directly."""
    target = (row.get("cot_content") or "").replace("A: Let's think step by step. ", "")
    q = format_question(row) + COT_CUE
    return f"{q} {target}\n\n" if target else q


def header(subject: str) -> str:
    """The per-subject ``description`` of lm-eval's mmlu_pro_<subject>.yaml (``category`` as written in the
    dataset, e.g. "computer science"); it ends in one newline and the first shot follows it directly."""
    return (f"The following are multiple choice questions (with answers) about {subject}. Think step by "
            f"step and then finish your answer with \"the answer is (X)\" where X is the correct letter "
            f"choice.\n")


def build_prompt(row: dict[str, Any], shots: Sequence[dict[str, Any]]) -> str:
    return header(row["category"]) + "".join(format_example(s) for s in shots) + format_question(row) + COT_CUE


def fit_prompt(row: dict[str, Any], shots: Sequence[dict[str, Any]], count_tokens: Callable[[str], int],
               limit: int | None) -> tuple[str | None, int, int]:
    """(prompt, shots used, its tokens): the most shots, in order, whose prompt has FEWER than ``limit``
    tokens (``limit`` = model positions - max new tokens); (None, 0, tokens with 0 shots) if none fits.

    TIGER-Lab MMLU-Pro ``evaluate_from_local.py`` (also what the paper's authors ran)::

        while True:
            prompt = generate_cot_prompt(val_df, curr, k)
            if len(tokenizer(prompt).input_ids) < max_model_length - max_new_tokens: break
            k -= 1

    The script keeps decrementing below 0 (a negative slice of the shots); here 0 shots is the last try
    and a question that is too long alone is refused rather than cut into a different question.
    ``limit`` None (unknown context) keeps every shot.
    """
    for k in range(len(shots), -1, -1):
        prompt = build_prompt(row, shots[:k])
        if limit is None:
            return prompt, k, -1
        n = count_tokens(prompt)
        if n < limit:
            return prompt, k, n
    return None, 0, n


def shots_by_subject(validation: Iterable[dict[str, Any]], k: int) -> dict[str, list[dict[str, Any]]]:
    """The first ``k`` validation rows of each subject (lm-eval's ``first_n`` sampler over the subject's
    ``process_docs``-filtered validation split; the benchmark script's choice too)."""
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in validation:
        if len(out[r["category"]]) < k:
            out[r["category"]].append(r)
    return dict(out)


def extract_answer(output: str, extraction: str = "lm-eval") -> str | None:
    """The answer letter, or None when extraction fails.

    Both modes first cut the output at "Question:": lm-eval stops generation there (``until``) and cuts
    the text at it, so a model that goes on to write a next question with "the answer is (X)" is not
    credited for it; on an output that already stopped there this changes nothing.

    - ``"lm-eval"``: the first match of ``answer is \\(?([A-J])\\)?`` (regex filter + take_first).
    - ``"mmlu-pro-script"``: the same first; then the script's ``extract_again`` (``.*[aA]nswer:\\s*([A-J])``,
      the LAST "Answer: X" on a line) and ``extract_final`` (the last standalone letter A-J, DOTALL).
      The script then draws a random option for a remaining failure; that is NOT done here: it adds
      seed-dependent chance credit (1 / number of options per failure) that hides how often the model
      failed to answer. ``extraction_failed`` is reported instead, so that credit can be added back.
    """
    if extraction not in EXTRACTIONS:
        raise ValueError(f"mmlu_pro extraction must be one of {EXTRACTIONS}, got {extraction!r}")
    text = output.split(STOP, 1)[0]
    if m := ANSWER_RE.search(text):
        return m.group(1)
    if extraction == "lm-eval":
        return None
    if m := AGAIN_RE.search(text):
        return m.group(1)
    if m := FINAL_RE.search(text):
        return m.group(0)
    return None


def is_correct(output: str, answer: str, extraction: str = "lm-eval") -> bool:
    """Correct iff the extracted letter equals the answer; a failed extraction is wrong."""
    return extract_answer(output, extraction) == answer


def accuracy_by_subject(rows: Sequence[dict[str, Any]], outputs: Sequence[str],
                        extraction: str | None = None) -> dict[str, Any]:
    """{"overall": acc, "subjects": {subject: {"acc", "n"}}, "extraction_failed": share, "n", "extraction"}.

    ``extraction`` None takes each row's own ``"extraction"`` (the request payload records
    ``evaluate.mmlu_pro.extraction``), else "lm-eval"."""
    per: dict[str, list[int]] = defaultdict(list)
    failed = 0
    modes = set()
    for r, o in zip(rows, outputs, strict=True):
        mode = extraction or r.get("extraction") or "lm-eval"
        modes.add(mode)
        got = extract_answer(o, mode)
        per[r["category"]].append(int(got == r["answer"]))
        failed += got is None
    n = len(rows)
    return {"overall": sum(sum(v) for v in per.values()) / n if n else float("nan"),
            "subjects": {s: {"acc": sum(v) / len(v), "n": len(v)} for s, v in sorted(per.items())},
            "extraction_failed": failed / n if n else float("nan"), "n": n,
            "extraction": ",".join(sorted(modes)) or (extraction or "lm-eval")}


# --------------------------------------------------------------------------------------------------
# Requests and metrics
# --------------------------------------------------------------------------------------------------


def read(e: EvalConfig, out: Any) -> dict[str, list[dict[str, Any]]]:
    from raydebias.evaluate.sources import read_rows

    return {"mmlu_pro": read_rows(e.mmlu_pro.source, "test"),
            "mmlu_pro_validation": read_rows(e.mmlu_pro.source, "validation")}


def requests(test: Sequence[dict], validation: Sequence[dict], e: EvalConfig,
             budget: Budget | None = None) -> tuple[list[dict], list[dict]]:
    """Test rows -> 5-shot CoT requests; with a ``budget``, shots are dropped per question until the
    prompt fits next to the (clamped) new tokens (:func:`fit_prompt`), and a question that does not fit
    with 0 shots is quarantined as ``prompt_too_long``."""
    c = e.mmlu_pro
    shots = shots_by_subject([v for v in validation if validate_row(v) is None], c.shots)
    limit = budget.prompt_limit(c.max_new_tokens) if budget is not None else None
    reqs, bad = [], []
    for i, raw in enumerate(limit_rows(list(test), e)):
        item = str(raw.get("question_id", i))
        if (why := validate_row(raw)) is not None:
            bad.append(_bad("mmlu_pro", item, why, raw))
            continue
        subject_shots = shots.get(raw["category"], [])
        if budget is None:
            prompt, k = build_prompt(raw, subject_shots), len(subject_shots)
        else:
            prompt, k, n = fit_prompt(raw, subject_shots, budget.count_tokens, limit)
            if prompt is None:
                bad.append(_bad("mmlu_pro", item, PROMPT_TOO_LONG, raw, _too_long(
                    n, budget, c.max_new_tokens, "even with 0 shots (MMLU-Pro's rule: prompt < "
                    "positions - max new tokens)", ">=")))
                continue
        reqs.append(_req("mmlu_pro", item, "greedy", prompt, c.max_new_tokens, shots=k, stop=c.stop,
                         answer=raw["answer"], category=raw["category"], extraction=c.extraction))
    return reqs, bad


def from_bench(bench: dict[str, list[dict]], e: EvalConfig, budget: Budget | None = None
               ) -> tuple[list[dict], list[dict], dict[str, int]]:
    reqs, bad = requests(bench["mmlu_pro"], bench["mmlu_pro_validation"], e, budget)
    return reqs, bad, {"mmlu_pro": len(limit_rows(bench["mmlu_pro"], e))}


def clean_output(task: str, text: str) -> str:
    return text.strip()


def metrics(by_task: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Accuracy overall and per subject (:func:`accuracy_by_subject`) and the output counts."""
    if not (rs := by_task.get("mmlu_pro")):
        return {}
    meta = [json.loads(r[PAYLOAD]) for r in rs]
    return {"mmlu_pro": accuracy_by_subject(meta, [r[OUTPUT] or "" for r in rs]) | output_counts(rs)}


__all__ = ["AGAIN_RE", "ANSWER_RE", "COT_CUE", "EXTRACTIONS", "FINAL_RE", "GENERATIVE", "GROUPED", "LETTERS", "NAME",
           "ROWS", "STOP", "TASKS", "accuracy_by_subject", "build_prompt", "clean_output", "extract_answer",
           "fit_prompt", "format_example", "format_question", "from_bench", "header", "is_correct", "metrics",
           "read", "requests", "shots_by_subject", "validate_row"]
