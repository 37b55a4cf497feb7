"""The train stage: Ray Train ``TorchTrainer`` over the augmented groups, FSDP2 inside each worker.

    staged:   DIR/augmented (Parquet parts) ───────────────────────────────► TorchTrainer ─► DIR/model
    streamed: sources ─► augmentation pools ─► (parts written on the way) ─► TorchTrainer   (epoch 0)
              DIR/augmented parts, listed when the epoch starts ──────────► TorchTrainer   (epochs 1+)

Checkpoints live under ``DIR/train`` (Ray Train storage, run name ``run``); a re-run with the same
output directory restores the latest one (Ray Train V2 reloads its checkpoint manager from storage), and
``FailureConfig`` restarts failed workers from it within a run. Checkpoints are sharded
(torch.distributed.checkpoint: each rank writes and reads only its shards). The final model is exported
BY THE WORKERS (rank 0 gathers the weights on its CPU) with ``save_pretrained`` to ``DIR/model`` (head
beside it), loadable by ``AutoModelForCausalLM.from_pretrained``; the driver never loads a model.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from raydebias.config import Config, config_to_dict
from raydebias.errors import ConfigError, StageInputError
from raydebias.storage import StoragePath
from raydebias.train.checkpoint import STATE_META, read_meta
from raydebias.train.loop import STREAM, TRAIN, VAL, train_loop_per_worker

log = logging.getLogger(__name__)

RUN_NAME = "run"
# Train settings a resumed run must share with the checkpoint it resumes (the others, e.g. workers or
# epochs, may change between attempts).
RESUME_KEYS = ("model", "proj_dim", "lr", "alpha", "tau", "toxic_weight", "toxic_weight_scope", "label_smoothing",
               "groups_per_batch", "max_positives", "max_negatives", "max_length")


def parts_dataset(path: StoragePath) -> Any:
    """The Parquet parts of ``path`` as a Ray dataset, LISTED WHEN IT EXECUTES, not when it is created.

    In streamed training the parts are still being written while the trainer starts; epochs 1+ must see
    all of them. Ray calls ``get_read_tasks`` when the dataset is created (for stats) and again each time
    it executes; each call lists the directory afresh.
    """
    import ray.data
    from ray.data.block import BlockMetadata
    from ray.data.datasource import Datasource, ReadTask

    from raydebias.schema import AUGMENTED_SCHEMA

    class AugmentedParts(Datasource):
        def __init__(self, root: StoragePath):
            self.root = root

        def estimate_inmemory_data_size(self) -> int | None:
            return None

        def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None,
                           data_context: Any = None) -> list[ReadTask]:
            return [ReadTask(lambda f=f: [f.read_table(schema=AUGMENTED_SCHEMA)],
                             BlockMetadata(num_rows=f.parquet_file().metadata.num_rows, size_bytes=None,
                                           input_files=[str(f)],
                                           exec_stats=None),
                             schema=AUGMENTED_SCHEMA, per_task_row_limit=per_task_row_limit)
                    for f in self.root.glob("*.parquet")]

    return ray.data.read_datasource(AugmentedParts(StoragePath.of(path)))


def data_config() -> Any:
    """Ray Train's DataConfig, but splitting shards with ``equal=False``: ``equal=True`` evens shards out
    by dropping rows, and nothing is dropped silently here. The loop copes with uneven shards."""
    from ray.train import DataConfig

    class GroupDataConfig(DataConfig):
        def configure(self, datasets, world_size, worker_handles, worker_node_ids, **kwargs):
            hints = worker_node_ids if self._enable_shard_locality else None
            output: list[dict] = [{} for _ in range(world_size)]
            for name, ds in datasets.items():
                ds = ds.copy(ds)
                ds.context.execution_options = self._resolve_execution_options(name)
                for i, split in enumerate(ds.streaming_split(world_size, equal=False, locality_hints=hints)):
                    output[i][name] = split
            return output

    return GroupDataConfig()


def latest_checkpoint(train_dir: StoragePath) -> StoragePath | None:
    """The newest checkpoint directory in storage (by step; names are step-NNNNNNN-<unique>)."""
    metas = sorted((train_dir / RUN_NAME).glob(f"step-*/{STATE_META}"), key=lambda p: p.parent.name.split("-")[1])
    return metas[-1].parent if metas else None


def check_resumable(cfg: Config, ckpt: StoragePath | None) -> None:
    """Refuse to resume a checkpoint trained with different settings (a new output dir is needed)."""
    if ckpt is None:
        return
    old = read_meta(ckpt).get("train_config", {})
    new = config_to_dict(cfg)["train"]
    diff = [f"train.{k}: checkpoint {old.get(k)!r} vs now {new[k]!r}" for k in RESUME_KEYS if old.get(k) != new[k]]
    if diff:
        raise ConfigError(f"{ckpt.parent.parent} holds a run with other settings ({'; '.join(diff)}): "
                          "use a new --output directory, or delete that train/ directory to start over")


def _resources_note(cfg: Config, stream_cpus: float) -> None:
    """Warn when train workers (+ the augmentation pools streaming into them) ask for more CPUs than the
    cluster has (ENV.md HANG 2)."""
    import ray

    t = cfg.train
    need = t.num_workers * t.cpus_per_worker + stream_cpus
    have = ray.cluster_resources().get("CPU", 0)
    if need > have:
        log.warning("train: workers%s ask for %.1f CPUs but the cluster has %.1f now: unless it autoscales, "
                    "lower train.cpus_per_worker or the pools' num_cpus (ENV.md HANG 2)",
                    " + augmentation pools" if stream_cpus else "", need, have)


def run_train_stage(cfg: Config, out: Any, stream: Any = None, rows: int | None = None, *,
                    groups: StoragePath | None = None, validation: StoragePath | None = None,
                    callbacks: tuple = (), stream_cpus: float = 0.0) -> dict[str, Any]:
    """Train on the augmented parts in ``groups`` (default ``out.augmented_dir``: staged) or on ``stream``,
    the live augmentation dataset, with ``rows`` groups in all (streamed; the parts written on the way
    feed epochs 1+). Writes ``out.train_dir`` (checkpoints) and ``out.model_dir``. Never runs another
    stage: raydebias/stages.py runs augment first when its output is incomplete.

    ``validation``: a directory of held-out augmented parts, scored at every epoch end (``val_*``
    metrics, reported with the epoch checkpoint). ``callbacks``: Ray Train ``UserCallback``s (a sweep
    trial passes one that forwards the epoch reports to Ray Tune). ``stream_cpus``: the CPUs the
    augmentation pools streaming into training hold (for the resource check).
    """
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from raydebias.runtime import use_gpus

    t = cfg.train
    groups = out.augmented_dir if groups is None else groups
    streamed = stream is not None
    if not streamed:
        rows = groups.parquet_rows() if groups.glob("*.parquet") else 0
        if not rows:
            raise StageInputError(f"train: no augmented groups in {groups}: run --stage augment first")
    if not rows:
        raise RuntimeError("train: no augmented rows to train on")
    previous = latest_checkpoint(out.train_dir)
    check_resumable(cfg, previous)
    resumed_from = read_meta(previous)["step"] if previous else None
    if t.model.startswith("tiny:"):
        # Build the tiny model here, before any worker joins a process group: transformers skips
        # save_pretrained on torch.distributed ranks != 0, so a worker must never be the one to build it.
        from raydebias.models import resolve_model

        resolve_model(t.model)
    _resources_note(cfg, stream_cpus if streamed else 0.0)
    gpu = use_gpus(cfg.device)
    storage_path, storage_fs = out.train_dir.ray_storage()
    datasets = {TRAIN: parts_dataset(groups)}
    if streamed:
        datasets[STREAM] = stream
    if validation is not None:
        datasets[VAL] = parts_dataset(validation)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"cfg": cfg, "rows": rows, "streamed": streamed, "validate": validation is not None,
                           "train_config": config_to_dict(cfg)["train"], "export_to": out.model_dir.uri},
        scaling_config=ScalingConfig(num_workers=t.num_workers, use_gpu=gpu,
                                     resources_per_worker={"CPU": t.cpus_per_worker, **({"GPU": 1} if gpu else {})}),
        run_config=RunConfig(name=RUN_NAME, storage_path=storage_path, storage_filesystem=storage_fs,
                             failure_config=FailureConfig(max_failures=t.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=t.keep_checkpoints),
                             callbacks=list(callbacks)),
        datasets=datasets,
        dataset_config=data_config(),
    )
    t0 = time.perf_counter()
    log.info("train: %d groups, %d worker(s) x %g CPU%s, FSDP2, %s", rows, t.num_workers, t.cpus_per_worker,
             " + 1 GPU" if gpu else "", "streamed from augmentation" if streamed else f"from {groups}")
    result = trainer.fit()
    if result.error:
        raise result.error
    if result.checkpoint is None:
        raise RuntimeError(f"train: the run finished without a checkpoint in {out.train_dir}")
    ckpt = out.train_dir.at(result.checkpoint.path)  # the latest one Ray Train registered (complete by then)
    meta = read_meta(ckpt)  # meta.json only: the shards stay in storage
    if not out.model_dir.complete:
        raise RuntimeError(f"train: the workers finished without exporting the model to {out.model_dir}")
    history = meta.pop("history")
    (out.train_dir / "history.jsonl").write_text("".join(json.dumps(h) + "\n" for h in history))
    epochs = [h for h in history if h.get("epoch_done")]
    stats = {"groups": rows, "steps": meta["step"], "epochs": len(epochs), "precision": meta["precision"],
             "checkpoint": str(ckpt), "model": str(out.model_dir), "seconds": round(time.perf_counter() - t0, 2),
             "streamed": streamed, "resumed_from_step": resumed_from, "resumes": meta.get("resumes", []),
             "world_size": meta.get("world_size"), "memory": meta.get("memory", []), "epoch_metrics": epochs}
    out.update_stats("train", stats)
    return stats


__all__ = ["RUN_NAME", "check_resumable", "data_config", "latest_checkpoint", "parts_dataset",
           "run_train_stage"]
