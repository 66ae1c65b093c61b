"""Beyond one device on torch.distributed: tensor parallelism (DTensor) and FSDP2, from outside.

Nothing here knows the model classes: a plan names modules (the checkpoint's names, ``*`` for
any one name component) and the styles transformers uses for them; :func:`apply_tp_plan` hands
them to DTensor's ``parallelize_module``. For GPT-NeoX (``GPTNeoXConfig.base_model_tp_plan``,
transformers' keys, plus the causal LM's ``embed_out``):

    embed_in                       embedding_rowwise      vocabulary rows split; partial sums all-reduced
    layers.*.attention.query_key_value  colwise           output features split → whole heads per rank
    layers.*.attention.dense       rowwise                input features split; outputs all-reduced
    layers.*.mlp.dense_h_to_4h     colwise
    layers.*.mlp.dense_4h_to_h     rowwise
    embed_out                      colwise_gather_output  vocabulary split; logits all-gathered (replicated)

The fused QKV weight (3·D, D) is laid out per head — rows [q_h | k_h | v_h] for h = 0..H−1 — so
an even contiguous row split gives rank r the whole heads r·H/W … (r+1)·H/W − 1: attention then
runs on local heads with no communication, and ``dense`` (row-wise) sums the ranks' shares.
LayerNorms and biases of row-wise layers are replicated. Every rank ends up with the same
hidden states and the same (bitwise) logits, so greedy decoding agrees across ranks, and
sampling does when every rank seeds its generator alike.

Loading under a plan reads only this rank's block of each sharded tensor from the safetensors
files (plain reads at the block's offsets); replicated tensors are read whole. No rank ever holds
the full model.

FSDP2: :func:`fully_shard_model` shards each ``_no_split_modules`` block, then the root.
:func:`full_state_dict` gathers DTensor state (TP or FSDP2) to plain tensors for saving.
"""

from __future__ import annotations

import fnmatch
import logging
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist
from torch import nn

from .checkpoint import CheckpointError, read_safetensors_header
from .config import GPTNeoXConfig

logger = logging.getLogger(__name__)

__all__ = [
    "TP_STYLES", "resolve_tp_plan", "resolve_mesh", "apply_tp_plan", "iter_local_tensors", "local_slice",
    "fully_shard_model", "full_state_dict", "is_distributed", "model_class_name",
]

#: transformers' names for the styles neox applies (its other styles are not needed by GPT-NeoX).
TP_STYLES = ("colwise", "rowwise", "embedding_rowwise", "colwise_gather_output")

#: The causal LM's head, on top of the base model's plan (transformers: ``_tp_plan`` of the class,
#: keyed ``lm_head``; neox's module is ``embed_out``).
HEAD_TP_PLAN = {"embed_out": "colwise_gather_output"}


def _dtensor() -> Any:
    # torch.distributed.tensor is imported on first use: it costs start-up time nobody on one
    # device should pay.
    import torch.distributed.tensor as dt

    return dt


# ============================================================================== plans and meshes


def resolve_tp_plan(model: nn.Module, tp_plan: str | dict[str, str]) -> dict[str, str]:
    """Module-name pattern → style for ``model``.

    ``"auto"``: the config's ``base_model_tp_plan`` under the base-model prefix, plus the causal
    LM's head. A dict is the whole plan, keyed relative to ``model`` (``lm_head`` is read as
    ``embed_out``); an empty dict shards nothing.
    """
    config: GPTNeoXConfig = model.config
    if tp_plan == "auto":
        prefix = getattr(model, "base_model_prefix", "")
        base = prefix + "." if prefix and hasattr(model, prefix) else ""
        plan = {base + key: style for key, style in config.base_model_tp_plan.items()}
        if hasattr(model, "embed_out"):
            plan.update(HEAD_TP_PLAN)
    elif isinstance(tp_plan, dict):
        plan = {("embed_out" if key == "lm_head" else key): style for key, style in tp_plan.items()}
    else:
        raise ValueError(f"tp_plan must be 'auto' or a dict of module pattern → style, got {tp_plan!r}")
    for key, style in plan.items():
        if style not in TP_STYLES:
            raise ValueError(f"tp_plan[{key!r}] = {style!r}: neox supports the styles {list(TP_STYLES)}")
    return plan


