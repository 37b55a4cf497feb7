"""The training loop each worker runs, top to bottom (SPEC §3-§5; paper Section 4.3, App. F), in the
phases :func:`run_worker` calls in order (``setup``, ``resume``, ``train_epoch``, ``validate``,
``checkpoint``):

    LM + head built on the META device -> [activation checkpointing per block] -> FSDP2 fully_shard per
    block, then the root -> storage on the device (to_empty) -> weights read ONCE, by rank 0, and
    broadcast into the shards -> AdamW + linear warm-up schedule [+ sharded grad scaler for fp16]
    -> resume: each rank loads its own shards of the last checkpoint (model, optimizer) + scheduler,
       scaler, step, epoch, ids consumed
    -> per epoch: whole groups from this worker's shard -> L = L_ce + alpha * w_tox * L_cl -> step
    -> at each epoch end, validation losses on held-out groups when a ``val`` dataset is given (sweeps)
    -> sharded checkpoint (torch.distributed.checkpoint) every N steps and at each epoch end
    -> the workers export the final model (rank 0 gathers the weights on its CPU and writes them).

No rank ever holds more than its shards on its device; only rank 0 holds one full CPU copy of the
weights, once while loading and once while exporting (Llama-2-7B: 8 ranks x 1/8 of the fp32 weights and
AdamW state on the GPUs instead of 8 full copies).

The loop talks to its runner through a :class:`Session` (datasets, reports, checkpoints): Ray Train in
production (:class:`RaySession`), a plain process group in ``bench/gpu_check.py`` and the tests
(:class:`LocalSession`). Its own collectives go through :class:`raydebias.train.distributed.Comm`, whose
tensors live on the model's device (NCCL accepts nothing else).

Data position: the checkpoint records the source ids consumed in the current epoch, gathered from every
rank. A resumed run skips exactly those rows of that epoch, whichever worker the new split hands them to,
so a restart neither repeats nor loses a group (Ray Data's shard split is not deterministic across runs).

Uneven shards: Ray Data splits rows unevenly (``equal=False``: nothing is dropped to even them out), but
FSDP2 needs every rank in every collective. Each step the ranks agree whether anyone still has data; a
rank that ran out steps on a filler batch whose loss is multiplied by 0.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import random
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Protocol

import pyarrow as pa
import torch

from raydebias.config import Config
from raydebias.train.batching import Batch, Collator
from raydebias.train.checkpoint import STATE_META, export_hf, load_sharded, save_sharded
from raydebias.train.distributed import Comm
from raydebias.train.loss import ContrastiveDebiasLoss, LossOutput
from raydebias.train.model import ContrastiveLM, transformer_blocks

log = logging.getLogger(__name__)

# dataset names: the live augmentation stream (epoch 0), the written parts, held-out groups (optional)
STREAM, TRAIN, VAL = "stream", "train", "val"
_HALF = {"bf16": torch.bfloat16, "fp16": torch.float16}


# --------------------------------------------------------------------------------------------------
# Precision and model
# --------------------------------------------------------------------------------------------------


def bf16_supported(device: torch.device) -> bool:
    """bf16 compute on this device: CUDA asks the GPU (Ampere and later); CPUs run bf16 in torch."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return True


def resolve_precision(precision: str, bf16_when_supported: bool, device: torch.device) -> str:
    """fp32 | fp16 | bf16 actually used: fp16 presets train in bf16 where the device supports it (SPEC §5),
    on GPUs and CPUs alike, so a CPU rehearsal runs the precision the GPU run will use."""
    if precision == "fp16" and bf16_when_supported and bf16_supported(device):
        return "bf16"
    return precision


