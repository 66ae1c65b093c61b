"""generate() honours what a client changes on the model: a wrapped or compiled ``forward``, a
forward hook, an overridden ``prepare_inputs_for_generation`` — calling them each step as
transformers does — and a transformers ``DynamicCache`` passed as ``past_key_values``. Without
such a change it keeps its direct decode loop.

The oracle is transformers' GPTNeoXForCausalLM with the same weights and the same change.
"""

from __future__ import annotations

import functools

import pytest
import torch

transformers = pytest.importorskip("transformers", reason="transformers (the oracle) is not installed")

from neox import GPTNeoXForCausalLM  # noqa: E402


@pytest.fixture
def pair(save_hf_model):
    folder, ref = save_hf_model()
    return ref, GPTNeoXForCausalLM.from_pretrained(folder).eval()


def _prompt():
    ids = torch.randint(0, 128, (2, 6), generator=torch.Generator().manual_seed(5))
    mask = torch.ones_like(ids)
    mask[0, :3] = 0
    return ids, mask


def _generate(model, new: int = 6):
    ids, mask = _prompt()
    with torch.no_grad():
        return model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new, do_sample=False)


def _bias_token(token: int):
    """A forward hook that favours one token: visible in every generated position."""

    def hook(module, args, output):
        output.logits[..., token] += 1e3
        return output

    return hook


def test_no_change_keeps_the_fast_path(pair):
    _, model = pair
    assert not model._client_changed_steps()


def test_forward_hook(pair):
    ref, model = pair
    ref.register_forward_hook(_bias_token(7))
    handle = model.register_forward_hook(_bias_token(7))
    assert model._client_changed_steps()
    got = _generate(model)
    assert got.tolist() == _generate(ref).tolist()
    assert (got[:, -6:] == 7).all()
    handle.remove()
    assert not model._client_changed_steps()


def test_wrapped_prepare_inputs_for_generation(pair):
    """A user's prepare_inputs_for_generation on the instance sees transformers' arguments."""
    ref, model = pair
    seen = {"hf": [], "neox": []}

    def wrap(target, key):
        original = target.prepare_inputs_for_generation

        @functools.wraps(original)
        def prepare(input_ids, **kwargs):
            seen[key].append((tuple(input_ids.shape), kwargs.get("next_sequence_length"),
                              kwargs.get("attention_mask") is not None))
            return original(input_ids, **kwargs)

        target.prepare_inputs_for_generation = prepare

    wrap(ref, "hf")
    wrap(model, "neox")
    assert _generate(model).tolist() == _generate(ref).tolist()
    assert seen["neox"] == seen["hf"] and len(seen["neox"]) == 6


def test_compiled_forward(pair):
    ref, model = pair
    want = _generate(ref, new=3)  # each new length traces again: few steps
    model.forward = torch.compile(model.forward, backend="eager")
    assert model._client_changed_steps()
    assert _generate(model, new=3).tolist() == want.tolist()


def _counting(base):
    class Counting(base):
        calls = 0

        def forward(self, *args, **kwargs):  # a signature without position_ids: transformers then builds none
            type(self).calls += 1
            return super().forward(*args, **kwargs)

    return Counting


def test_subclass_override(pair):
    """Called every step, with what transformers passes (on the padded row, no position_ids)."""
    ref, model = pair
    theirs = _counting(transformers.GPTNeoXForCausalLM)(ref.config)
    theirs.load_state_dict(ref.state_dict())
    mine = _counting(GPTNeoXForCausalLM)(model.config)
    mine.load_state_dict(model.state_dict())
    assert mine._client_changed_steps()
    got = _generate(mine.eval())
    assert got.tolist() == _generate(theirs.eval()).tolist()
    assert type(mine).calls == type(theirs).calls == 6


def test_dynamic_cache_in_generate(pair):
    """A DynamicCache holding the prompt's prefix continues, and is filled in place."""
    ref, model = pair
    ids = torch.randint(0, 128, (1, 8), generator=torch.Generator().manual_seed(6))
    mine, theirs = transformers.DynamicCache(), transformers.DynamicCache()
    with torch.no_grad():
        model(ids[:, :5], past_key_values=mine)
        ref(ids[:, :5], cache=theirs)
        got = model.generate(ids, past_key_values=mine, max_new_tokens=5, do_sample=False)
        want = ref.generate(ids, cache=theirs, max_new_tokens=5, do_sample=False)
    assert got.tolist() == want.tolist()
    assert mine.get_seq_length() == theirs.get_seq_length()
