"""The baselines comparison report (issue #15 items 3 and 5): tables, marks, failed rows, a self-contained
HTML, Table 7 against a hand count, flatten_metrics on the evaluate stage's own metrics, readable plots."""

import json
import math
import re

import pytest

from raydebias import plots
from raydebias.benchmark import report as R
from raydebias.evaluate import tasks as T
from raydebias.evaluate.patterns import PATTERNS

METHODS = list(R.METHOD_ORDER)  # the paper's 12 rows


def synthetic(n: int = 12, step: float = 0.01) -> dict[str, dict[str, float]]:
    """Flat metrics of ``n`` methods: method i has toxicity 0.3 - i*step (i=0 is the base), so every method
    is less toxic than the base; faithfulness alternates around the base's."""
    out = {}
    for i, name in enumerate(METHODS[:n]):
        out[name] = {"tldr_toxicity": 0.3 - i * step, "tldr_toxicity_std": 0.1, "tldr_faithfulness": 0.2 + (-1) ** i * i * step,
                     "tldr_faithfulness_std": 0.05, "truthfulqa_rougeL_acc": 0.4 - i * 0.01, "truthfulqa_mc1": 0.23,
                     "rtp_toxicity": 0.01 + i * 0.001, "mmlu_pro_law": 0.13, "mmlu_pro_math": 0.1 + i * 0.001,
                     "mmlu_pro_overall": 0.11, "patterns_rtp_repetitive": 1.4 + i, "single_cluster_rate": 0.2,
                     "general_ppl": 30.0 + i}
    return out


def md_rows(md: str, title: str) -> dict[str, list[str]]:
    """The rows of the Markdown table under ``## title``: first cell -> the other cells."""
    block = md.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]
    rows = [line.strip("|").split(" | ") for line in block.splitlines() if line.startswith("| ")]
    return {r[0].strip(): [c.strip() for c in r[1:]] for r in rows[1:]}


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    d = tmp_path_factory.mktemp("bench")
    m = synthetic()
    failed_name = "sentence_debias_race"
    del m[failed_name]
    m["my_method"] = dict(m["dropout"])  # an unknown method is appended after the paper's rows
    paths = R.write_benchmark_report(m, d, failed={failed_name: "CUDA out of memory | at step 3"})
    return m, paths, paths["md"].read_text(), paths["html"].read_text()


def test_every_method_is_a_row_of_every_table_in_the_papers_order(report):
    m, paths, md, _ = report
    titles = re.findall(r"^## (.+)$", md, flags=re.M)
    assert titles[:6] == ["Table 1: TruthfulQA and RealToxicityPrompts", "Table 2: MMLU-Pro, qualitative subjects (accuracy)",
                          "Table 8: MMLU-Pro, quantitative subjects (accuracy)", "Table 9: MMLU-Pro overall (accuracy)",
                          "Table 4: Reddit TL;DR summaries", "Table 5: generation patterns, rtp (% of outputs)"]
    labels = [R.METHOD_LABELS[n] for n in METHODS] + ["my_method"]
    for t in titles[:-1]:  # the last section is the plot
        rows = md_rows(md, t)
        assert [r for r in rows if r != "all methods"] == labels, t
    assert set(paths) == {"md", "html", "toxicity_vs_faithfulness"}


def test_deltas_and_marks_follow_each_metrics_direction(report):
    m, _, md, html = report
    t4 = md_rows(md, "Table 4: Reddit TL;DR summaries")
    # CDA (gender) (i=1): toxicity 0.29 vs 0.30 is lower -> better; faithfulness 0.19 vs 0.20 -> worse
    assert t4["CDA (gender)"] == ["0.290 ± 0.100 (↓0.010 ✓)", "0.190 ± 0.050 (↓0.010 ✗)"]
    assert t4["CDA (race)"][1] == "0.220 ± 0.050 (↑0.020 ✓)"
    assert t4["Base"] == ["0.300 ± 0.100", "0.200 ± 0.050"]
    t1 = md_rows(md, "Table 1: TruthfulQA and RealToxicityPrompts")
    # a higher RTP toxicity is worse; an unchanged MC1 has no mark
    assert t1["Dropout"] == ["0.360 (↓0.040 ✗)", "0.230 (0.000)", "0.014 (↑0.004 ✗)"]
    tax = md_rows(md, "Alignment-tax measures (SPEC §7b)")
    assert tax["Dropout"] == ["0.200 (0.000)", "34.00 (↑4.00 ✗)"]
    # html: the same judgement as colours
    assert "<td class=better>0.290 ± 0.100 (↓0.010 ✓)</td>" in html
    assert "<td class=worse>0.190 ± 0.050 (↓0.010 ✗)</td>" in html


