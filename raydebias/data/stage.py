"""The ``data`` stage: read, parse, validate and de-duplicate the training (and held-out) split with
Ray Data, write the source rows, the quarantine and the counts (SPEC §1).

The Ray parts stay thin: the datasource (:func:`raydebias.data.formats.make_datasource`) streams files
into raw records (one per line / row, with file and line), :func:`raydebias.data.validate.parse_records`
parses and validates them (pure), and :func:`read_split` wires them with Ray Data (``map_batches``, and
duplicates found on the driver from the small metadata columns). Every input record is counted: rows
in = kept + quarantined, checked, not assumed.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from raydebias import schema as S
from raydebias.config import DataConfig
from raydebias.data.formats import dumps, make_datasource, raw_table
from raydebias.data.layouts import detect_layout, layout_from_keys
from raydebias.data.sources import HubSource, resolve_source
from raydebias.data.validate import (
    KEY_SCHEMA,
    META_COLUMNS,
    OVERLAPS_TRAIN,
    PARSED_SCHEMA,
    TrainKeys,
    find_duplicates,
    find_overlaps,
    parse_records,
    row_keys,
    split_parsed,
)
from raydebias.errors import DataError

log = logging.getLogger(__name__)


@dataclass
class SplitResult:
    """The validated rows of one split (a Ray dataset each) and the counts that must add up."""

    kept: Any  # ray.data.Dataset of SOURCE_SCHEMA
    quarantine: Any  # ray.data.Dataset of QUARANTINE_SCHEMA
    stats: dict[str, Any]
    keys: pa.Table | None = None  # KEY_SCHEMA of the valid rows, when asked for (the training split's)


def _read_hub(src: HubSource) -> tuple[Any, dict[str, str]]:
    import ray.data

    try:
        import datasets

        hf = datasets.load_dataset(src.dataset_id, split=src.split)
    except Exception as e:  # datasets raises many types (ConnectionError, FileNotFoundError, ...)
        offline = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("HF_DATASETS_OFFLINE")
        why = "HF_HUB_OFFLINE is set" if offline else "the hub is unreachable from here or the id is wrong"
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataError(
            f"cannot load Hugging Face dataset {src.dataset_id!r} (split {src.split!r}): {why} ({first}). "
            f"Download it on a machine with hub access (e.g. the Parquet files of the dataset) and set "
            f"data.source to the local path, or use data.source=sample:tldr/train for the shipped sample."
        ) from None
    name = f"hf://{src.dataset_id}@{src.split}"
    layout = layout_from_keys(hf.column_names)
    if layout is None:
        raise DataError(f"cannot detect the layout of {name}: columns {hf.column_names}; set data.layout")
    hf = hf.add_column("__line__", list(range(1, len(hf) + 1)))

    def to_raw(batch: pa.Table) -> pa.Table:
        recs = batch.drop_columns(["__line__"]).to_pylist()
        return raw_table(name, list(zip(batch.column("__line__").to_pylist(), map(dumps, recs), strict=True)))

    return ray.data.from_huggingface(hf).map_batches(to_raw, batch_format="pyarrow"), {name: layout}


def read_split(source: str, hf_split: str, cfg: DataConfig, split_name: str, *, want_keys: bool = False,
               train: TrainKeys | None = None) -> SplitResult:
    """Read, parse, validate and de-duplicate one split.

    The parsed rows are materialised once (kept rows, quarantine and counts all derive from them).
    Duplicate ids are found on the driver from a projection of the small metadata columns: one light
    pass instead of a shuffle, which on small clusters costs several times more (bench/data.py).
    ``want_keys``: also return the valid rows' ids and post keys (:func:`row_keys`). ``train``: the
    training split's keys; rows sharing an id or post with it are quarantined as ``overlaps_train``
    (``data.eval_overlap=drop``, with a warning) or fail the stage (``error``).
    """
    import ray.data

    resolved = resolve_source(source, hf_split)
    if isinstance(resolved, HubSource):
        raw, layouts = _read_hub(resolved)
    else:
        layouts = {p: (cfg.layout if cfg.layout != "auto" else detect_layout(p)) for p in resolved}
        # One read task per file, fused with parsing: letting Ray split reads into ~200 small blocks
        # cost 1.8x wall time here (bench/data.py). Parallelism is therefore the number of files;
        # shard a single huge file to parse it on several cores.
        raw = ray.data.read_datasource(make_datasource(resolved), override_num_blocks=len(resolved))
    for p, lay in layouts.items():
        log.info("data[%s]: %s -> layout %s", split_name, p, lay)
    if cfg.limit is not None:
        raw = raw.limit(cfg.limit)

    try:
        parsed = raw.map_batches(
            parse_records, batch_format="pyarrow", fn_kwargs={"layouts": layouts, "max_post_chars": cfg.max_post_chars}
        ).materialize()
    except Exception as e:
        cause = _data_error_in(e)
        if cause is None:
            raise
        raise DataError(str(cause)) from None
    batches = list(parsed.select_columns(META_COLUMNS).iter_batches(batch_format="pyarrow", batch_size=None))
    meta = pa.concat_tables(batches) if batches else pa.schema(
        [PARSED_SCHEMA.field(c) for c in META_COLUMNS]).empty_table()
    dups = find_duplicates(meta)
    keys, overlaps = None, {}
    if want_keys or train is not None:
        kb = list(parsed.map_batches(row_keys, batch_format="pyarrow").iter_batches(batch_format="pyarrow",
                                                                                    batch_size=None))
        keys = pa.concat_tables(kb).cast(KEY_SCHEMA) if kb else KEY_SCHEMA.empty_table()
    if train is not None:
        overlaps = find_overlaps(keys, dups, train)
        if overlaps and cfg.eval_overlap == "error":
            (f, ln), why = next(iter(sorted(overlaps.items())))
            raise DataError(f"data[{split_name}]: {len(overlaps)} held-out rows overlap the training rows (first: "
                            f"{f}:{ln}, {why}); remove them from {source} or set data.eval_overlap=drop to "
                            f"quarantine them as {OVERLAPS_TRAIN}")
        if overlaps:
            log.warning("data[%s]: %d held-out rows share an id or post with the training rows; quarantined as "
                        "%s (quarantine/data)", split_name, len(overlaps), OVERLAPS_TRAIN)
    stats = count_rows(meta, dups, layouts, source, overlaps)
    kept = parsed.map_batches(split_parsed, batch_format="pyarrow",
                              fn_kwargs={"dups": dups, "keep": True, "overlaps": overlaps})
    quarantine = parsed.map_batches(split_parsed, batch_format="pyarrow", fn_kwargs={
        "dups": dups, "keep": False, "split_name": split_name, "overlaps": overlaps})
    return SplitResult(kept=kept, quarantine=quarantine, stats=stats, keys=keys if want_keys else None)


def _data_error_in(exc: BaseException) -> DataError | None:
    """The DataError raised inside a Ray task, if that is what ``exc`` (a RayTaskError chain) carries."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, DataError):
            return exc
        cause = getattr(exc, "cause", None)
        exc = cause if isinstance(cause, BaseException) else (exc.__cause__ or exc.__context__)
    return None


