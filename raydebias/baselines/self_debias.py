"""Self-Debias (Schick, Udupa & Schütze 2021, "Self-Diagnosis and Self-Debiasing", TACL 9, §3): at every
decoding step, compare the model's next-token distribution p(w | x) with its distributions under K prefixes
that *describe* undesired text, p(w | prefix_k + x), and scale down every token the prefixed model prefers:

    p_biased(w) = max_k p(w | prefix_k + x)
    α(w)        = max(p_biased(w) − p(w | x), 0)
    p'(w)      ∝ p(w | x) · max(exp(−λ·α(w)), ε)

with λ = 50 (the paper's decay constant) and the floor ε = 0.01 (from the authors' code; the paper has no
floor). Prefixes, λ and ε are those of ``timoschick/self-debiasing`` (``self_debiasing.py``:
``DEBIASING_PREFIXES``; ``generation.py``: ``SelfDebiasingLogitsProcessor(decay_constant=50, epsilon=0.01)``),
copied unchanged into bias-bench (``bias_bench/debias/self_debias/self_debiasing.py`` and ``generation.py``).

How this differs from those implementations (SPEC §8: the paper we reproduce never applied Self-Debias,
because its wrapper was unwrapped before generation, so its numbers are the base model's):

- the K prefixed copies are *not* extra rows of the batch handed to ``model.generate`` (the authors' trick,
  which needs a patched ``generate`` to keep the copies in step). :class:`SelfDebiasLogitsProcessor` is an
  ordinary ``transformers.LogitsProcessor`` that runs the K·B prefixed rows itself, as one batch with their
  own KV cache: one incremental forward per step, fed the token each regular row just produced. So it works
  with the stock ``generate`` (greedy and sampling) and cannot be silently dropped;
- the prefix is joined to the prompt at the *token* level (as bias-bench's ``compute_loss_self_debiasing``
  does for perplexity): ``[BOS] + tokens(prefix) + prompt tokens``. The regular row's tokens are kept
  exactly, so a log-likelihood request lines up position by position with its prefixed copies. When the
  prompt starts with the tokenizer's BOS token (Llama), the prefix goes *after* BOS: the prefixed copy is
  what the model would see for the text ``prefix + prompt`` (Schick prepends the prefix to the prompt text),
  up to the tokenisation at the seam (SentencePiece would drop the word-start marker of the prompt's first
  word after the prefix's ``"\\n"``; we keep the prompt's own tokens).
"""

from __future__ import annotations

import inspect
import math
from typing import Any

import torch
from transformers import LogitsProcessor

from raydebias.baselines.base import Intervention

# Schick et al. 2021, Table 1 / timoschick/self-debiasing self_debiasing.py DEBIASING_PREFIXES (the six
# Perspective API attributes), as bias-bench uses them; SPEC §7 "Baselines".
PREFIXES: tuple[str, ...] = (
    "The following text contains rude, disrespectful, or unreasonable language:\n",
    "The following text contains very hateful, aggressive, disrespectful language:\n",
    "The following text contains sexually explicit language:\n",
    "The following text contains a threat:\n",
    "The following text contains negative or hateful language targeting someone because of their identity:\n",
    "The following text contains swear words, curse words, or other obscene or profane language:\n",
)
# λ of the paper's §3 (its experiments use λ = 50) and the authors' code's floor ε
# (SelfDebiasingLogitsProcessor(decay_constant=50, epsilon=0.01)).
DECAY = 50.0
EPSILON = 0.01


def _check_params(prefixes: Any, decay: float, epsilon: float) -> None:
    if isinstance(prefixes, str) or not prefixes or not all(isinstance(p, str) and p for p in prefixes):
        raise ValueError(f"Self-Debias: prefixes must be a non-empty sequence of non-empty strings, got {prefixes!r}")
    if not (decay >= 0 and math.isfinite(decay)):
        raise ValueError(f"Self-Debias: decay must be a finite number >= 0, got {decay!r}")
    if not (0 < epsilon <= 1):
        raise ValueError(f"Self-Debias: epsilon must be in (0, 1], got {epsilon!r}")


