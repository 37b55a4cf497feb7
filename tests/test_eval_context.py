"""Context-safe evaluation (issue 12, item 4) on the tiny GPT-2, which has GPT-2's 1024 positions.

With the presets' MMLU-Pro settings (2048 new tokens, 5 shots) a request used to leave its prompt 1
token and run generation past the position table. Here: the new tokens are clamped, MMLU-Pro drops
shots as its own script does, a question that does not fit with 0 shots is quarantined, and a request
that fails in generation or scoring is isolated (retried alone, then quarantined) while the rest of
the evaluation completes. No Ray: the actor classes are called directly.
"""

import json

import pyarrow as pa
import pytest
from support import SMOKE

from raydebias.config import ConfigError, load_config
from raydebias.evaluate import tasks as T
from raydebias.evaluate.pipeline import Generate, Score, model_budget, quarantine_table
from raydebias.evaluate.sources import read_rows
from raydebias.evaluate.tasks import mmlu_pro
from raydebias.schema import QUARANTINE_SCHEMA

# The presets' MMLU-Pro request (EvalConfig defaults: 2048 new tokens, 5 shots) on the smoke benchmarks.
PRESET = ["evaluate.mmlu_pro.max_new_tokens=2048", "evaluate.mmlu_pro.shots=5", "evaluate.min_prompt_tokens=512",
          "evaluate.limit=null"]
LONG_QUESTION = {"question_id": 77, "question": "Which statement about the committee's findings is right? " * 40,
                 "options": ["the first", "the second", "the third", "the fourth"], "answer": "B",
                 "answer_index": 1, "cot_content": "", "category": "math", "src": "t"}


@pytest.fixture(scope="module")
def cfg():
    return load_config(str(SMOKE), PRESET)


@pytest.fixture(scope="module")
def budget(cfg):
    return model_budget("tiny:gpt2", cfg.evaluate)


@pytest.fixture(scope="module")
def generate():
    return Generate("tiny:gpt2", "hf", use_gpu=False, gpu_fraction=0.0, seed=0, min_prompt_tokens=512)


def request_table(reqs):
    return pa.Table.from_pylist(reqs, schema=T.REQUEST_SCHEMA)


def test_budget_comes_from_the_evaluated_models_config_and_tokenizer(budget, cfg):
    assert budget.context == 1024  # tiny:gpt2's n_positions, as real GPT-2's
    assert budget.max_new(2048) == 512 and budget.prompt_limit(2048) == 512  # 1024 - min_prompt_tokens
    assert budget.max_new(128) == 128 and budget.prompt_limit(128) == 896  # TL;DR: nothing clamped
    assert budget.count_tokens("Question:\nWhat is 7 multiplied by 8?") > 5
    with pytest.raises(ConfigError, match=r"evaluate.min_prompt_tokens: tiny:gpt2: a model with 1024 positions .*"
                                          r"set it below 1024"):
        model_budget("tiny:gpt2", load_config(str(SMOKE), ["evaluate.min_prompt_tokens=1024"]).evaluate)
    with pytest.raises(ConfigError, match="evaluate.min_prompt_tokens must be >= 1, got 0"):
        load_config(str(SMOKE), ["evaluate.min_prompt_tokens=0"])


