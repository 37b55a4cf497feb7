import dataclasses
import typing
from pathlib import Path

import pytest
import yaml

from raydebias.config import (
    RENAMED,
    AugmentConfig,
    Config,
    ConfigError,
    TrainConfig,
    config_to_dict,
    describe,
    load_config,
    parse_override,
)

CONFIGS = Path(__file__).resolve().parents[1] / "jobs" / "configs"


def test_defaults_are_the_papers_values():
    cfg = Config()
    a, t = cfg.augment, cfg.train
    # Table 10
    assert a.backtranslate.pivots == ["de", "fr", "es"]
    assert (a.backtranslate.num_beams, a.backtranslate.temperature) == (5, 0.8)
    assert a.backtranslate.forward_model.format(pivot="de") == "Helsinki-NLP/opus-mt-en-de"
    assert a.backtranslate.backward_model.format(pivot="es") == "Helsinki-NLP/opus-mt-es-en"
    assert a.toxic_rewrite.model == "EleutherAI/gpt-neo-2.7B"
    assert (a.toxic_rewrite.temperature, a.toxic_rewrite.top_p, a.toxic_rewrite.repetition_penalty) == (1.0, 0.95, 1.2)
    assert a.toxic_rewrite.num_return_sequences == 3 and a.toxic_rewrite.toxicity_threshold == 0.4
    lc = a.low_confidence
    assert (lc.model, lc.num_beams, lc.length_penalty, lc.max_input_tokens, lc.max_new_tokens) == ("gpt2", 8, 2.0, 512, 128)
    assert lc.cliff_threshold == 0.21 and lc.cliff_rule is False
    assert (a.entity_swap.max_swaps, a.entity_swap.max_variations) == (2, 3)
    assert (a.mask_fill.model, a.mask_fill.mask_ratio, a.mask_fill.top_k, a.mask_fill.max_swaps) == (
        "FacebookAI/roberta-large", 0.15, 5, 2)
    assert (a.regenerate.model, a.regenerate.temperature) == ("google/flan-t5-large", 0.7)
    assert (a.toxicity.backend, a.toxicity.model, a.toxicity.label) == ("detoxify", "original", "toxicity")
    assert a.ner.model == "en_core_web_trf"
    assert (a.min_words, a.min_positives) == (3, 2)
    # Section 4.3 / 5 and Table 12 (GPT2 row)
    assert (t.alpha, t.tau, t.toxic_weight, t.label_smoothing, t.warmup_steps) == (4.0, 1.0, 1.5, 0.1, 5)
    assert (t.model, t.lr, t.precision, t.max_length, t.epochs) == ("gpt2", 5e-4, "fp32", 512, 4)
    # Appendix H: the alpha ablation compares every alpha; early stopping on val_l_ce would drop large ones
    assert cfg.sweep.alpha == [1.0, 2.0, 4.0, 8.0, 16.0] and cfg.sweep.scheduler == "fifo"
    assert t.max_positives is None and t.max_negatives is None and t.toxic_weight_scope == "batch"
    # Appendix H / Section 3 / SPEC §7
    assert cfg.sweep.alpha == [1.0, 2.0, 4.0, 8.0, 16.0]
    e = cfg.evaluate
    assert (e.tldr.max_new_tokens, e.rtp.top_p, e.rtp.temperature, e.rtp.max_new_tokens, e.mmlu_pro.shots) == (128, 0.9, 0.7, 100, 5)
    assert e.faithfulness_band == [0.3, 0.7] and e.tldr.faithfulness_source == "post"
    assert cfg.data.max_post_chars == 20_000 and cfg.device == "auto"


@pytest.mark.parametrize("name,lr,precision,max_len,maxpos,maxneg,epochs", [
    ("paper-gpt2", 5e-4, "fp32", 512, None, None, 4),
    ("paper-phi2", 2e-5, "fp16", 340, 3, 5, 3),
    ("paper-llama2-7b", 2e-5, "fp16", 340, 2, 3, 3),
])
def test_paper_presets_match_table_12(name, lr, precision, max_len, maxpos, maxneg, epochs):
    t = load_config(CONFIGS / f"{name}.yaml").train
    assert (t.lr, t.precision, t.max_length, t.max_positives, t.max_negatives, t.epochs) == (
        lr, precision, max_len, maxpos, maxneg, epochs)
    assert (t.alpha, t.tau, t.warmup_steps) == (4.0, 1.0, 5)


