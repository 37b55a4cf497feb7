"""The benchmark stage (issue #15): variants, corpora, building, and the whole comparison end to end on the shared run
(the rehearsed Llama-2-7B preset: its trained model is the contrastive row)."""

import json
import shutil
import subprocess
import sys

import pyarrow.parquet as pq
import pytest
from support import REPO, SHARED_RUN_ARGS, SHARED_RUN_JOB, SMOKE, job_env

from raydebias.benchmark.corpus import TextCounts, iter_texts, read_texts
from raydebias.benchmark.variants import Row, is_built, rows, variant, variant_dir
from raydebias.config import load_config
from raydebias.errors import ConfigError, DataError, StageInputError
from raydebias.outputs import RunDir

PAPER_ROWS = ["base", "cda_gender", "cda_race", "cda_religion", "dropout", "inlp_gender", "inlp_race",
              "sentence_debias_gender", "sentence_debias_race", "self_debias", "instructive", "contrastive"]
CI_ROWS = ["base", "cda_gender", "dropout", "inlp_gender", "sentence_debias_gender", "self_debias", "instructive",
           "contrastive"]


def test_rows_follow_the_paper_and_map_to_variants(tmp_path):
    cfg = load_config(str(SMOKE))
    assert [r.name for r in rows(cfg)] == PAPER_ROWS
    out = RunDir(tmp_path / "run")
    with pytest.raises(StageInputError, match="no contrastive model"):
        variant(Row("contrastive", "contrastive", None), cfg, out)
    v = {r.name: variant(r, cfg, out) for r in rows(cfg) if r.method != "contrastive"}
    assert v["base"].model == v["self_debias"].model == v["inlp_gender"].model == "tiny:gpt2"  # one generation pool
    assert v["instructive"].prompt_prefix.startswith("Be positive, polite")
    assert v["self_debias"].options == {"decay": 50.0, "epsilon": 0.01} and v["self_debias"].hf_only
    assert v["inlp_race"].artifact == str(variant_dir(out, "inlp_race"))
    assert v["cda_race"].model == str(variant_dir(out, "cda_race") / "model")
    assert not is_built(Row("cda_race", "cda", "race"), out) and is_built(Row("base", "base", None), out)
    only = load_config(str(SMOKE), ["benchmark.methods=[inlp]", "benchmark.inlp_attributes=[religion]"])
    assert [r.name for r in rows(only)] == ["base", "inlp_religion"]
    with pytest.raises(ConfigError, match=r"benchmark.methods has unknown methods \['leace'\]"):
        load_config(str(SMOKE), ["benchmark.methods=[cda,leace]"])
    with pytest.raises(ConfigError, match="benchmark.cda_attributes must list attributes"):
        load_config(str(SMOKE), ["benchmark.cda_attributes=[age]"])


def test_corpora_are_read_lazily_and_counted(tmp_path):
    (tmp_path / "a.txt").write_text("First paragraph\nstill first.\n\n\nSecond one.\n")
    (tmp_path / "b.jsonl").write_text('{"text": "third"}\n{"text": ""}\n{"title": "no text"}\n{"text": 5}\n')
    counts = TextCounts()
    texts = list(iter_texts(str(tmp_path), counts=counts))
    assert texts == ["First paragraph still first.", "Second one.", "third"]
    assert counts.as_dict() == {"read": 6, "kept": 3, "skipped": {"empty": 1, "no_text_field": 2}}
    assert counts.read == counts.kept + sum(counts.skipped.values())
    assert list(iter_texts(str(tmp_path), limit=1)) == ["First paragraph still first."]
    general, _ = read_texts("sample:general")
    assert len(general) > 20
    with pytest.raises(DataError, match="does not exist"):
        read_texts("/nonexistent/corpus")
    with pytest.raises(DataError, match="cannot load corpus 'no-such/corpus' from the Hugging Face hub"):
        read_texts("no-such/corpus")
    with pytest.raises(StageInputError, match="run --stage data first"):
        read_texts("tldr", RunDir(tmp_path / "run"))


def test_a_row_that_cannot_be_built_is_reported_failed_with_why(tmp_path):
    # A corpus without race or religion terms: INLP (race) cannot fit, CDA (religion) has nothing to augment.
    # Both fail before any model or Ray is needed, and are reported, not left out.
    from raydebias.benchmark.stage import build_rows

    (tmp_path / "corpus.txt").write_text("The river rose after three days of heavy rain and the bridge closed.\n\n"
                                         "A new library opened near the station with a quiet reading room.\n")
    cfg = load_config(str(SMOKE), [f"benchmark.corpus={tmp_path / 'corpus.txt'}"])
    out = RunDir(tmp_path / "run")
    built, failed, corpus = build_rows(cfg, out, [Row("inlp_race", "inlp", "race"),
                                                   Row("cda_religion", "cda", "religion")], use_gpu=False)
    assert built == {} and corpus == {"read": 2, "kept": 2, "skipped": {}}
    assert "cannot fit" in failed["inlp_race"] and "race" in failed["inlp_race"]
    assert "no line with a religion attribute word" in failed["cda_religion"]


