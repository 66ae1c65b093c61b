"""The transformers 5.24 public surface that libraries call on a model, against transformers itself.

Each test calls the same method or reads the same attribute on neox's GPT-NeoX and on
transformers' (the oracle) holding the same weights, and compares what comes back. Where neox
deliberately differs, the README's "Switching from transformers" table says so and the test
pins the difference.
"""

from __future__ import annotations

import copy

import pytest
import torch

pytest.importorskip("transformers", reason="transformers (the oracle) is not installed")

from neox import GPTNeoXConfig, GPTNeoXForCausalLM, GPTNeoXModel  # noqa: E402
from neox.modeling import _attention_mask  # noqa: E402

from conftest import randomize_, tiny_kwargs  # noqa: E402

ATOL = 1e-5


def pair(hf, attn: str = "eager", **overrides):
    """(ours, theirs): a random transformers GPT-NeoX and a neox model with the same weights."""
    config = hf.GPTNeoXConfig(**tiny_kwargs(**overrides))
    config._attn_implementation = attn
    torch.manual_seed(0)
    theirs = randomize_(hf.GPTNeoXForCausalLM(config)).eval()
    ours = GPTNeoXForCausalLM(GPTNeoXConfig(**tiny_kwargs(attn_implementation=attn, **overrides))).eval()
    ours.load_state_dict({k.replace("lm_head.", "embed_out."): v for k, v in theirs.state_dict().items()})
    return ours, theirs


def ids_for(B: int = 3, T: int = 9, seed: int = 0) -> torch.Tensor:
    return torch.randint(1, 128, (B, T), generator=torch.Generator().manual_seed(seed))


def renamed(keys) -> set:
    return {k.replace("lm_head.", "embed_out.") if isinstance(k, str) else (k[0].replace("lm_head.", "embed_out."), *k[1:])
            for k in keys}


# ============================================================================== padding positions


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("side", ["left", "right"])
def test_logits_at_every_position_of_a_padded_batch(hf, attn, side):
    """A padding query sees what transformers lets it see (causal AND not padding; a row with no
    key gives SDPA's zeros / eager's mean of all values), so even padding positions match."""
    ours, theirs = pair(hf, attn)
    ids = ids_for()
    mask = torch.ones_like(ids)
    if side == "left":
        mask[0, :4], mask[1, :1] = 0, 0
    else:
        mask[0, 5:], mask[1, 8:] = 0, 0
    with torch.no_grad():
        got = ours(ids, attention_mask=mask).logits
        want = theirs(ids, attention_mask=mask).logits
    assert torch.isfinite(got).all()
    assert (got - want).abs().max() <= ATOL


def test_all_ones_mask_takes_the_maskless_path():
    """As transformers' sdpa_mask: no padding, no cache → plain causal attention, no mask tensor."""
    assert _attention_mask(torch.ones(2, 5, dtype=torch.long), 2, 5, 0, torch.device("cpu")) == (None, True)
    mask, causal = _attention_mask(torch.tensor([[0, 1, 1, 1, 1], [1] * 5]), 2, 5, 0, torch.device("cpu"))
    assert mask is not None and not causal


# ============================================================================== class-level surface


def test_class_flags_match_transformers(hf):
    for ours, theirs in ((GPTNeoXForCausalLM, hf.GPTNeoXForCausalLM), (GPTNeoXModel, hf.GPTNeoXModel)):
        assert ours.can_generate() == theirs.can_generate()  # a classmethod: called on the class
        for flag in ("_supports_sdpa", "supports_gradient_checkpointing", "base_model_prefix", "_is_stateful",
                     "main_input_name"):
            assert getattr(ours, flag) == getattr(theirs, flag), flag
        assert set(ours._no_split_modules) == set(theirs._no_split_modules)
        assert not ours._keep_in_fp32_modules and not theirs._keep_in_fp32_modules
        assert not ours._supports_flash_attn  # deliberate: neox has no FlashAttention-2 path (README)
    assert renamed(GPTNeoXForCausalLM._tied_weights_keys) == renamed(hf.GPTNeoXForCausalLM._tied_weights_keys)
    config = hf.GPTNeoXConfig(**tiny_kwargs())
    assert GPTNeoXForCausalLM(GPTNeoXConfig(**tiny_kwargs())).loss_type == hf.GPTNeoXForCausalLM(config).loss_type