def enable_activation_checkpointing(lm: torch.nn.Module) -> None:
    """Recompute each transformer block's activations in the backward pass (Hugging Face's per-layer
    checkpointing, non-reentrant: the variant that composes with FSDP2)."""
    kwargs = {"use_reentrant": False}
    if hasattr(lm, "activation_checkpointing_enable"):  # transformers >= 5.20
        lm.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def shard_from_rank0(model: torch.nn.Module, lm: torch.nn.Module, load_source: Callable[[], torch.nn.Module],
                     device: torch.device, precision: str, comm: Comm, activation_checkpointing: bool
                     ) -> torch.nn.Module:
    """``model`` (built on the META device, ``lm`` its transformer) sharded with FSDP2 (each transformer block,
    then the root), given storage on ``device`` and filled with the weights of ``load_source()``, which only
    rank 0 calls (it reads the checkpoint, on CPU); the other ranks receive their shards from it
    (``broadcast_from_rank0``). Buffers outside the state dict (rotary ``inv_freq``) are broadcast as well."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    if activation_checkpointing:
        enable_activation_checkpointing(lm)
    mesh = init_device_mesh(device.type, (comm.world,))
    mp = MixedPrecisionPolicy()  # fp32
    if precision in _HALF:  # compute in half precision, fp32 master weights, fp32 gradient reduction
        mp = MixedPrecisionPolicy(param_dtype=_HALF[precision], reduce_dtype=torch.float32)
    for block in transformer_blocks(lm):
        fully_shard(block, mesh=mesh, mp_policy=mp)
    fully_shard(model, mesh=mesh, mp_policy=mp)
    model.to_empty(device=device)

    full: dict[str, torch.Tensor] = {}
    source: torch.nn.Module | None = None
    if comm.rank == 0:
        source = load_source()
        full = source.state_dict()
    set_model_state_dict(model, full, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
    persistent = set(model.state_dict())
    src_buffers = dict(source.named_buffers()) if source is not None else {}
    for name, buf in model.named_buffers():  # same order on every rank
        if name in persistent:
            continue
        if comm.rank == 0:
            buf.copy_(src_buffers[name].to(buf.device))
        comm.broadcast_tensor_(buf)
    del full, source, src_buffers
    model.train()
    return model


def load_lm_config(model_id: str, overrides: Callable[[Any], Any] | None = None) -> Any:
    from transformers import AutoConfig

    from raydebias.models import resolve_model

    config = AutoConfig.from_pretrained(resolve_model(model_id), trust_remote_code=False)
    if overrides is not None:
        overrides(config)
    return config


def load_tokenizer_padded(model_id: str) -> Any:
    from raydebias.models import load_tokenizer

    tok = load_tokenizer(model_id)
    if tok.pad_token is None:  # as load_model does for every causal LM
        tok.pad_token = tok.eos_token
    return tok


def build_model(cfg: Config, device: torch.device, precision: str, comm: Comm) -> tuple[ContrastiveLM, Any]:
    """LM + head, sharded with FSDP2 (:func:`shard_from_rank0`); rank 0 reads the weights and initialises the
    head from ``cfg.seed``."""
    from transformers import AutoModelForCausalLM

    from raydebias.models import load_model

    t = cfg.train
    tok = load_tokenizer_padded(t.model)
    with torch.device("meta"):
        lm = AutoModelForCausalLM.from_config(load_lm_config(t.model), trust_remote_code=False, dtype=torch.float32)
        model = ContrastiveLM(lm, t.proj_dim)

    def source() -> ContrastiveLM:
        cpu_lm, _ = load_model(t.model, "causal_lm", device="cpu", dtype=torch.float32)
        torch.manual_seed(cfg.seed)  # the head's initialisation
        return ContrastiveLM(cpu_lm, t.proj_dim)

    return shard_from_rank0(model, lm, source, device, precision, comm, t.activation_checkpointing), tok


# --------------------------------------------------------------------------------------------------
# One step
# --------------------------------------------------------------------------------------------------


class WarmupLinear:
    """LR factor: linear warm-up over ``warmup`` steps, then linear decay to 0 at ``total`` (Table 12).

    A callable object (not a closure) so that LambdaLR's state_dict carries ``total``: the number of
    steps per epoch is only estimated before the first epoch (shards are uneven) and corrected after it.
    """

    def __init__(self, warmup: int, total: int):
        self.warmup, self.total = warmup, total

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / (self.warmup + 1)
        return max(0.0, (self.total - step) / max(1, self.total - self.warmup))


def batch_losses(model: ContrastiveLM, batch: Batch, loss_fn: ContrastiveDebiasLoss) -> LossOutput:
    """One forward of ``model`` on ``batch`` and its losses: L_ce (eq. 6), L_cl with w_tox (eq. 7-9), total,
    and the contrastive accuracy counts."""
    reps, logits = model(**batch.model_inputs())
    return loss_fn(logits, batch.ce_target, reps, batch.group, batch.positive, batch.group_toxic)


def step_losses(model: ContrastiveLM, batch: Batch, cfg: Config) -> dict[str, Any]:
    """:func:`batch_losses` with the loss built from ``cfg.train``, as a dict (``loss``, ``l_ce``, ``l_cl``,
    ``lm_tokens``, ``correct``, ``pairs``): for callers outside the loop (``bench/``)."""
    return dict(vars(batch_losses(model, batch, ContrastiveDebiasLoss.from_config(cfg.train))))


@dataclass
class LossSums:
    """Sums over the batches that held data (a filler batch adds nothing), reduced to the reported means.
    One layout for the steps, the epochs and validation; fields are floats so that :meth:`all_reduce` sums
    them in one collective."""

    l_ce: float = 0.0
    l_cl: float = 0.0
    loss: float = 0.0
    correct: float = 0.0  # positive pairs ranked above every negative of their group
    pairs: float = 0.0
    tokens: float = 0.0  # attention-mask tokens of the batches (throughput)
    batches: float = 0.0

    @classmethod
    def of(cls, out: LossOutput, n_tokens: int) -> LossSums:
        """One batch's values."""
        return cls(out.l_ce.item(), out.l_cl.item(), out.loss.item(), float(out.correct), float(out.pairs),
                   float(n_tokens), 1.0)

    def values(self) -> list[float]:
        return [getattr(self, f.name) for f in fields(self)]

    def __add__(self, other: LossSums) -> LossSums:
        return LossSums(*(a + b for a, b in zip(self.values(), other.values(), strict=True)))

    def all_reduce(self, comm: Comm) -> LossSums:
        """The sums over every rank (one collective, on the model's device through ``comm``)."""
        return LossSums(*comm.sum(self.values()))

    def means(self, prefix: str = "") -> dict[str, float]:
        """``l_ce``, ``l_cl``, ``loss`` per batch and ``contrastive_accuracy`` per pair (NaN without pairs)."""
        n = max(self.batches, 1)
        return {f"{prefix}l_ce": self.l_ce / n, f"{prefix}l_cl": self.l_cl / n, f"{prefix}loss": self.loss / n,
                f"{prefix}contrastive_accuracy": self.correct / self.pairs if self.pairs > 0 else float("nan")}


