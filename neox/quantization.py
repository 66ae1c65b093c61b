"""Weight-only quantisation: int8 per output channel, int4 per group, and bf16 weights.

The model code is not touched: :func:`quantize` (or ``from_pretrained(..., quantization=...)``)
swaps ``nn.Linear`` modules BY NAME for the modules below, which keep the weight quantised and
call torch's own weight-only kernels:

=========  ==========================================  =============================================
scheme     CPU                                         CUDA
=========  ==========================================  =============================================
int8       ``neox.native`` (int8 × int8, ≤ 64 rows),   ``F.linear(x, q.to(x.dtype)) * scales`` (fused
           else ``aten._weight_int8pack_mm`` (bf16)    into one kernel when the decode step is compiled)
int4       ``neox.native`` (int4 × int8, ≤ 64 rows),   ``aten._weight_int4pack_mm`` (tinygemm)
           else ``aten._weight_int4pack_mm_for_cpu``
bf16       ``F.linear`` in bf16                        ``F.linear`` in bf16
=========  ==========================================  =============================================

Activations are cast to bf16 at the linear's boundary and back to the model's dtype after it, so
LayerNorm, softmax and the residual stream stay in fp32 on an fp32 model. The native CPU kernels
(``neox/native``, built at first use where a C compiler and AVX2 are found) instead quantise each
block of 32 activations to int8 and multiply with integer dot products, as llama.cpp does: 2× the
speed of torch's kernels at batch 1 on this project's CPU, with an activation rounding error of
~0.5% of the output (torch's bf16 cast: ~0.23%) — measured in benchmarks/README.md. Above 64 rows
(prefill) the CPU linears dequantise the weight and run the ordinary GEMM in the activations' dtype. Embeddings are never quantised; the output head is by option
(``include_head``). Where a kernel is missing, the module dequantises its weight on every call
instead, after one warning naming the reason.

Quantisation conventions (those of torch's int4 "tinygemm" kernel and gpt-fast):

* int8: ``w ≈ q · s`` with ``q ∈ [-127, 127]`` and one bf16 scale ``s = max|w_row| / 127`` per
  output row.
* int4: per group of ``group_size`` consecutive inputs of a row, ``w ≈ (q − 8) · s + z`` with
  ``q ∈ [0, 15]``, ``s = (max − min) / 15`` and ``z = min + 8·s``, both bf16 (asymmetric).

Saved checkpoints store the portable form — ``qweight`` (int8 ``(N, K)``, or uint8 ``(N, K/2)``
with two 4-bit values per byte, the even input in the high nibble), ``scales`` (bf16 ``(N,)``) or
``scales_and_zeros`` (bf16 ``(K/g, N, 2)``), ``bias`` — plus a ``quantization_config`` entry in
config.json; the device-specific packed int4 layouts are rebuilt when the checkpoint is loaded.
transformers cannot load such a folder (its quantizers use other formats); neox can.
"""

from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from .kernels import Linear
from .native import ops as native_ops
from .validation import is_tracing

logger = logging.getLogger(__name__)

__all__ = ["QuantizationConfig", "QuantizedLinear", "Int8Linear", "Int4Linear", "BF16Linear", "quantize",
           "resolve_quantization", "prepare_for_loading", "quantized_modules"]

SCHEMES = ("int8", "int4", "bf16")
INT4_GROUP_SIZES = (32, 64, 128, 256)
#: Default int4 group size. 128 is chosen by measurement (benchmarks/README.md, "Quantisation"):
#: group 32 / 64 buy no measurable held-out loss for 18% / 6% more weight bytes per step.
DEFAULT_GROUP_SIZE = 128
QUANT_METHOD = "neox"
#: Above this many rows (prefill, large batches) the CPU int8 linear dequantises its weight to the
#: activations' dtype and calls the ordinary GEMM: aten._weight_int8pack_mm is a matrix-vector
#: kernel, ahead of fp32 at batch 1-8, level near 32 rows, 1.6x behind at 512 (one 3072x768 matrix,
#: 1 thread, measured interleaved on the shared machine: see benchmarks/README.md).
INT8_KERNEL_MAX_ROWS = 64
#: Up to this many rows the CPU linears use the native kernels (where built): one 3072×768 matrix,
#: 2 threads, ms at 16 / 32 / 64 / 128 rows — int8: native 1.0 / 2.2 / 3.8 / 7.7, torch's
#: _weight_int8pack_mm 1.3 / 2.8 / 5.4 / 10.6, dequantise + fp32 GEMM 4.7 / 4.3 / 7.5 / 9.1; int4:
#: native 0.9 / 1.9 / 3.7 / 8.3, native dequantise + GEMM 2.7 / 3.8 / 4.7 / 7.0.
NATIVE_MAX_ROWS = 64
#: Rows quantised at once, so that the temporaries stay small next to the weight itself.
_ROW_CHUNK = 4096