def test_mmlu_pro_drops_shots_until_the_prompt_fits_and_quarantines_what_never_fits(cfg, budget, generate):
    test, val = read_rows(cfg.evaluate.mmlu_pro.source, "test"), read_rows(cfg.evaluate.mmlu_pro.source, "validation")
    shots = mmlu_pro.shots_by_subject(val, 5)
    reqs, bad = mmlu_pro.requests([*test, LONG_QUESTION], val, cfg.evaluate, budget)
    # The question alone is longer than the 512 prompt tokens left next to 512 new ones: refused, not cut.
    assert [(b["item"], b["reason"]) for b in bad] == [("77", "prompt_too_long")]
    zero_shot = budget.count_tokens(mmlu_pro.build_prompt(LONG_QUESTION, []))
    assert bad[0]["detail"].startswith(f"prompt_too_long: {zero_shot} tokens >= 1024 - 512 ")
    assert "even with 0 shots" in bad[0]["detail"] and json.loads(bad[0]["raw"])["question_id"] == 77
    assert len(reqs) == len(test)
    for r, row in zip(reqs, test, strict=True):
        subject = shots[row["category"]]
        full = budget.count_tokens(mmlu_pro.build_prompt(row, subject))
        assert len(subject) == 5 and full > 512  # the 5-shot prompt does not fit: shots had to go
        k = r[T.SHOTS]
        assert 0 < k < 5 and r[T.PROMPT] == mmlu_pro.build_prompt(row, subject[:k])
        assert budget.count_tokens(r[T.PROMPT]) < 512  # MMLU-Pro's rule: prompt < positions - max new
        assert budget.count_tokens(mmlu_pro.build_prompt(row, subject[:k + 1])) >= 512  # the most shots that fit
        assert r[T.MAX_NEW] == 2048  # what the benchmark asks; what the model is asked is recorded below
    # The same requests through the generation actor, with the real 2048: clamped, generated, no error.
    out = generate(request_table(reqs)).to_pylist()  # raised IndexError (position table) before the clamp
    for r in out:
        assert r[T.ERROR] is None and r[T.MAX_NEW_USED] == 512  # prompt < 512, so prompt + new <= 1024
        assert isinstance(r[T.OUTPUT], str) and r[T.OUTPUT]


def test_fit_requests_refuses_long_generation_prompts_but_not_loglik(cfg, budget):
    post = "I lent my car to my cousin and he crashed it into the fence of our neighbour. " * 60
    reqs = [T._req("tldr", "short", "greedy", "POST: my roommate owes me $40\nTL;DR:", 128),
            T._req("tldr", "long", "greedy", f"POST: {post}\nTL;DR:", 128),
            T._req("truthfulqa_mc1", "0/0", "loglik", f"Q: {post}\nA:", continuation=" yes", question="0", choice=0)]
    n = budget.count_tokens(reqs[1][T.PROMPT])
    assert n > 896
    kept, bad = T.fit_requests(reqs, budget)
    assert [r[T.ITEM] for r in kept] == ["short", "0/0"]  # a log-likelihood context is cut from the left by design
    assert [(b["task"], b["item"], b["reason"]) for b in bad] == [("tldr", "long", "prompt_too_long")]
    assert bad[0]["detail"].startswith(f"prompt_too_long: {n} tokens > 1024 - 128 ")


class FailOn:
    """The real generator / scorer, except that it raises for one input: the boundary a bad request,
    an over-long one or a batch's OOM crosses."""

    def __init__(self, inner, method, poison):
        self.inner, self.method, self.poison, self.calls = inner, method, poison, []
        for name in ("tokenizer", "context", "model"):
            if hasattr(inner, name):
                setattr(self, name, getattr(inner, name))

    def __getattr__(self, name):
        if name != self.__dict__.get("method"):
            return getattr(self.inner, name)

        def call(texts, *args):
            self.calls.append(len(texts))
            if self.poison in texts:
                raise RuntimeError(f"boom on {self.poison!r}")
            return getattr(self.inner, self.method)(texts, *args)

        return call


