"""Where NER runs (issue #16 item 4): transformer spaCy pipelines on the GPU, CPU pipelines on CPU.

CPU only and offline: the transformer pipeline is a config.cfg on disk (``is_transformer_pipeline``
reads it without loading), and spaCy's GPU switch is replaced only at its true boundary
(``spacy.require_gpu``, which needs cupy and a GPU this machine does not have).
"""

from pathlib import Path

import pytest
import spacy
import spacy.util

from raydebias import models
from raydebias.augment.annotate import AnnotateCandidates, AnnotateEntities
from raydebias.config import load_config
from raydebias.errors import ConfigError, ModelLoadError
from raydebias.scoring.ner import EntityTagger, is_transformer_pipeline

NLP = '[nlp]\nlang = "en"\npipeline = {pipeline}\n\n[components]\n\n'
TRANSFORMER = '[components.transformer]\nfactory = "transformer"\nmax_batch_items = 4096\n\n'
NER = '[components.ner]\nfactory = "ner"\n\n'


def _pipeline_dir(root: Path, name: str, components: dict[str, str]) -> Path:
    """A directory holding only a pipeline's config.cfg: enough for is_transformer_pipeline, not for spacy.load."""
    path = root / name
    path.mkdir()
    names = "[" + ", ".join(f'"{c}"' for c in components) + "]"
    (path / "config.cfg").write_text(NLP.format(pipeline=names) + "".join(components.values()), encoding="utf-8")
    return path


@pytest.fixture
def trf_dir(tmp_path: Path) -> Path:
    return _pipeline_dir(tmp_path, "fake_trf", {"transformer": TRANSFORMER, "ner": NER})


@pytest.fixture
def cnn_dir(tmp_path: Path) -> Path:
    return _pipeline_dir(tmp_path, "fake_cnn", {"ner": NER})


def test_transformer_pipeline_from_its_config(trf_dir, cnn_dir):
    assert is_transformer_pipeline(str(trf_dir)) is True
    assert is_transformer_pipeline(str(cnn_dir)) is False
    assert is_transformer_pipeline("tiny:spacy-ner") is False  # the kit's rule-based NER


def test_transformer_pipeline_from_its_name_when_not_installed(caplog):
    for name in ("en_core_web_trf", "en_core_web_sm"):
        if spacy.util.is_package(name):
            pytest.skip(f"{name} is installed here: its config decides, not its name")
    with caplog.at_level("INFO", logger="raydebias.scoring.ner"):
        assert is_transformer_pipeline("en_core_web_trf") is True
        assert is_transformer_pipeline("en_core_web_sm") is False
    assert "'en_core_web_trf' is not installed in this process" in caplog.text


def test_a_directory_without_config_is_not_a_pipeline(tmp_path):
    with pytest.raises(ModelLoadError, match="without config.cfg"):
        is_transformer_pipeline(str(tmp_path))


def test_cpu_pipeline_pool_never_takes_a_gpu(trf_dir):
    cpu = load_config(None, ["augment.ner.model=tiny:spacy-ner"]).augment
    assert cpu.ner.resources.num_gpus == 0.25  # the configured default stays; the stage drops it
    for cls in (AnnotateEntities, AnnotateCandidates):
        res = cls.resources(cpu)
        assert res.num_gpus == 0.0
        assert (res.num_cpus, res.actors, res.batch_size) == (2.0, cpu.ner.resources.actors,
                                                              cpu.ner.resources.batch_size)

    trf = load_config(None, [f"augment.ner.model={trf_dir}"]).augment
    assert AnnotateEntities.resources(trf).num_gpus == AnnotateCandidates.resources(trf).num_gpus == 0.25


def test_cpu_pipeline_on_a_cuda_device_stays_on_cpu(monkeypatch):
    def no_gpu(index: int = 0) -> bool:
        raise AssertionError("require_gpu must not be called for a CPU pipeline")

    monkeypatch.setattr(spacy, "require_gpu", no_gpu)
    tagger = EntityTagger("tiny:spacy-ner", device="cuda")
    assert tagger.device == "cpu"
    assert {e["label"] for e in tagger.tag(["Greg owes me $40 since May 3."])[0]} >= {"PERSON", "MONEY"}


def test_transformer_pipeline_without_cupy_says_how_to_fix(monkeypatch, trf_dir):
    asked: list[int] = []
    loaded: list[str] = []

    def no_cupy(index: int = 0) -> bool:
        asked.append(index)
        raise ValueError("Cannot use GPU, CuPy is not installed")

    monkeypatch.setattr(spacy, "require_gpu", no_cupy)
    monkeypatch.setattr(models, "load_spacy", lambda name: loaded.append(name))
    with pytest.raises(RuntimeError, match=r"spacy\[cuda12x\]") as err:
        EntityTagger(str(trf_dir), device="cuda:1")
    assert "augment.ner.resources.num_gpus=0" in str(err.value) and "CuPy is not installed" in str(err.value)
    assert asked == [1] and loaded == []  # the GPU is required before the pipeline is loaded

    with pytest.raises(RuntimeError, match=r"spacy\[cuda12x\]"):
        EntityTagger(str(trf_dir), device="cuda")
    assert asked == [1, 0] and loaded == []


def test_pipe_batch_size_reaches_the_tagger():
    cfg = load_config(None, ["augment.ner.model=tiny:spacy-ner", "augment.ner.pipe_batch_size=7"])
    assert cfg.augment.ner.pipe_batch_size == 7
    assert AnnotateEntities(cfg.augment.ner).tagger.batch_size == 7
    assert load_config(None, ["augment.ner.model=tiny:spacy-ner"]).augment.ner.pipe_batch_size == 64


def test_pipe_batch_size_must_be_positive():
    with pytest.raises(ConfigError, match=r"augment.ner.pipe_batch_size must be >= 1, got 0"):
        load_config(None, ["augment.ner.model=tiny:spacy-ner", "augment.ner.pipe_batch_size=0"])
