"""INLP, Iterative Nullspace Projection (Ravfogel et al. 2020, "Null It Out", ACL), as bias-bench runs it
for GPT-2 (Meade et al. 2022; https://github.com/McGill-NLP/bias-bench). SPEC §7 "Baselines".

1. :func:`inlp_sentences`: per attribute class, corpus sentences containing a word of that class, clipped at
   a random point at or after the attribute word, plus a neutral class of sentences without any attribute
   word, clipped at a random point after their 4th token (``bias_bench/dataset/inlp.py``).
2. Features: :func:`raydebias.baselines.embed.mean_pooled_hidden` of those sentences.
3. :func:`fit_inlp`: ``n_iterations`` times, fit a linear classifier of the class on the currently projected
   features, add its weight rows W_i, and project the features onto the intersection of the nullspaces of
   all W so far (``bias_bench/debias/inlp/debias.py``, ``get_debiasing_projection`` with
   ``is_autoregressive=True``, ``min_accuracy=0``, ``by_class=False``, ``dropout_rate=0``).

At generation, ``RemoveDirections(result.directions)`` (base.py) applies ``P`` to the hidden states before the
LM head; ``P = I - P_rowspace(W_1, ..., W_k)`` is the same map (checked in the tests).
"""

from __future__ import annotations

import random
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

NEUTRAL = "neutral"


def _split_sentences(text: str) -> list[str]:
    # bias-bench uses nltk.sent_tokenize (whose punkt data is a download); the repo's offline rule-based
    # splitter plays the same role.
    from raydebias.scoring.faithfulness import split_sentences

    return split_sentences(text)


def _word_classes(classes: Mapping[str, Sequence[str]]) -> dict[str, int]:
    """word (lower case) -> class index; every way the lists could be ambiguous is an error."""
    if not classes:
        raise ValueError("inlp_sentences: classes is empty; give at least one attribute class of words")
    if NEUTRAL in classes:
        raise ValueError(f"inlp_sentences: {NEUTRAL!r} is the name of the class of sentences without attribute "
                         f"words; rename that attribute class")
    word_class: dict[str, int] = {}
    names = list(classes)
    for c, name in enumerate(names):
        words = classes[name]
        if isinstance(words, str) or not words:
            raise ValueError(f"inlp_sentences: class {name!r} must be a non-empty list of words, got {words!r}")
        for w in words:
            key = w.strip().lower()
            if not key or any(ch.isspace() for ch in key):
                # Sentences are matched token by token (split on spaces), as in bias-bench.
                raise ValueError(f"inlp_sentences: class {name!r} has the word {w!r}; words must be single, "
                                 f"non-empty tokens")
            other = word_class.get(key)
            if other is not None and other != c:
                raise ValueError(f"inlp_sentences: the word {w!r} is in both class {names[other]!r} and {name!r}")
            word_class[key] = c
    return word_class


