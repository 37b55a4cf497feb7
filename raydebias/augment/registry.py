"""THE list of augmentation stages: name -> ``"module:Class"`` (STYLE habit 4: one plain dict, no metaclass).

``OPS`` are the candidate-making ops a config selects with ``augment.ops`` (its default is all of them, in
this order); ``STAGES`` adds the stages that always run (entity annotation before and after the ops,
cleaning, toxicity scoring). Everything else is derived from these two dicts: ``augment.ops`` validation
and default (raydebias/config.py), the pipeline order (a topological sort of the selected stages by the
``needs``/``after`` each class declares, ties broken by the order here: augment/stage.py ``stage_order``),
and the README table (tests/test_augment_registry.py checks it). Adding an op is its file, its config
section and one line here.

Each class declares its contract (augment/stage.py ``AugmentStage``): ``name`` (= its key here, also its
Ray pool name and the ``op`` of the drops it records itself), ``section`` (its ``augment.<section>``
settings, which also hold its pool's default ``resources``), ``uses`` (other sections it reads), ``reads``
and ``writes`` (columns; ``candidates.<field>`` for a field of every candidate) and ``needs``/``after``.

This module imports nothing, so raydebias/config.py validates ``augment.ops`` against it without importing
augmentation code (config stays the bottom layer: no import circle).
"""

from __future__ import annotations

OPS: dict[str, str] = {
    "backtranslate": "raydebias.augment.backtranslate:Backtranslate",
    "toxic_rewrite": "raydebias.augment.toxic_rewrite:ToxicRewrite",
    "low_confidence": "raydebias.augment.low_confidence:LowConfidence",
    "entity_swap": "raydebias.augment.entity_swap:EntitySwap",
    "mask_fill": "raydebias.augment.mask_fill:MaskFill",
    "regenerate": "raydebias.augment.regenerate:Regenerate",
}

STAGES: dict[str, str] = {
    "ner": "raydebias.augment.annotate:AnnotateEntities",
    **OPS,
    "clean": "raydebias.augment.clean:CleanCandidates",
    "ner_candidates": "raydebias.augment.annotate:AnnotateCandidates",
    "toxicity": "raydebias.augment.annotate:ScoreToxicity",
}

__all__ = ["OPS", "STAGES"]
