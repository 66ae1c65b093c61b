"""What generate() returns with return_dict_in_generate=True."""

from __future__ import annotations

from ..outputs import ModelOutput

__all__ = ["GenerateDecoderOnlyOutput", "GenerateBeamDecoderOnlyOutput"]


class GenerateDecoderOnlyOutput(ModelOutput):
    """``sequences`` (N, prompt + new); per step ``scores`` (processed) and ``logits`` (raw), each
    (N, V); ``attentions`` / ``hidden_states`` per step, per layer; ``past_key_values`` (the cache)."""

    _fields = ("sequences", "scores", "logits", "attentions", "hidden_states", "past_key_values")


class GenerateBeamDecoderOnlyOutput(ModelOutput):
    """As GenerateDecoderOnlyOutput, plus ``sequences_scores`` (length-penalised beam scores, with
    output_scores) and ``beam_indices`` (N, new): the row each token extended, step by step."""

    _fields = ("sequences", "sequences_scores", "scores", "logits", "beam_indices", "attentions",
               "hidden_states", "past_key_values")
