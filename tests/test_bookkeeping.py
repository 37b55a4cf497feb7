"""Bookkeeping that scales (issue 16, item 5): resume, stats and quarantine computed by Ray tasks over
part files, the ids already written broadcast as one Arrow array, and the skip listed when the dataset
EXECUTES. The stage-level runs (tests/test_augment_stage.py, the shared run) check the counts end to end."""

import pyarrow as pa
import pytest

from raydebias import schema as S
from raydebias.augment.candidates import candidate, drop
from raydebias.augment.clean import AUGMENTED_SCHEMA
from raydebias.augment.resume import ids_of_parts, merge_ids, readable_rows, unwritten
from raydebias.augment.stats import count_batch, merge_counts, stats_and_quarantine
from raydebias.storage import StoragePath


def _rows(ids, positives=2):
    out = []
    for i in ids:
        pos = [candidate(f"summary {i}", "reference", positive=True, toxicity=0.0, entities=[])]
        pos += [candidate(f"para {i} {k}", "backtranslate", positive=True, toxicity=0.0, entities=[])
                for k in range(positives - 1)]
        neg = [candidate(f"toxic {i}", "toxic_rewrite", toxicity=0.9, entities=[]),
               candidate(f"swap {i}", "entity_swap", toxicity=0.1, entities=[])]
        drops = [drop("entity_swap", "too_short"), drop("toxic_rewrite", "below_toxicity_threshold"),
                 drop("entity_swap", "too_short")]
        out.append({S.ID: i, S.POST: f"post {i}", S.SUMMARY: f"summary {i}", "positives": pos, "negatives": neg,
                    "trainable": len(pos) >= 2, "drops": drops})
    return out


def _part(dest: StoragePath, name: str, rows: list[dict]) -> None:
    (dest / name).write_parquet(pa.Table.from_pylist(rows, schema=AUGMENTED_SCHEMA))


def test_count_batch_counts_every_candidate_and_drop_by_op_and_reason():
    t = pa.Table.from_pylist(_rows(["a", "b"]) + _rows(["c"], positives=1), schema=AUGMENTED_SCHEMA)
    got = merge_counts([count_batch(t), count_batch(t.slice(0, 0))], rows_in=3)
    assert (got["rows_in"], got["rows_out"], got["trainable"], got["quarantined"]) == (3, 3, 2, 1)
    assert got["ops"]["reference"] == {"generated": 3, "kept": 3, "dropped": 0, "dropped_by_reason": {}}
    assert got["ops"]["backtranslate"]["kept"] == 2
    assert got["ops"]["entity_swap"] == {"generated": 9, "kept": 3, "dropped": 6, "dropped_by_reason": {"too_short": 6}}
    assert got["ops"]["toxic_rewrite"]["dropped_by_reason"] == {"below_toxicity_threshold": 3}


def test_ids_of_parts_removes_an_unreadable_part_and_merge_refuses_an_id_written_twice(tmp_path):
    dest = StoragePath.of(tmp_path / "augmented")
    dest.mkdir(parents=True)
    _part(dest, "part-a.parquet", _rows(["a", "b"]))
    _part(dest, "part-b.parquet", _rows(["c"]))
    (dest / "part-c.parquet").write_bytes((dest / "part-b.parquet").read_bytes()[:60])  # cut short by a kill
    assert readable_rows(dest) is None  # planning does not take it for complete
    ids = ids_of_parts(dest.glob("*.parquet"))
    assert sorted(ids.to_pylist()) == ["a", "b", "c"] and not (dest / "part-c.parquet").exists()
    assert readable_rows(dest) == 3
    assert merge_ids("x", ids, pa.array(["d"]))[0] == 4
    with pytest.raises(RuntimeError, match=r"ids written in two parts: \['c'\]"):
        merge_ids("x", ids, pa.array(["c"]))


def test_unwritten_lists_the_parts_when_the_dataset_executes(ray_local, tmp_path):
    src, dest = StoragePath.of(tmp_path / "sources"), StoragePath.of(tmp_path / "augmented")
    src.mkdir(parents=True)
    dest.mkdir(parents=True)
    ids = [f"s{i:03d}" for i in range(30)]
    for k in range(3):  # three source files
        chunk = ids[k::3]
        (src / f"part-{k}.parquet").write_parquet(pa.Table.from_pylist(
            [{S.ID: i, S.POST: f"post {i}", S.SUMMARY: f"summary {i}"} for i in chunk], schema=S.SOURCE_SCHEMA))
    _part(dest, "part-0.parquet", _rows(ids[:5]))
    pending = unwritten(src, dest)
    assert sorted(r[S.ID] for r in pending.take_all()) == ids[5:]
    _part(dest, "part-1.parquet", _rows(ids[5:12]))  # written after the dataset was built
    assert sorted(r[S.ID] for r in pending.take_all()) == ids[12:]  # re-executed: sees it


def test_stats_and_quarantine_run_as_tasks_one_quarantine_file_per_task(ray_local, tmp_path, monkeypatch):
    import raydebias.augment.stats as stats

    monkeypatch.setattr(stats, "FILES_PER_TASK", 2)  # 5 parts -> 3 tasks
    dest = StoragePath.of(tmp_path / "augmented")
    dest.mkdir(parents=True)
    untrainable = {"p1", "p4"}
    for k in range(5):
        _part(dest, f"part-{k}.parquet", _rows([f"p{k}"], positives=1 if f"p{k}" in untrainable else 2))
    q = StoragePath.of(tmp_path / "quarantine")
    q.mkdir(parents=True)
    got = stats_and_quarantine(dest, 5, q, min_positives=2)
    assert (got["rows_out"], got["trainable"], got["quarantined"]) == (5, 3, 2)
    assert len(q.glob("*.parquet")) == 2  # the tasks whose parts hold an untrainable row
    table = q.read_table()
    assert sorted(table.column(S.ID).to_pylist()) == sorted(untrainable)
    assert set(table.column(S.REASON).to_pylist()) == {"untrainable"}
    assert "1 positive(s) < augment.min_positives=2" in table.column(S.DETAIL)[0].as_py()
