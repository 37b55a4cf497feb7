"""Benchmark training: the Ray Train loop vs. a plain torch loop, and streamed vs. staged augment->train.

    .venv/bin/python bench/train.py --rows 32 --epochs 3

1. tokens/s of the Ray Train loop (1 worker, FSDP2 over a world of 1, data from ``get_dataset_shard``)
   vs. a plain single-process loop (same tiny model, same Collator batches, same loss and optimizer, no
   Ray, no FSDP). Both count the epochs after the first (the first holds start-up: worker launch, dataset
   execution start), from epoch wall time including data loading. Goal: ratio >= 0.9.
   Reporting to Ray Train every step costs a controller round trip; the default (every 10) is measured.
2. wall time of ``--stage augment+train`` (augmentation streamed into the trainer) vs. ``--stage augment``
   then ``--stage train`` (staged), same rows, same config, one Ray cluster. Goal: streamed <= 0.75x staged.
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("RAYDEBIAS_PROGRESS", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")

REPO = Path(__file__).resolve().parents[1]


def emit(**kw) -> None:
    print(json.dumps(kw), flush=True)


def plain_loop(cfg, augmented: Path) -> float:
    """tokens/s over epochs >= 1 of a single-process loop on the same batches as the Ray loop."""
    import pyarrow.parquet as pq
    import torch

    from raydebias.models import load_model
    from raydebias.train.batching import Collator
    from raydebias.train.loop import WarmupLinear, step_losses
    from raydebias.train.model import ContrastiveLM

    torch.set_num_threads(1)
    t = cfg.train
    rows = pq.read_table(augmented).to_pylist()
    lm, tok = load_model(t.model, "causal_lm", dtype=torch.float32)
    torch.manual_seed(cfg.seed)
    model = ContrastiveLM(lm, t.proj_dim).train()
    collate = Collator(tok, t.max_length, t.max_positives, t.max_negatives, cfg.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=t.lr, weight_decay=t.weight_decay)
    steps = -(-len(rows) // t.groups_per_batch)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, WarmupLinear(t.warmup_steps, steps * t.epochs))
    tokens, seconds = 0, 0.0
    for epoch in range(t.epochs):
        t0, n = time.perf_counter(), 0
        for i in range(0, len(rows), t.groups_per_batch):
            batch = collate(rows[i: i + t.groups_per_batch], epoch)
            out = step_losses(model, batch, cfg)
            out["loss"].backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            n += batch.n_tokens
        dt = time.perf_counter() - t0
        emit(what="plain_epoch", epoch=epoch, tokens=n, seconds=round(dt, 3), tokens_per_s=round(n / dt, 1))
        if epoch >= 1:
            tokens, seconds = tokens + n, seconds + dt
    return tokens / seconds


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


def ray_tokens_per_s(out) -> float:
    hist = [json.loads(x) for x in (out.train_dir / "history.jsonl").read_text().splitlines()]
    epochs = [h for h in hist if h.get("epoch_done") and h["epoch"] >= 1]
    for h in epochs:
        emit(what="ray_epoch", epoch=h["epoch"], tokens_per_s=round(h["tokens_per_s"], 1))
    return sum(h["tokens_per_s"] for h in epochs) / len(epochs)


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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--repeat", type=int, default=2, help="pairs of streamed/staged runs (order alternates); 0: tokens/s only")
    ap.add_argument("--config", default=str(REPO / "jobs/configs/smoke.yaml"))
    ap.add_argument("--shared-model-size", default="256x4x4",
                    help="n_embd x n_layer x n_head of the random GPT-2 of the shared-prompt measurement")
    ap.add_argument("--shared-groups", type=int, default=4, help="groups per batch of the shared-prompt measurement")
    ap.add_argument("--only", choices=["shared_prompt"], help="run only this measurement")
    ap.add_argument("--memory-config", default=str(REPO / "jobs/configs/paper-llama2-7b.yaml"),
                    help="preset whose 2-worker rehearsal is measured for memory per rank ('' to skip)")
    args = ap.parse_args()
    if args.epochs < 2:
        ap.error("--epochs must be >= 2 (epoch 0 is start-up and not counted)")

    shared = shared_prompt_step(args.shared_model_size, args.shared_groups, repeat=3)
    if args.only == "shared_prompt":
        emit(prompt_tokens_saved_ratio=shared["prompt_tokens_saved_ratio"], shared_prompt=shared)
        return

    from raydebias.augment.pipeline import run_augment_stage
    from raydebias.config import load_config
    from raydebias.data import run_data_stage
    from raydebias.outputs import RunDir
    from raydebias.runtime import init_ray
    from raydebias.stages import run_augment_and_train
    from raydebias.train.trainer import run_train_stage

    overrides = [f"data.limit={args.rows}", f"train.epochs={args.epochs}"]
    cfg = load_config(args.config, overrides)
    init_ray(cfg)
    root = Path(tempfile.mkdtemp(prefix="bench-train-"))
    try:
        run_data_stage(cfg, RunDir(root / "warmup"))  # Ray workers, imports, the tiny-model cache
        # Alternate the order (streamed, staged, staged, streamed, ...) so that neither side always pays
        # the first run's cold start; each run gets its own fresh output directory.
        times: dict[str, list[float]] = {"streamed": [], "staged": []}
        order = [m for i in range(args.repeat) for m in (("streamed", "staged") if i % 2 == 0 else ("staged", "streamed"))]
        staged_dir = None
        for i, mode in enumerate(order):
            d = RunDir(root / f"{mode}-{i}")
            run_data_stage(cfg, d)
            t0 = time.perf_counter()
            if mode == "streamed":
                run_augment_and_train(cfg, d)
            else:
                run_augment_stage(cfg, d)
                run_train_stage(cfg, d)
                staged_dir = d
            times[mode].append(time.perf_counter() - t0)
            emit(what=f"{mode}_s", run=i, seconds=round(times[mode][-1], 2))
        streamed, staged = (sum(times[m]) / len(times[m]) if times[m] else float("nan") for m in ("streamed", "staged"))
        if staged_dir is None:  # --repeat 0: throughput only, on augmented rows made here (untimed)
            staged_dir = RunDir(root / "augmented-only")
            run_data_stage(cfg, staged_dir)
            run_augment_stage(cfg, staged_dir)

        # Throughput: 1 worker, 1 CPU, on the staged run's augmented rows.
        one = load_config(args.config, [*overrides, "train.num_workers=1", "train.cpus_per_worker=1",
                                        "train.report_every_steps=10"])
        ray_dir = RunDir(root / "ray1")
        shutil.copytree(staged_dir.root / "data", ray_dir.root / "data")
        shutil.copytree(staged_dir.augmented_dir, ray_dir.augmented_dir)
        run_train_stage(one, ray_dir)
        ray_tps = ray_tokens_per_s(ray_dir)
        plain_tps = plain_loop(one, staged_dir.augmented_dir)
        memory = memory_per_rank(args.memory_config, staged_dir) if args.memory_config else []
        emit(rows=args.rows, epochs=args.epochs, cpus_physical=os.cpu_count(),
             ray_train_tokens_per_s=round(ray_tps, 1), plain_loop_tokens_per_s=round(plain_tps, 1),
             ratio_ray_over_plain=round(ray_tps / plain_tps, 3),
             streamed_s=[round(x, 2) for x in times["streamed"]], staged_s=[round(x, 2) for x in times["staged"]],
             ratio_streamed_over_staged=round(streamed / staged, 3) if times["staged"] else None,
             prompt_tokens_saved_ratio=shared["prompt_tokens_saved_ratio"], shared_prompt=shared,
             param_share_per_rank=[m["param_share"] for m in memory],
             state_share_per_rank=[m["state_share"] for m in memory])
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
