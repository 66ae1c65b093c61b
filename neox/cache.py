"""The KV cache: every layer's keys and values, preallocated and written in place.

An explicit object, passed into ``forward`` and returned, never hidden module state. It also
answers ``len(cache)`` and ``cache[layer] -> (key, value)``, so code written against the
documented tuple-of-tuples form of ``past_key_values`` keeps working.

Shapes: (B, H, capacity, hs) buffers per layer; B batch, H heads (a rank's local heads under
tensor parallelism), hs head size.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from .config import GPTNeoXConfig

__all__ = ["KVCache", "CacheProtocolAdapter", "is_cache_protocol"]


class KVCache:
    """Keys and values of every layer, preallocated to ``capacity`` tokens and written in place.

    ``keys[i]`` / ``values[i]`` are (B, H, capacity, hs) buffers; the first ``len`` positions
    are filled. ``cache[i]`` gives layer i's (key, value) as (B, H, S, hs) views and ``len(cache)``
    the number of layers, which is the documented tuple-of-tuples form of ``past_key_values``.
    The model writes layer i's new keys with :meth:`update` and calls :meth:`advance` once per
    forward. A cache that runs out of room grows (doubling, one copy); ``generate`` sizes it to
    the final length up front so that never happens while decoding.
    """

    def __init__(
        self,
        num_layers: int,
        batch_size: int,
        num_heads: int,
        head_size: int,
        capacity: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> None:
        shape = (batch_size, num_heads, capacity, head_size)
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.length = 0

    @classmethod
    def for_model(
        cls, config: GPTNeoXConfig, batch_size: int, capacity: int, dtype: torch.dtype, device: torch.device
    ) -> "KVCache":
        return cls(config.num_hidden_layers, batch_size, config.num_attention_heads, config.head_size,
                   capacity, dtype, device)

    @classmethod
    def from_legacy_cache(
        cls, past: Sequence[tuple[torch.Tensor, torch.Tensor]], extra_capacity: int = 0
    ) -> "KVCache":
        """Copy a tuple of per-layer (key, value) tensors, each (B, H, S, hs), into a new cache."""
        if len(past) == 0:
            raise ValueError("past_key_values is an empty sequence; pass None to start without a cache")
        for i, layer in enumerate(past):
            if not (isinstance(layer, (tuple, list)) and len(layer) == 2
                    and all(isinstance(t, torch.Tensor) and t.dim() == 4 for t in layer)):
                raise ValueError(
                    f"past_key_values[{i}] must be a (key, value) pair of 4-D tensors (B, H, S, hs)"
                )
            if layer[0].shape != layer[1].shape or layer[0].shape != past[0][0].shape:
                raise ValueError(
                    f"past_key_values[{i}] has key {tuple(layer[0].shape)} and value {tuple(layer[1].shape)}; "
                    f"every key and value must have layer 0's shape {tuple(past[0][0].shape)}"
                )
        k0 = past[0][0]
        batch, heads, length, head_size = k0.shape
        cache = cls(len(past), batch, heads, head_size, length + max(extra_capacity, 1), k0.dtype, k0.device)
        for i, (k, v) in enumerate(past):
            cache.keys[i][:, :, :length] = k
            cache.values[i][:, :, :length] = v
        cache.length = length
        return cache

    # -- the documented tuple form -------------------------------------------------------

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.keys[layer][:, :, : self.length], self.values[layer][:, :, : self.length]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return (self[i] for i in range(len(self)))

    def to_legacy_cache(self) -> tuple[tuple[torch.Tensor, torch.Tensor], ...]:
        return tuple(self)

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.length

    @property
    def capacity(self) -> int:
        return self.keys[0].shape[2]

    @property
    def batch_size(self) -> int:
        return self.keys[0].shape[0]

    def __repr__(self) -> str:
        return f"KVCache(layers={len(self)}, batch={self.batch_size}, length={self.length}, capacity={self.capacity})"

    # -- writing ---------------------------------------------------------------------------

    def reserve(self, new_tokens: int) -> None:
        """Make room for ``new_tokens`` more positions (one copy, doubling), before a forward."""
        need = self.length + new_tokens
        if need <= self.capacity:
            return
        capacity = max(need, 2 * self.capacity)
        for buffers in (self.keys, self.values):
            for i, old in enumerate(buffers):
                new = old.new_zeros(*old.shape[:2], capacity, old.shape[3])
                new[:, :, : self.length] = old[:, :, : self.length]
                buffers[i] = new

    def update(
        self, layer: int, key: torch.Tensor, value: torch.Tensor, positions: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write (B, H, T, hs) key/value at positions [len, len+T); return (B, H, len+T, hs) views.

        With ``positions`` (a (T,) tensor) the write goes there instead and the whole buffers
        (B, H, capacity, hs) come back: shapes then never change from step to step, which is
        what torch.compile and CUDA graphs need. The caller masks the unfilled positions.
        """
        if positions is not None:
            self.keys[layer].index_copy_(2, positions, key)
            self.values[layer].index_copy_(2, positions, value)
            return self.keys[layer], self.values[layer]
        end = self.length + key.shape[2]
        self.keys[layer][:, :, self.length : end] = key
        self.values[layer][:, :, self.length : end] = value
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]

    def advance(self, new_tokens: int) -> None:
        self.length += new_tokens

    def reorder(self, index: torch.Tensor) -> None:
        """Select batch rows (beam search), in place."""
        for buffers in (self.keys, self.values):
            for i, buf in enumerate(buffers):
                buffers[i] = buf.index_select(0, index.to(buf.device))

    def crop(self, length: int) -> None:
        """Forget every position from ``length`` on (e.g. to reuse a shared prompt)."""
        if not 0 <= length <= self.length:
            raise ValueError(f"cannot crop a cache of {self.length} tokens to {length}")
        self.length = length


