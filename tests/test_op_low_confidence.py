"""low_confidence (inverse beam search, eq. 1-2) on the real tiny GPT-2, checked against model.generate."""

import json
from pathlib import Path

import pyarrow as pa
import pytest
import torch

from raydebias.augment.low_confidence import (
    LowConfidence,
    build_prompt,
    min_propn_num_prob,
    propn_num_spans,
)
from raydebias.config import load_config
from raydebias.data import record_to_row
from raydebias.generation import Generation
from raydebias.models import load_model
from raydebias.prompts import PROMPT_END, format_prompt

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "raydebias/samples/tldr/train/carper-a.jsonl"
MAX_NEW, MAX_IN = 16, 160  # MAX_IN < the sample posts' length (~280-370 tiny tokens): the post gets cut


def source_rows(n=3):
    lines = SAMPLES.read_text().splitlines()[:n]
    return [record_to_row(json.loads(line), "carper")[0] for line in lines]


def config(*overrides):
    return load_config(REPO / "jobs/configs/smoke.yaml", [
        f"augment.low_confidence.max_new_tokens={MAX_NEW}", f"augment.low_confidence.max_input_tokens={MAX_IN}",
        *overrides])


@pytest.fixture(scope="module")
def lowcon():
    return LowConfidence(config().augment.low_confidence, device="cpu", seed=0)


@pytest.fixture(scope="module")
def tiny_gpt2():
    model, tok = load_model("tiny:gpt2", "causal_lm")
    tok.padding_side = "left"
    return model, tok


def only(table, i, name="low_confidence"):
    row = table.slice(i, 1).to_pylist()[0]
    return ([c for c in row["candidates"] if c["op"] == name], [d for d in row["drops"] if d["op"] == name])


def test_build_prompt_cuts_the_post_and_keeps_the_tldr_end(tiny_gpt2):
    _, tok = tiny_gpt2
    row = source_rows(1)[0]
    full = format_prompt(row["post"], row["subreddit"], row["title"])
    assert build_prompt(tok, row["post"], row["subreddit"], row["title"], 4096) == (full, False)
    prompt, cut = build_prompt(tok, row["post"], row["subreddit"], row["title"], 64)
    assert cut and prompt.endswith("\n" + PROMPT_END) and len(tok(prompt)["input_ids"]) <= 64
    assert prompt.startswith(f"SUBREDDIT: r/{row['subreddit']}\nTITLE: {row['title']}\nPOST: {row['post'][:10]}")
    body = prompt.split("POST: ", 1)[1][: -len("\n" + PROMPT_END)]
    assert row["post"].startswith(body) and 0 < len(body) < len(row["post"])
    with pytest.raises(ValueError, match="without its post is already"):
        build_prompt(tok, row["post"], row["subreddit"], "a very long title " * 20, 32)


def test_picks_the_argmin_of_hf_sequences_scores(lowcon, tiny_gpt2):
    """Eq. 1, checked against an independent model.generate on the same inputs."""
    rows = source_rows()
    out = lowcon(pa.Table.from_pylist(rows))
    model, tok = tiny_gpt2
    prompts = [build_prompt(tok, r["post"], r["subreddit"], r["title"], MAX_IN)[0] for r in rows]
    enc = tok(prompts, return_tensors="pt", padding=True)
    with torch.no_grad():
        ref = model.generate(**enc, num_beams=8, num_return_sequences=8, length_penalty=2.0, max_new_tokens=MAX_NEW,
                             do_sample=False, output_scores=True, return_dict_in_generate=True)
    scores = ref.sequences_scores.view(3, 8)
    gen = ref.sequences[:, enc["input_ids"].shape[1]:].view(3, 8, -1)
    eos = tok.eos_token_id
    for i in range(3):
        rank = int(torch.argmin(scores[i]))
        ids = gen[i, rank].tolist()
        ids = ids[: ids.index(eos)] if eos in ids else ids
        text = tok.decode(ids, skip_special_tokens=True).strip()
        cands, drops = only(out, i)
        assert len(cands) + len(drops) == 1
        if not text:
            assert drops[0]["reason"] == "empty"
            continue
        (c,) = cands
        info = json.loads(c["info"])
        assert c["text"] == text and c["positive"] is False
        assert info["beam_rank"] == rank and info["num_beams"] == 8 and info["post_truncated"] is True
        assert info["beam_score"] == pytest.approx(float(scores[i, rank]), abs=1e-5)
        assert info["beam_score"] == pytest.approx(float(scores[i].min()), abs=1e-6)
    # Beam search is deterministic: a second call gives the same table.
    again = lowcon(pa.Table.from_pylist(rows))
    assert again.column("candidates").to_pylist() == out.column("candidates").to_pylist()


def test_propn_num_heuristic():
    text = "my boss Greg owes me $1,840 since March. Then I left, and I'm done"
    words = [text[s:e] for s, e in propn_num_spans(text)]
    assert words == ["Greg", "1,840", "March"]  # "Then" starts a sentence, "I"/"I'm" are pronouns
    assert propn_num_spans("Greg called.") == []  # sentence-initial: not counted


