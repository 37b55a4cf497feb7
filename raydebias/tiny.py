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
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import string
import sys
import tempfile
import uuid
import warnings
import zlib
from collections.abc import Callable, Iterable
from importlib import metadata
from pathlib import Path

from filelock import FileLock, Timeout

# Bump whenever a builder changes what it writes: the stamps of existing caches then stop matching
# and every model is rebuilt on its next `ensure`.
KIT_VERSION = "raydebias-tiny-3"

STAMP_FILE = ".tiny-stamp.json"
# The detoxify checkpoint inside the toxic-bert directory (see `_build_toxic_bert`).
DETOXIFY_CHECKPOINT = "toxic_original_tiny.ckpt"
TOXIC_LABELS = ("toxic", "severe_toxic", "obscene", "threat", "insult", "identity_hate")
# The label names of tals/albert-xlarge-vitaminc-mnli (the default faithfulness NLI model).
NLI_LABELS = ("SUPPORTS", "REFUTES", "NOT ENOUGH INFO")

SAMPLES_DIR = Path(__file__).resolve().parent / "samples"
# Shipped samples are small; the cap only keeps a large future sample set from making tokenizer
# training (and so every cold `ensure`) slow. Deterministic: files are read in sorted order.
MAX_SAMPLE_CHARS = 2_000_000

# Shared shape of every transformers model in the kit.
HIDDEN = 64
LAYERS = 2
HEADS = 4
FFN = 128
VOCAB_SIZE = 1000
LOCK_TIMEOUT_S = 600

PRINTABLE = "".join(ch for ch in string.printable if ch.isprintable())  # printable ASCII, space included

# The kit's own data (not sample data: tests point SAMPLES_DIR elsewhere, this stays): the built-in
# training text (Reddit-flavoured English with the names, sums and dates the pipelines look for, plus
# German, French and Spanish so the Marian tokenizers see both sides of each pair) and the built-in
# gazetteer of spacy-ner (phrases per OntoNotes label, and the word lists of the token patterns).
KIT_DATA_DIR = Path(__file__).resolve().parent / "samples" / "tiny"
CORPUS_FILE = KIT_DATA_DIR / "corpus.txt"
GAZETTEER_FILE = KIT_DATA_DIR / "gazetteer.json"

# Letters of German, French and Spanish, so none of them is <unk> in the Marian/T5 vocabularies even
# when the sample data never uses them.
LATIN_LETTERS = "ÀÂÄÇÉÈÊËÎÏÔÖÙÛÜŸÑÁÍÓÚŒÆàâäçéèêëîïôöùûüÿñáíóúœæß¿¡«»€£–—‘’“”…"

# OntoNotes labels, as en_core_web_trf uses them.
ONTONOTES_LABELS = (
    "PERSON", "NORP", "FAC", "ORG", "GPE", "LOC", "PRODUCT", "EVENT", "WORK_OF_ART", "LAW",
    "LANGUAGE", "DATE", "TIME", "PERCENT", "MONEY", "QUANTITY", "ORDINAL", "CARDINAL",
)  # fmt: skip

DAY_RE = r"^(?:[1-9]|[12]\d|3[01])(?:st|nd|rd|th)?$"
YEAR_RE = r"^(?:19|20)\d\d$"
DECADE_RE = r"^(?:(?:19|20)?\d0'?s|'\d0s)$"
# Digits that are not a 4-digit year 1900-2099 (those are DATE, and two labels on the same span
# would make the winner depend on match order).
CARDINAL_RE = r"^(?!(?:19|20)\d\d$)\d+(?:[.,]\d+)*$"
NUMBER_RE = r"^\d+(?:[.,]\d+)*$"
ORDINAL_RE = r"^\d*(?:1st|2nd|3rd|[04-9]th|1[1-3]th)$"
CLOCK_RE = r"^(?:[01]?\d|2[0-3]):[0-5]\d$"
HOUR_RE = r"^(?:[1-9]|1[0-2])$"
MONEY_SUFFIX_RE = r"^\d+(?:\.\d+)?[kKmMbB]$"


# ---------------------------------------------------------------------------------------------------
# Inputs: training corpus and gazetteer (both hashed into the stamps).
# ---------------------------------------------------------------------------------------------------
def builtin_text() -> str:
    """The built-in training text (samples/tiny/corpus.txt)."""
    return CORPUS_FILE.read_text(encoding="utf-8")


def builtin_gazetteer() -> dict:
    """The built-in gazetteer (samples/tiny/gazetteer.json): ``phrases`` {label: [phrase, ...]} and the
    word lists of the token patterns (``first_names``, ``months``, ``money_words``, ...)."""
    return json.loads(GAZETTEER_FILE.read_text(encoding="utf-8"))


def _string_values(obj) -> Iterable[str]:
    """Every string value in a parsed JSON document, depth first, in document order."""
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, dict):
        for value in obj.values():
            yield from _string_values(value)
    elif isinstance(obj, list):
        for value in obj:
            yield from _string_values(value)


def _sorted_files(pattern: str) -> list[Path]:
    """Sample files matching `pattern` under raydebias/samples, in a machine-independent order."""
    if not SAMPLES_DIR.is_dir():
        return []
    return sorted(SAMPLES_DIR.glob(pattern), key=lambda p: p.relative_to(SAMPLES_DIR).as_posix())


