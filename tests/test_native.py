"""neox.native: the CPU matrix-vector kernels against exact references, and their build.

The fp32 kernel sums the products of F.linear in another order: within fp32 rounding of the
partial sums (1e-6 of Σ|w·x|) of it. The int8/int4
kernels multiply the dequantised weight by int8-rounded activations: each block of 32 inputs is
rounded to a multiple of d = max|x_block| / 127, so each input moves by at most d/2 and each
output by at most Σ_k |w_k| · d_block(k) / 2 — checked per output, plus fp32 rounding slack.
Every result must also be the same bits for a row alone and in a batch (the kernels read each
weight row once for all rows, but each row's sums never mix with another's).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F

from neox import native
from neox.native import build, ops
from neox.quantization import Int4Linear, Int8Linear, QuantizationConfig, _int4_quantize, _int8_quantize, _nibbles

pytestmark = pytest.mark.usefixtures("native_on")


def activation_bound(x: torch.Tensor, w: torch.Tensor, order: torch.Tensor | None = None) -> torch.Tensor:
    """(M, N): the most int8 rounding of 32-input blocks of x can move x · wᵀ (see the docstring).
    ``order`` permutes inputs before blocking (the int4 kernel blocks in its nibble order)."""
    xs = x if order is None else x[:, order]
    ws = w if order is None else w[:, order]
    M, K = xs.shape
    d = xs.abs().view(M, K // 32, 32).amax(-1) / 127  # (M, K/32)
    per_input = (d / 2).repeat_interleave(32, dim=1)  # (M, K)
    return per_input @ ws.abs().t()


def nibble_order(K: int) -> torch.Tensor:
    """Each 64 inputs, odd then even: the order of the low then high nibbles of 32 bytes."""
    base = torch.arange(0, K, 64)[:, None]
    return torch.cat([base + torch.arange(1, 64, 2), base + torch.arange(0, 64, 2)], dim=1).reshape(-1)


SHAPES = [(1, 64), (7, 64), (50, 128), (96, 768), (130, 3072)]


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("N,K", SHAPES + [(33, 40), (5, 1)])
def test_f32_matches_f_linear_and_is_batch_invariant(N, K, bias):
    torch.manual_seed(N * K)
    w, b = torch.randn(N, K), (torch.randn(N) if bias else None)
    x = torch.randn(9, K)
    y = ops.f32_linear(x, w, b)
    # Another summation order: fp32 rounding of the partial sums, a small multiple of 2⁻²⁴ Σ|w·x|.
    scale = x.abs() @ w.abs().t() + (b.abs() if bias else 0)
    assert ((y - F.linear(x, w, b)).abs() <= 1e-6 * scale + 1e-7).all()
    for m in (0, 4, 8):
        assert torch.equal(ops.f32_linear(x[m : m + 1].contiguous(), w, b), y[m : m + 1])


@pytest.mark.parametrize("rows", [1, 2, 3, 5, 16])
@pytest.mark.parametrize("N,K", SHAPES + [(5, 32), (11, 96)])
def test_int8_within_the_activation_rounding_bound(N, K, rows):
    torch.manual_seed(N + K + rows)
    w = torch.randn(N, K) * torch.logspace(-2, 0, N)[:, None]
    q, s = _int8_quantize(w)
    deq = q.float() * s.float()[:, None]
    x = torch.randn(rows, K) * torch.logspace(-1, 1, K)  # blocks on different scales
    if K > 32:
        x[0, :32] = 0  # an all-zero block (scale 0)
    y = ops.int8_linear(x, q, s)
    want = F.linear(x, deq)
    slack = 1e-5 * (x.abs() @ deq.abs().t()) + 1e-6
    assert ((y - want).abs() <= activation_bound(x, deq) + slack).all()
    assert (y - want).abs().max() > 0  # the activations really are rounded (the bound is the spec)
    for m in range(rows):
        assert torch.equal(ops.int8_linear(x[m : m + 1].contiguous(), q, s), y[m : m + 1])


@pytest.mark.parametrize("group", [64, 128, 256])
@pytest.mark.parametrize("rows", [1, 2, 3, 16])
@pytest.mark.parametrize("N,K", [(16, 256), (48, 768), (130, 3072)])
def test_int4_within_the_activation_rounding_bound(N, K, rows, group):
    torch.manual_seed(N + K + rows + group)
    w = torch.randn(N, K) * 0.05
    values, sz = _int4_quantize(w, group)  # (N, K) in [0, 15], (K/g, N, 2)
    s, z = sz.float().transpose(0, 1).unbind(-1)  # (N, K/g)
    deq = ((values.float().view(N, K // group, group) - 8) * s[..., None] + z[..., None]).view(N, K)
    x = torch.randn(rows, K) * torch.logspace(-1, 1, K)
    y = ops.int4_linear(x, _nibbles(values), sz, group)
    want = F.linear(x, deq)
    slack = 1e-5 * (x.abs() @ deq.abs().t()) + 1e-6
    assert ((y - want).abs() <= activation_bound(x, deq, nibble_order(K)) + slack).all()
    for m in range(rows):
        assert torch.equal(ops.int4_linear(x[m : m + 1].contiguous(), _nibbles(values), sz, group), y[m : m + 1])


def test_calls_the_kernels_cannot_take_return_none():
    """Wrong dtypes, shapes, layouts or devices never reach the C code: the caller falls back."""
    x, w = torch.randn(2, 64), torch.randn(8, 64)
    q, s = _int8_quantize(w)
    values, sz = _int4_quantize(w, 64)
    p = _nibbles(values)
    assert ops.f32_linear(x.double(), w, None) is None
    assert ops.f32_linear(x, w[:, :32], None) is None
    assert ops.f32_linear(x, w.t().contiguous().t(), None) is None  # non-contiguous weight
    assert ops.f32_linear(x, w, torch.randn(7)) is None
    assert ops.f32_linear(torch.randn(3, 2, 64).transpose(0, 1), w, None) is None  # non-contiguous x
    assert ops.f32_linear(torch.tensor(1.0), w, None) is None
    assert ops.int8_linear(torch.tensor(1.0), q, s) is None
    assert ops.int8_linear(x, q, s.float()) is None
    assert ops.int8_linear(x[:, :48].contiguous(), q[:, :48].contiguous(), s) is None  # K % 32
    assert ops.int8_linear(x, q[:, :32], s) is None
    assert ops.int4_linear(x, p, sz, 32) is None  # group not a whole number of 64-input blocks
    assert ops.int4_linear(x, p[:4], sz, 64) is None
    assert ops.int4_linear(x, p.view(torch.int8), sz, 64) is None
    assert ops.int4_linear(torch.randn(0, 64), p, sz, 64) is None
    assert ops.int4_linear(torch.randn(2, 0, 64), p, sz, 64) is None


def test_leading_dimensions_are_rows():
    """(…, K) in, (…, N) out: every leading index is a row, as F.linear — the same numbers as the
    rows flattened into a matrix, bit for bit."""
    torch.manual_seed(3)
    w, b = torch.randn(8, 128), torch.randn(8)
    q, s = _int8_quantize(w)
    values, sz = _int4_quantize(w, 64)
    p = _nibbles(values)
    x = torch.randn(2, 3, 128)
    flat = x.reshape(6, 128)
    for call in (lambda t: ops.f32_linear(t, w, b), lambda t: ops.int8_linear(t, q, s, b),
                 lambda t: ops.int4_linear(t, p, sz, 64, b)):
        y = call(x)
        assert y.shape == (2, 3, 8)
        assert torch.equal(y, call(flat).view(2, 3, 8))


@pytest.mark.parametrize("scheme", ["int8", "int4"])
def test_quantised_linears_compile_to_the_neox_ops(scheme):
    """fullgraph torch.compile records neox::int8_linear / int4_linear and gives eager's numbers."""
    torch.manual_seed(0)
    cfg = QuantizationConfig(scheme, group_size=64 if scheme == "int4" else None)
    lin = (Int8Linear if scheme == "int8" else Int4Linear)(128, 48, bias=True, config=cfg)
    lin.quantize_(torch.randn(48, 128) * 0.1)
    with torch.no_grad():
        lin.bias.copy_(torch.randn(48))
    if scheme == "int4":
        assert lin.layout == "plain"  # the native kernel reads the portable layout as is
    x = torch.randn(3, 128)
    with torch.no_grad():
        eager = lin(x)
        compiled = torch.compile(lin, fullgraph=True, backend="aot_eager")(x)
    assert torch.equal(compiled, eager)
    torch.testing.assert_close(eager, F.linear(x, lin.dequantize(), lin.bias), rtol=0.02, atol=0.02)  # bias added once
    ep = torch.export.export(lin, (x,))  # and export records the op, not the C call
    assert f"neox.{scheme}_linear" in str(ep.graph)
    torch.testing.assert_close(ep.module()(x), eager, rtol=0, atol=0)


