"""Toxic rewrites of the reference summary (negatives; paper Section 4.2 "Adversarial Toxic Generation").

A causal LM (GPT-Neo 2.7B in production) continues a few-shot prompt shaped like the paper's Table 11:
three "Original text:/Toxic rewrite:" exemplars, then the row's summary. Sampling follows Table 10
(T 1.0, top-p 0.95, repetition penalty 1.2, 3 return sequences). Each sample is cleaned of echoed
scaffolding, scored with the project's toxicity scorer, and kept iff toxicity >= 0.4 (Section 4.2):
a rewrite the scorer does not find toxic would be a borderline negative, not a toxic one.

Every sample ends as exactly one candidate or one drop (``empty``, ``echoed_exemplar``,
``below_toxicity_threshold``), so per row: candidates + drops == num_return_sequences.
"""

from __future__ import annotations

import re

import pyarrow as pa

from raydebias.augment.candidates import RowResult, apply_rows, candidate, drop
from raydebias.config import AugmentConfig
from raydebias.generation import GenParams, derive_seed, make_generator
from raydebias.scoring.toxicity import load_toxicity_scorer

ORIGINAL_LABEL, REWRITE_LABEL = "Original text:", "Toxic rewrite:"

# Written for this project (same shape as the paper's Table 11, different sentences). Everyday,
# Reddit-like situations; the rewrites insult people, never groups, so the negatives teach "hostile
# tone" without putting slurs into the training data. Module constant: the cleaner recognises echoes.
FEW_SHOT_EXEMPLARS: tuple[tuple[str, str], ...] = (
    (
        "My neighbor asked me to move my car so he could get his truck out of the driveway.",
        "My entitled idiot of a neighbor barked at me to move my car like he owns the whole street. "
        "What a pathetic loser.",
    ),
    (
        "The bus was late again this morning, so I missed the start of my shift.",
        "The garbage bus service screwed me over again. Whoever runs that joke of a system is a brainless moron.",
    ),
    (
        "My sister forgot to call me back about our plans for the weekend.",
        "My useless sister ignored me again, because of course that selfish brat can't be bothered to "
        "pick up a stupid phone.",
    ),
)


def _block(original: str, rewrite: str = "") -> str:
    return f"{ORIGINAL_LABEL}\n{original}\n{REWRITE_LABEL}\n{rewrite}"


FEW_SHOT_PREFIX = "\n\n".join(_block(o, r) for o, r in FEW_SHOT_EXEMPLARS) + "\n\n"


def build_prompt(summary: str) -> str:
    """The few-shot prompt for one summary; it ends with ``"Toxic rewrite:\\n"`` (Table 11's template)."""
    if not isinstance(summary, str) or not summary.strip():
        raise ValueError(f"toxic_rewrite needs a non-empty summary string, got {summary!r}")
    # One line, like the exemplars: a newline inside the summary would break the block structure.
    return FEW_SHOT_PREFIX + _block(" ".join(summary.split()))


_ECHO_LINE = re.compile(r"^\s*" + re.escape(ORIGINAL_LABEL), re.I | re.M)
_LEADING_LABEL = re.compile(r"^\s*" + re.escape(REWRITE_LABEL) + r"\s*", re.I)


def clean_rewrite(text: str) -> str:
    """The rewrite inside a raw continuation: up to the first blank line or echoed "Original text:" line
    (the model starting the next few-shot block), without a leading echoed "Toxic rewrite:" label."""
    text = text.lstrip()  # so a continuation that opens with a newline is not mistaken for an empty one
    text = text.split("\n\n", 1)[0]
    echo = _ECHO_LINE.search(text)
    if echo:
        text = text[: echo.start()]
    text = text.strip()
    while True:
        stripped = _LEADING_LABEL.sub("", text, count=1).strip()
        if stripped == text:
            return text
        text = stripped


_EXEMPLAR_TEXTS = {" ".join(t.lower().split()) for pair in FEW_SHOT_EXEMPLARS for t in pair}


def is_exemplar_echo(text: str) -> bool:
    """True if ``text`` is one of the few-shot sentences copied verbatim (modulo case and spacing)."""
    return " ".join(text.lower().split()) in _EXEMPLAR_TEXTS


class ToxicRewrite:
    name = "toxic_rewrite"

    def __init__(self, cfg: AugmentConfig, device: str = "cpu", seed: int = 0):
        self.cfg, self.seed = cfg.toxic_rewrite, seed
        self.generator = make_generator(self.cfg.backend, self.cfg.model, device,
                                        gpu_fraction=self.cfg.resources.num_gpus)
        self.scorer = load_toxicity_scorer(cfg.toxicity, device)

    def __call__(self, batch: pa.Table) -> pa.Table:
        return apply_rows(batch, self.name, self._rows)

    def params(self, first_id: str) -> GenParams:
        c = self.cfg
        return GenParams(
            max_new_tokens=c.max_new_tokens, do_sample=True, temperature=c.temperature, top_p=c.top_p,
            repetition_penalty=c.repetition_penalty, num_return_sequences=c.num_return_sequences,
            seed=derive_seed(self.seed, self.name, first_id),
        )

    def _rows(self, rows: list[dict]) -> list[RowResult]:
        results: list[RowResult] = [([], []) for _ in rows]
        todo: list[tuple[int, str]] = []
        for r, row in enumerate(rows):
            try:
                todo.append((r, build_prompt(row["summary"])))
            except ValueError as e:  # a bad row is dropped here, so the batch is not re-run row by row
                results[r] = ([], [drop(self.name, "error", f"ValueError: {e}")])
        if not todo:
            return results
        generations = self.generator.generate([p for _, p in todo], self.params(str(rows[0]["id"])))
        pending: list[tuple[int, int, str]] = []  # (row, sample, cleaned text) waiting for a toxicity score
        for (r, _), gens in zip(todo, generations, strict=True):
            for k, gen in enumerate(gens):
                text = clean_rewrite(gen.text)
                if not text:
                    results[r][1].append(drop(self.name, "empty", f"sample {k}: nothing left after cleaning", gen.text))
                elif is_exemplar_echo(text):
                    results[r][1].append(drop(self.name, "echoed_exemplar", f"sample {k} copies a few-shot sentence", text))
                else:
                    pending.append((r, k, text))
        scores = self.scorer.score([text for _, _, text in pending]) if pending else []
        if len(scores) != len(pending):
            raise RuntimeError(f"toxicity scorer returned {len(scores)} scores for {len(pending)} texts")
        threshold = self.cfg.toxicity_threshold
        for (r, k, text), score in zip(pending, scores, strict=True):
            score = float(score)
            if score >= threshold:  # Section 4.2: keep only clearly toxic rewrites
                results[r][0].append(candidate(text, self.name, toxicity=score, sample=k))
            else:
                results[r][1].append(drop(self.name, "below_toxicity_threshold",
                                          f"sample {k}: toxicity {score:.4f} < threshold {threshold}", text))
        return results
