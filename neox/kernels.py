"""The model's linear layer: ``nn.Linear`` with one CPU kernel choice for skinny inputs.

A decode step multiplies a few rows (the batch) by every weight. For 1 row MKL runs a
matrix-vector product at memory speed; for 2–16 rows ``F.linear`` becomes an ``x·Wᵀ`` GEMM that
MKL runs 2–3× slower than reading the weight once (measured on this project's 2-core AVX2 VM,
pythia-160m shapes: the 50304×768 head at 4 rows 42.9 ms as ``x·Wᵀ``, 12.9 ms as ``(W·xᵀ)ᵀ``; a
whole batch-4 decode step after a 512-token prompt 157 → 80 ms). So on CPU, without autograd and
outside any tracer, 2–16 rows are computed as ``W·xᵀ`` — the same products, summed in another
order (within 1e-5 of F.linear, as tests/test_kernels.py checks). fp32 only: for bf16/fp16 weights oneDNN's
x·Wᵀ is the faster one (W·xᵀ measured 1.2–1.9× slower). Training (grad enabled), one row, prefill
(many rows), other devices, tensor subclasses (DTensor) and torch.compile / export / jit traces
take plain ``F.linear``, so compiled graphs and gradients are transformers'.

``Linear`` is an ``nn.Linear`` (same parameters, state-dict names and ``isinstance``), so PEFT,
the quantiser and tensor parallelism see the layer they expect.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .validation import is_tracing

__all__ = ["Linear", "SKINNY_MAX_ROWS"]

#: Up to this many rows a CPU forward without autograd computes W·xᵀ (see the module docstring).
SKINNY_MAX_ROWS = 16


class Linear(nn.Linear):
    """``nn.Linear``; on CPU, 2–16 fp32 input rows without autograd are computed as ``(W·xᵀ)ᵀ``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        # Tracers first: under torch.export a test on a symbolic row count would become a guard.
        if (x.device.type == "cpu" and not torch.is_grad_enabled() and not is_tracing()
                and x.dtype == w.dtype == torch.float32 and type(x) is torch.Tensor
                and type(w) in (nn.Parameter, torch.Tensor)):
            K = x.shape[-1]
            rows = x.numel() // K if K else 0
            if 1 < rows <= SKINNY_MAX_ROWS:
                xt = x.reshape(rows, K).t()  # (K, rows), a view
                y = torch.mm(w, xt) if self.bias is None else torch.addmm(self.bias[:, None], w, xt)  # (N, rows)
                # Contiguous, as F.linear's output is: callers .view() it (rows × N floats to copy).
                return y.t().contiguous().view(*x.shape[:-1], w.shape[0])  # (…, N)
        return F.linear(x, w, self.bias)