def test_auto_classes_register_and_load_neox(hf, tmp_path):
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    ours, _ = pair(hf)
    ours.save_pretrained(tmp_path)
    hf.AutoConfig.register("gpt_neox", GPTNeoXConfig, exist_ok=True)
    hf.AutoModelForCausalLM.register(GPTNeoXConfig, GPTNeoXForCausalLM, exist_ok=True)
    try:
        config = hf.AutoConfig.from_pretrained(tmp_path)
        assert isinstance(config, GPTNeoXConfig)
        loaded = hf.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.bfloat16)
        assert isinstance(loaded, GPTNeoXForCausalLM) and loaded.dtype == torch.bfloat16
        assert isinstance(hf.AutoModelForCausalLM.from_config(config), GPTNeoXForCausalLM)
    finally:  # transformers' registries are process-wide: leave them as found
        CONFIG_MAPPING._extra_content.pop("gpt_neox", None)
        MODEL_FOR_CAUSAL_LM_MAPPING._extra_content.pop(GPTNeoXConfig, None)
    assert not isinstance(hf.AutoConfig.for_model("gpt_neox"), GPTNeoXConfig)


# ============================================================================== config


def test_config_surface_matches_transformers(hf, tmp_path):
    theirs = hf.GPTNeoXConfig(**tiny_kwargs())
    ours = GPTNeoXConfig(**tiny_kwargs())
    assert ours.is_encoder_decoder == theirs.is_encoder_decoder
    assert ours.get_text_config() is ours and theirs.get_text_config() is theirs
    assert type(ours).sub_configs == type(theirs).sub_configs == {}
    assert ours.dtype == theirs.dtype is None
    for config in (ours, theirs):
        config.dtype = torch.bfloat16
    assert ours.dtype == theirs.dtype == ours.torch_dtype == torch.bfloat16
    # transformers' from_dict as AutoConfig calls it: known keys applied, the rest handed back
    kwargs = dict(return_unused_kwargs=True, foo=1, vocab_size=50)
    (a, unused_a), (b, unused_b) = (GPTNeoXConfig.from_dict(ours.to_dict(), **kwargs),
                                    hf.GPTNeoXConfig.from_dict(theirs.to_dict(), **kwargs))
    assert unused_a == unused_b == {"foo": 1} and a.vocab_size == b.vocab_size == 50
    # to_diff_dict: what differs from a default config (transformers' default is the generic base
    # config, neox's a default GPT-NeoX one, so neox's diff is shorter); values agree, and it round-trips
    diff_a, diff_b = ours.to_diff_dict(), theirs.to_diff_dict()
    assert {"vocab_size", "hidden_size", "dtype", "model_type"} <= diff_a.keys()
    for key in diff_a.keys() & diff_b.keys():
        assert diff_a[key] == diff_b[key], key
    assert GPTNeoXConfig.from_dict(diff_a) == ours
    theirs.save_pretrained(tmp_path)
    a, b = GPTNeoXConfig.from_pretrained(tmp_path), hf.GPTNeoXConfig.from_pretrained(tmp_path)
    assert a.dtype == b.dtype == torch.bfloat16
    hf.GPTNeoXForCausalLM(theirs).save_pretrained(tmp_path)
    a, b = GPTNeoXForCausalLM.from_pretrained(tmp_path), hf.GPTNeoXForCausalLM.from_pretrained(tmp_path)
    assert a.config._name_or_path == b.config._name_or_path == str(tmp_path)


def test_rope_parameters_writable_like_transformers(hf):
    ours, theirs = pair(hf)
    new = {"rope_type": "default", "rope_theta": 500.0, "partial_rotary_factor": 0.5}
    for config in (ours.config, theirs.config):
        config.rope_parameters = dict(new)
        config.rope_parameters["rope_theta"] = 700.0  # item writes stick, as on transformers' dict
    assert dict(ours.config.rope_parameters) == theirs.config.rope_parameters
    assert ours.config.rotary_emb_base == 700.0 and ours.config.rotary_ndims == 4
    # a model built from the edited config rotates as transformers' does
    a = GPTNeoXForCausalLM(ours.config).eval()
    b = type(theirs)(theirs.config).eval()
    a.load_state_dict({k.replace("lm_head.", "embed_out."): v for k, v in randomize_(b).state_dict().items()})
    with torch.no_grad():
        assert (a(ids_for()).logits - b(ids_for()).logits).abs().max() <= ATOL


# ============================================================================== forward


def test_shift_labels_and_num_items_match_transformers(hf):
    ours, theirs = pair(hf)
    ids = ids_for()
    shift = ids.roll(-1, dims=1)
    shift[:, -1] = -100
    shift[0, :3] = -100
    for kwargs in ({"labels": ids, "shift_labels": shift}, {"labels": ids, "shift_labels": shift, "num_items_in_batch": 11}):
        with torch.no_grad():
            a, b = ours(ids, **kwargs).loss, theirs(ids, **kwargs).loss
        assert (a - b).abs() <= ATOL


