#!/usr/bin/env python3
"""neox against transformers on a random checkpoint of a real model's shape, in one command.

    python3 benchmarks/bench.py --preset pythia-160m --reps 3 --json benchmarks/results/pythia-160m.json

The parent process writes the random checkpoint once, measures the machine's memory bandwidth,
then for each repetition runs every (implementation, phase) in a fresh worker process,
interleaved and in a rotating order, so both libraries see the same machine at nearly the same
time. Each worker prints one JSON line; the parent takes medians (of the runs no other process
disturbed, when there are enough), prints a table with ratios and correctness checks, and
writes everything to JSON. See benchmarks/README.md for what each number means.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

import _randckpt  # noqa: E402  (both import nothing heavy at module level)
import _workloads  # noqa: E402

DEFAULT_IMPLS = "neox,transformers,transformers-static"
DEFAULT_PHASES = "decode-b1,decode-b8,prefill,train"
SHORT = {"neox": "neox", "neox-base": "neox-base", "neox-static": "neox-st", "neox-compiled": "neox-c", "transformers": "tf",
         "transformers-static": "tf-st", "neox-int8": "n-int8", "neox-int4": "n-int4", "neox-bf16": "n-bf16",
         "neox-int8-compiled": "n-int8-c", "neox-int4-compiled": "n-int4-c", "transformers-bf16": "tf-bf16",
         "transformers-torchao-int8": "tf-ao-int8", "llamacpp-f32": "lc-f32", "llamacpp-f16": "lc-f16",
         "llamacpp-q8_0": "lc-q8_0", "llamacpp-q4_0": "lc-q4_0", "neox-autotune": "neox-at",
         "neox-int8-autotune": "n-int8-at", "neox-int4-autotune": "n-int4-at", "neox-bf16-autotune": "n-bf16-at"}
# The original implementations: with only these, the table keeps its every-neox-by-every-tf ratios.
CLASSIC = {"neox", "neox-base", "neox-static", "neox-compiled", "transformers", "transformers-static"}
# Beyond those, each neox mode is divided by transformers fp32 and by its peers of the same format.
PEERS = {"neox": ["llamacpp-f32"], "neox-compiled": ["llamacpp-f32"], "neox-bf16": ["transformers-bf16", "llamacpp-f16"],
         "neox-int8": ["transformers-torchao-int8", "llamacpp-q8_0"], "neox-int8-compiled": ["llamacpp-q8_0"],
         "neox-int4": ["llamacpp-q4_0"], "neox-int4-compiled": ["llamacpp-q4_0"],
         "neox-autotune": ["llamacpp-f32"], "neox-int8-autotune": ["transformers-torchao-int8", "llamacpp-q8_0"],
         "neox-int4-autotune": ["llamacpp-q4_0"], "neox-bf16-autotune": ["transformers-bf16", "llamacpp-f16"]}
# Targets from the issue: neox ÷ transformers (default generate) at batch-1 decode, per preset.
B1_RATIO_TARGET = {"pythia-70m": 1.8, "pythia-160m": 1.4}
ROOFLINE_TARGET = 0.85


# ============================================================================ command line


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", action="append", default=None,
                   help=f"model shape, repeatable or comma-separated: {', '.join(_randckpt.PRESETS)}")
    p.add_argument("--reps", type=int, default=3, help="fresh-process repetitions per (impl, phase)")
    p.add_argument("--impls", default=DEFAULT_IMPLS, help=f"comma list of {', '.join(_workloads.IMPLS)}")
    p.add_argument("--phases", default=DEFAULT_PHASES, help="comma list of decode-bN, prefill, train")
    p.add_argument("--new-tokens", type=int, default=32, help="tokens generated per decode run")
    p.add_argument("--prompt-len", type=int, default=32, help="prompt length of the decode runs")
    p.add_argument("--prefill-len", type=int, default=512)
    p.add_argument("--train-batch", type=int, default=4)
    p.add_argument("--train-seq", type=int, default=256)
    p.add_argument("--train-steps", type=int, default=2, help="timed steps after one warm-up step")
    p.add_argument("--inner", type=int, default=2, help="timed runs inside one worker (median)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--dtype", default=None, choices=["float32", "float16", "bfloat16"],
                   help="default float32 on cpu, float16 on cuda")
    p.add_argument("--threads", type=int, default=2, help="torch threads in every worker")
    p.add_argument("--json", default=None, help="write all results here")
    p.add_argument("--ckpt-dir", default=str(HERE / "results" / "checkpoints"),
                   help="where random checkpoints are written and reused")
    p.add_argument("--busy-threshold", type=float, default=0.25,
                   help="flag a measurement BUSY when other processes used more than this many cores")
    p.add_argument("--group-phases", choices=["none", "decode", "all"], default=None,
                   help="phases that share one worker process: none (each phase alone), decode (the decode "
                        "phases together; the default on cpu) or all (the default on cuda, where loading 40 GB "
                        "per phase would dominate). Peak RSS is reset per phase with /proc/self/clear_refs")
    p.add_argument("--bw-mb", type=int, default=None, help="bandwidth buffer size (default 512 cpu, 4096 cuda)")
    p.add_argument("--margins", action=argparse.BooleanOptionalAction, default=True,
                   help="record transformers' top-2 logit margins at batch 1 (one extra untimed generate)")
    p.add_argument("--worker-timeout", type=float, default=1800)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--summarize", nargs="+", metavar="JSON", help="print one table from earlier --json files")
    # Internal: the parent starts itself with these.
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--phase", help=argparse.SUPPRESS)
    p.add_argument("--ckpt", help=argparse.SUPPRESS)
    p.add_argument("--build", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--build-gguf", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    cuda = args.device.startswith("cuda")
    if args.dtype is None:
        args.dtype = "float16" if cuda else "float32"
    if args.bw_mb is None:
        args.bw_mb = 4096 if cuda else 512
    if args.group_phases is None:
        args.group_phases = "all" if cuda else "decode"
    presets = []
    for item in args.preset or []:
        presets += [x for x in item.split(",") if x]
    args.presets = presets
    return args


# ============================================================================ processes


def _child_env(args: argparse.Namespace) -> dict[str, str]:
    env = dict(os.environ)
    for key in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[key] = str(args.threads)
    env.update({"TOKENIZERS_PARALLELISM": "false", "TRANSFORMERS_VERBOSITY": "error",
                "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"})
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [x for x in env.get("PYTHONPATH", "").split(os.pathsep) if x])
    return env


def _common_flags(args: argparse.Namespace) -> list[str]:
    return [
        "--device", args.device, "--dtype", args.dtype, "--threads", str(args.threads), "--seed", str(args.seed),
        "--new-tokens", str(args.new_tokens), "--prompt-len", str(args.prompt_len),
        "--prefill-len", str(args.prefill_len), "--train-batch", str(args.train_batch),
        "--train-seq", str(args.train_seq), "--train-steps", str(args.train_steps), "--inner", str(args.inner),
        "--bw-mb", str(args.bw_mb), "--margins" if args.margins else "--no-margins",
    ]


def run_child(cmd: list[str], args: argparse.Namespace) -> dict[str, Any]:
    t = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=_child_env(args), timeout=args.worker_timeout)
    except subprocess.TimeoutExpired as e:
        return {"error": f"timed out after {args.worker_timeout:.0f} s", "stderr": str(e.stderr or "")[-3000:]}
    for line in proc.stdout.splitlines():
        if line.startswith(_workloads.RESULT_PREFIX):
            out = json.loads(line[len(_workloads.RESULT_PREFIX):])
            out["process_seconds"] = time.perf_counter() - t
            return out
    tail = (proc.stderr or "").strip().splitlines()[-25:]
    return {"error": f"worker exited {proc.returncode} without a result", "stderr": "\n".join(tail)}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ============================================================================ one preset


def phases_for(impl: str, phases: list[str]) -> list[str]:
    # The -static variants differ only in generate(); their other phases would repeat the default's.
    return _workloads.allowed_phases(impl, phases)


def phase_groups(phases: list[str], mode: str) -> list[list[str]]:
    """Split the phases into the groups that run in one worker each, in order."""
    if mode == "all":
        return [list(phases)]
    if mode == "none":
        return [[ph] for ph in phases]
    decode = [ph for ph in phases if ph.startswith("decode-b")]
    groups = [decode] if decode else []
    return groups + [[ph] for ph in phases if not ph.startswith("decode-b")]


def run_preset(preset: str, args: argparse.Namespace) -> dict[str, Any]:
    impls = [x for x in args.impls.split(",") if x]
    phases = [x for x in args.phases.split(",") if x]
    for impl in impls:
        if impl not in _workloads.IMPLS:
            raise SystemExit(f"--impls: unknown implementation {impl!r}; choose from {', '.join(_workloads.IMPLS)}")
    for phase in phases:
        if not (phase in ("prefill", "train") or (phase.startswith("decode-b") and phase[8:].isdigit())):
            raise SystemExit(f"--phases: unknown phase {phase!r}; use decode-bN (e.g. decode-b1), prefill, train")
    cfg = _randckpt.preset_config(preset)
    ckpt = Path(args.ckpt_dir) / _randckpt.checkpoint_key(preset, args.dtype, args.device, args.seed)
    log(f"[{preset}] random checkpoint {ckpt} ...")
    build = run_child([sys.executable, str(HERE / "bench.py"), "--build", "--preset", preset, "--ckpt", str(ckpt),
                       "--device", args.device, "--dtype", args.dtype, "--seed", str(args.seed)], args)
    if "error" in build:
        raise SystemExit(f"building the {preset} checkpoint failed: {build['error']}\n{build.get('stderr', '')}")
    log(f"[{preset}] checkpoint {'reused' if build['cached'] else 'written in %.1f s' % build['seconds']}")
    for impl in [i for i in impls if i.startswith("llamacpp-")]:  # GGUF conversion, untimed, once
        made = run_child([sys.executable, str(HERE / "bench.py"), "--build-gguf", impl[len("llamacpp-"):],
                          "--ckpt", str(ckpt)], args)
        if "error" in made:
            raise SystemExit(f"making the {impl} GGUF failed: {made['error']}\n{made.get('stderr', '')}")

    samples: list[dict[str, Any]] = []
    t_preset = time.perf_counter()
    for rep in range(args.reps):
        order = impls[rep % len(impls):] + impls[: rep % len(impls)]
        plan: list[tuple[str, list[str]]] = [("machine", ["bandwidth"])]
        for group in phase_groups(phases, args.group_phases):
            for impl in order:
                mine = [ph for ph in group if ph in phases_for(impl, phases)]
                if mine:
                    plan.append((impl, mine))
        for impl, group in plan:
            cmd = [sys.executable, str(HERE / "bench.py"), "--worker", impl, "--phase", ",".join(group),
                   "--ckpt", str(ckpt)] + _common_flags(args)
            res = run_child(cmd, args)
            res.update(rep=rep, impl=impl, requested=group)
            samples.append(res)
            log(f"[{preset}] rep {rep + 1}/{args.reps} {impl:<20} {','.join(group):<28} " + _brief(res, args))
    report = summarize(preset, cfg, build, samples, args, impls, phases)
    report["seconds"] = time.perf_counter() - t_preset
    return report


def _brief(res: dict[str, Any], args: argparse.Namespace) -> str:
    if "error" in res:
        return "ERROR: " + res["error"] + ("\n" + res["stderr"] if res.get("stderr") else "")
    bits = []
    for ph, out in res.get("phases", {}).items():
        if ph == "bandwidth":
            bits.append("mv %.1f GB/s" % (out["bytes_per_s"]["mv"] / 1e9))
        elif out.get("tok_s") is not None:
            bits.append(f"{ph} {out['tok_s']:.1f} tok/s")
        oc = (out.get("cpu") or {}).get("other_cores")
        if oc is not None and oc > args.busy_threshold:
            bits.append(f"BUSY({oc:.2f} cores)")
    return f"{res.get('process_seconds', 0):.1f}s  " + "  ".join(bits)


# ============================================================================ aggregation


def _busy(cpu: dict[str, Any] | None, threshold: float) -> bool:
    oc = (cpu or {}).get("other_cores")
    return oc is not None and oc > threshold


def robust_median(values: list[tuple[float | None, bool]]) -> dict[str, Any] | None:
    """Median of the clean (not BUSY) values when at least min(2, n) are clean, else of all."""
    vals = [(v, b) for v, b in values if v is not None]
    if not vals:
        return None
    clean = [v for v, b in vals if not b]
    use_clean = len(clean) >= min(2, len(vals))
    used = clean if use_clean else [v for v, _ in vals]
    return {
        "median": statistics.median(used), "n": len(vals), "n_clean": len(clean),
        "busy_included": (not use_clean) and len(clean) < len(vals),
        "values": [v for v, _ in vals], "busy": [b for _, b in vals],
        "spread": (max(used) - min(used)) / statistics.median(used) if statistics.median(used) else None,
    }


def summarize(preset: str, cfg: dict[str, Any], build: dict[str, Any], samples: list[dict[str, Any]],
              args: argparse.Namespace, impls: list[str], phases: list[str]) -> dict[str, Any]:
    thr = args.busy_threshold
    metrics: dict[str, dict[str, list[tuple[float | None, bool]]]] = {}

    def add(impl: str, key: str, value: Any, busy: bool) -> None:
        metrics.setdefault(key, {}).setdefault(impl, []).append((value, busy))

    busy_list, errors = [], []
    generate_kind: dict[str, set[str]] = {}
    versions: dict[str, Any] = {}
    for s in samples:
        impl = s["impl"]
        if "error" in s:
            errors.append({"impl": impl, "rep": s["rep"], "phases": s["requested"], "error": s["error"],
                           "stderr": s.get("stderr", "")})
            continue
        versions.update(s.get("versions", {}))
        if "load" in s:
            ld = s["load"]
            b = _busy(ld["cpu"], thr)
            add(impl, "load.seconds", ld["seconds"], b)
            add(impl, "load.touch_seconds", ld["touch_seconds"], b or _busy(ld.get("touch_cpu"), thr))
            add(impl, "load.peak_when_returned_mb", ld["peak_when_returned_mb"], b)
            add(impl, "load.peak_over_import_mb", ld["peak_over_import_mb"], b)
            add(impl, "load.peak_gpu_mb", ld.get("peak_gpu_mb"), b)
            if ld.get("peak_vs_model_plus_tensor") is not None:
                add(impl, "load.peak_vs_model_plus_tensor", ld["peak_vs_model_plus_tensor"], b)
                add(impl, "load.model_mb", ld["model_bytes"] / 2**20, False)
            add(impl, "import.seconds", s["import"]["seconds"], _busy(s["import"].get("cpu"), thr))
            add(impl, "import.rss_mb", s["import"]["rss_after_import_mb"], False)
            if b:
                busy_list.append((impl, s["rep"], "load", ld["cpu"]["other_cores"]))
        for ph, out in s["phases"].items():
            b = _busy(out.get("cpu"), thr)
            if b:
                busy_list.append((impl, s["rep"], ph, out["cpu"]["other_cores"]))
            if ph == "bandwidth":
                for k, v in out["bytes_per_s"].items():
                    add("machine", f"bw.{k}", v, b)
                if out.get("nominal_bytes_per_s"):
                    add("machine", "bw.nominal", out["nominal_bytes_per_s"], False)
                continue
            add(impl, f"{ph}.tok_s", out.get("tok_s"), b)
            add(impl, f"{ph}.peak_over_import_mb", out.get("peak_over_import_mb"), b)
            add(impl, f"{ph}.peak_gpu_mb", out.get("peak_gpu_mb"), b)
            if "generate" in out:
                generate_kind.setdefault(impl, set()).add(out["generate"])
    medians = {key: {impl: robust_median(v) for impl, v in per.items()} for key, per in metrics.items()}

    sizes = _randckpt.model_sizes(cfg, args.dtype)
    kv_positions = args.prompt_len + args.new_tokens / 2  # mean cached length over the decode steps
    b1_bytes = sizes["decode_weight_bytes"] + sizes["kv_bytes_per_position"] * kv_positions
    bw = (medians.get("bw.mv") or {}).get("machine")
    nominal = (medians.get("bw.nominal") or {}).get("machine")
    roofline = {
        "bytes_per_token_b1": b1_bytes,
        "counted": "every parameter except embed_in (a step reads only B of its rows), plus keys/values of "
                   f"the mean cached length ({kv_positions:g} positions)",
        "measured_bw": bw["median"] if bw else None,
        "tok_s": bw["median"] / b1_bytes if bw else None,
        "nominal_bw": nominal["median"] if nominal else None,
        "nominal_tok_s": nominal["median"] / b1_bytes if nominal else None,
    }
    checks = correctness_checks(samples, impls, phases, args)
    return {
        "preset": preset, "config": cfg, "sizes": sizes, "checkpoint": build, "roofline": roofline,
        "settings": {k: getattr(args, k) for k in ("device", "dtype", "threads", "reps", "new_tokens", "prompt_len",
                                                    "prefill_len", "train_batch", "train_seq", "train_steps",
                                                    "inner", "busy_threshold", "group_phases", "bw_mb", "seed")},
        "impls": impls, "phases": phases, "medians": medians, "checks": checks, "errors": errors,
        "busy": [{"impl": i, "rep": r, "what": w, "other_cores": oc} for i, r, w, oc in busy_list],
        "n_measurements": sum(("load" in s) + len(s["phases"]) for s in samples if "error" not in s),
        "generate_kind": {k: sorted(v) for k, v in generate_kind.items()},
        "versions": versions, "samples": samples,
    }


def correctness_checks(samples: list[dict[str, Any]], impls: list[str], phases: list[str],
                       args: argparse.Namespace) -> list[dict[str, Any]]:
    """Greedy tokens, prefill logits and the first training loss of every impl against transformers."""
    half = args.dtype != "float32"
    tie = 3e-2 if half else 1e-3     # a top-2 margin below this is a near-tie: rounding can flip it
    rtol = 2e-2 if half else 1e-4
    by: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for s in samples:
        if "error" in s:
            continue
        for ph, out in s["phases"].items():
            by.setdefault((s["impl"], ph), []).append(out)
    ref_impl = "transformers" if "transformers" in impls else next((i for i in impls if i.startswith("transformers")), None)
    checks: list[dict[str, Any]] = []
    for ph in phases:
        for impl in impls:
            outs = by.get((impl, ph), [])
            if not outs:
                continue
            if ph.startswith("decode-b"):
                toks = [o["tokens"] for o in outs]
                if any(t != toks[0] for t in toks[1:]):
                    checks.append({"phase": ph, "impl": impl, "ok": False,
                                   "text": f"{ph}: {impl} gave different tokens in different runs (non-deterministic)"})
            if impl == ref_impl or ref_impl is None or not by.get((ref_impl, ph)):
                continue
            ref = by[(ref_impl, ph)][0]
            mine = outs[0]
            if impl in _workloads.LOSSY:
                checks.append(_agreement(ph, impl, ref_impl, mine, ref))
                continue
            if ph.startswith("decode-b"):
                checks.append(_compare_tokens(ph, impl, ref_impl, mine, ref, by.get((ref_impl, "decode-b1")), tie))
            elif ph == "prefill":
                a, b = mine["check"], ref["check"]
                ok = a["argmax"] == b["argmax"] and all(
                    abs(a[k] - b[k]) <= rtol * max(1.0, abs(b[k])) for k in ("max", "logsumexp"))
                checks.append({"phase": ph, "impl": impl, "ok": ok, "text":
                               f"prefill last-token logits: {impl} vs {ref_impl}: argmax {a['argmax']} vs {b['argmax']}, "
                               f"max {a['max']:.5g} vs {b['max']:.5g}, logsumexp {a['logsumexp']:.6g} vs {b['logsumexp']:.6g}"
                               + ("" if ok else "  MISMATCH")})
            elif ph == "train":
                a, b = mine["check"]["first_loss"], ref["check"]["first_loss"]
                ok = abs(a - b) <= rtol * max(1.0, abs(b))
                checks.append({"phase": ph, "impl": impl, "ok": ok, "text":
                               f"train first-step loss: {impl} {a:.6f} vs {ref_impl} {b:.6f}" + ("" if ok else "  MISMATCH")})
    return checks


def _agreement(ph: str, impl: str, ref_impl: str, mine: dict[str, Any], ref: dict[str, Any]) -> dict[str, Any]:
    """For a lossy mode (quantised, bf16, another library): how close, never a mismatch."""
    if ph.startswith("decode-b"):
        a, b = mine["tokens"], ref["tokens"]
        same = sum(x == y for ra, rb in zip(a, b) for x, y in zip(ra, rb))
        total = sum(len(r) for r in b)
        prefix = [next((j for j, (x, y) in enumerate(zip(ra, rb)) if x != y), len(rb)) for ra, rb in zip(a, b)]
        text = (f"{ph} greedy tokens ({impl}, lossy, informational): {same}/{total} equal to {ref_impl}'s, "
                f"identical prefix per row {prefix}")
    elif ph == "prefill":
        x, y = mine["check"], ref["check"]
        text = (f"prefill last-token logits ({impl}, lossy, informational): argmax {x['argmax']} vs {y['argmax']}, "
                f"logsumexp {x['logsumexp']:.5g} vs {y['logsumexp']:.5g}")
    else:
        text = f"{ph} ({impl}): not compared"
    return {"phase": ph, "impl": impl, "ok": True, "lossy": True, "text": text}


def _compare_tokens(ph: str, impl: str, ref_impl: str, mine: dict[str, Any], ref: dict[str, Any],
                    ref_b1: list[dict[str, Any]] | None, tie: float) -> dict[str, Any]:
    a, b = mine["tokens"], ref["tokens"]
    shape = f"{len(b)}×{len(b[0]) if b else 0}"
    if a == b:
        return {"phase": ph, "impl": impl, "ok": True, "text": f"{ph} greedy tokens: {impl} = {ref_impl} ({shape}) ✓"}
    rows_equal = sum(x == y for x, y in zip(a, b))
    row = next(i for i, (x, y) in enumerate(zip(a, b)) if x != y)
    pos = next((j for j, (x, y) in enumerate(zip(a[row], b[row])) if x != y), min(len(a[row]), len(b[row])))
    got = a[row][pos] if pos < len(a[row]) else None
    want = b[row][pos] if pos < len(b[row]) else None
    text = (f"{ph} greedy tokens: {impl} ≠ {ref_impl}: {rows_equal}/{len(b)} rows equal; row {row} differs from "
            f"new token {pos} ({impl} {got} vs {ref_impl} {want})")
    near_tie = False
    margins = (ref_b1 or [{}])[0].get("margins") if ph == "decode-b1" else None
    if margins and pos < len(margins):
        near_tie = margins[pos] < tie
        text += f"; {ref_impl}'s top-2 logit margin there is {margins[pos]:.3g}"
        text += " (a near-tie: rounding can flip it)" if near_tie else " (not a tie: WRONG ANSWER)"
    return {"phase": ph, "impl": impl, "ok": False, "near_tie": near_tie,
            "text": ("DIVERGES (near-tie) " if near_tie else "MISMATCH ") + text}


# ============================================================================ report


def _fmt(v: float | None, kind: str) -> str:
    if v is None:
        return "-"
    if kind == "pct":
        return f"{100 * v:.0f}%"
    if kind == "s":
        return f"{v:.2f}"
    if kind == "mb":
        return f"{v:.0f}"
    if kind == "x":
        return f"{v:.2f}"
    return f"{v:.1f}" if abs(v) < 1000 else f"{v:.0f}"


def table_rows(rep: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows of the report: label, one cell per impl, ratios and target check."""
    med, impls, preset = rep["medians"], rep["impls"], rep["preset"]
    cuda = rep["settings"]["device"].startswith("cuda")
    roof = rep["roofline"]
    weight_mb = rep["sizes"]["weight_bytes"] / 2**20
    rows: list[dict[str, Any]] = []

    def cell(key: str, impl: str) -> dict[str, Any] | None:
        return (med.get(key) or {}).get(impl)

    def row(label: str, key: str, kind: str, higher: bool, ratio_target: float | None = None,
            scale: float = 1.0, abs_target: tuple[float, str] | None = None) -> None:
        cells = {}
        for impl in impls:
            c = cell(key, impl)
            if c is not None:
                cells[impl] = {"v": c["median"] * scale, "busy": c["busy_included"], "n": c["n"], "n_clean": c["n_clean"]}
        if not cells:
            return
        rows.append({"label": label, "key": key, "kind": kind, "higher": higher, "cells": cells,
                     "ratio_target": ratio_target, "abs_target": abs_target})

    decode_phases = [p for p in rep["phases"] if p.startswith("decode-b")]
    for ph in decode_phases:
        bsz = int(ph[8:])
        target = B1_RATIO_TARGET.get(preset) if bsz == 1 else (1.5 if bsz == 8 else None)
        row(f"decode b{bsz} tok/s", f"{ph}.tok_s", "tok", True, target)
        if bsz == 1 and roof["tok_s"]:
            row("  % of bw roofline", f"{ph}.tok_s", "pct", True, None, 1 / roof["tok_s"],
                abs_target=(ROOFLINE_TARGET, "≥85%") if not cuda else None)
            for c in list(rows[-1]["cells"]):  # the roofline counts --dtype weights: not for other formats
                if c in _workloads.LOSSY:
                    del rows[-1]["cells"][c]
        if bsz == 1 and roof.get("nominal_tok_s"):
            row("  % of nominal HBM roofline", f"{ph}.tok_s", "pct", True, None, 1 / roof["nominal_tok_s"],
                abs_target=(ROOFLINE_TARGET, "≥85%"))
    if "prefill" in rep["phases"]:
        row(f"prefill tok/s (1×{rep['settings']['prefill_len']})", "prefill.tok_s", "tok", True, 1.1)
    if "train" in rep["phases"]:
        s = rep["settings"]
        row(f"train tok/s ({s['train_batch']}×{s['train_seq']}, AdamW)", "train.tok_s", "tok", True, 1.1)
    row("import s (not in load s)", "import.seconds", "s", False, None)
    row("RSS after import MB", "import.rss_mb", "mb", False, None)
    row("load s (from_pretrained)", "load.seconds", "s", False, 1.0)
    row("  then reading every weight s", "load.touch_seconds", "s", False, None)
    row("load peak RSS MB, at return", "load.peak_when_returned_mb", "mb", False, None)
    row("load peak RSS MB, weights read", "load.peak_over_import_mb", "mb", False, None)
    row("  ÷ weight bytes", "load.peak_over_import_mb", "x", False, None, 1 / weight_mb, abs_target=(1.15, "≤1.15"))
    if any(i in _workloads.LOSSY for i in impls):
        row("  ÷ (loaded model + 1 tensor)", "load.peak_vs_model_plus_tensor", "x", False, None)
        row("model MB once loaded", "load.model_mb", "mb", False, None)
    if cuda:
        row("load peak GPU MB", "load.peak_gpu_mb", "mb", False, None)
    for ph in rep["phases"]:
        mem_target = 1.0 if ph in ("prefill", "train") else None
        row(f"peak RSS MB {ph}", f"{ph}.peak_over_import_mb", "mb", False, mem_target)
        if cuda:
            row(f"peak GPU MB {ph}", f"{ph}.peak_gpu_mb", "mb", False, mem_target)
    return rows


