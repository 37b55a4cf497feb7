"""MMLU-Pro prompts and answer extraction equal lm-eval's ``mmlu_pro`` task byte for byte.

The oracle is lm-eval itself (a test-only dependency; raydebias/ never imports it): its per-subject YAML
(``lm_eval/tasks/mmlu_pro/mmlu_pro_<subject>.yaml`` including ``_default_template_yaml``) loaded with its
own loader, built as its own ``ConfigurableTask`` over our sample rows, and asked for
``fewshot_context(doc, k)`` (``lm_eval/api/task.py``: description as the system turn, ``first_n`` shots via
``build_qa_turn`` with the fewshot config's target/fewshot delimiters, then the test ``doc_to_text``).
Extraction is compared with its ``RegexFilter`` built from the YAML's own pattern.
"""

import json
import re
from pathlib import Path

import pytest

from raydebias.evaluate.tasks import mmlu_pro

lm_eval = pytest.importorskip("lm_eval")
datasets = pytest.importorskip("datasets")
from lm_eval.api.task import ConfigurableTask  # noqa: E402
from lm_eval.filters.extraction import RegexFilter  # noqa: E402
from lm_eval.tasks import _yaml_loader  # noqa: E402
from lm_eval.tasks.mmlu_pro import utils as lm_utils  # noqa: E402

TASK_DIR = Path(lm_utils.__file__).parent
SAMPLES = Path(mmlu_pro.__file__).parents[2] / "samples" / "mmlu_pro"


def _read(split: str) -> list[dict]:
    return [json.loads(line) for line in (SAMPLES / f"{split}.jsonl").read_text().splitlines() if line.strip()]


def _row(qid: int, subject: str, question: str, options: list[str], answer: str, cot: str) -> dict:
    return {"question_id": qid, "question": question, "options": options, "answer": answer,
            "answer_index": "ABCDEFGHIJ".index(answer), "cot_content": cot, "category": subject, "src": "parity test"}


# Two subjects beyond the shipped samples (math, biology), with what formatting must get right: a subject
# whose name differs from its task name ("computer science" / mmlu_pro_computer_science), options with
# surrounding spaces (lm-eval strips them), ten options, a chain of thought without the usual
# "A: Let's think step by step. " opening, one with it twice, and one that is empty.
EXTRA_VALIDATION = [
    _row(900 + i, "computer science", f"Which is shot {i}?  ", [f" opt{j} " for j in range(10)], "J",
         cot) for i, cot in enumerate([
             "A: Let's think step by step. Bits are binary.\nSo the answer is (J).",
             "Trailing and leading text without the cue. The answer is (J).  ",
             "A: Let's think step by step. A: Let's think step by step. Twice. The answer is (J).",
             "A: Let's think step by step.The answer is (J).",
             "",
         ])
] + [_row(950 + i, "law", f"Is statute {i} valid?", ["Yes", "No", "Only on Sundays"], "B",
          f"A: Let's think step by step. Statute {i} was repealed. The answer is (B).") for i in range(5)]
EXTRA_TEST = [
    _row(990, "computer science", "What does CPU stand for?", ["\tCentral processing unit", "Core power unit "], "A", ""),
    _row(991, "law", "Who interprets the law?\n(Two lines.)", ["Courts", "Bakers", "Pilots", "Sailors"], "A", ""),
]
VALIDATION = _read("validation") + EXTRA_VALIDATION
TEST = _read("test") + EXTRA_TEST
SUBJECTS = ["math", "biology", "computer science", "law"]


def _yaml(subject: str) -> dict:
    return _yaml_loader.load_yaml(TASK_DIR / f"mmlu_pro_{subject.replace(' ', '_')}.yaml")


