"""Malformed files end in an error naming the file and the entry (issue 13, classes 1-4).

Each test breaks one thing in a checkpoint neox saved and asserts the load fails with a named
error (or, for a tensor duplicated in a second shard, loads the copy the index assigns). The
same header mutations go through both readers: the memory-mapped one (file dtype) and the
converting one (``dtype=float16``), which share :func:`neox.checkpoint.read_safetensors_header`.
"""

from __future__ import annotations

import json
import logging
import struct
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
from safetensors.torch import load_file, save_file

from neox import GPTNeoXConfig, GPTNeoXForCausalLM
from neox.checkpoint import CheckpointError, read_safetensors_header
from neox.files import JSONFileError, parse_json, read_json


def split_safetensors(path: Path) -> tuple[dict[str, Any], bytes]:
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + n]), data[8 + n :]


def write_safetensors(path: Path, header: dict[str, Any] | str, body: bytes) -> None:
    text = header if isinstance(header, str) else json.dumps(header)
    raw = text.encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + body)


def first_tensor(header: dict[str, Any]) -> str:
    return min((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"][0])


def _set(field: str, value: Any) -> Callable[[dict, str, bytes], tuple[dict, bytes]]:
    def mutate(header: dict, key: str, body: bytes) -> tuple[dict, bytes]:
        header[key][field] = value
        return header, body

    return mutate


def _drop(field: str) -> Callable[[dict, str, bytes], tuple[dict, bytes]]:
    def mutate(header: dict, key: str, body: bytes) -> tuple[dict, bytes]:
        del header[key][field]
        return header, body

    return mutate


def _overlap(header: dict, key: str, body: bytes) -> tuple[dict, bytes]:
    # Two tensors of the same dtype and shape pointing at the same bytes: the second one is
    # shifted onto the first, and the file shrinks by its size, so only the overlap is wrong.
    keys = sorted((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"][0])
    a, b = keys[0], keys[1]
    header[b]["data_offsets"] = list(header[a]["data_offsets"])
    header[b]["shape"], header[b]["dtype"] = header[a]["shape"], header[a]["dtype"]
    return header, body


def _hole(header: dict, key: str, body: bytes) -> tuple[dict, bytes]:
    for k, v in header.items():
        if k != "__metadata__":
            v["data_offsets"] = [v["data_offsets"][0] + 4, v["data_offsets"][1] + 4]
    return header, b"\0" * 4 + body


def _trailing(header: dict, key: str, body: bytes) -> tuple[dict, bytes]:
    return header, body + b"\0" * 16


def _past_end(header: dict, key: str, body: bytes) -> tuple[dict, bytes]:
    return header, body[:-4]


HEADER_CASES = {
    "unknown dtype": (_set("dtype", "F7"), "dtype"),
    "missing dtype": (_drop("dtype"), "dtype"),
    "dtype not a string": (_set("dtype", 3), "dtype"),
    "negative shape": (_set("shape", [-1, 32]), "shape"),
    "float shape": (_set("shape", [4.0, 32]), "shape"),
    "shape not a list": (_set("shape", "4x32"), "shape"),
    "missing offsets": (_drop("data_offsets"), "data_offsets"),
    "start after end": (_set("data_offsets", [512, 0]), "data_offsets"),
    "negative start": (_set("data_offsets", [-512, 0]), "data_offsets"),
    "bool offsets": (_set("data_offsets", [False, True]), "data_offsets"),
    "bytes != numel x itemsize": (_set("shape", [1]), "needs"),
    "entry not an object": (lambda h, k, b: ({**h, k: [1, 2]}, b), "header entry"),
    "overlap": (_overlap, "overlaps"),
    "hole": (_hole, "gap"),
    "bytes after the last tensor": (_trailing, "after its last tensor"),
    "file shorter than the header says": (_past_end, "truncated"),
}


@pytest.mark.parametrize("case", list(HEADER_CASES))
@pytest.mark.parametrize("dtype", [None, torch.float16], ids=["mapped", "converting"])
def test_corrupt_header_entry_names_file_and_problem(save_neox_model, case, dtype):
    folder, _ = save_neox_model()
    path = folder / "model.safetensors"
    header, body = split_safetensors(path)
    key = first_tensor(header)
    mutate, expected = HEADER_CASES[case]
    header, body = mutate(header, key, body)
    write_safetensors(path, header, body)
    with pytest.raises(CheckpointError, match="model.safetensors") as info:
        GPTNeoXForCausalLM.from_pretrained(folder, dtype=dtype)
    assert expected in str(info.value)


@pytest.mark.parametrize("dtype", [None, torch.float16], ids=["mapped", "converting"])
def test_duplicate_tensor_name_in_header(save_neox_model, dtype):
    folder, _ = save_neox_model()
    path = folder / "model.safetensors"
    header, body = split_safetensors(path)
    key = first_tensor(header)
    text = json.dumps(header)
    entry = json.dumps(header[key])
    # the duplicate comes first, so json.loads would silently keep the real (last) one
    text = "{" + json.dumps(key) + ": " + entry + ", " + text[1:]
    write_safetensors(path, text, body)
    with pytest.raises(CheckpointError, match=f"model.safetensors.*{key}.*twice"):
        GPTNeoXForCausalLM.from_pretrained(folder, dtype=dtype)


@pytest.mark.parametrize("header", ["[]", '"x"', '{"__metadata__": {"format": 3}}', "{" * 5000 + "}" * 5000,
                                    '{"a": ' + "9" * 5000 + "}"])
def test_header_that_is_not_a_tensor_table(tmp_path, header):
    path = tmp_path / "model.safetensors"
    write_safetensors(path, header, b"")
    with pytest.raises(CheckpointError, match="model.safetensors"):
        read_safetensors_header(path)


def test_valid_header_parses_as_safetensors_reads_it(save_neox_model):
    folder, model = save_neox_model()
    path = folder / "model.safetensors"
    parsed = read_safetensors_header(path)
    state = load_file(path)
    assert {k: (e.dtype, e.shape) for k, e in parsed.tensors.items()} == {
        k: (t.dtype, tuple(t.shape)) for k, t in state.items()
    }


# ================================================================================ the index


def test_each_tensor_comes_from_the_shard_the_index_names(save_neox_model, caplog):
    folder, model = save_neox_model(max_shard_size="20KB")
    index = json.loads((folder / "model.safetensors.index.json").read_text())["weight_map"]
    key = "gpt_neox.final_layer_norm.weight"
    home = index[key]
    other = next(s for s in sorted(set(index.values())) if s != home)
    # put a different copy of the tensor into another shard, after its own tensors
    state = load_file(folder / other)
    state[key] = torch.full_like(model.state_dict()[key], 123.0)
    save_file(state, str(folder / other), metadata={"format": "pt"})
    for dtype in (None, torch.float16):
        with caplog.at_level(logging.WARNING, logger="neox.checkpoint"):
            caplog.clear()
            loaded = GPTNeoXForCausalLM.from_pretrained(folder, dtype=dtype)
        assert torch.equal(loaded.state_dict()[key], model.state_dict()[key].to(loaded.dtype))
        assert key in caplog.text and other in caplog.text


def test_index_assigns_a_tensor_its_shard_lacks(save_neox_model):
    folder, _ = save_neox_model(max_shard_size="20KB")
    path = folder / "model.safetensors.index.json"
    index = json.loads(path.read_text())
    key = "gpt_neox.final_layer_norm.weight"
    home = index["weight_map"][key]
    index["weight_map"][key] = next(s for s in sorted(set(index["weight_map"].values())) if s != home)
    path.write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match=f"{key}.*does not hold it"):
        GPTNeoXForCausalLM.from_pretrained(folder)


# ================================================================================ JSON files

BAD_JSON = {
    "not UTF-8": b'{"vocab_size": "\xff\xfe"}',
    "nested absurdly deep": b'{"x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    "nested deep but under the recursion limit": b'{"x": ' + b"[" * 200 + b"]" * 200 + b"}",
    "a number with thousands of digits": b'{"vocab_size": ' + b"7" * 5000 + b"}",
    "not JSON": b"{ not json",
}


@pytest.mark.parametrize("case", list(BAD_JSON))
def test_json_reader_names_the_file(tmp_path, case):
    path = tmp_path / "some.json"
    path.write_bytes(BAD_JSON[case])
    with pytest.raises(JSONFileError, match="some.json"):
        read_json(path)


@pytest.mark.parametrize("case", list(BAD_JSON))
def test_bad_config_json_names_the_file(save_neox_model, case):
    folder, _ = save_neox_model()
    (folder / "config.json").write_bytes(BAD_JSON[case])
    with pytest.raises(ValueError, match="config.json"):
        GPTNeoXConfig.from_pretrained(folder)
    with pytest.raises(ValueError, match="config.json"):
        GPTNeoXForCausalLM.from_pretrained(folder)


@pytest.mark.parametrize("case", list(BAD_JSON))
def test_bad_index_json_names_the_file(save_neox_model, case):
    folder, _ = save_neox_model(max_shard_size="20KB")
    (folder / "model.safetensors.index.json").write_bytes(BAD_JSON[case])
    with pytest.raises(CheckpointError, match="model.safetensors.index.json"):
        GPTNeoXForCausalLM.from_pretrained(folder)


def test_parse_json_keeps_valid_files_as_json_does():
    text = '{"a": [1, 2.5, {"b": null}], "c": "\\u00e9", "d": true}'
    assert parse_json(text, "x") == json.loads(text)
    assert parse_json(text.encode(), "x") == json.loads(text)


# ================================================================================ config sizes


@pytest.mark.parametrize("field, value", [("num_hidden_layers", 1_000_000), ("hidden_size", 2**40),
                                          ("vocab_size", 10**12), ("intermediate_size", 2**40),
                                          ("num_attention_heads", 2**20), ("max_position_embeddings", 2**62)])
def test_absurd_size_is_refused_naming_the_field(save_neox_model, field, value):
    folder, _ = save_neox_model()
    config = json.loads((folder / "config.json").read_text())
    config[field] = value
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=f"config.json.*{field}.*larger than any real model"):
        GPTNeoXForCausalLM.from_pretrained(folder)


@pytest.mark.parametrize("overrides, field", [({"num_hidden_layers": 40}, "num_hidden_layers"),
                                              ({"hidden_size": 64, "intermediate_size": 64}, "hidden_size"),
                                              ({"vocab_size": 4000}, "vocab_size")])
def test_config_compared_with_the_weights_before_building(save_neox_model, monkeypatch, overrides, field):
    folder, _ = save_neox_model()
    config = json.loads((folder / "config.json").read_text())
    config.update(overrides)
    (folder / "config.json").write_text(json.dumps(config))
    built = []
    monkeypatch.setattr(GPTNeoXForCausalLM, "__init__", lambda *a, **k: built.append(1) or None)
    with pytest.raises(ValueError, match=field):
        GPTNeoXForCausalLM.from_pretrained(folder)
    assert not built


def test_fewer_layers_than_the_checkpoint_still_loads(save_neox_model):
    """As in transformers: the first layers load, the rest are reported unused."""
    folder, model = save_neox_model()
    loaded, info = GPTNeoXForCausalLM.from_pretrained(folder, num_hidden_layers=1, output_loading_info=True)
    assert len(loaded.gpt_neox.layers) == 1
    assert any(k.startswith("gpt_neox.layers.1.") for k in info["unexpected_keys"])


@pytest.mark.parametrize("model_type", ["llama", "gpt_neox_japanese", 3])
def test_other_model_type_is_refused(save_neox_model, model_type):
    folder, _ = save_neox_model()
    config = json.loads((folder / "config.json").read_text())
    config["model_type"] = model_type
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="config.json.*model_type"):
        GPTNeoXForCausalLM.from_pretrained(folder)
