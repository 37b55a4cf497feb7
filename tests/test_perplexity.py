"""General-text loss / perplexity and forgetting (SPEC §7b, seed 002) on the tiny GPT-2."""

import math

import pytest
import torch

from raydebias.models import load_model
from raydebias.scoring.perplexity import forgetting, general_lm_loss, windows

TEXTS = [
    "The tower is 324 metres tall, about the same height as an 81-storey building.",
    "Its base is square, measuring 125 metres on each side.",
    "During its construction, the Eiffel Tower surpassed the Washington Monument to become the tallest structure.",
]


@pytest.fixture(scope="module")
def gpt2():
    torch.manual_seed(0)
    return load_model("tiny:gpt2", "causal_lm")


def _ids(tok, texts):
    return tok("\n\n".join(texts), return_tensors="pt")["input_ids"][0]


def _token_nll(model, ids):
    """NLL of ids[-1] given ids[:-1], by a separate forward pass on exactly that context."""
    with torch.no_grad():
        logits = model(input_ids=ids[None]).logits[0, -2].double()
    return float(-torch.log_softmax(logits, dim=-1)[ids[-1]])


def test_one_window_equals_direct_per_token_computation(gpt2):
    model, tok = gpt2
    ids = _ids(tok, TEXTS)
    assert 10 < len(ids) < 1024  # one window under the model's default context
    out = general_lm_loss(model, tok, TEXTS)
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids[None]).logits[0].double(), dim=-1)  # (N, V)
    per_token = -logp[torch.arange(len(ids) - 1), ids[1:]]
    assert out["tokens"] == len(ids) - 1
    assert out["loss"] == pytest.approx(float(per_token.mean()), rel=1e-5)
    assert out["ppl"] == pytest.approx(math.exp(out["loss"]), rel=1e-12)
    # and HF's own shifted-label loss agrees
    with torch.no_grad():
        hf = model(input_ids=ids[None], labels=ids[None]).loss
    assert out["loss"] == pytest.approx(float(hf), rel=1e-5)


def test_texts_are_joined_with_blank_lines(gpt2):
    model, tok = gpt2
    joined = general_lm_loss(model, tok, ["\n\n".join(TEXTS)])
    assert general_lm_loss(model, tok, TEXTS) == pytest.approx(joined)
    assert general_lm_loss(model, tok, [" ".join(TEXTS)])["tokens"] != joined["tokens"]


def test_overlapping_windows_score_each_token_once_with_its_context(gpt2):
    model, tok = gpt2
    ids = _ids(tok, TEXTS)
    block, stride = 12, 5
    out = general_lm_loss(model, tok, TEXTS, block_size=block, stride=stride)
    assert out["tokens"] == len(ids) - 1  # every token but the corpus's first, once
    # Brute force from the definition: the first window (ids[0:block]) scores tokens 1..block-1 with all the
    # context before them; a later window [b, b + block) scores the tokens the previous windows did not reach,
    # each with the context ids[b:t]. Rebuild each token's context and run the model on exactly that.
    expected, prev_end = [], 0
    for b in range(0, len(ids), stride):
        end = min(b + block, len(ids))
        for t in range(max(prev_end, 1), end):
            expected.append(_token_nll(model, ids[b:t + 1]))
        prev_end = end
        if end == len(ids):
            break
    assert len(expected) == len(ids) - 1
    assert out["loss"] == pytest.approx(sum(expected) / len(expected), rel=1e-5)
    # with less context per token than one big window: a different number
    assert out["loss"] != pytest.approx(general_lm_loss(model, tok, TEXTS)["loss"], rel=1e-6)


def test_non_overlapping_windows_skip_each_windows_first_token(gpt2):
    model, tok = gpt2
    ids = _ids(tok, TEXTS)
    block = 8
    out = general_lm_loss(model, tok, TEXTS, block_size=block)
    n_windows = math.ceil(len(ids) / block)
    last = len(ids) - (n_windows - 1) * block
    assert out["tokens"] == len(ids) - n_windows + (1 if last == 1 else 0)
    total, count = 0.0, 0
    for b in range(0, len(ids), block):
        w = ids[b:b + block]
        if len(w) < 2:
            continue
        with torch.no_grad():
            loss = model(input_ids=w[None], labels=w[None]).loss  # HF's mean over the window's len - 1 targets
        total += float(loss) * (len(w) - 1)
        count += len(w) - 1
    assert out["tokens"] == count
    assert out["loss"] == pytest.approx(total / count, rel=1e-5)


def test_batch_size_does_not_change_the_result(gpt2):
    model, tok = gpt2
    runs = [general_lm_loss(model, tok, TEXTS, block_size=10, stride=4, batch_size=bs) for bs in (1, 3, 64)]
    for other in runs[1:]:
        assert other["tokens"] == runs[0]["tokens"]
        assert other["loss"] == pytest.approx(runs[0]["loss"], rel=1e-6)


