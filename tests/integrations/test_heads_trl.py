"""TRL's RewardTrainer (pairwise reward-model training) on neox's sequence-classification head,
against the same trainer on transformers' head with the same weights: the same losses.

RewardTrainer reads ``model.config.get_text_config()`` and calls ``model.add_model_tags``: the
transformers-compatible surface of the base class. Until neox has both, the test skips and says so.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import neox
from conftest import randomize_, tiny_kwargs

trl = pytest.importorskip("trl", reason="TRL is not installed")
datasets = pytest.importorskip("datasets", reason="datasets is not installed")
transformers = pytest.importorskip("transformers", reason="transformers (the oracle) is not installed")

TOKENIZER = Path(__file__).resolve().parents[2] / "neox" / "default_model"


def test_reward_trainer_losses_equal_transformers(tmp_path):
    missing = [name for name, owner in (("get_text_config", neox.GPTNeoXConfig),
                                        ("add_model_tags", neox.GPTNeoXPreTrainedModel)) if not hasattr(owner, name)]
    if missing:
        pytest.skip(f"RewardTrainer needs {missing} from neox's transformers-compatible surface")
    tokenizer = transformers.AutoTokenizer.from_pretrained(TOKENIZER)
    kwargs = tiny_kwargs(vocab_size=len(tokenizer), max_position_embeddings=128, pad_token_id=tokenizer.pad_token_id,
                         eos_token_id=tokenizer.eos_token_id, num_labels=1)
    hf_config = transformers.GPTNeoXConfig(**kwargs)
    hf_config._attn_implementation = "sdpa"
    theirs = randomize_(transformers.GPTNeoXForSequenceClassification(hf_config))
    ours = neox.GPTNeoXForSequenceClassification(neox.GPTNeoXConfig(**kwargs))
    ours.load_state_dict(theirs.state_dict())
    pairs = [
        {"chosen": 'def f(x: int) -> int:\n    """Identity."""\n    return x', "rejected": "def f(x):return x"},
        {"chosen": "total = sum(values)", "rejected": "t=0\nfor v in values: t+=v"},
    ] * 4
    losses = []
    for name, model in (("theirs", theirs), ("ours", ours)):
        args = trl.RewardConfig(output_dir=str(tmp_path / name), max_steps=3, per_device_train_batch_size=2,
                                gradient_accumulation_steps=2, logging_steps=1, report_to=[], use_cpu=True,
                                save_strategy="no", disable_tqdm=True, max_length=64, gradient_checkpointing=False,
                                seed=0)
        trainer = trl.RewardTrainer(model=model, args=args, train_dataset=datasets.Dataset.from_list(pairs),
                                    processing_class=tokenizer)
        trainer.train()
        losses.append([h["loss"] for h in trainer.state.log_history if "loss" in h])
    assert len(losses[1]) == 3
    assert losses[1] == pytest.approx(losses[0], rel=1e-5)
