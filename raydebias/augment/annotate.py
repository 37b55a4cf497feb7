"""The scoring stages of augmentation: entity spans and toxicity for every row and candidate.

SPEC §2: "Every candidate records `text`, `op`, `toxicity`, and its named-entity character spans".
``AnnotateEntities`` (stage ``ner``) runs before the ops (entity_swap, mask_fill and regenerate read
``post_entities``/``summary_entities``); ``AnnotateCandidates`` (``ner_candidates``, the same tagger)
and ``ScoreToxicity`` (``toxicity``) run after cleaning, on the stored texts. All only fill what is still
null, so a second pass costs nothing and a score an op computed itself (toxic_rewrite keeps a rewrite
iff toxicity >= 0.4) is kept.

Where NER runs: with ``device=gpu`` a transformer pipeline (en_core_web_trf) runs on its actor's GPU
share; a CPU pipeline (en_core_web_sm/md/lg, ``tiny:spacy-ner``) stays on CPU, and ``resources`` drops
its GPU fraction so its pool never asks Ray for one (augment/pipeline.py builds a pool with a GPU only
when ``num_gpus > 0``). Texts go through ``nlp.pipe`` in ``augment.ner.pipe_batch_size`` batches.

Shaped like every stage (augment/stage.py): the model is loaded once in ``__init__``; ``process_batch``
takes a ``pa.Table`` and returns a new one with the same rows in the same order, every other column
untouched. No Ray here: augment/pipeline.py maps these over the dataset.

Faults: one call covers the whole batch (models batch well). If it raises, every text is retried
alone; a candidate whose text still fails is removed from ``candidates`` and recorded in ``drops``
as ``(its op, "error", "<stage>: <exception>", text)``, so candidates in = kept + dropped still holds.
A post or summary that fails gets ``[]`` and an error drop of the stage itself.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import numbers
from collections.abc import Callable, Sequence
from typing import Any

import pyarrow as pa

from raydebias import schema as S
from raydebias.augment.candidates import (
    CANDIDATE_LIST,
    CANDIDATES,
    DROP_LIST,
    DROPS,
    ENTITY_LIST,
    POST_ENTITIES,
    SUMMARY_ENTITIES,
    drop,
    ensure_columns,
    set_column,
)
from raydebias.augment.stage import AugmentStage
from raydebias.config import AugmentConfig, NerConfig, OpResources, ToxicityConfig
from raydebias.faults import Failed, isolated
from raydebias.scoring.ner import EntityTagger, is_transformer_pipeline
from raydebias.scoring.toxicity import load_toxicity_scorer

__all__ = ["AnnotateCandidates", "AnnotateEntities", "ScoreToxicity"]

log = logging.getLogger(__name__)

MAX_DETAIL = 2000  # same cap as candidates.apply_rows: a traceback-sized message, not a novel


def _column(batch: pa.Table, name: str) -> list:
    return batch.column(name).to_pylist()


def _with_results(stage: str, key: str, cands: list[list[dict]], drops: list[list[dict]],
                  slots: Sequence[tuple[int, int]], results: Sequence[Any]) -> tuple[list[list[dict]], list[list[dict]]]:
    """Write each result into ``cands[i][j][key]``; move failed candidates to drops (same row)."""
    failed: set[tuple[int, int]] = set()
    for (i, j), result in zip(slots, results, strict=True):
        if isinstance(result, Failed):
            failed.add((i, j))
            detail = f"{stage}: {result.error}"[:MAX_DETAIL]
            drops[i].append(drop(cands[i][j]["op"], "error", detail, cands[i][j]["text"]))
        else:
            cands[i][j][key] = result
    if failed:
        cands = [[c for j, c in enumerate(row) if (i, j) not in failed] for i, row in enumerate(cands)]
    return cands, drops


class AnnotateEntities(AugmentStage):
    """Fill ``post_entities``, ``summary_entities`` and each candidate's null ``entities`` (spaCy NER)."""

    name = section = "ner"
    reads = ("post", "summary", "candidates.text")
    writes = ("post_entities", "summary_entities", "candidates.entities", "drops")

    def __init__(self, cfg: NerConfig, device: str = "cpu", seed: int = 0):
        # A transformer pipeline moves to `device` when it is cuda; a CPU pipeline stays on CPU (its pool
        # asked for no GPU: resources below). seed is accepted so every stage is built the same way.
        self.tagger = EntityTagger(cfg.model, batch_size=cfg.pipe_batch_size, device=device)

    @classmethod
    def resources(cls, cfg: AugmentConfig) -> OpResources | None:
        """``augment.ner.resources``, without its GPU fraction unless the pipeline is a transformer one:
        a CPU pipeline gains little from a GPU, so its pool never holds one (scoring/ner.py)."""
        res = super().resources(cfg)
        if res is not None and res.num_gpus > 0 and not is_transformer_pipeline(getattr(cfg, cls.section).model):
            return dataclasses.replace(res, num_gpus=0.0)
        return res

    def process_batch(self, batch: pa.Table) -> pa.Table:
        batch = ensure_columns(batch)
        texts = {POST_ENTITIES: _column(batch, S.POST), SUMMARY_ENTITIES: _column(batch, S.SUMMARY)}
        found = {name: _column(batch, name) for name in texts}
        cands = [list(c or []) for c in _column(batch, CANDIDATES)]
        drops = [list(d or []) for d in _column(batch, DROPS)]

        # One tag() call over every text of the batch: sources first, then candidates.
        source_slots = [(name, i) for name in texts for i, ents in enumerate(found[name]) if ents is None]
        cand_slots = [(i, j) for i, row in enumerate(cands) for j, c in enumerate(row) if c["entities"] is None]
        queue = [texts[name][i] for name, i in source_slots] + [cands[i][j]["text"] for i, j in cand_slots]
        results = isolated(self.tagger.tag, queue, self.name)

        for (name, i), result in zip(source_slots, results[: len(source_slots)], strict=True):
            if isinstance(result, Failed):
                # The row stays (its summary is still a positive); [] means "no entity known", and the
                # drop makes the failure visible in the per-op counts.
                which = S.POST if name == POST_ENTITIES else S.SUMMARY
                drops[i].append(drop(self.name, "error", f"{self.name}: {which}: {result.error}"[:MAX_DETAIL]))
                result = []
            found[name][i] = result
        cands, drops = _with_results(self.name, "entities", cands, drops, cand_slots, results[len(source_slots):])

        for name in texts:
            batch = set_column(batch, name, found[name], ENTITY_LIST)
        batch = set_column(batch, CANDIDATES, cands, CANDIDATE_LIST)
        return set_column(batch, DROPS, drops, DROP_LIST)


