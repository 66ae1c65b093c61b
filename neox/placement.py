"""device_map placement: one model across CUDA devices, CPU RAM and disk, as transformers spells it.

``from_pretrained(..., device_map=...)`` takes ``"auto"`` / ``"balanced"`` / ``"balanced_low_0"`` /
``"sequential"`` (computed from ``max_memory``), or a dict {module prefix: device} whose devices are
CUDA indices, ``"cuda:N"``, ``"cpu"`` or ``"disk"``. The semantics follow accelerate's
``infer_auto_device_map`` / ``dispatch_model`` (which transformers 5.24 calls):

* A tensor's device is that of the longest key that is a prefix of its name ("" is the root).
  A module listed in the model's ``_no_split_modules`` (a GPT-NeoX layer: its residual stream
  needs every sub-block's output) is never split across devices.
* The *main device* is the first CUDA device in the map, else the CPU. Modules placed on "cpu" or
  "disk" compute on the main device: their weights are brought there for each forward and
  released after (CPU offload / disk offload). Modules on a CUDA device compute where they live.
* "disk" weights are memory-mapped from the checkpoint's safetensors files (or, when the checkpoint
  is not safetensors or is stored in another dtype, from safetensors files written once into
  ``offload_folder``). Between forwards they are views of the mapping whose pages are dropped
  (``madvise(MADV_DONTNEED)``) after each use, so the resident memory of an all-disk model stays
  near the largest placed module (one layer, or the output head) plus activations and the cache.
* Inputs (tensors, tuples, dicts) are moved to each module's compute device before its forward;
  layer i's KV-cache buffers move once to the device that computes layer i. The model's own
  outputs come back on the device of its inputs (accelerate's ``io_same_device``).

Everything is plain torch (forward pre/post hooks); accelerate is not needed. This module knows
``nn.Module`` and the config-independent ``_no_split_modules`` convention, never the model classes.
"""

from __future__ import annotations

import logging
import mmap
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import torch
from torch import nn

from .cache import KVCache
from .checkpoint import read_safetensors_header

logger = logging.getLogger(__name__)

__all__ = ["STRATEGIES", "is_device_map", "plan_placement", "infer_device_map", "Placement", "remove_placement"]

#: device_map strings that ask for a computed placement (the others name one device).
STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")

#: A placed device: a torch.device (cpu or cuda:N) or the string "disk".
Device = Union[torch.device, str]

_DISK = "disk"
_CPU = torch.device("cpu")



def is_device_map(device_map: Any) -> bool:
    """True for the arguments that need placement: a dict, or one of :data:`STRATEGIES`."""
    return isinstance(device_map, Mapping) or (isinstance(device_map, str) and device_map in STRATEGIES)


# ============================================================================== devices and sizes


def _device(value: Any, where: str) -> Device:
    """A device_map value → torch.device (cpu / cuda:N) or "disk"; ValueError naming ``where``."""
    if isinstance(value, bool):
        value = repr(value)  # not an index
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"{where}: device {value} is not a device (CUDA indices are >= 0)")
        device = torch.device("cuda", value)
    elif value == _DISK:
        return _DISK
    elif isinstance(value, (str, torch.device)):
        try:
            device = torch.device("cuda", 0) if value == "cuda" else torch.device(value)
        except (RuntimeError, TypeError):
            device = None
        if device is None or device.type not in ("cpu", "cuda"):
            raise ValueError(
                f"{where}: {value!r} is not a device neox can place on; use a CUDA index, 'cuda:N', 'cpu' or 'disk'"
            )
    else:
        raise ValueError(f"{where}: {value!r} is not a device; use a CUDA index, 'cuda:N', 'cpu' or 'disk'")
    if device.type == "cuda":
        index = device.index or 0
        if not torch.cuda.is_available():
            raise ValueError(f"{where}: device {value!r} asked for, but CUDA is not available")
        if index >= torch.cuda.device_count():
            raise ValueError(f"{where}: device {value!r} asked for, but only {torch.cuda.device_count()} GPU(s) exist")
        return torch.device("cuda", index)
    return _CPU


def _public(device: Device) -> int | str:
    """The value transformers writes in ``hf_device_map``: a CUDA index, "cpu" or "disk"."""
    if device == _DISK:
        return _DISK
    return device.index if device.type == "cuda" else device.type


