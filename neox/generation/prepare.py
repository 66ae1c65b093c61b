"""Before decoding: turn generate()'s arguments into a checked, preallocated Run (or a named error)."""

from __future__ import annotations

import logging
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ..validation import check_input_ids
from .client import ClientSteps
from .config import GenerationConfig, is_int, resolve_settings
from .decoding import StaticDecode, build_cache
from .processors import Processor, build_processors, token_list
from .stopping import StopStrings

logger = logging.getLogger(__name__)

__all__ = ["Run", "prepare"]


@dataclass
class Run:
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
    static: StaticDecode | None  # the step when decoding with cache_implementation="static"
    processors: list[Processor]
    criteria: list[Callable]    # device-side stopping criteria (beyond eos and max_length)
    eos: Any                    # (E,) tensor or None
    eos_list: list[int]
    pad: int | None
    stop_strings: StopStrings | None
    streamer: Any
    check_finite: bool
    host_sync_each_step: bool
    start_time: float
    client: ClientSteps | None = None  # steps through the model's own (client-changed) methods


@dataclass
class _Prompt:
    """The prompt as the model will see it, on the model's device."""

    input_ids: Any              # (B, ids_len) or None (inputs_embeds alone)
    embeds: Any                 # (B, prompt_len, D) or None
    mask: Any                   # the user's attention_mask; (B, prompt_len) long once _mask_and_positions ran
    position_ids: Any           # (B, prompt_len) or None
    past: Any                   # a user's cache to continue, or None
    out_device: Any             # where the result goes: the prompt's device
    batch_size: int
    prompt_len: int
    ids_len: int
    mask_given: bool = False
    padded: bool = False


def prepare(model: Any, inputs: Any, generation_config: Any, logits_processor: Any, stopping_criteria: Any,
            prefix_allowed_tokens_fn: Any, streamer: Any, kwargs: dict[str, Any]) -> Run:
    """Every check before any work, in transformers' order of concern, then every allocation."""
    config = model.config
    device = _device(model, inputs, kwargs)
    vocab = model.embed_out.out_features

    cfg, model_kwargs, has_default_max, has_default_min = resolve_settings(model, generation_config, kwargs)
    for name in ("logits_to_keep", "return_dict"):
        model_kwargs.pop(name, None)  # the decode loop keeps only the last position anyway
    tokenizer = model_kwargs.pop("tokenizer", None)
    user_processors, user_criteria = _check_callbacks(cfg, tokenizer, streamer, logits_processor, stopping_criteria,
                                                      prefix_allowed_tokens_fn)
    prompt = _read_prompt(model, cfg, inputs, model_kwargs, device)
    eos_list, pad = _special_tokens(cfg, prompt, vocab)
    _mask_and_positions(prompt, pad, eos_list, device)
    max_length, min_len = _lengths(cfg, config, prompt, has_default_max, has_default_min)
    new_max = max_length - prompt.ids_len
    expand = max(cfg.num_beams, cfg.num_return_sequences)
    _check_memory(model, cfg, prompt, prompt.batch_size * expand, new_max, device)
    N = _expand(prompt, expand)
    cache, static, past_len = build_cache(model, cfg, N, prompt.prompt_len, new_max, prompt.past,
                                          prompt.embeds is not None, device)
    seq, mask_buf, pos_buf = _buffers(prompt, N, max_length, new_max, static, device)

    processors = build_processors(cfg, prompt.ids_len, min_len, max_length, prompt.mask if prompt.padded else None,
                                  eos_list, user_processors, prefix_allowed_tokens_fn, device, vocab)
    stop_strings = None
    if cfg.stop_strings is not None:
        strings = [cfg.stop_strings] if isinstance(cfg.stop_strings, str) else list(cfg.stop_strings)
        stop_strings = StopStrings(tokenizer, strings)
    eos = torch.tensor(eos_list, dtype=torch.long, device=device) if eos_list else None
    host_sync = bool(eos_list or stop_strings or user_criteria or streamer is not None or cfg.max_time is not None
                     or device.type == "cpu")
    if max_length > config.max_position_embeddings + (prompt.prompt_len - prompt.ids_len):
        logger.warning("generation may run past the model's max_position_embeddings (%d): max_length is %d",
                       config.max_position_embeddings, max_length)
    run = Run(
        cfg=cfg, device=device, out_device=prompt.out_device, N=N, batch_size=prompt.batch_size,
        ids_len=prompt.ids_len, prompt_len=prompt.prompt_len, past_len=past_len, max_length=max_length, seq=seq,
        embeds=prompt.embeds, mask=mask_buf, positions=pos_buf, cache=cache, static=static, processors=processors,
        criteria=user_criteria, eos=eos, eos_list=eos_list, pad=pad, stop_strings=stop_strings, streamer=streamer,
        check_finite=not cfg.remove_invalid_values, host_sync_each_step=host_sync, start_time=time.time(),
    )
    changed = getattr(model, "_client_changed_steps", None)
    if changed is not None and changed():
        if static is not None:
            raise ValueError("cache_implementation='static' runs neox's own decode step; it cannot honour a "
                             "wrapped or overridden forward / prepare_inputs_for_generation (or forward hooks)")
        run.client = ClientSteps(model, run)
    return run


