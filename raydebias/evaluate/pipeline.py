"""The evaluate stage on Ray Data: the ONLY place that wires evaluation into actor pools.

    requests (every benchmark, one table) ─► [generate: the model] ─► [score: toxicity, NLI, entities]
                                                                     ─► metrics per task ─► report

One generation pool per evaluated model (``evaluate.generate`` resources; greedy, sampled and
log-likelihood requests in the same pass) and one scoring pool (``evaluate.score``): toxicity of every
generated text (the augmentation's scorer interface, ``augment.toxicity``), and for TL;DR summaries
SummaC-style NLI faithfulness, entity precision and ROUGE-L. GPUs come from ``device`` as in the other
stages. The trained model is evaluated against its base (``evaluate.base``, default ``train.model``).

Outputs: ``DIR/eval/<name>/results.parquet`` (every request with its output and scores),
``DIR/eval/metrics.json``, ``DIR/eval/report.md`` + PNG plots, ``quarantine/evaluate/`` (unusable
benchmark rows with why), ``stats.json["evaluate"]``.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import pyarrow as pa

from raydebias import schema as S
from raydebias.config import Config, ConfigError, EvalConfig, ToxicityConfig, config_to_dict
from raydebias.evaluate import tasks as T

log = logging.getLogger(__name__)


class Generate:
    """Greedy / sampled continuations and log-likelihoods from one causal LM, loaded once per actor."""

    def __init__(self, model: str, backend: str, use_gpu: bool, gpu_fraction: float, seed: int):
        import torch

        from raydebias.generation import make_generator

        torch.set_num_threads(1)
        self.device = "cuda" if use_gpu else "cpu"
        self.gen = make_generator(backend, model, self.device, gpu_fraction=gpu_fraction)
        self.model_id, self.seed = model, seed
        self._scorer = None

    def __call__(self, batch: pa.Table) -> pa.Table:
        from raydebias.generation import GenParams, derive_seed

        rows = batch.to_pylist()
        outputs: list[str | None] = [None] * len(rows)
        logliks: list[float | None] = [None] * len(rows)
        groups: dict[tuple, list[int]] = {}
        for i, r in enumerate(rows):
            if r[T.KIND] != "loglik":
                groups.setdefault((r[T.KIND], r[T.MAX_NEW], r[T.TEMPERATURE], r[T.TOP_P]), []).append(i)
        for (kind, max_new, temp, top_p), idx in groups.items():
            sample = kind == "sample"
            params = GenParams(max_new_tokens=int(max_new), do_sample=sample,
                               temperature=float(temp) if sample else 1.0, top_p=float(top_p) if sample else 1.0,
                               seed=derive_seed(self.seed, "evaluate", rows[idx[0]][T.ITEM]) if sample else None)
            gens = self.gen.generate([rows[i][T.PROMPT] for i in idx], params)
            for i, g in zip(idx, gens, strict=True):
                outputs[i] = T.clean_output(rows[i][T.TASK], g[0].text)
        ll = [i for i, r in enumerate(rows) if r[T.KIND] == "loglik"]
        if ll:
            for i, v in zip(ll, self.loglik([rows[i][T.PROMPT] for i in ll], [rows[i][T.CONTINUATION] for i in ll]),
                            strict=True):
                logliks[i] = v
        return batch.append_column(T.OUTPUT, pa.array(outputs, pa.string())).append_column(
            T.LOGLIK, pa.array(logliks, pa.float64()))

    def loglik(self, contexts: list[str], continuations: list[str], batch_size: int = 16) -> list[float]:
        """sum log p(continuation | context), the context and continuation tokenised separately
        (lm-evaluation-harness convention); the context is cut from the left if too long. Batched,
        right-padded; each row's continuation tokens are read at their own positions."""
        import torch

        model, tok = self._hf()
        limit = getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "n_positions", 1024)
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
                logp = torch.log_softmax(
                    model(input_ids=inp.to(model.device), attention_mask=mask.to(model.device)).logits.float(), -1)
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
        return self._scorer


