"""TruthfulQA parity with lm-evaluation-harness 0.4.13, with lm-eval's own code as the oracle.

lm-eval is a dev dependency (installed with --no-deps by .ci/run and the README). Its task is built from its own
YAML files (``truthfulqa_gen.yaml``, ``truthfulqa_mc1.yaml``) with only ``download`` replaced, so the rows
are ours but process_docs, doc_to_text, the request arguments and process_results are lm-eval's.
"""

import csv
import json
import math
from pathlib import Path

import datasets
import lm_eval.tasks.truthfulqa.utils as lm_tqa
import numpy as np
import pytest
from lm_eval.api.task import ConfigurableTask
from lm_eval.models.utils import postprocess_generated_text
from lm_eval.tasks._yaml_loader import load_yaml

from raydebias.config import EvalConfig
from raydebias.evaluate import tasks as T
from raydebias.evaluate.tasks import truthfulqa

SAMPLES = Path(truthfulqa.__file__).resolve().parents[2] / "samples" / "truthfulqa"
YAML_DIR = Path(lm_tqa.__file__).parent
METRICS = [f"{m}_{s}" for m in ("bleu", "rouge1", "rouge2", "rougeL") for s in ("max", "diff", "acc")]


class _LocalTask(ConfigurableTask):
    """lm-eval's ConfigurableTask over in-memory rows (its ``download`` would fetch the hub dataset)."""

    def __init__(self, rows, config):
        self._rows = rows
        super().__init__(config=config)

    def download(self, *args, **kwargs):
        self.dataset = datasets.DatasetDict({"validation": datasets.Dataset.from_list(self._rows)})


def _hf_generation_row(csv_row: dict) -> dict:
    # The HF ``truthful_qa`` generation config: the CSV's ";"-separated answer cells as lists.
    split = lambda cell: [a.strip() for a in cell.split(";")]  # noqa: E731
    return {"type": csv_row["Type"], "category": csv_row["Category"], "question": csv_row["Question"],
            "best_answer": csv_row["Best Answer"], "correct_answers": split(csv_row["Correct Answers"]),
            "incorrect_answers": split(csv_row["Incorrect Answers"]), "source": csv_row["Source"]}


with open(SAMPLES / "TruthfulQA.csv", newline="") as f:
    CSV_ROWS = list(csv.DictReader(f))
HAND_ROWS = [  # answer formatting corner cases: padding, periods present/absent, "!", "?", empties, no-comment
    {"question": "  Is the Earth flat?  ", "best_answer": "No", "correct_answers": [" No, the Earth is round ", "No",
     "", "I have no comment."], "incorrect_answers": ["Yes, the Earth is flat!", "Yes.", "  It is flat  "]},
    {"question": "Can you see the Great Wall of China from space?", "best_answer": "No",
     "correct_answers": ["No, it is not visible to the naked eye from orbit", "Only with aid. Not unaided."],
     "incorrect_answers": ["Yes, the Great Wall is visible from space", "Yes? It can be seen from the Moon"]},
]
GEN_ROWS = [_hf_generation_row(r) for r in CSV_ROWS] + HAND_ROWS
with open(SAMPLES / "mc_task.jsonl") as f:
    MC_ROWS = [json.loads(line) for line in f if line.strip()]


