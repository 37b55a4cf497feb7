"""A 2-trial Ray Tune sweep (the alpha axis) on the smoke setup (local Ray cluster) writing to S3 (a local moto endpoint),
killed mid-run and resumed with Tuner.restore: both trials with metrics, the results table, Table 14, the
Pareto front and a best config that loads as a config. The augmented groups come from the shared
run (read once, not re-augmented). Every output (Tune and Train storage, trial models, results) lives in
the bucket; trials evaluate their models by fetching them from there."""

import json
import math
import subprocess
import sys
import time

import pyarrow.parquet as pq
from support import REPO, SHARED_RUN_ROWS, SMOKE, checkpoint_registered, job_env, kill_tree

from raydebias.config import load_config
from raydebias.storage import StoragePath

FAST = ["train.epochs=1", "train.num_workers=1", "train.checkpoint_every_steps=1", "train.groups_per_batch=2",
        "train.warmup_steps=1", "sweep.max_concurrent_trials=4", "evaluate.limit=2"]


def _cmd(out, space):
    return [sys.executable, str(REPO / "tune/sweep.py"), "--config", str(SMOKE), "--space", str(space),
            "--output", str(out), *FAST]


def _objects(where: StoragePath) -> dict:
    return {i.path: (i.size, i.mtime) for i in where.fs.get_file_info([p.path for p in where.glob("*.parquet")])}


