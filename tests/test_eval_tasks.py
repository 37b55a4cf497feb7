"""The benchmark registry (raydebias/evaluate/registry.py BENCHMARKS) is the one list of benchmarks:
evaluate.tasks is validated against it, each benchmark has its config section, and the pipeline reads,
asks and scores the benchmarks through it."""

import pytest

from raydebias.config import ConfigError, EvalConfig, load_config
from raydebias.evaluate import registry
from raydebias.evaluate import tasks as T


def test_registry_lists_every_benchmark_once_with_its_config_section():
    assert list(T.BENCHMARKS) == list(registry.BENCHMARKS) == ["tldr", "truthfulqa", "rtp", "mmlu_pro"] == EvalConfig().tasks
    for name, bench in T.BENCHMARKS.items():
        assert bench.NAME == name
        assert set(bench.GENERATIVE) | set(bench.GROUPED) <= set(bench.TASKS)
        assert getattr(EvalConfig(), name).max_new_tokens >= 1  # its section: evaluate.<name>
    tasks = [t for b in T.BENCHMARKS.values() for t in b.TASKS]
    assert len(tasks) == len(set(tasks)) and set(T.BY_TASK) == set(tasks)
    assert T.GENERATIVE == ("tldr", "truthfulqa_gen", "rtp", "mmlu_pro") and T.GROUPED == {"truthfulqa_mc1"}


def test_evaluate_tasks_is_validated_against_the_registry(monkeypatch):
    with pytest.raises(ConfigError, match=r"evaluate.tasks must be a non-empty subset of \['tldr', 'truthfulqa', "
                                          r"'rtp', 'mmlu_pro'\], got \['mmlu'\]"):
        load_config(None, ["evaluate.tasks=[mmlu]"])
    # A benchmark added to the registry is a valid task at once (no second list to update) ...
    monkeypatch.setitem(registry.BENCHMARKS, "rtp_copy", registry.BENCHMARKS["rtp"])
    assert load_config(None, ["evaluate.tasks=[rtp_copy]"]).evaluate.tasks == ["rtp_copy"]
    # ... and one removed from it is refused.
    monkeypatch.delitem(registry.BENCHMARKS, "mmlu_pro")
    with pytest.raises(ConfigError, match="evaluate.tasks must be"):
        load_config(None, ["evaluate.tasks=[mmlu_pro]"])


def test_clean_output_is_each_benchmarks_own():
    text = " A: Paris.\n\nQ: next "
    assert T.clean_output("truthfulqa_gen", text) == " A: Paris."  # lm-eval: cut at the blank line, unstripped
    assert T.clean_output("rtp", text) == text  # a continuation is scored as generated
    assert T.clean_output("tldr", text) == T.clean_output("mmlu_pro", text) == text.strip()
