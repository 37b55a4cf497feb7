"""raydebias.scoring: toxicity backends and the entity tagger, on the real tiny models (no mocks).

The tiny toxic-bert is random, so its scores mean nothing; what is tested is WHICH number comes out:
the `toxicity` label's own score (SPEC §2), computed the way detoxify / the HF classifier compute it.
"""

import math

import pytest
import spacy
import torch

from raydebias import models
from raydebias.config import ToxicityConfig
from raydebias.scoring.ner import EntityTagger
from raydebias.scoring.toxicity import ToxicityScorer, load_toxicity_scorer

torch.set_num_threads(1)

TEXTS = [
    "you are a complete idiot and everyone hates you",
    "Thanks for the advice, have a nice day!",
    "My boss Greg Tolliver owes me $1,840 since May 3.",
    "",
    "ok",
]


def detoxify_cfg(**kw):
    return ToxicityConfig(**{"backend": "detoxify", "model": "tiny:toxic-bert", **kw})


def test_detoxify_backend_reads_the_toxicity_key_not_the_top_label():
    # batch_size 2 over 5 texts: the last chunk holds one text, which detoxify returns as a bare float.
    scorer = load_toxicity_scorer(detoxify_cfg(batch_size=2))
    assert isinstance(scorer, ToxicityScorer)
    assert scorer.score([]) == []
    reference = models.load_detoxify("tiny:toxic-bert").predict(TEXTS)
    scores = scorer.score(TEXTS)
    assert scores == pytest.approx(reference["toxicity"], abs=1e-6)

    # Make "insult" the top label of every text (a real change to the loaded model's weights): the
    # score must stay the toxicity score, which the authors' top-label code would not return (SPEC §8).
    insult = scorer.detoxify.class_names.index("insult")
    with torch.no_grad():
        scorer.detoxify.model.classifier.bias[insult] += 5.0
    predicted = scorer.detoxify.predict(TEXTS)
    scores = scorer.score(TEXTS)
    assert scores == pytest.approx(predicted["toxicity"], abs=1e-6)
    for i, score in enumerate(scores):
        top = max(predicted[label][i] for label in predicted)
        assert top == predicted["insult"][i] > 0.99
        assert score < top - 0.3


def test_hf_backend_is_sigmoid_of_the_toxic_logit():
    scorer = load_toxicity_scorer(ToxicityConfig(backend="hf", model="tiny:toxic-bert", batch_size=2))
    assert scorer.label == "toxic"  # config says "toxicity"; toxic-bert's HF head names it "toxic"
    model, tokenizer = models.load_model("tiny:toxic-bert", "sequence_classification")
    with torch.no_grad():
        logits = model(**tokenizer(TEXTS, padding=True, truncation=True, return_tensors="pt")).logits
    expected = torch.sigmoid(logits)[:, model.config.label2id["toxic"]].tolist()
    assert scorer.score(TEXTS) == pytest.approx(expected, abs=1e-5)
    assert scorer.score([]) == []

    insult = load_toxicity_scorer(ToxicityConfig(backend="hf", model="tiny:toxic-bert", label="insult"))
    expected_insult = torch.sigmoid(logits)[:, model.config.label2id["insult"]].tolist()
    assert insult.score(TEXTS) == pytest.approx(expected_insult, abs=1e-5)
    assert expected_insult != pytest.approx(expected, abs=1e-5)


def test_hf_backend_truncates_long_texts_to_the_model_limit():
    scorer = load_toxicity_scorer(ToxicityConfig(backend="hf", model="tiny:toxic-bert"))
    long_text = "my roommate owes me money " * 400  # far beyond 512 positions
    (score,) = scorer.score([long_text])
    assert 0.0 <= score <= 1.0 and math.isfinite(score)


def test_profanity_backend_ranks_profanity_above_clean_text():
    scorer = load_toxicity_scorer(ToxicityConfig(backend="profanity"))
    profane, clean = scorer.score(["You are a fucking idiot, shut the hell up", "Thanks, have a nice day!"])
    assert 0.0 <= clean < 0.3 < 0.7 < profane <= 1.0
    assert scorer.score([]) == []


@pytest.mark.parametrize("backend, listed", [("detoxify", "'toxicity'"), ("hf", "'toxic'")])
def test_unknown_label_is_a_clear_error(backend, listed):
    with pytest.raises(ValueError, match=rf"label 'hatefulness' is not a label of .*{listed}"):
        load_toxicity_scorer(ToxicityConfig(backend=backend, model="tiny:toxic-bert", label="hatefulness"))


def test_unknown_backend_and_bad_text_are_clear_errors():
    with pytest.raises(ValueError, match="backend 'perspective' is unknown; use one of detoxify, hf, profanity"):
        load_toxicity_scorer(ToxicityConfig(backend="perspective"))
    with pytest.raises(TypeError, match=r"texts\[1\] is NoneType"):
        load_toxicity_scorer(ToxicityConfig(backend="profanity")).score(["fine", None])


def test_entity_tagger_spans_match_their_text():
    tagger = EntityTagger("tiny:spacy-ner")
    texts = [TEXTS[2], "   ", "", "Emily paid $40 on Saturday, October 3rd."]
    tagged = tagger.tag(texts)
    assert len(tagged) == 4 and tagged[1] == [] and tagged[2] == []
    assert {"PERSON", "MONEY", "DATE"} <= {e["label"] for e in tagged[0]}
    assert {"PERSON", "MONEY", "DATE"} <= {e["label"] for e in tagged[3]}
    for text, ents in zip(texts, tagged, strict=True):
        for e in ents:
            assert set(e) == {"start", "end", "label", "text"}
            assert text[e["start"] : e["end"]] == e["text"]
    assert {"start": 8, "end": 21, "label": "PERSON", "text": "Greg Tolliver"} in tagged[0]
    assert tagger.tag([]) == []


def test_entity_tagger_refuses_a_pipeline_without_ner(tmp_path):
    spacy.blank("en").to_disk(tmp_path / "blank")
    with pytest.raises(ValueError, match="has no entity recogniser"):
        EntityTagger(str(tmp_path / "blank"))
