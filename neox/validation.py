"""Checks on model inputs shared by ``forward`` and ``generate``: each error names the argument.

Kept below both the model and the decoding loops so that neither imports the other for them.
"""

from __future__ import annotations

import torch

__all__ = ["check_input_ids"]


def check_input_ids(input_ids: torch.Tensor, vocab_size: int) -> None:
    if input_ids.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8, torch.int8):
        raise ValueError(f"input_ids must be an integer tensor, got {input_ids.dtype}")
    if input_ids.numel() == 0 or torch.compiler.is_compiling():
        # Under torch.compile / torch.export the ids are symbolic: reading them would break the
        # graph (fullgraph=True fails) or fail export. A traced graph checks nothing, as transformers'.
        return
    lo, hi = (int(v) for v in torch.aminmax(input_ids))  # one sync, before any CUDA kernel can assert
    if lo < 0 or hi >= vocab_size:
        bad = lo if lo < 0 else hi
        raise ValueError(f"input_ids contains token id {bad}, outside the vocabulary [0, {vocab_size})")
