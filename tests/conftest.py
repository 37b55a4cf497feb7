"""Shared test setup: offline hubs, one torch thread, one local Ray cluster per session."""

import os

# Before anything imports transformers/datasets/torch: a stray hub call must fail fast (ENV.md), and
# 2-core machines thrash with more than one intra-op thread per process.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("RAYDEBIAS_PROGRESS", "0")
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
if "RAYDEBIAS_TINY_DIR" not in os.environ:
    # One private tiny-model cache per test session (Ray workers inherit it via runtime.worker_env).
    import tempfile

    os.environ["RAYDEBIAS_TINY_DIR"] = os.path.join(tempfile.mkdtemp(prefix="raydebias-tiny-"), "tiny")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def ray_local():
    """One embedded Ray cluster for the in-process tests (``address="local"``: never join a stale one)."""
    import ray

    from raydebias.config import load_config
    from raydebias.runtime import init_ray

    if not ray.is_initialized():
        init_ray(load_config(None, ["ray.num_cpus=8"]))  # logical: room for the augment pools
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory):
    """One `--stage all` run of the smoke job (data -> augmentation streamed into 2 FSDP2 workers ->
    evaluate), shared by the train tests and the sweep test (which copies its data/ and augmented/)."""
    import subprocess
    import sys

    from support import SMOKE, SMOKE_RUN_ARGS, job_env

    out = tmp_path_factory.mktemp("train") / "run"
    r = subprocess.run([sys.executable, str(REPO / "jobs/pipeline.py"), "--config", str(SMOKE), "--stage", "all",
                        "--output", str(out), *SMOKE_RUN_ARGS, "train.epochs=2"],
                       capture_output=True, text=True, timeout=900, env=job_env(), cwd=REPO)
    assert r.returncode == 0, r.stderr[-4000:]
    return out, r
