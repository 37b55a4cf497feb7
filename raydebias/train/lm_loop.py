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
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from raydebias.generation import derive_seed
from raydebias.train.checkpoint import export_hf, load_sharded, save_sharded
from raydebias.train.distributed import Comm
from raydebias.train.loop import (
    WarmupLinear,
    apply_gradients,
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


@dataclass
class LMWorker:
    """What :func:`setup` builds once per attempt on this rank, and where training stands (step, history)."""

    spec: LMFinetune
    session: Any
    comm: Comm
    precision: str
    blocks: torch.Tensor  # (N, L) token ids
    tok: Any
    model: CausalLM
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: Any  # ShardedGradScaler under fp16, else None
    step: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def world(self) -> int:
        return self.session.world

    @property
    def rank(self) -> int:
        return self.session.rank


def setup(spec: LMFinetune, session: Any) -> LMWorker:
    """The LM (dropout overrides applied to its config before it is built: attention modules copy the value),
    sharded with FSDP2 from rank 0's weights, AdamW + warm-up/linear schedule [+ grad scaler], the blocks."""
    from transformers import AutoModelForCausalLM

    from raydebias.baselines.dropout import apply_dropout
    from raydebias.models import load_model

    device = session.device
    comm = Comm(device)
    precision = resolve_precision(spec.precision, spec.bf16_when_supported, device)

    def overrides(config: Any) -> None:
        if spec.dropout is not None:
            apply_dropout(config, spec.dropout)

    with torch.device("meta"):
        lm = AutoModelForCausalLM.from_config(load_lm_config(spec.model, overrides), trust_remote_code=False,
                                              dtype=torch.float32)
        meta = CausalLM(lm)

    def source() -> CausalLM:
        return CausalLM(load_model(spec.model, "causal_lm", device="cpu", dtype=torch.float32)[0])

    model = shard_from_rank0(meta, lm, source, device, precision, comm, spec.activation_checkpointing)
    optimizer = torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=spec.weight_decay)
    scaler = None
    if precision == "fp16":
        from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler

        scaler = ShardedGradScaler(device=device.type)
    return LMWorker(spec=spec, session=session, comm=comm, precision=precision, blocks=read_blocks(spec.blocks),
                    tok=load_tokenizer_padded(spec.model), model=model, optimizer=optimizer,
                    scheduler=torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupLinear(spec.warmup_steps, spec.steps)),
                    scaler=scaler)


def resume(w: LMWorker) -> None:
    """From the session's last checkpoint, if any: each rank its own shards, then scheduler, scaler, step."""
    with w.session.latest_checkpoint() as ckpt_dir:
        if ckpt_dir is None:
            return
        state = load_sharded(ckpt_dir, w.model, w.optimizer)
    w.scheduler.load_state_dict(state["scheduler"])
    if w.scaler is not None and state.get("scaler"):
        w.scaler.load_state_dict(state["scaler"])
    mine = {k: v for k, v in asdict(w.spec).items() if k in LMFinetune.RESUME_KEYS}
    if state.get("spec") != mine or state.get("global_batch") != w.spec.global_batch(w.world):
        raise RuntimeError(f"lm fine-tuning: the checkpoint in storage was trained with other settings "
                           f"({state.get('spec')}, global batch {state.get('global_batch')}) than this run ({mine}, "
                           f"global batch {w.spec.global_batch(w.world)}): delete its train/ directory to start over")
    w.step, w.history = state["step"], state["history"]
    if w.rank == 0:
        log.warning("lm fine-tuning: resumed from checkpoint at step %d", w.step)


def train_step(w: LMWorker) -> dict[str, Any]:
    """One optimizer step: ``accumulation`` micro-batches of this rank's blocks for this step -> AdamW."""
    spec, t0 = w.spec, time.perf_counter()
    # Dropout draws from a seed of (run seed, step, rank): a resumed run draws what the interrupted one would have.
    torch.manual_seed(derive_seed(spec.seed, "lm_finetune", w.step, w.rank))
    loss_sum = 0.0
    for micro in range(spec.accumulation):
        ids = w.blocks[block_indices(w.step, w.rank, micro, len(w.blocks), spec, w.world)].to(w.session.device)
        loss = w.model(ids) / spec.accumulation  # (b, L) -> mean token cross-entropy
        (w.scaler.scale(loss) if w.scaler is not None else loss).backward()
        loss_sum += float(loss.detach())
    apply_gradients(w.model, w.optimizer, w.scheduler, w.scaler, spec.grad_clip)
    w.step += 1
    metrics = {"step": w.step, "loss": w.comm.sum([loss_sum])[0] / w.world, "lr": w.scheduler.get_last_lr()[0],
               "tokens_per_s": spec.global_batch(w.world) * w.blocks.shape[1] / (time.perf_counter() - t0)}
    w.history.append(metrics)
    return metrics


def checkpoint(w: LMWorker, metrics: dict[str, Any]) -> None:
    """Report ``metrics`` with a sharded checkpoint (every rank its shards; rank 0 the meta)."""
    import tempfile
    import uuid
    from pathlib import Path

    name = w.comm.broadcast_object(f"step-{w.step:07d}-{uuid.uuid4().hex[:8]}" if w.rank == 0 else None)
    meta = {"step": w.step, "epoch": 0, "epoch_done": w.step >= w.spec.steps,
            "global_batch": w.spec.global_batch(w.world),
            "spec": {k: v for k, v in asdict(w.spec).items() if k in LMFinetune.RESUME_KEYS}, "history": w.history,
            "precision": w.precision, "world_size": w.world}
    with tempfile.TemporaryDirectory(prefix="raydebias-ckpt-") as tmp:
        save_sharded(Path(tmp), w.model, w.optimizer, w.scheduler, w.scaler, meta, w.rank)
        w.session.report(metrics, checkpoint_dir=Path(tmp), name=name)


def run_lm_worker(spec: LMFinetune, session: Any) -> dict[str, Any]:
    """The whole fine-tuning on one rank, in phases: setup -> resume -> steps (checkpointing) -> export.
    Returns the last step's metrics."""
    w = setup(spec, session)
    resume(w)
    metrics: dict[str, Any] = w.history[-1] if w.history else {}
    while w.step < spec.steps:
        metrics = train_step(w)
        if w.step % spec.checkpoint_every == 0 or w.step == spec.steps:
            checkpoint(w, metrics)
        elif w.step % spec.report_every == 0:
            session.report(metrics)
        if w.rank == 0 and (w.step % spec.report_every == 0 or w.step == spec.steps):
            log.info("lm fine-tuning: %s", json.dumps({k: round(v, 4) for k, v in metrics.items()}))
    if spec.export_to:
        from raydebias.storage import StoragePath

        export_hf(w.model, w.tok, w.precision, None, StoragePath.of(spec.export_to), w.rank)
    return metrics


def lm_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """Ray Train's entry point on each worker."""
    from raydebias.train.loop import RaySession

    torch.set_num_threads(max(1, int(loop_config.get("threads", 1))))
    run_lm_worker(loop_config["spec"], RaySession())


__all__ = ["INPUT_IDS", "CausalLM", "LMFinetune", "LMWorker", "block_indices", "checkpoint", "lm_loop_per_worker",
           "read_blocks", "resume", "run_lm_worker", "setup", "train_step"]