def _device(model: Any, inputs: Any, kwargs: dict[str, Any]) -> torch.device:
    """Where decoding runs: the input embedding's device, as transformers runs on the inputs'.
    Not the head's: an offloading library (accelerate) may leave it, or every weight, on "meta",
    and then the prompt's device is the execution device."""
    weight = model.get_input_embeddings().weight
    if weight.device.type != "meta":
        return weight.device
    for value in (inputs, kwargs.get("input_ids"), kwargs.get("inputs_embeds"), kwargs.get("attention_mask")):
        if isinstance(value, torch.Tensor):
            return value.device
    return torch.device("cpu")


def _check_callbacks(cfg: GenerationConfig, tokenizer: Any, streamer: Any, logits_processor: Any,
                     stopping_criteria: Any, prefix_fn: Any) -> tuple[list[Callable], list[Callable]]:
    """The tokenizer, streamer and user callables the settings need; returns the user's processors
    and stopping criteria as lists."""
    if cfg.stop_strings is not None and tokenizer is None:
        raise ValueError("stop_strings need the model's tokenizer: pass generate(..., tokenizer=tokenizer)")
    if cfg.num_beams > 1 and streamer is not None:
        raise ValueError("a streamer cannot be used with beam search (num_beams > 1): the beams change until the end")
    if streamer is not None and not (callable(getattr(streamer, "put", None)) and callable(getattr(streamer, "end", None))):
        raise TypeError(f"streamer must have put(tensor) and end() methods; got {type(streamer).__name__}")
    user_processors = _callables(logits_processor, "logits_processor")
    user_criteria = _callables(stopping_criteria, "stopping_criteria")
    if prefix_fn is not None and not callable(prefix_fn):
        raise TypeError("prefix_allowed_tokens_fn must be callable (batch_id, input_ids) -> list of allowed ids")
    return user_processors, user_criteria


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


def _read_prompt(model: Any, cfg: GenerationConfig, inputs: Any, model_kwargs: dict[str, Any], device: Any) -> _Prompt:
    """The prompt's ids and/or embeddings, checked and moved to ``device``; BOS when none is given."""
    hidden_size = model.config.hidden_size
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
        check_input_ids(input_ids, model.gpt_neox.embed_in.num_embeddings)
        out_device = input_ids.device
        input_ids = input_ids.to(device=device, dtype=torch.long)
    if embeds is not None:
        if not isinstance(embeds, torch.Tensor) or embeds.dim() != 3 or embeds.shape[-1] != hidden_size:
            shape = tuple(embeds.shape) if isinstance(embeds, torch.Tensor) else type(embeds).__name__
            raise ValueError(f"inputs_embeds must be (batch, seq_len, {hidden_size}), got {shape}")
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
    return _Prompt(
        input_ids=input_ids, embeds=embeds, mask=mask, position_ids=position_ids, past=past, out_device=out_device,
        batch_size=B, prompt_len=embeds.shape[1] if embeds is not None else input_ids.shape[1],
        ids_len=input_ids.shape[1] if input_ids is not None else 0,
    )


