"""Decoding settings: GenerationConfig, generation_config.json, and the checks of every setting."""

from __future__ import annotations

import copy
import json
import logging
import math
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from ..files import atomic_write_text, read_json
from ..hub import HubOptions, resolve_file

logger = logging.getLogger(__name__)

__all__ = ["GENERATION_CONFIG_NAME", "GenerationConfig", "GenerateArgumentError", "resolve_settings"]

GENERATION_CONFIG_NAME = "generation_config.json"

# Keywords generate() takes besides the generation settings.
_MODEL_KWARGS = {"input_ids", "attention_mask", "inputs_embeds", "position_ids", "past_key_values", "cache",
                 "tokenizer", "logits_to_keep", "return_dict"}


class GenerateArgumentError(TypeError, ValueError):
    """An argument generate() does not know or cannot honour.

    Both a TypeError (Python's error for an unexpected keyword) and a ValueError (what transformers
    raises for an unused model keyword), so either ``except`` catches it.
    """


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

    def to_diff_dict(self) -> dict[str, Any]:
        """The settings that differ from a fresh GenerationConfig's, as transformers 5.24 gives them
        (pipelines read it to know what the model's config sets); without ``transformers_version``."""
        return {k: v for k, v in self.to_dict().items() if v is not None}

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
        data = read_json(path, "generation config")  # one JSON reader: errors name the file
        if not isinstance(data, dict):
            raise ValueError(f"{path} must hold a JSON object")
        try:
            return cls.from_dict(data)
        except (ValueError, TypeError) as e:
            raise ValueError(f"{path}: {e}") from None

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


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_finite(value: Any) -> bool:
    return _is_number(value) and (isinstance(value, int) or math.isfinite(value))


def _validate(cfg: GenerationConfig) -> None:
    """Checks of the resolved settings (defaults filled). Sampling-only values are checked only
    when sampling, as transformers does (elsewhere they are ignored with a warning)."""

    def need(ok: bool, message: str) -> None:
        if not ok:
            raise ValueError(message)

    for name in ("max_length", "min_length", "num_beams", "num_return_sequences", "no_repeat_ngram_size"):
        value = getattr(cfg, name)
        need(is_int(value) and value >= 0, f"`{name}` must be a non-negative integer, got {value!r}")
    need(cfg.num_beams >= 1, f"`num_beams` must be at least 1, got {cfg.num_beams}")
    need(cfg.num_return_sequences >= 1, f"`num_return_sequences` must be at least 1, got {cfg.num_return_sequences}")
    if cfg.max_new_tokens is not None:
        need(is_int(cfg.max_new_tokens) and cfg.max_new_tokens > 0,
             f"`max_new_tokens` must be a positive integer, got {cfg.max_new_tokens!r}")
    if cfg.min_new_tokens is not None:
        need(is_int(cfg.min_new_tokens) and cfg.min_new_tokens >= 0,
             f"`min_new_tokens` must be a non-negative integer, got {cfg.min_new_tokens!r}")
    need(cfg.early_stopping in (True, False, "never"),
         f"`early_stopping` must be True, False or 'never', got {cfg.early_stopping!r}")
    if cfg.max_time is not None:
        need(_is_number(cfg.max_time) and cfg.max_time > 0, f"`max_time` must be a positive number of seconds, got {cfg.max_time!r}")
    # Non-finite values pass transformers' checks and silently give garbage (inf: every repeated
    # token at -inf or 0; a NaN length penalty: an arbitrary beam order), so they are refused here.
    need(_is_finite(cfg.repetition_penalty) and cfg.repetition_penalty > 0,
         f"`repetition_penalty` must be a positive, finite number, got {cfg.repetition_penalty!r}")
    need(_is_finite(cfg.length_penalty), f"`length_penalty` must be a finite number, got {cfg.length_penalty!r}")

    # Types are checked whatever the decoding mode: a string or a list where a number belongs is a
    # mistake in the call, never a setting that greedy decoding may ignore (ranges are checked
    # below only when sampling, as transformers checks them).
    need(isinstance(cfg.do_sample, bool), f"`do_sample` must be True or False, got {cfg.do_sample!r}")
    for name in ("temperature", "top_p", "typical_p", "min_p", "epsilon_cutoff", "eta_cutoff"):
        value = getattr(cfg, name)
        need(value is None or _is_number(value), f"`{name}` must be a number, got {value!r}")
    need(cfg.top_k is None or (is_int(cfg.top_k) and cfg.top_k >= 0),
         f"`top_k` must be a non-negative integer (0 disables it), got {cfg.top_k!r}")

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
        need(_is_finite(t) and t > 0,
             f"`temperature` must be a positive, finite number when sampling, got {t!r}"
             + (" (for greedy decoding pass do_sample=False)" if _is_number(t) and t == 0 else ""))
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
        need(all(is_int(t) and t >= 0 for w in words for t in w),
             f"`bad_words_ids` must hold non-negative integer token ids, got {words!r}")
    for name in ("suppress_tokens", "begin_suppress_tokens"):
        value = getattr(cfg, name)
        if value is not None:
            need(isinstance(value, (list, tuple)) and all(is_int(t) and t >= 0 for t in value),
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


def resolve_settings(model: Any, generation_config: Any, kwargs: dict[str, Any]) -> tuple[GenerationConfig, dict[str, Any], bool, bool]:
    """generate()'s settings: call keywords > ``generation_config=`` > ``model.generation_config`` >
    transformers' defaults, checked. Returns the settings, the keywords that are model inputs, and
    whether max_length / min_length were left unset everywhere (transformers then adapts them)."""
    model_gc = getattr(model, "generation_config", None)
    model_gc = (_as_generation_config(model_gc, "model.generation_config") if model_gc is not None
                else GenerationConfig.from_model_config(model.config))
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
    return cfg, model_kwargs, has_default_max, has_default_min