_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(I?B)?\s*")


def _bytes(size: Any, where: str) -> int:
    """5 | "5GB" (10⁹) | "5GiB" (2³⁰) → bytes, as accelerate's convert_file_size_to_int reads them."""
    if isinstance(size, (int, float)) and not isinstance(size, bool):
        if size < 0:
            raise ValueError(f"{where}: a memory limit must be >= 0 bytes, got {size}")
        return int(size)
    match = _SIZE.fullmatch(str(size).upper()) if isinstance(size, str) else None
    if not match:
        raise ValueError(f"{where}: {size!r} is not a size such as 2000000, '500MB' or '10GiB'")
    number, prefix, unit = float(match[1]), match[2], match[3] or "B"
    return int(number * (1024 if unit == "IB" else 1000) ** " KMGT".index(prefix or " "))


def _available_ram() -> int:
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def _max_memory(max_memory: Mapping | None) -> dict[int | str, int]:
    """{GPU index: bytes, "cpu": bytes}: the user's limits, or the free memory of every device.

    As accelerate: with a user dict only the devices it names are used (disk is always allowed);
    without one, every GPU's free memory and 90% of the available RAM (transformers' margin).
    """
    if max_memory is None:
        limits: dict[int | str, int] = {}
        for i in range(torch.cuda.device_count() if torch.cuda.is_available() else 0):
            limits[i] = torch.cuda.mem_get_info(i)[0]
        limits["cpu"] = int(0.9 * _available_ram())
        return limits
    if not isinstance(max_memory, Mapping):
        raise ValueError(f"max_memory must be a dict {{GPU index or 'cpu': size}}, got {type(max_memory).__name__}")
    limits = {}
    for key, value in max_memory.items():
        where = f"max_memory[{key!r}]"
        if key == _DISK:
            continue  # unlimited, as in accelerate
        device = _device(key, where)
        name: int | str = device.index if device.type == "cuda" else "cpu"
        limits[name] = _bytes(value, where)
    gpus = sorted(k for k in limits if isinstance(k, int))
    return {**{i: limits[i] for i in gpus}, **({"cpu": limits["cpu"]} if "cpu" in limits else {})}


def _tensor_bytes(t: torch.Tensor, dtype: torch.dtype) -> int:
    # Floating parameters load in the requested dtype; buffers keep theirs (rotary inv_freq is fp32).
    itemsize = dtype.itemsize if isinstance(t, nn.Parameter) and t.is_floating_point() else t.element_size()
    return t.numel() * itemsize


def _module_sizes(model: nn.Module, dtype: torch.dtype) -> dict[str, int]:
    """Bytes under every module and every tensor name; a tied tensor counts once, where first seen."""
    sizes: dict[str, int] = {}
    seen: set[int] = set()
    for name, t in _named_tensors(model):
        size = 0 if id(t) in seen else _tensor_bytes(t, dtype)
        seen.add(id(t))
        parts = name.split(".")
        for i in range(len(parts) + 1):
            key = ".".join(parts[:i])
            sizes[key] = sizes.get(key, 0) + size
    return sizes


