"""Public import paths: every name the README, examples and docs import, and the documented module
paths, stay importable; `import neox` (and the config-only names) stay free of torch.

Refactors move code between modules; these tests make a moved name an explicit decision, not a
silent break of user code.
"""

from __future__ import annotations

import ast
import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Names users import by module path (README, examples, docs, the documented API of each module).
DOCUMENTED = {
    "neox": ["GPTNeoXConfig", "GPTNeoXModel", "GPTNeoXForCausalLM", "GPTNeoXPreTrainedModel", "KVCache",
             "BaseModelOutputWithPast", "CausalLMOutputWithPast", "GPTNeoXTokenizerFast", "BatchEncoding",
             "GenerationConfig", "TextStreamer", "TextIteratorStreamer", "__version__"],
    "neox.generation": [
        "GenerationConfig", "generate", "prefill", "decode_step", "GenerateDecoderOnlyOutput",
        "GenerateBeamDecoderOnlyOutput", "TextStreamer", "TextIteratorStreamer", "NonFiniteLogitsError",
        "GenerateArgumentError", "GENERATION_CONFIG_NAME", "Processor",
        # the logits processors, plain functions over tensors
        "repetition_penalty", "no_repeat_ngram", "bad_words", "min_length", "min_new_tokens",
        "prefix_allowed_tokens", "force_token_at", "remove_invalid_values", "suppress_tokens",
        "suppress_tokens_at", "temperature", "top_k", "top_p", "min_p", "typical_p", "epsilon_cutoff",
        "eta_cutoff", "renormalize",
    ],
    "neox.modeling": ["GPTNeoXModel", "GPTNeoXForCausalLM", "GPTNeoXPreTrainedModel", "attention"],
    "neox.config": ["GPTNeoXConfig", "CONFIG_NAME"],
    "neox.cache": ["KVCache"],
    "neox.outputs": ["ModelOutput", "BaseModelOutputWithPast", "CausalLMOutputWithPast"],
    "neox.tokenization": ["GPTNeoXTokenizerFast", "BatchEncoding"],
    "neox.checkpoint": ["CheckpointError"],
    "neox.cli": ["DEFAULT_MODEL", "main"],
}


def _doc_imports() -> list[tuple[str, str | None]]:
    """(module, name) for every `from neox... import name` / `import neox...` in the README, the
    examples and docs (Markdown code lines are parsed line by line, a leading diff `+` dropped)."""
    found: list[tuple[str, str | None]] = []
    sources = [ROOT / "README.md", ROOT / "ARCHITECTURE.md", *sorted((ROOT / "examples").glob("*.py")),
               *sorted((ROOT / "docs").rglob("*.md")), *sorted((ROOT / "docs").rglob("*.py"))]
    for path in sources:
        if not path.exists():
            continue
        for line in path.read_text(encoding="utf-8").splitlines():
            line = line.strip().lstrip("+").strip()
            if not (line.startswith("from neox") or line.startswith("import neox")):
                continue
            try:
                tree = ast.parse(line)
            except SyntaxError:
                continue
            for node in tree.body:
                if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "neox":
                    found += [(node.module, alias.name) for alias in node.names]
                elif isinstance(node, ast.Import):
                    found += [(alias.name, None) for alias in node.names if alias.name.split(".")[0] == "neox"]
    return found


def test_the_docs_import_something():
    """The scan below must see the README's imports, or it would pass while checking nothing."""
    modules = {module for module, _ in _doc_imports()}
    assert "neox" in modules


@pytest.mark.parametrize("module,name", sorted(set(_doc_imports()), key=str), ids=str)
def test_every_import_in_the_docs_works(module, name):
    mod = importlib.import_module(module)
    if name is not None:
        assert getattr(mod, name) is not None


@pytest.mark.parametrize("module", sorted(DOCUMENTED))
def test_documented_names_importable(module):
    mod = importlib.import_module(module)
    missing = [name for name in DOCUMENTED[module] if not hasattr(mod, name)]
    assert not missing, f"{module} no longer provides {missing}"


def test_package_all_lists_importable_names():
    for module in ("neox", "neox.generation"):
        mod = importlib.import_module(module)
        missing = [name for name in mod.__all__ if not hasattr(mod, name)]
        assert not missing, f"{module}.__all__ names {missing}, which it does not provide"


def test_same_object_under_every_path():
    import neox
    import neox.generation as generation
    from neox.cache import KVCache
    from neox.generation.config import GenerationConfig
    from neox.generation.streamers import TextStreamer

    assert neox.GenerationConfig is generation.GenerationConfig is GenerationConfig
    assert neox.TextStreamer is generation.TextStreamer is TextStreamer
    assert neox.KVCache is KVCache


def _fresh_python(code: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("statement", [
    "import neox",
    "from neox import GenerationConfig, TextStreamer, TextIteratorStreamer",
    "import neox.generation",
])
def test_light_imports_do_not_import_torch(statement):
    """`import neox` and the torch-free names must not pay torch's start-up (seconds)."""
    proc = _fresh_python(f"import sys\n{statement}\nprint('torch' in sys.modules)")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False", f"`{statement}` imported torch"


def test_import_neox_imports_no_transformers():
    proc = _fresh_python("import sys, neox\nneox.GPTNeoXForCausalLM\nprint('transformers' in sys.modules)")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"
