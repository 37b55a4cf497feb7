"""The evaluate stage: request building and metric aggregation on hand-made rows, and the stage end to
end on the smoke setup for any model (here the base tiny GPT-2 itself), with a dirty benchmark row and
MMLU-Pro at the presets' 2048 new tokens on the tiny GPT-2's 1024 positions (clamped, shots dropped, an
over-long question quarantined)."""

import json
import os
import shutil
import subprocess
import sys

import pyarrow.parquet as pq
import pytest
from support import REPO, SMOKE

from raydebias.config import load_config
from raydebias.evaluate import tasks as T
from raydebias.evaluate.tasks import mmlu_pro, rtp, truthfulqa


def scored(task, item, output=None, loglik=None, tox=None, faith=None, ents=None, rl=None, prompt="p", **payload):
    return {T.TASK: task, T.ITEM: item, T.KIND: "greedy", T.PROMPT: prompt, T.CONTINUATION: None,
            T.MAX_NEW: 8, T.TEMPERATURE: 1.0, T.TOP_P: 1.0, T.PAYLOAD: json.dumps(payload), T.OUTPUT: output,
            T.LOGLIK: loglik, T.TOXICITY: tox, T.FAITHFULNESS: faith, T.ENTITY_PRECISION: ents, T.ROUGE_L: rl}


def test_metrics_aggregate_each_task():
    rows = [
        scored("tldr", "a", "Greg owes me money.", tox=0.2, faith=0.9, ents=1.0, rl=40.0),
        scored("tldr", "b", "He left.", tox=0.4, faith=0.5, ents=float("nan"), rl=20.0),
        # MC1: question 0 has the correct choice (index 0) most likely; question 1 does not
        scored("truthfulqa_mc1", "0/1", loglik=-5.0, question="0", choice=1),
        scored("truthfulqa_mc1", "0/0", loglik=-1.0, question="0", choice=0),
        scored("truthfulqa_mc1", "1/0", loglik=-3.0, question="1", choice=0),
        scored("truthfulqa_mc1", "1/1", loglik=-2.0, question="1", choice=1),
        scored("rtp", "x", " you idiot", tox=0.8, challenging=True),
        scored("rtp", "y", " and flour.", tox=0.1, challenging=False),
        scored("mmlu_pro", "1", "so the answer is (B)", answer="B", category="math"),
        scored("mmlu_pro", "2", "no idea", answer="A", category="law"),
    ]
    m = T.metrics(rows)
    assert m["tldr"]["toxicity"]["mean"] == pytest.approx(0.3) and m["tldr"]["toxicity"]["std"] == pytest.approx(0.1)
    # no entities to check: NaN, counted as missing (never silently left out)
    assert m["tldr"]["entity_precision"] == {"mean": 1.0, "std": 0.0, "n": 1, "n_missing": 1}
    assert m["truthfulqa_mc1"] == {"acc": 0.5, "n": 2, "n_missing": 0}
    assert m["rtp"]["toxic_share"] == 0.5 and m["rtp"]["challenging_toxicity"]["mean"] == pytest.approx(0.8)
    assert m["mmlu_pro"]["overall"] == 0.5 and m["mmlu_pro"]["subjects"]["law"]["acc"] == 0.0
    assert set(m["patterns"]) == {"tldr", "rtp", "mmlu_pro"}


def test_requests_quarantine_unusable_rows_with_their_reason():
    cfg = load_config(str(SMOKE), ["evaluate.limit=null"]).evaluate
    good = {"question_id": 1, "question": "q", "options": ["a", "b"], "answer": "B", "category": "x"}
    reqs, bad = mmlu_pro.requests([good, {**good, "question_id": 2, "answer": "E"}], [], cfg)
    assert len(reqs) == 1 and [b["reason"] for b in bad] == ["answer 'E' is not one of the options' letters"]
    reqs, bad = rtp.requests([{"prompt": {"text": "Hello there"}}, {"prompt": {"text": ""}}], cfg)
    assert len(reqs) == 1 and bad[0]["reason"] == "no prompt.text"
    gen = [{"Question": "Why?", "Best Answer": "yes", "Correct Answers": "yes", "Incorrect Answers": "no"},
           {"Question": "Why not?", "Correct Answers": "yes"}]
    mc = [{"question": "Q", "mc1_targets": {"choices": ["a", "b", "c"], "labels": [1, 0, 0]}}]
    reqs, bad = truthfulqa.requests(gen, mc, cfg)
    assert [r[T.TASK] for r in reqs] == ["truthfulqa_gen"] + ["truthfulqa_mc1"] * 3
    assert reqs[1][T.KIND] == "loglik" and reqs[1][T.CONTINUATION] == " a"
    assert bad[0]["task"] == "truthfulqa_gen" and "both correct and incorrect" in bad[0]["reason"]


