"""Worker side of the benchmark: one fresh process imports one implementation, loads the
checkpoint and runs one or more measured phases, then prints a single JSON line.

Everything here is measured the same way for every implementation; the parent process
(bench.py) decides what to run, interleaves the implementations and aggregates.
"""

from __future__ import annotations

import gc
import json
import os
import re
import resource
import statistics
import sys
import time
from typing import Any, Callable

RESULT_PREFIX = "BENCH_RESULT "

# impl name -> (library, extra generate() kwargs)
IMPLS: dict[str, tuple[str, dict[str, Any]]] = {
    "neox": ("neox", {}),
    # Another checkout of neox (the folder in $NEOX_BASE, e.g. a `git worktree` of an older commit),
    # measured in the same run: the same-speed check of a refactor, interleaved like every impl.
    "neox-base": ("neox", {}),
    "neox-static": ("neox", {"cache_implementation": "static"}),
    # The static step compiled on any device (a compile_config asks for it; on CUDA static alone does).
    "neox-compiled": ("neox", {"cache_implementation": "static", "compile_config": {}}),
    # The static step compiled with max-autotune: on CPU traced with frozen weights, so that inductor's
    # C++ GEMM templates pack them (neox/generation/decoding.py, "Frozen weights").
    "neox-autotune": ("neox", {"cache_implementation": "static", "compile_config": {"mode": "max-autotune"}}),
    "transformers": ("transformers", {}),
    "transformers-static": ("transformers", {"cache_implementation": "static"}),
    # Weight-only quantised and bf16 modes, and their peers (see LOAD_KWARGS).
    "neox-int8": ("neox", {}),
    "neox-int4": ("neox", {}),
    "neox-bf16": ("neox", {}),
    "neox-int8-compiled": ("neox", {"cache_implementation": "static", "compile_config": {}}),
    "neox-int4-compiled": ("neox", {"cache_implementation": "static", "compile_config": {}}),
    "neox-int8-autotune": ("neox", {"cache_implementation": "static", "compile_config": {"mode": "max-autotune"}}),
    "neox-int4-autotune": ("neox", {"cache_implementation": "static", "compile_config": {"mode": "max-autotune"}}),
    "neox-bf16-autotune": ("neox", {"cache_implementation": "static", "compile_config": {"mode": "max-autotune"}}),
    "transformers-bf16": ("transformers", {}),
    # transformers' CPU route to int8 weight-only: TorchAoConfig(Int8WeightOnlyConfig()); needs torchao
    # importable (e.g. PYTHONPATH=/tmp/quant-site, see benchmarks/README.md).
    "transformers-torchao-int8": ("transformers", {}),
    # llama.cpp through llama-cpp-python on a GGUF of the same weights; batch 1 only.
    "llamacpp-f32": ("llama_cpp", {}),
    "llamacpp-f16": ("llama_cpp", {}),
    "llamacpp-q8_0": ("llama_cpp", {}),
    "llamacpp-q4_0": ("llama_cpp", {}),
}

# from_pretrained arguments beyond the checkpoint's dtype, per impl; "dtype" overrides --dtype.
LOAD_KWARGS: dict[str, dict[str, Any]] = {
    "neox-int8": {"quantization": "int8"},
    "neox-int4": {"quantization": "int4"},
    "neox-int8-compiled": {"quantization": "int8"},
    "neox-int4-compiled": {"quantization": "int4"},
    "neox-bf16": {"dtype": "bfloat16"},
    "neox-int8-autotune": {"quantization": "int8"},
    "neox-int4-autotune": {"quantization": "int4"},
    "neox-bf16-autotune": {"dtype": "bfloat16"},
    "transformers-bf16": {"dtype": "bfloat16"},
    "transformers-torchao-int8": {"torchao": "int8"},
}
#: Impls whose numbers are not fp32's (quantised, bf16, another library's kernels): their tokens
#: and logits are compared for information, never flagged as a mismatch.
LOSSY = {i for i in IMPLS if i in LOAD_KWARGS or i.startswith("llamacpp")}


def allowed_phases(impl: str, phases: list[str]) -> list[str]:
    """The phases an impl runs: static variants differ only in generate(); quantised/bf16 models
    are for inference (no training); llama-cpp-python decodes one sequence at a time."""
    if impl.startswith("llamacpp"):
        return [p for p in phases if p == "decode-b1"]
    if IMPLS[impl][1]:
        return [p for p in phases if p.startswith("decode-b")]
    if impl in LOAD_KWARGS:
        return [p for p in phases if p != "train"]
    return list(phases)


