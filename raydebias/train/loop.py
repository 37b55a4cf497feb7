"""The training loop each Ray Train worker runs, top to bottom (SPEC §3-§5; paper Section 4.3, App. F).

    load LM + head -> FSDP2 fully_shard per block, then the root -> AdamW + linear warm-up schedule
    -> restore the last checkpoint (model, head, optimizer, scheduler, scaler, step, epoch, ids consumed)
    -> per epoch: whole groups from this worker's shard -> L = L_ce + alpha * w_tox * L_cl -> step
    -> at each epoch end, validation losses on held-out groups when a ``val`` dataset is given (sweeps)
    -> checkpoint every N steps and at each epoch end (full state dict, written by rank 0).

Data position: the checkpoint records the source ids consumed in the current epoch, gathered from every
rank. A resumed run skips exactly those rows of that epoch, whichever worker the new split hands them to,
so a restart neither repeats nor loses a group (Ray Data's shard split is not deterministic across runs).

Uneven shards: Ray Data splits rows unevenly (``equal=False``: nothing is dropped to even them out), but
FSDP2 needs every rank in every collective. Each step the ranks agree (all-reduce) whether anyone still
has data; a rank that ran out steps on a filler batch whose loss is multiplied by 0.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from raydebias.config import Config
from raydebias.train.batching import Batch, Collator
from raydebias.train.loss import contrastive_accuracy, contrastive_loss, lm_loss, weighted_contrastive_loss
from raydebias.train.model import ContrastiveLM, transformer_blocks

log = logging.getLogger(__name__)

STATE_WEIGHTS, STATE_TRAINER, STATE_META = "model.safetensors", "trainer_state.pt", "meta.json"
# dataset names: the live augmentation stream (epoch 0), the written parts, held-out groups (optional)
STREAM, TRAIN, VAL = "stream", "train", "val"


def resolve_precision(precision: str, bf16_when_supported: bool, device: torch.device) -> str:
    """fp32 | fp16 | bf16 actually used: fp16 presets train in bf16 where the GPU supports it (SPEC §5);
    on CPU everything trains in fp32 (CPU half-precision matmuls are slow and gloo reductions in half
    precision are not what the presets mean)."""
    if device.type != "cuda":
        return "fp32"
    if precision == "fp16" and bf16_when_supported and torch.cuda.is_bf16_supported():
        return "bf16"
    return precision


def build_model(cfg: Config, device: torch.device, precision: str) -> tuple[ContrastiveLM, Any]:
    """LM + head, sharded with FSDP2: each transformer block, then the root (LM embeddings, head)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    from raydebias.models import load_model

    lm, tok = load_model(cfg.train.model, "causal_lm", device="cpu", dtype=torch.float32)
    torch.manual_seed(cfg.seed)  # the head starts identical on every rank before it is sharded
    model = ContrastiveLM(lm, cfg.train.proj_dim).to(device)
    model.train()
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    mp = MixedPrecisionPolicy()  # fp32
    if precision in ("bf16", "fp16"):
        dtype = torch.bfloat16 if precision == "bf16" else torch.float16
        mp = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32)
    for block in transformer_blocks(lm):
        fully_shard(block, mesh=mesh, mp_policy=mp)
    fully_shard(model, mesh=mesh, mp_policy=mp)
    return model, tok


def full_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """Full (unsharded) model and optimizer state dicts on CPU. A collective: every rank calls it."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_model_state_dict(model, options=opts), get_optimizer_state_dict(model, optimizer, options=opts)


def load_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, ckpt_dir: Path) -> dict:
    """Every rank loads the full state from a checkpoint directory and keeps its shards."""
    from safetensors.torch import load_file
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    opts = StateDictOptions(full_state_dict=True)
    set_model_state_dict(model, load_file(str(ckpt_dir / STATE_WEIGHTS)), options=opts)
    trainer_state = torch.load(ckpt_dir / STATE_TRAINER, weights_only=True)
    set_optimizer_state_dict(model, optimizer, trainer_state.pop("optimizer"), options=opts)
    trainer_state.update(json.loads((ckpt_dir / STATE_META).read_text()))
    return trainer_state


def save_state(out_dir: Path, model_sd: dict, optim_sd: dict, scheduler, scaler, meta: dict) -> None:
    from safetensors.torch import save_file

    # clone: tied weights (GPT-2's wte / lm_head) share storage, which safetensors refuses to write
    save_file({k: v.detach().clone().contiguous() for k, v in model_sd.items()}, str(out_dir / STATE_WEIGHTS))
    torch.save({"optimizer": optim_sd, "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict() if scaler is not None else None}, out_dir / STATE_TRAINER)
    (out_dir / STATE_META).write_text(json.dumps(meta))


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


def step_losses(model: ContrastiveLM, batch: Batch, cfg: Config) -> dict[str, torch.Tensor]:
    """One forward: L_ce (eq. 6), L_cl with w_tox (eq. 7-9), total, and accuracy counts."""
    t = cfg.train
    reps, logits = model(batch.input_ids, batch.attention_mask, batch.pool_mask, batch.lm_rows)
    l_ce, n_lm = lm_loss(logits, batch.labels, t.label_smoothing)
    reps = reps.float()
    if t.toxic_weight_scope == "group":
        w = torch.where(batch.group_toxic, t.toxic_weight, 1.0).to(reps)
        l_cl = weighted_contrastive_loss(reps, batch.group, batch.positive, t.tau, w)
    else:  # the paper: w_tox for the whole batch when any of its negatives is a toxic rewrite
        w_tox = t.toxic_weight if bool(batch.group_toxic.any()) else 1.0
        l_cl = w_tox * contrastive_loss(reps, batch.group, batch.positive, t.tau)
    correct, pairs = contrastive_accuracy(reps.detach(), batch.group, batch.positive)
    return {"l_ce": l_ce, "l_cl": l_cl, "loss": l_ce + t.alpha * l_cl, "correct": correct, "pairs": pairs,
            "lm_tokens": n_lm}


def _next_rows(it, skip: set[str]) -> list[dict] | None:
    """The next batch's rows without those in ``skip`` (resume); None when the shard is exhausted."""
    for b in it:
        rows = [r for r in b.to_pylist() if r["id"] not in skip] if skip else b.to_pylist()
        if rows:
            return rows
    return None


