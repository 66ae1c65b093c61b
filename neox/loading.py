"""from_pretrained / save_pretrained for the GPT-NeoX models.

Loading builds the model on the meta device (no memory, no random init) and assigns each
checkpoint tensor to its parameter, so the weights exist once: a safetensors tensor already in
the requested dtype on the CPU is a view of the memory-mapped file; any other tensor is read
with plain file reads, converted and moved one at a time.
"""

from __future__ import annotations

import logging
import os
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .checkpoint import (
    IGNORED_KEY_PATTERN,
    CheckpointError,
    check_safetensors_header,
    checkpoint_dtype,
    find_weight_files,
    iter_checkpoint_tensors,
    save_state_dict,
)
from .config import CONFIG_NAME, GPTNeoXConfig
from .generation import GENERATION_CONFIG_NAME, GenerationConfig
from .hub import HubOptions, resolve_file
from .quantization import prepare_for_loading, resolve_quantization

logger = logging.getLogger(__name__)

__all__ = ["load_pretrained", "save_pretrained", "metadata_files", "resolve_dtype", "resolve_device"]

_DTYPES = {
    "float32": torch.float32, "float": torch.float32, "fp32": torch.float32,
    "float16": torch.float16, "half": torch.float16, "fp16": torch.float16,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float64": torch.float64, "double": torch.float64,
}

_SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}

# Accepted and ignored: they only tune transformers' own loader, which neox does not need.
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
    output_loading_info = kwargs.pop("output_loading_info", False)
    attn_implementation = kwargs.pop("attn_implementation", None)
    use_safetensors = kwargs.pop("use_safetensors", None)
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

    quant = resolve_quantization(quantization, quantization_config, config.extra.get("quantization_config"))
    if state_dict is None:
        files = find_weight_files(name, options)
        if use_safetensors is True and not files[0].name.endswith(".safetensors"):
            raise CheckpointError(f"use_safetensors=True but {name!r} has only {files[0].name}")
        if use_safetensors is False:
            logger.info("use_safetensors=False: neox still prefers safetensors files when present")
        dtype = resolve_dtype(dtype, files, config)
        device = resolve_device(device_arg, weight_bytes=sum(f.stat().st_size for f in files))
        tensors = _iter_tensors(files, dtype, device, copy=quant is not None)
    else:
        if dtype is None or dtype == "auto":
            dtype = config.dtype or next((t.dtype for t in state_dict.values() if t.is_floating_point()), None)
        dtype = resolve_dtype(dtype, None, config)
        device = resolve_device(device_arg, weight_bytes=sum(t.numel() * t.element_size() for t in state_dict.values()))
        tensors = _iter_state_dict(state_dict, dtype, device)

    with torch.device("meta"):
        model = cls(config)
    # Quantising swaps the linears now; `take` then quantises each weight as it is read.
    take = prepare_for_loading(model, quant) if quant is not None else None
    taken: set[str] = set()
    expected = dict(model.state_dict(keep_vars=True))
    prefix = cls.base_model_prefix
    is_base = not hasattr(model, prefix)  # GPTNeoXModel has no `gpt_neox` child

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
        loaded[target] = tensor

    tied = {"embed_out.weight"} if config.tie_word_embeddings and not is_base else set()
    missing = [k for k in expected if k not in loaded and k not in tied and k not in taken
               and k not in {m[0] for m in mismatched}]
    model.load_state_dict(loaded, strict=False, assign=True)
    _materialize_missing(model, missing + [m[0] for m in mismatched], dtype, device)
    for module in model.modules():
        if hasattr(module, "reset_parameters") and type(module).__name__ == "RotaryEmbedding":
            module.reset_parameters(device)
    model.tie_weights()

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


def _config_fields() -> set[str]:
    import dataclasses

    return {f.name for f in dataclasses.fields(GPTNeoXConfig)} | {"rope_parameters"}


def _hub_kwargs(options: HubOptions) -> dict[str, Any]:
    return {name: getattr(options, name) for name in HubOptions.__slots__}


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


