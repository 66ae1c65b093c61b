"""Checkpoint I/O: finding files (folder, Hub cache), reading every layout, saving atomically.

transformers 5.24 is the oracle for what a checkpoint means: what it saves, neox loads to the
same numbers, and what neox saves, transformers loads to the same numbers.

Where neox is deliberately stricter than transformers (each has a test below):

* shard names in an index must be plain file names inside the checkpoint folder (no ``..``, no
  absolute path, no sub-folder) and regular files (a FIFO would block the load forever);
* a truncated or corrupt file is an error naming the file, before any tensor is used;
* ``.bin`` files are read with ``torch.load(weights_only=True)`` only;
* a save removes weight files of the other layout (transformers leaves a stale
  model.safetensors beside new shards);
* a tensor whose shape disagrees with config.json is an error naming it and both shapes.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from neox import GPTNeoXForCausalLM, GPTNeoXModel
from neox.checkpoint import CheckpointError

from conftest import randomize_

ATOL = 1e-5


def ids_for(seq: int = 12, batch: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 128, (batch, seq), generator=torch.Generator().manual_seed(seed))


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    """Bitwise equal state dicts, transformers' lm_head.weight read as embed_out.weight."""
    sa = {k.replace("lm_head.", "embed_out."): v for k, v in a.state_dict().items()}
    sb = {k.replace("lm_head.", "embed_out."): v for k, v in b.state_dict().items()}
    assert sa.keys() == sb.keys()
    for key in sa:
        assert sa[key].dtype == sb[key].dtype, key
        assert torch.equal(sa[key], sb[key]), key


def same_logits(a: torch.nn.Module, b: torch.nn.Module, atol: float = ATOL) -> None:
    ids = ids_for()
    with torch.no_grad():
        x, y = a(ids).logits, b(ids).logits
    assert (x.double() - y.double()).abs().max().item() <= atol


def weight_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(("model", "pytorch_model")))


