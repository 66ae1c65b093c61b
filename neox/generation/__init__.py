"""Text generation for GPTNeoXForCausalLM: greedy, sampling and beam search, token-for-token as
transformers 5.24 decodes.

One job per module; each imports only the ones above it:

    config.py      GenerationConfig (generation_config.json's keys), its checks, the call's settings
    outputs.py     GenerateDecoderOnlyOutput / GenerateBeamDecoderOnlyOutput
    streamers.py   TextStreamer, TextIteratorStreamer
    processors.py  logits processors: plain functions (input_ids, scores) -> scores, in transformers' order
    stopping.py    end-of-sequence, stop strings, the user's criteria: which rows are done
    decoding.py    prefill, decode_step, the static-shape (compilable) step, the KV cache of a call
    prepare.py     generate()'s arguments → a checked, preallocated Run, before any work
    search.py      the greedy/sampling and beam loops, and generate()

One step of ``generate()``: the lean ``model.gpt_neox.core`` on one position with a
:class:`~neox.cache.KVCache` preallocated to the final length, the head on that position only, the
processors, the choice (argmax, ``torch.multinomial`` on the global random stream as transformers
draws, or beam top-K), and one host synchronisation that decides stopping and checks the logits
for NaN/inf (on an accelerator with only a length limit, every ``_DEFERRED_CHECK_EVERY`` steps).
The sequence, mask and positions live in preallocated buffers; each step passes slice views.
"""

from __future__ import annotations

import importlib
from typing import Any

# Names are imported on first use: GenerationConfig and the streamers (config.py, streamers.py) need
# no torch, so `from neox import GenerationConfig` stays ~0.2 s instead of torch's several seconds.
_EXPORTS = {
    # config.py
    "GENERATION_CONFIG_NAME": "config",
    "GenerateArgumentError": "config",
    "GenerationConfig": "config",
    # outputs.py
    "GenerateBeamDecoderOnlyOutput": "outputs",
    "GenerateDecoderOnlyOutput": "outputs",
    # streamers.py
    "TextIteratorStreamer": "streamers",
    "TextStreamer": "streamers",
    # processors.py
    "Processor": "processors",
    "bad_words": "processors",
    "epsilon_cutoff": "processors",
    "eta_cutoff": "processors",
    "force_token_at": "processors",
    "min_length": "processors",
    "min_new_tokens": "processors",
    "min_p": "processors",
    "no_repeat_ngram": "processors",
    "prefix_allowed_tokens": "processors",
    "remove_invalid_values": "processors",
    "renormalize": "processors",
    "repetition_penalty": "processors",
    "suppress_tokens": "processors",
    "suppress_tokens_at": "processors",
    "temperature": "processors",
    "top_k": "processors",
    "top_p": "processors",
    "typical_p": "processors",
    # decoding.py
    "NonFiniteLogitsError": "decoding",
    "decode_step": "decoding",
    "prefill": "decoding",
    # search.py
    "generate": "search",
}

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


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
