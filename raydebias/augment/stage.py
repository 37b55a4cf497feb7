"""The contract every augmentation stage declares, and what is derived from it (NeMo Curator's
ProcessingStage, without its metaclass registry; the Ray adapter is apart, in augment/pipeline.py).

A stage is a small class (STYLE habit 1): ``__init__`` takes its own config section (plus the extra
sections it declares in ``uses``), ``device`` and ``seed`` and loads its model once; ``process_batch``
(also ``__call__``) takes a ``pa.Table`` and returns a new one with the same rows in the same order.
It declares, as class attributes:

- ``name``: its key in augment/registry.py ``STAGES``; also its actor pool's name and the ``op`` of the
  drops it records itself;
- ``section``: the ``augment.<section>`` config it takes. That section also holds the stage's default
  pool ``resources`` (``OpResources``): config is the single source of defaults, the class only says
  where they are (``None``: no settings section and no model, so no actor pool);
- ``uses``: further ``augment.<section>``\\s passed to ``__init__`` after its own (toxic_rewrite scores
  with ``augment.toxicity``);
- ``reads`` / ``writes``: the columns it reads and writes; ``candidates.<field>`` is a field of every
  candidate, ``candidates`` on its own means it appends candidates;
- ``needs``: stages that must be in the pipeline and run before it (a missing one is a ConfigError);
- ``after``: stages it runs after when they are in the pipeline (cleaning runs after every selected op).

:func:`stage_order` derives the pipeline order from ``needs``/``after`` alone. Stage files do not import Ray.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from typing import Any, ClassVar

import pyarrow as pa

from raydebias.augment.candidates import RowResult, apply_rows
from raydebias.augment.registry import OPS, STAGES
from raydebias.config import AugmentConfig, OpResources
from raydebias.errors import ConfigError

__all__ = ["AugmentStage", "RowOp", "order_stages", "selected_stages", "stage_classes", "stage_order"]


class AugmentStage(ABC):
    """Base of every augmentation stage: the declared contract (see the module docstring)."""

    name: ClassVar[str]
    section: ClassVar[str | None]
    uses: ClassVar[tuple[str, ...]] = ()
    reads: ClassVar[tuple[str, ...]] = ()
    writes: ClassVar[tuple[str, ...]] = ()
    needs: ClassVar[tuple[str, ...]] = ()
    after: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def from_config(cls, cfg: AugmentConfig, device: str = "cpu", seed: int = 0) -> AugmentStage:
        """Build from the whole ``augment`` config, handing the stage only its declared sections."""
        sections = ((cls.section,) if cls.section else ()) + cls.uses
        return cls(*(getattr(cfg, s) for s in sections), device=device, seed=seed)

    @classmethod
    def resources(cls, cfg: AugmentConfig) -> OpResources | None:
        """Its actor pool's resources (``augment.<section>.resources``); None: no model, plain tasks."""
        return getattr(cfg, cls.section).resources if cls.section else None

    @abstractmethod
    def process_batch(self, batch: pa.Table) -> pa.Table:
        """The stage's work on one batch (every concrete stage defines it)."""

    def __call__(self, batch: pa.Table) -> pa.Table:
        return self.process_batch(batch)


class RowOp(AugmentStage):
    """An op that makes candidates per source row: ``process_rows(rows) -> [(candidates, drops)]``.

    ``process_batch`` runs it on the whole batch and isolates a failing row (``candidates.apply_rows``).
    """

    writes = ("candidates", "drops")

    def process_batch(self, batch: pa.Table) -> pa.Table:
        return apply_rows(batch, self.name, self.process_rows)

    @abstractmethod
    def process_rows(self, rows: list[dict[str, Any]]) -> list[RowResult]:
        """One ``(candidates, drops)`` pair per row (every concrete op defines it)."""


def stage_classes() -> dict[str, type[AugmentStage]]:
    """Stage name -> class, from the registry (imported here, so the driver loads torch only when asked)."""
    out = {}
    for name, path in STAGES.items():
        module, cls = path.split(":")
        out[name] = getattr(importlib.import_module(module), cls)
    return out


def selected_stages(cfg: AugmentConfig) -> list[str]:
    """The stages a config runs: every stage that is not an op, and the ops in ``augment.ops`` (registry order)."""
    return [s for s in STAGES if s not in OPS or s in cfg.ops]


def stage_order(cfg: AugmentConfig, classes: dict[str, type] | None = None) -> tuple[str, ...]:
    """The stages ``cfg`` runs, in pipeline order (``classes`` replaces registry classes by name)."""
    return order_stages(selected_stages(cfg), {**stage_classes(), **(classes or {})})


def order_stages(selected: list[str], classes: dict[str, type]) -> tuple[str, ...]:
    """``selected`` in pipeline order: each stage after its ``needs`` and the selected stages of its ``after``.

    A topological sort; among the stages ready to run, the first in ``classes`` order (the registry's)
    goes first. A need that is not selected, or a circle, is a ConfigError naming the stages.
    """
    chosen = set(selected)
    unknown = sorted(chosen - set(classes))
    if unknown:
        raise ConfigError(f"augment: unknown stage(s) {unknown}; known stages: {', '.join(classes)}")
    before: dict[str, set[str]] = {}
    for name in chosen:
        cls = classes[name]
        missing = [n for n in cls.needs if n not in chosen]
        if missing:
            raise ConfigError(f"augment: stage {name!r} needs {missing}, which the pipeline does not run "
                              f"(stages: {', '.join(s for s in classes if s in chosen)})")
        before[name] = set(cls.needs) | (set(cls.after) & chosen)
    order: list[str] = []
    while len(order) < len(chosen):
        ready = [s for s in classes if s in chosen and s not in order and before[s] <= set(order)]
        if not ready:
            stuck = [s for s in classes if s in chosen and s not in order]
            raise ConfigError(f"augment: stages {stuck} wait for each other (a circle in needs/after): "
                              f"{ {s: sorted(before[s] - set(order)) for s in stuck} }")
        order.append(ready[0])
    return tuple(order)
