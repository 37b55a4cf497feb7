"""Dropout debiasing (Webster et al. 2020, "Measuring and Reducing Gendered Correlations in Pre-trained Models",
arXiv:2010.06032): the CDA fine-tuning recipe without augmentation, with every dropout of the model raised to
0.15 (SPEC §7 "Baselines"). Webster et al. tuned BERT (hidden 0.20, attention 0.15: bias-bench's run_mlm.py);
for the causal LMs bias-bench's run_clm.py uses 0.15 for all three of GPT-2's dropouts, which we follow.

bias-bench (``experiments/run_clm.py``, ``--dropout_debias``) sets ``config.resid_pdrop = config.embd_pdrop =
config.attn_pdrop = 0.15`` on GPT-2's config before ``from_pretrained``; :func:`dropout_overrides` names the
equivalent fields of the other model families we run, read from transformers' modeling code:

- GPT-2: ``resid_pdrop`` (residual + MLP output), ``embd_pdrop`` (embeddings), ``attn_pdrop`` (attention probs);
- Phi: ``resid_pdrop``, ``embd_pdrop`` as nn.Dropout modules, ``attention_dropout`` a float the attention reads;
- Llama: ``attention_dropout`` only: HF's Llama has no residual or embedding dropout, so for Llama the baseline
  regularises the attention probabilities alone;
- GPT-Neo: ``resid_dropout``, ``embed_dropout``, ``attention_dropout``.

Apply it to the config BEFORE the model is built (``from_pretrained(..., config=config)``/``from_config``):
modules copy these values at construction (Llama's and Phi's attention store ``config.attention_dropout`` in
``__init__``), so changing the config of a built model changes nothing.
"""

from __future__ import annotations

from typing import Any

# bias-bench experiments/run_clm.py, --dropout_debias (GPT-2: resid/embd/attn all 0.15, after Webster et al.).
DROPOUT = 0.15

# model_type (transformers config) -> the config attributes that feed its dropouts.
DROPOUT_FIELDS: dict[str, tuple[str, ...]] = {
    "gpt2": ("resid_pdrop", "embd_pdrop", "attn_pdrop"),
    "phi": ("resid_pdrop", "embd_pdrop", "attention_dropout"),
    "llama": ("attention_dropout",),
    "gpt_neo": ("resid_dropout", "embed_dropout", "attention_dropout"),
}


def dropout_overrides(model_config: Any, p: float = DROPOUT) -> dict[str, float]:
    """The config attributes to set for ``model_config.model_type``: ``{field: p}``.

    Raises ValueError for a model type without a known dropout layout (a silent no-op would train the plain
    fine-tuning baseline under the Dropout name) or for ``p`` outside [0, 1)."""
    if isinstance(p, bool) or not isinstance(p, int | float) or not 0.0 <= float(p) < 1.0:
        raise ValueError(f"dropout p must be a number in [0, 1), got {p!r}")
    model_type = getattr(model_config, "model_type", None)
    if model_type not in DROPOUT_FIELDS:
        raise ValueError(f"dropout baseline: unsupported model_type {model_type!r}; supported: "
                         f"{', '.join(sorted(DROPOUT_FIELDS))}")
    missing = [name for name in DROPOUT_FIELDS[model_type] if not hasattr(model_config, name)]
    if missing:
        raise ValueError(f"dropout baseline: {model_type} config lacks {', '.join(missing)}; is this transformers "
                         f"version's {model_type} layout different?")
    return {name: float(p) for name in DROPOUT_FIELDS[model_type]}


def apply_dropout(model_config: Any, p: float = DROPOUT) -> dict[str, tuple[float, float]]:
    """Set the dropout fields on ``model_config`` in place; returns ``{field: (old, new)}`` for every field
    whose value changed (fields already at ``p`` are left out)."""
    changed: dict[str, tuple[float, float]] = {}
    for name, value in dropout_overrides(model_config, p).items():
        old = getattr(model_config, name)
        if old != value:
            setattr(model_config, name, value)
            changed[name] = (old, value)
    return changed


__all__ = ["DROPOUT", "DROPOUT_FIELDS", "apply_dropout", "dropout_overrides"]