def _named_tensors(model: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """Every (full name, tensor) of every module, a tied parameter under each of its names."""
    for mod_name, module in model.named_modules(remove_duplicate=False):
        prefix = f"{mod_name}." if mod_name else ""
        for attr, t in list(module._parameters.items()) + list(module._buffers.items()):
            if t is not None:
                yield prefix + attr, t


def _no_split(model: nn.Module) -> set[str]:
    return set(getattr(model, "_no_split_modules", None) or ())


# ============================================================================== computing a map


def infer_device_map(
    model: nn.Module,
    max_memory: Mapping | None = None,
    dtype: torch.dtype = torch.float32,
    strategy: str = "auto",
) -> dict[str, int | str]:
    """The map accelerate's ``infer_auto_device_map`` computes for these limits (module → device).

    GPUs first (in index order), then the CPU, then disk; a module that does not fit is split into
    its children unless it is a no-split module; on the main devices (the first GPU and the CPU)
    room for the largest remaining layer is kept for bringing offloaded layers in. "balanced"
    (= "auto") first lowers each GPU's limit to an even share of the model, as transformers does.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"device_map={strategy!r}: use one of {STRATEGIES} or a dict")
    no_split = _no_split(model)
    sizes = _module_sizes(model, dtype)
    limits = _max_memory(max_memory)
    if strategy != "sequential":
        limits = _balanced(model, limits, sizes, no_split, dtype, user_set=max_memory is not None,
                           low_zero=strategy == "balanced_low_0")
    devices: list[int | str] = [*limits, _DISK]
    gpus = [d for d in devices if isinstance(d, int)]
    main = {gpus[0], "cpu"} if gpus else {"cpu"}

    def children(name: str, module: Any) -> list[tuple[str, Any]]:
        if not isinstance(module, nn.Module):
            return []
        prefix = f"{name}." if name else ""
        items = list(module._parameters.items()) + list(module._modules.items()) + list(module._buffers.items())
        return [(prefix + n, m) for n, m in items if m is not None]

    def max_layer(items: list[tuple[str, Any]]) -> tuple[int, list[str]]:
        best, names, todo = 0, [], list(items)
        while todo:
            name, module = todo.pop(0)
            kids = list(module.named_children()) if isinstance(module, nn.Module) else []
            if not kids or type(module).__name__ in no_split:
                size = sizes.get(name, 0)
                if size > best:
                    best, names = size, [name]
                elif size == best:
                    names.append(name)
            else:
                todo = [(f"{name}.{n}", m) for n, m in kids] + todo
        return best, names

    todo = children("", model)
    placed: dict[str, int | str] = {}
    used = dict.fromkeys(devices, 0)
    current = 0
    layer_size, layer_names = max_layer(todo)
    while todo:
        name, module = todo.pop(0)
        layer_names = [n for n in layer_names if n != name and not n.startswith(name + ".")]
        if not layer_names:
            layer_size, layer_names = max_layer([(n, m) for n, m in todo if isinstance(m, nn.Module)])
        size = sizes.get(name, 0)
        device = devices[current]
        room = None if device == _DISK else limits[device]
        reserved = 0
        if device in main:
            room, reserved = room - layer_size, layer_size
        if room is None or used[device] + size <= room:
            used[device] += size
            placed[name] = device
            continue
        kids = children(name, module) if isinstance(module, nn.Module) else []
        if kids and not type(module).__name__ in no_split and module._modules:
            todo = kids + todo
            layer_size, layer_names = max_layer([(n, m) for n, m in todo if isinstance(m, nn.Module)])
            continue
        used[device] += reserved
        current += 1
        todo.insert(0, (name, module))
    return _clean(placed)


def _balanced(model: nn.Module, limits: dict, sizes: dict[str, int], no_split: set[str], dtype: torch.dtype, *,
              user_set: bool, low_zero: bool) -> dict:
    """transformers' get_balanced_memory: an even share of the model (plus one layer) per GPU."""
    limits = dict(limits)
    gpus = sorted(k for k, v in limits.items() if isinstance(k, int) and v > 0)
    if not gpus:
        return limits
    if len(gpus) == 1:
        if not user_set:
            limits[gpus[0]] = int(limits[gpus[0]] * 0.9)  # room for activations
        return limits
    per_gpu = sizes[""] // (len(gpus) - 1 if low_zero else len(gpus))
    biggest = max((sizes.get(n, 0) for n, m in model.named_modules() if type(m).__name__ in no_split), default=0)
    leaves: dict[str, int] = {}  # bytes of each module's own tensors (a tied one counted once)
    seen: set[int] = set()
    for name, t in _named_tensors(model):
        if "." in name and id(t) not in seen:
            parent = name.rsplit(".", 1)[0]
            leaves[parent] = leaves.get(parent, 0) + _tensor_bytes(t, dtype)
        seen.add(id(t))
    per_gpu += int(1.25 * max(biggest, max(leaves.values(), default=0)))
    for i in gpus[:-1]:
        limits[i] = min(limits[0] if low_zero and i == 0 else per_gpu, limits[i])
    if low_zero:
        limits[0] = min(max(0, sizes[""] - sum(limits[i] for i in gpus[1:])), limits[0])
    return limits


def _clean(placed: dict[str, int | str]) -> dict[str, int | str]:
    """Group the children of a module that all went to one device under the module's name."""
    def values_under(prefix: str) -> set:
        return {v for k, v in placed.items() if prefix == "" or k == prefix or k.startswith(prefix + ".")}

    def clean(prefix: str) -> None:
        keys = [k for k in placed if prefix == "" or k.startswith(prefix + ".")]
        values = values_under(prefix)
        if len(values) == 1 and len(keys) > 1:
            value = values.pop()
            for k in keys:
                del placed[k]
            placed[prefix] = value
            return
        depth = len(prefix.split(".")) + 1 if prefix else 1
        for child in dict.fromkeys(".".join(k.split(".")[:depth]) for k in keys if k != prefix):
            clean(child)

    clean("")
    return placed


# ============================================================================== checking a map


def _resolve(model: nn.Module, device_map: Mapping) -> dict[str, Device]:
    """Check a {prefix: device} map against the model; return every tensor name → its device."""
    modules = dict(model.named_modules(remove_duplicate=False))
    tensors = dict(_named_tensors(model))
    by_id = {id(m): n for n, m in modules.items()}
    resolved: dict[str, Device] = {}
    for key, value in device_map.items():
        if not isinstance(key, str):
            raise ValueError(f"device_map keys are module names (str), got {key!r}")
        name = key
        if name not in modules and name not in tensors:
            # Another name for a module (transformers 5 calls the head lm_head).
            obj: Any = model
            for part in name.split("."):
                obj = getattr(obj, part, None)
            name = by_id.get(id(obj)) if isinstance(obj, nn.Module) else None
            if name is None:
                raise ValueError(f"device_map names {key!r}, which is no module or tensor of {type(model).__name__}")
        resolved[name] = _device(value, f"device_map[{key!r}]")

    persistent = _persistent_names(model)
    out: dict[str, Device] = {}
    missing: dict[str, None] = {}
    for tname in tensors:
        parts = tname.split(".")
        for i in range(len(parts), -1, -1):
            prefix = ".".join(parts[:i])
            if prefix in resolved:
                out[tname] = resolved[prefix]
                break
        else:
            if tname in persistent:
                missing[tname.rpartition(".")[0] or tname] = None
    if missing:
        raise ValueError(
            f"device_map gives no device for module(s) {list(missing)} of {type(model).__name__}; "
            f"add them (or a parent, or '' for everything else)"
        )
    no_split = _no_split(model)
    for mname, module in modules.items():
        split = type(module).__name__ in no_split
        names = [n for n in tensors if n.startswith(mname + ".")] if split else \
            [f"{mname}.{a}" if mname else a for a, t in {**module._parameters, **module._buffers}.items() if t is not None]
        devices = {str(out[n]) for n in names if n in out}
        if len(devices) > 1:
            what = f"a {type(module).__name__} (no-split module)" if split else "one module's own tensors"
            raise ValueError(f"device_map splits {mname!r} across {sorted(devices)}: {what} must stay on one device")
    return out


def _persistent_names(model: nn.Module) -> set[str]:
    names = set()
    for mod_name, module in model.named_modules(remove_duplicate=False):
        prefix = f"{mod_name}." if mod_name else ""
        names.update(prefix + a for a, t in module._parameters.items() if t is not None)
        names.update(prefix + a for a, t in module._buffers.items()
                     if t is not None and a not in module._non_persistent_buffers_set)
    return names


def compact_map(model: nn.Module, devices: Mapping[str, Device]) -> dict[str, int | str]:
    """Per-tensor devices → the shortest {module: device} map (transformers' ``hf_device_map`` form)."""
    out: dict[str, int | str] = {}

    def walk(name: str, module: nn.Module) -> None:
        prefix = f"{name}." if name else ""
        under = {str(d): d for n, d in devices.items() if name == "" or n.startswith(prefix)}
        if not under:
            return
        if len(under) == 1:
            out[name] = _public(next(iter(under.values())))
            return
        for attr, t in list(module._parameters.items()) + list(module._buffers.items()):
            if t is not None and prefix + attr in devices:
                out[prefix + attr] = _public(devices[prefix + attr])
        for child_name, child in module.named_children():
            walk(prefix + child_name, child)

    walk("", model)
    return out


# ============================================================================== disk: memory-mapped tensors


def _layout(path: Path) -> dict[str, tuple[torch.dtype, list[int], int, int]]:
    """{name: (dtype, shape, first byte, end byte)} of a safetensors file, offsets from the file's start."""
    h = read_safetensors_header(path)  # validated; names the file and tensor if anything is off
    return {k: (e.dtype, list(e.shape), h.data_start + e.start, h.data_start + e.end) for k, e in h.tensors.items()}


class _MappedFile:
    """One safetensors file mapped copy-on-write; tensors are views, pages dropped after use."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.tensors = _layout(path)
        with open(path, "rb") as f:
            # ACCESS_COPY (MAP_PRIVATE): writable views (torch warns on read-only buffers), never
            # written back; the pages are the page cache's until a tensor is written to.
            self.map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)

    def dtype(self, key: str) -> torch.dtype | None:
        return self.tensors[key][0] if key in self.tensors else None

    def tensor(self, key: str) -> torch.Tensor:
        dtype, shape, start, end = self.tensors[key]
        if end == start:
            return torch.empty(shape, dtype=dtype)
        return torch.frombuffer(self.map, dtype=dtype, count=(end - start) // dtype.itemsize, offset=start).view(shape)

    def drop(self) -> None:
        """Unmap every page of the file from the process (clean pages: the next read faults them back in).

        The whole mapping, not one tensor's bytes: the kernel maps file pages in large folios, so
        reading the last page of one tensor can map the start of the next one too (seen on Linux
        6.18 / ext4: a 256 KiB tensor's forward left its neighbour's 252 KiB resident). Only disk
        tensors are views of this mapping, and a dropped page that is needed again is a minor fault.
        """
        if len(self.map) and hasattr(mmap, "MADV_DONTNEED"):  # not on Windows: pages then stay cached
            self.map.madvise(mmap.MADV_DONTNEED)


# ============================================================================== the runtime


def _to(obj: Any, device: torch.device) -> Any:
    """Tensors (inside tuples, lists, dicts) → ``device``; a KVCache and anything else pass as they are."""
    if isinstance(obj, torch.Tensor):
        return obj if obj.device == device else obj.to(device, non_blocking=True)
    if isinstance(obj, (list, tuple)):
        moved = [_to(o, device) for o in obj]
        return type(obj)(*moved) if hasattr(obj, "_fields") else type(obj)(moved)
    if isinstance(obj, Mapping) and not isinstance(obj, KVCache):
        return type(obj)({k: _to(v, device) for k, v in obj.items()})
    return obj


def _first_device(obj: Any) -> torch.device | None:
    if isinstance(obj, torch.Tensor):
        return obj.device
    if isinstance(obj, (list, tuple)):
        items = obj
    elif isinstance(obj, Mapping):
        items = obj.values()
    else:
        return None
    for o in items:
        d = _first_device(o)
        if d is not None:
            return d
    return None


@dataclass
class _Unit:
    """One placed module: where it lives, where it computes, what to bring in and drop around a call."""

    name: str
    module: nn.Module
    device: Device
    execution: torch.device
    move_inputs: bool = False
    swaps: list[tuple[nn.Parameter, torch.Tensor]] = field(default_factory=list)  # (param, stored)
    drops: list[_MappedFile] = field(default_factory=list)
    cache_layers: list[int] = field(default_factory=list)
    output_to: torch.device | None = None  # the offloaded output head returns logits where its weight is kept

    def pre(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        if self.move_inputs:
            for value in (*args, *kwargs.values()):
                if isinstance(value, KVCache):
                    self._relocate(value)
            args, kwargs = _to(args, self.execution), _to(kwargs, self.execution)
        for param, stored in self.swaps:
            param.data = stored.to(self.execution, non_blocking=True)
        return args, kwargs

    def post(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
        for param, stored in self.swaps:
            param.data = stored
        for mapped in self.drops:
            mapped.drop()
        return None if self.output_to is None else _to(output, self.output_to)

    def _relocate(self, cache: KVCache) -> None:
        for i in self.cache_layers:
            if i < len(cache.keys) and cache.keys[i].device != self.execution:
                cache.keys[i] = cache.keys[i].to(self.execution)
                cache.values[i] = cache.values[i].to(self.execution)


class _RootHook:
    """The whole model's outputs come back on its inputs' device (accelerate's io_same_device)."""

    def __init__(self) -> None:
        self.stack: list[torch.device | None] = []

    def pre(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        self.stack.append(_first_device((args, kwargs)))

    def post(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
        device = self.stack.pop() if self.stack else None
        return output if device is None else _to(output, device)


class Placement:
    """A checked device map for one (meta-device) model, and the state to load and dispatch it.

    ``plan_placement`` builds it; loading calls :meth:`place` for every checkpoint tensor, then
    :meth:`dispatch` once the model holds its weights.
    """

    def __init__(self, model: nn.Module, devices: dict[str, Device], dtype: torch.dtype,
                 offload_folder: str | os.PathLike | None) -> None:
        self.devices = devices  # tensor name → device
        self.dtype = dtype
        self.offload_folder = Path(offload_folder) if offload_folder is not None else None
        self.device_map = compact_map(model, devices)
        gpus = [torch.device("cuda", v) for v in self.device_map.values() if isinstance(v, int)]
        self.main_device = gpus[0] if gpus else _CPU
        self._files: dict[Path, _MappedFile] = {}
        self._mapped: dict[str, _MappedFile] = {}  # disk tensor name → the mapped file it is a view of
        self.handles: list[Any] = []

    @property
    def single_device(self) -> torch.device | None:
        """The one device of a map that places everything on one CUDA device or the CPU."""
        values = set(self.device_map.values())
        if len(values) == 1 and _DISK not in values:
            return _device(values.pop(), "device_map")
        return None

    # -- loading ------------------------------------------------------------------------------

    def place(self, target: str, path: Path | None, key: str, tensor: torch.Tensor) -> torch.Tensor:
        """The loaded tensor for ``target`` (read as ``key`` from ``path``; None: from a state_dict):
        moved to its CUDA device, kept (CPU), or disk-mapped."""
        device = self.devices.get(target, self.main_device)
        if device != _DISK:
            return tensor if tensor.device == device else tensor.to(device)
        want = self.dtype if tensor.is_floating_point() else tensor.dtype
        if path is not None and path.name.endswith(".safetensors"):
            mapped = self._file(path)
            stored = mapped.dtype(key)
            if stored == want:
                return self._map(target, mapped, key)
        if self.offload_folder is None:
            if path is None:
                why = "the weights come from a state_dict, not a file"
            elif not path.name.endswith(".safetensors"):
                why = f"{path.name} is not a safetensors file"
            else:
                why = f"{path.name} stores {key!r} as {stored}, and dtype={want} was asked for"
            raise ValueError(
                f"device_map puts {target!r} on 'disk', but {why}: pass offload_folder=... (a folder to "
                "write the converted weights to, memory-mapped from there)"
            )
        from safetensors.torch import save_file  # only when weights are offloaded

        self.offload_folder.mkdir(parents=True, exist_ok=True)
        out = self.offload_folder / f"{target}.safetensors"
        save_file({target: tensor.detach().to(want).contiguous()}, str(out), metadata={"format": "pt"})
        self._files.pop(out, None)
        return self._map(target, self._file(out), target)

    def _file(self, path: Path) -> _MappedFile:
        if path not in self._files:
            self._files[path] = _MappedFile(path)
        return self._files[path]

    def _map(self, target: str, mapped: _MappedFile, key: str) -> torch.Tensor:
        self._mapped[target] = mapped
        return mapped.tensor(key)

    # -- dispatching --------------------------------------------------------------------------

    def dispatch(self, model: nn.Module) -> None:
        """Move each module's tensors where it lives, attach the hooks, set ``model.hf_device_map``."""
        units = self._units(model)
        head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        # Inputs need moving unless everything computes on the CPU (accelerate moves them always).
        move = {str(u.execution) for u in units} != {"cpu"}
        owner: dict[int, tuple[torch.Tensor, _MappedFile | None]] = {}  # id(param) → (stored, its mapping)
        for unit in units:
            prefix = f"{unit.name}." if unit.name else ""
            for mod_name, module in unit.module.named_modules(remove_duplicate=False):
                full = prefix + mod_name + ("." if mod_name else "")
                for attr, t in list(module._parameters.items()):
                    if t is None:
                        continue
                    if id(t) not in owner:
                        stored_device = _CPU if unit.device == _DISK else unit.device
                        if t.device != stored_device and full + attr not in self._mapped:
                            t.data = t.data.to(stored_device)
                        owner[id(t)] = (t.data, self._mapped.get(full + attr))
                    stored, mapped = owner[id(t)]
                    if stored.device != unit.execution:
                        unit.swaps.append((t, stored))
                    if mapped is not None and mapped not in unit.drops:
                        unit.drops.append(mapped)
                for attr, b in list(module._buffers.items()):
                    if b is not None and b.device != unit.execution:
                        module._buffers[attr] = b.to(unit.execution)  # offload_buffers=False, as accelerate
                layer = getattr(module, "layer_idx", None)
                if isinstance(layer, int) and not isinstance(layer, bool):
                    unit.cache_layers.append(layer)
            unit.move_inputs = move
            if unit.module is head and unit.swaps:
                # generate() puts its tensors on the device of the head's weight, which for a head
                # offloaded to cpu/disk is the CPU while it computes on the main device.
                unit.output_to = unit.swaps[0][1].device
            if unit.move_inputs or unit.swaps or unit.drops:
                self.handles.append(unit.module.register_forward_pre_hook(unit.pre, with_kwargs=True))
                self.handles.append(unit.module.register_forward_hook(unit.post, with_kwargs=True, always_call=True))
        if move:
            root = _RootHook()
            self.handles.append(model.register_forward_pre_hook(root.pre, with_kwargs=True, prepend=True))
            self.handles.append(model.register_forward_hook(root.post, with_kwargs=True, always_call=True))
        # Start with no disk page resident, whatever loading touched.
        for mapped in self._files.values():
            mapped.drop()
        model.hf_device_map = dict(self.device_map)
        model._placement = self
        logger.info("placed %s: %s (compute on %s for cpu/disk modules)", type(model).__name__,
                    self.device_map, self.main_device)

    def _units(self, model: nn.Module) -> list[_Unit]:
        """The hooked modules: each no-split module, and each other module with tensors of its own."""
        no_split = _no_split(model)
        units: list[_Unit] = []

        def walk(name: str, module: nn.Module) -> None:
            prefix = f"{name}." if name else ""
            own = [prefix + a for a, t in {**module._parameters, **module._buffers}.items() if t is not None]
            if type(module).__name__ in no_split:
                own = [n for n in self.devices if n.startswith(prefix)]
            if own:
                device = self.devices.get(own[0], self.main_device)
                execution = device if isinstance(device, torch.device) and device.type == "cuda" else self.main_device
                units.append(_Unit(name, module, device, execution))
                if type(module).__name__ in no_split:
                    return
            for child_name, child in module.named_children():
                walk(prefix + child_name, child)

        walk("", model)
        return units

    def remove(self, model: nn.Module) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()
        for attr in ("hf_device_map", "_placement"):
            if attr in model.__dict__:
                delattr(model, attr)


def plan_placement(
    model: nn.Module,
    device_map: str | Mapping,
    *,
    dtype: torch.dtype,
    max_memory: Mapping | None = None,
    offload_folder: str | os.PathLike | None = None,
) -> Placement:
    """Check or compute the device map of a model built on the meta device (no weights needed)."""
    if isinstance(device_map, str):
        if device_map not in STRATEGIES:
            raise ValueError(f"device_map={device_map!r}: use a device, one of {STRATEGIES}, or a dict")
        device_map = infer_device_map(model, max_memory, dtype, device_map)
    elif max_memory is not None:
        logger.warning("max_memory is used only with device_map='auto'/'balanced'/'sequential'; ignored for a dict")
    devices = _resolve(model, device_map)
    return Placement(model, devices, dtype, offload_folder)


def remove_placement(model: nn.Module) -> None:
    """Detach the hooks that a placed ``from_pretrained`` attached (the weights stay where they are)."""
    placement = getattr(model, "_placement", None)
    if placement is not None:
        placement.remove(model)
