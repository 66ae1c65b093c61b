"""Text generation for GPTNeoXForCausalLM: greedy, sampling and beam search, token-for-token as
transformers 5.24 decodes.

Layout
------
``generate()`` resolves the settings (:class:`GenerationConfig`: the call's keywords over the
``generation_config=`` object over ``model.generation_config`` over transformers' defaults),
checks every input before any work, then runs one of two loops:

* :func:`_sample` — greedy (argmax) or sampling (``torch.multinomial``, one draw per step on the
  global random stream, exactly as transformers draws, so a seed gives the same tokens);
* :func:`_beam_search` — transformers' vectorised beam search (top-K over all beams, finished
  hypotheses kept in a static buffer, the same early-stopping heuristic and length penalty).

Both call :func:`prefill` once on the prompt, then :func:`decode_step` per new token: the lean
``model.gpt_neox.core`` on one position with a :class:`~neox.cache.KVCache` preallocated to the
final length, and the head on that position only. The sequence, attention mask and position ids
live in preallocated buffers; each step passes slice views of them, so nothing is concatenated
and no per-step Python work grows with the sequence (the repetition penalty, the n-gram ban and
beam search do read the whole sequence each step, as tensors, as transformers does).

``cache_implementation="static"`` swaps ``decode_step`` for a step whose shapes never change (the
cache slot is a tensor, attention spans the whole preallocated cache), compiled with
``torch.compile`` automatically on CUDA (CUDA graphs: ``mode="reduce-overhead"``) and on any device
when a ``compile_config`` is given — see "static-shape decoding" below.

Logits processors are plain functions ``(input_ids, scores) -> scores`` built once per call and
applied in transformers' order (penalties and constraints, then the user's processors, then the
sampling warpers temperature → top-k → top-p → min-p → typical-p → ε → η). User processors and
stopping criteria are any such callables, transformers' own classes included; so is a streamer:
anything with ``put(tensor)`` and ``end()``.

One host synchronisation per step decides stopping (end-of-sequence, stop strings, user
criteria, streaming) and at the same time checks the step's logits for NaN/inf. With nothing to
decide on the host (only a length limit) on an accelerator, the check runs every
``_DEFERRED_CHECK_EVERY`` steps instead, so the host never waits on the device.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import sys
import time
import unicodedata
import warnings
import weakref
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from queue import Queue
from typing import Any

from .files import atomic_write_text
from .hub import HubOptions, resolve_file
from .outputs import ModelOutput

logger = logging.getLogger(__name__)

__all__ = [
    "GenerationConfig",
    "generate",
    "prefill",
    "decode_step",
    "GenerateDecoderOnlyOutput",
    "GenerateBeamDecoderOnlyOutput",
    "TextStreamer",
    "TextIteratorStreamer",
    "NonFiniteLogitsError",
    "GenerateArgumentError",
]

GENERATION_CONFIG_NAME = "generation_config.json"

# With only a length limit to stop on, an accelerator checks for NaN/inf logits this often
# (in steps) instead of waiting on the device every step.
_DEFERRED_CHECK_EVERY = 32


class GenerateArgumentError(TypeError, ValueError):
    """An argument generate() does not know or cannot honour.

    Both a TypeError (Python's error for an unexpected keyword) and a ValueError (what transformers
    raises for an unused model keyword), so either ``except`` catches it.
    """


class NonFiniteLogitsError(RuntimeError):
    """The model produced NaN or inf logits (typically an fp16 overflow upstream)."""


# ============================================================================== configuration

# transformers' values for settings left unset everywhere (GenerationConfig._get_default_generation_params).
_DEFAULTS: dict[str, Any] = {
    "max_length": 20,
    "min_length": 0,
    "do_sample": False,
    "use_cache": True,
    "early_stopping": False,
    "num_beams": 1,
    "temperature": 1.0,
    "top_k": 50,
    "top_p": 1.0,
    "typical_p": 1.0,
    "epsilon_cutoff": 0.0,
    "eta_cutoff": 0.0,
    "repetition_penalty": 1.0,
    "length_penalty": 1.0,
    "no_repeat_ngram_size": 0,
    "num_return_sequences": 1,
    "output_scores": False,
    "output_logits": False,
    "output_attentions": False,
    "output_hidden_states": False,
    "return_dict_in_generate": False,
    "remove_invalid_values": False,
    "renormalize_logits": False,
}

# What an explicit None keyword means where it differs from the default.
_OFF: dict[str, Any] = {"top_k": 0}

# transformers settings neox does not implement, with the values that mean "off". Set to anything
# else they would change the tokens, so generate() refuses them rather than ignore them.
_UNIMPLEMENTED: dict[str, tuple[Any, ...]] = {
    "top_h": (None,),
    "encoder_repetition_penalty": (None, 1.0),
    "encoder_no_repeat_ngram_size": (None, 0),
    "exponential_decay_length_penalty": (None,),
    "sequence_bias": (None,),
    "guidance_scale": (None, 1.0),
    "token_healing": (None, False),
    "watermarking_config": (None,),
    "penalty_alpha": (None,),
    "dola_layers": (None,),
    "num_beam_groups": (None, 1),
    "diversity_penalty": (None, 0.0),
    "constraints": (None,),
    "force_words_ids": (None,),
    "low_memory": (None, False),
    "use_mtp": (None, False),
    "prompt_lookup_num_tokens": (None,),
    "assistant_early_exit": (None,),
    "speculation_type": (None,),
}

# transformers settings that never change the tokens (cache layout, compilation, assistant tuning,
# encoder-decoder only). cache_implementation ("static"), compile_config and disable_compile select
# the static-shape, optionally compiled decode step (see _static_plan); the rest are ignored.
_IGNORED = {
    "cache_implementation", "cache_config", "max_cache_len", "compile_config", "disable_compile",
    "prefill_chunk_size", "continuous_batching_config", "decoder_start_token_id", "is_assistant",
    "num_assistant_tokens", "num_assistant_tokens_schedule", "assistant_confidence_threshold",
    "max_matching_ngram_size", "assistant_lookbehind", "target_lookbehind", "assistant_ensemble_weight",
}

# Keys of generation_config.json that describe the file, not the decoding.
_METADATA = {"transformers_version", "_commit_hash"}


@dataclass
class GenerationConfig:
    """Decoding settings; field names are generation_config.json's keys (transformers' names).

    None means "transformers' default", resolved when generate() runs: max_length 20 (i.e. 20 new
    tokens), top_k 50, temperature 1.0, top_p 1.0, num_beams 1, and so on. Keys this class does
    not know are kept in ``extra`` and written back unchanged.
    """

    # length
    max_length: int | None = None
    max_new_tokens: int | None = None
    min_length: int | None = None
    min_new_tokens: int | None = None
    early_stopping: bool | str | None = None
    max_time: float | None = None
    stop_strings: str | list[str] | None = None
    # strategy
    do_sample: bool | None = None
    num_beams: int | None = None
    use_cache: bool | None = None
    # logits processing
    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    min_p: float | None = None
    typical_p: float | None = None
    epsilon_cutoff: float | None = None
    eta_cutoff: float | None = None
    repetition_penalty: float | None = None
    length_penalty: float | None = None
    no_repeat_ngram_size: int | None = None
    bad_words_ids: list[list[int]] | None = None
    renormalize_logits: bool | None = None
    forced_bos_token_id: int | None = None
    forced_eos_token_id: int | list[int] | None = None
    remove_invalid_values: bool | None = None
    suppress_tokens: list[int] | None = None
    begin_suppress_tokens: list[int] | None = None
    # outputs
    num_return_sequences: int | None = None
    output_attentions: bool | None = None
    output_hidden_states: bool | None = None
    output_scores: bool | None = None
    output_logits: bool | None = None
    return_dict_in_generate: bool | None = None
    # special tokens
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_model_config(cls, config: Any) -> "GenerationConfig":
        return cls(
            bos_token_id=config.bos_token_id,
            eos_token_id=copy.deepcopy(config.eos_token_id),
            pad_token_id=config.pad_token_id,
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "GenerationConfig":
        names = _field_names()
        known = {k: v for k, v in data.items() if k in names}
        extra = {k: v for k, v in data.items() if k not in names and k not in _METADATA and k != "extra"}
        return cls(**copy.deepcopy(known), extra=copy.deepcopy(extra))

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: copy.deepcopy(getattr(self, f.name)) for f in fields(self) if f.name != "extra"}
        out = {k: v for k, v in out.items() if v is not None}
        out.update(copy.deepcopy(self.extra))
        return out

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def update(self, **kwargs: Any) -> dict[str, Any]:
        """Set the given settings; return the keywords that are not generation settings."""
        names = _field_names()
        unused = {}
        for key, value in kwargs.items():
            if key in names:
                setattr(self, key, value)
            elif key in _UNIMPLEMENTED or key in _IGNORED:
                self.extra[key] = value
            else:
                unused[key] = value
        return unused

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs: Any) -> "GenerationConfig":
        options = HubOptions.pop_from(kwargs)
        if kwargs:
            raise TypeError(f"GenerationConfig.from_pretrained got unknown arguments: {sorted(kwargs)}")
        path = resolve_file(pretrained_model_name_or_path, GENERATION_CONFIG_NAME, options, required=True)
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not valid JSON: {e}") from None
        if not isinstance(data, dict):
            raise ValueError(f"{path} must hold a JSON object")
        return cls.from_dict(data)

    def save_pretrained(self, save_directory: str | os.PathLike) -> None:
        Path(save_directory).mkdir(parents=True, exist_ok=True)
        atomic_write_text(Path(save_directory) / GENERATION_CONFIG_NAME, self.to_json_string())

    def validate(self) -> None:
        """Raise ValueError for settings that cannot work, whatever the model and inputs."""
        _validate(_with_defaults(self))


def _field_names() -> set[str]:
    return {f.name for f in fields(GenerationConfig)} - {"extra"}


def _as_generation_config(value: Any, what: str) -> GenerationConfig:
    """A neox GenerationConfig from ours, a dict, or anything with ``to_dict()`` (transformers')."""
    if isinstance(value, GenerationConfig):
        return copy.deepcopy(value)
    if isinstance(value, dict):
        return GenerationConfig.from_dict(value)
    to_dict = getattr(value, "to_dict", None)
    if callable(to_dict):
        data = to_dict()
        if isinstance(data, dict):
            data = {k: v for k, v in data.items() if not k.startswith("_") or k == "_from_model_config"}
            return GenerationConfig.from_dict(data)
    raise TypeError(f"{what} must be a GenerationConfig (neox's or transformers'), or a dict; got {type(value).__name__}")


def _with_defaults(config: GenerationConfig) -> GenerationConfig:
    config = copy.deepcopy(config)
    for key, value in _DEFAULTS.items():
        if getattr(config, key) is None:
            setattr(config, key, value)
    return config


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _validate(cfg: GenerationConfig) -> None:
    """Checks of the resolved settings (defaults filled). Sampling-only values are checked only
    when sampling, as transformers does (elsewhere they are ignored with a warning)."""

    def need(ok: bool, message: str) -> None:
        if not ok:
            raise ValueError(message)

    for name in ("max_length", "min_length", "num_beams", "num_return_sequences", "no_repeat_ngram_size"):
        value = getattr(cfg, name)
        need(_is_int(value) and value >= 0, f"`{name}` must be a non-negative integer, got {value!r}")
    need(cfg.num_beams >= 1, f"`num_beams` must be at least 1, got {cfg.num_beams}")
    need(cfg.num_return_sequences >= 1, f"`num_return_sequences` must be at least 1, got {cfg.num_return_sequences}")
    if cfg.max_new_tokens is not None:
        need(_is_int(cfg.max_new_tokens) and cfg.max_new_tokens > 0,
             f"`max_new_tokens` must be a positive integer, got {cfg.max_new_tokens!r}")
    if cfg.min_new_tokens is not None:
        need(_is_int(cfg.min_new_tokens) and cfg.min_new_tokens >= 0,
             f"`min_new_tokens` must be a non-negative integer, got {cfg.min_new_tokens!r}")
    need(cfg.early_stopping in (True, False, "never"),
         f"`early_stopping` must be True, False or 'never', got {cfg.early_stopping!r}")
    if cfg.max_time is not None:
        need(_is_number(cfg.max_time) and cfg.max_time > 0, f"`max_time` must be a positive number of seconds, got {cfg.max_time!r}")
    need(_is_number(cfg.repetition_penalty) and cfg.repetition_penalty > 0,
         f"`repetition_penalty` must be a positive number, got {cfg.repetition_penalty!r}")
    need(_is_number(cfg.length_penalty), f"`length_penalty` must be a number, got {cfg.length_penalty!r}")

    if cfg.num_return_sequences > 1:
        if cfg.num_beams == 1 and not cfg.do_sample:
            raise ValueError(
                f"num_return_sequences={cfg.num_return_sequences} needs sampling (do_sample=True) or beam search "
                f"(num_beams >= num_return_sequences): greedy decoding gives one sequence per prompt"
            )
        if cfg.num_beams > 1 and cfg.num_return_sequences > cfg.num_beams:
            raise ValueError(
                f"num_return_sequences ({cfg.num_return_sequences}) must be <= num_beams ({cfg.num_beams})"
            )

    if cfg.do_sample:
        t = cfg.temperature
        need(_is_number(t) and t > 0,
             f"`temperature` must be a positive number when sampling, got {t!r}"
             + (" (for greedy decoding pass do_sample=False)" if _is_number(t) and t == 0 else ""))
        need(_is_int(cfg.top_k) and cfg.top_k >= 0, f"`top_k` must be a non-negative integer (0 disables it), got {cfg.top_k!r}")
        need(_is_number(cfg.top_p) and 0 < cfg.top_p <= 1, f"`top_p` must be in (0, 1], got {cfg.top_p!r}")
        if cfg.min_p is not None:
            need(_is_number(cfg.min_p) and 0 <= cfg.min_p <= 1, f"`min_p` must be in [0, 1], got {cfg.min_p!r}")
        need(_is_number(cfg.typical_p) and 0 < cfg.typical_p <= 1, f"`typical_p` must be in (0, 1], got {cfg.typical_p!r}")
        for name in ("epsilon_cutoff", "eta_cutoff"):
            value = getattr(cfg, name)
            need(_is_number(value) and 0 <= value < 1, f"`{name}` must be in [0, 1) (0 disables it), got {value!r}")

    if cfg.bad_words_ids is not None:
        words = cfg.bad_words_ids
        need(isinstance(words, list) and len(words) > 0 and all(isinstance(w, list) and w for w in words),
             f"`bad_words_ids` must be a non-empty list of non-empty lists of token ids, got {words!r}")
        need(all(_is_int(t) and t >= 0 for w in words for t in w),
             f"`bad_words_ids` must hold non-negative integer token ids, got {words!r}")
    for name in ("suppress_tokens", "begin_suppress_tokens"):
        value = getattr(cfg, name)
        if value is not None:
            need(isinstance(value, (list, tuple)) and all(_is_int(t) and t >= 0 for t in value),
                 f"`{name}` must be a list of non-negative integer token ids, got {value!r}")
    if cfg.stop_strings is not None:
        strings = [cfg.stop_strings] if isinstance(cfg.stop_strings, str) else cfg.stop_strings
        need(isinstance(strings, (list, tuple)) and len(strings) > 0 and all(isinstance(s, str) and s for s in strings),
             f"`stop_strings` must be a non-empty string or a list of them, got {cfg.stop_strings!r}")
    for key, off in _UNIMPLEMENTED.items():
        value = cfg.extra.get(key)
        if value not in off:
            raise ValueError(
                f"`{key}`={value!r} is a transformers generation setting neox does not implement; "
                f"it would change the tokens, so it is refused rather than ignored"
            )


def _sampling_only_warnings(cfg: GenerationConfig, user_set: set[str]) -> None:
    """transformers' "flags not valid and may be ignored" warning, for the user's own settings."""
    ignored = []
    if not cfg.do_sample:
        for name, neutral in (("temperature", 1.0), ("top_p", 1.0), ("typical_p", 1.0), ("top_k", 50),
                              ("min_p", None), ("epsilon_cutoff", 0.0), ("eta_cutoff", 0.0)):
            if name in user_set and getattr(cfg, name) not in (None, neutral):
                ignored.append(name)
    if cfg.num_beams == 1:
        for name, neutral in (("early_stopping", False), ("length_penalty", 1.0)):
            if name in user_set and getattr(cfg, name) not in (None, neutral):
                ignored.append(name)
    if not cfg.return_dict_in_generate:
        for name in ("output_scores", "output_logits", "output_attentions", "output_hidden_states"):
            if name in user_set and getattr(cfg, name) is True:
                ignored.append(name)
    if ignored:
        logger.warning("The following generation flags are not valid and may be ignored: %s", ignored)


# ============================================================================== outputs


class GenerateDecoderOnlyOutput(ModelOutput):
    """``sequences`` (N, prompt + new); per step ``scores`` (processed) and ``logits`` (raw), each
    (N, V); ``attentions`` / ``hidden_states`` per step, per layer; ``past_key_values`` (the cache)."""

    _fields = ("sequences", "scores", "logits", "attentions", "hidden_states", "past_key_values")


class GenerateBeamDecoderOnlyOutput(ModelOutput):
    """As GenerateDecoderOnlyOutput, plus ``sequences_scores`` (length-penalised beam scores, with
    output_scores) and ``beam_indices`` (N, new): the row each token extended, step by step."""

    _fields = ("sequences", "sequences_scores", "scores", "logits", "beam_indices", "attentions",
               "hidden_states", "past_key_values")


# ============================================================================== streamers


class TextStreamer:
    """Print text to stdout as it is generated (batch size 1), word by word.

    Works as ``generate(..., streamer=TextStreamer(tokenizer))``: generate() calls :meth:`put`
    with the prompt, then with each new token, then :meth:`end`. ``skip_prompt=True`` leaves the
    prompt out; ``decode_kwargs`` go to ``tokenizer.decode`` (e.g. ``skip_special_tokens=True``).
    Text is held back until a word is complete, so multi-token characters never print half-made.
    """

    def __init__(self, tokenizer: Any, skip_prompt: bool = False, **decode_kwargs: Any) -> None:
        self.tokenizer = tokenizer
        self.skip_prompt = skip_prompt
        self.decode_kwargs = decode_kwargs
        self.token_cache: list[int] = []
        self.print_len = 0
        self.next_tokens_are_prompt = True

    def put(self, value: Any) -> None:
        if len(value.shape) > 1 and value.shape[0] > 1:
            raise ValueError("TextStreamer only supports batch size 1")
        if len(value.shape) > 1:
            value = value[0]
        if self.skip_prompt and self.next_tokens_are_prompt:
            self.next_tokens_are_prompt = False
            return
        self.token_cache.extend(value.tolist())
        text = self.tokenizer.decode(self.token_cache, **self.decode_kwargs)
        if text.endswith("\n"):
            # Flush at a newline, keeping the last token as context for the next line's spacing.
            printable = text[self.print_len :]
            self.token_cache = self.token_cache[-1:]
            self.print_len = len(self.tokenizer.decode(self.token_cache, **self.decode_kwargs))
        elif text and _is_cjk(ord(text[-1])):
            printable = text[self.print_len :]
            self.print_len += len(printable)
        elif all(c.isspace() or unicodedata.category(c)[0] in "LMN" for c in text[self.print_len :]):
            # Letters, marks, digits and spaces are final; symbols may still change (e.g. "\ufffd").
            printable = text[self.print_len :]
            self.print_len += len(printable)
        else:
            printable = text[self.print_len : text.rfind(" ") + 1]
            self.print_len += len(printable)
        self.on_finalized_text(printable)

    def end(self) -> None:
        if self.token_cache:
            text = self.tokenizer.decode(self.token_cache, **self.decode_kwargs)
            printable = text[self.print_len :]
            self.token_cache = []
            self.print_len = 0
        else:
            printable = ""
        self.next_tokens_are_prompt = True
        self.on_finalized_text(printable, stream_end=True)

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        """Write finished text to stdout (a newline after the last piece). Override to redirect."""
        sys.stdout.write(text + ("\n" if stream_end else ""))
        sys.stdout.flush()


class TextIteratorStreamer(TextStreamer):
    """A TextStreamer whose text is read by iterating over it, typically while generate() runs in
    another thread::

        streamer = TextIteratorStreamer(tokenizer, skip_prompt=True)
        Thread(target=model.generate, kwargs=dict(input_ids=ids, streamer=streamer)).start()
        for piece in streamer:
            ...

    ``timeout`` (seconds) bounds each wait for the next piece (``queue.Empty`` when it runs out).
    """

    def __init__(self, tokenizer: Any, skip_prompt: bool = False, timeout: float | None = None, **decode_kwargs: Any) -> None:
        super().__init__(tokenizer, skip_prompt, **decode_kwargs)
        self.text_queue: Queue = Queue()
        self.stop_signal = None
        self.timeout = timeout

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        self.text_queue.put(text, timeout=self.timeout)
        if stream_end:
            self.text_queue.put(self.stop_signal, timeout=self.timeout)

    def __iter__(self) -> "TextIteratorStreamer":
        return self

    def __next__(self) -> str:
        value = self.text_queue.get(timeout=self.timeout)
        if value == self.stop_signal:
            raise StopIteration()
        return value


def _is_cjk(cp: int) -> bool:
    return (0x4E00 <= cp <= 0x9FFF or 0x3400 <= cp <= 0x4DBF or 0x20000 <= cp <= 0x2A6DF
            or 0x2A700 <= cp <= 0x2B73F or 0x2B740 <= cp <= 0x2B81F or 0x2B820 <= cp <= 0x2CEAF
            or 0xF900 <= cp <= 0xFAFF or 0x2F800 <= cp <= 0x2FA1F)


# ============================================================================== logits processors
#
# Each is a plain function (input_ids (N, L), scores (N, V)) -> new scores, built once per call.
# None modifies its input in place (the raw logits may be kept for output_logits). The formulas are
# transformers' own, operation for operation, so the processed scores are bitwise the same.

Processor = Callable[[Any, Any], Any]


def repetition_penalty(penalty: float, prompt_ignore_length: Any = None) -> Processor:
    """Divide the positive scores, multiply the negative, of every token already in the sequence
    (CTRL). ``prompt_ignore_length`` (N,): leading positions (left padding) not to count."""
    import torch
    import torch.nn.functional as F

    def apply(input_ids, scores):
        V = scores.shape[-1]
        if prompt_ignore_length is not None:
            positions = torch.arange(input_ids.shape[1], device=input_ids.device)
            input_ids = input_ids.masked_fill(positions[None, :] < prompt_ignore_length[:, None], V)
        # Ids past the head's vocabulary (and the masked ones) land in a spare column, then dropped.
        input_ids = input_ids.clamp(max=V)
        padded = F.pad(scores, (0, 1))
        score = torch.gather(padded, 1, input_ids)
        score = torch.where(score < 0, score * penalty, score / penalty)
        return padded.scatter(1, input_ids, score)[..., :V]

    return apply


def no_repeat_ngram(size: int) -> Processor:
    """Ban every token that would complete an n-gram already in the sequence."""
    torch = _torch()

    def apply(input_ids, scores):
        L = input_ids.shape[-1]
        if L < size:
            return scores
        prefix = input_ids[:, L + 1 - size :]  # the n-1 tokens a new n-gram would start with
        windows = input_ids.unfold(dimension=1, size=size, step=1)  # (N, L-size+1, size)
        matches = (windows[..., :-1] == prefix.unsqueeze(1)).all(dim=-1)
        V = scores.shape[-1]
        banned = scores.new_zeros((scores.shape[0], V + 1), dtype=torch.bool)
        banned.scatter_(1, torch.where(matches, windows[..., -1].clamp(max=V), V), True)
        return scores.masked_fill(banned[:, :V], -float("inf"))

    return apply


def bad_words(bad_words_ids: list[list[int]], eos: list[int], vocab_size: int, device: Any) -> Processor:
    """Ban single tokens outright, and a sequence's last token wherever its prefix was just generated.
    An end-of-sequence token alone is never banned (transformers drops such entries). Applied as
    transformers does, as an additive bias of -inf."""
    torch = _torch()
    words = [w for w in bad_words_ids if not (len(w) == 1 and w[0] in eos)]
    single = torch.zeros(vocab_size, dtype=torch.float, device=device)
    for w in words:
        if len(w) == 1:
            single[w[0]] = -float("inf")
    by_prefix: dict[int, list[list[int]]] = {}
    for w in words:
        if len(w) > 1:
            by_prefix.setdefault(len(w) - 1, []).append(w)
    groups = [
        (torch.tensor([w[:-1] for w in group], device=device), torch.tensor([w[-1] for w in group], device=device),
         torch.full((len(group),), -float("inf"), device=device))
        for group in by_prefix.values()
    ]

    def apply(input_ids, scores):
        bias = torch.zeros_like(scores)
        bias += single
        for prefixes, last, minus_inf in groups:
            n = prefixes.shape[1]
            if n > input_ids.shape[1]:
                continue
            hit = (input_ids[:, None, -n:] == prefixes).all(dim=-1)  # (N, words)
            bias.index_add_(1, last, torch.where(hit, minus_inf, 0.0).to(bias.dtype))
        return scores + bias

    return apply


def min_length(length: int, eos_mask: Any) -> Processor:
    """No end-of-sequence while the sequence (prompt included) is shorter than ``length``."""
    torch = _torch()

    def apply(input_ids, scores):
        if input_ids.shape[-1] < length:
            return torch.where(eos_mask, -math.inf, scores)
        return scores

    return apply


def min_new_tokens(prompt_length: int, count: int, eos_mask: Any) -> Processor:
    """No end-of-sequence before ``count`` new tokens."""
    torch = _torch()

    def apply(input_ids, scores):
        if input_ids.shape[-1] - prompt_length < count:
            return torch.where(eos_mask, -math.inf, scores)
        return scores

    return apply


def prefix_allowed_tokens(fn: Callable[[int, Any], list[int]], num_beams: int) -> Processor:
    """Only the tokens ``fn(batch_id, sequence)`` allows (constrained decoding)."""
    torch = _torch()

    def apply(input_ids, scores):
        mask = torch.full_like(scores, -math.inf)
        batch_size = input_ids.shape[0] // num_beams
        for batch_id in range(batch_size):
            for beam_id in range(num_beams):
                row = batch_id * num_beams + beam_id
                allowed = fn(batch_id, input_ids[row])
                if len(allowed) == 0:
                    raise ValueError(f"prefix_allowed_tokens_fn returned no allowed token for batch item {batch_id}: "
                                     f"the constraint cannot be satisfied")
                mask[row, allowed] = 0
        processed = scores + mask
        # Where every allowed token already scores -inf, force them at 0 so the constraint holds.
        stuck = processed.amax(dim=-1).isneginf().view(batch_size, -1).all(dim=-1, keepdim=True)
        return torch.where(stuck.repeat_interleave(num_beams, dim=0), mask, processed)

    return apply


def force_token_at(length: int, token_ids: Any) -> Processor:
    """Force ``token_ids`` (one of them) when the sequence is ``length`` long (forced BOS / EOS)."""
    torch = _torch()

    def apply(input_ids, scores):
        if input_ids.shape[-1] == length:
            forced = torch.full_like(scores, -math.inf)
            forced[:, token_ids] = 0
            return forced
        return scores

    return apply


def remove_invalid_values(input_ids, scores):
    """NaN → 0, ±inf → the dtype's largest finite value (opt-in, remove_invalid_values=True)."""
    torch = _torch()
    out = torch.where(scores != scores, 0.0, scores)
    out = torch.where(scores == float("inf"), torch.finfo(scores.dtype).max, out)
    return torch.where(scores == -float("inf"), torch.finfo(scores.dtype).min, out)


def suppress_tokens(token_mask: Any) -> Processor:
    torch = _torch()

    def apply(input_ids, scores):
        return torch.where(token_mask, -float("inf"), scores)

    return apply


def suppress_tokens_at(begin_index: int, token_mask: Any) -> Processor:
    torch = _torch()

    def apply(input_ids, scores):
        if input_ids.shape[-1] == begin_index:
            return torch.where(token_mask, -float("inf"), scores)
        return scores

    return apply


def temperature(value: float) -> Processor:
    def apply(input_ids, scores):
        return scores / value

    return apply


def top_k(k: int, min_tokens_to_keep: int = 1) -> Processor:
    k = max(k, min_tokens_to_keep)
    torch = _torch()

    def apply(input_ids, scores):
        kk = min(k, scores.size(-1))
        remove = scores < torch.topk(scores, kk)[0][..., -1, None]
        return scores.masked_fill(remove, -float("inf"))

    return apply


def top_p(p: float, min_tokens_to_keep: int = 1) -> Processor:
    """Nucleus: keep the smallest set of most likely tokens whose probability reaches ``p``."""
    torch = _torch()

    def apply(input_ids, scores):
        sorted_logits, sorted_indices = torch.sort(scores, descending=False)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        remove_sorted = cumulative <= (1 - p)
        remove_sorted[..., -min_tokens_to_keep:] = 0
        remove = remove_sorted.scatter(1, sorted_indices, remove_sorted)
        return scores.masked_fill(remove, -float("inf"))

    return apply


def min_p(p: float, min_tokens_to_keep: int = 1) -> Processor:
    """Keep tokens at least ``p`` × the most likely token's probability."""
    torch = _torch()

    def apply(input_ids, scores):
        probs = torch.softmax(scores, dim=-1)
        remove = probs < p * probs.amax(dim=-1, keepdim=True)
        k = min(min_tokens_to_keep, probs.shape[-1])
        remove.scatter_(-1, torch.topk(probs, k, dim=-1).indices, False)
        return scores.masked_fill(remove, -float("inf"))

    return apply


def typical_p(mass: float, min_tokens_to_keep: int = 1) -> Processor:
    """Locally typical sampling: keep the tokens whose surprisal is closest to the entropy, up to ``mass``."""
    torch = _torch()

    def apply(input_ids, scores):
        logp = torch.nn.functional.log_softmax(scores, dim=-1)
        entropy = -(logp * torch.exp(logp)).nansum(-1, keepdim=True)
        shifted = torch.abs((-logp) - entropy)
        sorted_scores, sorted_indices = torch.sort(shifted, descending=False)
        cumulative = scores.gather(-1, sorted_indices).softmax(dim=-1).cumsum(dim=-1)
        last = (cumulative < mass).sum(dim=1)
        last.clamp_(max=sorted_scores.shape[-1] - 1)
        remove_sorted = sorted_scores > sorted_scores.gather(1, last.view(-1, 1))
        remove_sorted[..., :min_tokens_to_keep] = 0
        remove = remove_sorted.scatter(1, sorted_indices, remove_sorted)
        return scores.masked_fill(remove, -float("inf"))

    return apply


def epsilon_cutoff(epsilon: float, min_tokens_to_keep: int = 1) -> Processor:
    torch = _torch()

    def apply(input_ids, scores):
        remove = scores.softmax(dim=-1) < epsilon
        k = min(min_tokens_to_keep, scores.size(-1))
        remove = remove & (scores < torch.topk(scores, k)[0][..., -1, None])
        return scores.masked_fill(remove, -float("inf"))

    return apply


def eta_cutoff(epsilon: float, device: Any, min_tokens_to_keep: int = 1) -> Processor:
    torch = _torch()
    eps = torch.tensor(epsilon, device=device)

    def apply(input_ids, scores):
        probs = scores.softmax(dim=-1)
        entropy = torch.distributions.Categorical(logits=scores).entropy()
        eta = torch.min(eps, torch.sqrt(eps) * torch.exp(-entropy))[..., None]
        remove = probs < eta
        k = min(min_tokens_to_keep, scores.size(-1))
        remove = remove & (scores < torch.topk(scores, k)[0][..., -1, None])
        return scores.masked_fill(remove, -float("inf"))

    return apply


def renormalize(input_ids, scores):
    return scores.log_softmax(dim=-1)


def _torch():
    import torch

    return torch


# ============================================================================== stop strings


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte ↔ printable-character table used by byte-level BPE vocabularies."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


class _StopStrings:
    """Stop a row once its text ends with a stop string — the string may end inside the last
    token, as in transformers. Each token's text (its bytes, for byte-level vocabularies) is
    tabled once; each step joins the last few tokens' texts on the host and searches them."""

    def __init__(self, tokenizer: Any, stop_strings: Sequence[str]) -> None:
        backend = self._backend(tokenizer)
        mode = self._matching_mode(backend)
        vocab = tokenizer.get_vocab()
        byte_decoder = {c: b for b, c in _bytes_to_unicode().items()} if mode == "byte_level" else None
        table: list[bytes | str] = [b"" if mode else ""] * (max(vocab.values()) + 1)
        fallback: list[tuple[str, int]] = []
        for token, index in vocab.items():
            text = self._token_bytes(token, mode, byte_decoder)
            if text is None:
                fallback.append((token, index))
            else:
                table[index] = text
        if fallback:
            for (token, index), text in zip(fallback, self._texts_in_context(tokenizer, [t for t, _ in fallback])):
                table[index] = text.encode("utf-8") if mode else text
        self.table = table
        self.strings = tuple(s.encode("utf-8") for s in stop_strings) if mode else tuple(stop_strings)
        self.window = max(len(s) for s in self.strings)  # every token is at least one character long

    @staticmethod
    def _backend(tokenizer: Any) -> Any:
        try:
            import tokenizers
        except ImportError:  # pragma: no cover - tokenizers is a dependency
            tokenizers = None
        if tokenizers is not None and isinstance(tokenizer, tokenizers.Tokenizer):
            return tokenizer
        return getattr(tokenizer, "backend_tokenizer", None) or getattr(tokenizer, "_tokenizer", None)

    @staticmethod
    def _matching_mode(backend: Any) -> str | None:
        decoder = getattr(backend, "decoder", None)
        if decoder is None:
            return None
        if type(decoder).__name__ == "ByteLevel":
            return "byte_level"
        state = getattr(decoder, "__getstate__", lambda: None)()
        if isinstance(state, (bytes, str)):
            try:
                state = json.loads(state)
            except json.JSONDecodeError:
                state = None

        def has(node: Any, kind: str) -> bool:
            if isinstance(node, dict):
                return node.get("type") == kind or any(has(v, kind) for v in node.values())
            if isinstance(node, list):
                return any(has(v, kind) for v in node)
            return False

        if has(state, "ByteFallback"):
            return "byte_fallback"
        if has(state, "ByteLevel"):
            return "byte_level"
        return None

    @staticmethod
    def _token_bytes(token: str, mode: str | None, byte_decoder: dict[str, int] | None) -> bytes | None:
        if mode == "byte_level":
            if byte_decoder is not None and all(c in byte_decoder for c in token):
                return bytes(byte_decoder[c] for c in token)
            return None
        if mode == "byte_fallback":
            if len(token) == 6 and token.startswith("<0x") and token.endswith(">") and \
                    all(c in "0123456789abcdefABCDEF" for c in token[3:5]):
                return bytes([int(token[3:5], 16)])
        return None

    @staticmethod
    def _texts_in_context(tokenizer: Any, tokens: list[str]) -> list[str]:
        """Each token's text as it reads after other text (so leading-space markers resolve)."""
        prefix = "abcdef"
        convert = getattr(tokenizer, "convert_tokens_to_string", None)
        if callable(convert) and callable(getattr(tokenizer, "convert_ids_to_tokens", None)):
            base = tokenizer.convert_ids_to_tokens(tokenizer(prefix, add_special_tokens=False)["input_ids"])
            out = []
            for token in tokens:
                text = convert(list(base) + [token])
                out.append(text[text.index(prefix) + len(prefix):])
            return out
        # A bare tokenizers.Tokenizer: decode each id after the prefix's ids.
        vocab = tokenizer.get_vocab()
        base_ids = tokenizer.encode(prefix, add_special_tokens=False).ids
        out = []
        for token in tokens:
            text = tokenizer.decode(base_ids + [vocab[token]], skip_special_tokens=False)
            out.append(text[text.index(prefix) + len(prefix):] if prefix in text else text)
        return out

    def __call__(self, input_ids: Any, scores: Any = None) -> Any:
        torch = _torch()
        tails = input_ids[:, -self.window:].tolist()
        table, size = self.table, len(self.table)
        empty = table[0][:0] if table else b""
        hits = []
        for row in tails:
            pieces = [table[t] if 0 <= t < size else empty for t in row]
            text = empty.join(pieces)
            last = len(pieces[-1]) if pieces else 0
            end = len(text)
            # A match must end inside the last token: start at or after end − last − len(s) + 1.
            hits.append(any(text.find(s, max(0, end - last - len(s) + 1)) != -1 for s in self.strings))
        return torch.tensor(hits, dtype=torch.bool, device=input_ids.device)


# ============================================================================== prefill / decode


def prefill(
    model: Any,
    input_ids: Any,
    inputs_embeds: Any,
    attention_mask: Any,
    position_ids: Any,
    cache: Any,
    output_attentions: bool = False,
    output_hidden_states: bool = False,
) -> tuple[Any, Any]:
    """Run the prompt through the model's public (checked) forward; return the last position's
    logits (N, V) in fp32 and the base model's output. Fills ``cache`` when one is given."""
    out = model.gpt_neox(
        input_ids=input_ids, inputs_embeds=inputs_embeds, attention_mask=attention_mask,
        position_ids=position_ids, past_key_values=cache, use_cache=cache is not None,
        output_attentions=output_attentions, output_hidden_states=output_hidden_states, return_dict=True,
    )
    return model.embed_out(out.last_hidden_state[:, -1]).float(), out


def decode_step(
    model: Any,
    input_ids: Any,
    attention_mask: Any,
    position_ids: Any,
    cache: Any,
    output_attentions: bool = False,
    output_hidden_states: bool = False,
) -> tuple[Any, Any]:
    """One decoding step on the unchecked core: ``input_ids`` (N, T) — one new token per row with a
    cache, the whole sequence without — → the last position's logits (N, V) in fp32."""
    out = model.gpt_neox.core(
        input_ids, attention_mask=attention_mask, position_ids=position_ids, cache=cache,
        output_attentions=output_attentions, output_hidden_states=output_hidden_states,
    )
    return model.embed_out(out.last_hidden_state[:, -1]).float(), out


# ============================================================================== static-shape decoding
#
# generate(..., cache_implementation="static") decodes through one step function whose tensor
# shapes never change: the cache is preallocated to a capacity rounded up to _STATIC_CAPACITY_STEP,
# each step writes its key/value at a cache slot given as a tensor (``core(..., cache_position=)``)
# and attends over the whole capacity with the unfilled slots masked. That is what torch.compile
# (no recompilation from step to step) and CUDA graphs (fixed addresses) need. As in transformers,
# the step is compiled automatically on CUDA, and on any device when a ``compile_config`` is
# given; ``disable_compile=True`` keeps it eager. A compiled step keeps its cache between calls
# of the same shape (its addresses are baked into the CUDA graph): the cache a static call returns
# is reused, and overwritten, by the next static call with the same batch and capacity.

_STATIC_CAPACITY_STEP = 256

# model -> {"cache": KVCache, "steps": {compile options: compiled function}}; no state on the model.
_STATIC_STATE: "weakref.WeakKeyDictionary[Any, dict[str, Any]]" = weakref.WeakKeyDictionary()


def _static_step(model: Any, input_ids: Any, attention_mask: Any, position_ids: Any, cache: Any,
                 cache_position: Any) -> Any:
    """The function that is compiled: one position per row → (N, V) fp32 logits."""
    out = model.gpt_neox.core(input_ids, attention_mask=attention_mask, position_ids=position_ids, cache=cache,
                              cache_position=cache_position)
    return model.embed_out(out.last_hidden_state[:, -1]).float()


class _StaticDecode:
    """The static-shape decode step of one generate() call (see above)."""

    def __init__(self, cache: Any, step: Callable, compiled: bool, describe: str) -> None:
        torch = _torch()
        self.cache = cache
        self.step = step
        self.compiled = compiled
        self.describe = describe
        self.mask = None  # (N, capacity) bool when the prompt is padded
        self.slots = torch.arange(cache.capacity, device=cache.keys[0].device)  # cache positions as tensors
        self.cudagraphs = compiled and cache.keys[0].device.type == "cuda"
        self._ran = False

    def __call__(self, model: Any, input_ids: Any, position_ids: Any) -> Any:
        torch = _torch()
        length = self.cache.length  # < capacity: _static_plan sized the cache for the whole call
        # Fresh copies: the buffers' strides depend on the call's lengths (even for a (1, 1) view),
        # and a step compiled for one stride would recompile for every new max_new_tokens.
        ids = input_ids.clone(memory_format=torch.contiguous_format)
        pos = position_ids.clone(memory_format=torch.contiguous_format) if position_ids is not None else None
        if self.cudagraphs:
            torch.compiler.cudagraph_mark_step_begin()
        try:
            logits = self.step(model, ids, self.mask, pos, self.cache, self.slots[length : length + 1])
        except Exception as e:
            if not self.compiled or self._ran:
                raise
            raise RuntimeError(
                f"the compiled decode step failed on its first call ({self.describe}): {type(e).__name__}: "
                f"{str(e).strip().splitlines()[0] if str(e).strip() else ''} — pass disable_compile=True to decode "
                f"with the static cache uncompiled, or drop cache_implementation='static'"
            ) from e
        self._ran = True
        self.cache.advance(1)
        # A CUDA graph's output is overwritten by its next replay; processors and output_logits keep it.
        return logits.clone() if self.cudagraphs else logits


def _static_requested(cfg: GenerationConfig) -> bool:
    impl = cfg.extra.get("cache_implementation")
    if impl in (None, "dynamic"):
        return False
    if impl != "static":
        logger.warning("cache_implementation=%r is not implemented by neox: decoding with its regular "
                       "preallocated cache", impl)
        return False
    return True


def _compile_options(cfg: GenerationConfig, device: Any) -> dict[str, Any] | None:
    """torch.compile keywords for the static step, or None to run it eagerly."""
    if cfg.extra.get("disable_compile"):
        return None
    given = cfg.extra.get("compile_config")
    if given is None and device.type != "cuda":
        return None  # transformers compiles automatically on CUDA only
    options: dict[str, Any] = {"fullgraph": False, "dynamic": False, "backend": "inductor",
                               "mode": "reduce-overhead" if device.type == "cuda" else "default", "options": None}
    if given is not None:
        data = given if isinstance(given, dict) else {k: getattr(given, k) for k in options if hasattr(given, k)}
        unknown = set(data) - set(options)
        if unknown:
            raise ValueError(f"compile_config: unknown keys {sorted(unknown)}; expected some of {sorted(options)}")
        options.update(data)
    if options["options"] is not None:
        options["mode"] = None  # torch.compile takes mode or options, not both
    if device.type != "cuda" and options["mode"] == "reduce-overhead":
        options["mode"] = "default"  # CUDA graphs only exist on CUDA
    return options


def _static_plan(model: Any, cfg: GenerationConfig, N: int, need: int, device: Any, past: Any,
                 use_cache: bool) -> _StaticDecode | None:
    """The static decode step for this call, or None (with a warning) where it cannot apply."""
    torch = _torch()
    why = []
    if cfg.num_beams > 1:
        why.append("beam search (the cache is reordered every step)")
    if past is not None:
        why.append("a past_key_values to continue")
    if not use_cache:
        why.append("use_cache=False")
    if cfg.output_attentions or cfg.output_hidden_states:
        why.append("output_attentions/output_hidden_states")
    if why:
        logger.warning("cache_implementation='static' does not apply with %s: decoding with the regular cache",
                       " or ".join(why))
        return None
    from .cache import KVCache

    options = _compile_options(cfg, device)
    capacity = -(-need // _STATIC_CAPACITY_STEP) * _STATIC_CAPACITY_STEP
    dtype = model.get_input_embeddings().weight.dtype  # the activations' dtype (a quantised head has no .weight)
    if options is None:
        cache = KVCache.for_model(model.config, N, capacity, dtype, device)
        return _StaticDecode(cache, _static_step, compiled=False, describe="eager")
    state = _STATIC_STATE.setdefault(model, {"cache": None, "steps": {}})
    cache = state["cache"]
    if (cache is None or cache.batch_size != N or cache.capacity != capacity or cache.keys[0].dtype != dtype
            or cache.keys[0].device != device):
        cache = KVCache.for_model(model.config, N, capacity, dtype, device)
        if device.type == "cuda":
            for t in (*cache.keys, *cache.values):
                torch._dynamo.mark_static_address(t)  # CUDA graphs may then write it in place
        state["cache"] = cache
    else:
        for t in (*cache.keys, *cache.values):
            t.zero_()
        cache.length = 0
    key = json.dumps(options, sort_keys=True, default=repr)  # a backend may be a callable
    step = state["steps"].get(key)
    if step is None:
        step = torch.compile(_static_step, **options)
        state["steps"][key] = step
    describe = f"torch.compile backend={options['backend']!r} mode={options['mode']!r} on {device.type}"
    return _StaticDecode(cache, step, compiled=True, describe=describe)


# ============================================================================== generate()

# Keywords generate() takes besides the generation settings.
_MODEL_KWARGS = {"input_ids", "attention_mask", "inputs_embeds", "position_ids", "past_key_values", "cache",
                 "tokenizer", "logits_to_keep", "return_dict"}


def generate(
    model: Any,
    inputs: Any = None,
    generation_config: Any = None,
    logits_processor: Iterable[Callable] | None = None,
    stopping_criteria: Iterable[Callable] | None = None,
    prefix_allowed_tokens_fn: Callable[[int, Any], list[int]] | None = None,
    synced_gpus: bool | None = None,
    assistant_model: Any = None,
    streamer: Any = None,
    negative_prompt_ids: Any = None,
    negative_prompt_attention_mask: Any = None,
    custom_generate: Any = None,
    **kwargs: Any,
) -> Any:
    """Generate token ids; transformers' ``generate()`` with the same arguments and the same tokens.

    Args:
        inputs / input_ids: prompt ids (B, T), left-padded for batches (1-D is read as one prompt).
            Omit both (and inputs_embeds) to start from ``bos_token_id``.
        attention_mask: (B, T), 1 for tokens, 0 for padding. Without it, padding is inferred from
            ``pad_token_id`` when that differs from the end-of-sequence ids. Position ids follow
            the mask (each row counts from its first real token).
        inputs_embeds: (B, T, D) prompt embeddings instead of ids (sequences then hold only the
            new tokens, unless input_ids of the same shape are given too).
        past_key_values / cache: a KVCache (or legacy tuple) holding a prefix of input_ids; only
            the rest of the prompt is run, and the cache is extended in place.
        generation_config: a neox or transformers GenerationConfig (or dict); keywords override it,
            and it overrides ``model.generation_config``.
        logits_processor / stopping_criteria: lists of callables ``(input_ids, scores)`` returning
            new scores / a bool per row; transformers' LogitsProcessor/StoppingCriteria work as is.
        streamer: anything with ``put(tensor)`` / ``end()`` (neox's or transformers' TextStreamer).
        tokenizer: needed with ``stop_strings``.
        **settings: any GenerationConfig field — max_new_tokens, max_length, min_new_tokens,
            do_sample, temperature, top_k, top_p, min_p, typical_p, repetition_penalty,
            no_repeat_ngram_size, bad_words_ids, suppress_tokens, num_beams, length_penalty,
            early_stopping, num_return_sequences, eos_token_id, pad_token_id, stop_strings,
            use_cache, return_dict_in_generate, output_scores, output_logits, ...

    Returns:
        A LongTensor (N, prompt + new) — rows that finished early are padded with ``pad_token_id``
        (the first end-of-sequence id when unset) — or, with ``return_dict_in_generate=True``, a
        GenerateDecoderOnlyOutput / GenerateBeamDecoderOnlyOutput.

    Raises:
        ValueError before any work for impossible settings or inputs (GenerateArgumentError, also
        a TypeError, for an unknown keyword); NonFiniteLogitsError naming the step when the model
        emits NaN/inf logits (transformers would silently emit token 0).
    """
    unsupported = {
        "assistant_model": assistant_model, "negative_prompt_ids": negative_prompt_ids,
        "negative_prompt_attention_mask": negative_prompt_attention_mask, "custom_generate": custom_generate,
    }
    for name, value in unsupported.items():
        if value is not None:
            raise GenerateArgumentError(f"generate(): `{name}` (assisted/guided/custom decoding) is not supported by neox")
    if synced_gpus:
        raise GenerateArgumentError("generate(): synced_gpus=True (DeepSpeed/FSDP multi-GPU decoding) is not supported by neox")
    if "trust_remote_code" in kwargs or "assistant_tokenizer" in kwargs:
        bad = "trust_remote_code" if "trust_remote_code" in kwargs else "assistant_tokenizer"
        raise GenerateArgumentError(f"generate(): `{bad}` is not supported by neox")

    run = _prepare(model, inputs, generation_config, logits_processor, stopping_criteria,
                   prefix_allowed_tokens_fn, streamer, kwargs)
    torch = _torch()
    with torch.inference_mode():
        if run.cfg.num_beams > 1:
            result = _beam_search(model, run)
        else:
            result = _sample(model, run)
    return _finish(run, result)


@dataclass
class _Run:
    """Everything generate() resolved and allocated before decoding."""

    cfg: GenerationConfig
    device: Any
    out_device: Any
    N: int                      # rows decoded: batch × max(num_beams, num_return_sequences)
    batch_size: int             # prompts
    ids_len: int                # prompt columns in the returned sequences (0 with inputs_embeds alone)
    prompt_len: int             # prompt positions the model sees (ids or embeddings)
    past_len: int               # of them, already in a user's cache
    max_length: int             # in transformers' units: ids_len + new tokens
    seq: Any                    # (N, max_length) token buffer; the prompt in [:ids_len]
    embeds: Any                 # (N, prompt_len, D) or None
    mask: Any                   # (N, prompt_len + new) 1/0 buffer, or None when nothing is padded
    positions: Any              # (N, prompt_len + new) position ids, or None for 0, 1, 2, ...
    cache: Any                  # KVCache or None
    static: Any                 # _StaticDecode when decoding with cache_implementation="static", else None
    processors: list[Processor]
    criteria: list[Callable]    # device-side stopping criteria (beyond eos and max_length)
    eos: Any                    # (E,) tensor or None
    eos_list: list[int]
    pad: int | None
    stop_strings: Any
    streamer: Any
    check_finite: bool
    host_sync_each_step: bool
    start_time: float


def _prepare(model, inputs, generation_config, logits_processor, stopping_criteria, prefix_allowed_tokens_fn,
             streamer, kwargs) -> _Run:
    torch = _torch()
    config = model.config

    # 1. Settings: call keywords > generation_config= > model.generation_config > defaults.
    model_gc = getattr(model, "generation_config", None)
    model_gc = (_as_generation_config(model_gc, "model.generation_config") if model_gc is not None
                else GenerationConfig.from_model_config(config))
    cfg = _as_generation_config(generation_config, "generation_config") if generation_config is not None else GenerationConfig()
    has_default_max = kwargs.get("max_length") is None and cfg.max_length is None and model_gc.max_length is None
    has_default_min = kwargs.get("min_length") is None and cfg.min_length is None and model_gc.min_length is None
    for name in _field_names():
        if getattr(cfg, name) is None:
            setattr(cfg, name, copy.deepcopy(getattr(model_gc, name)))
    for key, value in model_gc.extra.items():
        cfg.extra.setdefault(key, copy.deepcopy(value))
    cfg = _with_defaults(cfg)
    model_kwargs: dict[str, Any] = {}
    unknown = []
    user_set = set()
    for key, value in kwargs.items():
        if key in _MODEL_KWARGS:
            model_kwargs[key] = value
        elif key in _field_names():
            setattr(cfg, key, value)
            user_set.add(key)
        elif key in _UNIMPLEMENTED or key in _IGNORED:
            cfg.extra[key] = value
        else:
            unknown.append(key)
    if unknown:
        raise GenerateArgumentError(
            f"generate() got unknown keyword argument(s) {sorted(unknown)}; generation settings are "
            f"GenerationConfig's fields, model inputs are {sorted(_MODEL_KWARGS - {'tokenizer'})}"
        )
    # An explicit None keyword switches a setting off, as in transformers (top_k=None: no top-k,
    # eos_token_id=None: no end-of-sequence); settings that cannot be off get their default.
    for key in user_set:
        if getattr(cfg, key) is None:
            setattr(cfg, key, _OFF.get(key, _DEFAULTS.get(key)))
    _validate(cfg)
    _sampling_only_warnings(cfg, user_set)
    for name in ("logits_to_keep", "return_dict"):
        model_kwargs.pop(name, None)  # the decode loop keeps only the last position anyway
    tokenizer = model_kwargs.pop("tokenizer", None)
    if cfg.stop_strings is not None and tokenizer is None:
        raise ValueError("stop_strings need the model's tokenizer: pass generate(..., tokenizer=tokenizer)")
    if cfg.num_beams > 1 and streamer is not None:
        raise ValueError("a streamer cannot be used with beam search (num_beams > 1): the beams change until the end")
    if streamer is not None and not (callable(getattr(streamer, "put", None)) and callable(getattr(streamer, "end", None))):
        raise TypeError(f"streamer must have put(tensor) and end() methods; got {type(streamer).__name__}")
    user_processors = _callables(logits_processor, "logits_processor")
    user_criteria = _callables(stopping_criteria, "stopping_criteria")
    if prefix_allowed_tokens_fn is not None and not callable(prefix_allowed_tokens_fn):
        raise TypeError("prefix_allowed_tokens_fn must be callable (batch_id, input_ids) -> list of allowed ids")

    # 2. Inputs.
    device = model.get_input_embeddings().weight.device
    vocab = model.embed_out.out_features
    input_ids = model_kwargs.pop("input_ids", None)
    if inputs is not None and input_ids is not None:
        raise ValueError("pass the prompt once: as `inputs` (positional) or as `input_ids`, not both")
    input_ids = inputs if inputs is not None else input_ids
    embeds = model_kwargs.pop("inputs_embeds", None)
    mask = model_kwargs.pop("attention_mask", None)
    position_ids = model_kwargs.pop("position_ids", None)
    past = model_kwargs.pop("past_key_values", None)
    cache_kw = model_kwargs.pop("cache", None)
    if past is not None and cache_kw is not None and past is not cache_kw:
        raise ValueError("pass the cache as past_key_values or as cache, not both")
    past = past if past is not None else cache_kw
    out_device = device

    if input_ids is not None:
        if not isinstance(input_ids, torch.Tensor):
            raise TypeError(f"input_ids must be a torch.Tensor (B, T), got {type(input_ids).__name__}")
        if input_ids.dim() == 1:
            input_ids = input_ids[None]
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be (batch, seq_len), got shape {tuple(input_ids.shape)}")
        from .validation import check_input_ids

        check_input_ids(input_ids, model.gpt_neox.embed_in.num_embeddings)
        out_device = input_ids.device
        input_ids = input_ids.to(device=device, dtype=torch.long)
    if embeds is not None:
        if not isinstance(embeds, torch.Tensor) or embeds.dim() != 3 or embeds.shape[-1] != config.hidden_size:
            shape = tuple(embeds.shape) if isinstance(embeds, torch.Tensor) else type(embeds).__name__
            raise ValueError(f"inputs_embeds must be (batch, seq_len, {config.hidden_size}), got {shape}")
        if embeds.shape[1] == 0:
            raise ValueError("inputs_embeds is empty (seq_len 0)")
        if input_ids is not None and input_ids.shape != embeds.shape[:2]:
            raise ValueError(f"input_ids {tuple(input_ids.shape)} and inputs_embeds {tuple(embeds.shape)} must "
                             f"describe the same tokens (same batch and length)")
        out_device = embeds.device if input_ids is None else out_device
        embeds = embeds.to(device)
    if input_ids is None and embeds is None:
        if cfg.bos_token_id is None:
            raise ValueError("no prompt given and no bos_token_id to start from: pass input_ids (or set bos_token_id)")
        batch = mask.shape[0] if isinstance(mask, torch.Tensor) and mask.dim() == 2 else 1
        input_ids = torch.full((batch, 1), int(cfg.bos_token_id), dtype=torch.long, device=device)
        if isinstance(mask, torch.Tensor):
            out_device = mask.device
    if input_ids is not None and input_ids.shape[1] == 0:
        raise ValueError("input_ids is empty (seq_len 0): give at least one token, or none at all to start from BOS")
    B = input_ids.shape[0] if input_ids is not None else embeds.shape[0]
    if B == 0:
        raise ValueError("empty batch: input_ids/inputs_embeds have batch size 0")
    prompt_len = embeds.shape[1] if embeds is not None else input_ids.shape[1]
    ids_len = input_ids.shape[1] if input_ids is not None else 0

    # Special tokens: eos as a list, pad falling back to the first eos.
    eos_list = _token_list(cfg.eos_token_id, "eos_token_id")
    if any(t < 0 for t in eos_list):
        logger.warning("eos_token_id should hold non-negative ids, got %s: generation will not stop at it", eos_list)
    pad = cfg.pad_token_id
    if pad is not None and not _is_int(pad):
        if isinstance(pad, torch.Tensor) and pad.numel() == 1:
            pad = int(pad)
        else:
            raise ValueError(f"pad_token_id must be an integer, got {pad!r}")
    if pad is None and eos_list:
        if mask is None and B > 1:
            logger.warning("The attention mask and the pad token id were not set, with a batched input. "
                           "Pass your input's attention_mask to obtain reliable results.")
        pad = eos_list[0]
    for name, ids in (("bad_words_ids", [t for w in (cfg.bad_words_ids or []) for t in w]),
                      ("suppress_tokens", cfg.suppress_tokens or []),
                      ("begin_suppress_tokens", cfg.begin_suppress_tokens or []),
                      ("forced_eos_token_id", _token_list(cfg.forced_eos_token_id, "forced_eos_token_id")),
                      ("forced_bos_token_id", _token_list(cfg.forced_bos_token_id, "forced_bos_token_id"))):
        big = [t for t in ids if t >= vocab]
        if big:
            raise ValueError(f"`{name}` holds token id(s) {big} outside the model's vocabulary of {vocab}")

    # Attention mask: given (2-D, the prompt's shape), or inferred from pad tokens when pad is not eos.
    mask_given = mask is not None
    if mask is not None:
        if not isinstance(mask, torch.Tensor):
            raise TypeError(f"attention_mask must be a torch.Tensor, got {type(mask).__name__}")
        if mask.dim() != 2:
            raise ValueError("the attention_mask passed to generate must be 2-D (batch, seq_len)")
        if tuple(mask.shape) != (B, prompt_len):
            raise ValueError(f"attention_mask has shape {tuple(mask.shape)}; expected (batch, prompt length) = {(B, prompt_len)}")
        mask = mask.to(device=device, dtype=torch.long)
    else:
        mask = torch.ones(B, prompt_len, dtype=torch.long, device=device)
        if input_ids is not None and pad is not None and input_ids.shape[1] == prompt_len and pad not in eos_list:
            if bool((input_ids == pad).any()):
                mask = input_ids.ne(pad).long()
    if input_ids is not None and pad is not None and B > 1:
        if bool((mask[:, -1] == 0).any() if mask_given else (input_ids[:, -1] == pad).any()):
            logger.warning("A decoder-only architecture is being used, but right-padding was detected! For correct "
                           "generation results, please set `padding_side='left'` when initializing the tokenizer.")
    if position_ids is not None:
        if not isinstance(position_ids, torch.Tensor):
            raise TypeError(f"position_ids must be a torch.Tensor, got {type(position_ids).__name__}")
        if position_ids.dim() == 1:
            position_ids = position_ids[None].expand(B, -1)
        if tuple(position_ids.shape) != (B, prompt_len):
            raise ValueError(f"position_ids has shape {tuple(position_ids.shape)}; expected {(B, prompt_len)}")
        position_ids = position_ids.to(device=device, dtype=torch.long)
    padded = not bool((mask == 1).all())

    # 3. Expand rows for beams / several samples per prompt.
    expand = max(cfg.num_beams, cfg.num_return_sequences)
    if expand > 1:
        input_ids = input_ids.repeat_interleave(expand, dim=0) if input_ids is not None else None
        embeds = embeds.repeat_interleave(expand, dim=0) if embeds is not None else None
        mask = mask.repeat_interleave(expand, dim=0)
        position_ids = position_ids.repeat_interleave(expand, dim=0) if position_ids is not None else None
    N = B * expand

    # 4. Lengths, as transformers resolves them (max_length counts the prompt's ids).
    embeds_only = embeds is not None and ids_len != prompt_len
    if cfg.max_new_tokens is not None:
        if not has_default_max:
            logger.warning("Both `max_new_tokens` (=%s) and `max_length` (=%s) seem to have been set. "
                           "`max_new_tokens` will take precedence.", cfg.max_new_tokens, cfg.max_length)
        max_length = cfg.max_new_tokens + ids_len
    elif embeds_only and not has_default_max:
        max_length = cfg.max_length - prompt_len
    elif has_default_max:
        max_length = min(cfg.max_length + ids_len, config.max_position_embeddings)
    else:
        max_length = cfg.max_length
    if cfg.min_new_tokens is not None:
        if not has_default_min:
            logger.warning("Both `min_new_tokens` (=%s) and `min_length` (=%s) seem to have been set. "
                           "`min_new_tokens` will take precedence.", cfg.min_new_tokens, cfg.min_length)
        min_len = cfg.min_new_tokens + ids_len
    elif embeds_only:
        min_len = max(cfg.min_length - prompt_len, 0)
    else:
        min_len = cfg.min_length
    if has_default_max and cfg.max_new_tokens is None:
        warnings.warn(f"Using the model-agnostic default `max_length` (={max_length}) to control the generation "
                      f"length. We recommend setting `max_new_tokens` to control the maximum length of the "
                      f"generation.", UserWarning, stacklevel=4)
    if ids_len >= max_length:
        raise ValueError(f"Input length of input_ids is {ids_len}, but `max_length` is set to {max_length}: nothing "
                         f"would be generated. Increase `max_length` or, better, set `max_new_tokens`.")
    if min_len > max_length:
        warnings.warn(f"Unfeasible length constraints: the minimum length ({min_len}) is larger than the maximum "
                      f"length ({max_length}); generation will stop at the maximum length.", UserWarning, stacklevel=4)
    new_max = max_length - ids_len

    # 5. The cache, preallocated once to the final length (the last token is never fed back).
    use_cache = bool(cfg.use_cache) or embeds is not None  # embeddings are only seen once: a cache is needed
    past_len = 0
    cache = None
    if past is not None:
        from .cache import KVCache

        if not isinstance(past, KVCache):
            past = KVCache.from_legacy_cache(past, extra_capacity=prompt_len + new_max)
        if past.batch_size != N:
            raise ValueError(f"past_key_values holds batch size {past.batch_size}; this call decodes {N} rows")
        if past.length >= prompt_len:
            raise ValueError(f"past_key_values already holds {past.length} tokens but the prompt has {prompt_len}: "
                             f"pass the whole sequence (the cached tokens plus at least one new one)")
        if embeds is not None:
            raise ValueError("continuing from past_key_values needs input_ids, not inputs_embeds")
        past_len = past.length
        past.reserve(prompt_len + new_max - 1 - past_len)
        cache = past
        use_cache = True
    static = None
    if _static_requested(cfg):
        static = _static_plan(model, cfg, N, prompt_len + new_max - 1, device, past, use_cache)
        if static is not None:
            cache = static.cache
    if cache is None and use_cache:  # (a user's past is already the cache)
        from .cache import KVCache

        cache = KVCache.for_model(config, N, prompt_len + new_max - 1, model.get_input_embeddings().weight.dtype, device)

    # 6. Buffers: the sequence, and (only when needed) the attention mask and position ids.
    seq = torch.empty(N, max_length, dtype=torch.long, device=device)
    if input_ids is not None:
        seq[:, :ids_len] = input_ids
    mask_buf = pos_buf = None
    total = prompt_len + new_max
    if padded or position_ids is not None:
        pos_buf = torch.empty(N, total, dtype=torch.long, device=device)
        if position_ids is not None:
            pos_buf[:, :prompt_len] = position_ids
        else:
            pos_buf[:, :prompt_len] = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)
        pos_buf[:, prompt_len:] = pos_buf[:, prompt_len - 1 : prompt_len] + torch.arange(1, new_max + 1, device=device)
    if padded:
        mask_buf = torch.ones(N, total, dtype=torch.long, device=device)
        mask_buf[:, :prompt_len] = mask
        if static is not None:  # the static step's mask spans the cache's capacity
            static.mask = torch.ones(N, static.cache.capacity, dtype=torch.bool, device=device)
            static.mask[:, :prompt_len] = mask.bool()

    # 7. Processors and stopping criteria.
    processors = _build_processors(cfg, model, N, ids_len, min_len, max_length, mask if padded else None, eos_list,
                                   user_processors, prefix_allowed_tokens_fn, device, vocab)
    stop_strings = None
    if cfg.stop_strings is not None:
        strings = [cfg.stop_strings] if isinstance(cfg.stop_strings, str) else list(cfg.stop_strings)
        stop_strings = _StopStrings(tokenizer, strings)
    eos = torch.tensor(eos_list, dtype=torch.long, device=device) if eos_list else None
    host_sync = bool(eos_list or stop_strings or user_criteria or streamer is not None or cfg.max_time is not None
                     or device.type == "cpu")
    if max_length > config.max_position_embeddings + (prompt_len - ids_len):
        logger.warning("generation may run past the model's max_position_embeddings (%d): max_length is %d",
                       config.max_position_embeddings, max_length)
    return _Run(
        cfg=cfg, device=device, out_device=out_device, N=N, batch_size=B, ids_len=ids_len, prompt_len=prompt_len,
        past_len=past_len, max_length=max_length, seq=seq, embeds=embeds, mask=mask_buf, positions=pos_buf,
        cache=cache, static=static, processors=processors, criteria=user_criteria, eos=eos, eos_list=eos_list, pad=pad,
        stop_strings=stop_strings, streamer=streamer, check_finite=not cfg.remove_invalid_values,
        host_sync_each_step=host_sync, start_time=time.time(),
    )


def _callables(value: Any, name: str) -> list[Callable]:
    if value is None:
        return []
    if callable(value) and not isinstance(value, (list, tuple)):
        value = [value]
    items = list(value)
    for item in items:
        if not callable(item):
            raise TypeError(f"{name} must be a list of callables (input_ids, scores) -> ..., got an item of type "
                            f"{type(item).__name__}")
    return items


def _token_list(value: Any, name: str) -> list[int]:
    if value is None:
        return []
    torch = _torch()
    if isinstance(value, torch.Tensor):
        value = value.tolist()
    if _is_int(value):
        return [value]
    if isinstance(value, (list, tuple)) and all(_is_int(v) for v in value):
        return list(value)
    raise ValueError(f"`{name}` must be an integer or a list of integers, got {value!r}")


def _build_processors(cfg, model, N, ids_len, min_len, max_length, prompt_mask, eos_list, user_processors,
                      prefix_fn, device, vocab) -> list[Processor]:
    """transformers' _get_logits_processor order: constraints, the user's processors, warpers."""
    torch = _torch()
    procs: list[Processor] = []
    eos_mask = None
    if eos_list:
        eos_mask = torch.isin(torch.arange(vocab, device=device), torch.tensor(eos_list, device=device))
    if cfg.repetition_penalty != 1.0:
        ignore = (prompt_mask != 0).int().argmax(dim=1) if prompt_mask is not None else None
        procs.append(repetition_penalty(cfg.repetition_penalty, ignore))
        if ids_len == 0:
            warnings.warn("Passing `repetition_penalty` with `inputs_embeds` and without `input_ids` to `generate` "
                          "will apply the penalty only to newly generated tokens, not to the prompt.", UserWarning)
    if cfg.no_repeat_ngram_size > 0:
        procs.append(no_repeat_ngram(cfg.no_repeat_ngram_size))
        if ids_len == 0:
            warnings.warn("Passing `no_repeat_ngram_size` with `inputs_embeds` and without `input_ids` to `generate` "
                          "will apply n-gram constraints only to newly generated tokens, not to the prompt.", UserWarning)
    if cfg.bad_words_ids is not None:
        procs.append(bad_words(cfg.bad_words_ids, eos_list, vocab, device))
    if eos_mask is not None and cfg.min_length is not None and min_len > 0:
        procs.append(min_length(min_len, eos_mask))
    if eos_mask is not None and cfg.min_new_tokens is not None and cfg.min_new_tokens > 0:
        procs.append(min_new_tokens(ids_len, cfg.min_new_tokens, eos_mask))
    if prefix_fn is not None:
        procs.append(prefix_allowed_tokens(prefix_fn, max(cfg.num_beams, cfg.num_return_sequences)))
    if cfg.forced_bos_token_id is not None:
        procs.append(force_token_at(1, cfg.forced_bos_token_id))
    if cfg.forced_eos_token_id is not None:
        procs.append(force_token_at(max_length - 1, _token_list(cfg.forced_eos_token_id, "forced_eos_token_id")))
    if cfg.remove_invalid_values is True:
        procs.append(remove_invalid_values)
    if cfg.suppress_tokens is not None:
        procs.append(suppress_tokens(_vocab_mask(cfg.suppress_tokens, vocab, device)))
    if cfg.begin_suppress_tokens is not None:
        begin = ids_len if (ids_len > 1 or cfg.forced_bos_token_id is None) else ids_len + 1
        procs.append(suppress_tokens_at(begin, _vocab_mask(cfg.begin_suppress_tokens, vocab, device)))
    procs.extend(user_processors)
    if cfg.do_sample:
        # Beams keep one token more than there are eos ids, so a beam can always continue.
        keep = (len(eos_list) + 1 if eos_list else 2) if cfg.num_beams > 1 else 1
        if cfg.temperature != 1.0:
            procs.append(temperature(cfg.temperature))
        if cfg.top_k != 0:
            procs.append(top_k(cfg.top_k, keep))
        if cfg.top_p < 1.0:
            procs.append(top_p(float(cfg.top_p), keep))
        if cfg.min_p is not None:
            procs.append(min_p(cfg.min_p, keep))
        if cfg.typical_p < 1.0:
            procs.append(typical_p(float(cfg.typical_p), keep))
        if 0.0 < cfg.epsilon_cutoff < 1.0:
            procs.append(epsilon_cutoff(float(cfg.epsilon_cutoff), keep))
        if 0.0 < cfg.eta_cutoff < 1.0:
            procs.append(eta_cutoff(float(cfg.eta_cutoff), device, keep))
    if cfg.renormalize_logits is True:
        procs.append(renormalize)
    return procs


def _vocab_mask(ids: Sequence[int], vocab: int, device: Any) -> Any:
    torch = _torch()
    return torch.isin(torch.arange(vocab, device=device), torch.tensor(list(ids), dtype=torch.long, device=device))


def _process(processors: list[Processor], input_ids: Any, scores: Any) -> Any:
    for proc in processors:
        scores = proc(input_ids, scores)
    return scores


def _nonfinite_rows(logits: Any) -> Any:
    # A row's sum is NaN/inf exactly when the row holds a NaN or an inf (fp32 logits cannot
    # overflow a sum of a vocabulary's worth of finite values): one reduction, not a full mask.
    return ~logits.sum(dim=-1).isfinite()


def _raise_nonfinite(run: _Run, step: int, logits: Any, cause: BaseException | None = None) -> None:
    rows = _nonfinite_rows(logits).nonzero().flatten().tolist()
    dtype = run.cache.keys[0].dtype if run.cache is not None else None
    raise NonFiniteLogitsError(
        f"the model produced NaN/inf logits at generation step {step} (new token {step + 1}), in row(s) "
        f"{rows[:16]}{' ...' if len(rows) > 16 else ''}. This is usually an overflow upstream"
        f"{' in ' + str(dtype).removeprefix('torch.') if dtype is not None else ''}: load the model in bfloat16 "
        f"or float32. (transformers would emit token 0 here without a word.)"
    ) from cause


def _stop_rows(run: _Run, seqs: Any, scores: list | None, new_tokens: Any) -> Any:
    """transformers' stopping criteria, except the length limit (decided on the host): True where a
    row is done. ``new_tokens`` (M,) is seqs[:, -1]; ``scores`` the kept scores (output_scores),
    handed to user criteria as transformers' tuple."""
    torch = _torch()
    done = None
    if run.eos is not None:
        done = torch.isin(new_tokens, run.eos)
    if run.stop_strings is not None:
        hit = run.stop_strings(seqs)
        done = hit if done is None else done | hit
    scores = tuple(scores) if scores is not None and run.criteria else None
    for criterion in run.criteria:
        hit = criterion(seqs, scores)
        hit = torch.as_tensor(hit, device=seqs.device)
        if hit.dim() == 0:
            hit = hit.expand(seqs.shape[0])
        done = hit.bool() if done is None else done | hit.bool()
    return done


def _out_of_time(run: _Run) -> bool:
    return run.cfg.max_time is not None and time.time() - run.start_time > run.cfg.max_time


def _sample(model: Any, run: _Run) -> Any:
    """Greedy decoding or multinomial sampling (transformers' _sample)."""
    torch = _torch()
    cfg = run.cfg
    N, dev = run.N, run.device
    want = cfg.return_dict_in_generate
    scores_out = [] if want and cfg.output_scores else None
    logits_out = [] if want and cfg.output_logits else None
    attn_out = [] if want and cfg.output_attentions else None
    hidden_out = [] if want and cfg.output_hidden_states else None
    flags = dict(output_attentions=attn_out is not None, output_hidden_states=hidden_out is not None)
    unfinished = torch.ones(N, dtype=torch.bool, device=dev)
    track_rows = bool(run.eos_list or run.stop_strings or run.criteria)
    pad = torch.tensor(run.pad if run.pad is not None else 0, dtype=torch.long, device=dev)
    deferred_bad = None if run.host_sync_each_step else torch.zeros(run.max_length, dtype=torch.bool, device=dev)

    if run.streamer is not None:
        run.streamer.put(run.seq[:, : run.ids_len].cpu())

    cur = run.ids_len
    logits, out = prefill(
        model,
        run.seq[:, run.past_len : run.ids_len] if run.embeds is None else None,
        run.embeds,
        run.mask[:, : run.prompt_len] if run.mask is not None else None,
        run.positions[:, run.past_len : run.prompt_len] if run.positions is not None else None,
        run.cache, **flags,
    )
    step = 0
    while True:
        if attn_out is not None:
            attn_out.append(out.attentions)
        if hidden_out is not None:
            hidden_out.append(out.hidden_states)
        bad = _nonfinite_rows(logits).any() if run.check_finite else None
        input_ids = run.seq[:, :cur]
        scores = _process(run.processors, input_ids, logits)
        if scores_out is not None:
            scores_out.append(scores)
        if logits_out is not None:
            logits_out.append(logits)
        if cfg.do_sample:
            probs = torch.softmax(scores, dim=-1)
            try:
                next_tokens = torch.multinomial(probs, num_samples=1).squeeze(1)
            except RuntimeError as e:
                if run.check_finite and bool(bad):
                    _raise_nonfinite(run, step, logits, e)
                raise
        else:
            next_tokens = torch.argmax(scores, dim=-1)
        if run.eos is not None:  # finished rows get padding
            next_tokens = torch.where(unfinished, next_tokens, pad)
        run.seq[:, cur] = next_tokens
        cur += 1
        if track_rows:
            done = _stop_rows(run, run.seq[:, :cur], scores_out, next_tokens)
            unfinished &= ~done
        finished = cur >= run.max_length or _out_of_time(run)

        # The one host synchronisation of the step: stop? and were the logits finite?
        if run.host_sync_each_step:
            if bad is not None:
                is_bad, alive = torch.stack((bad, unfinished.any())).tolist()
                if is_bad:
                    _raise_nonfinite(run, step, logits)
            else:
                alive = bool(unfinished.any()) if track_rows else True
            if run.streamer is not None:
                run.streamer.put(next_tokens.cpu())
            finished = finished or not alive
        elif bad is not None:
            deferred_bad[step] = bad
            if finished or step % _DEFERRED_CHECK_EVERY == _DEFERRED_CHECK_EVERY - 1:
                hits = deferred_bad.nonzero()
                if hits.numel():
                    first = int(hits[0, 0])
                    raise NonFiniteLogitsError(
                        f"the model produced NaN/inf logits at generation step {first} (new token {first + 1}). "
                        f"This is usually an overflow upstream (e.g. in float16): load the model in bfloat16 or "
                        f"float32. (transformers would emit token 0 here without a word.)")
        if finished:
            break
        step += 1
        logits, out = _next_logits(model, run, cur, flags)

    if run.streamer is not None:
        run.streamer.end()
    sequences = run.seq[:, :cur].contiguous()
    if not want:
        return sequences
    return GenerateDecoderOnlyOutput(
        sequences=sequences,
        scores=tuple(scores_out) if scores_out is not None else None,
        logits=tuple(logits_out) if logits_out is not None else None,
        attentions=tuple(attn_out) if attn_out is not None else None,
        hidden_states=tuple(hidden_out) if hidden_out is not None else None,
        past_key_values=run.cache,
    )


def _next_logits(model: Any, run: _Run, cur: int, flags: dict, last_tokens: Any = None) -> tuple[Any, Any]:
    """Logits after the sequence's first ``cur`` ids (``last_tokens`` overrides the ids fed)."""
    # Position p of the model's stream holds sequence column p − (prompt_len − ids_len).
    total = cur + (run.prompt_len - run.ids_len)
    if run.static is not None:
        pos = run.positions[:, total - 1 : total] if run.positions is not None else None
        return run.static(model, run.seq[:, cur - 1 : cur], pos), None
    if run.cache is not None:
        ids = run.seq[:, cur - 1 : cur] if last_tokens is None else last_tokens
        mask = run.mask[:, :total] if run.mask is not None else None
        pos = run.positions[:, total - 1 : total] if run.positions is not None else None
        return decode_step(model, ids, mask, pos, run.cache, **flags)
    # No cache: the whole sequence again (transformers' use_cache=False).
    ids = run.seq[:, :cur] if last_tokens is None else last_tokens
    mask = run.mask[:, :total] if run.mask is not None else None
    pos = run.positions[:, :total] if run.positions is not None else None
    return decode_step(model, ids, mask, pos, None, **flags)


def _beam_search(model: Any, run: _Run) -> Any:
    """transformers' vectorised beam search (with sampling when do_sample): the same candidates,
    scores, finished-hypothesis bookkeeping and stopping heuristic."""
    torch = _torch()
    cfg = run.cfg
    dev = run.device
    nb = cfg.num_beams
    B = run.N // nb
    max_length = run.max_length
    length_penalty = cfg.length_penalty
    early_stopping = cfg.early_stopping
    prompt = run.ids_len
    want = cfg.return_dict_in_generate
    scores_out = [] if want and cfg.output_scores else None
    logits_out = [] if want and cfg.output_logits else None
    attn_out = [] if want and cfg.output_attentions else None
    hidden_out = [] if want and cfg.output_hidden_states else None
    flags = dict(output_attentions=attn_out is not None, output_hidden_states=hidden_out is not None)

    # Keep K = (eos ids + 1) × beams candidates so that num_beams can continue even if the best all end.
    K = max(2, 1 + len(run.eos_list)) * nb
    top_beams = torch.cat((torch.ones(nb, dtype=torch.bool), torch.zeros(K - nb, dtype=torch.bool))).to(dev)
    # transformers fills unused slots with `pad_token_id or eos_token_id[0]` (so pad 0 reads as eos),
    # or -1 without eos; the fill shows in hypotheses shorter than the longest returned.
    if run.eos_list:
        fill = run.pad if run.pad else run.eos_list[0]
    else:
        fill = -1
    running = torch.full((B, nb, max_length), fill, dtype=torch.int64, device=dev)
    running[:, :, :prompt] = run.seq[:, :prompt].view(B, nb, prompt)
    sequences = running.clone()
    running_scores = torch.zeros((B, nb), dtype=torch.float, device=dev)
    running_scores[:, 1:] = -1e9  # only the first beam's continuations at the first step
    beam_scores = torch.full((B, nb), -1e9, dtype=torch.float, device=dev)
    finished = torch.zeros((B, nb), dtype=torch.bool, device=dev)
    improvable = torch.ones((B, 1), dtype=torch.bool, device=dev)
    running_bi = torch.full((B, nb, max_length - prompt), -1, dtype=torch.int32, device=dev)
    beam_indices = running_bi.clone()
    batch_offset = torch.arange(B, device=dev).view(-1, 1) * nb

    def gather(t, idx):
        while idx.dim() < t.dim():
            idx = idx.unsqueeze(-1)
        return torch.take_along_dim(t, idx, dim=1)

    cur = prompt
    logits, out = prefill(
        model,
        run.seq[:, run.past_len : prompt] if run.embeds is None else None,
        run.embeds,
        run.mask[:, : run.prompt_len] if run.mask is not None else None,
        run.positions[:, run.past_len : run.prompt_len] if run.positions is not None else None,
        run.cache, **flags,
    )
    flat = run.seq[:, :prompt]
    step = 0
    while True:
        if attn_out is not None:
            attn_out.append(out.attentions)
        if hidden_out is not None:
            hidden_out.append(out.hidden_states)
        bad = _nonfinite_rows(logits).any() if run.check_finite else None
        log_probs = torch.nn.functional.log_softmax(logits, dim=-1)
        log_probs = _process(run.processors, flat, log_probs)
        if logits_out is not None:
            logits_out.append(logits.clone())
        if scores_out is not None:
            scores_out.append(log_probs.clone())
        V = log_probs.shape[-1]
        acc = (log_probs.view(B, nb, V) + running_scores[:, :, None]).reshape(B, nb * V)

        # Top-K continuations over all beams (or K sampled without replacement).
        if cfg.do_sample:
            try:
                topk_idx = torch.multinomial(torch.softmax(acc, dim=-1), num_samples=K)
            except RuntimeError as e:
                if run.check_finite and bool(bad):
                    _raise_nonfinite(run, step, logits, e)
                raise
            topk_lp = torch.gather(acc, 1, topk_idx)
            topk_lp, order = topk_lp.sort(dim=-1, descending=True)
            topk_idx = topk_idx.gather(-1, order)
        else:
            topk_lp, topk_idx = torch.topk(acc, k=K)
        src_beam = topk_idx // V
        topk_bi = gather(running_bi, src_beam)
        topk_seq = gather(running, src_beam)
        topk_seq[:, :, cur] = topk_idx % V
        topk_bi[:, :, cur - prompt] = (src_beam + batch_offset).to(topk_bi.dtype)

        # Which candidates end here (eos, stop strings, user criteria, the length limit).
        cand = topk_seq[:, :, : cur + 1].reshape(B * K, cur + 1)
        if cur + 1 >= max_length or _out_of_time(run):
            hits = torch.ones((B, K), dtype=torch.bool, device=dev)
        else:
            done = _stop_rows(run, cand, scores_out, cand[:, -1])
            hits = (done if done is not None else torch.zeros(B * K, dtype=torch.bool, device=dev)).view(B, K)

        # Running beams for the next step: the best K that did not just end.
        run_lp = topk_lp + hits.to(torch.float32) * -1.0e9
        nxt = torch.topk(run_lp, k=nb)[1]
        running = gather(topk_seq, nxt)
        running_scores = gather(run_lp, nxt)
        running_bi = gather(topk_bi, nxt)

        # Finished hypotheses: merge the ones that just ended (among the top nb) with the kept ones.
        just_done = hits & top_beams[None, :]
        fin_lp = topk_lp / ((cur + 1 - prompt) ** length_penalty)
        full = torch.all(finished, axis=-1, keepdims=True) & (early_stopping is True)
        fin_lp += full.to(torch.float32) * -1.0e9
        fin_lp += (~improvable).to(torch.float32) * -1.0e9
        fin_lp += (~just_done) * -1.0e9
        merged_idx = torch.topk(torch.cat((beam_scores, fin_lp), dim=1), k=nb)[1]
        sequences = gather(torch.cat((sequences, topk_seq), dim=1), merged_idx)
        beam_scores = gather(torch.cat((beam_scores, fin_lp), dim=1), merged_idx)
        beam_indices = gather(torch.cat((beam_indices, topk_bi), dim=1), merged_idx)
        finished = gather(torch.cat((finished, just_done), dim=1), merged_idx)

        cur += 1
        # Can a running beam still beat the worst finished one?
        if early_stopping == "never" and length_penalty > 0.0:
            best_len = max_length - prompt
        else:
            best_len = cur - prompt
        best_running = running_scores[:, :1] / (best_len ** length_penalty)
        worst_done = torch.where(finished, torch.min(beam_scores, dim=1, keepdim=True)[0], -1.0e9)
        improvable = improvable & torch.any(best_running > worst_done, dim=-1, keepdim=True)
        go_on = torch.any(improvable) & ~(torch.all(finished) & (early_stopping is True)) & ~torch.all(hits)

        if run.cache is not None:  # the cache follows the beams (transformers reorders on the last step too)
            run.cache.reorder(running_bi[..., cur - 1 - prompt].reshape(-1))
        if bad is not None:
            is_bad, go = torch.stack((bad, go_on)).tolist()
            if is_bad:
                _raise_nonfinite(run, step, logits)
        else:
            go = bool(go_on)
        if not go:
            break
        step += 1
        flat = running[:, :, :cur].reshape(B * nb, cur)
        logits, out = _beam_logits(model, run, flat, cur, flags)

    nrs = cfg.num_return_sequences
    sequences = sequences[:, :nrs].reshape(B * nrs, -1)
    beam_scores = beam_scores[:, :nrs].reshape(B * nrs)
    beam_indices = beam_indices[:, :nrs].reshape(B * nrs, -1)
    generated = int(((beam_indices + 1).bool()).sum(dim=1).max())
    sequences = sequences[:, : prompt + generated]
    beam_indices = beam_indices[:, :generated]
    if not want:
        return sequences
    return GenerateBeamDecoderOnlyOutput(
        sequences=sequences,
        sequences_scores=beam_scores if cfg.output_scores else None,
        scores=tuple(scores_out) if scores_out is not None else None,
        logits=tuple(logits_out) if logits_out is not None else None,
        beam_indices=beam_indices,
        attentions=tuple(attn_out) if attn_out is not None else None,
        hidden_states=tuple(hidden_out) if hidden_out is not None else None,
        past_key_values=run.cache,
    )


def _beam_logits(model: Any, run: _Run, flat: Any, cur: int, flags: dict) -> tuple[Any, Any]:
    if run.cache is not None:
        return _next_logits(model, run, cur, flags, last_tokens=flat[:, -1:])
    return _next_logits(model, run, cur, flags, last_tokens=flat)


def _finish(run: _Run, result: Any) -> Any:
    """Outside inference mode: hand back ordinary tensors on the prompt's device."""
    torch = _torch()

    def plain(t):
        if isinstance(t, torch.Tensor):
            if t.is_inference():
                t = t.clone()
            return t.to(run.out_device)
        return t

    if isinstance(result, torch.Tensor):
        return plain(result)
    result["sequences"] = plain(result["sequences"])
    for key in ("sequences_scores", "beam_indices"):
        if result.get(key) is not None:
            result[key] = plain(result[key])
    cache = result.get("past_key_values")
    if cache is not None:
        # Beam reordering made new (inference-mode) buffers; copy them so the cache can be used
        # (written in place) outside inference mode too.
        for buffers in (cache.keys, cache.values):
            for i, buf in enumerate(buffers):
                if buf.is_inference():
                    buffers[i] = buf.clone()
    return result
