"""Backtranslation (positives; SPEC §2, paper Section 4.1 "Backtranslation", Table 10).

For every pivot language p in ``augment.backtranslate.pivots`` (de, fr, es), the reference summary is
translated en->p with ``forward_model.format(pivot=p)`` and back p->en with
``backward_model.format(pivot=p)`` (Helsinki-NLP opus-mt MarianMT models), both with beam-sample
decoding: beam width 5 and temperature 0.8 (Table 10; ``do_sample`` so the temperature has an effect).

Each pivot gives at most one paraphrase, kept as a POSITIVE ``candidate(..., pivot=p, pivot_text=...)``
when it is new. Comparison is on whitespace/case-normalised text; rejections are drops:

- ``empty``: the round trip produced no text;
- ``same_as_reference``: the paraphrase equals the reference summary;
- ``duplicate``: it equals the paraphrase of an earlier pivot for the same row.

CLIFF's novel-entity filter (``novel_entity_filter``) needs NER on the paraphrase, which the annotate
stage runs after the ops; this op only records the pivot so that filter can report per pivot.

All rows of a batch go through each model in one padded ``generate`` call; inputs are truncated to the
model's max length. Sampling is seeded from (seed, op name, first row id), so a batch reproduces.
"""

from __future__ import annotations

from typing import Any

from raydebias.augment.candidates import RowResult, candidate, drop, norm
from raydebias.augment.stage import RowOp
from raydebias.config import BacktranslateConfig
from raydebias.generation import derive_seed
from raydebias.models import load_model, max_input_tokens

__all__ = ["Backtranslate"]

# Tokenizers without a configured limit report a huge sentinel (int(1e30)); below this it is real.


class Backtranslate(RowOp):
    """en -> pivot -> en paraphrases of the reference summary, one per pivot (positives)."""

    name = section = "backtranslate"
    reads = ("id", "summary")

    def __init__(self, cfg: BacktranslateConfig, device: str = "cpu", seed: int = 0):
        self.cfg, self.seed = cfg, seed
        if not self.cfg.pivots:
            raise ValueError("augment.backtranslate.pivots is empty; give at least one pivot language, e.g. [de]")
        # pivot -> ((forward model, tokenizer), (backward model, tokenizer)); loaded once per actor.
        self.models = {
            p: (load_model(self.cfg.forward_model.format(pivot=p), "seq2seq_lm", device=device),
                load_model(self.cfg.backward_model.format(pivot=p), "seq2seq_lm", device=device))
            for p in self.cfg.pivots
        }

    def _translate(self, model: Any, tokenizer: Any, texts: list[str]) -> list[str]:
        """One padded beam-sample ``generate`` call over ``texts`` (the model boundary)."""
        import torch

        enc = tokenizer(texts, return_tensors="pt", padding=True, truncation=True,
                        max_length=max_input_tokens(tokenizer, model)).to(model.device)
        kwargs: dict[str, Any] = {"num_beams": self.cfg.num_beams, "do_sample": self.cfg.do_sample,
                                  "max_new_tokens": self.cfg.max_new_tokens}
        if self.cfg.do_sample:  # temperature without sampling only earns a transformers warning
            kwargs["temperature"] = self.cfg.temperature
        with torch.inference_mode():
            out = model.generate(**enc, **kwargs)
        return [t.strip() for t in tokenizer.batch_decode(out, skip_special_tokens=True)]

    def process_rows(self, rows: list[dict]) -> list[RowResult]:
        import torch

        # Beam-sample draws from torch's global RNG: seed it per batch (STYLE: reproducible sampling).
        torch.manual_seed(derive_seed(self.seed, self.name, rows[0]["id"]))
        refs = [row["summary"] for row in rows]
        results: list[RowResult] = [([], []) for _ in rows]
        seen: list[dict[str, str]] = [{} for _ in rows]  # per row: normalised paraphrase -> its pivot
        for pivot in self.cfg.pivots:
            (fwd, fwd_tok), (bwd, bwd_tok) = self.models[pivot]
            pivot_texts = self._translate(fwd, fwd_tok, refs)
            back = self._translate(bwd, bwd_tok, pivot_texts)
            for i, text in enumerate(back):
                cands, drops = results[i]
                key = norm(text)
                if not key:
                    drops.append(drop(self.name, "empty", f"pivot {pivot}: the round trip produced no text", text))
                elif key == norm(refs[i]):
                    drops.append(drop(self.name, "same_as_reference", f"pivot {pivot}", text))
                elif key in seen[i]:
                    drops.append(drop(self.name, "duplicate", f"pivot {pivot} repeats pivot {seen[i][key]}", text))
                else:
                    seen[i][key] = pivot
                    cands.append(candidate(text, self.name, positive=True, pivot=pivot, pivot_text=pivot_texts[i]))
        return results
