"""Logits processors: plain functions (input_ids, scores) -> scores, and the list one call applies."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from .config import GenerationConfig, is_int

__all__ = ["Processor", "build_processors", "apply_processors"]

# Each is a plain function (input_ids (N, L), scores (N, V)) -> new scores, built once per call.
# None modifies its input in place (the raw logits may be kept for output_logits). The formulas are
# transformers' own, operation for operation, so the processed scores are bitwise the same.

Processor = Callable[[Any, Any], Any]


def repetition_penalty(penalty: float, prompt_ignore_length: Any = None) -> Processor:
    """Divide the positive scores, multiply the negative, of every token already in the sequence
    (CTRL). ``prompt_ignore_length`` (N,): leading positions (left padding) not to count."""

    def apply(input_ids, scores):
        V = scores.shape[-1]
        if prompt_ignore_length is not None:
            positions = torch.arange(input_ids.shape[1], device=input_ids.device)
            input_ids = input_ids.masked_fill(positions[None, :] < prompt_ignore_length[:, None], V)
        # Ids past the head's vocabulary (and the masked ones) land in a spare column, then dropped.
        input_ids = input_ids.clamp(max=V)
        padded = F.pad(scores, (0, 1))
        score = torch.gather(padded, 1, input_ids)
        score = torch.where(score < 0, score * penalty, score / penalty)
        return padded.scatter(1, input_ids, score)[..., :V]

    return apply


def no_repeat_ngram(size: int) -> Processor:
    """Ban every token that would complete an n-gram already in the sequence."""

    def apply(input_ids, scores):
        L = input_ids.shape[-1]
        if L < size:
            return scores
        prefix = input_ids[:, L + 1 - size :]  # the n-1 tokens a new n-gram would start with
        windows = input_ids.unfold(dimension=1, size=size, step=1)  # (N, L-size+1, size)
        matches = (windows[..., :-1] == prefix.unsqueeze(1)).all(dim=-1)
        V = scores.shape[-1]
        banned = scores.new_zeros((scores.shape[0], V + 1), dtype=torch.bool)
        banned.scatter_(1, torch.where(matches, windows[..., -1].clamp(max=V), V), True)
        return scores.masked_fill(banned[:, :V], -float("inf"))

    return apply


def bad_words(bad_words_ids: list[list[int]], eos: list[int], vocab_size: int, device: Any) -> Processor:
    """Ban single tokens outright, and a sequence's last token wherever its prefix was just generated.
    An end-of-sequence token alone is never banned (transformers drops such entries). Applied as
    transformers does, as an additive bias of -inf."""
    words = [w for w in bad_words_ids if not (len(w) == 1 and w[0] in eos)]
    single = torch.zeros(vocab_size, dtype=torch.float, device=device)
    for w in words:
        if len(w) == 1:
            single[w[0]] = -float("inf")
    by_prefix: dict[int, list[list[int]]] = {}
    for w in words:
        if len(w) > 1:
            by_prefix.setdefault(len(w) - 1, []).append(w)
    groups = [
        (torch.tensor([w[:-1] for w in group], device=device), torch.tensor([w[-1] for w in group], device=device),
         torch.full((len(group),), -float("inf"), device=device))
        for group in by_prefix.values()
    ]

    def apply(input_ids, scores):
        bias = torch.zeros_like(scores)
        bias += single
        for prefixes, last, minus_inf in groups:
            n = prefixes.shape[1]
            if n > input_ids.shape[1]:
                continue
            hit = (input_ids[:, None, -n:] == prefixes).all(dim=-1)  # (N, words)
            bias.index_add_(1, last, torch.where(hit, minus_inf, 0.0).to(bias.dtype))
        return scores + bias

    return apply


def min_length(length: int, eos_mask: Any) -> Processor:
    """No end-of-sequence while the sequence (prompt included) is shorter than ``length``."""

    def apply(input_ids, scores):
        if input_ids.shape[-1] < length:
            return torch.where(eos_mask, -math.inf, scores)
        return scores

    return apply


def min_new_tokens(prompt_length: int, count: int, eos_mask: Any) -> Processor:
    """No end-of-sequence before ``count`` new tokens."""

    def apply(input_ids, scores):
        if input_ids.shape[-1] - prompt_length < count:
            return torch.where(eos_mask, -math.inf, scores)
        return scores

    return apply


def prefix_allowed_tokens(fn: Callable[[int, Any], list[int]], num_beams: int) -> Processor:
    """Only the tokens ``fn(batch_id, sequence)`` allows (constrained decoding)."""

    def apply(input_ids, scores):
        mask = torch.full_like(scores, -math.inf)
        batch_size = input_ids.shape[0] // num_beams
        for batch_id in range(batch_size):
            for beam_id in range(num_beams):
                row = batch_id * num_beams + beam_id
                allowed = fn(batch_id, input_ids[row])
                if len(allowed) == 0:
                    raise ValueError(f"prefix_allowed_tokens_fn returned no allowed token for batch item {batch_id}: "
                                     f"the constraint cannot be satisfied")
                mask[row, allowed] = 0
        processed = scores + mask
        # Where every allowed token already scores -inf, force them at 0 so the constraint holds.
        stuck = processed.amax(dim=-1).isneginf().view(batch_size, -1).all(dim=-1, keepdim=True)
        return torch.where(stuck.repeat_interleave(num_beams, dim=0), mask, processed)

    return apply


def force_token_at(length: int, token_ids: Any) -> Processor:
    """Force ``token_ids`` (one of them) when the sequence is ``length`` long (forced BOS / EOS)."""

    def apply(input_ids, scores):
        if input_ids.shape[-1] == length:
            forced = torch.full_like(scores, -math.inf)
            forced[:, token_ids] = 0
            return forced
        return scores

    return apply


def remove_invalid_values(input_ids, scores):
    """NaN → 0, ±inf → the dtype's largest finite value (opt-in, remove_invalid_values=True)."""
    out = torch.where(scores != scores, 0.0, scores)
    out = torch.where(scores == float("inf"), torch.finfo(scores.dtype).max, out)
    return torch.where(scores == -float("inf"), torch.finfo(scores.dtype).min, out)


