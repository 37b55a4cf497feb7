"""Toxicity scorers shared by augmentation (toxic_rewrite's filter, every candidate's score) and evaluation.

    scorer = load_toxicity_scorer(cfg.augment.toxicity, device="cpu")
    scorer.score(["have a nice day", "you idiot"])   # -> [0.01, 0.93], one float in [0, 1] per text

The score is the probability of ONE named label, ``cfg.label`` ("toxicity"), never the top label's
score: the authors' code took the highest-scoring class, so a text whose "insult" score beat its
"toxicity" score was scored by insult (SPEC §2, §8 "TL;DR toxicity takes the top label's score").

Backends (``ToxicityConfig.backend``):

- ``detoxify``: detoxify's model types ("original" = unitary/toxic-bert, the paper's scorer) or a
  local/tiny checkpoint directory, loaded by ``models.load_detoxify``.
- ``hf``: any Hugging Face sequence classifier, loaded by ``models.load_model``; sigmoid for
  multi-label classifiers (toxic-bert), softmax otherwise.
- ``profanity``: alt-profanity-check, a linear model on a bag of words. Runs offline on CPU with real
  weights, so it gives a meaningful signal where no real toxic-bert is available; its numbers are
  NOT comparable with toxic-bert's (different model, different training data).

Models are loaded once at construction; ``score`` batches by ``cfg.batch_size``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Protocol, runtime_checkable

from raydebias import models
from raydebias.config import ToxicityConfig

__all__ = [
    "ToxicityScorer",
    "DetoxifyScorer",
    "HFClassifierScorer",
    "ProfanityScorer",
    "BACKENDS",
    "load_toxicity_scorer",
]

# detoxify renames toxic-bert's classes ("toxic" -> "toxicity"), the HF checkpoint keeps "toxic":
# one config value must mean the same label on both backends.
LABEL_ALIASES = {"toxicity": "toxic", "toxic": "toxicity"}


@runtime_checkable
class ToxicityScorer(Protocol):
    def score(self, texts: list[str]) -> list[float]:
        """One toxicity in [0, 1] per text, in order; [] for []."""
        ...


def _resolve_label(wanted: str, available: Sequence[str], where: str) -> str:
    """The label among `available` that `wanted` names (exactly, else via LABEL_ALIASES)."""
    if wanted in available:
        return wanted
    alias = LABEL_ALIASES.get(wanted)
    if alias is not None and alias in available:
        return alias
    raise ValueError(
        f"augment.toxicity.label {wanted!r} is not a label of {where}; its labels are "
        f"{', '.join(map(repr, available))}. Set augment.toxicity.label to one of them (SPEC §2: the score "
        f"is that of the toxicity label, never the top label)."
    )


def _check_texts(texts: Sequence[str]) -> None:
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"toxicity scorer: texts[{i}] is {type(text).__name__} ({text!r}), expected str")


def _chunks(texts: Sequence[str], size: int) -> Iterator[list[str]]:
    for i in range(0, len(texts), size):
        yield list(texts[i : i + size])


def _max_length(tokenizer, model) -> int:
    """Truncation length: the tokenizer's limit, capped by the model's position table.

    Tokenizers saved without a limit report a huge sentinel (int(1e30)); truncating to that would
    let a long post overflow BERT's 512 positions and crash instead of being cut.
    """
    limit = int(getattr(tokenizer, "model_max_length", 0) or 0)
    positions = getattr(model.config, "max_position_embeddings", None)
    if positions and (limit <= 0 or limit > positions):
        limit = int(positions)
    return limit if limit > 0 else 512


def _batch_size(cfg: ToxicityConfig) -> int:
    if cfg.batch_size < 1:
        raise ValueError(f"augment.toxicity.batch_size must be >= 1, got {cfg.batch_size!r}")
    return int(cfg.batch_size)


class DetoxifyScorer:
    """detoxify's ``predict(texts)[cfg.label]`` (the paper's scorer: detoxify "original")."""

    def __init__(self, cfg: ToxicityConfig, device: str = "cpu"):
        self.detoxify = models.load_detoxify(cfg.model, device=device)
        self.batch_size = _batch_size(cfg)
        # predict() returns one key per class name, so this is the check "is the label a returned key".
        self.label = _resolve_label(cfg.label, list(self.detoxify.class_names), f"detoxify model {cfg.model!r}")
        # detoxify tokenizes with truncation=True and no max_length: make sure the limit is a real one.
        self.detoxify.tokenizer.model_max_length = _max_length(self.detoxify.tokenizer, self.detoxify.model)

    def score(self, texts: list[str]) -> list[float]:
        import torch

        _check_texts(texts)
        out: list[float] = []
        for chunk in _chunks(texts, self.batch_size):
            with torch.inference_mode():
                predicted = self.detoxify.predict(chunk)
            if self.label not in predicted:  # detoxify renamed its classes since construction
                raise ValueError(f"detoxify returned no {self.label!r} score; its keys are {sorted(predicted)}")
            values = predicted[self.label]
            # predict() squeezes: a one-text batch comes back as a bare float, not a list.
            out.extend(float(v) for v in (values if isinstance(values, list) else [values]))
        return out


class HFClassifierScorer:
    """P(cfg.label) from any HF sequence classifier (e.g. unitary/toxic-bert, which names it "toxic")."""

    def __init__(self, cfg: ToxicityConfig, device: str = "cpu"):
        self.model, self.tokenizer = models.load_model(cfg.model, "sequence_classification", device=device)
        self.device = self.model.device
        self.batch_size = _batch_size(cfg)
        id2label = {int(i): name for i, name in self.model.config.id2label.items()}
        names = [id2label[i] for i in sorted(id2label)]
        self.label = _resolve_label(cfg.label, names, f"classifier {cfg.model!r}")
        self.index = names.index(self.label)
        # Multi-label heads (toxic-bert) score each class independently: sigmoid. A single-logit head
        # is a binary classifier: sigmoid too (softmax over one logit is always 1). Otherwise softmax.
        self.sigmoid = self.model.config.problem_type == "multi_label_classification" or len(names) == 1
        self.max_length = _max_length(self.tokenizer, self.model)

    def score(self, texts: list[str]) -> list[float]:
        import torch

        _check_texts(texts)
        out: list[float] = []
        for chunk in _chunks(texts, self.batch_size):
            enc = self.tokenizer(chunk, padding=True, truncation=True, max_length=self.max_length,
                                 return_tensors="pt").to(self.device)
            with torch.inference_mode():
                logits = self.model(**enc).logits.float()  # (B, num_labels)
            probs = torch.sigmoid(logits) if self.sigmoid else torch.softmax(logits, dim=-1)
            out.extend(probs[:, self.index].cpu().tolist())
        return out


class ProfanityScorer:
    """alt-profanity-check's P(profane). `cfg.model` and `cfg.label` do not apply (one fixed model)."""

    def __init__(self, cfg: ToxicityConfig, device: str = "cpu"):
        from profanity_check import predict_prob  # loads the pickled sklearn model once

        self._predict_prob = predict_prob
        self.batch_size = _batch_size(cfg)

    def score(self, texts: list[str]) -> list[float]:
        _check_texts(texts)
        out: list[float] = []
        for chunk in _chunks(texts, self.batch_size):
            out.extend(float(p) for p in self._predict_prob(chunk))
        return out


# One registry, a plain dict (STYLE habit 4).
BACKENDS: dict[str, type] = {"detoxify": DetoxifyScorer, "hf": HFClassifierScorer, "profanity": ProfanityScorer}


def load_toxicity_scorer(cfg: ToxicityConfig, device: str = "cpu") -> ToxicityScorer:
    """The scorer ``cfg.backend`` names, with its model loaded on ``device`` (cpu|gpu|auto)."""
    try:
        backend = BACKENDS[cfg.backend]
    except KeyError:
        raise ValueError(
            f"augment.toxicity.backend {cfg.backend!r} is unknown; use one of {', '.join(BACKENDS)}"
        ) from None
    return backend(cfg, device=device)