def test_failed_methods_show_their_reason_in_every_table(report):
    _, _, md, html = report
    titles = re.findall(r"^## (Table .+|Alignment.+)$", md, flags=re.M)
    assert len(titles) == 8
    for t in titles:
        row = md_rows(md, t)["Sentence Debiasing (race)"]
        assert row[0] == "failed: CUDA out of memory \\| at step 3" and set(row[1:]) <= {"–"}, t
    assert html.count("class=failed>failed: CUDA out of memory | at step 3</td>") == 8


def test_html_is_self_contained(report):
    _, paths, _, html = report
    srcs = re.findall(r'src="([^"]*)"', html)
    assert len(srcs) == 1 and srcs[0].startswith("data:image/png;base64,")
    import base64

    assert base64.b64decode(srcs[0].split(",", 1)[1]) == paths["toxicity_vs_faithfulness"].read_bytes()
    assert "<link" not in html and "<script" not in html and "<style>" in html
    assert "toxicity_vs_faithfulness.png" in paths["md"].read_text()


def test_missing_values_are_na_and_have_no_delta(tmp_path):
    m = synthetic(3)
    del m["cda_gender"]["tldr_faithfulness"]
    m["cda_race"]["tldr_toxicity"] = math.nan
    m["base"].pop("rtp_toxicity")
    md = R.write_benchmark_report(m, tmp_path)["md"].read_text()
    t4 = md_rows(md, "Table 4: Reddit TL;DR summaries")
    assert t4["CDA (gender)"][1] == "n/a" and t4["CDA (race)"][0] == "n/a"
    t1 = md_rows(md, "Table 1: TruthfulQA and RealToxicityPrompts")
    assert t1["Base"][2] == "n/a" and t1["CDA (gender)"][2] == "0.011"  # no base value: no delta


def test_table7_shares_equal_a_hand_count(tmp_path):
    m = {"base": {"tldr_toxicity": 0.5, "rtp_toxicity": 0.1, "tldr_faithfulness": 0.2, "truthfulqa_mc1": 0.3,
                  "truthfulqa_rougeL_acc": 0.4, "mmlu_pro_law": 0.2, "mmlu_pro_overall": 0.2,
                  "patterns_rtp_empty": 1.0, "patterns_rtp_repetitive": 2.0, "general_ppl": 10.0},
         "a": {"tldr_toxicity": 0.4, "rtp_toxicity": 0.2, "tldr_faithfulness": 0.1, "truthfulqa_mc1": 0.3,
               "truthfulqa_rougeL_acc": 0.3, "mmlu_pro_law": 0.25, "mmlu_pro_overall": 0.1,
               "patterns_rtp_empty": 3.0, "patterns_rtp_repetitive": 1.0, "general_ppl": 11.0, "tldr_toxicity_std": 9.0},
         "b": {"tldr_toxicity": 0.6, "truthfulqa_mc1": 0.4}}
    # hand count for a: toxicity: tldr better, rtp worse -> 1/2; truthfulness: mc1 tie, rougeL_acc worse -> 1/2;
    # knowledge: law better (overall not counted) -> 0/1; summarization: faithfulness worse -> 1/1;
    # coherence: empty worse, repetitive better -> 1/2; tax: ppl worse -> 1/1; overall 5/9 (std not counted)
    # b: toxicity worse 1/1, mc1 better 0/1 -> overall 1/2
    deg = R.degradation(m)
    assert deg["a"] == {"toxicity": (1, 2), "truthfulness": (1, 2), "knowledge": (0, 1), "summarization": (1, 1),
                        "coherence": (1, 2), "tax": (1, 1), "overall": (5, 9)}
    assert deg["b"]["toxicity"] == (1, 1) and deg["b"]["truthfulness"] == (0, 1) and deg["b"]["overall"] == (1, 2)
    assert deg["b"]["knowledge"] == (0, 0)
    assert deg["all methods"]["overall"] == (6, 11) and deg["all methods"]["toxicity"] == (2, 3)
    md = R.write_benchmark_report(m, tmp_path)["md"].read_text()
    t7 = md_rows(md, "Table 7: share of metrics degraded vs. base, per family")
    assert t7["a"] == ["50.0% (1/2)", "50.0% (1/2)", "0.0% (0/1)", "100.0% (1/1)", "50.0% (1/2)", "100.0% (1/1)",
                       "55.6% (5/9)"]
    assert t7["b"][2] == "n/a" and t7["b"][-1] == "50.0% (1/2)" and t7["all methods"][-1] == "54.5% (6/11)"
    assert t7["Base"][0] == "reference (the base model)"


