"""Mask fill (negatives; SPEC §2, paper Section 4.2 "masked regeneration", Table 10).

RoBERTa (``augment.mask_fill.model``, FacebookAI/roberta-large) rewrites the reference summary's named
entities: every token of a chosen entity span becomes one ``<mask>``, and the masks are filled left to
right, each by sampling from the renormalised top-k (5) predictions given the fills before it. The
result reads like the summary but states other facts: Table 3's "Pro Wrestler recently stole 100 from
8 year old me".

Which tokens are masked (the paper's "entity importance scores derived from attention weights" are not
specified; SPEC §2 only says "mask entity tokens"):

- the summary has entities (``summary_entities`` from the NER stage): a random choice of
  ``min(max_swaps, #entities)`` of them per candidate. ``max_swaps`` is ``augment.mask_fill.max_swaps``
  (Table 10 lists "Max Swaps per Sample 2" for the Mask Regeneration group: RoBERTa fill and FLAN-T5);
- no entity: ``round(mask_ratio * n_tokens)`` (at least 1) random word tokens (tokens with a letter or
  digit; punctuation stays), mask ratio 0.15 as in Table 10.

Special tokens are never sampled. Each row gets ``max_variations`` candidates; a fill equal to the
reference (whitespace/case-normalised) is dropped as ``same_as_reference`` and one equal to an earlier
candidate of the row as ``duplicate``, and that candidate is resampled, at most ``MAX_ATTEMPTS`` times
in all. A summary with nothing to mask gets a ``nothing_to_mask`` drop.

The text outside the masked tokens is never re-tokenised: each run of masked tokens is replaced, in
the reference's characters, from the end of the token before it to the end of its last token (so the
whitespace before the run travels with the fill, as in byte-level BPE). ``info.masked`` lists every
replaced ``[start, end)`` of the reference with the original and the fill, so
``ref[:start] + fill + ref[end:]`` (applied right to left) rebuilds the candidate exactly;
``info.tokens_masked`` counts the masks and ``info.attempt`` says which sample was kept.
"""

from __future__ import annotations

import random
from typing import Any

from raydebias.augment.candidates import RowResult, candidate, drop, norm
from raydebias.augment.stage import RowOp
from raydebias.config import MaskFillConfig
from raydebias.generation import derive_seed
from raydebias.models import load_model, max_input_tokens

__all__ = ["MaskFill", "MAX_ATTEMPTS"]

# Samples per candidate slot before giving up (a tiny or very confident model may keep restoring the
# original tokens). Not a paper parameter.
MAX_ATTEMPTS = 3
def _runs(positions: list[int]) -> list[tuple[int, int]]:
    """Sorted token positions -> inclusive runs of consecutive positions: [1, 2, 5] -> [(1, 2), (5, 5)]."""
    runs: list[tuple[int, int]] = []
    for p in positions:
        if runs and p == runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], p)
        else:
            runs.append((p, p))
    return runs


