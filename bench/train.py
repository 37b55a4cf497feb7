"""Benchmark training: the Ray Train loop vs. a plain torch loop, and streamed vs. staged augment->train.

    .venv/bin/python bench/train.py --rows 32 --epochs 3
    .venv/bin/python bench/train.py --only throughput --rows 32 --epochs 3   # measurement 1 alone

1. tokens/s of the Ray Train loop (1 worker, 1 CPU, FSDP2 over a world of 1, data from ``get_dataset_shard``,
   a report to Ray Train every ``report_every_steps`` = 10) vs. a plain single-process loop (same tiny model,
   same Collator batches, same loss and optimizer, no Ray, no FSDP), on the same augmented rows. Each
   measurement runs in a FRESH subprocess (``--side plain|ray``) with nothing else of the bench alive (the
   driver's Ray cluster is shut down first; the Ray side starts and stops its own local one), in the
   order plain, ray, ray, plain, ... over ``--throughput-repeat`` pairs. The plain loop once ran in the
   driver after the shared-prompt measurement and was ~1.7x faster than in a fresh process: that heap was
   already grown, while a fresh process's glibc mmaps each step's large attention tensors and unmaps them
   on free (~5M page faults, ~10 s of system time in 3 epochs of 32 rows; each run prints its faults). Both
   sides run the same torch intra-op thread count (the Ray worker's is read inside the worker and printed
   beside the plain side's). tokens/s: the mean of the per-epoch rates of the epochs after the first (the
   first holds start-up: worker launch, dataset execution start), from epoch wall time including data
   loading; the ratio is of the medians over the runs. Goal: ratio >= 0.9.
2. wall time of ``--stage augment+train`` (augmentation streamed into the trainer) vs. ``--stage augment``
   then ``--stage train`` (staged), same rows, same config, one Ray cluster (``--only streaming``: this
   alone), with the machine's busy CPU share over each run (/proc/stat). Streaming only fills cores that
   staged leaves idle, so with the same work staged's busy share bounds the ratio from below.
   Goal: streamed <= 0.75x staged.
3. the shared-prompt encoding (``train.shared_prompt``): groups of the paper's GPT-2 sizes (reference + 3
   backtranslations + 10 negatives, ~400-token prompts, ~30-token summaries) on a random GPT-2
   (``--shared-model-size``, default 4 layers x 256), one row per group vs one row per candidate: tokens
   encoded per step, forward+backward step time, and their ratios (``prompt_tokens_saved_ratio`` = 1 -
   shared / per-candidate tokens).
4. memory per rank in a 2-worker rehearsal of a paper preset (``--memory-config``, default Llama-2-7B's):
   each rank's parameter shards and AdamW state against the full parameters (FSDP2: about 1/2 each), and
   its peak RSS (on tiny models this is mostly the Python/torch runtime, so the shard ratios are the
   measurement; on GPUs ``bench/gpu_check.py`` reports the CUDA allocator's peak).

Prints one JSON line per measurement and a final summary line with the ratios. Absolute times on shared
2-core machines are noisy: compare the ratios from one run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

from common import REPO, emit

if TYPE_CHECKING:
    from raydebias.config import Config
    from raydebias.outputs import RunDir


class MachineCPU:
    """Busy CPU time of the whole machine over an interval (/proc/stat), in core-seconds and as a share of
    the cores: how much of the machine a run left idle, i.e. what overlapping could still win."""

    def __init__(self) -> None:
        self.start, self.t0 = self._read(), time.perf_counter()

    @staticmethod
    def _read() -> tuple[float, float]:
        with open("/proc/stat") as f:
            v = [float(x) for x in f.readline().split()[1:]]
        idle = v[3] + v[4]  # idle + iowait
        return sum(v) - idle, sum(v)

    def stop(self) -> dict:
        (busy0, total0), (busy1, total1) = self.start, self._read()
        hz = os.sysconf("SC_CLK_TCK")
        return {"busy_core_s": round((busy1 - busy0) / hz, 1), "wall_s": round(time.perf_counter() - self.t0, 2),
                "busy_share": round((busy1 - busy0) / max(total1 - total0, 1), 3)}


def thread_settings() -> dict:
    """The threads this process computes with: torch's intra-op and inter-op pools, OMP_NUM_THREADS, and
    the CPUs it may run on."""
    import torch

    return {"torch_threads": torch.get_num_threads(), "interop_threads": torch.get_num_interop_threads(),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "cpus_allowed": len(os.sched_getaffinity(0))}


def process_usage() -> dict:
    """This process's CPU seconds and minor page faults so far: a side whose allocator hands large tensors
    back to the OS every step (glibc mmaps allocations over its threshold) shows millions of faults and
    seconds of system time; a process whose heap is already grown (the driver after other measurements)
    does not, and trained ~1.7x faster for it."""
    import resource

    ru = resource.getrusage(resource.RUSAGE_SELF)
    return {"user_s": round(ru.ru_utime, 1), "sys_s": round(ru.ru_stime, 1), "minor_faults": ru.ru_minflt}


def throughput_config(args: argparse.Namespace) -> Config:
    """The config both throughput sides run: 1 worker with 1 CPU, reports every 10 steps (the default)."""
    from raydebias.config import load_config

    return load_config(args.config, [f"data.limit={args.rows}", f"train.epochs={args.epochs}",
                                     "train.num_workers=1", "train.cpus_per_worker=1", "train.report_every_steps=10"])


def worker_threads(cfg: Config) -> int:
    """The intra-op threads Ray Train's worker sets (``loop.train_loop_per_worker``): the plain side uses
    the same; the Ray side's actual value is read inside its worker and printed beside it."""
    return max(1, int(cfg.train.cpus_per_worker))


