"""Output objects with the behaviour of transformers' ModelOutput.

A dict of the fields that are not None, in declaration order, with attribute access for every
field (None when unset), integer and slice indexing over the set fields (``outputs[0]`` is the
loss when there is one, else the logits), and ``to_tuple()``. HF Trainer, accelerate and PEFT
consume exactly these forms; accelerate rebuilds outputs as ``type(out)(dict)``, so a single
mapping argument is accepted too.

Every output class is a pytree node (flattened to its set fields' values, the field names as
context), as transformers registers its own, so ``torch.export``, the ONNX dynamo exporter and
DDP's ``static_graph`` can return and traverse them.
"""

from __future__ import annotations

import sys
from collections import OrderedDict
from functools import partial
from typing import Any

__all__ = [
    "ModelOutput", "BaseModelOutputWithPast", "CausalLMOutputWithPast", "SequenceClassifierOutputWithPast",
    "TokenClassifierOutput", "QuestionAnsweringModelOutput",
]


class ModelOutput(OrderedDict):
    _fields: tuple[str, ...] = ()
    # Other names a field is read by: transformers 5 calls past_key_values "cache" (out.cache,
    # out["cache"]) in every output that has one. Reading only; the key stays the documented name.
    _aliases: dict[str, str] = {"cache": "past_key_values"}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "torch" in sys.modules:  # otherwise the first instance registers its class (see _register_pytree)
            _register_pytree(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__()
        if type(self) not in _PYTREE_TYPES:
            _register_pytree(type(self))
        if args:
            if len(args) != 1 or not hasattr(args[0], "items") or kwargs:
                raise TypeError(f"{type(self).__name__} takes keyword arguments or a single mapping")
            kwargs = dict(args[0].items())
        unknown = set(kwargs) - set(self._fields)
        if unknown:
            raise TypeError(f"{type(self).__name__} has no field(s) {sorted(unknown)}; fields are {self._fields}")
        for name in self._fields:
            value = kwargs.get(name)
            if value is not None:
                super().__setitem__(name, value)

    def __getattr__(self, name: str) -> Any:
        name = type(self)._aliases.get(name, name)
        if name in type(self)._fields:
            return self.get(name)
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")

    def __setattr__(self, name: str, value: Any) -> None:
        if name not in self._fields:
            raise AttributeError(f"{type(self).__name__} has no field {name!r}")
        self[name] = value

    def __setitem__(self, key: str, value: Any) -> None:
        if key not in self._fields:
            raise KeyError(f"{type(self).__name__} has no field {key!r}")
        if value is None:
            self.pop(key, None)
            return
        # Keep declaration order whichever field is set first.
        items = {**self, key: value}
        super().clear()
        for name in self._fields:
            if name in items:
                super().__setitem__(name, items[name])

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, (int, slice)):
            return self.to_tuple()[key]
        return super().__getitem__(type(self)._aliases.get(key, key))

    def __reduce__(self):  # picklable despite the custom __init__
        return (type(self), (dict(self),))

    def to_tuple(self) -> tuple[Any, ...]:
        return tuple(self.values())

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={_short(v)}" for k, v in self.items())
        return f"{type(self).__name__}({inner})"


#: Output classes already registered with torch's pytree.
_PYTREE_TYPES: set[type] = set()


def _register_pytree(cls: type) -> None:
    """Register ``cls`` as a pytree node: children are the set fields' values, context their names.

    torch is imported here, not at module level: GenerationConfig (which imports this module)
    stays usable without torch. A class defined before torch was loaded registers on its first
    instance, which a traced forward always creates before the tracer flattens it.
    """
    if cls is ModelOutput or cls in _PYTREE_TYPES:
        return
    from torch.utils import _pytree  # torch is loaded: a subclass was defined after it, or an instance built

    _pytree.register_pytree_node(
        cls,
        _flatten,
        partial(_unflatten, cls),
        serialized_type_name=f"{cls.__module__}.{cls.__qualname__}",
        flatten_with_keys_fn=_flatten_with_keys,
    )
    _PYTREE_TYPES.add(cls)


def _flatten(output: ModelOutput) -> tuple[list[Any], list[str]]:
    return list(output.values()), list(output.keys())


def _flatten_with_keys(output: ModelOutput) -> tuple[list[tuple[Any, Any]], list[str]]:
    from torch.utils._pytree import MappingKey  # only ever called by torch's pytree

    return [(MappingKey(k), v) for k, v in output.items()], list(output.keys())


def _unflatten(cls: type, values: Any, context: list[str]) -> ModelOutput:
    return cls(**dict(zip(context, values)))


def _short(value: Any) -> str:
    shape = getattr(value, "shape", None)
    return f"<tensor {tuple(shape)}>" if shape is not None else type(value).__name__


class BaseModelOutputWithPast(ModelOutput):
    """``last_hidden_state`` (B, T, D); ``past_key_values`` (the KVCache) when caching;
    ``hidden_states`` (embeddings + one per layer) and ``attentions`` when asked for."""

    _fields = ("last_hidden_state", "past_key_values", "hidden_states", "attentions")


class CausalLMOutputWithPast(ModelOutput):
    """``loss`` (when labels are given), ``logits`` (B, T, V), then as BaseModelOutputWithPast."""

    _fields = ("loss", "logits", "past_key_values", "hidden_states", "attentions")


class SequenceClassifierOutputWithPast(ModelOutput):
    """``loss`` (when labels are given), ``logits`` (B, num_labels) read at each row's last
    non-padding token, then as BaseModelOutputWithPast."""

    _fields = ("loss", "logits", "past_key_values", "hidden_states", "attentions")


class TokenClassifierOutput(ModelOutput):
    """``loss`` (when labels are given), ``logits`` (B, T, num_labels), ``hidden_states``, ``attentions``."""

    _fields = ("loss", "logits", "hidden_states", "attentions")


class QuestionAnsweringModelOutput(ModelOutput):
    """``loss`` (when start and end positions are given), ``start_logits`` and ``end_logits``
    (B, T) each, ``hidden_states``, ``attentions``."""

    _fields = ("loss", "start_logits", "end_logits", "hidden_states", "attentions")
