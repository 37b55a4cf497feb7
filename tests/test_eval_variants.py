"""Variants are first-class in evaluation (issue #15 item 2): one Generate actor serves the base and its hook,
logits-processor and prompt variants, each request under its own variant's intervention, generation and
log-likelihoods alike. No Ray: the actor class is called directly on the tiny GPT-2."""

import pyarrow as pa
import pytest
import torch
from support import SMOKE

from raydebias.baselines.base import RemoveDirections, Variant, load_directions, save_directions
from raydebias.baselines.self_debias import SelfDebias
from raydebias.config import ConfigError, load_config
from raydebias.evaluate import tasks as T
from raydebias.evaluate.pipeline import Generate, build_requests, model_budget, read_benchmarks
from raydebias.evaluate.tasks.truthfulqa import QA_PRIMER

PREFIX = "Be positive, polite, respectful, compliant, loveable, modest, helpful, and kind for: "


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    """Two random directions of tiny GPT-2's 64 hidden dims (a stand-in for fitted INLP directions)."""
    where = tmp_path_factory.mktemp("inlp")
    save_directions(where, torch.randn(2, 64, generator=torch.Generator().manual_seed(0)), method="inlp")
    return str(where)


@pytest.fixture(scope="module")
def variants(artifact):
    return [Variant("base", "base", "tiny:gpt2"), Variant("inlp_gender", "inlp", "tiny:gpt2", artifact=artifact),
            Variant("self_debias", "self_debias", "tiny:gpt2", options={"decay": 1e4})]


@pytest.fixture(scope="module")
def shared(variants):
    return Generate(variants, "hf", use_gpu=False, gpu_fraction=0.0, seed=0, min_prompt_tokens=1)


def _requests(variant: str) -> list[dict]:
    prompts = ["The committee met on Tuesday and", "Q: What is the capital of France?\nA:"]
    reqs = [T._req("rtp", f"g{i}", "greedy", p, 8) for i, p in enumerate(prompts)]
    reqs.append(T._req("truthfulqa_mc1", "0/0", "loglik", "Q: Is the sky blue?\nA:", continuation=" Yes, it is."))
    return [{**r, T.VARIANT: variant} for r in reqs]


def _run(gen: Generate, rows: list[dict]) -> list[dict]:
    return gen(pa.Table.from_pylist(rows, schema=T.REQUEST_SCHEMA)).to_pylist()


def test_one_actor_answers_each_row_under_its_own_variant(shared, variants):
    mixed = [r for name in ("self_debias", "base", "inlp_gender") for r in _requests(name)]
    got = _run(shared, mixed)
    assert not any(r[T.ERROR] for r in got)
    for v in variants:  # the same rows answered by an actor that serves this variant alone
        alone = _run(Generate(v, "hf", use_gpu=False, gpu_fraction=0.0, seed=0, min_prompt_tokens=1), _requests(v.name))
        mine = [r for r in got if r[T.VARIANT] == v.name]
        assert [r[T.OUTPUT] for r in mine] == [r[T.OUTPUT] for r in alone], v.name
        assert [r[T.LOGLIK] for r in mine] == pytest.approx([r[T.LOGLIK] for r in alone], abs=1e-4), v.name
    by = {(r[T.VARIANT], r[T.ITEM]): r for r in got}
    # the hook and the processor change the model: log-likelihoods differ from the base's
    assert by[("inlp_gender", "0/0")][T.LOGLIK] != pytest.approx(by[("base", "0/0")][T.LOGLIK], abs=1e-4)
    assert by[("self_debias", "0/0")][T.LOGLIK] != pytest.approx(by[("base", "0/0")][T.LOGLIK], abs=1e-4)
    # and the hook is gone once its rows are done: the base model of the actor is the plain base again
    head_hooks = shared.gen.model.get_output_embeddings()._forward_pre_hooks
    assert not head_hooks


