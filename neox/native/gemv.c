/* neox's CPU matrix-vector kernels for decoding: a few activation rows times a weight read once.
 *
 * Built at first use by neox/native/build.py with the machine's C compiler
 * (cc -O3 -march=native -fopenmp), loaded with ctypes, and called only with arguments checked
 * in neox/native/ops.py (contiguous, dtypes and shapes as documented below).
 *
 * Notation: x (M, K) fp32 activations, y (M, N) fp32 outputs, one weight row per output.
 *   f32:  W (N, K) fp32                                   y = x Wᵀ (+ bias)
 *   int8: Q (N, K) int8, S (N,) bf16                      y = (x Qᵀ) · S (+ bias)
 *   int4: P (N, K/2) uint8, two 4-bit values a byte, the even input in the high nibble (neox's
 *         portable checkpoint layout); SZ (K/g, N, 2) bf16 (scale, zero) per group of g inputs:
 *         w = (q − 8)·scale + zero                         y = x Wᵀ (+ bias)
 * bias: fp32 (N,) or NULL. int8 needs K % 32 == 0; int4 K % 64 == 0 and g % 64 == 0.
 * The int8/int4 kernels multiply by int8 activations with integer dot products (as llama.cpp's
 * q8_0 / q4_0 do): each block of 32 inputs of a row of x is quantised to x ≈ xq · d (|xq| ≤ 127),
 * so that a 32-input product costs 4 vector instructions instead of 16 in fp32.
 * Decoding's attention (one new position per row over the KV cache) is two matrix-vector
 * products too, q·Kᵀ and p·V: neox_decode_attention, below, with the rotary and the cache write.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define NEOX_AVX2 1
#endif

int neox_simd(void) {
#ifdef NEOX_AVX2
  return 1;
#else
  return 0;
#endif
}

static inline float bf16_to_f32(uint16_t h) {
  uint32_t u = (uint32_t)h << 16;
  float f;
  memcpy(&f, &u, 4);
  return f;
}

/* ---- fp32: W read once per call for up to 4 rows of x at a time ---- */
#define F32_ROWS 4
#define F32_LANES 16
void neox_f32_linear(const float* x, int64_t M, int64_t K, const float* W, const float* bias, int64_t N,
                     float* y) {
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; n++) {
    const float* w = W + n * K;
    for (int64_t m0 = 0; m0 < M; m0 += F32_ROWS) {
      int rows = (int)(M - m0 < F32_ROWS ? M - m0 : F32_ROWS);
      float acc[F32_ROWS][F32_LANES] = {{0}};
      int64_t k = 0;
      if (rows == F32_ROWS) {
        for (; k + F32_LANES <= K; k += F32_LANES)
          for (int i = 0; i < F32_ROWS; i++)
            for (int j = 0; j < F32_LANES; j++) acc[i][j] += w[k + j] * x[(m0 + i) * K + k + j];
      } else if (rows == 1) { /* batch-1 decoding: spelt out, the compiler keeps acc in registers (+11%) */
        const float* xm = x + m0 * K;
        for (; k + F32_LANES <= K; k += F32_LANES)
          for (int j = 0; j < F32_LANES; j++) acc[0][j] += w[k + j] * xm[k + j];
      } else {
        for (; k + F32_LANES <= K; k += F32_LANES)
          for (int i = 0; i < rows; i++)
            for (int j = 0; j < F32_LANES; j++) acc[i][j] += w[k + j] * x[(m0 + i) * K + k + j];
      }
      for (int i = 0; i < rows; i++) {
        float s = 0;
        for (int64_t kk = k; kk < K; kk++) s += w[kk] * x[(m0 + i) * K + kk];
        for (int j = 0; j < F32_LANES; j++) s += acc[i][j];
        y[(m0 + i) * N + n] = s + (bias ? bias[n] : 0.f);
      }
    }
  }
}

