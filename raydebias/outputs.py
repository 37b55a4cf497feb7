"""The run directory every stage writes into, and how it writes (atomically, resumably).

DIR is a local directory or an object-store URI (``s3://bucket/run``; see :mod:`raydebias.storage`).
Directories written as a whole carry a ``_SUCCESS`` marker once complete.

    DIR/
      config.yaml            the resolved config of the last run
      stats.json             counts per stage: rows in = kept + quarantined, per reason
      data/sources/          source rows (Parquet, raydebias.schema.SOURCE_SCHEMA), training split
      data/eval/             held-out source rows for evaluation
      quarantine/data/       rows the data stage did not keep, with reason/detail/raw (QUARANTINE_SCHEMA)
      augmented/             one row per source: positives, negatives, trainable, drops (part files; resumable)
      quarantine/augment/    sources with fewer than 2 positives (no contrastive pair: L_ce only), and why
      train/                 Ray Train run storage: checkpoints (model, head, optimizer, data position)
      model/                 the trained LM (save_pretrained) + projection_head.safetensors
      eval/                  metrics.json, report.md + PNGs, <model>/ scored requests per evaluated model
      quarantine/evaluate/   benchmark rows that could not be used, and why
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import yaml

from raydebias.config import Config, config_to_dict
from raydebias.storage import StoragePath


class RunDir:
    """``root``: a local directory or a pyarrow filesystem URI (s3://bucket/prefix, gs://, ...): every
    path below is a :class:`raydebias.storage.StoragePath` on that filesystem."""

    def __init__(self, root: str | Path | StoragePath):
        self.root = StoragePath.of(root)
        self.root.mkdir(parents=True, exist_ok=True)
        if not self.root.is_local:
            self.root.check_writable()

    # --- layout ---------------------------------------------------------------------------------
    def sources_dir(self, split: str) -> StoragePath:
        return self.root / "data" / ("sources" if split == "train" else split)

    @property
    def augmented_dir(self) -> StoragePath:
        return self.root / "augmented"

    @property
    def train_dir(self) -> StoragePath:
        return self.root / "train"

    @property
    def model_dir(self) -> StoragePath:
        return self.root / "model"

    def quarantine_dir(self, stage: str) -> StoragePath:
        return self.root / "quarantine" / stage

    @property
    def stats_path(self) -> StoragePath:
        return self.root / "stats.json"

    # --- writing --------------------------------------------------------------------------------
    def write_dataset(self, ds: Any, path: StoragePath, schema: pa.Schema | None = None,
                      min_rows_per_file: int = 50_000) -> StoragePath:
        """Write a Ray dataset as Parquet to ``path``, which is complete only once the write succeeded.

        A killed run leaves either the previous complete output or an incomplete one (never taken for
        complete: ``path.complete``), never a half-written one that readers would trust. An empty
        dataset still yields one (empty) file carrying its schema, so later stages read an empty table
        instead of failing on a missing directory.
        """
        with path.replacing() as target:
            ds.write_parquet(target.path, filesystem=target.fs, min_rows_per_file=min_rows_per_file)
            if not target.glob("*.parquet"):
                (target / "empty.parquet").write_parquet((schema or ds.schema().base_schema).empty_table())
        return path

    def write_table(self, table: pa.Table, path: StoragePath) -> StoragePath:
        """A small table (bookkeeping) as one Parquet file in directory ``path``, replaced as a whole."""
        with path.replacing() as target:
            (target / "part-0.parquet").write_parquet(table)
        return path

    def write_config(self, cfg: Config) -> StoragePath:
        path = self.root / "config.yaml"
        path.write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
        return path

    def read_stats(self) -> dict[str, Any]:
        if not self.stats_path.exists():
            return {}
        return json.loads(self.stats_path.read_text())

    def update_stats(self, stage: str, stats: dict[str, Any]) -> StoragePath:
        """Replace ``stats[stage]`` in stats.json, keeping the other stages' entries."""
        merged = self.read_stats()
        merged[stage] = stats
        merged.setdefault("_updated", {})[stage] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        self.stats_path.write_text(json.dumps(merged, indent=2, sort_keys=False) + "\n")
        return self.stats_path
