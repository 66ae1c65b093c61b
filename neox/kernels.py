"""The model's linear layer: ``nn.Linear`` with a CPU kernel choice for skinny inputs.

A decode step multiplies a few rows (the batch) by every weight, and is bound by reading the
weights from memory. torch's CPU kernels leave speed there (measured on this project's 2-core AVX2
VM, pythia-160m shapes): for 1 row MKL's matrix-vector product runs at about one core's bandwidth;
for 2–16 rows ``F.linear`` becomes an ``x·Wᵀ`` GEMM that MKL runs 2–3× slower than reading the
weight once (the 50304×768 head at 4 rows 42.9 ms as ``x·Wᵀ``, 12.9 ms as ``(W·xᵀ)ᵀ``). So on CPU,
in fp32, without autograd and outside any tracer:

* 1–8 rows use neox's native matrix-vector kernel (``neox.native``: both cores, the weight read
  once for every row; one 160m decode step's matrices 42–49 → 34–39 ms at 1 row), where it is built;
* 9–16 rows (or 2–16 without the native kernel) are computed as ``W·xᵀ``.

Both sum the same products in another order (within 1e-5 of F.linear, as tests/test_kernels.py
checks); the native kernel gives each row the same bits whatever else is in the batch. fp32 only:
for bf16/fp16 weights oneDNN's x·Wᵀ is the faster one (W·xᵀ measured 1.2–1.9× slower). Training
(grad enabled), prefill (many rows), other devices, tensor subclasses (DTensor) and
torch.compile / export / jit traces take plain ``F.linear``, so compiled graphs and gradients are
transformers'.

``Linear`` is an ``nn.Linear`` (same parameters, state-dict names and ``isinstance``), so PEFT,
the quantiser and tensor parallelism see the layer they expect.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import native
from .validation import is_tracing

__all__ = ["Linear", "SKINNY_MAX_ROWS", "NATIVE_MAX_ROWS"]

#: Up to this many rows a CPU forward without autograd computes W·xᵀ (see the module docstring).
SKINNY_MAX_ROWS = 16
#: Up to this many rows the native kernel is used where it is built: it reads the weight once per
#: call, but its per-row work grows with the rows; beyond 8 W·xᵀ was as fast (benchmarks/README.md).
NATIVE_MAX_ROWS = 8


class Linear(nn.Linear):
    """``nn.Linear``; on CPU, 1–16 fp32 input rows without autograd take a skinny kernel (see above)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        # Tracers first: under torch.export a test on a symbolic row count would become a guard.
        if (x.device.type == "cpu" and not torch.is_grad_enabled() and not is_tracing()
                and x.dtype == w.dtype == torch.float32 and type(x) is torch.Tensor
                and type(w) in (nn.Parameter, torch.Tensor)):
            K = x.shape[-1]
            rows = x.numel() // K if K else 0
            if 0 < rows <= NATIVE_MAX_ROWS:
                y = native.f32_linear(x.contiguous(), w, self.bias)  # (…, N), or None
                if y is not None:
                    return y
            if 1 < rows <= SKINNY_MAX_ROWS:
                xt = x.reshape(rows, K).t()  # (K, rows), a view
                y = torch.mm(w, xt) if self.bias is None else torch.addmm(self.bias[:, None], w, xt)  # (N, rows)
                # Contiguous, as F.linear's output is: callers .view() it (rows × N floats to copy).
                return y.t().contiguous().view(*x.shape[:-1], w.shape[0])  # (…, N)
        return F.linear(x, w, self.bias)
