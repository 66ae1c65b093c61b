"""GPTNeoXTokenizerFast: the byte-level BPE pipeline, special tokens, encode / pad / decode.

See the package docstring (:mod:`neox.tokenization`) for what it matches in transformers and
where it deliberately differs.
"""

from __future__ import annotations

import copy
import inspect
import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tokenizers import AddedToken, Encoding, Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import BPE

from neox.files import atomic_write_text
from neox.hub import HubOptions, _offline, resolve_file

from .batch_encoding import BatchEncoding, _tensor_kind, _to_py
from .files import (
    _COMPATIBLE_CLASSES,
    _PADDING,
    _SIDES,
    _TRUNCATION,
    ADDED_TOKENS_FILE,
    LARGE_INTEGER,
    MERGES_FILE,
    PreTokenizedInput,
    SPECIAL_TOKENS_ATTRIBUTES,
    SPECIAL_TOKENS_MAP_FILE,
    TOKENIZER_CONFIG_FILE,
    TOKENIZER_FILE,
    TextInput,
    VERY_LARGE_INTEGER,
    VOCAB_FILE,
    TokenToAdd,
    _as_added_token,
    _build_bpe,
    _deserialized,
    _read_json,
    _read_special_tokens_map,
    _read_tokenizer_json,
    _serializable,
)

logger = logging.getLogger(__name__)

__all__ = ["GPTNeoXTokenizerFast"]

# --------------------------------------------------------------------------------------------
# Special-token attributes: bos_token / bos_token_id and friends
# --------------------------------------------------------------------------------------------