def test_bad_input_is_refused(tmp_path):
    with pytest.raises(ValueError, match="base.tldr"):
        R.write_benchmark_report({"base": {"tldr": {"toxicity": {"mean": 1}}}}, tmp_path)
    with pytest.raises(ValueError, match="both in metrics and in failed"):
        R.write_benchmark_report({"base": {}}, tmp_path, failed={"base": "x"})
    with pytest.raises(ValueError, match="unknown task 'id'"):
        R.flatten_metrics({"id": "gpt2", "metrics": {}})


def _row(task, item, output, tox=0.1, faith=None, ents=None, rl=None, loglik=None, prompt="Write one two three four",
         **payload):
    return {T.TASK: task, T.ITEM: item, T.KIND: "greedy", T.PROMPT: prompt, T.CONTINUATION: None, T.MAX_NEW: 8,
            T.TEMPERATURE: 1.0, T.TOP_P: 1.0, T.PAYLOAD: json.dumps(payload), T.OUTPUT: output, T.LOGLIK: loglik,
            T.TOXICITY: tox, T.FAITHFULNESS: faith, T.ENTITY_PRECISION: ents, T.ROUGE_L: rl}


def test_flatten_metrics_on_the_evaluate_stages_own_metrics():
    rows = [
        _row("tldr", "0", "Greg kept it.", tox=0.2, faith=0.5, ents=1.0, rl=40.0),
        _row("tldr", "1", "", tox=0.4, faith=0.0, ents=0.0, rl=0.0),
        _row("rtp", "a", "and then it went on and on.", tox=0.6, challenging=True),
        _row("rtp", "b", "I cannot", tox=0.2, challenging=False),
        _row("mmlu_pro", "1", "The answer is (A)", answer="A", category="computer science"),
        _row("mmlu_pro", "2", "The answer is (C)", answer="B", category="law"),
        _row("truthfulqa_gen", "0", "Nothing happens.", correct=["Nothing happens."], incorrect=["You die."]),
        _row("truthfulqa_mc1", "0/0", None, loglik=-1.0, question="0", choice=0),
        _row("truthfulqa_mc1", "0/1", None, loglik=-2.0, question="0", choice=1),
    ]
    nested = T.metrics(rows) | {"general_ppl": 31.5}
    flat = R.flatten_metrics(nested)
    tqa = {f"truthfulqa_{s}_{k}" for s in ("bleu", "rouge1", "rouge2", "rougeL") for k in ("max", "diff", "acc")}
    tldr = {f"tldr_{k}{s}" for k in ("toxicity", "faithfulness", "entity_precision", "rougeL") for s in ("", "_std")}
    pats = {f"patterns_{t}_{p}" for t in ("tldr", "truthfulqa_gen", "rtp", "mmlu_pro") for p in PATTERNS}
    assert set(flat) == tqa | tldr | pats | {
        "truthfulqa_mc1", "rtp_toxicity", "rtp_toxicity_std", "rtp_toxic_share", "rtp_challenging_toxicity",
        "rtp_challenging_toxicity_std", "mmlu_pro_overall", "mmlu_pro_extraction_failed", "mmlu_pro_law",
        "mmlu_pro_computer_science", "general_ppl"}
    # values checked against the rows themselves, not against the nested dict only
    assert flat["tldr_toxicity"] == pytest.approx(0.3) and flat["tldr_toxicity_std"] == pytest.approx(0.1)
    assert flat["tldr_faithfulness"] == pytest.approx(0.25) and flat["rtp_toxic_share"] == 0.5
    assert flat["rtp_challenging_toxicity"] == pytest.approx(0.6)
    assert (flat["mmlu_pro_computer_science"], flat["mmlu_pro_law"], flat["mmlu_pro_overall"]) == (1.0, 0.0, 0.5)
    assert flat["truthfulqa_mc1"] == 1.0 and flat["truthfulqa_rougeL_acc"] == 1.0 and flat["general_ppl"] == 31.5
    assert flat["patterns_tldr_empty"] == 50.0 and flat["patterns_rtp_abstention"] == 50.0
    # every flat key is described: no key lands in the direction-less "other" table
    assert all(R.metric_spec(k).table != "other" for k in flat)
    assert R.metric_spec("mmlu_pro_computer_science").table == "8" and R.metric_spec("mmlu_pro_law").table == "2"
    assert R.metric_spec("patterns_truthfulqa_gen_non_sequitur").table == "5:truthfulqa_gen"


# ---------------------------------------------------------------- plots


def _label_boxes(fig):
    """The rendered boxes of the point labels' text (an Annotation's own extent also covers its leader line)."""
    from matplotlib.text import Text

    fig.canvas.draw()
    return [Text.get_window_extent(a) for a in fig.axes[0].texts if a.get_text()]


def _overlapping(boxes):
    return [(i, j) for i, a in enumerate(boxes) for j, b in enumerate(boxes[i + 1:], i + 1)
            if a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1]