class Score:
    """Toxicity of every generated text; faithfulness, entity precision and ROUGE-L of TL;DR summaries."""

    def __init__(self, cfg: EvalConfig, toxicity: ToxicityConfig, use_gpu: bool):
        import torch

        from raydebias.scoring.faithfulness import EntityPrecision, NLIFaithfulness
        from raydebias.scoring.toxicity import load_toxicity_scorer

        torch.set_num_threads(1)
        device = "gpu" if use_gpu else "cpu"
        self.toxicity = load_toxicity_scorer(toxicity, device=device)
        self.nli = NLIFaithfulness(cfg.nli_model, entailment_label=cfg.nli_entailment_label,
                                   band=cfg.faithfulness_band, device=device)
        self.entities = EntityPrecision(cfg.ner_model)

    def __call__(self, batch: pa.Table) -> pa.Table:
        from raydebias.evaluate.truthfulqa import rouge

        rows = batch.to_pylist()
        n = len(rows)
        tox: list[float | None] = [None] * n
        faith: list[float | None] = [None] * n
        ents: list[float | None] = [None] * n
        rl: list[float | None] = [None] * n
        gen = [i for i, r in enumerate(rows) if r[T.TASK] in T.GENERATIVE]
        for i, v in zip(gen, self.toxicity.score([rows[i][T.OUTPUT] or "" for i in gen]), strict=True):
            tox[i] = float(v)
        tl = [i for i in gen if rows[i][T.TASK] == "tldr"]
        if tl:
            payload = [json.loads(rows[i][T.PAYLOAD]) for i in tl]
            outs = [rows[i][T.OUTPUT] or "" for i in tl]
            srcs = [p["source"] for p in payload]
            for i, f, e, p, o in zip(tl, self.nli.score(srcs, outs), self.entities.score(srcs, outs), payload, outs,
                                     strict=True):
                faith[i], ents[i], rl[i] = f, e, rouge(o, p["reference"])["rougeL"]
        for name, vals in ((T.TOXICITY, tox), (T.FAITHFULNESS, faith), (T.ENTITY_PRECISION, ents), (T.ROUGE_L, rl)):
            batch = batch.append_column(name, pa.array(vals, pa.float64()))
        return batch


# --------------------------------------------------------------------------------------------------
# Requests
# --------------------------------------------------------------------------------------------------


def build_requests(cfg: Config, out: Any) -> tuple[pa.Table, list[dict[str, Any]], dict[str, int]]:
    """Every configured benchmark as one request table, the quarantined rows, and rows in per task."""
    from raydebias.evaluate.sources import read_rows

    e = cfg.evaluate
    reqs: list[dict] = []
    bad: list[dict] = []
    rows_in: dict[str, int] = {}
    if "tldr" in e.tasks:
        src = out.sources_dir("eval")
        if not src.complete:
            from raydebias.data import run_data_stage

            run_data_stage(cfg, out)
        held = src.read_table().to_pylist() if src.glob("*.parquet") else []
        r = T.tldr_requests(held, e)
        reqs += r
        rows_in["tldr"] = len(r)  # the data stage already quarantined bad rows (quarantine/data)
    if "truthfulqa" in e.tasks:
        gen, mc = read_rows(e.truthfulqa_source), read_rows(e.truthfulqa_mc_source)
        r, b = T.truthfulqa_requests(gen, mc, e)
        reqs += r
        bad += b
        rows_in["truthfulqa_gen"] = len(T.limit_rows(gen, e))
        rows_in["truthfulqa_mc1"] = len(T.limit_rows(mc, e))
    if "rtp" in e.tasks:
        rows = read_rows(e.rtp_source)
        r, b = T.rtp_requests(rows, e)
        reqs += r
        bad += b
        rows_in["rtp"] = len(T.limit_rows(rows, e))
    if "mmlu_pro" in e.tasks:
        test, val = read_rows(e.mmlu_pro_source, "test"), read_rows(e.mmlu_pro_source, "validation")
        r, b = T.mmlu_pro_requests(test, val, e)
        reqs += r
        bad += b
        rows_in["mmlu_pro"] = len(T.limit_rows(test, e))
    return pa.Table.from_pylist(reqs, schema=T.REQUEST_SCHEMA), bad, rows_in


