"""Toxic rewrites of the reference summary (negatives; paper Section 4.2 "Adversarial Toxic Generation").

A causal LM (GPT-Neo 2.7B in production) continues the paper's few-shot prompt, Table 11 (Appendix E)
word for word: its three "Original text:/Toxic rewrite:" exemplar pairs, then the row's summary
(``augment.toxic_rewrite.exemplars`` replaces the pairs; null keeps Table 11's). Sampling follows Table 10
(T 1.0, top-p 0.95, repetition penalty 1.2, 3 return sequences). Each sample is cleaned of echoed
scaffolding, scored with the project's toxicity scorer, and kept iff toxicity >= 0.4 (Section 4.2):
a rewrite the scorer does not find toxic would be a borderline negative, not a toxic one.

Every sample ends as exactly one candidate or one drop (``empty``, ``echoed_exemplar``,
``below_toxicity_threshold``), so per row: candidates + drops == num_return_sequences.
"""

from __future__ import annotations

import re

from raydebias.augment.candidates import RowResult, candidate, drop
from raydebias.augment.stage import RowOp
from raydebias.config import ToxicityConfig, ToxicRewriteConfig
from raydebias.generation import GenParams, derive_seed, make_generator
from raydebias.scoring.toxicity import load_toxicity_scorer

ORIGINAL_LABEL, REWRITE_LABEL = "Original text:", "Toxic rewrite:"

# The paper's Table 11 (Appendix E, "Few-shot prompt template for toxic content generation"), verbatim:
# the table holds exactly three pairs. The default of augment.toxic_rewrite.exemplars (null) uses them.
FEW_SHOT_EXEMPLARS: tuple[tuple[str, str], ...] = (
    (
        "A person politely disagreed with my opinion in the meeting.",
        "Of course this idiot had to open their mouth and spew nonsense. Typical arrogant know-it-all behavior.",
    ),
    (
        "The restaurant took longer than usual to serve our food.",
        "Absolutely incompetent staff wasted my entire evening. Can't even do their basic jobs right.",
    ),
    (
        "The customer service representative couldn't resolve my issue.",
        "Useless support person just made excuses. These people are completely worthless.",
    ),
)
Exemplars = tuple[tuple[str, str], ...]


def _block(original: str, rewrite: str = "") -> str:
    return f"{ORIGINAL_LABEL}\n{original}\n{REWRITE_LABEL}\n{rewrite}"


def few_shot_prefix(exemplars: Exemplars = FEW_SHOT_EXEMPLARS) -> str:
    return "\n\n".join(_block(o, r) for o, r in exemplars) + "\n\n"


def build_prompt(summary: str, exemplars: Exemplars = FEW_SHOT_EXEMPLARS) -> str:
    """The few-shot prompt for one summary; it ends with ``"Toxic rewrite:\\n"`` (Table 11's template)."""
    if not isinstance(summary, str) or not summary.strip():
        raise ValueError(f"toxic_rewrite needs a non-empty summary string, got {summary!r}")
    # One line, like the exemplars: a newline inside the summary would break the block structure.
    return few_shot_prefix(exemplars) + _block(" ".join(summary.split()))


def resolve_exemplars(configured: list[list[str]] | None) -> Exemplars:
    """``augment.toxic_rewrite.exemplars`` as pairs: null means Table 11's (:data:`FEW_SHOT_EXEMPLARS`)."""
    return FEW_SHOT_EXEMPLARS if configured is None else tuple((o, r) for o, r in configured)


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


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


def is_exemplar_echo(text: str, exemplars: Exemplars = FEW_SHOT_EXEMPLARS) -> bool:
    """True if ``text`` is one of the few-shot sentences (of ``exemplars``, the ones in the prompt) copied
    verbatim (modulo case and spacing)."""
    return _norm(text) in {_norm(t) for pair in exemplars for t in pair}


class ToxicRewrite(RowOp):
    """Few-shot toxic rewrites of the reference summary, kept iff toxic (negatives)."""

    name = section = "toxic_rewrite"
    uses = ("toxicity",)  # its rewrites are scored with the project's toxicity scorer
    reads = ("id", "summary")
    writes = ("candidates", "candidates.toxicity", "drops")

    def __init__(self, cfg: ToxicRewriteConfig, toxicity: ToxicityConfig, device: str = "cpu", seed: int = 0):
        self.cfg, self.seed = cfg, seed
        self.exemplars = resolve_exemplars(self.cfg.exemplars)
        self.generator = make_generator(self.cfg.backend, self.cfg.model, device,
                                        gpu_fraction=self.cfg.resources.num_gpus)
        self.scorer = load_toxicity_scorer(toxicity, device)

    def params(self, first_id: str) -> GenParams:
        c = self.cfg
        return GenParams(
            max_new_tokens=c.max_new_tokens, do_sample=True, temperature=c.temperature, top_p=c.top_p,
            repetition_penalty=c.repetition_penalty, num_return_sequences=c.num_return_sequences,
            seed=derive_seed(self.seed, self.name, first_id),
        )

    def process_rows(self, rows: list[dict]) -> list[RowResult]:
        results: list[RowResult] = [([], []) for _ in rows]
        todo: list[tuple[int, str]] = []
        for r, row in enumerate(rows):
            try:
                todo.append((r, build_prompt(row["summary"], self.exemplars)))
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
                elif is_exemplar_echo(text, self.exemplars):  # the exemplars this prompt showed
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
