"""Honest aggregation (issue 13): a "model" that emits empty strings is scored and counted, never dropped.

metrics.json states, per task, ``n`` and how many outputs were empty or abstained (the generation-pattern
rules), and per mean its ``n`` and ``n_missing``. The TL;DR scores of the empty outputs come from the real
scorers (tiny NLI classifier and tiny NER), so the test checks the whole path from scorer to mean.
"""

import json
import math

import pytest

from raydebias.evaluate import tasks as T
from raydebias.evaluate.report import output_rows, write_report
from raydebias.scoring.faithfulness import EntityPrecision, NLIFaithfulness

POST = ("Greg borrowed my car in May. He crashed it on the highway. The insurance will not pay. "
        "Now he refuses to talk to me.")
OUTPUTS = ["", "   ", "Greg crashed my car and will not pay.", "I don't know."]


def row(task, item, output, prompt="Summarize this post please", tox=0.1, faith=None, ents=None, rl=None,
        loglik=None, **payload):
    return {T.TASK: task, T.ITEM: item, T.KIND: "greedy", T.PROMPT: prompt, T.CONTINUATION: None, T.MAX_NEW: 8,
            T.TEMPERATURE: 1.0, T.TOP_P: 1.0, T.PAYLOAD: json.dumps(payload), T.OUTPUT: output, T.LOGLIK: loglik,
            T.TOXICITY: tox, T.FAITHFULNESS: faith, T.ENTITY_PRECISION: ents, T.ROUGE_L: rl}


@pytest.fixture(scope="module")
def tldr_rows():
    """TL;DR result rows scored as the evaluate pipeline scores them (outputs "" for a missing one)."""
    faith = NLIFaithfulness("tiny:albert-nli").score([POST] * 4, OUTPUTS)
    ents = EntityPrecision("tiny:spacy-ner").score([POST] * 4, OUTPUTS)
    rouge = [0.0, 0.0, 50.0, 0.0]
    return [row("tldr", str(i), o, faith=f, ents=e, rl=r)
            for i, (o, f, e, r) in enumerate(zip(OUTPUTS, faith, ents, rouge, strict=True))]


def test_scorers_give_an_empty_summary_zero(tldr_rows):
    assert [r[T.FAITHFULNESS] for r in tldr_rows[:2]] == [0.0, 0.0]
    assert [r[T.ENTITY_PRECISION] for r in tldr_rows[:2]] == [0.0, 0.0]
    assert 0.0 <= tldr_rows[2][T.FAITHFULNESS] <= 1.0
    assert math.isnan(tldr_rows[3][T.ENTITY_PRECISION])  # "I don't know." has no entity: undefined


def test_empty_outputs_count_in_every_mean_and_are_reported(tldr_rows):
    m = T.metrics(tldr_rows)["tldr"]
    assert (m["n"], m["n_empty"], m["n_abstain"]) == (4, 2, 1)
    f = m["faithfulness"]
    scores = [r[T.FAITHFULNESS] for r in tldr_rows]
    assert (f["n"], f["n_missing"]) == (4, 0)
    assert f["mean"] == pytest.approx(sum(scores) / 4)  # the two zeros pull the mean down: not dropped
    assert f["mean"] <= max(scores[2:]) / 2 + 1e-9
    e = m["entity_precision"]
    assert (e["n"], e["n_missing"]) == (3, 1)  # the abstention has no entity: counted as missing, not hidden
    assert e["mean"] == pytest.approx(sum(r[T.ENTITY_PRECISION] for r in tldr_rows[:3]) / 3)
    assert m["rougeL"] == {"mean": pytest.approx(12.5), "std": pytest.approx(math.sqrt(468.75)), "n": 4,
                           "n_missing": 0}
    assert m["toxicity"]["n"] == 4


def test_every_task_states_n_and_empty_and_abstained_outputs():
    rows = [
        row("rtp", "a", "", tox=0.6, challenging=True), row("rtp", "b", " and then", tox=None, challenging=False),
        row("rtp", "c", "I cannot say that.", tox=0.2, challenging=False),
        row("mmlu_pro", "1", "   ", answer="A", category="law"),
        row("mmlu_pro", "2", "I'm not sure. The answer is (B)", answer="B", category="law"),
        row("truthfulqa_gen", "0", "", correct=["Nothing happens."], incorrect=["You die."]),
        row("truthfulqa_gen", "1", "Nothing happens.", correct=["Nothing happens."], incorrect=["You die."]),
        row("truthfulqa_mc1", "0/0", None, loglik=-1.0, question="0", choice=0),
        row("truthfulqa_mc1", "0/1", None, loglik=-2.0, question="0", choice=1),
        row("truthfulqa_mc1", "1/0", None, loglik=None, question="1", choice=0),
        row("truthfulqa_mc1", "1/1", None, loglik=-2.0, question="1", choice=1),
    ]
    m = T.metrics(rows)
    rtp = m["rtp"]
    assert (rtp["n"], rtp["n_empty"], rtp["n_abstain"]) == (3, 1, 1)
    assert (rtp["toxicity"]["n"], rtp["toxicity"]["n_missing"]) == (2, 1)  # an unscored row is counted
    assert rtp["toxic_share"] == 0.5 and rtp["challenging_toxicity"]["n"] == 1
    mp = m["mmlu_pro"]
    assert (mp["n"], mp["n_empty"], mp["n_abstain"], mp["overall"]) == (2, 1, 1, 0.5)
    tq = m["truthfulqa_gen"]
    assert (tq["n"], tq["n_empty"], tq["n_abstain"], tq["n_missing"]) == (2, 1, 0, 0)
    assert tq["rouge1_acc"] == 0.5 and tq["rouge1_max"] == 50.0  # the empty answer scores 0 and counts
    assert m["truthfulqa_mc1"] == {"acc": 1.0, "n": 2, "n_missing": 1}  # question 1 lacks a log-likelihood
    assert m["patterns"]["rtp"]["n"] == 3


def test_report_renders_the_counts(tldr_rows, tmp_path):
    per = T.metrics(tldr_rows)
    metrics = {"models": {"base": {"id": "tiny", "metrics": per}},
               "counts": {"base": {"tldr": {"rows_in": 4, "kept": 4, "quarantined": {}, "clamped": 0}}}}
    assert output_rows(metrics["models"]) == [["base", "tldr", "4", "2", "1", "entity_precision: 1"]]
    md = write_report(metrics, tmp_path).read_text()
    assert "## Outputs per task" in md and "| base | tldr | 4 | 2 | 1 | entity_precision: 1 |" in md
    assert "TL;DR Faithfulness (NLI)" in md
