"""Checkpoint files: find them, read them without a second copy, write them atomically.

Every read and write of a weight file lives here: safetensors (memory-mapped, or read and
converted tensor by tensor), legacy ``.bin`` files, and the shard indexes. ``loading`` only builds
the model and assigns the tensors this module yields.

Reading follows transformers' order of preference: model.safetensors, model.safetensors.index.json,
pytorch_model.bin, pytorch_model.bin.index.json. safetensors files are memory-mapped (tensors are
views of the page cache until first written) when they are already in the wanted dtype on the CPU,
and otherwise read with plain reads straight into the wanted dtype and device. Both paths start
from one header parser, :func:`read_safetensors_header`, which checks every entry as strictly as
the safetensors library does. Legacy ``.bin`` files go through ``torch.load(weights_only=True)``
only, never a full unpickle.

Where neox is stricter than transformers 5.24:

* shard names in an index must be plain file names inside the checkpoint folder (transformers
  follows ``../``), and must be regular files (a FIFO would hang the load);
* each tensor is read from the shard the index assigns it to; a shard holding a tensor the index
  puts elsewhere is named in a warning and that copy is not used (transformers takes whichever
  shard comes last); a tensor the index does not list is loaded, with a warning;
* a truncated or corrupt safetensors file is reported with its name before any tensor is read;
* saving removes stale weight files of the other layout (transformers leaves a stale
  model.safetensors beside new shards, and silently loads the stale file next time).
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import stat
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .files import JSONFileError, file_mode, parse_json, read_json, temp_path, write_error
from .hub import HubOptions, resolve_file

logger = logging.getLogger(__name__)

SAFE_WEIGHTS_NAME = "model.safetensors"
SAFE_WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
WEIGHTS_NAME = "pytorch_model.bin"
WEIGHTS_INDEX_NAME = "pytorch_model.bin.index.json"
WEIGHT_FILES = (SAFE_WEIGHTS_NAME, SAFE_WEIGHTS_INDEX_NAME, WEIGHTS_NAME, WEIGHTS_INDEX_NAME)

#: Buffers that old checkpoints carry and that the model recomputes: dropped without a warning.
IGNORED_KEY_PATTERN = re.compile(r"(^|\.)attention\.(bias|masked_bias|rotary_emb\.inv_freq)$")

#: safetensors dtype names → torch dtypes (the table safetensors.torch itself uses).
SAFETENSORS_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "U16": torch.uint16, "U32": torch.uint32, "U64": torch.uint64, "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
    "F8_E4M3FNUZ": torch.float8_e4m3fnuz, "F8_E5M2FNUZ": torch.float8_e5m2fnuz, "C64": torch.complex64,
}

#: The safetensors library refuses headers above 100 MB; so do we, before reading one.
MAX_HEADER_BYTES = 100_000_000


class CheckpointError(OSError):
    """A checkpoint file is missing, corrupt or unsafe; the message names the file."""


# ---------------------------------------------------------------------------------------- finding


@dataclass
class Checkpoint:
    """The weight files of one checkpoint and, when sharded, the index's tensor → shard map."""

    files: list[Path]
    index: Path | None = None
    weight_map: dict[str, str] | None = None

    def assigned(self, path: Path) -> set[str] | None:
        """Tensor names the index assigns to ``path`` (None: no index, every tensor counts)."""
        if self.weight_map is None:
            return None
        return {k for k, shard in self.weight_map.items() if shard == path.name}


def find_checkpoint(name_or_path: str | os.PathLike, options: HubOptions) -> Checkpoint:
    """The weight files of a checkpoint, in the order transformers prefers them."""
    for name in WEIGHT_FILES:
        path = resolve_file(name_or_path, name, options)
        if path is None:
            continue
        _require_regular_file(path)
        if not name.endswith(".index.json"):
            return Checkpoint([path])
        weight_map = read_index(path)
        shards = list(dict.fromkeys(weight_map.values()))  # unique, in order
        files = [_resolve_shard(name_or_path, path, shard, options) for shard in shards]
        return Checkpoint(files, path, weight_map)
    where = f"folder {str(name_or_path)!r}" if Path(name_or_path).expanduser().is_dir() else f"repo {str(name_or_path)!r}"
    raise CheckpointError(f"no weights found in the {where}: looked for {', '.join(WEIGHT_FILES)}")


