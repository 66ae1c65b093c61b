"""torch-facing calls into the native kernels, and their ops for torch.compile / export.

Each function takes activations ``x`` (…, K) — M rows in all — and returns fp32 ``y`` (…, N), or None when the
kernels cannot take this call (not built here, a shape they do not cover): the caller then runs
torch's kernel. What the C code would otherwise trust — dtypes, contiguity, shapes, the CPU — is
checked here, so a wrong call is a None (torch's kernel runs instead), never a read past a buffer.

In eager mode the C function is called directly through ctypes (the checks and the call add
~6 µs to the kernel's own time on the 2-core VM, measured). Under a
tracer the quantised linears call the ops ``torch.ops.neox.int8_linear`` / ``int4_linear``
instead, which dynamo and export see as one opaque op with a shape function (``register_fake``),
so a compiled decode step keeps them. The kernels have no backward: callers use them only where
no gradient is asked for.
"""

from __future__ import annotations

import ctypes
from typing import Any

import torch

from ..validation import is_tracing
from . import build

__all__ = ["available", "ready", "f32_linear", "int8_linear", "int4_linear", "int4_supported", "int4_dequantize",
           "decode_attention"]

_i64, _ptr = ctypes.c_int64, ctypes.c_void_p
# name: (argument types, return type): the quantised kernels return 0, or -1 (out of memory, no AVX2).
_SIGNATURES = {
    "neox_f32_linear": ([_ptr, _i64, _i64, _ptr, _ptr, _i64, _ptr], None),
    "neox_q8_linear": ([_ptr, _i64, _i64, _ptr, _ptr, _ptr, _i64, _ptr], ctypes.c_int),
    "neox_q4_linear": ([_ptr, _i64, _i64, _ptr, _ptr, _ptr, _i64, _i64, _ptr], ctypes.c_int),
    "neox_q4_dequantize": ([_ptr, _ptr, _i64, _i64, _i64, _ptr], None),
    "neox_decode_attention": ([_ptr, _i64, _i64, _i64, _i64, _ptr, _ptr, _i64, _ptr, _ptr, _i64, _i64,
                               ctypes.c_float, _ptr], ctypes.c_int),
}
_functions: dict[str, Any] | None = None
#: Set by the first :func:`available` / kernel call; read under tracers (a plain bool dynamo can guard on).
AVAILABLE: bool | None = None


def _fns() -> dict[str, Any]:
    global _functions, AVAILABLE
    if _functions is None:
        lib = build.library()
        fns: dict[str, Any] = {}
        if lib is not None:
            for name, (argtypes, restype) in _SIGNATURES.items():
                fn = getattr(lib, name)
                fn.argtypes, fn.restype = argtypes, restype
                fns[name] = fn
        _functions, AVAILABLE = fns, bool(fns)
    return _functions


def available() -> bool:
    """Whether the native kernels run here (builds them on the first call; see build.py)."""
    return bool(_fns())


def ready() -> bool:
    """:func:`available`, for a layer's forward: resolved (built) on first use in eager mode; under a
    tracer only an already-resolved answer is read, so a compiled step never starts a build."""
    if AVAILABLE is None and not is_tracing():
        available()
    return AVAILABLE is True


_PLAIN = (torch.Tensor, torch.nn.Parameter)
_F32 = torch.float32
# The linears' tensor checks are written out inline rather than through _plain_cpu: on the 2-core
# VM that helper's generator costs ~3 µs for three tensors, inline ~0.3 µs, and a 160m decode step
# makes 49 of these calls (with the dtype round trip and the output's .view() gone too, timeit per
# int4 call: 16.5 µs before, 10.4 µs after, of which the C call itself takes ~4.6 µs).


def _plain_cpu(*tensors: torch.Tensor) -> bool:
    return all(type(t) in _PLAIN and t.is_cpu and t.is_contiguous() for t in tensors)


def _bias_ptr(bias: torch.Tensor | None, N: int) -> int | None | bool:
    """The bias's address for the C code, None without one, False when the kernels cannot take it."""
    if bias is None:
        return None
    if (bias.dtype is not _F32 or type(bias) not in _PLAIN or not bias.is_cpu or not bias.is_contiguous()
            or bias.shape != (N,)):
        return False
    return bias.data_ptr()