# --------------------------------------------------------------------------------------------------
# Sessions: what the loop needs from whoever runs it
# --------------------------------------------------------------------------------------------------


class Session(Protocol):
    """The loop's view of its runner. ``rank``/``world`` of the process group, ``device`` of the model."""

    rank: int
    world: int
    device: torch.device

    def has_dataset(self, name: str) -> bool: ...

    def batches(self, name: str, batch_size: int, shuffle_seed: int | None) -> Iterator[pa.Table]:
        """This rank's share of dataset ``name`` in batches of source rows (shuffled locally if a seed)."""

    def report(self, metrics: dict[str, Any], checkpoint_dir: Path | None = None, name: str | None = None) -> None:
        """Report metrics; with ``checkpoint_dir`` (every rank its own directory, the same ``name``) also
        register the checkpoint: the ranks' files are merged into one checkpoint directory."""

    def latest_checkpoint(self) -> contextlib.AbstractContextManager[Path | None]: ...


class RaySession:
    """Ray Train: datasets from ``get_dataset_shard``, ``ray.train.report``, ``ray.train.get_checkpoint``."""

    def __init__(self) -> None:
        import ray.train
        import ray.train.torch

        ctx = ray.train.get_context()
        self.rank, self.world = ctx.get_world_rank(), ctx.get_world_size()
        self.device = ray.train.torch.get_device()

    def has_dataset(self, name: str) -> bool:
        import ray.train

        try:
            return ray.train.get_dataset_shard(name) is not None
        except KeyError:
            return False

    def batches(self, name: str, batch_size: int, shuffle_seed: int | None) -> Iterator[pa.Table]:
        import ray.train

        shard = ray.train.get_dataset_shard(name)
        return iter(shard.iter_batches(batch_size=batch_size, batch_format="pyarrow",
                                       local_shuffle_buffer_size=None if shuffle_seed is None else 4 * batch_size,
                                       local_shuffle_seed=shuffle_seed))

    def report(self, metrics: dict[str, Any], checkpoint_dir: Path | None = None, name: str | None = None) -> None:
        import ray.train
        from ray.train import Checkpoint

        if checkpoint_dir is None:
            ray.train.report(metrics)
        else:
            ray.train.report(metrics, checkpoint=Checkpoint.from_directory(str(checkpoint_dir)),
                             checkpoint_dir_name=name)

    @contextlib.contextmanager
    def latest_checkpoint(self) -> Iterator[Path | None]:
        import ray.train

        ckpt = ray.train.get_checkpoint()
        if ckpt is None:
            yield None
            return
        with ckpt.as_directory() as d:
            yield Path(d)


