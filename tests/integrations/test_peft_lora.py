"""PEFT adapters on a neox model: transformers' trainable-parameter counts, losses and gradients.

Each adapter is built on a neox model and on transformers' GPT-NeoX holding the same weights,
with the same seed (so adapter weights are drawn identically), then one forward/backward on a
padded batch is compared. ``init_lora_weights=False`` makes the LoRA product non-zero, so a
wrong adapter placement changes the loss.
"""

from __future__ import annotations

import pytest
import torch

peft = pytest.importorskip("peft", reason="PEFT is not installed")
pytest.importorskip("transformers", reason="transformers (the oracle) is not installed")

from neox import GPTNeoXForCausalLM  # noqa: E402
from neox.integrations.peft import get_peft_model  # noqa: E402

ATOL = 1e-5

ADAPTERS = {
    "lora": lambda: peft.LoraConfig(task_type="CAUSAL_LM", r=4, init_lora_weights=False),
    "ia3": lambda: peft.IA3Config(task_type="CAUSAL_LM"),
    "lora-all-linear": lambda: peft.LoraConfig(task_type="CAUSAL_LM", r=4, target_modules="all-linear",
                                               init_lora_weights=False),
}


def batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    ids = torch.randint(1, 128, (2, 9), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[0, 6:] = 0  # right padding
    return ids, mask, ids.masked_fill(mask == 0, -100)


def loss_and_grads(model) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    ids, mask, labels = batch()
    model.train()
    loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
    loss.backward()
    grads = {n.replace("lm_head", "embed_out"): p.grad for n, p in model.named_parameters() if p.requires_grad}
    return loss.detach(), grads


def compare(ours, theirs) -> None:
    assert ours.get_nb_trainable_parameters() == theirs.get_nb_trainable_parameters()
    loss_a, grads_a = loss_and_grads(ours)
    loss_b, grads_b = loss_and_grads(theirs)
    assert (loss_a - loss_b).abs() <= ATOL
    assert grads_a.keys() == grads_b.keys() and grads_a
    for name, grad in grads_a.items():
        assert (grad - grads_b[name]).abs().max() <= ATOL, name


@pytest.mark.parametrize("adapter", sorted(ADAPTERS))
def test_adapter_matches_transformers(hf, save_hf_model, adapter):
    folder, _ = save_hf_model(std=0.05)
    torch.manual_seed(1)
    theirs = peft.get_peft_model(hf.GPTNeoXForCausalLM.from_pretrained(folder), ADAPTERS[adapter]())
    torch.manual_seed(1)
    ours = get_peft_model(GPTNeoXForCausalLM.from_pretrained(folder), ADAPTERS[adapter]())
    compare(ours, theirs)
    if adapter == "lora-all-linear":  # the output head is not adapted, as for transformers' model
        assert not any("embed_out" in n or "lm_head" in n for n, _ in ours.named_parameters() if "lora_" in n)


def test_plain_peft_get_peft_model_accepts_neox(save_hf_model):
    """peft.get_peft_model itself (needs prepare_inputs_for_generation) wraps a neox model."""
    folder, _ = save_hf_model()
    model = peft.get_peft_model(GPTNeoXForCausalLM.from_pretrained(folder), ADAPTERS["lora"]())
    assert isinstance(model, peft.PeftModelForCausalLM)
    assert {n.split(".lora_A")[0].split(".")[-1] for n, _ in model.named_parameters() if "lora_A" in n} == {"query_key_value"}


def test_kbit_preparation_and_checkpointing_match_transformers(hf, save_hf_model):
    """QLoRA's recipe on an unquantised bf16 model: upcast to fp32, freeze, reentrant checkpointing, LoRA."""
    folder, _ = save_hf_model(std=0.05, dtype=torch.bfloat16)
    models = []
    for cls in (GPTNeoXForCausalLM, hf.GPTNeoXForCausalLM):
        model = peft.prepare_model_for_kbit_training(cls.from_pretrained(folder, dtype=torch.bfloat16))
        assert all(p.dtype == torch.float32 and not p.requires_grad for p in model.parameters())
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
        torch.manual_seed(1)
        models.append(peft.get_peft_model(model, ADAPTERS["lora"]()))
    ours, theirs = models
    assert ours.base_model.model.is_activation_checkpointing
    compare(ours, theirs)
