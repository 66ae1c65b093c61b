"""CUDA: fp16/bf16 parity with transformers, the fp16 overflow case, loading onto the GPU.

Every test here skips without CUDA. fp16 comparisons use tolerances relative to the logits'
scale (two fp16 implementations differ by rounding, not by a fixed absolute amount).
"""

from __future__ import annotations

import pytest
import torch

from neox import GPTNeoXForCausalLM, KVCache
from neox.modeling import attention

from test_modeling import fp16_overflow_case, ids_for, max_diff, neox_model

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def relative_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return max_diff(a, b) / b.detach().double().abs().max().item()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_half_precision_parity_with_transformers(hf, save_hf_model, dtype, attn):
    folder, _ = save_hf_model(std=0.1)
    theirs = hf.GPTNeoXForCausalLM.from_pretrained(folder, dtype=dtype, attn_implementation=attn).to("cuda").eval()
    ours = GPTNeoXForCausalLM.from_pretrained(folder, dtype=dtype, device_map="cuda", attn_implementation=attn)
    reference = GPTNeoXForCausalLM.from_pretrained(folder, dtype=torch.float32, device_map="cuda")
    assert ours.device.type == "cuda" and ours.dtype == dtype
    ids = ids_for(24).cuda()
    with torch.no_grad():
        a, b, ref = theirs(ids).logits, ours(ids).logits, reference(ids).logits
    assert torch.isfinite(b).all()
    tol = 0.02 if dtype == torch.float16 else 0.05
    assert relative_diff(b, ref) <= tol  # neox in half precision vs fp32
    assert relative_diff(b, a) <= tol  # and vs transformers in the same precision


def test_fp32_parity_with_transformers_on_cuda(hf, save_hf_model):
    folder, _ = save_hf_model()
    theirs = hf.GPTNeoXForCausalLM.from_pretrained(folder, attn_implementation="eager").to("cuda").eval()
    ours = GPTNeoXForCausalLM.from_pretrained(folder, device_map="cuda:0")
    ids = ids_for(24).cuda()
    with torch.no_grad():
        # TF32 matmuls may be on; compare at a tolerance that covers them
        assert relative_diff(ours(ids).logits, theirs(ids).logits) <= 1e-3


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
def test_fp16_attention_overflow_case_cuda(impl):
    q, k, v = fp16_overflow_case(device="cuda")
    assert torch.isinf(torch.matmul(q, k.transpose(-1, -2))).any(), "the case must overflow a naive fp16 q·kᵀ"
    reference, _ = attention(q.double(), k.double(), v.double(), None, causal=True, implementation="eager")
    out, _ = attention(q, k, v, None, causal=True, implementation=impl)
    assert torch.isfinite(out).all()
    assert max_diff(out, reference) <= 1e-2


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
def test_fp16_model_with_large_activations_cuda(impl):
    model = neox_model(attn_implementation=impl, hidden_size=64, num_attention_heads=1)
    with torch.no_grad():
        for layer in model.gpt_neox.layers:
            layer.attention.query_key_value.weight.mul_(60)
            layer.input_layernorm.weight.fill_(1.0)
    model.cuda()
    ids = ids_for(12).cuda()
    with torch.no_grad():
        fp32 = model(ids).logits
        fp16 = model.half()(ids).logits
    assert torch.isfinite(fp16).all()
    assert relative_diff(fp16, fp32) <= 0.05


@pytest.mark.parametrize("device_map", ["cuda", "cuda:0", torch.device("cuda", 0), 0, "auto"])
def test_load_onto_cuda(save_neox_model, device_map):
    folder, ours = save_neox_model()
    loaded = GPTNeoXForCausalLM.from_pretrained(folder, device_map=device_map)
    assert loaded.device.type == "cuda"
    assert all(p.device.type == "cuda" for p in loaded.parameters())
    assert loaded.gpt_neox.rotary_emb.inv_freq.device.type == "cuda"
    for key, value in ours.state_dict().items():
        assert torch.equal(loaded.state_dict()[key].cpu(), value), key


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cache_equals_no_cache_cuda(dtype):
    model = neox_model().to("cuda", dtype)
    ids = ids_for(20).cuda()
    cache = KVCache.for_model(model.config, 2, 32, dtype, torch.device("cuda"))
    with torch.no_grad():
        full = model(ids).logits
        pieces = [model(ids[:, :12], past_key_values=cache).logits]
        for t in range(12, 20):
            pieces.append(model(ids[:, t : t + 1], past_key_values=cache).logits)
    tol = 1e-3 if dtype == torch.float32 else 0.05
    assert relative_diff(torch.cat(pieces, 1), full) <= tol


