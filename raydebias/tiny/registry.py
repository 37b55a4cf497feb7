"""THE list of tiny models: name -> builder, and the libraries whose version each builder's output
depends on (hashed into the stamps)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from raydebias.tiny.builders import (
    _build_albert_nli,
    _build_causal,
    _build_llama,
    _build_marian,
    _build_phi,
    _build_roberta,
    _build_t5,
    _build_toxic_bert,
)
from raydebias.tiny.ner import _build_spacy_ner

if TYPE_CHECKING:
    from raydebias.tiny.inputs import BuildInputs

_BUILDERS: dict[str, Callable[[str, Path, Path, BuildInputs], None]] = {
    "marian-en-de": _build_marian,
    "marian-de-en": _build_marian,
    "marian-en-fr": _build_marian,
    "marian-fr-en": _build_marian,
    "marian-en-es": _build_marian,
    "marian-es-en": _build_marian,
    "gpt-neo": _build_causal,
    "gpt2": _build_causal,
    "phi": _build_phi,
    "llama": _build_llama,
    "roberta-mlm": _build_roberta,
    "flan-t5": _build_t5,
    "toxic-bert": _build_toxic_bert,
    "albert-nli": _build_albert_nli,
    "spacy-ner": _build_spacy_ner,
}
REGISTRY = _BUILDERS
NAMES: tuple[str, ...] = tuple(_BUILDERS)

# Libraries whose version changes what a builder writes (file formats, tokenizer serialisation).
_LIBS = {
    _build_marian: ("torch", "transformers", "sentencepiece"),
    _build_causal: ("torch", "transformers", "tokenizers"),
    _build_phi: ("torch", "transformers", "tokenizers"),
    _build_llama: ("torch", "transformers", "tokenizers", "sentencepiece"),
    _build_roberta: ("torch", "transformers", "tokenizers"),
    _build_t5: ("torch", "transformers", "tokenizers", "sentencepiece"),
    _build_toxic_bert: ("torch", "transformers", "tokenizers"),
    _build_albert_nli: ("torch", "transformers", "tokenizers", "sentencepiece"),
    _build_spacy_ner: ("spacy",),
}
