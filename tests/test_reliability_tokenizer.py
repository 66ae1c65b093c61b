"""Malformed tokenizer files and bad tokenizer calls end in an error naming the file, field or
argument (issue 13, class 5). Each bad file is a copy of a valid one with one field broken; the
valid one is loaded first, so a check that refused valid input would fail here too."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import pytest
from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from neox import GPTNeoXTokenizerFast


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tok")
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>", "<|padding|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(["hello world, a tiny corpus"] * 10, trainer)
    tok.save(str(folder / "tokenizer.json"))
    GPTNeoXTokenizerFast.from_pretrained(folder).save_pretrained(folder)
    (folder / "special_tokens_map.json").write_text(json.dumps({"eos_token": "<|endoftext|>"}))
    return folder


@pytest.fixture(scope="module")
def tok(folder):
    return GPTNeoXTokenizerFast.from_pretrained(folder)


def _edit(name: str, change: Callable[[Any], Any]) -> Callable[[Path], None]:
    def apply(folder: Path) -> None:
        path = folder / name
        path.write_text(json.dumps(change(json.loads(path.read_text()))))

    return apply


def _set(data: dict, key: str, value: Any) -> dict:
    data[key] = value
    return data


def _without_config(folder: Path) -> None:
    # tokenizer_config.json carries added_tokens_decoder, which then wins over the legacy files
    cfg = json.loads((folder / "tokenizer_config.json").read_text())
    cfg.pop("added_tokens_decoder", None)
    (folder / "tokenizer_config.json").write_text(json.dumps(cfg))


FILE_CASES = {
    "added_tokens not a list": (_edit("tokenizer.json", lambda d: _set(d, "added_tokens", {"a": 1})), "tokenizer.json", "added_tokens"),
    "added token id a string": (_edit("tokenizer.json", lambda d: _set(d, "added_tokens", [{"id": "x", "content": "a"}])), "tokenizer.json", "added_tokens\\[0\\]"),
    "added token flag not bool": (_edit("tokenizer.json", lambda d: _set(d, "added_tokens", [{"id": 5, "content": "a", "lstrip": "yes"}])), "tokenizer.json", "lstrip"),
    "added token unknown field": (_edit("tokenizer.json", lambda d: _set(d, "added_tokens", [{"id": 5, "content": "a", "colour": True}])), "tokenizer.json", "colour"),
    "padding a list": (_edit("tokenizer.json", lambda d: _set(d, "padding", [1])), "tokenizer.json", "padding"),
    "truncation direction odd": (_edit("tokenizer.json", lambda d: _set(d, "truncation", {"direction": "Up"})), "tokenizer.json", "truncation.direction"),
    "vocab id negative": (_edit("tokenizer.json", lambda d: (d["model"]["vocab"].update({"zz": -3}), d)[1]), "tokenizer.json", "model.vocab"),
    "vocab list of nested lists": (_edit("tokenizer.json", lambda d: (d["model"].update(vocab=[[[[]]]]), d)[1]), "tokenizer.json", "model.vocab"),
    "merge not a pair": (_edit("tokenizer.json", lambda d: (d["model"]["merges"].append(["a", "b", "c"]), d)[1]), "tokenizer.json", "model.merges"),
    "special map a list": (_edit("special_tokens_map.json", lambda d: ["<|endoftext|>"]), "special_tokens_map.json", "JSON object"),
    "extra special tokens a string": (_edit("special_tokens_map.json", lambda d: _set(d, "additional_special_tokens", "<|endoftext|>")), "special_tokens_map.json", "list of tokens"),
    "special token a number": (_edit("special_tokens_map.json", lambda d: _set(d, "pad_token", 7)), "special_tokens_map.json", "pad_token"),
    "model_max_length a string": (_edit("tokenizer_config.json", lambda d: _set(d, "model_max_length", "2048")), "tokenizer_config.json", "model_max_length"),
    "model_max_length negative": (_edit("tokenizer_config.json", lambda d: _set(d, "model_max_length", -1)), "tokenizer_config.json", "model_max_length"),
    "model_input_names a string": (_edit("tokenizer_config.json", lambda d: _set(d, "model_input_names", "input_ids")), "tokenizer_config.json", "model_input_names"),
    "add_prefix_space a string": (_edit("tokenizer_config.json", lambda d: _set(d, "add_prefix_space", "false")), "tokenizer_config.json", "add_prefix_space"),
    "added_tokens_decoder key not an id": (_edit("tokenizer_config.json", lambda d: _set(d, "added_tokens_decoder", {"x": {"content": "a"}})), "tokenizer_config.json", "added_tokens_decoder"),
    "config not UTF-8": (lambda f: (f / "tokenizer_config.json").write_bytes(b'{"a": "\xff"}'), "tokenizer_config.json", "UTF-8"),
    "config nested deep": (lambda f: (f / "tokenizer_config.json").write_bytes(b"[" * 50000 + b"]" * 50000), "tokenizer_config.json", "nested"),
    "special map with a huge number": (lambda f: (f / "special_tokens_map.json").write_bytes(b'{"pad_token": ' + b"9" * 5000 + b"}"), "special_tokens_map.json", "digits"),
}


@pytest.mark.parametrize("case", list(FILE_CASES))
def test_bad_tokenizer_file_names_file_and_field(folder, tmp_path, case):
    copy = tmp_path / "copy"
    copy.mkdir()
    for path in folder.iterdir():
        (copy / path.name).write_bytes(path.read_bytes())
    GPTNeoXTokenizerFast.from_pretrained(copy)  # the valid copy loads
    if "special" in case:
        _without_config(copy)
    breaker, file_name, field = FILE_CASES[case]
    breaker(copy)
    with pytest.raises(ValueError, match=file_name) as info:
        GPTNeoXTokenizerFast.from_pretrained(copy)
    assert __import__("re").search(field, str(info.value)), str(info.value)


def test_string_extra_special_tokens_argument_is_refused(folder):
    with pytest.raises(ValueError, match="extra_special_tokens must be a list"):
        GPTNeoXTokenizerFast.from_pretrained(folder, additional_special_tokens="<|endoftext|>")


@pytest.mark.parametrize("ids, match", [([1.5], "integer token ids"), (["a"], "integer token ids"), ("abc", "integer"),
                                        ([-1], "holds -1"), ([2**40], "holds 1099511627776"),
                                        ([[1, 2], [3, -7]], "holds -7"), (10**30, "holds 1000")])
def test_decode_of_non_ids_names_the_argument(tok, ids, match):
    with pytest.raises(ValueError, match=f"token_ids .*{match}"):
        tok.decode(ids)
    with pytest.raises(ValueError, match=match):
        tok.convert_ids_to_tokens(ids)


def test_decode_past_the_vocabulary_is_empty_as_in_transformers(tok):
    assert tok.decode([len(tok) + 10]) == ""


@pytest.mark.parametrize("text, match", [("\ud800abc", "text holds the lone surrogate"),
                                         (["ok", "a\udcffb"], "text\\[1\\] holds the lone surrogate"),
                                         (["ok", 3], "text\\[1\\] is a int")])
def test_bad_text_names_the_element(tok, text, match):
    with pytest.raises(ValueError, match=match):
        tok(text)
