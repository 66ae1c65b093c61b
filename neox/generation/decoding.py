"""The decode machinery: prefill, one decode step, the static-shape (compilable) step, the KV cache."""

from __future__ import annotations

import contextlib
import json
import logging
import types
import weakref
from collections.abc import Callable
from typing import Any

import torch

from ..cache import CacheProtocolAdapter, KVCache, is_cache_protocol
from .config import GenerationConfig

logger = logging.getLogger(__name__)

__all__ = ["prefill", "decode_step", "build_cache", "NonFiniteLogitsError", "nonfinite_rows"]


class NonFiniteLogitsError(RuntimeError):
    """The model produced NaN or inf logits (typically an fp16 overflow upstream)."""


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


# Static-shape decoding.
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

# Frozen weights (CPU, max-autotune). The fastest batch-1 kernels torch has on CPU are inductor's
# C++ GEMM templates (max_autotune with the CPP backend): they pack each weight once into a blocked
# layout and split the matrix-vector product over the threads, where MKL's sgemv on a 768-wide
# matrix runs at one core's bandwidth. They apply only to weights inductor may treat as constants,
# i.e. when dynamo traces with torch._inductor.config.freezing set and grad disabled. So on CPU a
# compile_config asking for max-autotune (or inductor's ``freezing``) traces the step with freezing
# on. The price: the compiled step holds its own packed copy of the weights (about one more copy of
# the model's linear weights in memory), and it must not outlive a change to them — _static_plan
# keeps a signature of the weights (identity and in-place version) and recompiles when it changes.

_MAX_AUTOTUNE_MODES = ("max-autotune", "max-autotune-no-cudagraphs")

# model -> {"cache": KVCache, "steps": {compile options: compiled function}}; no state on the model.
_STATIC_STATE: "weakref.WeakKeyDictionary[Any, dict[str, Any]]" = weakref.WeakKeyDictionary()


def _static_step(model: Any, input_ids: Any, attention_mask: Any, position_ids: Any, cache: Any,
                 cache_position: Any) -> Any:
    """The function that is compiled: one position per row → (N, V) fp32 logits."""
    out = model.gpt_neox.core(input_ids, attention_mask=attention_mask, position_ids=position_ids, cache=cache,
                              cache_position=cache_position)
    return model.embed_out(out.last_hidden_state[:, -1]).float()


class StaticDecode:
    """The static-shape decode step of one generate() call (see above)."""

    def __init__(self, cache: Any, step: Callable, compiled: bool, describe: str, frozen: bool = False) -> None:
        self.cache = cache
        self.step = step
        self.compiled = compiled
        self.describe = describe
        self.frozen = frozen  # trace with inductor's freezing on (see "Frozen weights" above)
        self.mask = None  # (N, capacity) bool when the prompt is padded
        self.slots = torch.arange(cache.capacity, device=cache.keys[0].device)  # cache positions as tensors
        self.cudagraphs = compiled and cache.keys[0].device.type == "cuda"
        self._ran = False

    def _tracing_config(self) -> Any:
        # Read by dynamo while it traces, i.e. on a call's first step (static shapes: later steps
        # replay the graph): the weights become graph constants that the GEMM templates can pack.
        # Not patched on every step — it costs ~27 µs per token.
        if not self.frozen or self._ran:
            return contextlib.nullcontext()
        import torch._inductor.config as inductor_config

        return inductor_config.patch(freezing=True)

    def __call__(self, model: Any, input_ids: Any, position_ids: Any) -> Any:
        length = self.cache.length  # < capacity: _static_plan sized the cache for the whole call
        # Fresh copies: the buffers' strides depend on the call's lengths (even for a (1, 1) view),
        # and a step compiled for one stride would recompile for every new max_new_tokens.
        ids = input_ids.clone(memory_format=torch.contiguous_format)
        pos = position_ids.clone(memory_format=torch.contiguous_format) if position_ids is not None else None
        if self.cudagraphs:
            torch.compiler.cudagraph_mark_step_begin()
        try:
            with self._tracing_config():
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


def _freezes(options: dict[str, Any], device: Any) -> bool:
    """Whether the step is traced with frozen weights: on CPU, when max-autotune is asked for (its
    C++ GEMM templates need constant weights) or inductor's ``freezing`` option is given."""
    if device.type != "cpu" or options.get("backend") != "inductor":
        return False
    extra = options.get("options") or {}
    return options.get("mode") in _MAX_AUTOTUNE_MODES or bool(extra.get("max_autotune")) or bool(extra.get("freezing"))


