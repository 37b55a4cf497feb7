"""The op registry (raydebias/augment/registry.py) is the one list of augmentation stages: config validation,
the default ops, the pipeline order (from each class's declared needs) and the README table come from it."""

import ast
import dataclasses
import inspect
import re

import pytest
from support import REPO

from raydebias import schema as S
from raydebias.augment.registry import OPS, STAGES
from raydebias.augment.stage import AugmentStage, RowOp, order_stages, stage_classes, stage_order
from raydebias.config import AugmentConfig, OpResources, load_config
from raydebias.errors import ConfigError

ORDER = ("ner", "backtranslate", "toxic_rewrite", "low_confidence", "entity_swap", "mask_fill", "regenerate",
         "clean", "ner_candidates", "toxicity")


def test_config_default_and_validation_come_from_the_registry():
    assert AugmentConfig().ops == list(OPS) and set(OPS) < set(STAGES)
    with pytest.raises(ConfigError) as e:
        load_config(None, ["augment.ops=[backtranslate,paraphrase]"])
    assert "unknown op 'paraphrase'" in str(e.value) and all(op in str(e.value) for op in OPS)
    with pytest.raises(ConfigError, match="unknown op 'ner'"):  # an always-on stage is not an op to select
        AugmentConfig(ops=["ner"])


def _names_in_literals(path):
    """String constants of each list/tuple/set/dict literal in ``path`` that name a registry op."""
    for node in ast.walk(ast.parse(path.read_text())):
        elts = node.keys if isinstance(node, ast.Dict) else getattr(node, "elts", None)
        if isinstance(node, (ast.List, ast.Tuple, ast.Set, ast.Dict)) and elts:
            names = {e.value for e in elts if isinstance(e, ast.Constant) and e.value in OPS}
            if names:
                yield names


def test_no_module_but_the_registry_lists_the_ops():
    offenders = {}
    for path in (REPO / "raydebias").rglob("*.py"):
        if path.name == "registry.py" and path.parent.name == "augment":
            continue
        worst = max((len(n) for n in _names_in_literals(path)), default=0)
        if worst >= 3:
            offenders[str(path.relative_to(REPO))] = worst
    assert not offenders, offenders


def test_the_order_is_derived_from_the_declared_needs():
    assert stage_order(AugmentConfig()) == ORDER
    # the order of augment.ops does not matter; a subset keeps the relative order
    assert stage_order(AugmentConfig(ops=["regenerate", "entity_swap", "backtranslate"])) == (
        "ner", "backtranslate", "entity_swap", "regenerate", "clean", "ner_candidates", "toxicity")
    # needs, not the dict order, put NER before the ops that read its entities and clean after every op
    classes = stage_classes()
    shuffled = {k: classes[k] for k in ("toxicity", "ner_candidates", "clean", "regenerate", "entity_swap",
                                        "mask_fill", "ner", "backtranslate", "toxic_rewrite", "low_confidence")}
    order = order_stages(list(shuffled), shuffled)
    assert order.index("ner") < min(order.index(s) for s in ("entity_swap", "mask_fill", "regenerate"))
    assert max(order.index(op) for op in OPS) < order.index("clean")
    assert order.index("clean") < min(order.index("ner_candidates"), order.index("toxicity"))


def test_an_unsatisfied_need_or_a_circle_is_a_clear_error():
    classes = stage_classes()
    with pytest.raises(ConfigError, match=r"stage 'entity_swap' needs \['ner'\], which the pipeline does not run"):
        order_stages(["entity_swap", "clean", "toxicity"], classes)
    with pytest.raises(ConfigError, match=r"unknown stage\(s\) \['paraphrase'\]"):
        order_stages(["ner", "paraphrase"], classes)

    class A(AugmentStage):
        name, section, needs = "a", None, ("b",)

    class B(AugmentStage):
        name, section, needs = "b", None, ("a",)

    with pytest.raises(ConfigError, match=r"stages \['a', 'b'\] wait for each other"):
        order_stages(["a", "b"], {"a": A, "b": B})


def test_every_stage_declares_its_contract_consistently_with_the_registry():
    classes = stage_classes()
    assert list(classes) == list(STAGES) == list(ORDER)
    sections = {f.name for f in dataclasses.fields(AugmentConfig)}
    for key, cls in classes.items():
        assert issubclass(cls, AugmentStage) and cls.name == key, key
        assert cls.section is None or cls.section in sections, key
        assert set(cls.uses) <= sections and set(cls.needs) | set(cls.after) <= set(STAGES), key
        assert cls.reads and cls.writes and all(isinstance(c, str) for c in cls.reads + cls.writes), key
        # the constructor takes its own section, the sections it uses, device and seed: nothing else
        params = list(inspect.signature(cls.__init__).parameters)[1:]
        assert params[-2:] == ["device", "seed"] and len(params) == 3 + len(cls.uses), (key, params)
        res = cls.resources(AugmentConfig())
        assert res is None if cls.section is None else isinstance(res, OpResources), key
        if key in OPS:  # ops make candidates row by row through their public work method
            assert issubclass(cls, RowOp) and "process_rows" in vars(cls) and not hasattr(cls, "_rows"), key


def test_every_column_a_stage_reads_is_written_before_it():
    classes = stage_classes()
    have = set(S.SOURCE_COLUMNS) | {"candidates", "candidates.text", "drops"}  # after add_reference
    for name in stage_order(AugmentConfig()):
        missing = set(classes[name].reads) - have
        assert not missing, (name, missing)
        have |= set(classes[name].writes)
    assert {"candidates.entities", "candidates.toxicity"} <= have  # what Finalize checks on every candidate


def test_readme_table_lists_the_stages_in_pipeline_order():
    text = (REPO / "README.md").read_text()
    section = text.split("## Augmentation", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| ([a-z_]+) \|", section, re.M)
    assert tuple(rows[1:]) == ORDER and rows[0] == "stage"  # the header, then one row per stage