def test_int4_layout_follows_the_kernel_and_saves_portably(native_off):
    """Without the native kernels int4 packs for torch's; with them it keeps the portable layout;
    the state dict is the portable layout either way."""
    torch.manual_seed(2)
    w = torch.randn(32, 128) * 0.1
    cfg = QuantizationConfig("int4", group_size=64)
    torch_side = Int4Linear(128, 32, bias=False, config=cfg)
    torch_side.quantize_(w)
    assert torch_side.layout == "cpu"
    ops.AVAILABLE, ops._functions = None, None  # back on (monkeypatch restores the test's state after)
    native_side = Int4Linear(128, 32, bias=False, config=cfg)
    native_side.quantize_(w)
    assert native_side.layout == "plain"
    assert torch.equal(native_side.state_dict()["qweight"], torch_side.state_dict()["qweight"])
    # Loading that state dict into a module on this machine gives the native layout, same numbers.
    again = Int4Linear(128, 32, bias=False, config=cfg)
    again.load_state_dict(torch_side.state_dict())
    assert again.layout == "plain" and torch.equal(again.qweight, native_side.qweight)


def test_the_build_is_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("NEOX_NATIVE_CACHE", str(tmp_path))
    build.reset()
    try:
        lib = build.library()
        assert lib is not None and lib.neox_simd() == 1
        built = list(tmp_path.glob("gemv-*.so"))
        assert len(built) == 1 and not list(tmp_path.glob(".gemv-*"))  # no temporary left behind
        stamp = built[0].stat().st_mtime_ns
        build.reset()
        assert build.library() is not None
        assert built[0].stat().st_mtime_ns == stamp  # loaded, not rebuilt
    finally:
        monkeypatch.undo()
        build.reset()