def _special_tokens(cfg: GenerationConfig, prompt: _Prompt, vocab: int) -> tuple[list[int], int | None]:
    """End-of-sequence ids as a list and the pad id (the first eos when unset); token-id settings
    checked against the vocabulary."""
    eos_list = token_list(cfg.eos_token_id, "eos_token_id")
    if any(t < 0 for t in eos_list):  # transformers warns, then never stops at it
        raise ValueError(f"`eos_token_id` must hold non-negative token ids, got {eos_list}")
    pad = cfg.pad_token_id
    if pad is not None and not is_int(pad):
        if isinstance(pad, torch.Tensor) and pad.numel() == 1:
            pad = int(pad)
        else:
            raise ValueError(f"pad_token_id must be an integer, got {pad!r}")
    if pad is not None and pad < 0:  # it would be written into finished rows as a token id
        raise ValueError(f"`pad_token_id` must be a non-negative token id, got {pad}")
    if pad is None and eos_list:
        if prompt.mask is None and prompt.batch_size > 1:
            logger.warning("The attention mask and the pad token id were not set, with a batched input. "
                           "Pass your input's attention_mask to obtain reliable results.")
        pad = eos_list[0]
    for name, ids in (("bad_words_ids", [t for w in (cfg.bad_words_ids or []) for t in w]),
                      ("suppress_tokens", cfg.suppress_tokens or []),
                      ("begin_suppress_tokens", cfg.begin_suppress_tokens or []),
                      ("forced_eos_token_id", token_list(cfg.forced_eos_token_id, "forced_eos_token_id")),
                      ("forced_bos_token_id", token_list(cfg.forced_bos_token_id, "forced_bos_token_id"))):
        big = [t for t in ids if t >= vocab]
        if big:
            raise ValueError(f"`{name}` holds token id(s) {big} outside the model's vocabulary of {vocab}")
    return eos_list, pad


def _mask_and_positions(prompt: _Prompt, pad: int | None, eos_list: list[int], device: Any) -> None:
    """The attention mask, given (2-D, the prompt's shape) or inferred from pad tokens when pad is
    not eos; the position ids checked. Sets ``prompt.mask`` (long), ``position_ids``, ``padded``."""
    B, prompt_len, input_ids, mask = prompt.batch_size, prompt.prompt_len, prompt.input_ids, prompt.mask
    prompt.mask_given = mask is not None
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
        if bool((mask[:, -1] == 0).any() if prompt.mask_given else (input_ids[:, -1] == pad).any()):
            logger.warning("A decoder-only architecture is being used, but right-padding was detected! For correct "
                           "generation results, please set `padding_side='left'` when initializing the tokenizer.")
    position_ids = prompt.position_ids
    if position_ids is not None:
        if not isinstance(position_ids, torch.Tensor):
            raise TypeError(f"position_ids must be a torch.Tensor, got {type(position_ids).__name__}")
        if position_ids.dim() == 1:
            position_ids = position_ids[None].expand(B, -1)
        if tuple(position_ids.shape) != (B, prompt_len):
            raise ValueError(f"position_ids has shape {tuple(position_ids.shape)}; expected {(B, prompt_len)}")
        position_ids = position_ids.to(device=device, dtype=torch.long)
    prompt.mask, prompt.position_ids = mask, position_ids
    prompt.padded = not bool((mask == 1).all())


def _expand(prompt: _Prompt, expand: int) -> int:
    """Repeat each prompt for its beams / samples (rows of one prompt adjacent); the row count."""
    if expand > 1:
        def repeat(t: Any) -> Any:
            return t.repeat_interleave(expand, dim=0) if t is not None else None

        prompt.input_ids, prompt.embeds = repeat(prompt.input_ids), repeat(prompt.embeds)
        prompt.mask, prompt.position_ids = repeat(prompt.mask), repeat(prompt.position_ids)
    return prompt.batch_size * expand