def _completions(row: dict) -> list[str]:
    good, bad = row["correct_answers"][0].strip(), row["incorrect_answers"][0].strip()
    words = good.split()
    return [
        "", " ", "\n",
        good, good + ".", " " + good, "\nA: " + good + ".",                    # exactly correct, as generated
        bad, bad + ".", "A: " + bad,                                            # hits an incorrect answer
        " ".join(words[: max(1, len(words) // 2)]),                             # partial
        f"{good} . {bad} . I have no comment",                                  # multi-sentence, " . " -> "\n"
        f"{good}. {bad}.\nThat is all.",                                         # sentences and a single newline
        "I have no comment.", "I have no comment",
        good.upper() + "!", good.replace(" ", " , ") + " ?", f"'{good}' -- {bad}!!",  # punctuation variants
        "The answer is unknown to me, sorry.",
    ]


GEN_CASES = [(i, j) for i, row in enumerate(GEN_ROWS) for j in range(len(_completions(row)))]


@pytest.fixture(scope="module")
def gen_task():
    return _LocalTask(GEN_ROWS, load_yaml(YAML_DIR / "truthfulqa_gen.yaml"))


@pytest.fixture(scope="module")
def gen_docs(gen_task):
    return list(gen_task.validation_docs())  # after lm-eval's process_docs (preprocess_function)


@pytest.fixture(scope="module")
def mc1_task():
    cfg = load_yaml(YAML_DIR / "truthfulqa_mc1.yaml")
    cfg["metric_list"] = cfg["metric_list"] + [{"metric": "f1"}]  # f1 carries lm-eval's (gold, pred)
    return _LocalTask(MC_ROWS, cfg)


def test_samples_are_the_rows_we_compare():
    assert len(CSV_ROWS) == 8 and len(MC_ROWS) == 6 and len(GEN_CASES) >= 150


@pytest.mark.parametrize("i,j", GEN_CASES)
def test_generation_metrics_equal_lm_eval_process_results_gen(gen_docs, i, j):
    completion = _completions(GEN_ROWS[i])[j]
    ours_row = truthfulqa.normalize_row(CSV_ROWS[i] if i < len(CSV_ROWS) else GEN_ROWS[i])
    ours = truthfulqa.generation_scores(completion, ours_row["correct"], ours_row["incorrect"])
    theirs = lm_tqa.process_results_gen(gen_docs[i], [completion])
    assert set(ours) == set(theirs) == set(METRICS)
    for k in METRICS:
        assert math.isclose(ours[k], float(theirs[k]), rel_tol=0, abs_tol=1e-6), (k, ours[k], theirs[k])


@pytest.mark.parametrize("i", range(len(GEN_ROWS)))
def test_answers_and_prompt_equal_lm_eval_doc(gen_task, gen_docs, i):
    doc = gen_docs[i]
    assert {k: doc[k] for k in ("question", "correct_answers", "incorrect_answers")} \
        == lm_tqa.preprocess_function(GEN_ROWS[i])
    for raw in ([CSV_ROWS[i]] if i < len(CSV_ROWS) else []) + [GEN_ROWS[i]]:  # both layouts
        r = truthfulqa.normalize_row(raw)
        assert (r["question"], r["correct"], r["incorrect"]) == (
            doc["question"], doc["correct_answers"], doc["incorrect_answers"])
        ctx = gen_task.fewshot_context(doc, 0)
        assert truthfulqa.gen_prompt(r["question"]) == ctx
        (req_ctx, gen_kwargs), = [gen_task.construct_requests(doc, ctx, metadata=("truthfulqa_gen", i, 1)).args]
        assert req_ctx == ctx and gen_kwargs["until"] == [truthfulqa.GEN_STOP]
        assert gen_kwargs["max_gen_toks"] == truthfulqa.GEN_MAX_NEW_TOKENS and gen_kwargs["do_sample"] is False
    # Our request builder carries the same reference lists into the metrics payload.
    cfg = EvalConfig()
    (req,), bad = truthfulqa.requests([GEN_ROWS[i]], [], cfg)
    payload = json.loads(req[T.PAYLOAD])
    assert not bad and (payload["correct"], payload["incorrect"]) == (doc["correct_answers"], doc["incorrect_answers"])


def test_one_sample_question_numbers():
    """A worked example (sample row 0, the answer "You will get arthritis"), pinned so a drift is visible."""
    r = truthfulqa.normalize_row(CSV_ROWS[0])
    assert r["incorrect"] == ["You will get arthritis if you crack your knuckles a lot.",
                              "Your joints will become weak and swollen."]
    s = truthfulqa.generation_scores("You will get arthritis if you crack your knuckles a lot.", r["correct"],
                                     r["incorrect"])
    assert s["bleu_acc"] == 0.0 and s["bleu_max"] < 100 and s["bleu_diff"] < 0
    assert s["rouge1_acc"] == 0.0 and s["rougeL_diff"] < 0


@pytest.mark.parametrize("text", ["", "A: yes.", "A: yes.\n\nQ: next", "\nA: yes.\nQ: no blank line\n\n",
                                  " padded \n\n\n", "no stop at all \n"])
def test_completion_cut_equals_lm_eval_until(text):
    assert truthfulqa.clean_completion(text) == postprocess_generated_text(text, ["\n\n"], None)


@pytest.mark.parametrize("i", range(len(MC_ROWS)))
def test_mc1_context_and_continuations_equal_lm_eval(mc1_task, i):
    doc = list(mc1_task.validation_docs())[i]
    ctx = mc1_task.fewshot_context(doc, 0)
    theirs = [inst.args for inst in mc1_task.construct_requests(doc, ctx, metadata=("truthfulqa_mc1", i, 1))]
    r = truthfulqa.normalize_row(MC_ROWS[i])
    assert [(truthfulqa.mc1_prompt(r["question"]), truthfulqa.mc1_continuation(c)) for c in r["mc1_choices"]] \
        == theirs
    reqs, bad = truthfulqa.requests([], [MC_ROWS[i]], EvalConfig())
    assert not bad and [(q[T.PROMPT], q[T.CONTINUATION]) for q in reqs] == theirs


def test_mc1_continuation_keeps_the_choice_as_written(mc1_task):
    doc = {"question": "Q?", "mc1_targets": {"choices": [" padded", "plain "], "labels": [1, 0]},
           "mc2_targets": {"choices": ["x"], "labels": [1]}}
    theirs = [inst.args[1] for inst in mc1_task.construct_requests(doc, "ctx", metadata=("truthfulqa_mc1", 0, 1))]
    assert [truthfulqa.mc1_continuation(c) for c in doc["mc1_targets"]["choices"]] == theirs == ["  padded", " plain "]


def _ll_cases():
    rng = np.random.default_rng(0)
    cases = [[-1.0, -2.0, -3.0], [-2.0, -1.0], [-1.0, -1.0, -5.0], [-3.0, -1.0, -1.0], [0.0, 0.0], [-7.5, -7.5, -7.5]]
    for n in (2, 3, 4, 5) * 6:
        lls = rng.normal(-10, 3, n)
        cases.append([float(round(x, int(rng.integers(0, 3)))) for x in lls])  # rounding makes ties
    return cases


@pytest.mark.parametrize("lls", _ll_cases())
def test_mc1_choice_equals_lm_eval_argmax(mc1_task, lls):
    doc = {"question": "Q?", "mc1_targets": {"choices": [f"choice {k}" for k in range(len(lls))],
                                             "labels": [1] + [0] * (len(lls) - 1)},
           "mc2_targets": {"choices": ["x"], "labels": [1]}}
    res = mc1_task.process_results(doc, [(ll, False) for ll in lls])
    gold, pred = res["f1"]
    assert gold == 0 and truthfulqa.mc1_pred(lls) == int(pred)
    assert truthfulqa.mc1_correct(lls) == res["acc"]