def write_state(folder: Path, state: dict[str, torch.Tensor], config_from: Path, name: str = "model.safetensors") -> Path:
    """A checkpoint folder with `state` as its weights and config_from's config.json."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_bytes((config_from / "config.json").read_bytes())
    if name.endswith(".safetensors"):
        save_file({k: v.contiguous() for k, v in state.items()}, str(folder / name), metadata={"format": "pt"})
    else:
        torch.save(state, folder / name)
    return folder


def run_with_timeout(fn, seconds: float = 30.0):
    """Run fn in a daemon thread; fail (instead of hanging the suite) if it does not return."""
    result: dict = {}

    def target():
        try:
            result["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - handed back to the test
            result["error"] = e

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    return thread.is_alive(), result


# ============================================================================== both directions


@pytest.mark.parametrize("overrides", [{}, {"tie_word_embeddings": True, "attention_bias": False},
                                       {"use_parallel_residual": False, "rotary_pct": 1.0}])
def test_transformers_saves_neox_loads(save_hf_model, overrides):
    folder, theirs = save_hf_model(**overrides)
    ours = GPTNeoXForCausalLM.from_pretrained(folder)
    same_weights(theirs, ours)
    same_logits(theirs, ours)


@pytest.mark.parametrize("overrides", [{}, {"tie_word_embeddings": True, "attention_bias": False},
                                       {"rope_scaling": {"type": "linear", "factor": 2.0}}])
def test_neox_saves_transformers_loads(hf, save_neox_model, overrides):
    folder, ours = save_neox_model(**overrides)
    assert weight_files(folder) == ["model.safetensors"]
    assert {"config.json", "generation_config.json"} <= set(os.listdir(folder))
    theirs = hf.GPTNeoXForCausalLM.from_pretrained(folder, attn_implementation="eager")
    same_weights(theirs, ours)
    same_logits(theirs, ours)
    hf.GenerationConfig.from_pretrained(folder)  # readable by transformers too


def test_neox_save_load_identity(save_neox_model):
    folder, ours = save_neox_model()
    again = GPTNeoXForCausalLM.from_pretrained(folder)
    same_weights(ours, again)
    assert again.config == ours.config


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_round_trip(hf, save_neox_model, dtype):
    folder, ours = save_neox_model(dtype=dtype)
    assert json.loads((folder / "config.json").read_text())["dtype"] == str(dtype).removeprefix("torch.")
    again = GPTNeoXForCausalLM.from_pretrained(folder)
    assert again.dtype == dtype
    same_weights(ours, again)
    theirs = hf.GPTNeoXForCausalLM.from_pretrained(folder)
    assert theirs.dtype == dtype
    same_weights(theirs, again)


# ============================================================================== sharded and legacy


def test_neox_sharded_save_loads_in_both(hf, save_neox_model):
    folder, ours = save_neox_model(max_shard_size="20KB")
    files = weight_files(folder)
    assert "model.safetensors.index.json" in files and "model.safetensors" not in files
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1 and set(shards) <= set(files)
    assert set(index["weight_map"]) == set(ours.state_dict())
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in ours.state_dict().values())
    same_weights(ours, GPTNeoXForCausalLM.from_pretrained(folder))
    theirs = hf.GPTNeoXForCausalLM.from_pretrained(folder)
    same_weights(ours, theirs)


def test_transformers_sharded_save(hf, tmp_path):
    from conftest import _hf_config

    theirs = randomize_(hf.GPTNeoXForCausalLM(_hf_config(hf))).eval()
    theirs.save_pretrained(tmp_path, max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.json").exists()
    ours = GPTNeoXForCausalLM.from_pretrained(tmp_path)
    same_weights(theirs, ours)


def old_buffers(config) -> dict[str, torch.Tensor]:
    """The buffers transformers-4-era .bin checkpoints carry (Pythia's pytorch_model.bin)."""
    n = config.max_position_embeddings
    out = {}
    for i in range(config.num_hidden_layers):
        p = f"gpt_neox.layers.{i}.attention."
        out[p + "bias"] = torch.tril(torch.ones(n, n, dtype=torch.bool))[None, None]
        out[p + "masked_bias"] = torch.tensor(-1e9)
        out[p + "rotary_emb.inv_freq"] = torch.ones(config.rotary_ndims // 2)
    return out


def test_legacy_bin_with_old_buffers_loads_silently(save_neox_model, tmp_path, caplog):
    folder, ours = save_neox_model()
    state = {**ours.state_dict(), **old_buffers(ours.config)}
    legacy = write_state(tmp_path / "legacy", state, folder, "pytorch_model.bin")
    with caplog.at_level(logging.WARNING, logger="neox"):
        loaded, info = GPTNeoXForCausalLM.from_pretrained(legacy, output_loading_info=True)
    assert info["missing_keys"] == set() and info["unexpected_keys"] == set()
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    same_weights(ours, loaded)


def test_legacy_sharded_bin(save_neox_model, tmp_path):
    folder, ours = save_neox_model()
    state = ours.state_dict()
    out = tmp_path / "legacy_sharded"
    out.mkdir()
    (out / "config.json").write_bytes((folder / "config.json").read_bytes())
    keys = list(state)
    halves = {"pytorch_model-00001-of-00002.bin": keys[: len(keys) // 2],
              "pytorch_model-00002-of-00002.bin": keys[len(keys) // 2 :]}
    for name, names in halves.items():
        torch.save({k: state[k] for k in names}, out / name)
    weight_map = {k: name for name, names in halves.items() for k in names}
    (out / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    same_weights(ours, GPTNeoXForCausalLM.from_pretrained(out))


def test_bin_is_never_unpickled(save_neox_model, tmp_path):
    """A .bin holding an arbitrary Python object is refused (weights_only=True), naming the file."""
    folder, ours = save_neox_model()
    state = dict(ours.state_dict())
    state["evil"] = Path("/")  # not a tensor: a full unpickle would build it
    bad = write_state(tmp_path / "evil", state, folder, "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="pytorch_model.bin"):
        GPTNeoXForCausalLM.from_pretrained(bad)


def test_safetensors_preferred_over_bin(save_neox_model, tmp_path, hf):
    """transformers' order: model.safetensors, its index, pytorch_model.bin, its index."""
    folder, ours = save_neox_model()
    other = randomize_(GPTNeoXForCausalLM(ours.config), seed=5)
    torch.save(other.state_dict(), folder / "pytorch_model.bin")
    same_weights(ours, GPTNeoXForCausalLM.from_pretrained(folder))
    same_weights(ours, hf.GPTNeoXForCausalLM.from_pretrained(folder))
    (folder / "model.safetensors").unlink()
    same_weights(other, GPTNeoXForCausalLM.from_pretrained(folder))


def test_lm_head_name_accepted_for_embed_out(save_neox_model, tmp_path):
    folder, ours = save_neox_model()
    state = {("lm_head.weight" if k == "embed_out.weight" else k): v for k, v in ours.state_dict().items()}
    renamed = write_state(tmp_path / "renamed", state, folder)
    loaded, info = GPTNeoXForCausalLM.from_pretrained(renamed, output_loading_info=True)
    assert info["missing_keys"] == set() and info["unexpected_keys"] == set()
    same_weights(ours, loaded)


def test_base_model_from_causal_checkpoint_and_back(hf, save_neox_model, tmp_path, caplog):
    folder, causal = save_neox_model()
    with caplog.at_level(logging.WARNING, logger="neox"):
        base, info = GPTNeoXModel.from_pretrained(folder, output_loading_info=True)
    # as transformers reports it: the head is left out (no warning: a base model has none)
    assert info["missing_keys"] == set() and info["unexpected_keys"] == {"embed_out.weight"}
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    for key, value in base.state_dict().items():
        assert torch.equal(value, causal.state_dict()["gpt_neox." + key]), key
    # the base model's own checkpoint has no prefix; transformers reads it too
    base.save_pretrained(tmp_path / "base")
    from safetensors import safe_open

    with safe_open(str(tmp_path / "base" / "model.safetensors"), "pt") as f:
        assert all(not k.startswith("gpt_neox.") for k in f.keys())
    theirs = hf.GPTNeoXModel.from_pretrained(tmp_path / "base")
    ids = ids_for()
    assert (theirs(ids).last_hidden_state - base(ids).last_hidden_state).abs().max() <= ATOL
    # and a causal LM loads the base checkpoint, its head newly initialised with a warning
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="neox"):
        lm, info = GPTNeoXForCausalLM.from_pretrained(tmp_path / "base", output_loading_info=True)
    assert info["missing_keys"] == {"embed_out.weight"}
    assert any("embed_out.weight" in r.getMessage() for r in caplog.records)
    assert torch.equal(lm.gpt_neox.embed_in.weight, base.embed_in.weight)
    assert lm.embed_out.weight.abs().sum() > 0 and not lm.embed_out.weight.is_meta


def test_base_model_from_transformers_causal_checkpoint(save_hf_model):
    folder, theirs = save_hf_model()
    base = GPTNeoXModel.from_pretrained(folder)
    ids = ids_for()
    with torch.no_grad():
        assert (theirs.gpt_neox(ids).last_hidden_state - base(ids).last_hidden_state).abs().max() <= ATOL


# ============================================================================== loading info


def test_missing_and_unexpected_keys(save_neox_model, tmp_path, caplog):
    folder, ours = save_neox_model()
    state = dict(ours.state_dict())
    del state["gpt_neox.layers.1.mlp.dense_h_to_4h.bias"]
    state["gpt_neox.layers.0.attention.extra_adapter.weight"] = torch.zeros(2, 2)
    edited = write_state(tmp_path / "edited", state, folder)
    with caplog.at_level(logging.WARNING, logger="neox"):
        loaded, info = GPTNeoXForCausalLM.from_pretrained(edited, output_loading_info=True)
    assert info["missing_keys"] == {"gpt_neox.layers.1.mlp.dense_h_to_4h.bias"}
    assert info["unexpected_keys"] == {"gpt_neox.layers.0.attention.extra_adapter.weight"}
    text = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert "gpt_neox.layers.1.mlp.dense_h_to_4h.bias" in text
    assert "gpt_neox.layers.0.attention.extra_adapter.weight" in text
    assert not any(p.is_meta for p in loaded.parameters())
    assert torch.equal(loaded.gpt_neox.layers[1].mlp.dense_h_to_4h.bias, torch.zeros(64))  # fresh init: zeros
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="neox"):
        GPTNeoXForCausalLM.from_pretrained(folder)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_shape_mismatch_names_tensor_and_shapes(save_neox_model):
    folder, _ = save_neox_model()
    config = json.loads((folder / "config.json").read_text())
    config["vocab_size"] = 130
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError) as err:
        GPTNeoXForCausalLM.from_pretrained(folder)
    message = str(err.value)
    assert "embed_in.weight" in message or "embed_out.weight" in message
    assert "(128, 32)" in message and "(130, 32)" in message


def test_loading_builds_on_meta_without_random_init(save_neox_model, monkeypatch):
    """Weights are assigned from the file: no parameter is ever randomly initialised."""
    folder, ours = save_neox_model()
    from neox.modeling import GPTNeoXPreTrainedModel

    def refuse(self, module):
        raise AssertionError(f"random init of {type(module).__name__} during from_pretrained")

    monkeypatch.setattr(GPTNeoXPreTrainedModel, "_init_weights", refuse)
    loaded = GPTNeoXForCausalLM.from_pretrained(folder)
    same_weights(ours, loaded)
    assert loaded.gpt_neox.rotary_emb.inv_freq.dtype == torch.float32
    assert not loaded.training


# ============================================================================== dtype and device


@pytest.mark.parametrize("dtype, expected", [
    (torch.float16, torch.float16), ("float16", torch.float16), ("torch.bfloat16", torch.bfloat16),
    ("bfloat16", torch.bfloat16), ("float32", torch.float32), ("auto", torch.bfloat16), (None, torch.bfloat16),
])
def test_dtype_argument(save_neox_model, dtype, expected):
    """"auto" and the default (transformers 5's default is "auto") keep the checkpoint's dtype."""
    folder, ours = save_neox_model(dtype=torch.bfloat16)
    loaded = GPTNeoXForCausalLM.from_pretrained(folder, dtype=dtype)
    assert loaded.dtype == expected
    assert all(p.dtype == expected for p in loaded.parameters())
    for key, value in ours.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value.to(expected)), key


@pytest.mark.parametrize("chunk_bytes", [70, 4096])
@pytest.mark.parametrize("file_dtype, dtype", [(torch.float32, torch.float16), (torch.bfloat16, torch.float32)])
def test_converting_reader_in_chunks(save_neox_model, monkeypatch, chunk_bytes, file_dtype, dtype):
    """A dtype change streams each tensor through a small staging buffer; chunk edges (70 bytes
    is not a multiple of every row) must not change a single value."""
    import neox.loading

    monkeypatch.setattr(neox.loading, "_CHUNK_BYTES", chunk_bytes)
    folder, ours = save_neox_model(dtype=file_dtype)
    loaded = GPTNeoXForCausalLM.from_pretrained(folder, dtype=dtype)
    for key, value in ours.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value.to(dtype)), key


def test_torch_dtype_old_name(save_neox_model):
    folder, _ = save_neox_model()
    assert GPTNeoXForCausalLM.from_pretrained(folder, torch_dtype=torch.float16).dtype == torch.float16
    with pytest.raises(ValueError, match="dtype"):
        GPTNeoXForCausalLM.from_pretrained(folder, dtype=torch.float16, torch_dtype=torch.bfloat16)


@pytest.mark.parametrize("dtype", ["int8", torch.int64, "float8", 3])
def test_bad_dtype(save_neox_model, dtype):
    folder, _ = save_neox_model()
    with pytest.raises(ValueError, match="dtype"):
        GPTNeoXForCausalLM.from_pretrained(folder, dtype=dtype)


def test_auto_dtype_without_dtype_in_config(save_neox_model):
    """An old config.json without torch_dtype: "auto" reads the dtype off the weights."""
    folder, _ = save_neox_model(dtype=torch.float16)
    config = json.loads((folder / "config.json").read_text())
    config.pop("dtype")
    config.pop("torch_dtype")
    (folder / "config.json").write_text(json.dumps(config))
    assert GPTNeoXForCausalLM.from_pretrained(folder, dtype="auto").dtype == torch.float16


@pytest.mark.parametrize("device_map", ["cpu", torch.device("cpu"), "auto", None])
def test_device_map_cpu(save_neox_model, device_map):
    folder, ours = save_neox_model()
    loaded = GPTNeoXForCausalLM.from_pretrained(folder, device_map=device_map)
    expected = "cuda" if device_map == "auto" and torch.cuda.is_available() else "cpu"
    assert loaded.device.type == expected
    assert GPTNeoXForCausalLM.from_pretrained(folder, device="cpu").device.type == "cpu"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised without CUDA")
@pytest.mark.parametrize("device", ["cuda", "cuda:0", torch.device("cuda", 1)])
def test_cuda_requested_without_cuda(save_neox_model, device):
    folder, _ = save_neox_model()
    with pytest.raises(ValueError, match="CUDA"):
        GPTNeoXForCausalLM.from_pretrained(folder, device_map=device)


def test_bad_device_arguments(save_neox_model):
    folder, _ = save_neox_model()
    with pytest.raises(ValueError, match="device"):
        GPTNeoXForCausalLM.from_pretrained(folder, device_map="tpu:7")
    with pytest.raises(ValueError, match="device_map"):
        GPTNeoXForCausalLM.from_pretrained(folder, device_map={"": "cpu", "gpt_neox.layers.1": "disk"})
    with pytest.raises(ValueError, match="device"):
        GPTNeoXForCausalLM.from_pretrained(folder, device_map="cpu", device="cpu")


def test_unknown_from_pretrained_argument(save_neox_model):
    folder, _ = save_neox_model()
    with pytest.raises(TypeError, match="not_an_option"):
        GPTNeoXForCausalLM.from_pretrained(folder, not_an_option=True)


def test_config_overrides_and_explicit_config(save_neox_model):
    folder, ours = save_neox_model()
    loaded = GPTNeoXForCausalLM.from_pretrained(folder, hidden_dropout=0.25, attn_implementation="eager")
    assert loaded.config.hidden_dropout == 0.25 and loaded.config.attn_implementation == "eager"
    config = ours.config.__class__.from_pretrained(folder)
    config.use_cache = False
    assert GPTNeoXForCausalLM.from_pretrained(folder, config=config).config.use_cache is False


# ============================================================================== saving


def test_save_writes_expected_files(save_neox_model):
    folder, ours = save_neox_model()
    assert sorted(os.listdir(folder)) == ["config.json", "generation_config.json", "model.safetensors"]
    config = json.loads((folder / "config.json").read_text())
    assert config["architectures"] == ["GPTNeoXForCausalLM"] and config["model_type"] == "gpt_neox"
    state = load_file(str(folder / "model.safetensors"))
    assert set(state) == set(ours.state_dict())


def test_tied_save_stores_the_embedding_once(save_neox_model, hf):
    folder, ours = save_neox_model(tie_word_embeddings=True)
    state = load_file(str(folder / "model.safetensors"))
    assert "embed_out.weight" not in state and "gpt_neox.embed_in.weight" in state
    loaded = GPTNeoXForCausalLM.from_pretrained(folder)
    assert loaded.embed_out.weight is loaded.gpt_neox.embed_in.weight
    same_weights(ours, loaded)


@pytest.mark.parametrize("shards", ["5GB", "20KB"])
def test_edit_loaded_model_and_save_into_its_own_folder(save_neox_model, shards):
    """A loaded model's weights may be views of the memory-mapped file: editing them in place must
    not touch the file, and saving back into the same folder must not corrupt what is read."""
    folder, original = save_neox_model(max_shard_size=shards)
    model = GPTNeoXForCausalLM.from_pretrained(folder)
    with torch.no_grad():
        model.embed_out.weight.add_(1.0)
    same_weights(original, GPTNeoXForCausalLM.from_pretrained(folder))  # the file is unchanged
    model.save_pretrained(folder, max_shard_size=shards)
    again = GPTNeoXForCausalLM.from_pretrained(folder)
    same_weights(model, again)
    assert torch.equal(again.embed_out.weight, original.embed_out.weight + 1.0)


def test_failed_save_leaves_previous_checkpoint(save_neox_model, monkeypatch):
    """A save that fails on its 2nd shard leaves the previous checkpoint loadable, unchanged."""
    folder, old = save_neox_model(max_shard_size="20KB")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    import safetensors.torch

    real = safetensors.torch.save_file
    calls = []

    def failing(tensors, filename, metadata=None):
        calls.append(filename)
        if len(calls) == 2:
            raise OSError("disk full (simulated)")
        return real(tensors, filename, metadata=metadata)

    monkeypatch.setattr(safetensors.torch, "save_file", failing)
    new = randomize_(GPTNeoXForCausalLM(old.config), seed=9)
    with pytest.raises(OSError, match="disk full"):
        new.save_pretrained(folder, max_shard_size="20KB")
    assert len(calls) == 2
    after = {p.name: p.read_bytes() for p in folder.iterdir()}
    assert after == before  # byte for byte, and no temporary files left behind
    same_weights(old, GPTNeoXForCausalLM.from_pretrained(folder))

    # the same failure replacing a single-file checkpoint by a sharded one
    single = folder.parent / "single"
    old.save_pretrained(single)
    before = {p.name: p.read_bytes() for p in single.iterdir()}
    calls.clear()
    with pytest.raises(OSError, match="disk full"):
        new.save_pretrained(single, max_shard_size="20KB")
    assert {p.name: p.read_bytes() for p in single.iterdir()} == before
    same_weights(old, GPTNeoXForCausalLM.from_pretrained(single))


@pytest.mark.parametrize("first, second", [("5GB", "20KB"), ("20KB", "5GB"), ("20KB", "30KB")])
def test_save_removes_stale_weight_files(save_neox_model, first, second, hf):
    folder, old = save_neox_model(max_shard_size=first)
    torch.save(old.state_dict(), folder / "pytorch_model.bin")
    (folder / "notes.txt").write_text("not a weight file")
    new = randomize_(GPTNeoXForCausalLM(old.config), seed=4)
    new.save_pretrained(folder, max_shard_size=second)
    files = weight_files(folder)
    assert "pytorch_model.bin" not in files
    if second == "5GB":
        assert files == ["model.safetensors"]
    else:
        index = json.loads((folder / "model.safetensors.index.json").read_text())
        assert sorted(set(index["weight_map"].values()) | {"model.safetensors.index.json"}) == files
    assert (folder / "notes.txt").exists()
    same_weights(new, GPTNeoXForCausalLM.from_pretrained(folder))
    same_weights(new, hf.GPTNeoXForCausalLM.from_pretrained(folder))


def test_save_refuses_unsafe_serialization(save_neox_model, tmp_path):
    _, model = save_neox_model()
    with pytest.raises(ValueError, match="safe"):
        model.save_pretrained(tmp_path / "x", safe_serialization=False)
    model.save_pretrained(tmp_path / "y", is_main_process=False)
    assert not (tmp_path / "y").exists()


@pytest.mark.parametrize("size", ["0", "-5MB", "lots", 0])
def test_bad_max_shard_size(save_neox_model, tmp_path, size):
    _, model = save_neox_model()
    with pytest.raises(ValueError, match="max_shard_size"):
        model.save_pretrained(tmp_path / "x", max_shard_size=size)


def test_save_into_a_file_path(save_neox_model, tmp_path):
    _, model = save_neox_model()
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="not a folder"):
        model.save_pretrained(tmp_path / "file")


# ============================================================================== hardening


def write_index(folder: Path, shard_name: str, model) -> None:
    keys = list(model.state_dict())
    (folder / "model.safetensors").unlink(missing_ok=True)
    weight_map = {k: "model-00001-of-00002.safetensors" for k in keys[:-3]}
    weight_map.update({k: shard_name for k in keys[-3:]})
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))