def _lengths(cfg: GenerationConfig, config: Any, prompt: _Prompt, has_default_max: bool,
             has_default_min: bool) -> tuple[int, int]:
    """max_length and min_length as transformers resolves them (both count the prompt's ids)."""
    ids_len, prompt_len = prompt.ids_len, prompt.prompt_len
    embeds_only = prompt.embeds is not None and ids_len != prompt_len
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
    # stacklevel 5: _lengths, prepare, generate, model.generate, the caller.
    if has_default_max and cfg.max_new_tokens is None:
        warnings.warn(f"Using the model-agnostic default `max_length` (={max_length}) to control the generation "
                      f"length. We recommend setting `max_new_tokens` to control the maximum length of the "
                      f"generation.", UserWarning, stacklevel=5)
    if ids_len >= max_length:
        raise ValueError(f"Input length of input_ids is {ids_len}, but `max_length` is set to {max_length}: nothing "
                         f"would be generated. Increase `max_length` or, better, set `max_new_tokens`.")
    if min_len > max_length:
        warnings.warn(f"Unfeasible length constraints: the minimum length ({min_len}) is larger than the maximum "
                      f"length ({max_length}); generation will stop at the maximum length.", UserWarning, stacklevel=5)
    return max_length, min_len


def _check_memory(model: Any, cfg: GenerationConfig, prompt: _Prompt, N: int, new_max: int, device: Any) -> None:
    """Refuse, before anything is allocated, a length whose preallocated cache and token buffers
    cannot fit in the device's memory (transformers' growing cache would run until it fails)."""
    available = _memory_available(device)
    if available is None:
        return
    config = model.config
    # Per position: a key and a value per layer, (N, H, hs) each, in the model's dtype — as
    # KVCache.for_model allocates; and the sequence, mask and position buffers (int64).
    cached = bool(cfg.use_cache) or prompt.embeds is not None or prompt.past is not None
    heads = getattr(model, "num_local_heads", config.num_attention_heads)  # a TP rank holds fewer
    cache_bytes = (2 * config.num_hidden_layers * N * heads * config.head_size
                   * model.get_input_embeddings().weight.element_size()) if cached else 0
    per_position = cache_bytes + 3 * N * 8
    if per_position * (prompt.prompt_len + new_max) <= available:
        return
    fits = max(available // per_position - prompt.prompt_len, 0)
    where = "physical memory" if device.type == "cpu" else f"free memory on {device}"
    raise ValueError(
        f"max_new_tokens={new_max} (max_length {prompt.ids_len + new_max}) cannot fit: {N} row(s) of "
        f"{prompt.prompt_len} prompt + {new_max} new positions need {_gib(per_position * (prompt.prompt_len + new_max))} "
        f"for the preallocated KV cache and token buffers, more than the {_gib(available)} of {where}. "
        f"At most max_new_tokens={fits} fits; lower it, the batch, or num_beams/num_return_sequences"
    )


def _memory_available(device: Any) -> int | None:
    """Bytes one generate() call may allocate at most: physical memory on CPU; on CUDA free memory
    plus what PyTorch's allocator holds unused. None where the device cannot be asked."""
    if device.type == "cpu":
        try:
            return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):  # not a POSIX system
            return None
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    return None


def _gib(n: int) -> str:
    return f"{n / 2**30:,.1f} GiB"


def _buffers(prompt: _Prompt, N: int, max_length: int, new_max: int, static: StaticDecode | None,
             device: Any) -> tuple[Any, Any, Any]:
    """The sequence buffer, and (only when needed) the attention-mask and position-id buffers,
    each preallocated to the final length so the loop writes in place and passes slice views."""
    ids_len, prompt_len, mask = prompt.ids_len, prompt.prompt_len, prompt.mask
    seq = torch.empty(N, max_length, dtype=torch.long, device=device)
    if prompt.input_ids is not None:
        seq[:, :ids_len] = prompt.input_ids
    mask_buf = pos_buf = None
    total = prompt_len + new_max
    if prompt.padded or prompt.position_ids is not None:
        pos_buf = torch.empty(N, total, dtype=torch.long, device=device)
        if prompt.position_ids is not None:
            pos_buf[:, :prompt_len] = prompt.position_ids
        else:
            pos_buf[:, :prompt_len] = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)
        pos_buf[:, prompt_len:] = pos_buf[:, prompt_len - 1 : prompt_len] + torch.arange(1, new_max + 1, device=device)
    if prompt.padded:
        mask_buf = torch.ones(N, total, dtype=torch.long, device=device)
        mask_buf[:, :prompt_len] = mask
        if static is not None:  # the static step's mask spans the cache's capacity
            static.mask = torch.ones(N, static.cache.capacity, dtype=torch.bool, device=device)
            static.mask[:, :prompt_len] = mask.bool()
    return seq, mask_buf, pos_buf
