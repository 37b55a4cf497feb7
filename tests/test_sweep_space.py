"""Search spaces (validated like configs), the Pareto front and the Table-14 layout (SPEC §6)."""

import math

import pytest
from support import REPO, SMOKE

from raydebias.config import ConfigError, SweepConfig, load_config
from raydebias.evaluate import tasks as T
from raydebias.evaluate.patterns import PATTERNS
from raydebias.evaluate.pipeline import build_requests
from raydebias.sweep import (
    alpha_table,
    best_trial,
    default_space,
    load_space,
    param_space,
    pareto_front,
    parse_space,
    sweep_benchmarks,
    sweep_settings,
    table_columns,
    trial_config,
    trial_metrics,
)


def test_the_shipped_alpha_space_is_the_papers_ablation():
    space = load_space(REPO / "tune/spaces/alpha.yaml")
    assert space.grid == {"alpha": [1, 2, 4, 8, 16], "tau": [1.0], "toxic_weight": [1.5]}
    points = space.grid_points()
    assert len(points) == 5 and points[2] == {"alpha": 4, "tau": 1.0, "toxic_weight": 1.5}
    assert space.settings == {"scheduler": "fifo"}  # Table 14 needs every alpha trained and evaluated


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


def test_tune_param_space_from_a_space():
    from ray.tune.search.sample import Float

    cfg = load_config(None, ["seed=7"])
    space = parse_space({"alpha": [1, 8], "tau": {"loguniform": [0.1, 2.0]}, "num_samples": 3})
    ps, samples = param_space(space, cfg, sweep_settings(cfg, space))
    assert ps["alpha"] == {"grid_search": [1, 8]} and isinstance(ps["tau"], Float) and samples == 3
    assert "seed" not in ps  # random axes already differ between samples
    # a pure grid repeated: the repeats are seeds, not identical trials
    grid = parse_space({"alpha": [1, 8], "num_samples": 2})
    ps, samples = param_space(grid, cfg, sweep_settings(cfg, grid))
    assert ps["seed"] == {"grid_search": [7, 8]} and samples == 1
    # without a space file: the config's own sweep grid
    assert default_space(cfg).grid == {"alpha": [1.0, 2.0, 4.0, 8.0, 16.0], "tau": [1.0], "toxic_weight": [1.5]}


def test_trial_config_applies_train_fields_and_seed_and_validates():
    import numpy as np

    cfg = load_config(None, [])
    t = trial_config(cfg, {"alpha": np.float64(8.0), "tau": 0.5, "seed": 3})
    assert (t.train.alpha, t.train.tau, t.seed, type(t.train.alpha)) == (8.0, 0.5, 3, float)
    assert cfg.train.alpha == 4.0  # the sweep's config is untouched
    with pytest.raises(ConfigError, match="train.tau"):
        trial_config(cfg, {"tau": -1.0})


@pytest.mark.parametrize("override,key", [("sweep.metric=toxicity", "sweep.metric"),
                                          ("sweep.val_fraction=1.0", "sweep.val_fraction"),
                                          ("sweep.reduction_factor=1", "sweep.reduction_factor"),
                                          ("sweep.alpha=[]", "sweep.alpha"),
                                          ("sweep.eval_tasks=[tldr]", "sweep.eval_tasks"),
                                          ("sweep.eval_tasks=[rtp,rtp]", "sweep.eval_tasks"),
                                          ("sweep.eval_limit=0", "sweep.eval_limit"),
                                          ("sweep.select_metric=bleu", "sweep.select_metric")])
def test_sweep_settings_are_validated(override, key):
    with pytest.raises(ConfigError, match=key):
        load_config(None, [override])


def test_best_trial_is_on_the_front_and_best_by_the_select_metric():
    rows = [{"trial_id": "a", "toxicity": 0.2, "faithfulness": 0.5},
            {"trial_id": "b", "toxicity": 0.1, "faithfulness": 0.4},
            {"trial_id": "c", "toxicity": 0.3, "faithfulness": 0.9},
            {"trial_id": "d", "toxicity": 0.1, "faithfulness": 0.3},   # dominated by b
            {"trial_id": "e", "toxicity": float("nan"), "faithfulness": float("nan")}]  # stopped early
    cfg = load_config(None, [])
    assert best_trial(rows, cfg.sweep)["trial_id"] == "b"
    cfg = load_config(None, ["sweep.select_metric=faithfulness", "sweep.select_mode=max"])
    assert best_trial(rows, cfg.sweep)["trial_id"] == "c"
    assert best_trial(rows[4:], cfg.sweep) is None


