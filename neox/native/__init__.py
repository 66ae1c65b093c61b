"""neox's own CPU kernels for decoding: matrix-vector products that read each weight once.

Batch-1/few-row decoding on a CPU is a stream of matrix-vector products, bound by how fast the
weights come from memory. torch's kernels leave speed there: MKL's fp32 GEMV runs one core's
bandwidth, and the weight-only int8/int4 kernels convert every weight to bf16 before multiplying
(compute-bound on AVX2). ``gemv.c`` holds three small AVX2 kernels (fp32; int8 per row; int4 per
group in neox's portable nibble layout) with int8 activations for the quantised ones, as
llama.cpp does. ``build`` compiles it at first use with the machine's C compiler; ``ops`` checks
arguments and calls it, and registers the ops a compiled step records.

Where the kernels cannot be built or used (no compiler, no AVX2, ``NEOX_NATIVE=0``), every caller
runs torch's kernel instead: the same results up to rounding, only slower.
"""

from .ops import available, f32_linear, int4_linear, int4_supported, int8_linear

__all__ = ["available", "f32_linear", "int8_linear", "int4_linear", "int4_supported"]
