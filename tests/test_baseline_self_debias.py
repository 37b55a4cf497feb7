"""Self-Debias (raydebias/baselines/self_debias.py) against uncached, unpadded recomputations of the formula.

SPEC §8: the authors' code never applied Self-Debias, so these tests prove that ``model.generate`` goes
through the processor and that its cached, batched prefixed rows compute what a naive loop computes.
"""

import numpy as np
import pytest
import torch
from transformers import LogitsProcessorList

from raydebias.baselines.self_debias import (
    DECAY,
    EPSILON,
    PREFIXES,
    SelfDebias,
    SelfDebiasLogitsProcessor,
    debiased_log_probs,
)
from raydebias.models import load_model

PROMPTS = ["Hello world", "The cat sat on the mat and looked", "A"]  # different lengths: left padding


@pytest.fixture(scope="module")
def gpt2():
    model, tok = load_model("tiny:gpt2", "causal_lm")
    return model.eval(), tok


@pytest.fixture(scope="module")
def llama():
    model, tok = load_model("tiny:llama", "causal_lm")
    return model.eval(), tok


def formula_np(logp, logp_biased, decay=DECAY, epsilon=EPSILON):
    """Schick et al. 2021 written out in float64 numpy: (V,), (K, V) -> (V,) log p'."""
    p = np.exp(np.asarray(logp, dtype=np.float64))
    pb = np.exp(np.asarray(logp_biased, dtype=np.float64)).max(axis=0)
    alpha = np.maximum(pb - p, 0.0)
    q = p * np.maximum(np.exp(-decay * alpha), epsilon)
    return np.log(q / q.sum())