def suppress_tokens(token_mask: Any) -> Processor:
    def apply(input_ids, scores):
        return torch.where(token_mask, -float("inf"), scores)

    return apply


def suppress_tokens_at(begin_index: int, token_mask: Any) -> Processor:
    def apply(input_ids, scores):
        if input_ids.shape[-1] == begin_index:
            return torch.where(token_mask, -float("inf"), scores)
        return scores

    return apply


def temperature(value: float) -> Processor:
    def apply(input_ids, scores):
        return scores / value

    return apply


def top_k(k: int, min_tokens_to_keep: int = 1) -> Processor:
    k = max(k, min_tokens_to_keep)

    def apply(input_ids, scores):
        kk = min(k, scores.size(-1))
        remove = scores < torch.topk(scores, kk)[0][..., -1, None]
        return scores.masked_fill(remove, -float("inf"))

    return apply


def top_p(p: float, min_tokens_to_keep: int = 1) -> Processor:
    """Nucleus: keep the smallest set of most likely tokens whose probability reaches ``p``."""

    def apply(input_ids, scores):
        sorted_logits, sorted_indices = torch.sort(scores, descending=False)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        remove_sorted = cumulative <= (1 - p)
        remove_sorted[..., -min_tokens_to_keep:] = 0
        remove = remove_sorted.scatter(1, sorted_indices, remove_sorted)
        return scores.masked_fill(remove, -float("inf"))

    return apply


def min_p(p: float, min_tokens_to_keep: int = 1) -> Processor:
    """Keep tokens at least ``p`` × the most likely token's probability."""

    def apply(input_ids, scores):
        probs = torch.softmax(scores, dim=-1)
        remove = probs < p * probs.amax(dim=-1, keepdim=True)
        k = min(min_tokens_to_keep, probs.shape[-1])
        remove.scatter_(-1, torch.topk(probs, k, dim=-1).indices, False)
        return scores.masked_fill(remove, -float("inf"))

    return apply


def typical_p(mass: float, min_tokens_to_keep: int = 1) -> Processor:
    """Locally typical sampling: keep the tokens whose surprisal is closest to the entropy, up to ``mass``."""

    def apply(input_ids, scores):
        logp = torch.nn.functional.log_softmax(scores, dim=-1)
        entropy = -(logp * torch.exp(logp)).nansum(-1, keepdim=True)
        shifted = torch.abs((-logp) - entropy)
        sorted_scores, sorted_indices = torch.sort(shifted, descending=False)
        cumulative = scores.gather(-1, sorted_indices).softmax(dim=-1).cumsum(dim=-1)
        last = (cumulative < mass).sum(dim=1)
        last.clamp_(max=sorted_scores.shape[-1] - 1)
        remove_sorted = sorted_scores > sorted_scores.gather(1, last.view(-1, 1))
        remove_sorted[..., :min_tokens_to_keep] = 0
        remove = remove_sorted.scatter(1, sorted_indices, remove_sorted)
        return scores.masked_fill(remove, -float("inf"))

    return apply


def epsilon_cutoff(epsilon: float, min_tokens_to_keep: int = 1) -> Processor:
    def apply(input_ids, scores):
        remove = scores.softmax(dim=-1) < epsilon
        k = min(min_tokens_to_keep, scores.size(-1))
        remove = remove & (scores < torch.topk(scores, k)[0][..., -1, None])
        return scores.masked_fill(remove, -float("inf"))

    return apply


def eta_cutoff(epsilon: float, device: Any, min_tokens_to_keep: int = 1) -> Processor:
    eps = torch.tensor(epsilon, device=device)

    def apply(input_ids, scores):
        probs = scores.softmax(dim=-1)
        entropy = torch.distributions.Categorical(logits=scores).entropy()
        eta = torch.min(eps, torch.sqrt(eps) * torch.exp(-entropy))[..., None]
        remove = probs < eta
        k = min(min_tokens_to_keep, scores.size(-1))
        remove = remove & (scores < torch.topk(scores, k)[0][..., -1, None])
        return scores.masked_fill(remove, -float("inf"))

    return apply


