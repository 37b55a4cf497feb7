"""raydebias.generation on the kit's tiny causal LMs, loaded through the production path.

Every expected value is computed independently here: a forward pass for log-probs, a separate
``model.generate`` call for beam scores, raw token ids for the prompt removal.
"""

import importlib.util

import pytest
import torch
from support import generate_seeing_kwargs

from raydebias.generation import (
    Generation,
    Generator,
    GenParams,
    HFGenerator,
    VLLMGenerator,
    _input_limit,
    clamp_max_new_tokens,
    cut_at_stop,
    derive_seed,
    make_generator,
)

torch.set_num_threads(1)

PROMPTS = [
    "SUBREDDIT: r/legaladvice\nTITLE: My landlord kept my deposit\nPOST: I moved out in May and he kept all of it.\nTL;DR:",
    "POST: my roommate owes me $40\nTL;DR:",
]
HAS_VLLM = importlib.util.find_spec("vllm") is not None


@pytest.fixture(scope="module")
def neo():
    return HFGenerator("tiny:gpt-neo", "cpu")


@pytest.fixture(scope="module")
def gpt2():
    return HFGenerator("tiny:gpt2", "cpu")


def test_sampling_returns_n_continuations_without_the_prompt(neo):
    params = GenParams(max_new_tokens=12, do_sample=True, top_p=0.95, repetition_penalty=1.2,
                       num_return_sequences=3, output_scores=True, seed=3)
    out = neo.generate(PROMPTS, params)
    assert isinstance(neo, Generator)
    assert [len(row) for row in out] == [3, 3]
    for prompt, row in zip(PROMPTS, out, strict=True):
        prompt_ids = neo.tokenizer(prompt)["input_ids"]
        for g in row:
            assert isinstance(g, Generation) and g.score is None  # no beam search, no sequence score
            assert 0 <= len(g.token_ids) <= 12 and len(g.token_logprobs) == len(g.token_ids)
            assert neo.tokenizer.eos_token_id not in g.token_ids
            assert g.text == neo.tokenizer.decode(g.token_ids, skip_special_tokens=True)
            # Prompt removed by position: prompt tokens + continuation tokens decode to prompt + text,
            # also for the shorter, left-padded prompt (no pad and no prompt tail in the continuation).
            assert neo.tokenizer.decode(prompt_ids + g.token_ids) == prompt + g.text
            assert all(lp <= 1e-6 and lp > -1e4 for lp in g.token_logprobs)
    assert sum(1 for row in out for g in row if g.token_ids) >= 4  # the checks above saw real tokens


def test_greedy_logprobs_equal_a_forward_pass(gpt2):
    (row,) = gpt2.generate(PROMPTS[:1], GenParams(max_new_tokens=8, output_scores=True))
    (g,) = row
    assert g.token_ids, "greedy produced an immediate end-of-sequence"
    model = gpt2.model
    prompt_ids = gpt2.tokenizer(PROMPTS[0])["input_ids"]
    ids = torch.tensor([prompt_ids + g.token_ids])
    with torch.no_grad():
        logp = torch.log_softmax(model(ids).logits[0].float(), dim=-1)  # (T, V)
    steps = logp[len(prompt_ids) - 1 : -1]  # the distributions the continuation tokens were chosen from
    expected = steps.gather(1, torch.tensor(g.token_ids)[:, None])[:, 0]
    assert torch.allclose(torch.tensor(g.token_logprobs), expected, atol=1e-4)
    assert steps.argmax(-1).tolist() == g.token_ids  # greedy really took the argmax each step


@pytest.fixture(scope="module")
def gpt2_early_eos():
    """tiny:gpt2 whose end-of-sequence token is one it emits often, so beams end at different lengths (a random
    model otherwise never stops, and every beam has the full length)."""
    g = HFGenerator("tiny:gpt2", "cpu")
    out = g.generate(PROMPTS, GenParams(max_new_tokens=10, num_beams=4, num_return_sequences=4))
    counts = torch.bincount(torch.tensor([t for row in out for b in row for t in b.token_ids[2:]]))
    eos = int(counts.argmax())
    g.model.generation_config.eos_token_id = eos
    g.eos = {eos}
    return g


