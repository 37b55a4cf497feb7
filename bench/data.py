"""Benchmark the data stage: Ray Data pipeline vs. a plain single-process loop, same rows, one run.

    .venv/bin/python bench/data.py --rows 20000 --files 4

Both sides read the same JSONL files (the shipped samples replicated with fresh ids, plus ~2% bad
rows), apply the same per-record parsing/validation (`raydebias.data.parse_records`), drop duplicate
ids and write Parquet. The loop is what a one-off script does; the pipeline is what `jobs/pipeline.py
--stage data` runs. Prints rows/s of each and the ratio (pipeline / loop; > 1 means Ray is faster).
Absolute times on shared 2-core machines are noisy; the ratio within one run is what to compare.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("RAYDEBIAS_PROGRESS", "0")

import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from raydebias import schema as S  # noqa: E402
from raydebias.config import load_config  # noqa: E402
from raydebias.data import detect_layout, find_duplicates, parse_records, resolve_source  # noqa: E402


def make_input(root: Path, rows: int, files: int) -> list[Path]:
    base = []
    for p in resolve_source("sample:tldr/train"):
        if detect_layout(p) == "carper":
            base += [json.loads(line) for line in Path(p).read_text().splitlines()]
    paths = [root / f"part-{i}.jsonl" for i in range(files)]
    handles = [open(p, "w") for p in paths]
    for i in range(rows):
        j = i - 97 if (i % 97 == 3 and i > 97) else i  # ~1% exact repeats of an earlier row -> duplicate_id
        rec = dict(base[j % len(base)])
        rec["label"] = f"{rec['label']} (copy {j})"  # a new content-hash id per row
        line = json.dumps(rec)
        if i % 50 == 7:
            line = line[: len(line) // 2]  # truncated -> invalid_json
        handles[i % files].write(line + "\n")
    for h in handles:
        h.close()
    return paths


def plain_loop(paths: list[Path], out: Path, max_post_chars: int) -> tuple[int, int]:
    tables = []
    for p in paths:
        raw = [line for line in p.read_bytes().split(b"\n") if line]
        batch = pa.table({S.REC_FILE: [str(p)] * len(raw), S.REC_LINE: list(range(1, len(raw) + 1)),
                          S.REC_RAW: pa.array(raw, pa.binary())})
        tables.append(parse_records(batch, {str(p): "carper"}, max_post_chars))
    parsed = pa.concat_tables(tables)
    found = find_duplicates(parsed.select([S.ID, S.REC_FILE, S.REC_LINE, S.REC_RANK, S.REASON]))
    dups = set(zip(found.column(S.REC_FILE).to_pylist(), found.column(S.REC_LINE).to_pylist(), strict=True))
    keep = [r == "" and (f, ln) not in dups for r, f, ln in zip(
        parsed.column(S.REASON).to_pylist(), parsed.column(S.REC_FILE).to_pylist(),
        parsed.column(S.REC_LINE).to_pylist(), strict=True)]
    kept = parsed.filter(pa.array(keep)).select(list(S.SOURCE_COLUMNS))
    out.mkdir(parents=True, exist_ok=True)
    pq.write_table(kept, out / "sources.parquet")
    return parsed.num_rows, kept.num_rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=20_000)
    ap.add_argument("--files", type=int, default=4)
    ap.add_argument("--cpus", type=int, default=os.cpu_count() or 2)
    args = ap.parse_args()

    import ray

    from raydebias.data import run_data_stage
    from raydebias.outputs import RunDir
    from raydebias.runtime import init_ray

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "in").mkdir()
        paths = make_input(root / "in", args.rows, args.files)
        cfg = load_config(None, [f"data.source={root / 'in'}", "data.eval_source=null", "data.layout=carper",
                                 f"ray.num_cpus={args.cpus}"])
        t0 = time.perf_counter()
        rows_in, kept = plain_loop(paths, root / "loop", cfg.data.max_post_chars)
        loop_s = time.perf_counter() - t0

        init_ray(cfg)
        t0 = time.perf_counter()
        stats = run_data_stage(cfg, RunDir(root / "ray"))["train"]
        ray_s = time.perf_counter() - t0
        ray.shutdown()
        assert (stats["rows_in"], stats["kept"]) == (rows_in, kept), (stats, rows_in, kept)

    print(json.dumps({
        "rows_in": rows_in, "kept": kept, "quarantined": rows_in - kept, "files": args.files, "cpus": args.cpus,
        "loop_s": round(loop_s, 2), "ray_s": round(ray_s, 2),
        "loop_rows_per_s": round(rows_in / loop_s), "ray_rows_per_s": round(rows_in / ray_s),
        "ratio_ray_over_loop": round(loop_s / ray_s, 3),
    }))


if __name__ == "__main__":
    main()