/* ---- attention of one new position per row over the KV cache (decoding) ----
 * qkv (B, H, 3, hs): the fused projection's output for one position, per head [q | k | v];
 * cos, sin (B or 1, r/2): the rotary angles of each row's position (rope_stride r/2, or 0: shared);
 * Kc, Vc (B, H, cap, hs): the cache, positions [0, pos) filled. For each row b and head h:
 *   rotate q and k in their first r dims (GPT-NeoX pairs dim i with i + r/2:
 *   (x1, x2) <- (x1 cos - x2 sin, x2 cos + x1 sin)), write k and v at position pos, then
 *   y[b, h] = softmax(scale · q·K[0..pos]ᵀ) · V[0..pos]   (pos + 1 keys, no mask).
 * y (B, H·hs). Written with products and sums kept apart (no FMA contraction), so the cache holds
 * the bits torch's rotary writes. Rows and heads are independent: a row's result is the same
 * alone or in a batch. Returns 0, or -1 when out of memory. */
#ifdef __clang__
#pragma STDC FP_CONTRACT OFF /* gcc: off already under -std=c11 */
#endif
#define ATT_LANES 8
static float dot_lanes(const float* a, const float* b, int64_t n) {
  float acc[ATT_LANES] = {0};
  int64_t i = 0;
  for (; i + ATT_LANES <= n; i += ATT_LANES)
    for (int j = 0; j < ATT_LANES; j++) acc[j] += a[i + j] * b[i + j];
  float s = 0;
  for (; i < n; i++) s += a[i] * b[i];
  for (int j = 0; j < ATT_LANES; j++) s += acc[j];
  return s;
}

static void rotate(const float* src, const float* c, const float* sn, int64_t half, int64_t hs, float* dst) {
  for (int64_t i = 0; i < half; i++) {
    float x1 = src[i], x2 = src[half + i];
    float a = x1 * c[i], b = x2 * sn[i], e = x2 * c[i], f = x1 * sn[i];
    dst[i] = a - b;
    dst[half + i] = e + f;
  }
  for (int64_t i = 2 * half; i < hs; i++) dst[i] = src[i];
}

int neox_decode_attention(const float* qkv, int64_t B, int64_t H, int64_t hs, int64_t r, const float* cos,
                          const float* sin, int64_t rope_stride, float* Kc, float* Vc, int64_t cap, int64_t pos,
                          float scale, float* y) {
  const int64_t S = pos + 1, half = r / 2;
  float* work = (float*)malloc(sizeof(float) * (size_t)(B * H * (S + 2 * hs)));
  if (!work) return -1;
#pragma omp parallel for schedule(static)
  for (int64_t bh = 0; bh < B * H; bh++) {
    const int64_t b = bh / H;
    const float* src = qkv + bh * 3 * hs;
    const float *c = cos + b * rope_stride, *sn = sin + b * rope_stride;
    float* K = Kc + bh * cap * hs;
    float* V = Vc + bh * cap * hs;
    float *q = work + bh * (S + 2 * hs), *acc = q + hs, *p = acc + hs;
    rotate(src, c, sn, half, hs, q);
    rotate(src + hs, c, sn, half, hs, K + pos * hs);
    memcpy(V + pos * hs, src + 2 * hs, sizeof(float) * (size_t)hs);
    float mx = -INFINITY;
    for (int64_t t = 0; t < S; t++) {
      p[t] = dot_lanes(q, K + t * hs, hs) * scale;
      if (p[t] > mx) mx = p[t];
    }
    float total = 0;
    for (int64_t t = 0; t < S; t++) {
      p[t] = expf(p[t] - mx);
      total += p[t];
    }
    for (int64_t i = 0; i < hs; i++) acc[i] = 0;
    for (int64_t t = 0; t < S; t++) {
      const float* v = V + t * hs;
      for (int64_t i = 0; i < hs; i++) acc[i] += p[t] * v[i];
    }
    float* out = y + bh * hs;
    for (int64_t i = 0; i < hs; i++) out[i] = acc[i] / total;
  }
  free(work);
  return 0;
}

#ifdef NEOX_AVX2
static inline float hsum8(__m256 v) {
  __m128 h = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  h = _mm_add_ps(h, _mm_movehl_ps(h, h));
  h = _mm_add_ss(h, _mm_movehdup_ps(h));
  return _mm_cvtss_f32(h);
}