@pytest.mark.parametrize("shard_name", ["../outside.safetensors", "/tmp/outside.safetensors",
                                        "sub/model-00002-of-00002.safetensors", "..", ""])
def test_index_shard_names_must_stay_inside_the_folder(save_neox_model, tmp_path, shard_name):
    folder, model = save_neox_model(max_shard_size="20KB")
    # make the outside target exist, so only the name check can stop it
    state = model.state_dict()
    (tmp_path / "outside.safetensors").write_bytes((folder / "model-00002-of-00006.safetensors").read_bytes())
    (folder / "sub").mkdir()
    write_index(folder, shard_name, model)
    with pytest.raises(CheckpointError, match="model.safetensors.index.json"):
        GPTNeoXForCausalLM.from_pretrained(folder)
    del state


def test_fifo_shard_fails_fast(save_neox_model):
    folder, model = save_neox_model(max_shard_size="20KB")
    fifo = folder / "model-00006-of-00006.safetensors"
    fifo.unlink()
    os.mkfifo(fifo)
    hung, result = run_with_timeout(lambda: GPTNeoXForCausalLM.from_pretrained(folder))
    if hung:  # unblock the reader so the thread can end, then fail
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        os.close(fd)
        pytest.fail("loading an index that names a FIFO hung")
    assert isinstance(result.get("error"), CheckpointError), result
    assert "model-00006-of-00006.safetensors" in str(result["error"])
    assert "regular file" in str(result["error"])


