"""Masked regeneration (negatives; SPEC §2, paper Section 4.2 "masked regeneration", Table 10).

FLAN-T5 (``augment.regenerate.model``, google/flan-t5-large) rewrites parts of the reference summary
while reading the post: up to ``max_swaps`` (2) spans of the summary are replaced by T5 sentinel tokens,
the model is asked

    Fill in the blanks of the summary using the post.
    Post: {post}
    Summary: {summary with <extra_id_0>, <extra_id_1>, ...}

and its sampled answer (temperature 0.7) is parsed in T5's span-corruption format
``<extra_id_0> fill 0 <extra_id_1> fill 1 ...`` and spliced back. Conditioning on the post makes the
new spans plausible in context but, being sampled, often wrong: a "near miss" negative.

Choices where the paper is vague:

- Spans: the summary's entities (``summary_entities``), a random ``min(max_swaps, #entities)`` of
  them. Without entities, one "relation" span: 2-4 words (random length) from the middle of the
  summary, where a short TL;DR's verb phrase usually sits; no parser is loaded for it (the NER stage
  gives entities only). Words are runs of letters/digits, so edge punctuation stays in place.
- The decoder is started with ``<extra_id_0>`` (after the model's decoder start token), which puts an
  instruction-tuned FLAN-T5 into span-corruption mode so its output can be parsed.
- Sentinels are read from the tokenizer (``extra_special_tokens`` in transformers 5,
  ``additional_special_tokens`` before), ordered by their number; never hard-coded (the tiny kit's ids
  differ from real T5's, ENV.md).
- Only the POST is truncated to fit the model's max input length, never the instruction or the
  summary; a summary too long to fit alone gets a ``summary_too_long`` drop.
- One candidate per row (the config has no variation count for this op).

Drops: ``nothing_to_mask`` (no word in the summary), ``empty_fill`` (the output has no or an empty
fill for some sentinel), ``same_as_reference`` (the regenerated summary equals the reference after
whitespace/case normalisation). ``info``: mode ("entity" | "relation"), the masked spans in reference
coordinates with their original text and fill, and whether the post was truncated.
"""

from __future__ import annotations

import random
import re
from typing import Any

from raydebias.augment.candidates import RowResult, candidate, drop, norm
from raydebias.augment.stage import RowOp
from raydebias.config import RegenerateConfig
from raydebias.generation import derive_seed
from raydebias.models import load_model, max_input_tokens

__all__ = ["Regenerate", "INSTRUCTION", "sentinel_tokens", "parse_fills"]

INSTRUCTION = "Fill in the blanks of the summary using the post."
_WORD = re.compile(r"\w+(?:['’-]\w+)*")


class _SummaryTooLong(ValueError):
    """The instruction + masked summary alone exceed the model's input length."""


def sentinel_tokens(tokenizer: Any) -> list[str]:
    """The tokenizer's T5 sentinels in order (``<extra_id_0>``, ``<extra_id_1>``, ...).

    transformers 5 keeps them in ``extra_special_tokens`` (``additional_special_tokens`` is gone, and
    ``T5Tokenizer.get_sentinel_tokens`` still reads the old attribute and returns an unordered set).
    """
    specials = getattr(tokenizer, "extra_special_tokens", None)
    if not isinstance(specials, (list, tuple)) or not specials:
        specials = getattr(tokenizer, "additional_special_tokens", None) or []
    numbered = []
    for tok in specials:
        m = re.fullmatch(r"<extra_id_(\d+)>", str(tok))
        if m:
            numbered.append((int(m.group(1)), str(tok)))
    if not numbered:
        raise ValueError(f"tokenizer {type(tokenizer).__name__} has no T5 sentinel tokens (<extra_id_N>); "
                         "augment.regenerate.model must be a T5-family model such as google/flan-t5-large")
    return [tok for _, tok in sorted(numbered)]


