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
if "RAYDEBIAS_CACHE" not in os.environ:  # models fetched from object stores (storage.fetch)
    import tempfile

    os.environ["RAYDEBIAS_CACHE"] = tempfile.mkdtemp(prefix="raydebias-cache-")

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


class S3:
    """A local S3 endpoint (moto's server, in this process) and the environment that points a job at it:
    pyarrow's S3 filesystem reads the endpoint and the (dummy) credentials from AWS_* variables, as it
    reads real ones on a cluster."""

    def __init__(self, endpoint: str):
        self.env = {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                    "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}
        self._n = 0

    def bucket(self) -> str:
        """A new empty bucket, as an ``s3://`` URI."""
        import boto3

        self._n += 1
        name = f"raydebias-test-{self._n}"
        boto3.client("s3", endpoint_url=self.env["AWS_ENDPOINT_URL"], region_name="us-east-1",
                     aws_access_key_id="testing", aws_secret_access_key="testing").create_bucket(Bucket=name)
        return f"s3://{name}"

    def upload(self, local: Path, uri: str) -> None:
        from raydebias.storage import StoragePath

        StoragePath.of(uri).upload(local)

    def download(self, uri: str, local: Path) -> Path:
        from raydebias.storage import StoragePath

        return StoragePath.of(uri).download(local)


@pytest.fixture(scope="session")
def s3():
    """One S3 endpoint per session; tests take a fresh bucket each (``s3.bucket()``). The AWS_* variables
    are set in this process too (jobs started by the tests inherit them)."""
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    s = S3(f"http://{host}:{port}")
    saved = {k: os.environ.get(k) for k in s.env}
    os.environ.update(s.env)
    yield s
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    server.stop()


@pytest.fixture(scope="session")
def shared_run(tmp_path_factory):
    """One `--stage all` run of the rehearsed Llama-2-7B preset (data -> augmentation streamed into 2 FSDP2
    workers -> evaluate; support.SHARED_RUN_JOB), shared by the augment, train, rehearsal and sweep tests
    (the sweep copies its data/ and augmented/)."""
    import subprocess
    import sys

    from support import SHARED_RUN_ARGS, SHARED_RUN_JOB, job_env

    out = tmp_path_factory.mktemp("train") / "run"
    r = subprocess.run([sys.executable, str(REPO / "jobs/pipeline.py"), *SHARED_RUN_JOB, "--stage", "all",
                        "--output", str(out), *SHARED_RUN_ARGS, "train.epochs=2"],
                       capture_output=True, text=True, timeout=1200, env=job_env(), cwd=REPO)
    assert r.returncode == 0, r.stderr[-4000:]
    return out, r
