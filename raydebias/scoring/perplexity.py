"""Forgetting: language-modelling loss and perplexity on held-out general text (SPEC §7b; seed 002).

    model, tok = models.load_model("gpt2", "causal_lm")
    base = general_lm_loss(model, tok, wikitext2_test_texts)       # {"loss": ..., "ppl": exp(loss), "tokens": ...}
    variant = general_lm_loss(debiased, tok, wikitext2_test_texts)
    forgetting(base, variant)                                      # {"delta_loss": ..., "delta_ppl": ..., "ppl_ratio": ...}

A debiasing method that damages the model's general language ability shows as a higher loss on ordinary text
than the base model's, on the same text with the same tokenizer.

Method: Hugging Face's "Perplexity of fixed-length models" (https://huggingface.co/docs/transformers/perplexity).
The texts are joined with ``"\\n\\n"`` into one stream and tokenized once, exactly as that guide evaluates
WikiText-2 (``tokenizer("\\n\\n".join(test["text"]))`` on ``wikitext-2-raw-v1``'s test split). Windows of
``block_size`` tokens (default: the model's context, ``models.max_input_tokens``) start every ``stride`` tokens
(default ``stride = block_size``: non-overlapping windows). Each window scores only the tokens no earlier window
scored (the guide's ``trg_len = end_loc - prev_end_loc``), so with ``stride < block_size`` every token is scored
once, and (past the first window) with at least ``block_size - stride`` tokens of context.

``log_probs`` lets a variant's inference-time change (``Intervention.log_probs``, e.g. Self-Debias) define the
distribution that is scored; hooks (INLP, SentenceDebias) already act inside ``model``.

Token-count convention. A token is scored from the logits of the position before it *in the same window*:
- the corpus's first token is never scored (nothing precedes it);
- with non-overlapping windows (stride == block) the first token of every window has no context in its window
  either, so it is not scored: ``tokens = len(ids) - n_windows``;
- with stride < block every later window starts before the first token it scores, so every token after the
  first is scored exactly once: ``tokens = len(ids) - 1``.
We count scored tokens exactly. (The guide's ``num_valid_tokens - batch_size`` is exact only for
non-overlapping windows; with overlap it is one short per window, which slightly reweights windows.)

``loss`` is the token-weighted mean next-token cross-entropy (nats) over all scored tokens, ``ppl = exp(loss)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from raydebias import models

__all__ = ["JOIN", "forgetting", "general_lm_loss", "model_log_probs", "windows"]

JOIN = "\n\n"  # the separator of the HF guide's WikiText-2 evaluation


def windows(n_ids: int, block_size: int, stride: int) -> list[tuple[int, int, int]]:
    """(begin, end, first_target) per window over ``n_ids`` tokens: the window is ids[begin:end] and it scores
    the targets ids[first_target:end], each predicted from the position before it (first_target > begin)."""
    out, prev_end = [], 0
    for begin in range(0, n_ids, stride):
        end = min(begin + block_size, n_ids)
        first_target = max(prev_end, begin + 1)  # a target needs a position before it in its window
        if first_target < end:
            out.append((begin, end, first_target))
        prev_end = end
        if end == n_ids:
            break
    return out


def model_log_probs(model: Any, tokenizer: Any, input_ids: Any, attention_mask: Any) -> Any:
    """(B, T) ids -> (B, T, V) float32 log p(next token | ids[:, :t+1]): the plain model, no intervention."""
    import torch

    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
    return torch.log_softmax(logits.float(), dim=-1)


LogProbs = Callable[[Any, Any, Any, Any], Any]


def general_lm_loss(model, tokenizer, texts: Sequence[str], *, block_size: int | None = None,
                    stride: int | None = None, batch_size: int = 8, log_probs: LogProbs | None = None) -> dict:
    """Token-weighted mean next-token cross-entropy of ``model`` on ``texts`` joined with "\\n\\n" (module doc).

    ``log_probs(model, tokenizer, input_ids (B, T), attention_mask (B, T)) -> (B, T, V)`` next-token
    log-probabilities; default :func:`model_log_probs`. Pass a variant's ``Intervention.log_probs``
    (raydebias.baselines.base) to score the model as that variant changes it at inference (e.g. Self-Debias).

    Returns {"loss": mean NLL in nats, "ppl": exp(loss), "tokens": number of scored tokens}.
    Windows of the same length are batched ``batch_size`` at a time, without padding (the attention mask is all
    ones), so the result does not depend on ``batch_size``.
    """
    if isinstance(texts, str):
        raise TypeError("general_lm_loss expects a list of texts, got one string; wrap it in a list")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"general_lm_loss: texts[{i}] is {type(text).__name__} ({text!r}), expected str")
    if not any(text.strip() for text in texts):
        raise ValueError(f"general_lm_loss needs a non-empty held-out corpus, got {len(texts)} blank text(s)")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"general_lm_loss batch_size must be an int >= 1, got {batch_size!r}")
    context = models.max_input_tokens(tokenizer, model)
    block = context if block_size is None else block_size
    if not isinstance(block, int) or not 2 <= block <= context:
        raise ValueError(f"general_lm_loss block_size must be an int in [2, {context}] (the model's context), "
                         f"got {block_size!r}")
    step = block if stride is None else stride
    if not isinstance(step, int) or not 1 <= step <= block:
        raise ValueError(f"general_lm_loss stride must be an int in [1, block_size={block}], got {stride!r}")

    # verbose=False: the stream is longer than the model's limit on purpose (it is windowed below).
    ids = tokenizer(JOIN.join(texts), return_tensors="pt", verbose=False)["input_ids"][0]  # (N,)
    spans = windows(len(ids), block, step)
    if not spans:
        raise ValueError(f"general_lm_loss: the corpus tokenizes to {len(ids)} token(s); at least 2 are needed")

    device = next(model.parameters()).device
    was_training = model.training
    model.eval()  # dropout on (a Dropout-baseline model left in train mode) would make the loss random
    try:
        nll_sum, n_tokens = _windowed_nll(model, tokenizer, ids, spans, batch_size, device,
                                          log_probs or model_log_probs)
    finally:
        model.train(was_training)
    loss = nll_sum / n_tokens
    return {"loss": loss, "ppl": math.exp(loss), "tokens": n_tokens}


def _windowed_nll(model, tokenizer, ids, spans, batch_size: int, device, log_probs: LogProbs) -> tuple[float, int]:
    """(sum of NLL over the scored targets, their count) for ids (N,) cut into ``spans`` (see :func:`windows`)."""
    import torch

    nll_sum, n_tokens = 0.0, 0
    # Group windows by length (all but possibly the last are `block` long): no padding, so no attention-mask or
    # position-id subtleties, and batching cannot change a window's logits.
    by_length: dict[int, list[tuple[int, int, int]]] = {}
    for span in spans:
        by_length.setdefault(span[1] - span[0], []).append(span)
    for length, group in by_length.items():
        for start in range(0, len(group), batch_size):
            chunk = group[start:start + batch_size]
            inputs = torch.stack([ids[b:e] for b, e, _ in chunk]).to(device)  # (B, L)
            # targets[:, t] = inputs[:, t + 1], scored only from each window's first_target on.
            keep = torch.zeros(len(chunk), length - 1, dtype=torch.bool)  # (B, L - 1)
            for row, (b, _, first) in enumerate(chunk):
                keep[row, first - b - 1:] = True
            keep = keep.to(device)
            with torch.inference_mode():
                logp = log_probs(model, tokenizer, inputs, torch.ones_like(inputs))  # (B, L, V)
                if logp.ndim != 3 or tuple(logp.shape[:2]) != tuple(inputs.shape):
                    raise ValueError(f"general_lm_loss: log_probs returned shape {tuple(logp.shape)}, expected "
                                     f"({inputs.shape[0]}, {inputs.shape[1]}, vocab)")
                # position t predicts token t + 1
                nll = -logp[:, :-1].float().gather(-1, inputs[:, 1:, None]).squeeze(-1)  # (B, L - 1)
            nll_sum += float(nll[keep].double().sum())
            n_tokens += int(keep.sum())
    return nll_sum, n_tokens


def forgetting(base: dict, variant: dict) -> dict:
    """How much worse ``variant`` models the held-out text than ``base`` (both from :func:`general_lm_loss`).

    Returns {"delta_loss": variant − base loss, "delta_ppl": variant − base perplexity, "ppl_ratio": variant /
    base perplexity}; positive deltas (ratio > 1) mean forgetting. Both must have scored the same tokens: a loss
    per token is only comparable on the same corpus, tokenizer and windows.
    """
    for name, result in (("base", base), ("variant", variant)):
        missing = [k for k in ("loss", "ppl", "tokens") if k not in result]
        if missing:
            raise ValueError(f"forgetting: {name} result lacks {missing}; pass general_lm_loss(...) outputs")
        if not (math.isfinite(result["loss"]) and result["ppl"] > 0):
            raise ValueError(f"forgetting: {name} has a non-finite loss or non-positive ppl: {result!r}")
    if base["tokens"] != variant["tokens"]:
        raise ValueError(
            f"forgetting: base scored {base['tokens']} tokens, variant {variant['tokens']}: they were evaluated on "
            "different text, tokenizers or windows, so their losses are not comparable"
        )
    return {
        "delta_loss": variant["loss"] - base["loss"],
        "delta_ppl": variant["ppl"] - base["ppl"],
        "ppl_ratio": variant["ppl"] / base["ppl"],
    }
