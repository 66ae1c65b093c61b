"""GPTNeoXConfig: one dataclass whose field names are config.json's keys.

Checkpoints on the Hub spell rotary settings two ways, and both are read:

* classic (transformers 4, the Pythia suite, gpt-neox-20b): ``rotary_pct``, ``rotary_emb_base``,
  ``rope_scaling = {"type" | "rope_type": "linear" | "dynamic", "factor": f}``;
* transformers 5: ``rope_parameters = {"rope_type", "rope_theta", "partial_rotary_factor", "factor"}``.

The classic names are the fields (they are the documented attributes); ``rope_parameters`` is a
derived property. ``to_dict`` writes both spellings so every reader, old or new, sees the same
model. Keys this class does not know are kept in ``extra`` and written back unchanged.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from .files import atomic_write_text
from .hub import HubOptions, resolve_file

logger = logging.getLogger(__name__)

__all__ = ["GPTNeoXConfig", "ACTIVATIONS"]

CONFIG_NAME = "config.json"

#: hidden_act values understood by the MLP (see ``modeling.activation``).
ACTIVATIONS = ("gelu", "gelu_fast", "gelu_new", "gelu_pytorch_tanh", "relu", "silu", "swish")

ROPE_TYPES = ("default", "linear", "dynamic")

# Keys that only describe the file, not the model; accepted and not kept as "unknown".
_IGNORED_KEYS = {"transformers_version", "model_type", "_name_or_path", "_commit_hash", "_attn_implementation_autoset"}


@dataclass(init=False, repr=False, eq=False)
class GPTNeoXConfig:
    """Configuration of a GPT-NeoX model; defaults are EleutherAI/gpt-neox-20b's."""

    vocab_size: int = 50432
    hidden_size: int = 6144
    num_hidden_layers: int = 44
    num_attention_heads: int = 64
    intermediate_size: int = 24576
    hidden_act: str = "gelu"
    rotary_pct: float = 0.25
    rotary_emb_base: float = 10000.0
    rope_scaling: dict | None = None
    attention_dropout: float = 0.0
    hidden_dropout: float = 0.0
    classifier_dropout: float = 0.1
    max_position_embeddings: int = 2048
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-5
    use_cache: bool = True
    bos_token_id: int | None = 0
    eos_token_id: int | list[int] | None = 2
    pad_token_id: int | None = None
    tie_word_embeddings: bool = False
    use_parallel_residual: bool = True
    attention_bias: bool = True
    is_decoder: bool = False
    output_attentions: bool = False
    output_hidden_states: bool = False
    return_dict: bool = True
    architectures: list[str] | None = None
    #: dtype the checkpoint was saved in; read as a torch.dtype (as in transformers 5), written to
    #: config.json as its name ("float32", "float16", "bfloat16"). `dtype="auto"` loads in it.
    dtype: Any = None
    #: "sdpa" (default) or "eager" (the reference path; returns attention probabilities).
    attn_implementation: str = "sdpa"
    #: Unknown config.json keys, kept so that a save writes them back.
    extra: dict[str, Any] = field(default_factory=dict)
    name_or_path: str = ""

    model_type = "gpt_neox"
    #: transformers' PreTrainedConfig class attributes that clients read (a decoder-only model
    #: with no nested configs).
    is_encoder_decoder = False
    sub_configs: ClassVar[dict[str, type]] = {}
    sub_configs_defaults: ClassVar[dict[str, Any]] = {}
    attribute_map: ClassVar[dict[str, str]] = {}

    # ------------------------------------------------------------------ construction

    def __init__(self, **kwargs: Any) -> None:
        # Hand-written so that every spelling found on the Hub lands on one field; unknown keys
        # go to `extra` instead of raising, as in transformers (fine-tunes add their own keys).
        kwargs = dict(kwargs)
        rope_parameters = kwargs.pop("rope_parameters", None)
        for legacy, new in (("torch_dtype", "dtype"), ("_attn_implementation", "attn_implementation")):
            if legacy in kwargs:
                value = kwargs.pop(legacy)
                kwargs.setdefault(new, value)
        names = {f.name for f in dataclasses.fields(self)}
        extra = dict(kwargs.pop("extra", None) or {})
        for f in dataclasses.fields(self):
            if f.name in kwargs:
                value = kwargs.pop(f.name)
            elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
                value = f.default_factory()  # type: ignore[misc]
            else:
                value = f.default
            setattr(self, f.name, value)
        for key in list(kwargs):
            if key in _IGNORED_KEYS:
                kwargs.pop(key)
        extra.update(kwargs)
        self.extra = extra
        assert not (set(self.extra) & names)
        if rope_parameters is not None:
            # transformers 5 lets rope_parameters win over the classic keys; so do we.
            self._read_rope_parameters(rope_parameters)
        if isinstance(self.rope_scaling, dict):
            self.rope_scaling = _normalise_rope_scaling(self.rope_scaling)
        self.validate()

    def _read_rope_parameters(self, params: Any) -> None:
        if not isinstance(params, dict):
            raise ValueError(f"rope_parameters must be a JSON object, got {type(params).__name__}")
        params = {k: v for k, v in params.items() if k not in ("type", "rope_type")} | {
            "rope_type": params.get("rope_type", params.get("type", "default"))
        }
        if "rope_theta" in params:
            self.rotary_emb_base = params.pop("rope_theta")
        if "partial_rotary_factor" in params:
            self.rotary_pct = params.pop("partial_rotary_factor")
        rope_type = params.get("rope_type", params.get("type", "default"))
        if rope_type != "default" and self.rope_scaling is None:
            self.rope_scaling = params

    # ------------------------------------------------------------------ derived values

    @property
    def head_size(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def rotary_ndims(self) -> int:
        """Rotary dims per head: GPT-NeoX rotates only the first ``rotary_pct`` of each head."""
        return int(self.head_size * self.rotary_pct)

    @property
    def rope_type(self) -> str:
        return (self.rope_scaling or {}).get("rope_type", "default")

    @property
    def rope_factor(self) -> float:
        return float((self.rope_scaling or {}).get("factor", 1.0))

    @property
    def rope_theta(self) -> float:
        return self.rotary_emb_base

    @property
    def partial_rotary_factor(self) -> float:
        return self.rotary_pct

    @property
    def rope_parameters(self) -> dict[str, Any]:
        """The transformers 5 spelling of the rotary settings.

        Writable, as in transformers: assigning a dict replaces the rotary settings, and an item
        written into the returned dict (``config.rope_parameters["rope_theta"] = 5e5``) updates
        the config too.
        """
        params = dict(self.rope_scaling or {})
        params.pop("type", None)
        params.update(
            rope_type=self.rope_type, rope_theta=self.rotary_emb_base, partial_rotary_factor=self.rotary_pct
        )
        return _RopeParameters(self, params)

    @rope_parameters.setter
    def rope_parameters(self, params: dict[str, Any]) -> None:
        old = (self.rope_scaling, self.rotary_emb_base, self.rotary_pct)
        self.rope_scaling = None
        try:
            self._read_rope_parameters(params)
            if isinstance(self.rope_scaling, dict):
                self.rope_scaling = _normalise_rope_scaling(self.rope_scaling)
            self.validate()
        except ValueError:
            self.rope_scaling, self.rotary_emb_base, self.rotary_pct = old
            raise

    @property
    def num_labels(self) -> int:  # read by some HF utilities; causal LMs have none
        return int(self.extra.get("num_labels", 2))

    @property
    def use_return_dict(self) -> bool:
        return self.return_dict

    @property
    def _attn_implementation(self) -> str:
        return self.attn_implementation

    @_attn_implementation.setter
    def _attn_implementation(self, value: str) -> None:
        if value not in ("sdpa", "eager"):
            raise ValueError(f"attn_implementation must be 'sdpa' or 'eager', got {value!r}")
        self.attn_implementation = value

    @property
    def torch_dtype(self) -> Any:
        """transformers 4's name for ``dtype``."""
        return self.dtype

    @torch_dtype.setter
    def torch_dtype(self, value: Any) -> None:
        self.dtype = value

    @property
    def _name_or_path(self) -> str:
        return self.name_or_path

    @_name_or_path.setter
    def _name_or_path(self, value: str | os.PathLike) -> None:
        self.name_or_path = str(value)

    def get_text_config(self, decoder: bool | None = None, encoder: bool | None = None) -> "GPTNeoXConfig":
        """The config of the text model: this config itself (GPT-NeoX has no nested configs)."""
        return self

    def __getattr__(self, name: str) -> Any:
        # Unknown config.json keys stay readable as attributes, as in transformers.
        if name != "extra" and "extra" in self.__dict__ and name in self.__dict__["extra"]:
            return self.__dict__["extra"][name]
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")

    # ------------------------------------------------------------------ validation

    def validate(self) -> None:
        """Raise ValueError naming the field for any value no model can be built from."""
        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                     "intermediate_size", "max_position_embeddings"):
            value = getattr(self, name)
            if not _is_int(value):
                raise ValueError(f"config.{name} must be an integer, got {value!r} ({type(value).__name__})")
            if value <= 0:
                raise ValueError(f"config.{name} must be positive, got {value}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"config.hidden_size ({self.hidden_size}) must be divisible by "
                f"config.num_attention_heads ({self.num_attention_heads})"
            )
        for name in ("rotary_pct", "rotary_emb_base", "attention_dropout", "hidden_dropout",
                     "classifier_dropout", "initializer_range", "layer_norm_eps"):
            value = getattr(self, name)
            if not _is_number(value):
                raise ValueError(f"config.{name} must be a number, got {value!r} ({type(value).__name__})")
        if not 0.0 < self.rotary_pct <= 1.0:
            raise ValueError(f"config.rotary_pct must be in (0, 1], got {self.rotary_pct}")
        if self.rotary_ndims % 2:
            raise ValueError(
                f"rotary dims per head (head_size {self.head_size} × rotary_pct {self.rotary_pct} = "
                f"{self.rotary_ndims}) must be even"
            )
        if self.rotary_emb_base <= 0:
            raise ValueError(f"config.rotary_emb_base must be positive, got {self.rotary_emb_base}")
        if self.layer_norm_eps <= 0:
            raise ValueError(f"config.layer_norm_eps must be positive, got {self.layer_norm_eps}")
        for name in ("attention_dropout", "hidden_dropout", "classifier_dropout"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"config.{name} must be in [0, 1], got {getattr(self, name)}")
        if not isinstance(self.hidden_act, str) or self.hidden_act not in ACTIVATIONS:
            raise ValueError(f"config.hidden_act {self.hidden_act!r} is not supported; use one of {ACTIVATIONS}")
        for name in ("use_cache", "tie_word_embeddings", "use_parallel_residual", "attention_bias", "is_decoder",
                     "output_attentions", "output_hidden_states", "return_dict"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"config.{name} must be true or false, got {getattr(self, name)!r}")
        for name in ("bos_token_id", "pad_token_id"):
            value = getattr(self, name)
            if value is not None and not _is_int(value):
                raise ValueError(f"config.{name} must be an integer or null, got {value!r}")
        eos = self.eos_token_id
        if eos is not None and not _is_int(eos) and not (isinstance(eos, list) and all(_is_int(e) for e in eos)):
            raise ValueError(f"config.eos_token_id must be an integer, a list of integers or null, got {eos!r}")
        if self.rope_scaling is not None:
            if not isinstance(self.rope_scaling, dict):
                raise ValueError(f"config.rope_scaling must be a JSON object or null, got {self.rope_scaling!r}")
            if self.rope_type not in ROPE_TYPES:
                raise ValueError(f"rope type {self.rope_type!r} is not supported; use one of {ROPE_TYPES}")
            if self.rope_type != "default":
                factor = self.rope_scaling.get("factor")
                if not _is_number(factor) or factor < 1.0:
                    raise ValueError(f"rope scaling factor must be a number >= 1, got {factor!r}")
            if self.rope_type == "dynamic" and self.rotary_ndims < 4:
                # The NTK base is base · (…)^(r / (r − 2)): undefined for r = 2.
                raise ValueError(
                    f"dynamic rope scaling needs at least 4 rotary dims per head; head_size {self.head_size} × "
                    f"rotary_pct {self.rotary_pct} gives {self.rotary_ndims}"
                )
        if self.attn_implementation not in ("sdpa", "eager"):
            raise ValueError(f"attn_implementation must be 'sdpa' or 'eager', got {self.attn_implementation!r}")

    # ------------------------------------------------------------------ serialisation

    def to_dict(self) -> dict[str, Any]:
        """config.json's content: both rotary spellings, the unknown keys, then this file's own."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            if f.name in ("extra", "name_or_path", "attn_implementation"):
                continue
            out[f.name] = copy.deepcopy(getattr(self, f.name))
        out["dtype"] = self.__dict__.get("_dtype")
        if out["architectures"] is None:
            out.pop("architectures")
        # Classic keys for transformers 4 readers; rope_parameters for transformers 5.
        out["rope_parameters"] = self.rope_parameters
        if self.rope_scaling is not None:
            # transformers 4.2x–4.4x validate rope_scaling as exactly {"type", "factor"}.
            out["rope_scaling"] = {"type": self.rope_type, "factor": self.rope_factor}
        out["torch_dtype"] = out["dtype"]
        out.update(copy.deepcopy(self.extra))
        out["model_type"] = self.model_type
        return dict(sorted(out.items()))

    def to_diff_dict(self) -> dict[str, Any]:
        """``to_dict()`` less the values equal to a default config's (``model_type`` always kept)."""
        default = GPTNeoXConfig().to_dict()
        return {k: v for k, v in self.to_dict().items() if k not in default or default[k] != v or k == "model_type"}

    def to_json_string(self, use_diff: bool = False) -> str:
        data = self.to_diff_dict() if use_diff else self.to_dict()
        return json.dumps(data, indent=2, sort_keys=True) + "\n"

    def to_json_file(self, path: str | os.PathLike) -> None:
        atomic_write_text(Path(path), self.to_json_string())

    @classmethod
    def from_dict(
        cls, data: dict[str, Any], return_unused_kwargs: bool = False, **overrides: Any
    ) -> "GPTNeoXConfig | tuple[GPTNeoXConfig, dict[str, Any]]":
        """A config from config.json's content; keyword arguments override its values.

        With ``return_unused_kwargs=True`` (as transformers' AutoConfig calls it), keyword
        arguments that are not config keys are returned, as ``(config, unused)``, instead of
        being kept as extra keys.
        """
        if not isinstance(data, dict):
            raise ValueError(f"a config must be a JSON object, got {type(data).__name__}")
        unused: dict[str, Any] = {}
        if return_unused_kwargs:
            known = _known_keys()
            unused = {k: v for k, v in overrides.items() if k not in known}
            overrides = {k: v for k, v in overrides.items() if k in known}
        for key in ("dtype", "torch_dtype"):
            if overrides.get(key) == "auto":  # transformers' loader default: keep the file's
                overrides.pop(key)
        config = cls(**{**data, **overrides})
        return (config, unused) if return_unused_kwargs else config

    @classmethod
    def from_json_file(cls, path: str | os.PathLike) -> "GPTNeoXConfig":
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not valid JSON: {e}") from None
        try:
            return cls.from_dict(data)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs: Any) -> "GPTNeoXConfig":
        """Read config.json from a folder or a Hub repo id; keyword arguments override its values."""
        options = HubOptions.pop_from(kwargs)
        return_unused_kwargs = kwargs.pop("return_unused_kwargs", False)
        path = resolve_file(pretrained_model_name_or_path, CONFIG_NAME, options, required=True)
        config = cls.from_json_file(path)
        config.name_or_path = str(pretrained_model_name_or_path)
        known = _known_keys()
        overrides = {k: v for k, v in kwargs.items() if k in known}
        unused = {k: v for k, v in kwargs.items() if k not in known}
        if overrides:
            config = config._with_overrides(overrides)
            config.name_or_path = str(pretrained_model_name_or_path)
        if unused and not return_unused_kwargs:
            raise TypeError(f"GPTNeoXConfig.from_pretrained got unknown arguments: {sorted(unused)}")
        return (config, unused) if return_unused_kwargs else config

    def _with_overrides(self, overrides: dict[str, Any]) -> "GPTNeoXConfig":
        """A copy with ``overrides`` applied, whichever spelling they use.

        to_dict spells dtype and the rotary settings twice; the spelling an override does not
        use is dropped first, or the stale copy (rope_parameters wins over the classic keys,
        dtype over torch_dtype) would silently undo the override.
        """
        data = self.to_dict()
        if {"dtype", "torch_dtype"} & overrides.keys():
            data.pop("dtype")
            data.pop("torch_dtype")
        if "rope_parameters" in overrides:
            for key in ("rotary_pct", "rotary_emb_base", "rope_scaling"):
                data.pop(key)
        elif {"rotary_pct", "rotary_emb_base", "rope_scaling"} & overrides.keys():
            data.pop("rope_parameters")
            data["rope_scaling"] = copy.deepcopy(self.rope_scaling)
        return type(self).from_dict({**data, **overrides})

    def save_pretrained(self, save_directory: str | os.PathLike) -> None:
        save_directory = Path(save_directory)
        if save_directory.exists() and not save_directory.is_dir():
            raise ValueError(f"save_pretrained: {save_directory} exists and is not a folder")
        save_directory.mkdir(parents=True, exist_ok=True)
        self.to_json_file(save_directory / CONFIG_NAME)

    def __repr__(self) -> str:
        return f"GPTNeoXConfig {self.to_json_string(use_diff=True)}"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, GPTNeoXConfig) and self.to_dict() == other.to_dict()