@dataclass
class QuantizationConfig:
    """What to quantise and how; stored in config.json as ``quantization_config``."""

    scheme: str = "int8"
    group_size: int | None = None
    include_head: bool = True
    modules_to_not_convert: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.scheme not in SCHEMES:
            raise ValueError(f"quantization scheme {self.scheme!r} is not supported; use one of {', '.join(SCHEMES)}")
        if self.scheme == "int4":
            if self.group_size is None:
                self.group_size = DEFAULT_GROUP_SIZE
            if self.group_size not in INT4_GROUP_SIZES:
                raise ValueError(f"int4 group_size must be one of {INT4_GROUP_SIZES}, got {self.group_size!r}")
        elif self.group_size is not None:
            raise ValueError(f"group_size applies to int4 only; {self.scheme} is per output channel")
        if not isinstance(self.include_head, bool):
            raise TypeError(f"include_head must be True or False, got {self.include_head!r}")
        self.modules_to_not_convert = list(self.modules_to_not_convert or [])

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"quant_method": QUANT_METHOD, "scheme": self.scheme}
        if self.group_size is not None:
            out["group_size"] = self.group_size
        out["include_head"] = self.include_head
        if self.modules_to_not_convert:
            out["modules_to_not_convert"] = list(self.modules_to_not_convert)
        return out

    @classmethod
    def from_any(cls, value: Any) -> "QuantizationConfig":
        """A scheme name, this class, neox's own dict, or a transformers config that maps cleanly.

        Mapped: ``TorchAoConfig`` (object or dict) with ``Int8WeightOnlyConfig`` /
        ``Int4WeightOnlyConfig(group_size=g)``, and ``QuantoConfig(weights="int8"|"int4")`` with no
        activation quantisation. Anything else (bitsandbytes, GPTQ, AWQ, dynamic activation
        quantisation, ...) is refused with a ValueError naming it.
        """
        if isinstance(value, QuantizationConfig):
            return value
        if isinstance(value, str):
            return cls(scheme=value)
        if not isinstance(value, dict):
            to_dict = getattr(value, "to_dict", None)
            if not callable(to_dict):
                raise TypeError(
                    f"quantization_config must be a dict, a neox QuantizationConfig or a transformers quantization "
                    f"config object, got {type(value).__name__}"
                )
            method = str(getattr(value, "quant_method", "") or "")
            quant_type = getattr(value, "quant_type", None)
            data = dict(to_dict())
            if quant_type is not None and not isinstance(quant_type, (str, dict)):  # a torchao AOBaseConfig object
                data["quant_type"] = {"_type": type(quant_type).__name__, "_data": dict(vars(quant_type))}
            data.setdefault("quant_method", method)
            value = data
        return cls._from_dict(dict(value))

    @classmethod
    def _from_dict(cls, d: dict[str, Any]) -> "QuantizationConfig":
        method = str(d.get("quant_method", QUANT_METHOD) or QUANT_METHOD)
        method = getattr(method, "value", method)
        method = str(method).lower().removeprefix("quantizationmethod.")
        skip = list(d.get("modules_to_not_convert") or [])
        if method == QUANT_METHOD:
            known = {"quant_method", "scheme", "group_size", "include_head", "modules_to_not_convert"}
            unknown = set(d) - known
            if unknown:
                raise ValueError(f"quantization_config: unknown keys {sorted(unknown)}; neox knows {sorted(known)}")
            return cls(scheme=d.get("scheme", "int8"), group_size=d.get("group_size"),
                       include_head=d.get("include_head", True), modules_to_not_convert=skip)
        if method == "torchao":
            qt = d.get("quant_type")
            if isinstance(qt, dict) and set(qt) == {"default"}:  # TorchAoConfig.to_dict() nests it
                qt = qt["default"]
            if isinstance(qt, str):
                name, data = qt, dict(d.get("quant_type_kwargs") or {})
            elif isinstance(qt, dict):
                name, data = str(qt.get("_type", "")), dict(qt.get("_data") or {})
            else:
                raise ValueError(f"quantization_config: torchao quant_type {qt!r} is not understood")
            head = bool(d.get("include_input_output_embeddings", False))
            if name in ("Int8WeightOnlyConfig", "int8_weight_only"):
                if data.get("group_size") not in (None, 0, -1):
                    raise ValueError("quantization_config: torchao int8 weight-only with a group_size has no neox "
                                     "equivalent (neox's int8 is per output channel)")
                return cls(scheme="int8", include_head=head, modules_to_not_convert=skip)
            if name in ("Int4WeightOnlyConfig", "int4_weight_only"):
                return cls(scheme="int4", group_size=int(data.get("group_size") or DEFAULT_GROUP_SIZE),
                           include_head=head, modules_to_not_convert=skip)
            raise ValueError(
                f"quantization_config: torchao {name or qt!r} has no neox equivalent; neox supports weight-only "
                f"int8 (Int8WeightOnlyConfig) and int4 (Int4WeightOnlyConfig)"
            )
        if method == "quanto":
            weights, act = d.get("weights"), d.get("activations")
            if act not in (None, "none") or weights not in ("int8", "int4"):
                raise ValueError(f"quantization_config: quanto weights={weights!r} activations={act!r} has no neox "
                                 f"equivalent; neox supports weights 'int8' or 'int4' without activation quantisation")
            return cls(scheme=weights, include_head=False, modules_to_not_convert=skip)
        raise ValueError(
            f"quantization_config with quant_method {method!r} is not supported by neox; use quantization='int8' or "
            f"'int4' (weight-only), or a TorchAoConfig with Int8WeightOnlyConfig / Int4WeightOnlyConfig"
        )