class _SpecialToken:
    """``tokenizer.pad_token``: the string (None when unset); assigning a str or AddedToken sets it."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.key = name

    def __get__(self, obj: Any, objtype: type | None = None) -> Any:
        if obj is None:
            return self
        value = obj._special_tokens.get(self.key)
        return None if value is None else str(value)

    def __set__(self, obj: Any, value: Any) -> None:
        obj._set_special_token(self.key, value)


class _SpecialTokenId:
    """``tokenizer.pad_token_id``: the id of the special token; assigning an id sets the token."""

    def __init__(self, key: str) -> None:
        self.key = key

    def __get__(self, obj: Any, objtype: type | None = None) -> Any:
        if obj is None:
            return self
        value = obj._special_tokens.get(self.key)
        return None if value is None else obj.convert_tokens_to_ids(str(value))

    def __set__(self, obj: Any, value: int | None) -> None:
        obj._set_special_token(self.key, None if value is None else obj.convert_ids_to_tokens(int(value)))


# --------------------------------------------------------------------------------------------
# The tokenizer
# --------------------------------------------------------------------------------------------


class GPTNeoXTokenizerFast:
    """The GPT-NeoX tokenizer (byte-level BPE), with transformers' ``GPTNeoXTokenizerFast`` API.

    Build it with :meth:`from_pretrained` (a folder, a tokenizer.json file or a Hub repo id), or
    directly from ``tokenizer_file=`` or ``vocab_file=`` + ``merges_file=`` (or in-memory
    ``vocab=`` + ``merges=``).
    """

    vocab_files_names = {"vocab_file": VOCAB_FILE, "merges_file": MERGES_FILE, "tokenizer_file": TOKENIZER_FILE}
    model_input_names: list[str] = ["input_ids", "attention_mask"]
    SPECIAL_TOKENS_ATTRIBUTES = list(SPECIAL_TOKENS_ATTRIBUTES)
    is_fast = True

    bos_token = _SpecialToken()
    eos_token = _SpecialToken()
    unk_token = _SpecialToken()
    sep_token = _SpecialToken()
    pad_token = _SpecialToken()
    cls_token = _SpecialToken()
    mask_token = _SpecialToken()
    bos_token_id = _SpecialTokenId("bos_token")
    eos_token_id = _SpecialTokenId("eos_token")
    unk_token_id = _SpecialTokenId("unk_token")
    sep_token_id = _SpecialTokenId("sep_token")
    pad_token_id = _SpecialTokenId("pad_token")
    cls_token_id = _SpecialTokenId("cls_token")
    mask_token_id = _SpecialTokenId("mask_token")

    #: Attributes whose current value save_pretrained writes in place of the value given at init.
    _LIVE_CONFIG_KEYS = (
        "add_prefix_space",
        "trim_offsets",
        "padding_side",
        "truncation_side",
        "model_max_length",
        "clean_up_tokenization_spaces",
        "split_special_tokens",
        "model_input_names",
        "chat_template",
        "backend",
        *SPECIAL_TOKENS_ATTRIBUTES,
    )

    def __init__(
        self,
        vocab_file: str | os.PathLike | None = None,
        merges_file: str | os.PathLike | None = None,
        tokenizer_file: str | os.PathLike | None = None,
        *,
        vocab: dict[str, int] | None = None,
        merges: list[str] | list[tuple[str, str]] | None = None,
        unk_token: TokenToAdd | None = "<|endoftext|>",
        bos_token: TokenToAdd | None = "<|endoftext|>",
        eos_token: TokenToAdd | None = "<|endoftext|>",
        pad_token: TokenToAdd | None = "<|padding|>",
        sep_token: TokenToAdd | None = None,
        cls_token: TokenToAdd | None = None,
        mask_token: TokenToAdd | None = None,
        extra_special_tokens: Sequence[TokenToAdd] | None = None,
        additional_special_tokens: Sequence[TokenToAdd] | None = None,
        added_tokens_decoder: Mapping[int | str, AddedToken | dict] | None = None,
        add_prefix_space: bool = False,
        trim_offsets: bool = True,
        add_bos_token: bool | None = None,
        add_eos_token: bool | None = None,
        model_max_length: int | None = None,
        padding_side: str | None = None,
        truncation_side: str | None = None,
        model_input_names: Sequence[str] | None = None,
        clean_up_tokenization_spaces: bool | None = None,
        clean_up_tokenization_spaces_for_bpe_even_though_it_will_corrupt_output: bool | None = None,
        split_special_tokens: bool | None = None,
        errors: str = "replace",
        chat_template: str | dict | None = None,
        name_or_path: str = "",
        verbose: bool = False,
    ) -> None:
        """
        Args:
            vocab_file, merges_file: a GPT-2 style ``vocab.json`` and ``merges.txt``.
            tokenizer_file: a ``tokenizers`` serialization (tokenizer.json); wins over the two above.
            vocab, merges: the same in memory (``{"token": id}`` and ``["a b", ...]`` or pairs).
            unk_token, bos_token, eos_token, pad_token, sep_token, cls_token, mask_token: the named
                special tokens (str or ``tokenizers.AddedToken``); any missing from the vocabulary
                is added to it.
            extra_special_tokens (alias ``additional_special_tokens``): more special tokens.
            added_tokens_decoder: ``{id: AddedToken}`` to add instead of tokenizer.json's added tokens.
            add_prefix_space: encode a leading word as if a space preceded it (needed for
                ``is_split_into_words=True`` to read words as words).
            trim_offsets: recorded for the byte-level pre-tokenizer, as transformers does.
            add_bos_token, add_eos_token: wrap every sequence in ``bos`` / ``eos``.
            model_max_length: the model's context; the default length of ``truncation=True`` and
                ``padding="max_length"`` (default: none).
            padding_side, truncation_side: "right" (default) or "left".
            clean_up_tokenization_spaces: accepted and saved; like transformers, decode ignores it for
                this BPE tokenizer unless ``clean_up_tokenization_spaces_for_bpe_even_though_it_
                will_corrupt_output`` is set.
            split_special_tokens: encode special tokens found in text as plain text.
            errors: recorded for compatibility (invalid UTF-8 always decodes to U+FFFD).
            chat_template: kept and saved back (no ``apply_chat_template`` here).
            verbose: accepted for compatibility (per call, ``verbose=False`` silences warnings).
        """
        if additional_special_tokens is not None and extra_special_tokens is None:
            extra_special_tokens = additional_special_tokens
        named = dict(bos_token=bos_token, eos_token=eos_token, unk_token=unk_token, sep_token=sep_token,
                     pad_token=pad_token, cls_token=cls_token, mask_token=mask_token)
        self._record_init_kwargs(
            dict(errors=errors, unk_token=unk_token, bos_token=bos_token, eos_token=eos_token, pad_token=pad_token,
                 add_prefix_space=add_prefix_space, trim_offsets=trim_offsets),
            dict(vocab_file=vocab_file, merges_file=merges_file, sep_token=sep_token, cls_token=cls_token,
                 mask_token=mask_token, extra_special_tokens=extra_special_tokens,
                 added_tokens_decoder=added_tokens_decoder, add_bos_token=add_bos_token,
                 add_eos_token=add_eos_token, model_max_length=model_max_length, padding_side=padding_side,
                 truncation_side=truncation_side, model_input_names=model_input_names,
                 clean_up_tokenization_spaces=clean_up_tokenization_spaces,
                 clean_up_tokenization_spaces_for_bpe_even_though_it_will_corrupt_output=(
                     clean_up_tokenization_spaces_for_bpe_even_though_it_will_corrupt_output),
                 split_special_tokens=split_special_tokens, chat_template=chat_template,
                 name_or_path=name_or_path or None),
        )
        self._set_options(
            name_or_path=name_or_path, errors=errors, verbose=verbose, add_prefix_space=add_prefix_space,
            trim_offsets=trim_offsets, model_max_length=model_max_length, model_input_names=model_input_names,
            clean_up_tokenization_spaces=clean_up_tokenization_spaces,
            clean_up_for_bpe=clean_up_tokenization_spaces_for_bpe_even_though_it_will_corrupt_output,
            split_special_tokens=split_special_tokens, chat_template=chat_template,
        )
        # 1. The BPE vocabulary, and the added tokens that go with it.
        vocab, merges, source, file_sides, file_added = self._read_vocabulary(
            tokenizer_file, vocab_file, merges_file, vocab, merges
        )
        if added_tokens_decoder is None:
            added_tokens_decoder = file_added
        self.padding_side = padding_side or file_sides.get("padding_side", "right")
        self.truncation_side = truncation_side or file_sides.get("truncation_side", "right")
        # 2. The pipeline, rebuilt as transformers' GPTNeoXTokenizer builds it.
        self._build_pipeline(vocab, merges, source)
        # 3. Special tokens, then the added tokens (by id) and any special token still missing.
        self._set_special_tokens(named, extra_special_tokens)
        self._add_tokens(added_tokens_decoder)
        # 4. The post-processor: bos/eos around each sequence when asked for.
        self._add_bos_token = _flag(add_bos_token, "add_bos_token")
        self._add_eos_token = _flag(add_eos_token, "add_eos_token")
        self._update_post_processor()

    # ------------------------------------------------------------------ construction steps

    def _record_init_kwargs(self, always: dict[str, Any], optional: dict[str, Any]) -> None:
        """What transformers records as init kwargs: save_pretrained writes these back."""
        init_kwargs = dict(always)
        init_kwargs.update({k: v for k, v in optional.items() if v is not None})
        init_kwargs["backend"] = "tokenizers"
        self.init_kwargs: dict[str, Any] = copy.deepcopy(init_kwargs)

    def _set_options(
        self, *, name_or_path: Any, errors: Any, verbose: Any, add_prefix_space: Any, trim_offsets: Any,
        model_max_length: Any, model_input_names: Any, clean_up_tokenization_spaces: Any, clean_up_for_bpe: Any,
        split_special_tokens: Any, chat_template: Any,
    ) -> None:
        """The plain settings, each checked for its type (they often come from tokenizer_config.json)."""
        self.name_or_path = str(name_or_path)
        self.backend = "tokenizers"
        self.errors = errors
        self.verbose = bool(verbose)
        self.add_prefix_space = _flag(add_prefix_space, "add_prefix_space")
        self.trim_offsets = _flag(trim_offsets, "trim_offsets")
        self.model_max_length = _max_length(model_max_length)
        self.model_input_names = _input_names(model_input_names, type(self).model_input_names)
        self.clean_up_tokenization_spaces = _flag(clean_up_tokenization_spaces, "clean_up_tokenization_spaces")
        self.clean_up_tokenization_spaces_for_bpe_even_though_it_will_corrupt_output = _flag(
            clean_up_for_bpe, "clean_up_tokenization_spaces_for_bpe_even_though_it_will_corrupt_output"
        )
        self.split_special_tokens = _flag(split_special_tokens, "split_special_tokens")
        if chat_template is not None and not isinstance(chat_template, (str, dict, list)):
            raise ValueError(f"chat_template must be a string (or a dict of named templates), got {chat_template!r}")
        self.chat_template = chat_template
        self._warned: set[str] = set()

    @staticmethod
    def _read_vocabulary(
        tokenizer_file: Any, vocab_file: Any, merges_file: Any, vocab: Any, merges: Any
    ) -> tuple[dict[str, int], list[tuple[str, str]], str, dict[str, str], dict[int, AddedToken] | None]:
        """(vocab, merges, where they came from, padding/truncation sides, tokenizer.json's added tokens)."""
        if tokenizer_file is not None:
            parsed = _read_tokenizer_json(Path(tokenizer_file))
            source = f"the tokenizer file {str(tokenizer_file)!r}"
            return parsed["vocab"], parsed["merges"], source, parsed["sides"], parsed["added_tokens"]
        if vocab is not None and merges is not None:
            if not isinstance(vocab, Mapping):
                raise ValueError(f"vocab= must be a dict of token -> id, got {type(vocab).__name__}")
            merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in merges]
            return dict(vocab), merges, "vocab= and merges=", {}, None
        if vocab_file is not None and merges_file is not None:
            source = f"{str(vocab_file)!r} and {str(merges_file)!r}"
            try:
                vocab, merges = BPE.read_file(str(vocab_file), str(merges_file))
            except Exception as err:
                raise ValueError(f"Could not read the vocabulary files {source}: {err}") from None
            return vocab, merges, source, {}, None
        raise ValueError(
            "GPTNeoXTokenizerFast needs a vocabulary: pass tokenizer_file=, vocab_file= and merges_file=, "
            "or vocab= and merges= (or use GPTNeoXTokenizerFast.from_pretrained(folder_or_repo_id))"
        )

    def _build_pipeline(self, vocab: dict[str, int], merges: list[tuple[str, str]], source: str) -> None:
        """NFC, byte-level pre-tokenizer, BPE, byte-level decoder (the post-processor comes last)."""
        self._tokenizer = Tokenizer(_build_bpe(vocab, merges, source))
        self._tokenizer.normalizer = normalizers.NFC()
        self._tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(
            add_prefix_space=self.add_prefix_space, trim_offsets=self.trim_offsets
        )
        self._tokenizer.decoder = decoders.ByteLevel()

    def _set_special_tokens(self, named: dict[str, Any], extra: Sequence[TokenToAdd] | None) -> None:
        self._special_tokens: dict[str, Any] = dict.fromkeys(SPECIAL_TOKENS_ATTRIBUTES)
        for key, value in named.items():
            if value is not None:
                self._check_token_type(key, value)
                self._special_tokens[key] = value
        if extra is not None and (isinstance(extra, (str, AddedToken)) or not isinstance(extra, Sequence)):
            # A lone string would otherwise become one special token per character.
            raise ValueError(f"extra_special_tokens must be a list of tokens, got {extra!r}")
        self._extra_special_tokens: list[Any] = []
        for value in extra or []:
            self._check_token_type("extra_special_tokens", value)
            self._extra_special_tokens.append(value)

    def _add_tokens(self, added_tokens_decoder: Mapping[int | str, Any] | None) -> None:
        """Add the decoder's tokens in id order, then each special token the vocabulary lacks."""
        decoder = _added_tokens_by_id(added_tokens_decoder)
        tokens_to_add = [token for _, token in sorted(decoder.items())]
        present = {str(t) for t in tokens_to_add}
        for value in [*self._special_tokens.values(), *self._extra_special_tokens]:
            if value is not None and str(value) not in present:
                tokens_to_add.append(value)
                present.add(str(value))
        named_strings = {str(v) for v in self._special_tokens.values() if v is not None}
        for i, token in enumerate(tokens_to_add):
            if isinstance(token, str):
                tokens_to_add[i] = AddedToken(token, special=True)
            elif not token.special and str(token) in named_strings:
                tokens_to_add[i] = AddedToken(**{**token.__getstate__(), "special": True})
        if tokens_to_add:
            self._tokenizer.add_tokens(tokens_to_add)
        self._tokenizer.encode_special_tokens = self.split_special_tokens

    # ------------------------------------------------------------------ loading

    @classmethod
    def _init_parameters(cls) -> set[str]:
        params = inspect.signature(cls.__init__).parameters
        return {name for name, p in params.items() if name != "self" and p.kind is not p.VAR_KEYWORD}

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs: Any) -> "GPTNeoXTokenizerFast":
        """Load from a folder, a tokenizer.json file, or a Hugging Face Hub repo id.

        Reads tokenizer.json (or vocab.json + merges.txt), and tokenizer_config.json,
        special_tokens_map.json and added_tokens.json when present. Keyword arguments: the hub
        options (``revision``, ``cache_dir``, ``local_files_only``, ``token``, ``subfolder``,
        ``force_download``) and any ``__init__`` argument, which overrides the saved config
        (``add_prefix_space=``, ``padding_side=``, ``pad_token=``, ``model_max_length=``, ...).
        """
        options = HubOptions.pop_from(kwargs)
        for ignored in ("trust_remote_code", "use_fast"):  # documented no-ops
            kwargs.pop(ignored, None)
        known = cls._init_parameters()
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise TypeError(
                f"{cls.__name__}.from_pretrained() got unexpected keyword argument(s) {', '.join(map(repr, unknown))}"
            )

        source = str(pretrained_model_name_or_path)
        local_files_only = options.local_files_only or _offline()
        is_local = Path(source).expanduser().is_dir()
        if Path(source).expanduser().is_file():
            files = {"tokenizer_file": Path(source).expanduser()}
        else:
            files = cls._resolve_files(source, options)
        config: dict[str, Any] = {}
        if files.get("tokenizer_config_file") is not None:
            config = _read_json(files["tokenizer_config_file"], "tokenizer config")
            if not isinstance(config, dict):
                raise ValueError(f"The tokenizer config {str(files['tokenizer_config_file'])!r} is not a JSON object")
        saved_class = config.get("tokenizer_class")
        if saved_class not in (None, *_COMPATIBLE_CLASSES):
            logger.warning("%s was saved as a %s; loading it as %s", source, saved_class, cls.__name__)
        try:
            init = cls._init_kwargs_from_files(config, files, kwargs)
            init.update(name_or_path=source)
            # Unknown keys of a saved config (e.g. "is_local") travel along for save_pretrained.
            extras = {k: init.pop(k) for k in list(init) if k not in known}
            if init.get("model_max_length") is None and extras.get("max_len") is not None:
                init["model_max_length"] = extras.pop("max_len")
            extras.update(is_local=is_local, local_files_only=local_files_only)
            tokenizer = cls(**init)
        except (ValueError, TypeError) as err:
            # A value read from tokenizer_config.json: say which file it came from.
            culprit = next((k for k in config if k not in kwargs and str(err).startswith(k)), None)
            if culprit is None:
                raise
            raise ValueError(f"{files['tokenizer_config_file']}: {err}") from None
        for key in ("tokenizer_class", "init_inputs"):
            extras.pop(key, None)
        tokenizer.init_kwargs.update(copy.deepcopy(extras))
        return tokenizer

    @staticmethod
    def _resolve_files(source: str, options: HubOptions) -> dict[str, Path | None]:
        files = {
            "tokenizer_config_file": resolve_file(source, TOKENIZER_CONFIG_FILE, options),
            "tokenizer_file": resolve_file(source, TOKENIZER_FILE, options),
            "special_tokens_map_file": resolve_file(source, SPECIAL_TOKENS_MAP_FILE, options),
        }
        if files["tokenizer_file"] is None:
            files["vocab_file"] = resolve_file(source, VOCAB_FILE, options)
            files["merges_file"] = resolve_file(source, MERGES_FILE, options)
            files["added_tokens_file"] = resolve_file(source, ADDED_TOKENS_FILE, options)
            if files["vocab_file"] is None or files["merges_file"] is None:
                if Path(source).expanduser().is_dir():
                    where = f"the folder {str(Path(source).expanduser() / options.subfolder)!r}"
                else:
                    offline = options.local_files_only or _offline()
                    offline = "; offline, so the Hugging Face cache only" if offline else ""
                    where = f"the Hub repo {source!r} (it is not a local folder{offline})"
                found = [n for n, key in ((VOCAB_FILE, "vocab_file"), (MERGES_FILE, "merges_file")) if files[key]]
                raise OSError(
                    f"No tokenizer files in {where}: looked for {TOKENIZER_FILE!r}, or {VOCAB_FILE!r} with "
                    f"{MERGES_FILE!r}" + (f" (found only {found[0]!r})" if found else "")
                )
        return files

    @classmethod
    def _init_kwargs_from_files(
        cls, config: dict[str, Any], files: dict[str, Path | None], kwargs: dict[str, Any]
    ) -> dict[str, Any]:
        """The ``__init__`` kwargs transformers derives from the files (config, then user kwargs)."""
        init = dict(config)
        init.update(kwargs)
        if "additional_special_tokens" in init and not init.get("extra_special_tokens"):
            init["extra_special_tokens"] = init.pop("additional_special_tokens")

        if "added_tokens_decoder" in init:
            added = _added_tokens_by_id(init["added_tokens_decoder"])
            for idx, token in added.items():
                if not isinstance(token, AddedToken):
                    raise ValueError(f"added_tokens_decoder[{idx!r}] in the tokenizer config is not a token: {token!r}")
            init["added_tokens_decoder"] = added
        else:
            # Legacy layouts: special_tokens_map.json, added_tokens.json. Otherwise __init__ takes
            # tokenizer.json's own added tokens (the usual case).
            if files.get("special_tokens_map_file") is not None:
                special_map = _read_special_tokens_map(files["special_tokens_map_file"])
                for key, value in special_map.items():
                    if kwargs.get(key):
                        continue  # the caller's value wins
                    if key in ("extra_special_tokens", "additional_special_tokens"):
                        existing = list(init.get("extra_special_tokens") or [])
                        for token in value:
                            if token not in existing:
                                existing.append(token)
                        init["extra_special_tokens"] = existing
                    else:
                        init[key] = value
            if files.get("added_tokens_file") is not None:
                specials = {str(init[k]) for k in SPECIAL_TOKENS_ATTRIBUTES if init.get(k)}
                specials.update(str(t) for t in init.get("extra_special_tokens") or [])
                added = {}
                added_file = _read_json(files["added_tokens_file"], "added tokens file")
                if not isinstance(added_file, dict) or not all(
                    isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in added_file.values()
                ):
                    raise ValueError(f"{files['added_tokens_file']} must map token strings to ids >= 0")
                for content, idx in added_file.items():
                    is_special = content in specials
                    added[int(idx)] = AddedToken(content, normalized=not is_special, special=is_special)
                if files.get("tokenizer_file") is not None:
                    added.update(_read_tokenizer_json(files["tokenizer_file"])["added_tokens"])
                init["added_tokens_decoder"] = added
        init = _deserialized(init)

        # The files found take precedence over paths written in the (untrusted) config.
        for key in ("tokenizer_file", "vocab_file", "merges_file"):
            if kwargs.get(key) is None:
                init.pop(key, None)
                if files.get(key) is not None:
                    init[key] = str(files[key])
        return init

    # ------------------------------------------------------------------ saving

    def save_pretrained(
        self,
        save_directory: str | os.PathLike,
        legacy_format: bool | None = None,
        filename_prefix: str | None = None,
        push_to_hub: bool = False,
    ) -> tuple[str, ...]:
        """Write tokenizer_config.json and tokenizer.json as transformers 5.24 does; returns their paths.

        ``legacy_format`` is accepted and ignored (transformers ignores it for this tokenizer too).
        """
        if push_to_hub:
            raise NotImplementedError(
                "push_to_hub is not supported: save_pretrained(folder), then huggingface_hub.upload_folder()"
            )
        folder = Path(save_directory)
        if folder.is_file():
            raise NotADirectoryError(f"save_pretrained needs a folder, and {str(folder)!r} is a file")
        folder.mkdir(parents=True, exist_ok=True)
        prefix = f"{filename_prefix}-" if filename_prefix else ""
        config_path = folder / f"{prefix}{TOKENIZER_CONFIG_FILE}"
        tokenizer_path = folder / f"{prefix}{TOKENIZER_FILE}"

        # Each file replaced atomically, with the umask's permissions (neox.files).
        atomic_write_text(
            config_path, json.dumps(self._config_to_save(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"
        )
        self._tokenizer.no_padding()
        self._tokenizer.no_truncation()
        atomic_write_text(tokenizer_path, self._tokenizer.to_str(pretty=True))
        return (str(config_path), str(tokenizer_path))

    def _config_to_save(self) -> dict[str, Any]:
        config = copy.deepcopy(self.init_kwargs)
        for key in ("add_bos_token", "add_eos_token"):
            config.pop(key, None)
        for key in [*config, "model_max_length"]:
            if key in self._LIVE_CONFIG_KEYS:
                config[key] = getattr(self, key)
        config.update(self.special_tokens_map)
        if self._extra_special_tokens:
            config["extra_special_tokens"] = self.extra_special_tokens
        for key in (
            *self.vocab_files_names,
            "name_or_path",
            "special_tokens_map_file",
            "device_map",
            "slow_tokenizer_class",
            "files_loaded",
            "added_tokens_decoder",
            "additional_special_tokens",
        ):
            config.pop(key, None)
        # neox: keep what transformers would forget (see the module docstring).
        for side in ("padding_side", "truncation_side"):
            if getattr(self, side) != "right":
                config[side] = getattr(self, side)
        if self.add_bos_token or self.add_eos_token:
            config.update(add_bos_token=self.add_bos_token, add_eos_token=self.add_eos_token)
            logger.warning(
                "Saving add_bos_token=%s, add_eos_token=%s: transformers 5.24 ignores them in tokenizer_config.json, "
                "so pass them to its from_pretrained() when loading this tokenizer there",
                self.add_bos_token,
                self.add_eos_token,
            )
        config = _serializable(config)
        config["tokenizer_class"] = "GPTNeoXTokenizer"
        return config

    def save_vocabulary(self, save_directory: str | os.PathLike, filename_prefix: str | None = None) -> tuple[str, ...]:
        """Write the BPE model as vocab.json and merges.txt (without the added tokens)."""
        Path(save_directory).mkdir(parents=True, exist_ok=True)
        return tuple(self._tokenizer.model.save(str(save_directory), filename_prefix))

    # ------------------------------------------------------------------ special tokens

    @staticmethod
    def _check_token_type(key: str, value: Any) -> None:
        if not isinstance(value, (str, AddedToken)):
            raise TypeError(f"{key} must be a str or a tokenizers.AddedToken, not {type(value).__name__}")

    def _set_special_token(self, key: str, value: Any) -> None:
        if value is not None:
            self._check_token_type(key, value)
            if self._tokenizer.token_to_id(str(value)) is None:
                logger.warning(
                    "%s=%r is not in the vocabulary, so its id is the unk id; use "
                    "tokenizer.add_special_tokens({%r: %r}) to add it",
                    key,
                    str(value),
                    key,
                    str(value),
                )
        self._special_tokens[key] = value
        if key in ("bos_token", "eos_token"):
            self._update_post_processor()

    @property
    def extra_special_tokens(self) -> list[str]:
        """The special tokens besides the named ones (transformers 4's ``additional_special_tokens``)."""
        return [str(t) for t in self._extra_special_tokens]

    @extra_special_tokens.setter
    def extra_special_tokens(self, tokens: Sequence[TokenToAdd] | None) -> None:
        for token in tokens or []:
            self._check_token_type("extra_special_tokens", token)
        self._extra_special_tokens = list(tokens or [])

    additional_special_tokens = extra_special_tokens

    @property
    def extra_special_tokens_ids(self) -> list[int]:
        return self.convert_tokens_to_ids(self.extra_special_tokens)

    additional_special_tokens_ids = extra_special_tokens_ids

    @property
    def special_tokens_map(self) -> dict[str, str]:
        """The named special tokens that are set, as strings."""
        return {k: str(v) for k, v in self._special_tokens.items() if v is not None}

    @property
    def all_special_tokens(self) -> list[str]:
        """Named and extra special tokens, as unique strings in a stable order."""
        return list(dict.fromkeys([*self.special_tokens_map.values(), *self.extra_special_tokens]))

    @property
    def all_special_ids(self) -> list[int]:
        return self.convert_tokens_to_ids(self.all_special_tokens)

    def add_special_tokens(
        self, special_tokens_dict: Mapping[str, Any], replace_extra_special_tokens: bool = True
    ) -> int:
        """Set named special tokens (``{"pad_token": "[PAD]"}``) and/or ``extra_special_tokens``.

        Tokens missing from the vocabulary are added at its end; returns how many were added
        (resize the model's embeddings to ``len(tokenizer)`` after adding).
        """
        special_tokens_dict = dict(special_tokens_dict)
        if "additional_special_tokens" in special_tokens_dict and not special_tokens_dict.get("extra_special_tokens"):
            special_tokens_dict["extra_special_tokens"] = special_tokens_dict.pop("additional_special_tokens")
        to_add: list[AddedToken] = []
        for key, value in special_tokens_dict.items():
            if key == "extra_special_tokens":
                if not isinstance(value, (list, tuple)):
                    raise TypeError(
                        f"extra_special_tokens must be a list of str or AddedToken, not {type(value).__name__}"
                    )
                new = []
                for token in value:
                    self._check_token_type(key, token)
                    if replace_extra_special_tokens or str(token) not in self.extra_special_tokens:
                        new.append(self._special_added_token(token))
                if replace_extra_special_tokens and new:
                    self._extra_special_tokens = list(new)
                else:
                    self._extra_special_tokens.extend(new)
                to_add.extend(new)
            elif key in SPECIAL_TOKENS_ATTRIBUTES:
                self._check_token_type(key, value)
                self._special_tokens[key] = self._special_added_token(value)
                to_add.append(self._special_tokens[key])
            else:
                raise ValueError(
                    f"{key!r} is not a special-token key: use one of {', '.join(SPECIAL_TOKENS_ATTRIBUTES)}, "
                    "extra_special_tokens"
                )
        return self.add_tokens(to_add, special_tokens=True)  # also refreshes the bos/eos post-processor

    @staticmethod
    def _special_added_token(value: TokenToAdd) -> AddedToken:
        if isinstance(value, str):
            return AddedToken(value, rstrip=False, lstrip=False, normalized=False, special=True)
        return value

    def add_tokens(self, new_tokens: TokenToAdd | Sequence[TokenToAdd], special_tokens: bool = False) -> int:
        """Add tokens that the tokenizer then never splits; returns how many were new."""
        if not new_tokens:
            return 0
        if not isinstance(new_tokens, (list, tuple)):
            new_tokens = [new_tokens]
        for token in new_tokens:
            self._check_token_type("new token", token)
        if special_tokens:
            added = self._tokenizer.add_special_tokens(list(new_tokens))
        else:
            added = self._tokenizer.add_tokens(list(new_tokens))
        self._update_post_processor()
        return added

    @property
    def added_tokens_decoder(self) -> dict[int, AddedToken]:
        """``{id: AddedToken}`` of every added token (special tokens included), by id."""
        return dict(sorted(self._tokenizer.get_added_tokens_decoder().items()))

    @property
    def added_tokens_encoder(self) -> dict[str, int]:
        return {token.content: i for i, token in self.added_tokens_decoder.items()}

    def get_added_vocab(self) -> dict[str, int]:
        return self.added_tokens_encoder

    # ------------------------------------------------------------------ bos / eos wrapping

    @property
    def add_bos_token(self) -> bool:
        return self._add_bos_token

    @add_bos_token.setter
    def add_bos_token(self, value: bool) -> None:
        self._add_bos_token = bool(value)
        self._update_post_processor()

    @property
    def add_eos_token(self) -> bool:
        return self._add_eos_token

    @add_eos_token.setter
    def add_eos_token(self, value: bool) -> None:
        self._add_eos_token = bool(value)
        self._update_post_processor()

    def _update_post_processor(self) -> None:
        """transformers' TemplateProcessing: ``[bos] $A [eos]`` and ``[bos] $A [eos] [bos] $B [eos]``."""
        bos, eos = self.bos_token, self.eos_token
        if bos is None:
            self._add_bos_token = False
        if eos is None:
            self._add_eos_token = False
        add_bos, add_eos = self._add_bos_token, self._add_eos_token
        single = f"{(bos + ':0 ') if add_bos else ''}$A:0{(' ' + eos + ':0') if add_eos else ''}"
        pair = f"{single}{(' ' + bos + ':1') if add_bos else ''} $B:1{(' ' + eos + ':1') if add_eos else ''}"
        special = []
        if add_bos:
            special.append((bos, self.bos_token_id))
        if add_eos:
            special.append((eos, self.eos_token_id))
        self._tokenizer.post_processor = processors.TemplateProcessing(single=single, pair=pair, special_tokens=special)

    def num_special_tokens_to_add(self, pair: bool = False) -> int:
        return self._tokenizer.num_special_tokens_to_add(pair)

    def build_inputs_with_special_tokens(
        self, token_ids_0: list[int], token_ids_1: list[int] | None = None
    ) -> list[int]:
        """``token_ids_0`` (and ``token_ids_1``) wrapped in bos/eos as the post-processor does."""
        bos = [self.bos_token_id] if self.add_bos_token else []
        eos = [self.eos_token_id] if self.add_eos_token else []
        ids = bos + list(token_ids_0) + eos
        if token_ids_1 is not None:
            ids += bos + list(token_ids_1) + eos
        return ids

    def get_special_tokens_mask(
        self, token_ids_0: list[int], token_ids_1: list[int] | None = None, already_has_special_tokens: bool = False
    ) -> list[int]:
        """1 for a special token, 0 for a sequence token."""
        if already_has_special_tokens:
            if token_ids_1 is not None:
                raise ValueError("token_ids_1 must be None when the ids already hold their special tokens")
            special = set(self.all_special_ids)
            return [1 if int(i) in special else 0 for i in token_ids_0]
        bos, eos = [1] * self.add_bos_token, [1] * self.add_eos_token
        mask = bos + [0] * len(token_ids_0) + eos
        if token_ids_1 is not None:
            mask += bos + [0] * len(token_ids_1) + eos
        return mask

    # ------------------------------------------------------------------ vocabulary

    @property
    def vocab_size(self) -> int:
        """The size of the BPE vocabulary, without the added tokens (50254 for GPT-NeoX-20B)."""
        return self._tokenizer.get_vocab_size(with_added_tokens=False)

    def __len__(self) -> int:
        """The full vocabulary size, added tokens included: the model's embeddings need this many rows."""
        return self._tokenizer.get_vocab_size(with_added_tokens=True)

    def __bool__(self) -> bool:
        return True

    def get_vocab(self) -> dict[str, int]:
        return self._tokenizer.get_vocab(with_added_tokens=True)

    @property
    def vocab(self) -> dict[str, int]:
        return self.get_vocab()

    @property
    def backend_tokenizer(self) -> Tokenizer:
        """The ``tokenizers.Tokenizer`` doing the work."""
        return self._tokenizer

    @property
    def decoder(self) -> Any:
        return self._tokenizer.decoder

    @property
    def padding_side(self) -> str:
        return self._padding_side

    @padding_side.setter
    def padding_side(self, value: str) -> None:
        if value not in _SIDES:
            raise ValueError(f"padding_side must be 'left' or 'right', not {value!r}")
        self._padding_side = value

    @property
    def truncation_side(self) -> str:
        return self._truncation_side

    @truncation_side.setter
    def truncation_side(self, value: str) -> None:
        if value not in _SIDES:
            raise ValueError(f"truncation_side must be 'left' or 'right', not {value!r}")
        self._truncation_side = value

    def convert_tokens_to_ids(self, tokens: str | Sequence[str]) -> int | list[int] | None:
        """Token string(s) → id(s); a token not in the vocabulary gives the unk id."""
        if isinstance(tokens, str):
            index = self._tokenizer.token_to_id(tokens)
            return self.unk_token_id if index is None else index
        return [self.convert_tokens_to_ids(token) for token in tokens]

    def convert_ids_to_tokens(self, ids: Any, skip_special_tokens: bool = False) -> str | None | list[str | None]:
        """Id(s) (ints, lists, tensors, arrays) → token string(s); None for an unknown id."""
        ids = _to_py(ids)
        _check_ids(ids, "ids")
        if isinstance(ids, int):
            return self._tokenizer.id_to_token(ids)
        skip = set(self.all_special_ids) if skip_special_tokens else set()
        return [self._tokenizer.id_to_token(int(i)) for i in ids if int(i) not in skip]

    def convert_tokens_to_string(self, tokens: list[str]) -> str:
        return self._tokenizer.decoder.decode(tokens)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name_or_path={self.name_or_path!r}, vocab_size={self.vocab_size}, "
            f"len={len(self)}, model_max_length={self.model_max_length}, padding_side={self.padding_side!r}, "
            f"truncation_side={self.truncation_side!r}, special_tokens={self.special_tokens_map}, "
            f"add_bos_token={self.add_bos_token}, add_eos_token={self.add_eos_token}, "
            f"add_prefix_space={self.add_prefix_space})"
        )

    # ------------------------------------------------------------------ encoding

    def _strategies(
        self,
        padding: Any,
        truncation: Any,
        max_length: int | None,
        pad_to_multiple_of: int | None,
        verbose: bool = True,
    ) -> tuple[str, str, int | None]:
        """transformers' padding/truncation resolution: (padding, truncation, max_length)."""
        if max_length is not None and padding is False and truncation is None:
            truncation = "longest_first"  # a bare max_length truncates, as in transformers

        padding = getattr(padding, "value", padding)
        if padding is True:
            if verbose and max_length is not None and truncation in (None, False, "do_not_truncate"):
                logger.warning(
                    "max_length is ignored when padding=True and there is no truncation; "
                    "use padding='max_length' to pad to max_length"
                )
            padding = "longest"
        elif padding is False or padding is None:
            padding = "do_not_pad"
        elif padding not in _PADDING:
            raise ValueError(f"padding={padding!r}: use True, False, 'longest', 'max_length' or 'do_not_pad'")

        truncation = getattr(truncation, "value", truncation)
        if truncation is True:
            truncation = "longest_first"
        elif truncation is False or truncation is None:
            truncation = "do_not_truncate"
        elif truncation not in _TRUNCATION:
            raise ValueError(
                f"truncation={truncation!r}: use True, False, 'longest_first', 'only_first', 'only_second' "
                "or 'do_not_truncate'"
            )

        if max_length is None:
            has_model_length = self.model_max_length <= LARGE_INTEGER
            if padding == "max_length":
                if not has_model_length:
                    raise ValueError(
                        "padding='max_length' needs a length: pass max_length=, or give the tokenizer a "
                        "model_max_length (this one has none)"
                    )
                max_length = self.model_max_length
            if truncation != "do_not_truncate":
                if has_model_length:
                    max_length = self.model_max_length
                else:
                    self._warn_once(
                        "truncation-without-length",
                        "truncation is on but there is no max_length= and no model_max_length: not truncating",
                    )
                    truncation = "do_not_truncate"

        if padding != "do_not_pad" and (self.pad_token is None or self.pad_token_id is None or self.pad_token_id < 0):
            raise ValueError(
                "Asking to pad but the tokenizer has no padding token: set one, e.g. "
                "`tokenizer.pad_token = tokenizer.eos_token`, or add one with "
                "`tokenizer.add_special_tokens({'pad_token': '[PAD]'})`"
            )
        if (
            truncation != "do_not_truncate"
            and padding != "do_not_pad"
            and pad_to_multiple_of is not None
            and max_length is not None
            and max_length % pad_to_multiple_of != 0
        ):
            raise ValueError(
                f"Truncation and padding are both on, but the truncation length ({max_length}) is not a "
                f"multiple of pad_to_multiple_of ({pad_to_multiple_of})"
            )
        return padding, truncation, max_length

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            logger.warning(message)

    def __call__(
        self,
        text: TextInput | PreTokenizedInput | Sequence[Any] | None = None,
        text_pair: TextInput | PreTokenizedInput | Sequence[Any] | None = None,
        text_target: TextInput | PreTokenizedInput | Sequence[Any] | None = None,
        text_pair_target: TextInput | PreTokenizedInput | Sequence[Any] | None = None,
        add_special_tokens: bool = True,
        padding: bool | str = False,
        truncation: bool | str | None = None,
        max_length: int | None = None,
        stride: int = 0,
        is_split_into_words: bool = False,
        pad_to_multiple_of: int | None = None,
        padding_side: str | None = None,
        return_tensors: str | None = None,
        return_token_type_ids: bool | None = None,
        return_attention_mask: bool | None = None,
        return_overflowing_tokens: bool = False,
        return_special_tokens_mask: bool = False,
        return_offsets_mapping: bool = False,
        return_length: bool = False,
        verbose: bool = True,
        split_special_tokens: bool | None = None,
    ) -> BatchEncoding:
        """Tokenize a text, a pair, a batch of texts or of pairs, for the model.

        ``padding``: True / "longest" (to the longest in the batch), "max_length" (to
        ``max_length``, else ``model_max_length``), False. ``truncation``: True / "longest_first",
        "only_first", "only_second", False. ``return_tensors``: "pt", "np" or None (lists; a single
        text then gives flat lists). Returns a :class:`BatchEncoding` with ``input_ids`` and
        ``attention_mask`` (plus what the ``return_*`` flags ask for; ``labels`` with ``text_target``).
        """
        if text is None and text_target is None:
            raise ValueError("Pass the text to tokenize (text=, or text_target=)")
        strategy = self._strategies(padding, truncation, max_length, pad_to_multiple_of, verbose)
        options = dict(
            add_special_tokens=add_special_tokens,
            stride=stride,
            is_split_into_words=is_split_into_words,
            pad_to_multiple_of=pad_to_multiple_of,
            padding_side=padding_side,
            return_tensors=return_tensors,
            return_token_type_ids=return_token_type_ids,
            return_attention_mask=return_attention_mask,
            return_overflowing_tokens=return_overflowing_tokens,
            return_special_tokens_mask=return_special_tokens_mask,
            return_offsets_mapping=return_offsets_mapping,
            return_length=return_length,
            verbose=verbose,
            split_special_tokens=split_special_tokens,
        )
        encodings = None if text is None else self._encode(text, text_pair, *strategy, **options)
        if text_target is None:
            return encodings
        targets = self._encode(text_target, text_pair_target, *strategy, **options)
        if encodings is None:
            return targets
        encodings["labels"] = targets["input_ids"]
        return encodings

    def _encode(
        self,
        text: Any,
        text_pair: Any,
        padding: str,
        truncation: str,
        max_length: int | None,
        *,
        add_special_tokens: bool,
        stride: int,
        is_split_into_words: bool,
        pad_to_multiple_of: int | None,
        padding_side: str | None,
        return_tensors: str | None,
        return_token_type_ids: bool | None,
        return_attention_mask: bool | None,
        return_overflowing_tokens: bool,
        return_special_tokens_mask: bool,
        return_offsets_mapping: bool,
        return_length: bool,
        verbose: bool,
        split_special_tokens: bool | None,
    ) -> BatchEncoding:
        _check_text(text, "text")
        if text_pair is not None:
            _check_text(text_pair, "text_pair")
        if padding_side is not None and padding_side not in _SIDES:
            raise ValueError(f"padding_side must be 'left' or 'right', not {padding_side!r}")
        _tensor_kind(return_tensors)  # an unsupported kind fails before any work

        if is_split_into_words:
            batched = isinstance(text, (list, tuple)) and bool(text) and isinstance(text[0], (list, tuple))
        else:
            batched = isinstance(text, (list, tuple))
        if batched:
            if isinstance(text_pair, str):
                raise TypeError("When text is a batch, text_pair must be a list of the same length, not a str")
            if text_pair is not None and len(text) != len(text_pair):
                raise ValueError(f"text has {len(text)} examples but text_pair has {len(text_pair)}")
            inputs = list(zip(text, text_pair)) if text_pair is not None else list(text)
        else:
            inputs = [(text, text_pair)] if text_pair else [text]

        encodings = self._run_backend(
            inputs,
            add_special_tokens=add_special_tokens,
            is_pretokenized=is_split_into_words,
            split_special_tokens=split_special_tokens,
            padding=padding,
            truncation=truncation,
            max_length=max_length,
            stride=stride,
            pad_to_multiple_of=pad_to_multiple_of,
            padding_side=padding_side,
        )

        if return_token_type_ids is None:
            return_token_type_ids = "token_type_ids" in self.model_input_names
        if return_attention_mask is None:
            return_attention_mask = "attention_mask" in self.model_input_names
        fields = {
            "input_ids": lambda e: e.ids,
            "token_type_ids": lambda e: e.type_ids,
            "attention_mask": lambda e: e.attention_mask,
            "special_tokens_mask": lambda e: e.special_tokens_mask,
            "offset_mapping": lambda e: e.offsets,
            "length": lambda e: len(e.ids),
        }
        wanted = {
            "input_ids": True,
            "token_type_ids": return_token_type_ids,
            "attention_mask": return_attention_mask,
            "special_tokens_mask": return_special_tokens_mask,
            "offset_mapping": return_offsets_mapping,
            "length": return_length,
        }
        rows: list[Encoding] = []
        sample_of_row: list[int] = []
        for i, encoding in enumerate(encodings):
            group = [encoding, *encoding.overflowing] if return_overflowing_tokens else [encoding]
            rows.extend(group)
            sample_of_row.extend([i] * len(group))
        data = {key: [get(e) for e in rows] for key, get in fields.items() if wanted[key]}
        if return_overflowing_tokens:
            data["overflow_to_sample_mapping"] = sample_of_row
        if max_length is None and verbose:
            for ids in data["input_ids"]:
                if len(ids) > self.model_max_length:
                    self._warn_once(
                        "too-long",
                        f"Token indices sequence length is longer than the specified maximum sequence length for "
                        f"this model ({len(ids)} > {self.model_max_length}). Running this sequence through the "
                        "model will result in indexing errors",
                    )

        if not batched and return_tensors is None and not return_overflowing_tokens:
            data = {k: (v[0] if v and isinstance(v[0], list) else v) for k, v in data.items()}
            return BatchEncoding(data, rows)
        return BatchEncoding(data, rows, tensor_type=return_tensors)

    def _run_backend(
        self,
        inputs: list[Any],
        *,
        add_special_tokens: bool,
        is_pretokenized: bool,
        split_special_tokens: bool | None,
        padding: str = "do_not_pad",
        truncation: str = "do_not_truncate",
        max_length: int | None = None,
        stride: int = 0,
        pad_to_multiple_of: int | None = None,
        padding_side: str | None = None,
    ) -> list[Encoding]:
        """Configure the backend's padding/truncation for this call and encode the batch."""
        backend = self._tokenizer
        if truncation == "do_not_truncate":
            backend.no_truncation()
        else:
            backend.enable_truncation(
                max_length=max_length, stride=stride, strategy=truncation, direction=self.truncation_side
            )
        if padding == "do_not_pad":
            backend.no_padding()
        else:
            backend.enable_padding(
                length=max_length if padding == "max_length" else None,
                direction=padding_side or self.padding_side,
                pad_id=self.pad_token_id,
                pad_token=self.pad_token,
                pad_type_id=0,
                pad_to_multiple_of=pad_to_multiple_of,
            )
        split = self.split_special_tokens if split_special_tokens is None else bool(split_special_tokens)
        backend.encode_special_tokens = split
        try:
            return backend.encode_batch(inputs, add_special_tokens=add_special_tokens, is_pretokenized=is_pretokenized)
        except Exception as err:  # the Rust backend raises bare Exceptions
            if "runcat" in str(err):
                raise ValueError(f"truncation={truncation!r} to max_length={max_length}: {err}") from None
            _explain_bad_text(inputs)  # raises a ValueError naming the element, when it finds one
            raise

    def encode(
        self,
        text: TextInput | PreTokenizedInput,
        text_pair: TextInput | PreTokenizedInput | None = None,
        add_special_tokens: bool = True,
        padding: bool | str = False,
        truncation: bool | str | None = None,
        max_length: int | None = None,
        stride: int = 0,
        padding_side: str | None = None,
        return_tensors: str | None = None,
        **kwargs: Any,
    ) -> Any:
        """The ``input_ids`` of ``self(text, ...)``; other keyword arguments are ``__call__``'s."""
        return self(
            text,
            text_pair,
            add_special_tokens=add_special_tokens,
            padding=padding,
            truncation=truncation,
            max_length=max_length,
            stride=stride,
            padding_side=padding_side,
            return_tensors=return_tensors,
            **kwargs,
        )["input_ids"]

    def tokenize(
        self,
        text: TextInput,
        pair: TextInput | None = None,
        add_special_tokens: bool = False,
        *,
        is_split_into_words: bool = False,
        split_special_tokens: bool | None = None,
    ) -> list[str]:
        """The token strings of ``text`` (byte-level: a leading space shows as ``Ġ``)."""
        _check_text(text, "text")
        inputs = [(text, pair)] if pair else [text]
        (encoding,) = self._run_backend(
            inputs,
            add_special_tokens=add_special_tokens,
            is_pretokenized=is_split_into_words,
            split_special_tokens=split_special_tokens,
        )
        return encoding.tokens

    def pad(
        self,
        encoded_inputs: Any,
        padding: bool | str = True,
        max_length: int | None = None,
        pad_to_multiple_of: int | None = None,
        padding_side: str | None = None,
        return_attention_mask: bool | None = None,
        return_tensors: str | None = None,
        verbose: bool = True,
    ) -> BatchEncoding:
        """Pad encoded inputs (one dict, a dict of lists, or a list of dicts, e.g. in a collate_fn).

        Lists, numpy arrays and torch tensors are accepted; tensors in give tensors out unless
        ``return_tensors`` says otherwise.
        """
        if isinstance(encoded_inputs, (list, tuple)) and encoded_inputs and isinstance(encoded_inputs[0], Mapping):
            encoded_inputs = {key: [example[key] for example in encoded_inputs] for key in encoded_inputs[0].keys()}
        if not isinstance(encoded_inputs, Mapping):
            raise TypeError(
                f"pad() takes a dict or a list of dicts of encoded inputs, not {type(encoded_inputs).__name__}"
            )
        main = self.model_input_names[0]
        if main not in encoded_inputs:
            raise ValueError(f"pad() needs {main!r} in the inputs; got keys {list(encoded_inputs.keys())}")
        if padding_side is not None and padding_side not in _SIDES:
            raise ValueError(f"padding_side must be 'left' or 'right', not {padding_side!r}")
        required = encoded_inputs[main]
        if required is None or len(required) == 0:
            inputs = dict(encoded_inputs)
            if return_attention_mask:
                inputs["attention_mask"] = []
            return BatchEncoding(inputs, tensor_type=return_tensors)

        first = required[0]
        if isinstance(first, (list, tuple)):
            first = next((item[0] for item in required if len(item)), first)
        if not isinstance(first, (int, list, tuple)):
            module = type(first).__module__.split(".")[0]
            if return_tensors is None:
                return_tensors = "pt" if module == "torch" else "np" if module == "numpy" else None
        inputs = {key: _to_py(value) for key, value in encoded_inputs.items()}

        strategy, _, max_length = self._strategies(padding, False, max_length, None, verbose)
        return_mask = return_attention_mask
        required = inputs[main]
        if not isinstance(required[0], (list, tuple)):
            padded = self._pad_one(inputs, max_length, strategy, pad_to_multiple_of, padding_side, return_mask)
            return BatchEncoding(padded, tensor_type=return_tensors)

        size = len(required)
        if any(len(v) != size for v in inputs.values()):
            raise ValueError("pad(): the inputs hold different numbers of examples under different keys")
        if strategy == "longest":
            max_length, strategy = max(len(ids) for ids in required), "max_length"
        batch: dict[str, list[Any]] = {}
        for i in range(size):
            example = {key: value[i] for key, value in inputs.items()}
            padded = self._pad_one(example, max_length, strategy, pad_to_multiple_of, padding_side, return_mask)
            for key, value in padded.items():
                batch.setdefault(key, []).append(value)
        return BatchEncoding(batch, tensor_type=return_tensors)

    def _pad_one(
        self,
        inputs: dict[str, Any],
        max_length: int | None,
        strategy: str,
        pad_to_multiple_of: int | None,
        padding_side: str | None,
        return_attention_mask: bool | None,
    ) -> dict[str, Any]:
        if return_attention_mask is None:
            return_attention_mask = "attention_mask" in self.model_input_names
        main = self.model_input_names[0]
        ids = list(inputs[main])
        if strategy == "longest":
            max_length = len(ids)
        if max_length is not None and pad_to_multiple_of is not None and max_length % pad_to_multiple_of:
            max_length = (max_length // pad_to_multiple_of + 1) * pad_to_multiple_of
        if return_attention_mask and "attention_mask" not in inputs:
            inputs["attention_mask"] = [1] * len(ids)
        if strategy == "do_not_pad" or max_length is None or len(ids) >= max_length:
            return inputs
        n = max_length - len(ids)
        fill = {
            main: self.pad_token_id,
            "attention_mask": 0,
            "token_type_ids": 0,
            "special_tokens_mask": 1,
        }
        left = (padding_side or self.padding_side) == "left"
        for key, value in fill.items():
            if key in inputs and (key != "attention_mask" or return_attention_mask):
                pad = [value] * n
                inputs[key] = pad + list(inputs[key]) if left else list(inputs[key]) + pad
        return inputs

    # ------------------------------------------------------------------ decoding

    def decode(
        self,
        token_ids: Any,
        skip_special_tokens: bool = False,
        clean_up_tokenization_spaces: bool | None = None,
    ) -> str | list[str]:
        """Ids (an int, a list, a tensor or array; or a batch of them) → text (or a list of texts)."""
        token_ids = _to_py(token_ids)
        if isinstance(token_ids, Mapping):
            token_ids = token_ids["input_ids"]
        _check_ids(token_ids, "token_ids")
        if isinstance(token_ids, list) and token_ids and isinstance(token_ids[0], (list, tuple)):
            texts = self._tokenizer.decode_batch([list(s) for s in token_ids], skip_special_tokens=skip_special_tokens)
            return [self._clean_up(t, clean_up_tokenization_spaces) for t in texts]
        if isinstance(token_ids, int):
            token_ids = [token_ids]
        text = self._tokenizer.decode(list(token_ids), skip_special_tokens=skip_special_tokens)
        return self._clean_up(text, clean_up_tokenization_spaces)

    def batch_decode(
        self,
        sequences: Any,
        skip_special_tokens: bool = False,
        clean_up_tokenization_spaces: bool | None = None,
    ) -> list[str]:
        """A batch of id sequences → a list of texts."""
        sequences = _to_py(sequences)
        if isinstance(sequences, Mapping):
            sequences = sequences["input_ids"]
        if isinstance(sequences, int):
            sequences = [sequences]
        if len(sequences) == 0:
            return []
        result = self.decode(sequences, skip_special_tokens, clean_up_tokenization_spaces)
        if isinstance(result, str):
            self._warn_once("batch-decode-single", "batch_decode() got a single sequence; use decode() for that")
            return [result]
        return result

    def _clean_up(self, text: str, clean_up_tokenization_spaces: bool | None) -> str:
        if clean_up_tokenization_spaces is None:
            clean_up_tokenization_spaces = self.clean_up_tokenization_spaces
        if not clean_up_tokenization_spaces:
            return text
        if not self.clean_up_tokenization_spaces_for_bpe_even_though_it_will_corrupt_output:
            self._warn_once(
                "clean-up",
                "Ignoring clean_up_tokenization_spaces=True for the BPE tokenizer GPTNeoXTokenizerFast, as "
                "transformers does: the clean-up is meant for WordPiece and strips real spaces before punctuation. "
                "Set clean_up_tokenization_spaces_for_bpe_even_though_it_will_corrupt_output=True to force it.",
            )
            return text
        return self.clean_up_tokenization(text)

    @staticmethod
    def clean_up_tokenization(text: str) -> str:
        """transformers' WordPiece-era clean-up of spaces before punctuation and contractions."""
        for before, after in (
            (" .", "."),
            (" ?", "?"),
            (" !", "!"),
            (" ,", ","),
            (" ' ", "'"),
            (" n't", "n't"),
            (" 'm", "'m"),
            (" 's", "'s"),
            (" 've", "'ve"),
            (" 're", "'re"),
        ):
            text = text.replace(before, after)
        return text



def _flag(value: Any, name: str) -> bool:
    """A boolean setting; None (unset) is False. Strings such as "false" are refused, not truthy."""
    if value is None:
        return False
    if not isinstance(value, (bool, int)) or value not in (0, 1):
        raise ValueError(f"{name} must be true or false, got {value!r}")
    return bool(value)


def _max_length(value: Any) -> int:
    """model_max_length: a non-negative integer; None or transformers' 1e30 mean "no limit"."""
    if value is None:
        return VERY_LARGE_INTEGER
    if isinstance(value, float) and value.is_integer() and value >= 0:
        value = int(value)  # tokenizer_config.json files written by Python 2 era code hold 1e30
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"model_max_length must be a non-negative integer, got {value!r}")
    return value


def _input_names(value: Any, default: Sequence[str]) -> list[str]:
    if value is None:
        return list(default)
    if isinstance(value, str) or not isinstance(value, Sequence) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"model_input_names must be a list of strings, got {value!r}")
    return list(value or default)


