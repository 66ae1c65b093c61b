"""Plain files: atomic text writes and temporary names beside their target.

The bottom layer (no torch): config.json, generation_config.json and the weight files are all
written through here, so that a failed or interrupted write leaves the previous file intact.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

__all__ = ["atomic_write_text", "temp_path"]


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` via a temporary file in the same folder and a rename."""
    tmp = temp_path(path)
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def temp_path(path: Path) -> Path:
    """A new, empty file beside ``path`` (same filesystem, so ``os.replace`` onto it is atomic)."""
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    return Path(name)