class LocalSession:
    """A plain process group (``torch.distributed`` already initialised by the caller): rows in memory,
    split round-robin by rank; checkpoints under ``root/<name>`` (a directory every rank can reach)."""

    def __init__(self, datasets: dict[str, list[dict[str, Any]]], root: Path, device: torch.device | str):
        import torch.distributed as dist

        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self.device = torch.device(device)
        self.datasets, self.root = datasets, Path(root)
        self.reports: list[dict[str, Any]] = []

    def has_dataset(self, name: str) -> bool:
        return name in self.datasets

    def batches(self, name: str, batch_size: int, shuffle_seed: int | None) -> Iterator[pa.Table]:
        rows = self.datasets[name][self.rank::self.world]
        if shuffle_seed is not None:
            rows = list(rows)
            random.Random(shuffle_seed).shuffle(rows)
        for i in range(0, len(rows), batch_size):
            yield pa.Table.from_pylist(rows[i:i + batch_size])

    def report(self, metrics: dict[str, Any], checkpoint_dir: Path | None = None, name: str | None = None) -> None:
        self.reports.append(dict(metrics))
        if checkpoint_dir is not None:
            dest = self.root / str(name)
            dest.mkdir(parents=True, exist_ok=True)
            shutil.copytree(checkpoint_dir, dest, dirs_exist_ok=True)

    @contextlib.contextmanager
    def latest_checkpoint(self) -> Iterator[Path | None]:
        Comm(self.device).barrier()  # every rank's files of the last checkpoint are in place
        metas = list(self.root.glob(f"step-*/{STATE_META}"))
        # the newest: by step, then by when it was written (an epoch-end checkpoint may share its step with
        # a mid-epoch one written just before it; the random suffix of the name must not decide)
        yield max(metas, key=lambda p: (p.parent.name.split("-")[1], p.stat().st_mtime_ns)).parent if metas else None


# --------------------------------------------------------------------------------------------------
# The loop, in phases: setup -> resume -> per epoch (train_epoch -> validate -> checkpoint) -> export
# --------------------------------------------------------------------------------------------------


@dataclass
class Worker:
    """What :func:`setup` builds once per attempt on this rank: the model and everything that steps it."""

    cfg: Config
    loop_config: dict[str, Any]
    session: Session
    comm: Comm
    precision: str  # the one actually used (resolve_precision)
    model: ContrastiveLM
    tok: Any
    collate: Collator
    filler: Batch  # stepped (loss x 0) by a rank whose shard ran out while others still train
    loss_fn: ContrastiveDebiasLoss
    optimizer: torch.optim.Optimizer
    schedule: WarmupLinear
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: Any  # ShardedGradScaler under fp16, else None

    @property
    def device(self) -> torch.device:
        return self.session.device


@dataclass
class Progress:
    """Where training stands: what a checkpoint records (meta.json) and :func:`resume` restores."""

    step: int = 0
    epoch: int = 0
    # ids of this epoch trained before this attempt (all ranks), and by this rank since the epoch (or the
    # resume) started
    consumed: set[str] = field(default_factory=set)
    mine: list[str] = field(default_factory=list)
    history: list[dict] = field(default_factory=list)  # every step's and epoch's metrics
    epoch_steps: int | None = None  # steps of the first epoch, once known
    resumes: list[dict] = field(default_factory=list)  # every (re)start from a checkpoint: a new job run or a
    # worker-group restart
    memory: list[dict] = field(default_factory=list)  # memory_stats of every rank at the last epoch end
    recorded: bool = True  # whether the last checkpoint records this attempt's resume


