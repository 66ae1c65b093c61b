"""from_pretrained / save_pretrained for the GPT-NeoX models.

Loading builds the model on the meta device (no memory, no random init) and assigns each
checkpoint tensor to its parameter, so the weights exist once. Reading the files (memory-mapped
views, or tensors converted one at a time on the way in) is :mod:`neox.checkpoint`'s job; this
module only resolves the arguments, builds the model and assigns what the reader yields.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator
from functools import cache, partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .checkpoint import (
    IGNORED_KEY_PATTERN,
    Checkpoint,
    CheckpointError,
    checkpoint_dtype,
    find_checkpoint,
    iter_checkpoint,
    save_state_dict,
    tensor_shapes,
)
from .config import CONFIG_NAME, GPTNeoXConfig
from .generation import GENERATION_CONFIG_NAME, GenerationConfig
from .hub import HubOptions, resolve_file
from .parallel import (
    apply_tp_plan, full_state_dict, is_distributed, iter_local_tensors, mesh_device, model_class_name,
    resolve_mesh, resolve_tp_plan,
)
from .placement import Placement, is_device_map, plan_placement
from .quantization import prepare_for_loading, resolve_quantization

logger = logging.getLogger(__name__)

__all__ = ["load_pretrained", "save_pretrained", "metadata_files", "resolve_dtype", "resolve_device"]

_DTYPES = {
    "float32": torch.float32, "float": torch.float32, "fp32": torch.float32,
    "float16": torch.float16, "half": torch.float16, "fp16": torch.float16,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float64": torch.float64, "double": torch.float64,
}

# Accepted and ignored: they only tune transformers' own loader, which neox does not need
# (offload_state_dict: neox never holds a second CPU copy of the weights while placing them).
_NO_OP_ARGS = {"low_cpu_mem_usage", "trust_remote_code", "use_flash_attention_2", "offload_state_dict",
               "_fast_init", "ignore_mismatched_sizes_warning"}


def resolve_dtype(dtype: Any, files: list[Path] | None, config: GPTNeoXConfig) -> torch.dtype:
    """A torch dtype, its name, or "auto"/None: the checkpoint's own (transformers 5's default)."""
    if isinstance(dtype, torch.dtype):
        if not dtype.is_floating_point:
            raise ValueError(f"dtype must be a floating-point type, got {dtype}")
        return dtype
    if dtype is None or dtype == "auto":
        if isinstance(config.dtype, torch.dtype) and config.dtype.is_floating_point:
            return config.dtype
        found = checkpoint_dtype(files) if files else None
        return found or torch.float32
    if isinstance(dtype, str):
        name = dtype.removeprefix("torch.")
        if name in _DTYPES:
            return _DTYPES[name]
    raise ValueError(f"dtype {dtype!r} is not supported; use a torch dtype, one of {sorted(_DTYPES)}, or 'auto'")


def resolve_device(device: Any, weight_bytes: int = 0) -> torch.device:
    """"cpu", "cuda", "cuda:N", N, a torch.device, or "auto" (CUDA when the weights fit, else CPU)."""
    if device is None:
        return torch.device("cpu")
    if isinstance(device, dict):
        raise ValueError(
            "device_map as a dict (splitting a model across devices) is not supported; pass one device"
        )
    if isinstance(device, int) and not isinstance(device, bool):
        device = torch.device("cuda", device)
    if device == "auto":
        if torch.cuda.is_available():
            free, _ = torch.cuda.mem_get_info()
            if weight_bytes < 0.9 * free:
                return torch.device("cuda", torch.cuda.current_device())
            logger.warning("device_map='auto': %.1f GB of weights do not fit on the GPU; loading on the CPU",
                           weight_bytes / 1e9)
        return torch.device("cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device {device!r} is not a device: use 'cpu', 'cuda', 'cuda:N' or 'auto'") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {str(device)!r} requested but CUDA is not available")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device {str(device)!r} requested but only {torch.cuda.device_count()} GPU(s) exist")
    return device


def load_pretrained(cls: type, pretrained_model_name_or_path: str | os.PathLike | None, **kwargs: Any) -> nn.Module:
    """Build ``cls`` on the meta device and assign the checkpoint's tensors (see the module doc).

    As in transformers: ``state_dict=`` supplies the tensors instead of the checkpoint's files
    (with ``pretrained_model_name_or_path=None`` it needs ``config=`` too);
    ``ignore_mismatched_sizes=True`` newly initialises a weight whose shape differs from the
    config's instead of raising; ``output_loading_info=True`` also returns
    ``{"missing_keys", "unexpected_keys", "mismatched_keys"}`` as sets (mismatched entries are
    ``(key, checkpoint shape, model shape)``) and ``"error_msgs"`` as a list.
    """
    name = pretrained_model_name_or_path
    options = HubOptions.pop_from(kwargs)
    config = kwargs.pop("config", None)
    state_dict = kwargs.pop("state_dict", None)
    ignore_mismatched_sizes = kwargs.pop("ignore_mismatched_sizes", False)
    if name is None and (config is None or state_dict is None):
        raise ValueError(
            f"{cls.__name__}.from_pretrained(None, ...) needs both config= and state_dict= (there is no folder "
            "or repo id to read them from)"
        )
    if state_dict is not None and not isinstance(state_dict, dict):
        raise TypeError(f"state_dict must be a dict of tensors, got {type(state_dict).__name__}")
    dtype = kwargs.pop("dtype", None)
    torch_dtype = kwargs.pop("torch_dtype", None)
    if dtype is not None and torch_dtype is not None and dtype != torch_dtype:
        raise ValueError("pass dtype or torch_dtype (its old name), not both")
    dtype = dtype if dtype is not None else torch_dtype
    device_map = kwargs.pop("device_map", None)
    device_arg = kwargs.pop("device", None)
    if device_map is not None and device_arg is not None:
        raise ValueError("pass device_map or device, not both")
    device_arg = device_map if device_map is not None else device_arg
    max_memory = kwargs.pop("max_memory", None)
    offload_folder = kwargs.pop("offload_folder", None)
    output_loading_info = kwargs.pop("output_loading_info", False)
    attn_implementation = kwargs.pop("attn_implementation", None)
    use_safetensors = kwargs.pop("use_safetensors", None)
    # Tensor parallelism, as transformers spells it (tp_size or device_mesh alone mean the "auto" plan).
    tp_plan, tp_size, device_mesh = kwargs.pop("tp_plan", None), kwargs.pop("tp_size", None), kwargs.pop("device_mesh", None)
    if tp_plan is None and (tp_size is not None or device_mesh is not None):
        tp_plan = "auto"
    if tp_plan is not None and device_arg is not None:
        raise ValueError("tp_plan puts each rank's shards on its own device (the mesh's): do not pass device_map")
    quantization = kwargs.pop("quantization", None)  # neox: "int8" | "int4" | "bf16" (see neox.quantization)
    quantization_config = kwargs.pop("quantization_config", None)
    for key in _NO_OP_ARGS & set(kwargs):
        kwargs.pop(key)
    adapter_kwargs = kwargs.pop("adapter_kwargs", None) or {}  # transformers' Auto classes always pass it
    if "_adapter_model_path" in adapter_kwargs:
        raise ValueError(
            f"{name!r} holds a PEFT adapter, not a model: load its base model with from_pretrained, then "
            "peft.PeftModel.from_pretrained(model, adapter_folder)"
        )

    if config is None:
        config_overrides = {k: kwargs.pop(k) for k in list(kwargs) if k in _config_fields()}
        if kwargs:
            raise TypeError(f"{cls.__name__}.from_pretrained got unknown arguments: {sorted(kwargs)}")
        config = GPTNeoXConfig.from_pretrained(name, **config_overrides, **_hub_kwargs(options))
    elif kwargs:
        raise TypeError(f"{cls.__name__}.from_pretrained got unknown arguments: {sorted(kwargs)}")
    elif not isinstance(config, GPTNeoXConfig):
        raise TypeError(f"config must be a neox GPTNeoXConfig, got {type(config).__name__}")
    if attn_implementation is not None:
        config.attn_implementation = attn_implementation
        config.validate()
    config.name_or_path = "" if name is None else str(name)

    placed = is_device_map(device_arg)
    paths: dict[str, Path] = {}  # file name → file, for placement to memory-map disk weights
    quant = resolve_quantization(quantization, quantization_config, config.extra.get("quantization_config"))
    if quant is not None and (placed or tp_plan is not None):
        raise ValueError("quantization cannot be combined with a multi-device device_map or tp_plan (yet): "
                         "load on one device, or without quantization")
    if state_dict is None:
        checkpoint = find_checkpoint(name, options)
        files = checkpoint.files
        if use_safetensors is True and not files[0].name.endswith(".safetensors"):
            raise CheckpointError(f"use_safetensors=True but {name!r} has only {files[0].name}")
        if use_safetensors is False:
            logger.info("use_safetensors=False: neox still prefers safetensors files when present")
        if not ignore_mismatched_sizes:  # asked to re-initialise what does not fit: checked per tensor
            check_config_against_weights(config, checkpoint)
        dtype = resolve_dtype(dtype, files, config)
        weight_bytes = sum(f.stat().st_size for f in files)

        def read(device: torch.device) -> Iterator[tuple[str, str, torch.Tensor]]:
            # copy: a weight quantised while loading must not stay resident as a view of the mapped file
            tensors = iter_checkpoint(checkpoint, dtype, device, copy=quant is not None)
            return ((path.name, key, t) for path, key, t in tensors)

        paths = {f.name: f for f in files}
    else:
        if tp_plan is not None:
            raise ValueError("tp_plan reads each rank's slices from the checkpoint files; it cannot take a state_dict")
        if dtype is None or dtype == "auto":
            dtype = config.dtype or next((t.dtype for t in state_dict.values() if t.is_floating_point()), None)
        dtype = resolve_dtype(dtype, None, config)
        weight_bytes = sum(t.numel() * t.element_size() for t in state_dict.values())
        read = partial(_iter_state_dict, state_dict, dtype)
    mesh = resolve_mesh(device_mesh, tp_size) if tp_plan is not None else None
    if mesh is not None:
        device = mesh_device(mesh)
    else:
        device = torch.device("cpu") if placed else resolve_device(device_arg, weight_bytes=weight_bytes)

    with torch.device("meta"):
        model = cls(config)
    if mesh is not None:  # sharded while still on the meta device: parameters become (meta) DTensors
        apply_tp_plan(model, resolve_tp_plan(model, tp_plan), mesh)
    placement: Placement | None = None
    if not placed and (max_memory is not None or offload_folder is not None):
        logger.warning("max_memory and offload_folder apply only with a device_map dict or 'auto'/'balanced'/"
                       "'sequential'; ignored for device_map=%r", device_arg)
    if placed:  # a map over devices and disk (neox.placement); a map to one device reads straight onto it
        placement = plan_placement(model, device_arg, dtype=dtype, max_memory=max_memory, offload_folder=offload_folder)
        device = placement.single_device or device
    # Quantising swaps the linears now; `take` then quantises each weight as it is read.
    take = prepare_for_loading(model, quant) if quant is not None else None
    taken: set[str] = set()
    expected = dict(model.state_dict(keep_vars=True))
    prefix = cls.base_model_prefix
    is_base = not hasattr(model, prefix)  # GPTNeoXModel has no `gpt_neox` child

    if mesh is not None:  # each rank reads its own slices only
        tensors = iter_local_tensors(
            files, lambda key: expected.get(_target_key(key, prefix, is_base, expected) or ""), dtype, device
        )
    else:
        tensors = read(device)
    loaded: dict[str, torch.Tensor] = {}
    unexpected: list[str] = []
    mismatched: list[tuple[str, torch.Size, torch.Size]] = []
    for source, key, tensor in tensors:
        target = _target_key(key, prefix, is_base, expected)
        if target is None:
            continue
        if take is not None:
            filled = take(target, tensor)
            if filled:
                taken.update(filled)
                del tensor  # before the next read: one full-precision tensor alive at a time
                _return_freed_memory()
                continue
        if target not in expected:
            unexpected.append(key)
            continue
        want = expected[target].shape
        if tensor.shape != want:
            if ignore_mismatched_sizes:
                mismatched.append((target, tensor.shape, want))
                continue
            raise ValueError(
                f"{source}: tensor {key!r} has shape {tuple(tensor.shape)}, but the model built from "
                f"config.json needs {tuple(want)} for {target!r} (ignore_mismatched_sizes=True initialises it anew)"
            )
        loaded[target] = tensor if placement is None else placement.place(target, paths.get(source), key, tensor)

    tied = {"embed_out.weight"} if config.tie_word_embeddings and not is_base else set()
    missing = [k for k in expected if k not in loaded and k not in tied and k not in taken
               and k not in {m[0] for m in mismatched}]
    fresh = missing + [m[0] for m in mismatched]
    if mesh is not None and is_distributed({k: expected[k] for k in fresh}):
        raise ValueError(f"tensor-parallel loading: the checkpoint lacks the sharded weights {fresh}")
    model.load_state_dict(loaded, strict=False, assign=True)
    _materialize_missing(model, missing + [m[0] for m in mismatched], dtype, device)
    for module in model.modules():
        if hasattr(module, "reset_parameters") and type(module).__name__ == "RotaryEmbedding":
            module.reset_parameters(device)
    model.tie_weights()
    if placement is not None:
        placement.dispatch(model)

    head = [k for k in unexpected if is_base and k in ("embed_out.weight", "lm_head.weight")]
    unexpected_warned = [k for k in unexpected if k not in head]  # a base model leaving the head out is expected
    if mismatched:
        logger.warning("Some weights of %s were newly initialised because their shapes differ from the checkpoint %s: %s",
                       cls.__name__, name, [f"{k}: {tuple(a)} vs {tuple(b)}" for k, a, b in mismatched])
    if missing:
        logger.warning("Some weights of %s were not in the checkpoint %s and are newly initialised: %s",
                       cls.__name__, name, missing)
    if unexpected_warned:
        logger.warning("Some weights of the checkpoint %s were not used by %s: %s", name, cls.__name__,
                       unexpected_warned)

    model.name_or_path = config.name_or_path
    for module in model.modules():
        module._is_hf_initialized = True  # loaded: init_weights() leaves it alone, as in transformers
    if hasattr(model, "generation_config") and name is not None:
        _load_generation_config(model, name, options)
    model.eval()
    if output_loading_info:
        info = {"missing_keys": set(missing), "unexpected_keys": set(unexpected), "mismatched_keys": set(mismatched),
                "error_msgs": []}
        return model, info
    return model


_LAYER_KEY = re.compile(r"(?:^|\.)layers\.(\d+)\.")


def check_config_against_weights(config: GPTNeoXConfig, checkpoint: Checkpoint) -> None:
    """Refuse a config the weights contradict, before building anything from it.

    Read from the safetensors headers alone (no tensor is read): the embedding's shape gives
    vocab_size × hidden_size, the tensor names the layer count. A config with fewer layers than
    the checkpoint is allowed (the first layers load, the rest are reported unused), as in
    transformers; more layers than the checkpoint holds would build layers from nothing.
    """
    shapes = tensor_shapes(checkpoint)
    if shapes is None:  # .bin files: shapes are only known by loading them; checked per tensor then
        return
    where = checkpoint.index or checkpoint.files[0]
    for key, shape in shapes.items():
        if key.endswith("embed_in.weight") and len(shape) == 2:
            want = (config.vocab_size, config.hidden_size)
            if tuple(shape) != want:
                raise ValueError(
                    f"{where.name}: tensor {key!r} has shape {tuple(shape)}, but the model built from config.json "
                    f"needs {want} for 'embed_in.weight' (config.vocab_size, config.hidden_size; "
                    "ignore_mismatched_sizes=True initialises it anew)"
                )
    layers = {int(m[1]) for key in shapes if (m := _LAYER_KEY.search(key))}
    if layers and config.num_hidden_layers > max(layers) + 1:
        raise ValueError(
            f"config.num_hidden_layers is {config.num_hidden_layers}, but {where.name} holds weights for "
            f"{max(layers) + 1} layers"
        )


def _config_fields() -> set[str]:
    import dataclasses

    return {f.name for f in dataclasses.fields(GPTNeoXConfig)} | {"rope_parameters", "num_labels"}


def _hub_kwargs(options: HubOptions) -> dict[str, Any]:
    return {name: getattr(options, name) for name in HubOptions.__slots__}


def _return_freed_memory() -> None:
    """Hand the heap's free pages back to the OS (glibc ``malloc_trim``; a no-op elsewhere).

    Quantising while loading frees one full-precision tensor per weight. Tensors under glibc's
    (adaptive, up to 32 MB) mmap threshold live on the heap, where the small quantised tensors
    allocated between them keep the freed pages resident: the load's peak RSS then varied from
    0.84x to 1.5x of (quantised model + one fp32 tensor) between identical runs of pythia-160m int8.
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@cache
def _malloc_trim() -> Any:
    try:
        import ctypes

        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


