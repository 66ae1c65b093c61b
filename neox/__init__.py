"""neox: a lean, drop-in PyTorch re-implementation of the transformers GPT-NeoX family.

    from neox import GPTNeoXConfig, GPTNeoXModel, GPTNeoXForCausalLM, GPTNeoXTokenizerFast

Names are imported lazily, so ``import neox`` does no work and pulls in torch only when a model
class is first touched.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "GPTNeoXConfig": "neox.config",
    "GPTNeoXModel": "neox.modeling",
    "GPTNeoXForCausalLM": "neox.modeling",
    "GPTNeoXPreTrainedModel": "neox.modeling",
    "GPTNeoXForSequenceClassification": "neox.heads",
    "GPTNeoXForTokenClassification": "neox.heads",
    "GPTNeoXForQuestionAnswering": "neox.heads",
    "KVCache": "neox.cache",
    "BaseModelOutputWithPast": "neox.outputs",
    "CausalLMOutputWithPast": "neox.outputs",
    "SequenceClassifierOutputWithPast": "neox.outputs",
    "TokenClassifierOutput": "neox.outputs",
    "QuestionAnsweringModelOutput": "neox.outputs",
    "GPTNeoXTokenizerFast": "neox.tokenization",
    "BatchEncoding": "neox.tokenization",
    "GenerationConfig": "neox.generation",
    "TextStreamer": "neox.generation",
    "TextIteratorStreamer": "neox.generation",
    "quantize": "neox.quantization",
    "QuantizationConfig": "neox.quantization",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'neox' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
