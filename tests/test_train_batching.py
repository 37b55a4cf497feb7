"""Groups -> tensors (SPEC §3-§5): entity pooling masks, fallback, truncation, caps and re-sampling.

The candidate encoding itself (training == generation tokenisation) is tested in test_tokenisation.py;
here what the Collator builds from it, on the three causal-LM tokenizer families of the presets:
byte-level BPE without BOS (gpt2, phi) and SentencePiece BPE that adds <s> (llama).
"""

import functools

import pytest
import torch
from support import ents, sample_rows

from raydebias.train.batching import (
    Collator,
    encode_continuation,
    encode_prompt,
    entity_token_mask,
    sample_candidates,
)

CAUSAL = ["tiny:gpt2", "tiny:phi", "tiny:llama"]


@functools.cache
def tok(name="tiny:gpt2"):
    from raydebias.models import load_tokenizer

    t = load_tokenizer(name)
    t.pad_token = t.pad_token or t.eos_token
    return t


def cand(text, op, positive, entities=None):
    return {"text": text, "op": op, "positive": positive, "toxicity": 0.0, "entities": entities, "info": None}


def group(row, n_bt=2, n_neg=4):
    pos = [cand(row["summary"], "reference", True, ents(row["summary"]))]
    pos += [cand(f"{row['summary']} variant {i}", "backtranslate", True) for i in range(n_bt)]
    ops = ["toxic_rewrite", "entity_swap", "mask_fill", "low_confidence", "regenerate"]
    neg = [cand(f"negative number {i} about nothing", ops[i % len(ops)], False) for i in range(n_neg)]
    return {**row, "positives": pos, "negatives": neg}


def n_prompt_tokens(b, i=0):
    """Prompt tokens of reference row ``i`` of the batch: its labels start right after them."""
    return int((b.labels[i] != -100).nonzero().flatten()[0])


@pytest.mark.parametrize("name", CAUSAL)
def test_entity_token_mask_marks_exactly_the_tokens_of_each_entity(name):
    # Spans come from the encoding of the summary AS A CONTINUATION of the prompt (the old convention
    # encoded " " + summary on its own, which for SentencePiece is not what follows a prompt).
    t = tok(name)
    text = "Alice moved to Paris last May"
    ents_ = [{"start": 0, "end": 5, "label": "PERSON", "text": "Alice"},
             {"start": 15, "end": 20, "label": "GPE", "text": "Paris"}]
    ids, offsets = encode_continuation(t, encode_prompt(t, "POST: a post\nTL;DR:"), text)
    mask = entity_token_mask(offsets, ents_)
    marked = "".join(t.decode([i]) for i, m in zip(ids, mask, strict=True) if m)
    assert marked.replace(" ", "") == "AliceParis"
    assert sum(mask) < len(mask)  # "moved to ... last May" is not pooled
    assert mask[0] == 1 and mask[-1] == 0  # " Alice" (its span starts at the space, -1) ... "May"


@pytest.mark.parametrize("shared", [True, False])
@pytest.mark.parametrize("name", CAUSAL)
def test_pool_mask_uses_entity_tokens_and_falls_back_to_the_whole_summary(name, shared):
    row = sample_rows(1)[0]
    g = group(row)
    c = Collator(tok(name), max_length=512, shared_prompt=shared)
    b = c([g], epoch=0)
    ref_ents = g["positives"][0]["entities"]
    assert ref_ents, "the sample summary should contain entities"
    ref = 0  # the reference is the first candidate
    pooled = b.pool_mask[ref].nonzero().flatten()
    assert pooled.min() >= n_prompt_tokens(b)  # never a prompt token
    text = tok(name).decode(b.input_ids[b.pool_row[ref], pooled])
    for e in ref_ents:
        assert e["text"].split()[0] in text
    # a backtranslation without entities pools every summary token (labels are only on the reference);
    # its summary tokens are those of its continuation encoding
    bt = 1
    prompt = c.prompt(row)
    n_bt_summary = len(encode_continuation(tok(name), prompt, g["positives"][1]["text"])[0])
    assert int(b.pool_mask[bt].sum()) == n_bt_summary
    if shared:  # its tokens in the group's row: a segment of its own, without eos
        assert int((b.segment[0] == 2).sum()) == n_bt_summary and b.pool_row.tolist() == [0] * 7
    else:
        assert int(b.attention_mask[bt].sum()) == len(prompt.ids) + n_bt_summary + 1