def resolve_quantization(quantization: Any, quantization_config: Any, saved: Any) -> QuantizationConfig | None:
    """The one QuantizationConfig a from_pretrained call asks for, or None.

    ``saved`` is config.json's own ``quantization_config`` (a quantised checkpoint). Its weights
    are already quantised, so a different request for it is an error, not a silent re-quantisation.
    """
    if quantization is not None and quantization_config is not None:
        raise ValueError("pass quantization= or quantization_config=, not both")
    asked = quantization if quantization is not None else quantization_config
    want = QuantizationConfig.from_any(asked) if asked is not None else None
    have = QuantizationConfig.from_any(saved) if saved is not None else None
    if have is not None and want is not None and want.to_dict() != have.to_dict():
        raise ValueError(
            f"this checkpoint is already quantised ({have.to_dict()}); it cannot be loaded as {want.to_dict()}: "
            f"load it without quantization= or quantise the original full-precision checkpoint"
        )
    return have or want


# ================================================================================ kernels


def _has_op(name: str) -> bool:
    return hasattr(torch.ops.aten, name)


def _wants_grad(x: torch.Tensor) -> bool:
    """The native kernels have no backward: an input that needs a gradient takes a torch path."""
    return x.requires_grad and torch.is_grad_enabled()


_warned: set[str] = set()


def _warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, RuntimeWarning, stacklevel=3)
        logger.warning(message)


def _int8_quantize(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, K) float → int8 (N, K), bf16 scales (N,); in row chunks (small temporaries)."""
    N, K = w.shape
    q = torch.empty(N, K, dtype=torch.int8, device=w.device)
    scales = torch.empty(N, dtype=torch.bfloat16, device=w.device)
    for i in range(0, N, _ROW_CHUNK):
        rows = w[i : i + _ROW_CHUNK].float()
        s = (rows.abs().amax(dim=1) / 127).clamp(min=1e-10).to(torch.bfloat16)  # quantise with the scale kept
        scales[i : i + _ROW_CHUNK] = s
        q[i : i + _ROW_CHUNK] = torch.round(rows / s.float()[:, None]).clamp_(-127, 127).to(torch.int8)
    return q, scales


def _int4_quantize(w: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, K) float → values uint8 (N, K) in [0, 15], bf16 scales_and_zeros (K/g, N, 2)."""
    N, K = w.shape
    G = K // group_size
    q = torch.empty(N, K, dtype=torch.uint8, device=w.device)
    sz = torch.empty(N, G, 2, dtype=torch.bfloat16, device=w.device)
    for i in range(0, N, _ROW_CHUNK):
        rows = w[i : i + _ROW_CHUNK].float().reshape(-1, G, group_size)  # (n, G, g)
        lo, hi = rows.amin(dim=-1), rows.amax(dim=-1)  # (n, G)
        scale = ((hi - lo) / 15).clamp(min=1e-6).to(torch.bfloat16)
        zero = (lo + 8 * scale.float()).to(torch.bfloat16)
        sz[i : i + _ROW_CHUNK, :, 0], sz[i : i + _ROW_CHUNK, :, 1] = scale, zero
        v = (rows - zero.float()[..., None]) / scale.float()[..., None] + 8
        q[i : i + _ROW_CHUNK] = torch.round(v).clamp_(0, 15).to(torch.uint8).reshape(-1, K)
    return q, sz.transpose(0, 1).contiguous()  # (G, N, 2): the kernels' layout


def _nibbles(values: torch.Tensor) -> torch.Tensor:
    """uint8 (N, K) values in [0, 15] → the portable uint8 (N, K/2): even input high, odd low."""
    return (values[:, ::2] << 4) | values[:, 1::2]


