"""The search loops: greedy/sampling and beam search, one token per step, and generate() that runs them."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

import torch

from .config import GenerateArgumentError
from .decoding import NonFiniteLogitsError, decode_step, nonfinite_rows, prefill
from .outputs import GenerateBeamDecoderOnlyOutput, GenerateDecoderOnlyOutput
from .prepare import Run, prepare
from .processors import apply_processors
from .stopping import stop_rows

__all__ = ["generate"]

# With only a length limit to stop on, an accelerator checks for NaN/inf logits this often
# (in steps) instead of waiting on the device every step.
_DEFERRED_CHECK_EVERY = 32


def generate(
    model: Any,
    inputs: Any = None,
    generation_config: Any = None,
    logits_processor: Iterable[Callable] | None = None,
    stopping_criteria: Iterable[Callable] | None = None,
    prefix_allowed_tokens_fn: Callable[[int, Any], list[int]] | None = None,
    synced_gpus: bool | None = None,
    assistant_model: Any = None,
    streamer: Any = None,
    negative_prompt_ids: Any = None,
    negative_prompt_attention_mask: Any = None,
    custom_generate: Any = None,
    **kwargs: Any,
) -> Any:
    """Generate token ids; transformers' ``generate()`` with the same arguments and the same tokens.

    Args:
        inputs / input_ids: prompt ids (B, T), left-padded for batches (1-D is read as one prompt).
            Omit both (and inputs_embeds) to start from ``bos_token_id``.
        attention_mask: (B, T), 1 for tokens, 0 for padding. Without it, padding is inferred from
            ``pad_token_id`` when that differs from the end-of-sequence ids. Position ids follow
            the mask (each row counts from its first real token).
        inputs_embeds: (B, T, D) prompt embeddings instead of ids (sequences then hold only the
            new tokens, unless input_ids of the same shape are given too).
        past_key_values / cache: a KVCache (or legacy tuple) holding a prefix of input_ids; only
            the rest of the prompt is run, and the cache is extended in place.
        generation_config: a neox or transformers GenerationConfig (or dict); keywords override it,
            and it overrides ``model.generation_config``.
        logits_processor / stopping_criteria: lists of callables ``(input_ids, scores)`` returning
            new scores / a bool per row; transformers' LogitsProcessor/StoppingCriteria work as is.
        streamer: anything with ``put(tensor)`` / ``end()`` (neox's or transformers' TextStreamer).
        tokenizer: needed with ``stop_strings``.
        **settings: any GenerationConfig field — max_new_tokens, max_length, min_new_tokens,
            do_sample, temperature, top_k, top_p, min_p, typical_p, repetition_penalty,
            no_repeat_ngram_size, bad_words_ids, suppress_tokens, num_beams, length_penalty,
            early_stopping, num_return_sequences, eos_token_id, pad_token_id, stop_strings,
            use_cache, return_dict_in_generate, output_scores, output_logits, ...

    Returns:
        A LongTensor (N, prompt + new) — rows that finished early are padded with ``pad_token_id``
        (the first end-of-sequence id when unset) — or, with ``return_dict_in_generate=True``, a
        GenerateDecoderOnlyOutput / GenerateBeamDecoderOnlyOutput.

    Raises:
        ValueError before any work for impossible settings or inputs (GenerateArgumentError, also
        a TypeError, for an unknown keyword); NonFiniteLogitsError naming the step when the model
        emits NaN/inf logits (transformers would silently emit token 0).
    """
    unsupported = {
        "assistant_model": assistant_model, "negative_prompt_ids": negative_prompt_ids,
        "negative_prompt_attention_mask": negative_prompt_attention_mask, "custom_generate": custom_generate,
    }
    for name, value in unsupported.items():
        if value is not None:
            raise GenerateArgumentError(f"generate(): `{name}` (assisted/guided/custom decoding) is not supported by neox")
    if synced_gpus:
        raise GenerateArgumentError("generate(): synced_gpus=True (DeepSpeed/FSDP multi-GPU decoding) is not supported by neox")
    if "trust_remote_code" in kwargs or "assistant_tokenizer" in kwargs:
        bad = "trust_remote_code" if "trust_remote_code" in kwargs else "assistant_tokenizer"
        raise GenerateArgumentError(f"generate(): `{bad}` is not supported by neox")

    run = prepare(model, inputs, generation_config, logits_processor, stopping_criteria,
                  prefix_allowed_tokens_fn, streamer, kwargs)
    with torch.inference_mode():
        if run.cfg.num_beams > 1:
            result = _beam_search(model, run)
        else:
            result = _sample(model, run)
    return _finish(run, result)


def _raise_nonfinite(run: Run, step: int, logits: Any, cause: BaseException | None = None) -> None:
    rows = nonfinite_rows(logits).nonzero().flatten().tolist()
    dtype = run.cache.keys[0].dtype if run.cache is not None else None
    raise NonFiniteLogitsError(
        f"the model produced NaN/inf logits at generation step {step} (new token {step + 1}), in row(s) "
        f"{rows[:16]}{' ...' if len(rows) > 16 else ''}. This is usually an overflow upstream"
        f"{' in ' + str(dtype).removeprefix('torch.') if dtype is not None else ''}: load the model in bfloat16 "
        f"or float32. (transformers would emit token 0 here without a word.)"
    ) from cause


def _out_of_time(run: Run) -> bool:
    return run.cfg.max_time is not None and time.time() - run.start_time > run.cfg.max_time


def _sample(model: Any, run: Run) -> Any:
    """Greedy decoding or multinomial sampling (transformers' _sample)."""
    cfg = run.cfg
    N, dev = run.N, run.device
    want = cfg.return_dict_in_generate
    scores_out = [] if want and cfg.output_scores else None
    logits_out = [] if want and cfg.output_logits else None
    attn_out = [] if want and cfg.output_attentions else None
    hidden_out = [] if want and cfg.output_hidden_states else None
    flags = dict(output_attentions=attn_out is not None, output_hidden_states=hidden_out is not None)
    unfinished = torch.ones(N, dtype=torch.bool, device=dev)
    track_rows = bool(run.eos_list or run.stop_strings or run.criteria)
    pad = torch.tensor(run.pad if run.pad is not None else 0, dtype=torch.long, device=dev)
    deferred_bad = None if run.host_sync_each_step else torch.zeros(run.max_length, dtype=torch.bool, device=dev)

    if run.streamer is not None:
        run.streamer.put(run.seq[:, : run.ids_len].cpu())

    cur = run.ids_len
    logits, out = prefill(
        model,
        run.seq[:, run.past_len : run.ids_len] if run.embeds is None else None,
        run.embeds,
        run.mask[:, : run.prompt_len] if run.mask is not None else None,
        run.positions[:, run.past_len : run.prompt_len] if run.positions is not None else None,
        run.cache, **flags,
    )
    step = 0
    while True:
        if attn_out is not None:
            attn_out.append(out.attentions)
        if hidden_out is not None:
            hidden_out.append(out.hidden_states)
        bad = nonfinite_rows(logits).any() if run.check_finite else None
        input_ids = run.seq[:, :cur]
        scores = apply_processors(run.processors, input_ids, logits)
        if scores_out is not None:
            scores_out.append(scores)
        if logits_out is not None:
            logits_out.append(logits)
        if cfg.do_sample:
            probs = torch.softmax(scores, dim=-1)
            try:
                next_tokens = torch.multinomial(probs, num_samples=1).squeeze(1)
            except RuntimeError as e:
                if run.check_finite and bool(bad):
                    _raise_nonfinite(run, step, logits, e)
                raise
        else:
            next_tokens = torch.argmax(scores, dim=-1)
        if run.eos is not None:  # finished rows get padding
            next_tokens = torch.where(unfinished, next_tokens, pad)
        run.seq[:, cur] = next_tokens
        cur += 1
        if track_rows:
            done = stop_rows(run.eos, run.stop_strings, run.criteria, run.seq[:, :cur], scores_out, next_tokens)
            unfinished &= ~done
        finished = cur >= run.max_length or _out_of_time(run)

        # The one host synchronisation of the step: stop? and were the logits finite?
        if run.host_sync_each_step:
            if bad is not None:
                is_bad, alive = torch.stack((bad, unfinished.any())).tolist()
                if is_bad:
                    _raise_nonfinite(run, step, logits)
            else:
                alive = bool(unfinished.any()) if track_rows else True
            if run.streamer is not None:
                run.streamer.put(next_tokens.cpu())
            finished = finished or not alive
        elif bad is not None:
            deferred_bad[step] = bad
            if finished or step % _DEFERRED_CHECK_EVERY == _DEFERRED_CHECK_EVERY - 1:
                hits = deferred_bad.nonzero()
                if hits.numel():
                    first = int(hits[0, 0])
                    raise NonFiniteLogitsError(
                        f"the model produced NaN/inf logits at generation step {first} (new token {first + 1}). "
                        f"This is usually an overflow upstream (e.g. in float16): load the model in bfloat16 or "
                        f"float32. (transformers would emit token 0 here without a word.)")
        if finished:
            break
        step += 1
        logits, out = _next_logits(model, run, cur, flags)

    if run.streamer is not None:
        run.streamer.end()
    sequences = run.seq[:, :cur].contiguous()
    if not want:
        return sequences
    return GenerateDecoderOnlyOutput(
        sequences=sequences,
        scores=tuple(scores_out) if scores_out is not None else None,
        logits=tuple(logits_out) if logits_out is not None else None,
        attentions=tuple(attn_out) if attn_out is not None else None,
        hidden_states=tuple(hidden_out) if hidden_out is not None else None,
        past_key_values=run.cache,
    )


def _next_logits(model: Any, run: Run, cur: int, flags: dict, last_tokens: Any = None) -> tuple[Any, Any]:
    """Logits after the sequence's first ``cur`` ids (``last_tokens`` overrides the ids fed)."""
    # Position p of the model's stream holds sequence column p − (prompt_len − ids_len).
    total = cur + (run.prompt_len - run.ids_len)
    if run.static is not None:
        pos = run.positions[:, total - 1 : total] if run.positions is not None else None
        return run.static(model, run.seq[:, cur - 1 : cur], pos), None
    if run.cache is not None:
        ids = run.seq[:, cur - 1 : cur] if last_tokens is None else last_tokens
        mask = run.mask[:, :total] if run.mask is not None else None
        pos = run.positions[:, total - 1 : total] if run.positions is not None else None
        return decode_step(model, ids, mask, pos, run.cache, **flags)
    # No cache: the whole sequence again (transformers' use_cache=False).
    ids = run.seq[:, :cur] if last_tokens is None else last_tokens
    mask = run.mask[:, :total] if run.mask is not None else None
    pos = run.positions[:, :total] if run.positions is not None else None
    return decode_step(model, ids, mask, pos, None, **flags)


def _beam_search(model: Any, run: Run) -> Any:
    """transformers' vectorised beam search (with sampling when do_sample): the same candidates,
    scores, finished-hypothesis bookkeeping and stopping heuristic."""
    cfg = run.cfg
    dev = run.device
    nb = cfg.num_beams
    B = run.N // nb
    max_length = run.max_length
    length_penalty = cfg.length_penalty
    early_stopping = cfg.early_stopping
    prompt = run.ids_len
    want = cfg.return_dict_in_generate
    scores_out = [] if want and cfg.output_scores else None
    logits_out = [] if want and cfg.output_logits else None
    attn_out = [] if want and cfg.output_attentions else None
    hidden_out = [] if want and cfg.output_hidden_states else None
    flags = dict(output_attentions=attn_out is not None, output_hidden_states=hidden_out is not None)

    # Keep K = (eos ids + 1) × beams candidates so that num_beams can continue even if the best all end.
    K = max(2, 1 + len(run.eos_list)) * nb
    top_beams = torch.cat((torch.ones(nb, dtype=torch.bool), torch.zeros(K - nb, dtype=torch.bool))).to(dev)
    # transformers fills unused slots with `pad_token_id or eos_token_id[0]` (so pad 0 reads as eos),
    # or -1 without eos; the fill shows in hypotheses shorter than the longest returned.
    if run.eos_list:
        fill = run.pad if run.pad else run.eos_list[0]
    else:
        fill = -1
    running = torch.full((B, nb, max_length), fill, dtype=torch.int64, device=dev)
    running[:, :, :prompt] = run.seq[:, :prompt].view(B, nb, prompt)
    sequences = running.clone()
    running_scores = torch.zeros((B, nb), dtype=torch.float, device=dev)
    running_scores[:, 1:] = -1e9  # only the first beam's continuations at the first step
    beam_scores = torch.full((B, nb), -1e9, dtype=torch.float, device=dev)
    finished = torch.zeros((B, nb), dtype=torch.bool, device=dev)
    improvable = torch.ones((B, 1), dtype=torch.bool, device=dev)
    running_bi = torch.full((B, nb, max_length - prompt), -1, dtype=torch.int32, device=dev)
    beam_indices = running_bi.clone()
    batch_offset = torch.arange(B, device=dev).view(-1, 1) * nb

    def gather(t, idx):
        while idx.dim() < t.dim():
            idx = idx.unsqueeze(-1)
        return torch.take_along_dim(t, idx, dim=1)

    cur = prompt
    logits, out = prefill(
        model,
        run.seq[:, run.past_len : prompt] if run.embeds is None else None,
        run.embeds,
        run.mask[:, : run.prompt_len] if run.mask is not None else None,
        run.positions[:, run.past_len : run.prompt_len] if run.positions is not None else None,
        run.cache, **flags,
    )
    flat = run.seq[:, :prompt]
    step = 0
    while True:
        if attn_out is not None:
            attn_out.append(out.attentions)
        if hidden_out is not None:
            hidden_out.append(out.hidden_states)
        bad = nonfinite_rows(logits).any() if run.check_finite else None
        log_probs = torch.nn.functional.log_softmax(logits, dim=-1)
        log_probs = apply_processors(run.processors, flat, log_probs)
        if logits_out is not None:
            logits_out.append(logits.clone())
        if scores_out is not None:
            scores_out.append(log_probs.clone())
        V = log_probs.shape[-1]
        acc = (log_probs.view(B, nb, V) + running_scores[:, :, None]).reshape(B, nb * V)

        # Top-K continuations over all beams (or K sampled without replacement).
        if cfg.do_sample:
            try:
                topk_idx = torch.multinomial(torch.softmax(acc, dim=-1), num_samples=K)
            except RuntimeError as e:
                if run.check_finite and bool(bad):
                    _raise_nonfinite(run, step, logits, e)
                raise
            topk_lp = torch.gather(acc, 1, topk_idx)
            topk_lp, order = topk_lp.sort(dim=-1, descending=True)
            topk_idx = topk_idx.gather(-1, order)
        else:
            topk_lp, topk_idx = torch.topk(acc, k=K)
        src_beam = topk_idx // V
        topk_bi = gather(running_bi, src_beam)
        topk_seq = gather(running, src_beam)
        topk_seq[:, :, cur] = topk_idx % V
        topk_bi[:, :, cur - prompt] = (src_beam + batch_offset).to(topk_bi.dtype)

        # Which candidates end here (eos, stop strings, user criteria, the length limit).
        cand = topk_seq[:, :, : cur + 1].reshape(B * K, cur + 1)
        if cur + 1 >= max_length or _out_of_time(run):
            hits = torch.ones((B, K), dtype=torch.bool, device=dev)
        else:
            done = stop_rows(run.eos, run.stop_strings, run.criteria, cand, scores_out, cand[:, -1])
            hits = (done if done is not None else torch.zeros(B * K, dtype=torch.bool, device=dev)).view(B, K)

        # Running beams for the next step: the best K that did not just end.
        run_lp = topk_lp + hits.to(torch.float32) * -1.0e9
        nxt = torch.topk(run_lp, k=nb)[1]
        running = gather(topk_seq, nxt)
        running_scores = gather(run_lp, nxt)
        running_bi = gather(topk_bi, nxt)

        # Finished hypotheses: merge the ones that just ended (among the top nb) with the kept ones.
        just_done = hits & top_beams[None, :]
        fin_lp = topk_lp / ((cur + 1 - prompt) ** length_penalty)
        full = torch.all(finished, axis=-1, keepdims=True) & (early_stopping is True)
        fin_lp += full.to(torch.float32) * -1.0e9
        fin_lp += (~improvable).to(torch.float32) * -1.0e9
        fin_lp += (~just_done) * -1.0e9
        merged_idx = torch.topk(torch.cat((beam_scores, fin_lp), dim=1), k=nb)[1]
        sequences = gather(torch.cat((sequences, topk_seq), dim=1), merged_idx)
        beam_scores = gather(torch.cat((beam_scores, fin_lp), dim=1), merged_idx)
        beam_indices = gather(torch.cat((beam_indices, topk_bi), dim=1), merged_idx)
        finished = gather(torch.cat((finished, just_done), dim=1), merged_idx)

        cur += 1
        # Can a running beam still beat the worst finished one?
        if early_stopping == "never" and length_penalty > 0.0:
            best_len = max_length - prompt
        else:
            best_len = cur - prompt
        best_running = running_scores[:, :1] / (best_len ** length_penalty)
        worst_done = torch.where(finished, torch.min(beam_scores, dim=1, keepdim=True)[0], -1.0e9)
        improvable = improvable & torch.any(best_running > worst_done, dim=-1, keepdim=True)
        go_on = torch.any(improvable) & ~(torch.all(finished) & (early_stopping is True)) & ~torch.all(hits)

        if run.cache is not None:  # the cache follows the beams (transformers reorders on the last step too)
            run.cache.reorder(running_bi[..., cur - 1 - prompt].reshape(-1))
        if bad is not None:
            is_bad, go = torch.stack((bad, go_on)).tolist()
            if is_bad:
                _raise_nonfinite(run, step, logits)
        else:
            go = bool(go_on)
        if not go:
            break
        step += 1
        flat = running[:, :, :cur].reshape(B * nb, cur)
        logits, out = _beam_logits(model, run, flat, cur, flags)

    nrs = cfg.num_return_sequences
    sequences = sequences[:, :nrs].reshape(B * nrs, -1)
    beam_scores = beam_scores[:, :nrs].reshape(B * nrs)
    beam_indices = beam_indices[:, :nrs].reshape(B * nrs, -1)
    generated = int(((beam_indices + 1).bool()).sum(dim=1).max())
    sequences = sequences[:, : prompt + generated]
    beam_indices = beam_indices[:, :generated]
    if not want:
        return sequences
    return GenerateBeamDecoderOnlyOutput(
        sequences=sequences,
        sequences_scores=beam_scores if cfg.output_scores else None,
        scores=tuple(scores_out) if scores_out is not None else None,
        logits=tuple(logits_out) if logits_out is not None else None,
        beam_indices=beam_indices,
        attentions=tuple(attn_out) if attn_out is not None else None,
        hidden_states=tuple(hidden_out) if hidden_out is not None else None,
        past_key_values=run.cache,
    )


def _beam_logits(model: Any, run: Run, flat: Any, cur: int, flags: dict) -> tuple[Any, Any]:
    if run.cache is not None:
        return _next_logits(model, run, cur, flags, last_tokens=flat[:, -1:])
    return _next_logits(model, run, cur, flags, last_tokens=flat)


def _finish(run: Run, result: Any) -> Any:
    """Outside inference mode: hand back ordinary tensors on the prompt's device."""

    def plain(t):
        if isinstance(t, torch.Tensor):
            if t.is_inference():
                t = t.clone()
            return t.to(run.out_device)
        return t

    if isinstance(result, torch.Tensor):
        return plain(result)
    result["sequences"] = plain(result["sequences"])
    for key in ("sequences_scores", "beam_indices"):
        if result.get(key) is not None:
            result[key] = plain(result[key])
    cache = result.get("past_key_values")
    if cache is not None:
        # Beam reordering made new (inference-mode) buffers; copy them so the cache can be used
        # (written in place) outside inference mode too.
        for buffers in (cache.keys, cache.values):
            for i, buf in enumerate(buffers):
                if buf.is_inference():
                    buffers[i] = buf.clone()
    return result
