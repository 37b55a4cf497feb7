"""The stage graph (raydebias/stages.py) and the import graph it makes possible: stages never run each
other, the plan runs missing upstream stages first, there is no import circle and train never imports augment."""

import ast
from pathlib import Path

import pyarrow as pa
import pytest
from support import REPO, SMOKE

from raydebias import schema as S
from raydebias import stages
from raydebias.config import load_config
from raydebias.errors import ConfigError, StageInputError, job_exit_code
from raydebias.outputs import RunDir


def _write_sources(out: RunDir, split: str = "train") -> None:
    with out.sources_dir(split).replacing() as d:
        (d / "part-0.parquet").write_parquet(pa.Table.from_pylist(
            [{"id": "a", "post": "p", "summary": "s"}], schema=S.SOURCE_SCHEMA))


def test_a_stage_runs_after_the_upstream_stages_whose_outputs_are_missing(tmp_path):
    cfg = load_config(None, [])
    out = RunDir(tmp_path / "run")
    assert stages.plan("train", cfg, out) == ["data", "augment", "train"]
    assert stages.plan("augment", cfg, out) == ["data", "augment"]
    assert stages.plan("data", cfg, out) == ["data"]
    assert stages.plan("sweep", cfg, out) == ["data", "augment", "sweep"]
    assert stages.plan("all", cfg, out) == ["data", "augment+train", "evaluate"]
    # evaluate reads the held-out split only for tldr; it never trains (no model: its own clear error)
    assert stages.plan("evaluate", cfg, out) == ["data", "evaluate"]
    assert stages.plan("evaluate", load_config(None, ["evaluate.tasks=[truthfulqa]"]), out) == ["evaluate"]
    # the benchmark's contrastive row is this run's trained model: the train stage (and what it needs) first
    assert stages.plan("benchmark", cfg, out) == ["data", "augment", "train", "benchmark"]
    given = load_config(None, ["benchmark.contrastive_model=some/model", "evaluate.tasks=[truthfulqa]"])
    assert stages.plan("benchmark", given, out) == ["benchmark"]
    corpus_tldr = load_config(None, ["benchmark.contrastive_model=m", "evaluate.tasks=[rtp]", "benchmark.corpus=tldr"])
    assert stages.plan("benchmark", corpus_tldr, out) == ["data", "benchmark"]
    _write_sources(out)
    train_only = load_config(None, ["data.eval_source=null"])
    held_out = load_config(None, ["data.eval_source=x.jsonl"])
    assert stages.plan("augment", train_only, out) == ["augment"]  # data complete: not rerun
    assert stages.plan("augment", held_out, out) == ["data", "augment"]  # its held-out split is missing
    _write_sources(out, "eval")
    assert stages.plan("evaluate", held_out, out) == ["evaluate"]
    with pytest.raises(KeyError, match="unknown stage"):
        stages.plan("nope", cfg, out)
    assert set(stages.TARGETS) <= set(stages.STAGES) | set(stages.SEQUENCES)


def test_stages_refuse_a_missing_input_instead_of_running_another_stage(tmp_path):
    from raydebias.augment.pipeline import prepare_augment
    from raydebias.evaluate.pipeline import read_benchmarks
    from raydebias.sweep import prepare_sweep_data
    from raydebias.train.trainer import run_train_stage

    cfg = load_config(None, [])
    out = RunDir(tmp_path / "run")
    for call, stage in ((lambda: prepare_augment(cfg, out), "data"), (lambda: run_train_stage(cfg, out), "augment"),
                        (lambda: read_benchmarks(cfg, out), "data"), (lambda: prepare_sweep_data(cfg, out), "augment")):
        with pytest.raises(StageInputError, match=f"run --stage {stage} first") as e:
            call()
        assert isinstance(e.value, ConfigError) and job_exit_code(e.value) == 2
    assert not out.sources_dir("train").exists() and not out.augmented_dir.glob("*.parquet")


def _imports(path: Path, package: str) -> set[str]:
    """Every raydebias module ``path`` imports, at module level or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        found |= {n for n in names if n.startswith(package)}
    return found


def test_no_import_circle_and_train_never_imports_augment():
    root = REPO / "raydebias"
    modules = {".".join(p.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__"): p
               for p in root.rglob("*.py")}
    graph = {m: {i for i in _imports(p, "raydebias") if i in modules and i != m} for m, p in modules.items()}
    wrong_way = sorted((m, i) for m, deps in graph.items() if m.startswith("raydebias.train")
                       for i in deps if i.startswith("raydebias.augment"))
    assert not wrong_way, wrong_way

    cycles = []
    state: dict[str, int] = {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for d in sorted(graph[m]):
            if state.get(d) == 1:
                cycles.append(path[path.index(d):] + [d] if d in path else [m, d])
            elif d not in state:
                visit(d, [*path, d])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    # a package importing its own submodules (raydebias.x -> raydebias.x.y -> raydebias.x) is not a circle
    cycles = [c for c in cycles if not all(n.startswith(c[0] + ".") or n == c[0] for n in c)]
    assert not cycles, cycles


def test_a_missing_input_no_stage_produces_is_refused_before_anything_runs(tmp_path):
    from raydebias.errors import DataError

    out = RunDir(tmp_path / "run")
    smoke = load_config(SMOKE, [])
    with pytest.raises(ConfigError, match="no trained model"):
        stages.check(["evaluate"], smoke, out)
    stages.check(["evaluate"], load_config(SMOKE, ["evaluate.model=tiny:gpt2"]), out)  # a given model: fine
    stages.check(stages.plan("all", smoke, out), smoke, out)  # `all` trains before it evaluates
    with pytest.raises(DataError, match="nope.jsonl"):
        stages.check(["data", "augment"], load_config(SMOKE, [f"data.source={tmp_path / 'nope.jsonl'}"]), out)
    assert not out.sources_dir("train").exists()


def test_a_checkpoint_of_other_settings_is_refused_before_the_cluster_starts(tmp_path):
    import json

    from raydebias.config import config_to_dict
    from raydebias.train.checkpoint import STATE_META

    out = RunDir(tmp_path / "run")
    meta = out.train_dir / "run" / "step-0000004-abc" / STATE_META
    meta.parent.mkdir(parents=True)
    meta.write_text(json.dumps({"step": 4, "train_config": config_to_dict(load_config(SMOKE, ["train.alpha=8"]))["train"]}))
    with pytest.raises(ConfigError, match="train.alpha: checkpoint 8.0 vs now"):
        stages.check(["train"], load_config(SMOKE, []), out)
    stages.check(["train"], load_config(SMOKE, ["train.alpha=8", "train.epochs=9"]), out)  # epochs may change