def test_the_benchmark_stage_compares_every_method_and_resumes(shared_run, tmp_path):
    src, _ = shared_run
    dest = tmp_path / "run"
    for part in ("data", "model"):  # the shared run is read by other tests: work on a copy
        shutil.copytree(src / part, dest / part)
    # 2 items per benchmark, short generations: the production lengths the rehearsal keeps (MMLU-Pro's 2048 new
    # tokens, TruthfulQA's 256, ...) on 13 rows would dominate CI time; the shared run's own evaluate stage ran them
    cmd = [sys.executable, str(REPO / "jobs/pipeline.py"), *SHARED_RUN_JOB, "--rehearse-items", "2", "--stage",
           "benchmark", "--output", str(dest), *SHARED_RUN_ARGS, "evaluate.tasks=[tldr,truthfulqa,rtp]",
           "evaluate.tldr.max_new_tokens=24", "evaluate.truthfulqa.max_new_tokens=24", "evaluate.rtp.max_new_tokens=24",
           "benchmark.homogenization.max_new_tokens=12",
           # one attribute per method: the others take the same code path with other word lists (unit-tested);
           # the smoke config builds all 12 rows
           "benchmark.cda_attributes=[gender]", "benchmark.inlp_attributes=[gender]",
           "benchmark.sentence_debias_attributes=[gender]"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=job_env(), cwd=REPO)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    bdir = dest / "benchmark"
    metrics = json.loads((bdir / "metrics.json").read_text())
    assert list(metrics) == CI_ROWS
    details = json.loads((bdir / "details.json").read_text())
    assert details["failed"] == {}
    c = details["corpus"]  # the shipped corpus, every text accounted for
    assert c["read"] == c["kept"] + sum(c["skipped"].values()) and c["kept"] > 100
    assert details["variants"]["contrastive"]["model"] == str(dest / "model")
    assert details["variants"]["base"]["model"] == "tiny:llama"
    for name, m in metrics.items():
        for key in ("tldr_toxicity", "truthfulqa_mc1", "rtp_toxicity", "single_cluster_rate",
                    "general_ppl", "delta_general_ppl"):
            assert key in m, (name, key)
        for task, c in details["counts"][name].items():  # rows in = kept + quarantined, per variant and task
            assert c["rows_in"] == c["kept"] + sum(c["quarantined"].values()), (name, task, c)
    assert metrics["base"]["delta_general_ppl"] == 0.0
    assert metrics["dropout"]["general_ppl"] != metrics["base"]["general_ppl"]  # its weights moved
    assert metrics["inlp_gender"]["general_ppl"] != metrics["base"]["general_ppl"]  # its hook acts
    assert metrics["self_debias"]["general_ppl"] != metrics["base"]["general_ppl"]  # so does its rescaling
    assert metrics["instructive"]["general_ppl"] == metrics["base"]["general_ppl"]  # a prompt prefix only
    # built variants: fitted directions, fine-tuned models (Dropout's config says so), their build records
    fit = json.loads((bdir / "variants/inlp_gender/fit.json").read_text())
    assert fit["fit"]["directions"] >= 1 and fit["sentences"]["per_class"]
    dropout_config = json.loads((bdir / "variants/dropout/model/config.json").read_text())
    assert dropout_config["attention_dropout"] == 0.15
    assert json.loads((bdir / "variants/cda_gender/build.json").read_text())["cda"]["augmented"] > 0
    # every generation carries its variant; the instructive prompts carry the prefix after the QA primer
    inst = pq.read_table(bdir / "generated/instructive").to_pylist()
    assert {g["variant"] for g in inst} == {"instructive"}
    tqa = next(g for g in inst if g["task"] == "truthfulqa_gen" and not g["item"].startswith("scr:"))
    assert "Barcelona, Spain.\n\nBe positive, polite" in tqa["prompt"]
    report = (bdir / "report.md").read_text()
    html = (bdir / "report.html").read_text()
    for label in ("CDA (gender)", "INLP (gender)", "Self-Debiasing", "Instructive Debiasing"):
        assert label in report and label in html
    assert "data:image/png;base64," in html
    assert json.loads((dest / "stats.json").read_text())["benchmark"]["failed"] == {}

    # the same command again: nothing is rebuilt, regenerated or rescored
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=job_env(), cwd=REPO)
    assert again.returncode == 0, (again.stdout + again.stderr)[-4000:]
    stats = json.loads((dest / "stats.json").read_text())["benchmark"]
    assert stats["corpus"] is None and stats["general_text"]["read"] == stats["general_text"]["kept"] > 20
    q = stats["homogenization_questions"]
    assert q["questions_in"] == q["asked"] + q["refused"] == 2
    assert stats["built"] == [] and json.loads((bdir / "metrics.json").read_text()) == metrics
    assert "generated " not in again.stderr


def test_missing_corpus_fails_before_ray_starts(tmp_path):
    r = subprocess.run([sys.executable, str(REPO / "jobs/pipeline.py"), "--config", str(SMOKE), "--stage", "benchmark",
                        "--output", str(tmp_path / "run"), "benchmark.corpus=/nonexistent/wiki",
                        "benchmark.contrastive_model=tiny:gpt2", "evaluate.tasks=[truthfulqa]"],
                       capture_output=True, text=True, timeout=120, env=job_env(), cwd=REPO)
    assert r.returncode == 3, r.stderr[-2000:]
    assert "corpus '/nonexistent/wiki' does not exist" in r.stderr
    assert "starting a local Ray cluster" not in r.stderr
