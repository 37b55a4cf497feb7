"""Plain causal-LM fine-tuning on token blocks, the recipe of the CDA and Dropout baselines (Webster et al. 2020;
bias-bench's run_clm: 2,000 steps, effective batch 256, block 1024, lr 5e-5), on the contrastive loop's machinery:
the same FSDP2 sharding with weights read once by rank 0 (:func:`raydebias.train.loop.shard_from_rank0`), the
same sharded checkpoints (DCP) and worker-side export, the same :class:`~raydebias.train.loop.Session`
(Ray Train in production, a local process group in tests).

    blocks (N, L) token ids, written once by the benchmark stage (Parquet, column ``input_ids``)
    -> per optimizer step: ``accumulation`` micro-batches of ``per_device_batch`` blocks on every rank
       (global batch G = per_device_batch x accumulation x world) -> mean token cross-entropy -> AdamW
    -> a sharded checkpoint every ``checkpoint_every`` steps and at the end -> export (save_pretrained)

Data order is a pure function of the step: global position p = step x G + k is block
``permutation(seed + p // N)[p % N]`` (a fresh permutation per pass over the blocks), and rank r's j-th
micro-batch of a step takes positions ((j x world + r) x per_device_batch ...). A resumed run (any world size
with the same G) therefore continues with exactly the blocks the interrupted one would have trained next:
nothing is lost or repeated, and a corpus smaller than ``steps x G`` blocks is simply cycled.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from raydebias.generation import derive_seed
from raydebias.train.checkpoint import export_hf, load_sharded, save_sharded
from raydebias.train.distributed import Comm
from raydebias.train.loop import (
    WarmupLinear,
    load_lm_config,
    load_tokenizer_padded,
    resolve_precision,
    shard_from_rank0,
)

log = logging.getLogger(__name__)

INPUT_IDS = "input_ids"


@dataclass(frozen=True)
class LMFinetune:
    """Everything the worker loop reads (plain values; recorded in every checkpoint)."""

    model: str
    blocks: str  # a StoragePath URI: the Parquet directory of token blocks
    export_to: str | None  # a StoragePath URI for the fine-tuned model
    steps: int = 2000
    per_device_batch: int = 8
    accumulation: int = 32
    lr: float = 5e-5
    warmup_steps: int = 0
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    precision: str = "fp32"
    bf16_when_supported: bool = True
    activation_checkpointing: bool = False
    dropout: float | None = None  # the Dropout baseline: every dropout probability of the model
    seed: int = 42
    checkpoint_every: int = 500
    report_every: int = 10

    # what a resumed run must share with its checkpoint (the data order and the objective)
    RESUME_KEYS = ("model", "blocks", "steps", "lr", "warmup_steps", "weight_decay", "dropout", "seed")

    def global_batch(self, world: int) -> int:
        return self.per_device_batch * self.accumulation * world


class CausalLM(nn.Module):
    """The LM alone (no projection head): ``forward(ids)`` is the mean next-token cross-entropy of (B, L) ids."""

    def __init__(self, lm: nn.Module):
        super().__init__()
        self.lm = lm

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:  # (B, L) -> ()
        return self.lm(input_ids=input_ids, labels=input_ids).loss


def block_indices(step: int, rank: int, micro: int, n_blocks: int, spec: LMFinetune, world: int) -> list[int]:
    """The blocks rank ``rank`` trains in micro-batch ``micro`` of optimizer step ``step`` (module docstring)."""
    g = spec.global_batch(world)
    start = step * g + (micro * world + rank) * spec.per_device_batch
    out = []
    for p in range(start, start + spec.per_device_batch):
        epoch, i = divmod(p, n_blocks)
        out.append(int(_permutation(spec.seed + epoch, n_blocks)[i]))
    return out


_PERM: dict[tuple[int, int], np.ndarray] = {}


def _permutation(seed: int, n: int) -> np.ndarray:
    if (seed, n) not in _PERM:
        _PERM.clear()  # one pass at a time is enough: steps move forward
        _PERM[(seed, n)] = np.random.default_rng(seed).permutation(n)
    return _PERM[(seed, n)]


def read_blocks(uri: str) -> torch.Tensor:
    """(N, L) int64 token blocks from the Parquet directory ``uri``."""
    from raydebias.storage import StoragePath

    table = StoragePath.of(uri).read_table(columns=[INPUT_IDS])
    if table.num_rows == 0:
        raise ValueError(f"lm fine-tuning: no token blocks in {uri}: the corpus is shorter than one block")
    flat = table.column(INPUT_IDS).combine_chunks()
    return torch.from_numpy(np.asarray(flat.flatten(), dtype=np.int64).reshape(table.num_rows, -1))


def run_lm_worker(spec: LMFinetune, session: Any) -> dict[str, Any]:
    """The whole fine-tuning on one rank; returns the last step's metrics."""
    from transformers import AutoModelForCausalLM

    from raydebias.baselines.dropout import apply_dropout
    from raydebias.models import load_model

    device = session.device
    comm = Comm(device)
    world, rank = session.world, session.rank
    precision = resolve_precision(spec.precision, spec.bf16_when_supported, device)
    blocks = read_blocks(spec.blocks)  # (N, L)
    tok = load_tokenizer_padded(spec.model)

    def overrides(config: Any) -> None:
        if spec.dropout is not None:
            apply_dropout(config, spec.dropout)  # before the model is built: attention modules copy the value

    with torch.device("meta"):
        lm = AutoModelForCausalLM.from_config(load_lm_config(spec.model, overrides), trust_remote_code=False,
                                              dtype=torch.float32)
        model = CausalLM(lm)

    def source() -> CausalLM:
        cpu_lm, _ = load_model(spec.model, "causal_lm", device="cpu", dtype=torch.float32)
        return CausalLM(cpu_lm)

    model = shard_from_rank0(model, lm, source, device, precision, comm, spec.activation_checkpointing)
    optimizer = torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=spec.weight_decay)
    schedule = WarmupLinear(spec.warmup_steps, spec.steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    scaler = None
    if precision == "fp16":
        from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler

        scaler = ShardedGradScaler(device=device.type)

    step, history = 0, []
    with session.latest_checkpoint() as ckpt_dir:
        if ckpt_dir is not None:
            state = load_sharded(ckpt_dir, model, optimizer)
            scheduler.load_state_dict(state["scheduler"])
            if scaler is not None and state.get("scaler"):
                scaler.load_state_dict(state["scaler"])
            if state.get("global_batch") != spec.global_batch(world):
                raise RuntimeError(f"lm fine-tuning: the checkpoint was trained with a global batch of "
                                   f"{state.get('global_batch')} blocks, this run has {spec.global_batch(world)}")
            step, history = state["step"], state["history"]
            if rank == 0:
                log.warning("lm fine-tuning: resumed from checkpoint at step %d", step)

    def checkpoint(metrics: dict[str, Any]) -> None:
        import tempfile
        import uuid
        from pathlib import Path

        name = comm.broadcast_object(f"step-{step:07d}-{uuid.uuid4().hex[:8]}" if rank == 0 else None)
        meta = {"step": step, "epoch": 0, "epoch_done": step >= spec.steps, "global_batch": spec.global_batch(world),
                "spec": {k: v for k, v in asdict(spec).items() if k in LMFinetune.RESUME_KEYS}, "history": history,
                "precision": precision, "world_size": world}
        with tempfile.TemporaryDirectory(prefix="raydebias-ckpt-") as tmp:
            save_sharded(Path(tmp), model, optimizer, scheduler, scaler, meta, rank)
            session.report(metrics, checkpoint_dir=Path(tmp), name=name)

    metrics: dict[str, Any] = {}
    while step < spec.steps:
        t0 = time.perf_counter()
        # Dropout draws from a seed of (run seed, step, rank): a resumed run draws what the interrupted one would have.
        torch.manual_seed(derive_seed(spec.seed, "lm_finetune", step, rank))
        loss_sum = 0.0
        for micro in range(spec.accumulation):
            ids = blocks[block_indices(step, rank, micro, len(blocks), spec, world)].to(device)  # (b, L)
            loss = model(ids) / spec.accumulation
            (scaler.scale(loss) if scaler is not None else loss).backward()
            loss_sum += float(loss.detach())
        if scaler is not None:
            scaler.unscale_(optimizer)
        if spec.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), spec.grad_clip)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        loss_all = comm.sum([loss_sum])[0] / world
        metrics = {"step": step, "loss": loss_all, "lr": scheduler.get_last_lr()[0],
                   "tokens_per_s": spec.global_batch(world) * blocks.shape[1] / (time.perf_counter() - t0)}
        history.append(metrics)
        if step % spec.checkpoint_every == 0 or step == spec.steps:
            checkpoint(metrics)
        elif step % spec.report_every == 0:
            session.report(metrics)
        if rank == 0 and (step % spec.report_every == 0 or step == spec.steps):
            log.info("lm fine-tuning: %s", json.dumps({k: round(v, 4) for k, v in metrics.items()}))
    if spec.export_to:
        from raydebias.storage import StoragePath

        export_hf(model, tok, precision, None, StoragePath.of(spec.export_to), rank)
    return metrics


def lm_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """Ray Train's entry point on each worker."""
    from raydebias.train.loop import RaySession

    torch.set_num_threads(max(1, int(loop_config.get("threads", 1))))
    run_lm_worker(loop_config["spec"], RaySession())


__all__ = ["INPUT_IDS", "CausalLM", "LMFinetune", "block_indices", "lm_loop_per_worker", "read_blocks",
           "run_lm_worker"]