def _run(code: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=300)


def test_without_a_compiler_it_says_why_and_uses_torch(tmp_path):
    code = """
        import logging, torch
        logging.basicConfig(level=logging.WARNING)
        import neox
        from neox import native
        from neox.quantization import Int4Linear, QuantizationConfig
        assert not native.available()
        lin = Int4Linear(128, 32, bias=False, config=QuantizationConfig("int4", group_size=64))
        lin.quantize_(torch.randn(32, 128))
        assert lin.layout == "cpu", lin.layout  # torch's packed layout and kernel
        with torch.no_grad():
            print("shape", tuple(lin(torch.randn(2, 128)).shape))
    """
    done = _run(code, NEOX_NATIVE_CC=str(tmp_path / "no-such-cc"), NEOX_NATIVE_CACHE=str(tmp_path / "cache"))
    assert done.returncode == 0, done.stderr
    assert "shape (2, 32)" in done.stdout
    assert "native CPU kernels unavailable" in done.stderr and "no-such-cc" in done.stderr


def test_a_failed_compile_is_reported_with_the_compiler_output(tmp_path):
    fake = tmp_path / "cc"
    fake.write_text("#!/bin/sh\nif [ \"$1\" = --version ]; then echo fake 1.0; exit 0; fi\necho 'error: no luck' >&2\nexit 3\n")
    fake.chmod(0o755)
    code = """
        import logging
        logging.basicConfig(level=logging.WARNING)
        from neox import native
        print("available", native.available())
    """
    done = _run(code, NEOX_NATIVE_CC=str(fake), NEOX_NATIVE_CACHE=str(tmp_path / "cache"))
    assert done.returncode == 0, done.stderr
    assert "available False" in done.stdout
    assert "exit 3" in done.stderr and "error: no luck" in done.stderr
    assert not list((tmp_path / "cache").glob("*"))  # the failed output was removed


def test_neox_native_0_switches_them_off():
    done = _run("from neox import native; print('available', native.available())", NEOX_NATIVE="0")
    assert done.returncode == 0 and "available False" in done.stdout