def resolve_mesh(device_mesh: Any = None, tp_size: int | None = None) -> Any:
    """A 1-D DeviceMesh for tensor parallelism: ``device_mesh`` (its "tp" dimension if it has
    several), or one over every process, with the default process group started from torchrun's
    environment if needed (NCCL with CUDA, else gloo; the CUDA device is LOCAL_RANK's)."""
    from torch.distributed.device_mesh import init_device_mesh

    if device_mesh is not None:
        if device_mesh.ndim > 1:
            if "tp" not in (device_mesh.mesh_dim_names or ()):
                raise ValueError("a multi-dimensional device_mesh needs a dimension named 'tp' for tensor parallelism")
            device_mesh = device_mesh["tp"]
        if tp_size is not None and tp_size != device_mesh.size():
            raise ValueError(f"tp_size={tp_size} but the device_mesh has {device_mesh.size()} ranks")
        return device_mesh
    if not dist.is_available():
        raise RuntimeError("tensor parallelism needs torch.distributed, which this torch build lacks")
    cuda = torch.cuda.is_available()
    if not dist.is_initialized():
        if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
            raise RuntimeError(
                "tp_plan needs several processes: launch with torchrun (which sets RANK, WORLD_SIZE, "
                "MASTER_ADDR) or call torch.distributed.init_process_group first, or pass device_mesh"
            )
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        dist.init_process_group("nccl" if cuda else "gloo")
    world = dist.get_world_size()
    size = world if tp_size is None else tp_size
    if size != world:
        raise ValueError(f"tp_size={size} without a device_mesh must equal the world size {world}")
    device_type = "cuda" if cuda and dist.get_backend() != "gloo" else "cpu"
    return init_device_mesh(device_type, (size,), mesh_dim_names=("tp",))


def mesh_device(mesh: Any) -> torch.device:
    """The device this rank's shards live on."""
    if mesh.device_type == "cuda":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device(mesh.device_type)


def _check_divisible(config: GPTNeoXConfig, world: int) -> None:
    for name, size in (("num_attention_heads", config.num_attention_heads),
                       ("intermediate_size", config.intermediate_size)):
        if size % world:
            raise ValueError(
                f"tensor parallelism over {world} ranks needs config.{name} ({size}) divisible by {world}: "
                "each rank must hold whole heads and an equal share of the MLP"
            )


def _style(name: str) -> Any:
    from torch.distributed.tensor import Replicate
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel

    if name == "colwise":  # replicated input → output features split, kept local
        return ColwiseParallel()
    if name == "rowwise":  # input features split → outputs summed across ranks, replicated
        return RowwiseParallel()
    if name == "embedding_rowwise":  # token ids replicated; each rank looks up its vocabulary rows
        return RowwiseParallel(input_layouts=Replicate())
    return ColwiseParallel(output_layouts=Replicate())  # colwise_gather_output: logits gathered


def _matches(pattern: str, name: str) -> bool:
    """``*`` stands for exactly one dotted component (``layers.*.mlp`` matches ``layers.3.mlp``)."""
    parts, names = pattern.split("."), name.split(".")
    return len(parts) == len(names) and all(fnmatch.fnmatchcase(n, p) for p, n in zip(parts, names))


def apply_tp_plan(model: nn.Module, plan: dict[str, str], mesh: Any) -> dict[str, str]:
    """Shard ``model``'s modules in place (meta or materialised); return {module name: style}."""
    _check_divisible(model.config, mesh.size())
    from torch.distributed.tensor.parallel import parallelize_module

    applied: dict[str, str] = {}
    for name, module in model.named_modules():
        for pattern, style in plan.items():
            if _matches(pattern, name):
                applied[name] = style
                break
    unused = [p for p in plan if not any(_matches(p, n) for n in applied)]
    if unused:
        raise ValueError(f"tp_plan entries {unused} match no module of {type(model).__name__}")
    for name, style in applied.items():
        parallelize_module(model.get_submodule(name), mesh, _style(style))
    return applied


# ============================================================================== rank-local loading


