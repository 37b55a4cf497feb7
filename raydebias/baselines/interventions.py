"""The methods' inference-time side: a variant -> the intervention its generation actor applies (one place that
knows every method's intervention; base.py stays free of the methods, so the imports stay a tree)."""

from __future__ import annotations

from raydebias.baselines.base import Intervention, RemoveDirections, Variant, load_directions
from raydebias.errors import ConfigError


def build_intervention(variant: Variant) -> Intervention:
    """The intervention a generation actor applies for ``variant`` (built once per actor)."""
    if variant.method in ("inlp", "sentence_debias"):
        if not variant.artifact:
            raise ConfigError(f"{variant.name}: a {variant.method} variant needs its fitted directions (artifact)")
        from raydebias.storage import StoragePath, fetch

        where = StoragePath.of(variant.artifact)
        local = where.local() if where.is_local else fetch(variant.artifact)  # an object store: cached per node
        return RemoveDirections(load_directions(local))
    if variant.method == "self_debias":
        from raydebias.baselines.self_debias import SelfDebias

        return SelfDebias(**variant.options)
    return Intervention()


__all__ = ["build_intervention"]
