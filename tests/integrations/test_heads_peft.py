"""PEFT LoRA on the task heads (task_type SEQ_CLS / TOKEN_CLS / QUESTION_ANS), against PEFT on
transformers' heads with the same weights: the same trainable parameters (LoRA on query_key_value
plus the head as a modules_to_save copy), the same loss and the same gradients."""

from __future__ import annotations

import pytest
import torch

import neox
from conftest import randomize_, tiny_kwargs

peft = pytest.importorskip("peft", reason="PEFT is not installed")
transformers = pytest.importorskip("transformers", reason="transformers (the oracle) is not installed")

TASKS = [
    ("GPTNeoXForSequenceClassification", "SEQ_CLS", "score"),
    ("GPTNeoXForTokenClassification", "TOKEN_CLS", "classifier"),
    ("GPTNeoXForQuestionAnswering", "QUESTION_ANS", "qa_outputs"),
]


def targets(task: str, ids: torch.Tensor) -> dict:
    gen = torch.Generator().manual_seed(3)
    B, T = ids.shape
    if task == "SEQ_CLS":
        return {"labels": torch.randint(0, 3, (B,), generator=gen)}
    if task == "TOKEN_CLS":
        return {"labels": torch.randint(0, 3, (B, T), generator=gen).masked_fill(ids == 0, -100)}
    return {"start_positions": torch.tensor([1, 2]), "end_positions": torch.tensor([3, 9])}


@pytest.mark.parametrize("head, task, module", TASKS, ids=[t[1] for t in TASKS])
def test_lora_on_heads_equals_peft_on_transformers(head, task, module):
    kwargs = tiny_kwargs(pad_token_id=0, num_labels=3, classifier_dropout=0.0)
    hf_config = transformers.GPTNeoXConfig(**kwargs)
    hf_config._attn_implementation = "sdpa"
    base_theirs = randomize_(getattr(transformers, head)(hf_config))
    base_ours = getattr(neox, head)(neox.GPTNeoXConfig(**kwargs))
    base_ours.load_state_dict(base_theirs.state_dict())
    models = []
    for base in (base_theirs, base_ours):
        config = peft.LoraConfig(task_type=task, r=4, lora_alpha=8, lora_dropout=0.0, init_lora_weights=False)
        torch.manual_seed(0)  # init_lora_weights=False: random B too, so the adapters change the outputs
        models.append(peft.get_peft_model(base, config))
    theirs, ours = models
    assert ours.get_nb_trainable_parameters() == theirs.get_nb_trainable_parameters()
    assert module in ours.modules_to_save
    trainable = {n for n, p in ours.named_parameters() if p.requires_grad}
    assert trainable == {n for n, p in theirs.named_parameters() if p.requires_grad}
    assert any(f"{module}.modules_to_save" in n for n in trainable) and any("lora_A" in n for n in trainable)

    ids = torch.randint(1, 128, (2, 6), generator=torch.Generator().manual_seed(1))
    ids[0, 4:] = 0
    batch = dict(input_ids=ids, attention_mask=(ids != 0).long(), **targets(task, ids))
    want, got = theirs(**batch), ours(**batch)
    torch.testing.assert_close(got.loss, want.loss, rtol=0, atol=1e-5)
    want.loss.backward()
    got.loss.backward()
    their_grads = {n: p.grad for n, p in theirs.named_parameters() if p.requires_grad}
    for name, p in ours.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(p.grad, their_grads[name], rtol=0, atol=1e-5, msg=lambda m: f"{name}: {m}")