# ============================================================================ CPU and memory accounting

_CLK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _machine_busy_s() -> float | None:
    """CPU-seconds the whole machine spent busy (all cores), from /proc/stat; None off Linux."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    # user nice system idle iowait irq softirq steal ...; steal counts as busy: time we did not get.
    return (v[0] + v[1] + v[2] + v[5] + v[6] + (v[7] if len(v) > 7 else 0)) / _CLK


def _own_cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    c = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime + c.ru_utime + c.ru_stime


class CpuMeter:
    """Wall time, this process's CPU time and every other process's CPU time over a block."""

    def __enter__(self) -> "CpuMeter":
        self._t, self._busy, self._own = time.perf_counter(), _machine_busy_s(), _own_cpu_s()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.wall = time.perf_counter() - self._t
        own = _own_cpu_s() - self._own
        busy = _machine_busy_s()
        self.own_cores = own / self.wall if self.wall > 0 else 0.0
        if busy is None or self._busy is None or self.wall <= 0:
            self.other_cores = None
        else:
            # /proc/stat ticks at 1/CLK s, so short blocks carry ±0.02-core noise; clamp at 0.
            self.other_cores = max(0.0, (busy - self._busy - own) / self.wall)

    def as_dict(self) -> dict[str, Any]:
        return {"wall_s": round(self.wall, 4), "own_cores": round(self.own_cores, 3),
                "other_cores": None if self.other_cores is None else round(self.other_cores, 3)}


def _status_kb(key: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            m = re.search(rf"^{key}:\s+(\d+)", f.read(), re.M)
        return int(m.group(1)) if m else None
    except OSError:
        return None


def rss_mb() -> float:
    kb = _status_kb("VmRSS")
    return kb / 1024 if kb is not None else float("nan")


def peak_rss_mb() -> float:
    kb = _status_kb("VmHWM")
    if kb is None:  # not Linux: ru_maxrss (kB on Linux, bytes on macOS)
        kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        kb = kb / 1024 if sys.platform == "darwin" else kb
    return kb / 1024


def reset_peak_rss() -> bool:
    """Reset this process's peak RSS (Linux ≥ 4.0: clear_refs 5) so a phase's peak is its own."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


# ============================================================================ helpers


def _median(xs: list[float]) -> float:
    return statistics.median(xs)


class Timer:
    def __init__(self, device: str) -> None:
        import torch

        self.cuda = device.startswith("cuda")
        self.torch = torch

    def sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize()

    def __call__(self, fn: Callable[[], Any]) -> tuple[float, Any]:
        self.sync()
        t = time.perf_counter()
        out = fn()
        self.sync()
        return time.perf_counter() - t, out


def _torch_dtype(name: str) -> Any:
    import torch

    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[name]


def _rand_ids(shape: tuple[int, ...], vocab: int, seed: int, device: str) -> Any:
    import torch

    g = torch.Generator().manual_seed(seed)
    # Skip id 0 (bos/eos of the random config) so prompts hold no special tokens.
    return torch.randint(1, vocab, shape, generator=g).to(device)


# ============================================================================ loading


def import_library(library: str) -> Any:
    if library == "llama_cpp":
        import llama_cpp

        return llama_cpp
    if library == "neox":
        from neox import GPTNeoXForCausalLM
    elif library == "transformers":
        import transformers
        from transformers import GPTNeoXForCausalLM

        transformers.logging.set_verbosity_error()
    else:
        raise ValueError(f"unknown library {library!r}")
    return GPTNeoXForCausalLM


