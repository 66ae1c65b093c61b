"""A transformers ``Cache`` (``DynamicCache``) — or any object with its per-layer protocol — is
accepted as ``past_key_values``: it is updated in place and handed back, with transformers' numbers.

The oracle is transformers' own GPTNeoXForCausalLM with the same weights, given its own
DynamicCache. PEFT's prefix tuning relies on exactly this (it passes the virtual tokens' keys and
values as a DynamicCache, with an attention mask that covers them).
"""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers", reason="transformers (the oracle and its Cache) is not installed")
from transformers import DynamicCache  # noqa: E402

from neox import GPTNeoXForCausalLM  # noqa: E402

ATOL = 1e-5


@pytest.fixture
def pair(save_hf_model):
    folder, ref = save_hf_model()
    return ref, GPTNeoXForCausalLM.from_pretrained(folder).eval()


def _ids(batch: int, length: int, seed: int) -> torch.Tensor:
    return torch.randint(0, 128, (batch, length), generator=torch.Generator().manual_seed(seed))


def _assert_same_cache(got, want) -> None:
    assert got.get_seq_length() == want.get_seq_length()
    assert len(got.layers) == len(want.layers)
    for g, w in zip(got.layers, want.layers):
        torch.testing.assert_close(g.keys, w.keys, atol=ATOL, rtol=0)
        torch.testing.assert_close(g.values, w.values, atol=ATOL, rtol=0)


@torch.no_grad()
def test_dynamic_cache_in_and_out(pair):
    ref, model = pair
    mine, theirs = DynamicCache(), DynamicCache()
    prompt = _ids(2, 6, 1)
    out = model(prompt, past_key_values=mine, use_cache=True)
    want = ref(prompt, cache=theirs, use_cache=True)
    assert out.past_key_values is mine  # updated in place and handed back, as transformers does
    torch.testing.assert_close(out.logits, want.logits, atol=ATOL, rtol=0)
    _assert_same_cache(mine, theirs)
    for step in range(3):  # decoding steps with a padding-free mask over past + new
        token = _ids(2, 1, 10 + step)
        mask = torch.ones(2, mine.get_seq_length() + 1, dtype=torch.long)
        got = model(token, attention_mask=mask, past_key_values=mine).logits
        exp = ref(token, attention_mask=mask, cache=theirs).logits
        torch.testing.assert_close(got, exp, atol=ATOL, rtol=0)
    _assert_same_cache(mine, theirs)


@torch.no_grad()
def test_prefilled_cache_with_a_mask_over_it(pair):
    """PEFT's prefix tuning: a cache built from per-layer (key, value) tensors of P virtual tokens."""
    ref, model = pair
    g = torch.Generator().manual_seed(3)
    B, H, P, hs = 2, 4, 3, 8
    prefix = [(torch.randn(B, H, P, hs, generator=g), torch.randn(B, H, P, hs, generator=g)) for _ in range(2)]
    ids = _ids(B, 5, 4)
    mask = torch.ones(B, P + 5, dtype=torch.long)
    got = model(ids, attention_mask=mask, past_key_values=DynamicCache(prefix)).logits
    want = ref(ids, attention_mask=mask, cache=DynamicCache(prefix)).logits
    torch.testing.assert_close(got, want, atol=ATOL, rtol=0)


@torch.no_grad()
def test_any_object_with_the_protocol(pair):
    """Not only transformers' classes: update(key, value, layer_idx) and get_seq_length() suffice."""
    _, model = pair

    class Minimal:
        def __init__(self):
            self.kv: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

        def get_seq_length(self, layer_idx: int = 0) -> int:
            return self.kv[0][0].shape[2] if self.kv else 0

        def update(self, key, value, layer_idx, *args):
            if layer_idx in self.kv:
                key = torch.cat([self.kv[layer_idx][0], key], dim=2)
                value = torch.cat([self.kv[layer_idx][1], value], dim=2)
            self.kv[layer_idx] = (key, value)
            return key, value

    ids = _ids(1, 7, 5)
    full = model(ids).logits
    cache = Minimal()
    first = model(ids[:, :4], past_key_values=cache).logits
    rest = model(ids[:, 4:], past_key_values=cache).logits
    assert cache.get_seq_length() == 7
    torch.testing.assert_close(torch.cat([first, rest], dim=1), full, atol=ATOL, rtol=0)


def test_static_cache_is_refused_clearly(pair):
    _, model = pair
    static = transformers.StaticCache(config=transformers.GPTNeoXConfig(
        vocab_size=128, hidden_size=32, num_hidden_layers=2, num_attention_heads=4), max_cache_len=16)
    with pytest.raises(ValueError, match="only caches that return exactly the positions"):
        model(_ids(1, 3, 6), past_key_values=static)
