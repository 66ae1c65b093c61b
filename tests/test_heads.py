"""The task heads against transformers 5.24 (the oracle): logits, losses of every problem type,
gradients, padded batches on both sides, label config, checkpoints both ways, LM → head loading,
and a few AdamW steps.

Outputs at padding positions: with right padding, a padding query sees the real tokens before it
in both libraries, so QA and token-classification losses (whose softmax spans padding positions)
agree. With left padding a padding query sees no real key; transformers' own eager and SDPA paths
give different numbers there, so only real positions (and losses that ignore padding) are compared.
"""

from __future__ import annotations

import json
import logging

import pytest
import torch

import neox
from conftest import randomize_, tiny_kwargs

HEADS = ["GPTNeoXForSequenceClassification", "GPTNeoXForTokenClassification", "GPTNeoXForQuestionAnswering"]
PAD = 0
TOL = dict(rtol=0, atol=1e-5)


def make_pair(hf, head: str, seed: int = 0, attn: str = "eager", **overrides):
    """(transformers model, neox model) with the same random weights, both in eval mode."""
    kwargs = tiny_kwargs(**{"pad_token_id": PAD, **overrides})
    hf_config = hf.GPTNeoXConfig(**kwargs)
    hf_config._attn_implementation = attn
    torch.manual_seed(seed)
    theirs = randomize_(getattr(hf, head)(hf_config), seed=seed).eval()
    ours = getattr(neox, head)(neox.GPTNeoXConfig(**kwargs)).eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    return theirs, ours


def batch(side: str, lengths=(7, 4, 6), seed: int = 0):
    """Random ids in [1, 128) padded with PAD on ``side`` ("none": all rows full length)."""
    gen = torch.Generator().manual_seed(seed)
    T = max(lengths)
    ids = torch.randint(1, 128, (len(lengths), T), generator=gen)
    mask = torch.ones_like(ids)
    if side != "none":
        for row, n in enumerate(lengths):
            pad = slice(n, T) if side == "right" else slice(0, T - n)
            ids[row, pad], mask[row, pad] = PAD, 0
    return ids, mask


def labels_for(case: str, ids: torch.Tensor, mask: torch.Tensor, seed: int = 1) -> dict:
    gen = torch.Generator().manual_seed(seed)
    B, T = ids.shape
    if case == "regression":
        return {"labels": torch.randn(B, generator=gen)}
    if case == "regression2":
        return {"labels": torch.randn(B, 2, generator=gen)}
    if case == "single_label":
        return {"labels": torch.randint(0, 3, (B,), generator=gen)}
    if case == "multi_label":
        return {"labels": torch.randint(0, 2, (B, 3), generator=gen).float()}
    if case == "token":
        labels = torch.randint(0, 3, (B, T), generator=gen)
        return {"labels": labels.masked_fill(mask == 0, -100)}
    # QA: one row's span runs past the sequence (clamped, then ignored), one row is (B, 1)-shaped.
    start = torch.randint(0, T, (B,), generator=gen)
    end = torch.minimum(start + 2, torch.full_like(start, T + 5))
    return {"start_positions": start, "end_positions": end}


CASES = [  # (head, label case, config overrides, expected problem_type)
    ("GPTNeoXForSequenceClassification", "regression", {"num_labels": 1}, "regression"),
    ("GPTNeoXForSequenceClassification", "regression2", {"num_labels": 2, "problem_type": "regression"}, "regression"),
    ("GPTNeoXForSequenceClassification", "single_label", {"num_labels": 3}, "single_label_classification"),
    ("GPTNeoXForSequenceClassification", "multi_label", {"num_labels": 3}, "multi_label_classification"),
    ("GPTNeoXForTokenClassification", "token", {"num_labels": 3}, None),
    ("GPTNeoXForQuestionAnswering", "qa", {}, None),
]


def _outputs(out, head):
    return (out.start_logits, out.end_logits) if head.endswith("Answering") else (out.logits,)


