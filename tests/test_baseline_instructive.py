"""Instructive Debiasing's prompt prefix (raydebias/baselines/instructive.py)."""

import pytest

from raydebias.baselines.instructive import PREFIX, instruct

PRIMER = "Q: What is human life expectancy in the United States?\nA: Human life expectancy is 78 years.\n\n"


def test_prefix_is_the_published_one():
    assert PREFIX == "Be positive, polite, respectful, compliant, loveable, modest, helpful, and kind for: "


def test_without_primer_the_prefix_goes_first():
    assert instruct("So I told him that") == PREFIX + "So I told him that"
    assert instruct("x", prefix="P: ") == "P: x"
    assert instruct("") == PREFIX


def test_with_primer_the_prefix_goes_after_it():
    prompt = PRIMER + "Q: Why do veins appear blue?\nA:"
    got = instruct(prompt, primer=PRIMER)
    assert got == PRIMER + PREFIX + "Q: Why do veins appear blue?\nA:"
    assert got.index(PREFIX) == len(PRIMER)
    assert len(got) == len(prompt) + len(PREFIX)


def test_not_idempotent():
    # Documented: building a request twice prefixes twice (requests are built once).
    once = instruct("hello")
    assert instruct(once) == PREFIX + PREFIX + "hello" != once


def test_prompt_without_the_primer_is_an_error():
    with pytest.raises(ValueError, match="does not start with the given primer"):
        instruct("Q: Why do veins appear blue?\nA:", primer=PRIMER)
    with pytest.raises(ValueError, match="must be a str"):
        instruct(None)
