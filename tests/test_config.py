"""GPTNeoXConfig: defaults, every key spelling found on the Hub, round trips, and clear errors.

The oracle is transformers 5.24's GPTNeoXConfig: neox must read what it writes, and it must
read what neox writes to the same rotary settings. Older readers (transformers 4.x) only know
the classic keys (rotary_pct, rotary_emb_base, and rope_scaling validated as exactly
{"type", "factor"}); :func:`read_like_transformers_4` mirrors that reader.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from neox import GPTNeoXConfig
from neox.config import ACTIVATIONS

from conftest import tiny_kwargs

# The documented defaults (the issue's list; they are EleutherAI/gpt-neox-20b's and transformers').
DOCUMENTED_DEFAULTS = dict(
    vocab_size=50432, hidden_size=6144, num_hidden_layers=44, num_attention_heads=64,
    intermediate_size=24576, hidden_act="gelu", rotary_pct=0.25, rotary_emb_base=10000,
    max_position_embeddings=2048, initializer_range=0.02, layer_norm_eps=1e-5, use_cache=True,
    bos_token_id=0, eos_token_id=2, tie_word_embeddings=False, use_parallel_residual=True,
)

ROPE_VARIANTS = [
    pytest.param({}, ("default", 1.0, 0.25, 10000.0), id="default"),
    pytest.param({"rotary_pct": 0.5, "rotary_emb_base": 500.0}, ("default", 1.0, 0.5, 500.0), id="classic"),
    pytest.param({"rope_scaling": {"type": "linear", "factor": 2.0}}, ("linear", 2.0, 0.25, 10000.0), id="scaling-type-linear"),
    pytest.param({"rope_scaling": {"rope_type": "linear", "factor": 3.0}}, ("linear", 3.0, 0.25, 10000.0), id="scaling-rope_type-linear"),
    pytest.param({"rope_scaling": {"type": "dynamic", "factor": 2.0}, "rotary_pct": 0.5},
                 ("dynamic", 2.0, 0.5, 10000.0), id="scaling-type-dynamic"),
    pytest.param({"rope_scaling": {"rope_type": "dynamic", "factor": 4.0}, "rotary_pct": 1.0},
                 ("dynamic", 4.0, 1.0, 10000.0), id="scaling-rope_type-dynamic"),
    pytest.param({"rope_parameters": {"rope_type": "default", "rope_theta": 1000.0, "partial_rotary_factor": 0.5}},
                 ("default", 1.0, 0.5, 1000.0), id="rope_parameters-default"),
    pytest.param({"rope_parameters": {"rope_type": "linear", "factor": 2.0, "rope_theta": 500.0, "partial_rotary_factor": 1.0}},
                 ("linear", 2.0, 1.0, 500.0), id="rope_parameters-linear"),
    pytest.param({"rope_parameters": {"rope_type": "dynamic", "factor": 3.0, "rope_theta": 10000.0, "partial_rotary_factor": 0.5}},
                 ("dynamic", 3.0, 0.5, 10000.0), id="rope_parameters-dynamic"),
]


def rope_summary_hf(config) -> tuple[str, float, float, float]:
    params = config.rope_parameters
    return (params["rope_type"], float(params.get("factor", 1.0)), float(params["partial_rotary_factor"]),
            float(params["rope_theta"]))


def rope_summary(config: GPTNeoXConfig) -> tuple[str, float, float, float]:
    return (config.rope_type, config.rope_factor, float(config.rotary_pct), float(config.rotary_emb_base))


def read_like_transformers_4(data: dict) -> tuple[str, float, float, float]:
    """What transformers 4.3x–4.4x take from config.json: classic keys only, strict rope_scaling."""
    scaling = data.get("rope_scaling")
    if scaling is not None:
        assert isinstance(scaling, dict) and set(scaling) == {"type", "factor"}, scaling
        assert scaling["type"] in ("linear", "dynamic") and isinstance(scaling["factor"], float) and scaling["factor"] > 1
    rope_type, factor = (scaling["type"], scaling["factor"]) if scaling else ("default", 1.0)
    return rope_type, float(factor), float(data["rotary_pct"]), float(data["rotary_emb_base"])


# ------------------------------------------------------------------------------------ defaults


def test_documented_defaults():
    config = GPTNeoXConfig()
    for name, value in DOCUMENTED_DEFAULTS.items():
        assert getattr(config, name) == value, name
    assert config.rope_scaling is None and config.pad_token_id is None
    assert config.attention_bias is True
    assert config.hidden_dropout == config.attention_dropout == 0.0
    assert config.classifier_dropout == 0.1
    assert config.head_size == 96 and config.rotary_ndims == 24


def test_defaults_match_transformers(hf):
    ours, theirs = GPTNeoXConfig(), hf.GPTNeoXConfig()
    for name in (*DOCUMENTED_DEFAULTS, "attention_bias", "hidden_dropout", "attention_dropout",
                 "classifier_dropout", "pad_token_id", "is_decoder"):
        if name in ("rotary_pct", "rotary_emb_base"):
            continue  # transformers 5 keeps them only inside rope_parameters
        assert getattr(ours, name) == getattr(theirs, name), name
    assert rope_summary(ours) == rope_summary_hf(theirs)


# ------------------------------------------------------------------------------------ spellings


@pytest.mark.parametrize("kwargs, expected", ROPE_VARIANTS)
def test_rope_spellings(kwargs, expected):
    config = GPTNeoXConfig(**tiny_kwargs(**kwargs))
    assert rope_summary(config) == expected
    # The classic names stay readable attributes whichever spelling the file used.
    assert config.rotary_pct == expected[2] and config.rotary_emb_base == expected[3]
    assert config.rope_parameters["rope_type"] == expected[0]
    assert config.rope_parameters["rope_theta"] == expected[3]
    assert config.rope_parameters["partial_rotary_factor"] == expected[2]


@pytest.mark.parametrize("kwargs, expected", ROPE_VARIANTS)
def test_transformers_and_neox_agree_on_rope(hf, kwargs, expected):
    """Same kwargs → same rotary settings in both libraries (transformers as the oracle)."""
    theirs = hf.GPTNeoXConfig(**tiny_kwargs(**kwargs))
    assert rope_summary_hf(theirs) == expected


@pytest.mark.parametrize("kwargs, expected", ROPE_VARIANTS)
def test_transformers_reads_what_neox_writes(hf, tmp_path, kwargs, expected):
    GPTNeoXConfig(**tiny_kwargs(**kwargs)).save_pretrained(tmp_path)
    theirs = hf.GPTNeoXConfig.from_pretrained(tmp_path)
    assert rope_summary_hf(theirs) == expected
    auto = hf.AutoConfig.from_pretrained(tmp_path)
    assert type(auto).__name__ == "GPTNeoXConfig" and rope_summary_hf(auto) == expected
    for name, value in tiny_kwargs().items():
        assert getattr(theirs, name) == value, name


@pytest.mark.parametrize("kwargs, expected", ROPE_VARIANTS)
def test_older_readers_read_what_neox_writes(tmp_path, kwargs, expected):
    GPTNeoXConfig(**tiny_kwargs(**kwargs)).save_pretrained(tmp_path)
    data = json.loads((tmp_path / "config.json").read_text())
    assert read_like_transformers_4(data) == expected
    # and transformers 5's spelling is written too
    params = data["rope_parameters"]
    assert (params["rope_type"], float(params.get("factor", 1.0)), params["partial_rotary_factor"],
            params["rope_theta"]) == expected


@pytest.mark.parametrize("kwargs, expected", ROPE_VARIANTS)
def test_neox_reads_what_transformers_writes(hf, tmp_path, kwargs, expected):
    hf.GPTNeoXConfig(**tiny_kwargs(**kwargs)).save_pretrained(tmp_path)
    config = GPTNeoXConfig.from_pretrained(tmp_path)
    assert rope_summary(config) == expected
    for name, value in tiny_kwargs().items():
        assert getattr(config, name) == value, name


def test_reads_pythia_style_config(tmp_path):
    """A transformers-4-era config.json (as on the Hub for Pythia): classic keys, torch_dtype."""
    data = {
        "architectures": ["GPTNeoXForCausalLM"], "bos_token_id": 0, "eos_token_id": 0, "hidden_act": "gelu",
        "hidden_size": 512, "initializer_range": 0.02, "intermediate_size": 2048, "layer_norm_eps": 1e-05,
        "max_position_embeddings": 2048, "model_type": "gpt_neox", "num_attention_heads": 8,
        "num_hidden_layers": 6, "rotary_emb_base": 10000, "rotary_pct": 0.25, "tie_word_embeddings": False,
        "torch_dtype": "float16", "transformers_version": "4.24.0", "use_cache": True,
        "use_parallel_residual": True, "vocab_size": 50304,
    }
    (tmp_path / "config.json").write_text(json.dumps(data))
    config = GPTNeoXConfig.from_pretrained(tmp_path)
    assert (config.hidden_size, config.num_hidden_layers, config.vocab_size) == (512, 6, 50304)
    assert config.rotary_ndims == 16 and config.rope_theta == 10000
    assert config.dtype == torch.float16 and config.eos_token_id == 0
    assert "transformers_version" not in config.extra and "model_type" not in config.extra


@pytest.mark.parametrize("key", ["dtype", "torch_dtype"])
@pytest.mark.parametrize("value", ["bfloat16", torch.bfloat16, "torch.bfloat16"])
def test_dtype_spellings(key, value):
    config = GPTNeoXConfig(**tiny_kwargs(**{key: value}))
    assert config.dtype == torch.bfloat16
    data = config.to_dict()
    assert data["dtype"] == data["torch_dtype"] == "bfloat16"  # new and old readers
    json.dumps(data)


@pytest.mark.parametrize("act", ["gelu", "gelu_fast", "gelu_new", "gelu_pytorch_tanh", "relu", "silu"])
def test_activations_accepted_and_equal_to_transformers(hf, act):
    from neox.modeling import ACT_FNS

    assert act in ACTIVATIONS
    GPTNeoXConfig(**tiny_kwargs(hidden_act=act))
    x = torch.linspace(-6, 6, 1001, dtype=torch.float64)
    theirs = hf.activations.ACT2FN[act](x)
    torch.testing.assert_close(ACT_FNS[act](x), theirs, rtol=0, atol=1e-12)


def test_gelu_is_exact():
    """Pythia/gpt-neox-20b's `gelu` is the erf form, not the tanh approximation."""
    from neox.modeling import ACT_FNS

    x = torch.tensor([-2.0, -0.5, 0.3, 1.7], dtype=torch.float64)
    exact = 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))
    torch.testing.assert_close(ACT_FNS["gelu"](x), exact, rtol=0, atol=1e-15)