def test_evaluate_stage_on_any_model_with_a_dirty_benchmark_row(tmp_path):
    mmlu = tmp_path / "mmlu"
    shutil.copytree(REPO / "raydebias/samples/mmlu_pro", mmlu)
    with open(mmlu / "test.jsonl", "a") as f:
        f.write(json.dumps({"question_id": 99, "question": "Broken?", "options": ["x", "y"], "answer": "Q",
                            "answer_index": 9, "cot_content": "", "category": "math", "src": "t"}) + "\n")
        f.write(json.dumps({"question_id": 77, "question": "Which of the committee's findings holds? " * 60,
                            "options": ["x", "y"], "answer": "A", "answer_index": 0, "cot_content": "",
                            "category": "math", "src": "t"}) + "\n")
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("RAY_ADDRESS", None)
    r = subprocess.run([sys.executable, str(REPO / "jobs/pipeline.py"), "--config", str(SMOKE), "--stage",
                        "evaluate", "--output", str(out), "model=tiny:gpt2", "base=none",
                        f"evaluate.mmlu_pro.source={mmlu}", "evaluate.mmlu_pro.max_new_tokens=2048",
                        "evaluate.min_prompt_tokens=512", "data.limit=6"],
                       capture_output=True, text=True, timeout=900, env=env, cwd=REPO)
    assert r.returncode == 0, r.stderr[-4000:]
    m = json.loads((out / "eval/metrics.json").read_text())
    assert list(m["models"]) == ["model"] and m["models"]["model"]["id"] == "tiny:gpt2"
    got = m["models"]["model"]["metrics"]
    assert got["tldr"]["toxicity"]["n"] == 6 and got["tldr"]["rougeL"]["n"] == 6
    assert 0 <= got["tldr"]["faithfulness"]["mean"] <= 1
    assert got["truthfulqa_mc1"]["n"] == 6 and got["truthfulqa_gen"]["n"] == 8
    assert got["rtp"]["toxicity"]["n"] == 8 and got["mmlu_pro"]["n"] == 5
    counts = m["counts"]["model"]
    for task, c in counts.items():
        assert c["rows_in"] == c["kept"] + sum(c["quarantined"].values()), task
    assert counts["mmlu_pro"]["quarantined"] == {"answer 'Q' is not one of the options' letters": 1,
                                                 "prompt_too_long": 1}
    # 2048 new tokens on 1024 positions: every kept MMLU-Pro request clamped to 512, with fewer than 5 shots
    assert counts["mmlu_pro"]["clamped"] == 5 and sum(counts["mmlu_pro"]["shots"].values()) == 5
    assert all(0 < int(k) < 5 for k in counts["mmlu_pro"]["shots"]), counts["mmlu_pro"]["shots"]
    assert all(c["clamped"] == 0 for t, c in counts.items() if t != "mmlu_pro")
    q = pq.read_table(out / "quarantine/evaluate").to_pylist()
    assert [(x["split"], x["id"], x["reason"], x["source_file"]) for x in q] == [
        ("mmlu_pro", "99", "answer 'Q' is not one of the options' letters", "model"),
        ("mmlu_pro", "77", "prompt_too_long", "model")]
    assert q[1]["detail"].startswith("prompt_too_long: ") and " >= 1024 - 512 " in q[1]["detail"]
    res = pq.read_table(out / "eval/model").to_pylist()
    assert all(x["error"] is None for x in res)
    assert all(x["output"] is not None for x in res if x["kind"] != "loglik")
    assert all(x["loglik"] < 0 for x in res if x["kind"] == "loglik")
    assert {x["max_new_tokens_used"] for x in res if x["task"] == "mmlu_pro"} == {512}
    assert all(x["max_new_tokens_used"] == x["max_new_tokens"] for x in res if x["kind"] != "loglik"
               and x["task"] != "mmlu_pro")
    assert all(x["shots"] is None for x in res if x["task"] != "mmlu_pro")
    report = (out / "eval/report.md").read_text()
    assert "Generation patterns" in report and "Δ model − base" not in report  # no base: no deltas
    assert "| model | mmlu_pro | 7 | 5 | answer 'Q' is not one of the options' letters: 1, prompt_too_long: 1 | 5 |" \
        in report
    assert (out / "eval/toxicity_vs_faithfulness.png").exists()


def test_batched_loglik_equals_one_forward_per_request():
    import torch

    from raydebias.evaluate.pipeline import Generate
    from raydebias.models import load_model

    gen = Generate("tiny:gpt2", "hf", use_gpu=False, gpu_fraction=0.0, seed=0, min_prompt_tokens=1)
    model, tok = load_model("tiny:gpt2", "causal_lm")
    ctx = ["Q: Is the sky blue?\nA:", "Q: What is the capital of Australia, the country?\nA:", "Q: Why?\nA:"]
    cont = [" Yes, it is.", " Canberra.", " Because the light scatters in the air above us."]
    got = gen.loglik(ctx, cont, batch_size=2)  # padding inside a batch must not change anything
    for c, t, g in zip(ctx, cont, got, strict=True):
        c_ids, t_ids = tok(c)["input_ids"], tok(t)["input_ids"]
        ids = torch.tensor([c_ids + t_ids])
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=ids).logits[0], -1)
        expected = sum(logp[len(c_ids) - 1 + k, t_ids[k]].item() for k in range(len(t_ids)))
        assert g == pytest.approx(expected, abs=1e-4)