def renormalize(input_ids, scores):
    return scores.log_softmax(dim=-1)


def token_list(value: Any, name: str) -> list[int]:
    if value is None:
        return []
    if isinstance(value, torch.Tensor):
        value = value.tolist()
    if is_int(value):
        return [value]
    if isinstance(value, (list, tuple)) and all(is_int(v) for v in value):
        return list(value)
    raise ValueError(f"`{name}` must be an integer or a list of integers, got {value!r}")


def build_processors(cfg: GenerationConfig, ids_len: int, min_len: int, max_length: int, prompt_mask: Any,
                     eos_list: list[int], user_processors: list[Callable], prefix_fn: Callable | None, device: Any,
                     vocab: int) -> list[Processor]:
    """transformers' _get_logits_processor order: constraints, the user's processors, warpers."""
    procs: list[Processor] = []
    eos_mask = None
    if eos_list:
        eos_mask = torch.isin(torch.arange(vocab, device=device), torch.tensor(eos_list, device=device))
    if cfg.repetition_penalty != 1.0:
        ignore = (prompt_mask != 0).int().argmax(dim=1) if prompt_mask is not None else None
        procs.append(repetition_penalty(cfg.repetition_penalty, ignore))
        if ids_len == 0:
            warnings.warn("Passing `repetition_penalty` with `inputs_embeds` and without `input_ids` to `generate` "
                          "will apply the penalty only to newly generated tokens, not to the prompt.", UserWarning)
    if cfg.no_repeat_ngram_size > 0:
        procs.append(no_repeat_ngram(cfg.no_repeat_ngram_size))
        if ids_len == 0:
            warnings.warn("Passing `no_repeat_ngram_size` with `inputs_embeds` and without `input_ids` to `generate` "
                          "will apply n-gram constraints only to newly generated tokens, not to the prompt.", UserWarning)
    if cfg.bad_words_ids is not None:
        procs.append(bad_words(cfg.bad_words_ids, eos_list, vocab, device))
    if eos_mask is not None and cfg.min_length is not None and min_len > 0:
        procs.append(min_length(min_len, eos_mask))
    if eos_mask is not None and cfg.min_new_tokens is not None and cfg.min_new_tokens > 0:
        procs.append(min_new_tokens(ids_len, cfg.min_new_tokens, eos_mask))
    if prefix_fn is not None:
        procs.append(prefix_allowed_tokens(prefix_fn, max(cfg.num_beams, cfg.num_return_sequences)))
    if cfg.forced_bos_token_id is not None:
        procs.append(force_token_at(1, cfg.forced_bos_token_id))
    if cfg.forced_eos_token_id is not None:
        procs.append(force_token_at(max_length - 1, token_list(cfg.forced_eos_token_id, "forced_eos_token_id")))
    if cfg.remove_invalid_values is True:
        procs.append(remove_invalid_values)
    if cfg.suppress_tokens is not None:
        procs.append(suppress_tokens(_vocab_mask(cfg.suppress_tokens, vocab, device)))
    if cfg.begin_suppress_tokens is not None:
        begin = ids_len if (ids_len > 1 or cfg.forced_bos_token_id is None) else ids_len + 1
        procs.append(suppress_tokens_at(begin, _vocab_mask(cfg.begin_suppress_tokens, vocab, device)))
    procs.extend(user_processors)
    if cfg.do_sample:
        # Beams keep one token more than there are eos ids, so a beam can always continue.
        keep = (len(eos_list) + 1 if eos_list else 2) if cfg.num_beams > 1 else 1
        if cfg.temperature != 1.0:
            procs.append(temperature(cfg.temperature))
        if cfg.top_k != 0:
            procs.append(top_k(cfg.top_k, keep))
        if cfg.top_p < 1.0:
            procs.append(top_p(float(cfg.top_p), keep))
        if cfg.min_p is not None:
            procs.append(min_p(cfg.min_p, keep))
        if cfg.typical_p < 1.0:
            procs.append(typical_p(float(cfg.typical_p), keep))
        if 0.0 < cfg.epsilon_cutoff < 1.0:
            procs.append(epsilon_cutoff(float(cfg.epsilon_cutoff), keep))
        if 0.0 < cfg.eta_cutoff < 1.0:
            procs.append(eta_cutoff(float(cfg.eta_cutoff), device, keep))
    if cfg.renormalize_logits is True:
        procs.append(renormalize)
    return procs


def _vocab_mask(ids: Sequence[int], vocab: int, device: Any) -> Any:
    return torch.isin(torch.arange(vocab, device=device), torch.tensor(list(ids), dtype=torch.long, device=device))


def apply_processors(processors: list[Processor], input_ids: Any, scores: Any) -> Any:
    for proc in processors:
        scores = proc(input_ids, scores)
    return scores