def count_rows(meta: pa.Table, dups: dict[tuple[str, int], str], layouts: dict[str, str], source: str,
               overlaps: dict[tuple[str, int], str] | None = None) -> dict[str, Any]:
    """Counts per file and reason; checks rows in = kept + quarantined (per file and in total)."""
    overlaps = overlaps or {}
    files: dict[str, dict[str, Any]] = {
        p: {"layout": lay, "rows_in": 0, "kept": 0, "quarantined": 0} for p, lay in layouts.items()
    }
    by_reason: dict[str, int] = {}
    for path, line, reason in zip(meta.column(S.REC_FILE).to_pylist(), meta.column(S.REC_LINE).to_pylist(),
                                  meta.column(S.REASON).to_pylist(), strict=True):
        if not reason and (path, line) in dups:
            reason = "duplicate_id"
        elif not reason and (path, line) in overlaps:
            reason = OVERLAPS_TRAIN
        f = files.setdefault(path, {"layout": layouts.get(path), "rows_in": 0, "kept": 0, "quarantined": 0})
        f["rows_in"] += 1
        if reason:
            f["quarantined"] += 1
            by_reason[reason] = by_reason.get(reason, 0) + 1
        else:
            f["kept"] += 1
    rows_in = meta.num_rows
    kept = sum(f["kept"] for f in files.values())
    quarantined = sum(by_reason.values())
    if kept + quarantined != rows_in:  # an invariant of this module: a bug if it fires
        raise AssertionError(f"rows in {rows_in} != kept {kept} + quarantined {quarantined}")
    return {"source": source, "rows_in": rows_in, "kept": kept, "quarantined": quarantined,
            "quarantined_by_reason": dict(sorted(by_reason.items())), "files": files}


def run_data_stage(cfg: Any, out: Any) -> dict[str, Any]:
    """The ``data`` stage: read the training (and held-out) split, write Parquet + quarantine + stats.

    ``cfg`` is the full :class:`raydebias.config.Config`; ``out`` a :class:`raydebias.outputs.RunDir`.
    """
    splits = [("train", cfg.data.source, cfg.data.split)]
    if cfg.data.eval_source:
        splits.append(("eval", cfg.data.eval_source, cfg.data.eval_split))
    stats: dict[str, Any] = {}
    quarantines = []
    train: TrainKeys | None = None
    for name, source, hf_split in splits:
        # the held-out split is read after the training split, against its ids and posts (data.eval_overlap)
        res = read_split(source, hf_split, cfg.data, name, want_keys=name == "train" and len(splits) > 1,
                         train=train)
        if res.keys is not None:
            train = TrainKeys.of(res.keys)
        out.write_dataset(res.kept, out.sources_dir(name))
        quarantines.append(res.quarantine)
        stats[name] = res.stats
        log.info("data[%s]: %d rows in = %d kept + %d quarantined %s", name, res.stats["rows_in"],
                 res.stats["kept"], res.stats["quarantined"], res.stats["quarantined_by_reason"] or "")
    q = quarantines[0].union(*quarantines[1:]) if len(quarantines) > 1 else quarantines[0]
    out.write_dataset(q, out.quarantine_dir("data"), schema=S.QUARANTINE_SCHEMA)
    out.update_stats("data", stats)
    return stats