def validate(model: ContrastiveLM, collate: Collator, shard: Any, cfg: Config, device: torch.device,
             filler: Batch) -> dict[str, float]:
    """Losses on this rank's shard of held-out groups, forward only, summed over all ranks.

    Every rank takes part in every forward (FSDP2 all-gathers parameters), so ranks whose shard is
    exhausted run the filler batch, as in training. Negatives are sampled as in epoch 0 every time,
    so validation sees the same groups each epoch.
    """
    model.eval()
    sums = torch.zeros(6, dtype=torch.float64)  # l_ce, l_cl, loss, correct, pairs, real batches
    it = iter(shard.iter_batches(batch_size=cfg.train.groups_per_batch, batch_format="pyarrow"))
    with torch.no_grad():
        while True:
            rows = _next_rows(it, set())
            has = torch.tensor([0.0 if rows is None else 1.0])
            dist.all_reduce(has, op=dist.ReduceOp.MAX)
            if has.item() == 0:
                break
            out = step_losses(model, (filler if rows is None else collate(rows, 0)).to(device), cfg)
            if rows is not None:
                sums += torch.tensor([out["l_ce"].item(), out["l_cl"].item(), out["loss"].item(), out["correct"],
                                      out["pairs"], 1.0], dtype=torch.float64)
    model.train()
    dist.all_reduce(sums)
    n = sums[5].item()
    if n == 0:
        raise RuntimeError("train: validation was requested but the validation dataset is empty")
    return {"val_l_ce": sums[0].item() / n, "val_l_cl": sums[1].item() / n, "val_loss": sums[2].item() / n,
            "val_contrastive_accuracy": sums[3].item() / sums[4].item() if sums[4] > 0 else float("nan")}


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    import ray.train
    from ray.train import Checkpoint

    cfg: Config = loop_config["cfg"]
    t = cfg.train
    torch.set_num_threads(max(1, int(t.cpus_per_worker)))
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    precision = resolve_precision(t.precision, t.bf16_when_supported, device)
    model, tok = build_model(cfg, device, precision)
    collate = Collator(tok, t.max_length, t.max_positives, t.max_negatives, cfg.seed)

    optimizer = torch.optim.AdamW(model.parameters(), lr=t.lr, weight_decay=t.weight_decay)
    steps_per_epoch = max(1, math.ceil(loop_config["rows"] / (world * t.groups_per_batch)))
    schedule = WarmupLinear(t.warmup_steps, steps_per_epoch * t.epochs)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    scaler = None
    if precision == "fp16":
        from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler

        scaler = ShardedGradScaler()

    step, epoch, consumed, history, epoch_steps = 0, 0, set(), [], None
    resumes: list[dict] = []  # every (re)start from a checkpoint: a new job run, or a worker-group restart
    ckpt = ray.train.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            state = load_state(model, optimizer, Path(d))
        scheduler.load_state_dict(state["scheduler"])
        if state.get("epoch_steps"):  # epochs may change between attempts: re-aim the decay
            schedule.total = state["epoch_steps"] * t.epochs
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        step, epoch, consumed, history = state["step"], state["epoch"], set(state["consumed"]), state["history"]
        epoch_steps = state.get("epoch_steps")
        resumes = [*state.get("resumes", []), {"step": step, "epoch": epoch, "epoch_done": state["epoch_done"],
                                                "groups_done": len(consumed), "world_size": world}]
        if state["epoch_done"]:
            epoch, consumed = epoch + 1, set()
        if rank == 0:
            log.warning("train: resumed from checkpoint at step %d (epoch %d, %d groups of it done)",
                        step, epoch, len(consumed))
    filler = collate.filler()
    mine: list[str] = []  # ids this rank consumed since the epoch (or the resume) started

    def checkpoint(metrics: dict, epoch_done: bool) -> None:
        model_sd, optim_sd = full_state(model, optimizer)
        gathered: list[list[str]] = [None] * world  # type: ignore[list-item]
        dist.all_gather_object(gathered, mine)
        done = sorted(consumed.union(*gathered))
        metrics["groups_done"] = len(done)  # groups of this epoch trained so far, all ranks (also in history)
        if rank == 0:
            with tempfile.TemporaryDirectory() as tmp:
                save_state(Path(tmp), model_sd, optim_sd, scheduler, scaler,
                           {"step": step, "epoch": epoch, "epoch_done": epoch_done, "consumed": done,
                            "precision": precision, "epoch_steps": epoch_steps, "train_config": loop_config["train_config"],
                            "history": history, "resumes": resumes})
                # A unique name per report: after a restart the same step is checkpointed again, and Ray's
                # checkpoint manager would otherwise register one directory twice and later delete it twice.
                ray.train.report(metrics, checkpoint=Checkpoint.from_directory(tmp),
                                 checkpoint_dir_name=f"step-{step:07d}-{uuid.uuid4().hex[:8]}")
        else:
            ray.train.report(metrics, checkpoint=None)

    while epoch < t.epochs:
        name = STREAM if epoch == 0 and loop_config["streamed"] else TRAIN
        shard = ray.train.get_dataset_shard(name)
        it = iter(shard.iter_batches(batch_size=t.groups_per_batch, batch_format="pyarrow",
                                     local_shuffle_buffer_size=None if name == STREAM else 4 * t.groups_per_batch,
                                     local_shuffle_seed=cfg.seed + epoch))
        sums = torch.zeros(7, dtype=torch.float64)  # l_ce, l_cl, loss, correct, pairs, tokens, steps
        t_epoch = time.perf_counter()
        while True:
            rows = _next_rows(it, consumed)
            has = torch.tensor([0.0 if rows is None else 1.0])
            dist.all_reduce(has, op=dist.ReduceOp.MAX)
            if has.item() == 0:
                break
            t0 = time.perf_counter()
            batch = (filler if rows is None else collate(rows, epoch)).to(device)
            out = step_losses(model, batch, cfg)
            loss = out["loss"] * (0.0 if rows is None else 1.0)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.unscale_(optimizer)
            else:
                loss.backward()
            if t.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            if rows is not None:
                mine.extend(r["id"] for r in rows)
            real = 0.0 if rows is None else 1.0
            local = torch.tensor([out["l_ce"].item() * real, out["l_cl"].item() * real, out["loss"].item() * real,
                                  out["correct"] * real, out["pairs"] * real, batch.n_tokens * real, real],
                                 dtype=torch.float64)
            dist.all_reduce(local)
            sums += local
            dt = time.perf_counter() - t0
            metrics = {"step": step, "epoch": epoch, "l_ce": local[0].item() / max(local[6].item(), 1),
                       "l_cl": local[1].item() / max(local[6].item(), 1),
                       "loss": local[2].item() / max(local[6].item(), 1),
                       "contrastive_accuracy": local[3].item() / local[4].item() if local[4] > 0 else float("nan"),
                       "tokens_per_s": local[5].item() / dt, "lr": scheduler.get_last_lr()[0]}
            history.append(metrics)
            if t.checkpoint_every_steps and step % t.checkpoint_every_steps == 0:
                checkpoint(metrics, epoch_done=False)
            elif step % t.report_every_steps == 0:
                ray.train.report(metrics)
            if rank == 0 and step % t.report_every_steps == 0:
                log.info("train: %s", json.dumps({k: round(v, 4) for k, v in metrics.items()}))
        n = max(sums[6].item(), 1)
        epoch_metrics = {"step": step, "epoch": epoch, "epoch_done": True,
                         "l_ce": sums[0].item() / n, "l_cl": sums[1].item() / n, "loss": sums[2].item() / n,
                         "contrastive_accuracy": sums[3].item() / sums[4].item() if sums[4] > 0 else float("nan"),
                         "tokens_per_s": sums[5].item() / (time.perf_counter() - t_epoch)}
        if loop_config.get("validate"):
            epoch_metrics |= validate(model, collate, ray.train.get_dataset_shard(VAL), cfg, device, filler)
            if rank == 0:
                log.info("train: epoch %d validation %s", epoch,
                         json.dumps({k: round(v, 4) for k, v in epoch_metrics.items() if k.startswith("val_")}))
        history.append(epoch_metrics)
        if epoch == 0:  # the first epoch's real length (all ranks agree on it) sets the schedule
            epoch_steps = step
            schedule.total = epoch_steps * t.epochs
        checkpoint(epoch_metrics, epoch_done=True)
        epoch, consumed, mine = epoch + 1, set(), []


__all__ = ["STREAM", "TRAIN", "VAL", "build_model", "resolve_precision", "step_losses", "train_loop_per_worker",
           "validate"]