def setup(cfg: Config, loop_config: dict[str, Any], session: Session) -> Worker:
    """Model (FSDP2, weights from rank 0), collator, loss, AdamW + warm-up schedule [+ grad scaler]."""
    t = cfg.train
    device = session.device
    comm = Comm(device)
    precision = resolve_precision(t.precision, t.bf16_when_supported, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    model, tok = build_model(cfg, device, precision, comm)
    collate = Collator(tok, t.max_length, t.max_positives, t.max_negatives, cfg.seed, t.shared_prompt)
    optimizer = torch.optim.AdamW(model.parameters(), lr=t.lr, weight_decay=t.weight_decay)
    # an estimate (shards are uneven): the first epoch's real length corrects it (run_worker)
    steps_per_epoch = max(1, math.ceil(loop_config["rows"] / (session.world * t.groups_per_batch)))
    schedule = WarmupLinear(t.warmup_steps, steps_per_epoch * t.epochs)
    scaler = None
    if precision == "fp16":  # fp16 gradients underflow without loss scaling; bf16 needs none
        from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler

        scaler = ShardedGradScaler(device=device.type)
    return Worker(cfg=cfg, loop_config=loop_config, session=session, comm=comm, precision=precision, model=model,
                  tok=tok, collate=collate, filler=collate.filler(), loss_fn=ContrastiveDebiasLoss.from_config(t),
                  optimizer=optimizer, schedule=schedule,
                  scheduler=torch.optim.lr_scheduler.LambdaLR(optimizer, schedule), scaler=scaler)


def resume(w: Worker) -> Progress:
    """From the session's last checkpoint, if any: each rank loads its own shards (model, optimizer), then
    scheduler, scaler, step, epoch and the ids of the epoch consumed; a finished epoch moves on to the next."""
    with w.session.latest_checkpoint() as ckpt_dir:
        if ckpt_dir is None:
            return Progress()
        state = load_sharded(ckpt_dir, w.model, w.optimizer)
    w.scheduler.load_state_dict(state["scheduler"])
    if state.get("epoch_steps"):  # epochs may change between attempts: re-aim the decay
        w.schedule.total = state["epoch_steps"] * w.cfg.train.epochs
    if w.scaler is not None and state.get("scaler"):
        w.scaler.load_state_dict(state["scaler"])
    p = Progress(step=state["step"], epoch=state["epoch"], consumed=set(state["consumed"]),
                 history=state["history"], epoch_steps=state.get("epoch_steps"), recorded=False)
    p.resumes = [*state.get("resumes", []), {"step": p.step, "epoch": p.epoch, "epoch_done": state["epoch_done"],
                                             "groups_done": len(p.consumed), "world_size": w.session.world}]
    if state["epoch_done"]:
        p.epoch, p.consumed = p.epoch + 1, set()
    if w.session.rank == 0:
        log.warning("train: resumed from checkpoint at step %d (epoch %d, %d groups of it done)",
                    p.step, p.epoch, len(p.consumed))
    return p


def _next_rows(it: Iterator[pa.Table], skip: set[str]) -> list[dict] | None:
    """The next batch's rows without those in ``skip`` (resume); None when the shard is exhausted."""
    for b in it:
        rows = [r for r in b.to_pylist() if r["id"] not in skip] if skip else b.to_pylist()
        if rows:
            return rows
    return None


def _rows_while_any(w: Worker, it: Iterator[pa.Table], skip: set[str]) -> Iterator[list[dict] | None]:
    """This rank's next rows (None once its shard is exhausted) for as long as ANY rank still has data:
    the uneven-shard handshake, one collective per step. A rank that gets None steps on the filler batch."""
    while True:
        rows = _next_rows(it, skip)
        if not w.comm.any(rows is not None):
            return
        yield rows


def _batch(w: Worker, rows: list[dict] | None, epoch: int) -> Batch:
    return (w.filler if rows is None else w.collate(rows, epoch)).to(w.device)


def optimizer_step(w: Worker, loss: torch.Tensor) -> None:
    """backward [scaled under fp16] -> :func:`apply_gradients`."""
    (w.scaler.scale(loss) if w.scaler is not None else loss).backward()
    apply_gradients(w.model, w.optimizer, w.scheduler, w.scaler, w.cfg.train.grad_clip)


def apply_gradients(model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, scaler: Any,
                    grad_clip: float) -> None:
    """After backward: [unscale under fp16] -> clip -> AdamW -> schedule -> zero grads."""
    if scaler is not None:
        scaler.unscale_(optimizer)
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)