def _added_tokens_by_id(decoder: Any) -> dict[int, Any]:
    """``added_tokens_decoder`` ({id: token}) with integer ids >= 0 and tokens that are tokens."""
    if decoder is None:
        return {}
    if not isinstance(decoder, Mapping):
        raise ValueError(f"added_tokens_decoder must map token ids to tokens, got {type(decoder).__name__}")
    out = {}
    for idx, token in decoder.items():
        try:
            i = int(idx)
        except (TypeError, ValueError):
            raise ValueError(f"added_tokens_decoder has the key {idx!r}, not a token id") from None
        if isinstance(idx, (bool, float)) or i < 0:
            raise ValueError(f"added_tokens_decoder has the key {idx!r}, not a token id")
        token = _as_added_token(token)
        if not isinstance(token, (str, AddedToken)):
            raise ValueError(f"added_tokens_decoder[{idx!r}] is not a token: {token!r}")
        out[i] = token
    return out



#: The backend stores ids as unsigned 32-bit integers.
_MAX_ID = 2**32


def _check_ids(ids: Any, name: str) -> None:
    """An id, a list of ids, or a batch of lists: integers in [0, 2**32), else a ValueError naming ``name``.

    Ids past the vocabulary but inside that range decode to "" as in transformers (models pad their
    embedding beyond the tokenizer's vocabulary, and a sampled padding id must not crash a decode).
    """
    def bad(value: Any) -> str | None:
        if isinstance(value, bool) or not isinstance(value, int):
            return f"{name} must hold integer token ids, got {value!r} ({type(value).__name__})"
        if not 0 <= value < _MAX_ID:
            return f"{name} holds {value}, not a token id (ids are integers in [0, 2**32))"
        return None

    if isinstance(ids, (list, tuple)):
        for item in ids:
            if isinstance(item, (list, tuple)):
                for sub in item:
                    problem = bad(sub)
                    if problem:
                        raise ValueError(problem)
            else:
                problem = bad(item)
                if problem:
                    raise ValueError(problem)
    else:
        problem = bad(ids)
        if problem:
            raise ValueError(problem)


