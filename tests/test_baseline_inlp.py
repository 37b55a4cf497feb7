"""INLP (raydebias.baselines.inlp) and the sentence features both projection baselines use (embed.py):
the projection's algebra against independent computations, the classifier loop against sklearn run by hand,
bias-bench's sentence sampling, and the fitted directions removed by the generation hook on a tiny GPT-2."""

import copy
import warnings

import numpy as np
import pytest
import torch
from sklearn.model_selection import train_test_split
from sklearn.svm import LinearSVC

from raydebias.baselines.base import RemoveDirections
from raydebias.baselines.embed import mean_pooled_hidden
from raydebias.baselines.inlp import (
    InlpResult,
    fit_inlp,
    inlp_sentences,
    nullspace_intersection_projection,
    rowspace_projection,
)

# Test word lists of our own (the production lists live in attributes.py).
GENDER = {"male": ["he", "him", "his", "man"], "female": ["she", "her", "hers", "woman"]}


def linear_data(n=600, d=8, shift=3.0, seed=0, n_classes=2):
    """Class encoded linearly in coordinate 0 (plus coordinate 1 for a third class), unit Gaussian noise."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, n_classes, n)
    x = rng.normal(size=(n, d))
    x[:, 0] += shift * (2 * (y == 1) - 1)
    if n_classes == 3:
        x[:, 1] += shift * (2 * (y == 2) - 1)
    return x, y


@pytest.fixture(scope="module")
def fitted() -> tuple[np.ndarray, np.ndarray, InlpResult]:
    x, y = linear_data()
    return x, y, fit_inlp(x, y, n_iterations=3)


# --- the projection ---------------------------------------------------------------------------------------

def test_rowspace_projection_matches_pinv_and_svd():
    rng = np.random.default_rng(1)
    w = rng.normal(size=(3, 10))
    p = rowspace_projection(w)
    np.testing.assert_allclose(p, np.linalg.pinv(w) @ w, atol=1e-10)  # W⁺W projects onto the row space
    _, _, vt = np.linalg.svd(w, full_matrices=False)
    np.testing.assert_allclose(p, vt.T @ vt, atol=1e-10)
    np.testing.assert_allclose(rowspace_projection(np.zeros((2, 5))), np.zeros((5, 5)))
    # Rank-deficient: a repeated row adds nothing.
    np.testing.assert_allclose(rowspace_projection(np.vstack([w, w[:1] * 2])), p, atol=1e-10)


def test_nullspace_intersection_of_two_non_orthogonal_vectors():
    a, b = np.array([[1.0, 0, 0]]), np.array([[1.0, 1, 0]])
    p = nullspace_intersection_projection([rowspace_projection(a), rowspace_projection(b)], 3)
    np.testing.assert_allclose(p, np.diag([0.0, 0, 1]), atol=1e-12)  # only e3 is orthogonal to both
    np.testing.assert_allclose(nullspace_intersection_projection([], 3), np.eye(3))


def test_projection_is_symmetric_idempotent_and_kills_every_direction(fitted):
    x, _, r = fitted
    p = r.projection
    assert p.shape == (8, 8) and r.directions.shape == (3, 8) and r.directions.dtype == np.float32
    np.testing.assert_allclose(p, p.T, atol=1e-12)
    np.testing.assert_allclose(p @ p, p, atol=1e-10)
    for w in r.directions.astype(np.float64):
        assert np.abs(p @ w).max() < 1e-6 * np.linalg.norm(w)
    assert np.isclose(np.trace(p), 8 - 3)  # one dimension removed per binary classifier
    # Independent: the projection onto the nullspace of all W is I - W⁺W.
    w = r.directions.astype(np.float64)
    np.testing.assert_allclose(p, np.eye(8) - np.linalg.pinv(w) @ w, atol=1e-6)
    # Autoregressive training: each classifier is orthogonal to the earlier ones (bias-bench's self-check).
    unit = w / np.linalg.norm(w, axis=1, keepdims=True)
    off = unit @ unit.T - np.eye(3)
    assert np.abs(off).max() < 1e-6


def test_projection_equals_the_generation_hook(fitted):
    _, _, r = fitted
    hook = RemoveDirections(r.directions)
    eye = torch.eye(8, dtype=torch.float64)
    np.testing.assert_allclose(hook.project(eye).numpy(), r.projection, atol=1e-6)
    h = torch.randn(4, 5, 8, dtype=torch.float64)
    np.testing.assert_allclose(hook.project(h).numpy(), h.numpy() @ r.projection, atol=1e-6)


def test_first_classifier_separates_and_projection_leaves_chance():
    x, y = linear_data()
    r = fit_inlp(x, y, n_iterations=2)
    assert r.accuracies[0] > 0.95
    assert 0.45 < r.majority < 0.55
    # The first weight vector points (mostly) along the coordinate that encodes the class.
    w0 = r.directions[0] / np.linalg.norm(r.directions[0])
    assert abs(w0[0]) > 0.9
    # A fresh classifier on the projected features, held-out rows: chance.
    xa, xb, ya, yb = train_test_split(x @ r.projection, y, test_size=0.5, random_state=1)
    fresh = LinearSVC(fit_intercept=False, dual=False).fit(xa, ya).score(xb, yb)
    assert fresh < 0.6, fresh
    assert r.residual_accuracy is not None and r.residual_accuracy < 0.6
    # ... while before INLP the same classifier is nearly perfect.
    xa, xb, ya, yb = train_test_split(x, y, test_size=0.5, random_state=1)
    assert LinearSVC(fit_intercept=False, dual=False).fit(xa, ya).score(xb, yb) > 0.95


def test_loop_matches_sklearn_run_by_hand():
    """bias-bench's splits (70/30, then 70/30 of the rest, random_state 0) and its autoregressive loop,
    written out independently."""
    x, y = linear_data(n=300, d=6, shift=1.0, seed=3)
    r = fit_inlp(x, y, n_iterations=2)
    x_td, x_test, y_td, y_test = train_test_split(x, y, test_size=0.3, random_state=0)
    x_tr, x_dev, y_tr, y_dev = train_test_split(x_td, y_td, test_size=0.3, random_state=0)
    assert len(y_tr) == 147 and len(y_dev) == 63
    clf = LinearSVC(fit_intercept=False, dual=False, random_state=0).fit(x_tr, y_tr)
    assert r.accuracies[0] == pytest.approx(clf.score(x_dev, y_dev))
    w1 = clf.coef_
    p1 = np.eye(6) - w1.T @ w1 / (w1 @ w1.T)  # one vector: I - w wᵀ / |w|²
    clf2 = LinearSVC(fit_intercept=False, dual=False, random_state=0).fit(x_tr @ p1, y_tr)
    assert r.accuracies[1] == pytest.approx(clf2.score(x_dev @ p1, y_dev))
    np.testing.assert_allclose(r.directions, np.vstack([w1, clf2.coef_]), rtol=1e-5, atol=1e-6)


def test_three_classes_give_one_direction_per_class_per_iteration():
    x, y = linear_data(n=600, d=8, n_classes=3)
    r = fit_inlp(x, y, n_iterations=2)
    assert r.directions.shape == (6, 8)
    assert r.accuracies[0] > 0.9
    rank = np.linalg.matrix_rank(r.directions.astype(np.float64), tol=1e-5)
    assert np.isclose(np.trace(r.projection), 8 - rank)
    np.testing.assert_allclose(RemoveDirections(r.directions).project(torch.eye(8, dtype=torch.float64)).numpy(),
                               r.projection, atol=1e-6)


def test_min_accuracy_drops_weak_classifiers():
    x, y = linear_data()
    r = fit_inlp(x, y, n_iterations=3, min_accuracy=0.9)
    assert r.kept[0] and not r.kept[-1]
    assert r.directions.shape[0] == sum(r.kept)
    with pytest.raises(ValueError, match="no classifier reached min_accuracy"):
        fit_inlp(x, y, n_iterations=1, min_accuracy=1.01)


@pytest.mark.parametrize("x, y, match", [
    (np.ones((4, 3)), [0, 0, 0, 0], "one class"),
    (np.ones((4, 3)), [0, 1, 0], "y must be"),
    (np.ones(4), [0, 1, 0, 1], "X must be"),
    (np.array([[0.0, 1], [np.nan, 1], [1, 0], [1, 1]]), [0, 1, 0, 1], "non-finite value at row 1"),
])
def test_degenerate_input_raises(x, y, match):
    with pytest.raises(ValueError, match=match):
        fit_inlp(x, y)


def test_bad_parameters_raise():
    x, y = linear_data(n=40)
    with pytest.raises(ValueError, match="n_iterations"):
        fit_inlp(x, y, n_iterations=0)
    with pytest.raises(ValueError, match="dev_size"):
        fit_inlp(x, y, dev_size=1.0)
    with pytest.raises(ValueError, match="cannot split 1 rows with dev_size=0.3"):
        fit_inlp(x[:3], np.array([0, 1, 1]), test_size=0.34)
    # A split that leaves the train part with one class: the class-0 rows are exactly those held out.
    _, held = train_test_split(np.arange(10), test_size=0.3, random_state=0)
    y10 = np.ones(10, dtype=int)
    y10[held] = 0
    with pytest.raises(ValueError, match="train split \\(7 of 10 rows\\) has one class"):
        fit_inlp(x[:10], y10, dev_size=0)


# --- sentences --------------------------------------------------------------------------------------------

CORPUS = [
    "He went to the market on Monday. She stayed at home with the dog. It rained all day long here.",
    "The man said that he would come back later. Short one here. The woman gave her book to a friend today.",
    "He and she walked into the old hall together. The train arrived at noon and left at one.",
    "She stayed at home with the dog. The tree in the yard was tall and green. His car was parked outside.",
]


def _originals():
    from raydebias.scoring.faithfulness import split_sentences

    return [s.lower() for t in CORPUS for s in split_sentences(t)]


def test_inlp_sentences_follow_bias_bench():
    sents, labels, stats = inlp_sentences(CORPUS, GENDER, seed=0)
    assert stats["classes"] == ["male", "female", "neutral"]
    assert len(sents) == len(labels) == sum(stats["per_class"].values())
    originals = _originals()
    words = [set(GENDER["male"]), set(GENDER["female"])]
    for s, c in zip(sents, labels, strict=True):
        toks = s.split(" ")
        assert s == s.lower()
        assert any(o.startswith(s) for o in originals), s  # a clipped prefix of a corpus sentence
        found = [i for i in range(2) if words[i] & set(toks)]
        if c == 2:  # neutral: no attribute word, at least 4 tokens (bias-bench starts from the 4th)
            assert found == [] and len(toks) >= 4
        else:  # the clip keeps the attribute word, and only words of its own class
            assert found == [c]
    # 3 male ("he went", "the man said", "his car"), 2 female ("she stayed" once: its repeat is a
    # duplicate), 3 neutral; "he and she" mixes classes; "short one here." is under 5 tokens.
    assert stats["per_class"] == {"male": 3, "female": 2, "neutral": 3}
    assert stats["skipped_mixed"] == 1 and stats["skipped_short"] == 1 and stats["skipped_duplicate"] == 1
    assert stats["sentences_seen"] == 11 and stats["texts_read"] == 4
    # Seeded: the same call gives the same sample.
    assert inlp_sentences(CORPUS, GENDER, seed=0)[0] == sents


def test_inlp_sentences_cap_per_class_and_keep_case_option():
    sents, labels, stats = inlp_sentences(CORPUS, GENDER, n_per_class=1, seed=3)
    assert stats["per_class"] == {"male": 1, "female": 1, "neutral": 1} and labels == [0, 1, 2]
    upper, _, _ = inlp_sentences(CORPUS, GENDER, seed=0, lowercase=False)
    assert any(s != s.lower() for s in upper)


def test_inlp_sentences_binary_attribute_class_against_neutral():
    texts = ["The church was full of christian families that day.", "The dog barked at the mailman every day."]
    sents, labels, stats = inlp_sentences(texts, {"religion": ["christian", "jewish", "muslim"]})
    assert stats["per_class"] == {"religion": 1, "neutral": 1}
    assert sorted(labels) == [0, 1]
    assert "christian" in sents[labels.index(0)].split(" ")


def test_inlp_sentences_errors():
    no_religion = ["The dog barked at the mailman every day.", "A cat sat on the warm mat all day."]
    with pytest.raises(ValueError, match="no sentence with words of class 'religion'"):
        inlp_sentences(no_religion, {"religion": ["christian"]})
    with pytest.raises(ValueError, match="in both class"):
        inlp_sentences(CORPUS, {"a": ["he"], "b": ["He"]})
    with pytest.raises(ValueError, match="neutral"):
        inlp_sentences(CORPUS, {"neutral": ["he"]})
    with pytest.raises(ValueError, match="single"):
        inlp_sentences(CORPUS, {"race": ["african american"]})
    with pytest.raises(ValueError, match="non-empty list"):
        inlp_sentences(CORPUS, {"male": []})
    with pytest.raises(ValueError, match="one str"):
        inlp_sentences("He went home today.", GENDER)
    # Two non-empty classes of three: fitted, with a warning naming the empty one.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _, _, stats = inlp_sentences(CORPUS, {**GENDER, "other": ["zebra"]})
    assert stats["per_class"]["other"] == 0
    assert any("other" in str(w.message) for w in caught)


# --- features and the end-to-end hook on a tiny GPT-2 -----------------------------------------------------

TEXTS = ["he went to the market", "she stayed at home with the dog today", "the man said",
         "her book was on the table in the hall", "his car", "the woman laughed and then left the room"]


@pytest.fixture(scope="module")
def gpt2():
    from raydebias.models import load_model

    return load_model("tiny:gpt2", "causal_lm")


def test_mean_pooled_hidden_is_the_mean_of_the_final_hidden_states(gpt2):
    model, tok = gpt2
    feats = mean_pooled_hidden(model, tok, TEXTS, batch_size=4)
    assert feats.shape == (len(TEXTS), model.config.n_embd) and feats.dtype == np.float32
    # Independent: GPT-2's last entry of hidden_states is after ln_f, i.e. what the LM head multiplies.
    for i, t in enumerate(TEXTS):
        ids = tok(t, return_tensors="pt")
        with torch.no_grad():
            hs = model(**ids, output_hidden_states=True).hidden_states[-1][0]  # (T, d)
        np.testing.assert_allclose(feats[i], hs.mean(0).numpy(), atol=1e-5)


def test_mean_pooled_hidden_batched_equals_one_by_one_and_padding_does_not_matter(gpt2):
    model, tok = gpt2
    one = np.stack([mean_pooled_hidden(model, tok, [t])[0] for t in TEXTS])
    np.testing.assert_allclose(mean_pooled_hidden(model, tok, TEXTS, batch_size=3), one, atol=1e-5)
    # "his car" (2 tokens) padded to the longest text's length in one batch.
    padded = mean_pooled_hidden(model, tok, ["his car", TEXTS[-1] * 3], batch_size=2)
    np.testing.assert_allclose(padded[0], one[4], atol=1e-5)
    # Truncation: only the first max_length tokens count.
    ids = tok(TEXTS[-1])["input_ids"][:3]
    np.testing.assert_allclose(mean_pooled_hidden(model, tok, [TEXTS[-1]], max_length=3)[0],
                               mean_pooled_hidden(model, tok, [tok.decode(ids)])[0], atol=1e-5)


def test_mean_pooled_hidden_leaves_caller_state_alone(gpt2):
    model, tok = gpt2
    tok2 = copy.deepcopy(tok)
    tok2.pad_token = None
    model.train()
    try:
        a = mean_pooled_hidden(model, tok2, TEXTS[:3])
        assert model.training  # restored
    finally:
        model.eval()
    assert tok2.pad_token is None
    np.testing.assert_allclose(a, mean_pooled_hidden(model, tok, TEXTS[:3]), atol=1e-5)  # eval mode used
    assert not model.get_output_embeddings()._forward_pre_hooks  # capture hook removed
    assert mean_pooled_hidden(model, tok, []).shape == (0, model.config.n_embd)
    with pytest.raises(ValueError, match="texts\\[1\\]"):
        mean_pooled_hidden(model, tok, ["fine", ""])


def test_inlp_end_to_end_removes_every_direction_from_the_lm_head_input():
    from raydebias.models import load_model

    model, tok = load_model("tiny:gpt2", "causal_lm")  # a private copy: the hook stays attached
    texts = TEXTS + ["he said that", "she said that", "the man ran home", "the woman ran home",
                     "his dog barked", "her cat slept"]
    labels = [0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1]
    feats = mean_pooled_hidden(model, tok, texts)
    r = fit_inlp(feats, labels, n_iterations=2, test_size=0, dev_size=0)
    assert r.directions.shape == (2, model.config.n_embd)
    RemoveDirections(r.directions).attach(model)
    seen = []
    model.get_output_embeddings().register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach()))
    ids = tok(["the woman said that he was here", "his book"], return_tensors="pt", padding=True)
    with torch.no_grad():
        model(**ids)
    h = seen[0]  # (B, T, d), after RemoveDirections (hooks run in registration order)
    w = torch.as_tensor(r.directions)
    assert h.abs().max() > 0.1  # not trivially zero
    assert (h @ w.T).abs().max() < 1e-4 * w.norm(dim=1).max()
    # The same projection as INLP's P.
    np.testing.assert_allclose((h.double() @ torch.as_tensor(r.projection)).numpy(), h.double().numpy(),
                               atol=1e-4)
    # And the features computed through the hooked model have no component along any direction.
    after = mean_pooled_hidden(model, tok, texts[:4])
    assert np.abs(after @ r.directions.T).max() < 1e-4


def test_mean_pooled_hidden_on_llama_reads_after_the_final_norm():
    """Llama: a BOS-adding tokenizer and an RMSNorm under another name; the head's input is still the base
    model's last_hidden_state (after the norm), BOS included in the mean as bias-bench's tokenization does."""
    from raydebias.models import load_model

    model, tok = load_model("tiny:llama", "causal_lm")
    texts = ["he went to the market", "his car"]
    feats = mean_pooled_hidden(model, tok, texts)
    for i, t in enumerate(texts):
        ids = tok(t, return_tensors="pt")
        assert ids["input_ids"][0, 0] == tok.bos_token_id
        with torch.no_grad():
            h = model.base_model(**ids).last_hidden_state[0]  # (T, d)
        np.testing.assert_allclose(feats[i], h.mean(0).numpy(), atol=1e-5)