def test_prepare_inputs_for_generation_matches_transformers(hf):
    ours, theirs = pair(hf)
    args = dict(next_sequence_length=2, attention_mask=torch.ones(1, 6), position_ids=torch.arange(6)[None],
                use_cache=True, is_first_iteration=False)
    a = ours.prepare_inputs_for_generation(torch.arange(6)[None], **args)
    b = theirs.prepare_inputs_for_generation(torch.arange(6)[None], **args)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]) if torch.is_tensor(a[key]) else a[key] == b[key]
    embeds = torch.randn(1, 4, 32)
    a = ours.prepare_inputs_for_generation(torch.zeros(1, 0, dtype=torch.long), inputs_embeds=embeds, is_first_iteration=True)
    b = theirs.prepare_inputs_for_generation(torch.zeros(1, 0, dtype=torch.long), inputs_embeds=embeds, is_first_iteration=True)
    assert a["input_ids"] is b["input_ids"] is None and torch.equal(a["inputs_embeds"], b["inputs_embeds"])


# ============================================================================== training helpers


def test_activation_checkpointing_matches_transformers(hf):
    ours, theirs = pair(hf, num_hidden_layers=3)
    # offload=True keeps saved activations on the host (transformers pins that memory, which needs a GPU)
    ours.activation_checkpointing_enable(every_n_layers=2, offload=True)
    theirs.activation_checkpointing_enable(every_n_layers=2, offload=torch.cuda.is_available())
    for model in (ours, theirs):
        model.train()
    assert ours.is_activation_checkpointing and theirs.is_activation_checkpointing
    assert [layer.gradient_checkpointing for layer in ours.gpt_neox.layers] == \
        [layer.gradient_checkpointing for layer in theirs.gpt_neox.layers] == [True, False, True]
    ids = ids_for()
    ours(ids, labels=ids).loss.backward()
    theirs(ids, labels=ids).loss.backward()
    grads = {k.replace("lm_head.", "embed_out."): p.grad for k, p in theirs.named_parameters()}
    for name, p in ours.named_parameters():
        assert (p.grad - grads[name]).abs().max() <= ATOL, name
    for model in (ours, theirs):
        model.activation_checkpointing_disable()
    assert not ours.is_activation_checkpointing and not theirs.is_activation_checkpointing
    with pytest.raises(TypeError, match="every_n_layers_typo"):
        ours.activation_checkpointing_enable({"every_n_layers_typo": 2})


def test_init_weights_as_transformers(hf):
    ours, theirs = pair(hf)
    before = {k: v.clone() for k, v in ours.state_dict().items()}
    ours.init_weights()
    theirs.init_weights()  # transformers 5: modules already initialised are left alone
    assert all(torch.equal(v, before[k]) for k, v in ours.state_dict().items())
    # built on the meta device and materialised: init_weights draws the training init
    with torch.device("meta"):
        empty = GPTNeoXForCausalLM(GPTNeoXConfig(**tiny_kwargs()))
    empty.to_empty(device="cpu")
    empty.init_weights()
    ln = empty.gpt_neox.layers[0].input_layernorm
    assert torch.equal(ln.weight, torch.ones(32)) and torch.equal(ln.bias, torch.zeros(32))
    assert empty.embed_out.weight.std().item() == pytest.approx(0.02, rel=0.2)


def test_memory_footprint_and_model_tags(hf):
    ours, theirs = pair(hf)
    assert ours.get_memory_footprint(return_buffers=False) == theirs.get_memory_footprint(return_buffers=False)
    # transformers also keeps an `original_inv_freq` copy of the rotary frequencies (README: differences)
    extra = theirs.gpt_neox.rotary_emb.original_inv_freq
    assert theirs.get_memory_footprint() - ours.get_memory_footprint() == extra.nelement() * extra.element_size()
    for model in (ours, theirs):
        assert model.model_tags is None
        model.add_model_tags("trl")
        model.add_model_tags(["sft", "trl"])
    assert ours.model_tags == theirs.model_tags == ["trl", "sft"]
    assert GPTNeoXForCausalLM.model_tags is None  # per instance, not shared


def test_push_to_hub_offline_is_a_clear_error(hf, monkeypatch):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    ours, _ = pair(hf)
    with pytest.raises(RuntimeError, match="offline"):
        ours.push_to_hub("someone/tiny")