@pytest.mark.parametrize("scheme", ["int8", "int4"])
def test_an_input_that_needs_a_gradient_never_takes_the_kernel(scheme):
    """The kernels have no backward: with a gradient asked for, the layer takes a differentiable
    torch path (int4: the dequantised GEMM) or fails loudly — it never returns a cut graph."""
    torch.manual_seed(3)
    cfg = QuantizationConfig(scheme, group_size=64 if scheme == "int4" else None)
    lin = (Int8Linear if scheme == "int8" else Int4Linear)(128, 16, bias=False, config=cfg)
    lin.quantize_(torch.randn(16, 128) * 0.1)
    x = torch.randn(2, 128, requires_grad=True)
    y = lin(x)
    assert y.requires_grad
    if scheme == "int8":  # torch's int8 kernel has no derivative: an error, not a silent cut
        with pytest.raises(RuntimeError, match="derivative"):
            y.sum().backward()
        return
    y.sum().backward()
    torch.testing.assert_close(x.grad, lin.dequantize().sum(0).expand(2, -1), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("group", [64, 128])
def test_int4_dequantize_is_the_modules_weight(group):
    torch.manual_seed(group)
    lin = Int4Linear(256, 48, bias=False, config=QuantizationConfig("int4", group_size=group))
    lin.quantize_(torch.randn(48, 256) * 0.1)
    assert torch.equal(ops.int4_dequantize(lin.qweight, lin.scales_and_zeros, group), lin.dequantize())
    assert ops.int4_dequantize(lin.qweight, lin.scales_and_zeros.float(), group) is None


# ---------------------------------------------------------------- decode attention (one new position)


def _decode_inputs(B: int, H: int, hs: int, r: int, S: int, capacity: int, shared_rope: bool, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    qkv = torch.randn(B, 1, H * 3 * hs, generator=g)
    angles = torch.rand(1 if shared_rope else B, 1, r // 2, generator=g) * 100  # positions up to ~100
    keys = torch.zeros(B, H, capacity, hs)
    values = torch.zeros(B, H, capacity, hs)
    keys[:, :, :S - 1] = torch.randn(B, H, S - 1, hs, generator=g)
    values[:, :, :S - 1] = torch.randn(B, H, S - 1, hs, generator=g)
    return qkv, angles.cos(), angles.sin(), keys, values


def _torch_decode(qkv, cos, sin, keys, values, position, hs):
    """The model's torch path for one position: apply_rotary_, KVCache.update's write, then the
    attention in float64 (the reference the kernel's fp32 sums are held to)."""
    from neox.modeling import apply_rotary_

    B, H = keys.shape[:2]
    qkv = qkv.view(B, 1, H, 3, hs).clone()  # (B, T, H, 3, hs)
    apply_rotary_(qkv[:, :, :, :2], cos, sin)
    q, k, v = qkv.transpose(1, 2).unbind(3)  # (B, H, 1, hs)
    keys, values = keys.clone(), values.clone()
    keys[:, :, position : position + 1] = k
    values[:, :, position : position + 1] = v
    K, V = keys[:, :, : position + 1].double(), values[:, :, : position + 1].double()
    p = torch.softmax(q.double() @ K.transpose(-1, -2) / hs**0.5, dim=-1)
    return (p @ V).transpose(1, 2).reshape(B, 1, H * hs), keys, values  # (B, 1, H·hs)


@pytest.mark.parametrize("B,H,hs,r,S", [(1, 12, 64, 16, 33), (3, 4, 80, 20, 1), (2, 2, 96, 96, 200), (2, 3, 20, 4, 7)])
@pytest.mark.parametrize("shared_rope", [True, False])
def test_decode_attention_matches_the_torch_path(B, H, hs, r, S, shared_rope):
    """The cache gets the very bits the torch path writes (rotary included); the output is the
    attention within fp32 rounding of its float64 value; partial (r < hs) and full rotary."""
    qkv, cos, sin, keys, values = _decode_inputs(B, H, hs, r, S, capacity=S + 5, shared_rope=shared_rope)
    want, want_keys, want_values = _torch_decode(qkv, cos, sin, keys, values, S - 1, hs)
    y = ops.decode_attention(qkv, cos, sin, keys, values, S - 1, 1.0 / hs**0.5)
    assert y is not None and y.shape == (B, 1, H * hs)
    assert torch.equal(keys, want_keys) and torch.equal(values, want_values)
    torch.testing.assert_close(y.double(), want, rtol=0, atol=2e-6)


def test_decode_attention_rows_are_independent():
    """Each row alone gives the same bits as in the batch (per-row rotary angles)."""
    B, H, hs, r, S = 4, 3, 64, 16, 40
    qkv, cos, sin, keys, values = _decode_inputs(B, H, hs, r, S, capacity=64, shared_rope=False, seed=1)
    batch_keys = keys.clone()
    y = ops.decode_attention(qkv, cos, sin, batch_keys, values.clone(), S - 1, 0.125)
    for b in range(B):
        k1, v1 = keys[b : b + 1].clone(), values[b : b + 1].clone()
        one = ops.decode_attention(qkv[b : b + 1].contiguous(), cos[b : b + 1], sin[b : b + 1], k1, v1, S - 1, 0.125)
        assert torch.equal(one, y[b : b + 1]) and torch.equal(k1, batch_keys[b : b + 1])


def test_decode_attention_calls_it_cannot_take_return_none():
    qkv, cos, sin, keys, values = _decode_inputs(1, 2, 64, 16, 5, capacity=8, shared_rope=True)
    call = ops.decode_attention
    assert call(qkv, cos, sin, keys, values, 8, 0.125) is None  # no room at position 8
    assert call(qkv, cos, sin, keys, values, -1, 0.125) is None
    assert call(qkv.double(), cos, sin, keys, values, 4, 0.125) is None
    assert call(qkv, cos, sin, keys.bfloat16(), values, 4, 0.125) is None
    assert call(qkv, cos, sin, keys.transpose(2, 3).contiguous().transpose(2, 3), values, 4, 0.125) is None
    assert call(qkv[..., :-1].contiguous(), cos, sin, keys, values, 4, 0.125) is None
    assert call(qkv, cos[..., :0], sin[..., :0], keys, values, 4, 0.125) is None  # no rotary dims
    assert call(qkv, torch.zeros(1, 1, 40), torch.zeros(1, 1, 40), keys, values, 4, 0.125) is None  # r > hs
    assert call(qkv, cos.expand(2, 1, 8), sin.expand(2, 1, 8), keys, values, 4, 0.125) is None  # not contiguous
    untouched = keys.clone()
    assert call(qkv, cos, sin, keys, values, 8, 0.125) is None and torch.equal(keys, untouched)


@pytest.mark.parametrize("padded", [False, True])
def test_model_decoding_with_and_without_the_native_attention(padded, monkeypatch):
    """A model's cached decode steps through the native attention (counted) give the logits of
    the torch path to fp32 rounding, and the same greedy tokens; a padded batch (a mask) takes
    the torch path."""
    from neox import GPTNeoXConfig, GPTNeoXForCausalLM

    torch.manual_seed(0)
    cfg = GPTNeoXConfig(vocab_size=128, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=128, rotary_pct=0.25)
    model = GPTNeoXForCausalLM(cfg).eval()
    ids = torch.randint(0, 128, (2, 9))
    mask = torch.ones_like(ids)
    if padded:
        mask[0, :3] = 0
    calls = []
    real = ops.decode_attention

    def decode(native: bool):
        monkeypatch.setattr(ops, "decode_attention", (lambda *a: calls.append(1) or real(*a)) if native else
                            (lambda *a: None))
        with torch.no_grad():
            tokens = model.generate(ids, attention_mask=mask, max_new_tokens=12, do_sample=False, pad_token_id=0)
            out = model(ids, attention_mask=mask, use_cache=True)
            step = model(ids[:, -1:], attention_mask=torch.cat([mask, mask[:, -1:]], 1),
                         past_key_values=out.past_key_values, use_cache=True)
        return tokens, step.logits

    tokens, logits = decode(native=True)
    assert (len(calls) == 0) if padded else (len(calls) >= 11 * cfg.num_hidden_layers)
    ref_tokens, ref_logits = decode(native=False)
    assert torch.equal(tokens, ref_tokens)
    torch.testing.assert_close(logits, ref_logits, rtol=0, atol=1e-5)
