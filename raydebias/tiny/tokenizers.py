"""Tokenizer training: byte-level BPE, WordPiece and sentencepiece (unigram, BPE) vocabularies.

Shared between models and memoised per build call (`raydebias.tiny.cache._Inputs.memo`). Only trainers
that are bit-reproducible across processes are used, so the same corpus always gives the same tokenizer.
"""

from __future__ import annotations

import json

from raydebias.tiny.inputs import PRINTABLE

VOCAB_SIZE = 1000


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