def local_slice(param: torch.Tensor) -> tuple[slice, ...] | None:
    """The index of this rank's block of a DTensor's global tensor; None for a plain tensor.

    Shard(d) follows ``torch.chunk``: blocks of ceil(n / W) rows in rank order, the last shorter.
    """
    dt = _dtensor()
    if not isinstance(param, dt.DTensor):
        return None
    mesh = param.device_mesh
    index = [slice(None)] * param.dim()
    for mesh_dim, placement in enumerate(param.placements):
        if isinstance(placement, dt.Shard):
            d, n = placement.dim, param.shape[placement.dim]
            world, rank = mesh.size(mesh_dim), mesh.get_local_rank(mesh_dim)
            chunk = -(-n // world)
            start = min(rank * chunk, n)
            index[d] = slice(start, min(start + chunk, n))
        elif not isinstance(placement, dt.Replicate):
            raise ValueError(f"cannot load a parameter with placement {placement}")
    return tuple(index)


#: Rows read per step when a column block is cut out of a row-major tensor.
_STAGING_BYTES = 16 * 2**20


def iter_local_tensors(
    files: list[Path],
    target: Callable[[str], torch.Tensor | None],
    dtype: torch.dtype,
    device: torch.device,
) -> Iterator[tuple[Path, str, torch.Tensor]]:
    """(file, key, tensor) for every checkpoint tensor, reading only this rank's part of each.

    ``target(key)`` is the model's (meta) parameter the key loads into, or None. Where that is a
    DTensor, only its local block is read and a DTensor with the parameter's placements and
    global shape comes back; otherwise the whole tensor, as a plain tensor.

    Plain file reads, not a memory map: a map would leave the pages it touched (and the pages
    around them) resident in this process, up to the whole file, where a rank should hold 1/W.
    A row block is one read; a column block (row-wise layers split their input features) is cut
    from 16 MiB runs of rows through one reused buffer.
    """
    dt = _dtensor()
    for path in files:
        if not path.name.endswith(".safetensors"):
            raise ValueError(
                f"{path.name}: tensor-parallel loading reads slices of safetensors files; convert the "
                "checkpoint once with save_pretrained (safetensors) and load that"
            )
        header = read_safetensors_header(path)  # validated: dtype, shape and offsets are sound
        with open(path, "rb") as f:
            for key, entry in header.tensors.items():
                src, shape = entry.dtype, entry.shape
                param = target(key)
                index = local_slice(param) if param is not None and tuple(param.shape) == shape else None
                block = _read_block(f, path, key, header.data_start + entry.start, shape, src, index)
                block = block.to(device=device, dtype=dtype if src.is_floating_point else src)
                if index is not None:
                    block = dt.DTensor.from_local(block, param.device_mesh, param.placements, run_check=False,
                                                  shape=param.shape, stride=param.stride())
                yield path, key, block


def _read_block(f: Any, path: Path, key: str, offset: int, shape: tuple[int, ...], src: torch.dtype,
                index: tuple[slice, ...] | None) -> torch.Tensor:
    """tensor[index] (or the whole tensor) read from the file, as a new contiguous CPU tensor."""
    itemsize = torch.empty((), dtype=src).element_size()
    split = [d for d, s in enumerate(index or ()) if s != slice(None)]
    if len(split) > 1:
        raise ValueError(f"{key}: cannot read a block split along several dimensions {split}")
    d = split[0] if split else 0
    lo, hi = (index[d].start, index[d].stop) if split else (0, shape[0] if shape else 1)
    inner = math.prod(shape[d + 1:])  # elements after the split dimension, per index along it
    if d == 0 or not split:  # a row block: one contiguous byte range
        out = torch.empty((hi - lo, *shape[1:]) if shape else (), dtype=src)
        f.seek(offset + lo * inner * itemsize)
        _read_into(f, out, path, key)
        return out
    outer = math.prod(shape[:d])  # runs of the split dimension: rows, for a (R, C) column split
    out = torch.empty(*shape[:d], hi - lo, *shape[d + 1:], dtype=src)
    rows_per_read = max(1, _STAGING_BYTES // (shape[d] * inner * itemsize))
    staging = torch.empty(min(rows_per_read, outer) * shape[d] * inner, dtype=src)
    flat_out = out.view(outer, hi - lo, inner)
    f.seek(offset)
    for r in range(0, outer, rows_per_read):
        n = min(rows_per_read, outer - r)
        run = staging[: n * shape[d] * inner]
        _read_into(f, run, path, key)
        flat_out[r : r + n] = run.view(n, shape[d], inner)[:, lo:hi]
    return out


def _read_into(f: Any, out: torch.Tensor, path: Path, key: str) -> None:
    buffer = out.reshape(-1).view(torch.uint8)
    if buffer.numel() and f.readinto(memoryview(buffer.numpy())) != buffer.numel():
        raise CheckpointError(f"{path} is truncated inside tensor {key!r}")


# ============================================================================== FSDP2 and saving


def fully_shard_model(model: nn.Module, mesh: Any = None, **fsdp_kwargs: Any) -> nn.Module:
    """FSDP2: ``fully_shard`` every block named in ``model._no_split_modules`` (the layers), then
    the root (embeddings, final norm, head). ``fsdp_kwargs`` go to ``fully_shard`` (e.g.
    ``mp_policy=MixedPrecisionPolicy(param_dtype=torch.bfloat16)``, ``reshard_after_forward``)."""
    from torch.distributed.fsdp import fully_shard

    blocks = set(getattr(model, "_no_split_modules", ()))
    if not blocks:
        raise ValueError(f"{type(model).__name__} names no _no_split_modules to shard one by one")
    for module in model.modules():
        if type(module).__name__ in blocks:
            fully_shard(module, mesh=mesh, **fsdp_kwargs)
    fully_shard(model, mesh=mesh, **fsdp_kwargs)
    return model


def is_distributed(state: dict[str, torch.Tensor]) -> bool:
    """Whether any tensor of ``state`` is a DTensor (sharded by TP or FSDP2)."""
    # By class name: importing torch.distributed.tensor to ask would cost every save its start-up.
    return any(type(t).__name__ == "DTensor" for t in state.values())


def full_state_dict(state: dict[str, torch.Tensor], keep: bool = True) -> dict[str, torch.Tensor]:
    """Gather every DTensor to a full CPU tensor, one at a time (a collective: call on every rank).

    With ``keep=False`` the gathered tensors are dropped at once (a rank that does not write),
    so only the writing rank ever holds the full weights.
    """
    dt = _dtensor()
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        if isinstance(tensor, dt.DTensor):
            tensor = tensor.full_tensor()
        if keep:
            out[key] = tensor.detach().cpu()
    return out


def model_class_name(model: nn.Module) -> str:
    """The model's own class name: FSDP2 swaps the class for ``FSDP<name>``, a torch subclass."""
    for cls in type(model).__mro__:
        if not cls.__module__.startswith("torch."):
            return cls.__name__
    return type(model).__name__
