"""The tokenizer's files: their names, and reading tokenizer.json / tokenizer_config.json & co.

Every JSON file goes through :func:`neox.files.read_json` (one reader for the whole library), so
a file that is not UTF-8, not JSON, or absurdly nested is a ``ValueError`` naming it. Each field
the tokenizer takes from a file is checked for its type here, naming the file and the field.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Union

from tokenizers import AddedToken
from tokenizers.models import BPE

from neox.files import read_json

TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
SPECIAL_TOKENS_MAP_FILE = "special_tokens_map.json"
ADDED_TOKENS_FILE = "added_tokens.json"
VOCAB_FILE = "vocab.json"
MERGES_FILE = "merges.txt"

#: transformers' "no maximum length" (``int(1e30)``); anything above LARGE_INTEGER counts as unset.
VERY_LARGE_INTEGER = int(1e30)
LARGE_INTEGER = int(1e20)

SPECIAL_TOKENS_ATTRIBUTES = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
_PADDING = ("longest", "max_length", "do_not_pad")
_TRUNCATION = ("longest_first", "only_first", "only_second", "do_not_truncate")
_SIDES = ("left", "right")
#: tokenizer_class values of tokenizer_config.json that this class loads without a warning.
_COMPATIBLE_CLASSES = ("GPTNeoXTokenizer", "GPTNeoXTokenizerFast", "PreTrainedTokenizerFast", "TokenizersBackend")

TextInput = str
PreTokenizedInput = list[str]
TokenToAdd = Union[str, AddedToken]


def _read_json(path: Path, what: str) -> Any:
    return read_json(path, what)


def _as_added_token(value: Any, *, special: bool | None = None) -> Any:
    """A serialized AddedToken (dict, with or without transformers' ``__type``) → AddedToken."""
    if isinstance(value, dict) and "content" in value:
        fields = {k: v for k, v in value.items() if k not in ("__type", "id")}
        if special is not None:
            fields["special"] = special
        return AddedToken(**fields)
    return value


def _serializable(value: Any) -> Any:
    """AddedTokens → the ``{"__type": "AddedToken", ...}`` dicts of tokenizer_config.json."""
    if isinstance(value, AddedToken):
        return {"__type": "AddedToken", **value.__getstate__()}
    if isinstance(value, (list, tuple)):
        return [_serializable(v) for v in value]
    if isinstance(value, dict):
        return {k: _serializable(v) for k, v in value.items()}
    return value


def _deserialized(value: Any) -> Any:
    """The inverse of :func:`_serializable` for the values read from tokenizer_config.json."""
    if isinstance(value, dict) and value.get("__type") == "AddedToken":
        return _as_added_token(value)
    if isinstance(value, list):
        return [_deserialized(v) for v in value]
    if isinstance(value, dict):
        return {k: _deserialized(v) for k, v in value.items()}
    return value


def _read_tokenizer_json(path: Path) -> dict[str, Any]:
    """vocab, merges, added tokens and the padding/truncation sides of a tokenizer.json."""
    data = _read_json(path, "tokenizer file")
    model = data.get("model") if isinstance(data, dict) else None
    if not isinstance(model, dict) or not isinstance(model.get("vocab"), (dict, list)):
        raise ValueError(f"The tokenizer file {str(path)!r} has no model vocabulary")
    if model.get("type", "BPE") != "BPE" or "merges" not in model:
        raise ValueError(
            f"The tokenizer file {str(path)!r} holds a {model.get('type')!r} model; "
            "GPTNeoXTokenizerFast needs a byte-level BPE vocabulary with merges"
        )
    vocab = model["vocab"]
    if isinstance(vocab, list):
        vocab = {(tok[0] if isinstance(tok, list) else tok): i for i, tok in enumerate(vocab)}
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    added = {}
    for entry in data.get("added_tokens") or []:
        added[int(entry["id"])] = _as_added_token(entry)
    sides = {}
    if data.get("padding"):
        sides["padding_side"] = str(data["padding"].get("direction", "Right")).lower()
    if data.get("truncation"):
        sides["truncation_side"] = str(data["truncation"].get("direction", "Right")).lower()
    return {"vocab": vocab, "merges": merges, "added_tokens": added, "sides": sides}


def _build_bpe(vocab: dict[str, int], merges: list[tuple[str, str]], source: str) -> BPE:
    try:
        return BPE(
            vocab=vocab,
            merges=merges,
            dropout=None,
            continuing_subword_prefix="",
            end_of_word_suffix="",
            fuse_unk=False,
        )
    except Exception as err:  # tokenizers raises a bare Exception for inconsistent merges
        raise ValueError(f"Could not build the BPE vocabulary from {source}: {err}") from None