def ratio_pairs(impls: list[str]) -> list[tuple[str, str]]:
    if set(impls) <= CLASSIC:
        return [(a, b) for a in impls if a.startswith("neox") for b in impls if b.startswith("transformers")]
    pairs = [(a, "transformers") for a in impls if a.startswith("neox") and "transformers" in impls]
    return pairs + [(a, b) for a in impls for b in PEERS.get(a, []) if b in impls]


def render(reports: list[dict[str, Any]]) -> str:
    """One text table for one or more presets, followed by the notes it needs."""
    multi = len(reports) > 1
    impls: list[str] = []
    for r in reports:
        impls += [i for i in r["impls"] if i not in impls]
    pairs = ratio_pairs(impls)
    header = (["preset"] if multi else []) + ["metric"] + [SHORT.get(i, i) for i in impls] + \
        [f"{SHORT.get(a, a)}/{SHORT.get(b, b)}" for a, b in pairs] + ["target (neox vs tf)"]
    lines: list[list[str]] = []
    notes: list[str] = []
    any_busy = False
    for r in reports:
        cuda = r["settings"]["device"].startswith("cuda")
        mismatch = {c["phase"] for c in r["checks"] if not c["ok"] and not c.get("near_tie")}
        for row in table_rows(r):
            cells = []
            for impl in impls:
                c = row["cells"].get(impl)
                if c is None:
                    cells.append("")
                    continue
                any_busy |= c["busy"]
                cells.append(_fmt(c["v"], row["kind"]) + ("*" if c["busy"] else ""))
            ratios = []
            for a, b in pairs:
                ca, cb = row["cells"].get(a), row["cells"].get(b)
                ok = ca and cb and ca["v"] and cb["v"] and row["kind"] not in ("pct", "x")
                ratios.append(f"{ca['v'] / cb['v']:.2f}x" if ok else "")
            target = ""
            n, t = row["cells"].get("neox"), row["cells"].get("transformers")
            if row["ratio_target"] is not None and n and t and n["v"] and t["v"]:
                ratio = n["v"] / t["v"]
                good = ratio >= row["ratio_target"] if row["higher"] else ratio <= row["ratio_target"]
                target = f"{'≥' if row['higher'] else '≤'}{row['ratio_target']:g}x {'✓' if good else '✗'}"
            elif row["abs_target"] is not None and n:
                lim, txt = row["abs_target"]
                good = n["v"] >= lim if row["higher"] else n["v"] <= lim
                target = f"{txt} {'✓' if good else '✗'}"
            phase = row["key"].split(".")[0]
            if phase in mismatch and row["kind"] == "tok":
                target = (target + "  " if target else "") + "TOKENS MISMATCH"
            lines.append(([r["preset"]] if multi else []) + [row["label"]] + cells + ratios + [target])
        if multi and r is not reports[-1]:
            lines.append([""] * len(header))
        # Notes for this preset.
        s, roof, sz = r["settings"], r["roofline"], r["sizes"]
        bw = {k[3:]: (v or {}).get("machine") for k, v in r["medians"].items() if k.startswith("bw.")}
        unit, scale = ("TB/s", 1e12) if cuda else ("GB/s", 1e9)
        bw_txt = ", ".join(f"{k} {v['median'] / scale:.2f}{'*' if v['busy_included'] else ''}"
                           for k, v in bw.items() if v and k != "nominal")
        notes.append(
            f"{r['preset']}: {sz['params'] / 1e6:.1f}M params, {sz['weight_bytes'] / 2**20:.0f} MB of {s['dtype']} weights; "
            f"{s['device']}, {s['threads']} threads, reps {s['reps']}, decode {s['prompt_len']}-token prompt + "
            f"{s['new_tokens']} new tokens.")
        if roof["tok_s"]:
            notes.append(
                f"  bandwidth ({s['bw_mb']} MB buffers, best of several) {unit}: {bw_txt} → batch-1 roofline "
                f"{roof['tok_s']:.1f} tok/s = mv bandwidth ÷ {roof['bytes_per_token_b1'] / 2**20:.0f} MB read per token "
                f"({roof['counted']}).")
        if roof.get("nominal_tok_s"):
            notes.append(f"  nominal bandwidth {roof['nominal_bw'] / 1e12:.2f} TB/s → roofline {roof['nominal_tok_s']:.1f} tok/s.")
        for impl, kinds in r.get("generate_kind", {}).items():
            if "manual-loop" in kinds:
                notes.append(f"  {impl} decode used a MANUAL greedy loop over forward() + KVCache "
                             "(neox.generation.generate was not available), not generate().")
        moved = sorted({f"{x['impl']} ({x['load']['how']})" for x in r["samples"]
                        if "load" in x and x["load"].get("how", "").endswith(".to()")})
        if moved:
            notes.append("  loaded on the CPU and then moved (transformers' device_map needs the accelerate "
                         "package, not installed): " + ", ".join(moved) + "; load s includes the move.")
        for c in r["checks"]:
            notes.append(("  ✓ " if c["ok"] else "  ✗ ") + c["text"])
        nb = len(r["busy"])
        if nb:
            worst = max(b["other_cores"] for b in r["busy"])
            notes.append(f"  BUSY: {nb} of {r['n_measurements']} measurements ran while other processes used > "
                         f"{s['busy_threshold']} core (worst {worst:.2f} cores): "
                         + ", ".join(f"{b['impl']}/{b['what']}/rep{b['rep'] + 1}" for b in r["busy"][:12])
                         + (" …" if nb > 12 else "") + ". Medians use only clean runs where ≥ 2 exist.")
        else:
            notes.append(f"  no measurement was BUSY (other processes ≤ {s['busy_threshold']} core throughout).")
        for e in r["errors"]:
            notes.append(f"  ERROR {e['impl']} {','.join(e['phases'])} rep{e['rep'] + 1}: {e['error']}")
    widths = [max(len(h), *(len(l[i]) for l in lines)) if lines else len(h) for i, h in enumerate(header)]
    out = ["  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip(),
           "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.ljust(w) if i < (2 if multi else 1) else c.rjust(w) if i < len(header) - 1 else c
                      for i, (c, w) in enumerate(zip(l, widths))).rstrip() for l in lines]
    out.append("")
    out.append("Medians over fresh processes; tok/s higher is better, seconds and MB lower is better; ratios are "
               "neox ÷ transformers for every row; RSS is measured above the RSS right after imports.")
    if any_busy:
        out.append("* the median includes BUSY runs (too few clean ones): treat it as unreliable.")
    return "\n".join(out + notes)


