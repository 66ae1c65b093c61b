#!/usr/bin/env python3
"""What quantisation costs in quality, per scheme, against the same model in fp32.

    python3 benchmarks/quality.py --json benchmarks/results/quality.json            # everything, ~10 min
    python3 benchmarks/quality.py --parts shipped                                    # ~1 min

Parts:
  shipped   held-out loss (nats/token) of the shipped model (neox/default_model) on its held-out
            split — the files scripts/train_default_model.py holds out, windows of its seq_len —
            in fp32 and in each scheme; twice: in full windows (prefill: CPU quantised linears
            dequantise and run the GEMM, so only the weights' rounding shows) and one token at a
            time through the KV cache, as generation runs them (every linear sees --batch rows:
            the decode kernels, with their activation rounding; the "decode" column).
  random    random-weight checkpoints of the pythia-160m and pythia-410m shapes (benchmarks/_randckpt.py):
            the logits' max error relative to their scale, top-1 agreement with fp32 over every
            position of 4 × 128 random tokens, and greedy agreement over 64 new tokens (batch 1,
            4 prompts): the share of positions where the scheme picks fp32's token, and the
            length of the identical prefix.

Timing is not measured here (see bench.py); the numbers are deterministic for a given torch.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(HERE))

import torch  # noqa: E402

import _randckpt  # noqa: E402
from neox import GPTNeoXForCausalLM  # noqa: E402

# name -> from_pretrained keyword arguments
SCHEMES: dict[str, dict[str, Any]] = {
    "fp32": {},
    "bf16 (whole model)": {"dtype": torch.bfloat16},
    "bf16 linears": {"quantization": "bf16"},
    "int8": {"quantization": "int8"},
    "int8 head-fp32": {"quantization": {"quant_method": "neox", "scheme": "int8", "include_head": False}},
    "int4 g32": {"quantization": {"quant_method": "neox", "scheme": "int4", "group_size": 32}},
    "int4 g64": {"quantization": {"quant_method": "neox", "scheme": "int4", "group_size": 64}},
    "int4 g128": {"quantization": {"quant_method": "neox", "scheme": "int4", "group_size": 128}},
    "int4 g128 head-fp32": {"quantization": {"quant_method": "neox", "scheme": "int4", "group_size": 128,
                                              "include_head": False}},
}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _script() -> Any:
    spec = importlib.util.spec_from_file_location("train_default_model", REPO / "scripts" / "train_default_model.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def shipped(schemes: list[str], batch: int, max_windows: int) -> dict[str, Any]:
    folder = REPO / "neox" / "default_model"
    script = _script()
    record = json.loads((folder / "training_log.json").read_text())
    seq_len = int(record["args"]["seq_len"])
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    _, heldout = script.split_files(script.corpus_files())
    rows = script.windows(script.encode_stream(tok, [script.read_text(f) for f in heldout]), seq_len)
    total = rows.shape[0]
    if max_windows:
        rows = script.subset(rows, max_windows)  # spread evenly; every scheme scores the same windows
    log(f"[shipped] {rows.shape[0]} of {total} held-out windows of {seq_len} tokens")
    out: dict[str, Any] = {"windows": rows.shape[0], "windows_total": total, "seq_len": seq_len, "loss": {}}
    for name in schemes:
        kwargs = dict(SCHEMES[name])
        kwargs.setdefault("dtype", torch.float32)  # the shipped file is fp16; fp32 is the reference
        model = GPTNeoXForCausalLM.from_pretrained(folder, **kwargs)
        t = time.perf_counter()
        out["loss"][name] = script.evaluate(model, rows, batch)
        out.setdefault("decode_loss", {})[name] = decode_loss(model, rows, batch)
        log(f"[shipped] {name:<22} held-out loss {out['loss'][name]:.4f}, one token at a time "
            f"{out['decode_loss'][name]:.4f} ({time.perf_counter() - t:.0f} s)")
    return out


def decode_loss(model: Any, rows: torch.Tensor, batch: int) -> float:
    """Mean next-token cross-entropy of windows ``rows`` (N, T), fed one position at a time through
    the KV cache: the path generate() takes, with (batch, 1) inputs at every linear."""
    total, count = torch.zeros((), dtype=torch.float64), 0
    with torch.no_grad():
        for i in range(0, rows.shape[0], batch):
            b = rows[i : i + batch]
            past = None
            for t in range(b.shape[1] - 1):
                out = model(b[:, t : t + 1], past_key_values=past, use_cache=True)
                past = out.past_key_values
                total += torch.nn.functional.cross_entropy(out.logits[:, -1].float(), b[:, t + 1], reduction="sum")
                count += b.shape[0]
    return float(total) / count


def random_shape(preset: str, schemes: list[str], ckpt_dir: Path, new_tokens: int, prompts: int) -> dict[str, Any]:
    ckpt = ckpt_dir / _randckpt.checkpoint_key(preset, "float32", "cpu", 0)
    _randckpt.write_random_checkpoint(ckpt, preset, "float32", "cpu", 0)
    cfg = _randckpt.preset_config(preset)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, cfg["vocab_size"], (4, 128), generator=g)
    starts = torch.randint(1, cfg["vocab_size"], (prompts, 16), generator=g)
    ref_logits = None
    ref_tokens: list[torch.Tensor] = []
    margins: list[float] = []
    out: dict[str, Any] = {}
    for name in schemes:
        model = GPTNeoXForCausalLM.from_pretrained(ckpt, **SCHEMES[name])
        with torch.no_grad():
            logits = model(ids).logits.float()
        tokens = [model.generate(p[None], max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                                 pad_token_id=0)[0, p.numel():] for p in starts]
        if ref_logits is None:
            ref_logits, ref_tokens = logits, tokens
            top2 = logits.topk(2, dim=-1).values
            margins = (top2[..., 0] - top2[..., 1]).flatten().tolist()
            out["fp32_logit_scale"] = float(logits.abs().max())
            out["fp32_median_top2_margin"] = float(torch.tensor(margins).median())
            continue
        err = (logits - ref_logits).abs()
        same = [(a == b).float().mean().item() for a, b in zip(tokens, ref_tokens)]
        prefix = [int((a != b).nonzero()[0, 0]) if (a != b).any() else new_tokens for a, b in zip(tokens, ref_tokens)]
        out[name] = {
            "max_abs_logit_error": float(err.max()),
            "max_error_over_logit_scale": float(err.max() / ref_logits.abs().max()),
            "mean_abs_logit_error": float(err.mean()),
            "top1_agreement": float((logits.argmax(-1) == ref_logits.argmax(-1)).float().mean()),
            "greedy_agreement": sum(same) / len(same),
            "greedy_identical_prefix": prefix,
        }
        log(f"[{preset}] {name:<22} " + ", ".join(f"{k} {v if isinstance(v, list) else round(v, 4)}"
                                                  for k, v in out[name].items()))
        del model
    return out


def render(res: dict[str, Any]) -> str:
    lines = []
    if "shipped" in res:
        s = res["shipped"]
        ref = s["loss"].get("fp32")
        lines.append(f"Shipped model (neox/default_model), held-out loss over {s['windows']} of {s.get('windows_total', s['windows'])} windows of {s['seq_len']} tokens:")
        dec = s.get("decode_loss", {})
        dref = dec.get("fp32")
        lines.append(f"  {'scheme':<22} {'nats/token':>10} {'vs fp32':>9} {'decode':>10} {'vs fp32':>9}")
        for name, loss in s["loss"].items():
            d = dec.get(name)
            lines.append(f"  {name:<22} {loss:>10.4f} {'' if ref is None else f'{loss - ref:+.4f}':>9}"
                         + ("" if d is None else f" {d:>10.4f} {'' if dref is None else f'{d - dref:+.4f}':>9}"))
    for preset in ("pythia-160m", "pythia-410m"):
        r = res.get(preset)
        if not r:
            continue
        lines.append(f"Random {preset} weights vs fp32 (logit scale {r['fp32_logit_scale']:.3g}, median top-2 margin "
                     f"{r['fp32_median_top2_margin']:.3g}):")
        lines.append(f"  {'scheme':<22} {'max err/scale':>13} {'top-1 agree':>11} {'greedy agree':>12}  identical prefixes")
        for name, m in r.items():
            if isinstance(m, dict):
                lines.append(f"  {name:<22} {m['max_error_over_logit_scale']:>13.4f} {m['top1_agreement']:>11.1%} "
                             f"{m['greedy_agreement']:>12.1%}  {m['greedy_identical_prefix']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--parts", default="shipped,random", help="comma list: shipped, random")
    p.add_argument("--schemes", default=",".join(SCHEMES), help="comma list of: " + ", ".join(SCHEMES))
    p.add_argument("--presets", default="pythia-160m,pythia-410m")
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--prompts", type=int, default=4)
    p.add_argument("--batch", type=int, default=8, help="held-out windows per forward")
    p.add_argument("--max-windows", type=int, default=0, help="score this many held-out windows (0: all)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--ckpt-dir", default=str(HERE / "results" / "checkpoints"))
    p.add_argument("--json", default=None)
    p.add_argument("--summarize", default=None, metavar="JSON", help="print the tables of an earlier --json")
    args = p.parse_args(argv)
    if args.summarize:
        print(render(json.loads(Path(args.summarize).read_text())))
        return 0
    torch.set_num_threads(args.threads)
    schemes = [s for s in args.schemes.split(",") if s]
    for s in schemes:
        if s not in SCHEMES:
            raise SystemExit(f"--schemes: unknown scheme {s!r}; choose from {', '.join(SCHEMES)}")
    if "fp32" not in schemes:
        schemes.insert(0, "fp32")
    schemes.remove("fp32")
    schemes.insert(0, "fp32")  # the reference runs first
    parts = [x for x in args.parts.split(",") if x]
    res: dict[str, Any] = {"torch": torch.__version__}
    if "shipped" in parts:
        res["shipped"] = shipped(schemes, args.batch, args.max_windows)
    if "random" in parts:
        for preset in [x for x in args.presets.split(",") if x]:
            res[preset] = random_shape(preset, schemes, Path(args.ckpt_dir), args.new_tokens, args.prompts)
    print(render(res))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(res, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
