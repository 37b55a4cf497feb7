"""Synthetic training groups and random-weight models for the benches (offline: the tiny kit's tokenizers,
models built from configs). Imported by ``bench/train.py`` and ``bench/gpu_check.py``."""

from __future__ import annotations

import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _sample_prompts() -> list[tuple[dict, str]]:
    from raydebias.prompts import parse_prompt

    rows = []
    for f in sorted((REPO / "raydebias/samples/tldr/train").glob("carper-*.jsonl")):
        for line in f.read_text().splitlines():
            rec = json.loads(line)
            p = parse_prompt(rec["prompt"])
            if p is None or not rec.get("label"):
                continue
            rows.append((p, rec["label"].strip()))
    return rows


def sample_groups(n: int, long_posts: bool = False) -> list[dict]:
    """Augmented-style groups (reference + a paraphrase, two negatives incl. a toxic rewrite) from the
    shipped TL;DR samples."""
    rows = _sample_prompts()
    out = []
    for i in range(n):
        p, summary = rows[i % len(rows)]
        post = (p["post"] + "\n") * (4 if long_posts else 1)
        words = summary.split()
        out.append({
            "id": f"g{i}", "post": post, "summary": summary, "subreddit": p["subreddit"], "title": p["title"],
            "positives": [{"text": summary, "op": "reference", "entities": None},
                          {"text": "In short, " + summary, "op": "backtranslate", "entities": None}],
            "negatives": [{"text": "what an idiot, " + summary, "op": "toxic_rewrite", "entities": None},
                          {"text": " ".join(reversed(words)), "op": "low_confidence", "entities": None}],
        })
    return out


def random_gpt2(dest: Path, n_embd: int, n_layer: int, n_head: int) -> str:
    """A random GPT-2 of the given size (the real 50257 vocabulary size and 1024 positions), with the
    tiny kit's GPT-2 tokenizer (its ids are a subset of the vocabulary)."""
    import torch
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    from raydebias.models import resolve_model

    tok = AutoTokenizer.from_pretrained(resolve_model("tiny:gpt2"))
    config = GPT2Config(vocab_size=50257, n_positions=1024, n_embd=n_embd, n_layer=n_layer, n_head=n_head,
                        bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(config)
    model.save_pretrained(dest, safe_serialization=True)
    tok.save_pretrained(dest)
    return str(dest)



def paper_groups(n: int, tokenizer, prompt_tokens: int = 400, backtranslations: int = 3,
                 negatives: int = 10) -> list[dict]:
    """Groups of the paper's GPT-2 sizes: a post grown to about ``prompt_tokens`` tokens of ``tokenizer``,
    the reference, ``backtranslations`` paraphrases and ``negatives`` negatives (~30-token summaries)."""
    from raydebias.prompts import format_prompt

    ops = ["toxic_rewrite", "low_confidence", "entity_swap", "mask_fill", "regenerate"]
    prompts, out = _sample_prompts(), []
    for i in range(n):
        p, summary = prompts[i % len(prompts)]
        post = p["post"]
        while len(tokenizer(format_prompt(post, p["subreddit"], p["title"]))["input_ids"]) < prompt_tokens:
            post += "\n" + p["post"]
        words = summary.split()
        pos = [{"text": summary, "op": "reference", "entities": None}]
        pos += [{"text": f"{k + 1}: in other words, {summary}", "op": "backtranslate", "entities": None}
                for k in range(backtranslations)]
        neg = [{"text": " ".join(words[k % len(words):] + words[: k % len(words)]), "op": ops[k % len(ops)],
                "entities": None} for k in range(negatives)]
        out.append({"id": f"g{i}", "post": post, "summary": summary, "subreddit": p["subreddit"],
                    "title": p["title"], "positives": pos, "negatives": neg})
    return out


def compare_layouts(model, tokenizer, groups: list[dict], cfg, device: str = "cpu", repeat: int = 3) -> dict:
    """One batch of ``groups`` encoded both ways (one row per candidate, one row per group with the prompt once):
    per layout its rows, candidates, tokens encoded, padded tokens, loss (eval mode: no dropout masks, so the
    two are the same computation) and forward+backward step time (median of ``repeat`` after a warm-up); then
    ``prompt_tokens_saved_ratio``, ``step_speedup`` and ``loss_abs_diff``."""
    import statistics
    import time

    import torch

    from raydebias.train.batching import Collator
    from raydebias.train.loop import step_losses

    def sync() -> None:
        if str(device).startswith("cuda"):
            torch.cuda.synchronize()

    out: dict = {}
    for name, shared in (("per_candidate", False), ("shared_prompt", True)):
        batch = Collator(tokenizer, cfg.train.max_length, seed=cfg.seed, shared_prompt=shared)(groups, 0).to(device)
        model.eval()
        with torch.no_grad():
            loss = step_losses(model, batch, cfg)["loss"].item()
        model.train()
        times = []
        for _ in range(repeat + 1):  # the first is a warm-up
            model.zero_grad(set_to_none=True)
            sync()
            t0 = time.perf_counter()
            step_losses(model, batch, cfg)["loss"].backward()
            sync()
            times.append(time.perf_counter() - t0)
        out[name] = {"rows": batch.input_ids.shape[0], "candidates": batch.group.numel(), "tokens": batch.n_tokens,
                     "padded_tokens": batch.input_ids.numel(), "loss": loss,
                     "step_s": round(statistics.median(times[1:]), 4)}
    per, shared = out["per_candidate"], out["shared_prompt"]
    out["prompt_tokens_saved_ratio"] = round(1 - shared["tokens"] / per["tokens"], 3)
    out["step_speedup"] = round(per["step_s"] / shared["step_s"], 2)
    out["loss_abs_diff"] = abs(per["loss"] - shared["loss"])
    return out
