"""Text generation behind one small interface, for the causal-LM augmentation ops and evaluation.

    gen = make_generator("hf", "tiny:gpt2", "cpu")
    outs = gen.generate(["POST: ...\\nTL;DR:"], GenParams(max_new_tokens=16, num_beams=8, num_return_sequences=8))
    outs[0][0].text, outs[0][0].score       # continuation only; HF ``sequences_scores`` of that beam

Two backends:

- :class:`HFGenerator`: ``model.generate`` on a model loaded through :func:`raydebias.models.load_model`
  (the only loading path), left padding, prompt tokens removed by position. Runs everywhere; the
  reference for every score this project reports.
- :class:`VLLMGenerator`: vLLM on CUDA machines (the ``gpu`` extra; not installed on CPU machines).
  Sampling and greedy decoding only. Beam search is refused (see the class docstring): vLLM's beam
  scores are normalised differently from HF's, which would silently change eq. 1-2 of the paper.

Both take token ids from the same Hugging Face tokenizer, so prompt truncation is identical, and both
size a request with :func:`clamp_max_new_tokens`: prompt + new tokens never exceed the model's positions
(GPT-2 has 1024; asking for more is an IndexError on CPU and a device-side assert on CUDA).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

log = logging.getLogger(__name__)

BACKENDS = ("hf", "vllm")
VLLM_MISSING = (
    "backend=vllm needs the `gpu` extra on a CUDA machine (pip install 'raydebias[gpu]'); "
    "vllm is not importable here{why}. Use backend=hf (augment.<op>.backend=hf)."
)


@dataclass(frozen=True)
class GenParams:
    """What to generate. Defaults are HF ``generate`` defaults, not the paper's: ops pass their config.

    ``seed`` (not None) reseeds the backend's sampler right before generating, so a batch's samples
    depend only on the seed and the batch. ``max_input_tokens`` keeps the LAST tokens of a longer prompt
    (decoder-only generation continues from the prompt's end); ops that must keep a particular part of
    the prompt shorten it themselves first (low_confidence cuts the post). ``max_new_tokens`` is an upper
    bound: on a model with fewer positions it is clamped so that at least ``min_prompt_tokens`` remain
    for the prompt (:func:`clamp_max_new_tokens`). ``stop``: strings that end a continuation (lm-eval's
    ``until``): generation halts once one appears, and ``Generation.text`` is cut before the first one
    (``token_ids``/``token_logprobs`` keep the generated tokens).
    """

    max_new_tokens: int = 128
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    num_beams: int = 1
    num_return_sequences: int = 1
    length_penalty: float = 1.0
    output_scores: bool = False
    max_input_tokens: int | None = None
    seed: int | None = None
    min_prompt_tokens: int = 1
    stop: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        def check(ok: bool, what: str, value: Any) -> None:
            if not ok:
                raise ValueError(f"GenParams.{what}, got {value!r}")

        check(self.max_new_tokens >= 1, "max_new_tokens must be >= 1", self.max_new_tokens)
        check(self.temperature > 0, "temperature must be > 0 (use do_sample=False for greedy)", self.temperature)
        check(0 < self.top_p <= 1, "top_p must be in (0, 1]", self.top_p)
        check(self.repetition_penalty > 0, "repetition_penalty must be > 0", self.repetition_penalty)
        check(self.num_beams >= 1, "num_beams must be >= 1", self.num_beams)
        check(self.num_return_sequences >= 1, "num_return_sequences must be >= 1", self.num_return_sequences)
        check(self.max_input_tokens is None or self.max_input_tokens >= 1,
              "max_input_tokens must be >= 1 or None", self.max_input_tokens)
        check(self.min_prompt_tokens >= 1, "min_prompt_tokens must be >= 1", self.min_prompt_tokens)
        check(isinstance(self.stop, tuple) and all(isinstance(x, str) and x for x in self.stop),
              "stop must be a tuple of non-empty strings", self.stop)
        if not self.do_sample:
            # Deterministic search can only return as many distinct sequences as it keeps beams.
            check(self.num_return_sequences <= self.num_beams,
                  f"num_return_sequences must be <= num_beams={self.num_beams} without sampling",
                  self.num_return_sequences)


@dataclass
class Generation:
    """One generated continuation (the prompt is never part of it).

    ``token_ids``: the continuation's tokens up to, not including, the first end-of-sequence token;
    ``text`` is their decoding (special tokens skipped), cut before the first ``GenParams.stop`` string.
    ``score``: the beam's sequence score (HF ``sequences_scores``: sum of token log-probs /
    generated_length ** length_penalty) under beam search, else None; ``HFGenerator`` computes it from
    one teacher-forced pass when beam search ran on the model's own log-probs (no logits processor),
    else takes HF's. ``token_logprobs``: log-probability of each token in ``token_ids`` under the
    distribution it was chosen from (after repetition penalty / temperature / top-p), when
    ``output_scores``.
    """

    text: str
    score: float | None = None
    token_logprobs: list[float] | None = None
    token_ids: list[int] | None = None


@runtime_checkable
class Generator(Protocol):
    """``generate(prompts, params)`` -> one list of ``params.num_return_sequences`` Generations per prompt,
    in the model's order (best beam first under beam search). ``tokenizer`` is the HF tokenizer whose
    ids the model sees (ops use it to budget prompts); ``context`` the model's positions (None: unknown),
    which :func:`clamp_max_new_tokens` and the prompt truncation respect."""

    tokenizer: Any
    context: int | None

    def generate(self, prompts: list[str], params: GenParams) -> list[list[Generation]]: ...


def derive_seed(seed: int, *parts: object) -> int:
    """A 63-bit seed from the run seed and e.g. (op name, first row id): stable across processes/runs."""
    key = ":".join(str(p) for p in (seed, *parts)).encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "big") & 0x7FFF_FFFF_FFFF_FFFF


def _eos_ids(*sources: Any) -> set[int]:
    out: set[int] = set()
    for src in sources:
        if src is None:
            continue
        out.update(int(i) for i in (src if isinstance(src, (list, tuple)) else [src]))
    return out


def _cut_at_eos(ids: list[int], eos: set[int]) -> int:
    """Number of tokens before the first end-of-sequence token (everything after it is padding)."""
    for i, t in enumerate(ids):
        if t in eos:
            return i
    return len(ids)


def _neutral(value: Any, neutral: Any) -> bool:
    return value is None or value == neutral or (neutral == 0 and not value)


def cut_at_stop(text: str, stop: tuple[str, ...]) -> str:
    """``text`` up to the first occurrence of any ``stop`` string (lm-eval: ``text.split(term)[0]`` per term)."""
    for term in stop:
        text = text.split(term, 1)[0]
    return text


def stop_criteria(tokenizer: Any, stop: tuple[str, ...], prompt_len: int) -> Any:
    """A ``StoppingCriteria`` that ends each sequence once one of ``stop`` appears in its GENERATED text.

    As lm-eval's ``MultiTokenEOSCriteria``: per step, decode the last ``len(tokens(stop)) + 2`` generated
    tokens (a model may spell a stop with other tokens than the tokenizer would) and look for the string.
    Unlike ``generate(stop_strings=...)``, it never looks into the prompt: a prompt ending in ":" does not
    turn a generated ":" into a "::" stop."""
    import torch
    from transformers import StoppingCriteria

    lookback = max(len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in stop) + 2

    class StopOnStrings(StoppingCriteria):
        def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
            tails = tokenizer.batch_decode(input_ids[:, prompt_len:][:, -lookback:], skip_special_tokens=True)
            return torch.tensor([any(t in tail for t in stop) for tail in tails], dtype=torch.bool,
                                device=input_ids.device)

    return StopOnStrings()


def context_length(config: Any) -> int | None:
    """Positions of a Hugging Face model config (GPT-2 ``n_positions``, Llama ``max_position_embeddings``,
    ...); None when the config names none."""
    for name in ("n_positions", "max_position_embeddings", "n_ctx", "max_sequence_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def clamp_max_new_tokens(max_new_tokens: int, context: int | None, min_prompt_tokens: int = 1) -> int:
    """The new tokens one request may really ask for on a model with ``context`` positions.

    THE rule for every backend and every caller (HFGenerator, VLLMGenerator, the evaluate stage's
    budgets and its per-request record): ``min(max_new_tokens, context - min_prompt_tokens)``, so the
    prompt keeps at least ``min_prompt_tokens`` positions and prompt + output never exceed ``context``.
    Without it, MMLU-Pro's 2048 new tokens on GPT-2's 1024 positions left the prompt 1 token and ran
    generation past the position table. ``context`` None (unknown) leaves ``max_new_tokens`` as is.
    """
    if context is None:
        return max_new_tokens
    room = context - min_prompt_tokens
    if room < 1:
        raise ValueError(
            f"a model with {context} positions leaves no room to generate when the prompt keeps "
            f"min_prompt_tokens={min_prompt_tokens}; set it below {context} (evaluate.min_prompt_tokens)")
    return min(max_new_tokens, room)


def _input_limit(params: GenParams, context: int | None) -> int | None:
    """Max prompt tokens: the caller's limit, and the positions left after the (clamped) new tokens, so
    ``_input_limit + clamp_max_new_tokens <= context`` always holds."""
    limits = [params.max_input_tokens] if params.max_input_tokens is not None else []
    if context is not None:
        limits.append(context - clamp_max_new_tokens(params.max_new_tokens, context, params.min_prompt_tokens))
    return min(limits) if limits else None


def _warn_clamped(gen: Any, params: GenParams, max_new: int) -> None:
    """Say once per generator and requested length that it was clamped (callers record it per request)."""
    key = (params.max_new_tokens, max_new)
    if max_new < params.max_new_tokens and key not in gen._clamp_warned:
        gen._clamp_warned.add(key)
        log.warning("%s: max_new_tokens=%d clamped to %d (model positions: %s, min_prompt_tokens=%d)",
                    gen.model_id, params.max_new_tokens, max_new, gen.context, params.min_prompt_tokens)


class HFGenerator:
    """``model.generate`` on a causal LM loaded with :func:`raydebias.models.load_model`.

    Batched over all prompts with LEFT padding (decoder-only models continue from the last position).
    Under sampling, HF's default top-k of 50 is switched off (``top_k=0``): Table 10 specifies nucleus
    sampling only, and vLLM's default is no top-k, so both backends sample the same distribution.
    """

    def __init__(self, model_id: str, device: str = "cpu", dtype: Any = None):
        from raydebias.models import load_model

        self.model_id = model_id
        self.model, self.tokenizer = load_model(model_id, "causal_lm", device=device, dtype=dtype)
        # A debiasing method's inference-time change (raydebias.baselines.base.Intervention), set by its user
        # (evaluation's Generate actor, which also attaches its hooks): its logits processors are built per
        # generate() call from the encoded prompts.
        self.intervention: Any = None
        self.tokenizer.padding_side = "left"
        self.tokenizer.truncation_side = "left"  # keep the end of an over-long prompt (GenParams doc)
        self.device = self.model.device
        self.eos = _eos_ids(self.tokenizer.eos_token_id, getattr(self.model.generation_config, "eos_token_id", None))
        self.context = context_length(self.model.config)
        self._clamp_warned: set[tuple[int, int]] = set()

    def generate(self, prompts: list[str], params: GenParams) -> list[list[Generation]]:
        import torch

        if not prompts:
            return []
        max_new = clamp_max_new_tokens(params.max_new_tokens, self.context, params.min_prompt_tokens)
        _warn_clamped(self, params, max_new)
        limit = _input_limit(params, self.context)
        enc = self.tokenizer(list(prompts), return_tensors="pt", padding=True,
                             truncation=limit is not None, max_length=limit).to(self.device)
        beam = params.num_beams > 1
        # Beam scores (eq. 1-2) and token log-probs from one teacher-forced pass over the returned beams
        # instead of HF's per-step full-vocabulary scores (steps x beams x vocab floats: GBs at the paper's
        # 8 beams x 128 tokens), whenever beam search's log-probs are the model's own (no logits processor).
        rescore = beam and self._beam_logprobs_are_the_models(params)
        kwargs: dict[str, Any] = {
            "max_new_tokens": max_new,
            "do_sample": params.do_sample,
            "num_beams": params.num_beams,
            "num_return_sequences": params.num_return_sequences,
            "repetition_penalty": params.repetition_penalty,
            "pad_token_id": self.tokenizer.pad_token_id,
            "return_dict_in_generate": True,
            # HF returns sequences_scores only with output_scores: asked for when they cannot be rescored.
            "output_scores": (params.output_scores or beam) and not rescore,
        }
        if params.do_sample:
            kwargs.update(temperature=params.temperature, top_p=params.top_p, top_k=0)
        if beam:
            kwargs["length_penalty"] = params.length_penalty
        if params.stop:
            from transformers import StoppingCriteriaList

            kwargs["stopping_criteria"] = StoppingCriteriaList(
                [stop_criteria(self.tokenizer, params.stop, enc["input_ids"].shape[1])])
        if self.intervention is not None and (procs := self.intervention.logits_processors(
                self.model, self.tokenizer, prompt_ids=enc["input_ids"], prompt_mask=enc["attention_mask"])):
            from transformers import LogitsProcessorList

            if beam or params.num_return_sequences > 1:
                raise ValueError(f"{type(self.intervention).__name__}: its logits processor supports one greedy or "
                                 "sampled sequence per prompt (num_beams=1, num_return_sequences=1)")
            kwargs["logits_processor"] = LogitsProcessorList(procs)
        if params.seed is not None:
            torch.manual_seed(params.seed)  # all devices
        with torch.no_grad():
            out = self.model.generate(**enc, **kwargs)
        prompt_len = enc["input_ids"].shape[1]
        continuations = out.sequences[:, prompt_len:].tolist()  # (B * n, T): prompt removed by position
        scores, logprobs = self._scores(out, enc["attention_mask"], params, rescore)
        n = params.num_return_sequences
        results: list[list[Generation]] = []
        for p in range(len(prompts)):
            row = []
            for k in range(p * n, (p + 1) * n):
                ids = continuations[k][: _cut_at_eos(continuations[k], self.eos)]
                row.append(Generation(
                    text=cut_at_stop(self.tokenizer.decode(ids, skip_special_tokens=True), params.stop),
                    score=scores[k] if scores is not None else None,
                    token_logprobs=logprobs[k][: len(ids)] if logprobs is not None else None,
                    token_ids=ids,
                ))
            results.append(row)
        return results

    def _scores(self, out: Any, prompt_mask: Any, params: GenParams,
                rescore: bool) -> tuple[list[float] | None, list[list[float]] | None]:
        """(beam scores or None, per-token log-probs or None) of ``generate``'s output ``out``: rescored from
        one teacher-forced pass, or read from HF's per-step scores."""
        beam = params.num_beams > 1
        if rescore:
            lp, lengths = self.sequence_logprobs(prompt_mask, out.sequences, params.num_return_sequences)
            scores = (lp.sum(-1) / lengths.double() ** params.length_penalty).tolist()
            return scores, (lp.tolist() if params.output_scores else None)
        logprobs = None
        if params.output_scores:
            logprobs = self.model.compute_transition_scores(
                out.sequences, out.scores, getattr(out, "beam_indices", None) if beam else None,
                normalize_logits=True,
            ).float().cpu().tolist()
        return (out.sequences_scores.float().cpu().tolist() if beam else None), logprobs

    # Generation-config fields that make HF add a logits processor to beam search (transformers'
    # GenerationMixin._get_logits_processor), with the value that adds none.
    # (repetition_penalty is not here: generate() always passes GenParams' own, checked directly.)
    _NO_PROCESSOR = {"encoder_repetition_penalty": 1.0, "no_repeat_ngram_size": 0,
                     "encoder_no_repeat_ngram_size": 0, "bad_words_ids": None, "min_length": 0, "min_new_tokens": None,
                     "forced_bos_token_id": None, "forced_eos_token_id": None, "suppress_tokens": None,
                     "begin_suppress_tokens": None, "exponential_decay_length_penalty": None, "sequence_bias": None,
                     "diversity_penalty": 0.0, "guidance_scale": None, "watermarking_config": None}

    def _beam_logprobs_are_the_models(self, params: GenParams) -> bool:
        """Whether beam search ranks by the model's own log-softmax (no processor changes it), so that a
        teacher-forced pass reproduces its scores. Else the caller asks HF for its per-step scores."""
        if params.do_sample or params.repetition_penalty != 1.0 or self.intervention is not None:
            return False
        gc = self.model.generation_config
        return all(_neutral(getattr(gc, k, None), neutral) for k, neutral in self._NO_PROCESSOR.items())

    def sequence_logprobs(self, prompt_mask: Any, sequences: Any, n: int,
                          max_logits_bytes: int = 256 * 2**20) -> tuple[Any, Any]:
        """Log-probability of every generated token of ``sequences`` (``generate``'s output: left-padded
        prompts, each repeated ``n`` times, then the continuations), from one teacher-forced forward per
        chunk of rows, fp32 log-softmax as beam search takes it. Returns ((R, L) float64 log-probs, 0 after
        a row's end; (R,) generated lengths, the end-of-sequence token included: HF's beam-score length).
        The chunks keep at most ``max_logits_bytes`` of logits alive."""
        import torch

        p = prompt_mask.shape[1]
        gen = sequences[:, p:]
        r, length = gen.shape
        is_eos = torch.zeros_like(gen, dtype=torch.bool)
        for e in self.eos:
            is_eos |= gen == e
        first = torch.where(is_eos.any(-1), is_eos.int().argmax(-1), torch.full((r,), length - 1, device=gen.device))
        lengths = first + 1
        gen_mask = torch.arange(length, device=gen.device)[None, :] < lengths[:, None]
        mask = torch.cat([prompt_mask.repeat_interleave(n, dim=0), gen_mask.long()], dim=1)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        vocab = self.model.get_output_embeddings().weight.shape[0]
        rows = max(1, max_logits_bytes // (4 * (length + 1) * vocab))
        out = torch.zeros((r, length), dtype=torch.float64)
        with torch.no_grad():
            for a in range(0, r, rows):
                b = min(r, a + rows)
                logits = self.model(input_ids=sequences[a:b], attention_mask=mask[a:b], position_ids=positions[a:b],
                                    logits_to_keep=length + 1).logits[:, :-1]  # (c, L, V): predict token t of gen
                lp = torch.log_softmax(logits.float(), dim=-1).gather(-1, gen[a:b, :, None])[..., 0]
                out[a:b] = (lp * gen_mask[a:b]).double().cpu()
        return out, lengths.cpu()


class VLLMGenerator:
    """vLLM ``LLM.generate`` for GPU clusters (the ``gpu`` extra). Sampling and greedy decoding only.

    Beam search is refused with a ValueError: vLLM's ``LLM.beam_search`` ranks and returns beams by
    ``cum_logprob / len(prompt + output) ** length_penalty`` (``vllm.beam_search.get_beam_search_score``),
    while HF's ``sequences_scores`` divide by the OUTPUT length only. With the paper's length penalty
    of 2.0 and ~500-token prompts the two keep different beams, so eq. 1's argmin would differ from the
    paper's. ``low_confidence`` therefore needs backend=hf.

    Prompts are tokenized with the matching HF tokenizer (same truncation as :class:`HFGenerator`) and
    handed to vLLM as token ids. Which GPU is used is vLLM's choice (Ray sets CUDA_VISIBLE_DEVICES for
    an actor); ``gpu_memory_utilization`` should match the GPU share the actor was given.
    """

    def __init__(self, model_id: str, device: str = "cuda", dtype: Any = None, *,
                 gpu_memory_utilization: float = 0.9, **llm_kwargs: Any):
        try:
            import vllm
        except ImportError as exc:
            raise ImportError(VLLM_MISSING.format(why=f" ({exc})")) from exc
        from raydebias.models import load_tokenizer, resolve_device, resolve_model

        if resolve_device(device) == "cpu":
            raise ValueError(f"backend=vllm runs on CUDA GPUs only, but device={device!r} resolves to cpu; "
                             "use backend=hf on CPU machines")
        self._vllm = vllm
        self.model_id = model_id
        resolved = resolve_model(model_id)
        self.tokenizer = load_tokenizer(model_id)
        self.llm = vllm.LLM(model=resolved, tokenizer=resolved, trust_remote_code=False,
                            dtype=str(dtype).removeprefix("torch.") if dtype is not None else "auto",
                            gpu_memory_utilization=gpu_memory_utilization, **llm_kwargs)
        self.eos = _eos_ids(self.tokenizer.eos_token_id)
        try:
            self.context: int | None = int(self.llm.llm_engine.model_config.max_model_len)
        except (AttributeError, TypeError, ValueError):
            self.context = None
        self._clamp_warned: set[tuple[int, int]] = set()

    def generate(self, prompts: list[str], params: GenParams) -> list[list[Generation]]:
        if params.num_beams > 1:
            raise ValueError(
                f"backend=vllm does not do beam search here (num_beams={params.num_beams}): vLLM normalises "
                "beam scores by prompt+output length, HF (and the paper's eq. 2) by output length only, so "
                "the kept beams and their scores would differ. Use backend=hf for low_confidence."
            )
        if not prompts:
            return []
        max_new = clamp_max_new_tokens(params.max_new_tokens, self.context, params.min_prompt_tokens)
        _warn_clamped(self, params, max_new)
        limit = _input_limit(params, self.context)
        token_prompts = []
        for prompt in prompts:
            ids = self.tokenizer(prompt)["input_ids"]
            if limit is not None and len(ids) > limit:
                ids = ids[-limit:]  # left truncation, as HFGenerator
            token_prompts.append({"prompt_token_ids": ids})
        sampling = self._vllm.SamplingParams(
            n=params.num_return_sequences,
            temperature=params.temperature if params.do_sample else 0.0,  # vLLM: 0 means greedy
            top_p=params.top_p if params.do_sample else 1.0,
            repetition_penalty=params.repetition_penalty,
            max_tokens=max_new,
            logprobs=1 if params.output_scores else None,  # the chosen token's logprob is always included
            seed=params.seed,
            stop=list(params.stop) or None,
        )
        outputs = self.llm.generate(token_prompts, sampling, use_tqdm=False)
        results = []
        for request in outputs:  # vLLM returns requests in input order
            row = []
            for completion in request.outputs:
                ids = list(completion.token_ids)
                ids = ids[: _cut_at_eos(ids, self.eos)]
                token_logprobs = None
                if params.output_scores and completion.logprobs is not None:
                    token_logprobs = [float(step[t].logprob) for step, t in zip(completion.logprobs, ids, strict=False)]
                row.append(Generation(text=cut_at_stop(self.tokenizer.decode(ids, skip_special_tokens=True), params.stop),
                                      score=None, token_logprobs=token_logprobs, token_ids=ids))
            results.append(row)
        return results


def make_generator(backend: str, model_id: str, device: str = "cpu", *, gpu_fraction: float = 1.0,
                   **kwargs: Any) -> Generator:
    """The generator for a config's ``backend`` field ("hf" or "vllm").

    ``gpu_fraction`` is the share of the GPU the calling actor pool reserved (``resources.num_gpus``):
    vLLM pre-allocates ``gpu_memory_utilization`` of the whole device, so it is capped at 90% of that
    share, otherwise two pools sharing a GPU would each try to take 90% of it.
    """
    if backend == "hf":
        return HFGenerator(model_id, device, **kwargs)
    if backend == "vllm":
        kwargs.setdefault("gpu_memory_utilization", round(0.9 * min(max(gpu_fraction, 0.05), 1.0), 3))
        return VLLMGenerator(model_id, device, **kwargs)
    raise ValueError(f"unknown generator backend {backend!r}; use one of {', '.join(BACKENDS)}")

