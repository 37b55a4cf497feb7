"""Sharded training checkpoints (torch.distributed.checkpoint) and the workers' final export.

A checkpoint directory, as Ray Train merges the workers' files into one storage directory:

    __0_0.distcp ... __{W-1}_0.distcp   each rank's shards of the model and the optimizer (DCP)
    .metadata                           DCP's index of the shards (written by the coordinator, rank 0)
    trainer_state.pt                    scheduler + grad scaler state (rank 0; small)
    meta.json                           step, epoch, ids consumed, history, resumes, train config (rank 0)

Every rank writes only its own shards and, on resume, reads only the parts of the shards it owns: no
rank ever holds the full model or the full optimizer state (Llama-2-7B's AdamW state alone is 56 GB).
A resume may use another world size: DCP reshards on load.

The final Hugging Face export (:func:`export_hf`) is written by the workers too, never by the Ray
driver (a cluster head has little memory): the ranks gather the full weights onto rank 0's CPU
(``cpu_offload``: one copy, on one rank), and rank 0 writes ``save_pretrained`` + the projection head.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from raydebias.train.model import HEAD_CONFIG, ContrastiveLM, hidden_size_of, save_head

STATE_TRAINER, STATE_META, DCP_METADATA = "trainer_state.pt", "meta.json", ".metadata"


def _dcp_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_sd, optim_sd = get_state_dict(model, optimizer)  # sharded (DTensor) views, no gather
    return {"model": model_sd, "optim": optim_sd}


def save_sharded(out_dir: Path, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
                 scaler: Any, meta: dict[str, Any], rank: int) -> None:
    """This rank's shards into ``out_dir`` (a collective: every rank calls it, each with its own dir);
    rank 0 adds the DCP index, the scheduler/scaler state and ``meta``."""
    import torch.distributed.checkpoint as dcp

    dcp.save(_dcp_state(model, optimizer), checkpoint_id=str(out_dir))
    if rank == 0:
        torch.save({"scheduler": scheduler.state_dict(),
                    "scaler": scaler.state_dict() if scaler is not None else None}, out_dir / STATE_TRAINER)
        (out_dir / STATE_META).write_text(json.dumps(meta))


def load_sharded(ckpt_dir: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Load this rank's shards of model + optimizer from ``ckpt_dir`` (a collective); returns the trainer
    state (scheduler, scaler) merged with meta.json."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import set_state_dict

    if not (ckpt_dir / DCP_METADATA).is_file():
        raise RuntimeError(
            f"{ckpt_dir} is not a sharded checkpoint (no {DCP_METADATA}): it was written by an older raydebias "
            "(full-state safetensors). Start the run in a new --output directory.")
    state = _dcp_state(model, optimizer)
    dcp.load(state, checkpoint_id=str(ckpt_dir))  # in place, each rank reads what it owns
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
    trainer_state = torch.load(ckpt_dir / STATE_TRAINER, weights_only=True)
    trainer_state.update(json.loads((ckpt_dir / STATE_META).read_text()))
    return trainer_state


def read_meta(ckpt_dir: Any) -> dict[str, Any]:
    """meta.json of a checkpoint directory (a Path or a StoragePath)."""
    return json.loads((ckpt_dir / STATE_META).read_text())


def export_hf(model: ContrastiveLM | nn.Module, tokenizer: Any, precision: str, proj_dim: int | None, dest: Any,
              rank: int) -> None:
    """The trained LM as a ``save_pretrained`` directory (+ tokenizer + projection head, when ``model`` has
    one: ``proj_dim`` is None for a plain LM wrapper such as the baselines' fine-tuning) at ``dest`` (a
    StoragePath), committed as a whole. A collective: every rank calls it; rank 0 writes.

    The full weights are gathered onto rank 0's CPU only (``full_state_dict`` + ``cpu_offload``); rank 0
    puts them into an LM skeleton built on the meta device (no second copy, no random init) and saves
    it in the training precision's dtype (bf16/fp16 runs export half-precision weights).
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if rank != 0:
        return
    lm_sd = {k.removeprefix("lm."): v for k, v in full.items() if k.startswith("lm.")}
    head_sd = {k.removeprefix("head."): v for k, v in full.items() if k.startswith("head.")}
    lm = skeleton_like(model.lm)
    missing, unexpected = lm.load_state_dict(lm_sd, strict=False, assign=True)
    # Tied output embeddings (GPT-2) appear once in the state dict: tie them again after assign.
    lm.tie_weights()
    missing = [k for k in missing if not _is_tied(lm, k)]
    if missing or unexpected:
        raise RuntimeError(f"export: the trained state does not match {type(lm).__name__}: missing "
                           f"{sorted(missing)}, unexpected {sorted(unexpected)}")
    _materialize_buffers(lm, model.lm)
    if precision in ("bf16", "fp16"):
        lm.to(torch.bfloat16 if precision == "bf16" else torch.float16)
    with dest.replacing_local() as tmp:
        lm.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if proj_dim is None:
            return
        save_head(head_sd, tmp, hidden_size_of(lm), proj_dim)
        if not (Path(tmp) / HEAD_CONFIG).is_file():
            raise RuntimeError(f"export: the projection head was not written to {tmp}")


def skeleton_like(lm: nn.Module) -> nn.Module:
    """An LM of the same class and config as ``lm``, its parameters on the meta device (no memory)."""
    with torch.device("meta"):
        return type(lm)(lm.config)


def _is_tied(lm: nn.Module, key: str) -> bool:
    out = lm.get_output_embeddings()
    inp = lm.get_input_embeddings()
    return (out is not None and inp is not None and out.weight is inp.weight
            and key.endswith(("lm_head.weight", "embed_out.weight")))


def _materialize_buffers(lm: nn.Module, trained: nn.Module) -> None:
    """Buffers the state dict does not carry (non-persistent: rotary ``inv_freq``, causal masks) are
    still on the meta device in a skeleton: take them from the trained model (on CPU)."""
    source = dict(trained.named_buffers())
    for name, buf in list(lm.named_buffers()):
        if buf.is_meta:
            mod_name, _, attr = name.rpartition(".")
            mod = lm.get_submodule(mod_name) if mod_name else lm
            mod._buffers[attr] = source[name].detach().to("cpu").clone()


__all__ = ["DCP_METADATA", "STATE_META", "STATE_TRAINER", "export_hf", "load_sharded", "read_meta", "save_sharded",
           "skeleton_like"]
