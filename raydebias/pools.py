"""THE way a stage maps a model over a Ray dataset: one actor pool per model (SPEC §2), its resources
from config (``OpResources``: num_cpus, num_gpus, actors, batch_size).

Whether a pool asks Ray for GPUs is the caller's ``use_gpu`` (from the explicit ``device`` field, never from
the cluster's current resources: ENV.md HANG 1); on CPU the GPU fraction is dropped, so a pool never
waits for a GPU a cluster does not have. The pool's class is renamed after the stage, so Ray Data's
progress and stats say ``MapBatches(mask_fill)``, not the wrapper's name.
"""

from __future__ import annotations

import logging
from typing import Any

from raydebias.config import OpResources

log = logging.getLogger(__name__)


def actor_pool(ds: Any, cls: type, resources: OpResources, use_gpu: bool, *, name: str | None = None,
               constructor_kwargs: dict[str, Any] | None = None, batch_format: str = "pyarrow") -> Any:
    """``ds.map_batches(cls)`` on an ``ActorPoolStrategy`` of ``resources.actors`` actors, each with
    ``resources.num_cpus`` CPUs and (when ``use_gpu``) ``resources.num_gpus`` GPUs, batches of
    ``resources.batch_size``; ``cls(**constructor_kwargs)`` is built once per actor (the model loads once)."""
    from ray.data import ActorPoolStrategy

    gpus = resources.num_gpus if use_gpu else 0.0
    if name:
        cls = type(name, (cls,), {})
    log.info("pool %-15s actors=%d num_cpus=%g num_gpus=%g batch_size=%d", name or cls.__name__, resources.actors,
             resources.num_cpus, gpus, resources.batch_size)
    return ds.map_batches(cls, batch_format=batch_format, batch_size=resources.batch_size,
                          compute=ActorPoolStrategy(size=resources.actors), num_cpus=resources.num_cpus,
                          num_gpus=gpus, fn_constructor_kwargs=constructor_kwargs or {})


__all__ = ["actor_pool"]
