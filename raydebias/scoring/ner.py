"""Named-entity spans of posts, summaries and candidates (Section 4.2: spaCy en_core_web_trf).

    tagger = EntityTagger(cfg.augment.ner.model)        # "en_core_web_trf", or "tiny:spacy-ner" offline
    tagger.tag(["Greg owes me $40 since May 3."])
    # -> [[{"start": 0, "end": 4, "label": "PERSON", "text": "Greg"}, {... "MONEY" ...}, {... "DATE" ...}]]

Each entity is a ``raydebias.schema.entity`` dict: a character span ``[start, end)`` of its text, the
OntoNotes label and the surface text (``text[start:end]``). The entity-based ops (entity_swap,
mask_fill, regenerate) and the CLIFF novel-entity filter read these spans (SPEC §2).

Where it runs: a transformer pipeline (en_core_web_trf) on a ``cuda`` device runs on that GPU
(``spacy.require_gpu`` before ``spacy.load``, which needs cupy: the ``spacy[cuda12x]`` extra). A CPU
pipeline (en_core_web_sm/md/lg, ``tiny:spacy-ner``) always runs on CPU, whatever the device: its
CNN gains little from a GPU (1.5x for en_core_web_lg below), so its actor pool never asks for one
(augment/annotate.py). :func:`is_transformer_pipeline` tells the two apart from the pipeline's
config.cfg, without loading it.

Expected throughput (published figures, not measured here): spaCy's "Facts & Figures" page (spacy.io,
v3 pipeline speed table) gives en_core_web_trf about 684 words/s on CPU and 3,768 words/s on a GPU,
en_core_web_lg about 10,014 words/s on CPU and 14,954 on a GPU. A TL;DR row is about 650 words for the
``ner`` stages (post + summary + ~13 candidates), so en_core_web_trf tags about 1 row/s per CPU actor
and ~6 rows/s per GPU actor (en_core_web_lg: ~15 rows/s on CPU). Those speeds are for the full
pipelines; the tagger here disables the components NER does not need (``UNNEEDED``).
"""

from __future__ import annotations

import logging
from pathlib import Path

from raydebias import models
from raydebias.errors import ModelLoadError
from raydebias.schema import entity

__all__ = ["EntityTagger", "is_transformer_pipeline"]

log = logging.getLogger(__name__)

# Components that can put spans in `doc.ents`. A pipeline without any would tag nothing, silently.
NER_FACTORIES = ("ner", "beam_ner", "entity_ruler")
# Components NER never needs (tags, parses, lemmas): skipping them saves most of the non-NER time of
# en_core_web_sm/trf. The shared `transformer`/`tok2vec` stays, since `ner` listens to it.
UNNEEDED = ("tagger", "morphologizer", "parser", "senter", "attribute_ruler", "lemmatizer")
# Factories that make a pipeline a transformer pipeline (spacy-transformers, spacy-curated-transformers):
# the only spaCy pipelines worth a GPU.
TRANSFORMER_FACTORIES = ("transformer", "curated_transformer")
# spaCy's naming convention for transformer pipelines, used only when the pipeline is not installed here.
TRANSFORMER_SUFFIX = "_trf"


def _config_path(resolved: str) -> Path | None:
    """The config.cfg of a pipeline directory or installed pipeline package; None when neither is here."""
    import spacy.util

    path = Path(resolved)
    if path.is_dir():
        cfg = path / "config.cfg"
        if not cfg.is_file():
            raise ModelLoadError(f"{resolved!r} is a directory without config.cfg, so it is not a spaCy pipeline "
                                 f"(spacy.load would fail too). Point augment.ner.model at a pipeline directory "
                                 f"written by nlp.to_disk, or at an installed pipeline such as en_core_web_trf.")
        return cfg
    if spacy.util.is_package(resolved):
        try:
            package = spacy.util.get_package_path(resolved)
        except ImportError:
            return None
        # A pipeline package keeps its data (config.cfg, weights) in a versioned subdirectory.
        found = sorted(package.glob("*/config.cfg"))
        return found[0] if found else None
    return None


