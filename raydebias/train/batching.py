"""Augmented rows (whole groups) -> training tensors (SPEC §3-§5). Pure: no Ray, no distributed.

A batch is made of whole groups: one source row = one group = its positives (the reference first, then
backtranslations) and negatives. Per group, positives/negatives beyond the preset's caps (Table 12) are
sampled, with a different sample each epoch (CLIFF rotates negatives), deterministically from
(seed, epoch, source id) so that a resumed run sees the same sample. A group with fewer than two
positives cannot form a positive pair: only its reference is encoded, for L_ce (SPEC §4).

One tokenisation for training and generation (:func:`encode_example`): a candidate is the prompt's
ids EXACTLY as generation conditions on them (``tokenizer(prompt)``, the tokenizer's own special tokens:
<s> for Llama, none for GPT-2/Phi; see ``raydebias.generation.HFGenerator``), then the candidate's ids
as a CONTINUATION of that prompt (the tokens of ``prompt + " " + candidate`` after the prompt's, i.e.
what the model emits when it generates the candidate), then eos; right-padded. When that exceeds
``max_length``, the PROMPT is cut (its middle: the leading special tokens and the head with
subreddit/title come first, the "TL;DR:" cue stays last), never the summary; a summary longer than half
of ``max_length`` is itself cut to that half.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from raydebias import schema as S
from raydebias.prompts import PROMPT_END, format_prompt

REFERENCE_OP, TOXIC_OP = "reference", "toxic_rewrite"
POSITIVES, NEGATIVES = "positives", "negatives"
_CUE = "\n" + PROMPT_END  # the cue every prompt ends with (SPEC §1)


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


def entity_token_mask(offsets: Sequence[tuple[int, int]], entities: Sequence[dict] | None, shift: int = 0) -> list[int]:
    """1 for tokens overlapping a named-entity character span, else 0.

    ``offsets`` are the tokens' character spans in the ENCODED text, which is the candidate text with
    ``shift`` characters prepended; entity spans are in the candidate text. (:func:`encode_continuation`
    already gives spans relative to the candidate: shift 0; its first token may start at -1, the space.)
    """
    spans = [(e["start"] + shift, e["end"] + shift) for e in entities or []]
    return [int(b > a and any(a < e and b > s for s, e in spans)) for a, b in offsets]


@dataclass(frozen=True)
class Prompt:
    """A prompt as generation sees it: ``ids = tokenizer(text)["input_ids"]`` (its own special tokens).

    ``n_special``: leading special tokens (Llama's <s>), kept first when the prompt is cut;
    ``n_cue``: trailing tokens that hold the "\\nTL;DR:" cue (0 when the text does not end with it),
    kept last.
    """

    text: str
    ids: list[int]
    n_special: int
    n_cue: int


def encode_prompt(tokenizer: Any, text: str) -> Prompt:
    """Tokenise a prompt exactly as ``HFGenerator`` does (``tokenizer(prompts, padding=True, ...)``:
    default special tokens), with the counts :meth:`Collator.fit` needs to cut it."""
    enc = tokenizer(text, return_offsets_mapping=True)
    ids, offsets = list(enc["input_ids"]), enc["offset_mapping"]
    special = set(tokenizer.all_special_ids)
    n_special = 0
    while n_special < len(ids) and ids[n_special] in special:
        n_special += 1
    n_cue = 0
    if text.endswith(_CUE):
        cue_start = len(text) - len(_CUE)
        while n_cue < len(ids) - n_special and offsets[len(ids) - 1 - n_cue][1] > cue_start:
            n_cue += 1
    return Prompt(text, ids, n_special, n_cue)


def encode_continuation(tokenizer: Any, prompt: Prompt, text: str,
                        full: dict | None = None) -> tuple[list[int], list[tuple[int, int]]]:
    """``text``'s token ids as a continuation of ``prompt``, and their character spans in ``text``.

    The rule: encode ``prompt.text + " " + text`` (default special tokens, as generation encodes the
    prompt); when ``prompt.ids`` is a prefix of that encoding (always, for the kit's and the paper's
    tokenizers on prompts ending in "TL;DR:"), the continuation is the rest. That is the tokenisation
    a model emits after the prompt: no separate encoding of ``" " + text``, so no spurious leading "▁"
    (SentencePiece) and no second <s>.

    Fallback, when a token of the full encoding straddles the prompt's end (a merge across the
    boundary, e.g. ":" + " " -> ": "): generation conditions on ``prompt.ids`` regardless, so those
    stay; the continuation keeps every token of the full encoding that starts after the straddling one,
    preceded by the part of the straddling token(s) beyond the prompt, re-tokenised on its own by the
    tokenizer's model (in its token alphabet, so ``decode(prompt.ids + ids)`` is still
    ``prompt.text + " " + text``). Its tokens get the straddling span. A ValueError if the prompt's
    tokens are not a prefix of the full encoding even as strings (a tokenizer that appends </s>).

    ``full``: the tokenizer's output for ``prompt.text + " " + text`` with ``return_offsets_mapping``
    when the caller batched it. Spans are relative to ``text``: the token holding the separating space
    may start at -1.
    """
    if full is None:
        full = tokenizer(prompt.text + " " + text, return_offsets_mapping=True)
    ids, offsets = list(full["input_ids"]), [tuple(o) for o in full["offset_mapping"]]
    base = len(prompt.text) + 1
    n = len(prompt.ids)
    if ids[:n] == prompt.ids:
        tail_ids, tail_offsets = ids[n:], offsets[n:]
    else:
        tail_ids, tail_offsets = _continuation_after_merge(tokenizer, prompt, ids, offsets)
    return tail_ids, [(a - base, b - base) for a, b in tail_offsets]


def _continuation_after_merge(tokenizer: Any, prompt: Prompt, ids: list[int],
                              offsets: list[tuple[int, int]]) -> tuple[list[int], list[tuple[int, int]]]:
    """The fallback of :func:`encode_continuation` (a token straddles the prompt's end)."""
    head = "".join(tokenizer.convert_ids_to_tokens(prompt.ids))
    pieces = tokenizer.convert_ids_to_tokens(ids)
    j, covered = 0, 0
    while j < len(pieces) and covered < len(head):
        covered += len(pieces[j])
        j += 1
    joined = "".join(pieces[:j])
    if not joined.startswith(head):
        raise ValueError(
            f"cannot encode a candidate as a continuation of its prompt with {type(tokenizer).__name__}: the "
            f"prompt's tokens {head[-40:]!r} are not a prefix of the tokens of prompt + candidate "
            f"{joined[-40:]!r} (does the tokenizer append a special token such as </s>?)")
    fragment = joined[len(head):]
    model = tokenizer.backend_tokenizer.model
    frag_ids = [t.id for t in model.tokenize(fragment)] if fragment else []
    span = (len(prompt.text), offsets[j - 1][1])
    return frag_ids + ids[j:], [span] * len(frag_ids) + offsets[j:]


def encode_example(tokenizer: Any, prompt_text: str, summary_text: str) -> tuple[list[int], list[int]]:
    """(prompt_ids, summary_ids) as training uses them, before any cut and without eos: the prompt as
    generation tokenises it, the summary as its continuation (:func:`encode_continuation`)."""
    prompt = encode_prompt(tokenizer, prompt_text)
    return list(prompt.ids), encode_continuation(tokenizer, prompt, summary_text)[0]


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

    def prompt(self, row: dict[str, Any]) -> Prompt:
        return encode_prompt(self.tok, format_prompt(row[S.POST], row.get(S.SUBREDDIT), row.get(S.TITLE)))

    def fit(self, prompt: list[int], n_summary: int, n_special: int = 0, n_cue: int = 0) -> list[int]:
        """Cut the middle of the prompt so that prompt + summary + eos <= max_length.

        The first ``n_special`` tokens (<s>) stay first and the last ``n_cue`` ("TL;DR:") stay last; the
        head after the special tokens (subreddit, title, start of the post) fills the rest.
        """
        budget = max(self.max_length - n_summary - 1, 0)
        if len(prompt) <= budget:
            return prompt
        head = prompt[: min(n_special, budget)]
        room = budget - len(head)
        tail = min(n_cue, room)
        middle = room - tail
        return head + prompt[len(head): len(head) + middle] + (prompt[len(prompt) - tail:] if tail else [])

    def encode(self, prompt: Prompt, text: str, entities: Sequence[dict] | None, full: dict | None = None):
        ids, offsets = encode_continuation(self.tok, prompt, text, full)
        cap = self.max_length // 2
        ids, offsets = ids[:cap], offsets[:cap]
        ent = entity_token_mask(offsets, entities)
        summary_mask = ent if any(ent) else [1] * len(ids)  # fall back to every summary token (eq. 5)
        p = self.fit(prompt.ids, len(ids), prompt.n_special, prompt.n_cue)
        return p + ids + [self.eos], [0] * len(p) + summary_mask + [0], len(p)

    def __call__(self, rows: Sequence[dict[str, Any]], epoch: int) -> Batch:
        seqs, pools, prompt_lens, group, positive, ops, lm_rows, toxic = [], [], [], [], [], [], [], []
        for g, row in enumerate(rows):
            pos, neg = sample_candidates(row, self.max_positives, self.max_negatives, self.seed, epoch)
            prompt = self.prompt(row)
            toxic.append(any(c["op"] == TOXIC_OP for c in neg))
            cands = pos + neg
            # One tokenizer call per group for every prompt + " " + candidate (fast tokenizers batch it).
            fulls = self.tok([prompt.text + " " + c["text"] for c in cands], return_offsets_mapping=True)
            for k, c in enumerate(cands):
                full = {"input_ids": fulls["input_ids"][k], "offset_mapping": fulls["offset_mapping"][k]}
                ids, pm, plen = self.encode(prompt, c["text"], c.get("entities"), full)
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


__all__ = ["Batch", "Collator", "Prompt", "encode_continuation", "encode_example", "encode_prompt",
           "entity_token_mask", "sample_candidates"]
