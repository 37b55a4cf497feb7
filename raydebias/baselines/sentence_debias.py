"""SentenceDebias (Liang et al. 2020, "Towards Debiasing Sentence Representations", ACL), as bias-bench runs
it for GPT-2 (``bias_bench/debias/sentence_debias.py``, ``bias_bench/dataset/sentence_debias.py``). SPEC §7.

1. :func:`counterfactual_sets`: corpus sentences with an attribute word, each with its counterfactual
   versions (gender: the swapped pair; race/religion: the triple), made by a caller-supplied function
   (e.g. one built from ``cda.counterfactual``).
2. :func:`embed_sets`: the mean-pooled hidden states of every member (:mod:`raydebias.baselines.embed`).
3. :func:`fit_sentence_debias`: L2-normalise every embedding, subtract each set's mean, and take the first
   principal component v of all centred vectors: the bias direction.

At generation ``h <- h - (h.v) v / (v.v)`` (:func:`remove_direction`; bias-bench ``_SentenceDebiasModel``),
which is ``RemoveDirections(v)`` in base.py, the hook the generation actor attaches.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np


def _split_sentences(text: str) -> list[str]:
    # bias-bench: nltk.sent_tokenize (a punkt download); the repo's offline rule-based splitter instead.
    from raydebias.scoring.faithfulness import split_sentences

    return split_sentences(text)


def counterfactual_sets(texts: Sequence[str], make_counterfactuals: Callable[[str], Sequence[str]], *,
                        lowercase: bool = True) -> tuple[list[tuple[str, ...]], dict[str, int]]:
    """``(sets, counts)``: for every corpus sentence for which ``make_counterfactuals(sentence)`` returns
    other versions, the tuple ``(sentence, *versions)``.

    As bias-bench's ``_GenericDataset.load_examples``: each text is split into sentences, lower-cased
    (``lowercase=True``) and stripped before the counterfactuals are made. Versions equal to the sentence
    itself (nothing swapped) and repeated versions are dropped, since they add nothing to a set's spread;
    a sentence left with no other version is skipped. ``counts``: ``sentences``, ``sets``,
    ``skipped_no_counterfactual`` and ``versions_unchanged`` (versions dropped as equal to the sentence or
    to an earlier version).
    """
    if isinstance(texts, str):
        raise ValueError("counterfactual_sets: texts must be a sequence of texts, got one str")
    if not callable(make_counterfactuals):
        raise ValueError(f"counterfactual_sets: make_counterfactuals must be callable, got {make_counterfactuals!r}")
    sets: list[tuple[str, ...]] = []
    counts = {"sentences": 0, "sets": 0, "skipped_no_counterfactual": 0, "versions_unchanged": 0}
    for text in texts:
        if not isinstance(text, str):
            raise ValueError(f"counterfactual_sets: a text is {type(text).__name__}, not str: {text!r}")
        for sentence in _split_sentences(text.lower() if lowercase else text):
            sentence = sentence.strip()
            counts["sentences"] += 1
            versions = make_counterfactuals(sentence)
            if isinstance(versions, str):
                raise ValueError(f"counterfactual_sets: make_counterfactuals must return a list of versions, "
                                 f"got the str {versions!r} for {sentence!r}")
            members = [sentence]
            for v in versions or ():
                if not isinstance(v, str):
                    raise ValueError(f"counterfactual_sets: make_counterfactuals returned {v!r} for {sentence!r}")
                if v in members:
                    counts["versions_unchanged"] += 1
                else:
                    members.append(v)
            if len(members) < 2:
                counts["skipped_no_counterfactual"] += 1
                continue
            sets.append(tuple(members))
    counts["sets"] = len(sets)
    return sets, counts


def embed_sets(model: Any, tokenizer: Any, sets: Sequence[Sequence[str]], *, batch_size: int = 32,
               max_length: int = 128) -> list[np.ndarray]:
    """The (m_i, d) float32 mean-pooled embeddings of each set's members (one batched pass over all of them;
    bias-bench: batch 32, ``max_length=128``)."""
    from raydebias.baselines.embed import mean_pooled_hidden

    flat = [s for group in sets for s in group]
    emb = mean_pooled_hidden(model, tokenizer, flat, batch_size=batch_size, max_length=max_length)
    out, start = [], 0
    for group in sets:
        out.append(emb[start:start + len(group)])
        start += len(group)
    return out


def fit_sentence_debias(embedding_sets: Sequence[np.ndarray]) -> np.ndarray:
    """(m_i, d) embeddings of each counterfactual set -> the bias direction v, (d,) float32 of unit length.

    Liang et al. 2020 §3 / bias-bench ``compute_gender_subspace``: every embedding is L2-normalised, each
    set's mean is subtracted from its members, and v is the first principal component of all centred
    vectors (bias-bench: ``PCA(n_components=1).fit(...).components_[0]``). The centred vectors have mean
    zero, so PCA's own centring is a no-op and v is the top eigenvector of ``C = sum c c^T``, accumulated
    set by set in float64 (d x d memory however many sets; the same as sklearn's PCA, checked in the tests).

    Invariances: v does not change when an embedding is scaled by a positive number (normalisation), when
    members of a set are reordered, or when every embedding is negated. A principal component's sign is
    arbitrary; v is returned with its largest-magnitude coordinate positive (sklearn's ``svd_flip``
    convention for ``components_``), so equal data give equal v.
    """
    if isinstance(embedding_sets, np.ndarray) and embedding_sets.ndim == 3:
        embedding_sets = list(embedding_sets)
    if len(embedding_sets) < 1:
        raise ValueError("fit_sentence_debias: no embedding sets; need at least one counterfactual set")
    d = None
    cov = None
    for i, e in enumerate(embedding_sets):
        e = np.asarray(e, dtype=np.float64)
        if e.ndim != 2 or e.shape[0] < 2:
            raise ValueError(f"fit_sentence_debias: set {i} must be (m, d) with m >= 2 members, got shape {e.shape}")
        if d is None:
            d, cov = e.shape[1], np.zeros((e.shape[1], e.shape[1]))
        elif e.shape[1] != d:
            raise ValueError(f"fit_sentence_debias: set {i} has dimension {e.shape[1]}, set 0 has {d}")
        if not np.isfinite(e).all():
            raise ValueError(f"fit_sentence_debias: set {i} has a non-finite value")
        norms = np.linalg.norm(e, axis=1, keepdims=True)
        if (norms == 0).any():
            raise ValueError(f"fit_sentence_debias: set {i} has a zero embedding (member "
                             f"{int(np.argmax(norms[:, 0] == 0))}); it cannot be normalised")
        c = e / norms
        c -= c.mean(axis=0, keepdims=True)
        cov += c.T @ c
    if d == 0 or not np.any(cov):
        raise ValueError("fit_sentence_debias: every set's members are identical after normalisation; "
                         "no direction to find")
    _, vecs = np.linalg.eigh(cov)  # ascending eigenvalues
    v = vecs[:, -1]
    v = v / np.linalg.norm(v)
    if v[np.argmax(np.abs(v))] < 0:
        v = -v
    return v.astype(np.float32)


def remove_direction(h: Any, v: Any) -> Any:
    """``h - (h.v) v / (v.v)`` for h (..., d) and v (d,), numpy or torch (the formula of Liang et al. 2020
    and bias-bench's ``_SentenceDebiasModel`` hook, as written; the hook at inference is ``RemoveDirections``)."""
    vv = (v * v).sum()
    if float(vv) == 0:
        raise ValueError("remove_direction: v is the zero vector")
    return h - (h @ v)[..., None] * v / vv


__all__ = ["counterfactual_sets", "embed_sets", "fit_sentence_debias", "remove_direction"]
