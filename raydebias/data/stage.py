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
import pyarrow.compute  # noqa: F401  (pa.compute)

from raydebias import schema as S
from raydebias.config import DataConfig
from raydebias.data.formats import dumps, make_datasource, raw_table
from raydebias.data.layouts import detect_layout, layout_from_keys
from raydebias.data.sources import HubSource, resolve_source
from raydebias.data.validate import (
    DECISION_SCHEMA,
    KEY_SCHEMA,
    META_COLUMNS,
    OVERLAPS_TRAIN,
    PARSED_SCHEMA,
    TrainKeys,
    count_block,
    find_duplicates,
    find_overlaps,
    merge_block_counts,
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
    keys: Any = None  # ObjectRef of the valid rows' TrainKeys, when asked for (the training split's)


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


def select_meta(batch: pa.Table) -> pa.Table:
    return batch.select(META_COLUMNS)


def find_duplicates_of(*metas: pa.Table) -> pa.Table:
    """:func:`find_duplicates` over every block's metadata columns (one task: ~40 bytes a row)."""
    schema = pa.schema([PARSED_SCHEMA.field(c) for c in META_COLUMNS])
    return find_duplicates(pa.concat_tables(metas) if metas else schema.empty_table())


def concat_decisions(*tables: pa.Table) -> pa.Table:
    return pa.concat_tables([DECISION_SCHEMA.empty_table(), *tables])


def first_decision(decisions: pa.Table, reason: str) -> tuple[str, int, str] | None:
    """The (file, line, detail) of the first row decided ``reason``, in file order (for an error message)."""
    d = decisions.filter(pa.compute.equal(decisions.column(S.REASON), reason))
    if d.num_rows == 0:
        return None
    r = d.sort_by([(S.REC_FILE, "ascending"), (S.REC_LINE, "ascending")]).slice(0, 1).to_pylist()[0]
    return r[S.REC_FILE], r[S.REC_LINE], r[S.DETAIL]


def train_keys_of(*keys: pa.Table) -> TrainKeys:
    return TrainKeys.of(pa.concat_tables([KEY_SCHEMA.empty_table(), *(k.cast(KEY_SCHEMA) for k in keys)]))


def split_rows(batch: pa.Table, decisions: list, keep: bool, split_name: str = "") -> pa.Table:
    """:func:`split_parsed` with the decisions read from the object store (``decisions``: [ObjectRef])."""
    import ray

    return split_parsed(batch, ray.get(decisions[0]), keep, split_name)


def read_split(source: str, hf_split: str, cfg: DataConfig, split_name: str, *, want_keys: bool = False,
               train: Any = None) -> SplitResult:
    """Read, parse, validate and de-duplicate one split.

    The parsed rows are materialised once, in the object store; kept rows, quarantine and counts all
    derive from them. The checks across rows run as plain Ray tasks over the parsed blocks, and the
    driver holds only ObjectRefs and per-file counts (issue 16, item 5): each block's metadata columns
    are merged in one task that finds the duplicate ids (:func:`find_duplicates`); held-out blocks are
    checked against the broadcast training keys (:func:`find_overlaps`); the resulting decisions (an
    Arrow table of the rows quarantined by these checks) are broadcast to the count tasks and to the
    writers. ``want_keys``: also return the valid rows' ids and post keys (``keys``: an ObjectRef of
    :class:`TrainKeys`). ``train``: the training split's keys (a TrainKeys or an ObjectRef of one); rows
    sharing an id or post with it are quarantined as ``overlaps_train`` (``data.eval_overlap=drop``,
    with a warning) or fail the stage (``error``).
    """
    import ray
    import ray.data

    from raydebias.runtime import remote

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
    blocks = [ref for bundle in parsed.iter_internal_ref_bundles() for ref in bundle.block_refs]
    # one CPU each: the stage runs alone, and smaller shares only start more worker processes
    task = {fn.__name__: remote(fn, num_cpus=1) for fn in (select_meta, find_duplicates_of, row_keys,
                                                               find_overlaps, concat_decisions, count_block,
                                                               first_decision, train_keys_of)}
    dups = task["find_duplicates_of"].remote(*[task["select_meta"].remote(b) for b in blocks])
    decisions, keys = dups, None
    if want_keys or train is not None:
        keys = [task["row_keys"].remote(b) for b in blocks]
    if train is not None:
        train_ref = train if isinstance(train, ray.ObjectRef) else ray.put(train)
        decisions = task["concat_decisions"].remote(dups, *[task["find_overlaps"].remote(k, dups, train_ref)
                                                            for k in keys])
    counts = merge_block_counts(ray.get([task["count_block"].remote(b, decisions) for b in blocks]))
    n_overlaps = counts["by_reason"].get(OVERLAPS_TRAIN, 0)
    if n_overlaps and cfg.eval_overlap == "error":
        f, ln, why = ray.get(task["first_decision"].remote(decisions, OVERLAPS_TRAIN))
        raise DataError(f"data[{split_name}]: {n_overlaps} held-out rows overlap the training rows (first: "
                        f"{f}:{ln}, {why}); remove them from {source} or set data.eval_overlap=drop to "
                        f"quarantine them as {OVERLAPS_TRAIN}")
    if n_overlaps:
        log.warning("data[%s]: %d held-out rows share an id or post with the training rows; quarantined as "
                    "%s (quarantine/data)", split_name, n_overlaps, OVERLAPS_TRAIN)
    stats = count_rows(counts, layouts, source)
    # the ref travels inside a list: Ray Data hands fn_kwargs over as they are, and split_rows reads it
    kept = parsed.map_batches(split_rows, batch_format="pyarrow", fn_kwargs={"decisions": [decisions], "keep": True})
    quarantine = parsed.map_batches(split_rows, batch_format="pyarrow", fn_kwargs={
        "decisions": [decisions], "keep": False, "split_name": split_name})
    return SplitResult(kept=kept, quarantine=quarantine, stats=stats,
                       keys=task["train_keys_of"].remote(*keys) if want_keys else None)


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


def count_rows(counts: dict[str, Any], layouts: dict[str, str], source: str) -> dict[str, Any]:
    """The split's stats from the merged block counts (:func:`merge_block_counts`); checks rows in =
    kept + quarantined (per file and in total)."""
    files: dict[str, dict[str, Any]] = {
        p: {"layout": lay, "rows_in": 0, "kept": 0, "quarantined": 0} for p, lay in layouts.items()
    }
    for path, c in counts["files"].items():
        f = files.setdefault(path, {"layout": layouts.get(path), "rows_in": 0, "kept": 0, "quarantined": 0})
        for k in ("rows_in", "kept", "quarantined"):
            f[k] += c[k]
    by_reason = counts["by_reason"]
    rows_in = sum(f["rows_in"] for f in files.values())
    kept = sum(f["kept"] for f in files.values())
    quarantined = sum(by_reason.values())
    if kept + quarantined != rows_in or any(f["kept"] + f["quarantined"] != f["rows_in"] for f in files.values()):
        raise AssertionError(f"rows in {rows_in} != kept {kept} + quarantined {quarantined}")  # a bug if it fires
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
    train: Any = None  # ObjectRef of the training split's TrainKeys
    for name, source, hf_split in splits:
        # the held-out split is read after the training split, against its ids and posts (data.eval_overlap)
        res = read_split(source, hf_split, cfg.data, name, want_keys=name == "train" and len(splits) > 1,
                         train=train)
        if res.keys is not None:
            train = res.keys
        out.write_dataset(res.kept, out.sources_dir(name))
        quarantines.append(res.quarantine)
        stats[name] = res.stats
        log.info("data[%s]: %d rows in = %d kept + %d quarantined %s", name, res.stats["rows_in"],
                 res.stats["kept"], res.stats["quarantined"], res.stats["quarantined_by_reason"] or "")
    q = quarantines[0].union(*quarantines[1:]) if len(quarantines) > 1 else quarantines[0]
    out.write_dataset(q, out.quarantine_dir("data"), schema=S.QUARANTINE_SCHEMA)
    out.update_stats("data", stats)
    return stats