def sample_strings() -> list[str]:
    """All string values of the shipped TL;DR sample JSONL files, capped at MAX_SAMPLE_CHARS in total.

    The shipped data is what smoke runs feed the tiny models, so training the tokenizers on it keeps
    <unk> rare and sequence lengths realistic. Only the TL;DR samples: the benchmark samples added later
    (evaluation) would otherwise change every tokenizer, and with it every tiny model, whenever one is
    added.
    """
    out: list[str] = []
    total = 0
    for path in _sorted_files("tldr/**/*.jsonl"):
        with open(path, encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ValueError(
                        f"{path}:{lineno}: not valid JSON ({exc.msg}); the tiny-model kit trains its "
                        "tokenizers on the shipped samples, so fix or remove that line"
                    ) from exc
                for text in _string_values(record):
                    if total >= MAX_SAMPLE_CHARS:
                        return out
                    out.append(text)
                    total += len(text)
    return out


def training_corpus() -> list[str]:
    """The tokenizer training text as lines: built-in text, samples, printable ASCII, Latin letters."""
    lines = [ln.strip() for ln in builtin_text().splitlines()]
    for text in sample_strings():
        lines.extend(ln.strip() for ln in text.splitlines())
    lines.append(PRINTABLE)
    lines.append(LATIN_LETTERS)
    return [ln for ln in lines if ln]


def _gazetteer_from_tsv() -> list[tuple[str, str]]:
    """(text, label) lines of raydebias/samples/**/entities/*.tsv; '#' comments and a header allowed."""
    entries: list[tuple[str, str]] = []
    for path in _sorted_files("**/entities/*.tsv"):
        with open(path, encoding="utf-8") as fh:
            for lineno, raw in enumerate(fh, 1):
                line = raw.rstrip("\r\n")
                if not line.strip() or line.lstrip().startswith("#"):
                    continue
                parts = line.split("\t")
                if lineno == 1 and [p.strip().upper() for p in parts] == ["TEXT", "LABEL"]:
                    continue
                if len(parts) != 2 or not parts[0].strip():
                    raise ValueError(f"{path}:{lineno}: expected 'TEXT<TAB>LABEL', got {line!r}")
                text, label = parts[0].strip(), parts[1].strip().upper()
                if label not in ONTONOTES_LABELS:
                    raise ValueError(
                        f"{path}:{lineno}: unknown entity label {label!r}; use one of {', '.join(ONTONOTES_LABELS)}"
                    )
                entries.append((text, label))
    return entries


def ner_patterns() -> list[dict]:
    """All entity_ruler patterns of spacy-ner, in a deterministic order.

    Phrase patterns come from the built-in gazetteer, overridden by the shipped TSV gazetteer (the
    project's own data knows better). Token patterns cover the number-like entity types.
    """
    gaz = builtin_gazetteer()
    first_names, surnames, titles = gaz["first_names"], gaz["surnames"], gaz["titles"]
    months, weekdays, number_words = gaz["months"], gaz["weekdays"], gaz["number_words"]
    date_units, money_words = gaz["date_units"], gaz["money_words"]
    phrases: dict[str, str] = {}
    # The first label a phrase appears under wins (a known first name is PERSON before anything else).
    builtin = [("PERSON", gaz["phrases"]["PERSON"] + first_names),
               *((label, texts) for label, texts in gaz["phrases"].items() if label != "PERSON")]
    for label, texts in builtin:
        for text in texts:
            phrases.setdefault(text, label)
    for text, label in _gazetteer_from_tsv():
        phrases[text] = label
    patterns: list[dict] = [{"label": label, "pattern": text} for text, label in sorted(phrases.items())]

    def tok(label: str, *pattern: dict) -> None:
        patterns.append({"label": label, "pattern": list(pattern)})

    number = {"TEXT": {"REGEX": NUMBER_RE}}
    number_word = {"LOWER": {"IN": number_words}}
    month = {"ORTH": {"IN": months}}
    day = {"TEXT": {"REGEX": DAY_RE}}
    year = {"TEXT": {"REGEX": YEAR_RE}}
    not_name = months + weekdays + titles + ["I"]

    # PERSON: known first name + a capitalised word; a capitalised word + known surname; title + name.
    tok(
        "PERSON",
        {"ORTH": {"IN": first_names}},
        {"IS_TITLE": True, "IS_STOP": False, "ORTH": {"NOT_IN": not_name}},
    )
    tok(
        "PERSON",
        {"IS_TITLE": True, "IS_STOP": False, "ORTH": {"NOT_IN": not_name}},
        {"ORTH": {"IN": surnames}},
    )
    tok(
        "PERSON", {"ORTH": {"IN": titles}}, {"IS_TITLE": True, "IS_STOP": False, "ORTH": {"NOT_IN": not_name}}
    )
    tok("PERSON", {"ORTH": {"IN": titles}}, {"IS_TITLE": True}, {"IS_TITLE": True, "IS_STOP": False})
    # MONEY: $40, $1,200.50, $40k, $5 million, 40 dollars, 20 bucks.
    for symbol in gaz["currency_symbols"]:
        tok("MONEY", {"ORTH": symbol}, number)
        tok("MONEY", {"ORTH": symbol}, {"TEXT": {"REGEX": MONEY_SUFFIX_RE}})
        tok(
            "MONEY",
            {"ORTH": symbol},
            number,
            {"LOWER": {"IN": ["k", "thousand", "million", "billion", "grand"]}},
        )
    tok("MONEY", number, {"LOWER": {"IN": money_words}})
    tok("MONEY", number_word, {"LOWER": {"IN": money_words}})
    tok("MONEY", number_word, number_word, {"LOWER": {"IN": money_words}})
    # DATE: June | June 14 | June 14, 2019 | June 2019 | 14 June (2019) | the 14th of June | weekdays |
    # years | decades | last/next week | two weeks (ago) | today.
    tok("DATE", month)
    tok("DATE", month, day)
    tok("DATE", month, day, {"ORTH": ","}, year)
    tok("DATE", month, day, year)
    tok("DATE", month, year)
    tok("DATE", day, month)
    tok("DATE", day, month, year)
    tok("DATE", {"LOWER": "the"}, day, {"LOWER": "of"}, month)
    tok("DATE", {"ORTH": {"IN": weekdays}})
    tok("DATE", {"ORTH": {"IN": weekdays}}, {"ORTH": ","}, month, day)
    tok("DATE", {"ORTH": {"IN": weekdays}}, month, day)
    tok("DATE", year)
    tok("DATE", {"TEXT": {"REGEX": DECADE_RE}})
    tok("DATE", {"LOWER": "the"}, {"TEXT": {"REGEX": DECADE_RE}})
    tok("DATE", {"LOWER": {"IN": ["today", "yesterday", "tomorrow"]}})
    relative_targets = date_units + [w.lower() for w in weekdays] + ["summer", "winter", "spring", "fall"]
    tok("DATE", {"LOWER": {"IN": ["last", "next", "this", "that"]}}, {"LOWER": {"IN": relative_targets}})
    for amount in (number, number_word, {"LOWER": {"IN": ["a", "an", "few", "several", "couple"]}}):
        tok("DATE", amount, {"LOWER": {"IN": date_units}})
        tok("DATE", amount, {"LOWER": {"IN": date_units}}, {"LOWER": "ago"})
        tok("DATE", amount, {"LOWER": {"IN": date_units}}, {"LOWER": "old"})
    tok("DATE", {"LOWER": "a"}, {"LOWER": {"IN": ["few", "couple"]}}, {"LOWER": "of", "OP": "?"},
        {"LOWER": {"IN": date_units}}, {"LOWER": "ago"})  # fmt: skip
    # TIME: 3pm, 3 p.m., 10:30, 10:30pm, two hours, tonight, last night, this morning.
    ampm = {"LOWER": {"IN": ["am", "pm", "a.m.", "p.m."]}}
    tok("TIME", {"TEXT": {"REGEX": HOUR_RE}}, ampm)
    tok("TIME", {"TEXT": {"REGEX": CLOCK_RE}})
    tok("TIME", {"TEXT": {"REGEX": CLOCK_RE}}, ampm)
    tok("TIME", {"LOWER": {"IN": ["noon", "midnight", "tonight"]}})
    tok("TIME", {"LOWER": {"IN": ["last", "this", "tomorrow", "yesterday"]}},
        {"LOWER": {"IN": ["night", "morning", "afternoon", "evening"]}})  # fmt: skip
    for amount in (number, number_word, {"LOWER": {"IN": ["an", "a", "few", "several"]}}):
        tok("TIME", amount, {"LOWER": {"IN": gaz["time_units"]}})
    # PERCENT: 50%, 50 percent, fifty percent.
    tok("PERCENT", number, {"ORTH": "%"})
    tok("PERCENT", number, {"LOWER": {"IN": ["percent", "pct"]}})
    tok("PERCENT", number_word, {"LOWER": {"IN": ["percent", "pct"]}})
    # QUANTITY: 20 pounds, 5 miles.
    tok("QUANTITY", number, {"LOWER": {"IN": gaz["quantity_units"]}})
    tok("QUANTITY", number_word, {"LOWER": {"IN": gaz["quantity_units"]}})
    # ORDINAL: first, 3rd.
    tok("ORDINAL", {"LOWER": {"IN": gaz["ordinal_words"]}})
    tok("ORDINAL", {"TEXT": {"REGEX": ORDINAL_RE}})
    # CARDINAL: 150, 1,200, two, twenty five (years 1900-2099 are DATE instead).
    tok("CARDINAL", {"TEXT": {"REGEX": CARDINAL_RE}})
    tok("CARDINAL", {"LOWER": {"IN": number_words}, "OP": "+"})
    return patterns


# ---------------------------------------------------------------------------------------------------
# Tokenizer training (shared between models; memoised per build call).
# ---------------------------------------------------------------------------------------------------
class _Inputs:
    """Lazily computed build inputs, shared by all models of one `build` call."""

    def __init__(self) -> None:
        self._corpus: list[str] | None = None
        self._patterns: list[dict] | None = None
        self._memo: dict[str, object] = {}

    @property
    def corpus(self) -> list[str]:
        if self._corpus is None:
            self._corpus = training_corpus()
        return self._corpus

    @property
    def patterns(self) -> list[dict]:
        if self._patterns is None:
            self._patterns = ner_patterns()
        return self._patterns

    def memo(self, key: str, make: Callable[[], object]):
        if key not in self._memo:
            self._memo[key] = make()
        return self._memo[key]


def _train_byte_bpe(
    corpus: list[str], special_tokens: list[str]
) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Byte-level BPE as GPT-2 and RoBERTa use (ENV.md: ByteLevel alphabet, trained with `tokenizers`).

    Byte level means no character is ever <unk>.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer)
    model = json.loads(tok.to_str())["model"]
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    return model["vocab"], merges