def parse_fills(ids: list[int], sentinel_ids: list[int], n: int, stop_ids: set[int]) -> list[list[int] | None]:
    """Split generated ids in T5 span format into the token ids of fills 0..n-1 (None: sentinel absent).

    Tokens before the first sentinel are ignored; a sentinel >= n or a repeated one ends the current
    fill; the first stop token (eos) ends everything.
    """
    index = {sid: k for k, sid in enumerate(sentinel_ids)}
    fills: list[list[int] | None] = [None] * n
    current: list[int] | None = None
    for t in ids:
        if t in stop_ids:
            break
        k = index.get(t)
        if k is not None:
            current = None
            if k < n and fills[k] is None:
                current = fills[k] = []
        elif current is not None:
            current.append(t)
    return fills


class Regenerate(RowOp):
    """FLAN-T5 regeneration of masked entity/relation spans of the summary, conditioned on the post."""

    name = section = "regenerate"
    reads = ("id", "post", "summary", "summary_entities")
    needs = ("ner",)

    def __init__(self, cfg: RegenerateConfig, device: str = "cpu", seed: int = 0):
        self.cfg, self.seed = cfg, seed
        self.model, self.tokenizer = load_model(self.cfg.model, "seq2seq_lm", device=device)
        self.sentinels = sentinel_tokens(self.tokenizer)
        self.sentinel_ids = self.tokenizer.convert_tokens_to_ids(self.sentinels)
        self.max_len = max_input_tokens(self.tokenizer, self.model)
        gen_cfg = self.model.generation_config
        self.decoder_start = (gen_cfg.decoder_start_token_id if gen_cfg.decoder_start_token_id is not None
                              else self.model.config.decoder_start_token_id)
        eos = gen_cfg.eos_token_id if gen_cfg.eos_token_id is not None else self.tokenizer.eos_token_id
        self.stop_ids = set(eos) if isinstance(eos, list) else {eos}

    # -- which spans -------------------------------------------------------------------------------

    def _spans(self, row: dict, rng: random.Random) -> tuple[str, list[dict]]:
        """(mode, spans {start, end, label} sorted, non-overlapping) to mask in the summary."""
        summary = row["summary"]
        ents, last_end = [], -1
        for e in sorted(row.get("summary_entities") or [], key=lambda e: (e["start"], e["end"])):
            fits = 0 <= e["start"] < e["end"] <= len(summary) and summary[e["start"]:e["end"]].strip()
            if fits and e["start"] >= last_end:  # spaCy never overlaps entities; other taggers might
                ents.append({"start": e["start"], "end": e["end"], "label": e["label"]})
                last_end = e["end"]
        if ents:
            k = min(self.cfg.max_swaps, len(ents))
            return "entity", sorted(rng.sample(ents, k), key=lambda s: s["start"])
        words = [m.span() for m in _WORD.finditer(summary)]
        if not words:
            return "relation", []
        length = min(rng.randint(2, 4), max(1, len(words) - 2))  # keep a word either side when possible
        first = (len(words) - length) // 2
        return "relation", [{"start": words[first][0], "end": words[first + length - 1][1], "label": None}]

    def _masked_summary(self, summary: str, spans: list[dict]) -> str:
        out, pos = [], 0
        for k, s in enumerate(spans):
            out += [summary[pos:s["start"]], self.sentinels[k]]
            pos = s["end"]
        return "".join(out + [summary[pos:]])

    def _prompt_ids(self, post: str, masked_summary: str) -> tuple[list[int], bool]:
        """Token ids of the prompt and whether the post was cut; only the post is ever shortened."""
        head, tail = f"{INSTRUCTION}\nPost: ", f"\nSummary: {masked_summary}"
        ids = self.tokenizer(head + post + tail, verbose=False)["input_ids"]
        if len(ids) <= self.max_len:
            return ids, False
        fixed = len(self.tokenizer(head + tail, verbose=False)["input_ids"])
        if fixed > self.max_len:
            raise _SummaryTooLong(f"the instruction and masked summary alone take {fixed} tokens "
                                  f"> max input length {self.max_len}")
        offsets = self.tokenizer(post, add_special_tokens=False, return_offsets_mapping=True, verbose=False)["offset_mapping"]
        keep = min(self.max_len - fixed, len(offsets))
        while True:  # tokens at the cut can merge differently in context: shrink until it fits
            cut = offsets[keep - 1][1] if keep > 0 else 0
            ids = self.tokenizer(head + post[:cut] + tail, verbose=False)["input_ids"]
            if len(ids) <= self.max_len or keep == 0:
                return ids, True
            keep = max(0, keep - (len(ids) - self.max_len))

    # -- the model -------------------------------------------------------------------------------

    def _generate(self, prompts: list[list[int]]) -> list[list[int]]:
        """One padded sampled ``generate`` call; returns the ids after the forced decoder prefix."""
        import torch

        pad = self.tokenizer.pad_token_id
        ids = torch.full((len(prompts), max(len(p) for p in prompts)), pad, dtype=torch.long)  # (B, T)
        attn = torch.zeros_like(ids)
        for b, p in enumerate(prompts):
            ids[b, : len(p)], attn[b, : len(p)] = torch.tensor(p), 1
        # Start every answer with <extra_id_0>: FLAN-T5 then answers in span-corruption format.
        prefix = torch.tensor([[self.decoder_start, self.sentinel_ids[0]]] * len(prompts))
        kwargs: dict[str, Any] = {"do_sample": self.cfg.do_sample, "max_new_tokens": self.cfg.max_new_tokens}
        if self.cfg.do_sample:
            kwargs["temperature"] = self.cfg.temperature
        dev = self.model.device
        with torch.inference_mode():
            out = self.model.generate(input_ids=ids.to(dev), attention_mask=attn.to(dev),
                                      decoder_input_ids=prefix.to(dev), **kwargs)
        return [row[1:].tolist() for row in out.cpu()]  # keep <extra_id_0>, drop the decoder start

    def process_rows(self, rows: list[dict]) -> list[RowResult]:
        import torch

        seed = derive_seed(self.seed, self.name, rows[0]["id"])
        torch.manual_seed(seed)  # generate() samples from torch's global RNG
        rng = random.Random(seed)
        results: list[RowResult] = [([], []) for _ in rows]
        jobs = []  # (row index, mode, spans, prompt ids, post truncated)
        for i, row in enumerate(rows):
            mode, spans = self._spans(row, rng)
            if not spans:
                results[i][1].append(drop(self.name, "nothing_to_mask", "the summary has no word to mask"))
                continue
            try:
                ids, cut = self._prompt_ids(row["post"], self._masked_summary(row["summary"], spans))
            except _SummaryTooLong as e:
                results[i][1].append(drop(self.name, "summary_too_long", str(e)))
                continue
            jobs.append((i, mode, spans, ids, cut))
        if not jobs:
            return results
        outputs = self._generate([j[3] for j in jobs])
        for (i, mode, spans, _, cut), out in zip(jobs, outputs, strict=True):
            ref = rows[i]["summary"]
            fills = [None if f is None else self.tokenizer.decode(f, skip_special_tokens=True).strip()
                     for f in parse_fills(out, self.sentinel_ids, len(spans), self.stop_ids)]
            raw = self.tokenizer.decode(out, skip_special_tokens=False)
            missing = [k for k, f in enumerate(fills) if not f]
            if missing:
                results[i][1].append(drop(self.name, "empty_fill", f"no fill for sentinel(s) {missing} "
                                          f"of {len(spans)}", raw))
                continue
            text = ref
            for s, fill in reversed(list(zip(spans, fills, strict=True))):
                text = text[: s["start"]] + fill + text[s["end"]:]
            if norm(text) == norm(ref):
                results[i][1].append(drop(self.name, "same_as_reference", "the fills restore the reference", text))
                continue
            masked = [{"start": s["start"], "end": s["end"], "label": s["label"],
                       "original": ref[s["start"]:s["end"]], "fill": f} for s, f in zip(spans, fills, strict=True)]
            results[i][0].append(candidate(text, self.name, mode=mode, masked=masked, post_truncated=cut))
        return results
