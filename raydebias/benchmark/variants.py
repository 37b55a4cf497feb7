"""The rows of the comparison as variants: what each is, how it is built, where it lives in the run directory.

    row                       built by                          the generation actor loads / applies
    base                      -                                 the base model
    cda_<attribute>           causal-LM fine-tuning (Ray Train)  DIR/benchmark/variants/<row>/model
    dropout                   causal-LM fine-tuning (Ray Train)  DIR/benchmark/variants/dropout/model
    inlp_<attribute>          embed (Ray Data) + fit (a task)    the base + a hook removing the fitted directions
    sentence_debias_<attr.>   embed (Ray Data) + fit (a task)    the base + a hook removing the bias direction
    self_debias               -                                 the base + a logits processor
    instructive               -                                 the base, with a prefix in every prompt
    contrastive               the train stage (or a given path)  DIR/model (or benchmark.contrastive_model)

A built variant is a complete directory (``_SUCCESS``, written atomically), so a re-run never rebuilds it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from raydebias.baselines.base import Variant
from raydebias.config import Config
from raydebias.errors import StageInputError

Build = Literal["none", "fit", "train"]
BUILD: dict[str, Build] = {"base": "none", "cda": "train", "dropout": "train", "inlp": "fit",
                           "sentence_debias": "fit", "self_debias": "none", "instructive": "none",
                           "contrastive": "none"}


@dataclass(frozen=True)
class Row:
    """One row of the comparison tables: ``name`` (metrics.json key), ``method``, ``attribute`` (or None)."""

    name: str
    method: str
    attribute: str | None

    @property
    def build(self) -> Build:
        return BUILD[self.method]


def rows(cfg: Config) -> list[Row]:
    return [Row(*r) for r in cfg.benchmark.rows()]


def benchmark_dir(out: Any) -> Any:
    return out.root / "benchmark"


def variant_dir(out: Any, name: str) -> Any:
    """Where a built variant lives: DIR/benchmark/variants/<row> (a fitted artifact, or ``model/`` weights)."""
    return benchmark_dir(out) / "variants" / name


def base_model(cfg: Config) -> str:
    """The model every baseline starts from: ``evaluate.base``, else ``train.model`` (the contrastive model's
    own base, so that every row of the tables differs from ``base`` by its method alone)."""
    base = cfg.evaluate.base or cfg.train.model
    if str(base).lower() == "none":
        raise StageInputError("benchmark: evaluate.base is 'none', but the comparison needs its base model: set "
                              "evaluate.base (or leave it null for train.model)")
    return base


def contrastive_model(cfg: Config, out: Any) -> str:
    given = cfg.benchmark.contrastive_model
    if given:
        return given
    if not out.model_dir.complete:
        raise StageInputError(f"benchmark: no contrastive model in {out.model_dir}: run --stage train first, or pass "
                              "benchmark.contrastive_model=PATH_OR_ID")
    return str(out.model_dir)


def is_built(row: Row, out: Any) -> bool:
    """A fitted row is its directory, written as a whole; a trained row is done once its model is exported
    (its blocks and checkpoints beside it are reused by a resumed build)."""
    if row.build == "none":
        return True
    where = variant_dir(out, row.name)
    return (where / "model").complete if row.build == "train" else where.complete


def variant(row: Row, cfg: Config, out: Any) -> Variant:
    """The variant the evaluation runs for ``row`` (a built row reads its directory)."""
    b, base = cfg.benchmark, base_model(cfg)
    if row.method == "base":
        return Variant(row.name, "base", base)
    if row.method == "contrastive":
        return Variant(row.name, "contrastive", contrastive_model(cfg, out))
    if row.method == "instructive":
        return Variant(row.name, "instructive", base, prompt_prefix=b.instructive_prefix)
    if row.method == "self_debias":
        return Variant(row.name, "self_debias", base,
                       options={"decay": b.self_debias_decay, "epsilon": b.self_debias_epsilon})
    where = variant_dir(out, row.name)
    if row.build == "fit":
        return Variant(row.name, row.method, base, artifact=str(where))
    return Variant(row.name, row.method, str(where / "model"))


__all__ = ["BUILD", "Row", "base_model", "benchmark_dir", "contrastive_model", "is_built", "rows", "variant",
           "variant_dir"]
