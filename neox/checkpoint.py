"""Checkpoint I/O: find the weight files, read them without a second copy, write them atomically.

Reading follows transformers' order of preference: model.safetensors, model.safetensors.index.json,
pytorch_model.bin, pytorch_model.bin.index.json. safetensors files are memory-mapped (tensors are
views of the page cache until first written), and legacy ``.bin`` files go through
``torch.load(weights_only=True)`` only, never a full unpickle.

Where neox is stricter than transformers 5.24:

* shard names in an index must be plain file names inside the checkpoint folder (transformers
  follows ``../``), and must be regular files (a FIFO would hang the load);
* a truncated safetensors file is reported with its name before any tensor is read;
* saving removes stale weight files of the other layout (transformers leaves a stale
  model.safetensors beside new shards, and silently loads the stale file next time).
"""

from __future__ import annotations

import json
import logging
import os
import re
import stat
import struct
from collections.abc import Iterator
from pathlib import Path

import torch

from .files import temp_path
from .hub import HubOptions, resolve_file

logger = logging.getLogger(__name__)

SAFE_WEIGHTS_NAME = "model.safetensors"
SAFE_WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
WEIGHTS_NAME = "pytorch_model.bin"
WEIGHTS_INDEX_NAME = "pytorch_model.bin.index.json"
WEIGHT_FILES = (SAFE_WEIGHTS_NAME, SAFE_WEIGHTS_INDEX_NAME, WEIGHTS_NAME, WEIGHTS_INDEX_NAME)

#: Buffers that old checkpoints carry and that the model recomputes: dropped without a warning.
IGNORED_KEY_PATTERN = re.compile(r"(^|\.)attention\.(bias|masked_bias|rotary_emb\.inv_freq)$")


class CheckpointError(OSError):
    """A checkpoint file is missing, corrupt or unsafe; the message names the file."""


# ---------------------------------------------------------------------------------------- finding


def find_weight_files(name_or_path: str | os.PathLike, options: HubOptions) -> list[Path]:
    """The weight files of a checkpoint, in the order transformers prefers them."""
    for name in WEIGHT_FILES:
        path = resolve_file(name_or_path, name, options)
        if path is None:
            continue
        _require_regular_file(path)
        if not name.endswith(".index.json"):
            return [path]
        return [_resolve_shard(name_or_path, path, shard, options) for shard in _read_index(path)]
    where = f"folder {str(name_or_path)!r}" if Path(name_or_path).expanduser().is_dir() else f"repo {str(name_or_path)!r}"
    raise CheckpointError(f"no weights found in the {where}: looked for {', '.join(WEIGHT_FILES)}")


