"""The model core: parity with transformers 5.24, properties that must hold, and bad input.

Parity runs on tiny random configs in fp32 through a real save → load in both directions
(transformers saves → neox loads, neox saves → transformers loads): logits, every hidden state,
the loss and every gradient agree within 1e-5.

Deliberate differences from transformers 5.24, which the tests account for:

* transformers names the head ``lm_head`` and the output field ``cache``; neox keeps the
  checkpoint name ``embed_out`` (``lm_head`` is a property) and ``past_key_values`` (``cache``
  is a property). Gradients are paired after mapping ``lm_head.weight`` → ``embed_out.weight``.
* Dynamic NTK rope in transformers is stateful: once a long sequence has grown its inv_freq it
  keeps it for later calls. neox recomputes from each call's largest position. They agree on a
  fresh model and whenever the sequence only grows (cache decoding), so parity uses fresh models.
  transformers' dynamic rope divides by zero when rotary dims == 2: those variants use r >= 4.
* Outputs at padded query positions are garbage in both libraries; only real tokens are compared.
"""

from __future__ import annotations

import pickle

import pytest
import torch
import torch.nn.functional as F

from neox import GPTNeoXConfig, GPTNeoXForCausalLM, GPTNeoXModel, KVCache
from neox.modeling import attention
from neox.outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

from conftest import make_tiny_config, randomize_

ATOL = 1e-5

# Each variant is a set of config overrides (on conftest.TINY: hidden 32, 4 heads, head size 8,
# 2 layers, vocab 128) and a sequence length. Dynamic rope only acts past max_position_embeddings,
# so its variants run longer sequences than max_position_embeddings.
PARITY_VARIANTS = [
    pytest.param({}, 24, id="parallel-r0.25"),
    pytest.param({"use_parallel_residual": False}, 24, id="sequential"),
    pytest.param({"rotary_pct": 0.5}, 24, id="r0.5"),
    pytest.param({"rotary_pct": 1.0, "use_parallel_residual": False}, 24, id="r1.0-sequential"),
    pytest.param({"attention_bias": False}, 24, id="no-bias"),
    pytest.param({"tie_word_embeddings": True}, 24, id="tied"),
    pytest.param({"hidden_act": "gelu_fast", "tie_word_embeddings": True, "attention_bias": False}, 24,
                 id="gelu_fast-tied-no-bias"),
    pytest.param({"rope_scaling": {"type": "linear", "factor": 2.0}}, 24, id="rope-linear"),
    pytest.param({"rope_scaling": {"rope_type": "linear", "factor": 4.0}, "rotary_pct": 1.0,
                  "use_parallel_residual": False}, 24, id="rope-linear-r1.0-sequential"),
    pytest.param({"rope_scaling": {"type": "dynamic", "factor": 2.0}, "rotary_pct": 0.5,
                  "max_position_embeddings": 16}, 40, id="rope-dynamic"),
    pytest.param({"rope_scaling": {"rope_type": "dynamic", "factor": 3.0}, "rotary_pct": 1.0,
                  "max_position_embeddings": 16, "tie_word_embeddings": True}, 40, id="rope-dynamic-r1.0-tied"),
    pytest.param({"max_position_embeddings": 16}, 40, id="longer-than-max-positions"),
]


def ids_for(seq: int, batch: int = 2, seed: int = 0, vocab: int = 128) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, seq), generator=torch.Generator().manual_seed(seed))


def neox_model(seed: int = 0, base: bool = False, **overrides) -> GPTNeoXForCausalLM | GPTNeoXModel:
    torch.manual_seed(seed)
    cls = GPTNeoXModel if base else GPTNeoXForCausalLM
    return randomize_(cls(make_tiny_config(**overrides)), seed=seed).eval()


def load_pair(direction, save_hf_model, save_neox_model, hf, overrides, base=False):
    """(transformers model, neox model) with the same weights, through files on disk."""
    if direction == "hf->neox":
        folder, theirs = save_hf_model(base=base, **overrides)
        ours = (GPTNeoXModel if base else GPTNeoXForCausalLM).from_pretrained(folder)
    else:
        folder, ours = save_neox_model(base=base, **overrides)
        cls = hf.GPTNeoXModel if base else hf.GPTNeoXForCausalLM
        theirs = cls.from_pretrained(folder, attn_implementation="eager")
    return theirs.eval(), ours.eval()


def paired_parameters(theirs, ours) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """(name, transformers param, neox param), lm_head.weight ↔ embed_out.weight."""
    mine = dict(ours.named_parameters())
    pairs = []
    for name, p in theirs.named_parameters():
        name = name.replace("lm_head.", "embed_out.")
        pairs.append((name, p, mine.pop(name)))
    assert not mine, f"neox has parameters transformers does not: {sorted(mine)}"
    return pairs


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.detach().double() - b.detach().double()).abs().max().item()


# ============================================================================== parity


