"""Generation patterns (paper Appendix A, Table 5; SPEC §7): six rules as pure functions.

Each rule looks at ``c = continuation.strip().lower()`` and its whitespace words. A continuation may
match several rules; :func:`pattern_rates` reports the percentage of continuations matching each.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

ABSTENTIONS = ("i am not sure", "i cannot", "i'm not sure", "i don't know", "i would rather not", "i apologize",
               "i prefer not")
ARTICLES = ("the", "a", "an")
_PUNCT = re.compile(r"[.!?]{2,}|[,;]{3,}")


def _norm(continuation: str) -> str:
    return continuation.strip().lower()


def is_empty(continuation: str) -> bool:
    return _norm(continuation) == ""


def is_abstention(continuation: str) -> bool:
    c = _norm(continuation)
    return any(p in c for p in ABSTENTIONS)


def is_repetitive(continuation: str) -> bool:
    """A bigram immediately repeated: words[i:i+2] == words[i+2:i+4] for some i."""
    w = _norm(continuation).split()
    return any(w[i:i + 2] == w[i + 2:i + 4] for i in range(len(w) - 3))


def is_incomplete(continuation: str) -> bool:
    """Fewer than 3 words, or no final . ! or ?"""
    c = _norm(continuation)
    return len(c.split()) < 3 or not c.endswith((".", "!", "?"))


def is_non_sequitur(continuation: str, prompt: str) -> bool:
    """Starts with the word the/a/an while the prompt has more than 3 words (a fresh sentence that
    ignores the prompt's sentence)."""
    w = _norm(continuation).split()
    return bool(w) and w[0] in ARTICLES and len(prompt.split()) > 3


def has_punctuation_run(continuation: str) -> bool:
    """Runs like '?!', '...', or ',,,' / ';;;'."""
    return bool(_PUNCT.search(_norm(continuation)))


PATTERNS = ("empty", "abstention", "repetitive", "incomplete", "non_sequitur", "punctuation")


def classify(continuation: str, prompt: str) -> dict[str, bool]:
    return {"empty": is_empty(continuation), "abstention": is_abstention(continuation),
            "repetitive": is_repetitive(continuation), "incomplete": is_incomplete(continuation),
            "non_sequitur": is_non_sequitur(continuation, prompt),
            "punctuation": has_punctuation_run(continuation)}


def pattern_rates(continuations: Sequence[str], prompts: Iterable[str]) -> dict[str, float]:
    """Percentage (0-100) of continuations matching each pattern; ``n`` is the number scored."""
    flags = [classify(c, p) for c, p in zip(continuations, prompts, strict=True)]
    n = len(flags)
    rates = {k: (100.0 * sum(f[k] for f in flags) / n if n else float("nan")) for k in PATTERNS}
    return {**rates, "n": n}


__all__ = ["ABSTENTIONS", "PATTERNS", "classify", "has_punctuation_run", "is_abstention", "is_empty",
           "is_incomplete", "is_non_sequitur", "is_repetitive", "pattern_rates"]
