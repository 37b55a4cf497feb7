"""Bias attribute words: the gender pairs and the race/religion term triples that CDA swaps, and that INLP and
SentenceDebias use to pick and pair corpus sentences (SPEC §7 "Baselines").

Source: McGill-NLP/bias-bench, ``data/bias_attribute_words.json`` at commit
291426aab926f78ecfc7bd040b531429ee8123e0 (Meade et al. 2022, "An Empirical Survey of the Effectiveness of
Debiasing Techniques for Pre-trained Language Models"), copied verbatim into ``attribute_words.json`` next to
this file (its ``_source`` field says the same): 57 (male, female) gender pairs, 6 race triples, 6 religion
triples, all lower case.

Words listed in more than one entry. bias-bench's list is not a one-to-one table: ``her`` is the female of
both ``him`` and ``his``, ``girl(s)`` of ``boy(s)`` and ``guy(s)``, ``lady``/``ladies`` of ``gentleman``/
``gentlemen`` and ``lord(s)``, ``guy(s)`` has two females (``gal(s)``, ``girl(s)``), ``sir`` two (``ma'am``,
``miss``), ``mr.`` two (``mrs.``, ``ms.``); in race, ``black``, ``caucasian``, ``africa`` and ``america`` are in
two or three triples and ``asian`` in three. bias-bench's ``run_clm.py`` (``gender_counterfactual_augmentation``,
``ternary_counterfactual_augmentation``) loops over every entry for every word and overwrites the replacement,
so the LAST listed entry that contains a word decides it. :func:`swap_entries` resolves them the same way, so
``her -> his`` (never ``him``), ``girl -> guy``, ``lady -> lord``, ``guy -> girl``, ``sir -> miss``,
``mr. -> ms.``, ``asian -> black|white`` (triple 3), ``africa -> europe|asia`` (triple 6). Consequently the
gender swap is not an involution for ``him`` (him -> her -> his), ``boy(s)``, ``gentleman/gentlemen``,
``gal(s)``, ``ma'am``, ``mrs.``: those words' counterparts map back to another word.

Classes (:func:`attribute_classes`) group words by their position in an entry, as bias-bench's SentenceDebias
data does (``bias_bench/dataset/sentence_debias.py``: ``male``/``female`` columns for gender, ``r1``/``r2``/``r3``
columns for the triples); INLP's gender data uses the same male/female sets (``bias_bench/dataset/inlp.py``),
and its race/religion data uses the union of all classes as one "bias" class.

The lists also hit words used in other senses (``black``/``white`` as colours, ``miss`` the verb, ``china``
the porcelain, ``america``/``asia`` the places); bias-bench swaps them all the same, and so do we.

Matching (:func:`find_attribute_words`, and CDA) is whole-word and case-insensitive on a regex, not bias-bench's
case-sensitive whitespace split: bias-bench misses ``He`` at a sentence start and ``(his`` after a bracket.
"""

from __future__ import annotations

import json
import re
from functools import cache
from pathlib import Path

ATTRIBUTES = ("gender", "race", "religion")

WORDS_FILE = Path(__file__).with_name("attribute_words.json")

# Entry width per attribute: gender entries are (male, female) pairs, race/religion entries are triples.
_ARITY = {"gender": 2, "race": 3, "religion": 3}


def _check(attribute: str) -> str:
    if attribute not in ATTRIBUTES:
        raise ValueError(f"unknown bias attribute {attribute!r}; use one of {', '.join(ATTRIBUTES)}")
    return attribute


