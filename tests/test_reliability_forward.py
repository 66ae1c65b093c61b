"""Bad forward() arguments end in an error naming the argument (issue 13, class 6).

Each case is checked against a model that takes the valid form of the same argument, so a
test fails if a check refused a valid input as well as if it let a bad one through.
"""

from __future__ import annotations

import pytest
import torch

from neox import GPTNeoXForCausalLM, GPTNeoXModel
from neox.cache import KVCache
from neox.validation import check_input_ids, check_labels, check_logits_to_keep

from conftest import make_tiny_config


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return GPTNeoXForCausalLM(make_tiny_config()).eval()


IDS = torch.tensor([[1, 2, 3, 4], [5, 6, 7, 8]])


def test_valid_forms_still_work(model):
    emb = model.gpt_neox.embed_in(IDS)
    labels = IDS.clone()
    labels[0, 0] = -100
    with torch.no_grad():
        model(IDS, labels=labels)
        model(inputs_embeds=emb)
        model(IDS, logits_to_keep=torch.tensor([0, -1]))
        model(IDS, logits_to_keep=torch.tensor([True, False, False, True]))
        past = model(IDS[:, :2]).past_key_values
        model(IDS[:, 2:], past_key_values=tuple(past))


@pytest.mark.parametrize("value, error, match", [
    ([[[0.0] * 32] * 4] * 2, TypeError, "inputs_embeds must be a torch.Tensor"),
    (torch.zeros(2, 4, 32, dtype=torch.long), TypeError, "inputs_embeds must be a floating-point"),
    (torch.zeros(2, 4, 31), ValueError, "inputs_embeds must be"),
])
def test_bad_inputs_embeds(model, value, error, match):
    with pytest.raises(error, match=match):
        model(inputs_embeds=value)
    with pytest.raises(error, match=match):
        model.gpt_neox(inputs_embeds=value)


@pytest.mark.parametrize("labels, error, match", [
    (IDS.float(), TypeError, "labels must be an integer"),
    (IDS.tolist(), TypeError, "labels must be a torch.Tensor"),
    (torch.full_like(IDS, 128), ValueError, "labels contains 128"),
    (torch.full_like(IDS, -5), ValueError, "labels contains -5"),
    (torch.full_like(IDS, -101), ValueError, "labels contains -101"),
])
def test_bad_labels(model, labels, error, match):
    with pytest.raises(error, match=match):
        model(IDS, labels=labels)


def _legacy(layers: int, heads: int, head_size: int, dtype=torch.float32):
    k = torch.zeros(2, heads, 3, head_size, dtype=dtype)
    return tuple((k, k.clone()) for _ in range(layers))


@pytest.mark.parametrize("past, error, match", [
    (_legacy(1, 4, 8), ValueError, "holds 1 layers, the model has 2"),
    (_legacy(3, 4, 8), ValueError, "holds 3 layers, the model has 2"),
    (_legacy(2, 2, 8), ValueError, "4 heads of size 8"),
    (_legacy(2, 4, 16), ValueError, "4 heads of size 8"),
    (_legacy(2, 4, 8, torch.long), TypeError, "floating-point"),
    (KVCache(3, 2, 4, 8, 8), ValueError, "holds 3 layers"),
])
def test_past_that_does_not_fit_the_model(model, past, error, match):
    with pytest.raises(error, match=match):
        model(IDS, past_key_values=past)


@pytest.mark.parametrize("position_ids, error, match", [
    (torch.zeros(2, 4, 2, dtype=torch.long), ValueError, "position_ids has shape"),
    (list(range(4)), TypeError, "position_ids must be a torch.Tensor"),
    (torch.ones(2, 4, dtype=torch.bool), TypeError, "integer positions"),
])
def test_bad_position_ids(model, position_ids, error, match):
    with pytest.raises(error, match=match):
        model(IDS, position_ids=position_ids)


@pytest.mark.parametrize("keep, error, match", [
    (torch.tensor([4]), ValueError, "position 4"),
    (torch.tensor([-5]), ValueError, "position -5"),
    (torch.tensor([[0]]), ValueError, "1-D"),
    (torch.tensor([0.5]), TypeError, "integer positions"),
    (torch.tensor([True, False]), ValueError, "length 4"),
    (1.5, TypeError, "logits_to_keep must be an int"),
    (-1, ValueError, ">= 0"),
])
def test_bad_logits_to_keep(model, keep, error, match):
    with pytest.raises(error, match=match):
        model(IDS, logits_to_keep=keep)


def test_value_checks_do_not_sync_while_compiling():
    """Under torch.compile(fullgraph=True) the data-dependent checks are skipped, not graph breaks."""
    torch._dynamo.reset()

    def f(ids, labels, keep):
        check_input_ids(ids, 128)
        check_labels(labels, 128)
        check_logits_to_keep(keep, 4)
        return ids + 1

    compiled = torch.compile(f, fullgraph=True, backend="eager")
    out = compiled(IDS, IDS, torch.tensor([0]))
    assert torch.equal(out, IDS + 1)
    with pytest.raises(ValueError, match="labels contains 128"):
        f(IDS, torch.full_like(IDS, 128), torch.tensor([0]))  # eager: checked