def environment() -> dict[str, Any]:
    def git(*a: str) -> str | None:
        try:
            return subprocess.run(["git", "-C", str(REPO), *a], capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return None

    cpu = None
    try:
        cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), None)
    except OSError:
        pass
    return {"python": platform.python_version(), "platform": platform.platform(), "cpu": cpu,
            "cpus": os.cpu_count(), "neox_commit": git("rev-parse", "--short", "HEAD"),
            "neox_dirty": bool(git("status", "--porcelain", "neox")),
            "loadavg_start": os.getloadavg() if hasattr(os, "getloadavg") else None}


# ============================================================================ main


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.build:
        info = _randckpt.write_random_checkpoint(args.ckpt, args.presets[0], args.dtype, args.device, args.seed)
        print(_workloads.RESULT_PREFIX + json.dumps(info), flush=True)
        return 0
    if args.build_gguf:
        import _gguf

        print(_workloads.RESULT_PREFIX + json.dumps({"path": _gguf.gguf_for(args.ckpt, args.build_gguf)}), flush=True)
        return 0
    if args.worker:
        return _workloads.worker_main(args)
    if args.summarize:
        reports = []
        for f in args.summarize:
            reports += list(json.loads(Path(f).read_text())["presets"].values())
        print(render(reports))
        return 0
    if not args.presets:
        raise SystemExit(f"give --preset (one of {', '.join(_randckpt.PRESETS)}) or --summarize FILE.json")
    if args.reps < 1 or args.new_tokens < 2 or args.inner < 1 or args.train_steps < 1:
        raise SystemExit("--reps, --inner and --train-steps must be ≥ 1 and --new-tokens ≥ 2")
    env = environment()
    t0 = time.perf_counter()
    reports = {}
    for preset in args.presets:
        rep = run_preset(preset, args)
        rep["table"] = render([rep])
        reports[preset] = rep
        print(rep["table"] + "\n", flush=True)
    if len(reports) > 1:
        print(render(list(reports.values())), flush=True)
    env["loadavg_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    env["seconds"] = time.perf_counter() - t0
    env["command"] = " ".join(["python3", "benchmarks/bench.py"] + (sys.argv[1:] if argv is None else argv))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"meta": env, "presets": reports}, indent=1) + "\n")
        log(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