# ------------------------------------------------------------------------------------ round trips


def test_unknown_keys_kept_and_written_back(tmp_path):
    config = GPTNeoXConfig(**tiny_kwargs(my_fine_tune_key={"a": [1, 2]}, num_labels=3))
    assert config.my_fine_tune_key == {"a": [1, 2]}
    config.save_pretrained(tmp_path)
    data = json.loads((tmp_path / "config.json").read_text())
    assert data["my_fine_tune_key"] == {"a": [1, 2]} and data["num_labels"] == 3
    again = GPTNeoXConfig.from_pretrained(tmp_path)
    assert again.my_fine_tune_key == {"a": [1, 2]} and again.num_labels == 3
    assert again == config


def test_unknown_keys_survive_a_transformers_round_trip(hf, tmp_path):
    GPTNeoXConfig(**tiny_kwargs(my_fine_tune_key=7)).save_pretrained(tmp_path / "a")
    hf.GPTNeoXConfig.from_pretrained(tmp_path / "a").save_pretrained(tmp_path / "b")
    assert GPTNeoXConfig.from_pretrained(tmp_path / "b").my_fine_tune_key == 7


@pytest.mark.parametrize("kwargs, expected", ROPE_VARIANTS)
def test_to_dict_round_trip(kwargs, expected):
    config = GPTNeoXConfig(**tiny_kwargs(pad_token_id=1, tie_word_embeddings=True, **kwargs))
    data = config.to_dict()
    assert data["model_type"] == "gpt_neox"
    again = GPTNeoXConfig(**data)
    assert again == config and again.to_dict() == data
    assert rope_summary(again) == expected
    from_json = GPTNeoXConfig.from_dict(json.loads(config.to_json_string()))
    assert from_json == config


