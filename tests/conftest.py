"""Shared fixtures: tiny configs, random checkpoints written by transformers or neox, a Hub cache.

Everything here is small enough for a 2-core CPU. transformers (the oracle, 5.24) is imported
lazily through the ``hf`` fixture, so a test file that does not need it does not pay for it, and
tests that need it skip with a reason where it is not installed.

Fixtures (each returns a factory unless said otherwise):

* ``tiny_config(**overrides)`` → a neox GPTNeoXConfig from :data:`TINY` plus overrides;
* ``hf`` → the ``transformers`` module (skips without it);
* ``hf_config(**overrides)`` → the transformers GPTNeoXConfig of the same kwargs;
* ``save_hf_model(name="hf", seed=0, base=False, dtype=None, attn="eager", **overrides)`` →
  (folder, model): a random transformers model saved with ``save_pretrained``;
* ``save_neox_model(...)`` → (folder, model): the same for a neox model;
* ``hub_cache(folder, repo_id="org/name", ...)`` → cache dir holding ``folder``'s files in the
  Hugging Face cache layout (``models--org--name/{blobs,refs,snapshots}``), HF_HUB_OFFLINE set.

Random weights: a freshly initialised model (std 0.02, LayerNorms at identity) attends almost
uniformly, so it would hide a wrong rotary or mask. :func:`randomize_` draws every parameter,
LayerNorms included, from a wider distribution so each weight changes the output (std 0.2:
attention far from uniform, while fp32 rounding stays ~5x below the 1e-5 parity tolerance).
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path
from typing import Any, Callable

import pytest
import torch

#: The tiny shape shared by the tests: head size 8, rotary dims 2 at the default rotary_pct 0.25.
TINY: dict[str, Any] = dict(
    vocab_size=128,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=64,
    max_position_embeddings=64,
)


def tiny_kwargs(**overrides: Any) -> dict[str, Any]:
    return {**TINY, **overrides}


def make_tiny_config(**overrides: Any):
    from neox import GPTNeoXConfig

    return GPTNeoXConfig(**tiny_kwargs(**overrides))


@torch.no_grad()
def randomize_(model: torch.nn.Module, seed: int = 0, std: float = 0.2) -> torch.nn.Module:
    """Fill every floating parameter with random values (LayerNorm weights around 1), in place.

    Tied parameters are drawn once (``parameters()`` yields a shared tensor once).
    """
    gen = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        noise = torch.randn(p.shape, generator=gen, dtype=torch.float32) * std
        if "layernorm" in name or "layer_norm" in name:
            noise = noise + 1.0 if name.endswith("weight") else noise
        p.copy_(noise.to(p.dtype))
    return model


@pytest.fixture
def tiny_config() -> Callable[..., Any]:
    return make_tiny_config


@pytest.fixture(scope="session")
def hf():
    return pytest.importorskip("transformers", reason="transformers (the reference oracle) is not installed")


def _hf_config(hf, attn: str = "eager", **overrides: Any):
    config = hf.GPTNeoXConfig(**tiny_kwargs(**overrides))
    config._attn_implementation = attn
    return config


@pytest.fixture
def hf_config(hf) -> Callable[..., Any]:
    def make(attn: str = "eager", **overrides: Any):
        return _hf_config(hf, attn, **overrides)

    return make


@pytest.fixture
def save_hf_model(hf, tmp_path: Path) -> Callable[..., tuple[Path, Any]]:
    """Factory: a random transformers GPTNeoX model saved under tmp_path/<name>."""

    def save(
        name: str = "hf",
        *,
        seed: int = 0,
        base: bool = False,
        dtype: torch.dtype | None = None,
        attn: str = "eager",
        std: float = 0.2,
        **overrides: Any,
    ) -> tuple[Path, Any]:
        config = _hf_config(hf, attn, **overrides)
        cls = hf.GPTNeoXModel if base else hf.GPTNeoXForCausalLM
        torch.manual_seed(seed)
        model = randomize_(cls(config), seed=seed, std=std).eval()
        if dtype is not None:
            model = model.to(dtype)
        folder = tmp_path / name
        model.save_pretrained(folder)
        return folder, model

    return save


@pytest.fixture
def save_neox_model(tmp_path: Path) -> Callable[..., tuple[Path, Any]]:
    """Factory: a random neox GPTNeoX model saved under tmp_path/<name>."""

    def save(
        name: str = "neox",
        *,
        seed: int = 0,
        base: bool = False,
        dtype: torch.dtype | None = None,
        std: float = 0.2,
        max_shard_size: int | str = "5GB",
        **overrides: Any,
    ) -> tuple[Path, Any]:
        from neox import GPTNeoXForCausalLM, GPTNeoXModel

        cls = GPTNeoXModel if base else GPTNeoXForCausalLM
        torch.manual_seed(seed)
        model = randomize_(cls(make_tiny_config(**overrides)), seed=seed, std=std).eval()
        if dtype is not None:
            model = model.to(dtype)
        folder = tmp_path / name
        model.save_pretrained(folder, max_shard_size=max_shard_size)
        return folder, model

    return save


def build_hub_cache(
    cache_dir: Path, folder: Path, repo_id: str = "org/name", *, revision: str = "main", commit: str | None = None
) -> str:
    """Copy ``folder``'s files into cache_dir in huggingface_hub's layout; returns the commit hash.

    models--{org}--{name}/blobs/<sha256 of the file>, snapshots/<commit>/<file> → ../../blobs/…
    (relative symlinks, as huggingface_hub writes them), refs/<revision> holding the commit.
    """
    repo = cache_dir / ("models--" + repo_id.replace("/", "--"))
    commit = commit or hashlib.sha1(f"{repo_id}@{revision}".encode()).hexdigest()
    blobs, snapshot = repo / "blobs", repo / "snapshots" / commit
    blobs.mkdir(parents=True, exist_ok=True)
    for path in sorted(folder.rglob("*")):
        if not path.is_file():
            continue
        rel = path.relative_to(folder)
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        blob = blobs / digest
        if not blob.exists():
            shutil.copyfile(path, blob)
        link = snapshot / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / revision).write_text(commit)
    return commit


@pytest.fixture
def hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Path]:
    """Factory: a Hugging Face cache dir (tmp_path/hub) holding ``folder`` as ``repo_id``.

    Sets HF_HUB_OFFLINE=1 (the machine has no Hub): resolution must come from the cache alone.
    """
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cache_dir = tmp_path / "hub"

    def build(folder: Path, repo_id: str = "org/name", *, revision: str = "main", commit: str | None = None) -> Path:
        build_hub_cache(cache_dir, folder, repo_id, revision=revision, commit=commit)
        return cache_dir

    return build


@pytest.fixture
def native_off(monkeypatch: pytest.MonkeyPatch) -> None:
    """neox's native CPU kernels switched off for one test: every caller runs torch's kernels."""
    from neox.native import ops

    monkeypatch.setattr(ops, "_functions", {})
    monkeypatch.setattr(ops, "AVAILABLE", False)


@pytest.fixture
def native_on() -> None:
    """The native CPU kernels, built (skips where this machine cannot build or run them)."""
    from neox import native

    if not native.available():
        pytest.skip("neox's native CPU kernels are not available here (no C compiler or no AVX2+FMA; see the log)")
