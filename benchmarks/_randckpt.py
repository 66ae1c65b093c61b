"""Model shapes for the benchmark, and a random checkpoint writer that never holds the whole model.

The checkpoint is written tensor by tensor (generated on the chosen device, copied to the CPU,
grouped into safetensors shards), so the 20B shape (≈41 GB in fp16) can be built on a GPU box
without ever materialising the model in CPU memory. The files use the Hugging Face GPT-NeoX
names, so both neox and transformers load them.

Values: weights ~ N(0, 0.02) like transformers' random init; biases ~ N(0, 0.02) and LayerNorm
weights 1 + N(0, 0.02) (not transformers' zeros/ones) so that every bias and LayerNorm parameter
changes the output: the greedy-token comparison then also checks that they are applied.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

# Shapes of the released Pythia / GPT-NeoX models (vocab padded to 50304 as in the Pythia suite;
# gpt-neox-20b keeps its own 50432 and gelu_fast). "tiny" is for smoke tests only.
COMMON: dict[str, Any] = {
    "vocab_size": 50304,
    "rotary_pct": 0.25,
    "rotary_emb_base": 10000,
    "max_position_embeddings": 2048,
    "use_parallel_residual": True,
    "hidden_act": "gelu",
    "layer_norm_eps": 1e-5,
    "initializer_range": 0.02,
    "tie_word_embeddings": False,
    "attention_bias": True,
    "attention_dropout": 0.0,
    "hidden_dropout": 0.0,
    "use_cache": True,
    "bos_token_id": 0,
    "eos_token_id": 0,
}

PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
             "intermediate_size": 256, "vocab_size": 1024, "max_position_embeddings": 1024},
    "pythia-70m": {"hidden_size": 512, "num_hidden_layers": 6, "num_attention_heads": 8, "intermediate_size": 2048},
    "pythia-160m": {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072},
    "pythia-410m": {"hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16, "intermediate_size": 4096},
    "gpt-neox-20b": {"hidden_size": 6144, "num_hidden_layers": 44, "num_attention_heads": 64,
                     "intermediate_size": 24576, "vocab_size": 50432, "hidden_act": "gelu_fast"},
}

FORMAT_VERSION = 1  # bump when the values written change, so cached checkpoints are rebuilt
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}


def preset_config(preset: str) -> dict[str, Any]:
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose from {', '.join(PRESETS)}")
    cfg = dict(COMMON)
    cfg.update(PRESETS[preset])
    cfg["architectures"] = ["GPTNeoXForCausalLM"]
    cfg["model_type"] = "gpt_neox"
    return cfg


def tensor_shapes(cfg: dict[str, Any]) -> list[tuple[str, tuple[int, ...]]]:
    """Checkpoint names and shapes, in file order."""
    D, I, V = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    out: list[tuple[str, tuple[int, ...]]] = [("gpt_neox.embed_in.weight", (V, D))]
    for i in range(cfg["num_hidden_layers"]):
        p = f"gpt_neox.layers.{i}."
        out += [
            (p + "input_layernorm.weight", (D,)), (p + "input_layernorm.bias", (D,)),
            (p + "post_attention_layernorm.weight", (D,)), (p + "post_attention_layernorm.bias", (D,)),
            (p + "attention.query_key_value.weight", (3 * D, D)), (p + "attention.query_key_value.bias", (3 * D,)),
            (p + "attention.dense.weight", (D, D)), (p + "attention.dense.bias", (D,)),
            (p + "mlp.dense_h_to_4h.weight", (I, D)), (p + "mlp.dense_h_to_4h.bias", (I,)),
            (p + "mlp.dense_4h_to_h.weight", (D, I)), (p + "mlp.dense_4h_to_h.bias", (D,)),
        ]
    out += [("gpt_neox.final_layer_norm.weight", (D,)), ("gpt_neox.final_layer_norm.bias", (D,)),
            ("embed_out.weight", (V, D))]
    return out


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def model_sizes(cfg: dict[str, Any], dtype: str) -> dict[str, int]:
    """Parameter counts and the bytes one decode step reads (everything but embed_in)."""
    shapes = tensor_shapes(cfg)
    total = sum(_numel(s) for _, s in shapes)
    embed_in = _numel(shapes[0][1])
    nbytes = DTYPE_BYTES[dtype]
    return {
        "params": total,
        "params_embed_in": embed_in,
        "weight_bytes": total * nbytes,
        # A decode step reads every matrix once; of embed_in it reads only B rows (negligible).
        "decode_weight_bytes": (total - embed_in) * nbytes,
        # Keys and values of one position, all layers (what attention reads per cached token).
        "kv_bytes_per_position": 2 * cfg["num_hidden_layers"] * cfg["hidden_size"] * nbytes,
    }


def checkpoint_key(preset: str, dtype: str, device: str, seed: int) -> str:
    spec = json.dumps([FORMAT_VERSION, preset_config(preset), dtype, device, seed], sort_keys=True)
    return f"{preset}-{dtype}-{device}-s{seed}-{hashlib.sha1(spec.encode()).hexdigest()[:8]}"


def write_random_checkpoint(
    out_dir: str | os.PathLike, preset: str, dtype: str = "float32", device: str = "cpu",
    seed: int = 0, max_shard_bytes: int = 2 * 1024**3,
) -> dict[str, Any]:
    """Write config.json and safetensors shard(s) of random weights into ``out_dir``.

    Skips the work when ``out_dir`` already holds a complete checkpoint of the same spec.
    Returns a small description (sizes, seconds taken, whether it was cached).
    """
    import torch
    from safetensors.torch import save_file

    out = Path(out_dir)
    marker = out / "bench_checkpoint.json"
    cfg = preset_config(preset)
    spec = {"format": FORMAT_VERSION, "preset": preset, "dtype": dtype, "device": device, "seed": seed}
    if marker.exists():
        try:
            if json.loads(marker.read_text()).get("spec") == spec:
                return {"dir": str(out), "cached": True, "seconds": 0.0, **model_sizes(cfg, dtype)}
        except (OSError, ValueError):
            pass
    out.mkdir(parents=True, exist_ok=True)
    for old in list(out.glob("*.safetensors")) + list(out.glob(".shard-*.tmp")) + [out / "model.safetensors.index.json", marker]:
        if old.exists():
            old.unlink()

    torch_dtype = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[dtype]
    dev = torch.device(device)
    gen = torch.Generator(device=dev)
    gen.manual_seed(seed)
    std = cfg["initializer_range"]
    t0 = time.perf_counter()

    shards: list[dict[str, int]] = []  # per written shard: name -> bytes (the tensors are dropped)
    current: dict[str, Any] = {}
    current_bytes = 0

    def flush() -> None:
        nonlocal current, current_bytes
        if current:
            shards.append({k: v.numel() * v.element_size() for k, v in current.items()})
            tmp = out / f".shard-{len(shards):05d}.tmp"
            save_file(current, str(tmp), metadata={"format": "pt"})
            current, current_bytes = {}, 0

    for name, shape in tensor_shapes(cfg):
        t = torch.randn(shape, generator=gen, device=dev, dtype=torch.float32).mul_(std)
        if name.endswith("layernorm.weight") or name.endswith("final_layer_norm.weight"):
            t.add_(1.0)
        t = t.to(torch_dtype).cpu()
        size = t.numel() * t.element_size()
        if current and current_bytes + size > max_shard_bytes:
            flush()
        current[name] = t
        current_bytes += size
    flush()

    n = len(shards)
    weight_map: dict[str, str] = {}
    total = 0
    for i, shard in enumerate(shards, start=1):
        fname = "model.safetensors" if n == 1 else f"model-{i:05d}-of-{n:05d}.safetensors"
        os.replace(out / f".shard-{i:05d}.tmp", out / fname)
        for k, nbytes in shard.items():
            weight_map[k] = fname
            total += nbytes
    if n > 1:
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    (out / "config.json").write_text(json.dumps({**cfg, "dtype": dtype}, indent=2, sort_keys=True) + "\n")
    seconds = time.perf_counter() - t0
    marker.write_text(json.dumps({"spec": spec, "seconds": seconds}) + "\n")
    return {"dir": str(out), "cached": False, "seconds": seconds, **model_sizes(cfg, dtype)}
