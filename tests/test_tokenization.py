"""GPTNeoXTokenizerFast against transformers 5.24's, on the real GPT-NeoX-20B tokenizer.

The real file is EleutherAI's release ``20B_tokenizer.json`` (id 1 is ``<|unk|>``); the Hub copy has
``<|padding|>`` at id 1. Both variants are tested: the second is built in a temp dir. Tests that
need no real vocabulary use a small byte-level BPE trained with ``tokenizers`` in a temp dir.
"""

from __future__ import annotations

import json
import logging
import pickle
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

from neox import BatchEncoding, GPTNeoXTokenizerFast

REAL_TOKENIZER = Path(__file__).resolve().parents[2] / "shared/data/gpt-neox-20b/tokenizer.json"
needs_real = pytest.mark.skipif(
    not REAL_TOKENIZER.is_file(), reason=f"the real GPT-NeoX-20B tokenizer is not at {REAL_TOKENIZER}"
)

# --------------------------------------------------------------------------------------------
# The corpus
# --------------------------------------------------------------------------------------------

PYTHON_CODE = '''import os


class Tree:
    """A binary tree."""

    def __init__(self, left=None, right=None):
        self.left = left
        self.right = right

    def depth(self) -> int:
        if self.left is None and self.right is None:
            return 1
        return 1 + max(
            self.left.depth() if self.left else 0,
            self.right.depth() if self.right else 0,
        )
'''
C_CODE = "int main(void) {\n\tfor (int i = 0; i < 10; i++) {\n\t\tprintf(\"%d\\n\", i);\n\t}\n\treturn 0;\n}\n"
MIXED_INDENT = "def f():\n \t  x = 1\t# tab\n\t\t\ty = 2   \n                                z = 3\r\n"

CORPUS: list[str] = [
    "The quick brown fox jumps over the lazy dog.",
    "Hello world",
    " Hello world",
    "I'm here, aren't you? It's 5 o'clock -- they've said \"we're late\"!",
    "Numbers: 3.14159, 1,000,000 and 2024-01-31T12:00:00Z; URL https://example.com/a?b=c&d=e",
    PYTHON_CODE,
    C_CODE,
    MIXED_INDENT,
    *[f"a{' ' * n}b" for n in range(2, 31)],
    " " * 30,
    " " * 47 + "x",
    "\n\n\n" + " " * 8 + "indented after blank lines\n",
    "trailing spaces   ",
    "日本語のテキストと中文，还有한국어.",
    "Emoji: 👍🏽 👨‍👩‍👧 🙂🙃 🇫🇷",
    "Combining marks: e\u0301 A\u030a n\u0303 (NFC composes them)",
    "Ligatures stay: ﬁ ﬂ ﬃ ﬀ; full-width ＡＢＣ; superscript x²",
    "RTL: مرحبا بالعالم שלום עולם",
    "Zero width\u200bspace, nbsp\u00a0here, soft\u00adhyphen, bom\ufeff.",
    "Control \x00\x07\x1b[31m characters",
    "<|endoftext|>",
    "a<|endoftext|>b",
    "The end.<|endoftext|>The beginning.",
    "<|padding|> and <|unk|> inside text",
    " <|endoftext|> <|endoftext|><|endoftext|>",
    "",
    " ",
    "\n",
    "\t",
]
LONG_TEXT = "\n".join(CORPUS) * 12  # ~25k characters, ~7k tokens

BATCH = ["Hello world", "", "def f(x):\n    return x", "🙂 naïve café", "a" + " " * 20 + "b", "x<|endoftext|>y"]


# --------------------------------------------------------------------------------------------
# Fixtures
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hf_module():
    return pytest.importorskip("transformers", reason="transformers (the reference oracle) is not installed")


def _hub_variant(folder: Path) -> Path:
    """The Hub's gpt-neox-20b tokenizer.json: the release file with id 1 renamed <|padding|>."""
    data = json.loads(REAL_TOKENIZER.read_text(encoding="utf-8"))
    vocab = data["model"]["vocab"]
    assert vocab.pop("<|unk|>") == 1
    vocab["<|padding|>"] = 1
    for token in data["added_tokens"]:
        if token["id"] == 1:
            token["content"] = "<|padding|>"
    folder.mkdir(parents=True)
    (folder / "tokenizer.json").write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def variant_dirs(tmp_path_factory) -> dict[str, Path]:
    if not REAL_TOKENIZER.is_file():
        pytest.skip(f"the real GPT-NeoX-20B tokenizer is not at {REAL_TOKENIZER}")
    release = tmp_path_factory.mktemp("release")
    shutil.copyfile(REAL_TOKENIZER, release / "tokenizer.json")
    return {"release": release, "hub": _hub_variant(tmp_path_factory.mktemp("hubvariant") / "tok")}


@pytest.fixture(scope="module", params=["release", "hub"])
def variant(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def loaded(variant_dirs, hf_module) -> dict[str, tuple[Any, Any]]:
    """Per variant: (neox tokenizer, transformers tokenizer), loaded once, never mutated."""
    return {
        name: (
            GPTNeoXTokenizerFast.from_pretrained(folder),
            hf_module.GPTNeoXTokenizerFast.from_pretrained(folder),
        )
        for name, folder in variant_dirs.items()
    }


@pytest.fixture
def pair(loaded, variant) -> tuple[Any, Any]:
    return loaded[variant]


@pytest.fixture
def fresh(variant_dirs, variant, hf_module):
    """Factory: a fresh (neox, transformers) pair, to mutate, loaded with the same kwargs."""

    def make(**kwargs: Any) -> tuple[Any, Any]:
        folder = variant_dirs[variant]
        return (
            GPTNeoXTokenizerFast.from_pretrained(folder, **kwargs),
            hf_module.GPTNeoXTokenizerFast.from_pretrained(folder, **kwargs),
        )

    return make


def _train_small_tokenizer(folder: Path, *, vocab_size: int = 320, pad: bool = True) -> Path:
    """A GPT-NeoX-shaped byte-level BPE (NFC, byte-level, ``<|endoftext|>`` id 0) saved in folder."""
    corpus = [
        "Hello world, this is a tiny corpus for a tiny tokenizer.",
        "def f(x):\n    return x * 2\n\tpass\n",
        "naïve café ﬁ 你好 🙂 the the the and and",
    ] * 20
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=True)
    specials = ["<|endoftext|>", "<|padding|>"] if pad else ["<|endoftext|>"]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer)
    tok.add_tokens([AddedToken("    ", normalized=True), AddedToken("  ", normalized=True)])
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    return folder


