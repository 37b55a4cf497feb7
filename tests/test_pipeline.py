"""The job end to end: `jobs/pipeline.py --stage data` locally, and through `ray job submit`."""

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from support import free_ports, kill_tree

from raydebias import schema as S

REPO = Path(__file__).resolve().parents[1]
JOB = REPO / "jobs" / "pipeline.py"
SMOKE = REPO / "jobs" / "configs" / "smoke.yaml"
BIN = Path(sys.executable).parent


def _env(**extra):
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env.pop("RAY_ADDRESS", None)
    env.update(extra)
    return env


def _run_job(args, timeout=300, **env):
    return subprocess.run([sys.executable, str(JOB), *args], capture_output=True, text=True, timeout=timeout,
                          env=_env(**env), cwd=REPO)


def _read_dir(path: Path):
    return pq.read_table(path)


def _check_outputs(out: Path, rows_train: int, rows_eval: int, quarantined: dict):
    stats = json.loads((out / "stats.json").read_text())["data"]
    train, ev = stats["train"], stats["eval"]
    assert (train["rows_in"], train["kept"], train["quarantined"]) == (
        rows_train, rows_train - sum(quarantined.values()), sum(quarantined.values()))
    assert train["quarantined_by_reason"] == quarantined
    assert (ev["rows_in"], ev["kept"], ev["quarantined"]) == (rows_eval, rows_eval, 0)
    sources = _read_dir(out / "data" / "sources")
    assert sources.schema.equals(S.SOURCE_SCHEMA, check_metadata=False)
    assert sources.num_rows == train["kept"]
    assert len(set(sources.column("id").to_pylist())) == sources.num_rows
    assert _read_dir(out / "data" / "eval").num_rows == ev["kept"]
    q = _read_dir(out / "quarantine" / "data")
    assert q.schema.equals(S.QUARANTINE_SCHEMA, check_metadata=False)
    assert q.num_rows == train["quarantined"] + ev["quarantined"]
    assert sorted(q.column("reason").to_pylist()) == sorted(r for r, n in quarantined.items() for _ in range(n))
    assert (out / "config.yaml").exists()
    return sources, q


