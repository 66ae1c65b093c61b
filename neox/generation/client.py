"""Decode steps through the model's own ``forward`` and ``prepare_inputs_for_generation``, as
transformers 5.24's ``generate()`` calls them — used only when a client changed how a step runs.

The fast path (:mod:`.decoding`) runs the core directly, which is exact for neox's own methods but
would skip whatever a client put around them: PEFT's prompt tuning swaps
``prepare_inputs_for_generation`` to prepend its virtual tokens, accelerate wraps ``forward`` to move
tensors between devices, a user compiles ``forward`` or registers a forward hook. When
``model._client_changed_steps()`` says so, each step instead does what transformers'
``_prefill`` / ``_sample`` do:

    inputs = model.prepare_inputs_for_generation(sequence, next_sequence_length=..., **model_kwargs)
    out = model(**inputs, return_dict=True)            # the (possibly wrapped) forward
    model_kwargs: cache ← out's cache; attention_mask, position_ids grow by one column

with transformers' model_kwargs: ``attention_mask`` (None when nothing is padded), ``position_ids``
from the mask, ``logits_to_keep=1``, ``cache`` (neox's preallocated KVCache), ``use_cache``, and
``inputs_embeds`` for the first step. Logits processing, stopping and beam bookkeeping stay in
neox's loops, unchanged.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch

__all__ = ["ClientSteps"]


class ClientSteps:
    """transformers' per-step calling convention over one generate() call's buffers."""

    def __init__(self, model: Any, run: Any) -> None:
        self.run = run
        # transformers decides by the forward's signature which of these it builds.
        params = inspect.signature(model.forward).parameters
        kwargs: dict[str, Any] = {}
        prompt = run.prompt_len
        # transformers drops an all-ones mask before the loop (run.mask is None then).
        kwargs["attention_mask"] = run.mask[:, :prompt].clone() if run.mask is not None else None
        if "position_ids" in params:
            if run.positions is not None:
                kwargs["position_ids"] = run.positions[:, :prompt].clone()
            else:
                kwargs["position_ids"] = torch.arange(prompt, device=run.device).expand(run.N, -1).clone()
        if "logits_to_keep" in params:
            kwargs["logits_to_keep"] = 1
        if run.embeds is not None:
            kwargs["inputs_embeds"] = run.embeds
        kwargs["cache"] = run.cache
        kwargs["use_cache"] = run.cache is not None
        self.kwargs = kwargs
        self.first = True

    def __call__(self, model: Any, ids: Any, flags: dict[str, bool]) -> tuple[Any, Any]:
        """Logits (N, V) fp32 after the sequence ``ids`` (N, cur) so far, and the model's output."""
        run = self.run
        extra = {name: True for name, on in flags.items() if on}
        if self.first:
            inputs = model.prepare_inputs_for_generation(
                ids, next_sequence_length=run.prompt_len - run.past_len, is_first_iteration=True,
                **self.kwargs, **extra,
            )
            self.first = False
        else:
            step = 1 if self.kwargs["use_cache"] else None
            inputs = model.prepare_inputs_for_generation(ids, next_sequence_length=step, **self.kwargs, **extra)
        out = model(**inputs, return_dict=True)
        # transformers' _update_model_kwargs_for_generation: the next token's column.
        cache = out.get("past_key_values") if hasattr(out, "get") else None
        if cache is not None:
            self.kwargs["cache"] = cache
        positions = self.kwargs.get("position_ids")
        if positions is not None:
            self.kwargs["position_ids"] = torch.cat([positions, positions[:, -1:] + 1], dim=-1)
        mask = self.kwargs.get("attention_mask")
        if mask is not None:
            self.kwargs["attention_mask"] = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=-1)
        logits = out["logits"] if hasattr(out, "keys") else out[0]
        return logits[:, -1].to(device=run.device, dtype=torch.float32), out