/* 32 floats → 32 int8 with one scale (round to nearest); returns the sum of the int8 values. */
static inline int quantize_block(const float* v, int8_t* q, float* d_out) {
  const __m256 sign = _mm256_set1_ps(-0.0f);
  __m256 a0 = _mm256_loadu_ps(v), a1 = _mm256_loadu_ps(v + 8), a2 = _mm256_loadu_ps(v + 16),
         a3 = _mm256_loadu_ps(v + 24);
  __m256 mx = _mm256_max_ps(_mm256_max_ps(_mm256_andnot_ps(sign, a0), _mm256_andnot_ps(sign, a1)),
                            _mm256_max_ps(_mm256_andnot_ps(sign, a2), _mm256_andnot_ps(sign, a3)));
  __m128 h = _mm_max_ps(_mm256_castps256_ps128(mx), _mm256_extractf128_ps(mx, 1));
  h = _mm_max_ps(h, _mm_movehl_ps(h, h));
  h = _mm_max_ss(h, _mm_movehdup_ps(h));
  float amax = _mm_cvtss_f32(h), d = amax / 127.f;
  __m256 id = _mm256_set1_ps(amax > 0 ? 127.f / amax : 0.f);
  __m256i i0 = _mm256_cvtps_epi32(_mm256_mul_ps(a0, id)), i1 = _mm256_cvtps_epi32(_mm256_mul_ps(a1, id)),
          i2 = _mm256_cvtps_epi32(_mm256_mul_ps(a2, id)), i3 = _mm256_cvtps_epi32(_mm256_mul_ps(a3, id));
  __m256i sum = _mm256_add_epi32(_mm256_add_epi32(i0, i1), _mm256_add_epi32(i2, i3));
  __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(i0, i1), _mm256_packs_epi32(i2, i3));
  /* the packs work within 128-bit lanes: put the eight 4-byte groups back in order */
  p = _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
  _mm256_storeu_si256((__m256i*)q, p);
  *d_out = d;
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(sum), _mm256_extracti128_si256(sum, 1));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1));
  return _mm_cvtsi128_si32(s);
}

/* x (M, K) → xq (M, K) int8, d (M, K/32); with `nibble_order`, each 64 inputs are reordered
 * odd-then-even, the order of the low then high nibbles of 32 bytes of the int4 layout; with
 * gs > 0, xs (M, K/gs) = per group, the sum of the quantised approximation of x. */
static void quantize_rows(const float* x, int64_t M, int64_t K, int nibble_order, int64_t gs, int8_t* xq,
                          float* d, float* xs) {
  float tmp[64];
  for (int64_t m = 0; m < M; m++) {
    for (int64_t b = 0; b < K; b += 64) {
      const float* src = x + m * K + b;
      int64_t len = K - b < 64 ? K - b : 64; /* K is a multiple of 32 */
      if (nibble_order) {
        for (int j = 0; j < 32; j++) { tmp[j] = src[2 * j + 1]; tmp[32 + j] = src[2 * j]; }
        src = tmp;
      }
      for (int64_t c = 0; c < len; c += 32) {
        int64_t at = m * K + b + c;
        int isum = quantize_block(src + c, xq + at, d + at / 32);
        if (gs > 0) {
          int64_t g = at / gs; /* groups hold whole 64-input blocks: gs is a multiple of 64 */
          if ((at % gs) == 0) xs[g] = 0;
          xs[g] += d[at / 32] * (float)isum;
        }
      }
    }
  }
}

/* ---- int8 weights, one scale per output row ---- */
void neox_q8_linear_(const int8_t* xq, const float* xd, int64_t M, int64_t K, const int8_t* Q,
                     const uint16_t* S, const float* bias, int64_t N, float* y) {
  const __m256i ones = _mm256_set1_epi16(1);
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; n++) {
    const int8_t* q = Q + n * K;
    float s = bf16_to_f32(S[n]);
    for (int64_t m = 0; m < M; m++) {
      const int8_t* xm = xq + m * K;
      const float* dm = xd + m * (K / 32);
      __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
      int64_t b = 0;
      for (; b + 64 <= K; b += 64) {
        __m256i w0 = _mm256_loadu_si256((const __m256i*)(q + b)), w1 = _mm256_loadu_si256((const __m256i*)(q + b + 32));
        __m256i x0 = _mm256_loadu_si256((const __m256i*)(xm + b)), x1 = _mm256_loadu_si256((const __m256i*)(xm + b + 32));
        /* maddubs multiplies unsigned by signed bytes: |w| times x with w's sign */
        __m256i p0 = _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_sign_epi8(w0, w0), _mm256_sign_epi8(x0, w0)), ones);
        __m256i p1 = _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_sign_epi8(w1, w1), _mm256_sign_epi8(x1, w1)), ones);
        a0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p0), _mm256_broadcast_ss(dm + b / 32), a0);
        a1 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p1), _mm256_broadcast_ss(dm + b / 32 + 1), a1);
      }
      for (; b < K; b += 32) {
        __m256i w0 = _mm256_loadu_si256((const __m256i*)(q + b)), x0 = _mm256_loadu_si256((const __m256i*)(xm + b));
        __m256i p0 = _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_sign_epi8(w0, w0), _mm256_sign_epi8(x0, w0)), ones);
        a0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p0), _mm256_broadcast_ss(dm + b / 32), a0);
      }
      y[m * N + n] = hsum8(_mm256_add_ps(a0, a1)) * s + (bias ? bias[n] : 0.f);
    }
  }
}

