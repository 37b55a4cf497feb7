"""The whole job end to end, on the shared run (conftest.shared_run): the Llama-2-7B paper preset rehearsed
(`--rehearse`) with --stage all, which streams augmentation into 2 FSDP2 workers on CPU (gloo), writes
sharded checkpoints and a loadable model, and ends with the evaluation report of the trained model against
its base; a run whose worker is killed restarts from its last checkpoint, and a second job run resumes it and
keeps learning."""

import json
import os
import subprocess
import sys

import pyarrow.parquet as pq
import pytest
import torch
from support import REPO, SHARED_RUN_JOB, SMOKE, checkpoint_registered
from support import SHARED_RUN_ARGS as COMMON
from support import SHARED_RUN_ROWS as ROWS


def _job(args, timeout=900):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("RAY_ADDRESS", None)
    return subprocess.run([sys.executable, str(REPO / "jobs/pipeline.py"), *args], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=REPO)


def _history(out):
    return [json.loads(line) for line in (out / "train/history.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def run(shared_run):
    return shared_run


def test_the_preset_rehearses_stage_all(run):
    """The preset that changes the most on the way to a GPU: LlamaForCausalLM with a BOS-adding SentencePiece
    tokenizer, fp16 -> bf16 mixed precision, Table 12 caps 2/3, max length 340, activation checkpointing,
    8 -> 2 FSDP2 workers; data -> augmentation streamed into training -> every benchmark."""
    out, r = run
    stages = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
    assert [s["stage"] for s in stages] == ["data", "augment+train", "evaluate"], stages
    text = (out / "rehearsal.md").read_text()
    assert "| train.model | meta-llama/Llama-2-7b-hf | tiny:llama |" in text and "| train.num_workers | 8 | 2 |" in text
    assert "| train.max_length |" not in text and "| train.precision |" not in text  # kept
    train = json.loads((out / "stats.json").read_text())["train"]
    assert train["precision"] == "bf16" and train["world_size"] == 2
    lm = __import__("transformers").AutoModelForCausalLM.from_pretrained(out / "model")
    assert type(lm).__name__ == "LlamaForCausalLM" and lm.dtype == torch.bfloat16
    counts = json.loads((out / "stats.json").read_text())["evaluate"]["counts"]
    assert set(counts) == {"model", "base"}
    for model in counts.values():  # every benchmark ran on the slice; Llama's 4096 positions need no clamp
        assert {"tldr", "truthfulqa_gen", "truthfulqa_mc1", "rtp", "mmlu_pro"} <= set(model)
        assert all(c["rows_in"] == 3 for c in model.values())  # --rehearse-items 3 (support.SHARED_RUN_JOB)


def test_stage_all_streams_augmentation_into_fsdp2_training(run):
    out, r = run
    assert "streamed from augmentation" in r.stderr
    stats = json.loads((out / "stats.json").read_text())
    aug, train = stats["augment"], stats["train"]
    assert aug["rows_in"] == aug["rows_out"] == ROWS  # the stream wrote every row, exactly once
    ids = pq.read_table(out / "augmented", columns=["id"]).column("id").to_pylist()
    assert sorted(ids) == sorted(set(ids)) and len(ids) == ROWS
    assert train["streamed"] is True and train["epochs"] == 2 and train["groups"] == ROWS
    hist = _history(out)
    steps = [h for h in hist if not h.get("epoch_done")]
    assert [h["step"] for h in steps] == list(range(1, train["steps"] + 1))
    for h in steps:
        assert h["l_ce"] > 0 and h["l_cl"] > 0 and h["tokens_per_s"] > 0
        assert h["loss"] == pytest.approx(h["l_ce"] + 4.0 * h["l_cl"], rel=1e-4)  # alpha = 4; w_tox folded in l_cl
    epochs = [h for h in hist if h.get("epoch_done")]
    assert [e["epoch"] for e in epochs] == [0, 1]
    # one checkpoint per epoch, the latest holding everything a resume needs
    ckpts = sorted((out / "train/run").glob("step-*"))
    assert len(ckpts) == 2
    meta = json.loads((ckpts[-1] / "meta.json").read_text())
    assert meta["epoch"] == 1 and meta["epoch_done"] and meta["step"] == train["steps"]
    assert len(meta["consumed"]) == ROWS  # every group of the epoch, from both ranks
    # sharded (torch.distributed.checkpoint): both ranks' shards merged by Ray into one directory, no full copy
    names = {p.name for p in ckpts[-1].iterdir()}
    assert {".metadata", "__0_0.distcp", "__1_0.distcp", "trainer_state.pt", "meta.json"} <= names
    assert not any(n.endswith(".safetensors") for n in names)
    # each of the 2 ranks holds about half of the parameters and of the AdamW state (FSDP2 pads dim 0)
    assert train["world_size"] == 2 and [m["rank"] for m in train["memory"]] == [0, 1]
    for m in train["memory"]:
        assert 0.45 < m["param_shard_bytes"] / m["full_param_bytes"] < 0.55
        assert 1.8 < m["optim_shard_bytes"] / m["param_shard_bytes"] < 2.2  # exp_avg + exp_avg_sq (+ steps)


def test_stage_all_ends_with_the_report_comparing_trained_and_base(run):
    out, _ = run
    m = json.loads((out / "eval/metrics.json").read_text())
    assert set(m["models"]) == {"model", "base"}
    assert m["models"]["model"]["id"] == str(out / "model") and m["models"]["base"]["id"] == "tiny:llama"
    for name in ("model", "base"):
        got = m["models"][name]["metrics"]
        assert set(got) >= {"tldr", "truthfulqa_gen", "truthfulqa_mc1", "rtp", "mmlu_pro", "patterns"}
    report = (out / "eval/report.md").read_text()
    assert "Δ model − base" in report and "TL;DR Faithfulness" in report and "MMLU-Pro acc" in report
    assert (out / "eval/toxicity_vs_faithfulness.png").stat().st_size > 1000
    assert (out / "eval/mmlu_pro_subjects.png").stat().st_size > 1000


def test_final_model_loads_with_auto_model_and_differs_from_the_base(run):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from raydebias.models import resolve_model
    from raydebias.train.model import load_head

    out, _ = run
    trained = AutoModelForCausalLM.from_pretrained(out / "model")
    base = AutoModelForCausalLM.from_pretrained(resolve_model("tiny:llama"))
    tok = AutoTokenizer.from_pretrained(out / "model")
    changed = [k for k, v in trained.state_dict().items() if not torch.equal(v.float(), base.state_dict()[k])]
    assert changed, "training did not change any weight"
    ids = tok("TL;DR:", return_tensors="pt").input_ids
    assert trained.generate(ids, max_new_tokens=3, do_sample=False).shape[1] == ids.shape[1] + 3
    head = load_head(out / "model")
    assert head.fc2.out_features == 128


def test_resume_with_other_settings_is_refused(run):
    out, _ = run
    r = _job([*SHARED_RUN_JOB, "--stage", "train", "--output", str(out), *COMMON, "train.alpha=8"],
             timeout=300)
    assert r.returncode == 2
    assert "train.alpha" in r.stderr and "new --output" in r.stderr and "Traceback" not in r.stderr


def _descendants_named(pid, marker):
    import psutil

    found = []
    for p in psutil.Process(pid).children(recursive=True):
        try:
            if marker in " ".join(p.cmdline()):
                found.append(p)
        except psutil.Error:
            pass
    return found


def test_a_killed_worker_is_restarted_from_the_last_checkpoint(run, tmp_path):
    """SIGKILL one Ray Train worker mid-run: FailureConfig restarts the group from the latest checkpoint;
    no step is repeated or lost and every epoch trains on every group exactly once."""
    import shutil
    import signal
    import time

    src, _ = run
    out = tmp_path / "killed"
    out.mkdir()
    shutil.copytree(src / "data", out / "data")
    shutil.copytree(src / "augmented", out / "augmented")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("RAY_ADDRESS", None)
    args = [sys.executable, str(REPO / "jobs/pipeline.py"), "--config", str(SMOKE), "--stage", "train",
            "--output", str(out), *COMMON, "train.epochs=3", "train.checkpoint_every_steps=1"]
    with open(tmp_path / "stderr.txt", "w") as err:
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=err, text=True, env=env, cwd=REPO)
        try:
            deadline = time.time() + 600
            # Kill once Ray Train has REGISTERED step 2's checkpoint (its controller's snapshot lists it):
            # a directory in storage may still lack the other rank's shards, or be unregistered when the
            # worker dies, and a restart then begins from an older checkpoint or from scratch.
            while not checkpoint_registered(out / "train/run", "step-0000002-"):
                assert proc.poll() is None, (tmp_path / "stderr.txt").read_text()[-4000:]
                assert time.time() < deadline, "no checkpoint within 10 minutes"
                time.sleep(0.5)
            workers = _descendants_named(proc.pid, "RayTrainWorker")
            assert workers, "no Ray Train worker process found"
            workers[-1].send_signal(signal.SIGKILL)
            proc.wait(timeout=900)
        finally:
            if proc.poll() is None:
                proc.kill()
    stderr = (tmp_path / "stderr.txt").read_text()
    assert proc.returncode == 0, stderr[-4000:]
    # the restarted worker group resumed once, from the latest registered checkpoint (step 2 or later)
    resumes = json.loads((out / "stats.json").read_text())["train"]["resumes"]
    assert len(resumes) == 1 and resumes[0]["step"] >= 2 and resumes[0]["world_size"] == 2, resumes
    hist = _history(out)
    steps = [h["step"] for h in hist if not h.get("epoch_done")]
    assert steps == list(range(1, len(steps) + 1))  # contiguous: nothing repeated, nothing skipped
    epochs = [h for h in hist if h.get("epoch_done")]
    assert [e["epoch"] for e in epochs] == [0, 1, 2]
    assert all(e["groups_done"] == ROWS for e in epochs)

    # A new job run with more epochs resumes the last checkpoint (one job run instead of a second training from
    # scratch: CI time): the step count continues, the history up to it is kept, and training keeps learning.
    before, last_step = hist, max(h["step"] for h in hist)
    r = _job(["--config", str(SMOKE), "--stage", "train", "--output", str(out), *COMMON, "train.epochs=5",
              "train.checkpoint_every_steps=1"])
    assert r.returncode == 0, r.stderr[-4000:]
    train = json.loads((out / "stats.json").read_text())["train"]
    assert train["resumed_from_step"] == last_step
    assert [(x["step"], x["epoch_done"], x["groups_done"]) for x in train["resumes"][1:]] == [(last_step, True, ROWS)]
    hist = _history(out)
    assert hist[: len(before)] == before  # the history up to the checkpoint is kept, not redone
    new = [h for h in hist[len(before):] if not h.get("epoch_done")]
    assert new[0]["step"] == last_step + 1 and new[0]["epoch"] == 3
    epochs = [h for h in hist if h.get("epoch_done")]
    assert [e["epoch"] for e in epochs] == list(range(5))
    # The same 8 groups every epoch: the loss falls and positives win more often against negatives. Per-step
    # values (each step is in the history once): an epoch record of the killed run covers only its attempt.
    steps = [h for h in hist if not h.get("epoch_done")]

    def mean(key, epoch):
        vals = [h[key] for h in steps if h["epoch"] == epoch and h[key] == h[key]]  # NaN: no pair in that batch
        return sum(vals) / len(vals)

    assert mean("loss", 4) < mean("loss", 0)
    assert mean("contrastive_accuracy", 4) > mean("contrastive_accuracy", 0)
