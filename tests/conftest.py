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


@pytest.fixture
def process_group():
    """A 1-rank gloo process group in this process (FSDP2 and the loop's collectives without Ray)."""
    import torch.distributed as dist
    from support import free_port

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ["MASTER_PORT"] = str(free_port())
    dist.init_process_group("gloo", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


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


class SharedRun:
    """One `--stage all` run of the rehearsed Llama-2-7B preset (data -> augmentation streamed into 2 FSDP2
    workers -> evaluate; support.SHARED_RUN_JOB), shared by the augment, train, rehearsal, sweep and benchmark
    tests, which read it and never write into it.

    It is the suite's longest step, so it starts in the background as soon as collection finds a test that
    needs it, and runs while the other tests do; the ``shared_run`` fixture waits for it. Under pytest-xdist
    the workers share one run: the first to get the lock launches it, in a directory above the workers' own
    (``getbasetemp().parent``), and its end is a file (the exit status, written last), so any worker can
    wait for it."""

    def __init__(self, config):
        self.config = config
        self.proc = None  # the job, in the process that launched it

    @property
    def root(self) -> Path:
        base = self.config._tmp_path_factory.getbasetemp()
        return (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "shared-run"

    @property
    def out(self) -> Path:
        return self.root / "run"

    def start(self) -> None:
        import shlex
        import subprocess
        import sys

        from filelock import FileLock
        from support import SHARED_RUN_ARGS, SHARED_RUN_JOB, job_env

        self.root.mkdir(parents=True, exist_ok=True)
        with FileLock(str(self.root) + ".lock"):
            if (self.root / "cmd").exists():
                return
            cmd = [sys.executable, str(REPO / "jobs/pipeline.py"), *SHARED_RUN_JOB, "--stage", "all",
                   "--output", str(self.out), *SHARED_RUN_ARGS, "train.epochs=2"]
            (self.root / "cmd").write_text(shlex.join(cmd))
            script = f'{shlex.join(cmd)} >stdout 2>stderr; echo $? >rc.tmp && mv rc.tmp rc'
            self.proc = subprocess.Popen(["sh", "-c", script], cwd=self.root, env=job_env(),
                                         stdin=subprocess.DEVNULL, start_new_session=True)

    def result(self, timeout: float = 1200):
        import subprocess
        import time

        self.start()  # no-op once launched (here or by another worker)
        deadline = time.monotonic() + timeout
        while not (self.root / "rc").exists():
            if self.proc is not None and self.proc.poll() is not None and not (self.root / "rc").exists():
                pytest.fail(f"the shared run's shell died ({self.proc.returncode}) without an exit status")
            if time.monotonic() > deadline:
                pytest.fail(f"the shared run did not finish in {timeout:.0f} s (see {self.root})")
            time.sleep(1)
        rc = int((self.root / "rc").read_text())
        r = subprocess.CompletedProcess((self.root / "cmd").read_text(), rc, (self.root / "stdout").read_text(),
                                        (self.root / "stderr").read_text())
        assert rc == 0, r.stderr[-4000:]
        return self.out, r

    def stop(self, wait: bool) -> None:
        """At the end of the session that launched it: let a run another worker may still need finish;
        an interrupted session stops it (and the Ray cluster it started)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        if wait:
            try:
                self.proc.wait(timeout=1200)
                return
            except Exception:
                pass
        from support import kill_tree

        kill_tree(self.proc.pid, timeout=10)


def pytest_configure(config):
    config._raydebias_shared_run = SharedRun(config)


def pytest_collection_finish(session):
    if session.config.option.collectonly:
        return
    if any("shared_run" in getattr(item, "fixturenames", ()) for item in session.items):
        session.config._raydebias_shared_run.start()


def pytest_sessionfinish(session, exitstatus):
    run = getattr(session.config, "_raydebias_shared_run", None)
    if run is not None:
        run.stop(wait=exitstatus not in (pytest.ExitCode.INTERRUPTED, pytest.ExitCode.USAGE_ERROR))


@pytest.fixture(scope="session")
def shared_run(request):
    """The shared run's output directory and its finished process (SharedRun)."""
    return request.config._raydebias_shared_run.result()