class AnnotateCandidates(AnnotateEntities):
    """The same tagger after cleaning: entity spans of the new candidates' stored texts (the sources'
    are already filled), with the ``ner`` pool's settings and resources."""

    name = "ner_candidates"
    reads = ("candidates.text",)
    writes = ("candidates.entities", "drops")
    needs = ("clean",)  # spans must index the stored (cleaned) text


def _checked(score: Callable[[list[str]], list[float]]) -> Callable[[list[str]], list[float]]:
    """``score`` that raises on a NaN or out-of-range value, so that text is isolated and dropped
    instead of passing every ``toxicity >= threshold`` test as False (NaN) downstream."""

    def run(texts: list[str]) -> list[float]:
        values = score(texts)
        for text, value in zip(texts, values, strict=False):
            if not (isinstance(value, numbers.Real) and math.isfinite(value) and 0.0 <= value <= 1.0):
                raise ValueError(f"toxicity scorer returned {value!r} (expected a float in [0, 1]) "
                                 f"for text {text[:80]!r}")
        return values

    return run


class ScoreToxicity(AugmentStage):
    """Fill the null ``toxicity`` of every candidate with ``augment.toxicity``'s scorer (SPEC §2)."""

    name = section = "toxicity"
    reads = ("candidates.text",)
    writes = ("candidates.toxicity", "drops")
    needs = ("clean",)  # the score must belong to the stored (cleaned) text

    def __init__(self, cfg: ToxicityConfig, device: str = "cpu", seed: int = 0):
        # seed is accepted so every stage is built the same way; scoring is deterministic.
        self.scorer = load_toxicity_scorer(cfg, device=device)

    def process_batch(self, batch: pa.Table) -> pa.Table:
        batch = ensure_columns(batch)
        cands = [list(c or []) for c in _column(batch, CANDIDATES)]
        drops = [list(d or []) for d in _column(batch, DROPS)]
        slots = [(i, j) for i, row in enumerate(cands) for j, c in enumerate(row) if c["toxicity"] is None]
        results = isolated(_checked(self.scorer.score), [cands[i][j]["text"] for i, j in slots], self.name)
        cands, drops = _with_results(self.name, "toxicity", cands, drops, slots, results)
        batch = set_column(batch, CANDIDATES, cands, CANDIDATE_LIST)
        return set_column(batch, DROPS, drops, DROP_LIST)