@pytest.fixture(scope="module")
def lm_tasks():
    """lm-eval's own task per subject, over our rows (``custom_dataset`` replaces the hub download)."""
    dd = datasets.DatasetDict({"test": datasets.Dataset.from_list(TEST),
                               "validation": datasets.Dataset.from_list(VALIDATION)})
    out = {}
    for s in SUBJECTS:
        cfg = _yaml(s)
        cfg.pop("dataset_path")
        cfg["custom_dataset"] = lambda **_: dd
        out[s] = ConfigurableTask(config=cfg)
    return out


def test_every_subject_description_is_our_header():
    yamls = sorted(TASK_DIR.glob("mmlu_pro_*.yaml"))
    assert len(yamls) == 14
    for y in yamls:
        cfg = _yaml_loader.load_yaml(y)
        subject = cfg["process_docs"].keywords["subject"]  # the dataset's category, e.g. "computer science"
        assert mmlu_pro.header(subject) == cfg["description"], y.name


def test_the_template_is_the_one_we_implement():
    """If lm-eval changes these, our definition no longer matches: fail loudly here."""
    cfg = _yaml("math")
    assert cfg["fewshot_split"] == "validation" and cfg["test_split"] == "test"
    assert cfg["fewshot_config"]["sampler"] == "first_n" and cfg["num_fewshot"] == 5
    assert "target_delimiter" not in cfg and "fewshot_delimiter" not in cfg  # defaults " " and "\n\n"
    assert cfg["generation_kwargs"]["until"] == [mmlu_pro.STOP]
    (regex, take_first), = [f["filter"] for f in cfg["filter_list"]]
    assert regex["function"] == "regex" and take_first["function"] == "take_first"
    assert re.compile(regex["regex_pattern"]).pattern.replace("ABCDEFGHIJ", "A-J") == mmlu_pro.ANSWER_RE.pattern


@pytest.mark.parametrize("subject", SUBJECTS)
@pytest.mark.parametrize("k", [0, 1, 2, 3, 4, 5])
def test_prompt_equals_lm_evals_fewshot_context(lm_tasks, subject, k):
    task = lm_tasks[subject]
    shots = mmlu_pro.shots_by_subject(VALIDATION, 5)[subject]
    docs = list(task.test_docs())
    assert docs and len(shots) == 5
    for doc in docs:
        ours = mmlu_pro.build_prompt(next(r for r in TEST if r["question_id"] == doc["question_id"]), shots[:k])
        assert ours == task.fewshot_context(doc, k)


def test_fit_prompt_gives_lm_evals_prompt_with_the_shots_that_fit(lm_tasks):
    task = lm_tasks["computer science"]
    doc = list(task.test_docs())[0]
    row = next(r for r in TEST if r["question_id"] == doc["question_id"])
    shots = mmlu_pro.shots_by_subject(VALIDATION, 5)["computer science"]
    limit = len(task.fewshot_context(doc, 3)) + 1  # characters as "tokens": 3 shots fit, 4 do not
    prompt, k, n = mmlu_pro.fit_prompt(row, shots, len, limit)
    assert (k, prompt, n) == (3, task.fewshot_context(doc, 3), limit - 1)


def test_shot_formatting_details():
    """What differed before: a blank line after the description, unstripped options, an invented
    "The answer is (X)." for an empty chain of thought, and only a leading "A:" removed."""
    cs = [r for r in EXTRA_VALIDATION if r["category"] == "computer science"]
    assert mmlu_pro.header("law").endswith("letter choice.\n")
    assert "A. opt0\nB. opt1\n" in mmlu_pro.format_example(cs[0])
    assert mmlu_pro.format_example(cs[1]).endswith(
        "Answer: Let's think step by step. Trailing and leading text without the cue. The answer is (J).  \n\n")
    assert mmlu_pro.format_example(cs[2]).endswith("Answer: Let's think step by step. Twice. The answer is (J).\n\n")
    assert mmlu_pro.format_example(cs[4]).endswith("J. opt9\nAnswer: Let's think step by step.")  # no answer turn