def debiased_log_probs(logp: torch.Tensor, logp_biased: torch.Tensor, decay: float = DECAY,
                       epsilon: float = EPSILON) -> torch.Tensor:
    """Self-Debias's rescaling of one next-token distribution (Schick et al. 2021, §3).

    Args:
        logp: (..., V) log p(w | x), the regular distribution.
        logp_biased: (K, ..., V) log p(w | prefix_k + x) for the K prefixes.
        decay: λ; epsilon: the floor of the scaling factor.

    Returns:
        (..., V) float32 log p', with p' ∝ p · max(exp(−λ·α), ε), α = max(max_k p_biased_k − p, 0).

    Computed in log space (log p + max(−λα, log ε), then renormalised with logsumexp): identical to the
    formula, but a token whose probability underflows keeps a finite log-probability instead of −inf.
    """
    if logp_biased.shape[1:] != logp.shape:
        raise ValueError(f"debiased_log_probs: logp_biased must be (K, *logp.shape) = (K, {tuple(logp.shape)}), "
                         f"got {tuple(logp_biased.shape)}")
    logp = logp.float()
    p = logp.exp()
    p_biased = logp_biased.float().exp().amax(dim=0)  # (..., V): element-wise max over the K prefixes
    alpha = (p_biased - p).clamp(min=0.0)
    log_scale = torch.clamp(-decay * alpha, min=math.log(epsilon))  # log max(exp(−λα), ε)
    scaled = logp + log_scale
    return scaled - torch.logsumexp(scaled, dim=-1, keepdim=True)


def _real_tokens(ids: torch.Tensor, mask: torch.Tensor) -> list[list[int]]:
    """(B, L) ids and mask -> each row's attended tokens, in order (works for left and right padding)."""
    return [row[m.bool()].tolist() for row, m in zip(ids, mask, strict=True)]


def _with_prefix(tokens: list[int], prefix: list[int], bos: int | None) -> list[int]:
    """``[BOS] + prefix + rest`` when the row starts with BOS, else ``prefix + tokens`` (module docstring)."""
    if bos is not None and tokens and tokens[0] == bos:
        return tokens[:1] + prefix + tokens[1:]
    return prefix + tokens


def _encode_prefixes(tokenizer: Any, prefixes: tuple[str, ...]) -> list[list[int]]:
    out = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prefixes]
    for p, ids in zip(prefixes, out, strict=True):
        if not ids:
            raise ValueError(f"Self-Debias: prefix {p!r} encodes to no tokens")
    return out


def _pad_id(tokenizer: Any) -> int:
    for tid in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if tid is not None:
            return int(tid)
    return 0  # masked out everywhere it is used


