"""The evaluate stage on Ray Data: the ONLY place that wires evaluation into actor pools.

    requests (every benchmark, one table) ─► [generate: the model] ─► [score: toxicity, NLI, entities]
                                                                     ─► metrics per task ─► report

One generation pool per evaluated model (``evaluate.generate`` resources; greedy, sampled and
log-likelihood requests in the same pass) and one scoring pool (``evaluate.score``): toxicity of every
generated text (the augmentation's scorer interface, ``augment.toxicity``), and for TL;DR summaries
SummaC-style NLI faithfulness, entity precision and ROUGE-L. GPUs come from ``device`` as in the other
stages. The trained model is evaluated against its base (``evaluate.base``, default ``train.model``).

Every request fits the evaluated model: its max new tokens are clamped to the model's positions minus
``evaluate.min_prompt_tokens`` (:func:`raydebias.generation.clamp_max_new_tokens`, recorded per request as
``max_new_tokens_used``), MMLU-Pro drops shots until its prompt fits (the benchmark's own rule), and a
prompt that still does not fit is quarantined, never cut (:class:`raydebias.evaluate.tasks.Budget`, built
per evaluated model from its own tokenizer and config). A request whose generation or scoring raises is
retried alone; if it fails alone too it carries an ``error``, is left out of the metrics and quarantined,
and the rest of the evaluation completes (as augmentation isolates a failing row).

Outputs: ``DIR/eval/<name>/results.parquet`` (every request with its output, scores and error, if any),
``DIR/eval/metrics.json`` (metrics per model; ``counts[model][task]``: rows in = kept + quarantined, and
how many requests were clamped / how many shots MMLU-Pro used), ``DIR/eval/report.md`` + PNG plots,
``quarantine/evaluate/`` (per evaluated model, named in ``source_file``: the benchmark rows it could not
use, with reason and detail), ``stats.json["evaluate"]``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa

from raydebias import schema as S
from raydebias.baselines.base import Variant, as_variant, check_backend
from raydebias.config import Config, ConfigError, EvalConfig, ToxicityConfig, config_to_dict
from raydebias.evaluate import tasks as T
from raydebias.faults import MAX_ERROR, Failed, isolated

log = logging.getLogger(__name__)


def _isolated(fn: Callable[[list[dict]], list[dict]], rows: list[dict], reason: str, what: str) -> list[dict]:
    """``fn(rows)`` -> one result dict per row, isolated (:func:`raydebias.faults.isolated`): a row that fails
    alone gets ``{ERROR: "<reason>: <Exception>: <message>"}`` and ends in quarantine/evaluate."""
    return [{T.ERROR: f"{reason}: {r.error}"[:MAX_ERROR]} if isinstance(r, Failed) else r
            for r in isolated(fn, rows, what, after_failure=_release_accelerator_memory)]


def _release_accelerator_memory() -> None:
    """After a failed batch (an OOM is the usual one), give its cached blocks back before the retries."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _with_columns(batch: pa.Table, columns: dict[str, tuple[list, pa.DataType]]) -> pa.Table:
    """``batch`` with these columns set (replaced where present, appended otherwise)."""
    for name, (values, typ) in columns.items():
        arr = pa.array(values, typ)
        i = batch.schema.get_field_index(name)
        batch = batch.set_column(i, name, arr) if i >= 0 else batch.append_column(name, arr)
    return batch