@pytest.mark.parametrize("which", ["gpt2", "gpt2_early_eos"])
@pytest.mark.parametrize("length_penalty", [2.0, 0.5])
def test_beam_scores_equal_hf_sequences_scores(which, length_penalty, request):
    """The beam scores and token log-probs (rescored from one teacher-forced pass, issue #16) equal HF's own
    ``sequences_scores`` and ``compute_transition_scores`` from its per-step scores, beams of unequal lengths
    included; and HF is not asked to keep per-step scores."""
    gen = request.getfixturevalue(which)
    params = GenParams(max_new_tokens=10, num_beams=4, num_return_sequences=4, length_penalty=length_penalty,
                       output_scores=True)
    out, asked = generate_seeing_kwargs(gen, PROMPTS, params)
    assert asked["output_scores"] is False
    assert [len(row) for row in out] == [4, 4]
    model, tok = gen.model, gen.tokenizer
    eos = model.generation_config.eos_token_id
    enc = tok(PROMPTS, return_tensors="pt", padding=True)  # the generator's tokenizer pads left
    with torch.no_grad():
        ref = model.generate(**enc, max_new_tokens=10, num_beams=4, num_return_sequences=4,
                             length_penalty=length_penalty, do_sample=False, output_scores=True,
                             return_dict_in_generate=True, pad_token_id=tok.pad_token_id)
    expected = ref.sequences_scores.view(2, 4)
    got = torch.tensor([[g.score for g in row] for row in out])
    assert torch.allclose(got, expected, atol=1e-5, rtol=1e-5)
    steps = model.compute_transition_scores(ref.sequences, ref.scores, ref.beam_indices, normalize_logits=True)
    gen_ids = ref.sequences[:, enc["input_ids"].shape[1]:].view(2, 4, -1)
    lengths = set()
    for p, row in enumerate(out):
        assert [g.score for g in row] == sorted((g.score for g in row), reverse=True)  # model order: best first
        for b, g in enumerate(row):
            ids = gen_ids[p, b].tolist()
            assert g.token_ids == (ids[: ids.index(eos)] if eos in ids else ids)
            lengths.add(len(g.token_ids))
            assert torch.allclose(torch.tensor(g.token_logprobs, dtype=torch.float32),
                                  steps[p * 4 + b, : len(g.token_ids)], atol=1e-4)
    if which == "gpt2_early_eos" and length_penalty < 1:  # (2.0 favours the longest beams: all run to the end)
        assert len(lengths) > 1, lengths  # the checks above covered beams that ended early


def test_beam_scores_come_from_hf_when_a_processor_changes_them(gpt2):
    """With a repetition penalty, beam search ranks by processed log-probs, which a teacher-forced pass does
    not reproduce: HF keeps its per-step scores then, and its sequences_scores are returned."""
    params = GenParams(max_new_tokens=8, num_beams=3, num_return_sequences=3, repetition_penalty=1.3)
    assert not gpt2._beam_logprobs_are_the_models(params)
    out = gpt2.generate(PROMPTS[:1], params)
    enc = gpt2.tokenizer(PROMPTS[:1], return_tensors="pt", padding=True)
    with torch.no_grad():
        ref = gpt2.model.generate(**enc, max_new_tokens=8, num_beams=3, num_return_sequences=3,
                                  repetition_penalty=1.3, output_scores=True, return_dict_in_generate=True,
                                  pad_token_id=gpt2.tokenizer.pad_token_id)
    assert torch.allclose(torch.tensor([g.score for g in out[0]]), ref.sequences_scores, atol=1e-6)