def inlp_sentences(texts: Sequence[str], classes: Mapping[str, Sequence[str]], *, n_per_class: int = 10000,
                   seed: int = 0, min_tokens: int = 5, neutral_min_tokens: int = 4,
                   lowercase: bool = True) -> tuple[list[str], list[int], dict]:
    """Training sentences for the INLP classifiers: ``(sentences, labels, stats)``.

    ``classes`` maps an attribute class name to its words (gender: ``{"male": [...], "female": [...]}``; race
    and religion in bias-bench are ONE class of all their words against neutral: ``{"race": [...]}``). Label
    ``i`` is the i-th class of ``classes``; the last label, ``len(classes)``, is ``"neutral"``.

    bias-bench's procedure (``bias_bench/dataset/inlp.py``, ``_load_gender_data``), seeded by ``seed``:
    shuffle the texts (paragraphs); split each into sentences; tokens = the sentence split on spaces, lower
    cased; skip a sentence with fewer than ``min_tokens`` (5) tokens, and one with words of two classes.
    A sentence with words of one class is kept once (duplicates skipped) and clipped to
    ``tokens[:randint(idx, n) + 1]``, ``idx`` the position of its last attribute word (the clip keeps it);
    a sentence with none is neutral, clipped to ``tokens[:randint(neutral_min_tokens, n)]``. Each class takes
    sentences until it has ``n_per_class`` (10,000); reading stops when every class is full. The returned
    sentences are lower case as in bias-bench (``lowercase=False`` keeps the original case of the tokens).

    ``stats``: ``classes`` (names by label), ``per_class`` (counts), ``texts_read``, ``sentences_seen`` and
    the ``skipped_*`` counts. Fewer than 2 non-empty classes raise ValueError; an empty class among >= 2
    non-empty ones is reported in ``stats`` and warned about.
    """
    if n_per_class < 1:
        raise ValueError(f"inlp_sentences: n_per_class must be >= 1, got {n_per_class}")
    if not 1 <= neutral_min_tokens <= min_tokens:
        raise ValueError(f"inlp_sentences: need 1 <= neutral_min_tokens <= min_tokens, got {neutral_min_tokens} "
                         f"and {min_tokens}")
    if isinstance(texts, str):
        raise ValueError("inlp_sentences: texts must be a sequence of texts, got one str")
    word_class = _word_classes(classes)
    names = [*classes, NEUTRAL]
    neutral = len(names) - 1
    rng = random.Random(seed)
    order = list(texts)
    rng.shuffle(order)  # bias-bench: random.shuffle(lines) after random.seed(seed)

    picked: list[list[str]] = [[] for _ in names]
    seen_sentences: list[set[str]] = [set() for _ in names]
    stats = {"classes": names, "texts_read": 0, "sentences_seen": 0, "skipped_short": 0, "skipped_mixed": 0,
             "skipped_duplicate": 0, "skipped_class_full": 0}
    for text in order:
        if all(len(p) >= n_per_class for p in picked):
            break
        if not isinstance(text, str):
            raise ValueError(f"inlp_sentences: a text is {type(text).__name__}, not str: {text!r}")
        stats["texts_read"] += 1
        for sentence in _split_sentences(text):
            stats["sentences_seen"] += 1
            raw = sentence.split(" ")
            tokens = [t.lower() for t in raw]
            if len(tokens) < min_tokens:
                stats["skipped_short"] += 1
                continue
            found = {word_class[t] for t in tokens if t in word_class}
            if len(found) > 1:
                stats["skipped_mixed"] += 1
                continue
            out = tokens if lowercase else raw
            if not found:
                if len(picked[neutral]) >= n_per_class:
                    stats["skipped_class_full"] += 1
                    continue
                # bias-bench: "Start from the fourth token." (neutral sentences are not de-duplicated there)
                picked[neutral].append(" ".join(out[:rng.randint(neutral_min_tokens, len(tokens))]))
                continue
            (c,) = found
            if len(picked[c]) >= n_per_class:
                stats["skipped_class_full"] += 1
                continue
            if sentence in seen_sentences[c]:
                stats["skipped_duplicate"] += 1
                continue
            seen_sentences[c].add(sentence)
            # The last attribute word (bias-bench's loop ends on it too, but then takes the first position of
            # that word via tokens.index; either way the clip keeps an attribute word).
            idx = max(i for i, t in enumerate(tokens) if t in word_class)
            picked[c].append(" ".join(out[:rng.randint(idx, len(tokens)) + 1]))

    stats["per_class"] = {name: len(p) for name, p in zip(names, picked, strict=True)}
    empty = [name for name, p in zip(names, picked, strict=True) if not p]
    if len(names) - len(empty) < 2:
        raise ValueError(f"inlp_sentences: cannot fit: the corpus has no sentence with words of class "
                         f"{empty[0]!r} (of at least {min_tokens} tokens; per class: {stats['per_class']})")
    if empty:
        warnings.warn(f"inlp_sentences: no sentence for class(es) {empty}; INLP will only separate the others "
                      f"(per class: {stats['per_class']})", stacklevel=2)
    sentences = [s for p in picked for s in p]
    labels = [c for c, p in enumerate(picked) for _ in p]
    return sentences, labels, stats


