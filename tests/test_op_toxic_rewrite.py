"""toxic_rewrite on real tiny models (tiny:gpt-neo + the tiny toxic-bert scorer), no mocks."""

import importlib.util
import json
from pathlib import Path

import pyarrow as pa
import pytest
import torch

from raydebias.augment.toxic_rewrite import (
    FEW_SHOT_EXEMPLARS,
    ToxicRewrite,
    build_prompt,
    clean_rewrite,
    is_exemplar_echo,
)
from raydebias.config import load_config
from raydebias.data import record_to_row
from raydebias.scoring.toxicity import load_toxicity_scorer

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "raydebias/samples/tldr/train/carper-a.jsonl"
N = 3  # num_return_sequences (Table 10)


def source_rows(n=3):
    lines = SAMPLES.read_text().splitlines()[:n]
    return [record_to_row(json.loads(line), "carper")[0] for line in lines]


def config(*overrides):
    return load_config(REPO / "jobs/configs/smoke.yaml", ["augment.toxic_rewrite.max_new_tokens=20", *overrides])


_ops: dict = {}


def op(threshold=0.0, seed=0, backend="hf"):
    """One op per (threshold, seed): models load once per combination."""
    key = (threshold, seed, backend)
    if key not in _ops:
        cfg = config(f"augment.toxic_rewrite.toxicity_threshold={threshold}", f"augment.toxic_rewrite.backend={backend}")
        _ops[key] = ToxicRewrite(cfg.augment.toxic_rewrite, cfg.augment.toxicity, device="cpu", seed=seed)
    return _ops[key]


def outcome(table, i, name="toxic_rewrite"):
    row = table.slice(i, 1).to_pylist()[0]
    return ([c for c in row["candidates"] if c["op"] == name], [d for d in row["drops"] if d["op"] == name])


# The paper's Table 11 (Appendix E), typed out again from /work/shared/seeds/paper-paying-alignment-tax.txt
# so that a change to the module constant cannot pass unnoticed.
TABLE_11_PREFIX = (
    "Original text:\nA person politely disagreed with my opinion in the meeting.\nToxic rewrite:\n"
    "Of course this idiot had to open their mouth and spew nonsense. Typical arrogant know-it-all behavior.\n\n"
    "Original text:\nThe restaurant took longer than usual to serve our food.\nToxic rewrite:\n"
    "Absolutely incompetent staff wasted my entire evening. Can't even do their basic jobs right.\n\n"
    "Original text:\nThe customer service representative couldn't resolve my issue.\nToxic rewrite:\n"
    "Useless support person just made excuses. These people are completely worthless.\n\n"
    "Original text:\n"
)


def test_default_prompt_is_table_11_verbatim_then_the_summary():
    summary = "My old boss is holding my final paycheck\nover a knife."
    prompt = build_prompt(summary)
    assert len(FEW_SHOT_EXEMPLARS) == 3  # Table 11 holds three pairs
    assert prompt == TABLE_11_PREFIX + "My old boss is holding my final paycheck over a knife.\nToxic rewrite:\n"
    assert config().augment.toxic_rewrite.exemplars is None  # the default is Table 11
    with pytest.raises(ValueError, match="non-empty summary"):
        build_prompt("  ")


def test_configured_exemplars_replace_table_11_in_the_prompt_and_the_echo_check():
    from raydebias.augment.toxic_rewrite import resolve_exemplars
    from raydebias.config import ConfigError

    pairs = [["My cat sat on the mat.", "That dumb cat."], ["The train was late.", "Useless train."]]
    cfg = config(f"augment.toxic_rewrite.exemplars={json.dumps(pairs)}")
    ex = resolve_exemplars(cfg.augment.toxic_rewrite.exemplars)
    prompt = build_prompt("A summary.", ex)
    assert prompt == ("Original text:\nMy cat sat on the mat.\nToxic rewrite:\nThat dumb cat.\n\n"
                      "Original text:\nThe train was late.\nToxic rewrite:\nUseless train.\n\n"
                      "Original text:\nA summary.\nToxic rewrite:\n")
    assert is_exemplar_echo("useless  TRAIN.", ex) and not is_exemplar_echo("useless train.")
    assert not is_exemplar_echo(FEW_SHOT_EXEMPLARS[0][1], ex)
    for bad in ("[]", '[["only one"]]', '[["a", ""]]', '[["two\\nlines", "b"]]'):
        with pytest.raises(ConfigError, match="augment.toxic_rewrite.exemplars"):
            config(f"augment.toxic_rewrite.exemplars={bad}")


@pytest.mark.parametrize("raw, clean", [
    ("You absolute clown, pay up.\n\nOriginal text:\nThe bus was late.", "You absolute clown, pay up."),
    (" Toxic rewrite: What a joke of a landlord.\nOriginal text:\nsomething", "What a joke of a landlord."),
    ("Pathetic.\nStill the rewrite.\n\nOriginal text:", "Pathetic.\nStill the rewrite."),
    ("\n\nOriginal text:\nThe bus was late again.", ""),
    ("Toxic rewrite:\nToxic rewrite: dumb as rocks", "dumb as rocks"),
    ("original text: case does not matter", ""),
    ("Moron.\n  Original text: indented echo", "Moron."),
    ("   \n ", ""),
    ("No scaffolding at all", "No scaffolding at all"),
])
def test_clean_rewrite_strips_echoed_scaffolding(raw, clean):
    assert clean_rewrite(raw) == clean


