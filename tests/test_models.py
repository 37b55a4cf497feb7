"""raydebias.models, the production loading path, exercised on every tiny model (no mocks).

Each tiny model is loaded exactly as its real counterpart would be (load_model / load_spacy /
load_detoxify with a `tiny:` id) and then used the way the pipeline uses it.
"""

import shutil  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # the package is not pip-installed in every checkout
    sys.path.insert(0, str(REPO))

from raydebias import tiny  # noqa: E402
from raydebias.models import (  # noqa: E402
    TINY_PREFIX,
    ModelLoadError,
    load_detoxify,
    load_model,
    load_spacy,
    load_tokenizer,
    resolve_device,
    resolve_model,
)

MARIANS = [n for n in tiny.NAMES if n.startswith("marian-")]
PROMPT = "TL;DR: my roommate owes me $40 and keeps making excuses, what should I"
TEXTS = ["you are a complete idiot and everyone hates you", "Thanks for the advice, have a nice day!"]


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    """All tiny models built once for this module; `tiny:NAME` resolves into this directory."""
    out = tmp_path_factory.mktemp("tiny-kit")
    tiny.build(out)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAYDEBIAS_TINY_DIR", str(out))
        yield out


def test_resolve_model(kit):
    assert TINY_PREFIX == "tiny:"
    assert resolve_model("tiny:gpt2") == str(kit / "gpt2")
    assert resolve_model("gpt2") == "gpt2"
    assert resolve_model("Helsinki-NLP/opus-mt-en-de") == "Helsinki-NLP/opus-mt-en-de"
    assert resolve_model("/some/local/dir") == "/some/local/dir"
    with pytest.raises(ValueError, match="valid names"):
        resolve_model("tiny:mistral")


@pytest.mark.parametrize("name, cls", [("gpt2", "GPT2LMHeadModel"), ("gpt-neo", "GPTNeoForCausalLM")])
def test_causal_lm_generates_and_beam_scores(kit, name, cls):
    model, tok = load_model(f"tiny:{name}", "causal_lm")
    assert type(model).__name__ == cls and type(tok).__name__ == "GPT2Tokenizer"
    assert not model.training and model.device.type == "cpu"
    assert tok.pad_token == tok.eos_token == "<|endoftext|>"
    assert tok.padding_side == "right", "load_model must not choose the padding side"

    enc = tok([PROMPT], return_tensors="pt")
    prompt_len = enc["input_ids"].shape[1]
    with torch.no_grad():
        greedy = model.generate(**enc, max_new_tokens=6, min_new_tokens=6, do_sample=False)
        beams = model.generate(
            **enc, max_new_tokens=5, num_beams=3, num_return_sequences=2,
            output_scores=True, return_dict_in_generate=True, do_sample=False,
        )  # fmt: skip
    assert greedy.shape == (1, prompt_len + 6)
    assert isinstance(tok.decode(greedy[0, prompt_len:]), str)
    assert beams.sequences.shape[0] == 2 and beams.sequences.shape[1] > prompt_len
    assert beams.sequences_scores.shape == (2,)
    assert torch.isfinite(beams.sequences_scores).all()

    tok.padding_side = "left"  # batched generation, as the augmentation actors do it
    batch = tok(["Hi", PROMPT], return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=3, min_new_tokens=3, do_sample=False)
    assert out.shape == (2, batch["input_ids"].shape[1] + 3)


@pytest.mark.parametrize("name", MARIANS)
def test_marian_translates(kit, name):
    model, tok = load_model(f"tiny:{name}", "seq2seq_lm")
    assert type(model).__name__ == "MarianMTModel" and type(tok).__name__ == "MarianTokenizer"
    vocab_size = model.config.vocab_size
    # ENV.md Marian layout: </s>=0, <unk>=1, <pad> last and also the decoder start token.
    assert tok.convert_tokens_to_ids(["</s>", "<unk>", "<pad>"]) == [0, 1, vocab_size - 1]
    assert model.config.pad_token_id == model.config.decoder_start_token_id == vocab_size - 1
    assert model.config.eos_token_id == 0
    enc = tok(
        ["I paid $40 for a fake ticket (seriously!).", "Hallo, wie geht's?"],
        return_tensors="pt",
        padding=True,
    )
    assert tok.unk_token_id not in enc["input_ids"]
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=6, num_beams=2)
    assert out.shape[0] == 2 and out.shape[1] >= 2
    assert (out[:, 0] == model.config.decoder_start_token_id).all()
    assert all(isinstance(s, str) for s in tok.batch_decode(out, skip_special_tokens=True))