def test_out_of_range_token_is_a_value_error_on_cuda():
    """Checked before any kernel runs: a device-side assert would poison the CUDA context."""
    model = neox_model().cuda()
    ids = ids_for(6).cuda()
    ids[0, 2] = 128
    with pytest.raises(ValueError, match="128"):
        model(ids)
    assert torch.isfinite(model(ids_for(6).cuda()).logits).all()  # the context is still usable


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_static_cache_cuda_graphs(dtype):
    """cache_implementation="static" on CUDA compiles the decode step (mode reduce-overhead: CUDA
    graphs): the tokens of the regular cache on a padded batch, for two lengths and, in fp32, for
    seeded sampling."""
    model = neox_model().to("cuda", dtype).eval()
    with torch.no_grad():
        model.embed_out.weight.mul_(8)  # peaked logits: rounding cannot flip a greedy choice
    ids = ids_for(10).cuda()
    mask = torch.ones_like(ids)
    mask[0, :4] = 0
    runs = [(12, dict(do_sample=False)), (20, dict(do_sample=False))]
    if dtype == torch.float32:
        runs.append((16, dict(do_sample=True, top_k=20)))
    for new, settings in runs:
        kwargs = dict(attention_mask=mask, max_new_tokens=new, pad_token_id=0, **settings)
        torch.manual_seed(0)
        regular = model.generate(ids, **kwargs)
        torch.manual_seed(0)
        static = model.generate(ids, cache_implementation="static", **kwargs)
        assert torch.equal(static, regular), (new, settings)


# ------------------------------------------------------------------ weight-only quantisation on CUDA


@pytest.mark.parametrize("scheme", ["int8", "int4"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_quantised_kernels_on_cuda_match_the_dequantised_weights(save_neox_model, scheme, dtype):
    """tinygemm int4 and the int8 weight-only matmul against the weights they dequantise to."""
    from test_quantization import dequantized_reference, rel

    folder, _ = save_neox_model(hidden_size=128, intermediate_size=256, num_attention_heads=4)
    q = GPTNeoXForCausalLM.from_pretrained(folder, quantization=scheme, device_map="cuda", dtype=dtype)
    assert q.device.type == "cuda"
    if scheme == "int4":
        assert q.embed_out.layout == "cuda"
    ids = ids_for(24).cuda()
    with torch.no_grad():
        got = q(ids).logits
        want = dequantized_reference(q).to(torch.float32)(ids).logits
    assert got.dtype == dtype and torch.isfinite(got).all()
    assert rel(got.float(), want) <= 0.03  # bf16 activations at each linear + the model's half precision


def test_int4_quantised_on_cpu_then_moved_to_cuda_repacks(save_neox_model):
    folder, _ = save_neox_model(hidden_size=128, intermediate_size=256, num_attention_heads=4)
    on_cpu = GPTNeoXForCausalLM.from_pretrained(folder, quantization="int4").to("cuda")
    on_gpu = GPTNeoXForCausalLM.from_pretrained(folder, quantization="int4", device_map="cuda")
    ids = ids_for(16).cuda()
    with torch.no_grad():
        a, b = on_cpu(ids).logits, on_gpu(ids).logits
    assert on_cpu.embed_out.layout == "cuda"
    torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("scheme", ["int8", "int4"])
def test_quantised_static_compiled_decode_on_cuda(save_neox_model, scheme):
    """generate(cache_implementation="static") compiles the step (CUDA graphs) around the quantised linears."""
    folder, _ = save_neox_model(hidden_size=128, intermediate_size=256, num_attention_heads=4)
    q = GPTNeoXForCausalLM.from_pretrained(folder, quantization=scheme, device_map="cuda", dtype=torch.bfloat16)
    ids = ids_for(8)[:1].cuda()
    a = q.generate(ids, max_new_tokens=16, do_sample=False, pad_token_id=0)
    b = q.generate(ids, max_new_tokens=16, do_sample=False, pad_token_id=0, cache_implementation="static")
    assert torch.equal(a, b)


def test_quantised_save_load_roundtrip_on_cuda(save_neox_model, tmp_path):
    folder, _ = save_neox_model(hidden_size=128, intermediate_size=256, num_attention_heads=4)
    q = GPTNeoXForCausalLM.from_pretrained(folder, quantization="int4", device_map="cuda")
    q.save_pretrained(tmp_path / "q")
    back = GPTNeoXForCausalLM.from_pretrained(tmp_path / "q", device_map="cuda")
    ids = ids_for(16).cuda()
    with torch.no_grad():
        assert torch.equal(back(ids).logits, q(ids).logits)
