"""Weight-only quantisation: the quantiser's error bound, the kernels against a dequantised
reference, loading while quantising, save → load identity, generate, and the errors for bad options.

Tolerances: each quantised linear casts its input and its output to bf16 (8 significant bits,
relative rounding ≤ 2⁻⁹ each), so against a model that holds the *dequantised* weights in fp32 the
logits differ by a few bf16 roundings of their scale — bounded here by 2% of the largest logit
over two layers. The native CPU kernels round each block of 32 activations to int8 instead (half a
step of max|x|/127 per input, ≤ 2⁻⁸ of the block's largest): the same bound holds (their exact
per-output bound is checked in test_native.py). Against the original fp32 weights, each weight moves by at most half a
quantisation step (checked exactly, per row or per group).
"""

from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

import neox
from neox import GPTNeoXForCausalLM
from neox.kernels import Linear
from neox.quantization import (
    BF16Linear,
    Int4Linear,
    Int8Linear,
    QuantizationConfig,
    _int4_pack,
    _int4_unpack,
    quantized_modules,
)

from conftest import make_tiny_config, randomize_

# Tiny shape that every int4 kernel accepts with group 32: in_features 32/64, out_features % 16 == 0.
SCHEMES = [("int8", None), ("int4", 32), ("bf16", None)]
IDS = torch.tensor([[5, 17, 99, 2, 64, 31, 7, 120], [1, 2, 3, 4, 5, 6, 7, 8]])


def tiny_model(seed: int = 0, std: float = 0.2, **overrides) -> GPTNeoXForCausalLM:
    torch.manual_seed(seed)
    return randomize_(GPTNeoXForCausalLM(make_tiny_config(**overrides)), seed=seed, std=std).eval()


def quantized(model: nn.Module, scheme: str, group_size: int | None, **kw) -> nn.Module:
    return neox.quantize(copy.deepcopy(model), scheme, group_size=group_size, **kw)


def dequantized_reference(qmodel: nn.Module) -> nn.Module:
    """An fp32 model whose linears hold exactly the weights the quantised kernels multiply by."""
    ref = copy.deepcopy(qmodel)
    for name, m in quantized_modules(qmodel).items():
        w = m.dequantize()
        lin = nn.Linear(m.in_features, m.out_features, bias=m.bias is not None, device=w.device)
        with torch.no_grad():
            lin.weight.copy_(w)
            if m.bias is not None:
                lin.bias.copy_(m.bias)
        parent, _, child = name.rpartition(".")
        setattr(ref.get_submodule(parent) if parent else ref, child, lin)
    return ref


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