def test_flan_t5_generates_with_untied_gated_gelu(kit):
    model, tok = load_model("tiny:flan-t5", "seq2seq_lm")
    assert type(model).__name__ == "T5ForConditionalGeneration" and type(tok).__name__ == "T5Tokenizer"
    assert model.config.feed_forward_proj == "gated-gelu"
    # flan-t5 has a separate LM head (transformers 5 reports tie_word_embeddings=True for every T5
    # config, so check the tensors, not the flag).
    assert model.lm_head.weight.data_ptr() != model.shared.weight.data_ptr()
    assert not torch.equal(model.lm_head.weight, model.shared.weight)
    sentinel = tok.convert_tokens_to_ids("<extra_id_0>")
    assert (
        sentinel != tok.unk_token_id and len(tok("<extra_id_0>", add_special_tokens=False)["input_ids"]) == 1
    )
    enc = tok(["summarize: " + PROMPT], return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=6, min_new_tokens=2)
    assert out.shape[0] == 1 and 3 <= out.shape[1] <= 7
    assert isinstance(tok.decode(out[0], skip_special_tokens=True), str)


def test_roberta_fill_mask(kit):
    from transformers import pipeline

    model, tok = load_model("tiny:roberta-mlm", "masked_lm")
    assert type(model).__name__ == "RobertaForMaskedLM" and type(tok).__name__ == "RobertaTokenizer"
    text = f"My roommate is a {tok.mask_token} person."
    ids = tok(text)["input_ids"]
    assert ids.count(tok.mask_token_id) == 1
    assert tok.convert_ids_to_tokens(ids).count("Ġ") == 0, "<mask> must absorb the space before it"
    fill = pipeline("fill-mask", model=model, tokenizer=tok)
    candidates = fill(text, top_k=5)
    assert len(candidates) == 5
    assert all({"score", "token", "token_str", "sequence"} <= set(c) for c in candidates)
    assert all(tok.mask_token not in c["sequence"] for c in candidates)
    scores = [c["score"] for c in candidates]
    assert scores == sorted(scores, reverse=True)


def _hf_sigmoid_scores(model, tok, texts):
    enc = tok(texts, return_tensors="pt", padding=True, truncation=True)
    with torch.no_grad():
        return torch.sigmoid(model(**enc).logits)


def test_toxic_bert_classifies_and_detoxify_matches(kit):
    model, tok = load_model("tiny:toxic-bert", "sequence_classification")
    assert type(model).__name__ == "BertForSequenceClassification" and type(tok).__name__ == "BertTokenizer"
    assert model.config.problem_type == "multi_label_classification"
    assert [model.config.id2label[i] for i in range(6)] == list(tiny.TOXIC_LABELS)
    scores = _hf_sigmoid_scores(model, tok, TEXTS)
    assert scores.shape == (2, 6) and ((scores > 0) & (scores < 1)).all()

    detox = load_detoxify("tiny:toxic-bert")
    # detoxify's own class names for the "original" labels.
    names = ["toxicity", "severe_toxicity", "obscene", "threat", "insult", "identity_attack"]
    assert detox.class_names == names
    batch = detox.predict(TEXTS)
    got = torch.tensor([batch[n] for n in names]).T
    # Equality, not closeness to 0.5: random-but-wrong weights (the "model." prefix trap) differ here.
    torch.testing.assert_close(got, scores, rtol=0, atol=1e-6)
    single = detox.predict(TEXTS[0])
    assert single == pytest.approx({n: batch[n][0] for n in names}, abs=1e-6)
    for key, tensor in model.state_dict().items():
        assert torch.equal(detox.model.state_dict()[key], tensor), key


def test_detoxify_loads_from_a_moved_cache(tmp_path):
    """The checkpoint's baked-in model_type points at the old place; the loader must not rely on it."""
    built = tiny.build(tmp_path / "old-machine", ["toxic-bert"])["toxic-bert"]
    moved = tmp_path / "new-machine"
    shutil.move(str(tmp_path / "old-machine"), str(moved))
    assert not built.exists()
    detox = load_detoxify(str(moved / "toxic-bert"))
    model, tok = load_model(str(moved / "toxic-bert"), "sequence_classification")
    expected = _hf_sigmoid_scores(model, tok, TEXTS[:1])[0]
    assert list(detox.predict(TEXTS[0]).values()) == pytest.approx(expected.tolist(), abs=1e-6)