def load_model(cls: Any, ckpt: str, dtype: str, device: str, impl: str = "") -> tuple[Any, str]:
    import importlib.util

    if impl.startswith("llamacpp"):
        return LlamaCppModel(ckpt, impl[len("llamacpp-"):], int(os.environ.get("OMP_NUM_THREADS", "2"))), "gguf"
    extra = dict(LOAD_KWARGS.get(impl, {}))
    dtype = extra.pop("dtype", dtype)
    if extra.pop("torchao", None):
        from torchao.quantization import Int8WeightOnlyConfig
        from transformers import TorchAoConfig

        extra["quantization_config"] = TorchAoConfig(Int8WeightOnlyConfig())
    kwargs: dict[str, Any] = {"dtype": _torch_dtype(dtype), "output_loading_info": True, **extra}
    # transformers needs the accelerate package for device_map; without it, load on the CPU and move.
    is_transformers = cls.__module__.startswith("transformers")
    if device != "cpu" and (not is_transformers or importlib.util.find_spec("accelerate") is not None):
        kwargs["device_map"] = device
    model, info = cls.from_pretrained(ckpt, **kwargs)
    info = dict(info) if info is not None else {}
    if impl in LOAD_KWARGS:  # quantised loads rename weights (qweight, scales): "missing" is expected there
        info = {k: [x for x in (v or []) if not str(x).endswith(".weight")] if k == "missing_keys" else v
                for k, v in info.items()}
    problems = {k: sorted(map(str, info.get(k) or [])) for k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    problems = {k: v for k, v in problems.items() if v}
    if problems:
        raise RuntimeError(f"the checkpoint did not load cleanly: {json.dumps(problems)[:2000]}")
    import torch

    how = "device_map" if "device_map" in kwargs else "from_pretrained"
    if model.device.type != torch.device(device).type:
        model = model.to(device)
        how += " then .to()"
    return model.eval(), how


def touch_weights(model: Any) -> None:
    """Read one value per 4 KiB page of every parameter and buffer (pages in mmap-backed weights)."""
    import torch

    if isinstance(model, LlamaCppModel):
        return
    with torch.no_grad():
        for t in _plain_tensors(model):
            flat = t.detach().reshape(-1)
            flat[:: max(1, 4096 // t.element_size())].sum()


def _plain_tensors(model: Any) -> list[Any]:
    """Every parameter and buffer as plain tensors: a tensor subclass (torchao's quantised weights)
    contributes the tensors it is made of (``__tensor_flatten__``)."""
    out = []
    todo = list(model.parameters()) + list(model.buffers())
    while todo:
        t = todo.pop()
        flatten = getattr(type(t), "__tensor_flatten__", None)
        if flatten is None:
            out.append(t)
        else:
            names, _ = t.__tensor_flatten__()
            todo += [getattr(t, n) for n in names]
    return out


def model_bytes(model: Any) -> int:
    """Bytes of every parameter and buffer, shared storages once."""
    if isinstance(model, LlamaCppModel):
        return model.file_bytes
    seen, total = set(), 0
    for t in _plain_tensors(model):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in seen:
            seen.add(ptr)
            total += t.untyped_storage().nbytes()
    return total


# ============================================================================ llama.cpp


class LlamaCppModel:
    """llama.cpp through llama-cpp-python, with the generate() the decode phase calls (batch 1,
    greedy, eos masked until min_new_tokens like the torch libraries' generate)."""

    def __init__(self, ckpt: str, kind: str, threads: int) -> None:
        import llama_cpp

        from _gguf import gguf_for

        cfg = json.loads(open(os.path.join(ckpt, "config.json")).read())
        self.path = gguf_for(ckpt, kind)
        self.file_bytes = os.path.getsize(self.path)
        self.config = type("Config", (), {"vocab_size": cfg["vocab_size"], "eos_token_id": cfg.get("eos_token_id", 0)})
        self.llm = llama_cpp.Llama(model_path=self.path, n_ctx=2048, n_batch=512, n_threads=threads,
                                   n_threads_batch=threads, verbose=False)
        self.device = "cpu"

    def eval(self) -> "LlamaCppModel":
        return self

    def generate(self, ids: Any, attention_mask: Any = None, max_new_tokens: int = 1, min_new_tokens: int = 0,
                 do_sample: bool = False, pad_token_id: int | None = None) -> Any:
        import llama_cpp
        import numpy as np
        import torch

        if ids.shape[0] != 1:
            raise NotImplementedError("llama-cpp-python decodes one sequence at a time")
        eos = self.config.eos_token_id
        llm = self.llm
        llm.reset()
        prompt = ids[0].tolist()
        llm.eval(prompt)
        out: list[int] = []
        n_vocab = llm.n_vocab()
        for i in range(max_new_tokens):
            # (V,) of the last position. llama-cpp-python ≥ 0.3 no longer copies logits into
            # ``llm.scores`` unless logits_all=True (which would compute every prompt position's):
            # read the context's last row instead.
            last = llama_cpp.llama_get_logits_ith(llm.ctx, -1)
            logits = np.ctypeslib.as_array(last, shape=(n_vocab,)).copy()
            if i < min_new_tokens and eos is not None:
                logits[eos] = -np.inf
            tok = int(logits.argmax())
            out.append(tok)
            if i + 1 < max_new_tokens:
                llm.eval([tok])
        return torch.tensor([prompt + out])


# ============================================================================ phases


def _generate_fn(model: Any, impl: str, ids: Any, mask: Any, n: int, *, manual: bool) -> Callable[[], Any]:
    extra = IMPLS[impl][1]
    if manual:
        return lambda: manual_greedy(model, ids, n)
    return lambda: model.generate(
        ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n, do_sample=False,
        pad_token_id=0, **extra,
    )


def manual_greedy(model: Any, ids: Any, n: int) -> Any:
    """Greedy decoding with neox's public forward and a preallocated KVCache.

    Used only while ``neox.generation.generate`` is unfinished; results are labelled
    "manual-loop". Like generate(min_new_tokens=n), the eos id never wins before token n.
    """
    import torch
    from neox.cache import KVCache

    eos = model.config.eos_token_id
    eos = [eos] if isinstance(eos, int) else list(eos or [])
    B, P = ids.shape
    with torch.no_grad():
        cache = KVCache.for_model(model.config, B, P + n, model.dtype, ids.device)
        logits = model(ids, past_key_values=cache, use_cache=True, logits_to_keep=1).logits[:, -1]
        out = [ids]
        for i in range(n):
            if eos:
                logits[:, eos] = float("-inf")
            tok = logits.argmax(-1, keepdim=True)  # (B, 1)
            out.append(tok)
            if i + 1 < n:
                logits = model(tok, past_key_values=cache, use_cache=True).logits[:, -1]
        return torch.cat(out, dim=1)


def phase_decode(model: Any, impl: str, args: Any, batch: int, timer: Timer) -> dict[str, Any]:
    import torch

    V = model.config.vocab_size
    P, n = args.prompt_len, args.new_tokens
    ids = _rand_ids((batch, P), V, args.seed + 1, args.device)
    mask = torch.ones_like(ids)
    manual = False
    # Warm-up: the full length on CUDA (compilation / CUDA graphs see the real shapes), a few
    # tokens on CPU (first-touch allocations).
    warm = n if args.device != "cpu" else min(n, 8)
    try:
        _generate_fn(model, impl, ids, mask, warm, manual=False)()
    except NotImplementedError:
        if IMPLS[impl][0] != "neox" or IMPLS[impl][1]:
            raise
        manual = True
        _generate_fn(model, impl, ids, mask, warm, manual=True)()
    first = _generate_fn(model, impl, ids, mask, 1, manual=manual)
    full = _generate_fn(model, impl, ids, mask, n, manual=manual)
    t_first: list[float] = []
    t_full: list[float] = []
    with CpuMeter() as cpu:
        for _ in range(args.inner):
            t_first.append(timer(first)[0])
            dt, out = timer(full)
            t_full.append(dt)
        while len(t_first) < 3:
            t_first.append(timer(first)[0])
    tf, tn = _median(t_first), _median(t_full)
    tokens = out[:, P:].tolist()
    if any(len(row) != n for row in tokens):
        raise RuntimeError(f"{impl} generated {[len(r) for r in tokens]} new tokens; expected {n} in every row")
    result = {
        "tok_s": batch * (n - 1) / (tn - tf) if tn > tf else None,
        "e2e_tok_s": batch * n / tn,
        "t_prefill_s": tf, "t_total_s": tn, "t_prefill_all": t_first, "t_total_all": t_full,
        "tokens": tokens, "generate": "manual-loop" if manual else "generate()",
        "cpu": cpu.as_dict(),
    }
    return result


def decode_margins(model: Any, args: Any) -> list[float]:
    """transformers' top-2 logit margin at each greedy step of the batch-1 decode (untimed).

    When another implementation's tokens diverge, a tiny margin at that step means a near-tie
    that rounding can flip; a large one means a wrong answer.
    """
    import torch

    ids = _rand_ids((1, args.prompt_len), model.config.vocab_size, args.seed + 1, args.device)
    n = args.new_tokens
    res = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                         do_sample=False, pad_token_id=0, output_scores=True, return_dict_in_generate=True)
    margins = []
    for s in res.scores:
        top = s[0].float().topk(2).values
        margins.append(round(float(top[0] - top[1]), 6))
    return margins


def phase_prefill(model: Any, impl: str, args: Any, timer: Timer) -> dict[str, Any]:
    import torch

    L = args.prefill_len
    ids = _rand_ids((1, L), model.config.vocab_size, args.seed + 2, args.device)

    def run() -> Any:
        with torch.no_grad():
            return model(ids, use_cache=True, logits_to_keep=1).logits

    timer(run)  # warm-up
    times = []
    with CpuMeter() as cpu:
        for _ in range(max(args.inner, 3)):
            dt, logits = timer(run)
            times.append(dt)
    last = logits[0, -1].float()
    t = _median(times)
    return {
        "tok_s": L / t, "t_s": t, "t_all": times, "cpu": cpu.as_dict(),
        "check": {"argmax": int(last.argmax()), "max": float(last.max()), "logsumexp": float(last.logsumexp(-1))},
    }


def phase_train(model: Any, impl: str, args: Any, timer: Timer) -> dict[str, Any]:
    import torch

    B, T = args.train_batch, args.train_seq
    x = _rand_ids((B, T), model.config.vocab_size, args.seed + 3, args.device)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step() -> float:
        loss = model(input_ids=x, labels=x).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(loss.detach())

    _, first_loss = timer(step)  # warm-up (optimizer state allocation); same weights and data for all
    times = []
    with CpuMeter() as cpu:
        for _ in range(args.train_steps):
            times.append(timer(step)[0])
    model.eval()
    t = _median(times)
    del opt
    return {"tok_s": B * T / t, "t_s": t, "t_all": times, "cpu": cpu.as_dict(),
            "check": {"first_loss": first_loss}}


# ============================================================================ bandwidth

# Nominal (datasheet) memory bandwidth in bytes/s, by a substring of torch.cuda.get_device_name().
NOMINAL_GPU_BW = [
    ("H200", 4.8e12), ("H100 PCIe", 2.0e12), ("H100", 3.35e12), ("A100-SXM4-80GB", 2.039e12),
    ("A100 80GB PCIe", 1.935e12), ("A100", 1.555e12), ("L40S", 0.864e12), ("A10G", 0.6e12),
]


def phase_bandwidth(args: Any) -> dict[str, Any]:
    """Streaming bandwidth: matrix-vector product (read-only, what batch-1 decode does), copy and triad."""
    import torch

    dev = args.device
    cuda = dev.startswith("cuda")
    timer = Timer(dev)
    dtype = torch.float16 if cuda else torch.float32
    size = args.bw_mb * 1024 * 1024
    esize = torch.tensor([], dtype=dtype).element_size()
    cols = 8192
    rows = max(1, size // (cols * esize))
    A = torch.empty(rows, cols, dtype=dtype, device=dev).uniform_(-1, 1)
    xv = torch.empty(cols, dtype=dtype, device=dev).uniform_(-1, 1)
    y = torch.empty(rows, dtype=dtype, device=dev)
    half = A.numel() // 2
    src, dst = A.view(-1)[:half], torch.empty(half, dtype=dtype, device=dev)
    third = A.numel() // 3
    a, b, c = torch.empty(third, dtype=dtype, device=dev), A.view(-1)[:third], A.view(-1)[third:2 * third]
    reps = 20 if cuda else 7
    best: dict[str, float] = {}
    with CpuMeter() as cpu:
        for name, fn, nbytes in [
            ("mv", lambda: torch.mv(A, xv, out=y), A.numel() * esize),
            ("copy", lambda: dst.copy_(src), 2 * half * esize),
            ("triad", lambda: torch.add(b, c, alpha=2.0, out=a), 3 * third * esize),
        ]:
            fn()
            t = min(timer(fn)[0] for _ in range(reps))
            best[name] = nbytes / t
    out: dict[str, Any] = {"bytes_per_s": best, "buffer_mb": args.bw_mb, "cpu": cpu.as_dict()}
    if cuda:
        name = torch.cuda.get_device_name()
        out["device_name"] = name
        out["nominal_bytes_per_s"] = next((bw for key, bw in NOMINAL_GPU_BW if key in name), None)
    return out


# ============================================================================ worker entry point


def _cuda_peak_reset(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _cuda_peak_mb(device: str) -> float | None:
    if device.startswith("cuda"):
        import torch

        return torch.cuda.max_memory_allocated() / 2**20
    return None


def run_worker(args: Any) -> dict[str, Any]:
    t_start = time.perf_counter()
    rss_start = rss_mb()
    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    phases = [p for p in args.phase.split(",") if p]
    result: dict[str, Any] = {"impl": args.worker, "phases": {}, "threads": torch.get_num_threads()}

    if args.worker == "machine":
        for phase in phases:
            if phase != "bandwidth":
                raise ValueError(f"the machine worker runs only the bandwidth phase, not {phase!r}")
            result["phases"]["bandwidth"] = phase_bandwidth(args)
        return result

    if args.worker not in IMPLS:
        raise ValueError(f"unknown implementation {args.worker!r}; choose from {', '.join(IMPLS)}")
    library = IMPLS[args.worker][0]
    with CpuMeter() as imp_cpu:
        cls = import_library(library)
        if args.device.startswith("cuda"):
            torch.cuda.init()
    rss_import = rss_mb()
    reset_peak_rss()
    _cuda_peak_reset(args.device)
    with CpuMeter() as cpu:
        model, how = load_model(cls, args.ckpt, args.dtype, args.device, args.worker)
    peak_returned = peak_rss_mb() - rss_import
    # Both libraries may hand back weights that are views of the memory-mapped file, read from
    # disk only when first used; touch every page so the load numbers include that work.
    with CpuMeter() as touch_cpu:
        touch_weights(model)
        Timer(args.device).sync()
    result["load"] = {
        "seconds": cpu.wall, "cpu": cpu.as_dict(), "how": how,
        "touch_seconds": touch_cpu.wall, "touch_cpu": touch_cpu.as_dict(),
        "peak_when_returned_mb": peak_returned,
        "peak_over_import_mb": peak_rss_mb() - rss_import,
        "peak_rss_mb": peak_rss_mb(), "rss_after_mb": rss_mb(),
        "peak_gpu_mb": _cuda_peak_mb(args.device),
        "model_bytes": model_bytes(model),
    }
    # What quantising while loading must stay under: the loaded model plus one full-precision tensor.
    cfg = json.loads(open(os.path.join(args.ckpt, "config.json")).read())
    import _randckpt

    largest = max(_numel(s) for _, s in _randckpt.tensor_shapes(cfg)) * _randckpt.DTYPE_BYTES[args.dtype]
    result["load"]["peak_vs_model_plus_tensor"] = (
        result["load"]["peak_over_import_mb"] * 2**20 / (result["load"]["model_bytes"] + largest))
    result["import"] = {"seconds": imp_cpu.wall, "cpu": imp_cpu.as_dict(), "rss_start_mb": rss_start,
                        "rss_after_import_mb": rss_import}
    result["versions"] = {"torch": torch.__version__, library: sys.modules[library].__dict__.get("__version__")}
    if args.device.startswith("cuda"):
        result["device_name"] = torch.cuda.get_device_name()
    timer = Timer(args.device)
    for phase in phases:
        gc.collect()
        _cuda_peak_reset(args.device)
        reset_peak_rss()
        if phase.startswith("decode-b"):
            out = phase_decode(model, args.worker, args, int(phase[len("decode-b"):]), timer)
        elif phase == "prefill":
            out = phase_prefill(model, args.worker, args, timer)
        elif phase == "train":
            out = phase_train(model, args.worker, args, timer)
        else:
            raise ValueError(f"unknown phase {phase!r}; use decode-bN, prefill, train")
        out["peak_rss_mb"] = peak_rss_mb()
        out["peak_over_import_mb"] = out["peak_rss_mb"] - rss_import
        out["peak_gpu_mb"] = _cuda_peak_mb(args.device)
        if phase == "decode-b1" and args.worker == "transformers" and args.margins:
            out["margins"] = decode_margins(model, args)  # after the peak is read: it is not part of the phase
        result["phases"][phase] = out
    result["worker_seconds"] = time.perf_counter() - t_start
    return result


def _numel(shape: Any) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def worker_main(args: Any) -> int:
    if args.worker == "neox-base":
        base = os.environ.get("NEOX_BASE")
        if not base or not os.path.isdir(os.path.join(base, "neox")):
            raise SystemExit("neox-base: set NEOX_BASE to a folder holding another checkout's neox/ package")
        sys.path.insert(0, base)  # before the first `import neox` of this worker
    result = run_worker(args)
    sys.stdout.write(RESULT_PREFIX + json.dumps(result) + "\n")
    sys.stdout.flush()
    return 0