def _weights_signature(model: Any) -> tuple[Any, ...]:
    """Identity and in-place version of every parameter and buffer: it changes when a weight is
    replaced (``.to()``, assignment) or written in place (``load_state_dict``, an optimiser step)."""
    sig = []
    for t in (*model.parameters(), *model.buffers()):
        try:
            version = t._version
        except RuntimeError:  # an inference tensor (loaded under inference_mode) has no version counter:
            version = None  # an in-place write to it, possible only inside inference_mode, goes unseen
        sig.append((id(t), version))
    return tuple(sig)


def _static_plan(model: Any, cfg: GenerationConfig, N: int, need: int, device: Any, past: Any,
                 use_cache: bool) -> StaticDecode | None:
    """The static decode step for this call, or None (with a warning) where it cannot apply."""
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
    options = _compile_options(cfg, device)
    capacity = -(-need // _STATIC_CAPACITY_STEP) * _STATIC_CAPACITY_STEP
    dtype = model.get_input_embeddings().weight.dtype  # the activations' dtype (a quantised head has no .weight)
    if options is None:
        cache = KVCache.for_model(model, N, capacity, dtype, device)
        return StaticDecode(cache, _static_step, compiled=False, describe="eager")
    state = _STATIC_STATE.setdefault(model, {"cache": None, "steps": {}})
    cache = state["cache"]
    if (cache is None or cache.batch_size != N or cache.capacity != capacity or cache.keys[0].dtype != dtype
            or cache.keys[0].device != device):
        cache = KVCache.for_model(model, N, capacity, dtype, device)
        if device.type == "cuda":
            for t in (*cache.keys, *cache.values):
                torch._dynamo.mark_static_address(t)  # CUDA graphs may then write it in place
        state["cache"] = cache
    else:
        for t in (*cache.keys, *cache.values):
            t.zero_()
        cache.length = 0
    frozen = _freezes(options, device)
    function = _static_step
    if frozen:
        # A frozen graph holds the weights as constants (a packed copy), and dynamo keeps the graphs
        # of a code object as long as the code object lives. So each model gets its own copy of the
        # step's code: its graphs live and die with this model's state, and dropping them when the
        # weights change (dynamo's guards check the weights' identity, not their contents) touches
        # no other model's.
        function = state.get("frozen_function")
        if function is None:
            function = types.FunctionType(_static_step.__code__.replace(), _static_step.__globals__,
                                          _static_step.__name__, _static_step.__defaults__)
            state["frozen_function"] = function
        signature = _weights_signature(model)
        if state.get("frozen_weights") not in (None, signature):
            logger.warning("the model's weights changed since its decode step was compiled with frozen weights: "
                           "recompiling it")
            torch._dynamo.reset_code(function.__code__)
            state["steps"] = {}
        state["frozen_weights"] = signature
    key = json.dumps(options, sort_keys=True, default=repr)  # a backend may be a callable
    step = state["steps"].get(key)
    if step is None:
        step = torch.compile(function, **options)
        state["steps"][key] = step
    describe = (f"torch.compile backend={options['backend']!r} mode={options['mode']!r} on {device.type}"
                + (" with frozen weights" if frozen else ""))
    return StaticDecode(cache, step, compiled=True, describe=describe, frozen=frozen)


def build_cache(model: Any, cfg: GenerationConfig, N: int, prompt_len: int, new_max: int, past: Any,
                with_embeds: bool, device: Any) -> tuple[Any, StaticDecode | None, int]:
    """The cache for one call, preallocated once to the final length (the last token is never fed
    back): a user's ``past`` continued, the static step's, a fresh one, or None (use_cache=False).
    Returns it, the static step (or None) and how many prompt positions ``past`` already holds."""
    use_cache = bool(cfg.use_cache) or with_embeds  # embeddings are only seen once: a cache is needed
    past_len = 0
    cache = None
    if past is not None:
        if is_cache_protocol(past):  # a transformers Cache: filled in place, as transformers does
            past = CacheProtocolAdapter(past)
        elif not isinstance(past, KVCache):
            past = KVCache.from_legacy_cache(past, extra_capacity=prompt_len + new_max)
        if past.batch_size not in (N, None):
            raise ValueError(f"past_key_values holds batch size {past.batch_size}; this call decodes {N} rows")
        if past.length >= prompt_len:
            raise ValueError(f"past_key_values already holds {past.length} tokens but the prompt has {prompt_len}: "
                             f"pass the whole sequence (the cached tokens plus at least one new one)")
        if with_embeds:
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
        cache = KVCache.for_model(model, N, prompt_len + new_max - 1, model.get_input_embeddings().weight.dtype, device)
    return cache, static, past_len


def nonfinite_rows(logits: Any) -> Any:
    # A row's sum is NaN/inf exactly when the row holds a NaN or an inf (fp32 logits cannot
    # overflow a sum of a vocabulary's worth of finite values): one reduction, not a full mask.
    return ~logits.sum(dim=-1).isfinite()