@pytest.fixture
def small_dir(tmp_path) -> Path:
    return _train_small_tokenizer(tmp_path / "small")


def _plain(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return ("pt", str(value.dtype), tuple(value.shape), value.tolist())
    if isinstance(value, np.ndarray):
        return ("np", str(value.dtype), value.shape, value.tolist())
    return value


def assert_same_call(ours: Any, theirs: Any, *args: Any, **kwargs: Any) -> None:
    """Both tokenizers called with the same arguments give the same encoding."""
    assert_same_encoding(ours(*args, **kwargs), theirs(*args, **kwargs))


def assert_same_encoding(ours: Any, theirs: Any) -> None:
    """Same keys, same values, same container kinds (list / tensor / array, dtypes and shapes)."""
    assert isinstance(ours, BatchEncoding)
    assert list(ours.keys()) == list(theirs.keys())
    for key in theirs.keys():
        assert _plain(ours[key]) == _plain(theirs[key]), key


# --------------------------------------------------------------------------------------------
# Vocabulary and special tokens
# --------------------------------------------------------------------------------------------


@needs_real
def test_special_tokens_resolve_as_transformers(pair, variant):
    ours, theirs = pair
    for name in GPTNeoXTokenizerFast.SPECIAL_TOKENS_ATTRIBUTES:
        assert getattr(ours, name) == getattr(theirs, name), name
        assert getattr(ours, name + "_id") == getattr(theirs, name + "_id"), name
    assert ours.special_tokens_map == theirs.special_tokens_map
    assert ours.all_special_tokens == theirs.all_special_tokens
    assert ours.all_special_ids == theirs.all_special_ids
    assert ours.bos_token == ours.eos_token == ours.unk_token == "<|endoftext|>"
    assert ours.pad_token == "<|padding|>"
    # the release file lacks <|padding|>: it becomes a new id, as transformers adds it
    expected_pad_id, expected_len = (50277, 50278) if variant == "release" else (1, 50277)
    assert (ours.pad_token_id, len(ours)) == (expected_pad_id, expected_len)
    assert len(ours) == len(theirs) and ours.vocab_size == theirs.vocab_size == 50254
    assert ours.get_vocab() == theirs.get_vocab()
    assert ours.added_tokens_decoder == theirs.added_tokens_decoder
    assert ours.added_tokens_encoder == theirs.added_tokens_encoder
    assert ours.model_max_length == theirs.model_max_length
    assert ours.model_input_names == theirs.model_input_names == ["input_ids", "attention_mask"]
    assert (ours.padding_side, ours.truncation_side) == (theirs.padding_side, theirs.truncation_side)
    assert ours.clean_up_tokenization_spaces == theirs.clean_up_tokenization_spaces is False
    assert not ours.add_bos_token and not ours.add_eos_token
    # the whitespace-run tokens for code
    for n in range(2, 25):
        assert ours.convert_tokens_to_ids(" " * n) == 50278 - n


@needs_real
def test_convert_between_tokens_and_ids(pair):
    ours, theirs = pair
    tokens = ["Hello", "Ġworld", "<|endoftext|>", "<|padding|>", "<|unk|>", "not-a-token-at-all", "  "]
    assert ours.convert_tokens_to_ids(tokens) == theirs.convert_tokens_to_ids(tokens)
    assert ours.convert_tokens_to_ids("Ġworld") == theirs.convert_tokens_to_ids("Ġworld") == 1533
    ids = [0, 1, 12092, 1533, 50276, 50277, 50000]
    assert ours.convert_ids_to_tokens(ids) == theirs.convert_ids_to_tokens(ids)
    assert ours.convert_ids_to_tokens(ids, skip_special_tokens=True) == theirs.convert_ids_to_tokens(
        ids, skip_special_tokens=True
    )
    assert ours.convert_ids_to_tokens(torch.tensor(ids)) == theirs.convert_ids_to_tokens(ids)
    assert ours.convert_ids_to_tokens(np.int64(12092)) == "Hello"
    assert ours.convert_ids_to_tokens(12092) == theirs.convert_ids_to_tokens(12092)
    assert ours.convert_tokens_to_string(["Hello", "Ġworld"]) == theirs.convert_tokens_to_string(["Hello", "Ġworld"])


# --------------------------------------------------------------------------------------------
# Encoding
# --------------------------------------------------------------------------------------------


@needs_real
@pytest.mark.parametrize("index", range(len(CORPUS)))
def test_corpus_matches_transformers(pair, index):
    ours, theirs = pair
    text = CORPUS[index]
    for kwargs in ({}, {"return_offsets_mapping": True, "return_special_tokens_mask": True}):
        assert_same_call(ours, theirs, text, **kwargs)
    assert ours.tokenize(text) == theirs.tokenize(text)
    assert ours.encode(text) == theirs.encode(text)
    assert ours(text).tokens() == theirs(text).tokens()
    assert ours(text).word_ids() == theirs(text).word_ids()
    ids = theirs(text)["input_ids"]
    assert ours.decode(ids) == theirs.decode(ids)
    assert ours.decode(ids, skip_special_tokens=True) == theirs.decode(ids, skip_special_tokens=True)


@needs_real
def test_runs_of_spaces_use_the_code_tokens(pair):
    ours, _ = pair
    for n in range(2, 25):  # one whitespace token per run of 2-24 spaces: ids 50276 down to 50254
        assert ours(f"x{' ' * n}y")["input_ids"] == [89, 50278 - n, 90], n
    assert ours("x" + " " * 30 + "y")["input_ids"] == [89, 50254, 50272, 90]
    assert ours.tokenize("\tif x:\n        y") == theirs_tokens_of_indented_code()
    assert ours.decode(ours(MIXED_INDENT)["input_ids"]) == MIXED_INDENT


def theirs_tokens_of_indented_code() -> list[str]:
    return ["ĉ", "if", "Ġx", ":", "Ċ", "        ", "y"]


@needs_real
def test_long_input(pair):
    ours, theirs = pair
    assert_same_call(ours, theirs, LONG_TEXT)
    ids = ours(LONG_TEXT)["input_ids"]
    assert len(ids) > 5_000
    composed = LONG_TEXT.replace("e\u0301", "é").replace("A\u030a", "Å").replace("n\u0303", "ñ")  # NFC
    assert ours.decode(ids) == theirs.decode(ids) == composed


def _random_texts(n: int, seed: int = 0) -> list[str]:
    """Strings drawn from pieces that stress byte-level BPE: runs of spaces, tabs, newlines, marks."""
    import random

    rng = random.Random(seed)
    pieces = [
        " ", "  ", "    ", "\t", "\n", "\r\n", "\u00a0", "\u3000", "a", "the", "The", "ing", "'s", "'ll", "123",
        "4.5", "def", "(", ")", "{", "}", "==", "->", "#", "é", "e\u0301", "ﬁ", "Ａ", "日本", "語", "🙂", "👨‍👩‍👧",
        "\u0301", "\u200d", "<|endoftext|>", "<|padding|>", "<|", "|>", "endoftext", "\x00", "\ufffd", "\U0001f600",
    ]
    return ["".join(rng.choice(pieces) for _ in range(rng.randint(0, 40))) for _ in range(n)]


@needs_real
def test_random_texts_match_transformers(pair):
    ours, theirs = pair
    texts = _random_texts(300)
    kw = dict(return_offsets_mapping=True, return_special_tokens_mask=True)
    assert_same_call(ours, theirs, texts, **kw)
    ids = theirs(texts)["input_ids"]
    assert ours.batch_decode(ids) == theirs.batch_decode(ids)
    assert ours.batch_decode(ids, skip_special_tokens=True) == theirs.batch_decode(ids, skip_special_tokens=True)
    assert [ours.tokenize(t) for t in texts] == [theirs.tokenize(t) for t in texts]


CALL_KWARGS = [
    {},
    {"padding": True},
    {"padding": "longest", "return_tensors": "pt"},
    {"padding": True, "padding_side": "left", "return_tensors": "pt"},
    {"padding": "max_length", "max_length": 40, "return_tensors": "np"},
    {"padding": "max_length", "max_length": 8, "truncation": True, "padding_side": "left"},
    {"padding": True, "pad_to_multiple_of": 8, "return_tensors": "pt"},
    {"padding": False, "truncation": True, "max_length": 5},
    {"max_length": 3},
    {"padding": True, "return_offsets_mapping": True, "return_tensors": "pt"},
    {"padding": True, "return_special_tokens_mask": True, "return_length": True},
    {"padding": True, "return_attention_mask": False, "return_tensors": "pt"},
    {"padding": True, "return_token_type_ids": True},
    {"truncation": True, "max_length": 4, "stride": 1, "return_overflowing_tokens": True, "padding": True},
    {"add_special_tokens": False, "padding": True, "return_tensors": "pt"},
    {"split_special_tokens": True, "padding": True},
]


@needs_real
@pytest.mark.parametrize("kwargs", CALL_KWARGS, ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()) or "plain")
def test_batch_options_match_transformers(pair, kwargs):
    ours, theirs = pair
    assert_same_call(ours, theirs, BATCH, **kwargs)
    assert_same_call(ours, theirs, BATCH[2], **kwargs)


