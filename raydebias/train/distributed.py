"""The training loop's own collectives (everything but FSDP2's), on the device NCCL needs.

NCCL accepts only CUDA tensors; gloo accepts anything, so a CPU tensor handed to ``all_reduce`` passes
every CPU test and crashes the first GPU step (ENV.md "GPU"). The loop therefore never calls
``torch.distributed`` itself: it goes through :class:`Comm`, which builds every tensor it communicates
on ``comm.device`` (the model's device) and returns plain Python values. ``tests/test_train_loop.py``
checks the device of every tensor that reaches ``torch.distributed`` from here, on a device that is not
the CPU (meta), so a tensor created without ``device=`` fails the test even on a machine without GPUs.

Objects (``all_gather_object``, ``broadcast_object``) are pickled by torch onto the current CUDA device
under NCCL; Ray Train sets that device for each worker (``torch.cuda.set_device``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist


class Comm:
    """Collectives of plain values among the ranks of the default process group, tensors on ``device``."""

    def __init__(self, device: torch.device | str):
        d = torch.device(device)
        if d.type == "cuda" and d.index is None:  # "cuda" means the current device: name it (tensors say cuda:N)
            d = torch.device("cuda", torch.cuda.current_device())
        self.device = d

    @property
    def rank(self) -> int:
        return dist.get_rank()

    @property
    def world(self) -> int:
        return dist.get_world_size()

    def _tensor(self, values: Sequence[float], dtype: torch.dtype) -> torch.Tensor:
        return torch.tensor(list(values), dtype=dtype, device=self.device)

    def sum(self, values: Sequence[float]) -> list[float]:
        """Element-wise sum over ranks (float64: counts and loss sums stay exact enough)."""
        t = self._tensor(values, torch.float64)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t.tolist()

    def max(self, values: Sequence[float]) -> list[float]:
        t = self._tensor(values, torch.float64)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return t.tolist()

    def any(self, flag: bool) -> bool:
        """True iff ``flag`` is true on at least one rank."""
        return self.max([1.0 if flag else 0.0])[0] > 0

    def gather_objects(self, obj: Any) -> list[Any]:
        """``obj`` from every rank, in rank order, on every rank."""
        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        """Rank ``src``'s ``obj`` on every rank."""
        box = [obj]
        dist.broadcast_object_list(box, src=src, device=self.device)
        return box[0]

    def barrier(self) -> None:
        dist.barrier(device_ids=[self.device.index or 0] if self.device.type == "cuda" else None)

    def broadcast_tensor_(self, t: torch.Tensor, src: int = 0) -> torch.Tensor:
        """Rank ``src``'s values into ``t`` (in place) on every rank; ``t`` must live on ``self.device``."""
        if t.device != self.device:
            raise ValueError(f"Comm.broadcast_tensor_: tensor on {t.device}, the process group needs {self.device}")
        dist.broadcast(t, src=src)
        return t


__all__ = ["Comm"]
