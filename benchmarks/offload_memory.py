"""Peak RSS of a model placed entirely on disk (``device_map={"": "disk"}``), against its weights.

    python3 benchmarks/offload_memory.py               # pythia-160m and -410m shapes, temp dir removed
    python3 benchmarks/offload_memory.py --dir D       # keep (and reuse) the checkpoints in D
    python3 benchmarks/offload_memory.py --shapes 410m --libraries neox,transformers

Each case runs in a fresh subprocess. The baseline is the RSS after importing the library; the
process then loads the random fp32 checkpoint, runs one forward over a 128-token prompt with a KV
cache and greedily generates 16 tokens. Reported (MB, over the baseline): the peak RSS
(VmHWM) after loading and after the whole run, next to the model's weights, its largest
single placed module (one layer, or the 50k-row embedding/head), and the KV cache. With pages
dropped after each module's forward, the peak should be near the largest module plus activations
and the cache, far below the weights. ``device_map=None`` (the whole model in RAM, touched by the
forward) is the contrast row.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from load_memory import SHAPE as SHAPE_410M, run_child, write_checkpoint  # noqa: E402

SHAPES = {
    "160m": dict(SHAPE_410M, hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
    "410m": SHAPE_410M,
}
PROMPT, NEW = 128, 16


def rss_mb() -> float:
    """This process's peak RSS (VmHWM). Not ru_maxrss: that keeps the forked parent's peak across exec."""
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(library: str, folder: str, device_map: str) -> None:
    import torch

    torch.set_num_threads(max(1, os.cpu_count() // 2))
    if library == "neox":
        from neox import GPTNeoXForCausalLM as cls
    else:
        import transformers

        transformers.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
        cls = transformers.GPTNeoXForCausalLM
    base = rss_mb()
    kwargs = {} if device_map == "none" else {"device_map": {"": device_map}}
    if library == "transformers" and device_map == "disk":
        kwargs["offload_folder"] = str(Path(folder) / "offload")
    start = time.perf_counter()
    model = cls.from_pretrained(folder, dtype=torch.float32, **kwargs)
    load_s = time.perf_counter() - start
    after_load = rss_mb()
    config = model.config
    ids = torch.randint(0, config.vocab_size, (1, PROMPT), generator=torch.Generator().manual_seed(0))
    start = time.perf_counter()
    with torch.no_grad():
        model(ids, use_cache=True)
        after_forward = rss_mb()
        model.generate(ids, max_new_tokens=NEW, do_sample=False, pad_token_id=0)
    run_s = time.perf_counter() - start
    D, I, V, L = config.hidden_size, config.intermediate_size, config.vocab_size, config.num_hidden_layers
    layer = 4 * (3 * D * D + 3 * D + D * D + D + 2 * D * I + I + D + 4 * D)
    cache = 2 * L * (PROMPT + NEW) * D * 4
    print(json.dumps(dict(load_mb=after_load - base, forward_mb=after_forward - base, peak_mb=rss_mb() - base,
                          weights_mb=(L * layer + 2 * V * D * 4) / 2**20, layer_mb=layer / 2**20,
                          largest_mb=max(layer, V * D * 4) / 2**20, cache_mb=cache / 2**20,
                          logits_mb=PROMPT * V * 4 / 2**20, load_s=load_s, run_s=run_s)))


def measure(library: str, folder: Path, device_map: str) -> dict:
    return run_child(__file__, library, str(folder), device_map)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", type=Path, help="where to keep the checkpoints (default: a temp dir, removed)")
    parser.add_argument("--shapes", default="160m,410m")
    parser.add_argument("--libraries", default="neox")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    root = args.dir or Path(tempfile.mkdtemp(prefix="neox-offload-memory-"))
    try:
        print(f"{'shape':<6} {'library':<13} {'device_map':<10} {'weights':>8} {'largest':>8} {'layer':>6} "
              f"{'cache':>6} {'load peak':>9} {'fwd peak':>8} {'run peak':>8} {'load s':>6} {'run s':>6}   (MB)")
        for shape in args.shapes.split(","):
            folder = root / f"pythia-{shape}-shaped-float32"
            if not (folder / "model.safetensors").exists():
                print(f"writing {folder} ...", file=sys.stderr)
                write_checkpoint(folder, "float32", SHAPES[shape])
            for library in args.libraries.split(","):
                for device_map in ("disk", "none"):
                    r = measure(library, folder, device_map)
                    print(f"{shape:<6} {library:<13} {device_map:<10} {r['weights_mb']:>8.0f} {r['largest_mb']:>8.0f} "
                          f"{r['layer_mb']:>6.0f} {r['cache_mb']:>6.1f} {r['load_mb']:>9.0f} {r['forward_mb']:>8.0f} "
                          f"{r['peak_mb']:>8.0f} {r['load_s']:>6.1f} {r['run_s']:>6.1f}", flush=True)
    finally:
        if args.dir is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
