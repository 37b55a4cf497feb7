"""Dropout baseline: the config fields per model family reach every dropout of the tiny models, and act."""

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from raydebias.baselines.dropout import DROPOUT, DROPOUT_FIELDS, apply_dropout, dropout_overrides
from raydebias.models import resolve_model

TINY = {"tiny:gpt2": "gpt2", "tiny:phi": "phi", "tiny:llama": "llama", "tiny:gpt-neo": "gpt_neo"}


def _config(name):
    return AutoConfig.from_pretrained(resolve_model(name))


def _forward(model, seed):
    torch.manual_seed(seed)
    ids = torch.arange(3, 19).reshape(2, 8) % model.config.vocab_size  # (B=2, T=8)
    return model(input_ids=ids).logits  # (2, 8, V)


def _functional_attention_p(model):
    """Attention modules that keep a float dropout probability (Phi, Llama) -> their values."""
    return [m.attention_dropout for m in model.modules()
            if type(m).__name__.endswith("Attention") and isinstance(getattr(m, "attention_dropout", None), float)]


@pytest.mark.parametrize("name", list(TINY))
def test_every_dropout_of_the_built_model_is_p(name):
    config = _config(name)
    assert config.model_type == TINY[name]
    before = {f: getattr(config, f) for f in DROPOUT_FIELDS[config.model_type]}
    changed = apply_dropout(config)
    assert changed == {f: (v, 0.15) for f, v in before.items() if v != 0.15}
    assert changed  # the tiny configs ship 0.0/0.1: something must change
    assert all(getattr(config, f) == 0.15 for f in DROPOUT_FIELDS[config.model_type])
    assert apply_dropout(config) == {}  # idempotent

    model = AutoModelForCausalLM.from_config(config)
    drops = [m for m in model.modules() if isinstance(m, torch.nn.Dropout)]
    assert all(m.p == 0.15 for m in drops), [m.p for m in drops]
    functional = _functional_attention_p(model)
    if config.model_type == "llama":
        assert not drops  # HF Llama has no dropout modules: attention dropout is functional
    else:
        assert drops
    if config.model_type in ("llama", "phi"):
        assert len(functional) == config.num_hidden_layers and set(functional) == {0.15}

    # dropout acts: train mode gives seed-dependent outputs, eval mode identical ones
    model.train()
    assert not torch.allclose(_forward(model, 0), _forward(model, 1))
    model.eval()
    with torch.no_grad():
        assert torch.equal(_forward(model, 0), _forward(model, 1))


@pytest.mark.parametrize("name", ["tiny:llama", "tiny:gpt-neo"])
def test_without_the_override_train_mode_is_deterministic(name):
    """The tiny Llama/GPT-Neo ship every dropout at 0.0: the non-determinism above is the override's doing."""
    model = AutoModelForCausalLM.from_config(_config(name))
    model.train()
    assert torch.equal(_forward(model, 0), _forward(model, 1))


def test_overrides_per_family_and_bad_input():
    assert DROPOUT == 0.15
    assert dropout_overrides(_config("tiny:gpt2")) == {"resid_pdrop": 0.15, "embd_pdrop": 0.15, "attn_pdrop": 0.15}
    assert dropout_overrides(_config("tiny:phi"), p=0.2) == {"resid_pdrop": 0.2, "embd_pdrop": 0.2,
                                                              "attention_dropout": 0.2}
    assert dropout_overrides(_config("tiny:llama")) == {"attention_dropout": 0.15}

    from transformers import BertConfig

    with pytest.raises(ValueError, match=r"'bert'.*gpt2, gpt_neo, llama, phi"):
        dropout_overrides(BertConfig())
    for bad in (-0.1, 1.0, "0.1", True):
        with pytest.raises(ValueError, match="dropout p"):
            dropout_overrides(_config("tiny:gpt2"), p=bad)
    config = _config("tiny:gpt2")
    with pytest.raises(ValueError):
        apply_dropout(config, p=1.5)
    assert config.resid_pdrop == 0.1  # nothing set on a rejected call
