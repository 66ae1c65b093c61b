"""Checks on model inputs shared by ``forward`` and ``generate``: each error names the argument.

Kept below both the model and the decoding loops so that neither imports the other for them.

Checks that read tensor values (a token id out of range) cost one device→host sync; they are
skipped while torch.compile / torch.export trace the model (:func:`is_tracing`), where a sync
would break the graph. Shape and dtype checks are free and always run.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = [
    "is_tracing", "check_input_ids", "check_inputs_embeds", "check_labels", "check_past",
    "check_logits_to_keep", "check_position_ids",
]

_INT_DTYPES = (torch.int64, torch.int32, torch.int16, torch.uint8, torch.int8)


def is_tracing() -> bool:
    """True while torch.compile, torch.export or torch.jit trace: no data-dependent checks then."""
    return torch.compiler.is_compiling() or torch.jit.is_tracing()


def check_input_ids(input_ids: torch.Tensor, vocab_size: int) -> None:
    if input_ids.dtype not in _INT_DTYPES:
        raise ValueError(f"input_ids must be an integer tensor, got {input_ids.dtype}")
    if input_ids.numel() == 0 or is_tracing():
        return
    lo, hi = (int(v) for v in torch.aminmax(input_ids))  # one sync, before any CUDA kernel can assert
    if lo < 0 or hi >= vocab_size:
        bad = lo if lo < 0 else hi
        raise ValueError(f"input_ids contains token id {bad}, outside the vocabulary [0, {vocab_size})")


def check_inputs_embeds(inputs_embeds: Any, hidden_size: int) -> None:
    if not isinstance(inputs_embeds, torch.Tensor):
        raise TypeError(f"inputs_embeds must be a torch.Tensor (batch, seq_len, {hidden_size}), "
                        f"got {type(inputs_embeds).__name__}")
    if not inputs_embeds.is_floating_point():
        raise TypeError(
            f"inputs_embeds must be a floating-point tensor of embeddings, got {inputs_embeds.dtype} "
            "(token ids go in input_ids)"
        )
    if inputs_embeds.dim() != 3 or inputs_embeds.shape[-1] != hidden_size:
        raise ValueError(
            f"inputs_embeds must be (batch, seq_len, {hidden_size}), got {tuple(inputs_embeds.shape)}"
        )


def check_position_ids(position_ids: Any, batch: int, seq_len: int) -> torch.Tensor:
    """(T,) or (B|1, T) positions, as a (B|1, T) tensor."""
    if not isinstance(position_ids, torch.Tensor):
        raise TypeError(f"position_ids must be a torch.Tensor, got {type(position_ids).__name__}")
    if position_ids.dim() == 1:
        position_ids = position_ids[None]
    if position_ids.dim() != 2 or position_ids.shape[-1] != seq_len or position_ids.shape[0] not in (1, batch):
        raise ValueError(f"position_ids has shape {tuple(position_ids.shape)}; expected ({batch}, {seq_len})")
    if position_ids.dtype == torch.bool or position_ids.is_complex():
        raise TypeError(f"position_ids must hold integer positions, got {position_ids.dtype}")
    return position_ids


def check_labels(labels: Any, vocab_size: int, ignore_index: int = -100) -> None:
    """Labels are integer class ids in [0, vocab_size), or ``ignore_index`` (-100) to skip a position."""
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"labels must be a torch.Tensor of token ids, got {type(labels).__name__}")
    if labels.dtype not in _INT_DTYPES:
        raise TypeError(f"labels must be an integer tensor of token ids (-100 to ignore), got {labels.dtype}")
    if labels.numel() == 0 or is_tracing():
        return
    bad = (labels >= vocab_size) | ((labels < 0) & (labels != ignore_index))
    if bool(bad.any()):  # one sync
        value = int(labels[bad][0])
        raise ValueError(
            f"labels contains {value}, outside the vocabulary [0, {vocab_size}) and not the ignore index {ignore_index}"
        )


def check_past(past: Any, num_layers: int, num_heads: int, head_size: int) -> None:
    """A cache (a KVCache, or a legacy tuple already copied into one) must fit the model."""
    keys = getattr(past, "keys", None)
    if not isinstance(keys, list) or not keys:
        raise TypeError(
            f"past_key_values must be a KVCache or a tuple of per-layer (key, value) tensors, got {type(past).__name__}"
        )
    if len(keys) != num_layers:
        raise ValueError(f"past_key_values holds {len(keys)} layers, the model has {num_layers}")
    key = keys[0]
    if key.shape[1] != num_heads or key.shape[3] != head_size:
        raise ValueError(
            f"past_key_values keys have shape {tuple(key.shape)} (batch, heads, seq, head_size); "
            f"the model has {num_heads} heads of size {head_size}"
        )
    if not key.is_floating_point():
        raise TypeError(f"past_key_values must hold floating-point keys and values, got {key.dtype}")


def check_logits_to_keep(logits_to_keep: Any, seq_len: int) -> None:
    """An int N ≥ 0 (last N positions; 0 = all), or a 1-D tensor of positions in [-T, T)."""
    if isinstance(logits_to_keep, bool) or not isinstance(logits_to_keep, (int, torch.Tensor)):
        raise TypeError(
            f"logits_to_keep must be an int or a 1-D tensor of positions, got {type(logits_to_keep).__name__}"
        )
    if isinstance(logits_to_keep, int):
        if logits_to_keep < 0:
            raise ValueError(f"logits_to_keep must be >= 0, got {logits_to_keep}")
        return
    t = logits_to_keep
    if t.dim() != 1:
        raise ValueError(f"logits_to_keep as a tensor must be 1-D (positions), got shape {tuple(t.shape)}")
    if t.dtype == torch.bool:
        if t.shape[0] != seq_len:
            raise ValueError(f"logits_to_keep as a boolean mask must have length {seq_len}, got {t.shape[0]}")
        return
    if t.dtype not in _INT_DTYPES:
        raise TypeError(f"logits_to_keep as a tensor must hold integer positions, got {t.dtype}")
    if t.numel() == 0 or is_tracing():
        return
    lo, hi = (int(v) for v in torch.aminmax(t))
    if lo < -seq_len or hi >= seq_len:
        bad = lo if lo < -seq_len else hi
        raise ValueError(f"logits_to_keep holds position {bad}, outside [-{seq_len}, {seq_len})")
