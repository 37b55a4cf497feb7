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
    """One training batch. B rows of T tokens holding N candidates of G groups; R = G reference rows.

    Per-candidate layout: B = N, row n is candidate n, ``position_ids`` and ``segment`` are None.
    Shared-prompt layout: B = G, row g is group g's prompt then its candidates; ``segment`` says which
    (0 prompt, k >= 1 the group's k-th candidate, -1 padding) and ``position_ids`` restart after the
    prompt for every candidate.
    """

    input_ids: Tensor       # (B, T) long
    attention_mask: Tensor  # (B, T) long: 1 on real tokens
    pool_mask: Tensor       # (N, T) float: entity tokens of the summary in row pool_row[n], else all its tokens (eq. 5)
    pool_row: Tensor        # (N,) long: the row of input_ids holding candidate n
    labels: Tensor          # (R, T) long: the reference summary + eos in row lm_rows[r], -100 elsewhere (L_ce)
    lm_rows: Tensor         # (R,) long: rows of input_ids holding each group's reference
    ce_index: Tensor        # (M,) long: flat (row * T + t) positions whose next token is labelled
    ce_target: Tensor       # (M,) long: that next token
    group: Tensor           # (N,) long in [0, G)
    positive: Tensor        # (N,) bool
    group_toxic: Tensor     # (G,) bool: the group's sampled negatives include a toxic_rewrite
    position_ids: Tensor | None = None  # (B, T) long, shared-prompt layout only
    segment: Tensor | None = None       # (B, T) long, shared-prompt layout only
    ids: list[str] = field(default_factory=list)  # (G,) source ids
    ops: list[str] = field(default_factory=list)  # (N,) op of each candidate

    @property
    def n_tokens(self) -> int:
        """Tokens the model encodes for this batch (padding excluded)."""
        return int(self.attention_mask.sum())

    def model_inputs(self) -> dict[str, Tensor | None]:
        """The keyword arguments of :meth:`raydebias.train.model.ContrastiveLM.forward`."""
        return {"input_ids": self.input_ids, "attention_mask": self.attention_mask, "pool_mask": self.pool_mask,
                "pool_row": self.pool_row, "ce_index": self.ce_index, "position_ids": self.position_ids,
                "segment": self.segment}

    def to(self, device: torch.device | str) -> Batch:
        moved = {k: (v.to(device) if isinstance(v, Tensor) else v) for k, v in self.__dict__.items()}
        return Batch(**moved)


def next_token_targets(labels: Tensor, lm_rows: Tensor) -> tuple[Tensor, Tensor]:
    """(ce_index, ce_target): the flat positions ``row * T + t`` of ``input_ids`` whose logits predict a
    labelled token (``labels[r, t + 1] != -100``, row ``lm_rows[r]``), and those tokens. The LM head then
    runs on these M positions only, not on every position of the reference rows."""
    t = labels.shape[1]
    nxt = labels[:, 1:]
    r, pos = (nxt != -100).nonzero(as_tuple=True)
    return lm_rows[r] * t + pos, nxt[r, pos]


def shared_prompt_mask(segment: Tensor) -> Tensor:
    """(B, 1, T, T) bool, True where query i may attend to key j: causally, a prompt token to the prompt, a
    candidate's token to the prompt and to its own candidate's tokens, never across candidates. Padding
    attends to itself only (no fully masked row: softmax of a fully masked row is NaN)."""
    t = segment.shape[1]
    pos = torch.arange(t, device=segment.device)
    causal = pos[None, :] <= pos[:, None]  # (T, T): key j <= query i
    q, k = segment[:, :, None], segment[:, None, :]
    allow = causal & (q >= 0) & (k >= 0) & ((k == 0) | (k == q))
    return (allow | torch.eye(t, dtype=torch.bool, device=segment.device))[:, None]


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


@dataclass(frozen=True)
class Group:
    """One group as :class:`Collator` lays it out: its prompt ids (cut once, for its longest candidate),
    its candidates' (ids, pooling mask) with the reference first, their ops, how many are positives, and
    whether a toxic rewrite is among its negatives."""

    prompt: list[int]
    candidates: list[tuple[list[int], list[int]]]
    ops: list[str]
    n_positives: int
    toxic: bool


