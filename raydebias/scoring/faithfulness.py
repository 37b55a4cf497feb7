"""Faithfulness of a summary to its source (SPEC §7; paper Section 5, Table 4).

Two scorers share one interface, ``score(sources, summaries) -> list[float]`` in [0, 1]:

- :class:`NLIFaithfulness`, SummaC-style (Laban et al. 2022) with any Hugging Face NLI / fact-checking
  sequence classifier (``evaluate.nli_model``; default ``tals/albert-xlarge-vitaminc-mnli``, the paper's;
  MiniCheck- or AlignScore-class checkers are stronger production choices). The source is split into
  windows of 2 sentences (stride 2), the summary into sentences; P(entailment) is computed for every
  (window, sentence) pair; each sentence takes its best window, the summary the mean over its sentences
  (:func:`summac_aggregate`). A score inside the uncertain band (0.3, 0.7) becomes
  max(score, P(entailment | whole source, whole summary)).
- :class:`EntityPrecision`: the share of the summary's named entities found in the source (case-
  insensitive); no model beyond NER. A non-empty summary without entities scores NaN (nothing to check);
  evaluation counts those as ``n_missing`` next to the mean, never silently.

An empty or whitespace-only summary scores 0 under both scorers: it states nothing the source supports,
and a model that answers with nothing must not look more faithful by having its empty rows drop out of
a mean (issue 13). NaN is kept for what is really undefined (a non-empty summary against an empty
source; a summary without entities), and :func:`nanmean_std` reports how many values it left out.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Sequence

from raydebias import models

_ENTAIL = re.compile(r"entail|support|consistent|faithful", re.I)


@functools.cache
def _sentencizer():
    import spacy

    nlp = spacy.blank("en")
    nlp.add_pipe("sentencizer")
    return nlp


def split_sentences(text: str) -> list[str]:
    """Sentences of ``text`` (spaCy's rule-based sentencizer: offline, deterministic); [] for blank text."""
    if not text.strip():
        return []
    return [s.text.strip() for s in _sentencizer()(text).sents if s.text.strip()]


def windows(sentences: Sequence[str], size: int = 2, stride: int = 2) -> list[str]:
    """``size``-sentence windows starting every ``stride`` sentences, until the text is covered (the
    last window may be shorter): with size = stride = 2, [s1 s2], [s3 s4], [s5]."""
    out = []
    for i in range(0, len(sentences), stride):
        out.append(" ".join(sentences[i:i + size]))
        if i + size >= len(sentences):
            break
    return out


def summac_aggregate(matrix: Sequence[Sequence[float]], whole: float | None,
                     band: tuple[float, float] = (0.3, 0.7)) -> float:
    """matrix[w][s] = P(entail | window w, sentence s): max over windows, mean over sentences; a score
    strictly inside ``band`` is replaced by max(score, whole) when ``whole`` is given."""
    if not matrix or not matrix[0]:
        return float("nan")
    n_sent = len(matrix[0])
    score = sum(max(row[s] for row in matrix) for s in range(n_sent)) / n_sent
    if whole is not None and band[0] < score < band[1]:
        score = max(score, whole)
    return score


def entailment_index(id2label: dict, wanted: str | None = None) -> int:
    """Index of the entailment/support label of a classifier's config (``wanted`` names it exactly)."""
    labels = {int(i): str(lab) for i, lab in id2label.items()}
    if wanted is not None:
        for i, lab in labels.items():
            if lab.lower() == wanted.lower():
                return i
        raise ValueError(f"evaluate.nli_entailment_label {wanted!r} is not a label of the NLI model; its labels "
                         f"are {sorted(labels.values())}")
    hits = [i for i, lab in labels.items() if _ENTAIL.search(lab) and not re.search(r"not|non|contra", lab, re.I)]
    if len(hits) != 1:
        raise ValueError(f"cannot tell which NLI label means entailment among {sorted(labels.values())}: set "
                         "evaluate.nli_entailment_label")
    return hits[0]


class NLIFaithfulness:
    """SummaC-style chunked NLI with a Hugging Face sequence classifier, loaded once."""

    def __init__(self, model: str, *, entailment_label: str | None = None, window: int = 2, stride: int = 2,
                 band: Sequence[float] = (0.3, 0.7), batch_size: int = 32, device: str = "cpu"):
        import torch

        self.torch = torch
        self.model, self.tok = models.load_model(model, "sequence_classification", device=device)
        self.entail = entailment_index(self.model.config.id2label, entailment_label)
        self.window, self.stride, self.band, self.batch_size = window, stride, (band[0], band[1]), batch_size
        self.max_length = models.max_input_tokens(self.tok, self.model)
        self.device = next(self.model.parameters()).device

    def entail_probs(self, premises: Sequence[str], hypotheses: Sequence[str]) -> list[float]:
        """P(entailment | premise, hypothesis) per pair (premises truncated first when too long)."""
        out: list[float] = []
        for i in range(0, len(premises), self.batch_size):
            enc = self.tok(list(premises[i:i + self.batch_size]), list(hypotheses[i:i + self.batch_size]),
                           return_tensors="pt", padding=True, truncation="only_first",
                           max_length=self.max_length).to(self.device)
            with self.torch.no_grad():
                probs = self.torch.softmax(self.model(**enc).logits.float(), dim=-1)
            out += probs[:, self.entail].tolist()
        return out

    def score(self, sources: Sequence[str], summaries: Sequence[str]) -> list[float]:
        # All (window, sentence) pairs of all rows in one batched pass, then aggregated per row.
        plans, premises, hyps = [], [], []
        for src, summ in zip(sources, summaries, strict=True):
            if not summ.strip():
                plans.append(None)  # an empty summary: 0 by definition (module docstring), no model call
                continue
            wins, sents = windows(split_sentences(src), self.window, self.stride), split_sentences(summ)
            start = len(premises)
            for w in wins:
                for s in sents:
                    premises.append(w)
                    hyps.append(s)
            premises.append(src)
            hyps.append(summ)  # the whole pair, for the band rule
            plans.append((start, len(wins), len(sents)))
        probs = self.entail_probs(premises, hyps) if premises else []
        scores = []
        for plan in plans:
            if plan is None:
                scores.append(0.0)
                continue
            start, n_w, n_s = plan
            if n_w == 0 or n_s == 0:  # an empty source: nothing to check against
                scores.append(float("nan"))
                continue
            flat = probs[start:start + n_w * n_s]
            matrix = [flat[w * n_s:(w + 1) * n_s] for w in range(n_w)]
            scores.append(summac_aggregate(matrix, probs[start + n_w * n_s], self.band))
        return scores


class EntityPrecision:
    """Share of summary entities whose text occurs in the source (no NLI model)."""

    def __init__(self, ner_model: str):
        from raydebias.scoring.ner import EntityTagger

        self.tagger = EntityTagger(ner_model)

    def score(self, sources: Sequence[str], summaries: Sequence[str]) -> list[float]:
        out = []
        for src, summ, ents in zip(sources, summaries, self.tagger.tag(list(summaries)), strict=True):
            if not summ.strip():
                out.append(0.0)  # an empty summary: 0, counted in the mean (module docstring)
                continue
            if not ents:  # a non-empty summary without entities: undefined, counted as missing
                out.append(float("nan"))
                continue
            low = src.lower()
            out.append(sum(e["text"].lower() in low for e in ents) / len(ents))
        return out


def nanmean_std(values: Sequence[float | None]) -> tuple[float, float, int, int]:
    """(mean, population std, n, n_missing): the mean and std over the n values that are not None/NaN;
    ``n_missing`` says how many were left out, so n + n_missing == len(values) always."""
    vals = [v for v in values if v is not None and not math.isnan(v)]
    missing = len(values) - len(vals)
    if not vals:
        return float("nan"), float("nan"), 0, missing
    m = sum(vals) / len(vals)
    return m, math.sqrt(sum((v - m) ** 2 for v in vals) / len(vals)), len(vals), missing


__all__ = ["EntityPrecision", "NLIFaithfulness", "entailment_index", "nanmean_std", "split_sentences",
           "summac_aggregate", "windows"]