def rowspace_projection(w: np.ndarray) -> np.ndarray:
    """(k, d) -> (d, d) float64: the orthogonal projection onto the row space of ``w`` (zero for ``w = 0``).

    bias-bench ``get_rowspace_projection``: ``B = scipy.linalg.orth(w.T)``, ``B @ B.T``."""
    import scipy.linalg

    w = np.atleast_2d(np.asarray(w, dtype=np.float64))
    if np.allclose(w, 0):
        return np.zeros((w.shape[1], w.shape[1]))
    basis = scipy.linalg.orth(w.T)  # (d, rank)
    return basis @ basis.T


def nullspace_intersection_projection(rowspace_projections: Sequence[np.ndarray], dim: int) -> np.ndarray:
    """The projection onto N(w_1) ∩ ... ∩ N(w_n) from the rowspace projections P_R(w_i): ``I - P_R(Σ P_R(w_i))``
    (Ben-Israel 2013, as in bias-bench ``get_projection_to_intersection_of_nullspaces``; stable also when
    the w_i are not exactly orthogonal)."""
    if not rowspace_projections:
        return np.eye(dim)
    return np.eye(dim) - rowspace_projection(np.sum(rowspace_projections, axis=0))


@dataclass
class InlpResult:
    """What :func:`fit_inlp` learned.

    ``directions`` (k, d) float32: every kept classifier's weight rows (1 per binary classifier, one per
    class for more classes), the artifact that ``RemoveDirections`` removes; ``projection`` (d, d) float64:
    P, the projection onto the intersection of their nullspaces; ``accuracies``: the dev accuracy of the
    classifier of each iteration (before its own projection; all iterations, kept or not); ``kept``: whether
    each iteration's classifier passed ``min_accuracy``; ``majority``: the dev share of the most frequent
    class (chance for the classifiers); ``residual_accuracy``: the test accuracy of one more classifier
    fitted on the finally projected train split (None without a test split)."""

    directions: np.ndarray
    projection: np.ndarray
    accuracies: list[float]
    kept: list[bool]
    majority: float
    residual_accuracy: float | None = None


def _classifier(seed: int):
    from sklearn.svm import LinearSVC

    # bias-bench context_nullspace_projection._apply_nullspace_projection: LinearSVC with
    # {"fit_intercept": False, "class_weight": None, "dual": False, "random_state": 0} (sklearn defaults
    # otherwise: C=1, squared hinge, one-vs-rest), "the same classifier hyperparameters as Liang et al.".
    # No intercept: the removed space is spanned by the weights alone, so P is linear (no offset to keep).
    return LinearSVC(fit_intercept=False, class_weight=None, dual=False, random_state=seed)


def _split(x: np.ndarray, y: np.ndarray, size: float, seed: int, name: str):
    """(train, held-out) as sklearn.model_selection.train_test_split(random_state=seed), or no held-out part."""
    if size == 0:
        return x, x[:0], y, y[:0]
    from sklearn.model_selection import train_test_split

    try:
        return train_test_split(x, y, test_size=size, random_state=seed)
    except ValueError as exc:
        raise ValueError(f"fit_inlp: cannot split {len(y)} rows with {name}={size}: {exc}") from exc


