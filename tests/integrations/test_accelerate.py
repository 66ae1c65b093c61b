"""accelerate (1.15.0): a neox model with its weights offloaded — the output head too — generates
transformers' tokens.

``cpu_offload`` moves every weight to the meta device and streams it in per module;
``dispatch_model`` with the head on "disk" does the same for the head alone. generate() takes its
device from the inputs / input embedding (never from the head's meta weight) and, since accelerate
wraps ``forward``, runs each step through the wrapped forward as transformers does.
"""

from __future__ import annotations

import pytest
import torch

accelerate = pytest.importorskip("accelerate", reason="accelerate is not installed")
pytest.importorskip("transformers", reason="transformers (the oracle) is not installed")

from neox import GPTNeoXForCausalLM  # noqa: E402


@pytest.fixture
def pair(save_hf_model):
    folder, ref = save_hf_model()
    return ref, folder


def _prompt() -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(0, 128, (2, 6), generator=torch.Generator().manual_seed(4))
    mask = torch.ones_like(ids)
    mask[1, :2] = 0  # left padding
    return ids, mask


def _generate(model, ids, mask):
    with torch.no_grad():
        return model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=6, do_sample=False)


def test_cpu_offload_generates_transformers_tokens(pair):
    ref, folder = pair
    ids, mask = _prompt()
    want = _generate(ref, ids, mask)
    model = accelerate.cpu_offload(GPTNeoXForCausalLM.from_pretrained(folder).eval(), execution_device="cpu")
    assert model.embed_out.weight.device.type == "meta" and model.gpt_neox.embed_in.weight.device.type == "meta"
    assert _generate(model, ids, mask).tolist() == want.tolist()


def test_head_offloaded_to_disk(pair, tmp_path):
    ref, folder = pair
    ids, mask = _prompt()
    want = _generate(ref, ids, mask)
    model = GPTNeoXForCausalLM.from_pretrained(folder).eval()
    model = accelerate.dispatch_model(model, device_map={"gpt_neox": "cpu", "embed_out": "disk"},
                                      offload_dir=str(tmp_path / "offload"))
    assert model.embed_out.weight.device.type == "meta"
    assert _generate(model, ids, mask).tolist() == want.tolist()
    with torch.no_grad():
        torch.testing.assert_close(model(ids, attention_mask=mask).logits[mask.bool()],
                                   ref(ids, attention_mask=mask).logits[mask.bool()], atol=1e-5, rtol=0)