def _explain_bad_text(inputs: list[Any]) -> None:
    """After the backend refused a batch: name the element that is not text, or the lone surrogate."""

    def walk(value: Any, where: str) -> None:
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError as e:
                raise ValueError(
                    f"{where} holds the lone surrogate {value[e.start]!r} at character {e.start}: not valid "
                    "Unicode text (decode the source bytes with errors='replace' to keep going)"
                ) from None
        elif isinstance(value, (list, tuple)):
            for i, item in enumerate(value):
                walk(item, f"{where}[{i}]")
        else:
            raise ValueError(f"{where} is a {type(value).__name__} ({value!r:.40}); text must be str")

    for i, item in enumerate(inputs):
        walk(item, f"text[{i}]" if len(inputs) > 1 else "text")


def _check_text(text: Any, name: str) -> None:
    """str, list[str], list[list[str]] or list of (str, str) pairs (tuples or lists)."""

    def ok(value: Any, depth: int) -> bool:
        if isinstance(value, str):
            return True
        if isinstance(value, (list, tuple)) and depth < 3:
            return len(value) == 0 or ok(value[0], depth + 1)
        return False

    if not ok(text, 0):
        raise ValueError(
            f"{name} must be a str, a list of str (a batch, or one pre-tokenized example), a list of lists of str "
            f"(pre-tokenized batch) or a list of (text, text_pair) pairs; got {type(text).__name__}"
        )