def test_sweep_data_split_streams_parts_once_and_is_reused(tmp_path):
    """Every augmented group lands in exactly one of train/val (val_fraction of them, by id hash), part by
    part; a second call reuses the committed split instead of redrawing it."""
    import pyarrow as pa

    from raydebias.augment.clean import AUGMENTED_SCHEMA
    from raydebias.outputs import RunDir
    from raydebias.sweep import prepare_sweep_data

    out = RunDir(tmp_path / "run")
    ids = [f"g{i:02d}" for i in range(10)]
    with out.sources_dir("train").replacing() as src:  # the data stage's output, complete
        (src / "part-0.parquet").write_parquet(pa.table({"id": ids}))
    for n, chunk in enumerate((ids[:4], ids[4:])):
        rows = [{"id": i, "post": f"post {i}", "summary": f"summary {i}"} for i in chunk]
        (out.augmented_dir / f"part-{n}.parquet").write_parquet(pa.Table.from_pylist(rows, schema=AUGMENTED_SCHEMA))
    cfg = load_config(None, ["sweep.val_fraction=0.3"])
    got = prepare_sweep_data(cfg, out)
    assert (got["groups"], got["train"], got["val"], got["reused"]) == (10, 7, 3, False)
    train = got["dirs"]["train"].read_table().column("id").to_pylist()
    val = got["dirs"]["val"].read_table().column("id").to_pylist()
    assert sorted(train + val) == ids and len(val) == 3
    again = prepare_sweep_data(cfg, out)
    assert again["reused"] and (again["train"], again["val"]) == (7, 3)
    assert got["dirs"]["val"].read_table().column("id").to_pylist() == val


def test_trial_metrics_report_every_alignment_tax_metric_of_the_evaluate_stage():
    """A trial's flat scalars are the evaluate stage's own metrics (tasks.metrics) of its rows: every
    SweepConfig.ALIGNMENT_METRICS name, and each generation pattern per generative task."""
    cfg = load_config(SMOKE, ["sweep.eval_tasks=[truthfulqa,rtp,mmlu_pro]", "sweep.eval_limit=3"])
    bench = sweep_benchmarks(cfg)
    assert {k: len(v) for k, v in bench.items() if k != "mmlu_pro_validation"} == {
        "truthfulqa_gen": 3, "truthfulqa_mc1": 3, "rtp": 3, "mmlu_pro": 3}
    assert len(bench["mmlu_pro_validation"]) > 3  # the shots come from the whole validation split
    tldr = [{"id": f"t{i}", "post": "My landlord Greg kept my deposit.", "summary": "Greg kept it.",
             "subreddit": None, "title": None} for i in range(2)]
    requests, bad, rows_in = build_requests({"tldr": tldr, **bench}, cfg)
    assert not bad
    outputs = ["", "I don't know. The answer is (B).", "Greg kept it, the thief!!"]
    scored = [{**r, T.OUTPUT: outputs[i % 3], T.LOGLIK: -float(i % 5), T.MAX_NEW_USED: r[T.MAX_NEW],
               T.TOXICITY: 0.1 * (i % 4), T.FAITHFULNESS: 0.5, T.ENTITY_PRECISION: 1.0, T.ROUGE_L: 0.25, T.ERROR: None}
              for i, r in enumerate(requests.to_pylist())]
    kept, _, counts = T.account(rows_in, bad, scored)
    m = T.metrics(kept)
    flat = trial_metrics(m)
    assert set(SweepConfig.ALIGNMENT_METRICS) <= set(flat)
    patterns = {f"patterns_{t}_{p}" for t in ("tldr", "truthfulqa_gen", "rtp", "mmlu_pro") for p in PATTERNS}
    assert set(flat) == {*SweepConfig.EVAL_METRICS, "toxicity_std", "faithfulness_std",
                         *SweepConfig.ALIGNMENT_METRICS, *patterns}
    assert flat["truthfulqa_mc1_acc"] == m["truthfulqa_mc1"]["acc"]
    assert flat["truthfulqa_rougeL_diff"] == m["truthfulqa_gen"]["rougeL_diff"]
    assert flat["rtp_toxicity"] == m["rtp"]["toxicity"]["mean"] and flat["mmlu_pro_acc"] == m["mmlu_pro"]["overall"]
    assert flat["patterns_rtp_empty"] == m["patterns"]["rtp"]["empty"] > 0
    assert flat["toxicity"] == m["tldr"]["toxicity"]["mean"]
    # TL;DR only (sweep.eval_tasks: []) still reports Table 14's columns; a slice with no TL;DR row gives NaN
    assert sweep_benchmarks(load_config(SMOKE, ["sweep.eval_tasks=[]"])) == {}
    assert math.isnan(trial_metrics({})["faithfulness"])


def test_the_alpha_table_adds_the_alignment_tax_columns_trials_report():
    rows = [{"alpha": 1.0, "toxicity": 0.05, "faithfulness": 0.08, "truthfulqa_mc1_acc": 0.25, "rtp_toxicity": 0.1,
             "mmlu_pro_acc": math.nan}]
    assert table_columns(rows) == ["toxicity", "faithfulness", "truthfulqa_mc1_acc", "rtp_toxicity"]
    t = alpha_table(rows, columns=table_columns(rows))
    assert t.splitlines()[0] == "| alpha | Toxicity | Faithfulness | TruthfulQA MC1 | RTP toxicity | trials |"
    assert "| 1 | 0.050 | 0.080 | 0.250 | 0.100 | 1 |" in t
