"""PEFT with a neox model.

PEFT adapts a neox model as it adapts transformers' GPT-NeoX for every setting but one: with
``target_modules="all-linear"`` PEFT leaves the output head out only for a
``transformers.PreTrainedModel`` (it has no other hook for it), so on a neox model it would
adapt ``embed_out`` too. :func:`get_peft_model` resolves "all-linear" first, as PEFT does for a
transformers model, then hands over to ``peft.get_peft_model``::

    from neox.integrations.peft import get_peft_model
    model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", target_modules="all-linear"))

Every other PEFT entry point (``peft.get_peft_model`` with explicit or default target modules,
``prepare_model_for_kbit_training``, ``PeftModel.from_pretrained``) takes a neox model as is.
"""

from __future__ import annotations

from typing import Any

from torch import nn

__all__ = ["get_peft_model", "resolve_all_linear"]

#: Names PEFT treats as a sequence-classification head (peft.utils.constants.SEQ_CLS_HEAD_NAMES).
_SEQ_CLS_HEADS = ("score", "classifier")


def resolve_all_linear(model: nn.Module, peft_config: Any) -> Any:
    """Replace ``target_modules="all-linear"`` by PEFT's own expansion less the output head.

    The head is ``model.get_output_embeddings()`` or, for a sequence-classification task without
    one, the ``score``/``classifier`` module — what PEFT leaves out for transformers models.
    Any other ``target_modules`` is left alone. Returns ``peft_config`` (changed in place, as
    PEFT changes it).
    """
    target = getattr(peft_config, "target_modules", None)
    if not (isinstance(target, str) and target.lower() == "all-linear"):
        return peft_config
    from peft.tuners.tuners_utils import _maybe_include_all_linear_layers  # lazily: PEFT is optional

    peft_config = _maybe_include_all_linear_layers(peft_config, model)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None and str(getattr(peft_config, "task_type", "")).upper().endswith("SEQ_CLS"):
        head = next((getattr(model, name) for name in _SEQ_CLS_HEADS if isinstance(getattr(model, name, None), nn.Module)), None)
    if head is not None:
        names = {name for name, module in model.named_modules() if module is head}
        peft_config.target_modules = set(peft_config.target_modules) - names
    return peft_config


def get_peft_model(model: nn.Module, peft_config: Any, *args: Any, **kwargs: Any) -> Any:
    """``peft.get_peft_model`` with "all-linear" resolved as for a transformers model (see above)."""
    import peft  # lazily: PEFT is optional

    return peft.get_peft_model(model, resolve_all_linear(model, peft_config), *args, **kwargs)
