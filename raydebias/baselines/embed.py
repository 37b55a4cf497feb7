"""Sentence features for the projection baselines (INLP, SentenceDebias): the mean over a text's tokens of the
hidden states the LM head multiplies.

bias-bench computes both from ``last_hidden_state`` of the bare model (``GPT2Model``: after the final
LayerNorm), averaged over the non-padding tokens (``bias_bench/debias/sentence_debias.py``,
``compute_gender_subspace``: ``embedding *= attention_mask; sum(dim=1) / attention_mask.sum``;
``bias_bench/debias/inlp/context_nullspace_projection.py``: one unpadded sentence at a time, ``mean(dim=1)``).
Here the states are taken from a forward pre-hook on ``model.get_output_embeddings()``, the module that
:class:`raydebias.baselines.base.RemoveDirections` hooks, so the directions are fitted in exactly the space
they are removed from, for GPT-2, Phi and Llama alike (whatever the final norm is called).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


class _Captured(Exception):
    """Raised by the capture hook to stop the forward pass before the LM head: the (B, T, V) logits are
    never needed here, and at batch 32 x 128 tokens x 50k vocabulary they cost ~0.8 GB in float32."""

    def __init__(self, hidden: Any):
        super().__init__()
        self.hidden = hidden


def _pad_id(tokenizer: Any) -> int:
    """Any id works for right padding of a causal LM (masked out, and after every real token), so the
    caller's tokenizer is not touched: its pad token, else eos (what bias-bench sets for GPT-2), else 0."""
    for tid in (getattr(tokenizer, "pad_token_id", None), getattr(tokenizer, "eos_token_id", None)):
        if isinstance(tid, int):
            return tid
    return 0


def mean_pooled_hidden(model: Any, tokenizer: Any, texts: Sequence[str], *, batch_size: int = 32,
                       max_length: int = 128) -> np.ndarray:
    """(N,) texts -> (N, d) float32: per text, the mean over its tokens of the LM head's input states.

    Texts are tokenized as the tokenizer does by default (special tokens included: Llama's BOS counts as a
    token, as in bias-bench), truncated to ``max_length`` tokens (bias-bench's SentenceDebias value, 128),
    right-padded per batch of ``batch_size`` and run under ``torch.no_grad()`` with the model in eval mode
    (restored afterwards). Right padding with causal attention leaves every real token's state unchanged,
    so a row does not depend on the batch it was in. Pooling is in float32 whatever the model's dtype.
    """
    import torch

    texts = list(texts)
    if batch_size < 1:
        raise ValueError(f"mean_pooled_hidden: batch_size must be >= 1, got {batch_size}")
    if max_length < 1:
        raise ValueError(f"mean_pooled_hidden: max_length must be >= 1, got {max_length}")
    bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
    if bad:
        raise ValueError(f"mean_pooled_hidden: texts[{bad[0]}] is {type(texts[bad[0]]).__name__}, not str")
    head = model.get_output_embeddings()
    if head is None:
        raise ValueError(f"{type(model).__name__} has no output embeddings to read hidden states from")
    device = next(model.parameters()).device
    pad = _pad_id(tokenizer)

    def capture(_module, args):
        raise _Captured(args[0])

    was_training = model.training
    model.eval()  # dropout off: features must be a function of the text
    handle = head.register_forward_pre_hook(capture)
    out = []
    try:
        for start in range(0, len(texts), batch_size):
            chunk = texts[start:start + batch_size]
            ids = tokenizer(chunk, truncation=True, max_length=max_length)["input_ids"]
            empty = [start + i for i, row in enumerate(ids) if len(row) == 0]
            if empty:
                raise ValueError(f"mean_pooled_hidden: texts[{empty[0]}] = {texts[empty[0]]!r} has no tokens "
                                 f"to average")
            width = max(len(row) for row in ids)
            input_ids = torch.full((len(ids), width), pad, dtype=torch.long)
            mask = torch.zeros((len(ids), width), dtype=torch.long)
            for i, row in enumerate(ids):
                input_ids[i, :len(row)] = torch.as_tensor(row, dtype=torch.long)
                mask[i, :len(row)] = 1
            input_ids, mask = input_ids.to(device), mask.to(device)
            with torch.no_grad():
                try:
                    model(input_ids=input_ids, attention_mask=mask)
                except _Captured as c:
                    h = c.hidden.float()  # (B, T, d)
                else:  # the head was not called: nothing was captured
                    raise RuntimeError(f"{type(model).__name__}'s forward never called its output embeddings")
            m = mask.unsqueeze(-1).to(h.dtype)  # (B, T, 1)
            out.append(((h * m).sum(dim=1) / m.sum(dim=1)).cpu().numpy())  # (B, d)
    finally:
        handle.remove()
        model.train(was_training)
    if not out:
        d = getattr(head, "in_features", None) or head.weight.shape[-1]
        return np.zeros((0, d), dtype=np.float32)
    return np.concatenate(out, axis=0).astype(np.float32, copy=False)


__all__ = ["mean_pooled_hidden"]
