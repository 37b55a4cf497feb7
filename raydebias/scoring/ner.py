"""Named-entity spans of posts, summaries and candidates (Section 4.2: spaCy en_core_web_trf).

    tagger = EntityTagger(cfg.augment.ner.model)        # "en_core_web_trf", or "tiny:spacy-ner" offline
    tagger.tag(["Greg owes me $40 since May 3."])
    # -> [[{"start": 0, "end": 4, "label": "PERSON", "text": "Greg"}, {... "MONEY" ...}, {... "DATE" ...}]]

Each entity is a ``raydebias.schema.entity`` dict: a character span ``[start, end)`` of its text, the
OntoNotes label and the surface text (``text[start:end]``). The entity-based ops (entity_swap,
mask_fill, regenerate) and the CLIFF novel-entity filter read these spans (SPEC §2).
"""

from __future__ import annotations

from raydebias import models
from raydebias.schema import entity

__all__ = ["EntityTagger"]

# Components that can put spans in `doc.ents`. A pipeline without any would tag nothing, silently.
NER_FACTORIES = ("ner", "beam_ner", "entity_ruler")
# Components NER never needs (tags, parses, lemmas): skipping them saves most of the non-NER time of
# en_core_web_sm/trf. The shared `transformer`/`tok2vec` stays, since `ner` listens to it.
UNNEEDED = ("tagger", "morphologizer", "parser", "senter", "attribute_ruler", "lemmatizer")


class EntityTagger:
    """A spaCy pipeline, loaded once, that returns entity dicts per text."""

    def __init__(self, model: str, batch_size: int = 64):
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