class MaskFill(RowOp):
    """RoBERTa top-k refill of the summary's entity tokens (or 15% of its words) -> negatives."""

    name = section = "mask_fill"
    reads = ("id", "summary", "summary_entities")
    needs = ("ner",)

    def __init__(self, cfg: MaskFillConfig, device: str = "cpu", seed: int = 0):
        self.cfg, self.seed = cfg, seed
        self.max_swaps = cfg.max_swaps
        self.model, self.tokenizer = load_model(self.cfg.model, "masked_lm", device=device)
        if self.tokenizer.mask_token_id is None:
            raise ValueError(f"augment.mask_fill.model {self.cfg.model!r} has no mask token; use a masked LM "
                             "such as FacebookAI/roberta-large")
        self.max_len = max_input_tokens(self.tokenizer, self.model)
        self.banned = sorted(set(self.tokenizer.all_special_ids))  # never sample <s>, </s>, <pad>, <mask>, ...

    # -- which tokens to mask -------------------------------------------------------------------

    def _units(self, row: dict, offsets: list[tuple[int, int]], special: list[int]) -> tuple[str, list[dict], int]:
        """(mode "entity" | "random_tokens", maskable units {positions, label, text}, units per candidate)."""
        real = [t for t in range(len(offsets)) if not special[t] and offsets[t][1] > offsets[t][0]]
        summary = row["summary"]
        units = []
        for ent in sorted(row.get("summary_entities") or [], key=lambda e: e["start"]):
            if not 0 <= ent["start"] < ent["end"] <= len(summary):
                continue  # a span that does not fit this summary cannot be masked
            # Tokens overlapping the span; entities past the truncation point have none.
            pos = [t for t in real if offsets[t][0] < ent["end"] and offsets[t][1] > ent["start"]]
            if pos:
                units.append({"positions": pos, "label": ent["label"], "text": ent["text"]})
        if units:
            return "entity", units, min(self.max_swaps, len(units))
        words = [t for t in real if any(ch.isalnum() for ch in summary[offsets[t][0]:offsets[t][1]])]
        n_mask = max(1, round(self.cfg.mask_ratio * len(real)))  # Table 10: mask ratio 0.15
        units = [{"positions": [t], "label": None, "text": summary[offsets[t][0]:offsets[t][1]]} for t in words]
        return "random_tokens", units, min(n_mask, len(units))

    @staticmethod
    def _choose(mode: str, units: list[dict], k: int, rng: random.Random) -> list[dict]:
        return sorted(rng.sample(units, k), key=lambda u: u["positions"][0])

    # -- the model --------------------------------------------------------------------------------

    def _fill(self, seqs: list[list[int]], masked: list[list[int]], gen: Any) -> list[list[int]]:
        """Token ids with every position in ``masked[b]`` of ``seqs[b]`` masked and refilled left to right.

        One padded forward pass per mask step over the sequences that still have a mask; the fill is a
        draw from the top-k probabilities, renormalised (Table 10: top-k 5).
        """
        import torch

        tok, dev = self.tokenizer, self.model.device
        lengths = [len(s) for s in seqs]
        ids = torch.full((len(seqs), max(lengths)), tok.pad_token_id, dtype=torch.long)  # (B, T)
        attn = torch.zeros_like(ids)
        for b, seq in enumerate(seqs):
            ids[b, : len(seq)] = torch.tensor(seq)
            attn[b, : len(seq)] = 1
            ids[b, masked[b]] = tok.mask_token_id
        order = [sorted(m) for m in masked]
        for step in range(max((len(o) for o in order), default=0)):
            active = torch.tensor([b for b in range(len(seqs)) if step < len(order[b])])
            pos = torch.tensor([order[b][step] for b in active.tolist()])
            with torch.inference_mode():
                logits = self.model(input_ids=ids[active].to(dev), attention_mask=attn[active].to(dev)).logits
            logits = logits[torch.arange(len(active), device=dev), pos.to(dev)].float().cpu()  # (A, V)
            logits[:, self.banned] = float("-inf")
            top = logits.topk(min(self.cfg.top_k, logits.shape[-1]), dim=-1)
            pick = torch.multinomial(torch.softmax(top.values, dim=-1), 1, generator=gen)  # (A, 1)
            ids[active, pos] = top.indices.gather(1, pick).squeeze(1)
        return [ids[b, :n].tolist() for b, n in enumerate(lengths)]

    # -- back to text ----------------------------------------------------------------------------

    def _splice(self, summary: str, offsets: list[tuple[int, int]], special: list[int],
                new_ids: list[int], chosen: list[dict]) -> tuple[str, list[dict]]:
        """The candidate text and its replaced spans (reference coordinates)."""
        positions = sorted({p for u in chosen for p in u["positions"]})  # two entities may share a token
        spans = []
        for a, b in _runs(positions):
            prev = a - 1
            start = offsets[prev][1] if prev >= 0 and not special[prev] else 0
            end = offsets[b][1]
            fill = self.tokenizer.decode(new_ids[a : b + 1], skip_special_tokens=True,
                                         clean_up_tokenization_spaces=False)
            labels = [u["label"] for u in chosen if u["label"] and a <= u["positions"][0] <= b]
            spans.append({"start": start, "end": end, "original": summary[start:end], "fill": fill,
                          "labels": labels})
        text = summary
        for s in reversed(spans):
            text = text[: s["start"]] + s["fill"] + text[s["end"]:]
        return text, spans

    def process_rows(self, rows: list[dict]) -> list[RowResult]:
        import torch

        seed = derive_seed(self.seed, self.name, rows[0]["id"])
        rng, gen = random.Random(seed), torch.Generator().manual_seed(seed)
        enc = self.tokenizer([row["summary"] for row in rows], truncation=True, max_length=self.max_len,
                             return_offsets_mapping=True, return_special_tokens_mask=True)
        results: list[RowResult] = [([], []) for _ in rows]
        plans = []
        for i, row in enumerate(rows):
            mode, units, k = self._units(row, enc["offset_mapping"][i], enc["special_tokens_mask"][i])
            plans.append((mode, units, k))
            if not units:
                results[i][1].append(drop(self.name, "nothing_to_mask", "the summary has no word token to mask"))
        accepted: list[set[str]] = [set() for _ in rows]
        slots = [i for i, (_, units, _) in enumerate(plans) if units for _ in range(self.cfg.max_variations)]
        for attempt in range(1, MAX_ATTEMPTS + 1):
            if not slots:
                break
            chosen = [self._choose(*plans[i], rng) for i in slots]
            filled = self._fill([enc["input_ids"][i] for i in slots],
                                [sorted({p for u in c for p in u["positions"]}) for c in chosen], gen)
            retry = []
            for i, units, new_ids in zip(slots, chosen, filled, strict=True):
                ref = rows[i]["summary"]
                text, spans = self._splice(ref, enc["offset_mapping"][i], enc["special_tokens_mask"][i],
                                           new_ids, units)
                key = norm(text)
                if key == norm(ref) or key in accepted[i]:
                    reason = "same_as_reference" if key == norm(ref) else "duplicate"
                    results[i][1].append(drop(self.name, reason, f"attempt {attempt}/{MAX_ATTEMPTS}", text))
                    retry.append(i)
                    continue
                accepted[i].add(key)
                results[i][0].append(candidate(text, self.name, mode=plans[i][0], masked=spans, attempt=attempt,
                                               tokens_masked=len({p for u in units for p in u["positions"]})))
            slots = retry
        return results