class Collator:
    """Tokenises groups into a :class:`Batch` (owns the tokenizer and the length budget)."""

    def __init__(self, tokenizer: Any, max_length: int, max_positives: int | None = None,
                 max_negatives: int | None = None, seed: int = 0, shared_prompt: bool = True):
        self.tok = tokenizer
        self.max_length = max_length
        self.shared_prompt = shared_prompt
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

    def encode(self, prompt: Prompt, text: str, entities: Sequence[dict] | None,
               full: dict | None = None) -> tuple[list[int], list[int]]:
        """A candidate's ids as a continuation of ``prompt`` (capped at half of ``max_length``) and its
        pooling mask: its entity tokens, or all of its tokens when it has none (eq. 5)."""
        ids, offsets = encode_continuation(self.tok, prompt, text, full)
        cap = self.max_length // 2
        ids, offsets = ids[:cap], offsets[:cap]
        ent = entity_token_mask(offsets, entities)
        return ids, (ent if any(ent) else [1] * len(ids))

    def group(self, row: dict[str, Any], epoch: int) -> Group:
        """One group's candidates for this epoch, encoded, and its prompt cut once for the longest."""
        pos, neg = sample_candidates(row, self.max_positives, self.max_negatives, self.seed, epoch)
        prompt = self.prompt(row)
        cands = pos + neg
        # One tokenizer call per group for every prompt + " " + candidate (fast tokenizers batch it).
        fulls = self.tok([prompt.text + " " + c["text"] for c in cands], return_offsets_mapping=True)
        encoded = [self.encode(prompt, c["text"], c.get("entities"),
                               {"input_ids": fulls["input_ids"][k], "offset_mapping": fulls["offset_mapping"][k]})
                   for k, c in enumerate(cands)]
        cut = self.fit(prompt.ids, max(len(ids) for ids, _ in encoded), prompt.n_special, prompt.n_cue)
        return Group(cut, encoded, [c["op"] for c in cands], len(pos), any(c["op"] == TOXIC_OP for c in neg))

    def __call__(self, rows: Sequence[dict[str, Any]], epoch: int) -> Batch:
        seqs: list[list[int]] = []       # one per row of input_ids
        positions: list[list[int]] = []  # shared-prompt layout: position ids per row
        segs: list[list[int]] = []       # shared-prompt layout: segment per token
        pools: list[tuple[int, int, list[int]]] = []  # per candidate: (row, first token, pooling mask)
        refs: list[tuple[int, int, int]] = []         # per group: (row, first, end) of reference + eos
        group, positive, ops, toxic = [], [], [], []
        for g, row in enumerate(rows):
            grp = self.group(row, epoch)
            n_prompt = len(grp.prompt)
            toxic.append(grp.toxic)
            ops.extend(grp.ops)
            group.extend([g] * len(grp.candidates))
            positive.extend(k < grp.n_positives for k in range(len(grp.candidates)))
            refs.append((len(seqs), n_prompt, n_prompt + len(grp.candidates[0][0]) + 1))
            if self.shared_prompt:  # prompt | reference + eos | candidate 2 | ... (eos only where L_ce needs it)
                seq, pos, seg = list(grp.prompt), list(range(n_prompt)), [0] * n_prompt
                for k, (ids, pm) in enumerate(grp.candidates):
                    tail = ids + [self.eos] if k == 0 else ids
                    pools.append((len(seqs), len(seq), pm))
                    seq += tail
                    pos += range(n_prompt, n_prompt + len(tail))  # positions continue the prompt's
                    seg += [k + 1] * len(tail)
                seqs.append(seq)
                positions.append(pos)
                segs.append(seg)
            else:  # one row per candidate: prompt | candidate + eos
                for ids, pm in grp.candidates:
                    pools.append((len(seqs), n_prompt, pm))
                    seqs.append(grp.prompt + ids + [self.eos])
        t = max(len(s) for s in seqs)

        def padded(lists: list[list[int]], fill: int) -> Tensor:
            out = torch.full((len(lists), t), fill, dtype=torch.long)
            for i, xs in enumerate(lists):
                out[i, : len(xs)] = torch.tensor(xs, dtype=torch.long)
            return out

        input_ids = padded(seqs, self.pad)
        attention = padded([[1] * len(s) for s in seqs], 0)
        pool_mask = torch.zeros((len(pools), t), dtype=torch.float32)
        for i, (_, start, pm) in enumerate(pools):
            pool_mask[i, start: start + len(pm)] = torch.tensor(pm, dtype=torch.float32)
        labels = torch.full((len(refs), t), -100, dtype=torch.long)
        for r, (i, a, z) in enumerate(refs):
            labels[r, a:z] = input_ids[i, a:z]  # the reference summary tokens + eos
        lm_rows = torch.tensor([i for i, _, _ in refs], dtype=torch.long)
        ce_index, ce_target = next_token_targets(labels, lm_rows)
        shared = self.shared_prompt
        return Batch(input_ids=input_ids, attention_mask=attention, pool_mask=pool_mask,
                     pool_row=torch.tensor([i for i, _, _ in pools], dtype=torch.long), labels=labels,
                     lm_rows=lm_rows, ce_index=ce_index, ce_target=ce_target,
                     group=torch.tensor(group, dtype=torch.long), positive=torch.tensor(positive, dtype=torch.bool),
                     group_toxic=torch.tensor(toxic), position_ids=padded(positions, 0) if shared else None,
                     segment=padded(segs, -1) if shared else None, ids=[r[S.ID] for r in rows], ops=ops)

    def filler(self) -> Batch:
        """A tiny valid batch for a rank whose shard ran out while others still train (its loss is x0)."""
        row = {S.ID: "__filler__", S.POST: "filler post", S.SUMMARY: "a filler summary",
               POSITIVES: [{"text": "a filler summary", "op": REFERENCE_OP, "entities": None},
                           {"text": "another filler summary", "op": "backtranslate", "entities": None}],
               NEGATIVES: []}
        return self([row], epoch=0)


__all__ = ["Batch", "Collator", "Prompt", "encode_continuation", "encode_example", "encode_prompt",
           "entity_token_mask", "next_token_targets", "sample_candidates", "shared_prompt_mask"]
