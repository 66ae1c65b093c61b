"""The model shipped in neox/default_model/: complete, small, loads in neox and transformers alike,
and is really trained (held-out loss below the bound its training script recorded).

The held-out files are rebuilt from this machine's Python standard library with the training
script's own functions (scripts/train_default_model.py), so the loss is measured on text the
model never saw. With another Python version the held-out files differ somewhat; the bound's
margin (recorded next to it) allows for that.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

from neox import GPTNeoXForCausalLM
from neox.cli import DEFAULT_MODEL

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "train_default_model.py"
REQUIRED = ("config.json", "model.safetensors", "generation_config.json", "tokenizer.json", "tokenizer_config.json")
SIZE_LIMIT = 15_000_000  # bytes: the budget for the whole folder


def _training_script():
    if not SCRIPT.exists():
        pytest.skip(f"{SCRIPT} is not in this checkout")
    spec = importlib.util.spec_from_file_location("train_default_model", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("train_default_model", module)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def record() -> dict:
    return json.loads((DEFAULT_MODEL / "training_log.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def neox_model():
    return GPTNeoXForCausalLM.from_pretrained(DEFAULT_MODEL, dtype=torch.float32)


def _sample_text() -> str:
    # Text the tokenizer has to work on: code, indentation, a docstring, non-ASCII characters.
    return (
        'def fibonacci(n):\n    """Return the n-th Fibonacci number."""\n'
        "    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a\n\n"
        "class Point:\n    def __init__(self, x, y):\n        self.x, self.y = x, y  # café, naïve, 東京\n"
    )


def test_folder_holds_a_standard_checkpoint_within_the_size_budget():
    names = {p.name for p in DEFAULT_MODEL.iterdir()}
    assert set(REQUIRED) <= names, f"missing: {set(REQUIRED) - names}"
    total = sum(p.stat().st_size for p in DEFAULT_MODEL.iterdir() if p.is_file())
    assert total <= SIZE_LIMIT, f"neox/default_model is {total / 1e6:.2f} MB (limit {SIZE_LIMIT / 1e6:.0f} MB)"


def test_config_is_the_gpt_neox_architecture(neox_model):
    config = neox_model.config
    assert config.use_parallel_residual
    assert 0 < config.rotary_pct < 1  # partial rotary
    assert not config.tie_word_embeddings
    tok = json.loads((DEFAULT_MODEL / "tokenizer.json").read_text(encoding="utf-8"))
    assert tok["normalizer"]["type"] == "NFC"
    assert tok["pre_tokenizer"] == {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    assert tok["decoder"]["type"] == "ByteLevel"
    specials = {t["content"]: t["id"] for t in tok["added_tokens"]}
    assert specials["<|endoftext|>"] == 0 and specials["<|padding|>"] == 1
    assert len(tok["model"]["vocab"]) == config.vocab_size


def test_transformers_loads_it_with_identical_logits(neox_model):
    transformers = pytest.importorskip("transformers", reason="transformers (the reference oracle) is not installed")
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(DEFAULT_MODEL))
    hf_model = transformers.GPTNeoXForCausalLM.from_pretrained(str(DEFAULT_MODEL), dtype=torch.float32).eval()
    ids = hf_tok(_sample_text(), return_tensors="pt")["input_ids"]
    assert ids.shape[1] > 40
    with torch.no_grad():
        expected = hf_model(ids).logits
        got = neox_model(ids).logits
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_neox_tokenizer_matches_transformers_on_the_shipped_files():
    transformers = pytest.importorskip("transformers", reason="transformers (the reference oracle) is not installed")
    from neox import GPTNeoXTokenizerFast

    ours = GPTNeoXTokenizerFast.from_pretrained(DEFAULT_MODEL)
    theirs = transformers.AutoTokenizer.from_pretrained(str(DEFAULT_MODEL))
    text = _sample_text()
    assert ours(text)["input_ids"] == theirs(text)["input_ids"]
    assert ours.decode(ours(text)["input_ids"]) == text
    for name in ("eos_token_id", "bos_token_id", "pad_token_id"):
        assert getattr(ours, name) == getattr(theirs, name), name


def test_greedy_generation_matches_transformers(neox_model):
    transformers = pytest.importorskip("transformers", reason="transformers (the reference oracle) is not installed")
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(DEFAULT_MODEL))
    hf_model = transformers.GPTNeoXForCausalLM.from_pretrained(str(DEFAULT_MODEL), dtype=torch.float32).eval()
    ids = hf_tok("def fibonacci(n):\n", return_tensors="pt")["input_ids"]
    kwargs = dict(max_new_tokens=20, do_sample=False, pad_token_id=1)
    expected = hf_model.generate(ids, **kwargs)
    got = neox_model.generate(ids, **kwargs)
    assert got.tolist() == expected.tolist()


def test_heldout_loss_is_below_the_recorded_bound(neox_model, record):
    script = _training_script()
    results = record["results"]
    # The record itself must say the model beats the unigram baseline by a wide margin.
    assert results["heldout_loss"] < results["heldout_loss_bound"] < results["unigram_heldout_cross_entropy"] - 1.0

    files = script.corpus_files()
    if len(files) < 2 * script.HELDOUT_EVERY:
        pytest.skip(f"this Python's standard library has only {len(files)} .py files outside test folders")
    _, heldout_files = script.split_files(files)
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(DEFAULT_MODEL / "tokenizer.json"))
    stream = script.encode_stream(tok, [script.read_text(f) for f in heldout_files])
    rows = script.subset(script.windows(stream, neox_model.config.max_position_embeddings), script.TEST_SUBSET_WINDOWS)
    loss = script.evaluate(neox_model, rows, batch_size=8)
    assert loss < results["heldout_loss_bound"], (
        f"held-out loss {loss:.4f} nats/token is not below the recorded bound {results['heldout_loss_bound']}"
    )