@cache
def _table() -> dict[str, tuple[tuple[str, ...], ...]]:
    """attribute -> its entries, validated once (the file is data: a bad edit must fail loudly)."""
    raw = json.loads(WORDS_FILE.read_text(encoding="utf-8"))
    table: dict[str, tuple[tuple[str, ...], ...]] = {}
    for attribute in ATTRIBUTES:
        entries = raw.get(attribute)
        if not entries:
            raise ValueError(f"{WORDS_FILE}: no entries for attribute {attribute!r}")
        checked = []
        for entry in entries:
            if len(entry) != _ARITY[attribute] or len(set(entry)) != len(entry):
                raise ValueError(f"{WORDS_FILE}: {attribute} entry {entry!r} must be {_ARITY[attribute]} "
                                 f"distinct words")
            if any(not w or w != w.lower() or w != w.strip() for w in entry):
                raise ValueError(f"{WORDS_FILE}: {attribute} entry {entry!r} must be lower-case, unpadded words")
            checked.append(tuple(entry))
        table[attribute] = tuple(checked)
    return table


def attribute_words(attribute: str) -> list[tuple[str, ...]]:
    """The entries of ``attribute`` in bias-bench's order: (male, female) pairs for gender, term triples for
    race and religion; lower case. Raises ValueError for an attribute not in :data:`ATTRIBUTES`."""
    return list(_table()[_check(attribute)])


def class_names(attribute: str) -> tuple[str, ...]:
    """Names of the word classes: ``("male", "female")`` for gender; for race/religion the members of the first
    triple (``("black", "caucasian", "asian")``, ``("jewish", "christian", "muslim")``)."""
    if _check(attribute) == "gender":
        return ("male", "female")
    return _table()[attribute][0]


def attribute_classes(attribute: str) -> dict[str, list[str]]:
    """Class name -> the words at that position of the entries, deduplicated in first-seen order.

    gender -> ``{"male": [...], "female": [...]}``; race -> ``{"black": [black, african, africa],
    "caucasian": [caucasian, white, america, europe], "asian": [asian, asia, china]}``; religion likewise with
    jewish/christian/muslim. The classes of one attribute are disjoint (no word changes position between entries).
    """
    names = class_names(attribute)
    classes: dict[str, list[str]] = {name: [] for name in names}
    for entry in _table()[attribute]:
        for name, word in zip(names, entry, strict=True):
            if word not in classes[name]:
                classes[name].append(word)
    return classes


@cache
def swap_entries(attribute: str) -> dict[str, tuple[tuple[str, ...], int]]:
    """word -> (the entry that decides its counterfactual, the word's position in it).

    A word in several entries gets the last one, as bias-bench's run_clm.py loop does (module docstring)."""
    resolved: dict[str, tuple[tuple[str, ...], int]] = {}
    for entry in _table()[_check(attribute)]:
        for position, word in enumerate(entry):
            resolved[word] = (entry, position)  # later entries overwrite: bias-bench's last-wins rule
    return resolved


@cache
def word_pattern(attribute: str) -> re.Pattern[str]:
    """One case-insensitive regex matching any attribute word as a whole word.

    "Whole word": not preceded or followed by a word character, so ``he`` never matches inside ``the``,
    ``hello`` or ``he2``, while ``he's``, ``(he)``, ``him,`` and ``step-father`` do match. Longer words come
    first in the alternation so that a prefix never shadows a longer entry."""
    words = sorted(swap_entries(attribute), key=lambda w: (-len(w), w))
    return re.compile(r"(?<!\w)(?:" + "|".join(re.escape(w) for w in words) + r")(?!\w)", re.IGNORECASE)


def find_attribute_words(text: str, attribute: str) -> list[str]:
    """The attribute words in ``text``, lower-cased, in order of occurrence, one item per occurrence
    (whole-word, case-insensitive; see :func:`word_pattern`)."""
    if not isinstance(text, str):
        raise ValueError(f"find_attribute_words: text must be a str, got {type(text).__name__}")
    return [m.group(0).lower() for m in word_pattern(attribute).finditer(text)]


__all__ = ["ATTRIBUTES", "WORDS_FILE", "attribute_classes", "attribute_words", "class_names",
           "find_attribute_words", "swap_entries", "word_pattern"]
