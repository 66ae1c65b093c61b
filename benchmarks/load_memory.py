"""Peak RSS while loading a pythia-410m-shaped random checkpoint: neox vs transformers.

    python3 benchmarks/load_memory.py            # writes the checkpoints to a temp dir, then removes them
    python3 benchmarks/load_memory.py --dir D    # keep (and reuse) the checkpoints in D

Each load runs in a fresh subprocess: RSS after importing the library (and touching the model
class) is the baseline; ``ru_maxrss`` after ``from_pretrained`` minus that baseline is the load's
peak, reported as a ratio to the bytes of the loaded weights (1.0 = the weights exist once).
A second column touches every weight after the load (a sum over each parameter), which pulls in
memory-mapped pages a lazy load had not read yet: that is the memory the model holds in use.

Shape (EleutherAI/pythia-410m): hidden 1024, 24 layers, 16 heads, intermediate 4096, vocab
50304, untied head; ~405M parameters, 1.6 GB in fp32.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SHAPE = dict(vocab_size=50304, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
             intermediate_size=4096, max_position_embeddings=2048, rotary_pct=0.25,
             use_parallel_residual=True, tie_word_embeddings=False)

# (label, checkpoint dtype, dtype asked of from_pretrained)
CASES = [("fp32 file → fp32", "float32", "float32"),
         ("fp16 file → fp16", "float16", "float16"),
         ("fp32 file → fp16", "float32", "float16")]


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def write_checkpoint(folder: Path, dtype_name: str, shape: dict | None = None) -> None:
    """A random checkpoint in the exact layout transformers writes, without building a model."""
    import torch
    from safetensors.torch import save_file

    from neox import GPTNeoXConfig

    dtype = getattr(torch, dtype_name)
    config = GPTNeoXConfig(**(shape or SHAPE), torch_dtype=dtype_name, architectures=["GPTNeoXForCausalLM"])
    D, I, V = config.hidden_size, config.intermediate_size, config.vocab_size
    gen = torch.Generator().manual_seed(0)

    def rand(*shape):
        return (torch.randn(*shape, generator=gen) * 0.02).to(dtype)

    state = {"gpt_neox.embed_in.weight": rand(V, D), "embed_out.weight": rand(V, D),
             "gpt_neox.final_layer_norm.weight": torch.ones(D, dtype=dtype),
             "gpt_neox.final_layer_norm.bias": torch.zeros(D, dtype=dtype)}
    for i in range(config.num_hidden_layers):
        p = f"gpt_neox.layers.{i}."
        for ln in ("input_layernorm", "post_attention_layernorm"):
            state[p + ln + ".weight"] = torch.ones(D, dtype=dtype)
            state[p + ln + ".bias"] = torch.zeros(D, dtype=dtype)
        for name, (out_f, in_f) in {"attention.query_key_value": (3 * D, D), "attention.dense": (D, D),
                                    "mlp.dense_h_to_4h": (I, D), "mlp.dense_4h_to_h": (D, I)}.items():
            state[p + name + ".weight"] = rand(out_f, in_f)
            state[p + name + ".bias"] = torch.zeros(out_f, dtype=dtype)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    config.save_pretrained(folder)


def child(library: str, folder: str, dtype_name: str) -> None:
    """Runs in a fresh process: measure one load, print one JSON line."""
    import torch

    if library == "neox":
        from neox import GPTNeoXForCausalLM as cls
    else:
        import transformers

        transformers.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
        cls = transformers.GPTNeoXForCausalLM
    base = rss_mb()
    start = time.perf_counter()
    model = cls.from_pretrained(folder, dtype=getattr(torch, dtype_name))
    seconds = time.perf_counter() - start
    after_load = rss_mb()
    with torch.no_grad():
        for p in model.parameters():
            p.max()  # touch every page of every weight, without a converted copy
    after_touch = rss_mb()
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    print(json.dumps(dict(base_mb=base, load_mb=after_load - base, touched_mb=after_touch - base,
                          weight_mb=weight_bytes / 2**20, seconds=seconds)))


def run_child(script: str, *args: str) -> dict:
    """Run ``script --child ARGS`` in a fresh process (so its RSS is its own); its last line is JSON."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    out = subprocess.run([sys.executable, script, "--child", *args],
                         capture_output=True, text=True, env=env, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure(library: str, folder: Path, dtype_name: str) -> dict:
    return run_child(__file__, library, str(folder), dtype_name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", type=Path, help="where to keep the checkpoints (default: a temp dir, removed)")
    parser.add_argument("--libraries", default="neox,transformers")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return

    root = args.dir or Path(tempfile.mkdtemp(prefix="neox-load-memory-"))
    try:
        folders = {}
        for _, file_dtype, _ in CASES:
            folder = root / f"pythia-410m-shaped-{file_dtype}"
            if not (folder / "model.safetensors").exists():
                print(f"writing {folder} ...", file=sys.stderr)
                subprocess.run([sys.executable, "-c", f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
                                f"from load_memory import write_checkpoint; from pathlib import Path; "
                                f"write_checkpoint(Path({str(folder)!r}), {file_dtype!r})"], check=True)
            folders[file_dtype] = folder

        print(f"{'case':<18} {'library':<13} {'weights MB':>10} {'load peak MB':>12} {'ratio':>6} "
              f"{'touched ratio':>13} {'seconds':>7}")
        for label, file_dtype, load_dtype in CASES:
            for library in args.libraries.split(","):
                r = measure(library, folders[file_dtype], load_dtype)
                print(f"{label:<18} {library:<13} {r['weight_mb']:>10.0f} {r['load_mb']:>12.0f} "
                      f"{r['load_mb'] / r['weight_mb']:>6.2f} {r['touched_mb'] / r['weight_mb']:>13.2f} "
                      f"{r['seconds']:>7.2f}", flush=True)
    finally:
        if args.dir is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
