"""The single loading path for every model raydebias uses.

Every stage (augmentation actors, training, evaluation) loads models through these functions and
nothing else in the project calls `from_pretrained` on a hub id. That is what makes the offline tiny
models honest stand-ins: a config that says `model: tiny:gpt2` goes through exactly the code that
`model: gpt2` goes through in production; only `resolve_model` differs, mapping the `tiny:` id to a
directory built by `raydebias.tiny` (ENV.md "No model hub": nothing can be downloaded here or in CI).

Security defaults: `trust_remote_code=False` (no code from model repos) and `use_safetensors=True`
(weights are never unpickled) unless a caller opts in explicitly.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

from raydebias.errors import ModelLoadError  # noqa: F401  (re-exported)

TINY_PREFIX = "tiny:"

MODEL_KINDS = {
    "causal_lm": "AutoModelForCausalLM",
    "seq2seq_lm": "AutoModelForSeq2SeqLM",
    "masked_lm": "AutoModelForMaskedLM",
    "sequence_classification": "AutoModelForSequenceClassification",
}
DTYPES = ("auto", "float32", "float16", "bfloat16")
DETOXIFY_MODEL_TYPES = ("original", "unbiased", "multilingual", "original-small", "unbiased-small")


def resolve_model(model_id: str) -> str:
    """`tiny:NAME` -> local directory of the kit's tiny model NAME (built on demand); a filesystem URI
    (`s3://bucket/run/model`, e.g. a model trained with an object-store --output) -> a local copy
    cached on this node (`raydebias.storage.fetch`); else unchanged.

    Hub ids ("gpt2", "Helsinki-NLP/opus-mt-en-de") and local paths pass through untouched, so
    production behaviour is exactly that of transformers/spaCy. Unknown tiny names raise ValueError.
    """
    if not isinstance(model_id, str) or not model_id:
        raise ValueError(f"model id must be a non-empty string, got {model_id!r}")
    if model_id.startswith(TINY_PREFIX):
        from raydebias import tiny

        return str(tiny.ensure(model_id[len(TINY_PREFIX) :]))
    from raydebias.storage import fetch, is_uri

    if is_uri(model_id):
        return str(fetch(model_id))
    return model_id


def resolve_device(device: str) -> str:
    """Map a config's `device: cpu|gpu|auto` to a torch device string.

    "gpu" is an explicit request: it fails loudly without CUDA instead of silently running on CPU
    (ENV.md HANG 1: asking for GPUs that are not there must fail, not wait). "auto" picks CUDA when
    this process can see it. Explicit torch strings ("cuda", "cuda:1") are accepted and checked too.
    """
    import torch

    name = str(device).strip().lower()
    if name == "cpu":
        return "cpu"
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name in ("gpu", "cuda") or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise RuntimeError(
                f"device={device!r} asks for a GPU, but torch.cuda.is_available() is False in this process "
                f"(torch {torch.__version__}, CUDA build: {torch.version.cuda or 'no'}). Use device 'cpu' or "
                "'auto' in the config, or run on a node with a GPU and a CUDA build of torch."
            )
        return "cuda" if name == "gpu" else name
    raise ValueError(f"unknown device {device!r}; use 'cpu', 'gpu' or 'auto' (or an explicit 'cuda:N')")


def actor_device(use_gpu: bool) -> str:
    """The torch device of an actor whose pool was (``use_gpu``) or was not given a GPU share: THE rule every
    actor (augmentation stages, generation, scoring) resolves its device by, in its own process."""
    return resolve_device("gpu" if use_gpu else "cpu")


_UNSET_MAX_LENGTH = 1_000_000  # tokenizers without a limit report ~1e30


def max_input_tokens(tokenizer: Any, model: Any, default: int = 512) -> int:
    """Input token limit: the tokenizer's ``model_max_length`` and the model's position table, if any."""
    limits = []
    tok_max = getattr(tokenizer, "model_max_length", None)
    if isinstance(tok_max, int) and 0 < tok_max < _UNSET_MAX_LENGTH:
        limits.append(tok_max)
    pos = getattr(model.config, "max_position_embeddings", None)
    if isinstance(pos, int) and pos > 0:
        limits.append(pos)
    return min(limits) if limits else default


def _resolve_dtype(dtype):
    """None -> None (transformers' default); "auto"/"float32"/"float16"/"bfloat16"/torch.dtype -> value."""
    import torch

    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return "auto"
    if dtype in DTYPES:
        return getattr(torch, dtype)
    raise ValueError(f"unknown dtype {dtype!r}; use None, one of {DTYPES}, or a torch.dtype")


def _looks_like_path(model_id: str) -> bool:
    """True for ids that can only mean a local path (a relative "a/b" could be a hub id)."""
    return model_id.startswith(("./", "../", "~")) or os.path.isabs(model_id)


def _load_failure(model_id: str, resolved: str, what: str, exc: BaseException) -> ModelLoadError:
    """Turn a from_pretrained OSError into an error that says what was wrong and what to do."""
    if os.path.isdir(resolved):
        hint = ""
        if "safetensors" in str(exc) or not any(Path(resolved).glob("*.safetensors")):
            hint = (
                " If the directory only has pytorch_model.bin, convert it to safetensors; pass "
                "use_safetensors=False only for weights you trust (that unpickles them)."
            )
        return ModelLoadError(
            f"could not load {what} from local directory {resolved!r} (model {model_id!r}): {exc}{hint}"
        )
    if _looks_like_path(model_id):
        return ModelLoadError(
            f"could not load {what} {model_id!r}: no such local directory. Pass an existing directory "
            f"written by save_pretrained, or a '{TINY_PREFIX}NAME' id for the offline tiny models."
        )
    offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
    why = (
        "HF_HUB_OFFLINE is set (offline), so only the local Hugging Face cache is used, and"
        if offline
        else "the model hub could not be reached (offline machine?) or has no such model, and"
    )
    return ModelLoadError(
        f"could not load {what} {model_id!r}: {why} it is not in the local cache. "
        f"Point the config at a local directory holding the model, or use a '{TINY_PREFIX}NAME' id "
        f"(e.g. '{TINY_PREFIX}gpt2') for offline/smoke runs. Original error: {exc}"
    )


def _tokenizer_from(model_id: str, resolved: str, trust_remote_code: bool, **kwargs: Any):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(resolved, trust_remote_code=trust_remote_code, **kwargs)
    except OSError as exc:
        raise _load_failure(model_id, resolved, "tokenizer", exc) from exc


def load_tokenizer(model_id: str, *, trust_remote_code: bool = False, **kwargs: Any):
    """`AutoTokenizer.from_pretrained(resolve_model(model_id), ...)`, with offline failures explained."""
    return _tokenizer_from(model_id, resolve_model(model_id), trust_remote_code, **kwargs)


def load_model(
    model_id: str,
    kind: str,
    *,
    device: str = "cpu",
    dtype=None,
    trust_remote_code: bool = False,
    use_safetensors: bool = True,
):
    """Load (model, tokenizer) for `kind` in MODEL_KINDS, in eval mode on `device`.

    dtype None keeps transformers' default (in transformers 5 that is "auto": the dtype the checkpoint
    was saved in). For causal LMs without a pad token, pad = eos (GPT-2/GPT-Neo ship none); the padding
    side is left alone: batched generation callers set `tokenizer.padding_side = "left"` themselves.
    """
    if kind not in MODEL_KINDS:
        raise ValueError(f"unknown model kind {kind!r}; use one of {', '.join(MODEL_KINDS)}")
    import transformers

    torch_dtype = _resolve_dtype(dtype)
    target_device = resolve_device(device)
    resolved = resolve_model(model_id)
    tokenizer = _tokenizer_from(model_id, resolved, trust_remote_code)
    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code, "use_safetensors": use_safetensors}
    if torch_dtype is not None:
        kwargs["dtype"] = torch_dtype
    auto_cls = getattr(transformers, MODEL_KINDS[kind])
    try:
        model = auto_cls.from_pretrained(resolved, **kwargs)
    except OSError as exc:
        raise _load_failure(model_id, resolved, f"{kind} model", exc) from exc
    model.to(target_device)
    model.eval()
    if kind == "causal_lm" and tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if kind == "causal_lm" and getattr(model, "generation_config", None) is not None:
        if model.generation_config.pad_token_id is None:
            # Saves every generate() call the "Setting pad_token_id to eos_token_id" warning.
            model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def load_spacy(name_or_path: str):
    """`spacy.load(resolve_model(name_or_path))`; a missing pipeline becomes a ModelLoadError.

    en_core_web_trf comes from spaCy's own download, never from PyPI: the PyPI package of that name
    is a dependency-confusion stub (ENV.md "spaCy").
    """
    import spacy

    resolved = resolve_model(name_or_path)
    try:
        return spacy.load(resolved)
    except OSError as exc:
        if "E050" not in str(exc):
            raise
        raise ModelLoadError(
            f"spaCy pipeline {name_or_path!r} is not installed (spaCy E050: no package or directory of "
            f"that name). Real pipelines such as en_core_web_trf must come from spaCy's own download "
            f"(`python -m spacy download en_core_web_trf`), NEVER from PyPI: the PyPI package "
            f"'en_core_web_trf' is a dependency-confusion stub. Offline runs can use "
            f"'{TINY_PREFIX}spacy-ner' (the kit's rule-based NER with the same entity labels)."
        ) from exc