def test_seed_makes_sampling_reproducible(neo):
    def run(seed):
        params = GenParams(max_new_tokens=10, do_sample=True, num_return_sequences=2, seed=seed)
        return [[g.token_ids for g in row] for row in neo.generate(PROMPTS, params)]

    assert run(11) == run(11)
    assert run(11) != run(12)
    assert derive_seed(0, "toxic_rewrite", "id-1") == derive_seed(0, "toxic_rewrite", "id-1")
    assert derive_seed(0, "toxic_rewrite", "id-1") != derive_seed(1, "toxic_rewrite", "id-1")
    assert 0 <= derive_seed(0, "x") < 2**63


def test_max_input_tokens_keeps_the_end_of_the_prompt(gpt2):
    long_prompt = "POST: " + "I lent my car to my cousin and he crashed it. " * 6 + "\nTL;DR:"
    (row,) = gpt2.generate([long_prompt], GenParams(max_new_tokens=6, max_input_tokens=8))
    ids = gpt2.tokenizer(long_prompt)["input_ids"]
    assert len(ids) > 8
    assert row[0].token_ids == _greedy_reference(gpt2, ids[-8:], 6)


def _greedy_reference(gen, prompt_ids: list[int], max_new: int) -> list[int]:
    """Plain ``model.generate`` greedy from exactly ``prompt_ids``, cut at the first eos."""
    with torch.no_grad():
        ref = gen.model.generate(torch.tensor([prompt_ids]), attention_mask=torch.ones(1, len(prompt_ids), dtype=torch.long),
                                 max_new_tokens=max_new, do_sample=False)
    cont = ref[0, len(prompt_ids):].tolist()
    eos = gen.tokenizer.eos_token_id
    return cont[: cont.index(eos)] if eos in cont else cont


def test_clamp_and_input_limit_never_exceed_the_context():
    # The presets' numbers: MMLU-Pro asks 2048 new tokens; GPT-2 has 1024 positions, Phi-2 2048, Llama-2 4096.
    assert clamp_max_new_tokens(2048, 1024, 512) == 512
    assert _input_limit(GenParams(max_new_tokens=2048, min_prompt_tokens=512), 1024) == 512
    assert clamp_max_new_tokens(2048, 2048, 512) == 1536
    assert clamp_max_new_tokens(2048, 4096, 512) == 2048  # room enough: the benchmark's own length
    assert clamp_max_new_tokens(128, 1024, 512) == 128
    assert clamp_max_new_tokens(2048, None, 512) == 2048  # unknown positions: nothing to clamp against
    # Before the clamp: 2048 new tokens left the prompt max(1, 1024 - 2048) = 1 token, and 1 + 2048 > 1024.
    assert _input_limit(GenParams(max_new_tokens=2048), 1024) + clamp_max_new_tokens(2048, 1024) == 1024
    for context in (2, 8, 1024, 2048):
        for max_new in (1, 5, 511, 512, 1023, 1024, 2048, 5000):
            for min_prompt in (1, 7, 512, 1023):
                for max_input in (None, 3, 700):
                    if min_prompt >= context:
                        with pytest.raises(ValueError, match=f"set it below {context}"):
                            clamp_max_new_tokens(max_new, context, min_prompt)
                        continue
                    params = GenParams(max_new_tokens=max_new, min_prompt_tokens=min_prompt, max_input_tokens=max_input)
                    new = clamp_max_new_tokens(max_new, context, min_prompt)
                    limit = _input_limit(params, context)
                    assert 1 <= new <= max_new and limit + new <= context, (context, max_new, min_prompt, max_input)
                    assert limit >= min(min_prompt, max_input or context)  # the prompt keeps its minimum
                    assert new == max_new or new + min_prompt == context  # clamped only as far as it had to be


def test_max_new_beyond_the_context_is_clamped_not_an_index_error(gpt2):
    """2048 new tokens on 1024 positions ran generation past GPT-2's position table (IndexError here,
    a device-side assert on CUDA); now the model is asked 1024 - 512 = 512, from the prompt's last 512."""
    assert gpt2.context == 1024
    long_prompt = "POST: " + "I lent my car to my cousin and he crashed it. " * 120 + "\nTL;DR:"
    ids = gpt2.tokenizer(long_prompt)["input_ids"]
    assert len(ids) > 1024
    (row,) = gpt2.generate([long_prompt], GenParams(max_new_tokens=2048, min_prompt_tokens=512))
    assert row[0].token_ids == _greedy_reference(gpt2, ids[-512:], 512)
    assert 0 < len(row[0].token_ids) <= 512


