"""The task heads under transformers' Trainer, against transformers' own heads (same weights, same
seed): losses step by step with gradient accumulation 2, and num_items_in_batch handled as
transformers handles it for these heads (passed to forward, unused by the loss, and the loss not
divided by the accumulation steps: the Trainer sees both libraries' heads accept loss kwargs).

Also examples/reward_model.py (a reward model: sequence classification, one label, regression)
run through neox and, with its import swapped, through transformers: the same losses.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

import neox
from conftest import randomize_, tiny_kwargs

transformers = pytest.importorskip("transformers", reason="transformers (the Trainer and the oracle) is not installed")

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "reward_model.py"
NEOX_IMPORT = "from neox import GPTNeoXForSequenceClassification, GPTNeoXTokenizerFast"


def dataset(case: str, n: int = 8, T: int = 6, seed: int = 0) -> list[dict]:
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(n):
        length = 2 + i % (T - 1)
        ids = torch.randint(1, 128, (T,), generator=gen)
        ids[length:] = 0
        row = {"input_ids": ids, "attention_mask": (torch.arange(T) < length).long()}
        if case == "regression":
            row["labels"] = torch.randn((), generator=gen)
        elif case == "token":
            row["labels"] = torch.randint(0, 3, (T,), generator=gen).masked_fill(ids == 0, -100)
        else:
            start = int(torch.randint(0, length, (), generator=gen))
            row["start_positions"], row["end_positions"] = torch.tensor(start), torch.tensor(start + 1)
        rows.append(row)
    return rows


def train(model, rows, out: Path, **overrides) -> tuple[list[float], object]:
    args = dict(output_dir=str(out), per_device_train_batch_size=2, gradient_accumulation_steps=2, max_steps=3,
                logging_steps=1, learning_rate=1e-3, report_to=[], use_cpu=True, seed=0, save_strategy="no",
                disable_tqdm=True)
    trainer = transformers.Trainer(model=model, args=transformers.TrainingArguments(**{**args, **overrides}),
                                   train_dataset=rows)
    trainer.train()
    return [h["loss"] for h in trainer.state.log_history if "loss" in h], trainer


@pytest.mark.parametrize("head, case, num_labels", [
    ("GPTNeoXForSequenceClassification", "regression", 1),
    ("GPTNeoXForTokenClassification", "token", 3),
    ("GPTNeoXForQuestionAnswering", "qa", 2),
])
def test_trainer_losses_equal_transformers(tmp_path, head, case, num_labels):
    kwargs = tiny_kwargs(pad_token_id=0, num_labels=num_labels, classifier_dropout=0.0)
    hf_config = transformers.GPTNeoXConfig(**kwargs)
    hf_config._attn_implementation = "sdpa"
    theirs = randomize_(getattr(transformers, head)(hf_config))
    ours = getattr(neox, head)(neox.GPTNeoXConfig(**kwargs))
    ours.load_state_dict(theirs.state_dict())
    rows = dataset(case)
    want, their_trainer = train(theirs, rows, tmp_path / "theirs")
    got, our_trainer = train(ours, rows, tmp_path / "ours")
    assert our_trainer.model_accepts_loss_kwargs == their_trainer.model_accepts_loss_kwargs is True
    assert len(got) == 3
    assert got == pytest.approx(want, rel=1e-5, abs=1e-6)
    theirs_params = dict(theirs.named_parameters())
    for name, p in ours.named_parameters():
        torch.testing.assert_close(p, theirs_params[name], rtol=0, atol=1e-5)
    # Evaluation: the same predictions and loss.
    ours_pred, theirs_pred = our_trainer.predict(rows), their_trainer.predict(rows)
    assert ours_pred.metrics["test_loss"] == pytest.approx(theirs_pred.metrics["test_loss"], rel=1e-5)


def test_num_items_in_batch_is_accepted_and_unused():
    ours = neox.GPTNeoXForTokenClassification(neox.GPTNeoXConfig(**tiny_kwargs(num_labels=3))).eval()
    ids, labels = torch.randint(1, 128, (2, 5)), torch.randint(0, 3, (2, 5))
    plain = ours(input_ids=ids, labels=labels).loss
    torch.testing.assert_close(ours(input_ids=ids, labels=labels, num_items_in_batch=torch.tensor(3)).loss, plain)


def _load_example(source: str, name: str):
    spec = importlib.util.spec_from_loader(name, loader=None)
    module = importlib.util.module_from_spec(spec)
    exec(compile(source, str(EXAMPLE), "exec"), module.__dict__)
    return module


def test_reward_model_example_matches_transformers(tmp_path):
    """The example, on a tiny random causal LM sized to the shipped tokenizer: the LM loads into the
    head, trains with gradient accumulation, saves and reloads; transformers gives the same losses."""
    default_model = REPO / "neox" / "default_model"
    config = transformers.GPTNeoXConfig(**tiny_kwargs(vocab_size=4096, max_position_embeddings=128, pad_token_id=1))
    torch.manual_seed(0)
    randomize_(transformers.GPTNeoXForCausalLM(config)).save_pretrained(tmp_path / "lm")
    source = EXAMPLE.read_text(encoding="utf-8")
    assert source.count(NEOX_IMPORT) == 1
    argv = [str(tmp_path / "lm"), "--tokenizer", str(default_model), "--steps", "3"]
    ours = _load_example(source, "reward_neox").main([*argv, "--output-dir", str(tmp_path / "ours")])
    reference_source = source.replace(NEOX_IMPORT, NEOX_IMPORT.replace("from neox", "from transformers"))
    theirs = _load_example(reference_source, "reward_transformers").main([*argv, "--output-dir", str(tmp_path / "tf")])
    assert ours["problem_type"] == theirs["problem_type"] == "regression"
    assert ours["reloaded_rewards_identical"] and theirs["reloaded_rewards_identical"]
    assert len(ours["train_losses"]) == 3
    assert ours["train_losses"] == pytest.approx(theirs["train_losses"], rel=1e-5)
    assert ours["held_out_rewards"] == pytest.approx(theirs["held_out_rewards"], rel=1e-4, abs=1e-6)
    # Each library loads the other's saved reward model to the same rewards.
    texts = _load_example(source, "reward_texts").HELD_OUT
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "ours")
    batch = tok(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        a = transformers.GPTNeoXForSequenceClassification.from_pretrained(tmp_path / "ours").eval()(**batch).logits
        b = neox.GPTNeoXForSequenceClassification.from_pretrained(tmp_path / "ours").eval()(**batch).logits
    torch.testing.assert_close(a.squeeze(-1), torch.tensor(ours["held_out_rewards"]), rtol=0, atol=1e-5)
    torch.testing.assert_close(b, a, rtol=0, atol=1e-5)