def train_epoch(w: Worker, p: Progress) -> dict[str, Any]:
    """One epoch over this rank's shard (epoch 0 from the live stream when ``streamed``), skipping the ids
    a resumed epoch already consumed. Reports every step's metrics (every ``report_every_steps``) and
    checkpoints every ``checkpoint_every_steps``; returns the epoch's metrics."""
    t = w.cfg.train
    name = STREAM if p.epoch == 0 and w.loop_config["streamed"] else TRAIN
    it = w.session.batches(name, t.groups_per_batch, None if name == STREAM else w.cfg.seed + p.epoch)
    sums = LossSums()
    t_epoch = time.perf_counter()
    for rows in _rows_while_any(w, it, p.consumed):
        t0 = time.perf_counter()
        batch = _batch(w, rows, p.epoch)
        out = batch_losses(w.model, batch, w.loss_fn)
        optimizer_step(w, out.loss * (0.0 if rows is None else 1.0))
        p.step += 1
        if rows is not None:
            p.mine.extend(r["id"] for r in rows)
        local = (LossSums() if rows is None else LossSums.of(out, batch.n_tokens)).all_reduce(w.comm)
        sums = sums + local
        dt = time.perf_counter() - t0
        metrics = {"step": p.step, "epoch": p.epoch, **local.means(), "tokens_per_s": local.tokens / dt,
                   "lr": w.scheduler.get_last_lr()[0]}
        p.history.append(metrics)
        if t.checkpoint_every_steps and p.step % t.checkpoint_every_steps == 0:
            checkpoint(w, p, metrics, epoch_done=False)
        elif p.step % t.report_every_steps == 0:
            w.session.report(metrics)
        if w.session.rank == 0 and p.step % t.report_every_steps == 0:
            log.info("train: %s", json.dumps({k: round(v, 4) for k, v in metrics.items()}))
    return {"step": p.step, "epoch": p.epoch, "epoch_done": True, **sums.means(),
            "tokens_per_s": sums.tokens / (time.perf_counter() - t_epoch)}


def validate(w: Worker) -> dict[str, float]:
    """Losses on this rank's shard of held-out groups, forward only, summed over all ranks.

    Every rank takes part in every forward (FSDP2 all-gathers parameters), so ranks whose shard is
    exhausted run the filler batch, as in training. Negatives are sampled as in epoch 0 every time,
    so validation sees the same groups each epoch.
    """
    w.model.eval()
    sums = LossSums()
    with torch.no_grad():
        for rows in _rows_while_any(w, w.session.batches(VAL, w.cfg.train.groups_per_batch, None), set()):
            batch = _batch(w, rows, 0)
            out = batch_losses(w.model, batch, w.loss_fn)
            if rows is not None:
                sums = sums + LossSums.of(out, batch.n_tokens)
    w.model.train()
    sums = sums.all_reduce(w.comm)
    if sums.batches == 0:
        raise RuntimeError("train: validation was requested but the validation dataset is empty")
    return sums.means(prefix="val_")


def checkpoint(w: Worker, p: Progress, metrics: dict[str, Any], epoch_done: bool) -> None:
    """Report ``metrics`` with a sharded checkpoint: every rank saves its shards, rank 0 the meta (step,
    epoch, the ids of the epoch consumed by all ranks, history, resumes, memory). Adds ``groups_done`` to
    ``metrics`` (the dict in the history too)."""
    p.recorded = True
    rank = w.session.rank
    done = sorted(p.consumed.union(*w.comm.gather_objects(p.mine)))
    metrics["groups_done"] = len(done)  # groups of this epoch trained so far, all ranks (also in history)
    # One name for every rank's part (Ray merges them into that directory), unique per report: after
    # a restart the same step is checkpointed again, and Ray's checkpoint manager would otherwise
    # register one directory twice and later delete it twice.
    name = w.comm.broadcast_object(f"step-{p.step:07d}-{uuid.uuid4().hex[:8]}" if rank == 0 else None)
    meta = {"step": p.step, "epoch": p.epoch, "epoch_done": epoch_done, "consumed": done, "precision": w.precision,
            "epoch_steps": p.epoch_steps, "train_config": w.loop_config["train_config"], "history": p.history,
            "resumes": p.resumes, "world_size": w.session.world, "memory": p.memory}
    with tempfile.TemporaryDirectory(prefix="raydebias-ckpt-") as tmp:
        save_sharded(Path(tmp), w.model, w.optimizer, w.scheduler, w.scaler, meta, rank)
        w.session.report(metrics, checkpoint_dir=Path(tmp), name=name)


