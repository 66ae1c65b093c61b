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


#: The fields of a serialized AddedToken, each a bool except ``content``.
_ADDED_TOKEN_FLAGS = ("single_word", "lstrip", "rstrip", "normalized", "special")


def _as_added_token(value: Any, *, special: bool | None = None, where: str = "an added token") -> Any:
    """A serialized AddedToken (dict, with or without transformers' ``__type``) → AddedToken.

    Any other value is returned as is; a dict with ``content`` but fields of the wrong type is a
    ValueError naming ``where`` and the field.
    """
    if isinstance(value, dict) and "content" in value:
        fields = {k: v for k, v in value.items() if k not in ("__type", "id")}
        if not isinstance(fields["content"], str) or not fields["content"]:
            raise ValueError(f"{where}: 'content' must be a non-empty string, got {fields['content']!r}")
        for key, flag in fields.items():
            if key != "content" and (key not in _ADDED_TOKEN_FLAGS or not isinstance(flag, bool)):
                raise ValueError(
                    f"{where}: field {key!r} = {flag!r} is not one of the AddedToken flags "
                    f"{_ADDED_TOKEN_FLAGS} with a true/false value"
                )
        if special is not None:
            fields["special"] = special
        return AddedToken(**fields)
    return value


def _special_token_value(value: Any, where: str) -> Any:
    """A special token read from a file: a string, a serialized AddedToken, or null."""
    if value is None or isinstance(value, str):
        return value
    token = _as_added_token(value, special=True, where=where)
    if not isinstance(token, AddedToken):
        raise ValueError(f"{where} must be a token string or an AddedToken object, got {value!r}")
    return token


def _read_special_tokens_map(path: Path) -> dict[str, Any]:
    """special_tokens_map.json: {name: token}, with the extra tokens as a list of tokens."""
    data = _read_json(path, "special tokens map")
    if not isinstance(data, dict):
        raise ValueError(f"The special tokens map {str(path)!r} must be a JSON object, got a {type(data).__name__}")
    out: dict[str, Any] = {}
    for key, value in data.items():
        where = f"{path}: {key!r}"
        if key in ("extra_special_tokens", "additional_special_tokens"):
            if not isinstance(value, list):
                # A lone string would otherwise become one special token per character.
                raise ValueError(f"{where} must be a list of tokens, got {value!r}")
            out[key] = [_special_token_value(v, f"{where}[{i}]") for i, v in enumerate(value)]
        else:
            out[key] = _special_token_value(value, where)
    return out


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
    """vocab, merges, added tokens and the padding/truncation sides of a tokenizer.json.

    Each field is checked for its type; an error names the file and the field.
    """
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
    if isinstance(vocab, list):  # [token, ...] or [[token, score], ...]
        tokens = [tok[0] if isinstance(tok, list) and tok else tok for tok in vocab]
        bad = next((i for i, tok in enumerate(tokens) if not isinstance(tok, str)), None)
        if bad is not None:
            raise ValueError(f"{path}: model.vocab[{bad}] is {vocab[bad]!r:.60}; expected a token string")
        vocab = {tok: i for i, tok in enumerate(tokens)}
    for token, idx in vocab.items():
        if not isinstance(token, str) or isinstance(idx, bool) or not isinstance(idx, int) or not 0 <= idx < 2**32:
            raise ValueError(f"{path}: model.vocab maps {token!r} to {idx!r}; expected token string → id >= 0")
    if not isinstance(model["merges"], list):
        raise ValueError(f"{path}: model.merges must be a list, got {type(model['merges']).__name__}")
    merges = []
    for i, m in enumerate(model["merges"]):
        pair = tuple(m.split(" ")) if isinstance(m, str) else tuple(m) if isinstance(m, list) else None
        if pair is None or len(pair) != 2 or not all(isinstance(p, str) for p in pair):
            raise ValueError(f"{path}: model.merges[{i}] is {m!r}; expected \"a b\" or [\"a\", \"b\"]")
        merges.append(pair)
    added = {}
    entries = data.get("added_tokens")
    if entries is not None and not isinstance(entries, list):
        raise ValueError(f"{path}: added_tokens must be a list of token objects, got {type(entries).__name__}")
    for i, entry in enumerate(entries or []):
        where = f"{path}: added_tokens[{i}]"
        if not isinstance(entry, dict) or "content" not in entry:
            raise ValueError(f"{where} must be an object with 'id' and 'content', got {entry!r:.80}")
        idx = entry.get("id")
        if isinstance(idx, bool) or not isinstance(idx, int) or not 0 <= idx < 2**32:
            raise ValueError(f"{where}: 'id' must be a token id (an integer >= 0), got {idx!r}")
        added[idx] = _as_added_token(entry, where=where)
    sides = {}
    for field, side in (("padding", "padding_side"), ("truncation", "truncation_side")):
        value = data.get(field)
        if value is None:
            continue
        if not isinstance(value, dict):
            raise ValueError(f"{path}: {field!r} must be an object or null, got {value!r:.80}")
        direction = value.get("direction", "Right")
        if direction not in ("Left", "Right", "left", "right"):
            raise ValueError(f"{path}: {field}.direction must be \"Left\" or \"Right\", got {direction!r}")
        sides[side] = direction.lower()
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