@pytest.mark.parametrize("name", ["model.safetensors", "config.json"])
def test_fifo_in_place_of_a_checkpoint_file_fails_fast(save_neox_model, name):
    folder, _ = save_neox_model()
    (folder / name).unlink()
    os.mkfifo(folder / name)
    hung, result = run_with_timeout(lambda: GPTNeoXForCausalLM.from_pretrained(folder))
    if hung:
        fd = os.open(folder / name, os.O_WRONLY | os.O_NONBLOCK)
        os.close(fd)
        pytest.fail(f"loading with a FIFO as {name} hung")
    error = result.get("error")
    assert isinstance(error, (OSError, ValueError)) and name in str(error), result


def test_missing_shard_names_the_file(save_neox_model):
    folder, _ = save_neox_model(max_shard_size="20KB")
    (folder / "model-00003-of-00006.safetensors").unlink()
    with pytest.raises(CheckpointError, match="model-00003-of-00006.safetensors"):
        GPTNeoXForCausalLM.from_pretrained(folder)


@pytest.mark.parametrize("keep", [4, 100, -1000], ids=["header-cut", "inside-header", "inside-data"])
def test_truncated_safetensors_names_the_file(save_neox_model, keep):
    folder, _ = save_neox_model()
    path = folder / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[:keep])
    with pytest.raises(CheckpointError, match="model.safetensors"):
        GPTNeoXForCausalLM.from_pretrained(folder)
    with pytest.raises(CheckpointError, match="model.safetensors"):
        GPTNeoXForCausalLM.from_pretrained(folder, dtype=torch.float16)  # the converting reader too