def _local_detoxify_checkpoint(local_dir: Path, checkpoint: str | os.PathLike | None) -> io.BytesIO:
    """The kit's detoxify checkpoint, with `model_type` pointing at `local_dir` where it is now.

    detoxify ignores the `model_type` argument once a checkpoint is given and calls
    `BertConfig.from_pretrained(checkpoint["config"]["arch"]["args"]["model_type"])`, i.e. the path baked
    in at build time, which is wrong as soon as the cache moved (another machine, another
    RAYDEBIAS_TINY_DIR). So we read the checkpoint with `weights_only=True` (it only holds dicts,
    strings, ints and tensors: nothing is unpickled), point model_type at the real directory, and hand
    detoxify the result as an in-memory file (torch.load accepts file objects).
    """
    import torch

    from raydebias.tiny import DETOXIFY_CHECKPOINT

    path = Path(checkpoint) if checkpoint is not None else local_dir / DETOXIFY_CHECKPOINT
    if not path.is_file():
        raise ModelLoadError(
            f"{local_dir} has no detoxify checkpoint {path.name!r}; build one with "
            f"`python -m raydebias.tiny DIR --only toxic-bert` or use model_type '{TINY_PREFIX}toxic-bert'"
        )
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # an UnpicklingError subclass for non-tensor objects, or a corrupt file
        raise ModelLoadError(
            f"refusing to load {path}: it is not a weights-only detoxify checkpoint ({exc}). Local directories "
            f"are for checkpoints written by raydebias.tiny; load other detoxify checkpoints you trust with "
            f"load_detoxify(<model type>, checkpoint=PATH)."
        ) from exc
    if not isinstance(loaded, dict) or "config" not in loaded or "state_dict" not in loaded:
        raise ModelLoadError(f"{path} is not a detoxify checkpoint: it needs 'config' and 'state_dict'")
    keys = list(loaded["state_dict"])
    if keys and all(k.startswith("model.") for k in keys):
        # ENV.md trap: detoxify/transformers would load these silently as RANDOM weights.
        raise ModelLoadError(
            f"{path}: state_dict keys carry a 'model.' prefix; detoxify would ignore them and use random "
            "weights. Save the plain Hugging Face state_dict (model.state_dict() of the HF model)."
        )
    loaded["config"]["arch"]["args"]["model_type"] = str(local_dir)
    buffer = io.BytesIO()
    torch.save(loaded, buffer)
    buffer.seek(0)
    return buffer


