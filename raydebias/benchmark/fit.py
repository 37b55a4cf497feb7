"""INLP and SentenceDebias variants on Ray: sentences from the corpus -> embeddings of the base model in a
Ray Data actor pool (``benchmark.projection.embed``: the model loads once per actor) -> the fit in one Ray
task (sklearn / numpy, CPU) -> ``DIR/benchmark/variants/<row>/`` (``directions.safetensors`` + ``fit.json``),
written atomically. The methods themselves are pure (raydebias/baselines/inlp.py, sentence_debias.py);
this file is their Ray adapter.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import numpy as np
import pyarrow as pa

from raydebias.config import Config
from raydebias.errors import DataError

log = logging.getLogger(__name__)

TEXT, EMBEDDING = "text", "embedding"


class Embed:
    """Mean-pooled final hidden states (the LM head's input: the space the hooks project) of ``text``."""

    def __init__(self, model: str, use_gpu: bool, max_length: int, batch_size: int):
        import torch

        from raydebias.models import actor_device, load_model

        torch.set_num_threads(1)
        self.model, self.tok = load_model(model, "causal_lm", device=actor_device(use_gpu))
        self.max_length, self.batch_size = max_length, batch_size

    def __call__(self, batch: pa.Table) -> pa.Table:
        from raydebias.baselines.embed import mean_pooled_hidden

        texts = batch.column(TEXT).to_pylist()
        emb = mean_pooled_hidden(self.model, self.tok, texts, batch_size=self.batch_size, max_length=self.max_length)
        return batch.append_column(EMBEDDING, pa.array(list(emb), pa.list_(pa.float32())))


def embed(texts: list[str], model: str, cfg: Config, use_gpu: bool) -> np.ndarray:
    """(N,) texts -> (N, d) embeddings, in input order, on a Ray Data actor pool."""
    import ray.data

    from raydebias.runtime import actor_pool

    p = cfg.benchmark.projection
    table = pa.table({"i": pa.array(range(len(texts)), pa.int64()), TEXT: pa.array(texts, pa.string())})
    ds = ray.data.from_arrow(table).repartition(max(1, min(len(texts) // p.embed.batch_size, 64)))
    ds = actor_pool(ds, Embed, p.embed, use_gpu, name="embed", constructor_kwargs={
        "model": model, "use_gpu": use_gpu, "max_length": p.max_length, "batch_size": p.embed.batch_size})
    out = pa.concat_tables(ray.get(ds.to_arrow_refs())).sort_by("i")
    if out.num_rows != len(texts):
        raise AssertionError(f"benchmark: {len(texts)} sentences embedded into {out.num_rows} rows")
    return np.asarray(out.column(EMBEDDING).to_pylist(), dtype=np.float32)


def inlp_classes(attribute: str) -> dict[str, list[str]]:
    """INLP's classes as bias-bench sets them: gender is male vs female (vs neutral); race and religion are
    ONE class of all their terms vs neutral (bias_bench/dataset/inlp.py ``_load_race_data``)."""
    from raydebias.baselines.attributes import attribute_classes

    classes = attribute_classes(attribute)
    if attribute == "gender":
        return classes
    return {attribute: [w for words in classes.values() for w in words]}


def _fit_inlp(x: np.ndarray, y: list[int], iterations: int, seed: int) -> tuple[np.ndarray, dict[str, Any]]:
    from raydebias.baselines.inlp import fit_inlp

    r = fit_inlp(x, y, n_iterations=iterations, seed=seed)
    return r.directions, {"accuracies": r.accuracies, "kept": r.kept, "majority": r.majority,
                          "residual_accuracy": r.residual_accuracy, "directions": int(r.directions.shape[0])}


def _fit_sentence_debias(x: np.ndarray, sizes: list[int]) -> tuple[np.ndarray, dict[str, Any]]:
    from raydebias.baselines.sentence_debias import fit_sentence_debias

    sets, start = [], 0
    for n in sizes:
        sets.append(x[start:start + n])
        start += n
    v = fit_sentence_debias(sets)
    return v[None, :], {"sets": len(sizes), "directions": 1}


def prepare(name: str, method: str, attribute: str, texts: list[str], cfg: Config) -> dict[str, Any]:
    """A fitted row's sentences (pure, no model): INLP's sentences per class with their labels, SentenceDebias'
    counterfactual sets. Raises (the row is reported failed) when the corpus cannot fit it."""
    p = cfg.benchmark.projection
    if method == "inlp":
        from raydebias.baselines.inlp import inlp_sentences

        sentences, labels, counts = inlp_sentences(texts, inlp_classes(attribute), n_per_class=p.sentences_per_class,
                                                   seed=cfg.seed)
        return {"sentences": sentences, "labels": labels, "counts": counts}
    if method == "sentence_debias":
        from raydebias.baselines.cda import counterfactual_versions
        from raydebias.baselines.sentence_debias import counterfactual_sets

        sets, counts = counterfactual_sets(texts, lambda s: counterfactual_versions(s, attribute))
        sets = sets[: p.max_sentences]
        if not sets:
            raise DataError(f"benchmark: {name}: the corpus has no sentence with a {attribute} attribute word "
                            f"(benchmark.corpus={cfg.benchmark.corpus!r}): SentenceDebias cannot fit")
        return {"sentences": [s for group in sets for s in group], "sizes": [len(g) for g in sets], "counts": counts}
    raise ValueError(f"benchmark: {method!r} is not a fitted method")


def fit_variants(rows: list[Any], texts: list[str], base: str, cfg: Config, out: Any, use_gpu: bool
                 ) -> tuple[dict[str, Any], dict[str, str]]:
    """Build every INLP / SentenceDebias row of ``rows`` into ``DIR/benchmark/variants/<row>``: the sentences of
    all rows embedded in ONE pass of the embedding pool (the base model loads once), then every fit as its own
    Ray task, at the same time. Returns (fit stats per built row, why per failed row)."""
    import ray

    from raydebias.baselines.base import save_directions
    from raydebias.benchmark.variants import variant_dir

    t0 = time.perf_counter()
    built: dict[str, Any] = {}
    failed: dict[str, str] = {}
    prepared: dict[str, dict[str, Any]] = {}
    for row in rows:
        try:
            prepared[row.name] = {"row": row, **prepare(row.name, row.method, row.attribute, texts, cfg)}
        except Exception as e:  # noqa: BLE001 - reported as a failed row, with why (issue #15 item 6)
            failed[row.name] = f"{type(e).__name__}: {e}"
    if not prepared:
        return built, failed
    unique = sorted({s for p in prepared.values() for s in p["sentences"]})
    where = {s: i for i, s in enumerate(unique)}
    x = embed(unique, base, cfg, use_gpu)  # (U, d)
    fit = ray.remote(num_cpus=1)
    tasks = {}
    for name, p in prepared.items():
        xs = x[[where[s] for s in p["sentences"]]]
        if p["row"].method == "inlp":
            tasks[name] = fit(_fit_inlp).remote(xs, p["labels"], cfg.benchmark.projection.inlp_iterations, cfg.seed)
        else:
            tasks[name] = fit(_fit_sentence_debias).remote(xs, p["sizes"])
    log.info("benchmark: embedded %d sentences for %s in %.1fs", len(unique), ", ".join(prepared),
             time.perf_counter() - t0)
    for name, task in tasks.items():
        row = prepared[name]["row"]
        try:
            directions, stats_fit = ray.get(task)
        except Exception as e:  # noqa: BLE001 - reported as a failed row, with why
            failed[name] = f"{type(e).__name__}: {e}"
            continue
        stats = {"method": row.method, "attribute": row.attribute, "base": base, "sentences": prepared[name]["counts"],
                 # the fits run side by side after one shared embedding pass: the time until this row was ready
                 "fit": stats_fit, "seconds_to_ready": round(time.perf_counter() - t0, 2)}
        with variant_dir(out, name).replacing_local() as tmp:
            save_directions(tmp, directions, method=row.method, attribute=row.attribute, base=base)
            (tmp / "fit.json").write_text(json.dumps(stats, indent=1, default=float))
        log.info("benchmark: %s fitted (%d directions of %d dims)", name, directions.shape[0], directions.shape[1])
        built[name] = stats
    return built, failed


__all__ = ["Embed", "embed", "fit_variants", "inlp_classes", "prepare"]