@needs_real
@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"padding": True, "return_tensors": "pt"},
        {"truncation": "only_second", "max_length": 12, "padding": "max_length"},
        {"truncation": "only_first", "max_length": 12},
        {"truncation": "longest_first", "max_length": 7, "return_token_type_ids": True},
    ],
)
def test_pairs_match_transformers(pair, kwargs):
    ours, theirs = pair
    first = ["What is the answer?", "Short", "def g():\n        pass"]
    second = ["It is forty-two, of course.", "An answer that is much longer than the question", "🙂"]
    assert_same_call(ours, theirs, first, second, **kwargs)
    as_pairs = list(zip(first, second))
    assert_same_call(ours, theirs, as_pairs, **kwargs)
    assert_same_call(ours, theirs, first[0], second[0], **kwargs)
    assert ours(first[0], second[0]).sequence_ids() == theirs(first[0], second[0]).sequence_ids()
    assert ours.tokenize(first[0], second[0]) == theirs.tokenize(first[0], second[0])
    with pytest.raises(ValueError, match="only_first.*max_length=3.*too short"):
        ours(first, second, truncation="only_first", max_length=3)


@needs_real
def test_truncation_side_left_and_model_max_length(fresh):
    ours, theirs = fresh(model_max_length=64, truncation_side="left")
    for tok in (ours, theirs):
        assert tok.model_max_length == 64 and tok.truncation_side == "left"
    assert_same_call(ours, theirs, LONG_TEXT, truncation=True)
    assert len(ours(LONG_TEXT, truncation=True)["input_ids"]) == 64
    assert_same_encoding(
        ours(BATCH, padding="max_length", truncation=True, return_tensors="pt"),
        theirs(BATCH, padding="max_length", truncation=True, return_tensors="pt"),
    )
    ours.truncation_side = theirs.truncation_side = "right"
    assert_same_call(ours, theirs, LONG_TEXT, max_length=10)


@needs_real
def test_text_target_gives_labels(pair):
    ours, theirs = pair
    kwargs = dict(text_target=["a label", "another, longer label"], padding=True, return_tensors="pt")
    assert_same_call(ours, theirs, ["in one", "in two"], **kwargs)
    assert_same_call(ours, theirs, text_target="only target")


