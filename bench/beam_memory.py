"""Beam-search memory of the low_confidence op's generation (issue #16 item 3), on CPU.

    .venv/bin/python bench/beam_memory.py [--rows 16 --beams 8 --new-tokens 128 --size 768x12x12]

Eq. 1-2 need each returned beam's sequence score (and, for the CLIFF rule, its tokens' log-probs). HF
returns ``sequences_scores`` only with ``output_scores=True``, which keeps a full-vocabulary score tensor
per step: steps x rows x beams x vocab floats (128 x 16 x 8 x 50257 x 4 B = 3.3 GB here).
``HFGenerator`` instead rescores the returned beams in one teacher-forced pass (chunked logits), so
generation keeps only the beams themselves. This bench runs the same batch both ways, each in a fresh
process on a random GPT-2-small-sized model (real vocabulary, 1024 positions; the tiny kit's tokenizer),
and prints each one's peak resident memory during ``generate`` (sampled every 20 ms, above the memory
of the loaded model), its time, and whether the chosen beams and scores agree. Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def child(args) -> None:
    import psutil
    import torch
    from groups import sample_groups

    from raydebias.generation import GenParams, HFGenerator

    torch.manual_seed(0)
    gen = HFGenerator(args.model, "cpu", dtype=torch.float32)
    if args.mode == "hf_scores":
        gen._beam_logprobs_are_the_models = lambda params: False  # the old path: HF keeps per-step scores
    prompts = [f"POST: {g['post'][:200]}\nTL;DR:" for g in sample_groups(args.rows)]
    params = GenParams(max_new_tokens=args.new_tokens, num_beams=args.beams, num_return_sequences=args.beams,
                       length_penalty=2.0, max_input_tokens=512, output_scores=True)
    proc = psutil.Process()
    base = proc.memory_info().rss
    peak, done = [base], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            time.sleep(0.02)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    t0 = time.perf_counter()
    out = gen.generate(prompts, params)
    seconds = time.perf_counter() - t0
    done.set()
    t.join()
    print(json.dumps({"mode": args.mode, "seconds": round(seconds, 2), "loaded_rss_mib": round(base / 2**20),
                      "generate_peak_over_loaded_mib": round((peak[0] - base) / 2**20),
                      "scores": [[b.score for b in row] for row in out],
                      "lowest": [min(range(len(row)), key=lambda i: row[i].score) for row in out]}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=16)
    ap.add_argument("--beams", type=int, default=8)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--size", default="768x12x12", help="n_embd x n_layer x n_head (GPT-2 small)")
    ap.add_argument("--mode", choices=["hf_scores", "rescored"], help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.mode:
        return child(args)
    from groups import random_gpt2

    n_embd, n_layer, n_head = (int(x) for x in args.size.split("x"))
    with tempfile.TemporaryDirectory(prefix="bench-beam-") as d:
        model = random_gpt2(Path(d) / "gpt2", n_embd, n_layer, n_head)
        res = {}
        for mode in ("hf_scores", "rescored"):
            r = subprocess.run([sys.executable, __file__, "--mode", mode, "--model", model, "--rows", str(args.rows),
                                "--beams", str(args.beams), "--new-tokens", str(args.new_tokens)],
                               capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "2"})
            if r.returncode != 0:
                raise SystemExit(r.stderr[-3000:])
            res[mode] = json.loads(r.stdout.strip().splitlines()[-1])
            print(json.dumps({k: v for k, v in res[mode].items() if k not in ("scores", "lowest")}), flush=True)
    before, after = res["hf_scores"], res["rescored"]
    diff = max(abs(a - b) for ra, rb in zip(before["scores"], after["scores"], strict=True)
               for a, b in zip(ra, rb, strict=True))
    print(json.dumps({
        "rows": args.rows, "beams": args.beams, "new_tokens": args.new_tokens, "model": f"GPT2 {args.size}",
        "peak_mib_hf_scores": before["generate_peak_over_loaded_mib"],
        "peak_mib_rescored": after["generate_peak_over_loaded_mib"],
        "ratio_peak_rescored_over_hf_scores": round(after["generate_peak_over_loaded_mib"]
                                                    / max(before["generate_peak_over_loaded_mib"], 1), 3),
        "seconds_hf_scores": before["seconds"], "seconds_rescored": after["seconds"],
        "max_score_diff": diff, "same_lowest_beam": before["lowest"] == after["lowest"]}))


if __name__ == "__main__":
    main()