def _read_index(index_path: Path) -> list[str]:
    try:
        index = json.loads(index_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{index_path} is not a valid JSON index: {e}") from None
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise CheckpointError(f"{index_path} has no 'weight_map' object of tensor name → shard file name")
    shards = list(dict.fromkeys(weight_map.values()))  # unique, in order
    for shard in shards:
        # A shard name is a file beside the index: no folders, no "..", no absolute paths.
        if shard in ("", ".", "..") or "/" in shard or "\\" in shard or os.path.isabs(shard) or "\0" in shard:
            raise CheckpointError(
                f"{index_path} names shard {shard!r}: shard names must be plain file names inside the checkpoint folder"
            )
    return shards


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


# ---------------------------------------------------------------------------------------- reading


def iter_checkpoint_tensors(files: list[Path]) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (name, tensor) from every file; safetensors tensors are memory-mapped views."""
    for path in files:
        if path.name.endswith(".safetensors"):
            yield from _iter_safetensors(path)
        else:
            yield from _iter_torch_bin(path)


def _iter_safetensors(path: Path) -> Iterator[tuple[str, torch.Tensor]]:
    check_safetensors_header(path)
    from safetensors import safe_open

    try:
        handle = safe_open(str(path), framework="pt", device="cpu")
    except Exception as e:  # SafetensorsError carries no file name
        raise CheckpointError(f"{path} is not a readable safetensors file: {e}") from None
    with handle as f:
        for key in f.keys():
            yield key, f.get_tensor(key)


def check_safetensors_header(path: Path) -> dict:
    """Reject truncated or corrupt safetensors files by name, before reading any tensor.

    Returns the parsed header (tensor name → {"dtype", "shape", "data_offsets"}).
    """
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise CheckpointError(f"{path} is truncated ({size} bytes): no safetensors header")
        (header_len,) = struct.unpack("<Q", head)
        if header_len > size - 8 or header_len > 100_000_000:
            raise CheckpointError(f"{path} is truncated or not a safetensors file (header of {header_len} bytes)")
        try:
            header = json.loads(f.read(header_len))
            ends = [int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"]
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError, KeyError, IndexError, TypeError, ValueError):
            raise CheckpointError(f"{path} has a corrupt safetensors header") from None
    need = 8 + header_len + max(ends, default=0)
    if need > size:
        raise CheckpointError(f"{path} is truncated: its header needs {need} bytes, the file has {size}")
    return header


def _iter_torch_bin(path: Path) -> Iterator[tuple[str, torch.Tensor]]:
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
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{path}: entry {key!r} is a {type(value).__name__}, not a tensor")
        yield key, value


def checkpoint_dtype(files: list[Path]) -> torch.dtype | None:
    """The floating dtype the checkpoint stores, read from safetensors headers when possible."""
    names = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64}
    for path in files:
        if not path.name.endswith(".safetensors"):
            break
        header = check_safetensors_header(path)  # a truncated file is reported by name here
        for key, info in header.items():
            if key != "__metadata__" and info.get("dtype") in names:
                return names[info["dtype"]]
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


def save_state_dict(
    state: dict[str, torch.Tensor],
    save_directory: Path,
    max_shard_size: int | str = "5GB",
    metadata: dict[str, str] | None = None,
    extra_files: dict[str, str] | None = None,
) -> list[Path]:
    """Write safetensors (sharded with an index above max_shard_size) plus ``extra_files``.

    Every file is first written under a temporary name; only when all are complete are they
    moved into place (index and config last), so a save that fails part-way leaves the previous
    checkpoint as it was. Weight files of the other layout are then removed.
    """
    from safetensors.torch import save_file

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
    if len(shards) == 1:
        names = [SAFE_WEIGHTS_NAME]
    else:
        names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]

    metadata = {"format": "pt", **(metadata or {})}
    staged: list[tuple[Path, Path]] = []  # (temporary, final)
    try:
        for name, shard in zip(names, shards):
            final = save_directory / name
            tmp = temp_path(final)
            staged.append((tmp, final))
            save_file({k: v.detach().contiguous() for k, v in shard.items()}, str(tmp), metadata=metadata)
        texts = dict(extra_files or {})
        if len(shards) > 1:
            total = sum(t.numel() * t.element_size() for t in state.values())
            weight_map = {k: name for name, shard in zip(names, shards) for k in shard}
            texts[SAFE_WEIGHTS_INDEX_NAME] = json.dumps(
                {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2, sort_keys=True
            ) + "\n"
        for name, text in texts.items():
            final = save_directory / name
            tmp = temp_path(final)
            staged.append((tmp, final))
            tmp.write_text(text, encoding="utf-8")
        # Everything is on disk: move into place. Weights first, index and config last.
        for tmp, final in staged:
            os.replace(tmp, final)
    finally:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)

    written = {final.name for _, final in staged}
    _remove_stale_weights(save_directory, keep=written)
    return [final for _, final in staged]


def _remove_stale_weights(folder: Path, keep: set[str]) -> None:
    pattern = re.compile(r"^(model|pytorch_model)(-\d{5}-of-\d{5})?\.(safetensors|bin)(\.index\.json)?$")
    for path in folder.iterdir():
        if pattern.match(path.name) and path.name not in keep and path.is_file():
            logger.info("removing stale weight file %s", path)
            path.unlink()