@needs_real
def test_add_bos_and_eos_tokens(fresh):
    ours, theirs = fresh(add_bos_token=True, add_eos_token=True)
    assert ours.add_bos_token and ours.add_eos_token
    for args in ((BATCH,), (BATCH[:3], BATCH[3:]), ("single",)):
        kw = dict(padding=True, return_special_tokens_mask=True, return_offsets_mapping=True)
        assert_same_call(ours, theirs, *args, **kw)
    assert ours(["x"], add_special_tokens=False)["input_ids"] == theirs(["x"], add_special_tokens=False)["input_ids"]
    assert ours.num_special_tokens_to_add() == theirs.num_special_tokens_to_add() == 2
    assert ours.num_special_tokens_to_add(pair=True) == theirs.num_special_tokens_to_add(pair=True) == 4
    assert ours.build_inputs_with_special_tokens([5, 6]) == [0, 5, 6, 0]
    assert ours.get_special_tokens_mask([5, 6], [7]) == [1, 0, 0, 1, 1, 0, 1]
    assert ours.get_special_tokens_mask([0, 5, 0], already_has_special_tokens=True) == [1, 0, 1]
    # switching off at run time, as in transformers
    ours.add_bos_token = theirs.add_bos_token = False
    assert ours("hi")["input_ids"] == theirs("hi")["input_ids"] == [5801, 0]
    ours.add_eos_token = False
    assert ours("hi")["input_ids"] == [5801]


@needs_real
@pytest.mark.parametrize("add_prefix_space", [False, True])
def test_add_prefix_space_and_pretokenized_input(fresh, add_prefix_space):
    ours, theirs = fresh(add_prefix_space=add_prefix_space)
    assert ours.add_prefix_space == add_prefix_space
    words = [["Hello", "world", "!"], ["naïve", "  spaced", "日本"], []]
    kw = dict(is_split_into_words=True, padding=True, return_offsets_mapping=True)
    assert_same_call(ours, theirs, words, **kw)
    assert_same_call(ours, theirs, words[0], is_split_into_words=True)
    assert ours(words[0], is_split_into_words=True).word_ids() == theirs(words[0], is_split_into_words=True).word_ids()
    for text in CORPUS[:8]:
        assert_same_call(ours, theirs, text)
    if add_prefix_space:
        assert ours("Hello")["input_ids"] == ours(" Hello")["input_ids"]


@needs_real
def test_split_special_tokens_setting(fresh):
    ours, theirs = fresh(split_special_tokens=True)
    text = "a<|endoftext|>b<|padding|>"
    assert_same_call(ours, theirs, text)
    assert 0 not in ours(text)["input_ids"]
    assert ours(text, split_special_tokens=False)["input_ids"] == theirs(text, split_special_tokens=False)["input_ids"]


# --------------------------------------------------------------------------------------------
# Special-token editing
# --------------------------------------------------------------------------------------------


@needs_real
def test_pad_token_eos_idiom(fresh):
    ours, theirs = fresh()
    ours.pad_token = ours.eos_token
    theirs.pad_token = theirs.eos_token
    assert ours.pad_token_id == theirs.pad_token_id == 0
    assert ours.special_tokens_map == theirs.special_tokens_map
    assert ours.all_special_ids == theirs.all_special_ids
    kw = dict(padding=True, return_tensors="pt")
    assert_same_call(ours, theirs, BATCH, **kw)
    assert_same_call(ours, theirs, BATCH, padding_side="left", **kw)
    ids = ours(BATCH, **kw)["input_ids"]
    assert ours.batch_decode(ids, skip_special_tokens=True) == theirs.batch_decode(ids, skip_special_tokens=True)
    # the id setter, and None
    ours.pad_token_id = theirs.pad_token_id = 50276
    assert ours.pad_token == theirs.pad_token == "  "
    ours.pad_token = None
    assert ours.pad_token is None and ours.pad_token_id is None
    with pytest.raises(ValueError, match="pad_token = tokenizer.eos_token"):
        ours(BATCH, padding=True)


@needs_real
def test_add_special_tokens_and_add_tokens(fresh):
    ours, theirs = fresh()
    for tok in (ours, theirs):
        assert tok.add_special_tokens({"pad_token": "[PAD]", "extra_special_tokens": ["<tool>", "</tool>"]}) == 3
        assert tok.add_tokens(["foo_bar", AddedToken("<x>", lstrip=True)]) == 2
        assert tok.add_tokens("foo_bar") == 0
        assert tok.add_special_tokens({"bos_token": "<|endoftext|>"}) == 0
    assert len(ours) == len(theirs)
    assert ours.pad_token_id == theirs.pad_token_id == len(ours) - 5
    assert ours.extra_special_tokens == theirs.extra_special_tokens == ["<tool>", "</tool>"]
    assert ours.additional_special_tokens == ours.extra_special_tokens
    assert ours.all_special_tokens == theirs.all_special_tokens
    assert ours.added_tokens_decoder == theirs.added_tokens_decoder
    assert ours.get_vocab() == theirs.get_vocab()
    text = "call <tool>foo_bar <x>  </tool> done"
    assert_same_call(ours, theirs, text, return_offsets_mapping=True)
    ids = ours(text)["input_ids"]
    for skip in (False, True):
        assert ours.decode(ids, skip_special_tokens=skip) == theirs.decode(ids, skip_special_tokens=skip)
    with pytest.raises(ValueError, match="not a special-token key"):
        ours.add_special_tokens({"padding_token": "x"})


@needs_real
def test_setting_an_unknown_special_token_warns(fresh, caplog):
    ours, theirs = fresh()
    with caplog.at_level(logging.WARNING, logger="neox.tokenization"):
        ours.pad_token = "[NOT-IN-VOCAB]"
    assert "not in the vocabulary" in caplog.text
    theirs.pad_token = "[NOT-IN-VOCAB]"
    assert ours.pad_token_id == theirs.pad_token_id == 0  # the unk id, as transformers


# --------------------------------------------------------------------------------------------
# Decoding and pad()
# --------------------------------------------------------------------------------------------


@needs_real
def test_decode_and_batch_decode(pair):
    ours, theirs = pair
    batch = theirs(BATCH, padding=True)["input_ids"]
    for skip in (False, True):
        for clean in (None, False, True):
            kw = dict(skip_special_tokens=skip, clean_up_tokenization_spaces=clean)
            expected = theirs.batch_decode(batch, **kw)
            assert ours.batch_decode(batch, **kw) == expected
            assert ours.batch_decode(torch.tensor(batch), **kw) == expected
            assert ours.batch_decode(np.array(batch), **kw) == expected
            assert ours.decode(batch, **kw) == expected  # decode takes batches too
            assert ours.decode(torch.tensor(batch[0]), **kw) == theirs.decode(batch[0], **kw)
    assert ours.decode(12092) == theirs.decode(12092) == "Hello"
    assert ours.decode(torch.tensor(12092)) == "Hello"
    assert ours.decode([]) == theirs.decode([]) == ""
    assert ours.batch_decode([]) == theirs.batch_decode([]) == []
    assert ours.batch_decode([12092, 1533]) == theirs.batch_decode([12092, 1533]) == ["Hello world"]
    assert ours.decode({"input_ids": [12092]}) == "Hello"
    # invalid UTF-8 pieces decode to U+FFFD, as transformers
    emoji = ours("🙂")["input_ids"]
    assert ours.decode(emoji[:1]) == theirs.decode(emoji[:1])
    text = "Hello , world . I 'm here !"
    assert ours.decode(ours(text)["input_ids"], clean_up_tokenization_spaces=True) == text


