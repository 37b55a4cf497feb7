"""The GPU path, checked on one lent GPU in a few minutes, offline (no hub: random-weight models built
from configs, tokenizers from the tiny kit).

    python bench/gpu_check.py [--out results.json] [--skip mfu,vllm]
    python bench/gpu_check.py --device cpu --skip mfu,vllm   # a dry run of the script itself (gloo, CPU)

Runs, each isolated (a failure is recorded and the next check still runs):
  train     the real training loop (raydebias.train.loop.run_worker: FSDP2, the loop's collectives,
            sharded checkpoints, the workers' export) on a 1-rank NCCL process group, device=cuda, for
            tiny GPT-2 / Phi / Llama (kit) and a GPT-2-small-sized model, in fp32, bf16 and fp16 (sharded
            grad scaler), one run with activation checkpointing, and a resume from a sharded checkpoint.
  evaluate  evaluation's generation actor (raydebias.evaluate.pipeline.Generate) on CUDA: greedy, sampled
            and log-likelihood requests, and an MMLU-Pro-length request (2048 new tokens) on a 1024-position
            model, which must be clamped instead of running past the position table (a device-side assert).
  baselines the CDA/Dropout fine-tuning loop (FSDP2, NCCL, bf16, checkpoints, export) and one generation actor
            serving the base, a hidden-state hook (INLP/SentenceDebias) and Self-Debias' logits processor.
  vllm      vLLM vs HF generate tokens/s on the same prompts and model (when vllm is importable).
  shared_prompt  one row per group (prompt encoded once, tree attention mask) vs one row per candidate on
            paper-size GPT-2 groups: equal losses (fp32), tokens and step time of each.
  mfu       training model-FLOPs utilisation of a GPT-2-medium-sized model (bf16, FSDP2 world 1).

Prints one JSON line (train_gpu_ok, evaluate_gpu_ok, mfu, vllm_over_hf_tokens_per_s, ..., errors) and
exits 1 if any check failed. Ray is not needed: the loop runs under the same Session interface Ray
Train drives (raydebias.train.loop.LocalSession).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
from groups import random_gpt2, sample_groups  # noqa: E402  (bench/ is this script's directory)

# Dense bf16 tensor-core peak (NVIDIA datasheets, SXM parts): the MFU denominator.
PEAK_BF16_FLOPS = {"H100": 989.4e12, "H200": 989.4e12, "A100": 312e12}
DEVICE = "cuda"  # --device cpu: a dry run of this script on a machine without a GPU


def log(msg: str) -> None:
    print(f"[gpu_check {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def train_cfg(model: str, precision: str, **extra):
    from raydebias.config import load_config

    over = [f"train.model={model}", f"train.precision={precision}",
            f"train.bf16_when_supported={'false' if precision == 'fp16' else 'true'}", "train.epochs=2",
            "train.groups_per_batch=4", "train.max_length=340", "train.warmup_steps=1", "train.lr=0.0001",
            *[f"train.{k}={v}" for k, v in extra.items()]]
    return load_config(None, over)


def check_train(work: Path, models: dict[str, str], results: dict) -> None:
    import torch

    from raydebias.models import load_model
    from raydebias.train.loop import run_local

    rows = sample_groups(16)
    runs = [(name, prec, {}) for name in models for prec in ("fp32", "bf16", "fp16")]
    runs.append(("gpt2-small", "bf16", {"activation_checkpointing": "true"}))
    out = {}
    for name, prec, extra in runs:
        key = f"{name}/{prec}" + ("/ac" if extra else "")
        root = work / "train" / key.replace("/", "_")
        if DEVICE == "cuda":
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        session = run_local(train_cfg(models[name], prec, **extra), rows, root / "ckpt", DEVICE,
                            export_to=str(root / "model"))
        epochs = [r for r in session.reports if r.get("epoch_done")]
        losses = [r["loss"] for r in epochs]
        if len(epochs) != 2 or not all(math.isfinite(x) for x in losses):
            raise AssertionError(f"{key}: epoch reports {epochs}")
        lm, _ = load_model(str(root / "model"), "causal_lm", device=DEVICE)
        want = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[prec]
        if lm.dtype != want:
            raise AssertionError(f"{key}: exported dtype {lm.dtype}, expected {want}")
        out[key] = {"loss": [round(x, 4) for x in losses], "tokens_per_s": round(epochs[-1]["tokens_per_s"], 1),
                    "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 3) if DEVICE == "cuda" else None,
                    "seconds": round(time.perf_counter() - t0, 1)}
        log(f"train {key}: {out[key]}")
        del lm
    # resume from a sharded checkpoint on NCCL: 2 epochs done above; ask for 3
    root = work / "train" / "gpt2-small_bf16"
    session = run_local(train_cfg(models["gpt2-small"], "bf16", epochs=3), rows, root / "ckpt", DEVICE)
    epochs = [r for r in session.reports if r.get("epoch_done")]
    if [r["epoch"] for r in epochs] != [2]:
        raise AssertionError(f"resume: expected only epoch 2 to run, got {epochs}")
    out["resume_epoch2_loss"] = round(epochs[0]["loss"], 4)
    results["train"] = out
    results["train_gpu_ok"] = True


def check_evaluate(models: dict[str, str], results: dict) -> None:
    import pyarrow as pa

    from raydebias.evaluate import tasks as T
    from raydebias.evaluate.pipeline import Generate
    from raydebias.generation import GenParams, HFGenerator

    # An MMLU-Pro-length request on a 1024-position model: must not run past the position table.
    gen = HFGenerator(models["gpt2"], DEVICE)
    long_prompt = "Question: " + "why is the sky blue and the grass green " * 150
    t0 = time.perf_counter()
    outs = gen.generate([long_prompt, "TL;DR:"], GenParams(max_new_tokens=2048))
    results["evaluate_long_request"] = {"new_tokens": [len(o[0].token_ids or []) for o in outs],
                                        "context": gen.context, "seconds": round(time.perf_counter() - t0, 1)}
    reqs = [T._req("tldr", "a", "greedy", "POST: my roommate owes me rent\nTL;DR:", 32, reference="x", source="y"),
            T._req("rtp", "b", "sample", "So I told him that", 32, 0.7, 0.9, challenging=False),
            T._req("truthfulqa_mc1", "c/0", "loglik", "Q: What is 2+2?\nA:", continuation=" 4", question="c", choice=0),
            T._req("truthfulqa_mc1", "c/1", "loglik", "Q: What is 2+2?\nA:", continuation=" 5", question="c", choice=1)]
    table = pa.Table.from_pylist(reqs, schema=T.REQUEST_SCHEMA)
    g = Generate(models["gpt2-small"], "hf", DEVICE == "cuda", 1.0, 0, min_prompt_tokens=512)
    t0 = time.perf_counter()
    done = g(table).to_pylist()
    if len(done) != len(reqs) or any(r[T.KIND] == "loglik" and not math.isfinite(r[T.LOGLIK]) for r in done):
        raise AssertionError(f"evaluate: bad results {done}")
    results["evaluate"] = {"rows": len(done), "seconds": round(time.perf_counter() - t0, 2)}
    results["evaluate_gpu_ok"] = True


def check_baselines(work: Path, models: dict[str, str], results: dict) -> None:
    """The baselines' GPU paths: the CDA/Dropout fine-tuning loop (raydebias.train.lm_loop: FSDP2, NCCL, sharded
    checkpoints, export) in bf16, and one Generate actor serving the base, an INLP-style hook and Self-Debias'
    logits processor on CUDA (greedy, sampled and log-likelihood requests)."""
    import pyarrow as pa
    import torch

    from raydebias.baselines.base import Variant, save_directions
    from raydebias.baselines.cda import group_texts
    from raydebias.evaluate import tasks as T
    from raydebias.evaluate.pipeline import Generate
    from raydebias.models import load_tokenizer
    from raydebias.storage import StoragePath
    from raydebias.train.lm_loop import INPUT_IDS, LMFinetune, run_lm_worker
    from raydebias.train.loop import LocalSession

    model = models["gpt2-small"]
    tok = load_tokenizer(model)
    texts = [" ".join(g["post"] for g in sample_groups(64))]
    blocks = StoragePath.of(work / "lm-blocks")
    with blocks.replacing() as d:
        (d / "part-0.parquet").write_parquet(pa.table({INPUT_IDS: pa.array(
            group_texts(tok(texts)["input_ids"], 256), pa.list_(pa.int32()))}))
    spec = LMFinetune(model=model, blocks=blocks.uri, export_to=str(work / "lm-model"), steps=4, per_device_batch=4,
                      accumulation=2, precision="bf16", dropout=0.15, checkpoint_every=2)
    t0 = time.perf_counter()
    last = run_lm_worker(spec, LocalSession({}, work / "lm-ckpt", DEVICE))
    results["baselines_finetune"] = {"steps": last["step"], "loss": round(last["loss"], 4),
                                     "seconds": round(time.perf_counter() - t0, 1)}
    hidden = json.loads((Path(model) / "config.json").read_text())["n_embd"]
    save_directions(work / "inlp", torch.randn(4, hidden), method="inlp")
    variants = [Variant("base", "base", model), Variant("inlp", "inlp", model, artifact=str(work / "inlp")),
                Variant("self_debias", "self_debias", model)]
    reqs = []
    for v in variants:
        reqs += [{**r, T.VARIANT: v.name} for r in (
            T._req("rtp", "g", "greedy", "So I told him that", 32),
            T._req("rtp", "s", "sample", "The worst thing about", 32, 0.7, 0.9),
            T._req("truthfulqa_mc1", "c/0", "loglik", "Q: What is 2+2?\nA:", continuation=" 4"))]
    g = Generate(variants, "hf", DEVICE == "cuda", 1.0, 0, min_prompt_tokens=64)
    t0 = time.perf_counter()
    done = g(pa.Table.from_pylist(reqs, schema=T.REQUEST_SCHEMA)).to_pylist()
    if any(r[T.ERROR] for r in done) or any(r[T.KIND] == "loglik" and not math.isfinite(r[T.LOGLIK]) for r in done):
        raise AssertionError(f"baselines: bad results {done}")
    results["baselines_generate"] = {"rows": len(done), "seconds": round(time.perf_counter() - t0, 2)}
    results["baselines_gpu_ok"] = True


def check_vllm(models: dict[str, str], results: dict) -> None:
    try:
        import vllm  # noqa: F401
    except ImportError as e:
        results["vllm_over_hf_tokens_per_s"] = None
        results["vllm"] = f"not installed ({e}); install the gpu extra to measure"
        return
    import torch

    from raydebias.generation import GenParams, HFGenerator, VLLMGenerator

    prompts = [f"POST: story number {i} about my roommate and the rent\nTL;DR:" for i in range(64)]
    params = GenParams(max_new_tokens=128, do_sample=True, temperature=1.0, top_p=0.95, seed=0)
    speeds = {}
    for name, make in (("hf", lambda: HFGenerator(models["gpt2-small"], "cuda")),
                       ("vllm", lambda: VLLMGenerator(models["gpt2-small"], "cuda", gpu_memory_utilization=0.3))):
        gen = make()
        gen.generate(prompts[:4], params)  # warm-up
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        outs = gen.generate(prompts, params)
        torch.cuda.synchronize()
        speeds[name] = sum(len(o[0].token_ids or []) for o in outs) / (time.perf_counter() - t0)
        del gen
    results["vllm"] = {k: round(v, 1) for k, v in speeds.items()}
    results["vllm_over_hf_tokens_per_s"] = round(speeds["vllm"] / speeds["hf"], 2)


def check_shared_prompt(models: dict[str, str], results: dict) -> None:
    """The shared-prompt encoding on CUDA (SDPA with a boolean tree mask): the losses of one row per group
    equal those of one row per candidate (fp32, dropout off), and the step time of each, on paper-size GPT-2
    groups (reference + 3 backtranslations + 10 negatives, ~400-token prompts) and a GPT-2-small model."""
    import torch
    from groups import compare_layouts, paper_groups

    from raydebias.config import load_config
    from raydebias.models import load_model
    from raydebias.train.model import ContrastiveLM

    cfg = load_config(None, ["train.max_length=512"])
    lm, tok = load_model(models["gpt2-small"], "causal_lm", device=DEVICE, dtype=torch.float32)
    torch.manual_seed(0)
    model = ContrastiveLM(lm, cfg.train.proj_dim).to(DEVICE)
    results["shared_prompt"] = compare_layouts(model, tok, paper_groups(8 if DEVICE == "cuda" else 2, tok), cfg,
                                               device=DEVICE, repeat=3)
    if results["shared_prompt"]["loss_abs_diff"] > 1e-3:
        raise AssertionError(f"shared-prompt loss differs from per-candidate: {results['shared_prompt']}")


def check_mfu(models: dict[str, str], results: dict) -> None:
    """Model FLOPs of the contrastive step / time / peak. FLOPs per step (PaLM App. B, as nanoGPT counts
    them): 6 x (non-embedding params) x tokens + 12 x layers x hidden x T per token for attention, plus the
    vocabulary projection 6 x V x H only on the reference rows' tokens (the model computes it for them
    alone), plus the projection head."""
    import torch
    import torch.distributed as dist

    from raydebias.train.batching import Collator
    from raydebias.train.distributed import Comm
    from raydebias.train.loop import build_model, step_losses

    cfg = train_cfg(models["gpt2-medium"], "bf16", max_length=512, groups_per_batch=8)
    device = torch.device("cuda")
    model, tok = build_model(cfg, device, "bf16", Comm(device))
    collate = Collator(tok, cfg.train.max_length, None, None, 0, cfg.train.shared_prompt)
    batch = collate(sample_groups(8, long_posts=True), 0).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    lm_cfg = model.lm.config
    n_layer, hidden, vocab = lm_cfg.n_layer, lm_cfg.n_embd, lm_cfg.vocab_size
    n_all = sum(p.numel() for p in model.parameters())
    n_emb = vocab * hidden + lm_cfg.n_positions * hidden
    seq = batch.input_ids.shape[1]
    tokens = batch.input_ids.numel()  # padded positions are computed too; count what the GPU runs
    lm_tokens = batch.ce_index.numel()  # the vocabulary projection runs at L_ce's positions only
    flops = (6 * (n_all - n_emb) * tokens + 12 * n_layer * hidden * seq * tokens + 6 * vocab * hidden * lm_tokens)

    def step():
        out = step_losses(model, batch, cfg)
        out["loss"].backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(3):
        step()
    torch.cuda.synchronize()
    n = 10
    t0 = time.perf_counter()
    for _ in range(n):
        step()
    torch.cuda.synchronize()
    dt = (time.perf_counter() - t0) / n
    name = torch.cuda.get_device_name()
    peak = next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), PEAK_BF16_FLOPS["H100"])
    results["mfu"] = round(flops / dt / peak, 4)
    results["mfu_detail"] = {"params": n_all, "batch": list(batch.input_ids.shape), "step_s": round(dt, 4),
                             "tflops": round(flops / dt / 1e12, 1), "peak_tflops": peak / 1e12,
                             "tokens_per_s": round(tokens / dt, 1), "device": name,
                             "note": "FSDP2 world 1, bf16 params / fp32 reduce, eager (no torch.compile)"}
    dist.barrier()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", help="also write the JSON here")
    ap.add_argument("--skip", default="",
                    help="comma-separated checks to skip: train,evaluate,baselines,vllm,shared_prompt,mfu")
    ap.add_argument("--device", default="cuda", choices=("cuda", "cpu"), help="cpu: dry-run this script (gloo)")
    ap.add_argument("--small", action="store_true", help="smaller 'small' model (dry runs on CPU)")
    args = ap.parse_args()
    global DEVICE
    DEVICE = args.device
    skip = set(filter(None, args.skip.split(",")))

    import torch
    import torch.distributed as dist

    results: dict = {"train_gpu_ok": False, "evaluate_gpu_ok": False, "baselines_gpu_ok": False, "mfu": None,
                     "vllm_over_hf_tokens_per_s": None, "errors": {}}
    if DEVICE == "cuda" and not torch.cuda.is_available():
        results["errors"]["cuda"] = "torch.cuda.is_available() is False"
        print(json.dumps(results))
        return 1
    import transformers

    results["env"] = {"torch": torch.__version__, "cuda": torch.version.cuda, "transformers": transformers.__version__,
                      "gpu": torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu",
                      "bf16": torch.cuda.is_bf16_supported() if DEVICE == "cuda" else None}
    work = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    os.environ.setdefault("RAYDEBIAS_TINY_DIR", str(work / "tiny"))
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29512")
    if DEVICE == "cuda":
        torch.cuda.set_device(0)
    # one group for every check, as a Ray worker has: NCCL on the GPU (gloo for a CPU dry run)
    dist.init_process_group("nccl" if DEVICE == "cuda" else "gloo", rank=0, world_size=1)
    t_all = time.perf_counter()
    models: dict[str, str] = {}
    try:
        from raydebias.models import resolve_model

        for name in ("gpt2", "phi", "llama"):
            try:
                models[name] = resolve_model(f"tiny:{name}")
            except Exception as e:  # a kit model missing is recorded, the others still run
                results["errors"][f"tiny:{name}"] = repr(e)
        models["gpt2-small"] = random_gpt2(work / "gpt2-small", *((128, 2, 2) if args.small else (768, 12, 12)))
        if "mfu" not in skip:
            models["gpt2-medium"] = random_gpt2(work / "gpt2-medium", 1024, 24, 16)
        train_models = {k: models[k] for k in ("gpt2", "phi", "llama", "gpt2-small") if k in models}
        checks = (("train", lambda: check_train(work, train_models, results)),
                  ("evaluate", lambda: check_evaluate(models, results)),
                  ("baselines", lambda: check_baselines(work, models, results)),
                  ("vllm", lambda: check_vllm(models, results)),
                  ("shared_prompt", lambda: check_shared_prompt(models, results)),
                  ("mfu", lambda: check_mfu(models, results)))
        for name, fn in checks:
            if name in skip:
                continue
            log(f"{name} ...")
            t0 = time.perf_counter()
            try:
                fn()
            except Exception as e:
                results["errors"][name] = f"{type(e).__name__}: {e}"[:2000]
                traceback.print_exc()
            log(f"{name} done in {time.perf_counter() - t0:.1f}s")
    finally:
        dist.destroy_process_group()
    results["seconds"] = round(time.perf_counter() - t_all, 1)
    line = json.dumps(results, default=str)
    print(line, flush=True)
    if args.out:
        Path(args.out).write_text(line + "\n")
    failed = bool(results["errors"]) or ("train" not in skip and not results["train_gpu_ok"]) or \
        ("evaluate" not in skip and not results["evaluate_gpu_ok"]) or \
        ("baselines" not in skip and not results["baselines_gpu_ok"])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