# --- extraction --------------------------------------------------------------------------------------------
OUTPUTS = [
    "", "The answer is (B).", "answer is C", "the answer is (A) but really the answer is (D)",
    "the answer is J", "THE ANSWER IS (B)", "the answer is (b)", "The Answer is (E)", "no letter here",
    "Answer: B", "answer is (K)", "answer is  (B)", "answer is (B", "answer is B)", "answer is (B) answer is (C)",
    "2+2=4.\n\nthe answer is (F).\n\nQuestion:\nWhat next? the answer is (A)", "Question: the answer is (A)",
    "answer is\n(C)", "The answer is (C).\nAnswer: D", "I pick C over D.", "the final answer is (G).",
    "Thus, the answer is (I). Question", "x answer is (H)Question:answer is (A)",
]


def _lm_eval_extract(output: str, cfg: dict) -> str | None:
    # lm-eval cuts a generation at each `until` string (models/huggingface.py generate_until:
    # `s = s.split(term)[0]`), then runs the YAML's filter chain: regex (first findall match), take_first.
    for term in cfg["generation_kwargs"]["until"]:
        output = output.split(term)[0]
    (regex, _take_first), = [f["filter"] for f in cfg["filter_list"]]
    f = RegexFilter(regex_pattern=regex["regex_pattern"])
    got = f.apply([[output]], [{}])[0][0]
    return None if got == f.fallback else got


@pytest.mark.parametrize("output", OUTPUTS)
def test_default_extraction_equals_lm_evals_filter(output):
    assert mmlu_pro.extract_answer(output) == _lm_eval_extract(output, _yaml("math"))


# TIGER-Lab MMLU-Pro evaluate_from_local.py, verbatim (less its print): the "mmlu-pro-script" oracle.
def _script_extract_answer(text):
    pattern = r"answer is \(?([A-J])\)?"
    match = re.search(pattern, text)
    if match:
        return match.group(1)
    else:
        return _script_extract_again(text)


def _script_extract_again(text):
    match = re.search(r'.*[aA]nswer:\s*([A-J])', text)
    if match:
        return match.group(1)
    else:
        return _script_extract_final(text)


def _script_extract_final(text):
    pattern = r"\b[A-J]\b(?!.*\b[A-J]\b)"
    match = re.search(pattern, text, re.DOTALL)
    if match:
        return match.group(0)
    else:
        return None


@pytest.mark.parametrize("output", OUTPUTS)
def test_script_extraction_equals_the_benchmarks_script(output):
    # the script's vLLM run stops at "Question:" too (SamplingParams stop), so its input is cut there
    assert mmlu_pro.extract_answer(output, "mmlu-pro-script") == _script_extract_answer(output.split("Question:")[0])


def test_script_fallbacks_find_more_than_lm_eval():
    assert [mmlu_pro.extract_answer(o, "mmlu-pro-script") for o in
            ["Answer: B", "I pick C over D.", "no letter here", "The answer is (C).\nAnswer: D"]] == ["B", "D", None, "C"]
    assert [mmlu_pro.extract_answer(o) for o in ["Answer: B", "I pick C over D."]] == [None, None]
    with pytest.raises(ValueError, match="mmlu_pro extraction must be one of"):
        mmlu_pro.extract_answer("the answer is (A)", "random")


def test_accuracy_reports_failures_and_follows_the_rows_extraction():
    rows = [{"answer": "B", "category": "math"}, {"answer": "B", "category": "math", "extraction": "mmlu-pro-script"}]
    res = mmlu_pro.accuracy_by_subject(rows, ["Answer: B", "Answer: B"])
    assert res["overall"] == 0.5 and res["extraction_failed"] == 0.5
    assert res["extraction"] == "lm-eval,mmlu-pro-script"
    res = mmlu_pro.accuracy_by_subject(rows, ["Answer: B", "Answer: B"], extraction="lm-eval")
    assert res["overall"] == 0.0 and res["extraction_failed"] == 1.0 and res["extraction"] == "lm-eval"