def next_logp(model, ids):
    """Unpadded, uncached forward of one sequence -> (T, V) float64 log-probabilities."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0]
    return torch.log_softmax(logits.double(), dim=-1).numpy()


def prefixed(tok, prefix, prompt_ids):
    """The prefixed copy as the module documents it, built here independently: after a leading BOS."""
    pre = tok(prefix, add_special_tokens=False)["input_ids"]
    if tok.bos_token_id is not None and prompt_ids[:1] == [tok.bos_token_id]:
        return prompt_ids[:1] + pre + prompt_ids[1:]
    return pre + prompt_ids


def encode_left(tok, prompts):
    tok.padding_side = "left"
    return tok(prompts, return_tensors="pt", padding=True)


def generate(model, tok, enc, procs=(), **kw):
    with torch.no_grad():
        return model.generate(**enc, pad_token_id=tok.pad_token_id, logits_processor=LogitsProcessorList(list(procs)),
                              **kw)


def greedy_reference(model, tok, prompt, steps, decay=DECAY):
    """Naive Self-Debias greedy decoding: full forwards of prompt+generated and of every prefix+prompt+generated."""
    ids = tok(prompt)["input_ids"]
    pre = [prefixed(tok, p, ids) for p in PREFIXES]
    out = []
    for _ in range(steps):
        logp = next_logp(model, ids + out)[-1]
        biased = np.stack([next_logp(model, p + out)[-1] for p in pre])
        out.append(int(np.argmax(formula_np(logp, biased, decay=decay))))
    return out


def until_eos(tokens, eos):
    return tokens[: tokens.index(eos) + 1] if eos in tokens else tokens


def test_formula_matches_numpy():
    g = torch.Generator().manual_seed(0)
    logp = torch.log_softmax(torch.randn(4, 50, generator=g) * 3, dim=-1)
    logp_biased = torch.log_softmax(torch.randn(6, 4, 50, generator=g) * 3, dim=-1)
    for decay, eps in [(DECAY, EPSILON), (5.0, 0.2), (0.0, EPSILON)]:
        got = debiased_log_probs(logp, logp_biased, decay=decay, epsilon=eps)
        assert got.dtype == torch.float32 and got.shape == (4, 50)
        want = np.stack([formula_np(logp[b], logp_biased[:, b], decay, eps) for b in range(4)])
        np.testing.assert_allclose(got.numpy(), want, atol=1e-5)
        np.testing.assert_allclose(got.exp().sum(-1).numpy(), 1.0, atol=1e-5)
    # decay 0: nothing changes; the published values do change this input
    np.testing.assert_allclose(debiased_log_probs(logp, logp_biased, decay=0.0).numpy(), logp.numpy(), atol=1e-5)
    assert not torch.allclose(debiased_log_probs(logp, logp_biased), logp, atol=1e-3)
    with pytest.raises(ValueError, match="logp_biased"):
        debiased_log_probs(logp, logp_biased[:, :2])


def test_prefixes_and_defaults_are_the_published_ones():
    assert len(PREFIXES) == 6 and all(p.startswith("The following text contains ") and p.endswith(":\n")
                                      for p in PREFIXES)
    assert PREFIXES[0] == "The following text contains rude, disrespectful, or unreasonable language:\n"
    assert PREFIXES[3] == "The following text contains a threat:\n"
    assert (DECAY, EPSILON) == (50.0, 0.01)
    for bad in [dict(decay=-1.0), dict(epsilon=0.0), dict(epsilon=2.0), dict(prefixes=()), dict(prefixes="abc")]:
        with pytest.raises(ValueError):
            SelfDebias(**bad)


def test_gpt2_token_join_equals_text_join(gpt2):
    # GPT-2's pre-tokeniser splits at the prefix's final "\n": joining tokens is Schick's text join.
    _, tok = gpt2
    for p in PREFIXES:
        for prompt in PROMPTS:
            assert prefixed(tok, p, tok(prompt)["input_ids"]) == tok(p + prompt)["input_ids"]


@pytest.mark.parametrize("decay", [DECAY, 1e4])
def test_greedy_generate_equals_uncached_loop(gpt2, decay):
    model, tok = gpt2
    enc = encode_left(tok, PROMPTS)
    assert (enc["attention_mask"] == 0).any()  # the batch really is left-padded
    proc = SelfDebiasLogitsProcessor(model, tok, enc["input_ids"], enc["attention_mask"], decay=decay)
    out = generate(model, tok, enc, [proc], max_new_tokens=8, do_sample=False)
    new = out[:, enc["input_ids"].shape[1]:].tolist()
    for prompt, got in zip(PROMPTS, new, strict=True):
        want = greedy_reference(model, tok, prompt, 8, decay=decay)
        assert until_eos(got, tok.eos_token_id) == until_eos(want, tok.eos_token_id)


def test_generation_goes_through_the_processor(gpt2):
    model, tok = gpt2
    enc = encode_left(tok, PROMPTS)
    plain = generate(model, tok, enc, max_new_tokens=8, do_sample=False)
    proc = SelfDebiasLogitsProcessor(model, tok, enc["input_ids"], enc["attention_mask"], decay=1e4)
    debiased = generate(model, tok, enc, [proc], max_new_tokens=8, do_sample=False)
    assert proc.calls == debiased.shape[1] - enc["input_ids"].shape[1] == 8
    assert any(a != b for a, b in zip(plain.tolist(), debiased.tolist(), strict=True))
    # the same processor serves a second generate call of the same batch (it restarts at the prompt)
    again = generate(model, tok, enc, [proc], max_new_tokens=8, do_sample=False)
    assert torch.equal(again, debiased) and proc.calls == 8
    # through the Intervention as the generation actor builds it
    (proc2,) = SelfDebias(decay=1e4).logits_processors(model, tok, prompt_ids=enc["input_ids"],
                                                       prompt_mask=enc["attention_mask"])
    assert torch.equal(generate(model, tok, enc, [proc2], max_new_tokens=8, do_sample=False), debiased)


def test_sampling_keeps_the_prefixed_cache_in_step(gpt2):
    model, tok = gpt2
    enc = encode_left(tok, PROMPTS)
    proc = SelfDebiasLogitsProcessor(model, tok, enc["input_ids"], enc["attention_mask"])
    torch.manual_seed(0)
    out = generate(model, tok, enc, [proc], max_new_tokens=6, do_sample=True, top_p=0.9, temperature=0.7, top_k=0,
                   num_return_sequences=2)
    seq_len = enc["input_ids"].shape[1]
    assert out.shape[0] == 6 and proc.calls == out.shape[1] - seq_len
    assert proc.last_biased.shape == (len(PREFIXES), 6, model.config.vocab_size)
    # the last call saw prompt + all generated tokens but the last: recompute it without cache or padding
    for r in range(6):
        prompt_ids = tok(PROMPTS[r // 2])["input_ids"]
        generated = out[r, seq_len:-1].tolist()
        for k, p in enumerate(PREFIXES):
            want = next_logp(model, prefixed(tok, p, prompt_ids) + generated)[-1]
            np.testing.assert_allclose(proc.last_biased[k, r].numpy(), want, atol=1e-4)


def test_processor_rejects_mismatched_batches(gpt2):
    model, tok = gpt2
    enc = encode_left(tok, PROMPTS)
    v = model.config.vocab_size
    proc = SelfDebiasLogitsProcessor(model, tok, enc["input_ids"], enc["attention_mask"])
    with pytest.raises(ValueError, match="4 rows for 3 prompts"):
        proc(torch.zeros(4, enc["input_ids"].shape[1], dtype=torch.long), torch.zeros(4, v))
    with pytest.raises(ValueError, match="not the prompt_ids"):
        proc(enc["input_ids"].flip(0), torch.zeros(3, v))
    proc(enc["input_ids"], torch.zeros(3, v))
    with pytest.raises(ValueError, match="extend the rows"):  # a reordered row (what beam search does)
        proc(torch.cat([enc["input_ids"].flip(0), torch.zeros(3, 1, dtype=torch.long)], 1), torch.zeros(3, v))
    with pytest.raises(ValueError, match="prompt_ids"):
        SelfDebias().logits_processors(model, tok)


def check_log_probs(model, tok, texts, decay=DECAY):
    tok.padding_side = "right"
    enc = tok(texts, return_tensors="pt", padding=True)
    assert (enc["attention_mask"] == 0).any()
    got = SelfDebias(decay=decay).log_probs(model, tok, enc["input_ids"], enc["attention_mask"])
    assert got.shape == (*enc["input_ids"].shape, model.config.vocab_size) and got.dtype == torch.float32
    for b, text in enumerate(texts):
        ids = tok(text)["input_ids"]
        regular = next_logp(model, ids)
        biased = []
        for p in PREFIXES:
            full = next_logp(model, prefixed(tok, p, ids))
            offset = len(tok(p, add_special_tokens=False)["input_ids"])
            biased.append(full[offset: offset + len(ids)])  # row token t sits at offset + t
        biased = np.stack(biased)  # (K, len, V)
        for t in range(len(ids)):
            np.testing.assert_allclose(got[b, t].numpy(), formula_np(regular[t], biased[:, t], decay=decay),
                                       atol=1e-4)
    return got


def test_log_probs_equal_direct_computation(gpt2):
    model, tok = gpt2
    got = check_log_probs(model, tok, ["Hello world, how are you", "A", "The cat sat"], decay=1e3)
    tok.padding_side = "left"
    left = tok(["Hello world, how are you", "A"], return_tensors="pt", padding=True)
    with pytest.raises(ValueError, match="right-padded"):
        SelfDebias().log_probs(model, tok, left["input_ids"], left["attention_mask"])
    # and it is not the plain model
    tok.padding_side = "right"
    enc = tok(["A"], return_tensors="pt")
    plain = torch.log_softmax(model(**enc).logits, -1)
    assert not torch.allclose(got[1, :1], plain[0], atol=1e-3)


def test_llama_prefix_after_bos(llama):
    model, tok = llama
    ids = tok("Hello world")["input_ids"]
    assert ids[0] == tok.bos_token_id  # the tokenizer adds BOS: the prefix must go after it
    enc = encode_left(tok, PROMPTS)
    proc = SelfDebiasLogitsProcessor(model, tok, enc["input_ids"], enc["attention_mask"], decay=1e4)
    out = generate(model, tok, enc, [proc], max_new_tokens=5, do_sample=False)
    for prompt, got in zip(PROMPTS, out[:, enc["input_ids"].shape[1]:].tolist(), strict=True):
        want = greedy_reference(model, tok, prompt, 5, decay=1e4)
        assert until_eos(got, tok.eos_token_id) == until_eos(want, tok.eos_token_id)
    check_log_probs(model, tok, ["Hello world, how are you", "A"], decay=1e3)