def find_weight_files(name_or_path: str | os.PathLike, options: HubOptions) -> list[Path]:
    return find_checkpoint(name_or_path, options).files


def read_index(index_path: Path) -> dict[str, str]:
    """The index's tensor name → shard file name map, each shard name checked to stay in the folder."""
    try:
        index = read_json(index_path, "shard index", max_bytes=256 * 2**20)
    except (JSONFileError, OSError) as e:
        raise CheckpointError(str(e)) from None
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise CheckpointError(f"{index_path} has no 'weight_map' object of tensor name → shard file name")
    if not weight_map:
        raise CheckpointError(f"{index_path} has an empty 'weight_map': it lists no tensors")
    for shard in dict.fromkeys(weight_map.values()):
        # A shard name is a file beside the index: no folders, no "..", no absolute paths.
        if shard in ("", ".", "..") or "/" in shard or "\\" in shard or os.path.isabs(shard) or "\0" in shard:
            raise CheckpointError(
                f"{index_path} names shard {shard!r}: shard names must be plain file names inside the checkpoint folder"
            )
    return weight_map


def _resolve_shard(name_or_path: str | os.PathLike, index_path: Path, shard: str, options: HubOptions) -> Path:
    path = index_path.parent / shard if Path(name_or_path).expanduser().is_dir() else resolve_file(name_or_path, shard, options)
    if path is None or not os.path.lexists(path):
        raise CheckpointError(f"shard {shard!r} listed in {index_path} is missing")
    _require_regular_file(path)
    return Path(path)


def _require_regular_file(path: Path) -> None:
    try:
        mode = os.stat(path).st_mode  # follows symlinks: the Hub cache links snapshots to blobs
    except OSError as e:
        raise CheckpointError(f"cannot read {path}: {e.strerror}") from None
    if not stat.S_ISREG(mode):
        raise CheckpointError(f"{path} is not a regular file")


# ------------------------------------------------------------------------------ safetensors header


@dataclass(frozen=True)
class TensorEntry:
    """One validated header entry: where a tensor's bytes lie, relative to the data section."""

    dtype: torch.dtype
    shape: tuple[int, ...]
    start: int
    end: int


@dataclass
class SafetensorsHeader:
    path: Path
    data_start: int  # 8 + header length: where byte 0 of the data section lies in the file
    tensors: dict[str, TensorEntry] = field(default_factory=dict)  # in file order
    metadata: dict[str, str] | None = None


def read_safetensors_header(path: Path) -> SafetensorsHeader:
    """Parse and validate a safetensors header; every error names the file and the tensor.

    Checked as the safetensors library checks before it maps a byte: a known dtype, a shape of
    non-negative integers, 0 ≤ start ≤ end, end − start = numel × itemsize, the tensors tiling
    the data section exactly (no overlap, no hole, nothing past the end, nothing left over), and
    no tensor named twice.
    """
    path = Path(path)
    try:
        size = os.stat(path).st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise CheckpointError(f"{path} is truncated ({size} bytes): no safetensors header")
            (header_len,) = struct.unpack("<Q", head)
            if header_len > MAX_HEADER_BYTES:
                raise CheckpointError(
                    f"{path} is not a safetensors file: its header claims {header_len} bytes "
                    f"(safetensors allows {MAX_HEADER_BYTES})"
                )
            if header_len > size - 8:
                raise CheckpointError(f"{path} is truncated: its header needs {header_len} bytes, the file has {size - 8}")
            raw = f.read(header_len)
    except CheckpointError:
        raise
    except OSError as e:
        raise CheckpointError(f"cannot read {path}: {e.strerror or e}") from None
    try:
        header = parse_json(raw, f"the safetensors header of {path}", unique_keys=True)
    except JSONFileError as e:
        raise CheckpointError(f"{path} has a corrupt safetensors header: {e}") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path} has a corrupt safetensors header: a JSON {type(header).__name__}, not an object")
    out = SafetensorsHeader(path, 8 + header_len)
    metadata = header.pop("__metadata__", None)
    if metadata is not None and not (
        isinstance(metadata, dict) and all(isinstance(v, str) for v in metadata.values())
    ):
        raise CheckpointError(f"{path}: the header's __metadata__ must map strings to strings")
    out.metadata = metadata
    for key, info in header.items():
        out.tensors[key] = _entry(path, key, info)
    _check_tiling(path, out.tensors, size - out.data_start)
    return out