def _unnibble(packed: torch.Tensor) -> torch.Tensor:
    """The portable uint8 (N, K/2) → uint8 (N, K) values."""
    return torch.stack([packed >> 4, packed & 15], dim=-1).reshape(packed.shape[0], -1)


def _int4_pack(values: torch.Tensor, device_type: str, inner_k_tiles: int) -> torch.Tensor:
    """uint8 (N, K) values → the packed layout of this device's int4 kernel."""
    if device_type == "cpu":
        return torch.ops.aten._convert_weight_to_int4pack_for_cpu(values.to(torch.int32), inner_k_tiles)
    return torch.ops.aten._convert_weight_to_int4pack(_nibbles(values), inner_k_tiles)


def _int4_unpack(packed: torch.Tensor, N: int, K: int, device_type: str, inner_k_tiles: int) -> torch.Tensor:
    """The inverse of :func:`_int4_pack`, learned from the packing op itself.

    The packed layouts depend on the CPU's vector width or the GPU kernel, and torch has no
    unpacking op; but packing only moves 4-bit values around. So pack a few probe matrices
    whose values are the base-16 digits of each element's index, read each packed nibble's
    source index back, and scatter the packed values to their sources.
    """
    dev = packed.device
    n = N * K
    digits = max(1, math.ceil(math.log(n, 16)))
    index = torch.arange(n, device=dev, dtype=torch.int64)
    source = torch.zeros(n, device=dev, dtype=torch.int64)
    for d in range(digits):
        probe = ((index >> (4 * d)) & 15).to(torch.uint8).view(N, K)
        got = _flat_nibbles(_int4_pack(probe, device_type, inner_k_tiles))
        if got.numel() != n:
            raise RuntimeError(f"the {device_type} int4 layout of a ({N}, {K}) weight is not a permutation of nibbles")
        source |= got.to(torch.int64) << (4 * d)
    del index
    out = torch.empty(n, dtype=torch.uint8, device=dev)
    out[source] = _flat_nibbles(packed)
    return out.view(N, K)


def _flat_nibbles(packed: torch.Tensor) -> torch.Tensor:
    b = packed.contiguous().view(torch.uint8).reshape(-1)
    return torch.stack([b & 15, b >> 4], dim=-1).reshape(-1)


#: Rows packed at once (a multiple of every packing block: 16/32/64 rows on CPU, 8 on CUDA), so that
#: packing's int32 copy of the values stays small next to the weight.
_PACK_ROWS = 1024
_separable: dict[tuple[str, int], bool] = {}


def _rows_pack_separately(device: torch.device, inner_k_tiles: int) -> bool:
    """Whether packing row blocks one by one gives the bytes packing them together does (checked
    once per device kind: the packed layouts are torch's, not documented)."""
    key = (device.type, inner_k_tiles)
    if key not in _separable:
        K = inner_k_tiles * 16 * 2
        v = torch.randint(0, 16, (128, K), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)).to(device)
        whole = _int4_pack(v, device.type, inner_k_tiles)
        parts = torch.cat([_int4_pack(v[:64], device.type, inner_k_tiles), _int4_pack(v[64:], device.type, inner_k_tiles)])
        _separable[key] = bool(whole.shape == parts.shape and torch.equal(whole, parts))
    return _separable[key]


def _inner_k_tiles(K: int) -> int:
    return next(t for t in (8, 4, 2) if K % (t * 16) == 0)


# ================================================================================ modules