@pytest.mark.parametrize("case", ["nearly_equal", "identical", "spread"])
def test_scatter_labels_do_not_overlap_and_ticks_carry_no_offset(case):
    n = len(METHODS)
    if case == "nearly_equal":  # the smoke run's tiny models: differences of 1e-5
        x = [0.3451 + 1e-5 * (i % 4) for i in range(n)]
        y = [0.12 + 1e-5 * (i % 3) for i in range(n)]
    elif case == "identical":
        x, y = [0.5] * n, [0.5] * n
    else:
        x = [10 ** (-4 + 4 * i / n) for i in range(n)]
        y = [100.0 * (i % 5) for i in range(n)]
    x[4] = math.nan  # dropout has no value: named in the footnote, not drawn
    fig = plots.tradeoff_figure(METHODS, x, y, [0.1] * n, [0.05] * n, front=["base"], highlight=["base"], title=case)
    ax = fig.axes[0]
    fig.canvas.draw()
    assert ax.xaxis.get_offset_text().get_text() == "" and ax.yaxis.get_offset_text().get_text() == ""
    assert not plots.tick_labels_overlap(ax, "x") and not plots.tick_labels_overlap(ax, "y")
    ticks = [t.get_text() for t in ax.get_xticklabels() if t.get_text()]
    assert len(set(ticks)) == len(ticks) >= 2  # distinct: enough decimals for 1e-5 steps
    boxes = _label_boxes(fig)
    assert len(boxes) == n - 1
    assert _overlapping(boxes) == []
    frame = ax.get_window_extent()
    assert all(frame.x0 <= b.x0 and b.x1 <= frame.x1 and frame.y0 <= b.y0 and b.y1 <= frame.y1 for b in boxes)
    note = " ".join(t.get_text() for t in fig.texts)
    assert "Not drawn (no value): dropout." in note


def test_plain_formatter_writes_every_tick_in_full():
    f = plots.PlainFormatter()
    assert f.format_ticks([0.34510, 0.34512, 0.34514]) == ["0.34510", "0.34512", "0.34514"]
    assert f.format_ticks([0, 0.25, 0.5]) == ["0.00", "0.25", "0.50"]
    assert f.format_ticks([0, 2e-6, 4e-6]) == ["0.0e+00", "2.0e-06", "4.0e-06"]
    assert f.format_ticks([-0.0000001, 1]) == ["0", "1"]
    assert f.get_offset() == ""


def test_the_evaluate_and_sweep_plots_use_the_readable_helpers(tmp_path):
    from raydebias.evaluate.report import _plots
    from raydebias.storage import StoragePath
    from raydebias.sweep.results import pareto_front, pareto_plot

    def tl(t, f):
        return {"tldr": {"toxicity": {"mean": t, "std": 0.1}, "faithfulness": {"mean": f, "std": 0.2}}}

    models = {"base": {"metrics": tl(0.3451, 0.34512)}, "model": {"metrics": tl(0.34515, 0.34513)}}
    made = _plots(models, {"base": {"law": {"acc": 0.1}}, "model": {}}, tmp_path)
    assert [p.name for p in made] == ["toxicity_vs_faithfulness.png", "mmlu_pro_subjects.png"]
    rows = [{"trial_id": f"t{i}", "alpha": a, "tau": 1.0, "toxic_weight": 1.0, "toxicity": 0.3451 + 1e-5 * i,
             "faithfulness": 0.2 + 1e-5 * (i % 2), "toxicity_std": 0.01, "faithfulness_std": math.nan}
            for i, a in enumerate([1, 2, 4, 8, 16])]
    rows.append({"trial_id": "t5", "alpha": 32, "toxicity": math.nan, "faithfulness": math.nan})
    dest = pareto_plot(rows, pareto_front(rows), StoragePath.of(tmp_path / "pareto.png"))
    assert (tmp_path / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and dest is not None


def test_nearly_equal_values_get_the_decimals_that_tell_them_apart(tmp_path):
    m = {"base": {"tldr_toxicity": 0.34510, "tldr_faithfulness": 0.2}, "a": {"tldr_toxicity": 0.34512, "tldr_faithfulness": 0.2},
         "b": {"tldr_toxicity": 0.34515, "tldr_faithfulness": 0.2}}
    t4 = md_rows(R.write_benchmark_report(m, tmp_path)["md"].read_text(), "Table 4: Reddit TL;DR summaries")
    assert [t4[k][0] for k in ("Base", "a", "b")] == ["0.34510", "0.34512 (↑0.00002 ✗)", "0.34515 (↑0.00005 ✗)"]
    assert t4["a"][1] == "0.200 (0.000)"  # an equal column keeps the paper's 3 decimals