def _entry(path: Path, key: str, info: Any) -> TensorEntry:
    where = f"{path}: tensor {key!r}"
    if not isinstance(info, dict):
        raise CheckpointError(f"{where} has a header entry {info!r}, not an object with dtype, shape, data_offsets")
    missing = {"dtype", "shape", "data_offsets"} - info.keys()
    if missing:
        raise CheckpointError(f"{where} has no {', '.join(sorted(missing))} in the header")
    dtype = info["dtype"]
    if not isinstance(dtype, str) or dtype not in SAFETENSORS_DTYPES:
        raise CheckpointError(f"{where} has unknown dtype {dtype!r}; known: {', '.join(SAFETENSORS_DTYPES)}")
    shape = info["shape"]
    if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
        raise CheckpointError(f"{where} has shape {shape!r}; a shape is a list of non-negative integers")
    offsets = info["data_offsets"]
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_int(o) for o in offsets)):
        raise CheckpointError(f"{where} has data_offsets {offsets!r}; expected [start, end] integers")
    start, end = offsets
    if not 0 <= start <= end:
        raise CheckpointError(f"{where} has data_offsets [{start}, {end}]; expected 0 <= start <= end")
    torch_dtype = SAFETENSORS_DTYPES[dtype]
    numel = 1
    for d in shape:
        numel *= d
    if end - start != numel * torch_dtype.itemsize:
        raise CheckpointError(
            f"{where} spans {end - start} bytes, but its shape {shape} of {dtype} needs {numel * torch_dtype.itemsize}"
        )
    return TensorEntry(torch_dtype, tuple(shape), start, end)


