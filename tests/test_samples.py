"""The shipped sample data keeps the promises the augmentation ops rely on (issue: sample data)."""

import json
import re
from pathlib import Path

import pytest

from raydebias.data import detect_layout, record_to_row, resolve_source
from raydebias.models import load_spacy

TOXIC = re.compile(r"\b(idiot|moron|asshole|shit|crap|damn|jerk|pathetic|scumbag|jackass|clown|useless|screw|hell)\b",
                   re.I)


def _rows(name):
    rows = []
    for path in resolve_source(f"sample:tldr/{name}"):
        layout = detect_layout(path)
        for line in Path(path).read_text().splitlines():
            rows.append((layout, record_to_row(json.loads(line), layout)[0]))
    return rows


def test_sizes_and_layouts():
    train = _rows("train")
    assert sum(1 for lay, _ in train if lay == "carper") >= 80
    assert sum(1 for lay, _ in train if lay == "webis") >= 20
    assert len(_rows("heldout")) >= 20


@pytest.mark.parametrize("split", ["train", "heldout"])
def test_posts_are_varied_entity_rich_and_partly_toxic(split):
    rows = [r for _, r in _rows(split)]
    words = [len(r["post"].split()) for r in rows]
    assert min(words) >= 60 and max(words) <= 400
    assert len({r["subreddit"] for r in rows}) >= 15
    toxic = sum(1 for r in rows if TOXIC.search(r["post"]))
    assert 0.12 <= toxic / len(rows) <= 0.35, toxic
    assert len({r["id"] for r in rows}) == len(rows)


def test_summaries_mention_post_entities_found_by_the_tiny_ner(tmp_path, monkeypatch):
    monkeypatch.setenv("RAYDEBIAS_TINY_DIR", str(tmp_path))
    nlp = load_spacy("tiny:spacy-ner")
    rows = [r for _, r in _rows("train")] + [r for _, r in _rows("heldout")]
    labels, shared = set(), 0
    for r in rows:
        post_ents = {e.text for e in nlp(r["post"]).ents}
        labels |= {e.label_ for e in nlp(r["post"]).ents}
        assert len(post_ents) >= 3, r["id"]
        shared += bool(post_ents & {e.text for e in nlp(r["summary"]).ents})
    assert {"PERSON", "GPE", "ORG", "MONEY", "DATE"} <= labels
    assert shared / len(rows) >= 0.9


def test_train_and_heldout_do_not_overlap():
    train = {r["post"] for _, r in _rows("train")}
    held = {r["post"] for _, r in _rows("heldout")}
    assert not train & held
