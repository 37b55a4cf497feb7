"""CDA and Dropout variants on Ray: corpus -> [two-sided CDA] -> token blocks (Ray Data, HF run_clm's grouping)
-> causal-LM fine-tuning on Ray Train (FSDP2; raydebias/train/lm_loop.py) -> ``DIR/benchmark/variants/<row>/``:

    blocks/   the token blocks trained on (Parquet, written once: a resumed build reuses them)
    train/    Ray Train storage (sharded checkpoints: a resumed build continues from the last one)
    model/    the fine-tuned model (save_pretrained), complete when the variant is built
    build.json  what was built: counts of the corpus and CDA, blocks, steps, losses, seconds
"""

from __future__ import annotations

import json
import logging
import math
import time
from typing import Any

import pyarrow as pa

from raydebias.benchmark.variants import Row, base_model, variant_dir
from raydebias.config import Config
from raydebias.errors import DataError

log = logging.getLogger(__name__)

RUN_NAME = "run"
TEXTS_PER_BATCH = 1000  # HF run_clm groups the texts of each 1,000-example map batch (group_texts)


class Blocks:
    """A batch of texts -> token blocks of ``block_size`` (concatenated, the remainder dropped: group_texts)."""

    def __init__(self, model: str, block_size: int):
        from raydebias.models import load_tokenizer

        self.tok = load_tokenizer(model)
        self.block_size = block_size

    def __call__(self, batch: pa.Table) -> pa.Table:
        from raydebias.baselines.cda import group_texts
        from raydebias.train.lm_loop import INPUT_IDS

        eos = self.tok.eos_token_id
        ids = [t + ([eos] if eos is not None else []) for t in
               self.tok(batch.column("text").to_pylist(), add_special_tokens=False, verbose=False)["input_ids"]]
        blocks = group_texts(ids, self.block_size)
        return pa.table({INPUT_IDS: pa.array(blocks, pa.list_(pa.int32()))})


def block_size(model: str, asked: int) -> int:
    """``benchmark.finetune.block_size`` capped at the model's positions (run_clm's rule)."""
    from transformers import AutoConfig

    from raydebias.generation import context_length
    from raydebias.models import resolve_model

    context = context_length(AutoConfig.from_pretrained(resolve_model(model), trust_remote_code=False))
    return min(asked, context) if context else asked


def write_blocks(texts: list[str], model: str, size: int, dest: Any, out: Any) -> int:
    """Tokenise and group ``texts`` into ``dest`` (once); returns the number of blocks."""
    import ray.data
    from ray.data import ActorPoolStrategy

    if not dest.complete:
        ds = ray.data.from_arrow(pa.table({"text": pa.array(texts, pa.string())}))
        ds = ds.repartition(max(1, math.ceil(len(texts) / TEXTS_PER_BATCH)))
        ds = ds.map_batches(Blocks, batch_size=TEXTS_PER_BATCH, batch_format="pyarrow", num_cpus=1,
                            compute=ActorPoolStrategy(size=1), fn_constructor_kwargs={"model": model, "block_size": size})
        out.write_dataset(ds, dest)
    return dest.parquet_rows() if dest.glob("*.parquet") else 0


def training_texts(row: Row, texts: list[str], cfg: Config) -> tuple[list[str], dict[str, Any]]:
    """CDA: two-sided counterfactual augmentation of the corpus (raydebias/baselines/cda.py); Dropout: the
    corpus as it is (Webster et al. 2020 train on the plain corpus with more dropout)."""
    if row.method == "cda":
        from raydebias.baselines.cda import cda_corpus

        out, counts = cda_corpus(texts, row.attribute, seed=cfg.seed)
        if not counts["augmented"]:
            raise DataError(f"benchmark: {row.name}: the corpus (benchmark.corpus={cfg.benchmark.corpus!r}) has no "
                            f"line with a {row.attribute} attribute word: nothing to augment")
        return out, {"cda": counts}
    return list(texts), {"texts": len(texts)}


def finetune_variant(row: Row, texts: list[str], cfg: Config, out: Any) -> dict[str, Any]:
    """Build one CDA / Dropout row: its training text, its blocks, then the Ray Train fine-tuning that exports
    the model into ``DIR/benchmark/variants/<row>/model``."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from raydebias.runtime import use_gpus
    from raydebias.train.lm_loop import LMFinetune, lm_loop_per_worker

    t0 = time.perf_counter()
    f, t = cfg.benchmark.finetune, cfg.train
    base = base_model(cfg)
    where = variant_dir(out, row.name)
    if base.startswith("tiny:"):  # built here, never by a worker rank != 0 (see train/trainer.py)
        from raydebias.models import resolve_model

        resolve_model(base)
    train_texts, counts = training_texts(row, texts, cfg)
    size = block_size(base, f.block_size)
    n_blocks = write_blocks(train_texts, base, size, where / "blocks", out)
    if not n_blocks:
        raise DataError(f"benchmark: {row.name}: the training text is shorter than one block of {size} tokens")
    workers = f.num_workers or t.num_workers
    accumulation = max(1, math.ceil(f.effective_batch / (f.per_device_batch * workers)))
    spec = LMFinetune(model=base, blocks=(where / "blocks").uri, export_to=(where / "model").uri, steps=f.steps,
                      per_device_batch=f.per_device_batch, accumulation=accumulation, lr=f.lr,
                      warmup_steps=f.warmup_steps, weight_decay=0.0, grad_clip=t.grad_clip, precision=t.precision,
                      bf16_when_supported=t.bf16_when_supported, activation_checkpointing=t.activation_checkpointing,
                      dropout=f.dropout if row.method == "dropout" else None, seed=cfg.seed,
                      checkpoint_every=max(1, min(t.checkpoint_every_steps or f.steps, f.steps)))
    gpu = use_gpus(cfg.device)
    storage_path, storage_fs = (where / "train").ray_storage()
    trainer = TorchTrainer(
        lm_loop_per_worker,
        train_loop_config={"spec": spec, "threads": t.cpus_per_worker},
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=gpu,
                                     resources_per_worker={"CPU": t.cpus_per_worker, **({"GPU": 1} if gpu else {})}),
        run_config=RunConfig(name=RUN_NAME, storage_path=storage_path, storage_filesystem=storage_fs,
                             failure_config=FailureConfig(max_failures=t.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=t.keep_checkpoints)),
    )
    log.info("benchmark: %s: %d blocks of %d tokens, %d steps x %d blocks (%d workers x %d x %d accumulation)%s",
             row.name, n_blocks, size, f.steps, spec.global_batch(workers), workers, f.per_device_batch, accumulation,
             f", dropout {f.dropout}" if spec.dropout is not None else "")
    result = trainer.fit()
    if result.error:
        raise result.error
    model_dir = where / "model"
    if not model_dir.complete:
        raise RuntimeError(f"benchmark: {row.name}: the workers finished without exporting {model_dir}")
    last = result.metrics or {}
    stats = {"method": row.method, "attribute": row.attribute, "base": base, **counts, "blocks": n_blocks,
             "block_size": size, "steps": f.steps, "global_batch": spec.global_batch(workers),
             "accumulation": accumulation, "dropout": spec.dropout, "final_loss": last.get("loss"),
             "seconds": round(time.perf_counter() - t0, 2)}
    (where / "build.json").write_text(json.dumps(stats, indent=1, default=float))
    return stats


__all__ = ["Blocks", "block_size", "finetune_variant", "training_texts", "write_blocks"]