def _check_tiling(path: Path, tensors: dict[str, TensorEntry], data_bytes: int) -> None:
    """The tensors must cover the data section exactly, one after another (as safetensors requires)."""
    position, previous = 0, None
    for key, e in sorted(tensors.items(), key=lambda item: (item[1].start, item[1].end)):
        if e.start != position:
            if e.start > data_bytes:
                break  # reported below as truncation
            what = "overlaps" if e.start < position else "leaves a gap after"
            other = f"tensor {previous!r}" if previous is not None else "the start of the data"
            raise CheckpointError(
                f"{path}: tensor {key!r} (bytes {e.start}..{e.end}) {what} {other} (which ends at byte {position})"
            )
        position, previous = e.end, key
    else:
        if position == data_bytes:
            return
        if position < data_bytes:
            raise CheckpointError(
                f"{path} has {data_bytes - position} bytes after its last tensor: not a file safetensors wrote"
            )
    need = max(e.end for e in tensors.values())
    raise CheckpointError(f"{path} is truncated: its header needs {need} data bytes, the file has {data_bytes}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# ---------------------------------------------------------------------------------------- reading


def iter_checkpoint(
    checkpoint: Checkpoint, dtype: torch.dtype | None = None, device: torch.device | None = None,
    copy: bool = False,
) -> Iterator[tuple[Path, str, torch.Tensor]]:
    """Yield (file, name, tensor) for every tensor, floating ones in ``dtype`` on ``device``.

    ``copy=True`` reads each tensor into memory of its own instead of viewing the mapped file, so
    a tensor the caller drops (quantised while loading) leaves nothing resident behind.

    ``dtype``/``device`` None keep the file's own. With an index, each tensor comes from the shard
    the index assigns it to; copies elsewhere are named in a warning and skipped unread.
    """
    device = torch.device("cpu") if device is None else device
    for path in checkpoint.files:
        assigned = checkpoint.assigned(path)
        if path.name.endswith(".safetensors"):
            header = read_safetensors_header(path)
            keys = _keys_to_read(checkpoint, path, list(header.tensors), assigned)
            yield from ((path, k, t) for k, t in iter_safetensors(header, dtype, device, keys, copy))
        else:
            state = _load_torch_bin(path)
            keys = set(_keys_to_read(checkpoint, path, list(state), assigned))
            for key, tensor in state.items():
                if key in keys:
                    yield path, key, _convert(tensor, dtype, device)


def _keys_to_read(checkpoint: Checkpoint, path: Path, present: list[str], assigned: set[str] | None) -> list[str]:
    if assigned is None:
        return present
    absent = assigned.difference(present)
    if absent:
        raise CheckpointError(
            f"{checkpoint.index} assigns tensor {sorted(absent)[0]!r} to {path.name}, which does not hold it"
            + (f" ({len(absent) - 1} more missing)" if len(absent) > 1 else "")
        )
    elsewhere = [k for k in present if k not in assigned and k in checkpoint.weight_map]
    unlisted = [k for k in present if k not in checkpoint.weight_map]
    if elsewhere:
        logger.warning(
            "%s also holds %s, which %s assigns to another shard; the copy in the assigned shard is used",
            path, ", ".join(repr(k) for k in elsewhere[:5]) + (f" and {len(elsewhere) - 5} more" if len(elsewhere) > 5 else ""),
            checkpoint.index.name,
        )
    if unlisted:  # loaded, as transformers loads every tensor of every shard
        logger.warning(
            "%s holds %s, which %s does not list; loaded from this shard",
            path, ", ".join(repr(k) for k in unlisted[:5]) + (f" and {len(unlisted) - 5} more" if len(unlisted) > 5 else ""),
            checkpoint.index.name,
        )
    return [k for k in present if k in assigned or k not in checkpoint.weight_map]


def _convert(t: torch.Tensor, dtype: torch.dtype | None, device: torch.device) -> torch.Tensor:
    return t.to(device=device, dtype=dtype if dtype is not None and t.is_floating_point() else t.dtype)


def iter_safetensors(
    header: SafetensorsHeader,
    dtype: torch.dtype | None = None,
    device: torch.device | None = None,
    keys: list[str] | None = None,
    copy: bool = False,
) -> Iterator[tuple[str, torch.Tensor]]:
    """Tensors of one validated safetensors file: memory-mapped views when no conversion (and no
    ``copy``) is needed, else plain reads into fresh memory."""
    device = torch.device("cpu") if device is None else device
    keys = list(header.tensors) if keys is None else keys
    same_dtype = dtype is None or all(
        e.dtype == dtype for e in header.tensors.values() if e.dtype.is_floating_point
    )
    if device.type == "cpu" and same_dtype and not copy:
        yield from _iter_mapped(header.path, keys)
    else:
        yield from _iter_converted(header, keys, dtype, device)


def _iter_mapped(path: Path, keys: list[str]) -> Iterator[tuple[str, torch.Tensor]]:
    from safetensors import safe_open  # the Rust extension: imported on first use, not with neox

    try:
        handle = safe_open(str(path), framework="pt", device="cpu")
    except Exception as e:  # SafetensorError carries no file name
        raise CheckpointError(f"{path} is not a readable safetensors file: {e}") from None
    with handle as f:
        for key in keys:
            yield key, f.get_tensor(key)


#: Bytes read per step when a tensor is converted on the way in (dtype or device change).
_CHUNK_BYTES = 16 * 2**20


def _iter_converted(
    header: SafetensorsHeader, keys: list[str], dtype: torch.dtype | None, device: torch.device
) -> Iterator[tuple[str, torch.Tensor]]:
    """Read tensors one by one with plain reads, each straight into its final dtype and device.

    A tensor that needs converting is read through one reused 16 MiB staging buffer, so the
    peak is the converted weights plus that buffer — not plus a full-precision copy of the
    largest tensor (the 50k × 1k embedding of a 410M model is 206 MB in fp32).
    """
    path = header.path
    staging = None
    wanted = set(keys)
    entries = sorted(((k, e) for k, e in header.tensors.items() if k in wanted), key=lambda item: item[1].start)
    with open(path, "rb") as f:
        for key, entry in entries:
            src_dtype = entry.dtype
            out_dtype = dtype if dtype is not None and src_dtype.is_floating_point else src_dtype
            out = torch.empty(entry.shape, dtype=out_dtype, device=device)
            itemsize = src_dtype.itemsize
            numel = out.numel()
            f.seek(header.data_start + entry.start)
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


def _load_torch_bin(path: Path) -> dict[str, torch.Tensor]:
    try:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:
            if "mmap" not in str(e):  # old (pre-zip) serialisation cannot be memory-mapped
                raise
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(
            f"cannot load {path} as tensors (weights_only=True; neox never unpickles arbitrary objects): {e}"
        ) from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} does not hold a dict of tensors")
    for key, value in state.items():
        if not isinstance(key, str):
            raise CheckpointError(f"{path}: key {key!r} is a {type(key).__name__}, not a tensor name")
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{path}: entry {key!r} is a {type(value).__name__}, not a tensor")
    return state