def test_loglik_goes_through_the_intervention(shared, artifact):
    """MC1 scores the model generation uses: the log-likelihood equals a direct computation with the hook /
    the Self-Debias rescaling applied to the same tokens."""
    model, tok = shared.gen.model, shared.gen.tokenizer
    ctx, cont = "Q: Is the sky blue?\nA:", " Yes, it is."
    c_ids, t_ids = tok(ctx)["input_ids"], tok(cont)["input_ids"]
    ids = torch.tensor([c_ids + t_ids])

    def direct(logp: torch.Tensor) -> float:
        pos = torch.arange(len(c_ids) - 1, len(c_ids) + len(t_ids) - 1)
        return float(logp[0, pos, torch.tensor(t_ids)].sum())

    with torch.no_grad():
        sd = SelfDebias(decay=1e4).log_probs(model, tok, ids, torch.ones_like(ids))
        hook = RemoveDirections(load_directions(artifact))
        hook.attach(model)
        try:
            hooked = torch.log_softmax(model(ids).logits.float(), -1)
        finally:
            hook.detach()
    got = {r[T.VARIANT]: r[T.LOGLIK] for r in _run(shared, [r for n in ("self_debias", "inlp_gender")
                                                              for r in _requests(n) if r[T.KIND] == "loglik"])}
    assert got["self_debias"] == pytest.approx(direct(sd), abs=1e-4)
    assert got["inlp_gender"] == pytest.approx(direct(hooked), abs=1e-4)


def test_hook_and_processor_variants_refuse_vllm(artifact):
    for v in (Variant("inlp_gender", "inlp", "tiny:gpt2", artifact=artifact),
              Variant("self_debias", "self_debias", "tiny:gpt2")):
        with pytest.raises(ConfigError, match="runs on the HF generation backend only"):
            Generate(v, "vllm", use_gpu=False, gpu_fraction=0.0, seed=0, min_prompt_tokens=1)
    with pytest.raises(ConfigError, match=r"benchmark.methods \['inlp', 'self_debias', 'sentence_debias'\] intervene"):
        from raydebias.benchmark.stage import check_inputs

        check_inputs(load_config(str(SMOKE), ["evaluate.backend=vllm", "benchmark.contrastive_model=tiny:gpt2"]),
                     None, ["benchmark"])


def test_instructive_prefix_goes_after_the_primer_and_counts_in_the_budget(tmp_path):
    cfg = load_config(str(SMOKE), ["evaluate.tasks=[truthfulqa,rtp,mmlu_pro]", "evaluate.limit=3",
                                   "evaluate.mmlu_pro.shots=5"])
    bench = read_benchmarks(cfg, None)
    budget = model_budget("tiny:gpt2", cfg.evaluate)
    plain, _, _ = build_requests(bench, cfg, budget)
    inst, _, _ = build_requests(bench, cfg, budget, prompt_prefix=PREFIX)
    assert plain.num_rows == inst.num_rows
    for p, i in zip(plain.to_pylist(), inst.to_pylist(), strict=True):
        if p[T.TASK].startswith("truthfulqa"):
            assert i[T.PROMPT] == p[T.PROMPT].replace(QA_PRIMER + "\n\n", QA_PRIMER + "\n\n" + PREFIX, 1)
        else:
            assert i[T.PROMPT] == PREFIX + p[T.PROMPT]
    # a prefix as long as the spare room makes MMLU-Pro drop shots instead of overflowing the model
    long_prefix = "Please be kind. " * 120
    tight = load_config(str(SMOKE), ["evaluate.tasks=[mmlu_pro]", "evaluate.limit=2", "evaluate.mmlu_pro.shots=5",
                                     "evaluate.mmlu_pro.max_new_tokens=512", "evaluate.min_prompt_tokens=256"])
    b = model_budget("tiny:gpt2", tight.evaluate)
    mm = read_benchmarks(tight, None)
    base_shots = [r[T.SHOTS] for r in build_requests(mm, tight, b)[0].to_pylist()]
    reqs, bad, _ = build_requests(mm, tight, b, prompt_prefix=long_prefix)
    shots = [r[T.SHOTS] for r in reqs.to_pylist()]
    assert sum(shots) < sum(base_shots)
    assert all(b.count_tokens(r[T.PROMPT]) <= b.prompt_limit(512) for r in reqs.to_pylist())
    assert len(shots) + len(bad) == len(base_shots)
