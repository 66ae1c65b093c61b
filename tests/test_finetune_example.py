"""examples/finetune_transformers_style.py: a transformers fine-tuning script, run on neox unchanged.

A tiny random transformers GPTNeoXForCausalLM, sized to a small trained tokenizer, is saved to a
temp dir; the example trains on it through neox; and the very same source with the import swapped
back to transformers must give the same losses, so the script really is a transformers script.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "finetune_transformers_style.py"
NEOX_IMPORT = "from neox import GPTNeoXForCausalLM, GPTNeoXTokenizerFast"

try:
    import neox.modeling  # noqa: F401

    MODELING_ERROR = None
except ImportError as err:  # the model classes are written in parallel with the tokenizer
    MODELING_ERROR = err

pytestmark = pytest.mark.skipif(
    MODELING_ERROR is not None, reason=f"neox.modeling is not importable yet: {MODELING_ERROR}"
)


def _small_tokenizer(folder: Path) -> Path:
    """A GPT-NeoX-shaped byte-level BPE (<|endoftext|> = 0, <|padding|> = 1) saved in folder."""
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=True)
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<|endoftext|>", "<|padding|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(["The quick brown fox. def add(a, b):\n    return a + b\n"] * 10, trainer)
    folder.mkdir(parents=True)
    tok.save(str(folder / "tokenizer.json"))
    return folder


def _load_example(source: str, name: str) -> ModuleType:
    spec = importlib.util.spec_from_loader(name, loader=None)
    module = importlib.util.module_from_spec(spec)
    exec(compile(source, str(EXAMPLE), "exec"), module.__dict__)
    return module


@pytest.fixture
def checkpoint(tmp_path: Path) -> tuple[Path, Path]:
    """(model folder, tokenizer folder): a tiny random transformers model sized to the tokenizer."""
    transformers = pytest.importorskip("transformers", reason="transformers (the reference oracle) is not installed")
    tokenizer_dir = _small_tokenizer(tmp_path / "tokenizer")
    from neox import GPTNeoXTokenizerFast

    vocab = len(GPTNeoXTokenizerFast.from_pretrained(tokenizer_dir))
    config = transformers.GPTNeoXConfig(
        vocab_size=vocab,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    torch.manual_seed(0)
    transformers.GPTNeoXForCausalLM(config).save_pretrained(tmp_path / "model")
    return tmp_path / "model", tokenizer_dir


def test_example_fine_tunes_saves_and_reloads(checkpoint, tmp_path):
    model_dir, tokenizer_dir = checkpoint
    source = EXAMPLE.read_text(encoding="utf-8")
    assert source.count(NEOX_IMPORT) == 1
    imports = [line.strip() for line in source.splitlines() if line.startswith(("import ", "from "))]
    assert not [line for line in imports if "transformers" in line]
    example = _load_example(source, "finetune_neox")
    out = tmp_path / "out"
    results = example.main([str(model_dir), str(tokenizer_dir), "--output-dir", str(out), "--steps", "12"])
    assert results["loss_after"] < results["loss_before"] - 0.1, results
    assert results["reloaded_logits_identical"] and results["reloaded_tokenizer_identical"]
    assert {"tokenizer.json", "tokenizer_config.json", "config.json"} <= {p.name for p in out.iterdir()}

    # The same script with the import swapped back runs on transformers and gives the same losses.
    transformers_source = source.replace(NEOX_IMPORT, NEOX_IMPORT.replace("from neox", "from transformers"))
    reference = _load_example(transformers_source, "finetune_transformers").main(
        [str(model_dir), str(tokenizer_dir), "--output-dir", str(tmp_path / "reference"), "--steps", "12"]
    )
    assert reference["reloaded_logits_identical"] and reference["reloaded_tokenizer_identical"]
    assert results["loss_before"] == pytest.approx(reference["loss_before"], rel=1e-5)
    assert results["train_losses"] == pytest.approx(reference["train_losses"], rel=1e-4)
    assert results["loss_after"] == pytest.approx(reference["loss_after"], rel=1e-4)

    # What neox saved loads in transformers to the same tokenizer and logits.
    import transformers

    from neox import GPTNeoXForCausalLM, GPTNeoXTokenizerFast

    ours_tok = GPTNeoXTokenizerFast.from_pretrained(out)
    theirs_tok = transformers.GPTNeoXTokenizerFast.from_pretrained(out)
    batch = ours_tok(example.TEXTS, padding=True, return_tensors="pt")
    assert torch.equal(batch["input_ids"], theirs_tok(example.TEXTS, padding=True, return_tensors="pt")["input_ids"])
    with torch.no_grad():
        ours = GPTNeoXForCausalLM.from_pretrained(out).eval()(**batch).logits
        theirs = transformers.GPTNeoXForCausalLM.from_pretrained(out).eval()(**batch).logits
    mask = batch["attention_mask"].bool()
    torch.testing.assert_close(ours[mask], theirs[mask], rtol=1e-5, atol=1e-5)


def test_example_runs_as_a_script(checkpoint, tmp_path):
    model_dir, tokenizer_dir = checkpoint
    out = tmp_path / "cli"
    run = subprocess.run(
        [sys.executable, str(EXAMPLE), str(model_dir), str(tokenizer_dir), "--output-dir", str(out), "--steps", "2"],
        capture_output=True,
        text=True,
        cwd=EXAMPLE.parents[1],
        timeout=600,
    )
    assert run.returncode == 0, run.stderr
    assert "step 2/2" in run.stdout and '"reloaded_logits_identical": true' in run.stdout