def iter_checkpoint_tensors(files: list[Path]) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (name, tensor) from every file as stored (safetensors tensors memory-mapped)."""
    for _, key, tensor in iter_checkpoint(Checkpoint(list(files))):
        yield key, tensor


def tensor_shapes(checkpoint: Checkpoint) -> dict[str, tuple[int, ...]] | None:
    """Every tensor's shape from the safetensors headers, reading no tensor; None for .bin files."""
    shapes: dict[str, tuple[int, ...]] = {}
    for path in checkpoint.files:
        if not path.name.endswith(".safetensors"):
            return None
        assigned = checkpoint.assigned(path)
        for key, entry in read_safetensors_header(path).tensors.items():
            if assigned is None or key in assigned:
                shapes[key] = entry.shape
    return shapes


def checkpoint_dtype(files: list[Path]) -> torch.dtype | None:
    """The floating dtype the checkpoint stores, read from safetensors headers when possible."""
    for path in files:
        if not path.name.endswith(".safetensors"):
            break
        for entry in read_safetensors_header(path).tensors.values():  # a corrupt file is named here
            if entry.dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
                return entry.dtype
    for _, tensor in iter_checkpoint_tensors(files):
        if tensor.is_floating_point():
            return tensor.dtype
    return None


# ---------------------------------------------------------------------------------------- writing


def parse_size(size: int | str) -> int:
    """'5GB' → 5·10⁹, '200MiB' → 200·2²⁰, ints pass through (transformers' convention)."""
    if isinstance(size, int) and not isinstance(size, bool):
        if size <= 0:
            raise ValueError(f"max_shard_size must be positive, got {size}")
        return size
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(I?B)?\s*", str(size).upper())
    if not match:
        raise ValueError(f"max_shard_size {size!r} is not a size such as '5GB', '500MB' or an integer of bytes")
    number, prefix, unit = float(match[1]), match[2], match[3] or "B"
    base = 1024 if unit == "IB" else 1000
    value = int(number * base ** " KMGT".index(prefix or " "))
    if value <= 0:
        raise ValueError(f"max_shard_size must be positive, got {size!r}")
    return value