def _target_key(key: str, prefix: str, is_base: bool, expected: dict) -> str | None:
    """Checkpoint key → this model's key; None for buffers old checkpoints carry."""
    if IGNORED_KEY_PATTERN.search(key):
        return None
    if key == "lm_head.weight":  # transformers 5 names the head lm_head
        key = "embed_out.weight"
    if is_base:
        return key[len(prefix) + 1:] if key.startswith(prefix + ".") else key
    if not key.startswith(prefix + ".") and key != "embed_out.weight" and f"{prefix}.{key}" in expected:
        return f"{prefix}.{key}"  # a GPTNeoXModel checkpoint loaded into the causal LM
    return key


def _iter_state_dict(
    state_dict: dict[str, torch.Tensor], dtype: torch.dtype, device: torch.device
) -> Iterator[tuple[str, str, torch.Tensor]]:
    for key, tensor in state_dict.items():
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"state_dict[{key!r}] is a {type(tensor).__name__}, not a tensor")
        out = tensor.detach().to(device=device, dtype=dtype if tensor.is_floating_point() else tensor.dtype)
        if out.data_ptr() == tensor.data_ptr() and out.numel():
            out = out.clone()  # never share storage with the caller's tensors (another model's weights)
        yield "state_dict", key, out


def _materialize_missing(model: nn.Module, missing: list[str], dtype: torch.dtype, device: torch.device) -> None:
    """Give weights absent from the checkpoint a fresh init, as a newly built model would have."""
    std = model.config.initializer_range
    for name in missing:
        module_name, _, attr = name.rpartition(".")
        module = model.get_submodule(module_name)
        old = getattr(module, attr)
        value = torch.empty(old.shape, dtype=dtype, device=device)
        if isinstance(module, nn.LayerNorm) and attr == "weight":
            nn.init.ones_(value)
        elif attr == "bias":
            nn.init.zeros_(value)
        else:
            nn.init.normal_(value, mean=0.0, std=std)
        setattr(module, attr, nn.Parameter(value, requires_grad=old.requires_grad))