def fit_inlp(X: np.ndarray, y: Sequence[int], *, n_iterations: int = 10, seed: int = 0,
             min_accuracy: float | None = None, test_size: float = 0.3, dev_size: float = 0.3) -> InlpResult:
    """Iterative nullspace projection of the class ``y`` out of the features ``X`` (N, d).

    Splits as bias-bench (``_split_gender_dataset``): ``test_size`` (0.3) of the rows are held out as test,
    then ``dev_size`` (0.3) of the rest as dev (``train_test_split(random_state=seed)``, bias-bench seed 0);
    the classifiers train on the remaining 49%. ``n_iterations`` defaults to bias-bench's GPT-2 value, 10
    (``batch_jobs/_experiment_configuration.sh``: ``model_to_n_classifiers["GPT2Model"] = 10``; 80 for the
    masked LMs). Each iteration fits ``LinearSVC(fit_intercept=False, dual=False)`` on the currently
    projected train split, scores it on the projected dev split, keeps it if the accuracy is at least
    ``min_accuracy`` (None: keep all, bias-bench passes 0), then sets P = I - P_rowspace(all kept W) and
    re-projects the original features (bias-bench: ``X_train_cp = (P.dot(X_train.T)).T``). ``dev_size=0``
    scores on the train split; ``test_size=0`` skips ``residual_accuracy``.
    """
    x = np.asarray(X, dtype=np.float64)
    labels = np.asarray(y)
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"fit_inlp: X must be (N, d) with N, d >= 1, got shape {x.shape}")
    if labels.ndim != 1 or labels.shape[0] != x.shape[0]:
        raise ValueError(f"fit_inlp: y must be (N,) = ({x.shape[0]},), got shape {labels.shape}")
    if not np.isfinite(x).all():
        bad = np.argwhere(~np.isfinite(x))[0]
        raise ValueError(f"fit_inlp: X has a non-finite value at row {bad[0]}, column {bad[1]}: {x[tuple(bad)]}")
    if np.unique(labels).size < 2:
        raise ValueError(f"fit_inlp: y has one class ({np.unique(labels).tolist()}); nothing to separate")
    if n_iterations < 1:
        raise ValueError(f"fit_inlp: n_iterations must be >= 1, got {n_iterations}")
    for name, size in (("test_size", test_size), ("dev_size", dev_size)):
        if not 0 <= size < 1:
            raise ValueError(f"fit_inlp: {name} must be in [0, 1), got {size}")

    x_train_dev, x_test, y_train_dev, y_test = _split(x, labels, test_size, seed, "test_size")
    x_train, x_dev, y_train, y_dev = _split(x_train_dev, y_train_dev, dev_size, seed, "dev_size")
    if dev_size == 0:
        x_dev, y_dev = x_train, y_train
    if np.unique(y_train).size < 2:
        raise ValueError(f"fit_inlp: the train split ({len(y_train)} of {len(labels)} rows) has one class; give "
                         f"more rows per class or smaller test_size/dev_size")
    _, counts = np.unique(y_dev, return_counts=True)
    majority = float(counts.max() / counts.sum())

    d = x.shape[1]
    ws: list[np.ndarray] = []
    rowspaces: list[np.ndarray] = []
    accuracies: list[float] = []
    kept: list[bool] = []
    p = np.eye(d)
    xt, xd = x_train, x_dev
    for _ in range(n_iterations):
        clf = _classifier(seed).fit(xt, y_train)
        acc = float(clf.score(xd, y_dev))
        accuracies.append(acc)
        keep = min_accuracy is None or acc >= min_accuracy
        kept.append(keep)
        if not keep:
            continue  # bias-bench: the data is not re-projected, so the next fit sees the same problem
        w = np.atleast_2d(clf.coef_)  # (1, d) binary, (n_classes, d) one-vs-rest
        ws.append(w)
        rowspaces.append(rowspace_projection(w))
        # Project the ORIGINAL features onto the intersection of all nullspaces so far (bias-bench: more
        # stable than composing the per-step projections, whose w_i are only nearly orthogonal).
        p = nullspace_intersection_projection(rowspaces, d)
        xt, xd = x_train @ p, x_dev @ p  # P is symmetric: (P x^T)^T = x P

    if not ws:
        raise ValueError(f"fit_inlp: no classifier reached min_accuracy={min_accuracy} (dev accuracies "
                         f"{accuracies}); nothing to remove")
    residual = None
    if len(y_test):
        residual = float(_classifier(seed).fit(x_train @ p, y_train).score(x_test @ p, y_test))
    return InlpResult(directions=np.concatenate(ws, axis=0).astype(np.float32), projection=p,
                      accuracies=accuracies, kept=kept, majority=majority, residual_accuracy=residual)


__all__ = ["NEUTRAL", "InlpResult", "fit_inlp", "inlp_sentences", "nullspace_intersection_projection",
           "rowspace_projection"]