def test_detoxify_rejects_prefixed_state_dict(kit, tmp_path):
    """ENV.md trap: `model.`-prefixed keys would load silently as random weights; refuse them."""
    local = tmp_path / "toxic"
    shutil.copytree(kit / "toxic-bert", local)
    ckpt = torch.load(local / tiny.DETOXIFY_CHECKPOINT, weights_only=True)
    ckpt["state_dict"] = {f"model.{k}": v for k, v in ckpt["state_dict"].items()}
    torch.save(ckpt, local / tiny.DETOXIFY_CHECKPOINT)
    with pytest.raises(ModelLoadError, match="model. prefix|'model.' prefix"):
        load_detoxify(str(local))


def test_spacy_ner_finds_person_money_date(kit):
    nlp = load_spacy("tiny:spacy-ner")
    doc = nlp("Gregory Helms paid $40 on June 14 for two tickets to Chicago at 3pm.")
    ents = {(e.text, e.label_) for e in doc.ents}
    assert {("Gregory Helms", "PERSON"), ("$40", "MONEY"), ("June 14", "DATE")} <= ents
    assert {("two", "CARDINAL"), ("Chicago", "GPE"), ("3pm", "TIME")} <= ents
    doc = nlp(
        "Two weeks ago my sister Emily (24F) moved to New York; it was the first time since 2019, 50% more rent."
    )
    ents = {(e.text, e.label_) for e in doc.ents}
    assert {
        ("Emily", "PERSON"),
        ("New York", "GPE"),
        ("first", "ORDINAL"),
        ("2019", "DATE"),
        ("50%", "PERCENT"),
    } <= ents
    # Case-sensitive gazetteer: the verb "may" and the word "will" are not entities.
    assert not nlp("you may want to ask, i will").ents


def test_missing_spacy_pipeline_has_a_clear_message():
    import spacy

    if spacy.util.is_package("en_core_web_trf"):
        pytest.skip("en_core_web_trf is installed here")
    with pytest.raises(ModelLoadError) as info:
        load_spacy("en_core_web_trf")
    msg = str(info.value)
    assert "not installed" in msg
    assert "python -m spacy download en_core_web_trf" in msg
    assert "PyPI" in msg and "dependency-confusion" in msg
    assert "tiny:spacy-ner" in msg
    assert isinstance(info.value.__cause__, OSError) and "E050" in str(info.value.__cause__)


def test_hub_id_offline_is_a_model_load_error():
    model_id = "EleutherAI/gpt-neo-2.7B"
    with pytest.raises(ModelLoadError) as info:
        load_model(model_id, "causal_lm")
    msg = str(info.value)
    assert model_id in msg and "offline" in msg and "tiny:" in msg
    assert isinstance(info.value.__cause__, OSError)
    with pytest.raises(ModelLoadError, match="google/flan-t5-large"):
        load_tokenizer("google/flan-t5-large")
    with pytest.raises(ModelLoadError, match="no such local directory"):
        load_model("./no/such/model/dir", "seq2seq_lm")


def test_safetensors_only_by_default(kit, tmp_path):
    """Pickled weights (pytorch_model.bin) are refused unless the caller opts in."""
    from safetensors.torch import load_file

    local = tmp_path / "pickled-gpt2"
    shutil.copytree(kit / "gpt2", local)
    torch.save(load_file(local / "model.safetensors"), local / "pytorch_model.bin")
    (local / "model.safetensors").unlink()
    with pytest.raises(ModelLoadError, match="use_safetensors=False"):
        load_model(str(local), "causal_lm")
    model, _ = load_model(str(local), "causal_lm", use_safetensors=False)
    assert type(model).__name__ == "GPT2LMHeadModel"


def test_dtype_and_kind_arguments(kit):
    model, _ = load_model("tiny:gpt2", "causal_lm", dtype="bfloat16")
    assert next(model.parameters()).dtype == torch.bfloat16
    model, _ = load_model("tiny:gpt2", "causal_lm", dtype=torch.float32)
    assert next(model.parameters()).dtype == torch.float32
    model, _ = load_model("tiny:gpt2", "causal_lm")
    assert next(model.parameters()).dtype == torch.float32
    with pytest.raises(ValueError, match="unknown dtype"):
        load_model("tiny:gpt2", "causal_lm", dtype="float8")
    with pytest.raises(ValueError, match="causal_lm, seq2seq_lm, masked_lm, sequence_classification"):
        load_model("tiny:gpt2", "text-generation")


def test_resolve_device():
    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="cpu', 'gpu' or 'auto'"):
        resolve_device("tpu")
    if torch.cuda.is_available():
        assert resolve_device("gpu") == "cuda"
    else:
        with pytest.raises(RuntimeError, match="asks for a GPU.*torch.cuda.is_available\\(\\) is False"):
            resolve_device("gpu")
