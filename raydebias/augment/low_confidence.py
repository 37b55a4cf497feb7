"""Low-confidence summaries by "inverse beam search" (negatives; paper Section 4.2, eq. 1-2).

GPT-2 (the paper's most hallucination-prone model) summarises the post from the TL;DR prompt with
beam search (8 beams, all 8 returned, length penalty 2.0, Table 10); the beam with the LOWEST
sequence score is kept (eq. 1: s = argmin_s BeamScore(s)).

BeamScore (eq. 2) is what beam search itself ranks by. The paper writes it as log P(s) + λ·length(s);
the implementation the paper's numbers come from is Hugging Face's, whose ``sequences_scores`` are
log P(s) / length(s)^λ (length = generated tokens). We use HF's score, so eq. 1 ranks exactly the
beams the search kept; ``HFGenerator`` recomputes it from one teacher-forced pass over the returned
beams (equal to HF's ``sequences_scores``, tested) instead of asking HF for its per-step
full-vocabulary scores, which at 8 beams x 128 tokens cost GBs (``bench/beam_memory.py``). This is also why vLLM is not offered here (see generators.VLLMGenerator).

Optional CLIFF rule (Cao and Wang 2021; Table 10's τ = 0.21): keep the chosen beam only if one of its
proper-noun/number tokens was generated with probability < τ, i.e. the model was unsure about a
fact-bearing token. Other rows get a ``confident`` (or ``no_propn_num``) drop.
"""

from __future__ import annotations

import math
import re
from typing import Any

from raydebias.augment.candidates import RowResult, candidate, drop
from raydebias.augment.stage import RowOp
from raydebias.config import LowConfidenceConfig
from raydebias.generation import GenParams, derive_seed, make_generator
from raydebias.prompts import format_prompt


def build_prompt(tokenizer: Any, post: str, subreddit: str | None, title: str | None,
                 max_input_tokens: int) -> tuple[str, bool]:
    """(TL;DR prompt of at most ``max_input_tokens`` tokens, whether the post was cut).

    Only the POST is shortened, at a token boundary, so the prompt always ends with "TL;DR:" (cutting
    that off would ask the model to continue the post, not to summarise it). The result is
    re-tokenized to check: BPE merges across the cut can change the count by a token or two.
    """
    if not isinstance(post, str) or not post.strip():
        raise ValueError(f"low_confidence needs a non-empty post string, got {post!r}")

    def count(text: str) -> int:
        return len(tokenizer(text, verbose=False)["input_ids"])

    prompt = format_prompt(post, subreddit, title)
    n = count(prompt)
    if n <= max_input_tokens:
        return prompt, False
    overhead = count(format_prompt("", subreddit, title))
    if overhead >= max_input_tokens:
        raise ValueError(f"the prompt without its post is already {overhead} tokens (title/subreddit), "
                         f"max_input_tokens is {max_input_tokens}: nothing of the post would fit")
    offsets = tokenizer(post, add_special_tokens=False, return_offsets_mapping=True, verbose=False)["offset_mapping"]
    budget = max_input_tokens - overhead
    while budget > 0:
        end = offsets[min(budget, len(offsets)) - 1][1]
        prompt = format_prompt(post[:end].rstrip(), subreddit, title)
        n = count(prompt)
        if n <= max_input_tokens:
            return prompt, True
        budget -= n - max_input_tokens
    raise ValueError(f"could not fit the post into max_input_tokens={max_input_tokens}")


# CLIFF applies its rule to PROPN/NUM tokens from a POS tagger. Running spaCy here would add a model to
# this op, so a cheap stand-in marks words that contain a digit (NUM: "40", "1,840", "2nd") and words
# that start with a capital letter anywhere but at the start of a sentence (PROPN: "Greg", "Ohio");
# the pronoun "I" and its contractions are excluded. It misses lower-case names and sentence-initial
# names, and counts capitalised common nouns in titles: fine for a filter on the model's confidence.
_WORD = re.compile(r"\w+(?:[.,'’]\w+)*")
_SENTENCE_END = re.compile(r"(?:^|[.!?:;\n])[\s\"'“‘(\[]*$")
_PRONOUN_I = {"i", "i'm", "i've", "i'd", "i'll", "i’m", "i’ve", "i’d", "i’ll"}


def propn_num_spans(text: str) -> list[tuple[int, int]]:
    """Character spans of the words the heuristic above treats as PROPN or NUM."""
    spans = []
    for m in _WORD.finditer(text):
        word = m.group()
        if any(ch.isdigit() for ch in word):
            spans.append(m.span())
        elif word[0].isupper() and word.lower() not in _PRONOUN_I and not _SENTENCE_END.search(text[: m.start()]):
            spans.append(m.span())
    return spans


