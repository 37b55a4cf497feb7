"""The benchmark stage: base + every debiasing method on every benchmark, one report (issue #15; SPEC §7).

    build      fit rows (INLP, SentenceDebias): corpus sentences -> embed pool -> fit task
               train rows (CDA, Dropout): corpus -> causal-LM fine-tuning on Ray Train (FSDP2)
    generate   one Generate pool per set of weights: the base pool serves base, instructive, self_debias and
               the hook variants (the base loads once per actor; each batch runs under its variant's
               intervention); fine-tuned rows get a pool each. Requests: every evaluate.tasks benchmark (the
               evaluate stage's own requests, budgets and quarantine) + the homogenization samples.
    score      ONE scoring pool over every variant's generations (toxicity, NLI faithfulness, ...).
    measures   per variant: metrics (the evaluate stage's), single-cluster rate (embeddings + clustering in a
               task), general-text loss (a task per set of weights, under each variant's intervention).
    report     DIR/benchmark/metrics.json ({row: {metric: value}}), report.md, report.html, PNGs.

Resume: a built variant (its directory complete), a variant's generations (``generated/<row>``) and its
scored results (``eval/<row>``) are each written once, atomically; a re-run does only what is missing.
A row that fails to build is reported as failed with why (``failed.json`` and every table), never left out.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import pyarrow as pa

from raydebias.baselines.base import Variant
from raydebias.baselines.interventions import build_intervention
from raydebias.benchmark.variants import Row, base_model, benchmark_dir, is_built, rows, variant
from raydebias.config import Config
from raydebias.evaluate import tasks as T
from raydebias.evaluate.pipeline import Generate, Score, build_requests, model_budget, read_benchmarks
from raydebias.models import load_tokenizer

log = logging.getLogger(__name__)

SCR_ITEM = "scr:"  # item prefix of the homogenization samples (question index / sample index)


# --------------------------------------------------------------------------------------------------
# Build
# --------------------------------------------------------------------------------------------------


def build_rows(cfg: Config, out: Any, todo: list[Row], use_gpu: bool
               ) -> tuple[dict[str, Any], dict[str, str], dict[str, Any] | None]:
    """Build every row of ``todo`` not built yet: (stats per built row, why per failed row, the corpus' counts:
    texts read = kept + skipped per reason; None when nothing was built). Fine-tunings run
    ``benchmark.finetune.concurrent_runs`` at a time (each ``trainer.fit()`` only waits on its Ray Train
    controller, so threads are enough) while the fits run: one embedding pass for all of them, then one task
    each (:func:`raydebias.benchmark.fit.fit_variants`)."""
    from concurrent.futures import ThreadPoolExecutor

    from raydebias.benchmark.corpus import read_texts

    b = cfg.benchmark
    todo = [r for r in todo if not is_built(r, out)]
    if not todo:
        return {}, {}, None
    texts, counts = read_texts(b.corpus, out, split=b.corpus_split, limit=b.corpus_limit)
    log.info("benchmark: corpus %s: %d texts (%s)", b.corpus, len(texts), counts.as_dict())

    def train(row: Row) -> Any:
        from raydebias.benchmark.finetune import finetune_variant

        return finetune_variant(row, texts, cfg, out)

    # transformers resolves its names lazily and not thread-safely: resolve what the fine-tunings use here first
    from ray.train.torch import TorchTrainer  # noqa: F401
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer  # noqa: F401

    from raydebias.benchmark.fit import fit_variants

    built: dict[str, Any] = {}
    failed: dict[str, str] = {}
    with ThreadPoolExecutor(max_workers=b.finetune.concurrent_runs, thread_name_prefix="finetune") as pool:
        trained = {r.name: pool.submit(train, r) for r in todo if r.build == "train"}
        fitted, not_fitted = fit_variants([r for r in todo if r.build == "fit"], texts, base_model(cfg), cfg, out,
                                          use_gpu)  # meanwhile, on this thread
        for name, why in not_fitted.items():
            _failed(name, why, failed)
        for name, fut in trained.items():
            try:
                built[name] = fut.result()
            except Exception as e:  # noqa: BLE001 - reported as a failed row, with why (issue #15 item 6)
                _failed(name, f"{type(e).__name__}: {e}", failed)
    built.update(fitted)
    return {k: built[k] for k in (r.name for r in todo) if k in built}, failed, counts.as_dict()


def _failed(name: str, why: str, failed: dict[str, str]) -> None:
    failed[name] = why
    log.error("benchmark: %s could not be built: %s", name, why)


# --------------------------------------------------------------------------------------------------
# Requests
# --------------------------------------------------------------------------------------------------


def homogenization_requests(bench: dict[str, list[dict]], cfg: Config) -> tuple[list[dict], int, dict[str, int]]:
    """``samples`` sampled answers per TruthfulQA question (the generation prompt, stopped as TruthfulQA
    generation is), the number of question slots, and counts: questions in = asked + refused (a row without a
    question; TruthfulQA's own requests quarantine it too when it is evaluated)."""
    from raydebias.evaluate.tasks.truthfulqa import GEN_STOP, gen_prompt, normalize_row

    h, e = cfg.benchmark.homogenization, cfg.evaluate
    questions = bench.get("truthfulqa_gen") or []
    n = h.questions if h.questions is not None else (e.limit if e.limit is not None else len(questions))
    reqs = []
    counts = {"questions_in": min(n, len(questions)), "asked": 0, "refused": 0}
    for i, raw in enumerate(questions[:n]):
        try:
            q = normalize_row(raw)["question"]
        except ValueError as e:
            counts["refused"] += 1
            log.warning("benchmark: homogenization: TruthfulQA row %d refused: %s", i, e)
            continue
        counts["asked"] += 1
        reqs += [T._req("truthfulqa_gen", f"{SCR_ITEM}{i}/{k}", "sample", gen_prompt(q), h.max_new_tokens,
                        h.temperature, h.top_p, stop=[GEN_STOP], question=i) for k in range(h.samples)]
    return reqs, min(n, len(questions)), counts


def variant_requests(v: Variant, bench: dict[str, list[dict]], cfg: Config, scr: list[dict]
                     ) -> tuple[pa.Table, list[dict], dict[str, int]]:
    """The evaluation requests of ``v`` (its own budget and prompt prefix) + its homogenization samples, all
    tagged with its name."""
    budget = model_budget(v.model, cfg.evaluate)
    if reserved := build_intervention(v).reserved_positions(load_tokenizer(v.model)):
        count = budget.count_tokens  # prompts leave room for the intervention's own positions
        budget = dataclasses.replace(budget, count_tokens=lambda prompt: count(prompt) + reserved)
    reqs, bad, rows_in = build_requests(bench, cfg, budget, v.prompt_prefix)
    extra = T.instruct_requests(scr, v.prompt_prefix) if v.prompt_prefix else scr
    extra, refused = T.fit_requests(extra, budget)
    bad = bad + [{**q, "task": "homogenization"} for q in refused]
    table = pa.concat_tables([reqs, pa.Table.from_pylist(extra, schema=T.REQUEST_SCHEMA)])
    table = table.set_column(table.schema.get_field_index(T.VARIANT), T.VARIANT,
                             pa.array([v.name] * table.num_rows, pa.string()))
    return table, bad, rows_in


# --------------------------------------------------------------------------------------------------
# Generate, score
# --------------------------------------------------------------------------------------------------


def _by_weights(variants: dict[str, Variant]) -> dict[str, list[Variant]]:
    groups: dict[str, list[Variant]] = defaultdict(list)
    for v in variants.values():
        groups[v.model].append(v)
    return groups


def generate(variants: dict[str, Variant], requests: dict[str, pa.Table], cfg: Config, out: Any, use_gpu: bool
             ) -> dict[str, list[dict]]:
    """Generated rows per variant: read where ``generated/<row>`` is complete, else generated by one pool per
    set of weights (``benchmark.concurrent_pools`` of them in one Ray Data pass) and written."""
    gdir = benchmark_dir(out) / "generated"
    done = {name: gdir / name for name in variants if (gdir / name).complete}
    result = {name: d.read_table().to_pylist() for name, d in done.items()}
    groups = list(_by_weights({k: v for k, v in variants.items() if k not in done}).values())
    step = cfg.benchmark.concurrent_pools
    for i in range(0, len(groups), step):
        batch = groups[i:i + step]
        rows_out = _generate_groups(batch, requests, cfg, use_gpu)
        for group in batch:
            for v in group:
                mine = [r for r in rows_out if r[T.VARIANT] == v.name]
                if len(mine) != requests[v.name].num_rows:
                    raise AssertionError(f"benchmark: {requests[v.name].num_rows} requests in, {len(mine)} generated "
                                         f"({v.name})")
                out.write_table(pa.Table.from_pylist(mine, schema=_generated_schema()), gdir / v.name)
                result[v.name] = mine
        log.info("benchmark: generated %s", "; ".join(
            f"{sum(requests[v.name].num_rows for v in g)} requests for {', '.join(v.name for v in g)}" for g in batch))
    return result


def _generate_groups(groups: list[list[Variant]], requests: dict[str, pa.Table], cfg: Config, use_gpu: bool
                     ) -> list[dict]:
    """One Ray Data pass: each set of weights its own Generate pool, the pools' outputs unioned."""
    import ray.data

    from raydebias.runtime import actor_pool

    e = cfg.evaluate
    parts = []
    for group in groups:
        table = pa.concat_tables([requests[v.name] for v in group])
        if table.num_rows == 0:
            continue
        ds = ray.data.from_arrow(table).repartition(max(1, min(table.num_rows // e.generate.batch_size, 64)))
        parts.append(actor_pool(ds, Generate, e.generate, use_gpu, name="generate", constructor_kwargs={
            "model": group, "backend": e.backend, "use_gpu": use_gpu, "gpu_fraction": e.generate.num_gpus,
            "seed": cfg.seed, "min_prompt_tokens": e.min_prompt_tokens}))
    if not parts:
        return []
    return (parts[0].union(*parts[1:]) if len(parts) > 1 else parts[0]).take_all()


def _generated_schema() -> pa.Schema:
    extra = [f for f in T.RESULT_SCHEMA if f.name in (T.OUTPUT, T.LOGLIK, T.MAX_NEW_USED, T.ERROR)]
    return pa.schema([*T.REQUEST_SCHEMA, *extra])


def score(generated: dict[str, list[dict]], cfg: Config, out: Any, use_gpu: bool) -> dict[str, list[dict]]:
    """Scored evaluation rows per variant (the homogenization samples are not scored): ONE scoring pool over
    every variant whose ``eval/<row>`` is not complete yet."""
    import ray.data

    from raydebias.runtime import actor_pool

    e, edir = cfg.evaluate, benchmark_dir(out) / "eval"
    result = {name: (edir / name).read_table().to_pylist() for name in generated if (edir / name).complete}
    todo = [r for name, rs in generated.items() if name not in result for r in rs
            if not r[T.ITEM].startswith(SCR_ITEM)]
    scored: list[dict] = []
    if todo:
        table = pa.Table.from_pylist(todo, schema=_generated_schema())
        ds = ray.data.from_arrow(table).repartition(max(1, min(table.num_rows // e.score.batch_size, 64)))
        scored = actor_pool(ds, Score, e.score, use_gpu, name="score", constructor_kwargs={
            "cfg": e, "toxicity": cfg.augment.toxicity, "use_gpu": use_gpu}).take_all()
        if len(scored) != len(todo):
            raise AssertionError(f"benchmark: {len(todo)} generations in, {len(scored)} scored")
    for name in generated:
        if name in result:
            continue
        mine = [r for r in scored if r[T.VARIANT] == name]
        out.write_table(pa.Table.from_pylist(mine, schema=T.RESULT_SCHEMA), edir / name)
        result[name] = mine
    return result


# --------------------------------------------------------------------------------------------------
# Measures beyond the benchmarks (SPEC §7b)
# --------------------------------------------------------------------------------------------------


def homogenization(generated: dict[str, list[dict]], n_questions: int, cfg: Config) -> dict[str, dict[str, Any]]:
    """Single-cluster rate per variant, from its homogenization samples (one task for all variants: the
    embedder loads once)."""
    import ray

    per_variant: dict[str, list[list[str]]] = {}
    failed: dict[str, int] = {}
    for name, rs in generated.items():
        answers: list[list[str]] = [[] for _ in range(n_questions)]
        failed[name] = 0
        for r in rs:
            if not r[T.ITEM].startswith(SCR_ITEM):
                continue
            if r.get(T.ERROR):
                failed[name] += 1
                continue
            answers[int(r[T.ITEM][len(SCR_ITEM):].split("/")[0])].append(r[T.OUTPUT] or "")
        per_variant[name] = answers
    if n_questions == 0:
        return {}
    h, b = cfg.benchmark.homogenization, cfg.benchmark

    def run(all_answers: dict[str, list[list[str]]]) -> dict[str, dict[str, Any]]:
        from raydebias.scoring.homogenization import SentenceEmbedder, scr_from_texts

        emb = SentenceEmbedder(b.embedding_model)
        return {name: scr_from_texts(a, emb, h.threshold) for name, a in all_answers.items()}

    res = ray.get(ray.remote(num_cpus=1)(run).remote(per_variant))
    for name, r in res.items():
        r["n_failed_samples"] = failed[name]
    return res


def general_loss(variants: dict[str, Variant], texts: list[str], cfg: Config, use_gpu: bool) -> dict[str, Any]:
    """Loss and perplexity on the held-out general text per variant: one task per set of weights, each variant
    under its own intervention (the prompt prefix of Instructive does not apply to plain text)."""
    import ray

    def run(group: list[Variant]) -> dict[str, Any]:
        import torch

        from raydebias.baselines.interventions import build_intervention
        from raydebias.models import actor_device, load_model, max_input_tokens
        from raydebias.scoring.perplexity import general_lm_loss

        torch.set_num_threads(1)
        model, tok = load_model(group[0].model, "causal_lm", device=actor_device(use_gpu))
        res = {}
        for v in group:
            iv = build_intervention(v)
            iv.attach(model)
            try:
                block = max_input_tokens(tok, model) - iv.reserved_positions(tok)
                res[v.name] = general_lm_loss(model, tok, texts, block_size=block, log_probs=iv.log_probs)
            finally:
                iv.detach()
        return res

    g = cfg.evaluate.generate
    task = ray.remote(num_cpus=g.num_cpus, num_gpus=g.num_gpus if use_gpu else 0)(run)
    out: dict[str, Any] = {}
    for part in ray.get([task.remote(group) for group in _by_weights(variants).values()]):
        out.update(part)
    return out


# --------------------------------------------------------------------------------------------------
# The stage
# --------------------------------------------------------------------------------------------------


def flat_metrics(task_metrics: dict[str, Any], scr: dict[str, Any] | None, loss: dict[str, Any] | None
                 ) -> dict[str, float]:
    from raydebias.benchmark.report import flatten_metrics

    flat = flatten_metrics(task_metrics)
    if scr is not None:
        flat["single_cluster_rate"] = scr["single_cluster_rate"]
    if loss is not None:
        flat["general_loss"], flat["general_ppl"] = loss["loss"], loss["ppl"]
    return flat


def with_deltas(table: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """``delta_<metric>`` = value - base's value, for the tax measures of every row (base: 0)."""
    base = table.get("base", {})
    for m in table.values():
        for k in ("single_cluster_rate", "general_ppl", "general_loss"):
            if k in m and k in base:
                m[f"delta_{k}"] = m[k] - base[k]
    return table


def check_inputs(cfg: Config, out: Any, planned: list[str]) -> None:
    """Before Ray starts: the base and contrastive models, a backend every method can run on, and corpora
    that can be read (the first text of each), so a missing input fails in a second, not after the pools."""
    from raydebias.baselines.base import HF_ONLY_METHODS
    from raydebias.benchmark.corpus import TLDR, iter_texts
    from raydebias.benchmark.variants import contrastive_model
    from raydebias.errors import ConfigError, DataError

    b = cfg.benchmark
    base_model(cfg)
    if "contrastive" in b.methods and not {"train", "augment+train"} & set(planned):
        contrastive_model(cfg, out)
    hooked = sorted(HF_ONLY_METHODS & set(b.methods))
    if hooked and cfg.evaluate.backend != "hf":
        raise ConfigError(f"benchmark.methods {hooked} intervene in the model (a hidden-state hook or a logits "
                          f"processor) and run on the HF backend only: set evaluate.backend=hf "
                          f"(got {cfg.evaluate.backend!r}), or drop them from benchmark.methods")
    need_corpus = [r.name for r in rows(cfg) if not is_built(r, out)]
    sources = [(b.general_text, b.general_text_split, "benchmark.general_text")]
    if need_corpus and not (b.corpus == TLDR and "data" in planned):
        sources.append((b.corpus, b.corpus_split, "benchmark.corpus"))
    for source, split, key in sources:
        if next(iter_texts(source, out, split=split, limit=1), None) is None:
            raise DataError(f"{key}={source!r} holds no text")


def run_benchmark_stage(cfg: Config, out: Any) -> dict[str, Any]:
    from raydebias.benchmark.corpus import read_texts
    from raydebias.benchmark.report import write_benchmark_report
    from raydebias.evaluate.pipeline import quarantine_table
    from raydebias.runtime import use_gpus

    t0 = time.perf_counter()
    gpu = use_gpus(cfg.device)
    b, bdir = cfg.benchmark, benchmark_dir(out)
    plan = rows(cfg)
    built, failed, corpus = build_rows(cfg, out, [r for r in plan if r.build != "none"], gpu)
    variants = {r.name: variant(r, cfg, out) for r in plan if r.name not in failed}

    bench = read_benchmarks(cfg, out)
    if "truthfulqa_gen" not in bench:  # the homogenization samples ask TruthfulQA's questions
        from raydebias.evaluate.tasks import truthfulqa

        bench_h = truthfulqa.read(cfg.evaluate, out)
    else:
        bench_h = bench
    scr_reqs, n_questions, scr_counts = homogenization_requests(bench_h, cfg)
    requests, bad, rows_in = {}, {}, {}
    for name, v in variants.items():
        requests[name], bad[name], rows_in[name] = variant_requests(v, bench, cfg, scr_reqs)
    generated = generate(variants, requests, cfg, out, gpu)
    scored = score(generated, cfg, out, gpu)
    scr = homogenization(generated, n_questions, cfg)
    general, general_counts = read_texts(b.general_text, out, split=b.general_text_split,
                                         limit=b.general_text_limit, what="general text")
    loss = general_loss(variants, general, cfg, gpu)

    table: dict[str, dict[str, float]] = {}
    counts: dict[str, Any] = {}
    quarantined: list[tuple[str, dict[str, Any]]] = []
    for name in variants:
        eval_bad = [q for q in bad[name] if q["task"] != "homogenization"]
        kept, q, counts[name] = T.account(rows_in[name], eval_bad, scored[name])
        quarantined += [(name, entry) for entry in q + [x for x in bad[name] if x["task"] == "homogenization"]]
        table[name] = flat_metrics(T.metrics(kept), scr.get(name), loss.get(name))
    with_deltas(table)

    bdir.mkdir()
    (bdir / "metrics.json").write_text(json.dumps(table, indent=1, default=float))
    details = {"variants": {k: {"method": v.method, "model": v.model, "artifact": v.artifact,
                                "prompt_prefix": v.prompt_prefix, "options": v.options} for k, v in variants.items()},
               "failed": failed, "built": built, "corpus": corpus, "counts": counts,
               "homogenization": {"questions": scr_counts, "per_variant": scr},
               "general_text": {"texts": general_counts.as_dict(), "per_variant": loss}}
    (bdir / "details.json").write_text(json.dumps(details, indent=1, default=float))
    with tempfile.TemporaryDirectory(prefix="raydebias-benchmark-") as tmp:
        write_benchmark_report(table, Path(tmp), failed=failed)
        bdir.put_files(Path(tmp))
    out.write_table(quarantine_table(quarantined), out.quarantine_dir("benchmark"))
    stats = {"rows": [r.name for r in plan], "failed": failed, "built": sorted(built), "corpus": corpus,
             "general_text": general_counts.as_dict(), "homogenization_questions": scr_counts, "counts": counts,
             "seconds": round(time.perf_counter() - t0, 2), "report": str(bdir / "report.md")}
    out.update_stats("benchmark", stats)
    return stats


__all__ = ["SCR_ITEM", "build_rows", "check_inputs", "generate", "general_loss", "homogenization", "homogenization_requests",
           "run_benchmark_stage", "score", "variant_requests", "with_deltas"]
