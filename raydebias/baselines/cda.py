"""Counterfactual Data Augmentation (CDA; Zmigrod et al. 2019, Webster et al. 2020), two-sided, as bias-bench
runs it (McGill-NLP/bias-bench ``experiments/run_clm.py``, ``batch_jobs/counterfactual_augmentation.sh``):
swap the bias attribute words of every corpus text that has any, train on the originals plus their
counterfactuals, then plain causal-LM fine-tuning (SPEC §7 "Baselines").

Pure text code; the fine-tuning itself is the train stage's. Steps:

1. :func:`cda_corpus` splits each corpus text into lines (bias-bench reads a ``.txt`` corpus with
   ``load_dataset("text")``: one example per line, a Wikipedia paragraph in ``wikipedia-10.txt``; it does not
   split sentences), keeps only the lines that contain an attribute word, and emits each as
   ``original, counterfactual``. Lines without attribute words are dropped, as in bias-bench, whose batched
   ``map`` returns only the augmented examples (``outputs`` holds counterfactual and original, nothing else);
   ``keep_unmatched=True`` keeps them instead.
2. :func:`counterfactual` swaps every attribute word in one regex pass (attributes.py: whole word,
   case-insensitive, the last listed entry decides an ambiguous word). Gender: the other word of the pair.
   Race/religion: bias-bench draws, once per example, a target position for each triple position among the
   other two (``random.choice([1, 2])``, ``([0, 2])``, ``([0, 1])``) and every matched term goes to its triple's
   member at that target; so one counterfactual swaps consistently (``Jews ... synagogue`` -> ``Muslims ...
   mosque`` or ``Christians ... church``).
3. :func:`group_texts` is HF run_clm's ``group_texts``: concatenate the token ids, drop the remainder, chunk.

Deviations from bias-bench, on purpose: matching is case-insensitive with the case carried over (bias-bench
compares case-sensitively, so ``He``/``His`` at a sentence start stay unswapped) and sees words next to any
punctuation (bias-bench only knows the suffixes ``. , ? ! ; :``); bias-bench re-tokenises the augmented batch
with ``padding=True, truncation=True`` before grouping, which puts pad (= EOS) runs into the training stream and
cuts lines at 1024 tokens: we tokenise the texts unpadded and untruncated and group them.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable

from raydebias.baselines.attributes import ATTRIBUTES, swap_entries, word_pattern

# Training recipe, bias-bench batch_jobs/counterfactual_augmentation.sh (GPT-2 rows): --max_steps 2000,
# --per_device_train_batch_size 8 x --gradient_accumulation_steps 32 = 256 sequences per step, block size left
# to run_clm's default min(tokenizer.model_max_length, 1024), learning rate left to HF TrainingArguments' default
# 5e-5; three seeds (0, 1, 2). The corpus there is 10% of English Wikipedia (data/text/wikipedia-10.txt).
STEPS = 2000
EFFECTIVE_BATCH = 256
BLOCK_SIZE = 1024
LR = 5e-5
SEEDS = (0, 1, 2)

# bias-bench's per-example target position for each triple position: position i goes to one of the others.
_OTHER_POSITIONS = ((1, 2), (0, 2), (0, 1))


def _match_case(source: str, word: str) -> str:
    """``word`` in the case pattern of ``source``: HE -> SHE, He -> She, he -> she (mixed case: lower)."""
    letters = [c for c in source if c.isalpha()]
    if len(letters) > 1 and all(c.isupper() for c in letters):
        return word.upper()
    if source[:1].isupper():
        return word[:1].upper() + word[1:]
    return word


def counterfactual(text: str, attribute: str, rng: random.Random | None = None) -> str:
    """``text`` with every ``attribute`` word replaced by its counterpart, all at once.

    One ``re.sub`` pass replaces each match from the ORIGINAL text, so ``he ... she`` becomes ``she ... he``
    (never he -> she -> he); whole words only; case and the surrounding punctuation are kept. Gender is
    deterministic; race/religion need ``rng`` (a ``random.Random``), from which exactly three choices are drawn
    per call, as bias-bench draws per example. Text without attribute words comes back unchanged.
    """
    if not isinstance(text, str):
        raise ValueError(f"counterfactual: text must be a str, got {type(text).__name__}")
    if attribute not in ATTRIBUTES:
        raise ValueError(f"unknown bias attribute {attribute!r}; use one of {', '.join(ATTRIBUTES)}")
    entries = swap_entries(attribute)
    if attribute == "gender":
        targets = (1, 0)  # a pair: male <-> female
    else:
        if not isinstance(rng, random.Random):
            raise ValueError(f"counterfactual: {attribute} swaps choose the replacement at random; pass "
                             f"rng=random.Random(seed), got {rng!r}")
        targets = tuple(rng.choice(others) for others in _OTHER_POSITIONS)

    def swap(match: re.Match[str]) -> str:
        entry, position = entries[match.group(0).lower()]
        return _match_case(match.group(0), entry[targets[position]])

    return word_pattern(attribute).sub(swap, text)


def counterfactual_versions(text: str, attribute: str) -> list[str]:
    """``text`` rendered once for every member position of the attribute's entries, without the versions equal
    to ``text``: gender gives its one counterfactual; race/religion give the text with every term as the first,
    the second and the third member of its triple (SentenceDebias' counterfactual sets, Liang et al. 2020: one
    sentence per social group)."""
    if attribute == "gender":
        versions = [counterfactual(text, attribute)]
    else:
        if attribute not in ATTRIBUTES:
            raise ValueError(f"unknown bias attribute {attribute!r}; use one of {', '.join(ATTRIBUTES)}")
        entries = swap_entries(attribute)
        size = max(len(e) for e, _ in entries.values())
        versions = [word_pattern(attribute).sub(
            lambda m, k=k: _match_case(m.group(0), entries[m.group(0).lower()][0][k]), text) for k in range(size)]
    out: list[str] = []
    for v in versions:
        if v != text and v not in out:
            out.append(v)
    return out


def cda_corpus(texts: Iterable[str], attribute: str, *, seed: int = 0,
               keep_unmatched: bool = False) -> tuple[list[str], dict[str, int]]:
    """Two-sided CDA of a corpus: the training texts and what happened to the input.

    Every input text is split into lines (empty lines skipped); every line with an attribute word is emitted
    as ``line, counterfactual(line)`` (original first, its counterfactual right after). Lines without one are
    dropped (bias-bench) or, with ``keep_unmatched``, emitted once. Deterministic for ``seed``: one
    ``random.Random(seed)`` drives the race/religion choices in input order.

    Counts: ``texts_in`` input texts, ``lines`` non-empty lines, ``with_attribute_words`` +
    ``without_attribute_words`` == ``lines``, ``augmented`` lines emitted with a counterfactual (every line with
    an attribute word: a swap never returns the same word), ``texts_out`` == 2 * ``augmented`` (+
    ``without_attribute_words`` when kept) == len(output).
    """
    if attribute not in ATTRIBUTES:
        raise ValueError(f"unknown bias attribute {attribute!r}; use one of {', '.join(ATTRIBUTES)}")
    if isinstance(texts, str):
        raise ValueError("cda_corpus: texts must be an iterable of strings, got one str")
    rng = random.Random(seed)
    pattern = word_pattern(attribute)
    out: list[str] = []
    counts = {"texts_in": 0, "lines": 0, "with_attribute_words": 0, "without_attribute_words": 0,
              "augmented": 0, "texts_out": 0}
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise ValueError(f"cda_corpus: text {i} is a {type(text).__name__}, not a str")
        counts["texts_in"] += 1
        for line in text.splitlines():
            if not line.strip():
                continue
            counts["lines"] += 1
            if pattern.search(line) is None:
                counts["without_attribute_words"] += 1
                if keep_unmatched:
                    out.append(line)
                continue
            counts["with_attribute_words"] += 1
            out.append(line)
            out.append(counterfactual(line, attribute, rng))
            counts["augmented"] += 1
    counts["texts_out"] = len(out)
    return out, counts


def group_texts(token_ids: list[list[int]], block_size: int = BLOCK_SIZE) -> list[list[int]]:
    """HF run_clm's ``group_texts``: concatenate the tokenised texts, drop the remainder that does not fill a
    block, and cut the rest into ``block_size`` chunks. (N texts of any length) -> (total // block_size,
    block_size). Fewer than ``block_size`` tokens in all give no block (current run_clm; bias-bench's older
    copy kept that short remainder as one block)."""
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"group_texts: block_size must be an int >= 1, got {block_size!r}")
    flat = [t for ids in token_ids for t in ids]
    total = (len(flat) // block_size) * block_size
    return [flat[i:i + block_size] for i in range(0, total, block_size)]


__all__ = ["BLOCK_SIZE", "EFFECTIVE_BATCH", "LR", "SEEDS", "STEPS", "cda_corpus", "counterfactual", "counterfactual_versions",
           "group_texts"]