def test_data_stage_end_to_end_on_sample_plus_dirty_rows(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(REPO / "raydebias" / "samples" / "tldr" / "train", src)
    with open(src / "dirty.jsonl", "wb") as f:
        f.write(b'{"post": "a fine post about Denver", "summary": "fine summary", "id": "ok1"}\n')
        f.write(b"{not json\n")
        f.write(b'{"post": "bad \xfe\xff bytes", "summary": "s", "id": "bad1"}\n')
        f.write(b'{"post": "", "summary": "s", "id": "e1"}\n')
        f.write(b'{"post": "a fine post about Denver", "summary": "fine summary", "id": "ok1"}\n')
    out = tmp_path / "run"
    r = _run_job(["--config", str(SMOKE), "--stage", "data", "--output", str(out), f"data.source={src}"])
    assert r.returncode == 0, r.stderr[-3000:]
    assert '"stage": "data"' in r.stdout
    sources, q = _check_outputs(out, 105, 20, {"duplicate_id": 1, "empty_field": 1, "invalid_json": 1,
                                               "invalid_unicode": 1})
    assert "ok1" in sources.column("id").to_pylist()
    stats = json.loads((out / "stats.json").read_text())["data"]["train"]
    assert stats["files"][str(src / "dirty.jsonl")] == {"layout": "plain", "rows_in": 5, "kept": 1, "quarantined": 4}
    assert sum(f["rows_in"] for f in stats["files"].values()) == 105

    # A re-run into the same directory replaces the outputs instead of appending to them.
    r = _run_job(["--config", str(SMOKE), "--stage", "data", "--output", str(out), f"data.source={src}"])
    assert r.returncode == 0, r.stderr[-3000:]
    _check_outputs(out, 105, 20, {"duplicate_id": 1, "empty_field": 1, "invalid_json": 1, "invalid_unicode": 1})


def test_evaluate_without_a_trained_model_fails_clearly(tmp_path):
    r = _run_job(["--config", str(SMOKE), "--stage", "evaluate", "--output", str(tmp_path)], timeout=120)
    assert r.returncode == 2
    assert "no trained model" in r.stderr and "model=PATH_OR_ID" in r.stderr and "Traceback" not in r.stderr


def test_bad_config_and_bad_source_exit_codes(tmp_path):
    r = _run_job(["--config", str(SMOKE), "--stage", "data", "--output", str(tmp_path), "train.alhpa=2"], timeout=60)
    assert r.returncode == 2 and "train.alhpa" in r.stderr and "Traceback" not in r.stderr
    r = _run_job(["--config", str(SMOKE), "--stage", "data", "--output", str(tmp_path),
                  f"data.source={tmp_path / 'nope.jsonl'}"], timeout=120)
    assert r.returncode == 3 and "nope.jsonl" in r.stderr and "does not exist" in r.stderr
    assert "Traceback" not in r.stderr
    r = _run_job(["--stage", "data", "--output", str(tmp_path), "data.eval_source=null"], timeout=120,
                 HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    assert r.returncode == 3 and "CarperAI/openai_summarize_tldr" in r.stderr and "Traceback" not in r.stderr


def test_help_config_lists_every_key():
    r = _run_job(["--help-config"], timeout=60)
    assert r.returncode == 0
    assert "train.alpha (float, default 4.0)" in r.stdout and "augment.toxic_rewrite.top_p" in r.stdout


# --- ray job submit against a `ray start --head` cluster started (and stopped) by the test ----------


@pytest.fixture
def ray_head(tmp_path, s3):
    # The cluster's processes (and so the jobs it runs) see the S3 endpoint and credentials in their
    # environment, as a real cluster's nodes get them from their instance profile.
    # Token auth: once ~/.ray/auth_token exists, `ray start` turns it on and clients need
    # RAY_AUTH_MODE=token (ENV.md). Say so explicitly on both sides instead of depending on the home dir.
    env = _env(RAY_AUTH_MODE="token")
    # Every listener on its own free port: fixed defaults (e.g. the dashboard agent's 52365) collide
    # with any other Ray instance on the machine, such as this session's in-process cluster.
    flags = ("port", "dashboard-port", "dashboard-agent-listen-port", "dashboard-agent-grpc-port", "metrics-export-port",
             "runtime-env-agent-port", "node-manager-port", "object-manager-port", "ray-client-server-port")
    ports = dict(zip(flags, free_ports(len(flags)), strict=True))
    dash = ports["dashboard-port"]
    log = open(tmp_path / "ray-start.log", "w")
    proc = subprocess.Popen(
        ["ray", "start", "--head", "--block", "--num-cpus=2", *(f"--{k}={v}" for k, v in ports.items()),
         "--include-dashboard=true", "--dashboard-host=127.0.0.1", "--disable-usage-stats"],
        env=env, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path,
    )
    address = f"http://127.0.0.1:{dash}"
    try:
        deadline = time.time() + 180
        while True:
            try:
                urllib.request.urlopen(f"{address}/api/version", timeout=2)
                break
            except urllib.error.HTTPError:  # 401 without a token: the dashboard is up
                break
            except (urllib.error.URLError, OSError):
                if proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError(f"ray start failed:\n{(tmp_path / 'ray-start.log').read_text()[-3000:]}") from None
                time.sleep(1)
        yield address, env
    finally:
        kill_tree(proc.pid)
        log.close()


@pytest.mark.cluster
def test_ray_job_submit_runs_the_data_stage_from_and_into_s3(ray_head, s3, tmp_path):
    address, env = ray_head
    bucket = s3.bucket()
    s3.upload(REPO / "raydebias/samples/tldr", bucket + "/tldr")
    out = bucket + "/submitted"
    cmd = ["ray", "job", "submit", "--address", address, "--working-dir", str(REPO), "--",
           "python", "jobs/pipeline.py", "--config", "jobs/configs/smoke.yaml", "--stage", "data", "--output", out,
           f"data.source={bucket}/tldr/train", f"data.eval_source={bucket}/tldr/heldout"]
    deadline = time.time() + 180
    while True:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=420, env=env, cwd=REPO)
        # The dashboard answers before the raylet's job agent is up (slower on a loaded machine):
        # that one error means "not ready yet", nothing was submitted, and retrying is safe.
        if r.returncode == 0 or "No available agent" not in r.stderr or time.time() > deadline:
            break
        time.sleep(3)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    assert "succeeded" in (r.stdout + r.stderr)
    assert "joining Ray cluster" in r.stdout + r.stderr  # the job joined the submitted cluster
    local = s3.download(out, tmp_path / "copy")
    assert all((local / d / "_SUCCESS").exists() for d in ("data/sources", "data/eval", "quarantine/data"))
    _check_outputs(local, 100, 20, {})
    files = json.loads((local / "stats.json").read_text())["data"]["train"]["files"]
    assert sorted(files) == [f"{bucket}/tldr/train/{n}" for n in ("carper-a.jsonl", "carper-b.jsonl", "webis.jsonl")]