def plain_side(cfg: Config, augmented: Path) -> dict:
    """tokens/s over epochs >= 1 of a single-process loop on the same batches as the Ray loop: rows in
    memory, shuffled per epoch with the loop's seed (``seed + epoch``), no Ray, no FSDP."""
    import random

    import pyarrow.parquet as pq
    import torch

    from raydebias.models import load_model
    from raydebias.train.batching import Collator
    from raydebias.train.loop import WarmupLinear, step_losses
    from raydebias.train.model import ContrastiveLM

    torch.set_num_threads(worker_threads(cfg))
    t = cfg.train
    rows = pq.read_table(augmented).to_pylist()
    lm, tok = load_model(t.model, "causal_lm", dtype=torch.float32)
    torch.manual_seed(cfg.seed)
    model = ContrastiveLM(lm, t.proj_dim).train()
    collate = Collator(tok, t.max_length, t.max_positives, t.max_negatives, cfg.seed, t.shared_prompt)
    opt = torch.optim.AdamW(model.parameters(), lr=t.lr, weight_decay=t.weight_decay)
    steps = -(-len(rows) // t.groups_per_batch)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, WarmupLinear(t.warmup_steps, steps * t.epochs))
    epochs = []
    for epoch in range(t.epochs):
        order = list(rows)
        random.Random(cfg.seed + epoch).shuffle(order)
        t0, n = time.perf_counter(), 0
        for i in range(0, len(order), t.groups_per_batch):
            batch = collate(order[i: i + t.groups_per_batch], epoch)
            out = step_losses(model, batch, cfg)
            out["loss"].backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            n += batch.n_tokens
        dt = time.perf_counter() - t0
        epochs.append({"epoch": epoch, "tokens": n, "seconds": round(dt, 3), "tokens_per_s": round(n / dt, 1)})
    return {"epochs": epochs, "threads": thread_settings(), "usage": process_usage()}


def ray_side(cfg: Config, augmented: Path) -> dict:
    """The Ray Train stage (1 worker) on a copy of ``augmented`` in a fresh output directory (a reused one
    would resume its checkpoint), on a local Ray cluster of this process, shut down at the end. The
    worker's thread settings and CPU usage are read inside it, after the loop: Ray Train's entry point is
    wrapped for this run (the driver's would say nothing about the worker)."""
    import ray

    import raydebias.train.trainer as trainer
    from raydebias.outputs import RunDir
    from raydebias.runtime import init_ray

    root = Path(tempfile.mkdtemp(prefix="bench-train-ray-"))
    worker_file = root / "worker.json"
    loop = trainer.train_loop_per_worker

    def loop_recording_worker(loop_config: dict) -> None:
        loop(loop_config)
        worker_file.write_text(json.dumps({"threads": thread_settings(), "usage": process_usage()}))

    init_ray(cfg)
    try:
        run = RunDir(root / "run")
        shutil.copytree(augmented, run.augmented_dir)
        trainer.train_loop_per_worker = loop_recording_worker
        trainer.run_train_stage(cfg, run)
        hist = [json.loads(x) for x in (run.train_dir / "history.jsonl").read_text().splitlines()]
        epochs = [{"epoch": h["epoch"], "tokens_per_s": round(h["tokens_per_s"], 1)} for h in hist if h.get("epoch_done")]
        return {"epochs": epochs, **json.loads(worker_file.read_text())}
    finally:
        trainer.train_loop_per_worker = loop
        ray.shutdown()
        shutil.rmtree(root, ignore_errors=True)


def run_side(args: argparse.Namespace) -> None:
    """``--side plain|ray``: one throughput measurement in this (fresh) process, written to ``--side-result``."""
    cfg = throughput_config(args)
    side = plain_side if args.side == "plain" else ray_side
    Path(args.side_result).write_text(json.dumps(side(cfg, Path(args.augmented))))


def throughput(args: argparse.Namespace, augmented: Path) -> dict:
    """Ray Train loop vs. plain loop (measurement 1): each run a fresh ``--side`` subprocess on the rows of
    ``augmented``, order plain, ray, ray, plain, ...; tokens/s of each run and the ratio of the medians.
    Call with no Ray cluster of this process alive (its idle workers are no part of either side)."""
    import subprocess
    from statistics import median

    runs: dict[str, list[dict]] = {"plain": [], "ray": []}
    order = [s for i in range(args.throughput_repeat) for s in (("plain", "ray") if i % 2 == 0 else ("ray", "plain"))]
    with tempfile.TemporaryDirectory(prefix="bench-train-side-") as tmp:
        for i, side in enumerate(order):
            result = Path(tmp) / f"{side}-{i}.json"
            subprocess.run([sys.executable, str(Path(__file__).resolve()), "--side", side, "--augmented", str(augmented),
                            "--side-result", str(result), "--config", args.config, "--rows", str(args.rows),
                            "--epochs", str(args.epochs)], check=True)
            r = json.loads(result.read_text())
            counted = [e["tokens_per_s"] for e in r["epochs"] if e["epoch"] >= 1]
            r["tokens_per_s"] = sum(counted) / len(counted)
            runs[side].append(r)
            emit(what="throughput_run", side=side, run=i, tokens_per_s=round(r["tokens_per_s"], 1),
                 threads=r["threads"], usage=r["usage"], epochs=r["epochs"])
    tps = {side: [r["tokens_per_s"] for r in rs] for side, rs in runs.items()}
    threads = {side: sorted({r["threads"]["torch_threads"] for r in rs}) for side, rs in runs.items()}
    if threads["plain"] != threads["ray"]:
        emit(what="warning", message=f"torch threads differ: plain {threads['plain']} vs Ray worker {threads['ray']}")
    ray_tps, plain_tps = median(tps["ray"]), median(tps["plain"])
    return {"ray_train_tokens_per_s": round(ray_tps, 1), "plain_loop_tokens_per_s": round(plain_tps, 1),
            "ratio_ray_over_plain": round(ray_tps / plain_tps, 3), "throughput_order": order,
            "ray_tokens_per_s_runs": [round(x, 1) for x in tps["ray"]],
            "plain_tokens_per_s_runs": [round(x, 1) for x in tps["plain"]],
            "torch_threads": {"ray_worker": threads["ray"], "plain": threads["plain"]},
            "minor_faults_runs": {"ray_worker": [r["usage"]["minor_faults"] for r in runs["ray"]],
                                  "plain": [r["usage"]["minor_faults"] for r in runs["plain"]]}}


def shared_prompt_step(size: str, groups_per_batch: int, repeat: int) -> dict:
    """Tokens per step and step time (forward + backward, median of ``repeat``) of one batch of paper-size
    groups, encoded one row per candidate and one row per group (prompt once): ``groups.compare_layouts``."""
    import torch
    from groups import compare_layouts, paper_groups, random_gpt2

    from raydebias.config import load_config
    from raydebias.models import load_model
    from raydebias.train.model import ContrastiveLM

    torch.set_num_threads(1)
    n_embd, n_layer, n_head = (int(x) for x in size.split("x"))
    path = random_gpt2(Path(tempfile.mkdtemp(prefix="bench-gpt2-")), n_embd, n_layer, n_head)
    cfg = load_config(None, [f"train.model={path}", "train.max_length=512"])  # the GPT-2 preset's max length
    lm, tok = load_model(path, "causal_lm", dtype=torch.float32)
    torch.manual_seed(0)
    model = ContrastiveLM(lm, cfg.train.proj_dim)
    out = {"model": f"GPT2 {n_layer}x{n_embd}", "groups_per_batch": groups_per_batch,
           **compare_layouts(model, tok, paper_groups(groups_per_batch, tok), cfg, repeat=repeat)}
    for layout in ("per_candidate", "shared_prompt"):
        emit(what="shared_prompt_step", layout=layout, **out[layout])
    shutil.rmtree(path, ignore_errors=True)
    return out


def memory_per_rank(preset: str, staged_dir) -> list[dict]:
    """Train the rehearsal of ``preset`` with 2 workers for one epoch on ``staged_dir``'s augmented rows;
    print each rank's shard of the parameters and of the optimizer state, and its peak RSS."""
    from raydebias.config import load_config, replace_config
    from raydebias.outputs import RunDir
    from raydebias.rehearse import rehearse_config
    from raydebias.train.trainer import run_train_stage

    cfg, _ = rehearse_config(load_config(preset))
    cfg = replace_config(cfg, {"train.num_workers": 2, "train.epochs": 1})
    run = RunDir(Path(tempfile.mkdtemp(prefix="bench-memory-")))
    shutil.copytree(staged_dir.root / "data", run.root / "data")
    shutil.copytree(staged_dir.augmented_dir, run.augmented_dir)
    stats = run_train_stage(cfg, run)
    out = []
    for m in stats["memory"]:
        full, params, optim = m["full_param_bytes"], m["param_shard_bytes"], m["optim_shard_bytes"]
        row = {"rank": m["rank"], "model": cfg.train.model, "precision": stats["precision"],
               "param_shard_mib": round(params / 2**20, 3), "optim_shard_mib": round(optim / 2**20, 3),
               "full_params_mib": round(full / 2**20, 3), "param_share": round(params / full, 3),
               # parameters + AdamW state held, against the unsharded (full) parameters + their AdamW state
               "state_share": round((params + optim) / (3 * full), 3), "peak_rss_mib": round(m["peak_bytes"] / 2**20)}
        emit(what="memory_per_rank", preset=Path(preset).name, world_size=stats["world_size"], **row)
        out.append(row)
    shutil.rmtree(run.root, ignore_errors=True)
    return out


def augmented_rows(cfg: Config, root: Path) -> RunDir:
    """Data + augment stages on ``root`` (untimed): the rows the throughput sides train on."""
    from raydebias.augment.pipeline import run_augment_stage
    from raydebias.data import run_data_stage
    from raydebias.outputs import RunDir

    d = RunDir(root)
    run_data_stage(cfg, d)
    run_augment_stage(cfg, d)
    return d


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--repeat", type=int, default=2, help="pairs of streamed/staged runs (order alternates); 0: tokens/s only")
    ap.add_argument("--throughput-repeat", type=int, default=2,
                    help="pairs of plain/Ray throughput runs, each in a fresh process (order alternates)")
    ap.add_argument("--config", default=str(REPO / "jobs/configs/smoke.yaml"))
    ap.add_argument("--shared-model-size", default="256x4x4",
                    help="n_embd x n_layer x n_head of the random GPT-2 of the shared-prompt measurement")
    ap.add_argument("--shared-groups", type=int, default=4, help="groups per batch of the shared-prompt measurement")
    ap.add_argument("--only", choices=["shared_prompt", "throughput", "streaming"], help="run only this measurement")
    ap.add_argument("--memory-config", default=str(REPO / "jobs/configs/paper-llama2-7b.yaml"),
                    help="preset whose 2-worker rehearsal is measured for memory per rank ('' to skip)")
    # internal: one throughput measurement in a fresh process (throughput() starts these)
    ap.add_argument("--side", choices=["plain", "ray"], help=argparse.SUPPRESS)
    ap.add_argument("--augmented", help=argparse.SUPPRESS)
    ap.add_argument("--side-result", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.epochs < 2:
        ap.error("--epochs must be >= 2 (epoch 0 is start-up and not counted)")
    if args.side:
        run_side(args)
        return
    if args.throughput_repeat < 1:
        ap.error("--throughput-repeat must be >= 1")

    if args.only == "shared_prompt":
        shared = shared_prompt_step(args.shared_model_size, args.shared_groups, repeat=3)
        emit(prompt_tokens_saved_ratio=shared["prompt_tokens_saved_ratio"], shared_prompt=shared)
        return

    import ray

    from raydebias.augment.pipeline import run_augment_stage
    from raydebias.config import load_config
    from raydebias.data import run_data_stage
    from raydebias.outputs import RunDir
    from raydebias.runtime import init_ray
    from raydebias.stages import run_augment_and_train
    from raydebias.train.trainer import run_train_stage

    cfg = load_config(args.config, [f"data.limit={args.rows}", f"train.epochs={args.epochs}"])
    root = Path(tempfile.mkdtemp(prefix="bench-train-"))
    try:
        if args.only == "throughput":
            init_ray(cfg)
            rows_dir = augmented_rows(cfg, root / "augmented-only")
            ray.shutdown()  # the sides start their own processes: nothing of this one may compete with them
            emit(rows=args.rows, epochs=args.epochs, cpus_physical=os.cpu_count(),
                 **throughput(args, Path(rows_dir.augmented_dir)))
            return

        shared = shared_prompt_step(args.shared_model_size, args.shared_groups, repeat=3) \
            if args.only != "streaming" else None
        init_ray(cfg)
        run_data_stage(cfg, RunDir(root / "warmup"))  # Ray workers, imports, the tiny-model cache
        # Alternate the order (streamed, staged, staged, streamed, ...) so that neither side always pays
        # the first run's cold start; each run gets its own fresh output directory.
        times: dict[str, list[float]] = {"streamed": [], "staged": []}
        cpu: dict[str, list[dict]] = {"streamed": [], "staged": []}
        order = [m for i in range(args.repeat) for m in (("streamed", "staged") if i % 2 == 0 else ("staged", "streamed"))]
        staged_dir = None
        for i, mode in enumerate(order):
            d = RunDir(root / f"{mode}-{i}")
            run_data_stage(cfg, d)
            t0, machine = time.perf_counter(), MachineCPU()
            if mode == "streamed":
                run_augment_and_train(cfg, d)
            else:
                run_augment_stage(cfg, d)
                run_train_stage(cfg, d)
                staged_dir = d
            times[mode].append(time.perf_counter() - t0)
            cpu[mode].append(machine.stop())
            emit(what=f"{mode}_s", run=i, seconds=round(times[mode][-1], 2), **cpu[mode][-1])
        streamed, staged = (sum(times[m]) / len(times[m]) if times[m] else float("nan") for m in ("streamed", "staged"))
        # Streaming can only fill the cores staged left idle: with the same work, streamed wall >= staged busy
        # core-seconds / cores, so staged's busy share is the best ratio this box allows.
        staged_busy = sum(c["busy_share"] for c in cpu["staged"]) / len(cpu["staged"]) if cpu["staged"] else None
        if args.only == "streaming":
            emit(rows=args.rows, epochs=args.epochs, cpus_physical=os.cpu_count(),
                 streamed_s=[round(x, 2) for x in times["streamed"]], staged_s=[round(x, 2) for x in times["staged"]],
                 ratio_streamed_over_staged=round(streamed / staged, 3) if times["staged"] else None,
                 machine_cpu=cpu, staged_busy_share=staged_busy and round(staged_busy, 3))
            return
        if staged_dir is None:  # --repeat 0: throughput only, on augmented rows made here (untimed)
            staged_dir = augmented_rows(cfg, root / "augmented-only")

        memory = memory_per_rank(args.memory_config, staged_dir) if args.memory_config else []
        ray.shutdown()  # the throughput sides start their own processes (and the Ray side its own cluster)
        # Throughput: 1 worker, 1 CPU, on the staged run's augmented rows.
        tp = throughput(args, Path(staged_dir.augmented_dir))
        emit(rows=args.rows, epochs=args.epochs, cpus_physical=os.cpu_count(), **tp,
             streamed_s=[round(x, 2) for x in times["streamed"]], staged_s=[round(x, 2) for x in times["staged"]],
             ratio_streamed_over_staged=round(streamed / staged, 3) if times["staged"] else None,
             machine_cpu=cpu, staged_busy_share=staged_busy and round(staged_busy, 3),
             prompt_tokens_saved_ratio=shared["prompt_tokens_saved_ratio"], shared_prompt=shared,
             param_share_per_rank=[m["param_share"] for m in memory],
             state_share_per_rank=[m["state_share"] for m in memory])
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
