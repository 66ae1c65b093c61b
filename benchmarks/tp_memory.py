"""Peak memory per rank while loading with tensor parallelism: each rank should hold ≈ 1/W of the weights.

    python3 benchmarks/tp_memory.py [--dir D] [--dtype float32] [--nproc 2]

Writes (or reuses, with --dir) the pythia-410m-shaped random checkpoint of load_memory.py, then
for W = 1 and W = --nproc runs ``torchrun --nproc-per-node W`` on this file: every rank imports
neox and starts its process group and device mesh (the baseline), then loads with
``tp_plan="auto"``. A rank reports its ``ru_maxrss`` growth over the baseline (CPU) or its peak
CUDA allocation (CUDA, NCCL), next to the bytes of the shards it holds, and again after reading
every weight once (a zero-copy load of a whole tensor maps the file lazily). Rank 0 then checks
the TP logits against the model loaded on one device. One JSON line per rank.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def rank_main(folder: str, dtype_name: str) -> None:
    import torch
    import torch.distributed as dist
    import torch.distributed.tensor  # noqa: F401  (its import is part of the baseline)

    sys.path.insert(0, str(HERE.parent))
    from neox import GPTNeoXForCausalLM
    from neox.parallel import resolve_mesh

    mesh = resolve_mesh()
    cuda = mesh.device_type == "cuda"
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t = time.perf_counter()
    model = GPTNeoXForCausalLM.from_pretrained(folder, tp_plan="auto", device_mesh=mesh, dtype=dtype_name)
    seconds = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base
    for p in model.parameters():  # pull in memory-mapped pages a zero-copy load had not read yet
        (p.to_local() if hasattr(p, "to_local") else p).float().sum()
    touched = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base
    local = sum((p.to_local() if hasattr(p, "to_local") else p).nbytes for p in model.parameters()) / 2**20
    total = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
    row = {"world": dist.get_world_size(), "rank": dist.get_rank(), "dtype": dtype_name,
           "weights_total_mb": round(total), "shards_held_mb": round(local),
           "peak_rss_growth_mb": round(peak),
           "after_touching_mb": round(touched), "load_s": round(seconds, 2)}
    if cuda:
        row["cuda_peak_allocated_mb"] = round(torch.cuda.max_memory_allocated() / 2**20)
    # Correctness on this backend: rank 0 compares the TP logits with the model on one device.
    ids = torch.randint(0, model.config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = model(ids.to(model.device)).logits.float()
        if dist.get_rank() == 0:
            one = GPTNeoXForCausalLM.from_pretrained(folder, dtype=dtype_name, device_map=str(model.device))
            row["max_abs_diff_vs_one_device"] = float((one(ids.to(one.device)).logits.float() - logits).abs().max())
    print(json.dumps(row), flush=True)
    dist.barrier()
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", help="checkpoint folder to write or reuse")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--rank-main", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rank_main:
        rank_main(*args.rank_main)
        return
    sys.path.insert(0, str(HERE))
    from load_memory import write_checkpoint

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.dir or tmp) / f"pythia-410m-{args.dtype}"
        if not (folder / "model.safetensors").exists():
            write_checkpoint(folder, args.dtype)
        env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        for world in sorted({1, args.nproc}):
            subprocess.run([sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={world}",
                            __file__, "--rank-main", str(folder), args.dtype], check=True, env=env)


if __name__ == "__main__":
    main()
