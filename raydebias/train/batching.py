"""Augmented rows (whole groups) -> training tensors (SPEC §3-§5). Pure: no Ray, no distributed.

A batch is made of whole groups: one source row = one group = its positives (the reference first, then
backtranslations) and negatives. Per group, positives/negatives beyond the preset's caps (Table 12) are
sampled, with a different sample each epoch (CLIFF rotates negatives), deterministically from
(seed, epoch, source id) so that a resumed run sees the same sample. A group with fewer than two
positives cannot form a positive pair: only its reference is encoded, for L_ce (SPEC §4).

Every candidate is encoded as ``prompt + " " + candidate + eos``, right-padded. When that exceeds
``max_length``, the PROMPT is cut (its middle: the head with subreddit/title and the "TL;DR:" cue are
kept), never the summary; a summary longer than half of ``max_length`` is itself cut to that half.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from raydebias import schema as S
from raydebias.prompts import format_prompt

REFERENCE_OP, TOXIC_OP = "reference", "toxic_rewrite"
POSITIVES, NEGATIVES = "positives", "negatives"
_CUE = "\nTL;DR:"


@dataclass
class Batch:
    """One training batch. N candidates, T tokens, G groups, R reference rows."""

    input_ids: Tensor       # (N, T) long
    attention_mask: Tensor  # (N, T) long
    pool_mask: Tensor       # (N, T) float: entity tokens of the summary, else all summary tokens (eq. 5)
    labels: Tensor          # (R, T) long: the reference summary + eos, -100 elsewhere (L_ce)
    lm_rows: Tensor         # (R,) long: rows of input_ids holding each group's reference
    group: Tensor           # (N,) long in [0, G)
    positive: Tensor        # (N,) bool
    group_toxic: Tensor     # (G,) bool: the group's sampled negatives include a toxic_rewrite
    ids: list[str] = field(default_factory=list)  # (G,) source ids
    ops: list[str] = field(default_factory=list)  # (N,) op of each candidate

    @property
    def n_tokens(self) -> int:
        return int(self.attention_mask.sum())

    def to(self, device: torch.device | str) -> Batch:
        moved = {k: (v.to(device) if isinstance(v, Tensor) else v) for k, v in self.__dict__.items()}
        return Batch(**moved)


def sample_candidates(row: dict[str, Any], max_positives: int | None, max_negatives: int | None,
                      seed: int, epoch: int) -> tuple[list[dict], list[dict]]:
    """The positives (reference first) and negatives of one group for this epoch, capped."""
    pos = list(row.get(POSITIVES) or [])
    neg = list(row.get(NEGATIVES) or [])
    ref = [c for c in pos if c["op"] == REFERENCE_OP]
    if not ref:  # augmented rows always carry their reference; tolerate hand-made rows without the op
        ref = [{"text": row[S.SUMMARY], "op": REFERENCE_OP, "positive": True, "entities": None}]
    others = [c for c in pos if c["op"] != REFERENCE_OP]
    rng = random.Random(f"{seed}:{epoch}:{row[S.ID]}")
    if max_positives is not None and len(others) > max_positives - 1:
        others = rng.sample(others, max_positives - 1)
    if max_negatives is not None and len(neg) > max_negatives:
        neg = rng.sample(neg, max_negatives)
    pos = ref[:1] + others
    if len(pos) < 2:  # no positive pair possible: L_ce only
        return pos, []
    return pos, neg


def entity_token_mask(offsets: Sequence[tuple[int, int]], entities: Sequence[dict] | None, shift: int) -> list[int]:
    """1 for tokens overlapping a named-entity character span, else 0.

    ``offsets`` are the tokens' character spans in the ENCODED text, which is the candidate text with
    ``shift`` characters prepended (the separating space); entity spans are in the candidate text.
    """
    spans = [(e["start"] + shift, e["end"] + shift) for e in entities or []]
    return [int(b > a and any(a < e and b > s for s, e in spans)) for a, b in offsets]


class Collator:
    """Tokenises groups into a :class:`Batch` (owns the tokenizer and the length budget)."""

    def __init__(self, tokenizer: Any, max_length: int, max_positives: int | None = None,
                 max_negatives: int | None = None, seed: int = 0):
        self.tok = tokenizer
        self.max_length = max_length
        self.max_positives, self.max_negatives, self.seed = max_positives, max_negatives, seed
        self.eos = tokenizer.eos_token_id
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos
        if self.eos is None:
            raise ValueError(f"tokenizer {type(tokenizer).__name__} has no eos token: the LM cannot learn to stop")
        self.cue = tokenizer(_CUE, add_special_tokens=False)["input_ids"]

    def prompt_ids(self, row: dict[str, Any]) -> list[int]:
        text = format_prompt(row[S.POST], row.get(S.SUBREDDIT), row.get(S.TITLE))
        return self.tok(text, add_special_tokens=False)["input_ids"]

    def fit(self, prompt: list[int], n_summary: int) -> list[int]:
        """Cut the middle of the prompt so that prompt + summary + eos <= max_length."""
        budget = self.max_length - n_summary - 1
        if len(prompt) <= budget:
            return prompt
        tail = min(len(self.cue), budget // 2)
        return prompt[: budget - tail] + (prompt[-tail:] if tail else [])

    def encode(self, prompt: list[int], text: str, entities: Sequence[dict] | None):
        enc = self.tok(" " + text, add_special_tokens=False, return_offsets_mapping=True)
        ids, offsets = enc["input_ids"], enc["offset_mapping"]
        cap = self.max_length // 2
        ids, offsets = ids[:cap], offsets[:cap]
        ent = entity_token_mask(offsets, entities, shift=1)
        summary_mask = ent if any(ent) else [1] * len(ids)  # fall back to every summary token (eq. 5)
        p = self.fit(prompt, len(ids))
        return p + ids + [self.eos], [0] * len(p) + summary_mask + [0], len(p)

    def __call__(self, rows: Sequence[dict[str, Any]], epoch: int) -> Batch:
        seqs, pools, prompt_lens, group, positive, ops, lm_rows, toxic = [], [], [], [], [], [], [], []
        for g, row in enumerate(rows):
            pos, neg = sample_candidates(row, self.max_positives, self.max_negatives, self.seed, epoch)
            prompt = self.prompt_ids(row)
            toxic.append(any(c["op"] == TOXIC_OP for c in neg))
            for k, c in enumerate(pos + neg):
                ids, pm, plen = self.encode(prompt, c["text"], c.get("entities"))
                if k == 0:
                    lm_rows.append(len(seqs))
                seqs.append(ids)
                pools.append(pm)
                prompt_lens.append(plen)
                group.append(g)
                positive.append(k < len(pos))
                ops.append(c["op"])
        t = max(len(s) for s in seqs)
        n = len(seqs)
        input_ids = torch.full((n, t), self.pad, dtype=torch.long)
        attention = torch.zeros((n, t), dtype=torch.long)
        pool_mask = torch.zeros((n, t), dtype=torch.float32)
        for i, (s, pm) in enumerate(zip(seqs, pools, strict=True)):
            input_ids[i, : len(s)] = torch.tensor(s)
            attention[i, : len(s)] = 1
            pool_mask[i, : len(pm)] = torch.tensor(pm, dtype=torch.float32)
        labels = torch.full((len(lm_rows), t), -100, dtype=torch.long)
        for r, i in enumerate(lm_rows):
            plen, length = prompt_lens[i], int(attention[i].sum())
            labels[r, plen:length] = input_ids[i, plen:length]  # summary tokens + eos
        return Batch(input_ids=input_ids, attention_mask=attention, pool_mask=pool_mask, labels=labels,
                     lm_rows=torch.tensor(lm_rows, dtype=torch.long), group=torch.tensor(group, dtype=torch.long),
                     positive=torch.tensor(positive, dtype=torch.bool), group_toxic=torch.tensor(toxic),
                     ids=[r[S.ID] for r in rows], ops=ops)

    def filler(self) -> Batch:
        """A tiny valid batch for a rank whose shard ran out while others still train (its loss is x0)."""
        row = {S.ID: "__filler__", S.POST: "filler post", S.SUMMARY: "a filler summary",
               POSITIVES: [{"text": "a filler summary", "op": REFERENCE_OP, "entities": None},
                           {"text": "another filler summary", "op": "backtranslate", "entities": None}],
               NEGATIVES: []}
        return self([row], epoch=0)


__all__ = ["Batch", "Collator", "entity_token_mask", "sample_candidates"]