@pytest.mark.parametrize("name", CAUSAL)
def test_labels_cover_reference_summary_and_eos_only(name):
    t = tok(name)
    row = sample_rows(1)[0]
    c = Collator(t, max_length=512)
    b = c([group(row)], epoch=0)
    lab = b.labels[0][b.labels[0] != -100]
    assert lab[-1].item() == t.eos_token_id
    assert t.decode(lab[:-1]).strip() == row["summary"].strip()
    assert b.lm_rows.tolist() == [0]
    # the row is exactly: the prompt as generation tokenises it, then the labels
    prompt = c.prompt(row)
    assert b.input_ids[0, : len(prompt.ids)].tolist() == t(prompt.text)["input_ids"]
    assert n_prompt_tokens(b) == len(prompt.ids)


@pytest.mark.parametrize("shared", [True, False])
@pytest.mark.parametrize("name", CAUSAL)
def test_long_prompts_are_cut_in_the_middle_never_the_summary(name, shared):
    t = tok(name)
    row = sample_rows(1)[0]
    row = {**row, "post": row["post"] * 20}
    c = Collator(t, max_length=512)  # max_length is set below, once the summary length is known
    prompt = c.prompt(row)
    n_summary = len(encode_continuation(t, prompt, row["summary"])[0])
    max_length = 2 * n_summary + 24  # the summary fits in its half; the 20x post does not fit at all
    c = Collator(t, max_length=max_length, shared_prompt=shared)
    b = c([group(row)], epoch=0)
    # no candidate sees more than max_length positions (a shared row holds several candidates)
    assert (b.input_ids.shape[1] if not shared else int(b.position_ids.max()) + 1) <= max_length
    lab = b.labels[0][b.labels[0] != -100]
    assert t.decode(lab[:-1]).strip() == row["summary"].strip()  # the whole summary is kept
    cut = b.input_ids[0, : n_prompt_tokens(b)].tolist()
    assert len(cut) < len(prompt.ids)
    # special tokens (Llama's <s>) stay first, the "TL;DR:" cue's tokens stay last
    assert cut[: prompt.n_special] == prompt.ids[: prompt.n_special]
    assert prompt.n_cue > 0 and cut[-prompt.n_cue:] == prompt.ids[-prompt.n_cue:]
    assert (t.bos_token_id in cut) == (prompt.n_special > 0) and cut.count(t.bos_token_id) <= 1
    text = t.decode(cut, skip_special_tokens=True)
    assert text.startswith("SUBREDDIT:") and text.rstrip().endswith("TL;DR:")


def test_fit_keeps_special_tokens_first_and_the_cue_last():
    c = Collator(tok(), max_length=11)  # budget for the prompt: 11 - n_summary - 1 (eos)
    prompt = [1, 10, 11, 12, 13, 14, 15, 20, 21]  # <s>, 6 body tokens, a 2-token cue
    assert c.fit(prompt, n_summary=1, n_special=1, n_cue=2) == prompt  # 9 + 1 + eos fit
    assert c.fit(prompt, n_summary=5, n_special=1, n_cue=2) == [1, 10, 11, 20, 21]
    assert c.fit(prompt, n_summary=7, n_special=1, n_cue=2) == [1, 20, 21]
    assert c.fit(prompt, n_summary=8, n_special=1, n_cue=2) == [1, 21]  # what room is left: the cue's end
    assert c.fit(prompt, n_summary=5) == [1, 10, 11, 12, 13]  # nothing to keep: the head only


