"""The run directory every stage writes into, and how it writes (atomically, resumably).

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
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from raydebias.config import Config, config_to_dict


class RunDir:
    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser().resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    # --- layout ---------------------------------------------------------------------------------
    def sources_dir(self, split: str) -> Path:
        return self.root / "data" / ("sources" if split == "train" else split)

    @property
    def augmented_dir(self) -> Path:
        return self.root / "augmented"

    @property
    def train_dir(self) -> Path:
        return self.root / "train"

    @property
    def model_dir(self) -> Path:
        return self.root / "model"

    def quarantine_dir(self, stage: str) -> Path:
        return self.root / "quarantine" / stage

    @property
    def stats_path(self) -> Path:
        return self.root / "stats.json"

    # --- writing --------------------------------------------------------------------------------
    def write_dataset(self, ds: Any, path: Path, schema: pa.Schema | None = None,
                      min_rows_per_file: int = 50_000) -> Path:
        """Write a Ray dataset as Parquet to ``path``, replacing it only once the write succeeded.

        A killed run leaves either the previous complete output or none, never a half-written one
        under the final name. An empty dataset still yields one (empty) file carrying its schema, so
        later stages read an empty table instead of failing on a missing directory.
        """
        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
        ds.write_parquet(str(tmp), min_rows_per_file=min_rows_per_file)
        if not any(tmp.glob("*.parquet")):
            tmp.mkdir(parents=True, exist_ok=True)
            schema = schema or ds.schema().base_schema
            pq.write_table(schema.empty_table(), tmp / "empty.parquet")
        replace_dir(tmp, path)
        return path

    def write_table(self, table: pa.Table, path: Path) -> Path:
        """A small table (bookkeeping) as one Parquet file in directory ``path``, replaced atomically."""
        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
        tmp.mkdir(parents=True)
        pq.write_table(table, tmp / "part-0.parquet")
        replace_dir(tmp, path)
        return path

    def write_config(self, cfg: Config) -> Path:
        return self._write_text("config.yaml", yaml.safe_dump(config_to_dict(cfg), sort_keys=False))

    def read_stats(self) -> dict[str, Any]:
        if not self.stats_path.exists():
            return {}
        return json.loads(self.stats_path.read_text(encoding="utf-8"))

    def update_stats(self, stage: str, stats: dict[str, Any]) -> Path:
        """Replace ``stats[stage]`` in stats.json, keeping the other stages' entries."""
        merged = self.read_stats()
        merged[stage] = stats
        merged.setdefault("_updated", {})[stage] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        return self._write_text("stats.json", json.dumps(merged, indent=2, sort_keys=False) + "\n")

    def _write_text(self, name: str, text: str) -> Path:
        final = self.root / name
        tmp = final.with_name(f".{name}.tmp-{uuid.uuid4().hex[:8]}")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, final)
        return final


def replace_dir(new: Path, final: Path) -> None:
    final.parent.mkdir(parents=True, exist_ok=True)
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(final, old)
    os.replace(new, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
