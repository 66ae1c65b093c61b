"""TRL's SFTTrainer on a neox model gives the losses it gives on transformers' GPT-NeoX.

SFTTrainer reads ``config.get_text_config()``, tags the model (``add_model_tags``), wraps the
forward with its fused LM head (through ``base_model`` and ``get_output_embeddings``) and turns
on activation checkpointing; each must behave as on a transformers model. Both runs use the same
weights, seed and pre-tokenised data, with gradient accumulation and right padding; fp32
(``bf16=False``: SFTConfig otherwise trains under bf16 autocast, whose rounding is not a parity
check).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

trl = pytest.importorskip("trl", reason="TRL is not installed")
datasets = pytest.importorskip("datasets", reason="TRL's SFTTrainer needs datasets")
pytest.importorskip("transformers", reason="transformers (the oracle) is not installed")

from neox import GPTNeoXForCausalLM  # noqa: E402

ATOL = 1e-5
REAL_TOKENIZER = Path(__file__).resolve().parents[3] / "shared/data/gpt-neox-20b/tokenizer.json"


def tokenizer(hf):
    """A 128-token word-level tokenizer (id 0 is the pad/eos token): the data come pre-tokenised."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel

    vocab = {"<|endoftext|>": 0, **{f"t{i}": i for i in range(1, 128)}}
    return hf.PreTrainedTokenizerFast(tokenizer_object=Tokenizer(WordLevel(vocab, unk_token="<|endoftext|>")),
                                      eos_token="<|endoftext|>", pad_token="<|endoftext|>")


def dataset():
    gen = torch.Generator().manual_seed(0)
    lengths = torch.randint(3, 12, (8,), generator=gen).tolist()
    return datasets.Dataset.from_dict({"input_ids": [torch.randint(1, 128, (n,), generator=gen).tolist() for n in lengths]})


def sft(hf, model, output_dir, processing_class=None):
    args = trl.SFTConfig(
        output_dir=str(output_dir), per_device_train_batch_size=2, gradient_accumulation_steps=2, max_steps=2,
        optim="sgd", learning_rate=0.5, logging_steps=1, seed=0, use_cpu=True, bf16=False, report_to=[],
        save_strategy="no", disable_tqdm=True,
    )
    trainer = trl.SFTTrainer(model=model, args=args, train_dataset=dataset(), processing_class=processing_class or tokenizer(hf))
    trainer.train()
    return [(h["loss"], h["grad_norm"], h["mean_token_accuracy"]) for h in trainer.state.log_history if "loss" in h]


def test_sft_trainer_matches_transformers(hf, save_hf_model, tmp_path):
    folder, theirs = save_hf_model(std=0.05)
    ours = GPTNeoXForCausalLM.from_pretrained(folder)
    want = sft(hf, theirs, tmp_path / "theirs")
    got = sft(hf, ours, tmp_path / "ours")
    assert len(got) == len(want) == 2
    for a, b in zip(got, want):
        assert a == pytest.approx(b, abs=ATOL)
    assert ours.model_tags and set(ours.model_tags) == set(theirs.model_tags)  # e.g. "trl", "sft"
    assert ours.is_activation_checkpointing == theirs.is_activation_checkpointing
    theirs_sd = {k.replace("lm_head.", "embed_out."): v for k, v in theirs.state_dict().items()}
    for key, value in ours.state_dict().items():
        assert (value - theirs_sd[key]).abs().max() <= ATOL, key


def test_sft_trainer_with_neox_tokenizer(hf, save_hf_model, tmp_path):
    """neox's tokenizer, converted for TRL (which requires a transformers tokenizer), trains the same."""
    from neox import GPTNeoXTokenizerFast
    from neox.integrations.trl import to_transformers_tokenizer

    if not REAL_TOKENIZER.is_file():
        pytest.skip(f"the real GPT-NeoX-20B tokenizer is not at {REAL_TOKENIZER}")
    ours_tok = GPTNeoXTokenizerFast(tokenizer_file=REAL_TOKENIZER, pad_token="<|endoftext|>")
    theirs_tok = hf.GPTNeoXTokenizerFast(tokenizer_file=str(REAL_TOKENIZER), pad_token="<|endoftext|>")
    converted = to_transformers_tokenizer(ours_tok)
    assert isinstance(converted, hf.PreTrainedTokenizerBase)
    text = "def f(x):\n    return x  # <|endoftext|> ünïcödé"
    assert converted(text)["input_ids"] == theirs_tok(text)["input_ids"] == ours_tok(text)["input_ids"]
    assert converted.pad_token_id == theirs_tok.pad_token_id == 0
    folder, _ = save_hf_model(std=0.05)
    want = sft(hf, GPTNeoXForCausalLM.from_pretrained(folder), tmp_path / "a", processing_class=theirs_tok)
    got = sft(hf, GPTNeoXForCausalLM.from_pretrained(folder), tmp_path / "b", processing_class=converted)
    assert got == pytest.approx(want, abs=ATOL)
