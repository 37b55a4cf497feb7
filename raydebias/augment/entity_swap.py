"""Entity swap (negatives; SPEC §2, paper Section 4.2 "Entity-Based Manipulation").

Replace 1..max_swaps named entities of the reference summary with *other* entities of the same label
taken from the post, giving up to max_variations distinct candidates per source row. The result is
fluent (real entity strings from the same story) but unfaithful — the hardest kind of negative for a
summariser, as in Table 3's "stole 40 from 13 years later me".

The entities come from the NER stage (``post_entities``/``summary_entities``), so this op loads no
model. A swap is never a no-op: a replacement must differ (case-insensitively) from what it replaces,
and a candidate equal to the reference is never emitted. Rows where no swap is possible get a drop
with reason ``no_swappable_entity`` so the count per op adds up.
"""

from __future__ import annotations

import hashlib
import itertools
import random

from raydebias.augment.candidates import RowResult, candidate, drop, norm
from raydebias.augment.stage import RowOp
from raydebias.config import EntitySwapConfig


def _rng(seed: int, rid: str) -> random.Random:
    return random.Random(int.from_bytes(hashlib.sha256(f"{seed}:entity_swap:{rid}".encode()).digest()[:8], "big"))


def swap_variations(summary: str, summary_entities: list[dict], post_entities: list[dict], *,
                    max_swaps: int, max_variations: int, rng: random.Random) -> list[tuple[str, list[dict]]]:
    """Up to ``max_variations`` distinct (text, swaps) with 1..max_swaps same-label replacements each.

    ``swaps`` lists {"from", "to", "label", "start", "end"} (positions in the reference summary).
    """
    # Candidate replacements per summary entity: post entities of the same label with another surface.
    options = []
    for ent in sorted(summary_entities, key=lambda e: e["start"]):
        pool = sorted({p["text"] for p in post_entities
                       if p["label"] == ent["label"] and norm(p["text"]) != norm(ent["text"])})
        if pool:
            options.append((ent, pool))
    if not options:
        return []
    plans = []
    for k in range(1, min(max_swaps, len(options)) + 1):
        for combo in itertools.combinations(range(len(options)), k):
            plans.append(combo)
    rng.shuffle(plans)
    out, seen = [], {norm(summary)}
    for combo in plans:
        if len(out) >= max_variations:
            break
        swaps, text, shift = [], summary, 0
        for i in combo:  # left to right: positions shift by the length change of earlier swaps
            ent, pool = options[i]
            new = rng.choice(pool)
            s, e = ent["start"] + shift, ent["end"] + shift
            text = text[:s] + new + text[e:]
            shift += len(new) - (ent["end"] - ent["start"])
            swaps.append({"from": ent["text"], "to": new, "label": ent["label"], "start": ent["start"], "end": ent["end"]})
        if norm(text) not in seen:
            seen.add(norm(text))
            out.append((text, swaps))
    return out


class EntitySwap(RowOp):
    """Same-label post entities swapped into the reference summary (negatives); no model of its own."""

    name = section = "entity_swap"
    reads = ("id", "summary", "post_entities", "summary_entities")
    needs = ("ner",)

    def __init__(self, cfg: EntitySwapConfig, device: str = "cpu", seed: int = 0):
        self.cfg, self.seed = cfg, seed

    def process_rows(self, rows: list[dict]) -> list[RowResult]:
        results = []
        for row in rows:
            variations = swap_variations(
                row["summary"], row.get("summary_entities") or [], row.get("post_entities") or [],
                max_swaps=self.cfg.max_swaps, max_variations=self.cfg.max_variations, rng=_rng(self.seed, row["id"]))
            if not variations:
                n = len(row.get("summary_entities") or [])
                why = ("the summary has no entity" if n == 0
                       else f"none of the summary's {n} entities has a different same-label entity in the post")
                results.append(([], [drop(self.name, "no_swappable_entity", why)]))
                continue
            results.append(([candidate(text, self.name, swaps=swaps) for text, swaps in variations], []))
        return results