/* ---- int4 weights, per group of gs inputs ---- */
void neox_q4_linear_(const int8_t* xq, const float* xd, const float* xs, int64_t M, int64_t K, const uint8_t* P,
                     const uint16_t* SZ, const float* bias, int64_t N, int64_t gs, float* y) {
  const int64_t G = K / gs;
  const __m256i low4 = _mm256_set1_epi8(15), ones = _mm256_set1_epi16(1);
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; n++) {
    const uint8_t* p = P + n * (K / 2);
    const float b0 = bias ? bias[n] : 0.f;
    int64_t m = 0;
    for (; m + 2 <= M; m += 2) { /* two rows of x per load of the weight row */
      const int8_t *xa = xq + m * K, *xb = xa + K;
      const float *da = xd + m * (K / 32), *db = da + K / 32;
      __m256 ta = _mm256_setzero_ps(), tb = _mm256_setzero_ps();
      float za = 0, zb = 0;
      for (int64_t g = 0; g < G; g++) {
        __m256 a = _mm256_setzero_ps(), c = _mm256_setzero_ps();
        for (int64_t b = g * gs; b < (g + 1) * gs; b += 64) {
          __m256i v = _mm256_loadu_si256((const __m256i*)(p + b / 2));
          __m256i lo = _mm256_and_si256(v, low4), hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), low4);
          __m256i pa0 = _mm256_madd_epi16(_mm256_maddubs_epi16(lo, _mm256_loadu_si256((const __m256i*)(xa + b))), ones);
          __m256i pa1 = _mm256_madd_epi16(_mm256_maddubs_epi16(hi, _mm256_loadu_si256((const __m256i*)(xa + b + 32))), ones);
          __m256i pb0 = _mm256_madd_epi16(_mm256_maddubs_epi16(lo, _mm256_loadu_si256((const __m256i*)(xb + b))), ones);
          __m256i pb1 = _mm256_madd_epi16(_mm256_maddubs_epi16(hi, _mm256_loadu_si256((const __m256i*)(xb + b + 32))), ones);
          a = _mm256_fmadd_ps(_mm256_cvtepi32_ps(pa0), _mm256_broadcast_ss(da + b / 32), a);
          c = _mm256_fmadd_ps(_mm256_cvtepi32_ps(pb0), _mm256_broadcast_ss(db + b / 32), c);
          a = _mm256_fmadd_ps(_mm256_cvtepi32_ps(pa1), _mm256_broadcast_ss(da + b / 32 + 1), a);
          c = _mm256_fmadd_ps(_mm256_cvtepi32_ps(pb1), _mm256_broadcast_ss(db + b / 32 + 1), c);
        }
        const uint16_t* sz = SZ + (g * N + n) * 2;
        float scale = bf16_to_f32(sz[0]), zero = bf16_to_f32(sz[1]);
        __m256 sv = _mm256_set1_ps(scale);
        ta = _mm256_fmadd_ps(a, sv, ta);
        tb = _mm256_fmadd_ps(c, sv, tb);
        za += (zero - 8 * scale) * xs[m * G + g];
        zb += (zero - 8 * scale) * xs[(m + 1) * G + g];
      }
      y[m * N + n] = hsum8(ta) + za + b0;
      y[(m + 1) * N + n] = hsum8(tb) + zb + b0;
    }
    for (; m < M; m++) {
      const int8_t* xm = xq + m * K;
      const float* dm = xd + m * (K / 32);
      __m256 total = _mm256_setzero_ps();
      float zero_terms = 0;
      for (int64_t g = 0; g < G; g++) {
        __m256 a = _mm256_setzero_ps();
        for (int64_t b = g * gs; b < (g + 1) * gs; b += 64) {
          __m256i v = _mm256_loadu_si256((const __m256i*)(p + b / 2));
          /* low nibbles: the 32 odd inputs of this block, high: the 32 even ones (xq is in that order) */
          __m256i lo = _mm256_and_si256(v, low4), hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), low4);
          __m256i p0 = _mm256_madd_epi16(_mm256_maddubs_epi16(lo, _mm256_loadu_si256((const __m256i*)(xm + b))), ones);
          __m256i p1 = _mm256_madd_epi16(_mm256_maddubs_epi16(hi, _mm256_loadu_si256((const __m256i*)(xm + b + 32))), ones);
          /* the pair loop's order of operations exactly: a row gets the same bits alone or in a batch */
          a = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p0), _mm256_broadcast_ss(dm + b / 32), a);
          a = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p1), _mm256_broadcast_ss(dm + b / 32 + 1), a);
        }
        const uint16_t* sz = SZ + (g * N + n) * 2;
        float scale = bf16_to_f32(sz[0]), zero = bf16_to_f32(sz[1]);
        /* Σ w·x = scale·Σ q·x + (zero − 8·scale)·Σ x, with x's own approximation in both sums */
        total = _mm256_fmadd_ps(a, _mm256_set1_ps(scale), total);
        zero_terms += (zero - 8 * scale) * xs[m * G + g];
      }
      y[m * N + n] = hsum8(total) + zero_terms + b0;
    }
  }
}
#endif