def load_detoxify(
    model_type: str = "original", *, checkpoint: str | os.PathLike | None = None, device: str = "cpu"
):
    """A `detoxify.Detoxify` scorer; `predict(texts)` -> {class name: score(s)}.

    Production (`"original"` = unitary/toxic-bert, etc.): `Detoxify(model_type, checkpoint, device)`,
    which downloads its checkpoint and `bert-base-uncased` config/tokenizer from the internet unless
    they are cached: offline that fails and becomes a ModelLoadError.
    Offline (`"tiny:toxic-bert"`, or a local directory holding the kit's detoxify checkpoint):
    `Detoxify(model_type=DIR, checkpoint=<ckpt>, huggingface_config_path=DIR)` (ENV.md "detoxify
    offline"), with the checkpoint's baked-in path replaced by DIR (see `_local_detoxify_checkpoint`).

    Note: detoxify checkpoints are torch pickles by design and detoxify loads them with
    `weights_only=False`. Only load checkpoints you trust; the tiny one is written by raydebias.tiny
    and is re-checked here with `weights_only=True` before detoxify sees it.
    """
    from detoxify import Detoxify

    target_device = resolve_device(device)
    local_dir: Path | None = None
    if model_type.startswith(TINY_PREFIX):
        local_dir = Path(resolve_model(model_type))
    elif os.path.isdir(os.path.expanduser(model_type)):
        local_dir = Path(os.path.expanduser(model_type)).resolve()
    if local_dir is not None:
        buffer = _local_detoxify_checkpoint(local_dir, checkpoint)
        try:
            return Detoxify(
                model_type=str(local_dir),
                checkpoint=buffer,
                huggingface_config_path=str(local_dir),
                device=target_device,
            )
        except OSError as exc:
            raise _load_failure(model_type, str(local_dir), "detoxify model", exc) from exc
    if checkpoint is None and model_type not in DETOXIFY_MODEL_TYPES:
        raise ValueError(
            f"unknown detoxify model type {model_type!r}; use one of {', '.join(DETOXIFY_MODEL_TYPES)}, "
            f"'{TINY_PREFIX}toxic-bert', or a local directory built by raydebias.tiny"
        )
    try:
        return Detoxify(model_type, checkpoint=checkpoint, device=target_device)
    except OSError as exc:  # urllib's URLError (checkpoint download) and hub errors are OSErrors
        raise ModelLoadError(
            f"could not load detoxify model {model_type!r}: it downloads its checkpoint from GitHub and "
            f"'bert-base-uncased' from the Hugging Face hub, and no hub is reachable / this run is offline "
            f"(or they are not cached). Use '{TINY_PREFIX}toxic-bert' or a local directory built by "
            f"`python -m raydebias.tiny DIR --only toxic-bert` for offline runs. Original error: {exc}"
        ) from exc
