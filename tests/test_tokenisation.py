"""One tokenisation for training and generation (issue 12, item 5), on the three causal-LM tokenizer
families of the presets: byte-level BPE without BOS (tiny:gpt2, tiny:phi) and SentencePiece BPE with
byte fallback that adds <s> (tiny:llama).

Training must condition on EXACTLY the prompt ids generation conditions on (HFGenerator tokenises
prompts with the tokenizer's default special tokens, left-padded), and its summary ids must be what a
model emits after that prompt: the continuation tokens of ``prompt + " " + summary``.
"""

import pytest
import torch
from support import generate_seeing_kwargs

from raydebias import schema as S
from raydebias.generation import GenParams, HFGenerator
from raydebias.prompts import format_prompt
from raydebias.train.batching import (
    Collator,
    encode_continuation,
    encode_example,
    encode_prompt,
    entity_token_mask,
)

torch.set_num_threads(1)

CAUSAL = ["gpt2", "phi", "llama"]
ROWS = [
    {S.ID: "t3_a", S.SUBREDDIT: "personalfinance", S.TITLE: "Bought a fake concert ticket",
     S.POST: "I paid $40 for a ticket online and it was fake. The seller, Mike Johnson, blocked me.",
     S.SUMMARY: "Mike Johnson sold me a fake $40 ticket."},
    {S.ID: "t3_b", S.POST: "My roommate stopped paying rent (his share is $450).",  # no subreddit/title
     S.SUMMARY: "roommate owes me money"},
]
# Summaries that tokenise differently after a word boundary than on their own: a capitalised entity
# first, digits (Llama splits them), a double space, non-ASCII (Llama: byte fallback), punctuation first.
SUMMARIES = ["Mike Johnson sold me a fake $40 ticket.", "roommate owes me  $1,250 since June 14",
             "Grüße aus München: 日本 is far", ":) it worked out"]


def prompt_of(row):
    return format_prompt(row[S.POST], row.get(S.SUBREDDIT), row.get(S.TITLE))


@pytest.fixture(scope="module", params=CAUSAL)
def gen(request):
    """An HFGenerator on the tiny model, on CPU: the generation side of the comparison."""
    return HFGenerator(f"tiny:{request.param}", "cpu")


def generation_prompt_ids(gen, prompts):
    """The prompt ids HFGenerator really hands to model.generate (left padding removed)."""
    _, seen = generate_seeing_kwargs(gen, prompts, GenParams(max_new_tokens=1))
    return [ids[mask.bool()].tolist() for ids, mask in zip(seen["input_ids"], seen["attention_mask"], strict=True)]


def test_training_prompt_ids_are_the_ids_generation_conditions_on(gen):
    tok = gen.tokenizer
    prompts = [prompt_of(r) for r in ROWS]
    generated_on = generation_prompt_ids(gen, prompts)  # a batch of 2: the shorter one is left-padded
    assert len(generated_on[0]) != len(generated_on[1])
    batch = Collator(tok, max_length=1024)([{**r, "positives": [], "negatives": []} for r in ROWS], epoch=0)
    for i, (row, prompt) in enumerate(zip(ROWS, prompts, strict=True)):
        prompt_ids, _ = encode_example(tok, prompt, row[S.SUMMARY])
        assert prompt_ids == generated_on[i]
        n_prompt = int((batch.labels[i] != -100).nonzero().flatten()[0])  # labels start after the prompt
        assert batch.input_ids[batch.lm_rows[i], :n_prompt].tolist() == generated_on[i]
        if tok.bos_token_id == 1:  # llama: <s> once, first
            assert type(tok).__name__ == "LlamaTokenizer"
            assert prompt_ids[0] == 1 and prompt_ids.count(1) == 1
        else:  # gpt2 / phi: bos = eos = <|endoftext|>, never added
            assert tok.bos_token_id not in prompt_ids