def test_to_json_string_is_valid_json_with_every_field():
    config = GPTNeoXConfig(**tiny_kwargs())
    data = json.loads(config.to_json_string())
    for name in (*DOCUMENTED_DEFAULTS, "attention_bias", "hidden_dropout", "attention_dropout",
                 "classifier_dropout", "pad_token_id", "rope_scaling", "rope_parameters"):
        assert name in data, name
    diff = json.loads(config.to_json_string(use_diff=True))
    assert diff["hidden_size"] == 32 and "use_cache" not in diff


def test_save_pretrained_from_pretrained(tmp_path):
    config = GPTNeoXConfig(**tiny_kwargs(rope_scaling={"type": "linear", "factor": 2.0}, eos_token_id=[2, 3]))
    config.save_pretrained(tmp_path / "new" / "folder")
    again = GPTNeoXConfig.from_pretrained(tmp_path / "new" / "folder")
    assert again == config
    assert again.name_or_path == str(tmp_path / "new" / "folder")


def test_from_pretrained_repo_id_offline(hub_cache, tmp_path):
    GPTNeoXConfig(**tiny_kwargs(hidden_size=64)).save_pretrained(tmp_path / "src")
    cache = hub_cache(tmp_path / "src", "org/tiny")
    config = GPTNeoXConfig.from_pretrained("org/tiny", cache_dir=cache)
    assert config.hidden_size == 64