/* int4 (portable layout) → fp32 (N, K), for prefill's GEMM: one pass, no temporaries. */
void neox_q4_dequantize(const uint8_t* P, const uint16_t* SZ, int64_t N, int64_t K, int64_t gs, float* W) {
  const int64_t G = K / gs;
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; n++) {
    const uint8_t* p = P + n * (K / 2);
    float* w = W + n * K;
    for (int64_t g = 0; g < G; g++) {
      const uint16_t* sz = SZ + (g * N + n) * 2;
      float scale = bf16_to_f32(sz[0]), base = bf16_to_f32(sz[1]) - 8 * scale;
      for (int64_t i = g * gs / 2; i < (g + 1) * gs / 2; i++) {
        w[2 * i] = (float)(p[i] >> 4) * scale + base;
        w[2 * i + 1] = (float)(p[i] & 15) * scale + base;
      }
    }
  }
}

/* Entry points: quantise x into scratch memory, then run the kernel. Return 0, or −1 when out of memory
 * or built without AVX2 (the caller then uses torch's kernels). */
int neox_q8_linear(const float* x, int64_t M, int64_t K, const int8_t* Q, const uint16_t* S, const float* bias,
                   int64_t N, float* y) {
#ifdef NEOX_AVX2
  int8_t* xq = (int8_t*)malloc((size_t)(M * K));
  float* xd = (float*)malloc(sizeof(float) * (size_t)(M * K / 32));
  if (!xq || !xd) { free(xq); free(xd); return -1; }
  quantize_rows(x, M, K, 0, 0, xq, xd, NULL);
  neox_q8_linear_(xq, xd, M, K, Q, S, bias, N, y);
  free(xq); free(xd);
  return 0;
#else
  return -1;
#endif
}

int neox_q4_linear(const float* x, int64_t M, int64_t K, const uint8_t* P, const uint16_t* SZ, const float* bias,
                   int64_t N, int64_t gs, float* y) {
#ifdef NEOX_AVX2
  int8_t* xq = (int8_t*)malloc((size_t)(M * K));
  float* xd = (float*)malloc(sizeof(float) * (size_t)(M * K / 32));
  float* xs = (float*)malloc(sizeof(float) * (size_t)(M * (K / gs)));
  if (!xq || !xd || !xs) { free(xq); free(xd); free(xs); return -1; }
  quantize_rows(x, M, K, 1, gs, xq, xd, xs);
  neox_q4_linear_(xq, xd, xs, M, K, P, SZ, bias, N, gs, y);
  free(xq); free(xd); free(xs);
  return 0;
#else
  return -1;
#endif
}
