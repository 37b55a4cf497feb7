"""Reaching Ray, and deciding whether stages ask Ray for GPUs.

Two traps measured in this environment (ENV.md) shape this file:
- a stale ``current-cluster`` file from a killed cluster makes ``ray.init()`` try to join a dead
  cluster: an embedded cluster is therefore started with ``address="local"``, never by discovery;
- an actor pool asking for GPUs on a cluster without any waits forever: whether to ask is decided
  from the explicit ``device`` field (never from ``ray.cluster_resources()``, which shows no GPUs on an
  autoscaling cluster whose GPU workers start at 0), and pools get a finite ``wait_for_min_actors_s``.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

from raydebias.config import Config

log = logging.getLogger(__name__)

# Environment every Ray worker gets: 1 intra-op thread (2-core machines thrash otherwise, ENV.md),
# offline hubs stay offline inside workers too.
_WORKER_ENV_KEYS = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE", "RAYDEBIAS_TINY_DIR",
                    "RAYDEBIAS_PROGRESS")


def job_exit_code(e: BaseException) -> int | None:
    """The exit code a job (jobs/pipeline.py, tune/sweep.py) reports ``e`` with, as one ``error:`` line:
    2 bad config or storage, 3 unreadable input data, 4 an actor pool the cluster cannot start.
    None: not an expected failure (let it raise with its traceback)."""
    from raydebias.augment.pipeline import PoolStartError
    from raydebias.config import ConfigError
    from raydebias.data import DataError

    codes = ((ConfigError, 2), (DataError, 3), (PoolStartError, 4))
    return next((code for kind, code in codes if isinstance(e, kind)), None)


def use_gpus(device: str) -> bool:
    """Whether stages request GPUs from Ray. ``auto`` looks at the DRIVER machine only."""
    if device == "gpu":
        return True
    if device == "cpu":
        return False
    import torch

    found = torch.cuda.is_available()
    log.info("device=auto: the driver %s CUDA, so stages request %s (set device=gpu for clusters whose "
             "GPU workers autoscale from 0)", "sees" if found else "does not see", "GPUs" if found else "CPUs only")
    return found


def worker_env() -> dict[str, str]:
    env = {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "TOKENIZERS_PARALLELISM": "false"}
    env.update({k: os.environ[k] for k in _WORKER_ENV_KEYS if k in os.environ})
    return env


def init_ray(cfg: Config) -> dict[str, Any]:
    """Join the configured / submitted cluster, or start an embedded local one. Idempotent."""
    import ray

    if ray.is_initialized():
        return {"address": "already-initialized"}
    address = cfg.ray.address or os.environ.get("RAY_ADDRESS")
    runtime_env = {"env_vars": worker_env()}
    if address:
        log.info("joining Ray cluster at %s", address)
        ray.init(address=address, runtime_env=runtime_env, log_to_driver=True)
        mode = "joined"
    else:
        log.info("starting a local Ray cluster (set RAY_ADDRESS or ray.address to join one)")
        ray.init(address="local", num_cpus=cfg.ray.num_cpus, include_dashboard=False,
                 runtime_env=runtime_env, log_to_driver=True)
        mode = "local"
    configure_data_context(cfg)
    return {"address": address or "local", "mode": mode, "resources": ray.cluster_resources()}


def configure_data_context(cfg: Config) -> None:
    """This process's Ray Data settings: the driver's, and again in any process that builds datasets
    itself (a Ray Tune trial), since a DataContext does not travel to other processes."""
    from ray.data import DataContext

    ctx = DataContext.get_current()
    ctx.wait_for_min_actors_s = cfg.ray.wait_for_min_actors_s
    # Progress bars on a terminal; in logs (ray job submit, CI) they become walls of status lines.
    progress = os.environ.get("RAYDEBIAS_PROGRESS")
    ctx.enable_progress_bars = sys.stderr.isatty() if progress is None else progress != "0"