def test_truncated_shard_names_the_file(save_neox_model):
    folder, _ = save_neox_model(max_shard_size="20KB")
    path = folder / "model-00002-of-00006.safetensors"
    path.write_bytes(path.read_bytes()[:-200])
    with pytest.raises(CheckpointError, match="model-00002-of-00006.safetensors"):
        GPTNeoXForCausalLM.from_pretrained(folder)


def test_corrupt_safetensors_header_names_the_file(save_neox_model):
    folder, _ = save_neox_model()
    path = folder / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[8:20] = b"not json {{{"
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="model.safetensors"):
        GPTNeoXForCausalLM.from_pretrained(folder)


def test_truncated_bin_names_the_file(save_neox_model, tmp_path):
    folder, model = save_neox_model()
    legacy = write_state(tmp_path / "legacy", model.state_dict(), folder, "pytorch_model.bin")
    path = legacy / "pytorch_model.bin"
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(CheckpointError, match="pytorch_model.bin"):
        GPTNeoXForCausalLM.from_pretrained(legacy)


@pytest.mark.parametrize("text", ['{"weight_map": ', "[]", '{"weight_map": {"a": 3}}'])
def test_invalid_index_names_the_file(save_neox_model, text):
    folder, _ = save_neox_model(max_shard_size="20KB")
    (folder / "model.safetensors.index.json").write_text(text)
    with pytest.raises(CheckpointError, match="model.safetensors.index.json"):
        GPTNeoXForCausalLM.from_pretrained(folder)