class QuantizedLinear(nn.Module):
    """Base of the weight-only linears: ``y = x · Wᵀ + b`` with W stored quantised.

    Inference only: the quantised weight is a buffer, not a parameter, and has no gradient.
    """

    scheme = ""

    def __init__(self, in_features: int, out_features: int, bias: bool, device: Any = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.bias = nn.Parameter(torch.empty(out_features, device=device, dtype=dtype), requires_grad=False) if bias else None

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, scheme={self.scheme}"

    @classmethod
    def fits(cls, linear: nn.Linear, config: QuantizationConfig) -> str | None:
        """None when this linear can be quantised, else why not."""
        return None

    def quantize_(self, weight: torch.Tensor) -> None:
        """Quantise a full-precision (N, K) weight into this module (in row chunks)."""
        raise NotImplementedError

    def dequantize(self) -> torch.Tensor:
        """The (N, K) weight the kernel multiplies by, in fp32 (for tests and quality checks)."""
        raise NotImplementedError

    def _apply(self, fn: Any, recurse: bool = True) -> "QuantizedLinear":
        # .to(dtype) / .half() convert floating buffers; the quantised formats keep theirs
        # (bf16 scales, zeros and weights are what the kernels take), only moving device.
        dtypes = {k: b.dtype for k, b in self._buffers.items() if b is not None}
        super()._apply(fn, recurse)
        for k, dt in dtypes.items():
            b = self._buffers[k]
            if b is not None and b.dtype != dt:
                self._buffers[k] = b.to(dt)
        return self

    def _finish(self, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        y = y.to(x.dtype).reshape(*x.shape[:-1], self.out_features)
        return y + self.bias if self.bias is not None else y

    # The native kernels' decode path (CPU, ≤ NATIVE_MAX_ROWS rows, no gradient): a 160m step makes
    # 49 of these calls, so it avoids what costs microseconds here (module attribute fallbacks,
    # reshapes, views, dtype round trips). In an fp32 model the kernel adds the bias itself.

    def _kernel_bias(self, x: torch.Tensor) -> torch.Tensor | None:
        return self._parameters.get("bias") if x.dtype is torch.float32 else None

    def _native_finish(self, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor | None:
        """The kernel's fp32 (…, N) output in x's dtype, biased; None (no kernel ran) stays None."""
        if y is None or x.dtype is torch.float32:
            return y
        y = y.to(x.dtype)
        bias = self._parameters.get("bias")
        return y + bias if bias is not None else y

    def weight_bytes(self) -> int:
        return sum(b.numel() * b.element_size() for b in self.buffers())


class Int8Linear(QuantizedLinear):
    scheme = "int8"

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device: Any = None,
                 dtype: torch.dtype | None = None, config: QuantizationConfig | None = None) -> None:
        super().__init__(in_features, out_features, bias, device, dtype)
        self.register_buffer("qweight", torch.empty(out_features, in_features, dtype=torch.int8, device=device))
        self.register_buffer("scales", torch.empty(out_features, dtype=torch.bfloat16, device=device))

    def quantize_(self, weight: torch.Tensor) -> None:
        self.qweight, self.scales = _int8_quantize(weight.detach())

    def dequantize(self) -> torch.Tensor:
        return self.qweight.float() * self.scales.float()[:, None]

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:  # noqa: ANN001
        key = prefix + "scales"
        if key in state_dict:  # loading converts floating tensors to the model's dtype; scales stay bf16
            state_dict[key] = state_dict[key].to(torch.bfloat16)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (x.is_cpu and x.numel() <= NATIVE_MAX_ROWS * self.in_features and self.in_features % 32 == 0
                and not _wants_grad(x) and native_ops.ready()):
            buffers = self._buffers  # not self.qweight: nn.Module's attribute fallback costs ~1 µs a name
            y = self._native_finish(x, native_ops.int8_linear(x, buffers["qweight"], buffers["scales"],
                                                              self._kernel_bias(x), tracing=is_tracing()))
            if y is not None:
                return y
        x2 = x.reshape(-1, self.in_features)
        if x.device.type == "cpu" and x2.shape[0] > INT8_KERNEL_MAX_ROWS:
            y = F.linear(x2, self.qweight.to(x.dtype) * self.scales.to(x.dtype)[:, None])
        elif x.device.type == "cpu" and _has_op("_weight_int8pack_mm"):
            y = torch.ops.aten._weight_int8pack_mm(x2.to(torch.bfloat16), self.qweight, self.scales)
        else:
            if x.device.type not in ("cuda", "cpu"):
                _warn_once(f"int8-{x.device.type}", f"neox int8: no int8 weight-only kernel on {x.device.type}; "
                           "dequantising the weight on every call (slower than the unquantised model)")
            elif x.device.type == "cpu":
                _warn_once("int8-cpu", "neox int8: this torch has no aten._weight_int8pack_mm; dequantising the weight "
                           "on every call (slower than the unquantised model)")
            ct = x.dtype if x.dtype in (torch.float16, torch.bfloat16) else torch.bfloat16
            # On CUDA this is gpt-fast's form: compiled, the cast and the scaling fuse into the matmul.
            y = F.linear(x2.to(ct), self.qweight.to(ct)) * self.scales.to(ct)
        return self._finish(y, x)


class Int4Linear(QuantizedLinear):
    """Group-wise asymmetric int4. ``qweight`` holds the layout of ``self.layout``:
    "plain" (the portable nibbles, (N, K/2) uint8), "cpu" or "cuda" (torch's packed layout for that
    device's kernel). On CPU with the native kernels the portable layout is the kernel's own: the
    weight is used as saved, with no repacking and no second layout."""

    scheme = "int4"

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device: Any = None,
                 dtype: torch.dtype | None = None, config: QuantizationConfig | None = None) -> None:
        super().__init__(in_features, out_features, bias, device, dtype)
        self.group_size = (config or QuantizationConfig("int4")).group_size
        self.inner_k_tiles = _inner_k_tiles(in_features)
        self.layout = "plain"
        self.register_buffer("qweight", torch.empty(out_features, in_features // 2, dtype=torch.uint8, device=device))
        self.register_buffer("scales_and_zeros", torch.empty(
            in_features // self.group_size, out_features, 2, dtype=torch.bfloat16, device=device))

    def extra_repr(self) -> str:
        return super().extra_repr() + f", group_size={self.group_size}, layout={self.layout}"

    @classmethod
    def fits(cls, linear: nn.Linear, config: QuantizationConfig) -> str | None:
        N, K = linear.out_features, linear.in_features
        if K % config.group_size:
            return f"in_features {K} is not a multiple of group_size {config.group_size}"
        if K % 32:
            return f"in_features {K} is not a multiple of 32 (int4 kernels)"
        if N % 16:
            return f"out_features {N} is not a multiple of 16 (int4 kernels)"
        return None

    def quantize_(self, weight: torch.Tensor) -> None:
        weight = weight.detach()
        scales: list[torch.Tensor] = []

        def values(i: int, j: int) -> torch.Tensor:
            v, sz = _int4_quantize(weight[i:j], self.group_size)
            scales.append(sz)
            return v

        self._pack_from(values, weight.device)
        self.scales_and_zeros = torch.cat(scales, dim=1)  # (K/g, N, 2)

    def _values(self) -> torch.Tensor:
        """uint8 (N, K) in [0, 15], whatever the layout."""
        if self.layout == "plain":
            return _unnibble(self.qweight)
        return _int4_unpack(self.qweight, self.out_features, self.in_features, self.layout, self.inner_k_tiles)

    def _set_values(self, values: torch.Tensor) -> None:
        """Store (N, K) values in the packed layout of their device (portable where none exists)."""
        self._pack_from(lambda i, j: values[i:j], values.device)

    def _native(self) -> bool:
        return native_ops.int4_supported(self.in_features, self.group_size) and native_ops.ready()

    def _target_layout(self, device: torch.device) -> str:
        """The layout this device's fastest available kernel reads."""
        kind = device.type
        if kind == "cpu" and self._native():
            return "plain"
        op = {"cpu": "_convert_weight_to_int4pack_for_cpu", "cuda": "_convert_weight_to_int4pack"}.get(kind)
        return kind if op is not None and _has_op(op) else "plain"

    def _pack_from(self, values: Callable[[int, int], torch.Tensor], device: torch.device) -> None:
        """Pack the values of rows [i, j), asked for block by block where the layout allows it, so
        that the peak stays near the packed size (packing takes an int32 copy of its input)."""
        kind, N = device.type, self.out_features
        packable = self._target_layout(device) != "plain"
        step = _PACK_ROWS if not packable or _rows_pack_separately(device, self.inner_k_tiles) else N
        parts = []
        for i in range(0, N, step):
            v = values(i, min(N, i + step))
            parts.append(_int4_pack(v, kind, self.inner_k_tiles) if packable else _nibbles(v))
        self.qweight = parts[0] if len(parts) == 1 else torch.cat(parts)
        self.layout = kind if packable else "plain"

    def dequantize(self) -> torch.Tensor:
        N, K, g = self.out_features, self.in_features, self.group_size
        v = self._values().float().view(N, K // g, g)
        s, z = self.scales_and_zeros.float().transpose(0, 1).unbind(-1)  # each (N, K/g)
        return ((v - 8) * s[..., None] + z[..., None]).view(N, K)

    def _save_to_state_dict(self, destination, prefix, keep_vars) -> None:  # noqa: ANN001
        super()._save_to_state_dict(destination, prefix, keep_vars)
        if self.layout != "plain" and not self.qweight.is_meta:
            destination[prefix + "qweight"] = _nibbles(self._values())
        elif self.qweight.is_meta and self.layout != "plain":
            destination[prefix + "qweight"] = torch.empty(self.out_features, self.in_features // 2,
                                                          dtype=torch.uint8, device="meta")

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs) -> None:  # noqa: ANN001
        key = prefix + "scales_and_zeros"
        if key in state_dict:
            state_dict[key] = state_dict[key].to(torch.bfloat16)
        qkey = prefix + "qweight"
        if qkey in state_dict and self.layout != "plain":
            # the module holds a packed layout: compare and load in the portable one
            self.qweight, self.layout = torch.empty(self.out_features, self.in_features // 2, dtype=torch.uint8,
                                                    device=self.qweight.device), "plain"
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
        if qkey in state_dict and not self.qweight.is_meta:
            plain = self.qweight
            self._pack_from(lambda i, j: _unnibble(plain[i:j]), plain.device)

    def load_tensor(self, name: str, tensor: torch.Tensor) -> None:
        """Take one checkpoint tensor of this module while loading (see prepare_for_loading)."""
        if name == "qweight":
            if tuple(tensor.shape) != (self.out_features, self.in_features // 2) or tensor.dtype != torch.uint8:
                raise ValueError(f"int4 qweight must be uint8 ({self.out_features}, {self.in_features // 2}), "
                                 f"got {tensor.dtype} {tuple(tensor.shape)}")
            self._pack_from(lambda i, j: _unnibble(tensor[i:j]), tensor.device)
        else:
            _assign(self, name, tensor)

    def _ensure_layout(self, device: torch.device) -> None:
        """A model moved with .to() after quantising: repack for the new device's kernel, once."""
        target = self._target_layout(device)
        if self.layout == target:
            return
        logger.info("neox int4: repacking a %s-layout weight for %s (%s)", self.layout, device.type, target)
        if self.layout != "plain":  # torch's packed layouts unpack on their own device
            self.qweight = self.qweight.to(self.layout)
        values = self._values().to(device)
        self._set_values(values)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kind = x.device.type
        native_here = kind == "cpu" and self.layout == "plain" and self._native()
        if self.layout != kind and not native_here:
            self._ensure_layout(x.device)
        if native_here:
            if x.numel() <= NATIVE_MAX_ROWS * self.in_features and not _wants_grad(x):
                buffers = self._buffers  # not self.qweight: nn.Module's attribute fallback costs ~1 µs a name
                y = self._native_finish(x, native_ops.int4_linear(
                    x, buffers["qweight"], buffers["scales_and_zeros"], self.group_size, self._kernel_bias(x),
                    tracing=is_tracing()))
                if y is not None:
                    return y
            x2 = x.reshape(-1, self.in_features)
            # prefill (or a gradient): dequantise for the call, the ordinary GEMM in x's dtype
            w = None if is_tracing() else native_ops.int4_dequantize(self.qweight, self.scales_and_zeros, self.group_size)
            y = F.linear(x2, (self.dequantize() if w is None else w).to(x.dtype))
            return self._finish(y, x)
        x2 = x.reshape(-1, self.in_features).to(torch.bfloat16)
        if self.layout == "cpu" and _has_op("_weight_int4pack_mm_for_cpu"):
            y = torch.ops.aten._weight_int4pack_mm_for_cpu(x2, self.qweight, self.group_size, self.scales_and_zeros)
        elif self.layout == "cuda":
            y = torch.ops.aten._weight_int4pack_mm(x2, self.qweight, self.group_size, self.scales_and_zeros)
        else:
            _warn_once(f"int4-{x.device.type}", f"neox int4: no int4 kernel for {x.device.type} in this torch; "
                       "dequantising the weight on every call (slower than the unquantised model)")
            y = F.linear(x2, self.dequantize().to(torch.bfloat16))
        return self._finish(y, x)


class BF16Linear(QuantizedLinear):
    """bf16 weights with bf16 activations at the boundary; the rest of the model stays as it is."""

    scheme = "bf16"

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device: Any = None,
                 dtype: torch.dtype | None = None, config: QuantizationConfig | None = None) -> None:
        super().__init__(in_features, out_features, bias, device, dtype)
        self.register_buffer("weight", torch.empty(out_features, in_features, dtype=torch.bfloat16, device=device))

    def quantize_(self, weight: torch.Tensor) -> None:
        self.weight = weight.detach().to(torch.bfloat16).contiguous()

    def dequantize(self) -> torch.Tensor:
        return self.weight.float()

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:  # noqa: ANN001
        key = prefix + "weight"
        if key in state_dict:
            state_dict[key] = state_dict[key].to(torch.bfloat16)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._finish(F.linear(x.to(torch.bfloat16), self.weight), x)


_CLASSES: dict[str, type[QuantizedLinear]] = {"int8": Int8Linear, "int4": Int4Linear, "bf16": BF16Linear}


def _assign(module: nn.Module, name: str, tensor: torch.Tensor) -> None:
    if name == "bias":
        module.bias = nn.Parameter(tensor, requires_grad=False)
    else:
        setattr(module, name, tensor.to(getattr(module, name).dtype))


# ================================================================================ swapping


def _head_names(model: nn.Module) -> set[str]:
    get = getattr(model, "get_output_embeddings", None)
    head = get() if callable(get) else None
    return {name for name, m in model.named_modules() if head is not None and m is head}


def _tied(model: nn.Module, linear: nn.Linear) -> bool:
    get = getattr(model, "get_input_embeddings", None)
    emb = get() if callable(get) else None
    return emb is not None and linear.weight is emb.weight


def _plan(model: nn.Module, config: QuantizationConfig) -> list[tuple[str, nn.Linear]]:
    """The linears to swap, by name, with a log line for each one left alone."""
    heads = _head_names(model)
    chosen = []
    for name, module in model.named_modules():
        if type(module) not in (nn.Linear, Linear):  # not a subclass someone else made (a PEFT layer)
            continue
        if any(name == s or name.startswith(s + ".") or name.endswith("." + s) for s in config.modules_to_not_convert):
            continue
        if name in heads and not config.include_head:
            continue
        if _tied(model, module):
            logger.info("quantization: %s shares its weight with the input embedding; left unquantised", name)
            continue
        why = _CLASSES[config.scheme].fits(module, config)
        if why is not None:
            logger.warning("quantization: %s left unquantised: %s", name, why)
            continue
        chosen.append((name, module))
    return chosen


def _swap(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


def _empty_like(linear: nn.Linear, config: QuantizationConfig, device: Any) -> QuantizedLinear:
    bias = linear.bias is not None
    dtype = linear.bias.dtype if bias else linear.weight.dtype
    return _CLASSES[config.scheme](linear.in_features, linear.out_features, bias=bias, device=device, dtype=dtype,
                                   config=config)


def _record(model: nn.Module, config: QuantizationConfig) -> None:
    cfg = getattr(model, "config", None)
    if cfg is not None:
        extra = getattr(cfg, "extra", None)
        if isinstance(extra, dict):
            extra["quantization_config"] = config.to_dict()
        else:
            cfg.quantization_config = config.to_dict()


def quantize(model: nn.Module, scheme: str | QuantizationConfig = "int8", *, group_size: int | None = None,
             include_head: bool = True, modules_to_not_convert: list[str] | None = None) -> nn.Module:
    """Quantise a loaded model's linears in place, one at a time; returns the model.

    Args:
        scheme: "int8" (per output channel), "int4" (per group of ``group_size`` inputs, default
            128) or "bf16" (bf16 weights and activations inside the linears only).
        include_head: quantise the output head too (True by default: it is a third of a small
            model's decode bytes; see the README for its quality cost).
        modules_to_not_convert: module names (or name suffixes such as "dense") to leave as they are.

    The full-precision weight of each linear is released as soon as it is quantised. The model's
    ``config.quantization_config`` records the scheme, so ``save_pretrained`` writes a folder that
    ``from_pretrained`` loads back quantised.
    """
    if isinstance(scheme, QuantizationConfig):
        if group_size is not None or modules_to_not_convert is not None or include_head is not True:
            raise ValueError("pass a QuantizationConfig or the keyword options, not both")
        config = scheme
    else:
        config = QuantizationConfig(scheme=scheme, group_size=group_size, include_head=include_head,
                                    modules_to_not_convert=list(modules_to_not_convert or []))
    if quantized_modules(model):
        raise ValueError("this model is already quantised; quantise the full-precision model instead")
    for name, linear in _plan(model, config):
        new = _empty_like(linear, config, linear.weight.device)
        with torch.no_grad():
            new.quantize_(linear.weight)
            if linear.bias is not None:
                new.bias = nn.Parameter(linear.bias.detach(), requires_grad=False)
        _swap(model, name, new)
        linear.weight = None  # drop the full-precision weight now, not when the loop ends
    _record(model, config)
    return model


def quantized_modules(model: nn.Module) -> dict[str, QuantizedLinear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, QuantizedLinear)}


def prepare_for_loading(model: nn.Module, config: QuantizationConfig) -> Callable[[str, torch.Tensor], list[str]]:
    """Swap the linears of a model built on the meta device; return the loader's tensor hook.

    The hook takes (model key, tensor) and returns the model keys it filled (empty when it left
    the tensor to the caller): a full-precision ``<linear>.weight`` is quantised on the spot (the
    caller then drops it, so the peak is the quantised model plus one full-precision tensor), and
    a quantised checkpoint's int4 ``qweight`` is packed for its device at once. Everything else
    (biases, int8 tensors) the caller loads as usual.
    """
    swapped: dict[str, QuantizedLinear] = {}
    for name, linear in _plan(model, config):
        new = _empty_like(linear, config, "meta")
        _swap(model, name, new)
        swapped[name] = new
    _record(model, config)

    def take(key: str, tensor: torch.Tensor) -> list[str]:
        owner, _, attr = key.rpartition(".")
        module = swapped.get(owner)
        if module is None:
            return []
        with torch.no_grad():
            if attr == "weight":
                if tuple(tensor.shape) != (module.out_features, module.in_features):
                    raise ValueError(f"tensor {key!r} has shape {tuple(tensor.shape)}, expected "
                                     f"({module.out_features}, {module.in_features})")
                module.quantize_(tensor)
                return [f"{owner}.{b}" for b, _ in module.named_buffers(recurse=False)]
            if isinstance(module, Int4Linear) and attr in ("qweight", "scales_and_zeros"):
                module.load_tensor(attr, tensor)
                return [key]
        return []

    return take