@pytest.mark.parametrize("side", ["none", "right", "left"])
@pytest.mark.parametrize("head, case, overrides, problem_type", CASES, ids=[c[1] for c in CASES])
def test_logits_loss_and_gradients_match_transformers(hf, head, case, overrides, problem_type, side):
    theirs, ours = make_pair(hf, head, **overrides)
    ids, mask = batch(side)
    targets = labels_for(case, ids, mask)
    want = theirs(input_ids=ids, attention_mask=mask, **targets)
    got = ours(input_ids=ids, attention_mask=mask, **targets)
    real = mask.bool()
    for a, b in zip(_outputs(got, head), _outputs(want, head)):
        if side == "left" and not head.endswith("SequenceClassification"):
            a, b = a[real], b[real]  # per-token outputs: real positions only
        torch.testing.assert_close(a, b, **TOL)
    if head.endswith("SequenceClassification"):
        assert ours.config.problem_type == theirs.config.problem_type == problem_type
    if side == "left" and head.endswith("Answering"):
        return  # the loss's softmax spans padding positions, where transformers has no single answer
    torch.testing.assert_close(got.loss, want.loss, **TOL)
    got.loss.backward()
    want.loss.backward()
    theirs_grads = dict(theirs.named_parameters())
    for name, p in ours.named_parameters():
        assert p.grad is not None, name
        torch.testing.assert_close(p.grad, theirs_grads[name].grad, **TOL, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("head", HEADS)
def test_tuple_outputs_and_output_fields(hf, head):
    theirs, ours = make_pair(hf, head, num_labels=2)
    ids, mask = batch("right")
    kwargs = dict(input_ids=ids, attention_mask=mask, output_hidden_states=True, output_attentions=True)
    want, got = theirs(**kwargs), ours(**kwargs)
    assert type(got).__name__ == type(want).__name__
    assert len(got.hidden_states) == len(want.hidden_states) and len(got.attentions) == len(want.attentions)
    assert isinstance(got, getattr(neox, type(want).__name__))
    as_tuple = ours(input_ids=ids, attention_mask=mask, return_dict=False)
    torch.testing.assert_close(as_tuple[0], _outputs(got, head)[0])


def test_no_pad_token_needs_batch_of_one(hf):
    theirs, ours = make_pair(hf, "GPTNeoXForSequenceClassification", pad_token_id=None)
    ids, _ = batch("none")
    for model in (theirs, ours):
        with pytest.raises(ValueError, match="Cannot handle batch sizes > 1 if no padding token is defined"):
            model(input_ids=ids)
    torch.testing.assert_close(ours(input_ids=ids[:1]).logits, theirs(input_ids=ids[:1]).logits, **TOL)


def test_inputs_embeds_pools_the_last_position_with_a_warning(hf, caplog):
    theirs, ours = make_pair(hf, "GPTNeoXForSequenceClassification")
    ids, mask = batch("left")
    embeds = theirs.gpt_neox.embed_in(ids).detach()
    want = theirs(inputs_embeds=embeds, attention_mask=mask).logits
    with caplog.at_level(logging.WARNING, logger="neox.heads"):
        got = ours(inputs_embeds=embeds, attention_mask=mask).logits
    torch.testing.assert_close(got, want, **TOL)
    assert "inputs_embeds" in caplog.text


# ------------------------------------------------------------------------------------ config


def test_label_config_round_trips_both_ways(hf, tmp_path):
    labels = {0: "negative", 1: "neutral", 2: "positive"}
    kwargs = tiny_kwargs(id2label=labels, label2id={v: k for k, v in labels.items()},
                         problem_type="single_label_classification", classifier_dropout=0.25)
    neox.GPTNeoXConfig(**kwargs).save_pretrained(tmp_path / "ours")
    data = json.loads((tmp_path / "ours" / "config.json").read_text())
    assert data["id2label"] == {"0": "negative", "1": "neutral", "2": "positive"}  # JSON keys, as transformers
    theirs = hf.GPTNeoXConfig.from_pretrained(tmp_path / "ours")
    assert theirs.id2label == labels and theirs.num_labels == 3 and theirs.label2id == {v: k for k, v in labels.items()}
    assert theirs.problem_type == "single_label_classification" and theirs.classifier_dropout == 0.25
    theirs.save_pretrained(tmp_path / "theirs")
    ours = neox.GPTNeoXConfig.from_pretrained(tmp_path / "theirs")
    assert ours.id2label == labels and ours.num_labels == 3 and ours.label2id == theirs.label2id
    assert ours.problem_type == "single_label_classification" and ours.classifier_dropout == 0.25


@pytest.mark.parametrize("kwargs", [{}, {"num_labels": 5}, {"num_labels": 1},
                                    {"id2label": {"0": "a", "1": "b", "2": "c"}},
                                    {"id2label": {0: "a", 1: "b"}, "num_labels": 4}])
def test_label_fields_as_transformers_sets_them(hf, kwargs):
    ours, theirs = neox.GPTNeoXConfig(**kwargs), hf.GPTNeoXConfig(**kwargs)
    assert (ours.num_labels, ours.id2label, ours.label2id) == (theirs.num_labels, theirs.id2label, theirs.label2id)
    ours.num_labels = theirs.num_labels = 3
    assert (ours.id2label, ours.label2id) == (theirs.id2label, theirs.label2id)


@pytest.mark.parametrize("num_labels", [3, 4])
def test_from_pretrained_num_labels_override(hf, tmp_path, num_labels):
    neox.GPTNeoXConfig(**tiny_kwargs(id2label={0: "a", 1: "b", 2: "c"})).save_pretrained(tmp_path)
    ours = neox.GPTNeoXConfig.from_pretrained(tmp_path, num_labels=num_labels)
    theirs = hf.GPTNeoXConfig.from_pretrained(tmp_path, num_labels=num_labels)
    assert (ours.id2label, ours.label2id) == (theirs.id2label, theirs.label2id)


def test_bad_label_config_names_the_field():
    with pytest.raises(ValueError, match="problem_type"):
        neox.GPTNeoXConfig(problem_type="ranking")
    with pytest.raises(ValueError, match="num_labels > 1"):
        neox.GPTNeoXConfig(num_labels=1, problem_type="single_label_classification")
    with pytest.raises(ValueError, match="id2label"):
        neox.GPTNeoXConfig(id2label={"first": "a"})


# ------------------------------------------------------------------------------------ checkpoints


@pytest.mark.parametrize("head", HEADS)
def test_checkpoints_load_both_ways(hf, tmp_path, head):
    theirs, ours = make_pair(hf, head, num_labels=3)
    ids, mask = batch("right")
    want = _outputs(theirs(input_ids=ids, attention_mask=mask), head)
    theirs.save_pretrained(tmp_path / "theirs")
    loaded, info = getattr(neox, head).from_pretrained(tmp_path / "theirs", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    for a, b in zip(_outputs(loaded(input_ids=ids, attention_mask=mask), head), want):
        torch.testing.assert_close(a, b, **TOL)
    ours.save_pretrained(tmp_path / "ours")
    back, info = getattr(hf, head).from_pretrained(tmp_path / "ours", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert back.config.id2label == ours.config.id2label
    for a, b in zip(_outputs(back.eval()(input_ids=ids, attention_mask=mask), head), want):
        torch.testing.assert_close(a, b, **TOL)


def test_problem_type_chosen_by_the_loss_is_saved(hf, tmp_path):
    _, ours = make_pair(hf, "GPTNeoXForSequenceClassification", num_labels=3)
    ids, mask = batch("right")
    ours(input_ids=ids, attention_mask=mask, labels=torch.tensor([0, 2, 1]))
    ours.save_pretrained(tmp_path)
    assert hf.GPTNeoXConfig.from_pretrained(tmp_path).problem_type == "single_label_classification"


@pytest.mark.parametrize("base", [False, True], ids=["causal_lm", "base_model"])
@pytest.mark.parametrize("head", HEADS)
def test_lm_checkpoint_into_a_head_as_transformers(hf, save_hf_model, head, base):
    folder, lm = save_hf_model(base=base, pad_token_id=PAD)
    ours, our_info = getattr(neox, head).from_pretrained(folder, output_loading_info=True)
    theirs, their_info = getattr(hf, head).from_pretrained(folder, output_loading_info=True)
    assert set(our_info["missing_keys"]) == set(their_info["missing_keys"]) != set()
    assert set(our_info["unexpected_keys"]) == set(their_info["unexpected_keys"])
    backbone = lm if base else lm.gpt_neox
    for name, tensor in backbone.state_dict().items():
        torch.testing.assert_close(ours.gpt_neox.state_dict()[name], tensor, rtol=0, atol=0)
    head_params = [p for n, p in ours.named_parameters() if not n.startswith("gpt_neox.")]
    assert head_params and all(torch.isfinite(p).all() for p in head_params)
    assert not ours.training


@pytest.mark.parametrize("target", ["GPTNeoXForCausalLM", "GPTNeoXModel"])
def test_head_checkpoint_back_into_lm_as_transformers(hf, tmp_path, target):
    _, head = make_pair(hf, "GPTNeoXForSequenceClassification")
    head.save_pretrained(tmp_path)
    ours, our_info = getattr(neox, target).from_pretrained(tmp_path, output_loading_info=True)
    theirs, their_info = getattr(hf, target).from_pretrained(tmp_path, output_loading_info=True)
    assert set(our_info["unexpected_keys"]) == set(their_info["unexpected_keys"]) == {"score.weight"}
    # transformers names the LM head lm_head; neox keeps the checkpoint's embed_out.
    rename = {"lm_head.weight": "embed_out.weight"}
    assert set(our_info["missing_keys"]) == {rename.get(k, k) for k in their_info["missing_keys"]}
    ids, _ = batch("none")
    hidden = (ours.gpt_neox if target.endswith("LM") else ours)(input_ids=ids).last_hidden_state
    torch.testing.assert_close(hidden, head.gpt_neox(input_ids=ids).last_hidden_state, rtol=0, atol=0)


# ------------------------------------------------------------------------------------ training


@pytest.mark.parametrize("head, case, overrides", [
    ("GPTNeoXForSequenceClassification", "single_label", {"num_labels": 3}),
    ("GPTNeoXForTokenClassification", "token", {"num_labels": 3}),
    ("GPTNeoXForQuestionAnswering", "qa", {}),
])
def test_adamw_steps_equal_transformers(hf, head, case, overrides):
    """Training mode with classifier dropout 0.1 and hidden dropout 0.1: same seed, same masks."""
    theirs, ours = make_pair(hf, head, attn="sdpa", hidden_dropout=0.1, **overrides)
    optimizers = [torch.optim.AdamW(m.parameters(), lr=1e-3) for m in (theirs, ours)]
    for step in range(3):
        ids, mask = batch("right", seed=step)
        targets = labels_for(case, ids, mask, seed=10 + step)
        losses = []
        for model, opt in zip((theirs, ours), optimizers):
            model.train()
            torch.manual_seed(100 + step)
            loss = model(input_ids=ids, attention_mask=mask, **targets).loss
            loss.backward()
            opt.step()
            opt.zero_grad()
            losses.append(loss.detach())
        torch.testing.assert_close(losses[1], losses[0], **TOL, msg=lambda m: f"step {step}: {m}")
    theirs_params = dict(theirs.named_parameters())
    for name, p in ours.named_parameters():
        torch.testing.assert_close(p, theirs_params[name], **TOL)


def test_gradient_checkpointing_gives_the_same_gradients(hf):
    theirs, ours = make_pair(hf, "GPTNeoXForTokenClassification", num_labels=3, classifier_dropout=0.0)
    ours.gradient_checkpointing_enable()
    assert ours.is_gradient_checkpointing
    ids, mask = batch("right")
    targets = labels_for("token", ids, mask)
    for model in (theirs, ours):
        model.train()
        model(input_ids=ids, attention_mask=mask, **targets).loss.backward()
    theirs_params = dict(theirs.named_parameters())
    for name, p in ours.named_parameters():
        torch.testing.assert_close(p.grad, theirs_params[name].grad, **TOL)