def _train_wordpiece(corpus: list[str]) -> dict[str, int]:
    """An uncased WordPiece vocabulary for BERT's normalizer and pre-tokenizer (ENV.md toxic-bert recipe).

    tokenizers' WordPieceTrainer is not reproducible across processes: it creates the "##x" pieces
    while iterating a hash map, and merge ties are broken by id, so ids AND the learnt set change from
    run to run (measured here). Its BpeTrainer without a continuing-subword prefix is reproducible, so
    we learn BPE pieces on the BERT-normalised, BERT-pre-tokenised corpus and allow each piece both at
    the start of a word (`piece`) and inside one (`##piece`). Every character of the corpus and of
    printable ASCII is a piece, so greedy longest-match WordPiece never needs [UNK] for them.
    """
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = Tokenizer(models.BPE(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE // 2 + len(specials),
        special_tokens=specials,
        initial_alphabet=sorted(set(PRINTABLE.lower()) - {" "}),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer)
    bpe_vocab = json.loads(tok.to_str())["model"]["vocab"]
    vocab = {token: i for i, token in enumerate(specials)}
    for piece in sorted(bpe_vocab, key=bpe_vocab.__getitem__):
        if piece not in vocab:
            vocab[piece] = len(vocab)
            vocab.setdefault("##" + piece, len(vocab))
    return vocab


def _train_sentencepiece(corpus: list[str]) -> bytes:
    """A sentencepiece unigram model (Marian's source.spm/target.spm format), serialised.

    num_threads=1 keeps training bit-reproducible; character_coverage=1.0 keeps every character of
    the corpus (printable ASCII included) in the vocabulary; hard_vocab_limit=False lets a small corpus
    yield fewer pieces instead of failing. Identity normalisation, because the T5 vocabulary is taken
    from the same model (`_t5_vocab`) and T5Tokenizer applies no sentencepiece normaliser.
    """
    return _spm_train(corpus, model_type="unigram")


def _spm_train(corpus: list[str], **options) -> bytes:
    """Train a sentencepiece model in memory with the kit's common settings (+ ``options``), serialised."""
    import io

    import sentencepiece as spm

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus), model_writer=buf, vocab_size=VOCAB_SIZE, hard_vocab_limit=False,
        character_coverage=1.0, normalization_rule_name="identity", num_threads=1,
        max_sentence_length=1 << 16, minloglevel=2, **options)
    return buf.getvalue()


