"""The offline tiny-model kit: caching, atomic/locked builds, determinism, CLI, inputs.

Loading/generation through the production path is in test_models.py; here the kit itself.
"""

import json  # noqa: E402
import multiprocessing  # noqa: E402
import os
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # the package is not pip-installed in every checkout
    sys.path.insert(0, str(REPO))

from raydebias import tiny  # noqa: E402

HF_NAMES = [n for n in tiny.NAMES if n != "spacy-ner"]


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    """All tiny models, built once for this module; `tiny:` ids resolve there."""
    out = tmp_path_factory.mktemp("tiny-kit")
    statuses = tiny.build_with_status(out)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAYDEBIAS_TINY_DIR", str(out))
        yield out, statuses


def _files(root: Path) -> dict[str, int]:
    """relative path -> mtime_ns of every file below root."""
    return {
        p.relative_to(root).as_posix(): p.stat().st_mtime_ns for p in sorted(root.rglob("*")) if p.is_file()
    }


def _checkpoint_state(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def _assert_same_model_dirs(a: Path, b: Path) -> None:
    """Byte-identical files, except the detoxify checkpoint (it records its build directory)."""
    files_a, files_b = _files(a), _files(b)
    assert sorted(files_a) == sorted(files_b)
    for rel in files_a:
        if rel.endswith(tiny.DETOXIFY_CHECKPOINT):
            sd_a = _checkpoint_state(a / rel)["state_dict"]
            sd_b = _checkpoint_state(b / rel)["state_dict"]
            assert sorted(sd_a) == sorted(sd_b)
            for key in sd_a:
                assert torch.equal(sd_a[key], sd_b[key]), f"{rel}: {key} differs"
        else:
            assert (a / rel).read_bytes() == (b / rel).read_bytes(), f"{rel} differs between builds"


def test_names_and_registry():
    assert tiny.NAMES == (
        "marian-en-de", "marian-de-en", "marian-en-fr", "marian-fr-en", "marian-en-es", "marian-es-en",
        "gpt-neo", "gpt2", "phi", "llama", "roberta-mlm", "flan-t5", "toxic-bert", "albert-nli", "spacy-ner",
    )  # fmt: skip
    assert set(tiny.REGISTRY) == set(tiny.NAMES)
    assert all(callable(builder) for builder in tiny.REGISTRY.values())


def test_cold_build_writes_every_model(kit):
    out, statuses = kit
    assert list(statuses) == list(tiny.NAMES)
    for name, (path, status) in statuses.items():
        assert status == "built", name
        assert path == out / name and path.is_dir()
        stamp = json.loads((path / tiny.STAMP_FILE).read_text())
        assert stamp["kit_version"] == tiny.KIT_VERSION and stamp["name"] == name
    for name in HF_NAMES:
        assert (out / name / "config.json").is_file()
        assert (out / name / "model.safetensors").is_file()
        assert not list((out / name).glob("*.bin")), "weights must be safetensors only"
        assert (out / name / "model.safetensors").stat().st_size < 2_000_000
    assert (out / "toxic-bert" / tiny.DETOXIFY_CHECKPOINT).is_file()
    assert (out / "spacy-ner" / "config.cfg").is_file()
    # No temporary or replaced directories left behind.
    assert not [p.name for p in out.iterdir() if p.name.startswith(".") and p.is_dir()]


def test_every_transformers_model_is_tiny(kit):
    out, _ = kit
    for name in HF_NAMES:
        config = json.loads((out / name / "config.json").read_text())
        layers = [
            config.get(k)
            for k in ("num_hidden_layers", "n_layer", "num_layers", "encoder_layers")
            if k in config
        ]
        hidden = [config.get(k) for k in ("hidden_size", "n_embd", "d_model") if k in config]
        assert layers and set(layers) == {2}, (name, layers)
        assert hidden and set(hidden) == {64}, (name, hidden)
        assert 200 <= config["vocab_size"] <= 2200, (name, config["vocab_size"])


def test_second_build_is_a_noop(kit):
    out, _ = kit
    before = _files(out)
    statuses = tiny.build_with_status(out)
    assert {status for _, status in statuses.values()} == {"cached"}
    assert _files(out) == before, "a cached build must not touch any file"


def test_ensure_resolves_through_env_cache_dir(kit):
    out, _ = kit
    assert tiny.ensure("gpt2") == out / "gpt2"
    assert tiny.default_cache_dir() == out


def test_cli_fresh_process_is_deterministic_cached_and_forced(kit, tmp_path):
    """A separate process (other hash seeds, other temp dirs) must write identical models."""
    out, _ = kit
    fresh = tmp_path / "fresh"
    cmd = [sys.executable, "-m", "raydebias.tiny", str(fresh)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    first = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
    assert first.returncode == 0, first.stderr
    rows = [line.split("\t") for line in first.stdout.splitlines()]
    assert [r[0] for r in rows] == list(tiny.NAMES)
    assert all(r[1] == str(fresh.resolve() / r[0]) and r[2] == "built" for r in rows), rows
    for name in tiny.NAMES:
        stamp_a = json.loads((out / name / tiny.STAMP_FILE).read_text())
        stamp_b = json.loads((fresh / name / tiny.STAMP_FILE).read_text())
        assert stamp_a == stamp_b, f"{name}: inputs changed between builds (sample data edited meanwhile?)"
        _assert_same_model_dirs(out / name, fresh / name)

    second = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
    assert second.returncode == 0, second.stderr
    assert [line.split("\t")[2] for line in second.stdout.splitlines()] == ["cached"] * len(tiny.NAMES)

    before = _files(fresh / "spacy-ner")
    forced = subprocess.run(
        cmd + ["--only", "spacy-ner", "--force"],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=300,
    )
    assert forced.returncode == 0, forced.stderr
    assert forced.stdout.splitlines() == [f"spacy-ner\t{fresh.resolve() / 'spacy-ner'}\tbuilt"]
    after = _files(fresh / "spacy-ner")
    assert sorted(after) == sorted(before)
    assert after[tiny.STAMP_FILE] != before[tiny.STAMP_FILE], "--force must rewrite the model"


def test_force_rebuilds_in_process_with_identical_weights(kit):
    out, _ = kit
    weights = (out / "gpt2" / "model.safetensors").read_bytes()
    stamp_mtime = (out / "gpt2" / tiny.STAMP_FILE).stat().st_mtime_ns
    statuses = tiny.build_with_status(out, ["gpt2"], force=True)
    assert statuses == {"gpt2": (out / "gpt2", "built")}
    assert (out / "gpt2" / tiny.STAMP_FILE).stat().st_mtime_ns != stamp_mtime
    assert (out / "gpt2" / "model.safetensors").read_bytes() == weights


def test_unknown_names_are_rejected_with_the_valid_ones(tmp_path):
    with pytest.raises(ValueError, match="valid names: marian-en-de"):
        tiny.build(tmp_path, ["gpt-5"])
    with pytest.raises(ValueError, match="gpt-5"):
        tiny.ensure("gpt-5", cache_dir=tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "raydebias.tiny", str(tmp_path), "--only", "gpt-5"],
        capture_output=True, text=True, cwd=REPO, timeout=120,
    )  # fmt: skip
    assert result.returncode != 0
    assert "gpt-5" in result.stderr and "spacy-ner" in result.stderr
    assert not list(tmp_path.iterdir()), "nothing may be built for a bad request"


def _race(out: str, barrier, queue) -> None:
    barrier.wait()
    path, status = tiny.build_with_status(out, ["spacy-ner"])["spacy-ner"]
    queue.put((str(path), status))


def test_concurrent_ensure_builds_once(tmp_path):
    """Several processes (Ray actors on one node) asking at once: one builds, the others wait and reuse.
    Spawned, not forked: a fork of this test process (Ray, torch and fsspec threads of earlier tests) can
    inherit a lock another thread held, and hang; Ray starts its actors as fresh processes too."""
    ctx = multiprocessing.get_context("spawn")
    barrier, queue = ctx.Barrier(3), ctx.Queue()
    procs = [ctx.Process(target=_race, args=(str(tmp_path), barrier, queue)) for _ in range(3)]
    for proc in procs:
        proc.start()
    results = [queue.get(timeout=120) for _ in procs]
    for proc in procs:
        proc.join(timeout=60)
        assert proc.exitcode == 0
    assert {path for path, _ in results} == {str(tmp_path.resolve() / "spacy-ner")}
    assert sorted(status for _, status in results) == ["built", "cached", "cached"]
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")) == ["spacy-ner"]


def test_unigram_and_wordpiece_tokenizers_cover_printable_ascii(kit):
    """ENV.md: characters missing from the training text become <unk>; the kit trains on all of them."""
    from transformers import AutoTokenizer

    out, _ = kit
    text = tiny.PRINTABLE + " Grüße, ça va? ¿Qué tal?"
    for name in ("marian-en-de", "marian-es-en", "flan-t5", "toxic-bert"):
        tok = AutoTokenizer.from_pretrained(out / name)
        ids = tok(text)["input_ids"]
        assert tok.unk_token_id not in ids, (name, tok.convert_ids_to_tokens(ids))


def _generate_and_blocks(model, tok, block_class):
    """Greedy generation through the loaded model, and the blocks FSDP2 shards (train.model)."""
    from raydebias.train.model import transformer_blocks

    blocks = transformer_blocks(model)
    assert [type(b).__name__ for b in blocks] == [block_class] * 2
    enc = tok(["TL;DR: my roommate owes me $450", "TL;DR: hi"], return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=4, min_new_tokens=4, do_sample=False)
    assert out.shape == (2, enc["input_ids"].shape[1] + 4)


def test_phi_stands_in_for_phi_2(kit):
    """PhiForCausalLM + CodeGenTokenizer: GPT-2's byte-level BPE, bos = eos = <|endoftext|>, no BOS added."""
    from transformers import AutoTokenizer

    from raydebias.models import load_model

    out, _ = kit
    model, tok = load_model("tiny:phi", "causal_lm")
    assert type(model).__name__ == "PhiForCausalLM" and type(tok).__name__ == "CodeGenTokenizer"
    c = model.config
    assert c.max_position_embeddings == 2048 and c.rope_parameters["partial_rotary_factor"] == 0.4
    assert c.num_hidden_layers == 2 and c.hidden_size == 64 and c.num_attention_heads == 4
    assert c.hidden_act == "gelu_new" and c.resid_pdrop == 0.1 and not c.tie_word_embeddings
    # 6 of each head's 16 dims rotate (partial rotary), as phi-2 rotates 32 of 80
    assert model.model.rotary_emb.inv_freq.numel() == int(16 * 0.4) // 2
    eot = tok.convert_tokens_to_ids("<|endoftext|>")
    assert tok.bos_token == tok.eos_token == tok.unk_token == "<|endoftext|>"
    assert c.bos_token_id == c.eos_token_id == tok.eos_token_id == eot
    assert tok.model_max_length == 2048
    text = "Hello world, TL;DR: Grüße! 日本"
    ids = tok(text)["input_ids"]
    assert eot not in ids, "phi-2 adds no BOS"
    assert tok.decode(ids) == text
    # phi-2 ships GPT-2's vocabulary; here: the one tiny gpt2 uses, same ids
    assert ids == AutoTokenizer.from_pretrained(out / "gpt2")(text)["input_ids"]
    _generate_and_blocks(model, tok, "PhiDecoderLayer")


def test_llama_stands_in_for_llama_2(kit):
    """LlamaForCausalLM + LlamaTokenizer: sentencepiece BPE with byte fallback, <unk>=0 <s>=1 </s>=2,
    adds <s> and no </s>, "▁" prepended, no pad token of its own."""
    import sentencepiece as spm
    from transformers import AutoTokenizer

    from raydebias.models import load_model

    out, _ = kit
    raw = AutoTokenizer.from_pretrained(out / "llama")
    assert type(raw).__name__ == "LlamaTokenizer" and raw.pad_token is None  # as Llama-2
    model, tok = load_model("tiny:llama", "causal_lm")
    assert type(model).__name__ == "LlamaForCausalLM"
    assert tok.pad_token == tok.eos_token == "</s>"  # load_model's pad = eos for causal LMs
    c = model.config
    assert c.max_position_embeddings == 4096 and c.num_attention_heads == 4 and c.num_key_value_heads == 4
    assert c.num_hidden_layers == 2 and c.hidden_size == 64 and c.rms_norm_eps == 1e-5
    assert (c.bos_token_id, c.eos_token_id, c.pad_token_id) == (1, 2, None) and not c.tie_word_embeddings
    assert (tok.unk_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2)
    assert tok.convert_ids_to_tokens([0, 1, 2, 3, 258]) == ["<unk>", "<s>", "</s>", "<0x00>", "<0xFF>"]

    ids = tok("Hello world")["input_ids"]
    assert ids[0] == 1 and ids.count(1) == 1 and 2 not in ids  # <s> first, once; no </s>
    pieces = tok.convert_ids_to_tokens(ids)
    assert pieces[1].startswith("▁H")  # "▁" prepended to the text, as Llama-2
    assert tok("Hello world", add_special_tokens=False)["input_ids"] == ids[1:]
    # every printable ASCII character has a piece (trained on them); others fall back to bytes, never <unk>
    text = tiny.PRINTABLE + "\nGrüße, ça va? 日本"
    ids = tok(text)["input_ids"]
    assert 0 not in ids and tok.decode(ids, skip_special_tokens=True) == text
    assert "<0xE6>" in tok.convert_ids_to_tokens(ids)  # 日 = E6 97 A5 in UTF-8
    assert not [p for p in tok.convert_ids_to_tokens(tok(tiny.PRINTABLE)["input_ids"]) if p.startswith("<0x")]
    # the converted tokenizer encodes exactly as the sentencepiece model it was extracted from
    sp = spm.SentencePieceProcessor(model_proto=tiny._train_sentencepiece_bpe(tiny.training_corpus()))
    for sample in ("SUBREDDIT: r/relationships\nTL;DR: I (24F) paid $1,250 on June 14.", text):
        assert tok(sample)["input_ids"] == [1] + sp.encode(sample)
    _generate_and_blocks(model, tok, "LlamaDecoderLayer")


def test_detoxify_checkpoint_holds_the_plain_hf_state_dict(kit):
    from safetensors.torch import load_file

    out, _ = kit
    ckpt = _checkpoint_state(out / "toxic-bert" / tiny.DETOXIFY_CHECKPOINT)  # weights_only: no pickled code
    args = ckpt["config"]["arch"]["args"]
    assert args["model_name"] == "BertForSequenceClassification"
    assert args["tokenizer_name"] == "BertTokenizer"
    assert args["num_classes"] == 6
    assert ckpt["config"]["dataset"]["args"]["classes"] == list(tiny.TOXIC_LABELS)
    state = ckpt["state_dict"]
    assert not [k for k in state if k.startswith("model.")], "a model. prefix loads as random weights"
    saved = load_file(out / "toxic-bert" / "model.safetensors")
    assert set(saved) <= set(state)
    for key, tensor in saved.items():
        assert torch.equal(state[key], tensor), key


def test_sample_data_feeds_corpus_gazetteer_and_stamp(tmp_path, monkeypatch):
    """Shipped samples (JSONL strings, entity TSVs) reach the tokenizer corpus and the NER rules."""
    samples = tmp_path / "samples"
    (samples / "tldr" / "train").mkdir(parents=True)
    (samples / "tldr" / "entities").mkdir(parents=True)
    (samples / "tldr" / "train" / "x.jsonl").write_text(
        json.dumps({"id": "t3_1", "post": "Zyxwvut quokkas", "meta": {"tags": ["flumpf"]}, "n": 3}) + "\n\n"
    )
    (samples / "tldr" / "entities" / "names.tsv").write_text(
        "TEXT\tLABEL\n# project names\nQuentin Quokkason\tPERSON\nAcme Widgets\tORG\n"
    )
    monkeypatch.setattr(tiny.inputs, "SAMPLES_DIR", samples)
    assert tiny.sample_strings() == ["t3_1", "Zyxwvut quokkas", "flumpf"]
    corpus = tiny.training_corpus()
    assert "Zyxwvut quokkas" in corpus and corpus[-2:] == [tiny.PRINTABLE, tiny.LATIN_LETTERS]

    path = tiny.build(tmp_path / "kit", ["spacy-ner"])["spacy-ner"]
    import spacy

    doc = spacy.load(path)("Quentin Quokkason works at Acme Widgets.")
    assert [(e.text, e.label_) for e in doc.ents] == [
        ("Quentin Quokkason", "PERSON"),
        ("Acme Widgets", "ORG"),
    ]

    # Changed gazetteer -> changed stamp -> rebuilt, not served stale from the cache.
    (samples / "tldr" / "entities" / "names.tsv").write_text("Acme Widgets\tPRODUCT\n")
    assert tiny.build_with_status(tmp_path / "kit", ["spacy-ner"])["spacy-ner"][1] == "built"
    doc = spacy.load(path)("Acme Widgets")
    assert [(e.text, e.label_) for e in doc.ents] == [("Acme Widgets", "PRODUCT")]


def test_bad_sample_files_fail_with_file_and_line(tmp_path, monkeypatch):
    samples = tmp_path / "samples"
    (samples / "a" / "entities").mkdir(parents=True)
    monkeypatch.setattr(tiny.inputs, "SAMPLES_DIR", samples)
    (samples / "a" / "entities" / "e.tsv").write_text("Acme\tCOMPANY\n")
    with pytest.raises(ValueError, match=r"e\.tsv:1: unknown entity label 'COMPANY'"):
        tiny.ner_patterns()
    (samples / "a" / "entities" / "e.tsv").unlink()
    (samples / "tldr").mkdir()
    (samples / "tldr" / "b.jsonl").write_text('{"ok": "x"}\n{"broken": \n')
    with pytest.raises(ValueError, match=r"b\.jsonl:2: not valid JSON"):
        tiny.sample_strings()


def test_ner_rules_cover_every_ontonotes_label():
    labels = {p["label"] for p in tiny.ner_patterns()}
    assert labels == set(tiny.ONTONOTES_LABELS)