#: Called as ``hook(when, op, path)`` with when "before"/"after" around every file operation of a
#: save (create, write, rename, link, remove); the fault-injection tests kill the process there.
FILE_OP_HOOK: Callable[[str, str, str], None] | None = None


def _op(op: str, path: Path, fn: Callable[[], Any]) -> Any:
    hook = FILE_OP_HOOK
    if hook is not None:
        hook("before", op, str(path))
    result = fn()
    if hook is not None:
        hook("after", op, str(path))
    return result


def _write_safetensors(tensors: dict[str, torch.Tensor], tmp: Path, final: Path, metadata: dict[str, str]) -> None:
    import safetensors.torch  # the Rust extension: loaded on the first save, not with neox

    try:
        safetensors.torch.save_file(tensors, str(tmp), metadata=metadata)
        os.chmod(tmp, file_mode())  # safetensors writes the file anew, with mode 0600
    except OSError as e:
        raise write_error(final, e) from e
    except Exception as e:  # SafetensorError("I/O error ...") names no file
        raise OSError(f"could not write {final}: {e}") from e


def current_weight_files(folder: Path) -> set[str]:
    """The files the folder loads now, in the loader's order of preference (none if it does not load)."""
    for name in WEIGHT_FILES:
        path = folder / name
        if not path.is_file():
            continue
        if not name.endswith(".index.json"):
            return {name}
        try:
            return {name, *read_index(path).values()}
        except CheckpointError:
            return set()  # a corrupt index loads nothing: any file may be replaced
    return set()


def save_state_dict(
    state: dict[str, torch.Tensor],
    save_directory: Path,
    max_shard_size: int | str = "5GB",
    metadata: dict[str, str] | None = None,
    extra_files: dict[str, str] | None = None,
) -> list[Path]:
    """Write safetensors (sharded with an index above max_shard_size) plus ``extra_files``.

    The switch from the checkpoint in the folder to the new one is atomic: killed at any point,
    the folder loads either entirely the old weights or entirely the new ones (in neox and in
    transformers, which prefer the same files). Every file is first written under a temporary
    name, so a failed write leaves the old checkpoint untouched. Then one operation commits:

    * single file: renaming it onto ``model.safetensors``;
    * sharded: new shards go under names the old checkpoint does not use (their usual names, or
      fresh ``model-0000i-of-0000n-<tag>.safetensors`` names when the old shards have the usual
      ones), and the index is renamed into place — or, replacing a single-file checkpoint, which
      loaders prefer to an index, ``model.safetensors`` is removed.

    After the commit, fresh names are hard-linked to the usual ones and the index rewritten (a
    second commit of the same weights); files of the old checkpoint are removed. ``extra_files``
    (config.json, generation_config.json) are each replaced atomically right after the weights.
    """
    limit = parse_size(max_shard_size)
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for key, tensor in state.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > limit:
            shards.append({})
            size = 0
        shards[-1][key] = tensor
        size += nbytes
    sharded = len(shards) > 1
    names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))] if sharded else [SAFE_WEIGHTS_NAME]
    old = current_weight_files(save_directory)
    tag = secrets.token_hex(4)
    # A shard whose usual name the old checkpoint uses goes under a fresh name until the commit.
    written = [
        f"model-{i + 1:05d}-of-{len(shards):05d}-{tag}.safetensors" if sharded and name in old else name
        for i, name in enumerate(names)
    ]

    metadata = {"format": "pt", **(metadata or {})}
    texts = dict(extra_files or {})
    total = sum(t.numel() * t.element_size() for t in state.values())
    staged: list[tuple[Path, Path]] = []  # (temporary, final)

    def stage(final: Path) -> Path:
        tmp = _op("create", final, lambda: temp_path(final))
        staged.append((tmp, final))
        return tmp

    try:
        for name, shard in zip(written, shards):
            final = save_directory / name
            tmp = stage(final)
            tensors = {k: v.detach().contiguous() for k, v in shard.items()}
            _op("write", tmp, lambda: _write_safetensors(tensors, tmp, final, metadata))
        if sharded:
            index_tmp = stage(save_directory / SAFE_WEIGHTS_INDEX_NAME)
            _op("write", index_tmp, lambda: _write_text(index_tmp, _index_text(written, shards, total), index_tmp))
        text_tmps = []
        for name, text in texts.items():
            tmp = stage(save_directory / name)
            _op("write", tmp, lambda: _write_text(tmp, text, save_directory / name))
            text_tmps.append((tmp, save_directory / name))

        # Everything is on disk. The shards, then the commit, then config.json & co.
        for tmp, final in staged[: len(shards)]:
            _op("rename", final, lambda: os.replace(tmp, final))
        if sharded:
            index_tmp, index = staged[len(shards)]
            _op("rename", index, lambda: os.replace(index_tmp, index))
            if SAFE_WEIGHTS_NAME in old:  # the single file wins over any index: removing it commits
                _op("remove", save_directory / SAFE_WEIGHTS_NAME, (save_directory / SAFE_WEIGHTS_NAME).unlink)
        for tmp, final in text_tmps:
            _op("rename", final, lambda: os.replace(tmp, final))
    finally:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)

    if written != names:
        written = _take_usual_names(save_directory, written, names, shards, total)
    keep = set(written) | set(texts) | ({SAFE_WEIGHTS_INDEX_NAME} if sharded else set())
    _remove_stale_weights(save_directory, keep=keep)
    return [save_directory / name for name in [*written, *sorted(keep - set(written))]]