def min_propn_num_prob(tokenizer: Any, token_ids: list[int], token_logprobs: list[float]) -> float | None:
    """Lowest probability of a generated token overlapping a PROPN/NUM word; None if there is none."""
    text = tokenizer.decode(token_ids, skip_special_tokens=True)
    spans = propn_num_spans(text)
    if not spans:
        return None
    # Token k covers text[start_k:end_k] where end_k = len(decode(first k+1 tokens)): byte-level BPE
    # decodes prefix by prefix (a split multi-byte character can wobble a length; clamped monotone).
    lows, prev = [], 0
    for k, logprob in enumerate(token_logprobs):
        end = max(prev, len(tokenizer.decode(token_ids[: k + 1], skip_special_tokens=True)))
        if end > prev and any(prev < we and end > ws for ws, we in spans):
            lows.append(logprob)
        prev = end
    return math.exp(min(lows)) if lows else None


class LowConfidence(RowOp):
    """The lowest-scoring beam of the summarisation prompt (eq. 1-2) as a negative."""

    name = section = "low_confidence"
    reads = ("id", "post", "subreddit", "title")

    def __init__(self, cfg: LowConfidenceConfig, device: str = "cpu", seed: int = 0):
        self.cfg, self.seed = cfg, seed
        if self.cfg.backend != "hf":
            raise ValueError(
                f"augment.low_confidence.backend={self.cfg.backend!r} is not supported: eq. 1 needs Hugging "
                "Face beam scores (vLLM normalises beam scores by prompt+output length, which keeps other "
                "beams). Set augment.low_confidence.backend=hf."
            )
        self.generator = make_generator(self.cfg.backend, self.cfg.model, device,
                                        gpu_fraction=self.cfg.resources.num_gpus)

    def params(self, first_id: str) -> GenParams:
        c = self.cfg
        return GenParams(
            max_new_tokens=c.max_new_tokens, num_beams=c.num_beams, num_return_sequences=c.num_return_sequences,
            length_penalty=c.length_penalty, output_scores=c.cliff_rule, max_input_tokens=c.max_input_tokens,
            seed=derive_seed(self.seed, self.name, first_id),  # beam search does not sample; kept for uniformity
        )

    def process_rows(self, rows: list[dict]) -> list[RowResult]:
        tokenizer = self.generator.tokenizer
        results: list[RowResult] = [([], []) for _ in rows]
        todo: list[tuple[int, str, bool]] = []
        for r, row in enumerate(rows):
            try:
                prompt, truncated = build_prompt(tokenizer, row["post"], row.get("subreddit"), row.get("title"),
                                                 self.cfg.max_input_tokens)
                todo.append((r, prompt, truncated))
            except ValueError as e:  # a bad row is dropped here, so the batch is not re-run row by row
                results[r] = ([], [drop(self.name, "error", f"ValueError: {e}")])
        if not todo:
            return results
        beams_per_row = self.generator.generate([p for _, p, _ in todo], self.params(str(rows[0]["id"])))
        for (r, _, truncated), beams in zip(todo, beams_per_row, strict=True):
            if not beams or any(b.score is None for b in beams):
                raise RuntimeError("low_confidence: the generator returned beams without sequence scores")
            rank = min(range(len(beams)), key=lambda i: beams[i].score)  # eq. 1; the first one on ties
            beam = beams[rank]
            text = beam.text.strip()
            where = f"lowest-scoring beam (rank {rank} of {len(beams)}, score {beam.score:.4f})"
            info = {"beam_score": beam.score, "beam_rank": rank, "num_beams": len(beams), "post_truncated": truncated}
            if not text:
                results[r] = ([], [drop(self.name, "empty", f"{where} is empty", beam.text)])
                continue
            if self.cfg.cliff_rule:
                low = min_propn_num_prob(tokenizer, beam.token_ids or [], beam.token_logprobs or [])
                if low is None:
                    why = f"{where} has no proper-noun/number token for the CLIFF rule"
                    results[r] = ([], [drop(self.name, "no_propn_num", why, text)])
                    continue
                if low >= self.cfg.cliff_threshold:
                    why = f"{where}: min PROPN/NUM token prob {low:.4f} >= {self.cfg.cliff_threshold}"
                    results[r] = ([], [drop(self.name, "confident", why, text)])
                    continue
                info["min_propn_num_prob"] = low
            results[r] = ([candidate(text, self.name, **info)], [])
        return results