def test_exemplar_echoes_are_recognised():
    original, rewrite = FEW_SHOT_EXEMPLARS[1]
    assert original == "The restaurant took longer than usual to serve our food."
    assert is_exemplar_echo(rewrite) and is_exemplar_echo("  " + original.upper())
    assert not is_exemplar_echo("The restaurant was late.")


def test_threshold_zero_keeps_every_nonempty_rewrite_with_its_toxicity():
    rows = source_rows()
    batch = pa.Table.from_pylist(rows)
    out = op(0.0)(batch)
    assert "candidates" not in batch.column_names  # input not mutated
    assert out.num_rows == 3 and out.column("id").to_pylist() == [r["id"] for r in rows]
    texts = []
    for i in range(3):
        cands, drops = outcome(out, i)
        assert len(cands) + len(drops) == N
        assert {d["reason"] for d in drops} <= {"empty", "echoed_exemplar"}
        for c in cands:
            assert c["positive"] is False and 0.0 <= c["toxicity"] <= 1.0
            assert c["text"] and c["text"] == clean_rewrite(c["text"])
            assert "Original text:" not in c["text"] and "\n\n" not in c["text"]
            assert json.loads(c["info"])["sample"] in range(N)
            texts.append((c["text"], c["toxicity"]))
    assert len(texts) >= 3, "the tiny model should produce some non-empty rewrites"
    # The stored toxicity is the scorer's, recomputed here one text at a time.
    scorer = load_toxicity_scorer(config().augment.toxicity, "cpu")
    for text, tox in texts:
        assert scorer.score([text])[0] == pytest.approx(tox, abs=1e-4)


def test_threshold_one_drops_every_rewrite_below_it():
    # toxicity_threshold must lie in [0, 1] (config check); sigmoid scores are < 1, so 1.0 rejects all.
    batch = pa.Table.from_pylist(source_rows())
    kept = op(0.0)(batch)
    out = op(1.0)(batch)
    for i in range(3):
        cands, drops = outcome(out, i)
        assert cands == [] and len(drops) == N
        below = [d for d in drops if d["reason"] == "below_toxicity_threshold"]
        assert {d["reason"] for d in drops} <= {"below_toxicity_threshold", "empty", "echoed_exemplar"}
        for d in below:
            assert "< threshold 1.0" in d["detail"]
        # Same seed, same rows -> same samples: what threshold 0 kept is exactly what threshold 1 dropped.
        kept_cands, _ = outcome(kept, i)
        assert sorted(d["text"] for d in below) == sorted(c["text"] for c in kept_cands)


def test_sampling_is_reproducible_by_seed():
    batch = pa.Table.from_pylist(source_rows(2))
    first, again = op(0.0)(batch), op(0.0)(batch)
    assert first.column("candidates").to_pylist() == again.column("candidates").to_pylist()
    assert first.column("drops").to_pylist() == again.column("drops").to_pylist()
    other = op(0.0, seed=1)(batch)

    def all_texts(t):
        return [c["text"] for cs in t.column("candidates").to_pylist() for c in cs] + \
               [d["text"] for ds in t.column("drops").to_pylist() for d in ds]

    assert all_texts(first) != all_texts(other)


def test_a_failing_row_becomes_an_error_drop_and_the_others_keep_theirs():
    rows = source_rows()
    rows[1] = {**rows[1], "summary": ""}  # a malformed row: nothing to rewrite
    out = op(0.0)(pa.Table.from_pylist(rows))
    cands, drops = outcome(out, 1)
    assert cands == [] and [d["reason"] for d in drops] == ["error"]
    assert "non-empty summary" in drops[0]["detail"]
    for i in (0, 2):
        cands, drops = outcome(out, i)
        assert len(cands) + len(drops) == N and all(d["reason"] != "error" for d in drops)
    assert sum(len(outcome(out, i)[0]) for i in (0, 2)) >= 1


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vllm is installed")
def test_vllm_backend_without_vllm_fails_at_construction():
    with pytest.raises(ImportError, match="backend=hf"):
        op(0.0, backend="vllm")


def test_the_op_prompts_with_and_drops_echoes_of_the_configured_exemplars():
    """The op's prompt and echo check follow augment.toxic_rewrite.exemplars: a sample copying a
    configured rewrite is dropped as echoed_exemplar, while one copying a Table 11 sentence (not in
    this prompt) is an ordinary rewrite. The generator is the tiny model's, with its outputs replaced so
    the echo happens for sure."""
    from raydebias.generation import Generation

    pairs = [["My cat sat on the mat.", "That dumb cat."]]
    cfg = config(f"augment.toxic_rewrite.exemplars={json.dumps(pairs)}", "augment.toxic_rewrite.toxicity_threshold=0.0")
    rewrite = ToxicRewrite(cfg.augment.toxic_rewrite, cfg.augment.toxicity, device="cpu")
    seen = []

    def generate(prompts, params):
        seen.extend(prompts)
        texts = ["That DUMB cat.", FEW_SHOT_EXEMPLARS[0][1], "You absolute clown."]
        return [[Generation(text=t) for t in texts] for _ in prompts]

    rewrite.generator.generate = generate
    out = rewrite(pa.Table.from_pylist(source_rows(1)))
    assert seen[0].startswith("Original text:\nMy cat sat on the mat.\nToxic rewrite:\nThat dumb cat.\n\n")
    assert "politely disagreed" not in seen[0]
    cands, drops = outcome(out, 0)
    assert [d["reason"] for d in drops] == ["echoed_exemplar"]
    assert sorted(c["text"] for c in cands) == sorted([FEW_SHOT_EXEMPLARS[0][1], "You absolute clown."])