@pytest.mark.parametrize("override, check", [
    ({"hidden_dropout": 0.25}, lambda c: c.hidden_dropout == 0.25),
    ({"rotary_pct": 0.5}, lambda c: c.rotary_pct == 0.5 and c.rope_parameters["partial_rotary_factor"] == 0.5),
    ({"rotary_emb_base": 123.0}, lambda c: c.rope_theta == 123.0),
    ({"rope_scaling": {"type": "linear", "factor": 2.0}}, lambda c: (c.rope_type, c.rope_factor) == ("linear", 2.0)),
    ({"rope_parameters": {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 99.0, "partial_rotary_factor": 1.0}},
     lambda c: rope_summary(c) == ("dynamic", 2.0, 1.0, 99.0)),
    ({"torch_dtype": "float16"}, lambda c: c.dtype == torch.float16),
    ({"dtype": "bfloat16"}, lambda c: c.dtype == torch.bfloat16),
])
def test_from_pretrained_overrides(tmp_path, override, check):
    """Keyword arguments override config.json — including the rotary keys, whose other spelling
    (rope_parameters) is also in the file and must not silently win over the override."""
    GPTNeoXConfig(**tiny_kwargs(torch_dtype="float32")).save_pretrained(tmp_path)
    config = GPTNeoXConfig.from_pretrained(tmp_path, **override)
    assert check(config), config.to_dict()


def test_from_pretrained_override_removes_rope_scaling(tmp_path):
    GPTNeoXConfig(**tiny_kwargs(rope_scaling={"type": "linear", "factor": 2.0})).save_pretrained(tmp_path)
    assert GPTNeoXConfig.from_pretrained(tmp_path, rope_scaling=None).rope_type == "default"
    kept = GPTNeoXConfig.from_pretrained(tmp_path, rotary_pct=0.5)
    assert rope_summary(kept) == ("linear", 2.0, 0.5, 10000.0)


def test_from_pretrained_unknown_argument(tmp_path):
    GPTNeoXConfig(**tiny_kwargs()).save_pretrained(tmp_path)
    with pytest.raises(TypeError, match="not_an_option"):
        GPTNeoXConfig.from_pretrained(tmp_path, not_an_option=1)
    config, unused = GPTNeoXConfig.from_pretrained(tmp_path, not_an_option=1, return_unused_kwargs=True)
    assert unused == {"not_an_option": 1} and config.hidden_size == 32


def test_from_pretrained_missing_config(tmp_path):
    with pytest.raises(OSError, match="config.json"):
        GPTNeoXConfig.from_pretrained(tmp_path)


def test_invalid_json_names_the_file(tmp_path):
    (tmp_path / "config.json").write_text('{"hidden_size": 32,')
    with pytest.raises(ValueError, match="config.json"):
        GPTNeoXConfig.from_pretrained(tmp_path)