@pytest.mark.parametrize("kwargs, match", [
    ({"num_return_sequences": 3}, "num_return_sequences must be <= num_beams=1"),
    ({"top_p": 0.0}, "top_p"),
    ({"max_new_tokens": 0}, "max_new_tokens"),
    ({"max_input_tokens": 0}, "max_input_tokens"),
    ({"min_prompt_tokens": 0}, "min_prompt_tokens must be >= 1"),
    ({"stop": ["Question:"]}, "stop must be a tuple"),
    ({"stop": ("",)}, "stop must be a tuple of non-empty strings"),
])
def test_gen_params_are_validated(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GenParams(**kwargs)


def test_make_generator_backends(gpt2):
    with pytest.raises(ValueError, match="unknown generator backend 'tgi'; use one of hf, vllm"):
        make_generator("tgi", "tiny:gpt2", "cpu")
    assert isinstance(make_generator("hf", "tiny:gpt2", "cpu"), HFGenerator)


@pytest.mark.skipif(HAS_VLLM, reason="vllm is installed")
def test_vllm_backend_without_vllm_says_what_to_do():
    with pytest.raises(ImportError, match=r"backend=vllm needs the `gpu` extra on a CUDA machine.*backend=hf"):
        make_generator("vllm", "tiny:gpt2", "cpu")


@pytest.mark.gpu
@pytest.mark.skipif(not (HAS_VLLM and torch.cuda.is_available()), reason="needs vllm and a CUDA GPU")
def test_vllm_sampling_and_beam_refusal():  # pragma: no cover - GPU only
    gen = VLLMGenerator("tiny:gpt2", "cuda", gpu_memory_utilization=0.3)
    out = gen.generate(PROMPTS, GenParams(max_new_tokens=8, do_sample=True, num_return_sequences=2,
                                          output_scores=True, seed=0))
    assert [len(row) for row in out] == [2, 2]
    for row in out:
        for g in row:
            assert g.text == gen.tokenizer.decode(g.token_ids, skip_special_tokens=True)
            assert len(g.token_logprobs) == len(g.token_ids)
    with pytest.raises(ValueError, match="backend=hf"):
        gen.generate(PROMPTS, GenParams(max_new_tokens=8, num_beams=4, num_return_sequences=4))


def test_stop_strings_halt_generation_and_cut_the_text(gpt2):
    """lm-eval's ``until``: generation halts at a stop string and the text is cut before its first occurrence.
    The stop is taken from the model's own greedy continuation, so this holds for a random tiny model."""
    (full,) = gpt2.generate(PROMPTS[1:], GenParams(max_new_tokens=40))  # the tiny GPT-2 repeats ":" here
    ids = full[0].token_ids
    assert len(ids) == 40, "the tiny model stopped early: pick a longer continuation"
    for stop in (gpt2.tokenizer.decode(ids[:2]), gpt2.tokenizer.decode(ids[8:10]).strip()):
        assert stop and stop in full[0].text
        (cut,) = gpt2.generate(PROMPTS[1:], GenParams(max_new_tokens=40, stop=(stop, "never-appears")))
        assert cut[0].text == full[0].text.split(stop)[0] == cut_at_stop(full[0].text, (stop,))
        # halted (not generated to the end and cut afterwards), and not by a match into the prompt, which
        # ends in ":" (generate(stop_strings=...) stopped after one token there)
        assert len(ids) > len(cut[0].token_ids) >= len(gpt2.tokenizer(cut[0].text)["input_ids"]) + 1
    assert cut_at_stop("a Question: b Question: c", ("Question:",)) == "a "
    assert cut_at_stop("no stop here", ()) == "no stop here"
