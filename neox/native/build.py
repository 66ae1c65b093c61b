"""Build ``gemv.c`` with the machine's C compiler at first use, cache it, load it with ctypes.

The kernels are compiled for the CPU they run on (``-march=native``), the way torch.compile's C++
backend compiles its kernels: nothing is built at install time and no build dependency is added.
The shared library is cached under ``$NEOX_NATIVE_CACHE`` (default ``~/.cache/neox/native``),
named by a hash of the source, the compiler's version, the flags and the CPU's feature flags, so a
changed source or a different machine sharing a home directory never loads a stale or foreign
build. It is written to a temporary name and renamed into place (two processes building at once
both succeed). Anything that goes wrong — no compiler, a failed compile, a library that will not
load — is logged once as a warning naming the reason, and :func:`library` returns None: callers
then use torch's own kernels, as they do with ``NEOX_NATIVE=0``.

No torch here: this module only builds and loads.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

logger = logging.getLogger(__name__)

__all__ = ["library", "SOURCE", "FLAGS"]

SOURCE = Path(__file__).with_name("gemv.c")
FLAGS = ("-O3", "-march=native", "-fopenmp", "-shared", "-fPIC", "-std=c11")
_lock = threading.Lock()


def _cache_dir() -> Path:
    if os.environ.get("NEOX_NATIVE_CACHE"):
        return Path(os.environ["NEOX_NATIVE_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "neox" / "native"


def _cpu_flags() -> str:
    """The CPU's feature flags (Linux), so a build for one CPU is never loaded on another."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _compiler() -> str:
    cc = os.environ.get("NEOX_NATIVE_CC") or os.environ.get("CC") or "cc"
    path = shutil.which(cc)
    if path is None:
        raise RuntimeError(f"no C compiler: {cc!r} is not on PATH (set NEOX_NATIVE_CC or CC)")
    return path


def _build() -> ctypes.CDLL:
    cc = _compiler()
    version = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=60).stdout
    source = SOURCE.read_bytes()
    key = hashlib.sha256(b"\0".join([source, version.encode(), " ".join(FLAGS).encode(),
                                     _cpu_flags().encode(), platform.machine().encode()])).hexdigest()[:16]
    folder = _cache_dir()
    target = folder / f"gemv-{key}.so"
    if not target.exists():
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".gemv-", suffix=".so", dir=folder)
        os.close(fd)
        try:
            done = subprocess.run([cc, *FLAGS, str(SOURCE), "-o", tmp, "-lm"], capture_output=True, text=True,
                                  timeout=300)
            if done.returncode != 0:
                raise RuntimeError(f"{cc} failed on {SOURCE.name} (exit {done.returncode}): "
                                   f"{(done.stderr or done.stdout).strip()[-2000:]}")
            os.replace(tmp, target)
            logger.info("neox: built the native CPU kernels into %s", target)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return ctypes.CDLL(str(target))


@functools.lru_cache(maxsize=None)
def _load() -> ctypes.CDLL | None:
    if os.environ.get("NEOX_NATIVE", "1").strip().lower() in ("0", "false", "no", "off"):
        logger.info("neox: native CPU kernels disabled by NEOX_NATIVE; using torch's kernels")
        return None
    try:
        lib = _build()
    except Exception as e:  # noqa: BLE001 — any failure means "use torch's kernels", said once
        logger.warning("neox: native CPU kernels unavailable (%s: %s); using torch's kernels instead",
                       type(e).__name__, e)
        return None
    if not lib.neox_simd():
        logger.info("neox: this CPU has no AVX2+FMA; the native kernels are not used")
        return None
    return lib


def library() -> ctypes.CDLL | None:
    """The loaded kernels, or None when they cannot be used here (built on the first call)."""
    with _lock:
        return _load()


def reset() -> None:
    """Forget the loaded library (tests: rebuild under other settings)."""
    with _lock:
        _load.cache_clear()
