"""Reaching Ray, deciding whether stages ask Ray for GPUs, and THE way a stage maps a model over a Ray
dataset (:func:`actor_pool`: one actor pool per model, SPEC §2; its resources from config, the pool's
class renamed after the stage so Ray Data's progress says ``MapBatches(mask_fill)``).

Two traps measured in this environment (ENV.md) shape this file:
- a stale ``current-cluster`` file from a killed cluster makes ``ray.init()`` try to join a dead
  cluster: an embedded cluster is therefore started with ``address="local"``, never by discovery;
- an actor pool asking for GPUs on a cluster without any waits forever: whether to ask is decided
  from the explicit ``device`` field (never from ``ray.cluster_resources()``, which shows no GPUs on an
  autoscaling cluster whose GPU workers start at 0), and pools get a finite ``wait_for_min_actors_s``.

The embedded cluster also starts Ray's dashboard, bound to 127.0.0.1: Ray Train's PlacementGroupCleaner
asks the State API (served by the dashboard) every second whether the train controller is alive. Without
the dashboard every ask failed and logged a warning (122 lines in a smoke run); and because the ask finds
its cluster by auto-detection, on a machine running several Ray clusters it asked the wrong one and died
with a GCS timeout traceback. Workers are therefore told the dashboard's URL (RAY_API_SERVER_ADDRESS).
"""

from __future__ import annotations

import logging
import os
import socket
import sys
from typing import Any

from raydebias.config import Config, OpResources
from raydebias.logs import VERBOSE_ENV

log = logging.getLogger(__name__)

# Environment every Ray worker gets: 1 intra-op thread (2-core machines thrash otherwise, ENV.md),
# offline hubs stay offline inside workers too.
_WORKER_ENV_KEYS = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE", "RAYDEBIAS_TINY_DIR",
                    "RAYDEBIAS_PROGRESS", "HF_HUB_DISABLE_PROGRESS_BARS", VERBOSE_ENV)
# Every Ray worker of the job runs this first: raydebias.logs' filters for known-harmless messages.
WORKER_SETUP_HOOK = "raydebias.logs.configure_worker_logging"


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
    if os.environ.get("RAYDEBIAS_PROGRESS", "0") == "0":
        # transformers' "Loading weights" / "Writing model shards" bars: a worker's stderr is a log file,
        # so each load became a bar line per actor (Ray Data's bars show the pools' progress).
        env["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    env.update({k: os.environ[k] for k in _WORKER_ENV_KEYS if k in os.environ})
    return env


def _free_local_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_ray(cfg: Config) -> dict[str, Any]:
    """Join the configured / submitted cluster, or start an embedded local one. Idempotent."""
    import ray

    if ray.is_initialized():
        return {"address": "already-initialized"}
    address = cfg.ray.address or os.environ.get("RAY_ADDRESS")
    runtime_env = {"env_vars": worker_env(), "worker_process_setup_hook": WORKER_SETUP_HOOK}
    if address:
        log.info("joining Ray cluster at %s", address)
        ray.init(address=address, runtime_env=runtime_env, log_to_driver=True)
        mode = "joined"
    else:
        log.info("starting a local Ray cluster (set RAY_ADDRESS or ray.address to join one)")
        # The dashboard serves the State API that Ray Train's controller checks need (module docstring).
        port = _free_local_port()
        runtime_env["env_vars"]["RAY_API_SERVER_ADDRESS"] = f"http://127.0.0.1:{port}"
        ctx = ray.init(address="local", num_cpus=cfg.ray.num_cpus, include_dashboard=True,
                       dashboard_host="127.0.0.1", dashboard_port=port, runtime_env=runtime_env,
                       log_to_driver=True)
        if ctx.dashboard_url != f"127.0.0.1:{port}":  # the port was taken in between: Ray picked another
            log.warning("Ray's dashboard is at %r, not 127.0.0.1:%d as the workers were told: Ray Train may "
                        "warn that it cannot query its controller's state (harmless for this run)",
                        ctx.dashboard_url, port)
        mode = "local"
    configure_data_context(cfg)
    return {"address": address or "local", "mode": mode, "resources": ray.cluster_resources()}


_REMOTES: dict[tuple, Any] = {}


def remote(fn: Any, **options: Any) -> Any:
    """``ray.remote(fn).options(**options)``, made once per (function, options): the plain Ray tasks of
    the bookkeeping passes (a few per stage, each over many rows), where Ray Data's per-dataset
    scheduling would cost more than the work (``stats_and_quarantine``, ``list_written``, the data stage's counts)."""
    import ray

    key = (fn, tuple(sorted(options.items())))
    if key not in _REMOTES:
        _REMOTES[key] = ray.remote(fn).options(**options) if options else ray.remote(fn)
    return _REMOTES[key]


def configure_data_context(cfg: Config) -> None:
    """This process's Ray Data settings: the driver's, and again in any process that builds datasets
    itself (a Ray Tune trial), since a DataContext does not travel to other processes."""
    from ray.data import DataContext

    ctx = DataContext.get_current()
    ctx.wait_for_min_actors_s = cfg.ray.wait_for_min_actors_s
    # Progress bars on a terminal; in logs (ray job submit, CI) they become walls of status lines.
    progress = os.environ.get("RAYDEBIAS_PROGRESS")
    ctx.enable_progress_bars = sys.stderr.isatty() if progress is None else progress != "0"


def actor_pool(ds: Any, cls: type, resources: OpResources, use_gpu: bool, *, name: str | None = None,
               constructor_kwargs: dict[str, Any] | None = None, batch_format: str = "pyarrow",
               whole_blocks: bool = False) -> Any:
    """``ds.map_batches(cls)`` on an ``ActorPoolStrategy`` of ``resources.actors`` actors, each with
    ``resources.num_cpus`` CPUs and (when ``use_gpu``) ``resources.num_gpus`` GPUs, batches of
    ``resources.batch_size``; ``cls(**constructor_kwargs)`` is built once per actor (the model loads once).

    ``whole_blocks``: hand each block to one call as it is (``batch_size=None``) and let ``cls`` cut it
    into ``resources.batch_size`` batches itself. Ray Data would otherwise bundle blocks smaller than a
    batch with whichever block arrives next, so what lands in one batch would depend on scheduling. Ray
    Data refuses ``batch_size=None`` for a pool that asks for GPUs: such a pool gets batches of
    ``resources.batch_size`` (a block's last, short batch may then share a call with the next block's
    first rows; batched GPU generation is not bit-reproducible across batch shapes anyway)."""
    from ray.data import ActorPoolStrategy

    gpus = resources.num_gpus if use_gpu else 0.0
    if name:
        cls = type(name, (cls,), {})
    log.info("pool %-15s actors=%d num_cpus=%g num_gpus=%g batch_size=%d", name or cls.__name__, resources.actors,
             resources.num_cpus, gpus, resources.batch_size)
    blocks = whole_blocks and gpus == 0
    return ds.map_batches(cls, batch_format=batch_format, batch_size=None if blocks else resources.batch_size,
                          compute=ActorPoolStrategy(size=resources.actors), num_cpus=resources.num_cpus,
                          num_gpus=gpus, fn_constructor_kwargs=constructor_kwargs or {})
