"""examples/ run as a user runs them (subprocesses, offline, small step counts) and do their job:
generate.py prints text; finetune.py lowers the held-out loss on its data and writes a folder
that neox and transformers both load."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf_home"))
    return env


def run(env: dict[str, str], script: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, str(EXAMPLES / script), *args], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    return proc


def test_generate_example(env, tmp_path):
    proc = run(env, "generate.py", "--max-new-tokens", "8", "--prompt", "import os", cwd=tmp_path)
    assert proc.stdout.startswith("import os")  # TextStreamer echoes the prompt, then streams
    assert "--- greedy, batched:" in proc.stdout


def test_finetune_example_lowers_the_loss_and_saves_a_loadable_model(env, tmp_path):
    out = tmp_path / "finetuned"
    data = str(REPO / "neox" / "c*.py")  # a few small files: quick on two cores
    proc = run(env, "finetune.py", "--steps", "8", "--batch-size", "4", "--block-size", "64", "--lr", "1e-3",
               "--data", data, "--output-dir", str(out), cwd=tmp_path)
    before = float(re.search(r"eval loss before: ([0-9.]+)", proc.stdout).group(1))
    after = float(re.search(r"eval loss after: ([0-9.]+)", proc.stdout).group(1))
    assert after < before, proc.stdout

    from neox import GPTNeoXForCausalLM, GPTNeoXTokenizerFast

    model = GPTNeoXForCausalLM.from_pretrained(out)
    tokenizer = GPTNeoXTokenizerFast.from_pretrained(out)
    ids = tokenizer("def main():", return_tensors="pt")["input_ids"]
    transformers = pytest.importorskip("transformers", reason="transformers (the reference oracle) is not installed")
    hf_model = transformers.GPTNeoXForCausalLM.from_pretrained(str(out), dtype=torch.float32)
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(out))
    assert hf_tok("def main():")["input_ids"] == ids[0].tolist()
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, hf_model(ids).logits, rtol=1e-5, atol=1e-5)