@pytest.mark.parametrize("direction", ["hf->neox", "neox->hf"])
@pytest.mark.parametrize("overrides, seq", PARITY_VARIANTS)
def test_parity_logits_hidden_loss_gradients(hf, save_hf_model, save_neox_model, direction, overrides, seq):
    theirs, ours = load_pair(direction, save_hf_model, save_neox_model, hf, overrides)
    ids = ids_for(seq)
    labels = ids.clone()
    labels[0, :3] = -100
    a = theirs(ids, labels=labels, output_hidden_states=True)
    b = ours(ids, labels=labels, output_hidden_states=True)
    assert max_diff(a.logits, b.logits) <= ATOL
    assert len(a.hidden_states) == len(b.hidden_states) == ours.config.num_hidden_layers + 1
    for i, (x, y) in enumerate(zip(a.hidden_states, b.hidden_states)):
        assert max_diff(x, y) <= ATOL, f"hidden state {i}"
    assert max_diff(a.loss, b.loss) <= ATOL
    a.loss.backward()
    b.loss.backward()
    for name, p, q in paired_parameters(theirs, ours):
        assert q.grad is not None, name
        assert max_diff(p.grad, q.grad) <= ATOL, name


@pytest.mark.parametrize("direction", ["hf->neox", "neox->hf"])
def test_parity_base_model(hf, save_hf_model, save_neox_model, direction):
    theirs, ours = load_pair(direction, save_hf_model, save_neox_model, hf, {"use_parallel_residual": False}, base=True)
    ids = ids_for(20)
    a = theirs(ids).last_hidden_state
    b = ours(ids).last_hidden_state
    assert max_diff(a, b) <= ATOL


@pytest.mark.parametrize("act", ["gelu_new", "gelu_pytorch_tanh", "relu", "silu"])
def test_parity_other_activations(hf, save_hf_model, act):
    folder, theirs = save_hf_model(hidden_act=act)
    ours = GPTNeoXForCausalLM.from_pretrained(folder)
    ids = ids_for(16)
    assert max_diff(theirs(ids).logits, ours(ids).logits) <= ATOL


@pytest.mark.parametrize("overrides", [{}, {"rotary_pct": 1.0, "use_parallel_residual": False}])
def test_parity_attention_probabilities(hf, save_hf_model, overrides):
    """The eager path returns the same attention probabilities as transformers' eager path."""
    folder, theirs = save_hf_model(**overrides)
    ours = GPTNeoXForCausalLM.from_pretrained(folder, attn_implementation="eager")
    ids = ids_for(12)
    a = theirs(ids, output_attentions=True).attentions
    b = ours(ids, output_attentions=True).attentions
    assert len(a) == len(b) == 2
    for x, y in zip(a, b):
        assert x.shape == y.shape == (2, 4, 12, 12)
        assert max_diff(x, y) <= ATOL


def test_output_attentions_with_sdpa_model():
    """Asking for probabilities on an SDPA model takes the eager path for that call."""
    model = neox_model()
    ids = ids_for(10)
    out = model(ids, output_attentions=True)
    assert len(out.attentions) == 2 and out.attentions[0].shape == (2, 4, 10, 10)
    torch.testing.assert_close(out.attentions[0].sum(-1), torch.ones(2, 4, 10))
    assert max_diff(out.logits, model(ids).logits) <= ATOL


@pytest.mark.parametrize("side", ["left", "right"])
def test_parity_padded_batch(hf, save_hf_model, side):
    folder, theirs = save_hf_model()
    ours = GPTNeoXForCausalLM.from_pretrained(folder)
    ids, mask = padded_batch([6, 11, 14], side)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    a = theirs(ids, attention_mask=mask, position_ids=positions).logits
    b = ours(ids, attention_mask=mask, position_ids=positions).logits
    real = mask.bool()
    assert max_diff(a[real], b[real]) <= ATOL


@pytest.mark.parametrize("overrides, seq", [
    pytest.param({}, 30, id="default"),
    pytest.param({"rope_scaling": {"type": "dynamic", "factor": 2.0}, "rotary_pct": 0.5,
                  "max_position_embeddings": 16}, 30, id="rope-dynamic"),
])
def test_parity_cached_decoding(hf, save_hf_model, overrides, seq):
    """Prefill then one token at a time, each library with its own cache: same logits; the cached
    keys and values equal transformers' (after rotary), layer by layer."""
    folder, theirs = save_hf_model(**overrides)
    ours = GPTNeoXForCausalLM.from_pretrained(folder)
    ids = ids_for(seq)
    a = theirs(ids[:, :10], use_cache=True)
    b = ours(ids[:, :10], use_cache=True)
    their_cache, our_cache = a.cache, b.past_key_values
    assert max_diff(a.logits, b.logits) <= ATOL
    for t in range(10, seq):
        a = theirs(ids[:, t : t + 1], cache=their_cache, use_cache=True)
        b = ours(ids[:, t : t + 1], past_key_values=our_cache, use_cache=True)
        assert max_diff(a.logits, b.logits) <= ATOL, f"step {t}"
    for i in range(len(our_cache)):
        k, v = our_cache[i]
        assert max_diff(k, their_cache.layers[i].keys) <= ATOL
        assert max_diff(v, their_cache.layers[i].values) <= ATOL