def _spm_pieces(spm_bytes: bytes) -> list[tuple[str, float]]:
    """(piece, score) of a serialised sentencepiece model, in id order."""
    import sentencepiece as spm

    processor = spm.SentencePieceProcessor(model_proto=spm_bytes)
    return [(processor.id_to_piece(i), processor.get_score(i)) for i in range(processor.get_piece_size())]


def _t5_vocab(spm_bytes: bytes) -> list[tuple[str, float]]:
    """T5Tokenizer's (piece, score) list: <pad>=0, </s>=1, <unk>=2, then unigram pieces.

    T5Tokenizer is a tokenizers Unigram model with a Metaspace pre-tokenizer built from these scores.
    The scores come from sentencepiece (as real T5's did), not tokenizers' UnigramTrainer: the latter
    is not reproducible across processes (measured: scores differ by ~4e-11 and piece order changes),
    which would break the kit's determinism.
    """
    specials = ["<pad>", "</s>", "<unk>"]
    pieces = [(p, s) for p, s in _spm_pieces(spm_bytes) if p not in ("<pad>", "</s>", "<unk>", "<s>")]
    return [(p, 0.0) for p in specials] + pieces


# ---------------------------------------------------------------------------------------------------
# Model builders: each writes a complete model directory into `dest`. `final` is where the directory
# will live once renamed into place.
# ---------------------------------------------------------------------------------------------------
def _seed(name: str) -> int:
    """A fixed, name-dependent seed: same name, same weights, on every machine."""
    return zlib.crc32(name.encode()) & 0x7FFFFFFF


def _init_model(name: str, model_cls, config):
    """Instantiate with random weights from the name's seed, leaving the caller's RNG state alone.

    `ensure` may run inside a training process the first time a `tiny:` id is loaded; reseeding its
    global torch RNG would silently change that run, so the seeding happens inside fork_rng.
    """
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_seed(name))
        model = model_cls(config)
    model.eval()
    return model