def _iter_tensors(files: list[Path], dtype: torch.dtype, device: torch.device,
                  copy: bool = False) -> Iterator[tuple[str, str, torch.Tensor]]:
    # copy=True reads each tensor into its own memory instead of viewing the mapped file, so a
    # tensor dropped after use (quantised while loading) leaves nothing behind in RSS.
    def convert(t: torch.Tensor) -> torch.Tensor:
        return t.to(device=device, dtype=dtype if t.is_floating_point() else t.dtype)

    for path in files:
        if path.name.endswith(".safetensors"):
            if device.type == "cpu" and checkpoint_dtype([path]) in (dtype, None) and not copy:
                # Zero-copy: tensors are views of the memory-mapped file.
                for key, tensor in iter_checkpoint_tensors([path]):
                    yield path.name, key, convert(tensor)
            else:
                for key, tensor in _read_safetensors(path, dtype, device):
                    yield path.name, key, tensor
        else:
            for key, tensor in iter_checkpoint_tensors([path]):
                yield path.name, key, convert(tensor)


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


#: Bytes read per step when a tensor is converted on the way in (dtype or device change).
_CHUNK_BYTES = 16 * 2**20


def _read_safetensors(path: Path, dtype: torch.dtype, device: torch.device) -> Iterator[tuple[str, torch.Tensor]]:
    """Read tensors one by one with plain reads, each straight into its final dtype and device.

    A tensor that needs converting is read through one reused 16 MiB staging buffer, so the
    peak is the converted weights plus that buffer — not plus a full-precision copy of the
    largest tensor (the 50k × 1k embedding of a 410M model is 206 MB in fp32).
    """
    header = check_safetensors_header(path)
    staging = None
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        base = 8 + n
        for key, info in header.items():
            if key == "__metadata__":
                continue
            src_dtype = _SAFETENSORS_DTYPES.get(info["dtype"])
            if src_dtype is None:
                raise CheckpointError(f"{path}: tensor {key!r} has unsupported dtype {info['dtype']}")
            start, end = info["data_offsets"]
            out_dtype = dtype if src_dtype.is_floating_point else src_dtype
            out = torch.empty(info["shape"], dtype=out_dtype, device=device)
            itemsize = torch.empty((), dtype=src_dtype).element_size()
            numel = out.numel()
            if end - start != numel * itemsize:
                raise CheckpointError(
                    f"{path}: tensor {key!r} has {end - start} bytes, its shape needs {numel * itemsize}"
                )
            f.seek(base + start)
            if out_dtype == src_dtype and device.type == "cpu":
                _read_exact(f, out.reshape(-1).view(torch.uint8), path, key)
            else:
                if staging is None:
                    staging = torch.empty(_CHUNK_BYTES, dtype=torch.uint8)
                per_chunk = max(1, _CHUNK_BYTES // itemsize)
                flat = out.view(-1)
                for i in range(0, numel, per_chunk):
                    k = min(per_chunk, numel - i)
                    chunk = staging[: k * itemsize]
                    _read_exact(f, chunk, path, key)
                    flat[i : i + k].copy_(chunk.view(src_dtype))
            yield key, out


def _read_exact(f: Any, buffer: torch.Tensor, path: Path, key: str) -> None:
    """Fill a contiguous uint8 CPU tensor from the file, or say which tensor is cut short."""
    if buffer.numel() and f.readinto(memoryview(buffer.numpy())) != buffer.numel():
        raise CheckpointError(f"{path} is truncated inside tensor {key!r}")


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
) -> None:
    if save_directory.exists() and not save_directory.is_dir():
        raise ValueError(f"save_pretrained: {save_directory} exists and is not a folder")
    state = dict(state_dict if state_dict is not None else model.state_dict())
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
    config.architectures = [type(model).__name__]
    config.dtype = model.dtype
    files = {CONFIG_NAME: config.to_json_string()}
    if getattr(model, "generation_config", None) is not None:
        files[GENERATION_CONFIG_NAME] = model.generation_config.to_json_string()
    return files