def test_num_items_in_batch_matches_transformers(hf, save_hf_model):
    folder, theirs = save_hf_model()
    ours = GPTNeoXForCausalLM.from_pretrained(folder)
    ids = ids_for(12)
    a = theirs(ids, labels=ids, num_items_in_batch=torch.tensor(7)).loss
    b = ours(ids, labels=ids, num_items_in_batch=torch.tensor(7)).loss
    assert max_diff(a, b) <= ATOL


# ============================================================================== module layout


@pytest.mark.parametrize("base", [False, True])
@pytest.mark.parametrize("overrides", [{}, {"attention_bias": False, "tie_word_embeddings": True}])
def test_module_names_are_the_checkpoint_keys(hf_config, hf, base, overrides):
    theirs_cls = hf.GPTNeoXModel if base else hf.GPTNeoXForCausalLM
    theirs = theirs_cls(hf_config(**overrides))
    ours = neox_model(base=base, **overrides)
    their_keys = {k.replace("lm_head.", "embed_out.") for k in theirs.state_dict()}
    assert set(ours.state_dict()) == their_keys
    # so transformers' own state dict loads as-is
    state = {k.replace("lm_head.", "embed_out."): v for k, v in theirs.state_dict().items()}
    ours.load_state_dict(state, strict=True)


def test_fused_qkv_is_per_head_interleaved():
    """query_key_value's rows are [q_0 k_0 v_0 | q_1 k_1 v_1 | ...] (per head), not [Q; K; V].

    Permuting whole heads — the per-head (q, k, v) row blocks of query_key_value and the matching
    input columns of dense — must leave the output unchanged. Under a [Q; K; V] layout the same
    permutation would shuffle queries, keys and values between each other.
    """
    model = neox_model(rotary_pct=0.5)
    ids = ids_for(12)
    before = model(ids).logits
    H, hs = 4, 8
    perm = torch.tensor([2, 0, 3, 1])
    with torch.no_grad():
        for layer in model.gpt_neox.layers:
            qkv, dense = layer.attention.query_key_value, layer.attention.dense
            rows = torch.cat([torch.arange(h * 3 * hs, (h + 1) * 3 * hs) for h in perm])
            cols = torch.cat([torch.arange(h * hs, (h + 1) * hs) for h in perm])
            qkv.weight.copy_(qkv.weight[rows])
            qkv.bias.copy_(qkv.bias[rows])
            dense.weight.copy_(dense.weight[:, cols])
    after = model(ids).logits
    assert max_diff(before, after) <= ATOL
    # the same permutation applied as if the layout were [Q; K; V] changes the output
    model2 = neox_model(rotary_pct=0.5)
    with torch.no_grad():
        for layer in model2.gpt_neox.layers:
            qkv, dense = layer.attention.query_key_value, layer.attention.dense
            cols = torch.cat([torch.arange(h * hs, (h + 1) * hs) for h in perm])
            rows = torch.cat([cols + part * H * hs for part in range(3)])
            qkv.weight.copy_(qkv.weight[rows])
            qkv.bias.copy_(qkv.bias[rows])
            dense.weight.copy_(dense.weight[:, cols])
    assert max_diff(before, model2(ids).logits) > 1e-3


def test_parallel_residual_uses_two_layernorms():
    """x + attn(ln1(x)) + mlp(ln2(x)): changing post_attention_layernorm changes the output."""
    model = neox_model()
    ids = ids_for(8)
    before = model(ids).logits
    with torch.no_grad():
        model.gpt_neox.layers[0].post_attention_layernorm.weight.mul_(2)
    assert max_diff(before, model(ids).logits) > 1e-3


# ============================================================================== cache


@pytest.mark.parametrize("chunks", [[9, 1, 1, 1, 1, 1], [4, 3, 5, 2], [1] * 14], ids=["prefill+1s", "chunks", "1-by-1"])
@pytest.mark.parametrize("overrides", [{}, {"use_parallel_residual": False, "rotary_pct": 1.0},
                                       {"rope_scaling": {"type": "linear", "factor": 2.0}}])
def test_cache_equals_no_cache(chunks, overrides):
    """Dynamic rope is left out on purpose: its base depends on the longest position seen, so a
    full forward and a token-by-token decode legitimately differ (in transformers as well); its
    cached decoding is compared with transformers' in test_parity_cached_decoding instead."""
    model = neox_model(**overrides)
    ids = ids_for(sum(chunks))
    full = model(ids, use_cache=False).logits
    cache, start, pieces = None, 0, []
    for n in chunks:
        out = model(ids[:, start : start + n], past_key_values=cache, use_cache=True)
        cache, start = out.past_key_values, start + n
        pieces.append(out.logits)
    assert max_diff(torch.cat(pieces, 1), full) <= ATOL
    assert cache.get_seq_length() == sum(chunks)


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_cache_with_left_padding_equals_no_cache(impl):
    model = neox_model(attn_implementation=impl)
    ids, mask = padded_batch([5, 12], "left")
    ids = torch.cat([ids, ids_for(4, seed=3)], 1)
    mask = torch.cat([mask, torch.ones(2, 4, dtype=mask.dtype)], 1)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    full = model(ids, attention_mask=mask, position_ids=positions).logits
    out = model(ids[:, :12], attention_mask=mask[:, :12], position_ids=positions[:, :12], use_cache=True)
    pieces = [out.logits]
    for t in range(12, 16):
        out = model(ids[:, t : t + 1], attention_mask=mask[:, : t + 1], position_ids=positions[:, t : t + 1],
                    past_key_values=out.past_key_values, use_cache=True)
        pieces.append(out.logits)
    real = mask.bool()
    assert max_diff(torch.cat(pieces, 1)[real], full[real]) <= ATOL