def memory_stats(model: torch.nn.Module, optimizer: torch.optim.Optimizer, device: torch.device) -> dict[str, int]:
    """This rank's share of the training state (bytes of its parameter shards and optimizer state), the
    full parameters' size, and its peak memory (CUDA allocator peak, or the process's max RSS on CPU)."""
    import resource

    local = full = 0
    for p in model.parameters():
        shard = p.to_local() if hasattr(p, "to_local") else p
        local += shard.numel() * shard.element_size()
        full += p.numel() * p.element_size()
    optim = 0
    for state in optimizer.state.values():
        for v in state.values():
            if torch.is_tensor(v):
                v = v.to_local() if hasattr(v, "to_local") else v
                optim += v.numel() * v.element_size()
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device)
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    return {"param_shard_bytes": local, "optim_shard_bytes": optim, "full_param_bytes": full, "peak_bytes": peak}


def run_worker(cfg: Config, loop_config: dict[str, Any], session: Session) -> None:
    """The whole loop on one rank (module docstring). ``loop_config``: ``rows`` (groups, to estimate the
    schedule), ``streamed`` (epoch 0 from STREAM), ``validate``, ``train_config`` (recorded in the
    checkpoint), ``export_to`` (a StoragePath URI for the final model, or None)."""
    t = cfg.train
    w = setup(cfg, loop_config, session)
    p = resume(w)
    while p.epoch < t.epochs:
        metrics = train_epoch(w, p)
        if loop_config.get("validate"):
            val = validate(w)
            metrics |= val
            if session.rank == 0:
                log.info("train: epoch %d validation %s", p.epoch,
                         json.dumps({k: round(v, 4) for k, v in val.items()}))
        p.history.append(metrics)
        if p.epoch == 0:  # the first epoch's real length (all ranks agree on it) sets the schedule
            p.epoch_steps = p.step
            w.schedule.total = p.epoch_steps * t.epochs
        stats = w.comm.gather_objects(memory_stats(w.model, w.optimizer, w.device))
        p.memory = [{"rank": r, **m} for r, m in enumerate(stats)]
        checkpoint(w, p, metrics, epoch_done=True)
        p.epoch, p.consumed, p.mine = p.epoch + 1, set(), []

    if not p.recorded:  # restarted after the last checkpoint (e.g. during the export): keep the resume on record
        p.epoch = t.epochs - 1
        last = p.history[-1] if p.history else {"step": p.step, "epoch": p.epoch}
        checkpoint(w, p, {**last, "epoch_done": True}, epoch_done=True)
    if loop_config.get("export_to"):
        from raydebias.storage import StoragePath

        export_hf(w.model, w.tok, w.precision, t.proj_dim, StoragePath.of(loop_config["export_to"]), session.rank)


def run_local(cfg: Config, rows: list[dict[str, Any]], root: Path, device: torch.device | str = "cpu", *,
              export_to: str | None = None, val_rows: list[dict[str, Any]] | None = None) -> LocalSession:
    """The loop without Ray, in this process, on a process group of this process alone unless one is
    already initialised (gloo on CPU, NCCL on CUDA: the backends Ray Train picks). For
    ``bench/gpu_check.py`` and tests; returns the session (its ``reports``)."""
    import os

    import torch.distributed as dist

    device = torch.device(device)
    own_group = not dist.is_initialized()
    if own_group:
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(29500 + os.getpid() % 1000))
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=0, world_size=1)
    try:
        datasets = {TRAIN: rows, **({VAL: val_rows} if val_rows else {})}
        session = LocalSession(datasets, root, device)
        run_worker(cfg, {"rows": len(rows), "streamed": False, "validate": bool(val_rows),
                         "train_config": {}, "export_to": export_to}, session)
        return session
    finally:
        if own_group:
            dist.destroy_process_group()


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """Ray Train's entry point on each worker."""
    cfg: Config = loop_config["cfg"]
    torch.set_num_threads(max(1, int(cfg.train.cpus_per_worker)))
    run_worker(cfg, loop_config, RaySession())


__all__ = ["STREAM", "TRAIN", "VAL", "LocalSession", "LossSums", "Progress", "RaySession", "Session", "WarmupLinear",
           "Worker", "apply_gradients", "batch_losses", "bf16_supported", "build_model", "load_lm_config", "load_tokenizer_padded",
           "shard_from_rank0", "checkpoint", "memory_stats", "optimizer_step",
           "resolve_precision", "resume", "run_local", "run_worker", "setup", "step_losses", "train_epoch",
           "train_loop_per_worker", "validate"]
