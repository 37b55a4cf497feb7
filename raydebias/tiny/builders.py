"""The transformers model builders: each writes a complete model directory into `dest`.

`final` is where the directory will live once renamed into place. Every model has the kit's shared shape
(HIDDEN, LAYERS, HEADS, FFN) and random weights from a fixed, name-dependent seed.
"""

from __future__ import annotations

import json
import tempfile
import warnings
import zlib
from pathlib import Path
from typing import TYPE_CHECKING

from raydebias.tiny.tokenizers import (
    _spm_pieces,
    _t5_vocab,
    _train_byte_bpe,
    _train_sentencepiece,
    _train_sentencepiece_bpe,
    _train_wordpiece,
)

if TYPE_CHECKING:
    from raydebias.tiny.inputs import BuildInputs

# The detoxify checkpoint inside the toxic-bert directory (see `_build_toxic_bert`).
DETOXIFY_CHECKPOINT = "toxic_original_tiny.ckpt"
TOXIC_LABELS = ("toxic", "severe_toxic", "obscene", "threat", "insult", "identity_hate")
# The label names of tals/albert-xlarge-vitaminc-mnli (the default faithfulness NLI model).
NLI_LABELS = ("SUPPORTS", "REFUTES", "NOT ENOUGH INFO")

# Shared shape of every transformers model in the kit.
HIDDEN = 64
LAYERS = 2
HEADS = 4
FFN = 128


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


def _build_causal(name: str, dest: Path, final: Path, inputs: BuildInputs) -> None:
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


def _build_phi(name: str, dest: Path, final: Path, inputs: BuildInputs) -> None:
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


def _build_llama(name: str, dest: Path, final: Path, inputs: BuildInputs) -> None:
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


def _build_roberta(name: str, dest: Path, final: Path, inputs: BuildInputs) -> None:
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


def _build_t5(name: str, dest: Path, final: Path, inputs: BuildInputs) -> None:
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


def _build_marian(name: str, dest: Path, final: Path, inputs: BuildInputs) -> None:
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


def _build_toxic_bert(name: str, dest: Path, final: Path, inputs: BuildInputs) -> None:
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


def _build_albert_nli(name: str, dest: Path, final: Path, inputs: BuildInputs) -> None:
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