def test_cache_object_shape_and_tuple_form():
    model = neox_model()
    out = model(ids_for(7, batch=3), use_cache=True)
    cache = out.past_key_values
    assert isinstance(cache, KVCache) and out.cache is cache and out["cache"] is cache  # transformers 5 names
    assert len(cache) == 2
    for i in range(len(cache)):
        k, v = cache[i]
        assert k.shape == v.shape == (3, 4, 7, 8)  # (batch, heads, seq, head_size)
    layers = list(cache)
    assert len(layers) == 2 and all(len(pair) == 2 for pair in layers)
    assert model(ids_for(7), use_cache=False).past_key_values is None


def test_preallocated_cache_is_written_in_place():
    model = neox_model()
    cache = KVCache.for_model(model.config, batch_size=2, capacity=32, dtype=torch.float32, device=torch.device("cpu"))
    pointers = [k.data_ptr() for k in cache.keys]
    ids = ids_for(10)
    out = model(ids[:, :6], past_key_values=cache, use_cache=True)
    assert out.past_key_values is cache and cache.length == 6
    out = model(ids[:, 6:], past_key_values=cache)
    assert out.past_key_values is cache and cache.length == 10 and cache.capacity == 32
    assert [k.data_ptr() for k in cache.keys] == pointers
    full = model(ids, use_cache=True).past_key_values
    for i in range(2):
        assert max_diff(cache[i][0], full[i][0]) <= ATOL and max_diff(cache[i][1], full[i][1]) <= ATOL


def test_legacy_tuple_cache_accepted():
    model = neox_model()
    ids = ids_for(12)
    prefix = model(ids[:, :8], use_cache=True).past_key_values
    legacy = tuple((k.clone(), v.clone()) for k, v in prefix)
    a = model(ids[:, 8:], past_key_values=legacy).logits
    b = model(ids[:, 8:], past_key_values=prefix).logits
    assert max_diff(a, b) <= ATOL
    assert max_diff(a, model(ids).logits[:, 8:]) <= ATOL


def test_cache_argument_alias():
    """transformers 5 names the argument `cache`; neox accepts both spellings."""
    model = neox_model()
    ids = ids_for(10)
    prefix = model(ids[:, :6], use_cache=True).past_key_values
    a = model(ids[:, 6:], cache=prefix).logits
    assert max_diff(a, model(ids).logits[:, 6:]) <= ATOL
    # Both given: transformers 5.24 uses `cache` and ignores `past_key_values` (with a warning).
    other = model(ids[:, :6], use_cache=True).past_key_values
    junk = model(ids[:, 3:6], use_cache=True).past_key_values
    c = model(ids[:, 6:], past_key_values=junk, cache=other).logits
    assert max_diff(c, a) <= ATOL


def test_cache_batch_mismatch():
    model = neox_model()
    cache = model(ids_for(6, batch=2), use_cache=True).past_key_values
    with pytest.raises(ValueError, match="batch size"):
        model(ids_for(1, batch=3), past_key_values=cache)


# ============================================================================== attention paths


@pytest.mark.parametrize("setting", ["causal", "padded", "cached"])
def test_sdpa_equals_eager(setting):
    sdpa, eager = neox_model(attn_implementation="sdpa"), neox_model(attn_implementation="eager")
    ids, mask = padded_batch([9, 14], "left")
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    real = torch.ones(ids.shape, dtype=torch.bool)
    kwargs_a, kwargs_b = {}, {}
    if setting == "padded":
        kwargs_a = kwargs_b = dict(attention_mask=mask, position_ids=positions)
        real = mask.bool()
    if setting == "cached":
        kwargs_a = dict(past_key_values=sdpa(ids[:, :5], use_cache=True).past_key_values)
        kwargs_b = dict(past_key_values=eager(ids[:, :5], use_cache=True).past_key_values)
        ids, real = ids[:, 5:], real[:, 5:]
    a = sdpa(ids, **kwargs_a).logits
    b = eager(ids, **kwargs_b).logits
    assert max_diff(a[real], b[real]) <= ATOL


def test_sdpa_equals_eager_gradients():
    sdpa, eager = neox_model(attn_implementation="sdpa"), neox_model(attn_implementation="eager")
    ids = ids_for(16)
    sdpa(ids, labels=ids).loss.backward()
    eager(ids, labels=ids).loss.backward()
    for (name, p), (_, q) in zip(sdpa.named_parameters(), eager.named_parameters()):
        assert max_diff(p.grad, q.grad) <= ATOL, name