@pytest.mark.parametrize("shared", [True, False])
def test_batch_of_whole_groups_with_flags(shared):
    rows = sample_rows(3)
    gs = [group(rows[0]), group(rows[1], n_neg=0), {**group(rows[2], n_bt=0)}]
    b = Collator(tok(), max_length=512, shared_prompt=shared)(gs, epoch=0)
    assert b.group.tolist() == [0] * 7 + [1] * 3 + [2]  # the 3rd group has one positive: reference only
    assert b.positive.tolist() == [True] * 3 + [False] * 4 + [True] * 3 + [True]
    assert b.group_toxic.tolist() == [True, False, False]
    assert b.lm_rows.tolist() == ([0, 1, 2] if shared else [0, 7, 10])
    assert b.pool_row.tolist() == (b.group.tolist() if shared else list(range(11)))
    assert b.ids == [r["id"] for r in rows]


def test_caps_keep_the_reference_and_resample_negatives_each_epoch():
    row = group(sample_rows(1)[0], n_bt=4, n_neg=10)
    per_epoch = []
    for epoch in range(4):
        pos, neg = sample_candidates(row, max_positives=3, max_negatives=3, seed=0, epoch=epoch)
        assert len(pos) == 3 and pos[0]["op"] == "reference" and len(neg) == 3
        per_epoch.append(tuple(c["text"] for c in neg))
        again = sample_candidates(row, 3, 3, seed=0, epoch=epoch)[1]
        assert tuple(c["text"] for c in again) == per_epoch[-1]  # deterministic: resume sees the same
    assert len(set(per_epoch)) > 1
    pos, neg = sample_candidates(row, None, None, seed=0, epoch=0)
    assert len(pos) == 5 and len(neg) == 10


def test_filler_batch_is_valid():
    b = Collator(tok(), max_length=64).filler()
    assert b.positive.sum() == 2 and b.lm_rows.numel() == 1


@pytest.mark.parametrize("shared", [True, False])
@pytest.mark.parametrize("name", ["tiny:gpt2", "tiny:gpt-neo", "tiny:phi", "tiny:llama"])
def test_model_forward_shapes_and_blocks(name, shared):
    from raydebias.models import load_model
    from raydebias.train.model import ContrastiveLM, transformer_blocks

    lm, t = load_model(name, "causal_lm", dtype=torch.float32)
    assert len(transformer_blocks(lm)) == lm.config.num_hidden_layers
    m = ContrastiveLM(lm, proj_dim=16)
    b = Collator(t, max_length=128, shared_prompt=shared)([group(r) for r in sample_rows(2)], epoch=0)
    reps, logits = m(**b.model_inputs())
    n = b.group.numel()  # 2 groups of 1 reference + 2 backtranslations + 4 negatives
    assert n == 14 and b.input_ids.shape[0] == (2 if shared else n)
    assert reps.shape == (n, 16)
    assert torch.allclose(reps.norm(dim=-1), torch.ones(n), atol=1e-5)
    # logits only where L_ce reads them: one per reference summary token + eos
    assert logits.shape == (b.ce_target.numel(), lm.config.vocab_size)
    assert b.ce_target.numel() == int((b.labels != -100).sum())


def test_pool_is_the_normalised_masked_mean():
    from raydebias.train.model import pool

    z = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [5.0, 5.0]]])
    r = pool(z, torch.tensor([[1.0, 1.0, 0.0]]))
    assert torch.allclose(r, torch.tensor([[2 ** -0.5, 2 ** -0.5]]))


def test_head_round_trips_through_safetensors(tmp_path):
    from raydebias.train.model import ProjectionHead, load_head, save_head

    h = ProjectionHead(8, 4)
    save_head(h, tmp_path, 8, 4)
    h2 = load_head(tmp_path)
    x = torch.randn(3, 8)
    assert torch.allclose(h(x), h2(x))
