"""The augment stage end to end on Ray: schema, counts, per-op stats, resume, fault isolation."""

import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from support import SHARED_RUN_ARGS, SHARED_RUN_ROWS

from raydebias import schema as S
from raydebias.augment.clean import AUGMENTED_SCHEMA
from raydebias.augment.entity_swap import EntitySwap
from raydebias.augment.pipeline import build
from raydebias.augment.registry import OPS
from raydebias.config import load_config
from raydebias.storage import StoragePath

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "jobs" / "configs" / "smoke.yaml"
FAST = ["data.eval_source=null", "augment.backtranslate.max_new_tokens=16",
        "augment.toxic_rewrite.max_new_tokens=16", "augment.low_confidence.max_new_tokens=16",
        "augment.regenerate.max_new_tokens=16"]


def _job(out, *extra, timeout=900):
    return subprocess.run([sys.executable, str(REPO / "jobs" / "pipeline.py"), "--config", str(SMOKE),
                           "--stage", "augment", "--output", str(out), *FAST, *extra],
                          capture_output=True, text=True, timeout=timeout, cwd=REPO)


def _table(out):
    return pq.read_table(out / "augmented")


def test_augment_stage_end_to_end_with_resume_on_s3(shared_run, s3):
    """The augmentation of the shared run (the rehearsed Llama-2-7B preset, streamed into training; the same pools and writer as
    --stage augment), then --stage augment resuming a copy of it in S3 (a local moto endpoint): a finished
    run is not redone, a killed one (one part lost, one unreadable) redoes only the missing rows."""
    src, _ = shared_run
    t = _table(src)
    assert t.schema.equals(AUGMENTED_SCHEMA, check_metadata=False)
    ids = t.column(S.ID).to_pylist()
    assert len(ids) == len(set(ids)) == SHARED_RUN_ROWS
    stats = json.loads((src / "stats.json").read_text())["augment"]
    assert stats["rows_in"] == stats["rows_out"] == SHARED_RUN_ROWS
    assert stats["trainable"] + stats["quarantined"] == SHARED_RUN_ROWS
    for op in OPS:  # every op ran and is accounted for
        s = stats["ops"][op]
        assert s["generated"] == s["kept"] + s["dropped"] == s["kept"] + sum(s["dropped_by_reason"].values())
        assert s["kept"] > 0, (op, s)  # every op produced candidates that survived cleaning
        assert "error" not in s["dropped_by_reason"], (op, s)  # the tiny models never make an op fail
    rows = t.to_pylist()
    assert all(c["positive"] for r in rows for c in r["positives"])
    assert not any(c["positive"] for r in rows for c in r["negatives"])
    assert all(r["positives"][0]["op"] == "reference" and r["positives"][0]["text"] == r["summary"] for r in rows)
    cands = [c for r in rows for c in r["positives"] + r["negatives"]]
    assert all(c["toxicity"] is not None and 0 <= c["toxicity"] <= 1 and c["entities"] is not None for c in cands)
    assert all(c["toxicity"] >= 0.4 for c in cands if c["op"] == "toxic_rewrite")
    assert all(len(c["text"].split()) >= 3 for c in cands if c["op"] != "reference")
    q = pq.read_table(src / "quarantine" / "augment")
    assert q.num_rows == stats["quarantined"] and set(q.column("reason").to_pylist()) <= {"untrainable"}

    out = StoragePath.of(s3.bucket() + "/run")
    s3.upload(src / "data", (out / "data").uri)
    s3.upload(src / "augmented", (out / "augmented").uri)
    parts = (out / "augmented").glob("*.parquet")
    r = _job(out, *SHARED_RUN_ARGS)
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads((out / "stats.json").read_text())["augment"]["resumed_from"] == SHARED_RUN_ROWS
    assert (out / "augmented").glob("*.parquet") == parts
    if len(parts) >= 2:
        parts[0].unlink()
        parts[1].write_bytes(parts[1].read_bytes()[:100])
    else:
        parts[0].write_bytes(parts[0].read_bytes()[:100])
    r = _job(out, *SHARED_RUN_ARGS)
    assert r.returncode == 0, r.stderr[-3000:]
    again = (out / "augmented").read_table(columns=[S.ID]).column(S.ID).to_pylist()
    assert sorted(again) == sorted(ids)
    stats = json.loads((out / "stats.json").read_text())["augment"]
    assert stats["resumed_from"] < SHARED_RUN_ROWS and stats["rows_out"] == SHARED_RUN_ROWS
    assert (out / "quarantine" / "augment").complete