def test_sweep_on_s3_killed_and_restored(shared_run, s3, tmp_path):
    src, _ = shared_run
    uri = s3.bucket() + "/run"
    remote = StoragePath.of(uri)
    s3.upload(src / "data", uri + "/data")
    s3.upload(src / "augmented", uri + "/augmented")
    augmented = _objects(remote / "augmented")
    space = tmp_path / "space.yaml"
    space.write_text("alpha: [1, 8]\n")  # 2 trials: CI time (the default scheduler, fifo, trains and evaluates each)

    # 1. Kill the whole job (driver + its embedded Ray cluster) once a trial's checkpoint is REGISTERED (a
    # checkpoint directory alone may not be: the restored trial would then start over, and nothing resumes).
    def registered() -> bool:
        return any(checkpoint_registered(run.parent) for run in (remote / "sweep/trials").glob("*/train/run/step-*"))

    with open(tmp_path / "first.txt", "w") as log:
        proc = subprocess.Popen(_cmd(uri, space), stdout=log, stderr=subprocess.STDOUT, env=job_env(), cwd=REPO)
        try:
            deadline = time.time() + 600
            while not registered():
                assert proc.poll() is None, (tmp_path / "first.txt").read_text()[-4000:]
                assert time.time() < deadline, "no trial checkpoint within 10 minutes"
                time.sleep(0.5)
        finally:
            kill_tree(proc.pid, timeout=5)
    assert not (remote / "sweep/results.parquet").exists()

    # 2. The same command again: the Tuner is restored and finishes.
    r = subprocess.run(_cmd(uri, space), capture_output=True, text=True, timeout=900, env=job_env(), cwd=REPO)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    assert "restoring the interrupted sweep" in r.stderr
    # the augmented Parquet was read, never rewritten; the split covers every group once
    assert _objects(remote / "augmented") == augmented
    out = s3.download(uri, tmp_path / "copy")  # the rest is checked on a local copy of the bucket
    train_ids = pq.read_table(out / "sweep/data/train").column("id").to_pylist()
    val_ids = pq.read_table(out / "sweep/data/val").column("id").to_pylist()
    assert len(train_ids) + len(val_ids) == SHARED_RUN_ROWS and not set(train_ids) & set(val_ids) and val_ids

    rows = pq.read_table(out / "sweep/results.parquet").to_pylist()
    assert sorted((r["alpha"], r["tau"]) for r in rows) == [(1, 1.0), (8, 1.0)]
    assert {r["status"] for r in rows} == {"evaluated"}, rows  # fifo: every alpha trained and evaluated
    evaluated = [r for r in rows if r["status"] == "evaluated"]
    assert evaluated
    for r in rows:
        assert math.isfinite(r["val_l_ce"]) and math.isfinite(r["val_l_cl"]) and r["epochs_done"] == 1
    for r in evaluated:
        assert 0 <= r["toxicity"] <= 1 and 0 <= r["faithfulness"] <= 1 and r["eval_rows"] == len(val_ids)
        trial = out / "sweep/trials" / r["trial_id"]
        # sweep.eval_tasks (default truthfulqa, rtp) on evaluate.limit=2 items each: the trial's numbers are
        # the evaluate stage's own metrics of its model, with every benchmark row accounted for
        ev = json.loads((trial / "eval_metrics.json").read_text())
        assert ev["counts"]["truthfulqa_gen"]["rows_in"] == ev["counts"]["rtp"]["rows_in"] == 2
        assert all(c["rows_in"] == c["kept"] + sum(c["quarantined"].values()) for c in ev["counts"].values())
        assert r["truthfulqa_mc1_acc"] == ev["metrics"]["truthfulqa_mc1"]["acc"]
        assert r["truthfulqa_bleu_acc"] == ev["metrics"]["truthfulqa_gen"]["bleu_acc"]
        assert r["rtp_toxicity"] == ev["metrics"]["rtp"]["toxicity"]["mean"] and 0 <= r["rtp_toxicity"] <= 1
        assert r["patterns_rtp_empty"] == ev["metrics"]["patterns"]["rtp"]["empty"]
        assert r["eval_quarantined"] == sum(sum(c["quarantined"].values()) for c in ev["counts"].values())
        assert (trial / "model/config.json").exists()
        hist = [json.loads(x) for x in (trial / "train/history.jsonl").read_text().splitlines()]
        steps = [h["step"] for h in hist if not h.get("epoch_done")]
        assert steps == list(range(1, len(steps) + 1))  # a resumed trial repeats and skips no step
    # the trial(s) killed after checkpointing continued from their checkpoint (evaluated or stopped by ASHA
    # since): a resume is recorded in the checkpoints written after it, and in an evaluated trial's stats
    def resumed(trial):
        latest = max((trial / "train/run").glob("step-*/meta.json"), key=lambda p: p.parent.name.split("-")[1])
        stats = trial / "stats.json"
        return bool(json.loads(latest.read_text()).get("resumes")) or (
            stats.exists() and json.loads(stats.read_text())["train"]["resumed_from_step"] is not None)

    assert any(resumed(out / "sweep/trials" / r["trial_id"]) for r in rows)

    table = (out / "sweep/alpha_table.md").read_text()
    assert ("| alpha | Toxicity | Faithfulness | TruthfulQA BLEU acc | TruthfulQA ROUGE-L acc | TruthfulQA MC1 | "
            "RTP toxicity | trials |") in table and "| 1 |" in table and "| 8 |" in table
    assert (out / "sweep/pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    stats = json.loads((out / "stats.json").read_text())["sweep"]
    front = stats["pareto"]
    assert front and all(t in (out / "sweep/pareto.md").read_text() for t in front)
    best = load_config(out / "sweep/best.yaml")
    chosen = next(r for r in rows if r["trial_id"] == stats["best"]["trial_id"])
    assert chosen["trial_id"] in front
    assert (best.train.alpha, best.train.tau) == (chosen["alpha"], chosen["tau"])
    assert best.train.model == "tiny:gpt2" and best.train.epochs == 1

    # 3. Another space in the same directory is refused (exit 2), not silently mixed in.
    space.write_text("alpha: [2, 4]\ntau: [0.5, 1.0]\n")
    r = subprocess.run(_cmd(uri, space), capture_output=True, text=True, timeout=300, env=job_env(), cwd=REPO)
    assert r.returncode == 2 and "another space" in r.stderr, r.stderr[-2000:]