def test_smoke_config_is_tiny_and_offline():
    cfg = load_config(CONFIGS / "smoke.yaml")
    assert cfg.device == "cpu"
    ids = [cfg.train.model, cfg.augment.toxic_rewrite.model, cfg.augment.low_confidence.model,
           cfg.augment.mask_fill.model, cfg.augment.regenerate.model, cfg.augment.toxicity.model,
           cfg.augment.ner.model, cfg.augment.backtranslate.forward_model, cfg.augment.backtranslate.backward_model]
    assert all(i.startswith("tiny:") for i in ids), ids
    assert cfg.data.source.startswith("sample:") and cfg.data.eval_source.startswith("sample:")


def test_overrides_parse_yaml_values_and_nest(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("train: {alpha: 2}\naugment: {toxic_rewrite: {top_p: 0.5}}\n")
    cfg = load_config(p, ["train.alpha=8", "train.tau=0.5", "augment.ops=[entity_swap]",
                          "augment.mask_fill.resources.actors=3", "data.limit=null", "device=cpu"])
    assert cfg.train.alpha == 8.0 and isinstance(cfg.train.alpha, float)
    assert cfg.train.tau == 0.5
    assert cfg.augment.toxic_rewrite.top_p == 0.5  # from the file
    assert cfg.augment.toxic_rewrite.temperature == 1.0  # untouched default next to it
    assert cfg.augment.ops == ["entity_swap"]
    assert cfg.augment.mask_fill.resources.actors == 3
    assert cfg.augment.regenerate.resources.actors == 1  # nested defaults are per instance
    assert cfg.device == "cpu" and cfg.data.limit is None


def test_parse_override_values():
    assert parse_override("a.b=1") == ("a.b", 1)
    assert parse_override("a=0.25") == ("a", 0.25)
    assert parse_override("a=true") == ("a", True)
    assert parse_override("a=Helsinki-NLP/opus-mt-en-{pivot}") == ("a", "Helsinki-NLP/opus-mt-en-{pivot}")
    with pytest.raises(ConfigError, match="key.sub=value"):
        parse_override("train.alpha")


@pytest.mark.parametrize("override,match", [
    ("train.alhpa=3", r"unknown config key 'train.alhpa'; did you mean train.alpha"),
    ("nope=1", r"unknown config key 'nope'"),
    ("augment.toxic_rewrite.resources.gpus=1", r"augment.toxic_rewrite.resources.gpus"),
    ("train.alpha=high", r"train.alpha must be a number, got 'high'"),
    ("train.epochs=2.5", r"train.epochs must be an integer, got 2.5"),
    ("train.epochs=true", r"train.epochs must be an integer, got True"),
    ("device=tpu", r"device must be one of 'auto' \| 'cpu' \| 'gpu', got 'tpu'"),
    ("augment.ops=entity_swap", r"augment.ops must be list\[str\]"),
    ("train.alpha=-1", r"train.alpha must be >= 0, got -1.0"),
    ("train.tau=0", r"train.tau must be > 0"),
    ("augment.ops=[backtranslate,paraphrase]", r"unknown op 'paraphrase'"),
    ("augment.ops=[backtranslate,mask_fill,backtranslate]", r"augment.ops lists an op twice"),
    ("augment.mask_fill.resources.actors=0", r"augment.mask_fill.resources.actors must be >= 1, got 0"),
    ("train=3", r"train must be a mapping"),
])
def test_bad_keys_and_types_name_the_key(override, match):
    with pytest.raises(ConfigError, match=match):
        load_config(None, [override])


@pytest.mark.parametrize("old,new", sorted(RENAMED.items()))
def test_renamed_keys_are_refused_naming_the_new_key(old, new, tmp_path):
    """evaluate is nested per benchmark (evaluate.truthfulqa.source, ...): an old flat key, in a file or an
    override, fails with the new key's name instead of being ignored or 'did you mean'-guessed."""
    assert new in {k for k, *_ in describe()}  # the new key exists
    msg = f"^{old} was renamed {new}: "
    with pytest.raises(ConfigError, match=msg):
        load_config(None, [f"{old}=1"])
    section, leaf = old.split(".")
    p = tmp_path / "old.yaml"
    p.write_text(yaml.safe_dump({section: {leaf: 1}}))
    with pytest.raises(ConfigError, match=msg):
        load_config(p)
    with pytest.raises(ConfigError, match=msg):
        load_config(CONFIGS / "smoke.yaml", [f"{old}=1"])


def test_evaluate_sections_per_benchmark():
    cfg = load_config(None, ["evaluate.truthfulqa.source=x.csv", "evaluate.rtp.top_p=0.5",
                             "evaluate.mmlu_pro.stop=[]", "evaluate.tldr.faithfulness_source=reference"])
    e = cfg.evaluate
    assert (e.truthfulqa.source, e.truthfulqa.mc_source) == ("x.csv", "truthfulqa/truthful_qa:multiple_choice")
    assert (e.rtp.top_p, e.rtp.temperature, e.mmlu_pro.stop, e.tldr.faithfulness_source) == (
        0.5, 0.7, [], "reference")
    with pytest.raises(ConfigError, match=r"^evaluate.rtp.top_p must be in \(0, 1\], got 1.5"):
        load_config(None, ["evaluate.rtp.top_p=1.5"])
    with pytest.raises(ConfigError, match=r"^evaluate.mmlu_pro.max_new_tokens must be >= 1, got 0"):
        load_config(None, ["evaluate.mmlu_pro.max_new_tokens=0"])
    with pytest.raises(ConfigError, match=r"did you mean evaluate.mmlu_pro.shots"):
        load_config(None, ["evaluate.mmlu_pro.shot=3"])


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping at the top"):
        load_config(bad)
    bad.write_text("train:\n  lr: 1e-3x\n")
    with pytest.raises(ConfigError, match="train.lr must be a number"):
        load_config(bad)


def test_every_field_has_a_help_string_and_roundtrips(tmp_path):
    rows = describe()
    assert len(rows) > 60
    missing = [k for k, _, _, h in rows if not h.strip()]
    assert not missing, missing
    cfg = load_config(CONFIGS / "smoke.yaml", ["train.alpha=2"])
    p = tmp_path / "dump.yaml"
    p.write_text(yaml.safe_dump(config_to_dict(cfg)))
    assert load_config(p) == cfg


def test_described_defaults_are_the_values_a_run_gets():
    # A parent may override a section's defaults (evaluate.generate asks for a whole GPU, OpResources' own
    # default is 0.25): --help-config must show what a run gets.
    rows = {k: d for k, _, d, _ in describe()}
    assert rows["evaluate.generate.num_gpus"] == 1.0
    cfg = Config()
    for key, default in rows.items():
        obj = cfg
        for part in key.split("."):
            obj = getattr(obj, part)
        assert obj == default, key


def test_stage_dataclasses_exist_with_helps():
    for cls in (AugmentConfig, TrainConfig):
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            assert f.metadata.get("help"), f"{cls.__name__}.{f.name}"
            assert f.name in hints


def test_a_section_set_in_part_keeps_the_rest_of_its_parents_default():
    # augment.ner.resources defaults to num_cpus=2 in NerConfig (OpResources' own default is 1): setting
    # only its batch size must not reset the CPUs to OpResources' default
    cfg = load_config(None, ["augment.ner.resources.batch_size=64", "augment.fused.actors=3"])
    assert (cfg.augment.ner.resources.num_cpus, cfg.augment.ner.resources.batch_size) == (2.0, 64)
    assert (cfg.augment.fused.num_gpus, cfg.augment.fused.actors) == (1.0, 3)
    assert load_config(None, []).augment.ner.resources.num_cpus == 2.0
