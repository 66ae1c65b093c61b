"""transformers' Trainer on a neox model gives the numbers it gives on transformers' own model.

Same weights, same seed, same data: losses, gradient norms and final weights agree (≤ 1e-5) with
gradient accumulation (the Trainer passes ``num_items_in_batch`` to neox's forward because the
model declares ``accepts_loss_kwargs``, and counts shifted labels because ``loss_type`` is
"ForCausalLM") and right padding, with and without activation checkpointing; and a Trainer
checkpoint folder loads with ``from_pretrained`` when ``NeoxCheckpointCallback`` is added.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers", reason="transformers (its Trainer, and the oracle) is not installed")
pytest.importorskip("accelerate", reason="transformers' Trainer needs accelerate")

from neox import GPTNeoXForCausalLM  # noqa: E402

ATOL = 1e-5


def examples(n: int = 8, seed: int = 0) -> list[dict[str, list[int]]]:
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(3, 12, (n,), generator=gen).tolist()
    return [{"input_ids": torch.randint(1, 128, (t,), generator=gen).tolist()} for t in lengths]


def collate(rows: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
    """Right padding with id 0; padding labelled -100 (ignored by the loss)."""
    T = max(len(r["input_ids"]) for r in rows)
    ids = torch.zeros(len(rows), T, dtype=torch.long)
    mask = torch.zeros(len(rows), T, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r["input_ids"])] = torch.tensor(r["input_ids"])
        mask[i, : len(r["input_ids"])] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)}


def train(model, output_dir, *, checkpointing: bool = False, save_steps: int | None = None, callbacks=()):
    import transformers

    args = transformers.TrainingArguments(
        output_dir=str(output_dir), per_device_train_batch_size=2, gradient_accumulation_steps=2, max_steps=2,
        # Plain SGD with a large step: final weights are then a faithful record of the gradients. (AdamW
        # divides each gradient by its own RMS, so a gradient that is exactly zero in exact arithmetic
        # — the key bias's, softmax ignores a shift of every key — turns fp32 rounding noise into a
        # ±lr step, and two correct implementations differ by ~lr there.)
        optim="sgd", learning_rate=0.5, logging_steps=1, seed=0, use_cpu=True, report_to=[], dataloader_num_workers=0,
        save_strategy="steps" if save_steps else "no", save_steps=save_steps or 500,
        activation_checkpointing=checkpointing, disable_tqdm=True,
    )
    trainer = transformers.Trainer(model=model, args=args, train_dataset=examples(), data_collator=collate,
                                   callbacks=list(callbacks))
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    return trainer, [(h["loss"], h["grad_norm"]) for h in logs]


def weights_match(ours, theirs) -> float:
    theirs_sd = {k.replace("lm_head.", "embed_out."): v for k, v in theirs.state_dict().items()}
    worst = 0.0
    for key, value in ours.state_dict().items():
        worst = max(worst, (value - theirs_sd[key]).abs().max().item())
    return worst


@pytest.mark.parametrize("checkpointing", [False, True], ids=["plain", "activation-checkpointing"])
def test_trainer_grad_accumulation_matches_transformers(save_hf_model, tmp_path, checkpointing):
    from neox.integrations.trainer import NeoxCheckpointCallback

    folder, theirs = save_hf_model(std=0.05)
    ours = GPTNeoXForCausalLM.from_pretrained(folder)
    _, want = train(theirs, tmp_path / "theirs", checkpointing=checkpointing)
    trainer, got = train(ours, tmp_path / "ours", checkpointing=checkpointing, save_steps=2,
                         callbacks=[NeoxCheckpointCallback()])
    assert trainer.model_accepts_loss_kwargs and trainer._loss_shifts_labels
    assert ours.is_activation_checkpointing == checkpointing
    assert len(got) == len(want) == 2
    for (loss_a, norm_a), (loss_b, norm_b) in zip(got, want):
        assert loss_a == pytest.approx(loss_b, abs=ATOL)
        assert norm_a == pytest.approx(norm_b, abs=ATOL)
    assert weights_match(ours, theirs) <= ATOL

    # The checkpoint folder holds config.json beside the weights: from_pretrained loads it.
    checkpoint = tmp_path / "ours" / "checkpoint-2"
    assert (checkpoint / "config.json").is_file() and (checkpoint / "model.safetensors").is_file()
    reloaded = GPTNeoXForCausalLM.from_pretrained(checkpoint)
    ids = torch.randint(1, 128, (2, 7), generator=torch.Generator().manual_seed(1))
    ours.eval()
    with torch.no_grad():
        assert torch.equal(reloaded(ids).logits, ours(ids).logits)
