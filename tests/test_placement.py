"""device_map placement (neox.placement): one model over CPU, disk and CUDA devices.

The oracle is the same checkpoint on one device (fp32: logits bitwise equal, since every module
computes the same ops on the same values) and transformers 5.24 placing its own model with the
same map through accelerate (logits within 1e-5; its device maps for ``max_memory`` match ours).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from neox import GPTNeoXForCausalLM, GPTNeoXModel
from neox.placement import infer_device_map

L = 4  # layers: enough for alternating placements

MAPS = {
    "all disk": {"": "disk"},
    "alternating layers": {"gpt_neox.embed_in": "cpu", "gpt_neox.layers.0": "disk", "gpt_neox.layers.1": "cpu",
                           "gpt_neox.layers.2": "disk", "gpt_neox.layers.3": "cpu",
                           "gpt_neox.final_layer_norm": "disk", "embed_out": "cpu"},
    "head on disk": {"gpt_neox": "cpu", "embed_out": "disk"},
    "embed on disk": {"gpt_neox.embed_in": "disk", "gpt_neox.layers": "cpu", "gpt_neox.final_layer_norm": "cpu",
                      "gpt_neox.rotary_emb": "cpu", "lm_head": "cpu"},  # lm_head: transformers 5's name of the head
}


@pytest.fixture
def checkpoint(save_neox_model) -> tuple[Path, GPTNeoXForCausalLM]:
    folder, _ = save_neox_model(num_hidden_layers=L)
    return folder, GPTNeoXForCausalLM.from_pretrained(folder)


def _inputs(batch: int = 2, length: int = 7) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(0, 128, (batch, length), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0  # left padding in the second row
    return ids, mask


def _tensor_devices(device_map: dict, names: list[str]) -> dict[str, str]:
    """Every tensor name → the device of its longest matching prefix (lm_head read as embed_out)."""
    device_map = {("embed_out" + k[7:] if k.startswith("lm_head") else k): str(v) for k, v in device_map.items()}
    out = {}
    for name in names:
        parts = name.split(".")
        for i in range(len(parts), -1, -1):
            if ".".join(parts[:i]) in device_map:
                out[name] = device_map[".".join(parts[:i])]
                break
    return out


@pytest.mark.parametrize("case", list(MAPS))
def test_cpu_disk_split_gives_one_device_logits_and_tokens(checkpoint, case):
    folder, reference = checkpoint
    model = GPTNeoXForCausalLM.from_pretrained(folder, device_map=MAPS[case])
    ids, mask = _inputs()
    assert torch.equal(model(ids, attention_mask=mask).logits, reference(ids, attention_mask=mask).logits)
    # KV cache path: prompt, then one more token.
    out = model(ids, attention_mask=mask, use_cache=True)
    ref = reference(ids, attention_mask=mask, use_cache=True)
    step = torch.tensor([[5], [9]])
    mask2 = torch.cat([mask, torch.ones(2, 1, dtype=mask.dtype)], 1)
    assert torch.equal(model(step, attention_mask=mask2, past_key_values=out.past_key_values).logits,
                       reference(step, attention_mask=mask2, past_key_values=ref.past_key_values).logits)
    kwargs = dict(attention_mask=mask, max_new_tokens=8, do_sample=False, pad_token_id=0)
    assert torch.equal(model.generate(ids, **kwargs), reference.generate(ids, **kwargs))
    # The rotary frequencies (a non-persistent buffer, built on the meta device) are the same.
    assert torch.equal(model.gpt_neox.rotary_emb.inv_freq, reference.gpt_neox.rotary_emb.inv_freq)
    assert "disk" in model.hf_device_map.values()


@pytest.mark.parametrize("device_map", [
    {"": "disk"},
    {"gpt_neox.embed_in": "disk", "gpt_neox.layers": "cpu", "gpt_neox.final_layer_norm": "cpu", "embed_out": "cpu"},
    {"gpt_neox": "cpu", "embed_out": "disk"},
])
def test_sharded_checkpoint_with_tied_head(save_neox_model, device_map):
    folder, _ = save_neox_model(num_hidden_layers=L, tie_word_embeddings=True, max_shard_size=20_000)
    assert len(list(folder.glob("model-*.safetensors"))) > 1
    reference = GPTNeoXForCausalLM.from_pretrained(folder)
    model = GPTNeoXForCausalLM.from_pretrained(folder, device_map=device_map)
    assert model.embed_out.weight is model.gpt_neox.embed_in.weight
    ids, mask = _inputs()
    assert torch.equal(model(ids, attention_mask=mask).logits, reference(ids, attention_mask=mask).logits)


def test_remove_placement_detaches_the_hooks(checkpoint):
    from neox.placement import remove_placement

    folder, reference = checkpoint
    model = GPTNeoXForCausalLM.from_pretrained(folder, device_map={"": "disk"})
    assert model.gpt_neox.layers[0]._forward_hooks
    remove_placement(model)
    assert not model.gpt_neox.layers[0]._forward_hooks and not hasattr(model, "hf_device_map")
    ids, _ = _inputs()
    assert torch.equal(model(ids).logits, reference(ids).logits)  # still views of the file


def test_save_pretrained_from_a_disk_placed_model(checkpoint, tmp_path):
    folder, reference = checkpoint
    model = GPTNeoXForCausalLM.from_pretrained(folder, device_map={"gpt_neox": "disk", "embed_out": "cpu"})
    model.save_pretrained(tmp_path / "resaved")
    back = GPTNeoXForCausalLM.from_pretrained(tmp_path / "resaved")
    for key, value in reference.state_dict().items():
        assert torch.equal(back.state_dict()[key], value), key


def test_disk_weights_are_mapped_and_their_pages_dropped(save_neox_model):
    # An embedding big enough that the mapping's resident size says something (4 x 256 KiB).
    folder, _ = save_neox_model(num_hidden_layers=2, vocab_size=2048, hidden_size=32)
    model = GPTNeoXForCausalLM.from_pretrained(folder, device_map={"": "disk"})
    weight = folder / "model.safetensors"
    assert model.embed_out.weight.device.type == "cpu"  # a view of the file, not the meta device
    model(torch.randint(0, 2048, (1, 16)))
    smaps = Path("/proc/self/smaps")
    if not smaps.exists():
        pytest.skip("no /proc/self/smaps: cannot read the mapping's resident size")
    rss_kb, inside = 0, False
    for line in smaps.read_text().splitlines():
        if line[:1].isalnum() and "-" in line.split()[0]:  # a mapping's header line
            inside = line.endswith(str(weight))
        elif inside and line.startswith("Rss:"):
            rss_kb += int(line.split()[1])
    size_kb = weight.stat().st_size // 1024
    assert rss_kb < size_kb // 4, f"{rss_kb} kB of the {size_kb} kB checkpoint stay resident after a forward"


def test_same_logits_as_transformers_with_the_same_device_map(hf, save_hf_model, tmp_path):
    folder, _ = save_hf_model(num_hidden_layers=L)
    device_map = {"gpt_neox.embed_in": "disk", "gpt_neox.layers.0": "cpu", "gpt_neox.layers.1": "disk",
                  "gpt_neox.layers.2": "cpu", "gpt_neox.layers.3": "disk", "gpt_neox.final_layer_norm": "cpu",
                  "gpt_neox.rotary_emb": "cpu", "lm_head": "disk"}
    theirs = hf.GPTNeoXForCausalLM.from_pretrained(folder, device_map=device_map, offload_folder=tmp_path / "hf-off")
    ours = GPTNeoXForCausalLM.from_pretrained(folder, device_map=device_map)
    ids, mask = _inputs()
    with torch.no_grad():
        expected = theirs(ids, attention_mask=mask).logits
    keep = mask.bool()  # padding positions' logits are unspecified (each library fills them its own way)
    torch.testing.assert_close(ours(ids, attention_mask=mask).logits[keep], expected[keep], rtol=0, atol=1e-5)
    names = [n for n, _ in ours.named_parameters()]
    assert _tensor_devices(ours.hf_device_map, names) == _tensor_devices(theirs.hf_device_map, names)


@pytest.mark.parametrize("cpu_bytes", [40_000, 60_000, 120_000])
def test_max_memory_split_matches_transformers_map(hf, hf_config, checkpoint, cpu_bytes):
    from transformers.integrations.accelerate import _get_device_map

    folder, reference = checkpoint
    with torch.device("meta"):
        theirs = hf.GPTNeoXForCausalLM(hf_config(num_hidden_layers=L))
    expected = _get_device_map(theirs, "auto", {"cpu": cpu_bytes}, None)
    model = GPTNeoXForCausalLM.from_pretrained(folder, device_map="auto", max_memory={"cpu": cpu_bytes})
    names = [n for n, _ in model.named_parameters()]
    assert _tensor_devices(model.hf_device_map, names) == _tensor_devices(expected, names)
    assert set(model.hf_device_map.values()) <= {"cpu", "disk"}
    ids, _ = _inputs()
    assert torch.equal(model(ids).logits, reference(ids).logits)


@pytest.mark.parametrize("strategy", ["auto", "balanced_low_0", "sequential"])
@pytest.mark.parametrize("max_memory", [{0: 100_000, 1: 100_000, "cpu": 100_000}, {0: 60_000, 1: 200_000, "cpu": 50_000},
                                        {0: 300_000, 1: 300_000}])
def test_gpu_maps_match_transformers(hf, hf_config, tiny_config, monkeypatch, strategy, max_memory):
    """The planning over two GPUs, CPU and disk (no GPU needed: only sizes are compared)."""
    from transformers.integrations.accelerate import _get_device_map

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with torch.device("meta"):
        theirs = hf.GPTNeoXForCausalLM(hf_config(num_hidden_layers=6))
        ours = GPTNeoXForCausalLM(tiny_config(num_hidden_layers=6))
    expected = _get_device_map(theirs, strategy, dict(max_memory), None)
    got = infer_device_map(ours, dict(max_memory), strategy=strategy)
    names = [n for n, _ in ours.named_parameters()]
    assert _tensor_devices(got, names) == _tensor_devices(expected, names)


def test_max_memory_string_sizes_and_sequential(checkpoint):
    folder, reference = checkpoint
    with torch.device("meta"):
        meta = GPTNeoXForCausalLM(reference.config)
    assert infer_device_map(meta, {"cpu": "60KB"}, strategy="sequential") == infer_device_map(meta, {"cpu": 60_000})
    assert infer_device_map(meta, {"cpu": "1GiB"}) == {"": "cpu"}
    model = GPTNeoXForCausalLM.from_pretrained(folder, device_map="auto")  # all fits in RAM: one device, no hooks
    assert model.hf_device_map == {"": "cpu"}
    assert not model.embed_out._forward_pre_hooks


def test_disk_with_dtype_conversion_or_bin_needs_offload_folder(checkpoint, tmp_path):
    folder, reference = checkpoint
    ids, _ = _inputs()
    with pytest.raises(ValueError, match="offload_folder"):
        GPTNeoXForCausalLM.from_pretrained(folder, device_map={"": "disk"}, dtype=torch.float16)
    half = GPTNeoXForCausalLM.from_pretrained(folder, device_map={"": "disk"}, dtype=torch.bfloat16,
                                              offload_folder=tmp_path / "off")
    assert any((tmp_path / "off").glob("*.safetensors"))
    one = GPTNeoXForCausalLM.from_pretrained(folder, dtype=torch.bfloat16)
    assert torch.equal(half(ids).logits, one(ids).logits)

    bin_folder = tmp_path / "bin"
    bin_folder.mkdir()
    (bin_folder / "config.json").write_text((folder / "config.json").read_text())
    torch.save(reference.state_dict(), bin_folder / "pytorch_model.bin")
    with pytest.raises(ValueError, match="offload_folder"):
        GPTNeoXForCausalLM.from_pretrained(bin_folder, device_map={"": "disk"})
    from_bin = GPTNeoXForCausalLM.from_pretrained(bin_folder, device_map={"gpt_neox": "disk", "embed_out": "cpu"},
                                                  offload_folder=tmp_path / "off-bin")
    assert torch.equal(from_bin(ids).logits, reference(ids).logits)


def test_state_dict_onto_disk_needs_offload_folder(checkpoint, tmp_path):
    folder, reference = checkpoint
    state = reference.state_dict()
    with pytest.raises(ValueError, match="offload_folder"):
        GPTNeoXForCausalLM.from_pretrained(None, config=reference.config, state_dict=state, device_map={"": "disk"})
    model = GPTNeoXForCausalLM.from_pretrained(None, config=reference.config, state_dict=state,
                                               device_map={"gpt_neox": "disk", "embed_out": "cpu"},
                                               offload_folder=tmp_path / "off")
    ids, _ = _inputs()
    assert torch.equal(model(ids).logits, reference(ids).logits)


def test_base_model_placement(save_neox_model):
    folder, _ = save_neox_model(base=True, num_hidden_layers=L)
    reference = GPTNeoXModel.from_pretrained(folder)
    model = GPTNeoXModel.from_pretrained(folder, device_map={"embed_in": "disk", "layers": "disk",
                                                             "final_layer_norm": "cpu", "rotary_emb": "cpu"})
    ids, mask = _inputs()
    assert torch.equal(model(ids, attention_mask=mask).last_hidden_state,
                       reference(ids, attention_mask=mask).last_hidden_state)


@pytest.mark.parametrize("device_map, message", [
    ({"": "cpu", "gpt_neox.not_a_module": "disk"}, "gpt_neox.not_a_module"),
    ({"gpt_neox.embed_in": "cpu", "gpt_neox.layers": "cpu", "embed_out": "cpu"}, "gpt_neox.final_layer_norm"),
    ({"": "cpu", "gpt_neox.layers.1.mlp": "disk"}, "gpt_neox.layers.1"),
    ({"": "cpu", "gpt_neox.layers.2": "tpu"}, "tpu"),
    ({"": "cpu", "embed_out": "meta"}, "meta"),
    ({"": "cpu", "embed_out": -1}, "-1"),
])
def test_bad_maps_raise_naming_the_module_or_device(checkpoint, device_map, message):
    folder, _ = checkpoint
    with pytest.raises(ValueError, match=message.replace(".", r"\.")):
        GPTNeoXForCausalLM.from_pretrained(folder, device_map=device_map)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised without CUDA")
def test_cuda_index_without_cuda_raises(checkpoint):
    folder, _ = checkpoint
    with pytest.raises(ValueError, match="CUDA is not available"):
        GPTNeoXForCausalLM.from_pretrained(folder, device_map={"": "cpu", "embed_out": 0})
    with pytest.raises(ValueError, match="max_memory"):
        GPTNeoXForCausalLM.from_pretrained(folder, device_map="auto", max_memory={"cpu": "1GB", "tpu": 5})


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_cpu_disk_split_gives_one_device_logits_and_tokens(checkpoint):
    folder, reference = checkpoint
    last = torch.cuda.device_count() - 1
    device_map = {"gpt_neox.embed_in": 0, "gpt_neox.layers.0": "cpu", "gpt_neox.layers.1": "disk",
                  "gpt_neox.layers.2": last, "gpt_neox.layers.3": 0, "gpt_neox.final_layer_norm": last,
                  "gpt_neox.rotary_emb": 0, "embed_out": "disk"}
    model = GPTNeoXForCausalLM.from_pretrained(folder, device_map=device_map)
    assert model.gpt_neox.layers[2].mlp.dense_h_to_4h.weight.device == torch.device("cuda", last)
    ids, mask = _inputs()
    logits = model(ids.cuda(), attention_mask=mask.cuda()).logits
    assert logits.device == torch.device("cuda", 0)  # outputs come back on the inputs' device
    torch.testing.assert_close(logits.cpu(), reference(ids, attention_mask=mask).logits, rtol=0, atol=1e-5)
    kwargs = dict(attention_mask=mask, max_new_tokens=8, do_sample=False, pad_token_id=0)
    assert torch.equal(model.generate(ids, **kwargs).cpu(), reference.generate(ids, **kwargs))
