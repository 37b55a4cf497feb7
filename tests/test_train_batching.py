"""Groups -> tensors (SPEC §3-§5): entity pooling masks, fallback, truncation, caps and re-sampling."""

import functools

import pytest
import torch
from support import ents, sample_rows

from raydebias.train.batching import Collator, entity_token_mask, sample_candidates


@functools.cache
def tok():
    from raydebias.models import load_tokenizer

    t = load_tokenizer("tiny:gpt2")
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


def test_entity_token_mask_marks_exactly_the_tokens_of_each_entity():
    t = tok()
    text = "Alice moved to Paris last May"
    ents_ = [{"start": 0, "end": 5, "label": "PERSON", "text": "Alice"},
             {"start": 15, "end": 20, "label": "GPE", "text": "Paris"}]
    enc = t(" " + text, add_special_tokens=False, return_offsets_mapping=True)
    mask = entity_token_mask(enc["offset_mapping"], ents_, shift=1)
    marked = "".join(t.decode([i]) for i, m in zip(enc["input_ids"], mask, strict=True) if m)
    assert marked.replace(" ", "") == "AliceParis"
    assert sum(mask) < len(mask)  # "moved to ... last May" is not pooled


def test_pool_mask_uses_entity_tokens_and_falls_back_to_the_whole_summary():
    row = sample_rows(1)[0]
    g = group(row)
    c = Collator(tok(), max_length=512)
    b = c([g], epoch=0)
    ref_ents = g["positives"][0]["entities"]
    assert ref_ents, "the sample summary should contain entities"
    ref = 0  # the reference is the first candidate
    summary_tokens = b.attention_mask[ref].sum() - (b.labels[0] != -100).sum()  # = prompt tokens
    pooled = b.pool_mask[ref].nonzero().flatten()
    assert pooled.min() >= summary_tokens  # never a prompt token
    text = tok().decode(b.input_ids[ref, pooled])
    for e in ref_ents:
        assert e["text"].split()[0] in text
    # a backtranslation without entities pools every summary token (labels are only on the reference)
    bt = 1
    n_bt_summary = len(tok()(" " + g["positives"][1]["text"], add_special_tokens=False)["input_ids"])
    assert int(b.pool_mask[bt].sum()) == n_bt_summary


def test_labels_cover_reference_summary_and_eos_only():
    row = sample_rows(1)[0]
    c = Collator(tok(), max_length=512)
    b = c([group(row)], epoch=0)
    lab = b.labels[0][b.labels[0] != -100]
    assert lab[-1].item() == tok().eos_token_id
    assert tok().decode(lab[:-1]).strip() == row["summary"].strip()
    assert b.lm_rows.tolist() == [0]


def test_long_prompts_are_cut_in_the_middle_never_the_summary():
    row = sample_rows(1)[0]
    row = {**row, "post": row["post"] * 20}
    n_summary = len(tok()(" " + row["summary"], add_special_tokens=False)["input_ids"])
    max_length = 2 * n_summary + 24  # the summary fits in its half; the 20x post does not fit at all
    c = Collator(tok(), max_length=max_length)
    b = c([group(row)], epoch=0)
    assert b.input_ids.shape[1] <= max_length
    lab = b.labels[0][b.labels[0] != -100]
    assert tok().decode(lab[:-1]).strip() == row["summary"].strip()  # the whole summary is kept
    first = int(b.attention_mask[0].sum())
    prompt = tok().decode(b.input_ids[0, : first - len(lab)])
    assert prompt.startswith("SUBREDDIT:") and prompt.rstrip().endswith("TL;DR:")


def test_batch_of_whole_groups_with_flags():
    rows = sample_rows(3)
    gs = [group(rows[0]), group(rows[1], n_neg=0), {**group(rows[2], n_bt=0)}]
    b = Collator(tok(), max_length=512)(gs, epoch=0)
    assert b.group.tolist() == [0] * 7 + [1] * 3 + [2]  # the 3rd group has one positive: reference only
    assert b.positive.tolist() == [True] * 3 + [False] * 4 + [True] * 3 + [True]
    assert b.group_toxic.tolist() == [True, False, False]
    assert b.lm_rows.tolist() == [0, 7, 10]
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


@pytest.mark.parametrize("name", ["tiny:gpt2", "tiny:gpt-neo"])
def test_model_forward_shapes_and_blocks(name):
    from raydebias.models import load_model
    from raydebias.train.model import ContrastiveLM, transformer_blocks

    lm, t = load_model(name, "causal_lm", dtype=torch.float32)
    assert len(transformer_blocks(lm)) == lm.config.num_hidden_layers
    m = ContrastiveLM(lm, proj_dim=16)
    b = Collator(t, max_length=128)([group(r) for r in sample_rows(2)], epoch=0)
    reps, logits = m(b.input_ids, b.attention_mask, b.pool_mask, b.lm_rows)
    assert reps.shape == (b.input_ids.shape[0], 16)
    assert torch.allclose(reps.norm(dim=-1), torch.ones(reps.shape[0]), atol=1e-5)
    assert logits.shape == (2, b.input_ids.shape[1], lm.config.vocab_size)


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