def is_transformer_pipeline(model: str) -> bool:
    """True iff ``model`` (an ``augment.ner.model`` value) is a transformer spaCy pipeline.

    Reads its config.cfg without loading the pipeline (no weights, no torch): True iff a component's
    factory is one of ``TRANSFORMER_FACTORIES``. Where the pipeline is not installed in this process (a
    driver that only schedules the NER actors), the name decides: ``*_trf`` is a transformer pipeline.
    """
    import spacy.util

    resolved = models.resolve_model(model)
    path = _config_path(resolved)
    if path is None:
        guess = Path(resolved).name.endswith(TRANSFORMER_SUFFIX)
        log.info("spaCy pipeline %r is not installed in this process; by its name it is %sa transformer "
                 "pipeline (names ending in %r are).", model, "" if guess else "not ", TRANSFORMER_SUFFIX)
        return guess
    config = spacy.util.load_config(path, interpolate=False)
    components = config.get("components", {})
    return any(isinstance(c, dict) and c.get("factory") in TRANSFORMER_FACTORIES for c in components.values())


def _gpu_index(device: str) -> int:
    """The GPU of a torch device string: "cuda" -> 0 (Ray sets CUDA_VISIBLE_DEVICES per actor), "cuda:N" -> N."""
    _, _, index = device.partition(":")
    if not index:
        return 0
    if not index.isdigit():
        raise ValueError(f"EntityTagger: device {device!r} is not 'cpu', 'cuda' or 'cuda:N'")
    return int(index)


class EntityTagger:
    """A spaCy pipeline, loaded once, that returns entity dicts per text.

    ``batch_size`` texts go through ``nlp.pipe`` at a time (``augment.ner.pipe_batch_size``). ``device``
    is a torch device string (``models.actor_device``); only a transformer pipeline moves to a ``cuda``
    device, a CPU pipeline stays on CPU (module docstring).
    """

    def __init__(self, model: str, batch_size: int = 64, device: str = "cpu"):
        if batch_size < 1:
            raise ValueError(f"EntityTagger: batch_size must be >= 1, got {batch_size!r}")
        self.device = "cpu"
        if device.startswith("cuda") and is_transformer_pipeline(model):
            self._require_gpu(model, device)
            self.device = device
        self.nlp = models.load_spacy(model)
        factories = dict(self.nlp.pipe_factories)
        if not any(f in NER_FACTORIES for f in factories.values()):
            raise ValueError(
                f"spaCy pipeline {model!r} has no entity recogniser: its components are "
                f"{factories or 'none'} and none is one of {', '.join(NER_FACTORIES)}, so it would return "
                f"no entities at all. Set augment.ner.model to a pipeline with NER (en_core_web_trf, or "
                f"'tiny:spacy-ner' offline)."
            )
        self.disable = [name for name in self.nlp.pipe_names if name in UNNEEDED]
        self.batch_size = batch_size

    @staticmethod
    def _require_gpu(model: str, device: str) -> None:
        """Put spaCy's (thinc's) ops on the GPU; must run before ``spacy.load`` to place the weights there."""
        import spacy

        index = _gpu_index(device)
        try:
            spacy.require_gpu(index)
        except Exception as exc:
            raise RuntimeError(
                f"spaCy cannot use GPU {index} (device {device!r}) for the transformer pipeline {model!r}: "
                f"{type(exc).__name__}: {exc}. spaCy's GPU support needs cupy, which comes with the "
                f"spacy[cuda12x] extra: install it on the GPU nodes (pip install 'spacy[cuda12x]'), or run NER "
                f"on CPU by setting augment.ner.resources.num_gpus=0."
            ) from exc
        log.info("spaCy pipeline %r runs on GPU %d", model, index)

    def tag(self, texts: list[str]) -> list[list[dict]]:
        """Entity dicts per text, in order; empty or whitespace-only texts get [] without running spaCy."""
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"EntityTagger.tag: texts[{i}] is {type(text).__name__} ({text!r}), expected str")
        out: list[list[dict]] = [[] for _ in texts]
        todo = [i for i, text in enumerate(texts) if text.strip()]
        docs = self.nlp.pipe((texts[i] for i in todo), batch_size=self.batch_size, disable=self.disable)
        for i, doc in zip(todo, docs, strict=True):
            out[i] = [entity(e.start_char, e.end_char, e.label_, e.text) for e in doc.ents]
        return out