def test_windows_cover_each_target_once():
    for n, block, stride in [(50, 12, 5), (50, 10, 10), (41, 10, 10), (7, 10, 3), (30, 10, 1)]:
        targets = [t for _, end, first in windows(n, block, stride) for t in range(first, end)]
        assert targets == sorted(set(targets))  # no token scored twice
        for begin, end, first in windows(n, block, stride):
            assert begin < first < end <= begin + block
        if stride < block:
            assert targets == list(range(1, n))


def test_bad_inputs(gpt2):
    model, tok = gpt2
    with pytest.raises(ValueError, match="non-empty held-out corpus"):
        general_lm_loss(model, tok, [])
    with pytest.raises(ValueError, match="non-empty held-out corpus"):
        general_lm_loss(model, tok, ["", "  \n"])
    with pytest.raises(TypeError, match="one string"):
        general_lm_loss(model, tok, "a corpus as one string")
    with pytest.raises(ValueError, match="block_size"):
        general_lm_loss(model, tok, TEXTS, block_size=4096)
    with pytest.raises(ValueError, match="stride"):
        general_lm_loss(model, tok, TEXTS, block_size=8, stride=9)
    with pytest.raises(ValueError, match="batch_size"):
        general_lm_loss(model, tok, TEXTS, batch_size=0)


def test_forgetting():
    base = {"loss": 3.0, "ppl": math.exp(3.0), "tokens": 100}
    variant = {"loss": 3.5, "ppl": math.exp(3.5), "tokens": 100}
    out = forgetting(base, variant)
    assert out["delta_loss"] == pytest.approx(0.5)
    assert out["delta_ppl"] == pytest.approx(math.exp(3.5) - math.exp(3.0))
    assert out["ppl_ratio"] == pytest.approx(math.exp(0.5))
    with pytest.raises(ValueError, match="not comparable"):
        forgetting(base, {**variant, "tokens": 99})
    with pytest.raises(ValueError, match="lacks"):
        forgetting(base, {"loss": 3.0})


def test_forgetting_of_a_damaged_model(gpt2):
    """End to end: scaling the final layer norm's weight moves the loss; forgetting reports the move."""
    model, tok = gpt2
    base = general_lm_loss(model, tok, TEXTS)
    ln = model.transformer.ln_f.weight
    saved = ln.detach().clone()
    try:
        with torch.no_grad():
            ln.mul_(20.0)  # sharpen the random model's predictions: a different loss on the same tokens
        variant = general_lm_loss(model, tok, TEXTS)
    finally:
        with torch.no_grad():
            ln.copy_(saved)
    out = forgetting(base, variant)
    assert out["delta_loss"] == pytest.approx(variant["loss"] - base["loss"])
    assert abs(out["delta_loss"]) > 1e-3
    assert out["ppl_ratio"] == pytest.approx(math.exp(out["delta_loss"]))


def test_dropout_is_off_while_scoring_and_the_mode_is_restored(gpt2):
    model, tok = gpt2
    expected = general_lm_loss(model, tok, TEXTS)
    assert model.config.resid_pdrop > 0  # otherwise this test would not test anything
    model.train()
    try:
        assert general_lm_loss(model, tok, TEXTS)["loss"] == pytest.approx(expected["loss"], rel=1e-6)
        assert model.training
    finally:
        model.eval()


def test_log_probs_hook_scores_the_intervened_distribution(gpt2):
    """An intervention's log_probs (the Intervention.log_probs signature) replaces the model's distribution."""
    model, tok = gpt2
    calls = []

    def tempered(m, t, input_ids, attention_mask):  # a stand-in intervention: temperature 2 on the logits
        calls.append((tuple(input_ids.shape), bool(attention_mask.all())))
        return torch.log_softmax(m(input_ids=input_ids, attention_mask=attention_mask).logits.float() / 2, dim=-1)

    out = general_lm_loss(model, tok, TEXTS, block_size=16, stride=16, batch_size=4, log_probs=tempered)
    ids = _ids(tok, TEXTS)
    total, count = 0.0, 0
    for b in range(0, len(ids), 16):
        w = ids[b:b + 16]
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=w[None]).logits[0].double() / 2, dim=-1)
        total += float(-logp[torch.arange(len(w) - 1), w[1:]].sum())
        count += len(w) - 1
    assert out["tokens"] == count
    assert out["loss"] == pytest.approx(total / count, rel=1e-5)
    assert calls and all(full for _, full in calls) and calls[0] == ((4, 16), True)
    assert out["loss"] != pytest.approx(general_lm_loss(model, tok, TEXTS, block_size=16)["loss"], rel=1e-4)
    with pytest.raises(ValueError, match="log_probs returned shape"):
        general_lm_loss(model, tok, TEXTS, log_probs=lambda m, t, i, a: torch.zeros(1, 3))
