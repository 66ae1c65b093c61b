"""torch.compile(fullgraph=True), torch.export and the ONNX dynamo exporter give the eager logits.

The oracle is transformers' own GPTNeoXForCausalLM with the same weights (saved by transformers,
loaded by neox). Tracing must not read token ids on the host (the eager range check skips itself
while compiling) and the output classes must be pytree nodes so export can return them.
Exports run with ``use_cache=False``: a cache object is not a tensor output (transformers'
DynamicCache is not exportable either).
"""

from __future__ import annotations

import pytest
import torch
import torch.utils._pytree as pytree

from neox import GPTNeoXForCausalLM
from neox.outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

ATOL = 1e-5


@pytest.fixture
def pair(save_hf_model):
    """(transformers model, neox model) with the same random weights."""
    folder, ref = save_hf_model()
    return ref, GPTNeoXForCausalLM.from_pretrained(folder).eval()


def _ids(batch: int, length: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, 128, (batch, length), generator=torch.Generator().manual_seed(seed))


def test_outputs_are_pytree_nodes():
    out = CausalLMOutputWithPast(logits=torch.ones(1, 2, 3), loss=torch.tensor(2.0))
    leaves, spec = pytree.tree_flatten(out)
    assert len(leaves) == 2 and leaves[0] is out.loss and leaves[1] is out.logits
    back = pytree.tree_unflatten([x * 2 for x in leaves], spec)
    assert type(back) is CausalLMOutputWithPast and list(back) == ["loss", "logits"]
    torch.testing.assert_close(back.logits, 2 * out.logits)
    # Nested (hidden_states tuple) and the base model's class too.
    base = BaseModelOutputWithPast(last_hidden_state=torch.zeros(1), hidden_states=(torch.ones(1), torch.ones(1)))
    assert len(pytree.tree_leaves(base)) == 3


def test_compile_fullgraph_gives_eager_logits(pair):
    ref, model = pair
    ids = _ids(2, 9)
    mask = torch.ones_like(ids)
    mask[1, :3] = 0  # left padding exercises the boolean-mask path
    compiled = torch.compile(model, fullgraph=True, backend="eager")
    with torch.no_grad():
        want = ref(ids).logits
        got = compiled(ids).logits
        torch.testing.assert_close(got, want, atol=ATOL, rtol=0)
        eager_padded = model(ids, attention_mask=mask).logits
        torch.testing.assert_close(compiled(ids, attention_mask=mask).logits, eager_padded, atol=ATOL, rtol=0)
    torch.testing.assert_close(eager_padded[mask.bool()], ref(ids, attention_mask=mask).logits[mask.bool()],
                               atol=ATOL, rtol=0)


def test_export_returns_output_class_with_dynamic_shapes(pair):
    ref, model = pair
    ids = _ids(2, 7)
    batch, seq = torch.export.Dim("batch", max=8), torch.export.Dim("seq", max=32)
    program = torch.export.export(
        model, (ids,), kwargs={"use_cache": False}, dynamic_shapes=({0: batch, 1: seq}, None)
    )
    other = _ids(3, 11, seed=2)  # a shape the trace did not see
    out = program.module()(other, use_cache=False)
    assert type(out) is CausalLMOutputWithPast and list(out) == ["logits"]
    with torch.no_grad():
        torch.testing.assert_close(out.logits, ref(other, use_cache=False).logits, atol=ATOL, rtol=0)


def test_onnx_dynamo_export_runs_in_onnxruntime(pair, tmp_path):
    pytest.importorskip("onnxscript", reason="the ONNX dynamo exporter needs onnxscript")
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")
    ref, model = pair
    ids = _ids(2, 7)
    program = torch.onnx.export(model, (ids,), kwargs={"use_cache": False}, dynamo=True, verbose=False)
    path = tmp_path / "model.onnx"
    program.save(str(path))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {session.get_inputs()[0].name: ids.numpy()})
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(logits), ref(ids, use_cache=False).logits, atol=ATOL, rtol=0)


def test_range_check_still_runs_eagerly(pair):
    _, model = pair
    with pytest.raises(ValueError, match="outside the vocabulary"):
        model(torch.tensor([[1, 128]]))