def test_min_propn_num_prob_maps_tokens_to_words(tiny_gpt2):
    _, tok = tiny_gpt2
    text = " my boss Greg owes me 40 now"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == text
    # Log-prob of token k = -(k + 1) / 10: the expected minimum is that of the LAST token touching "40".
    logprobs = [-(k + 1) / 10 for k in range(len(ids))]
    ends = [len(tok.decode(ids[: k + 1])) for k in range(len(ids))]
    start_40 = text.index("40")
    last = max(k for k in range(len(ids)) if (ends[k - 1] if k else 0) < start_40 + 2 and ends[k] > start_40)
    assert min_propn_num_prob(tok, ids, logprobs) == pytest.approx(torch.tensor(logprobs[last]).exp().item())
    plain = tok(" my boss owes me now", add_special_tokens=False)["input_ids"]
    assert min_propn_num_prob(tok, plain, [-1.0] * len(plain)) is None


def test_cliff_rule_on_the_real_model(lowcon):
    rows = source_rows(2)
    batch = pa.Table.from_pylist(rows)
    plain = lowcon(batch)  # the same beams, chosen without the rule
    strict = LowConfidence(config("augment.low_confidence.cliff_rule=true",
                                  "augment.low_confidence.cliff_threshold=0.0").augment.low_confidence)(batch)
    loose = LowConfidence(config("augment.low_confidence.cliff_rule=true",
                                 "augment.low_confidence.cliff_threshold=1.0").augment.low_confidence)(batch)
    for i in range(2):
        (chosen,) = only(plain, i)[0]
        has_propn_num = bool(propn_num_spans(chosen["text"]))
        cands, drops = only(strict, i)  # no probability is < 0: nothing passes
        assert cands == [] and [d["reason"] for d in drops] == ["confident" if has_propn_num else "no_propn_num"]
        cands, drops = only(loose, i)  # every probability is < 1: a beam with a PROPN/NUM token passes
        if has_propn_num:
            assert [c["text"] for c in cands] == [chosen["text"]] and drops == []
            assert 0.0 < json.loads(cands[0]["info"])["min_propn_num_prob"] < 1.0
        else:
            assert cands == [] and [d["reason"] for d in drops] == ["no_propn_num"]


class ScriptedGenerator:
    """A Generator that returns fixed beams (the tiny random GPT-2 never writes names or numbers, so the
    CLIFF decision itself is exercised on hand-made beams, tokenized by the real tiny tokenizer)."""

    def __init__(self, tokenizer, beams):
        self.tokenizer, self.beams = tokenizer, beams

    def generate(self, prompts, params):
        assert params.num_beams == 8 and params.output_scores  # what the op asks for with cliff_rule
        return [self.beams[i % len(self.beams)] for i in range(len(prompts))]


def test_cliff_rule_keeps_only_unsure_names_and_numbers():
    op = LowConfidence(config("augment.low_confidence.cliff_rule=true").augment.low_confidence)  # tau = 0.21 (Table 10)
    tok = op.generator.tokenizer
    low_logprob = torch.log(torch.tensor(0.1)).item()

    def beam(text, score, low_on=None):
        ids = tok(text, add_special_tokens=False)["input_ids"]
        ends = [len(tok.decode(ids[: k + 1])) for k in range(len(ids))]
        at = text.index(low_on) if low_on else -1
        logprobs = [low_logprob if low_on and (ends[k - 1] if k else 0) <= at < ends[k] else -0.05
                    for k in range(len(ids))]
        return Generation(text=tok.decode(ids), score=score, token_logprobs=logprobs, token_ids=ids)

    unsure = [beam(" my boss paid me", -0.1), beam(" my boss Greg owes me 40", -0.9, low_on="40"),
              beam(" my boss left", -0.3)]
    sure = [beam(" my boss Greg owes me 40", -0.9), beam(" fine", -0.2)]
    op.generator = ScriptedGenerator(tok, [unsure, sure])
    out = op(pa.Table.from_pylist(source_rows(2)))
    (kept,), drops = only(out, 0)
    info = json.loads(kept["info"])
    assert drops == [] and kept["text"] == "my boss Greg owes me 40" and info["beam_rank"] == 1
    assert info["min_propn_num_prob"] == pytest.approx(0.1, rel=1e-5)
    cands, (dropped,) = only(out, 1)
    assert cands == [] and dropped["reason"] == "confident"
    assert f"{torch.tensor(-0.05).exp().item():.4f} >= 0.21" in dropped["detail"]


def test_a_failing_row_becomes_an_error_drop_and_the_others_keep_theirs(lowcon):
    rows = source_rows()
    rows[0] = {**rows[0], "post": "   "}
    out = lowcon(pa.Table.from_pylist(rows))
    cands, drops = only(out, 0)
    assert cands == [] and [d["reason"] for d in drops] == ["error"] and "non-empty post" in drops[0]["detail"]
    for i in (1, 2):
        cands, drops = only(out, i)
        assert len(cands) + len(drops) == 1 and all(d["reason"] != "error" for d in drops)


def test_vllm_backend_is_refused_before_loading_anything():
    with pytest.raises(ValueError, match="Set augment.low_confidence.backend=hf"):
        LowConfidence(config("augment.low_confidence.backend=vllm").augment.low_confidence)
