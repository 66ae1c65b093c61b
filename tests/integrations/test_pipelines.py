"""transformers' ``pipeline("text-generation")`` (5.24) runs a neox model — with transformers'
tokenizer or neox's — and returns the text transformers' own model returns (same weights)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers", reason="transformers (its pipelines are the client) is not installed")

from neox import GPTNeoXForCausalLM, GPTNeoXTokenizerFast  # noqa: E402

TOKENIZER = Path(__file__).resolve().parents[3] / "shared" / "data" / "gpt-neox-20b" / "tokenizer.json"
if not TOKENIZER.exists():
    TOKENIZER = Path("/work/shared/data/gpt-neox-20b/tokenizer.json")
PROMPTS = ["Hello world", "The quick brown fox jumps over"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    if not TOKENIZER.exists():
        pytest.skip(f"the GPT-NeoX-20B tokenizer is not at {TOKENIZER}")
    from conftest import randomize_, tiny_kwargs

    config = transformers.GPTNeoXConfig(**tiny_kwargs(vocab_size=50277))
    config._attn_implementation = "eager"
    torch.manual_seed(0)
    ref = randomize_(transformers.GPTNeoXForCausalLM(config)).eval()
    folder = tmp_path_factory.mktemp("pipe") / "model"
    ref.save_pretrained(folder)
    GPTNeoXTokenizerFast(tokenizer_file=str(TOKENIZER)).save_pretrained(folder)
    return folder, ref, transformers.AutoTokenizer.from_pretrained(folder)


def _texts(pipe, **kwargs) -> list[str]:
    return [r[0]["generated_text"] for r in pipe(PROMPTS, max_new_tokens=6, do_sample=False, **kwargs)]


@pytest.mark.parametrize("tokenizer", ["transformers", "neox"])
def test_text_generation_pipeline(setup, tokenizer):
    folder, ref, ref_tok = setup
    want = _texts(transformers.pipeline("text-generation", model=ref, tokenizer=ref_tok))
    model = GPTNeoXForCausalLM.from_pretrained(folder).eval()
    tok = ref_tok if tokenizer == "transformers" else GPTNeoXTokenizerFast.from_pretrained(folder)
    got = _texts(transformers.pipeline("text-generation", model=model, tokenizer=tok))
    assert got == want
    assert all(len(t) > len(p) for t, p in zip(got, PROMPTS))


def test_generation_config_diff_dict(setup):
    """What the pipeline reads: the settings that differ from transformers' defaults."""
    folder, ref, _ = setup
    model = GPTNeoXForCausalLM.from_pretrained(folder)
    assert model.generation_config.to_diff_dict() == {
        k: v for k, v in ref.generation_config.to_diff_dict().items() if k != "transformers_version"
    }
    for config in (model.generation_config, ref.generation_config):
        config.max_new_tokens, config.num_beams = 7, 1  # set explicitly: listed, as transformers lists it
    want = {k: v for k, v in ref.generation_config.to_diff_dict().items() if k != "transformers_version"}
    assert model.generation_config.to_diff_dict() == want and want["max_new_tokens"] == 7
