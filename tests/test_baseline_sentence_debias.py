"""SentenceDebias (raydebias.baselines.sentence_debias): the removal formula against the generation hook,
the fitted direction against sklearn's PCA and a planted direction, its invariances, the counterfactual
sets, and the direction removed by the hook on a tiny GPT-2."""

import numpy as np
import pytest
import torch
from sklearn.decomposition import PCA

from raydebias.baselines.base import RemoveDirections
from raydebias.baselines.sentence_debias import (
    counterfactual_sets,
    embed_sets,
    fit_sentence_debias,
    remove_direction,
)


def planted_sets(n=200, d=32, m=2, a=1.0, noise=0.01, seed=0):
    """``n`` sets of ``m`` members that differ along a unit direction u (orthogonal to their common base
    vector, so L2 normalisation keeps the difference along u), plus Gaussian noise. -> (sets, u)."""
    rng = np.random.default_rng(seed)
    u = rng.normal(size=d)
    u /= np.linalg.norm(u)
    sets = []
    for _ in range(n):
        b = rng.normal(size=d) * 3
        b -= (b @ u) * u
        offsets = rng.normal(size=m) * a
        sets.append(b + offsets[:, None] * u + noise * rng.normal(size=(m, d)))
    return sets, u


def test_remove_direction_equals_the_hook_and_leaves_no_component():
    g = torch.Generator().manual_seed(0)
    h = torch.randn(3, 5, 16, generator=g, dtype=torch.float64)
    v = torch.randn(16, generator=g, dtype=torch.float64) * 4  # not unit: the formula divides by v.v
    out = remove_direction(h, v)
    # RemoveDirections keeps its basis in float32: equal to float32 precision.
    np.testing.assert_allclose(RemoveDirections(v).project(h).numpy(), out.numpy(), atol=1e-6)
    assert (out @ v).abs().max() < 1e-10
    # Numpy input, same formula; a vector orthogonal to v is untouched.
    np.testing.assert_allclose(remove_direction(h.numpy(), v.numpy()), out.numpy(), atol=1e-12)
    w = torch.randn(16, generator=g, dtype=torch.float64)
    w = w - (w @ v) / (v @ v) * v
    np.testing.assert_allclose(remove_direction(w, v).numpy(), w.numpy(), atol=1e-12)
    with pytest.raises(ValueError, match="zero vector"):
        remove_direction(h, torch.zeros(16))


@pytest.mark.parametrize("m", [2, 3])
def test_fit_recovers_a_planted_direction(m):
    sets, u = planted_sets(m=m)
    v = fit_sentence_debias(sets)
    assert v.shape == (32,) and v.dtype == np.float32
    assert np.linalg.norm(v) == pytest.approx(1.0, abs=1e-6)
    assert abs(float(v @ u)) > 0.99


def test_fit_equals_sklearn_pca_on_bias_bench_centring():
    """bias-bench compute_race_subspace written out: normalise, subtract the per-set mean, PCA(1)."""
    rng = np.random.default_rng(5)
    e = rng.normal(size=(3, 50, 12))  # r1, r2, r3 embeddings of 50 triples
    e /= np.linalg.norm(e, axis=-1, keepdims=True)
    centred = e - e.mean(axis=0, keepdims=True)
    pc = PCA(n_components=1).fit(np.concatenate(list(centred), axis=0)).components_[0]
    v = fit_sentence_debias([e[:, i] for i in range(50)])
    assert abs(float(v @ pc)) > 1 - 1e-6
    # Same sign convention as sklearn's components_ (largest-magnitude coordinate positive).
    np.testing.assert_allclose(v, pc, atol=1e-5)
    assert v[np.argmax(np.abs(v))] > 0


def test_fit_invariances():
    sets, _ = planted_sets(n=50, m=3, a=0.5, noise=0.2, seed=2)
    v = fit_sentence_debias(sets)
    rng = np.random.default_rng(9)
    # Positive per-embedding scale: removed by the L2 normalisation.
    np.testing.assert_allclose(fit_sentence_debias([s * rng.uniform(0.1, 10, size=(len(s), 1)) for s in sets]), v,
                               atol=1e-5)
    # Negating everything flips the centred vectors; the sign convention gives back the same v.
    np.testing.assert_allclose(fit_sentence_debias([-s for s in sets]), v, atol=1e-5)
    # Member order within a set, and set order.
    np.testing.assert_allclose(fit_sentence_debias([s[::-1] for s in sets][::-1]), v, atol=1e-5)
    # A 3-D array of equal-sized sets is the same input.
    np.testing.assert_allclose(fit_sentence_debias(np.stack(sets)), v, atol=1e-6)


