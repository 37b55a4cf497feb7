"""What a debiasing method hands to evaluation: a *variant* of a base causal LM, and the inference-time
intervention (``Intervention``) that the generation actor applies to the model it loaded.

A method changes a base model in one of three ways (issue #15, SPEC §7 "Baselines"):

- new weights (CDA, Dropout, the contrastive model): ``Variant.model`` is the fine-tuned directory and the
  intervention is the identity;
- a fitted artifact plus a hook on the final hidden states (INLP, SentenceDebias): ``Variant.artifact``
  holds the directions to remove and :class:`RemoveDirections` projects ``h`` before the LM head;
- a decoding or prompt wrapper (Self-Debias: a logits processor; Instructive: a prompt prefix, applied when
  the requests are built, so that the prompt budget counts it).

This module is pure (torch only, no Ray): the evaluate stage's generation actor builds the intervention from
the variant once (``intervention(variant)``), attaches it to the model, and routes both generation and
log-likelihood (MC1) requests through it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from raydebias.errors import ConfigError


@dataclass(frozen=True)
class Variant:
    """One evaluated row of the comparison tables.

    ``name`` is the row name (``inlp_gender``, ``self_debias``, ``base``, ...), ``method`` the method that made
    it (a key of ``raydebias.baselines.METHODS``, or ``"base"``/``"contrastive"``), ``model`` what the
    generation actor loads (the base id, or a fine-tuned directory / object-store URI), ``artifact`` a fitted
    file the intervention reads (INLP/SentenceDebias directions), ``prompt_prefix`` text put before every
    prompt (after a benchmark's primer) and ``options`` the method's inference settings (plain values)."""

    name: str
    method: str
    model: str
    artifact: str | None = None
    prompt_prefix: str | None = None
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def hf_only(self) -> bool:
        """True when the intervention needs the HF backend (a hook or a logits processor)."""
        return self.method in HF_ONLY_METHODS


# Methods whose intervention is a hook or a logits processor (vLLM cannot run them: a clear error).
HF_ONLY_METHODS = frozenset({"inlp", "sentence_debias", "self_debias"})


class Intervention:
    """What a variant changes at inference on a loaded HF causal LM. This base class changes nothing.

    - :meth:`attach` is called once after the model is loaded (hooks);
    - :meth:`logits_processors` are passed to ``model.generate`` (they run before temperature and top-p:
      transformers merges user processors ahead of its warpers);
    - :meth:`log_probs` gives the next-token log-probabilities at every position, used for log-likelihood
      requests, so MC1 sees the same model as generation.
    """

    def attach(self, model: Any) -> None:
        return None

    def detach(self) -> None:
        """Undo :meth:`attach` (one actor serves several variants of the same weights, a batch at a time)."""
        return None

    def reserved_positions(self, tokenizer: Any) -> int:
        """Positions the intervention adds in front of every sequence (Self-Debias' prefixes): prompts, windows
        and log-likelihood contexts must leave them free in the model's context."""
        return 0

    def logits_processors(self, model: Any, tokenizer: Any, *, prompt_ids: Any = None, prompt_mask: Any = None
                          ) -> list[Any]:
        """Processors for one ``generate`` call on the encoded (left-padded) prompt batch."""
        return []

    def log_probs(self, model: Any, tokenizer: Any, input_ids: Any, attention_mask: Any) -> Any:
        """(B, T) right-padded ids -> (B, T, V) float32 log p(next token | ids[:, :t+1])."""
        import torch

        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
        return torch.log_softmax(logits.float(), dim=-1)


class RemoveDirections(Intervention):
    """``h ← h − Q Qᵀ h`` on the final hidden states, before the LM head: the orthogonal projection onto the
    complement of span(directions) (Q: an orthonormal basis of that span).

    INLP's P (the projection onto the intersection of the classifiers' nullspaces, Ravfogel et al. 2020) is
    exactly this with the classifiers' weight vectors as directions; SentenceDebias (Liang et al. 2020) is
    this with the one bias direction v (``h − (h·v)v/(v·v)``).

    A forward pre-hook on ``model.get_output_embeddings()`` sees exactly the hidden states the LM head
    multiplies (after the final norm), for GPT-2, Phi and Llama alike."""

    def __init__(self, directions: Any):
        import torch

        d = torch.as_tensor(directions, dtype=torch.float64)
        if d.ndim == 1:
            d = d[None, :]
        if d.ndim != 2 or d.shape[0] == 0:
            raise ValueError(f"RemoveDirections: directions must be (k, d) with k >= 1, got shape "
                             f"{tuple(d.shape)}")
        q, r = torch.linalg.qr(d.T)  # (d, k): columns span the directions
        keep = r.diagonal().abs() > 1e-10 * r.diagonal().abs().max()  # drop dependent directions
        if not bool(keep.any()):
            raise ValueError("RemoveDirections: every direction is zero")
        self.basis = q[:, keep].float()  # (d, k')
        self._handle = None

    def project(self, h: Any) -> Any:
        """(..., d) -> (..., d), in h's dtype and device."""
        q = self.basis.to(device=h.device, dtype=h.dtype)
        return h - (h @ q) @ q.T

    def attach(self, model: Any) -> None:
        head = model.get_output_embeddings()
        if head is None:
            raise ValueError(f"{type(model).__name__} has no output embeddings to hook")
        self.detach()
        self._handle = head.register_forward_pre_hook(lambda _m, args: (self.project(args[0]), *args[1:]))

    def detach(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None


def as_variant(model: str | Variant) -> Variant:
    """A model id/path is the variant that changes nothing (the base model, a trained directory)."""
    return model if isinstance(model, Variant) else Variant(name=str(model), method="base", model=str(model))


def check_backend(variant: Variant, backend: str) -> None:
    """Hooks and logits processors act on a transformers model; vLLM runs its own kernels: refuse, clearly."""
    if variant.hf_only and backend != "hf":
        raise ConfigError(f"{variant.name}: the {variant.method} intervention (a hidden-state hook or a logits "
                          f"processor) runs on the HF generation backend only, got evaluate.backend={backend!r}: "
                          "set evaluate.backend=hf")


DIRECTIONS_FILE = "directions.safetensors"


def load_directions(artifact_dir: str | os.PathLike) -> Any:
    """The ``directions`` tensor (k, d) of a fitted artifact directory (written by :func:`save_directions`)."""
    from safetensors.torch import load_file

    path = Path(artifact_dir) / DIRECTIONS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no fitted directions at {path}: build the variant first (--stage benchmark)")
    return load_file(str(path))["directions"]


def save_directions(artifact_dir: str | os.PathLike, directions: Any, **metadata: Any) -> Path:
    """Write (k, d) directions as safetensors into ``artifact_dir``, with string metadata (method, attribute,
    base model, fit statistics)."""
    import torch
    from safetensors.torch import save_file

    Path(artifact_dir).mkdir(parents=True, exist_ok=True)
    path = Path(artifact_dir) / DIRECTIONS_FILE
    save_file({"directions": torch.as_tensor(directions, dtype=torch.float32).contiguous()}, str(path),
              metadata={k: str(v) for k, v in metadata.items()})
    return path


__all__ = ["HF_ONLY_METHODS", "Intervention", "RemoveDirections", "DIRECTIONS_FILE", "Variant", "as_variant",
           "check_backend", "load_directions", "save_directions"]
