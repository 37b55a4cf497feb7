"""python -m raydebias.tiny OUT_DIR [--only NAME ...] [--force]

The offline tiny-model kit: tiny RANDOM models of exactly the classes the production configs name,
built here from nothing, because no model hub is reachable on these machines or in CI (ENV.md
"No model hub"). Each one is a normal `save_pretrained` directory (or a `spacy.load`-able pipeline),
so `raydebias.models` loads it through the very same code path as the real model:

    NAME          stands in for                          class
    marian-XX-YY  Helsinki-NLP/opus-mt-XX-YY             MarianMTModel (+ MarianTokenizer)
    gpt-neo       EleutherAI/gpt-neo-2.7B                GPTNeoForCausalLM (+ GPT2Tokenizer)
    gpt2          gpt2                                   GPT2LMHeadModel (+ GPT2Tokenizer)
    phi           microsoft/phi-2                        PhiForCausalLM (+ CodeGenTokenizer), partial
                                                         rotary 0.4, 2048 positions, no BOS added
    llama         meta-llama/Llama-2-7b-hf               LlamaForCausalLM (+ LlamaTokenizer: sentencepiece
                                                         BPE, byte fallback, adds <s>), 4096 positions
    roberta-mlm   FacebookAI/roberta-large               RobertaForMaskedLM (+ RobertaTokenizer)
    flan-t5       google/flan-t5-large                   T5ForConditionalGeneration, gated-gelu
    toxic-bert    detoxify "original" (unitary/toxic-bert) BertForSequenceClassification, 6 labels,
                                                         + a detoxify checkpoint file
    spacy-ner     en_core_web_trf (NER only)             spacy.blank("en") + entity_ruler

Config files say `model: tiny:gpt2`; `raydebias.models.resolve_model` calls `ensure("gpt2")`, which
builds the model into the cache (`$RAYDEBIAS_TINY_DIR`, else ~/.cache/raydebias/tiny) on first use.

Every transformers model has 2 layers and hidden size 64. The tokenizers are trained here, on a
deterministic corpus: all string values of the shipped sample data (raydebias/samples/**/*.jsonl), a
built-in English text with German/French/Spanish sentences (for Marian; raydebias/samples/tiny/corpus.txt),
every printable ASCII character and the German/French/Spanish letters (ENV.md: characters missing from a
unigram/WordPiece training text become <unk>). spacy-ner's rules come from a built-in gazetteer
(raydebias/samples/tiny/gazetteer.json) plus the shipped raydebias/samples/**/entities/*.tsv files
(TEXT<TAB>LABEL).

Builds are deterministic (fixed seed per model; only tokenizer trainers that are bit-reproducible
across processes, see `_train_wordpiece`, `_t5_vocab` and `_train_sentencepiece_bpe`), cached and
idempotent: each model directory holds a stamp with the kit version and a hash of its inputs, and a
model whose stamp matches is not rebuilt. A build happens in a temporary sibling directory that is
renamed into place under a per-model file lock, so Ray actors on one node calling `ensure` at the
same time neither corrupt the cache nor build twice.

CLI output: one line per model, `NAME<TAB>PATH<TAB>built|cached`.

One file per idea:

- :mod:`~raydebias.tiny.inputs`: the training corpus (kit text + shipped samples) and the gazetteers.
- :mod:`~raydebias.tiny.tokenizers`: byte-level BPE, WordPiece and sentencepiece training.
- :mod:`~raydebias.tiny.builders`: the transformers model builders (shared shape, seeded weights).
- :mod:`~raydebias.tiny.ner`: spacy-ner's entity_ruler patterns and its builder.
- :mod:`~raydebias.tiny.registry`: THE list of tiny models (name -> builder, libraries in the stamp).
- :mod:`~raydebias.tiny.cache`: stamps, locking, atomic builds, `build` / `ensure`, and the CLI.
"""

from raydebias.tiny.builders import DETOXIFY_CHECKPOINT, FFN, HEADS, HIDDEN, LAYERS, NLI_LABELS, TOXIC_LABELS
from raydebias.tiny.cache import (
    KIT_VERSION,
    LOCK_TIMEOUT_S,
    STAMP_FILE,
    build,
    build_with_status,
    default_cache_dir,
    ensure,
    main,
)
from raydebias.tiny.inputs import (
    CORPUS_FILE,
    GAZETTEER_FILE,
    KIT_DATA_DIR,
    LATIN_LETTERS,
    MAX_SAMPLE_CHARS,
    ONTONOTES_LABELS,
    PRINTABLE,
    SAMPLES_DIR,
    builtin_gazetteer,
    builtin_text,
    sample_strings,
    training_corpus,
)
from raydebias.tiny.ner import ner_patterns
from raydebias.tiny.registry import NAMES, REGISTRY
from raydebias.tiny.tokenizers import VOCAB_SIZE

# Private, re-exported because tests train the Llama tokenizer on its own (test_tiny.py).
from raydebias.tiny.tokenizers import _train_sentencepiece_bpe as _train_sentencepiece_bpe

__all__ = [
    "CORPUS_FILE", "DETOXIFY_CHECKPOINT", "FFN", "GAZETTEER_FILE", "HEADS", "HIDDEN", "KIT_DATA_DIR", "KIT_VERSION",
    "LATIN_LETTERS", "LAYERS", "LOCK_TIMEOUT_S", "MAX_SAMPLE_CHARS", "NAMES", "NLI_LABELS", "ONTONOTES_LABELS",
    "PRINTABLE", "REGISTRY", "SAMPLES_DIR", "STAMP_FILE", "TOXIC_LABELS", "VOCAB_SIZE", "build",
    "build_with_status", "builtin_gazetteer", "builtin_text", "default_cache_dir", "ensure", "main",
    "ner_patterns", "sample_strings", "training_corpus",
]  # fmt: skip
