"""The causal LM with its token-level projection head (paper Section 4.3, eq. 3-5; SPEC §3).

    h_i = GELU(W1 x_i + b1),  z_i = normalize(W2 h_i + b2)          (eq. 3-4)
    r   = normalize(sum_i m_i z_i / sum_i m_i)                       (eq. 5)

x_i are the last hidden states of the candidate's summary tokens (encoded after its prompt); m_i marks
the summary tokens inside a named entity, or every summary token when the summary has none (the mask is
built by :mod:`raydebias.train.batching`, in either of its layouts: one row per candidate, or one row
per group with the prompt encoded once under a tree attention mask).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from raydebias.train.batching import shared_prompt_mask

HEAD_WEIGHTS, HEAD_CONFIG = "projection_head.safetensors", "projection_head.json"


class ProjectionHead(nn.Module):
    """Linear -> GELU -> Linear -> L2-normalise, applied to every token (eq. 3-4)."""

    def __init__(self, hidden_size: int, proj_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(hidden_size, hidden_size)
        self.fc2 = nn.Linear(hidden_size, proj_dim)

    def forward(self, x: Tensor) -> Tensor:  # (..., H) -> (..., D)
        return F.normalize(self.fc2(F.gelu(self.fc1(x))), dim=-1)


def pool(z: Tensor, mask: Tensor, rows: Tensor | None = None) -> Tensor:
    """Masked mean over tokens, then L2-normalise (eq. 5).

    Args:
        z: (B, T, D) token projections.
        mask: (N, T) 1 for the tokens to pool (entity tokens, or all summary tokens as the fallback).
        rows: (N,) long, the row of ``z`` holding candidate n; None when row n is candidate n (B = N).
    Returns:
        (N, D)
    """
    m = mask.to(z.dtype)
    if rows is None:
        summed = (z * m.unsqueeze(-1)).sum(dim=1)
    else:  # several candidates per row: one (N, B*T) @ (B*T, D) product, no (N, T, D) copy of z
        w = z.new_zeros(m.shape[0], z.shape[0], z.shape[1])
        w[torch.arange(m.shape[0], device=m.device), rows] = m
        summed = w.flatten(1) @ z.flatten(0, 1)
    return F.normalize(summed / m.sum(dim=1, keepdim=True).clamp(min=1.0), dim=-1)


def hidden_size_of(lm: nn.Module) -> int:
    """Width of the LM's last hidden states (the input of its output embedding)."""
    out = lm.get_output_embeddings()
    if out is not None and hasattr(out, "in_features"):
        return int(out.in_features)
    return int(lm.config.get_text_config().hidden_size)


class ContrastiveLM(nn.Module):
    """A Hugging Face causal LM plus the projection head; one forward gives both losses' inputs."""

    def __init__(self, lm: nn.Module, proj_dim: int):
        super().__init__()
        self.lm = lm
        self.head = ProjectionHead(hidden_size_of(lm), proj_dim)

    def forward(self, input_ids: Tensor, attention_mask: Tensor, pool_mask: Tensor, pool_row: Tensor,
                ce_index: Tensor, position_ids: Tensor | None = None,
                segment: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """The fields of :meth:`raydebias.train.batching.Batch.model_inputs`.

        Args:
            input_ids, attention_mask: (B, T) rows, right-padded; a row is one candidate, or (with
                ``segment``) one group's prompt followed by its candidates.
            pool_mask, pool_row: (N, T), (N,) the tokens pooled into each candidate and their row.
            ce_index: (M,) flat positions (row * T + t) whose next token L_ce predicts.
            position_ids, segment: (B, T) the shared-prompt layout (None: one candidate per row).
        Returns:
            reps: (N, D) pooled, normalised representations; logits: (M, V) at ``ce_index``.
        """
        mask = attention_mask if segment is None else self.tree_mask(segment)
        # The base model once for all candidates; the vocabulary projection only at the M positions L_ce
        # reads (it is the most expensive matmul of a small model and L_ce needs nothing else).
        hidden = self.lm.base_model(input_ids=input_ids, attention_mask=mask,
                                    position_ids=position_ids).last_hidden_state
        reps = pool(self.head(hidden), pool_mask, None if segment is None else pool_row)  # (N, D)
        logits = self.lm.get_output_embeddings()(hidden.flatten(0, 1).index_select(0, ce_index))  # (M, V)
        return reps, logits

    def tree_mask(self, segment: Tensor) -> Tensor:
        """The shared-prompt attention mask in the form this LM's attention implementation takes: boolean
        for SDPA, additive in the compute dtype for eager attention; others are refused."""
        impl = getattr(self.lm.config, "_attn_implementation", None) or "eager"
        allow = shared_prompt_mask(segment)
        if impl == "sdpa":
            return allow
        if impl == "eager":
            dtype = self.lm.get_input_embeddings().weight.dtype  # the compute dtype (FSDP2 has unsharded it)
            return torch.zeros(allow.shape, dtype=dtype, device=allow.device).masked_fill(~allow, torch.finfo(dtype).min)
        raise ValueError(f"train.shared_prompt needs a custom 4D attention mask, which attention implementation "
                         f"{impl!r} does not take: use sdpa or eager, or set train.shared_prompt=false")


def transformer_blocks(lm: nn.Module) -> list[nn.Module]:
    """The LM's repeated blocks (FSDP2 shards each one): the classes named by ``_no_split_modules``."""
    names = set(getattr(lm, "_no_split_modules", None) or [])
    blocks = [m for m in lm.modules() if type(m).__name__ in names]
    if not blocks:  # fall back to the largest ModuleList (h, layers, blocks, ...)
        lists = [m for m in lm.modules() if isinstance(m, nn.ModuleList)]
        if lists:
            blocks = list(max(lists, key=lambda m: sum(p.numel() for p in m.parameters())))
    if not blocks:
        raise ValueError(f"cannot find the transformer blocks of {type(lm).__name__} to shard")
    return blocks


def save_head(head: nn.Module | dict, out_dir: str | Path, hidden_size: int, proj_dim: int) -> None:
    """The projection head beside the model, as safetensors + a small JSON config."""
    from safetensors.torch import save_file

    state = head if isinstance(head, dict) else head.state_dict()
    out = Path(out_dir)
    save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(out / HEAD_WEIGHTS))
    (out / HEAD_CONFIG).write_text(json.dumps({"hidden_size": hidden_size, "proj_dim": proj_dim}))


def load_head(model_dir: str | Path) -> ProjectionHead:
    from safetensors.torch import load_file

    d = Path(model_dir)
    cfg = json.loads((d / HEAD_CONFIG).read_text())
    head = ProjectionHead(cfg["hidden_size"], cfg["proj_dim"])
    head.load_state_dict(load_file(str(d / HEAD_WEIGHTS)))
    return head


__all__ = ["ContrastiveLM", "ProjectionHead", "hidden_size_of", "load_head", "pool", "save_head",
           "transformer_blocks"]