def _load_generation_config(model: nn.Module, name: str | os.PathLike, options: HubOptions) -> None:
    path = resolve_file(name, GENERATION_CONFIG_NAME, options)
    if path is not None:
        model.generation_config = GenerationConfig.from_pretrained(Path(path).parent)


def save_pretrained(
    model: nn.Module,
    save_directory: Path,
    max_shard_size: int | str = "5GB",
    state_dict: dict[str, torch.Tensor] | None = None,
    is_main_process: bool = True,
) -> None:
    if save_directory.exists() and not save_directory.is_dir():
        raise ValueError(f"save_pretrained: {save_directory} exists and is not a folder")
    state = dict(state_dict if state_dict is not None else model.state_dict())
    if is_distributed(state):
        # Sharded by TP or FSDP2: every rank takes part in gathering each tensor; rank 0 alone
        # keeps the full tensors and writes them, the others wait for it to finish.
        writer = is_main_process and torch.distributed.get_rank() == 0
        state = full_state_dict(state, keep=writer)
        if writer:
            _write_pretrained(model, save_directory, max_shard_size, state)
        torch.distributed.barrier()
        return
    if is_main_process:
        _write_pretrained(model, save_directory, max_shard_size, state)


def _write_pretrained(model: nn.Module, save_directory: Path, max_shard_size: int | str,
                      state: dict[str, torch.Tensor]) -> None:
    if model.config.tie_word_embeddings:
        state.pop("embed_out.weight", None)  # tied to embed_in; transformers saves it once, too
    for key, tensor in state.items():
        if tensor.is_meta:
            raise ValueError(f"save_pretrained: {key!r} is on the meta device (the model was never loaded)")
    seen: set[int] = set()
    for key, tensor in list(state.items()):  # safetensors refuses tensors that share memory
        ptr = tensor.untyped_storage().data_ptr()
        if ptr in seen:
            state[key] = tensor.clone()
        seen.add(ptr)

    save_directory.mkdir(parents=True, exist_ok=True)
    save_state_dict(state, save_directory, max_shard_size=max_shard_size, extra_files=metadata_files(model))


def metadata_files(model: nn.Module) -> dict[str, str]:
    """config.json and generation_config.json as save_pretrained writes them beside the weights."""
    config = model.config
    config.architectures = [model_class_name(model)]
    config.dtype = model.dtype
    files = {CONFIG_NAME: config.to_json_string()}
    if getattr(model, "generation_config", None) is not None:
        files[GENERATION_CONFIG_NAME] = model.generation_config.to_json_string()
    return files