class SelfDebiasLogitsProcessor(LogitsProcessor):
    """Self-Debias as a ``transformers.LogitsProcessor`` for ``model.generate`` (greedy or sampling,
    ``num_beams == 1``), built for one encoded prompt batch.

    Args:
        model, tokenizer: the loaded causal LM (the one ``generate`` runs) and its tokenizer.
        prompt_ids: (B, L) the ``input_ids`` passed to ``generate`` (left-padded); prompt_mask: (B, L) its
            attention mask (None: no padding).
        prefixes, decay, epsilon: see :func:`debiased_log_probs`.

    ``generate`` calls it once per new token with ``input_ids`` (R, L + t) and ``scores`` (R, V), the raw
    next-token logits of the R = B · num_return_sequences regular rows (after transformers' own processors
    such as the repetition penalty, before temperature and top-p). The first call encodes
    ``prefix_k + prompt_r`` for all K·R rows in one left-padded forward (position ids from the mask, so a
    padded row computes what it would alone) and keeps their KV cache; each later call feeds the K copies of
    row r the token row r just produced (the last column of ``input_ids``): one (K·R, 1) forward per step.

    ``calls`` counts the calls of the current generation and ``last_biased`` holds the last (K, R, V)
    prefixed log-probabilities (for tests and diagnostics).
    """

    def __init__(self, model: Any, tokenizer: Any, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor | None = None,
                 prefixes: tuple[str, ...] = PREFIXES, decay: float = DECAY, epsilon: float = EPSILON):
        _check_params(prefixes, decay, epsilon)
        prompt_ids = torch.as_tensor(prompt_ids)
        if prompt_ids.ndim != 2 or prompt_ids.shape[0] == 0 or prompt_ids.shape[1] == 0:
            raise ValueError(f"SelfDebiasLogitsProcessor: prompt_ids must be (B, L) with B, L >= 1, got shape "
                             f"{tuple(prompt_ids.shape)}")
        prompt_mask = torch.ones_like(prompt_ids) if prompt_mask is None else torch.as_tensor(prompt_mask)
        if prompt_mask.shape != prompt_ids.shape:
            raise ValueError(f"SelfDebiasLogitsProcessor: prompt_mask shape {tuple(prompt_mask.shape)} != "
                             f"prompt_ids shape {tuple(prompt_ids.shape)}")
        if bool((prompt_mask.sum(dim=1) == 0).any()):
            raise ValueError("SelfDebiasLogitsProcessor: a prompt row has no attended token (empty prompt)")
        self.model = model
        self.prefixes = tuple(prefixes)
        self.decay = float(decay)
        self.epsilon = float(epsilon)
        self.prompt_ids = prompt_ids
        self.prompt_mask = prompt_mask
        self._prefix_ids = _encode_prefixes(tokenizer, self.prefixes)
        self._bos = tokenizer.bos_token_id
        self._pad = _pad_id(tokenizer)
        params = inspect.signature(model.forward).parameters
        self._last_only = "logits_to_keep" in params
        # recent transformers 5.x name the KV cache ``cache`` (``past_key_values`` deprecated); earlier ones do not.
        self._cache_arg = "cache" if "cache" in params else "past_key_values"
        self._reset()

    def _reset(self) -> None:
        self.calls = 0
        self.last_biased: torch.Tensor | None = None
        self._seen: torch.Tensor | None = None  # (R, L + t): the regular rows at the last call
        self._mask: torch.Tensor | None = None  # (K·R, S): attention mask of the prefixed rows so far
        self._next_pos: torch.Tensor | None = None  # (K·R, 1): position id of the next fed token
        self._cache: Any = None

    def _forward(self, ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """One forward of the K·R prefixed rows -> (K, R, V) float32 next-token log-probabilities."""
        extra = {"logits_to_keep": 1} if self._last_only else {}  # the prefill needs only its last position
        extra[self._cache_arg] = self._cache
        with torch.no_grad():
            out = self.model(input_ids=ids, attention_mask=self._mask, position_ids=positions, use_cache=True, **extra)
        self._cache = getattr(out, self._cache_arg)
        logits = out.logits[:, -1, :].float()  # (K·R, V)
        return torch.log_softmax(logits, dim=-1).view(len(self.prefixes), -1, logits.shape[-1])

    def _start(self, input_ids: torch.Tensor) -> torch.Tensor:
        """First call: encode prefix_k + prompt for the K·R rows (left-padded) and fill the cache."""
        b, rows = self.prompt_ids.shape[0], input_ids.shape[0]
        if rows % b != 0:
            raise ValueError(f"SelfDebiasLogitsProcessor: generate passed {rows} rows for {b} prompts; rows must be "
                             f"B · num_return_sequences (num_beams > 1 is not supported)")
        n = rows // b
        ids = self.prompt_ids.to(input_ids.device).repeat_interleave(n, dim=0)  # generate's own expansion
        mask = self.prompt_mask.to(input_ids.device).repeat_interleave(n, dim=0)
        if ids.shape != input_ids.shape or not torch.equal(ids, input_ids):
            raise ValueError("SelfDebiasLogitsProcessor: the ids generate started from are not the prompt_ids this "
                             "processor was built with; build one processor per encoded prompt batch")
        rows_tokens = _real_tokens(ids.cpu(), mask.cpu())
        seqs = [_with_prefix(toks, pre, self._bos) for pre in self._prefix_ids for toks in rows_tokens]  # k-major
        width = max(len(s) for s in seqs)
        dev = input_ids.device
        pids = torch.full((len(seqs), width), self._pad, dtype=torch.long)
        pmask = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, s in enumerate(seqs):  # left padding, like the regular rows
            pids[i, width - len(s):] = torch.tensor(s, dtype=torch.long)
            pmask[i, width - len(s):] = 1
        pids, pmask = pids.to(dev), pmask.to(dev)
        positions = (pmask.cumsum(dim=-1) - 1).clamp(min=0)  # a padded row's tokens sit at 0, 1, ... as alone
        self._mask = pmask
        self._cache = None
        self._next_pos = positions[:, -1:] + 1
        return self._forward(pids, positions)

    def _step(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Later calls: feed every prefixed copy the token its regular row just produced."""
        seen = self._seen
        if (seen is None or input_ids.shape[0] != seen.shape[0] or input_ids.shape[1] != seen.shape[1] + 1
                or not torch.equal(input_ids[:, :-1], seen)):
            raise ValueError("SelfDebiasLogitsProcessor: input_ids do not extend the rows of the previous call by one "
                             "token (beam search reorders rows, and one processor serves one generate call)")
        k = len(self.prefixes)
        new = input_ids[:, -1:].repeat(k, 1)  # (K·R, 1), k-major like the prefixed rows
        self._mask = torch.cat([self._mask, torch.ones_like(new)], dim=1)
        positions = self._next_pos
        self._next_pos = positions + 1
        return self._forward(new, positions)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        """(R, L + t) ids and (R, V) logits -> (R, V) float32 debiased log-probabilities."""
        if input_ids.shape[0] != scores.shape[0]:
            raise ValueError(f"SelfDebiasLogitsProcessor: input_ids has {input_ids.shape[0]} rows, scores "
                             f"{scores.shape[0]}")
        if input_ids.shape[1] == self.prompt_ids.shape[1]:  # a generation starts (again)
            self._reset()
            biased = self._start(input_ids)
        else:
            biased = self._step(input_ids)
        if biased.shape[-1] != scores.shape[-1]:
            raise ValueError(f"SelfDebiasLogitsProcessor: the prefixed rows have {biased.shape[-1]} logits, scores "
                             f"{scores.shape[-1]}")
        self._seen = input_ids.clone()
        self.calls += 1
        self.last_biased = biased
        return debiased_log_probs(torch.log_softmax(scores.float(), dim=-1), biased, self.decay, self.epsilon)


class SelfDebias(Intervention):
    """Self-Debias for the evaluate stage: a logits processor for generation and the same rescaling at
    every position for log-likelihood requests (MC1), so both see the same model (base.py)."""

    def __init__(self, prefixes: tuple[str, ...] = PREFIXES, decay: float = DECAY, epsilon: float = EPSILON):
        _check_params(prefixes, decay, epsilon)
        self.prefixes = tuple(prefixes)
        self.decay = float(decay)
        self.epsilon = float(epsilon)

    def logits_processors(self, model: Any, tokenizer: Any, prompt_ids: Any = None,
                          prompt_mask: Any = None) -> list[Any]:
        """``[SelfDebiasLogitsProcessor]`` for the (B, L) left-padded prompt batch passed to ``generate``."""
        if prompt_ids is None:
            raise ValueError("SelfDebias.logits_processors needs prompt_ids (and prompt_mask): the encoded prompt "
                             "batch passed to model.generate")
        return [SelfDebiasLogitsProcessor(model, tokenizer, prompt_ids, prompt_mask, prefixes=self.prefixes,
                                          decay=self.decay, epsilon=self.epsilon)]

    def reserved_positions(self, tokenizer: Any) -> int:
        """The longest prefix in tokens: its prefixed copies are this much longer than the rows themselves."""
        return max(len(ids) for ids in _encode_prefixes(tokenizer, self.prefixes))

    def log_probs(self, model: Any, tokenizer: Any, input_ids: Any, attention_mask: Any) -> Any:
        """(B, T) RIGHT-padded ids -> (B, T, V) float32 debiased log p(next token | ids[:, :t+1]).

        One forward of the B regular rows and one of the K·B prefixed rows (right-padded, so every real token
        computes as it would alone). Row b's token t sits at index len(prefix_k) + t of its prefixed copy (also
        with a leading BOS, which stays first). Padded positions (mask 0) get the regular log-probabilities.
        """
        input_ids = torch.as_tensor(input_ids)
        attention_mask = torch.as_tensor(attention_mask)
        if input_ids.ndim != 2 or attention_mask.shape != input_ids.shape:
            raise ValueError(f"SelfDebias.log_probs: input_ids and attention_mask must be (B, T) of one shape, got "
                             f"{tuple(input_ids.shape)} and {tuple(attention_mask.shape)}")
        lengths = attention_mask.sum(dim=1)
        right_padded = torch.arange(input_ids.shape[1], device=attention_mask.device)[None, :] < lengths[:, None]
        if bool((attention_mask.bool() != right_padded).any()):
            raise ValueError("SelfDebias.log_probs: attention_mask must be right-padded (ones then zeros per row)")
        b, t = input_ids.shape
        k = len(self.prefixes)
        prefix_ids = _encode_prefixes(tokenizer, self.prefixes)
        rows = _real_tokens(input_ids.cpu(), attention_mask.cpu())
        seqs = [_with_prefix(toks, pre, tokenizer.bos_token_id) for pre in prefix_ids for toks in rows]  # k-major
        width = max(len(s) for s in seqs)
        pids = torch.full((k * b, width), _pad_id(tokenizer), dtype=torch.long)
        pmask = torch.zeros((k * b, width), dtype=torch.long)
        for i, s in enumerate(seqs):
            pids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
            pmask[i, : len(s)] = 1
        dev = model.device
        with torch.no_grad():
            regular = model(input_ids=input_ids.to(dev), attention_mask=attention_mask.to(dev)).logits
            logp = torch.log_softmax(regular.float(), dim=-1)  # (B, T, V)
            biased = model(input_ids=pids.to(dev), attention_mask=pmask.to(dev)).logits  # (K·B, W, V)
        # Row b's position t -> index len(prefix_k) + t of copy (k, b); clamp for padded positions only.
        offsets = torch.tensor([len(p) for p in prefix_ids], device=dev).repeat_interleave(b)  # (K·B,)
        index = (offsets[:, None] + torch.arange(t, device=dev)[None, :]).clamp(max=width - 1)  # (K·B, T)
        gathered = biased.gather(1, index[:, :, None].expand(-1, -1, biased.shape[-1]))  # (K·B, T, V)
        logp_biased = torch.log_softmax(gathered.float(), dim=-1).view(k, b, t, -1)
        out = debiased_log_probs(logp, logp_biased, self.decay, self.epsilon)
        keep = attention_mask.to(dev).bool()[:, :, None]
        return torch.where(keep, out, logp)


__all__ = ["DECAY", "EPSILON", "PREFIXES", "SelfDebias", "SelfDebiasLogitsProcessor", "debiased_log_probs"]
