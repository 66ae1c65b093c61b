"""PEFT (0.21.2) prompt tuning and prefix tuning on a neox model: the same logits in training
(forward) and the same generated tokens as PEFT on transformers' own model, same weights, same
adapter initialisation seed.

generate() goes through PEFT's ``prepare_inputs_for_generation`` (which PEFT swaps onto the base
model for the call) exactly as transformers calls it; neox's direct decode loop would skip it.
What transformers 5.24 then does is the oracle, quirks included: PEFT 0.21 looks for the cache
under ``past_key_values`` while 5.24 passes ``cache``, so prompt tuning re-feeds its virtual tokens
at every step and prefix tuning decodes without its prefix (the forward pass, used in training,
does use it). The prompts are unpadded: with padding PEFT 0.21 and transformers 5.24 build masks
of mismatched length.
"""

from __future__ import annotations

import pytest
import torch

peft = pytest.importorskip("peft", reason="PEFT is not installed")
pytest.importorskip("transformers", reason="transformers (the oracle) is not installed")

from neox import GPTNeoXForCausalLM  # noqa: E402

ATOL = 1e-5
P = 4  # virtual tokens


@pytest.fixture
def pair(save_hf_model):
    folder, ref = save_hf_model()
    return ref, GPTNeoXForCausalLM.from_pretrained(folder).eval()


def _adapt(model, kind: str):
    config = (peft.PromptTuningConfig if kind == "prompt" else peft.PrefixTuningConfig)(
        task_type=peft.TaskType.CAUSAL_LM, num_virtual_tokens=P
    )
    torch.manual_seed(1)
    adapted = peft.get_peft_model(model, config).eval()
    with torch.no_grad():  # large virtual tokens, so that ignoring them would change every number
        gen = torch.Generator().manual_seed(2)
        for p in adapted.prompt_encoder.parameters():
            p.copy_(torch.randn(p.shape, generator=gen))
    return adapted


def _ids(batch: int, length: int) -> torch.Tensor:
    return torch.randint(0, 128, (batch, length), generator=torch.Generator().manual_seed(3))


@pytest.mark.parametrize("kind", ["prompt", "prefix"])
def test_forward_matches_peft_on_transformers(pair, kind):
    ref, model = pair
    theirs, mine = _adapt(ref, kind), _adapt(model, kind)
    assert mine.get_nb_trainable_parameters() == theirs.get_nb_trainable_parameters()
    ids = _ids(2, 6)
    mask = torch.ones_like(ids)
    labels = ids.clone()
    with torch.no_grad():
        want = theirs(input_ids=ids, attention_mask=mask, labels=labels)
        got = mine(input_ids=ids, attention_mask=mask, labels=labels)
        plain = model(ids).logits
    torch.testing.assert_close(got.logits, want.logits, atol=ATOL, rtol=0)
    torch.testing.assert_close(got.loss, want.loss, atol=ATOL, rtol=0)
    assert (got.logits[:, -6:] - plain).abs().max() > 0.1  # the adapter is in effect


@pytest.mark.parametrize("kind", ["prompt", "prefix"])
def test_generate_matches_peft_on_transformers(pair, kind):
    ref, model = pair
    theirs, mine = _adapt(ref, kind), _adapt(model, kind)
    ids = _ids(2, 5)
    with torch.no_grad():
        want = theirs.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=8,
                               do_sample=False)
        got = mine.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=8, do_sample=False)
    assert got.tolist() == want.tolist()
    # PEFT restores the base model's own method after the call: the fast path is back.
    assert not model._client_changed_steps()