@needs_real
def test_forced_clean_up_matches_transformers(fresh):
    kw = dict(
        clean_up_tokenization_spaces=True,
        clean_up_tokenization_spaces_for_bpe_even_though_it_will_corrupt_output=True,
    )
    ours, theirs = fresh(**kw)
    ids = theirs("Hello , world . I 'm here ! they 're")["input_ids"]
    assert ours.decode(ids) == theirs.decode(ids) == "Hello, world. I'm here! they're"
    kept = dict(clean_up_tokenization_spaces=False)
    assert ours.decode(ids, **kept) == theirs.decode(ids, **kept)


@needs_real
@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"padding_side": "left"},
        {"padding": "max_length", "max_length": 20},
        {"pad_to_multiple_of": 8, "return_tensors": "pt"},
        {"return_tensors": "np"},
        {"return_attention_mask": False},
        {"padding": False},
    ],
)
def test_pad_matches_transformers(pair, kwargs):
    ours, theirs = pair
    examples = [dict(theirs(text).data) for text in BATCH]
    assert_same_encoding(ours.pad(examples, **kwargs), theirs.pad(examples, **kwargs))
    columns = {key: [e[key] for e in examples] for key in examples[0]}
    assert_same_encoding(ours.pad(columns, **kwargs), theirs.pad(columns, **kwargs))
    assert_same_encoding(ours.pad(dict(examples[0]), **kwargs), theirs.pad(dict(examples[0]), **kwargs))


@needs_real
def test_pad_keeps_tensor_kind(pair):
    ours, theirs = pair
    examples = [{"input_ids": torch.tensor(theirs(t)["input_ids"])} for t in BATCH if t]
    assert_same_encoding(ours.pad(examples), theirs.pad(examples))
    examples = [{"input_ids": np.array(theirs(t)["input_ids"])} for t in BATCH if t]
    assert_same_encoding(ours.pad(examples), theirs.pad(examples))
    with pytest.raises(ValueError, match="needs 'input_ids'"):
        ours.pad([{"attention_mask": [1]}])


# --------------------------------------------------------------------------------------------
# Saving and loading
# --------------------------------------------------------------------------------------------


@needs_real
def test_save_pretrained_writes_what_transformers_writes(variant_dirs, variant, hf_module, tmp_path):
    ours = GPTNeoXTokenizerFast.from_pretrained(variant_dirs[variant])
    theirs = hf_module.GPTNeoXTokenizerFast.from_pretrained(variant_dirs[variant])
    files = ours.save_pretrained(tmp_path / "ours")
    assert [Path(f).name for f in files] == ["tokenizer_config.json", "tokenizer.json"]
    theirs.save_pretrained(tmp_path / "theirs")
    for name in ("tokenizer_config.json", "tokenizer.json"):
        assert (tmp_path / "ours" / name).read_bytes() == (tmp_path / "theirs" / name).read_bytes(), name
    assert sorted(p.name for p in (tmp_path / "ours").iterdir()) == ["tokenizer.json", "tokenizer_config.json"]
    assert sorted(p.name for p in (tmp_path / "theirs").iterdir()) == ["tokenizer.json", "tokenizer_config.json"]


@needs_real
def test_save_load_roundtrip_in_both_libraries(pair, hf_module, tmp_path):
    ours, theirs = pair
    ours.save_pretrained(tmp_path / "ours")
    theirs.save_pretrained(tmp_path / "theirs")
    loaders = {"ours": GPTNeoXTokenizerFast.from_pretrained, "theirs": hf_module.GPTNeoXTokenizerFast.from_pretrained}
    reloaded = {(saver, loader): load(tmp_path / saver) for saver in loaders for loader, load in loaders.items()}
    kw = dict(padding=True, return_offsets_mapping=True, return_tensors="pt")
    expected = theirs(CORPUS, **kw)
    for key, tok in reloaded.items():
        assert len(tok) == len(theirs), key
        assert tok.pad_token_id == theirs.pad_token_id, key
        assert tok.get_vocab() == theirs.get_vocab(), key
        assert _plain(tok(CORPUS, **kw)["input_ids"]) == _plain(expected["input_ids"]), key
        assert _plain(tok(CORPUS, **kw)["offset_mapping"]) == _plain(expected["offset_mapping"]), key
        assert tok.batch_decode(expected["input_ids"]) == theirs.batch_decode(expected["input_ids"]), key


@needs_real
def test_save_after_edits_reloads_identically(fresh, hf_module, tmp_path):
    ours, theirs = fresh(model_max_length=2048)
    for tok in (ours, theirs):
        tok.add_special_tokens({"pad_token": "[PAD]"})
        tok.add_tokens(["<code>"])
        tok.padding_side = "left"  # set after loading: neox saves it, transformers forgets it
    ours.save_pretrained(tmp_path / "ours")
    config = json.loads((tmp_path / "ours" / "tokenizer_config.json").read_text())
    assert config["pad_token"] == "[PAD]" and config["model_max_length"] == 2048 and config["padding_side"] == "left"
    for load in (GPTNeoXTokenizerFast.from_pretrained, hf_module.GPTNeoXTokenizerFast.from_pretrained):
        tok = load(tmp_path / "ours")
        assert tok.padding_side == "left" and tok.model_max_length == 2048
        assert_same_call(ours, tok, BATCH + ["<code>"], padding=True, return_tensors="pt")