def _index_text(names: list[str], shards: list[dict[str, torch.Tensor]], total: int) -> str:
    weight_map = {k: name for name, shard in zip(names, shards) for k in shard}
    return json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2, sort_keys=True) + "\n"


def _write_text(tmp: Path, text: str, final: Path) -> None:
    try:
        tmp.write_text(text, encoding="utf-8")
    except OSError as e:
        raise write_error(final, e) from e


def _take_usual_names(
    folder: Path, written: list[str], names: list[str], shards: list[dict[str, torch.Tensor]], total: int
) -> list[str]:
    """After the commit: give fresh-named shards their usual names (hard links), rewrite the index.

    The old shards under the usual names are no longer referenced, so replacing them is safe; the
    index switches to the usual names in one rename. Where hard links are not supported, the shards
    keep their fresh names (the checkpoint is complete and loads either way).
    """
    linked: list[Path] = []
    try:
        for fresh, usual in zip(written, names):
            if fresh == usual:
                continue
            tmp = folder / f".{usual}.{secrets.token_hex(4)}.link"
            _op("link", tmp, lambda: os.link(folder / fresh, tmp))
            linked.append(tmp)
            _op("rename", folder / usual, lambda: os.replace(tmp, folder / usual))
        index = folder / SAFE_WEIGHTS_INDEX_NAME
        index_tmp = _op("create", index, lambda: temp_path(index))
        linked.append(index_tmp)
        _op("write", index_tmp, lambda: _write_text(index_tmp, _index_text(names, shards, total), index))
        _op("rename", index, lambda: os.replace(index_tmp, index))
    except OSError as e:
        logger.info("keeping the fresh shard names in %s (%s)", folder, e)
        return written
    finally:
        for path in linked:
            path.unlink(missing_ok=True)
    return names


_WEIGHT_FILE_PATTERN = re.compile(
    r"^(model|pytorch_model)(-\d{5}-of-\d{5}(-[0-9a-f]{8})?)?\.(safetensors|bin)(\.index\.json)?$"
)


def _remove_stale_weights(folder: Path, keep: set[str]) -> None:
    for path in sorted(folder.iterdir()):
        if _WEIGHT_FILE_PATTERN.match(path.name) and path.name not in keep and path.is_file():
            logger.info("removing stale weight file %s", path)
            _op("remove", path, path.unlink)