def _get_dtype(self: GPTNeoXConfig) -> Any:
    name = self.__dict__.get("_dtype")
    if name is None:
        return None
    import torch  # lazily: reading a config needs no torch until a dtype is asked for

    value = getattr(torch, name, None)
    return value if isinstance(value, torch.dtype) else name


def _set_dtype(self: GPTNeoXConfig, value: Any) -> None:
    self.__dict__["_dtype"] = _dtype_name(value)


# Installed after the class so that `dtype` stays a dataclass field (a config.json key) while
# reading it gives a torch.dtype and writing accepts a dtype or its name.
GPTNeoXConfig.dtype = property(_get_dtype, _set_dtype, doc="The weights' dtype as a torch.dtype (None: unknown).")


class _RopeParameters(dict):
    """``config.rope_parameters``: a dict whose item writes update the config it came from."""

    def __init__(self, config: GPTNeoXConfig, params: dict[str, Any]) -> None:
        super().__init__(params)
        self._config = config

    def __setitem__(self, key: str, value: Any) -> None:
        super().__setitem__(key, value)
        self._config.rope_parameters = dict(self)

    def __delitem__(self, key: str) -> None:
        super().__delitem__(key)
        self._config.rope_parameters = dict(self)

    def update(self, *args: Any, **kwargs: Any) -> None:
        super().update(*args, **kwargs)
        self._config.rope_parameters = dict(self)

    def __deepcopy__(self, memo: dict) -> dict:
        return copy.deepcopy(dict(self), memo)

    def __reduce__(self) -> Any:
        return (dict, (dict(self),))


def _known_keys() -> set[str]:
    return {f.name for f in dataclasses.fields(GPTNeoXConfig)} | {
        "torch_dtype", "rope_parameters", "_attn_implementation", "_name_or_path"}


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _normalise_rope_scaling(scaling: dict) -> dict:
    """One spelling for rope_scaling: {"rope_type": ..., "factor": ...} (plus anything else given)."""
    scaling = dict(scaling)
    rope_type = scaling.pop("rope_type", None) or scaling.pop("type", None) or "default"
    scaling.pop("type", None)
    scaling.pop("rope_theta", None)
    scaling.pop("partial_rotary_factor", None)
    return {"rope_type": rope_type, **scaling}


def _dtype_name(dtype: Any) -> str | None:
    if dtype is None or dtype == "auto":
        return None
    name = str(dtype)
    return name[len("torch."):] if name.startswith("torch.") else name
