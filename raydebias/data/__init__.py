"""Readers for the public Reddit TL;DR layouts -> validated source rows + a quarantine table (SPEC §1).

One file per idea:

- :mod:`~raydebias.data.sources`: ``data.source`` -> files (local, object store, ``sample:``) or a hub id.
- :mod:`~raydebias.data.formats`: JSON lines / JSON array / CSV / Parquet, optionally compressed, streamed
  as raw JSON records (and the Ray Data datasource that does it per file).
- :mod:`~raydebias.data.layouts`: carper / webis / comparisons / plain: detect a file's layout, and turn
  one record into a source row.
- :mod:`~raydebias.data.validate`: parsing, validation, duplicates and train/held-out overlap (pure Arrow).
- :mod:`~raydebias.data.stage`: the Ray Data wiring and the ``data`` stage (:func:`run_data_stage`).

Every physical input record becomes exactly one row of either the kept dataset or the quarantine
(reasons in :data:`raydebias.schema.QUARANTINE_REASONS`); the counts are checked, not assumed.
"""

from raydebias.data.formats import base_ext, iter_raw_records, open_input
from raydebias.data.layouts import LAYOUTS, detect_layout, layout_from_keys, record_to_row
from raydebias.data.sources import SAMPLE_PREFIX, SAMPLES_DIR, HubSource, resolve_source
from raydebias.data.stage import SplitResult, count_rows, read_split, run_data_stage
from raydebias.data.validate import (
    KEY_SCHEMA,
    META_COLUMNS,
    OVERLAPS_TRAIN,
    PARSED_SCHEMA,
    TrainKeys,
    find_duplicates,
    find_overlaps,
    parse_records,
    post_key,
    row_keys,
    split_parsed,
)
from raydebias.errors import DataError

__all__ = [
    "KEY_SCHEMA", "LAYOUTS", "META_COLUMNS", "OVERLAPS_TRAIN", "PARSED_SCHEMA", "SAMPLES_DIR", "SAMPLE_PREFIX",
    "DataError", "HubSource", "SplitResult", "TrainKeys", "base_ext", "count_rows", "detect_layout",
    "find_duplicates", "find_overlaps", "iter_raw_records", "layout_from_keys", "open_input", "parse_records",
    "post_key", "read_split", "record_to_row", "resolve_source", "row_keys", "run_data_stage", "split_parsed",
]  # fmt: skip