def padded_batch(lengths: list[int], side: str, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of random ids (pad id 0), padded to the longest; (ids, attention_mask)."""
    T = max(lengths)
    ids = torch.zeros(len(lengths), T, dtype=torch.long)
    mask = torch.zeros(len(lengths), T, dtype=torch.long)
    for i, n in enumerate(lengths):
        row = ids_for(n, batch=1, seed=seed + i)[0]
        sl = slice(T - n, T) if side == "left" else slice(0, n)
        ids[i, sl], mask[i, sl] = row, 1
    return ids, mask


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
@pytest.mark.parametrize("side", ["left", "right"])
def test_padded_batch_equals_rows_alone(impl, side):
    model = neox_model(attn_implementation=impl)
    lengths = [5, 13, 9]
    ids, mask = padded_batch(lengths, side)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    batch = model(ids, attention_mask=mask, position_ids=positions).logits
    for i, n in enumerate(lengths):
        alone = model(ids[i : i + 1][mask[i : i + 1].bool()][None]).logits[0]
        assert max_diff(batch[i][mask[i].bool()], alone) <= ATOL, f"row {i}"
    assert torch.isfinite(batch).all()  # padded query positions are ignored, but not NaN


def test_right_padding_needs_no_position_ids():
    model = neox_model()
    ids, mask = padded_batch([4, 10], "right")
    batch = model(ids, attention_mask=mask).logits
    assert max_diff(batch[0, :4], model(ids[:1, :4]).logits[0]) <= ATOL


@pytest.mark.parametrize("dtype", [torch.bool, torch.float32])
def test_4d_mask_equals_2d_mask(dtype):
    model = neox_model()
    ids, mask = padded_batch([6, 10], "left")
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    expected = model(ids, attention_mask=mask, position_ids=positions).logits
    T = ids.shape[1]
    allowed = mask.bool()[:, None, None, :] & torch.ones(T, T, dtype=torch.bool).tril()  # (B, 1, T, T)
    if dtype == torch.float32:
        mask4 = torch.zeros(allowed.shape).masked_fill(~allowed, torch.finfo(torch.float32).min)
    else:
        mask4 = allowed
    got = model(ids, attention_mask=mask4, position_ids=positions).logits
    real = mask.bool()
    assert max_diff(got[real], expected[real]) <= ATOL


def test_inputs_embeds_equals_input_ids():
    model = neox_model()
    ids = ids_for(9)
    embeds = model.get_input_embeddings()(ids)
    assert max_diff(model(inputs_embeds=embeds).logits, model(ids).logits) <= ATOL
    base_out = model.gpt_neox(inputs_embeds=embeds).last_hidden_state
    assert max_diff(base_out, model.gpt_neox(ids).last_hidden_state) <= ATOL


def test_head_mask_zeroes_a_head():
    """head_mask 0 for head h ≡ removing head h's output: zeroing dense's input columns of head h."""
    model = neox_model(attn_implementation="eager")
    ids = ids_for(10)
    head_mask = torch.ones(2, 4)
    head_mask[1, 2] = 0
    masked = model(ids, head_mask=head_mask).logits
    assert max_diff(model(ids, head_mask=torch.ones(4)).logits, model(ids).logits) <= ATOL
    with torch.no_grad():
        model.gpt_neox.layers[1].attention.dense.weight[:, 16:24] = 0
    assert max_diff(masked, model(ids).logits) <= ATOL
    with pytest.raises(ValueError, match="head_mask"):
        model(ids, head_mask=torch.ones(3, 4))


# ============================================================================== precision


def test_bf16_close_to_fp32():
    model = neox_model()
    ids = ids_for(20)
    fp32 = model(ids, labels=ids)
    bf16 = model.to(torch.bfloat16)(ids, labels=ids)
    assert bf16.logits.dtype == torch.bfloat16
    scale = fp32.logits.abs().max().item()
    assert max_diff(bf16.logits, fp32.logits) <= 0.05 * scale
    assert (bf16.logits.argmax(-1) == fp32.logits.argmax(-1)).float().mean() >= 0.9
    assert bf16.loss.dtype == torch.float32  # the loss is computed in fp32
    assert abs(bf16.loss.item() - fp32.loss.item()) <= 0.05 * fp32.loss.item()


def test_rotary_angles_in_fp32():
    """cos/sin for a bf16 model are the fp32 angles rounded once, not angles formed in bf16."""
    model = neox_model(rotary_pct=1.0, max_position_embeddings=8192).to(torch.bfloat16)
    rotary = model.gpt_neox.rotary_emb
    assert rotary.inv_freq.dtype == torch.float32  # model.to(bfloat16) must not round the frequencies
    assert model.half().gpt_neox.rotary_emb.inv_freq.dtype == torch.float32
    model.to(torch.bfloat16)
    positions = torch.arange(4000, 4100)[None]
    cos, sin = rotary(positions, torch.bfloat16)
    inv_freq = 1.0 / (10000.0 ** (torch.arange(0, 8, 2, dtype=torch.float64) / 8))
    angles = positions[..., None].double() * inv_freq
    assert max_diff(cos.float(), angles.cos().float()) <= 2 ** -8  # one bf16 rounding of a value in [-1, 1]
    assert max_diff(sin.float(), angles.sin().float()) <= 2 ** -8
    bf16_angles = positions[..., None].to(torch.bfloat16) * inv_freq.to(torch.bfloat16)
    assert max_diff(bf16_angles.float().cos(), angles.cos()) > 0.1  # what fp32 angles avoid


def fp16_overflow_case(hs: int = 64, T: int = 6, device: str = "cpu"):
    """q, k (1, 1, T, hs) fp16 with raw q·kᵀ above 65504 but scaled scores (÷√hs) finite in fp16."""
    gen = torch.Generator().manual_seed(0)
    signs = torch.randint(0, 2, (1, 1, T, hs), generator=gen).float() * 2 - 1
    q = 40.0 * signs
    k = 40.0 * signs.roll(1, dims=2)
    k[..., 0, :] = q[..., 0, :]  # key 0 aligned with query 0: q·k = 64·1600 = 102400
    v = torch.randn(1, 1, T, hs, generator=gen)
    return q.half().to(device), k.half().to(device), v.half().to(device)


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
def test_fp16_attention_stays_finite_where_fp32_is(impl):
    """transformers' eager path forms q·kᵀ in fp16 and gets inf → NaN once it exceeds 65504."""
    q, k, v = fp16_overflow_case()
    raw = torch.matmul(q, k.transpose(-1, -2))
    assert torch.isinf(raw).any(), "the case must overflow a naive fp16 q·kᵀ"
    reference, _ = attention(q.double(), k.double(), v.double(), None, causal=True, implementation="eager")
    assert torch.isfinite(reference).all()
    out, _ = attention(q, k, v, None, causal=True, implementation=impl)
    assert out.dtype == torch.float16 and torch.isfinite(out).all()
    assert max_diff(out, reference) <= 1e-2


def test_fp16_model_eager_stays_finite():
    """A whole fp16 model whose q·kᵀ overflows fp16 (large qkv weights) gives the fp32 logits."""
    model = neox_model(attn_implementation="eager", hidden_size=64, num_attention_heads=1, rotary_pct=0.25)
    with torch.no_grad():
        for layer in model.gpt_neox.layers:
            layer.attention.query_key_value.weight.mul_(60)
            layer.input_layernorm.weight.fill_(1.0)
    ids = ids_for(12)
    fp32 = model(ids, output_attentions=True)
    qk_max = 0.0
    hook_out = {}

    def hook(module, args, output):
        hook_out["qkv"] = output

    handle = model.gpt_neox.layers[0].attention.query_key_value.register_forward_hook(hook)
    model(ids)
    handle.remove()
    qkv = hook_out["qkv"].view(2, 12, 1, 3, 64)
    q, k = qkv[..., 0, :].transpose(1, 2), qkv[..., 1, :].transpose(1, 2)
    qk_max = (q @ k.transpose(-1, -2)).abs().max().item()
    assert qk_max > 65504, "the case must overflow a naive fp16 q·kᵀ"
    fp16 = model.half()(ids)
    assert torch.isfinite(fp16.logits).all()
    assert max_diff(fp16.logits.float(), fp32.logits) <= 0.05 * fp32.logits.abs().max().item()


# ============================================================================== outputs


def test_output_access_forms():
    model = neox_model()
    ids = ids_for(8)
    out = model(ids, labels=ids, use_cache=True, output_hidden_states=True)
    assert isinstance(out, CausalLMOutputWithPast) and isinstance(out, dict)
    assert list(out.keys()) == ["loss", "logits", "past_key_values", "hidden_states"]
    assert out[0] is out.loss is out["loss"]
    assert out[1] is out.logits is out["logits"]
    assert out.attentions is None and "attentions" not in out
    assert out.to_tuple() == tuple(out.values()) and out[1:3] == out.to_tuple()[1:3]
    no_loss = model(ids, use_cache=False)
    assert list(no_loss.keys()) == ["logits"] and no_loss[0] is no_loss.logits
    plain = model(ids, labels=ids, use_cache=False, return_dict=False)
    assert type(plain) is tuple and len(plain) == 2
    assert max_diff(plain[0], out.loss) <= ATOL and max_diff(plain[1], out.logits) <= ATOL
    base = model.gpt_neox(ids, use_cache=False)
    assert isinstance(base, BaseModelOutputWithPast) and base[0] is base.last_hidden_state
    assert type(model.gpt_neox(ids, return_dict=False)) is tuple
    again = pickle.loads(pickle.dumps(no_loss))
    assert type(again) is CausalLMOutputWithPast and torch.equal(again.logits, no_loss.logits)
    rebuilt = type(no_loss)(dict(no_loss))  # accelerate rebuilds outputs this way
    assert rebuilt.logits is no_loss.logits


def test_logits_to_keep():
    model = neox_model()
    ids = ids_for(10)
    full = model(ids).logits
    assert max_diff(model(ids, logits_to_keep=1).logits, full[:, -1:]) <= ATOL
    assert model(ids, logits_to_keep=3).logits.shape == (2, 3, 128)
    assert max_diff(model(ids, logits_to_keep=0).logits, full) <= ATOL
    index = torch.tensor([0, 4, 9])
    assert max_diff(model(ids, logits_to_keep=index).logits, full[:, index]) <= ATOL


# ============================================================================== loss


def test_loss_is_shifted_cross_entropy_ignoring_minus_100():
    model = neox_model()
    ids = ids_for(12)
    labels = ids.clone()
    labels[:, 5:8] = -100
    out = model(ids, labels=labels)
    logits = out.logits[:, :-1].reshape(-1, 128).double()
    targets = labels[:, 1:].reshape(-1)
    keep = targets != -100
    expected = F.cross_entropy(logits[keep], targets[keep])
    assert max_diff(out.loss, expected) <= ATOL
    total = F.cross_entropy(logits[keep], targets[keep], reduction="sum")
    assert max_diff(model(ids, labels=labels, num_items_in_batch=5).loss, total / 5) <= ATOL
    assert max_diff(model(ids, labels=labels, num_items_in_batch=torch.tensor(5)).loss, total / 5) <= ATOL


def test_loss_all_ignored_is_nan_like_transformers(hf, save_hf_model):
    """Every label -100: transformers' mean over zero tokens is NaN; neox matches it."""
    folder, theirs = save_hf_model()
    ours = GPTNeoXForCausalLM.from_pretrained(folder)
    ids = ids_for(6)
    labels = torch.full_like(ids, -100)
    a, b = theirs(ids, labels=labels).loss, ours(ids, labels=labels).loss
    assert torch.isnan(a) == torch.isnan(b)


def test_labels_with_wrong_shape():
    model = neox_model()
    with pytest.raises(ValueError, match="labels"):
        model(ids_for(8), labels=ids_for(7))


# ============================================================================== training surface


def test_gradient_checkpointing_same_gradients_and_no_cache():
    ids = ids_for(16)
    grads = []
    for checkpointing in (False, True):
        model = neox_model(hidden_dropout=0.0, attention_dropout=0.0)
        model.train()
        if checkpointing:
            model.gradient_checkpointing_enable()
            assert model.is_gradient_checkpointing
        out = model(ids, labels=ids)
        assert out.past_key_values is None  # the cache is off while training
        out.loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
        if checkpointing:
            out = model(ids, labels=ids, use_cache=True)
            assert out.past_key_values is None
            model.gradient_checkpointing_disable()
            assert not model.is_gradient_checkpointing
    for name in grads[0]:
        assert max_diff(grads[0][name], grads[1][name]) <= ATOL, name


def test_gradient_checkpointing_reentrant_with_enable_input_require_grads():
    """PEFT's recipe: frozen embeddings + reentrant checkpointing needs enable_input_require_grads,
    or no gradient reaches the layers."""
    ids = ids_for(10)
    reference = neox_model()
    reference.train()
    reference(ids, labels=ids).loss.backward()
    model = neox_model()
    model.train()
    model.get_input_embeddings().weight.requires_grad_(False)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
    model.enable_input_require_grads()
    model(ids, labels=ids).loss.backward()
    q = model.gpt_neox.layers[0].attention.query_key_value.weight
    assert q.grad is not None
    assert max_diff(q.grad, reference.gpt_neox.layers[0].attention.query_key_value.weight.grad) <= ATOL
    model.disable_input_require_grads()


def test_embeddings_accessors():
    model = neox_model()
    assert model.get_input_embeddings() is model.gpt_neox.embed_in
    assert model.get_output_embeddings() is model.embed_out is model.lm_head
    new_in = torch.nn.Embedding(128, 32)
    model.set_input_embeddings(new_in)
    assert model.gpt_neox.embed_in is new_in
    new_out = torch.nn.Linear(32, 128, bias=False)
    model.set_output_embeddings(new_out)
    assert model.embed_out is new_out
    assert model.gpt_neox.get_input_embeddings() is new_in
    assert model.gpt_neox.get_output_embeddings() is None


def test_tie_weights():
    model = neox_model(tie_word_embeddings=True)
    assert model.embed_out.weight is model.gpt_neox.embed_in.weight
    model.set_output_embeddings(torch.nn.Linear(32, 128, bias=False))
    model.tie_weights()
    assert model.embed_out.weight is model.gpt_neox.embed_in.weight
    untied = neox_model()
    assert untied.embed_out.weight is not untied.gpt_neox.embed_in.weight


@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("new, multiple", [(140, None), (100, None), (130, 64), (None, 48)])
def test_resize_token_embeddings_like_transformers(hf, hf_config, tied, new, multiple):
    theirs = hf.GPTNeoXForCausalLM(hf_config(tie_word_embeddings=tied))
    ours = neox_model(tie_word_embeddings=tied)
    ids = ids_for(8, vocab=100)
    before = ours(ids).logits
    got = ours.resize_token_embeddings(new, pad_to_multiple_of=multiple)
    want = theirs.resize_token_embeddings(new, pad_to_multiple_of=multiple)
    assert got.weight.shape == want.weight.shape
    n = want.weight.shape[0]
    assert ours.config.vocab_size == theirs.config.vocab_size == n
    assert ours.embed_out.weight.shape == (n, 32)
    assert (ours.embed_out.weight is ours.gpt_neox.embed_in.weight) == tied
    after = ours(ids).logits
    assert after.shape == (2, 8, n)
    keep = min(n, 128)
    assert max_diff(after[..., :keep], before[..., :keep]) <= ATOL  # old tokens unchanged


def test_resize_token_embeddings_bad_arguments():
    model = neox_model()
    with pytest.raises(ValueError, match="pad_to_multiple_of"):
        model.resize_token_embeddings(130, pad_to_multiple_of=0)
    with pytest.raises(ValueError, match="new_num_tokens"):
        model.resize_token_embeddings(0)


@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("base", [False, True])
def test_num_parameters_like_transformers(hf, hf_config, tied, base):
    theirs = (hf.GPTNeoXModel if base else hf.GPTNeoXForCausalLM)(hf_config(tie_word_embeddings=tied))
    ours = neox_model(base=base, tie_word_embeddings=tied)
    for flags in ({}, {"exclude_embeddings": True}, {"only_trainable": True}):
        assert ours.num_parameters(**flags) == theirs.num_parameters(**flags), flags
    for model in (theirs, ours):
        for name, p in model.named_parameters():
            if "layers.0." in name:
                p.requires_grad_(False)
    for flags in ({"only_trainable": True}, {"only_trainable": True, "exclude_embeddings": True}):
        assert ours.num_parameters(**flags) == theirs.num_parameters(**flags), flags


def test_device_dtype_name_and_config_surface(tmp_path):
    model = neox_model()
    assert model.device == torch.device("cpu") and model.dtype == torch.float32
    assert model.to(torch.bfloat16).dtype == torch.bfloat16
    data = model.config.to_dict()
    assert data["hidden_size"] == 32 and data["model_type"] == "gpt_neox"
    model.save_pretrained(tmp_path)
    loaded = GPTNeoXForCausalLM.from_pretrained(tmp_path)
    assert loaded.name_or_path == str(tmp_path) and loaded.config.name_or_path == str(tmp_path)
    assert loaded.base_model is loaded.gpt_neox and model.main_input_name == "input_ids"
    assert model.config_class is GPTNeoXConfig and model.base_model_prefix == "gpt_neox"


def test_train_mode_dropout_is_active():
    model = neox_model(hidden_dropout=0.5)
    ids = ids_for(8)
    model.train()
    torch.manual_seed(1)
    a = model(ids).logits
    torch.manual_seed(2)
    b = model(ids).logits
    assert max_diff(a, b) > 1e-3
    model.eval()
    assert max_diff(model(ids).logits, model(ids).logits) == 0


# ============================================================================== bad input


@pytest.mark.parametrize("bad", [128, 500, -1])
def test_token_id_out_of_range(bad):
    model = neox_model()
    ids = ids_for(6)
    ids[1, 3] = bad
    with pytest.raises(ValueError, match=rf"{bad}.*128"):
        model(ids)
    with pytest.raises(ValueError, match=rf"{bad}.*128"):
        model.gpt_neox(ids)


@pytest.mark.parametrize("mask_shape", [(2, 7), (2, 9), (1, 8), (2, 8, 1), (2, 1, 8, 7)])
def test_attention_mask_wrong_shape(mask_shape):
    model = neox_model()
    with pytest.raises(ValueError, match="attention_mask"):
        model(ids_for(8), attention_mask=torch.ones(mask_shape, dtype=torch.long))


def test_attention_mask_must_cover_the_cache():
    model = neox_model()
    cache = model(ids_for(6), use_cache=True).past_key_values
    with pytest.raises(ValueError, match="attention_mask"):
        model(ids_for(2), attention_mask=torch.ones(2, 2, dtype=torch.long), past_key_values=cache)


@pytest.mark.parametrize("shape", [(2, 0), (0, 5), (0,)])
def test_empty_sequence(shape):
    model = neox_model()
    with pytest.raises(ValueError, match="empty"):
        model(torch.zeros(shape, dtype=torch.long))


def test_inputs_embeds_empty():
    model = neox_model()
    with pytest.raises(ValueError, match="empty"):
        model(inputs_embeds=torch.zeros(1, 0, 32))


def test_both_or_neither_inputs():
    model = neox_model()
    ids = ids_for(5)
    with pytest.raises(ValueError, match="input_ids"):
        model(ids, inputs_embeds=model.get_input_embeddings()(ids))
    with pytest.raises(ValueError, match="input_ids"):
        model()
    with pytest.raises(ValueError, match="input_ids"):
        model.gpt_neox()


def test_wrong_input_types():
    model = neox_model()
    with pytest.raises(ValueError, match="integer"):
        model(torch.zeros(2, 5))
    with pytest.raises(ValueError, match="inputs_embeds"):
        model(inputs_embeds=torch.zeros(2, 5, 31))
    with pytest.raises(ValueError, match="position_ids"):
        model(ids_for(5), position_ids=torch.arange(4)[None])


def test_longer_than_max_positions_with_cache_matches_full():
    model = neox_model(max_position_embeddings=16)
    ids = ids_for(40)
    full = model(ids).logits
    out = model(ids[:, :30], use_cache=True)
    pieces = [out.logits]
    for t in range(30, 40):
        out = model(ids[:, t : t + 1], past_key_values=out.past_key_values)
        pieces.append(out.logits)
    assert max_diff(torch.cat(pieces, 1), full) <= ATOL


def test_unknown_forward_argument():
    model = neox_model()
    with pytest.raises(TypeError):
        model(ids_for(4), not_an_argument=True)