def is_cache_protocol(obj: object) -> bool:
    """True for a transformers ``Cache`` (``DynamicCache``, ...) or any object with its per-layer
    protocol: ``update(key, value, layer_idx) -> (keys, values)`` and ``get_seq_length()``."""
    return not isinstance(obj, KVCache) and callable(getattr(obj, "update", None)) and callable(
        getattr(obj, "get_seq_length", None)
    )


class CacheProtocolAdapter:
    """Drives a transformers-style cache through the interface the model uses on a :class:`KVCache`.

    The wrapped cache is updated in place, layer by layer, as transformers' models update it (PEFT's
    prefix tuning and user code that passes a ``DynamicCache`` read it back). Only caches that
    return exactly the keys seen so far are supported (dynamic ones); a static cache that returns its
    whole preallocated buffer would need masks this model does not build for it.
    """

    def __init__(self, cache: object) -> None:
        self.cache = cache
        self.length = int(cache.get_seq_length())

    @property
    def batch_size(self) -> int | None:
        layers = getattr(self.cache, "layers", None) or []
        keys = getattr(layers[0], "keys", None) if layers else None
        return keys.shape[0] if isinstance(keys, torch.Tensor) and keys.dim() == 4 else None

    def reserve(self, new_tokens: int) -> None:  # the wrapped cache grows itself
        pass

    def update(
        self, layer: int, key: torch.Tensor, value: torch.Tensor, positions: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if positions is not None:
            raise ValueError("static-shape decoding needs neox's KVCache, not a transformers cache object")
        keys, values = self.cache.update(key, value, layer)
        if keys.shape[2] != self.length + key.shape[2]:
            raise ValueError(
                f"past_key_values ({type(self.cache).__name__}) returned {keys.shape[2]} positions for layer {layer} "
                f"after {self.length} cached + {key.shape[2]} new; only caches that return exactly the positions "
                "seen so far (DynamicCache) are supported"
            )
        return keys, values

    def advance(self, new_tokens: int) -> None:
        self.length += new_tokens

    def reorder(self, index: torch.Tensor) -> None:
        """Select batch rows (beam search), with the wrapped cache's own ``reorder_cache``."""
        reorder = getattr(self.cache, "reorder_cache", None)
        if reorder is None:
            raise ValueError(f"beam search needs past_key_values with reorder_cache(); {type(self.cache).__name__} has none")
        reorder(index)