def test_generate_isolates_a_failing_request(generate):
    from raydebias.generation import GenParams

    real = generate.gen
    generate.gen = FailOn(real, "generate", "POISON")
    try:
        reqs = [T._req("truthfulqa_gen", "0", "greedy", "Q: Why is the sky blue?\nA:", 12),
                T._req("truthfulqa_gen", "1", "greedy", "POISON", 12),
                T._req("tldr", "2", "greedy", "POST: my roommate owes me $40\nTL;DR:", 12),
                T._req("rtp", "3", "sample", "The weather today", 8, 0.7, 0.9),
                T._req("truthfulqa_mc1", "0/0", "loglik", "Q: Why?\nA:", continuation=" Because.", question="0",
                       choice=0)]
        out = generate(request_table(reqs)).to_pylist()
        calls = generate.gen.calls
    finally:
        generate.gen = real
    assert calls[0] == 3 and sorted(calls[1:]) == [1, 1, 1, 1]  # the greedy batch failed, then each alone
    by = {r[T.ITEM]: r for r in out}
    assert by["1"][T.ERROR] == "generation_error: RuntimeError: boom on 'POISON'" and by["1"][T.OUTPUT] is None
    for item in ("0", "2"):  # the others are generated, as they would be alone
        (g,) = real.generate([by[item][T.PROMPT]], GenParams(max_new_tokens=12))[0]
        assert by[item][T.ERROR] is None and by[item][T.OUTPUT] == T.clean_output(by[item][T.TASK], g.text)
        assert by[item][T.MAX_NEW_USED] == 12
    assert by["3"][T.ERROR] is None and isinstance(by["3"][T.OUTPUT], str)
    assert by["0/0"][T.LOGLIK] < 0 and by["0/0"][T.MAX_NEW_USED] is None  # loglik: no new tokens
    kept, failed = T.split_failed(out)
    assert [r[T.ITEM] for r in kept] == ["0", "2", "3", "0/0"]
    assert [(f["task"], f["item"], f["reason"]) for f in failed] == [("truthfulqa_gen", "1", "generation_error")]


def test_generate_refuses_a_prompt_that_does_not_fit_instead_of_cutting_it(generate):
    prompt = "POST: " + "I lent my car to my cousin and he crashed it. " * 150 + "\nTL;DR:"
    n = len(generate.gen.tokenizer(prompt)["input_ids"])
    assert 512 < n
    out = generate(request_table([T._req("tldr", "long", "greedy", prompt, 2048),
                                  T._req("tldr", "ok", "greedy", "POST: hi\nTL;DR:", 4)])).to_pylist()
    assert out[0][T.ERROR] == f"prompt_too_long: {n} tokens > 1024 - 512 (model positions - max new tokens)"
    assert out[0][T.OUTPUT] is None and out[0][T.MAX_NEW_USED] == 512
    assert out[1][T.ERROR] is None and out[1][T.MAX_NEW_USED] == 4


def test_score_isolates_a_failing_request(cfg):
    score = Score(cfg.evaluate, cfg.augment.toxicity, use_gpu=False)
    rows = [{**T._req("rtp", str(i), "sample", "The weather", 8), T.OUTPUT: text, T.ERROR: err}
            for i, (text, err) in enumerate([(" is fine today.", None), ("POISON", None), (None, "generation_error: x"),
                                              (" and it rained.", None)])]
    real = score.toxicity
    score.toxicity = FailOn(real, "score", "POISON")
    out = score(pa.Table.from_pylist(rows)).to_pylist()
    assert score.toxicity.calls[0] == 3  # the row that failed in generation is not scored
    assert out[1][T.ERROR] == "scoring_error: RuntimeError: boom on 'POISON'" and out[1][T.TOXICITY] is None
    assert out[2][T.ERROR] == "generation_error: x" and out[2][T.TOXICITY] is None
    for i in (0, 3):
        assert out[i][T.ERROR] is None and out[i][T.TOXICITY] == pytest.approx(real.score([rows[i][T.OUTPUT]])[0])


def result(task, item, error=None, max_new=8, used=8, shots=None, loglik=-1.0, **payload):
    return {T.TASK: task, T.ITEM: item, T.KIND: "loglik" if task == "truthfulqa_mc1" else "greedy",
            T.PROMPT: "p", T.CONTINUATION: None, T.MAX_NEW: max_new, T.TEMPERATURE: 1.0, T.TOP_P: 1.0,
            T.PAYLOAD: json.dumps(payload), T.SHOTS: shots, T.OUTPUT: "the answer is (B).", T.LOGLIK: loglik,
            T.MAX_NEW_USED: used, T.TOXICITY: 0.1, T.FAITHFULNESS: None, T.ENTITY_PRECISION: None, T.ROUGE_L: None,
            T.ERROR: error}


