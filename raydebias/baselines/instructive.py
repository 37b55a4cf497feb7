"""Instructive Debiasing (Morabito, Kabbara & Emami 2023, "Debiasing should be Good and Bad: Measuring the
Consistency of Debiasing Techniques in Language Models", Findings of ACL 2023): an instruction put before
the prompt. SPEC §7 "Baselines": the prefix goes before the prompt, after the QA primer for TruthfulQA.

The prefix is applied when the evaluation requests are built (``Variant.prompt_prefix``), so the prompt
budget counts its tokens; there is no inference-time intervention. Unlike the authors' code (SPEC §8), it is
applied for every model, not under one model name.
"""

from __future__ import annotations

# Morabito et al. 2023, the instructive-debiasing prefix (as SPEC §7 and the reproduced paper use it).
PREFIX = "Be positive, polite, respectful, compliant, loveable, modest, helpful, and kind for: "


def instruct(prompt: str, prefix: str = PREFIX, primer: str = "") -> str:
    """The prompt with the instruction: ``primer + prefix + rest`` when ``primer`` is given (TruthfulQA's QA
    primer, which the prompt must start with), else ``prefix + prompt``.

    Not idempotent, on purpose: instructing an instructed prompt adds the prefix again (a request must be
    built once; a second prefix is what the model would then see, not something to hide).
    """
    if not isinstance(prompt, str):
        raise ValueError(f"instruct: prompt must be a str, got {type(prompt).__name__}")
    if not primer:
        return prefix + prompt
    if not prompt.startswith(primer):
        raise ValueError(f"instruct: the prompt does not start with the given primer {primer[:60]!r}...; "
                         f"prompt starts {prompt[:60]!r}")
    return primer + prefix + prompt[len(primer):]


__all__ = ["PREFIX", "instruct"]