def test_json_that_is_not_an_object(tmp_path):
    (tmp_path / "config.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="config.json"):
        GPTNeoXConfig.from_pretrained(tmp_path)


def test_invalid_value_in_file_names_the_file(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(tiny_kwargs(hidden_size=30)))
    with pytest.raises(ValueError, match=r"config\.json.*hidden_size"):
        GPTNeoXConfig.from_pretrained(tmp_path)


# ------------------------------------------------------------------------------------ errors


def test_hidden_size_not_divisible_by_heads():
    with pytest.raises(ValueError, match=r"hidden_size \(30\).*num_attention_heads \(4\)"):
        GPTNeoXConfig(**tiny_kwargs(hidden_size=30))


@pytest.mark.parametrize("name", ["vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                                  "intermediate_size", "max_position_embeddings"])
@pytest.mark.parametrize("value", [0, -4])
def test_non_positive_sizes(name, value):
    with pytest.raises(ValueError, match=name):
        GPTNeoXConfig(**tiny_kwargs(**{name: value}))


@pytest.mark.parametrize("value", [0.0, -0.25, 1.5])
def test_rotary_pct_outside_unit_interval(value):
    with pytest.raises(ValueError, match="rotary_pct"):
        GPTNeoXConfig(**tiny_kwargs(rotary_pct=value))
    with pytest.raises(ValueError, match="rotary_pct"):
        GPTNeoXConfig(**tiny_kwargs(rope_parameters={"rope_type": "default", "partial_rotary_factor": value}))


def test_rotary_pct_one_is_allowed():
    assert GPTNeoXConfig(**tiny_kwargs(rotary_pct=1.0)).rotary_ndims == 8


def test_unknown_activation():
    with pytest.raises(ValueError, match="'swiglu'"):
        GPTNeoXConfig(**tiny_kwargs(hidden_act="swiglu"))


@pytest.mark.parametrize("kwargs, name", [
    ({"hidden_size": "32"}, "hidden_size"),
    ({"num_hidden_layers": 2.0}, "num_hidden_layers"),
    ({"vocab_size": True}, "vocab_size"),
    ({"use_cache": "yes"}, "use_cache"),
    ({"tie_word_embeddings": 1}, "tie_word_embeddings"),
    ({"rotary_pct": "0.25"}, "rotary_pct"),
    ({"layer_norm_eps": None}, "layer_norm_eps"),
    ({"hidden_act": 3}, "hidden_act"),
    ({"rope_scaling": ["linear", 2.0]}, "rope_scaling"),
    ({"rope_parameters": "linear"}, "rope_parameters"),
    ({"bos_token_id": "0"}, "bos_token_id"),
    ({"eos_token_id": [2, "3"]}, "eos_token_id"),
])
def test_wrong_json_types(kwargs, name):
    with pytest.raises(ValueError, match=name):
        GPTNeoXConfig(**tiny_kwargs(**kwargs))


@pytest.mark.parametrize("scaling, match", [
    ({"type": "yarn", "factor": 2.0}, "yarn"),
    ({"type": "linear"}, "factor"),
    ({"type": "linear", "factor": 0.5}, "factor"),
    ({"type": "dynamic", "factor": "2"}, "factor"),
])
def test_bad_rope_scaling(scaling, match):
    with pytest.raises(ValueError, match=match):
        GPTNeoXConfig(**tiny_kwargs(rope_scaling=scaling))


def test_dynamic_rope_needs_four_rotary_dims():
    """transformers divides by zero in the forward (exponent r / (r − 2)); neox says so up front."""
    with pytest.raises(ValueError, match="dynamic.*rotary dims"):
        GPTNeoXConfig(**tiny_kwargs(rope_scaling={"type": "dynamic", "factor": 2.0}, rotary_pct=0.25))
    GPTNeoXConfig(**tiny_kwargs(rope_scaling={"type": "dynamic", "factor": 2.0}, rotary_pct=0.5))


def test_bad_attn_implementation():
    with pytest.raises(ValueError, match="attn_implementation"):
        GPTNeoXConfig(**tiny_kwargs(attn_implementation="flash_attention_2"))
