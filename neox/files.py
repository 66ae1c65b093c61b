"""Plain files: one JSON reader, atomic text writes, temporary names beside their target.

The bottom layer (no torch). Every JSON file neox reads (config.json, generation_config.json,
tokenizer.json, tokenizer_config.json, special_tokens_map.json, a shard index, a safetensors
header) goes through :func:`parse_json`, so each way a file can be malformed — not UTF-8, not
JSON, nested absurdly deep, a number with thousands of digits, a duplicated key — ends in one
``ValueError`` that names the file. Every text file neox writes goes through
:func:`atomic_write_text`: a failed or interrupted write leaves the previous file intact.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["JSONFileError", "parse_json", "read_json", "atomic_write_text", "temp_path", "write_error", "file_mode"]

#: Deeper than any real config or tokenizer file (tokenizer.json nests ~6 levels); deeper
#: nesting would otherwise surface as a RecursionError in json or in a later copy.
MAX_JSON_DEPTH = 64
#: config.json & co. are kilobytes; tokenizer.json files reach tens of MB.
MAX_JSON_BYTES = 1 << 30


class JSONFileError(ValueError):
    """A JSON file neox reads is malformed; the message names the file and the problem."""


def parse_json(data: bytes | str, what: str, *, unique_keys: bool = False) -> Any:
    """Parse JSON text read from ``what`` (a file name, used in every error).

    ``unique_keys`` refuses an object with the same key twice (json keeps the last silently),
    for files where a duplicate would mean loading the wrong thing (a safetensors header).
    """
    if isinstance(data, (bytes, bytearray, memoryview)):
        try:
            data = bytes(data).decode("utf-8")
        except UnicodeDecodeError as e:
            raise JSONFileError(f"{what} is not UTF-8 text (byte {e.start}: {e.reason})") from None
    hook = _unique_pairs(what) if unique_keys else None
    try:
        value = json.loads(data, object_pairs_hook=hook)
    except json.JSONDecodeError as e:
        raise JSONFileError(f"{what} is not valid JSON: {e}") from None
    except RecursionError:
        raise JSONFileError(f"{what} is nested too deeply to be a real file (limit {MAX_JSON_DEPTH} levels)") from None
    except ValueError as e:  # int digits limit (sys.get_int_max_str_digits), or a duplicate key
        if isinstance(e, JSONFileError):
            raise
        raise JSONFileError(f"{what} holds a value JSON cannot read here: {e}") from None
    _check_depth(value, what)
    return value


def read_json(path: str | os.PathLike, what: str | None = None, *, max_bytes: int = MAX_JSON_BYTES) -> Any:
    """Read and parse a JSON file; every failure is a :class:`JSONFileError` (ValueError) naming it.

    ``what`` describes the file in messages (e.g. "tokenizer config"); the path is always named.
    """
    path = Path(path)
    label = f"{what} {path}" if what else str(path)
    try:
        size = os.stat(path).st_size
        if size > max_bytes:
            raise JSONFileError(f"{label} is {size} bytes, more than any real file of its kind ({max_bytes})")
        data = path.read_bytes()
    except OSError as e:
        raise OSError(e.errno, f"cannot read {label}: {e.strerror}") from None
    return parse_json(data, label)


def _unique_pairs(what: str):
    def hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out = dict(pairs)
        if len(out) != len(pairs):
            seen: set[str] = set()
            dup = next(k for k, _ in pairs if k in seen or seen.add(k))  # type: ignore[func-returns-value]
            raise JSONFileError(f"{what} has the key {dup!r} twice")
        return out

    return hook


def _check_depth(value: Any, what: str) -> None:
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > MAX_JSON_DEPTH:
            raise JSONFileError(f"{what} is nested more than {MAX_JSON_DEPTH} levels deep; no real file is")
        stack.extend((c, depth + 1) for c in children if isinstance(c, (dict, list)))


def write_error(path: Path, error: OSError) -> OSError:
    """The same OSError, its message naming ``path`` (safetensors says only "I/O error")."""
    reason = error.strerror or str(error) or type(error).__name__
    return type(error)(error.errno, f"could not write {path}: {reason}") if error.errno else OSError(
        f"could not write {path}: {reason}"
    )


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` via a temporary file in the same folder and a rename.

    The file gets the mode a plain ``open(path, "w")`` would give it (0666 less the umask), not
    mkstemp's private 0600: a checkpoint saved into a shared folder stays readable to the group.
    """
    tmp = temp_path(path)
    try:
        try:
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(text)
        except OSError as e:
            raise write_error(path, e) from e
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def temp_path(path: Path) -> Path:
    """A new, empty file beside ``path`` (same filesystem, so ``os.replace`` onto it is atomic).

    Created with the umask's mode, like a file ``open()`` creates, so renaming it into place
    gives the final file ordinary permissions.
    """
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(name, file_mode())
    return Path(name)


def file_mode() -> int:
    """The mode ``open(path, "w")`` gives a new file: 0666 less the process umask."""
    return 0o666 & ~_umask()


def _umask() -> int:
    # Linux reports the umask in /proc; elsewhere it can only be read by setting it (and setting
    # it back), which another thread creating a file at that instant would see.
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