@pytest.mark.parametrize("summary", SUMMARIES)
def test_summary_ids_are_the_continuation_of_the_prompt(gen, summary):
    tok = gen.tokenizer
    prompt = prompt_of(ROWS[0])
    prompt_ids, summary_ids = encode_example(tok, prompt, summary)
    ids = prompt_ids + summary_ids
    # The whole example is the tokenizer's own encoding of prompt + " " + summary: no seam.
    assert ids == tok(prompt + " " + summary)["input_ids"]
    assert tok.decode(ids, skip_special_tokens=True) == prompt + " " + summary
    # A word's leading space is inside its first token: no lone "▁"/"Ġ" before it (the old convention
    # encoded " " + summary on its own). Before punctuation a lone space token can be the tokenizer's
    # own choice (tiny vocabularies have no "Ġ:"), which the equality above already pins.
    first = tok.convert_ids_to_tokens(summary_ids[0])
    if summary[0].isalpha():
        assert first not in ("▁", "Ġ") and len(first) > 1, first
    assert ids.count(tok.bos_token_id) == (1 if tok.bos_token_id == 1 else 0)
    # Entity spans still land on the right tokens (offsets of the full encoding, shifted to the summary).
    if summary.startswith("Mike Johnson"):
        ids2, offsets = encode_continuation(tok, encode_prompt(tok, prompt), summary)
        assert ids2 == summary_ids
        money = summary.index("$40")
        ents = [{"start": 0, "end": 12}, {"start": money, "end": money + 3}]  # "Mike Johnson", "$40"
        mask = entity_token_mask(offsets, ents)
        marked = [t for t, m in zip(summary_ids, mask, strict=True) if m]
        assert tok.decode(marked).replace(" ", "") == "MikeJohnson$40"


def test_merge_across_the_boundary_falls_back_to_the_prompt_ids_and_retokenises_the_seam():
    """A tokenizer whose BPE merges ":" with the following space (no pre-tokenizer split): the prompt
    "a:" encodes as [a, :], but "a: b c" as [a, ":Ġ", b, Ġc]. Generation conditions on [a, :], so the
    summary must start with the space on its own (the part of ":Ġ" beyond the prompt)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {"<|endoftext|>": 0, **{ch: i + 1 for i, ch in enumerate(alphabet)}}
    vocab[":Ġ"] = len(vocab)
    vocab["Ġc"] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[(":", "Ġ"), ("Ġ", "c")]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|endoftext|>")
    assert tok.convert_ids_to_tokens(tok("a: b c")["input_ids"]) == ["a", ":Ġ", "b", "Ġc"]

    prompt = encode_prompt(tok, "a:")
    ids, offsets = encode_continuation(tok, prompt, "b c")
    assert prompt.ids == tok("a:")["input_ids"]
    assert tok.convert_ids_to_tokens(ids) == ["Ġ", "b", "Ġc"]
    assert tok.decode(prompt.ids + ids) == "a: b c"
    assert offsets == [(-1, 0), (0, 1), (1, 3)]  # the seam token gets the straddling token's span
    assert entity_token_mask(offsets, [{"start": 0, "end": 1}]) == [0, 1, 0]

    # A tokenizer that appends eos to every text cannot have a prompt that is continued: say so.
    backend.post_processor = processors.TemplateProcessing(single="$A <|endoftext|>",
                                                           special_tokens=[("<|endoftext|>", 0)])
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|endoftext|>")
    with pytest.raises(ValueError, match="not a prefix"):
        encode_example(tok, "a:", "b c")


@pytest.mark.parametrize("name", CAUSAL)
def test_greedy_generation_emits_the_training_ids_and_they_round_trip(name):
    """Fit the tiny model on ONE example encoded by the Collator (the training path), then generate
    greedily with HFGenerator (the generation path): it must emit exactly the trained summary ids, and
    decoding them and re-encoding as a continuation with encode_example gives the same ids back.

    (A random model's greedy output is no test of the convention: it emits non-canonical sequences,
    e.g. byte-fallback pieces for characters that have a piece, which no tokenizer reproduces.)
    """
    torch.manual_seed(0)
    gen = HFGenerator(f"tiny:{name}", "cpu")
    tok, model = gen.tokenizer, gen.model
    row = ROWS[0]
    batch = Collator(tok, max_length=1024)([{**row, "positives": [], "negatives": []}], epoch=0)
    labels = batch.labels[:, 1:]  # logits at t predict token t + 1
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(300):  # eval mode: no dropout (phi has resid_pdrop 0.1), so the fit is deterministic
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits[:, :-1]
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1))
        on = labels != -100
        if bool((logits.argmax(-1)[on] == labels[on]).all()):
            break
        opt.zero_grad()
        loss.backward()
        opt.step()
    else:
        pytest.fail(f"tiny:{name} did not fit one example in 300 steps (loss {loss.item():.3f})")

    prompt = prompt_of(row)
    prompt_ids, summary_ids = encode_example(tok, prompt, row[S.SUMMARY])
    out = gen.generate([prompt], GenParams(max_new_tokens=len(summary_ids) + 4))[0][0]
    assert out.token_ids == summary_ids  # stopped at the trained eos
    text = tok.decode(prompt_ids + out.token_ids, skip_special_tokens=True)
    assert text == prompt + " " + row[S.SUMMARY]
    assert encode_example(tok, prompt, text[len(prompt) + 1:])[1] == out.token_ids
