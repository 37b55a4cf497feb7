"""Bookkeeping at scale: synthetic source rows through the real stages with the models replaced by trivial ops.

    .venv/bin/python bench/scale.py --rows 1000000      # 10k, 100k, 1M (every power of ten from 10k)
    .venv/bin/python bench/scale.py --sizes 2000,20000

Each size runs in a fresh process (so its peak memory is its own) and goes through:
1. the data stage (``run_data_stage``): JSON lines in 8 files, with 0.1% invalid lines and 0.2% repeated
   ids, so the quarantine and the duplicate check have work;
2. the augment stage (``run_augment_stage``): the real pipeline (one Ray Data actor pool per model stage,
   the real cleaning and finalize, the part writer, the distributed stats and quarantine), every model
   stage replaced by a trivial class of the same contract (``TRIVIAL``): an op appends one candidate per
   row (and drops one in ten), NER finds no entity, toxicity is 0.9 for texts saying "toxic". Blocks and
   batches of ``--batch-rows`` rows (models are not the subject);
3. the train ingest: a ``TorchTrainer`` (``train.num_workers`` workers, the stage's ``data_config()``)
   whose loop reads ``parts_dataset(DIR/augmented)`` from ``get_dataset_shard`` in batches of
   ``train.groups_per_batch`` rows, as the train loop does, and counts them;
and prints the seconds of each, the driver's resident memory after ``ray.init`` (``driver_base_mb``) and
its peak (``driver_peak_mb``, ``ru_maxrss``), and checks the counts (rows in = kept + quarantined, every
kept row augmented, every augmented row ingested). Goal (issue 16): time linear in rows, driver memory flat.
The final JSON line holds ``seconds`` and ``driver_peak_mb`` per row count, and seconds per 1k rows.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from pathlib import Path

from common import REPO, emit

from raydebias.augment.annotate import AnnotateCandidates, AnnotateEntities, ScoreToxicity
from raydebias.augment.backtranslate import Backtranslate
from raydebias.augment.candidates import candidate, drop
from raydebias.augment.entity_swap import EntitySwap
from raydebias.augment.low_confidence import LowConfidence
from raydebias.augment.mask_fill import MaskFill
from raydebias.augment.regenerate import Regenerate
from raydebias.augment.toxic_rewrite import ToxicRewrite


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


class PhasePeaks:
    """The driver's peak resident memory per phase, sampled every 50 ms by a thread."""

    def __init__(self) -> None:
        self.phase, self.peaks, self._stop = "start", {}, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.peaks[self.phase] = max(self.peaks.get(self.phase, 0.0), rss_mb())

    def stop(self) -> dict[str, float]:
        self._stop.set()
        self._thread.join()
        return {k: round(v, 1) for k, v in self.peaks.items()}


# --- trivial stages: the registry's contracts, no model --------------------------------------------

class NoEntities:
    def tag(self, texts: list[str]) -> list[list[dict]]:
        return [[] for _ in texts]


class KeywordToxicity:
    def score(self, texts: list[str]) -> list[float]:
        return [0.9 if "toxic" in t else 0.1 for t in texts]


def _trivial_init(self, *sections, device: str = "cpu", seed: int = 0) -> None:
    self.cfg, self.seed = (sections[0] if sections else None), seed
    self.tagger, self.scorer = NoEntities(), KeywordToxicity()


def _trivial_rows(self, rows: list[dict]) -> list[tuple[list[dict], list[dict]]]:
    """One candidate per row (a positive for backtranslate), one drop per ten rows: deterministic by id."""
    out = []
    for r in rows:
        words = "toxic rewrite" if self.name == "toxic_rewrite" else f"{self.name} variant"
        drops = [drop(self.name, "trivial_drop", "bench/scale.py drops one row in ten")] if zlib.crc32(r["id"].encode()) % 10 == 0 else []
        out.append(([candidate(f"{r['summary']} {words} of row", self.name, positive=self.name == "backtranslate")],
                    drops))
    return out


def trivial(cls: type) -> type:
    """``cls`` with its model replaced: same name, section, reads/writes, needs (so the same pools and order)."""
    attrs = {"__init__": _trivial_init, "__module__": __name__}
    if hasattr(cls, "process_rows"):
        attrs["process_rows"] = _trivial_rows
    return type(f"Trivial{cls.__name__}", (cls,), attrs)


TRIVIAL = {c.name: trivial(c) for c in (AnnotateEntities, Backtranslate, ToxicRewrite, LowConfidence, EntitySwap,
                                        MaskFill, Regenerate, AnnotateCandidates, ScoreToxicity)}


# --- one size, in its own process ---------------------------------------------------------------

def write_sources(root: Path, rows: int, files: int = 8) -> None:
    """``rows`` JSON lines over ``files`` files, streamed (the driver never holds them): every 1000th line
    is invalid JSON, every 500th repeats the id of the line before it."""
    root.mkdir(parents=True, exist_ok=True)
    handles = [(root / f"part-{i}.jsonl").open("w") for i in range(files)]
    for i in range(rows):
        f = handles[i % files]
        if i % 1000 == 999:
            f.write("{not json\n")
            continue
        rid = f"r{i - 1}" if i % 500 == 499 else f"r{i}"
        f.write(json.dumps({"id": rid, "post": f"Post number {i} about a long day at work and what came of it.",
                            "summary": f"summary number {i} of the day"}) + "\n")
    for f in handles:
        f.close()