def f32_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor | None:
    """``F.linear(x, weight, bias)`` for fp32 (…, K) x and (N, K) weight, reading the weight once."""
    fn = _fns().get("neox_f32_linear")
    if fn is None or x.dtype is not _F32 or weight.dtype is not _F32 or x.dim() == 0:
        return None
    K = x.shape[-1]
    M = x.numel() // K if K else 0
    N = weight.shape[0]
    if (M == 0 or weight.shape != (N, K) or type(x) not in _PLAIN or type(weight) not in _PLAIN
            or not (x.is_cpu and weight.is_cpu and x.is_contiguous() and weight.is_contiguous())):
        return None
    b = _bias_ptr(bias, N)
    if b is False:
        return None
    y = torch.empty(x.shape[:-1] + (N,), dtype=_F32)  # in its final shape: a .view() costs ~5 µs here
    fn(x.data_ptr(), M, K, weight.data_ptr(), b, N, y.data_ptr())
    return y


def _call_quantised(fn: Any, x: torch.Tensor, w: torch.Tensor, s: torch.Tensor, bias: torch.Tensor | None,
                    N: int, extra: tuple[int, ...]) -> torch.Tensor | None:
    """fn(x, M, K, w, s, bias, N, *extra, y) once x (…, K), the weight w, its scales s and the bias
    are checked to be plain contiguous CPU tensors (dtypes and shapes: the callers; M, K > 0)."""
    if x.dtype is not _F32 or not x.is_contiguous():
        x = x.to(_F32).contiguous()
    if (type(x) not in _PLAIN or type(w) not in _PLAIN or type(s) not in _PLAIN
            or not (x.is_cpu and w.is_cpu and s.is_cpu and w.is_contiguous() and s.is_contiguous())):
        return None
    b = _bias_ptr(bias, N)
    if b is False:
        return None
    K = x.shape[-1]
    y = torch.empty(x.shape[:-1] + (N,), dtype=_F32)  # in its final shape: a .view() costs ~5 µs here
    if fn(x.data_ptr(), x.numel() // K, K, w.data_ptr(), s.data_ptr(), b, N, *extra, y.data_ptr()) != 0:
        return None
    return y


def _int8(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor,
          bias: torch.Tensor | None = None) -> torch.Tensor | None:
    fn = _fns().get("neox_q8_linear")
    if fn is None or x.dim() == 0 or qweight.dtype is not torch.int8 or scales.dtype is not torch.bfloat16:
        return None
    K = x.shape[-1]
    N = qweight.shape[0]
    if K == 0 or K % 32 or x.numel() == 0 or qweight.shape != (N, K) or scales.shape != (N,):
        return None
    return _call_quantised(fn, x, qweight, scales, bias, N, ())


def int4_supported(in_features: int, group_size: int) -> bool:
    """Whether the int4 kernel covers this shape: whole 64-input blocks, groups of whole blocks."""
    return in_features > 0 and in_features % 64 == 0 and group_size % 64 == 0 and in_features % group_size == 0


def _int4(x: torch.Tensor, qweight: torch.Tensor, scales_and_zeros: torch.Tensor, group_size: int,
          bias: torch.Tensor | None = None) -> torch.Tensor | None:
    fn = _fns().get("neox_q4_linear")
    if fn is None or x.dim() == 0 or qweight.dtype is not torch.uint8 or scales_and_zeros.dtype is not torch.bfloat16:
        return None
    K = x.shape[-1]
    N = qweight.shape[0]
    if (x.numel() == 0 or not int4_supported(K, group_size) or qweight.shape != (N, K // 2)
            or scales_and_zeros.shape != (K // group_size, N, 2)):
        return None
    return _call_quantised(fn, x, qweight, scales_and_zeros, bias, N, (group_size,))


def int4_dequantize(qweight: torch.Tensor, scales_and_zeros: torch.Tensor, group_size: int) -> torch.Tensor | None:
    """The fp32 (N, K) weight of a portable-layout int4 weight, in one pass (prefill's GEMM)."""
    fn = _fns().get("neox_q4_dequantize")
    if fn is None or qweight.dtype != torch.uint8 or scales_and_zeros.dtype != torch.bfloat16 or qweight.dim() != 2:
        return None
    N, K = qweight.shape[0], qweight.shape[1] * 2
    if (not int4_supported(K, group_size) or scales_and_zeros.shape != (K // group_size, N, 2)
            or not _plain_cpu(qweight, scales_and_zeros)):
        return None
    w = torch.empty(N, K, dtype=torch.float32)
    fn(qweight.data_ptr(), scales_and_zeros.data_ptr(), N, K, group_size, w.data_ptr())
    return w


def decode_attention(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, keys: torch.Tensor,
                     values: torch.Tensor, position: int, scale: float) -> torch.Tensor | None:
    """One new position per row, attended over the cache, in one call (fp32, eager only):

    qkv (B, 1, H·3·hs) the fused projection's output (per head [q | k | v]); cos, sin (B or 1, 1,
    r/2) the rotary angles; keys, values (B, H, capacity, hs) the cache, filled below ``position``.
    Rotates q and k in their first r dims, writes k and v at ``position`` (the bits
    ``apply_rotary_`` and ``KVCache.update`` write), and returns softmax(scale·q·Kᵀ)·V over the
    position + 1 keys as (B, 1, H·hs) — or None when the kernel cannot take the call."""
    fn = _fns().get("neox_decode_attention")
    if fn is None or keys.dim() != 4 or cos.dim() != 3:
        return None
    B, H, capacity, hs = keys.shape
    half = cos.shape[-1]
    tensors = (qkv, cos, sin, keys, values)
    if (any(t.dtype is not _F32 for t in tensors) or not _plain_cpu(*tensors)
            or qkv.shape != (B, 1, H * 3 * hs) or values.shape != keys.shape or sin.shape != cos.shape
            or cos.shape[0] not in (1, B) or cos.shape[1] != 1 or not 0 < 2 * half <= hs
            or not 0 <= position < capacity or B * H == 0):
        return None
    y = torch.empty(B, 1, H * hs, dtype=_F32)
    rope_stride = half if cos.shape[0] == B and B > 1 else 0
    if fn(qkv.data_ptr(), B, H, hs, 2 * half, cos.data_ptr(), sin.data_ptr(), rope_stride, keys.data_ptr(),
          values.data_ptr(), capacity, position, scale, y.data_ptr()) != 0:
        return None
    return y


# The ops a tracer records. Defined with torch.library.Library rather than @custom_op: the
# dispatcher then calls the CPU kernel below directly (10–20 µs a call above the direct call here,
# against 30–70 µs through custom_op's Python layers: 1.5–3.4 ms per token over a 160m model's 49
# linears in a compiled step). The callers take this route only once ready() said yes, so a None
# here is a bug, said so.
_LIB = torch.library.Library("neox", "DEF")
_LIB.define("int8_linear(Tensor x, Tensor qweight, Tensor scales, Tensor? bias) -> Tensor")
_LIB.define("int4_linear(Tensor x, Tensor qweight, Tensor scales_and_zeros, int group_size, Tensor? bias) -> Tensor")


def _int8_op(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    y = _int8(x, qweight, scales, bias)
    if y is None:
        raise RuntimeError(f"neox::int8_linear cannot take x {x.dtype} {tuple(x.shape)}, qweight "
                           f"{qweight.dtype} {tuple(qweight.shape)}, scales {scales.dtype} {tuple(scales.shape)}")
    return y


def _int4_op(x: torch.Tensor, qweight: torch.Tensor, scales_and_zeros: torch.Tensor, group_size: int,
             bias: torch.Tensor | None) -> torch.Tensor:
    y = _int4(x, qweight, scales_and_zeros, group_size, bias)
    if y is None:
        raise RuntimeError(f"neox::int4_linear cannot take x {x.dtype} {tuple(x.shape)}, qweight "
                           f"{qweight.dtype} {tuple(qweight.shape)}, group_size {group_size}")
    return y


_LIB.impl("int8_linear", _int8_op, "CPU")
_LIB.impl("int4_linear", _int4_op, "CPU")


@torch.library.register_fake("neox::int8_linear", lib=_LIB)
def _(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return x.new_empty((*x.shape[:-1], qweight.shape[0]), dtype=torch.float32)


@torch.library.register_fake("neox::int4_linear", lib=_LIB)
def _(x: torch.Tensor, qweight: torch.Tensor, scales_and_zeros: torch.Tensor, group_size: int,
      bias: torch.Tensor | None) -> torch.Tensor:
    return x.new_empty((*x.shape[:-1], qweight.shape[0]), dtype=torch.float32)


def int8_linear(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None = None,
                tracing: bool = False) -> torch.Tensor | None:
    """``x · (qweight · scales)ᵀ (+ bias)`` in fp32 for int8 (N, K) weights, bf16 (N,) scales and an
    fp32 (N,) bias or None; K % 32 == 0."""
    return torch.ops.neox.int8_linear(x, qweight, scales, bias) if tracing else _int8(x, qweight, scales, bias)


def int4_linear(x: torch.Tensor, qweight: torch.Tensor, scales_and_zeros: torch.Tensor, group_size: int,
                bias: torch.Tensor | None = None, tracing: bool = False) -> torch.Tensor | None:
    """``x · Wᵀ (+ bias)`` in fp32 for int4 weights in the portable layout (see gemv.c), bf16
    (K/g, N, 2) scales and zeros and an fp32 (N,) bias or None; needs :func:`int4_supported`."""
    if tracing:
        return torch.ops.neox.int4_linear(x, qweight, scales_and_zeros, group_size, bias)
    return _int4(x, qweight, scales_and_zeros, group_size, bias)