@needs_real
def test_save_keeps_add_bos_token_for_neox(variant_dirs, variant, hf_module, tmp_path, caplog):
    ours = GPTNeoXTokenizerFast.from_pretrained(variant_dirs[variant], add_bos_token=True)
    with caplog.at_level(logging.WARNING, logger="neox.tokenization"):
        ours.save_pretrained(tmp_path)
    assert "transformers 5.24 ignores them" in caplog.text
    assert GPTNeoXTokenizerFast.from_pretrained(tmp_path)("hi")["input_ids"] == [0, 5801]
    # transformers needs the flag again; with it, the ids agree
    theirs = hf_module.GPTNeoXTokenizerFast.from_pretrained(tmp_path, add_bos_token=True)
    assert theirs("hi")["input_ids"] == [0, 5801]


@needs_real
def test_tokenizer_config_and_special_tokens_map(variant_dirs, variant, hf_module, tmp_path):
    folder = tmp_path / "cfg"
    shutil.copytree(variant_dirs[variant], folder)
    (folder / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "add_prefix_space": False,
                "bos_token": "<|endoftext|>",
                "eos_token": "<|endoftext|>",
                "unk_token": "<|endoftext|>",
                "model_max_length": 2048,
                "padding_side": "left",
                "clean_up_tokenization_spaces": True,
                "name_or_path": "EleutherAI/gpt-neox-20b",
                "special_tokens_map_file": "/somewhere/special_tokens_map.json",
                "tokenizer_class": "GPTNeoXTokenizer",
            }
        )
    )
    (folder / "special_tokens_map.json").write_text(
        json.dumps({"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>"})
    )
    ours = GPTNeoXTokenizerFast.from_pretrained(folder)
    theirs = hf_module.GPTNeoXTokenizerFast.from_pretrained(folder)
    assert (ours.model_max_length, ours.padding_side, ours.clean_up_tokenization_spaces) == (2048, "left", True)
    for attr in ("model_max_length", "padding_side", "clean_up_tokenization_spaces", "special_tokens_map"):
        assert getattr(ours, attr) == getattr(theirs, attr), attr
    assert ours.pad_token_id == theirs.pad_token_id
    assert_same_call(ours, theirs, BATCH, padding=True, return_tensors="pt")
    assert_same_call(ours, theirs, LONG_TEXT, truncation=True)
    assert_same_call(ours, theirs, BATCH, padding="max_length")
    ours.save_pretrained(tmp_path / "ours")
    theirs.save_pretrained(tmp_path / "theirs")
    assert json.loads((tmp_path / "ours/tokenizer_config.json").read_text()) == json.loads(
        (tmp_path / "theirs/tokenizer_config.json").read_text()
    )


@needs_real
def test_config_with_null_pad_token_and_added_tokens_decoder(variant_dirs, variant, hf_module, tmp_path):
    """A transformers-4 style config: ``added_tokens_decoder`` listed, ``pad_token: null``."""
    folder = tmp_path / "v4"
    shutil.copytree(variant_dirs[variant], folder)
    added = json.loads((folder / "tokenizer.json").read_text())["added_tokens"]
    decoder = {str(t.pop("id")): t for t in added}
    (folder / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "add_bos_token": False,
                "add_eos_token": False,
                "added_tokens_decoder": decoder,
                "bos_token": {"__type": "AddedToken", **AddedToken("<|endoftext|>", special=True).__getstate__()},
                "eos_token": "<|endoftext|>",
                "unk_token": "<|endoftext|>",
                "pad_token": None,
                "model_max_length": 1000000000000000019884624838656,
                "tokenizer_class": "GPTNeoXTokenizer",
            }
        )
    )
    ours = GPTNeoXTokenizerFast.from_pretrained(folder)
    theirs = hf_module.GPTNeoXTokenizerFast.from_pretrained(folder)
    assert ours.pad_token is None and theirs.pad_token is None
    assert len(ours) == len(theirs) and ours.added_tokens_decoder == theirs.added_tokens_decoder
    assert_same_call(ours, theirs, CORPUS)
    with pytest.raises(ValueError, match="no padding token"):
        ours(BATCH, padding=True)


@needs_real
def test_add_bos_token_in_config_is_honoured(variant_dirs, variant, tmp_path):
    """Deliberate difference: transformers 5.24 drops add_bos_token from the config next to tokenizer.json."""
    folder = tmp_path / "bos"
    shutil.copytree(variant_dirs[variant], folder)
    (folder / "tokenizer_config.json").write_text(json.dumps({"add_bos_token": True, "add_eos_token": True}))
    ours = GPTNeoXTokenizerFast.from_pretrained(folder)
    assert ours("hi")["input_ids"] == [0, 5801, 0]
    assert GPTNeoXTokenizerFast.from_pretrained(folder, add_bos_token=False)("hi")["input_ids"] == [5801, 0]


@needs_real
def test_constructors_from_files(variant_dirs, variant, hf_module):
    path = variant_dirs[variant] / "tokenizer.json"
    theirs = hf_module.GPTNeoXTokenizerFast(tokenizer_file=str(path))
    for ours in (GPTNeoXTokenizerFast(tokenizer_file=path), GPTNeoXTokenizerFast.from_pretrained(path)):
        assert len(ours) == len(theirs) and ours.pad_token_id == theirs.pad_token_id
        assert_same_call(ours, theirs, CORPUS, padding=True)
    ours = GPTNeoXTokenizerFast(tokenizer_file=path)
    assert ours._config_to_save() == json.loads(json.dumps(_hf_config(theirs, hf_module)))


def _hf_config(tok: Any, hf_module: Any) -> dict[str, Any]:
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        tok.save_pretrained(folder)
        return json.loads(Path(folder, "tokenizer_config.json").read_text())