def test_fit_mixed_set_sizes_weight_each_centred_vector():
    """Pairs and triples together: one PCA over all centred vectors (sklearn as the reference)."""
    rng = np.random.default_rng(3)
    sets = [rng.normal(size=(2, 6)) for _ in range(20)] + [rng.normal(size=(3, 6)) for _ in range(20)]
    centred = []
    for s in sets:
        n = s / np.linalg.norm(s, axis=1, keepdims=True)
        centred.append(n - n.mean(0))
    pc = PCA(n_components=1).fit(np.concatenate(centred)).components_[0]
    assert abs(float(fit_sentence_debias(sets) @ pc)) > 1 - 1e-6


@pytest.mark.parametrize("sets, match", [
    ([], "at least one"),
    ([np.ones((1, 4))], "m >= 2"),
    ([np.ones(4)], "m >= 2"),
    ([np.eye(2, 4), np.eye(2, 5)], "dimension 5"),
    ([np.array([[1.0, np.nan], [1, 0]])], "non-finite"),
    ([np.array([[1.0, 0], [0, 0]])], "zero embedding \\(member 1\\)"),
    ([np.array([[1.0, 1], [2, 2]])], "identical"),
])
def test_fit_errors(sets, match):
    with pytest.raises(ValueError, match=match):
        fit_sentence_debias(sets)


SWAP = {"he": "she", "she": "he", "his": "her", "her": "his", "man": "woman", "woman": "man"}


def swap(sentence):
    """A test counterfactual: swap every listed word; [] when there is none."""
    words = sentence.split(" ")
    if not any(w in SWAP for w in words):
        return []
    return [" ".join(SWAP.get(w, w) for w in words)]


def test_counterfactual_sets():
    texts = ["He went home. The dog slept.", "The Woman saw her friend! Nothing here"]
    sets, counts = counterfactual_sets(texts, swap)
    assert sets == [("he went home.", "she went home."), ("the woman saw her friend!", "the man saw his friend!")]
    assert counts == {"sentences": 4, "sets": 2, "skipped_no_counterfactual": 2, "versions_unchanged": 0}
    # Versions equal to the sentence, or repeated, are dropped and counted; triples are kept whole.
    sets, counts = counterfactual_sets(["A b c.", "X y z."], lambda s: [s, s.upper(), s.upper(), s + "!"])
    assert sets == [("a b c.", "A B C.", "a b c.!"), ("x y z.", "X Y Z.", "x y z.!")]
    assert counts["versions_unchanged"] == 4
    # Case kept on request.
    assert counterfactual_sets(["He went home."], swap, lowercase=False)[0] == []  # "He" is not in SWAP
    with pytest.raises(ValueError, match="list of versions"):
        counterfactual_sets(["he went"], lambda s: "she went")
    with pytest.raises(ValueError, match="one str"):
        counterfactual_sets("he went", swap)


def test_end_to_end_on_tiny_gpt2():
    from raydebias.models import load_model

    model, tok = load_model("tiny:gpt2", "causal_lm")
    corpus = ["He went to the market. She stayed at home.", "His car was red. The dog slept.",
              "The man laughed. Her book was on the table."]
    sets, counts = counterfactual_sets(corpus, swap)
    assert counts["sets"] == 5
    emb = embed_sets(model, tok, sets, batch_size=3)
    assert [e.shape for e in emb] == [(2, model.config.n_embd)] * 5
    from raydebias.baselines.embed import mean_pooled_hidden

    np.testing.assert_allclose(emb[1], mean_pooled_hidden(model, tok, list(sets[1])), atol=1e-5)
    v = fit_sentence_debias(emb)
    RemoveDirections(v).attach(model)
    seen = []
    model.get_output_embeddings().register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach()))
    with torch.no_grad():
        model(**tok(["the woman said that he was here"], return_tensors="pt"))
    h = seen[0]  # (1, T, d) after the removal
    assert h.abs().max() > 0.1
    assert (h @ torch.as_tensor(v)).abs().max() < 1e-5