def test_invalid_config_json_names_the_file(save_neox_model):
    folder, _ = save_neox_model()
    (folder / "config.json").write_text("{ not json")
    with pytest.raises(ValueError, match="config.json"):
        GPTNeoXForCausalLM.from_pretrained(folder)


def test_no_weights_in_folder(save_neox_model):
    folder, _ = save_neox_model()
    (folder / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no weights"):
        GPTNeoXForCausalLM.from_pretrained(folder)


# ============================================================================== Hub resolution


def test_repo_id_from_hub_cache_offline(save_neox_model, hub_cache, hf):
    folder, ours = save_neox_model()
    cache = hub_cache(folder, "org/tiny-neox")
    loaded = GPTNeoXForCausalLM.from_pretrained("org/tiny-neox", cache_dir=cache)
    same_weights(ours, loaded)
    assert loaded.name_or_path == "org/tiny-neox"
    # the same cache serves transformers: one cache for both libraries
    theirs = hf.GPTNeoXForCausalLM.from_pretrained("org/tiny-neox", cache_dir=cache, local_files_only=True)
    same_weights(ours, theirs)


def test_sharded_repo_from_hub_cache(save_neox_model, hub_cache):
    folder, ours = save_neox_model(max_shard_size="20KB")
    cache = hub_cache(folder, "org/sharded")
    same_weights(ours, GPTNeoXForCausalLM.from_pretrained("org/sharded", cache_dir=cache))


def test_revision_and_subfolder(save_neox_model, hub_cache, tmp_path):
    folder_a, model_a = save_neox_model("a", seed=1)
    folder_b, model_b = save_neox_model("b", seed=2)
    nested = tmp_path / "nested"
    (nested / "sub").mkdir(parents=True)
    for p in folder_b.iterdir():
        (nested / "sub" / p.name).write_bytes(p.read_bytes())
    cache = hub_cache(folder_a, "org/multi", revision="main", commit="a" * 40)
    hub_cache(nested, "org/multi", revision="v2", commit="b" * 40)
    same_weights(model_a, GPTNeoXForCausalLM.from_pretrained("org/multi", cache_dir=cache))
    same_weights(model_a, GPTNeoXForCausalLM.from_pretrained("org/multi", cache_dir=cache, revision="a" * 40))
    same_weights(model_b, GPTNeoXForCausalLM.from_pretrained("org/multi", cache_dir=cache, revision="v2",
                                                              subfolder="sub"))
    same_weights(model_b, GPTNeoXForCausalLM.from_pretrained("org/multi", cache_dir=cache, revision="b" * 40,
                                                              subfolder="sub", token="hf_unused"))


def test_local_folder_subfolder(save_neox_model, tmp_path):
    folder, ours = save_neox_model()
    nested = tmp_path / "outer"
    (nested / "inner").mkdir(parents=True)
    for p in folder.iterdir():
        (nested / "inner" / p.name).write_bytes(p.read_bytes())
    same_weights(ours, GPTNeoXForCausalLM.from_pretrained(nested, subfolder="inner"))


def test_default_hf_cache_is_shared(save_neox_model, tmp_path, monkeypatch):
    """Without cache_dir, neox looks where huggingface_hub (and so transformers) keeps its cache."""
    import huggingface_hub.constants

    from conftest import build_hub_cache

    folder, ours = save_neox_model()
    cache = tmp_path / "default-cache"
    build_hub_cache(cache, folder, "org/default")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    same_weights(ours, GPTNeoXForCausalLM.from_pretrained("org/default"))


def test_local_files_only_without_offline_env(save_neox_model, tmp_path, monkeypatch):
    from conftest import build_hub_cache

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    folder, ours = save_neox_model()
    build_hub_cache(tmp_path / "c", folder, "org/lfo")
    same_weights(ours, GPTNeoXForCausalLM.from_pretrained("org/lfo", cache_dir=tmp_path / "c", local_files_only=True))


def test_offline_repo_not_in_cache(hub_cache, save_neox_model):
    folder, _ = save_neox_model()
    cache = hub_cache(folder, "org/present")
    hung, result = run_with_timeout(lambda: GPTNeoXForCausalLM.from_pretrained("org/absent", cache_dir=cache), 60)
    assert not hung, "offline resolution tried the network"
    error = result.get("error")
    assert isinstance(error, OSError) and "org/absent" in str(error), result
    assert "offline" in str(error).lower()


def test_not_a_folder_nor_a_repo_id(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OSError, match="neither"):
        GPTNeoXForCausalLM.from_pretrained(str(tmp_path / "no" / "such" / "folder" / "here"))
