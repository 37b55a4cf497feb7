"""Search spaces (validated like configs), the Pareto front and the Table-14 layout (SPEC §6)."""

import math

import pytest
from support import REPO

from raydebias.config import ConfigError
from raydebias.sweep import alpha_table, load_space, pareto_front, parse_space


def test_the_shipped_alpha_space_is_the_papers_ablation():
    space = load_space(REPO / "tune/spaces/alpha.yaml")
    assert space.grid == {"alpha": [1, 2, 4, 8, 16], "tau": [1.0], "toxic_weight": [1.5]}
    points = space.grid_points()
    assert len(points) == 5 and points[2] == {"alpha": 4, "tau": 1.0, "toxic_weight": 1.5}


def test_random_axes_and_settings():
    space = parse_space({"alpha": [2, 4], "tau": {"loguniform": [0.05, 2.0]},
                         "train.toxic_weight_scope": {"choice": ["batch", "group"]}, "num_samples": 3,
                         "scheduler": "fifo"})
    assert space.grid == {"alpha": [2, 4]} and space.settings == {"num_samples": 3, "scheduler": "fifo"}
    assert space.random == {"tau": {"loguniform": [0.05, 2.0]},
                            "toxic_weight_scope": {"choice": ["batch", "group"]}}


@pytest.mark.parametrize("doc, match", [
    ({"alpha": [1, -2]}, "train.alpha"),
    ({"alpah": [1]}, "unknown key 'alpah'"),
    ({"tau": {"loguniform": [0, 1]}}, "low > 0"),
    ({"tau": {"uniform": [2, 1]}}, "low < high"),
    ({"tau": {"normal": [0, 1]}}, "random axis"),
    ({"toxic_weight_scope": {"choice": ["batch", "token"]}}, "toxic_weight_scope"),
    ({"alpha": []}, "empty"),
    ({"alpha": [1], "scheduler": "hyperband"}, "sweep.scheduler"),
    ({}, "non-empty"),
])
def test_bad_spaces_name_what_is_wrong(doc, match):
    with pytest.raises(ConfigError, match=match):
        parse_space(doc)


def test_pareto_front_keeps_only_non_dominated_trials():
    rows = [
        {"id": "a", "toxicity": 0.05, "faithfulness": 0.10},
        {"id": "b", "toxicity": 0.04, "faithfulness": 0.14},  # dominates a and c
        {"id": "c", "toxicity": 0.06, "faithfulness": 0.12},
        {"id": "d", "toxicity": 0.03, "faithfulness": 0.09},  # lowest toxicity
        {"id": "e", "toxicity": 0.07, "faithfulness": 0.20},  # highest faithfulness
        {"id": "f", "toxicity": math.nan, "faithfulness": 0.9},  # unusable
        {"id": "g", "toxicity": 0.04, "faithfulness": 0.14},  # ties b: neither dominates
    ]
    assert [r["id"] for r in pareto_front(rows)] == ["d", "b", "g", "e"]


def test_alpha_table_has_the_papers_columns_and_means():
    rows = [{"alpha": 1.0, "toxicity": 0.05, "faithfulness": 0.08}, {"alpha": 1.0, "toxicity": 0.07,
             "faithfulness": 0.10}, {"alpha": 4.0, "toxicity": 0.041, "faithfulness": 0.136}]
    t = alpha_table(rows)
    assert t.splitlines()[0] == "| alpha | Toxicity | Faithfulness | trials |"
    assert "| 1 | 0.060 | 0.090 | 2 |" in t and "| 4 | 0.041 | 0.136 | 1 |" in t


def test_the_shipped_random_space_parses():
    space = load_space(REPO / "tune/spaces/random.yaml")
    assert space.grid == {"alpha": [2, 4, 8]} and set(space.random) == {"tau", "toxic_weight"}
    assert space.settings == {"num_samples": 2}