def _build_causal(name: str, dest: Path, final: Path, inputs: _Inputs) -> None:
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2Tokenizer, GPTNeoConfig, GPTNeoForCausalLM

    eot = "<|endoftext|>"
    vocab, merges = inputs.memo("bpe-gpt2", lambda: _train_byte_bpe(inputs.corpus, [eot]))
    # Context sizes of the real models, so truncation code behaves the same on tiny and real ones.
    max_positions = 2048 if name == "gpt-neo" else 1024
    tokenizer = GPT2Tokenizer(vocab=vocab, merges=merges, model_max_length=max_positions)
    eot_id = tokenizer.convert_tokens_to_ids(eot)
    if name == "gpt-neo":
        config = GPTNeoConfig(
            vocab_size=len(vocab),
            max_position_embeddings=max_positions,
            hidden_size=HIDDEN,
            num_layers=LAYERS,
            num_heads=HEADS,
            attention_types=[[["global", "local"], LAYERS // 2]],
            intermediate_size=FFN,
            window_size=256,
            bos_token_id=eot_id,
            eos_token_id=eot_id,
        )
        model = _init_model(name, GPTNeoForCausalLM, config)
    else:
        config = GPT2Config(
            vocab_size=len(vocab),
            n_positions=max_positions,
            n_embd=HIDDEN,
            n_layer=LAYERS,
            n_head=HEADS,
            n_inner=FFN,
            bos_token_id=eot_id,
            eos_token_id=eot_id,
        )
        model = _init_model(name, GPT2LMHeadModel, config)
    model.save_pretrained(dest)
    tokenizer.save_pretrained(dest)


def _build_phi(name: str, dest: Path, final: Path, inputs: _Inputs) -> None:
    """microsoft/phi-2's classes and special tokens at the kit's size.

    phi-2 ships GPT-2's byte-level BPE (plus whitespace-run tokens, not reproduced) as a
    CodeGenTokenizer whose bos/eos/unk are all <|endoftext|> and which adds no BOS; so the vocabulary
    here is the one tiny gpt2 uses, and `<|endoftext|>` has the same id. Config values that are phi-2's
    (not PhiConfig's defaults): partial_rotary_factor 0.4 (here 6 of each head's 16 dims are rotated),
    2048 positions, gelu_new, resid_pdrop 0.1, untied head, bos = eos = <|endoftext|>.
    """
    from transformers import CodeGenTokenizer, PhiConfig, PhiForCausalLM

    eot = "<|endoftext|>"
    vocab, merges = inputs.memo("bpe-gpt2", lambda: _train_byte_bpe(inputs.corpus, [eot]))
    # model_max_length 2048 as phi-2's tokenizer_config. phi-2's also says clean_up_tokenization_spaces
    # true, which transformers 5 ignores for BPE tokenizers (with a warning on every decode): False
    # decodes the same and quietly.
    tokenizer = CodeGenTokenizer(vocab=vocab, merges=merges, unk_token=eot, bos_token=eot, eos_token=eot,
                                 model_max_length=2048, clean_up_tokenization_spaces=False)
    eot_id = tokenizer.convert_tokens_to_ids(eot)
    config = PhiConfig(
        vocab_size=len(vocab),
        hidden_size=HIDDEN,
        intermediate_size=FFN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        max_position_embeddings=2048,
        partial_rotary_factor=0.4,
        hidden_act="gelu_new",
        resid_pdrop=0.1,
        layer_norm_eps=1e-5,
        tie_word_embeddings=False,
        bos_token_id=eot_id,
        eos_token_id=eot_id,
    )
    model = _init_model(name, PhiForCausalLM, config)
    model.save_pretrained(dest)
    tokenizer.save_pretrained(dest)


def _train_sentencepiece_bpe(corpus: list[str]) -> bytes:
    """A sentencepiece BPE model trained the way Llama-2's was: byte fallback, digits split, identity
    normalisation, whitespace kept as is, a dummy "▁" prefix; <unk>=0, <s>=1, </s>=2, no <pad>.

    The <0x00>..<0xFF> byte pieces follow at ids 3..258, so any character is encodable (the corpus
    is split into lines, so "\n" itself becomes <0x0A>, as in Llama-2). num_threads=1 keeps training
    bit-reproducible (as in `_train_sentencepiece`).
    """
    return _spm_train(corpus, model_type="bpe", byte_fallback=True, split_digits=True,
                      allow_whitespace_only_pieces=True, remove_extra_whitespaces=False, add_dummy_prefix=True,
                      unk_id=0, bos_id=1, eos_id=2, pad_id=-1)


def _build_llama(name: str, dest: Path, final: Path, inputs: _Inputs) -> None:
    """meta-llama/Llama-2-7b-hf's classes and special tokens at the kit's size.

    The tokenizer is transformers 5's LlamaTokenizer (a `tokenizers` BPE with byte fallback and a
    Metaspace "▁" pre-tokenizer that prepends "▁" to the text), its vocabulary and merges extracted from
    a sentencepiece BPE model (`_train_sentencepiece_bpe`) the way transformers converts Llama's
    tokenizer.model: ids are the sentencepiece ids, and encodings match sentencepiece's own. It adds
    <s> (id 1) and no </s>, and has no pad token, like Llama-2 (`raydebias.models.load_model` sets
    pad = eos). model_max_length is left unset, as in Llama-2's tokenizer_config; the model's 4096
    positions are the limit (`raydebias.models.max_input_tokens`).
    """
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaTokenizer
    from transformers.tokenization_utils_base import generate_merges

    spm_bytes = inputs.memo("spm-bpe-llama", lambda: _train_sentencepiece_bpe(inputs.corpus))
    vocab = {piece: i for i, (piece, _) in enumerate(_spm_pieces(spm_bytes))}
    if [p for p, i in sorted(vocab.items(), key=lambda kv: kv[1])][:3] != ["<unk>", "<s>", "</s>"]:
        raise RuntimeError("sentencepiece did not put <unk>, <s>, </s> at ids 0, 1, 2")
    # sentencepiece BPE pieces are numbered in merge order, which is what generate_merges sorts by.
    tokenizer = LlamaTokenizer(vocab=vocab, merges=generate_merges(vocab), add_bos_token=True,
                               add_eos_token=False, legacy=False)
    config = LlamaConfig(
        vocab_size=len(vocab),
        hidden_size=HIDDEN,
        intermediate_size=FFN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        num_key_value_heads=HEADS,  # Llama-2-7b has no grouped-query attention
        max_position_embeddings=4096,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=None,
    )
    model = _init_model(name, LlamaForCausalLM, config)
    model.save_pretrained(dest)
    tokenizer.save_pretrained(dest)


def _build_roberta(name: str, dest: Path, final: Path, inputs: _Inputs) -> None:
    from tokenizers import AddedToken
    from transformers import RobertaConfig, RobertaForMaskedLM, RobertaTokenizer

    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    vocab, merges = inputs.memo("bpe-roberta", lambda: _train_byte_bpe(inputs.corpus, specials))
    # <mask> swallows the space before it, as in roberta-large, so "the <mask> sat" is one mask token
    # after "the" rather than a lone "Ġ" plus the mask.
    tokenizer = RobertaTokenizer(
        vocab=vocab,
        merges=merges,
        mask_token=AddedToken("<mask>", lstrip=True, rstrip=False),
        model_max_length=512,
    )
    config = RobertaConfig(
        vocab_size=len(vocab),
        hidden_size=HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        intermediate_size=FFN,
        max_position_embeddings=514,  # 512 + padding offset, as in roberta-large
        type_vocab_size=1,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    model = _init_model(name, RobertaForMaskedLM, config)
    model.save_pretrained(dest)
    tokenizer.save_pretrained(dest)


def _build_t5(name: str, dest: Path, final: Path, inputs: _Inputs) -> None:
    from transformers import T5Config, T5ForConditionalGeneration, T5Tokenizer

    spm_bytes = inputs.memo("spm-unigram", lambda: _train_sentencepiece(inputs.corpus))
    vocab = _t5_vocab(spm_bytes)
    # extra_ids=100 adds the <extra_id_N> sentinels after the trained pieces: their ids differ from
    # real T5's (ENV.md), so nothing may hard-code them.
    tokenizer = T5Tokenizer(vocab=vocab, extra_ids=100, model_max_length=512)
    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=HIDDEN,
        d_kv=HIDDEN // HEADS,
        d_ff=FFN,
        num_layers=LAYERS,
        num_decoder_layers=LAYERS,
        num_heads=HEADS,
        relative_attention_num_buckets=32,
        relative_attention_max_distance=128,
        feed_forward_proj="gated-gelu",  # flan-t5 (T5 v1.1) style
        tie_word_embeddings=False,  # flan-t5 has an untied LM head
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
    )
    model = _init_model(name, T5ForConditionalGeneration, config)
    # transformers 5 ignores tie_word_embeddings=False for T5 (T5Config forces it True and keeps only
    # "scale_decoder_outputs": false), so the model is built tied. flan-t5 checkpoints carry a separate
    # lm_head; give ours one too (T5's own init for an untied head: normal(0, initializer_factor)) and
    # drop it from the tying map so save_pretrained writes both tensors. On load, transformers sees two
    # different tensors and leaves them untied, exactly as it does for google/flan-t5-large.
    import torch

    generator = torch.Generator().manual_seed(_seed(name + ":lm_head"))
    with torch.no_grad():
        head = torch.empty_like(model.shared.weight).normal_(
            0.0, config.initializer_factor, generator=generator
        )
    model.lm_head.weight = torch.nn.Parameter(head)
    model.all_tied_weights_keys.pop("lm_head.weight", None)
    model.save_pretrained(dest)
    tokenizer.save_pretrained(dest)


def _build_marian(name: str, dest: Path, final: Path, inputs: _Inputs) -> None:
    from transformers import MarianConfig, MarianMTModel, MarianTokenizer

    spm_bytes = inputs.memo("spm-unigram", lambda: _train_sentencepiece(inputs.corpus))
    # Marian's vocab.json layout (ENV.md): </s>=0, <unk>=1, the pieces, <pad> last.
    vocab = {"</s>": 0, "<unk>": 1}
    for piece, _ in _spm_pieces(spm_bytes):
        if piece not in ("<unk>", "<s>", "</s>", "<pad>"):
            vocab.setdefault(piece, len(vocab))
    vocab["<pad>"] = len(vocab)
    pad_id = len(vocab) - 1

    src_lang, tgt_lang = name.split("-")[1:]
    with tempfile.TemporaryDirectory(prefix="marian-src-", dir=dest.parent) as src:
        (Path(src) / "source.spm").write_bytes(spm_bytes)
        (Path(src) / "target.spm").write_bytes(spm_bytes)
        (Path(src) / "vocab.json").write_text(
            json.dumps(vocab, ensure_ascii=False, indent=1), encoding="utf-8"
        )
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*sacremoses.*")  # optional punctuation normaliser
            tokenizer = MarianTokenizer(
                source_spm=str(Path(src) / "source.spm"),
                target_spm=str(Path(src) / "target.spm"),
                vocab=str(Path(src) / "vocab.json"),
                source_lang=src_lang,
                target_lang=tgt_lang,
                model_max_length=512,
            )
            tokenizer.save_pretrained(dest)
    config = MarianConfig(
        vocab_size=len(vocab),
        d_model=HIDDEN,
        encoder_layers=LAYERS,
        decoder_layers=LAYERS,
        encoder_attention_heads=HEADS,
        decoder_attention_heads=HEADS,
        encoder_ffn_dim=FFN,
        decoder_ffn_dim=FFN,
        max_position_embeddings=512,
        pad_token_id=pad_id,
        eos_token_id=0,
        forced_eos_token_id=0,
        decoder_start_token_id=pad_id,
        share_encoder_decoder_embeddings=True,
        scale_embedding=True,
    )
    model = _init_model(name, MarianMTModel, config)
    # As in the real opus-mt configs: never generate <pad> (it doubles as the decoder start token).
    model.generation_config.bad_words_ids = [[pad_id]]
    model.save_pretrained(dest)


def _build_toxic_bert(name: str, dest: Path, final: Path, inputs: _Inputs) -> None:
    """A BERT multi-label classifier dir that is also loadable by detoxify.

    Besides config.json + model.safetensors + tokenizer, the dir holds DETOXIFY_CHECKPOINT in the
    format detoxify's `load_checkpoint` reads (ENV.md "detoxify offline"). Its state_dict is the plain
    HF state_dict: a `model.` prefix would load silently as random weights. Detoxify checkpoints are
    torch pickles by design; this one holds only dicts, strings, ints and tensors, which lets
    `raydebias.models.load_detoxify` read it with `weights_only=True`. The `model_type` baked in here
    is this directory's path at build time; detoxify calls `from_pretrained(model_type)`, so the
    loader replaces it with the directory's actual path at load time (the cache may have moved).
    """
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizer

    vocab = inputs.memo("wordpiece-bert", lambda: _train_wordpiece(inputs.corpus))
    tokenizer = BertTokenizer(vocab=vocab, model_max_length=512)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        intermediate_size=FFN,
        max_position_embeddings=512,
        num_labels=len(TOXIC_LABELS),
        id2label=dict(enumerate(TOXIC_LABELS)),
        label2id={label: i for i, label in enumerate(TOXIC_LABELS)},
        problem_type="multi_label_classification",
        pad_token_id=tokenizer.pad_token_id,
    )
    model = _init_model(name, BertForSequenceClassification, config)
    model.save_pretrained(dest)
    tokenizer.save_pretrained(dest)
    checkpoint = {
        "config": {
            "arch": {
                "args": {
                    "model_type": str(final),
                    "model_name": "BertForSequenceClassification",
                    "tokenizer_name": "BertTokenizer",
                    "num_classes": len(TOXIC_LABELS),
                }
            },
            "dataset": {"args": {"classes": list(TOXIC_LABELS)}},
        },
        "state_dict": {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()},
    }
    torch.save(checkpoint, dest / DETOXIFY_CHECKPOINT)


def _build_albert_nli(name: str, dest: Path, final: Path, inputs: _Inputs) -> None:
    """An ALBERT 3-way NLI classifier (the class of tals/albert-xlarge-vitaminc-mnli), its tokenizer the
    sentencepiece unigram model of the Marian models as an AlbertTokenizer vocabulary."""
    from transformers import AlbertConfig, AlbertForSequenceClassification, AlbertTokenizer

    spm_bytes = inputs.memo("spm-unigram", lambda: _train_sentencepiece(inputs.corpus))
    specials = ["<pad>", "<unk>", "[CLS]", "[SEP]", "[MASK]"]
    vocab = [(p, 0.0) for p in specials] + [(p, s) for p, s in _spm_pieces(spm_bytes)
                                            if p not in ("<unk>", "<s>", "</s>", "<pad>")]
    tokenizer = AlbertTokenizer(vocab=vocab, do_lower_case=False, model_max_length=512)
    config = AlbertConfig(
        vocab_size=len(vocab), embedding_size=HIDDEN // 2, hidden_size=HIDDEN, num_hidden_layers=LAYERS,
        num_attention_heads=HEADS, intermediate_size=FFN, max_position_embeddings=512,
        num_labels=len(NLI_LABELS), id2label=dict(enumerate(NLI_LABELS)),
        label2id={label: i for i, label in enumerate(NLI_LABELS)}, pad_token_id=tokenizer.pad_token_id,
    )
    model = _init_model(name, AlbertForSequenceClassification, config)
    model.save_pretrained(dest)
    tokenizer.save_pretrained(dest)


def _build_spacy_ner(name: str, dest: Path, final: Path, inputs: _Inputs) -> None:
    """spacy.blank("en") + entity_ruler, standing in for en_core_web_trf's NER (ENV.md "spaCy")."""
    import spacy

    nlp = spacy.blank("en")
    nlp.meta["name"] = "tiny_ner"
    nlp.meta["version"] = "0.0.0"
    nlp.meta["description"] = "raydebias tiny kit: rule-based stand-in for en_core_web_trf NER"
    # phrase_matcher_attr ORTH = case-sensitive gazetteer: lowercase "may", "will", "bill", "china",
    # "turkey" in running text are words, not entities, as en_core_web_trf's casing cues also say.
    # overwrite_ents so the ruler's spans win over any NER put before it; among overlapping matches
    # the longest wins ("June 14" DATE beats CARDINAL "14", "$40" MONEY beats "40").
    ruler = nlp.add_pipe("entity_ruler", config={"phrase_matcher_attr": "ORTH", "overwrite_ents": True})
    ruler.add_patterns(inputs.patterns)
    nlp.to_disk(dest)


_BUILDERS: dict[str, Callable[[str, Path, Path, _Inputs], None]] = {
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


# ---------------------------------------------------------------------------------------------------
# Stamps, locking, atomic build.
# ---------------------------------------------------------------------------------------------------
def _check_names(names: Iterable[str] | None) -> list[str]:
    if names is None:
        return list(NAMES)
    names = [names] if isinstance(names, str) else list(names)
    unknown = [n for n in names if n not in _BUILDERS]
    if unknown:
        raise ValueError(f"unknown tiny model name(s) {unknown}; valid names: {', '.join(NAMES)}")
    return list(dict.fromkeys(names))


def _expected_stamp(name: str, inputs: _Inputs) -> dict:
    builder = _BUILDERS[name]
    digest = hashlib.sha256()
    if builder is _build_spacy_ner:
        digest.update(json.dumps(inputs.patterns, sort_keys=True, ensure_ascii=False).encode())
    else:
        digest.update("\n".join(inputs.corpus).encode())
    return {
        "kit_version": KIT_VERSION,
        "name": name,
        "inputs_sha256": digest.hexdigest(),
        "libraries": {lib: metadata.version(lib) for lib in _LIBS[builder]},
    }


def _read_stamp(model_dir: Path) -> dict | None:
    try:
        return json.loads((model_dir / STAMP_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _build_one(name: str, out_dir: Path, force: bool, inputs: _Inputs) -> tuple[Path, str]:
    """Build `name` into out_dir/name unless its stamp already matches; returns (path, status)."""
    target = out_dir / name
    expected = _expected_stamp(name, inputs)
    # Fast path without the lock: the stamp is written last, inside the temporary dir, before the
    # rename, so a directory whose stamp matches is complete.
    if not force and _read_stamp(target) == expected:
        return target, "cached"
    lock = FileLock(str(out_dir / f".{name}.lock"), timeout=LOCK_TIMEOUT_S)
    try:
        with lock:
            # Another process may have finished the same build while we waited for the lock.
            if not force and _read_stamp(target) == expected:
                return target, "cached"
            _build_locked(name, target, expected, inputs)
            return target, "built"
    except Timeout as exc:
        raise TimeoutError(
            f"waited {LOCK_TIMEOUT_S}s for another process to finish building tiny model {name!r} in "
            f"{out_dir} (lock {lock.lock_file}). The lock is released when its holder exits, so some "
            "process is still building or hung: find and stop it, then retry."
        ) from exc


def _build_locked(name: str, target: Path, stamp: dict, inputs: _Inputs) -> None:
    """Build into a temporary sibling of `target`, then swap it in by rename. Caller holds the lock."""
    out_dir = target.parent
    # Leftovers of builds that died (we hold the lock, so nobody is using them).
    for stale in list(out_dir.glob(f".{name}.tmp-*")) + list(out_dir.glob(f".{name}.old-*")):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=out_dir))
    old = None
    try:
        with _no_transformers_progress_bars():
            _BUILDERS[name](name, tmp, target, inputs)
        _check_complete(name, tmp)
        (tmp / STAMP_FILE).write_text(json.dumps(stamp, indent=1, sort_keys=True), encoding="utf-8")
        if target.exists():
            # A directory cannot be renamed over a non-empty one: move the stale build aside first.
            # Readers that race this only ever see no directory (and then wait on the lock) or a
            # complete one.
            old = out_dir / f".{name}.old-{uuid.uuid4().hex}"
            target.rename(old)
        tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _check_complete(name: str, built: Path) -> None:
    """Refuse to publish a build without its weights. transformers 5 silently skips save_pretrained's
    files on torch.distributed ranks other than 0, which would leave a tokenizer-only "model"."""
    if _BUILDERS[name] is _build_spacy_ner:
        return
    missing = [f for f in ("config.json", "model.safetensors") if not (built / f).is_file()]
    if missing:
        import torch.distributed as dist

        rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else None
        raise RuntimeError(
            f"building tiny model {name!r} wrote no {', '.join(missing)}"
            + (f" (this process is torch.distributed rank {rank}, where transformers skips save_pretrained)"
               if rank else "")
            + ". Build the tiny models before a process group starts: `python -m raydebias.tiny DIR` or "
            "resolve the `tiny:` id on the driver first.")


@contextlib.contextmanager
def _no_transformers_progress_bars():
    """Hide save_pretrained's per-model "Writing model shards" bars while building; restore after."""
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:  # spacy-only environments can still build spacy-ner
        yield
        return
    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def build_with_status(
    out_dir: str | os.PathLike, names: Iterable[str] | None = None, force: bool = False
) -> dict[str, tuple[Path, str]]:
    """Like `build`, but each value is (path, "built" | "cached")."""
    selected = _check_names(names)
    out = Path(out_dir).expanduser().resolve()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OSError(
            f"cannot create the tiny-model directory {out} ({exc}); set RAYDEBIAS_TINY_DIR to a writable "
            "directory (or pass cache_dir/OUT_DIR)"
        ) from exc
    inputs = _Inputs()
    return {name: _build_one(name, out, force, inputs) for name in selected}


def build(
    out_dir: str | os.PathLike, names: Iterable[str] | None = None, force: bool = False
) -> dict[str, Path]:
    """Build the named tiny models (default: all) into out_dir/NAME; returns NAME -> directory.

    Models whose stamp matches the current kit version and inputs are left untouched unless `force`.
    Raises ValueError for unknown names.
    """
    return {name: path for name, (path, _) in build_with_status(out_dir, names, force).items()}


def default_cache_dir() -> Path:
    """$RAYDEBIAS_TINY_DIR if set, else ~/.cache/raydebias/tiny (read at call time)."""
    env = os.environ.get("RAYDEBIAS_TINY_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "raydebias" / "tiny"


def ensure(name: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """The directory of tiny model `name`, building it into the cache first if needed."""
    _check_names([name])
    return build(cache_dir if cache_dir is not None else default_cache_dir(), [name])[name]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m raydebias.tiny",
        description="Build the offline tiny random models (same classes as the production models).",
    )
    parser.add_argument("out_dir", metavar="OUT_DIR", help="directory to build into (one subdir per model)")
    parser.add_argument("--only", nargs="+", metavar="NAME", choices=NAMES, help="build only these models")
    parser.add_argument("--force", action="store_true", help="rebuild even if the stamp matches")
    args = parser.parse_args(argv)
    for name, (path, status) in build_with_status(args.out_dir, args.only, args.force).items():
        print(f"{name}\t{path}\t{status}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