def ingest_loop(config: dict) -> None:
    import ray.train

    shard = ray.train.get_dataset_shard("train")
    rows = groups = 0
    for batch in shard.iter_batches(batch_size=config["batch_size"], batch_format="pyarrow"):
        rows += len(batch.to_pylist())  # the loop hands rows (dicts) to the collator
        groups += 1
    rank = ray.train.get_context().get_world_rank()
    (Path(config["counts"]) / f"rank-{rank}.json").write_text(json.dumps({"rows": rows, "batches": groups}))
    ray.train.report({"rows": rows, "batches": groups})


def train_ingest(cfg, out, storage: Path) -> int:
    """Rows read by every worker of a TorchTrainer from ``parts_dataset(DIR/augmented)``."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from raydebias.train.trainer import data_config, parts_dataset

    counts = storage / "counts"  # each worker writes its count here (the workers are other processes)
    counts.mkdir(parents=True)
    trainer = TorchTrainer(ingest_loop, train_loop_config={"batch_size": cfg.train.groups_per_batch,
                                                           "counts": str(counts)},
                           scaling_config=ScalingConfig(num_workers=cfg.train.num_workers,
                                                        resources_per_worker={"CPU": 1}),
                           datasets={"train": parts_dataset(out.augmented_dir)}, dataset_config=data_config(),
                           run_config=RunConfig(name="ingest", storage_path=str(storage)))
    trainer.fit()
    return sum(json.loads(f.read_text())["rows"] for f in counts.glob("rank-*.json"))


def one_size(rows: int, work: Path, batch_rows: int, config: str) -> dict:
    from raydebias.augment.pipeline import run_augment_stage
    from raydebias.augment.stage import stage_classes
    from raydebias.config import load_config
    from raydebias.data import run_data_stage
    from raydebias.outputs import RunDir
    from raydebias.runtime import init_ray

    write_sources(work / "src", rows)
    sections = sorted({c.section for c in stage_classes().values() if c.section})
    overrides = [f"data.source={work / 'src'}", "data.eval_source=null", "data.layout=plain",
                 f"augment.block_rows={batch_rows}",
                 *(f"augment.{s}.resources.batch_size={batch_rows}" for s in sections)]
    cfg = load_config(config, overrides)
    init_ray(cfg)
    import ray.train.torch  # noqa: F401  (imported before the baseline: the ingest's imports are not rows)
    out = RunDir(work / "run")
    base = rss_mb()
    seconds = {}
    peaks = PhasePeaks()
    for phase in ("data", "augment", "ingest"):
        peaks.phase = phase
        t0 = time.perf_counter()
        if phase == "data":
            data = run_data_stage(cfg, out)["train"]
        elif phase == "augment":
            aug = run_augment_stage(cfg, out, classes=TRIVIAL)
        else:
            ingested = train_ingest(cfg, out, work / "train")
        seconds[phase] = time.perf_counter() - t0
    phase_peaks = peaks.stop()
    checks = {"data_rows_add_up": data["rows_in"] == data["kept"] + data["quarantined"] == rows,
              "every_kept_row_augmented": aug["rows_in"] == aug["rows_out"] == data["kept"],
              "every_augmented_row_ingested": ingested == aug["rows_out"],
              "parts": len(out.augmented_dir.glob("*.parquet"))}
    return {"rows": rows, "seconds": {k: round(v, 2) for k, v in seconds.items()},
            "total_s": round(sum(seconds.values()), 2), "driver_base_mb": round(base, 1),
            "driver_peak_mb": round(peak_rss_mb(), 1), "driver_peak_mb_by_stage": phase_peaks,
            "data_quarantined": data["quarantined_by_reason"],
            "augment_trainable": aug["trainable"], **checks}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=100_000, help="largest size: every power of ten from 10k up to it")
    ap.add_argument("--sizes", default=None, help="comma-separated row counts (instead of --rows)")
    ap.add_argument("--batch-rows", type=int, default=1024, help="rows per batch of every (trivial) pool")
    ap.add_argument("--config", default=str(REPO / "jobs/configs/smoke.yaml"))
    ap.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)  # a child: one size
    ap.add_argument("--work", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one is not None:
        emit(what="size", **one_size(args.one, Path(args.work), args.batch_rows, args.config))
        return
    sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else \
        [10 ** k for k in range(4, 10) if 10 ** k <= args.rows]
    results = []
    for n in sizes:
        with tempfile.TemporaryDirectory(prefix=f"bench-scale-{n}-") as work:
            r = subprocess.run([sys.executable, __file__, "--one", str(n), "--work", work, "--batch-rows",
                                str(args.batch_rows), "--config", args.config], capture_output=True, text=True)
            lines = [json.loads(x) for x in r.stdout.splitlines() if x.startswith("{")]
            if r.returncode != 0 or not lines:
                sys.exit(f"bench/scale.py: the {n}-row run failed (exit {r.returncode}):\n{r.stderr[-4000:]}")
            results.append(lines[-1])
            emit(**lines[-1])
    emit(rows=sizes, seconds={r["rows"]: r["total_s"] for r in results},
         stage_seconds={r["rows"]: r["seconds"] for r in results},
         seconds_per_1k_rows={r["rows"]: round(1000 * r["total_s"] / r["rows"], 3) for r in results},
         driver_peak_mb={r["rows"]: r["driver_peak_mb"] for r in results},
         driver_base_mb={r["rows"]: r["driver_base_mb"] for r in results},
         counts_add_up=all(r["data_rows_add_up"] and r["every_kept_row_augmented"] and r["every_augmented_row_ingested"]
                           for r in results))


if __name__ == "__main__":
    main()