def run_model(requests: pa.Table, model: str, cfg: Config, use_gpu: bool) -> list[dict[str, Any]]:
    """Generate with ``model`` and score, on Ray Data actor pools; the scored rows (small) come back."""
    import ray.data
    from ray.data import ActorPoolStrategy

    e = cfg.evaluate
    g, s = e.generate, e.score
    ds = ray.data.from_arrow(requests).repartition(max(1, min(requests.num_rows // g.batch_size, 64)))
    ds = ds.map_batches(Generate, batch_format="pyarrow", batch_size=g.batch_size,
                        compute=ActorPoolStrategy(size=g.actors), num_cpus=g.num_cpus,
                        num_gpus=g.num_gpus if use_gpu else 0,
                        fn_constructor_kwargs={"model": model, "backend": e.backend, "use_gpu": use_gpu,
                                               "gpu_fraction": g.num_gpus, "seed": cfg.seed})
    ds = ds.map_batches(Score, batch_format="pyarrow", batch_size=s.batch_size,
                        compute=ActorPoolStrategy(size=s.actors), num_cpus=s.num_cpus,
                        num_gpus=s.num_gpus if use_gpu else 0,
                        fn_constructor_kwargs={"cfg": e, "toxicity": cfg.augment.toxicity, "use_gpu": use_gpu})
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
    requests, bad, rows_in = build_requests(cfg, out)
    eval_dir = out.root / "eval"
    results: dict[str, Any] = {}
    for name, model in which.items():
        log.info("evaluate: %s = %s on %d requests", name, model, requests.num_rows)
        scored = run_model(requests, model, cfg, gpu)
        if len(scored) != requests.num_rows:
            raise AssertionError(f"evaluate: {requests.num_rows} requests in, {len(scored)} results out ({name})")
        out.write_table(pa.Table.from_pylist(scored), eval_dir / name)
        results[name] = {"id": model, "metrics": T.metrics(scored)}
    q = T.quarantine_counts(bad)
    counts = {t: {"rows_in": n, "kept": n - sum(q.get(t, {}).values()), "quarantined": q.get(t, {})}
              for t, n in rows_in.items()}
    metrics = {"models": results, "counts": counts, "config": config_to_dict(cfg)["evaluate"]}
    (eval_dir / "metrics.json").write_text(json.dumps(metrics, indent=1, default=float))
    with tempfile.TemporaryDirectory(prefix="raydebias-report-") as tmp:
        write_report(metrics, Path(tmp))
        eval_dir.put_files(Path(tmp))
    out.write_table(_quarantine_table(bad), out.quarantine_dir("evaluate"))
    stats = {"models": {k: v["id"] for k, v in results.items()}, "requests": requests.num_rows, "counts": counts,
             "seconds": round(time.perf_counter() - t0, 2), "report": str(eval_dir / "report.md")}
    out.update_stats("evaluate", stats)
    return stats


def _quarantine_table(bad: list[dict[str, Any]]) -> pa.Table:
    n = len(bad)
    return pa.Table.from_arrays(
        [pa.array(["evaluate"] * n), pa.array([b["task"] for b in bad]), pa.array([b["reason"] for b in bad]),
         pa.array([b["reason"] for b in bad]), pa.array(["benchmark"] * n), pa.array([-1] * n, pa.int64()),
         pa.array([b["item"] for b in bad]), pa.array([b["raw"] for b in bad])],
        schema=S.QUARANTINE_SCHEMA)


__all__ = ["Generate", "Score", "build_requests", "models_to_evaluate", "run_evaluate_stage", "run_model"]