def test_push_to_hub_uploads_a_loadable_folder(hf, monkeypatch, tmp_path):
    """Online (here: a stand-in HfApi), the uploaded folder is what save_pretrained writes, plus a card with the tags."""
    import shutil

    import huggingface_hub

    calls = []

    class FakeApi:
        def __init__(self, token=None):
            calls.append(("token", token))

        def create_repo(self, repo_id, private=None, exist_ok=False):
            calls.append(("create", repo_id))

        def upload_folder(self, repo_id, folder_path, commit_message, revision, create_pr):
            shutil.copytree(folder_path, tmp_path / "uploaded")
            calls.append(("upload", repo_id, commit_message))
            return "commit-url"

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    ours, _ = pair(hf)
    ours.add_model_tags(["sft"])
    assert ours.push_to_hub("someone/tiny", commit_message="first") == "commit-url"
    assert ("create", "someone/tiny") in calls and ("upload", "someone/tiny", "first") in calls
    assert huggingface_hub.ModelCard.load(tmp_path / "uploaded" / "README.md").data.tags == ["sft"]
    loaded = GPTNeoXForCausalLM.from_pretrained(tmp_path / "uploaded")
    with torch.no_grad():
        assert (loaded(ids_for()).logits - ours(ids_for()).logits).abs().max() <= ATOL  # sdpa vs eager


@pytest.mark.parametrize("mean_resizing", [True, False])
@pytest.mark.parametrize("new, multiple", [(136, None), (130, 8), (100, None)])
def test_resize_token_embeddings_draws_what_transformers_draws(hf, mean_resizing, new, multiple):
    ours, theirs = pair(hf)
    torch.manual_seed(5)
    a = ours.resize_token_embeddings(new, pad_to_multiple_of=multiple, mean_resizing=mean_resizing)
    torch.manual_seed(5)
    b = theirs.resize_token_embeddings(new, pad_to_multiple_of=multiple, mean_resizing=mean_resizing)
    assert a.weight.shape == b.weight.shape and ours.config.vocab_size == theirs.config.vocab_size
    assert (a.weight - b.weight).abs().max() <= ATOL
    assert (ours.embed_out.weight - theirs.lm_head.weight).abs().max() <= ATOL


# ============================================================================== loading


def test_loading_info_and_mismatched_sizes_match_transformers(hf, save_hf_model):
    folder, _ = save_hf_model()
    for kwargs in ({}, {"vocab_size": 130, "ignore_mismatched_sizes": True}):
        _, a = GPTNeoXForCausalLM.from_pretrained(folder, output_loading_info=True, **kwargs)
        _, b = hf.GPTNeoXForCausalLM.from_pretrained(folder, output_loading_info=True, **kwargs)
        for key in ("missing_keys", "unexpected_keys", "mismatched_keys"):
            assert isinstance(a[key], set) and a[key] == renamed(b[key]), key
    _, a = GPTNeoXModel.from_pretrained(folder, output_loading_info=True)
    _, b = hf.GPTNeoXModel.from_pretrained(folder, output_loading_info=True)
    assert a["unexpected_keys"] == b["unexpected_keys"] == {"embed_out.weight"}
    with pytest.raises(ValueError, match="ignore_mismatched_sizes"):
        GPTNeoXForCausalLM.from_pretrained(folder, vocab_size=130)


def test_from_pretrained_none_with_config_and_state_dict(hf):
    ours, theirs = pair(hf)
    state = {k: v.clone() for k, v in theirs.state_dict().items()}
    del state["gpt_neox.final_layer_norm.bias"]
    state["foo.bar"] = torch.zeros(1)
    a, info_a = GPTNeoXForCausalLM.from_pretrained(None, config=copy.deepcopy(ours.config), state_dict=state,
                                                   output_loading_info=True)
    b, info_b = hf.GPTNeoXForCausalLM.from_pretrained(None, config=theirs.config, state_dict=state,
                                                      output_loading_info=True)
    assert info_a["missing_keys"] == renamed(info_b["missing_keys"]) == {"gpt_neox.final_layer_norm.bias"}
    assert info_a["unexpected_keys"] == info_b["unexpected_keys"] == {"foo.bar"}
    assert not a.training and not b.training
    with torch.no_grad():
        assert (a(ids_for()).logits - b(ids_for()).logits).abs().max() <= ATOL
    assert a.embed_out.weight.data_ptr() != state["lm_head.weight"].data_ptr()  # not sharing the caller's tensors
    with pytest.raises(ValueError, match="config= and state_dict="):
        GPTNeoXForCausalLM.from_pretrained(None, config=ours.config)