class FailingSwap(EntitySwap):
    """Fault injection: fails on one source id (and on any batch containing it)."""

    def process_rows(self, rows):
        if any(r["id"] == self.bad_id for r in rows):
            raise RuntimeError("injected failure")
        return super().process_rows(rows)


def test_a_failing_row_is_recorded_not_fatal(ray_local):
    import ray.cloudpickle  # Ray pickles with its vendored cloudpickle, not the standalone package

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # ship the injected class by value
    cfg = load_config(SMOKE, ["augment.ops=[entity_swap]"])
    from raydebias.data import read_split

    src = read_split("sample:tldr/train", "train", cfg.data, "train").kept.limit(6).materialize()
    bad = src.take(3)[2]["id"]
    FailingSwap.bad_id = bad
    rows = build(src, cfg, use_gpu=False, classes={"entity_swap": FailingSwap}).take_all()
    assert len(rows) == 6
    by_id = {r["id"]: r for r in rows}
    errors = [d for d in by_id[bad]["drops"] if d["reason"] == "error"]
    assert errors and errors[0]["op"] == "entity_swap" and "injected failure" in errors[0]["detail"]
    assert not any(c["op"] == "entity_swap" for c in by_id[bad]["negatives"])
    others = [r for i, r in by_id.items() if i != bad]
    assert any(c["op"] == "entity_swap" for r in others for c in r["negatives"])
    assert all(not any(d["reason"] == "error" for d in r["drops"]) for r in others)


def test_gpu_pools_on_a_cluster_without_gpus_fail_loudly_instead_of_hanging(tmp_path):
    # ENV.md HANG 1: a pool asking for a GPU fraction on a cluster without GPUs would wait forever.
    r = _job(tmp_path / "gpu", "device=gpu", "ray.wait_for_min_actors_s=5", "data.limit=2",
             "augment.ops=[entity_swap]", timeout=240)
    assert r.returncode == 4, r.stderr[-3000:]
    assert "could not start within ray.wait_for_min_actors_s=5s" in r.stderr and "device=cpu" in r.stderr
    assert "Traceback" not in r.stderr.split("error: ")[-1]


def test_the_fused_layout_gives_the_pools_layouts_rows(ray_local):
    """augment.layout=fused (every stage in each actor of one pool) against the pools layout: the same
    blocks give the same augmented rows, candidate for candidate (same batches, same seeds)."""
    import ray.data

    from raydebias.data import read_split

    over = [*FAST, "augment.ops=[backtranslate,entity_swap,mask_fill]", "augment.fused.actors=2"]
    cfg = load_config(SMOKE, over)
    src = read_split("sample:tldr/train", "train", cfg.data, "train").kept.limit(10).to_arrow_refs()
    table = pa.concat_tables(ray.get(src))
    blocks = [table.slice(i, 4) for i in range(0, table.num_rows, 4)]  # 3 blocks, the last one short
    got = {}
    for layout in ("pools", "fused"):
        lay = load_config(SMOKE, [*over, f"augment.layout={layout}"])
        got[layout] = {r["id"]: r for r in build(ray.data.from_arrow(blocks), lay, use_gpu=False).take_all()}
    assert len(got["pools"]) == table.num_rows and got["pools"] == got["fused"]
    assert any(c["op"] == "mask_fill" for r in got["fused"].values() for c in r["negatives"])