@pytest.mark.parametrize("native", [True, False], ids=["native", "torch"])
@pytest.mark.parametrize("rows", [16, 96])  # CPU: the matrix-vector kernels, then dequantise + GEMM
@pytest.mark.parametrize("scheme,group", SCHEMES + [("int4", 64)])
def test_kernels_match_the_dequantised_weights(scheme, group, rows, native, request):
    request.getfixturevalue("native_on" if native else "native_off")
    model = tiny_model(hidden_size=64, intermediate_size=128) if group == 64 else tiny_model()
    q = quantized(model, scheme, group)
    assert len(quantized_modules(q)) == 2 * 4 + 1  # four linears per layer and the head
    ids = torch.randint(0, 128, (2, rows // 2), generator=torch.Generator().manual_seed(rows))
    with torch.no_grad():
        got, want = q(ids).logits, dequantized_reference(q)(ids).logits
    assert got.dtype == torch.float32
    assert rel(got, want) <= 0.02


def test_each_weight_moves_at_most_half_a_step():
    torch.manual_seed(1)
    w = torch.randn(48, 128) * torch.logspace(-2, 1, 48)[:, None]  # rows on very different scales
    lin = nn.Linear(128, 48)
    with torch.no_grad():
        lin.weight.copy_(w)
    q8 = Int8Linear(128, 48)
    q8.quantize_(lin.weight)
    step = q8.scales.float()[:, None]
    assert ((q8.dequantize() - w).abs() <= step / 2 * (1 + 1e-3)).all()
    for g in (32, 64, 128):
        q4 = Int4Linear(128, 48, config=QuantizationConfig("int4", group_size=g))
        q4.quantize_(lin.weight)
        scale = q4.scales_and_zeros[..., 0].float().t().repeat_interleave(g, dim=1)  # (N, K)
        zero = q4.scales_and_zeros[..., 1].float().t().repeat_interleave(g, dim=1)
        # Half a step, plus the rounding of the bf16 zero point (≤ 2⁻⁹ of its size).
        bound = scale / 2 + zero.abs() * 2**-8
        assert ((q4.dequantize() - w).abs() <= bound).all(), g


@pytest.mark.parametrize("shape", [(16, 32), (48, 64), (96, 128), (64, 256)])
def test_int4_cpu_layout_unpacks_exactly(shape):
    N, K = shape
    values = torch.randint(0, 16, (N, K), dtype=torch.uint8)
    packed = _int4_pack(values, "cpu", 2)
    assert torch.equal(_int4_unpack(packed, N, K, "cpu", 2), values)


@pytest.mark.parametrize("scheme,group", SCHEMES)
def test_from_pretrained_quantises_while_loading_and_saves_quantised(save_neox_model, tmp_path, scheme, group):
    folder, model = save_neox_model()
    q = GPTNeoXForCausalLM.from_pretrained(folder, quantization=QuantizationConfig(scheme, group_size=group))
    direct = quantized(model, scheme, group)
    assert q.state_dict().keys() == direct.state_dict().keys()
    for k, v in q.state_dict().items():
        assert torch.equal(v, direct.state_dict()[k]), k
    assert isinstance(q.gpt_neox.embed_in, nn.Embedding) and q.gpt_neox.embed_in.weight.dtype == torch.float32

    out = tmp_path / "q"
    q.save_pretrained(out)
    saved = json.loads((out / "config.json").read_text())["quantization_config"]
    assert saved == QuantizationConfig(scheme, group_size=group).to_dict()
    back, info = GPTNeoXForCausalLM.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert {type(m) for m in quantized_modules(back).values()} == {type(m) for m in quantized_modules(q).values()}
    with torch.no_grad():
        assert torch.equal(back(IDS).logits, q(IDS).logits)
    again = tmp_path / "q2"
    back.save_pretrained(again)
    assert (again / "model.safetensors").read_bytes() == (out / "model.safetensors").read_bytes()


def test_saving_an_unquantised_model_is_unchanged(save_neox_model, tmp_path):
    folder, model = save_neox_model()
    GPTNeoXForCausalLM.from_pretrained(folder).save_pretrained(tmp_path / "again")
    assert "quantization_config" not in json.loads((tmp_path / "again" / "config.json").read_text())
    assert (tmp_path / "again" / "model.safetensors").read_bytes() == (folder / "model.safetensors").read_bytes()


def test_head_is_optional_and_embeddings_are_never_quantised():
    q = quantized(tiny_model(), "int8", None, include_head=False)
    assert type(q.embed_out) is Linear and type(q.gpt_neox.embed_in) is nn.Embedding
    assert isinstance(q.gpt_neox.layers[0].mlp.dense_h_to_4h, Int8Linear)
    q = quantized(tiny_model(), "int4", 32, modules_to_not_convert=["dense_4h_to_h"])
    assert type(q.gpt_neox.layers[1].mlp.dense_4h_to_h) is Linear
    assert isinstance(q.embed_out, Int4Linear)


def test_dtype_and_device_moves_keep_the_quantised_formats():
    q = quantized(tiny_model(), "int8", None).to(torch.bfloat16)
    assert q.embed_out.qweight.dtype == torch.int8 and q.embed_out.scales.dtype == torch.bfloat16
    assert q.embed_out.bias is None and q.gpt_neox.layers[0].mlp.dense_h_to_4h.bias.dtype == torch.bfloat16
    with torch.no_grad():
        assert q(IDS).logits.dtype == torch.bfloat16
    q = quantized(tiny_model(), "bf16", None).double().float()
    assert q.embed_out.weight.dtype == torch.bfloat16


def test_tied_head_stays_tied():
    model = tiny_model(tie_word_embeddings=True)
    model.tie_weights()
    q = quantized(model, "int8", None)
    assert type(q.embed_out) is Linear and q.embed_out.weight is q.gpt_neox.embed_in.weight


@pytest.mark.parametrize("scheme,group", SCHEMES)
def test_generate_greedy_static_and_dynamic_agree(scheme, group):
    q = quantized(tiny_model(), scheme, group)
    ids = IDS[:1]
    a = q.generate(ids, max_new_tokens=12, do_sample=False, pad_token_id=0)
    b = q.generate(ids, max_new_tokens=12, do_sample=False, pad_token_id=0, cache_implementation="static")
    assert torch.equal(a, b)
    # And the cached decode equals re-running the whole sequence without a cache.
    with torch.no_grad():
        full = q(a[:, :-1], use_cache=False).logits.argmax(-1)
    assert torch.equal(full[0, ids.shape[1] - 1 :], a[0, ids.shape[1] :])


def test_int8_greedy_tokens_agree_with_fp32():
    """Over a 32-token greedy decode of a tiny random model, int8 picks fp32's tokens."""
    model = tiny_model(std=0.3)
    q = quantized(model, "int8", None)
    ids = IDS[:1]
    a = model.generate(ids, max_new_tokens=32, do_sample=False, pad_token_id=0)
    b = q.generate(ids, max_new_tokens=32, do_sample=False, pad_token_id=0)
    assert (a == b).float().mean().item() >= 0.95


def test_bf16_model_decodes_on_cpu_close_to_fp32():
    model = tiny_model()
    half = copy.deepcopy(model).to(torch.bfloat16)
    with torch.no_grad():
        assert rel(half(IDS).logits.float(), model(IDS).logits) <= 0.05
    out = half.generate(IDS[:1], max_new_tokens=8, do_sample=False, pad_token_id=0, cache_implementation="static")
    assert out.shape == (1, IDS.shape[1] + 8)


def test_missing_kernel_falls_back_with_a_warning(monkeypatch, native_off):
    import neox.quantization as qz

    q = quantized(tiny_model(), "int8", None)
    with torch.no_grad():
        fast = q(IDS).logits
    monkeypatch.setattr(qz, "_has_op", lambda name: False)
    monkeypatch.setattr(qz, "_warned", set())
    with pytest.warns(RuntimeWarning, match="_weight_int8pack_mm"):
        with torch.no_grad():
            slow = q(IDS).logits
    assert rel(slow, fast) <= 0.02


def test_transformers_style_configs_map_or_are_refused():
    class Int4WeightOnlyConfig:  # what torchao's class looks like from outside
        def __init__(self, group_size: int = 128) -> None:
            self.group_size = group_size

    class TorchAoConfig:
        quant_method = "torchao"

        def __init__(self, quant_type) -> None:
            self.quant_type = quant_type

        def to_dict(self) -> dict:
            return {"quant_method": "torchao", "modules_to_not_convert": None}

    got = QuantizationConfig.from_any(TorchAoConfig(Int4WeightOnlyConfig(group_size=64)))
    assert (got.scheme, got.group_size, got.include_head) == ("int4", 64, False)
    as_saved = {"quant_method": "torchao", "quant_type": {"default": {"_type": "Int8WeightOnlyConfig", "_data": {}}}}
    assert QuantizationConfig.from_any(as_saved).scheme == "int8"
    assert QuantizationConfig.from_any({"quant_method": "quanto", "weights": "int8"}).scheme == "int8"
    with pytest.raises(ValueError, match="bitsandbytes"):
        QuantizationConfig.from_any({"quant_method": "bitsandbytes", "load_in_8bit": True})
    with pytest.raises(ValueError, match="Int8DynamicActivationInt8WeightConfig"):
        QuantizationConfig.from_any({"quant_method": "torchao",
                                     "quant_type": {"_type": "Int8DynamicActivationInt8WeightConfig"}})
    with pytest.raises(ValueError, match="activations"):
        QuantizationConfig.from_any({"quant_method": "quanto", "weights": "int8", "activations": "int8"})


def test_bad_options_raise_clear_errors(save_neox_model, tmp_path):
    folder, model = save_neox_model()
    with pytest.raises(ValueError, match="int3"):
        GPTNeoXForCausalLM.from_pretrained(folder, quantization="int3")
    with pytest.raises(ValueError, match="group_size must be one of"):
        neox.quantize(copy.deepcopy(model), "int4", group_size=48)
    with pytest.raises(ValueError, match="group_size applies to int4 only"):
        neox.quantize(copy.deepcopy(model), "int8", group_size=64)
    with pytest.raises(ValueError, match="not both"):
        GPTNeoXForCausalLM.from_pretrained(folder, quantization="int8", quantization_config={"quant_method": "neox"})
    with pytest.raises(ValueError, match="unknown keys"):
        GPTNeoXForCausalLM.from_pretrained(folder, quantization_config={"quant_method": "neox", "bits": 3})
    with pytest.raises(TypeError, match="unknown arguments"):
        GPTNeoXForCausalLM.from_pretrained(folder, quantisation="int8")
    q = GPTNeoXForCausalLM.from_pretrained(folder, quantization="int8")
    with pytest.raises(ValueError, match="already quantised"):
        neox.quantize(q, "int8")
    q.save_pretrained(tmp_path / "q")
    with pytest.raises(ValueError, match="already quantised"):
        GPTNeoXForCausalLM.from_pretrained(tmp_path / "q", quantization="int4")
    # The same request as the checkpoint's own is fine.
    GPTNeoXForCausalLM.from_pretrained(tmp_path / "q", quantization="int8")


def test_unfit_shapes_are_left_unquantised_with_a_log(caplog):
    model = tiny_model(hidden_size=48, num_attention_heads=3, intermediate_size=96)  # 48 is not a multiple of 32
    q = quantized(model, "int4", 32)
    assert type(q.gpt_neox.layers[0].attention.query_key_value) is Linear
    assert isinstance(q.gpt_neox.layers[0].mlp.dense_4h_to_h, Int4Linear)  # in_features 96
    assert "left unquantised" in caplog.text


def test_int4_packs_row_blocks_as_it_packs_the_whole(monkeypatch):
    """Packing (and loading) block by block keeps the peak low; it must give the same bytes."""
    import neox.quantization as qz

    torch.manual_seed(3)
    w = torch.randn(96, 64)
    whole = Int4Linear(64, 96, config=QuantizationConfig("int4", group_size=32))
    whole.quantize_(w)
    monkeypatch.setattr(qz, "_PACK_ROWS", 32)
    blocks = Int4Linear(64, 96, config=QuantizationConfig("int4", group_size=32))
    blocks.quantize_(w)
    assert torch.equal(blocks.qweight, whole.qweight)
    assert torch.equal(blocks.scales_and_zeros, whole.scales_and_zeros)
    again = Int4Linear(64, 96, config=QuantizationConfig("int4", group_size=32))
    again.load_tensor("qweight", whole.state_dict()["qweight"])
    assert torch.equal(again.qweight, whole.qweight)