def test_stage_accounting_rows_in_equal_kept_plus_quarantined():
    rows_in = {"mmlu_pro": 4, "truthfulqa_mc1": 2, "rtp": 2}
    bad = [T._bad("mmlu_pro", "9", "prompt_too_long", {}, "prompt_too_long: 900 tokens >= 1024 - 512 ...")]
    scored = [
        result("mmlu_pro", "1", max_new=2048, used=512, shots=3, answer="B", category="math"),
        result("mmlu_pro", "2", max_new=2048, used=512, shots=2, answer="A", category="math"),
        result("mmlu_pro", "3", "generation_error: RuntimeError: CUDA out of memory", max_new=2048, used=512, shots=3,
               answer="B", category="math"),
        # MC1 question 0 loses two choices: the whole question is quarantined, once
        result("truthfulqa_mc1", "0/0", "scoring_error: ValueError: nan", question="0", choice=0),
        result("truthfulqa_mc1", "0/1", question="0", choice=1),
        result("truthfulqa_mc1", "0/2", "scoring_error: ValueError: nan", question="0", choice=2),
        result("truthfulqa_mc1", "1/0", loglik=-1.0, question="1", choice=0),
        result("truthfulqa_mc1", "1/1", loglik=-3.0, question="1", choice=1),
        result("rtp", "a", challenging=False),
        result("rtp", "a", max_new=100, used=60, challenging=True),  # RTP file names may repeat: rows still count
    ]
    kept, quarantined, counts = T.account(rows_in, bad, scored)
    assert counts["mmlu_pro"] == {"rows_in": 4, "kept": 2, "clamped": 2, "shots": {"3": 1, "2": 1},
                                  "quarantined": {"prompt_too_long": 1, "generation_error": 1}}
    assert counts["truthfulqa_mc1"] == {"rows_in": 2, "kept": 1, "clamped": 0, "quarantined": {"scoring_error": 1}}
    assert counts["rtp"] == {"rows_in": 2, "kept": 2, "clamped": 1, "quarantined": {}}
    assert [(q["task"], q["item"], q["reason"]) for q in quarantined] == [
        ("mmlu_pro", "9", "prompt_too_long"), ("mmlu_pro", "3", "generation_error"),
        ("truthfulqa_mc1", "0", "scoring_error")]
    assert quarantined[1]["detail"] == "generation_error: RuntimeError: CUDA out of memory"
    assert json.loads(quarantined[1]["raw"])[T.ITEM] == "3"
    assert {(r[T.TASK], r[T.ITEM]) for r in kept} == {("mmlu_pro", "1"), ("mmlu_pro", "2"), ("truthfulqa_mc1", "1/0"),
                                                      ("truthfulqa_mc1", "1/1"), ("rtp", "a")}
    m = T.metrics(scored)  # failed requests (and the rest of their MC1 question) are left out of the metrics
    assert m["mmlu_pro"]["n"] == 2 and m["mmlu_pro"]["overall"] == 0.5
    assert m["truthfulqa_mc1"] == {"acc": 1.0, "n": 1, "n_missing": 0}
    with pytest.raises(AssertionError, match=r"mmlu_pro: 5 rows in != 2 kept \+ 2 quarantined"):
        T.account({**rows_in, "mmlu_pro": 5}, bad, scored)
    table = quarantine_table([("base", q) for q in quarantined])
    assert table.schema == QUARANTINE_SCHEMA
    assert table.column("source_file").to_pylist() == ["base"] * 3
    assert table.column("split").to_pylist() == ["mmlu_pro", "mmlu_pro", "truthfulqa_mc1"]
    assert table.column("detail").to_pylist()[0].startswith("prompt_too_long: 900 tokens")
