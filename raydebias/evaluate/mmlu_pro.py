"""MMLU-Pro (TIGER-Lab/MMLU-Pro; paper Section 3, Table 1): 5-shot chain-of-thought per subject.

Rows in the public layout (the HF dataset's ``test`` and ``validation`` splits, as Parquet/JSONL):
``question_id`` (int), ``question`` (str), ``options`` (list of up to 10 str), ``answer`` (letter A-J),
``answer_index`` (int), ``cot_content`` (str; the worked answer, on validation rows), ``category``
(the subject), ``src``.

The prompt follows the benchmark's own evaluation script: a subject header asking to finish with
"the answer is (X)", ``k`` worked examples from the VALIDATION rows of the same subject, then the test
question with "Answer: Let's think step by step." The answer is extracted with
``answer is \\(?([A-J])\\)?`` (SPEC §7); an output without a match is wrong. A prompt that does not fit the
evaluated model drops shots until it does (:func:`fit_prompt`, the script's own rule); one that does not
fit even with 0 shots is not asked (the caller quarantines it).
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from typing import Any

LETTERS = "ABCDEFGHIJ"
ANSWER_RE = re.compile(r"answer is \(?([A-J])\)?")
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
    opts = "".join(f"{LETTERS[i]}. {o}\n" for i, o in enumerate(row["options"]))
    return f"Question:\n{row['question']}\nOptions:\n{opts}"


def format_example(row: dict[str, Any]) -> str:
    """A worked shot: the validation row's chain of thought, whose leading "A: " becomes "Answer: "."""
    cot = (row.get("cot_content") or "").strip()
    cot = re.sub(r"^A:\s*", "", cot)
    if not cot:
        cot = f"The answer is ({row['answer']})."
    return format_question(row) + f"Answer: {cot}\n\n"


def header(subject: str) -> str:
    return (f"The following are multiple choice questions (with answers) about {subject}. Think step by "
            f"step and then finish your answer with \"the answer is (X)\" where X is the correct letter "
            f"choice.\n\n")


def build_prompt(row: dict[str, Any], shots: Sequence[dict[str, Any]]) -> str:
    return header(row["category"]) + "".join(format_example(s) for s in shots) + format_question(row) + \
        "Answer: Let's think step by step."


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
    """The first ``k`` validation rows of each subject (the benchmark's own choice: fixed, in order)."""
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in validation:
        if len(out[r["category"]]) < k:
            out[r["category"]].append(r)
    return dict(out)


def extract_answer(output: str) -> str | None:
    m = ANSWER_RE.search(output)
    return m.group(1) if m else None


def is_correct(output: str, answer: str) -> bool:
    """Correct iff the extracted letter equals the answer; a failed extraction is wrong."""
    return extract_answer(output) == answer


def accuracy_by_subject(rows: Sequence[dict[str, Any]], outputs: Sequence[str]) -> dict[str, Any]:
    """{"overall": acc, "subjects": {subject: {"acc", "n"}}, "extraction_failed": share}."""
    per: dict[str, list[int]] = defaultdict(list)
    failed = 0
    for r, o in zip(rows, outputs, strict=True):
        per[r["category"]].append(int(is_correct(o, r["answer"])))
        failed += extract_answer(o) is None
    n = len(rows)
    return {"overall": sum(sum(v) for v in per.values()) / n if n else float("nan"),
            "subjects": {s: {"acc": sum(v) / len(v), "n": len(v)} for s, v in sorted(per.items())},
            "extraction_failed": failed / n if n else float("nan"), "n": n}


__all__ = ["ANSWER_RE", "LETTERS", "accuracy_by_subject", "build_prompt", "extract_answer", "fit_prompt",
           "format_example",
           "format_question", "header", "is_correct", "shots_by_subject", "validate_row"]
