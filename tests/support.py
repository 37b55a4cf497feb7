"""Shared test inputs for the augmentation ops: shipped sample rows with tiny-NER entities."""

import functools
import json
from pathlib import Path

import pyarrow as pa

from raydebias import schema as S
from raydebias.augment.candidates import ENTITY_LIST, POST_ENTITIES, SUMMARY_ENTITIES, entity, norm  # noqa: F401
from raydebias.data import record_to_row

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "jobs" / "configs" / "smoke.yaml"
# The shared end-to-end run (conftest.shared_run): the Llama-2-7B paper preset REHEARSED (`--rehearse`: tiny
# models of the production classes, LlamaForCausalLM with a BOS-adding tokenizer, bf16 mixed precision,
# Table 12 caps and max length, activation checkpointing, 2 FSDP2 workers), `--stage all` on this many rows
# with these overrides (a higher lr and fewer epochs, so a short run visibly learns). One run serves the
# augment, train, evaluate, rehearsal and sweep tests: CI time.
PRESET = REPO / "jobs" / "configs" / "paper-llama2-7b.yaml"
SHARED_RUN_JOB = ["--config", str(PRESET), "--rehearse", "--rehearse-items", "3"]  # 3 items per benchmark
SHARED_RUN_ROWS = 8
# MMLU-Pro's 2048 new tokens (which a random tiny Llama never stops early) would be most of the run's time: the
# production length and its clamping are rehearsed in-process by test_rehearse (GPT-2 and Phi-2 presets).
SHARED_RUN_ARGS = [f"data.limit={SHARED_RUN_ROWS}", "train.lr=0.005", "train.warmup_steps=1",
                   "train.groups_per_batch=2", "evaluate.mmlu_pro.max_new_tokens=128"]
SAMPLE = REPO / "raydebias/samples/tldr/train/carper-a.jsonl"
# What an op receives: source columns + the NER stage's entity columns.
OP_INPUT_SCHEMA = pa.schema([pa.field(c, pa.string()) for c in S.SOURCE_COLUMNS]
                            + [pa.field(POST_ENTITIES, ENTITY_LIST), pa.field(SUMMARY_ENTITIES, ENTITY_LIST)])


@functools.cache
def tiny_nlp():
    from raydebias.models import load_spacy

    return load_spacy("tiny:spacy-ner")


def ents(text: str) -> list[dict]:
    return [entity(e.start_char, e.end_char, e.label_, e.text) for e in tiny_nlp()(text).ents]


def sample_rows(n: int = 3) -> list[dict]:
    """The first ``n`` CarperAI sample rows as op input dicts (entities from the tiny NER)."""
    rows = []
    for line in SAMPLE.read_text().splitlines()[:n]:
        row, _ = record_to_row(json.loads(line), "carper")
        row[POST_ENTITIES], row[SUMMARY_ENTITIES] = ents(row["post"]), ents(row["summary"])
        rows.append(row)
    return rows


def op_table(rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=OP_INPUT_SCHEMA)


def job_env() -> dict:
    """The environment for a job subprocess: unbuffered, never joining a cluster by RAY_ADDRESS."""
    import os

    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("RAY_ADDRESS", None)
    return env


def kill_tree(pid: int, timeout: float = 15) -> None:
    """Stop a process and every process it spawned (an embedded Ray cluster's GCS, raylet, workers): only those."""
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for p in procs:
        try:
            p.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=timeout)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=10)


def augmented_groups(n: int = 6, positives: int = 2, negatives: int = 2) -> list[dict]:
    """Augmented rows (the train stage's input: whole groups) made here, for loop tests without the
    augmentation stage: a reference + paraphrases, and negatives led by a toxic rewrite."""
    kinds = ("toxic_rewrite", "entity_swap", "low_confidence", "mask_fill", "regenerate")
    out = []
    for i in range(n):
        ref = f"roommate owes me {40 + i} dollars"
        pos = [{"text": ref, "op": "reference", "entities": None}]
        pos += [{"text": f"my roommate owes me {40 + i} bucks{'!' * k}", "op": "backtranslate", "entities": None}
                for k in range(positives - 1)]
        neg = [{"text": f"{['my sister', 'the idiot', 'a friend'][k % 3]} owes me {k} dollars", "op": kinds[k % 5],
                "entities": None} for k in range(negatives)]
        out.append({"id": f"r{i}", "post": f"My roommate owes me ${40 + i} and keeps making excuses about the rent.",
                    "summary": ref, "subreddit": "relationships", "title": "rent", "positives": pos, "negatives": neg})
    return out


def free_ports(n: int) -> list[int]:
    """``n`` DISTINCT TCP ports free on 127.0.0.1 right now (the sockets are held until all are picked: ports
    picked one at a time can repeat, and two Ray components on one port fail ``ray start``)."""
    import contextlib
    import socket

    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    return free_ports(1)[0]


def generate_seeing_kwargs(gen, prompts: list[str], params) -> tuple[list, dict]:
    """``gen.generate(prompts, params)`` and the keyword arguments it handed to ``model.generate``."""
    seen: dict = {}
    real = gen.model.generate

    def spy(**kwargs):
        seen.update(kwargs)
        return real(**kwargs)

    gen.model.generate = spy
    try:
        out = gen.generate(prompts, params)
    finally:
        del gen.model.generate  # back to the class's method
    return out, seen


def checkpoint_registered(run_dir, prefix: str = "step-") -> bool:
    """Ray Train has REGISTERED a checkpoint whose directory name starts with ``prefix`` under ``run_dir`` (a
    local path or a StoragePath): its controller's snapshot lists it. A checkpoint directory alone may still lack
    a rank's shards, or never be registered if the job dies now; a restart then begins from an older
    checkpoint or from scratch, so tests that kill a run wait for this."""
    from raydebias.storage import StoragePath

    snap = StoragePath.of(run_dir) / "checkpoint_manager_snapshot.json"
    try:
        results = json.loads(snap.read_text()).get("checkpoint_results", [])
    except (OSError, ValueError):
        return False
    return any(r.get("checkpoint_dir_name", "").startswith(prefix) for r in results)