def _hub_cache(cache_dir: Path, folder: Path, repo_id: str) -> str:
    """``folder``'s files as the Hugging Face cache holds ``repo_id`` at main; returns the commit."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = cache_dir / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for path in folder.iterdir():
        shutil.copyfile(path, snapshot / path.name)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    return commit


@needs_real
def test_repo_id_from_an_offline_hub_cache(variant_dirs, hf_module, tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    commit = _hub_cache(cache, _hub_variant(tmp_path / "files"), "EleutherAI/gpt-neox-20b")
    (cache / "models--EleutherAI--gpt-neox-20b/snapshots" / commit / "special_tokens_map.json").write_text(
        json.dumps({"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>"})
    )
    ours = GPTNeoXTokenizerFast.from_pretrained("EleutherAI/gpt-neox-20b", cache_dir=cache, local_files_only=True)
    assert ours.pad_token_id == 1 and len(ours) == 50277
    assert ours.name_or_path == "EleutherAI/gpt-neox-20b"
    by_revision = GPTNeoXTokenizerFast.from_pretrained(
        "EleutherAI/gpt-neox-20b", cache_dir=cache, revision=commit, local_files_only=True
    )
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from_env = GPTNeoXTokenizerFast.from_pretrained("EleutherAI/gpt-neox-20b", cache_dir=cache)
    # huggingface_hub reads HF_HUB_OFFLINE at import: transformers needs local_files_only here
    theirs = hf_module.GPTNeoXTokenizerFast.from_pretrained(
        "EleutherAI/gpt-neox-20b", cache_dir=cache, local_files_only=True
    )
    for tok in (ours, by_revision, from_env):
        assert_same_call(tok, theirs, CORPUS, padding=True, return_tensors="pt")
    with pytest.raises(OSError, match="org/missing"):
        GPTNeoXTokenizerFast.from_pretrained("org/missing", cache_dir=cache)


# --------------------------------------------------------------------------------------------
# A small vocabulary: file layouts, and errors
# --------------------------------------------------------------------------------------------


def test_small_tokenizer_json(small_dir, hf_module):
    ours = GPTNeoXTokenizerFast.from_pretrained(small_dir)
    theirs = hf_module.GPTNeoXTokenizerFast.from_pretrained(small_dir)
    assert ours.pad_token_id == theirs.pad_token_id == 1 and len(ours) == len(theirs)
    texts = ["Hello world,  this    is tiny", "naïve café ﬁ", "def f(x):\n    return x", "never seen: Ωμέγα"]
    assert_same_call(ours, theirs, texts, padding=True, return_offsets_mapping=True)


def test_vocab_and_merges_fallback(small_dir, hf_module, tmp_path):
    folder = tmp_path / "vm"
    folder.mkdir()
    backend = Tokenizer.from_file(str(small_dir / "tokenizer.json"))
    backend.model.save(str(folder))
    assert sorted(p.name for p in folder.iterdir()) == ["merges.txt", "vocab.json"]
    ours = GPTNeoXTokenizerFast.from_pretrained(folder)
    theirs = hf_module.GPTNeoXTokenizerFast.from_pretrained(folder)
    texts = ["Hello world,  this    is tiny", "naïve café", "<|endoftext|>x"]
    assert len(ours) == len(theirs) and ours.added_tokens_decoder == theirs.added_tokens_decoder
    assert_same_call(ours, theirs, texts, padding=True)
    direct = GPTNeoXTokenizerFast(vocab_file=folder / "vocab.json", merges_file=folder / "merges.txt")
    assert_same_call(direct, theirs, texts, padding=True)
    vocab = json.loads((folder / "vocab.json").read_text())
    merges = [line for line in (folder / "merges.txt").read_text().splitlines() if line and not line.startswith("#")]
    in_memory = GPTNeoXTokenizerFast(vocab=vocab, merges=merges)
    assert_same_call(in_memory, theirs, texts, padding=True)
    # legacy added_tokens.json + special_tokens_map.json
    (folder / "added_tokens.json").write_text(json.dumps({"<sep>": len(vocab)}))
    (folder / "special_tokens_map.json").write_text(json.dumps({"sep_token": "<sep>", "pad_token": "<|padding|>"}))
    ours = GPTNeoXTokenizerFast.from_pretrained(folder)
    theirs = hf_module.GPTNeoXTokenizerFast.from_pretrained(folder)
    assert ours.sep_token == theirs.sep_token == "<sep>" and ours.sep_token_id == theirs.sep_token_id
    assert_same_call(ours, theirs, ["a<sep>b"] + texts, padding=True)


def test_subfolder_and_save_vocabulary(small_dir, tmp_path):
    repo = tmp_path / "repo"
    shutil.copytree(small_dir, repo / "tokenizer")
    tok = GPTNeoXTokenizerFast.from_pretrained(repo, subfolder="tokenizer")
    texts = ["Hello world,  this    is tiny", "naïve café"]
    assert tok(texts).data == GPTNeoXTokenizerFast.from_pretrained(small_dir)(texts).data
    with pytest.raises(OSError, match="repo"):
        GPTNeoXTokenizerFast.from_pretrained(repo)
    files = tok.save_vocabulary(tmp_path / "vocab")  # the BPE model only, without the added tokens
    assert sorted(Path(f).name for f in files) == ["merges.txt", "vocab.json"]
    plain = ["Hello world, this is tiny", "naïve café"]
    assert GPTNeoXTokenizerFast.from_pretrained(tmp_path / "vocab")(plain).data == tok(plain).data


def test_release_style_small_file_gets_a_new_pad_token(tmp_path, hf_module):
    folder = _train_small_tokenizer(tmp_path / "nopad", pad=False)
    ours = GPTNeoXTokenizerFast.from_pretrained(folder)
    theirs = hf_module.GPTNeoXTokenizerFast.from_pretrained(folder)
    assert ours.pad_token == "<|padding|>" and ours.pad_token_id == theirs.pad_token_id == len(ours) - 1
    assert ours.vocab_size == theirs.vocab_size < len(ours) == len(theirs)


def test_missing_files_name_the_folder_and_the_files(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(OSError) as err:
        GPTNeoXTokenizerFast.from_pretrained(empty)
    message = str(err.value)
    assert str(empty) in message and "tokenizer.json" in message and "vocab.json" in message and "merges.txt" in message
    (empty / "vocab.json").write_text("{}")
    with pytest.raises(OSError, match="found only 'vocab.json'"):
        GPTNeoXTokenizerFast.from_pretrained(empty)


def test_corrupt_files_are_named(small_dir, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "tokenizer.json").write_text('{"model": {"type": "BPE", "vocab": {"a": 0}, "merg')
    with pytest.raises(ValueError, match="tokenizer.json.* is not valid JSON"):
        GPTNeoXTokenizerFast.from_pretrained(bad)
    (bad / "tokenizer.json").write_text('{"version": "1.0"}')
    with pytest.raises(ValueError, match=r"bad/tokenizer.json.* has no model vocabulary"):
        GPTNeoXTokenizerFast.from_pretrained(bad)
    (bad / "tokenizer.json").write_text(json.dumps({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": ["a b"]}}))
    with pytest.raises(ValueError, match="tokenizer.json"):
        GPTNeoXTokenizerFast.from_pretrained(bad)
    (bad / "tokenizer.json").write_text(json.dumps({"model": {"type": "WordPiece", "vocab": {"a": 0}}}))
    with pytest.raises(ValueError, match="WordPiece"):
        GPTNeoXTokenizerFast.from_pretrained(bad)
    shutil.copyfile(small_dir / "tokenizer.json", bad / "tokenizer.json")
    (bad / "tokenizer_config.json").write_text("{not json")
    with pytest.raises(ValueError, match="tokenizer_config.json.* is not valid JSON"):
        GPTNeoXTokenizerFast.from_pretrained(bad)


def test_clear_errors_for_bad_arguments(small_dir):
    tok = GPTNeoXTokenizerFast.from_pretrained(small_dir)
    with pytest.raises(ValueError, match="padding='max_length' needs a length"):
        tok(["a", "b c"], padding="max_length")
    with pytest.raises(ValueError, match="padding='max_length' needs a length"):
        tok.pad([{"input_ids": [1]}, {"input_ids": [1, 2]}], padding="max_length")
    assert len(tok(["a", "b c"], padding="max_length", max_length=6)["input_ids"][0]) == 6
    with pytest.raises(TypeError, match="foo"):
        tok("hello", foo=1)
    with pytest.raises(TypeError, match="foo"):
        tok.encode("hello", foo=1)
    with pytest.raises(TypeError, match="foo"):
        tok.decode([1], foo=1)
    with pytest.raises(TypeError, match="foo"):
        tok.tokenize("hello", foo=1)
    with pytest.raises(TypeError, match="foo"):
        GPTNeoXTokenizerFast.from_pretrained(small_dir, foo=1)
    with pytest.raises(TypeError, match="foo"):
        GPTNeoXTokenizerFast(tokenizer_file=small_dir / "tokenizer.json", foo=1)
    with pytest.raises(ValueError, match="padding="):
        tok(["a"], padding="everything")
    with pytest.raises(ValueError, match="truncation="):
        tok(["a"], truncation="middle_out")
    with pytest.raises(ValueError, match="return_tensors"):
        tok(["a"], return_tensors="tf")
    with pytest.raises(ValueError, match="padding_side"):
        tok(["a"], padding=True, padding_side="middle")
    with pytest.raises(ValueError, match="padding_side"):
        tok.padding_side = "up"
    with pytest.raises(ValueError, match="text must be"):
        tok(123)
    with pytest.raises(ValueError, match="Pass the text"):
        tok()
    with pytest.raises(ValueError, match="different lengths"):
        tok(["a", "b c d"], return_tensors="pt")
    with pytest.raises(ValueError, match="needs a vocabulary"):
        GPTNeoXTokenizerFast()
    with pytest.raises(TypeError, match="must be a str or a tokenizers.AddedToken"):
        tok.pad_token = 5
    # the documented no-ops are accepted
    GPTNeoXTokenizerFast.from_pretrained(small_dir, trust_remote_code=False, use_fast=True)
    assert tok(["a"], verbose=False)["input_ids"] == tok(["a"])["input_ids"]


def test_truncation_without_a_length_warns_and_does_not_truncate(small_dir, caplog):
    tok = GPTNeoXTokenizerFast.from_pretrained(small_dir)
    with caplog.at_level(logging.WARNING, logger="neox.tokenization"):
        ids = tok("Hello world " * 10, truncation=True)["input_ids"]
    assert "not truncating" in caplog.text
    assert ids == tok("Hello world " * 10)["input_ids"]


def test_batch_encoding_behaves_like_a_mapping(small_dir):
    tok = GPTNeoXTokenizerFast.from_pretrained(small_dir)
    batch = tok(["Hello world", "naïve"], padding=True, return_tensors="pt")
    assert isinstance(batch, BatchEncoding)
    assert batch.input_ids is batch["input_ids"] and batch.attention_mask.dtype == torch.int64
    assert sorted(batch.keys()) == ["attention_mask", "input_ids"]

    def forward(input_ids, attention_mask):
        return input_ids.shape, attention_mask.shape

    assert forward(**batch) == (batch.input_ids.shape,) * 2
    assert batch.to("cpu") is batch and batch.input_ids.device.type == "cpu"
    assert batch.to(torch.device("cpu")).input_ids.device.type == "cpu"
    assert batch[0].ids == batch.input_ids[0].tolist()
    assert batch.tokens(1) == batch.encodings[1].tokens and batch.word_ids(0)[0] == 0
    assert batch.char_to_token(1, 0) == 0 and batch.token_to_chars(0, 0) == batch.encodings[0].offsets[0]
    assert batch.n_sequences == 1 and batch.is_fast
    with pytest.raises(AttributeError, match="labels"):
        batch.labels
    clone = pickle.loads(pickle.dumps(batch))
    assert torch.equal(clone.input_ids, batch.input_ids) and clone.tokens(0) == batch.tokens(0)
    single = tok("Hello world", return_tensors="np")
    assert single.input_ids.shape == (1, len(tok("Hello world").input_ids))
    assert tok("", return_tensors="pt").input_ids.shape == (1, 0)
    assert tok([""], return_tensors="pt").input_ids.dtype == torch.int64


def test_tokenizer_pickles(small_dir):
    tok = GPTNeoXTokenizerFast.from_pretrained(small_dir)
    tok.add_special_tokens({"pad_token": "[PAD]"})
    clone = pickle.loads(pickle.dumps(tok))
    assert clone(["Hello", "world x"], padding=True).data == tok(["Hello", "world x"], padding=True).data
    assert clone.pad_token == "[PAD]" and len(clone) == len(tok)


def test_module_does_not_import_torch():
    code = "import sys, neox.tokenization; assert 'torch' not in sys.modules, 'torch was imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])