class Generate:
    """Greedy / sampled continuations and log-likelihoods from one causal LM, loaded once per actor.

    ``model`` is a model id/path, or the variants (raydebias/baselines) that share one set of weights: the
    base and its hook / logits-processor / prompt variants are served by one actor that loads the base once
    and applies each batch's variant (the ``variant`` column; a hook is attached for that variant's rows
    only). Log-likelihood requests go through the same intervention, so MC1 scores the model generation uses.

    Adds ``output``, ``loglik``, ``max_new_tokens_used`` (the request's max new tokens clamped to this
    model's positions) and ``error`` (requests that failed even alone, or whose prompt does not fit: these
    are not generated and end in quarantine/evaluate)."""

    def __init__(self, model: str | Variant | list[Variant], backend: str, use_gpu: bool, gpu_fraction: float,
                 seed: int, *, min_prompt_tokens: int):
        import torch

        from raydebias.baselines.interventions import build_intervention
        from raydebias.generation import clamp_max_new_tokens, make_generator
        from raydebias.models import actor_device

        torch.set_num_threads(1)
        variants = [as_variant(v) for v in (model if isinstance(model, list) else [model])]
        weights = {v.model for v in variants}
        if len(weights) != 1:
            raise ValueError(f"Generate: one actor serves variants of ONE model, got {sorted(weights)}")
        for v in variants:
            check_backend(v, backend)
        self.device = actor_device(use_gpu)
        self.interventions = {v.name: build_intervention(v) for v in variants}
        self.default = variants[0].name  # rows without a variant column (the evaluate stage's own requests)
        model = variants[0].model
        self.gen = make_generator(backend, model, self.device, gpu_fraction=gpu_fraction)
        self.model_id, self.seed, self.min_prompt_tokens = model, seed, min_prompt_tokens
        self.intervention = self.interventions[self.default]
        self._scorer = None
        try:
            clamp_max_new_tokens(1, self.gen.context, min_prompt_tokens)
        except ValueError as exc:  # a model too short for the config: every request would fail alike
            raise ConfigError(f"evaluate.min_prompt_tokens: {model}: {exc}") from exc

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        res: list[dict[str, Any]] = [{} for _ in rows]
        by_variant: dict[str, list[int]] = {}
        for i, r in enumerate(rows):
            by_variant.setdefault(r.get(T.VARIANT) or self.default, []).append(i)
        for name, idx in by_variant.items():
            with self.applied(name):
                out = _isolated(self.answer, [rows[i] for i in idx], T.GENERATION_ERROR,
                                f"evaluate generate ({name})")
            for i, r in zip(idx, out, strict=True):
                res[i] = r
        return _with_columns(batch, {
            T.OUTPUT: ([r.get(T.OUTPUT) for r in res], pa.string()),
            T.LOGLIK: ([r.get(T.LOGLIK) for r in res], pa.float64()),
            T.MAX_NEW_USED: ([r.get(T.MAX_NEW_USED) for r in res], pa.int32()),
            T.ERROR: ([r.get(T.ERROR) for r in res], pa.string()),
        })

    @contextlib.contextmanager
    def applied(self, name: str) -> Iterator[None]:
        """Variant ``name``'s intervention on this actor's model for the duration of the block."""
        if name not in self.interventions:
            raise ValueError(f"Generate: no variant {name!r} on this actor (has {sorted(self.interventions)})")
        iv = self.intervention = self.interventions[name]
        model = getattr(self.gen, "model", None)
        if model is not None:
            iv.attach(model)
            self.gen.intervention = iv
        try:
            yield
        finally:
            iv.detach()
            if model is not None:
                self.gen.intervention = None

    def answer(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """One result dict per request row (raises if the model fails on the batch)."""
        from raydebias.generation import GenParams, clamp_max_new_tokens, derive_seed

        res: list[dict[str, Any]] = [{} for _ in rows]
        context, tok = self.gen.context, self.gen.tokenizer
        groups: dict[tuple, list[int]] = {}
        for i, r in enumerate(rows):
            if r[T.KIND] == "loglik":
                continue
            max_new = clamp_max_new_tokens(int(r[T.MAX_NEW]), context, self.min_prompt_tokens)
            res[i][T.MAX_NEW_USED] = max_new
            if context is not None and (n := len(tok(r[T.PROMPT])["input_ids"])) > context - max_new:
                # The request builder refuses these for the model it was built for; this catches the rest
                # (e.g. vLLM's max_model_len below the config's positions) instead of cutting the prompt.
                res[i][T.ERROR] = (f"{T.PROMPT_TOO_LONG}: {n} tokens > {context} - {max_new} (model positions - "
                                   "max new tokens)")
                continue
            stop = tuple(r.get(T.STOP) or ())
            groups.setdefault((r[T.KIND], max_new, r[T.TEMPERATURE], r[T.TOP_P], stop), []).append(i)
        for (kind, max_new, temp, top_p, stop), idx in groups.items():
            sample = kind == "sample"
            params = GenParams(max_new_tokens=max_new, do_sample=sample, min_prompt_tokens=self.min_prompt_tokens,
                               temperature=float(temp) if sample else 1.0, top_p=float(top_p) if sample else 1.0,
                               stop=stop,
                               seed=derive_seed(self.seed, "evaluate", rows[idx[0]][T.ITEM]) if sample else None)
            gens = self.gen.generate([rows[i][T.PROMPT] for i in idx], params)
            for i, g in zip(idx, gens, strict=True):
                res[i][T.OUTPUT] = T.clean_output(rows[i][T.TASK], g[0].text)
        ll = [i for i, r in enumerate(rows) if r[T.KIND] == "loglik"]
        if ll:
            for i, v in zip(ll, self.loglik([rows[i][T.PROMPT] for i in ll], [rows[i][T.CONTINUATION] for i in ll]),
                            strict=True):
                res[i][T.LOGLIK] = v
        return res

    def loglik(self, contexts: list[str], continuations: list[str], batch_size: int = 16) -> list[float]:
        """sum log p(continuation | context), the context and continuation tokenised separately
        (lm-evaluation-harness convention); the context is cut from the left if too long. Batched,
        right-padded; each row's continuation tokens are read at their own positions."""
        import torch

        from raydebias.generation import context_length

        model, tok = self._hf()
        # the intervention's own positions (Self-Debias' prefixes) come out of the context cut
        limit = (context_length(model.config) or 1024) - self.intervention.reserved_positions(tok)
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        seqs = []
        for ctx, cont in zip(contexts, continuations, strict=True):
            c_ids = tok(ctx, add_special_tokens=False)["input_ids"]
            t_ids = tok(cont, add_special_tokens=False)["input_ids"]
            seqs.append(((c_ids + t_ids)[-(limit + 1):], len(t_ids)))
        out = []
        for i in range(0, len(seqs), batch_size):
            chunk = seqs[i:i + batch_size]
            width = max(len(ids) for ids, _ in chunk) - 1
            inp = torch.full((len(chunk), width), pad, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for r, (ids, _) in enumerate(chunk):
                inp[r, : len(ids) - 1] = torch.tensor(ids[:-1])
                mask[r, : len(ids) - 1] = 1
            with torch.no_grad():
                logp = self.intervention.log_probs(model, tok, inp.to(model.device), mask.to(model.device))
            for r, (ids, n_cont) in enumerate(chunk):
                if n_cont == 0:
                    out.append(0.0)
                    continue
                pos = torch.arange(len(ids) - 1 - n_cont, len(ids) - 1)  # positions predicting the continuation
                targets = torch.tensor(ids[len(ids) - n_cont:], device=logp.device)
                out.append(float(logp[r, pos.to(logp.device), targets].sum()))
        return out

    def _hf(self):
        if hasattr(self.gen, "model"):
            return self.gen.model, self.gen.tokenizer
        if self._scorer is None:  # vLLM backend: log-likelihoods from the HF model of the same id
            from raydebias.models import load_model

            self._scorer = load_model(self.model_id, "causal_lm", device=self.device)
        return self._scorer  # vLLM serves only variants without a hook or processor (check_backend)


class Score:
    """Toxicity of every generated text; faithfulness, entity precision and ROUGE-L of TL;DR summaries."""

    def __init__(self, cfg: EvalConfig, toxicity: ToxicityConfig, use_gpu: bool):
        import torch

        from raydebias.models import actor_device
        from raydebias.scoring.faithfulness import EntityPrecision, NLIFaithfulness
        from raydebias.scoring.toxicity import load_toxicity_scorer

        torch.set_num_threads(1)
        device = actor_device(use_gpu)
        self.toxicity = load_toxicity_scorer(toxicity, device=device)
        self.nli = NLIFaithfulness(cfg.nli_model, entailment_label=cfg.nli_entailment_label,
                                   band=cfg.faithfulness_band, device=device)
        self.entities = EntityPrecision(cfg.ner_model)

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        todo = [i for i, r in enumerate(rows) if not r.get(T.ERROR)]  # failed generations are not scored
        res: list[dict[str, Any]] = [{T.ERROR: r.get(T.ERROR)} for r in rows]
        for i, r in zip(todo, _isolated(self.score, [rows[i] for i in todo], T.SCORING_ERROR, "evaluate score"),
                        strict=True):
            res[i] = r
        cols = {name: ([r.get(name) for r in res], pa.float64())
                for name in (T.TOXICITY, T.FAITHFULNESS, T.ENTITY_PRECISION, T.ROUGE_L)}
        return _with_columns(batch, {**cols, T.ERROR: ([r.get(T.ERROR) for r in res], pa.string())})

    def score(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """One dict of scores per result row (raises if a scorer fails on the batch)."""
        from raydebias.evaluate.tasks.truthfulqa import rouge

        res: list[dict[str, Any]] = [{} for _ in rows]
        gen = [i for i, r in enumerate(rows) if r[T.TASK] in T.GENERATIVE]
        for i, v in zip(gen, self.toxicity.score([rows[i][T.OUTPUT] or "" for i in gen]), strict=True):
            res[i][T.TOXICITY] = float(v)
        tl = [i for i in gen if rows[i][T.TASK] == "tldr"]
        if tl:
            payload = [json.loads(rows[i][T.PAYLOAD]) for i in tl]
            outs = [rows[i][T.OUTPUT] or "" for i in tl]
            srcs = [p["source"] for p in payload]
            for i, f, e, p, o in zip(tl, self.nli.score(srcs, outs), self.entities.score(srcs, outs), payload, outs,
                                     strict=True):
                res[i].update({T.FAITHFULNESS: f, T.ENTITY_PRECISION: e, T.ROUGE_L: rouge(o, p["reference"])["rougeL"]})
        return res


# --------------------------------------------------------------------------------------------------
# Requests
# --------------------------------------------------------------------------------------------------


def read_benchmarks(cfg: Config, out: Any) -> dict[str, list[dict[str, Any]]]:
    """The rows of every configured benchmark (``evaluate.tasks``), read once for all evaluated models, as
    {row set: rows} (each benchmark's ``read``; TL;DR's are the data stage's held-out split in ``out``)."""
    e = cfg.evaluate
    rows: dict[str, list[dict[str, Any]]] = {}
    for name, bench in T.BENCHMARKS.items():
        if name in e.tasks:
            rows.update(bench.read(e, out))
    return rows


def build_requests(bench: dict[str, list[dict[str, Any]]], cfg: Config, budget: T.Budget | None = None,
                   prompt_prefix: str | None = None) -> tuple[pa.Table, list[dict[str, Any]], dict[str, int]]:
    """Every benchmark of ``bench`` as one request table, the quarantined rows, and rows in per task.
    With the evaluated model's ``budget``, MMLU-Pro drops shots to fit and prompts that do not fit are
    quarantined (:func:`tasks.fit_requests`); without it, requests are built as the benchmarks define them.
    A ``prompt_prefix`` (a variant's, e.g. Instructive debiasing) goes into every prompt
    (:func:`tasks.instruct_requests`) and counts against the budget, so MMLU-Pro's shots make room for it."""
    e = cfg.evaluate
    if prompt_prefix and budget is not None:
        count = budget.count_tokens
        budget = dataclasses.replace(budget, count_tokens=lambda prompt: count(prompt_prefix + prompt))
    reqs: list[dict] = []
    bad: list[dict] = []
    rows_in: dict[str, int] = {}
    for b in T.BENCHMARKS.values():
        if b.ROWS[0] in bench:
            r, q, n = b.from_bench(bench, e, budget)
            reqs += r
            bad += q
            rows_in.update(n)
    if prompt_prefix:
        reqs = T.instruct_requests(reqs, prompt_prefix)
        if budget is not None:  # the prompts now hold the prefix: count them as they are
            budget = dataclasses.replace(budget, count_tokens=count)
    if budget is not None:
        reqs, q = T.fit_requests(reqs, budget)
        bad += q
    return pa.Table.from_pylist(reqs, schema=T.REQUEST_SCHEMA), bad, rows_in


def model_budget(model: str, e: EvalConfig) -> T.Budget:
    """The positions and tokenizer of ``model`` itself (a trained model and its base usually agree, but
    ``evaluate.model``/``evaluate.base`` may be any two models): its tokenizer through
    :func:`raydebias.models.load_tokenizer`, its positions from the config in the same resolved directory
    the generation actors load (``AutoConfig`` on :func:`raydebias.models.resolve_model`)."""
    from transformers import AutoConfig

    from raydebias.generation import clamp_max_new_tokens, context_length
    from raydebias.models import load_tokenizer, resolve_model

    tok = load_tokenizer(model)
    context = context_length(AutoConfig.from_pretrained(resolve_model(model), trust_remote_code=False))
    try:
        clamp_max_new_tokens(1, context, e.min_prompt_tokens)
    except ValueError as exc:
        raise ConfigError(f"evaluate.min_prompt_tokens: {model}: {exc}") from exc
    for name in T.BENCHMARKS:
        asked = getattr(e, name).max_new_tokens
        if (got := clamp_max_new_tokens(asked, context, e.min_prompt_tokens)) < asked:
            log.warning("evaluate: %s has %d positions: evaluate.%s.max_new_tokens=%d is clamped to %d "
                        "(evaluate.min_prompt_tokens=%d keeps the rest for the prompt)", model, context, name, asked,
                        got, e.min_prompt_tokens)
    return T.Budget(context, e.min_prompt_tokens, lambda prompt: len(tok(prompt)["input_ids"]))


def run_model(requests: pa.Table, model: str, cfg: Config, use_gpu: bool) -> list[dict[str, Any]]:
    """Generate with ``model`` and score, on Ray Data actor pools; the scored rows (small) come back, failed
    requests with an ``error`` (:func:`tasks.split_failed` / :func:`tasks.metrics` leave them out)."""
    if requests.num_rows == 0:
        return []
    import ray.data

    from raydebias.runtime import actor_pool

    e = cfg.evaluate
    g = e.generate
    ds = ray.data.from_arrow(requests).repartition(max(1, min(requests.num_rows // g.batch_size, 64)))
    ds = actor_pool(ds, Generate, g, use_gpu, name="generate", constructor_kwargs={
        "model": model, "backend": e.backend, "use_gpu": use_gpu, "gpu_fraction": g.num_gpus, "seed": cfg.seed,
        "min_prompt_tokens": e.min_prompt_tokens})
    ds = actor_pool(ds, Score, e.score, use_gpu, name="score", constructor_kwargs={
        "cfg": e, "toxicity": cfg.augment.toxicity, "use_gpu": use_gpu})
    return ds.take_all()


def models_to_evaluate(cfg: Config, out: Any) -> dict[str, str]:
    """{"model": id/path, "base": id/path} (base omitted when evaluate.base is 'none')."""
    e = cfg.evaluate
    model = e.model or str(out.model_dir)  # an object-store URI is fetched by each actor (models.resolve_model)
    if e.model is None and not out.model_dir.complete:
        raise ConfigError(f"evaluate: no trained model in {out.model_dir}: run --stage train first, or pass "
                          "model=PATH_OR_ID (evaluate.model)")
    base = e.base or cfg.train.model
    return {"model": model} if str(base).lower() == "none" else {"model": model, "base": base}


def run_evaluate_stage(cfg: Config, out: Any) -> dict[str, Any]:
    from raydebias.evaluate.report import write_report
    from raydebias.runtime import use_gpus

    t0 = time.perf_counter()
    gpu = use_gpus(cfg.device)
    which = models_to_evaluate(cfg, out)
    bench = read_benchmarks(cfg, out)
    eval_dir = out.root / "eval"
    results: dict[str, Any] = {}
    counts: dict[str, dict[str, Any]] = {}
    n_requests: dict[str, int] = {}
    quarantined: list[tuple[str, dict[str, Any]]] = []
    for name, model in which.items():
        # Per model: shots and clamps depend on the model's own tokenizer and positions.
        requests, bad, rows_in = build_requests(bench, cfg, model_budget(model, cfg.evaluate))
        log.info("evaluate: %s = %s on %d requests (%d benchmark rows refused)", name, model, requests.num_rows,
                 len(bad))
        scored = run_model(requests, model, cfg, gpu)
        if len(scored) != requests.num_rows:
            raise AssertionError(f"evaluate: {requests.num_rows} requests in, {len(scored)} results out ({name})")
        out.write_table(pa.Table.from_pylist(scored, schema=T.RESULT_SCHEMA), eval_dir / name)
        kept, q, counts[name] = T.account(rows_in, bad, scored)
        results[name] = {"id": model, "metrics": T.metrics(kept)}
        quarantined += [(name, entry) for entry in q]
        n_requests[name] = requests.num_rows
    metrics = {"models": results, "counts": counts, "config": config_to_dict(cfg)["evaluate"]}
    (eval_dir / "metrics.json").write_text(json.dumps(metrics, indent=1, default=float))
    with tempfile.TemporaryDirectory(prefix="raydebias-report-") as tmp:
        write_report(metrics, Path(tmp))
        eval_dir.put_files(Path(tmp))
    out.write_table(quarantine_table(quarantined), out.quarantine_dir("evaluate"))
    stats = {"models": {k: v["id"] for k, v in results.items()}, "requests": n_requests, "counts": counts,
             "seconds": round(time.perf_counter() - t0, 2), "report": str(eval_dir / "report.md")}
    out.update_stats("evaluate", stats)
    return stats


def quarantine_table(entries: list[tuple[str, dict[str, Any]]]) -> pa.Table:
    """(evaluated model name, quarantine entry) pairs -> QUARANTINE_SCHEMA rows: split = task,
    source_file = the model ("model" / "base") whose evaluation could not use the row."""
    return S.quarantine_table([{S.STAGE: "evaluate", S.SPLIT: b["task"], S.REASON: b["reason"],
                                S.DETAIL: b.get("detail"), S.SOURCE_FILE: name, S.ID: b["item"], S.RAW: b["raw"]}
                               for name, b in entries])


__all__ = ["Generate", "Score", "build_requests", "model_budget", "models_to_evaluate", "quarantine_table",
           "read_benchmarks", "run_evaluate_stage", "run_model"]
