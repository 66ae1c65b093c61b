"""The fuzzed surfaces: how each case breaks its input, and how its outcome is judged.

Every case function takes ``(rng, fixtures, scratch)`` and returns ``(outcome, what, detail)``;
exceptions raised by the code under test are classified by :func:`classify`, with the names
(file, field, tensor, argument) a clean error must mention.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import resource
import shutil
import signal
import struct
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SURFACES = ("config", "safetensors", "index", "tokenizer", "forward", "saves", "generate")

TINY = dict(vocab_size=128, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
            max_position_embeddings=64)
THREE_SHARDS = "40KB"

#: Documented error types. Subclasses that signal an unhandled case are excluded in classify().
CLEAN_TYPES = (ValueError, TypeError, OSError, NotImplementedError)


class Judged(Exception):
    """Raised by a case's oracle: the call succeeded, but the result is wrong (silent)."""


def classify(error: BaseException, names: list[str]) -> tuple[str, str]:
    import json as _json

    message = f"{type(error).__name__}: {error}"
    text = str(error)
    if isinstance(error, MemoryError) or "can't allocate memory" in text or "not enough memory" in text:
        return "memory", message
    if isinstance(error, (RecursionError, UnicodeError, _json.JSONDecodeError)):
        return "raw", message
    if isinstance(error, CLEAN_TYPES):
        if any(n and n in text for n in names):
            return "clean", message
        return "raw", message + f"  [names none of {names}]"
    return "raw", message


# ------------------------------------------------------------------------------------ fixtures


@dataclass
class Fixtures:
    root: Path
    single: Path
    sharded: Path
    tokenizer: Path
    state: dict  # name → tensor of the saved model
    config: Any

    @classmethod
    def build(cls) -> "Fixtures":
        import torch

        from neox import GPTNeoXConfig, GPTNeoXForCausalLM, GPTNeoXTokenizerFast

        root = Path(tempfile.mkdtemp(prefix="neox-fuzz-"))
        os.chmod(root, 0o755)  # the read-only case runs as an unprivileged user when we are root
        torch.manual_seed(0)
        config = GPTNeoXConfig(**TINY)
        model = GPTNeoXForCausalLM(config).eval()
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(torch.randn(p.shape) * 0.2)
        model.save_pretrained(root / "single")
        model.save_pretrained(root / "sharded", max_shard_size=THREE_SHARDS)
        state = {k: v.clone() for k, v in model.state_dict().items()}
        tok_dir = root / "tokenizer"
        _train_tokenizer(tok_dir)
        GPTNeoXTokenizerFast.from_pretrained(tok_dir).save_pretrained(tok_dir)
        (tok_dir / "special_tokens_map.json").write_text(json.dumps(
            {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "pad_token": "<|padding|>"}))
        return cls(root, root / "single", root / "sharded", tok_dir, state, config)

    def copy(self, which: Path, scratch: Path) -> Path:
        target = scratch / which.name
        shutil.copytree(which, target)
        return target

    def cleanup(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def _train_tokenizer(folder: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>", "<|padding|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(["hello world, a tiny corpus for the fuzz suite 🙂 naïve"] * 10, trainer)
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))


# ------------------------------------------------------------------------------------ values


def bad_value(rng: random.Random) -> Any:
    """A JSON value of a random type and size (json.dumps writes NaN/Infinity for the floats)."""
    pool: list[Callable[[], Any]] = [
        lambda: -1, lambda: 0, lambda: 1, lambda: 3, lambda: rng.randint(-10**6, 10**6), lambda: 2**31,
        lambda: 2**63, lambda: 10**30, lambda: 10**400, lambda: 0.5, lambda: -0.5, lambda: 1e308,
        lambda: float("nan"), lambda: float("inf"), lambda: "12", lambda: "", lambda: "x" * 1000, lambda: None,
        lambda: True, lambda: False, lambda: [], lambda: [1, 2], lambda: ["a"], lambda: {}, lambda: {"a": 1},
        lambda: {"content": "<|endoftext|>", "special": "yes"}, lambda: "gelu", lambda: "left",
        lambda: {"rope_type": "linear", "factor": -2}, lambda: [[[[]]]],
    ]
    return rng.choice(pool)()


def corrupt_bytes(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    """One byte-level corruption of a JSON file."""
    kind = rng.choice(["truncate", "flip", "non-utf8", "deep", "huge-number", "empty", "duplicate-key"])
    if kind == "truncate":
        return data[: rng.randrange(0, max(1, len(data)))], kind
    if kind == "flip":
        b = bytearray(data)
        for _ in range(rng.randint(1, 4)):
            if b:
                b[rng.randrange(len(b))] = rng.randrange(256)
        return bytes(b), kind
    if kind == "non-utf8":
        i = rng.randrange(1, max(2, len(data)))
        return data[:i] + b"\xff\xfe\xc3" + data[i:], kind
    if kind == "deep":
        n = rng.choice([100, 5_000, 200_000])
        return b'{"x": ' + b"[" * n + b"]" * n + b"}", kind
    if kind == "huge-number":
        return b'{"vocab_size": ' + b"7" * rng.choice([4400, 20_000]) + b"}", kind
    if kind == "empty":
        return b"", kind
    text = data.decode("utf-8", "replace").rstrip().rstrip("}")
    return (text + ', "__dup__": 1, "__dup__": 2}').encode(), kind


# ------------------------------------------------------------------------------------ oracles


def check_weights(model: Any, state: dict, warnings: list[str]) -> None:
    """Every parameter equals the saved one (converted to the model's dtype), unless a warning names it."""
    import torch

    tied = getattr(model.config, "tie_word_embeddings", False)
    for name, value in model.state_dict().items():
        saved = state.get(name)
        if tied and name == "embed_out.weight":
            saved = state["gpt_neox.embed_in.weight"]
        if saved is None or saved.shape != value.shape:
            continue
        if not torch.equal(saved.to(value.dtype), value) and not any(name in w for w in warnings):
            raise Judged(f"{name} differs from the saved weight, and no warning names it")


def check_forward(model: Any) -> None:
    import torch

    ids = torch.tensor([[1, 2, 3, 4]]) % model.config.vocab_size
    with torch.no_grad():
        logits = model(ids).logits
    if logits.shape != (1, 4, model.config.vocab_size):
        raise Judged(f"logits have shape {tuple(logits.shape)}")


# ------------------------------------------------------------------------------------ config.json

SIZE_FIELDS = ["vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
               "max_position_embeddings"]


def case_config(rng: random.Random, fx: Fixtures, scratch: Path) -> tuple[str, str, Any]:
    from neox import GPTNeoXForCausalLM

    folder = fx.copy(fx.single, scratch)
    path = folder / "config.json"
    data = json.loads(path.read_text())
    kind = rng.choice(["field", "field", "size", "remove", "bytes", "model_type", "generation_config"])
    names = ["config.json"]
    if kind == "generation_config":
        gpath = folder / "generation_config.json"
        gdata = json.loads(gpath.read_text())
        key = rng.choice(["temperature", "top_k", "top_p", "max_new_tokens", "max_length", "num_beams",
                          "do_sample", "eos_token_id", "pad_token_id", "repetition_penalty", "bad_words_ids",
                          "stop_strings", *gdata])
        if rng.random() < 0.2:
            raw, sub = corrupt_bytes(rng, gpath.read_bytes())
            gpath.write_bytes(raw)
            what = f"generation_config.json bytes:{sub}"
        else:
            gdata[key] = bad_value(rng)
            gpath.write_text(json.dumps(gdata))
            what = f"generation_config.json:{key}={json.dumps(gdata[key])[:60]}"
        return _load_and_judge(lambda: GPTNeoXForCausalLM.from_pretrained(folder), fx,
                               ["generation_config.json", key], what)
    if kind == "bytes":
        raw, what = corrupt_bytes(rng, path.read_bytes())
        path.write_bytes(raw)
        what = f"bytes:{what}"
    else:
        if kind == "size":
            key = rng.choice(SIZE_FIELDS)
            data[key] = rng.choice([0, -1, 1, 7, 10**6, 2**40, 10**30, 64, 128, 33])
        elif kind == "remove":
            key = rng.choice(list(data))
            data.pop(key)
        elif kind == "model_type":
            key = "model_type"
            data[key] = rng.choice(["llama", "gpt2", "", 3, None])
        else:
            key = rng.choice(list(data) + SIZE_FIELDS)
            data[key] = bad_value(rng)
        names.append(key)
        path.write_text(json.dumps(data))
        what = f"{kind}:{key}={json.dumps(data.get(key))[:60]}"
    return _load_and_judge(lambda: GPTNeoXForCausalLM.from_pretrained(folder), fx, names, what)


def _load_and_judge(load: Callable[[], Any], fx: Fixtures, names: list[str], what: str,
                    must_fail: bool = False) -> tuple[str, str, Any]:
    warnings: list[str] = []
    handler = _Collect(warnings)
    logging.getLogger("neox").addHandler(handler)
    logging.getLogger("neox").setLevel(logging.WARNING)
    logging.getLogger("neox").propagate = False
    try:
        try:
            model = load()
        except Judged:
            raise
        except BaseException as e:  # noqa: BLE001 - classified
            outcome, detail = classify(e, names)
            return outcome, what, detail
        if must_fail:
            return "silent", what, "loaded a checkpoint that must be refused"
        try:
            check_weights(model, fx.state, warnings)
            check_forward(model)
        except Judged as e:
            return "silent", what, str(e)
        except BaseException as e:  # noqa: BLE001 - a loaded model that then fails is a raw error
            outcome, detail = classify(e, [])
            return ("raw" if outcome == "clean" else outcome), what, "after loading: " + detail
        return "correct", what, ""
    finally:
        logging.getLogger("neox").removeHandler(handler)


class _Collect(logging.Handler):
    def __init__(self, sink: list[str]) -> None:
        super().__init__(logging.WARNING)
        self.sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        self.sink.append(record.getMessage())


# ------------------------------------------------------------------------------------ safetensors


def _split(path: Path) -> tuple[dict, bytes, bytes]:
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + n]), data[8 : 8 + n], data[8 + n :]


def _join(header: dict | bytes, body: bytes) -> bytes:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + body


def case_safetensors(rng: random.Random, fx: Fixtures, scratch: Path) -> tuple[str, str, Any]:
    import torch

    from neox import GPTNeoXForCausalLM

    sharded = rng.random() < 0.3
    folder = fx.copy(fx.sharded if sharded else fx.single, scratch)
    files = sorted(folder.glob("model*.safetensors"))
    path = rng.choice(files)
    header, raw_header, body = _split(path)
    keys = [k for k in header if k != "__metadata__"]
    key = rng.choice(keys)
    kind = rng.choice(["entry", "entry", "entry", "swap", "duplicate", "metadata", "header-bytes", "data-bytes",
                       "truncate", "append", "length"])
    what = kind
    if kind == "entry":
        field_ = rng.choice(["dtype", "shape", "data_offsets"])
        choice = rng.random()
        if choice < 0.2:
            header[key].pop(field_)
        elif field_ == "dtype":
            header[key][field_] = rng.choice(["F7", "F16", "BF16", "I64", "U8", "BOOL", "F64", 3, None, "f32"])
        elif field_ == "shape":
            shape = list(header[key]["shape"])
            header[key][field_] = rng.choice([[-1], [0], shape[::-1], shape + [1], [10**20], [1.5], "4", [],
                                              [shape[0] * 2] if shape else [2]])
        else:
            s, e = header[key]["data_offsets"]
            header[key][field_] = rng.choice([[e, s], [-s - 8, e], [s, e + 4], [s + 4, e], [s, s], [0, e - s],
                                              [s, 10**19], [str(s), e], [s]])
        what = f"entry:{key}.{field_}={json.dumps(header[key].get(field_))[:40]}"
        content = _join(header, body)
    elif kind == "swap":
        other = rng.choice(keys)
        header[key]["data_offsets"], header[other]["data_offsets"] = (header[other]["data_offsets"],
                                                                      header[key]["data_offsets"])
        what = f"swap:{key}<->{other}"
        content = _join(header, body)
    elif kind == "duplicate":
        text = json.dumps(header)
        entry = json.dumps(header[rng.choice(keys)])
        content = _join(("{" + json.dumps(key) + ": " + entry + ", " + text[1:]).encode(), body)
        what = f"duplicate:{key}"
    elif kind == "metadata":
        header["__metadata__"] = bad_value(rng)
        content = _join(header, body)
    elif kind == "header-bytes":
        raw, sub = corrupt_bytes(rng, raw_header)
        content = _join(raw, body)
        what = f"header-bytes:{sub}"
    elif kind == "data-bytes":
        b = bytearray(body)
        for _ in range(rng.randint(1, 8)):
            b[rng.randrange(len(b))] = rng.randrange(256)
        content = _join(raw_header, bytes(b))
    elif kind == "truncate":
        full = _join(raw_header, body)
        content = full[: rng.randrange(0, len(full))]
    elif kind == "append":
        content = _join(raw_header, body) + bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))
    else:
        content = struct.pack("<Q", rng.choice([0, 1, len(raw_header) - 1, len(raw_header) + 8, 2**63, 10**8 + 1])) \
            + raw_header + body
        what = "length"
    path.write_bytes(content)
    dtype = rng.choice([None, torch.float16, torch.bfloat16])
    what += f" [{path.name}, dtype={dtype}]"
    expected = _safetensors_reference(path)
    state = dict(fx.state)
    if expected is not None:  # safetensors itself reads the file: neox must read the same tensors
        state.update(expected)
    names = [path.name]
    return _load_and_judge(lambda: GPTNeoXForCausalLM.from_pretrained(folder, dtype=dtype),
                           Fixtures(fx.root, fx.single, fx.sharded, fx.tokenizer, state, fx.config), names, what,
                           must_fail=expected is None)


def _safetensors_reference(path: Path) -> dict | None:
    """What the safetensors library reads from the file (its own validation), or None if it refuses."""
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception:
        return None


# ------------------------------------------------------------------------------------ index


def case_index(rng: random.Random, fx: Fixtures, scratch: Path) -> tuple[str, str, Any]:
    import torch
    from safetensors.torch import load_file, save_file

    from neox import GPTNeoXForCausalLM

    folder = fx.copy(fx.sharded, scratch)
    path = folder / "model.safetensors.index.json"
    index = json.loads(path.read_text())
    wm = index["weight_map"]
    shards = sorted(set(wm.values()))
    key = rng.choice(sorted(wm))
    kind = rng.choice(["elsewhere", "missing-shard", "unlisted", "bogus-tensor", "bad-name", "not-string",
                       "copy-in-other-shard", "bytes", "not-a-map", "empty"])
    names = ["model.safetensors.index.json", key]
    must_fail = False
    if kind == "elsewhere":
        wm[key] = rng.choice([s for s in shards if s != wm[key]])
        must_fail = True  # the named shard does not hold it
    elif kind == "missing-shard":
        wm[key] = "model-00009-of-00009.safetensors"
        names.append(wm[key])
        must_fail = True
    elif kind == "unlisted":
        wm.pop(key)  # the tensor is then unused (warned) and newly initialised (warned)
    elif kind == "bogus-tensor":
        wm["gpt_neox.bogus.weight"] = rng.choice(shards)
        names.append("gpt_neox.bogus.weight")
        must_fail = True
    elif kind == "bad-name":
        wm[key] = rng.choice(["../x.safetensors", "/etc/passwd", "", "..", "a/b.safetensors", "x\0y"])
        must_fail = True
    elif kind == "not-string":
        wm[key] = bad_value(rng)
        must_fail = not isinstance(wm[key], str)
    elif kind == "copy-in-other-shard":
        other = rng.choice([s for s in shards if s != wm[key]])
        tensors = load_file(str(folder / other))
        tensors[key] = torch.full_like(fx.state[key], 7.0)
        save_file(tensors, str(folder / other), metadata={"format": "pt"})
        names.append(other)
    elif kind == "not-a-map":
        index["weight_map"] = bad_value(rng)
        must_fail = True
    elif kind == "empty":
        index["weight_map"] = {}
        must_fail = True
    if kind == "bytes":
        raw, sub = corrupt_bytes(rng, path.read_bytes())
        path.write_bytes(raw)
        kind = f"bytes:{sub}"
        must_fail = False  # a flipped byte may leave valid JSON naming the same shards
    else:
        path.write_text(json.dumps(index))
    what = f"{kind}:{key}"
    return _load_and_judge(lambda: GPTNeoXForCausalLM.from_pretrained(folder), fx, names, what, must_fail=must_fail)


# ------------------------------------------------------------------------------------ tokenizer

TOKENIZER_FIELDS = {
    "tokenizer.json": ["added_tokens", "padding", "truncation", "model.vocab", "model.merges", "normalizer",
                       "added_tokens[0].id", "added_tokens[0].content", "added_tokens[0].special", "model"],
    "tokenizer_config.json": ["model_max_length", "model_input_names", "padding_side", "truncation_side",
                              "bos_token", "eos_token", "pad_token", "unk_token", "add_bos_token", "add_eos_token",
                              "add_prefix_space", "added_tokens_decoder", "extra_special_tokens",
                              "clean_up_tokenization_spaces", "split_special_tokens", "chat_template",
                              "tokenizer_class", "errors", "trim_offsets"],
    "special_tokens_map.json": ["bos_token", "eos_token", "pad_token", "additional_special_tokens",
                                "extra_special_tokens", "mask_token"],
}


def _set_path(data: Any, dotted: str, value: Any) -> None:
    parts = dotted.replace("[0]", ".0").split(".")
    for p in parts[:-1]:
        data = data[int(p)] if isinstance(data, list) else data.setdefault(p, {})
    last = parts[-1]
    if isinstance(data, list):
        data[int(last)] = value
    else:
        data[last] = value


def case_tokenizer(rng: random.Random, fx: Fixtures, scratch: Path) -> tuple[str, str, Any]:
    from neox import GPTNeoXTokenizerFast

    folder = fx.copy(fx.tokenizer, scratch)
    name = rng.choice(list(TOKENIZER_FIELDS))
    path = folder / name
    names = [name]
    if rng.random() < 0.2:
        raw, sub = corrupt_bytes(rng, path.read_bytes())
        path.write_bytes(raw)
        what = f"{name} bytes:{sub}"
    else:
        data = json.loads(path.read_text())
        field_ = rng.choice(TOKENIZER_FIELDS[name])
        value = bad_value(rng)
        if field_ in ("additional_special_tokens", "extra_special_tokens") and rng.random() < 0.5:
            value = rng.choice(["<|endoftext|>", ["<|endoftext|>", 3], [{"content": 1}]])
        try:
            _set_path(data, field_, value)
        except (IndexError, KeyError, TypeError, ValueError):
            pass
        path.write_text(json.dumps(data))
        names.append(field_.split(".")[-1].split("[")[0])
        what = f"{name}:{field_}={json.dumps(value)[:50]}"
    if name == "special_tokens_map.json":
        # the special tokens map is read only when tokenizer_config.json has no added_tokens_decoder
        cfg = json.loads((folder / "tokenizer_config.json").read_text())
        cfg.pop("added_tokens_decoder", None)
        (folder / "tokenizer_config.json").write_text(json.dumps(cfg))
    try:
        tok = GPTNeoXTokenizerFast.from_pretrained(folder)
    except BaseException as e:  # noqa: BLE001
        outcome, detail = classify(e, names)
        return outcome, what, detail
    try:
        text = "hello world 🙂"
        ids = tok(text)["input_ids"]
        tok.decode(ids)
        tok([text, "a"], padding=True)
    except BaseException as e:  # noqa: BLE001 - a tokenizer that loads must then work, or say why
        outcome, detail = classify(e, names)
        return outcome, what, "after loading: " + detail
    return "correct", what, ""


# ------------------------------------------------------------------------------------ forward()


def case_forward(rng: random.Random, fx: Fixtures, scratch: Path) -> tuple[str, str, Any]:
    import torch

    from neox import GPTNeoXForCausalLM

    model = _forward_model(fx)
    V, D, L, H, hs = 128, 32, 2, 4, 8
    B, T = rng.randint(1, 3), rng.randint(1, 6)
    ids = torch.randint(0, V, (B, T))
    args: dict[str, Any] = {"input_ids": ids}
    arg = rng.choice(["input_ids", "inputs_embeds", "attention_mask", "position_ids", "labels", "past_key_values",
                      "logits_to_keep", "head_mask", "valid"])
    bad = True
    if arg == "input_ids":
        args["input_ids"] = rng.choice([
            ids.float(), ids - V, ids + V, ids[None], ids[:, :0], ids.tolist(), ids.bool(), ids * 10**12,
            torch.full((B, T), -(2**62)),
        ])
    elif arg == "inputs_embeds":
        args.pop("input_ids")
        args["inputs_embeds"] = rng.choice([
            torch.randn(B, T, D).tolist(), torch.randint(0, 3, (B, T, D)), torch.randn(B, T, D + 1),
            torch.randn(T, D), torch.randn(B, T, D, 1),
        ])
    elif arg == "attention_mask":
        args["attention_mask"] = rng.choice([
            torch.ones(B, T + 1), torch.ones(B + 1, T), torch.ones(B, 1, T), torch.ones(T).tolist(),
            torch.ones(B, 1, T + 1, T), torch.ones(B, T, T, T, T),
        ])
    elif arg == "position_ids":
        args["position_ids"] = rng.choice([torch.arange(T + 1)[None], torch.arange(T)[None].expand(B + 1, T),
                                           torch.zeros(B, T, 2, dtype=torch.long), list(range(T)),
                                           torch.ones(B, T, dtype=torch.bool)])
    elif arg == "labels":
        args["labels"] = rng.choice([ids.float(), ids + V, ids - 200, ids[:, :-1] if T > 1 else ids[:, :0],
                                     ids.tolist(), torch.full((B, T), -101)])
    elif arg == "past_key_values":
        def legacy(layers: int, heads: int, size: int, batch: int = B, dtype: Any = torch.float32) -> Any:
            k = torch.zeros(batch, heads, 2, size, dtype=dtype)
            return tuple((k, k.clone()) for _ in range(layers))

        args["past_key_values"] = rng.choice([
            legacy(L + 1, H, hs), legacy(L - 1, H, hs), legacy(L, H + 1, hs), legacy(L, H, hs + 2),
            legacy(L, H, hs, B + 1), legacy(L, H, hs, dtype=torch.long), (), ((torch.zeros(1),),), "cache",
            legacy(L, H, hs)[:1] + ((torch.zeros(B, H, 3, hs), torch.zeros(B, H, 3, hs)),),
        ])
    elif arg == "logits_to_keep":
        args["logits_to_keep"] = rng.choice([-1, 1.5, torch.tensor([T]), torch.tensor([-T - 1]),
                                             torch.tensor([[0]]), torch.tensor([0.5]), torch.ones(T + 1, dtype=torch.bool),
                                             "all"])
    elif arg == "head_mask":
        args["head_mask"] = rng.choice([torch.ones(H + 1), torch.ones(L + 1, H), torch.ones(2, 2, 2)])
    elif arg == "valid" and rng.random() < 0.5:  # equivalent forms must give the same logits
        return _equivalent_forms(rng, model, ids, B, T)
    else:  # a valid combination: it must work
        bad = False
        if rng.random() < 0.5:
            args["labels"] = torch.where(torch.rand(B, T) < 0.3, torch.full((B, T), -100), ids)
        else:
            args["logits_to_keep"] = rng.choice([0, 1, T + 3, torch.tensor([0, T - 1])])
        if rng.random() < 0.5:
            args["attention_mask"] = torch.ones(B, T, dtype=torch.long)
    what = f"{arg}: " + ", ".join(f"{k}={_short(v)}" for k, v in args.items())
    try:
        with torch.no_grad():
            out = model(**args)
    except BaseException as e:  # noqa: BLE001
        outcome, detail = classify(e, [arg] if bad else [])
        if not bad:
            return ("raw" if outcome == "clean" else outcome), what, "valid arguments refused: " + detail
        return outcome, what, detail
    if bad:
        return "silent", what, "accepted a bad argument"
    if not torch.isfinite(out.logits).all() or out.logits.shape[0] != B or out.logits.shape[-1] != V:
        return "silent", what, f"logits {tuple(out.logits.shape)}"
    return "correct", what, ""


def _equivalent_forms(rng: random.Random, model: Any, ids: Any, B: int, T: int) -> tuple[str, str, Any]:
    """The cache, inputs_embeds and logits_to_keep give the plain forward's logits."""
    import torch

    with torch.no_grad():
        full = model(ids).logits
        form = rng.choice(["cache", "embeds", "keep"])
        if form == "cache" and T > 1:
            cut = rng.randint(1, T - 1)
            past = model(ids[:, :cut]).past_key_values
            if rng.random() < 0.5:
                past = tuple(past)  # the legacy tuple form
            got, want = model(ids[:, cut:], past_key_values=past).logits, full[:, cut:]
        elif form == "embeds":
            got, want = model(inputs_embeds=model.gpt_neox.embed_in(ids)).logits, full
        else:
            keep = torch.tensor(sorted(rng.sample(range(-T, T), k=min(T, 2))))
            got, want = model(ids, logits_to_keep=keep).logits, full[:, keep]
    what = f"equivalent:{form} B={B} T={T}"
    if got.shape != want.shape or not torch.allclose(got, want, atol=1e-5, rtol=1e-5):
        return "silent", what, f"logits differ by {(got - want).abs().max().item() if got.shape == want.shape else got.shape}"
    return "correct", what, ""


_MODEL: list[Any] = []


def _forward_model(fx: Fixtures) -> Any:
    import torch

    from neox import GPTNeoXForCausalLM

    if not _MODEL:
        torch.manual_seed(0)
        _MODEL.append(GPTNeoXForCausalLM(fx.config).eval())
    return _MODEL[0]


def _short(value: Any) -> str:
    import torch

    if isinstance(value, torch.Tensor):
        return f"tensor{tuple(value.shape)}:{str(value.dtype).removeprefix('torch.')}"
    if isinstance(value, (list, tuple)):
        return f"{type(value).__name__}[{len(value)}]"
    return repr(value)[:30]


# ------------------------------------------------------------------------------------ generate()

GENERATE_BAD: dict[str, list[Any]] = {
    "temperature": [float("inf"), float("nan"), -1.0, "hot", [1.0]],
    "top_k": [-1, 1.5, "5", float("inf")],
    "top_p": [2.0, -0.5, float("nan"), "x"],
    "max_new_tokens": [-1, 1.5, "5", 10**9, 10**15, 2**62, float("inf")],
    "max_length": [-3, 10**12, "long"],
    "num_beams": [0, -2, 1.5, "2"],
    "num_return_sequences": [0, -1, 99],
    "repetition_penalty": [0.0, -1.0, float("inf"), float("nan")],
    "length_penalty": [float("nan"), float("inf")],
    "do_sample": ["yes", 2, [True]],
    "eos_token_id": [-5, 10**6, "eos", [1, "x"], 1.5],
    "pad_token_id": [-2, 10**9, "pad"],
    "bad_words_ids": [[[-1]], [["a"]], [1, 2], "bad", [[10**6]]],
    "min_new_tokens": [-1, "3"],
    "no_repeat_ngram_size": [-1, 1.5],
    "stop_strings": [3, [3], [""]],
    "attention_mask": ["shape", "list"],
    "not_an_argument": [1],
}


#: "Bad" values that are legal, harmless settings: accepted and working is a correct result.
GENERATE_HARMLESS = {
    ("max_length", repr(10**12)),  # max_new_tokens, given too, wins (as in transformers)
    ("eos_token_id", repr(10**6)),  # an end token the model never emits: decoding runs to the length
    ("bad_words_ids", repr([[10**6]])),  # a banned id the model never emits
    ("pad_token_id", repr(10**9)),  # only written after an eos; checked below if it ever is
}


#: Numbers out of range for a sampling-only setting are ignored (with a warning) when decoding
#: greedily, as transformers ignores them: a correct result. Wrong types are errors in every mode.
SAMPLING_ONLY = {"temperature", "top_p"}


def case_generate(rng: random.Random, fx: Fixtures, scratch: Path) -> tuple[str, str, Any]:
    import torch

    model = _forward_model(fx)
    B, T = rng.randint(1, 2), rng.randint(1, 5)
    ids = torch.randint(0, 128, (B, T))
    kwargs: dict[str, Any] = {"max_new_tokens": rng.randint(1, 6), "pad_token_id": 0}
    if rng.random() < 0.4:
        kwargs.update(do_sample=True, temperature=0.7, top_k=20)
    if rng.random() < 0.2:
        kwargs.update(num_beams=2)
    bad = rng.random() < 0.8
    arg = "valid"
    if bad:
        arg = rng.choice(list(GENERATE_BAD))
        value = rng.choice(GENERATE_BAD[arg])
        if arg == "attention_mask":
            value = torch.ones(B, T + 1, dtype=torch.long) if value == "shape" else [[1] * T] * B
        if arg == "num_return_sequences":
            kwargs["num_beams"] = 1 if value == 99 else kwargs.get("num_beams", 1)
        kwargs[arg] = value
    what = f"{arg}: " + ", ".join(f"{k}={_short(v)}" for k, v in kwargs.items()) + f", input_ids={B}x{T}"
    torch.manual_seed(rng.randrange(2**31))
    try:
        with torch.no_grad():
            out = model.generate(ids, **kwargs)
    except BaseException as e:  # noqa: BLE001
        outcome, detail = classify(e, [arg] if bad else [])
        if not bad:
            return ("raw" if outcome == "clean" else outcome), what, "valid arguments refused: " + detail
        return outcome, what, detail
    ignored = arg in SAMPLING_ONLY and not kwargs.get("do_sample") and isinstance(kwargs[arg], (int, float))
    # 99 samples per prompt is a legal request when sampling: correct if 99 rows per prompt come back
    many = arg == "num_return_sequences" and kwargs.get("do_sample") and kwargs[arg] == 99
    if many:
        rows = (out if isinstance(out, torch.Tensor) else out.sequences).shape[0]
        if rows != B * 99:
            return "silent", what, f"num_return_sequences=99 gave {rows} rows for {B} prompts"
        return "correct", what, ""
    if bad and (arg, repr(kwargs[arg])) not in GENERATE_HARMLESS and not ignored:
        return "silent", what, f"accepted {arg}={_short(kwargs[arg])}"
    seqs = out if isinstance(out, torch.Tensor) else out.sequences
    if seqs.dim() != 2 or seqs.shape[1] < T or not torch.equal(seqs[: B, :T], ids) and seqs.shape[0] == B:
        return "silent", what, f"output {tuple(seqs.shape)} does not continue the prompt"
    if seqs.min() < 0 or seqs.max() >= 128:
        return "silent", what, f"output holds ids outside the vocabulary: {seqs.tolist()}"
    return "correct", what, ""


# ------------------------------------------------------------------------------------ saves


def case_saves(rng: random.Random, fx: Fixtures, scratch: Path) -> tuple[str, str, Any]:
    import torch

    import neox.checkpoint
    from neox import GPTNeoXForCausalLM

    layouts = {"single": "5GB", "three": THREE_SHARDS, "two": "60KB"}
    first, second = rng.choice(list(layouts)), rng.choice(list(layouts))
    base = fx.copy(fx.single if first == "single" else fx.sharded, scratch)
    if first == "two":
        GPTNeoXForCausalLM.from_pretrained(base).save_pretrained(base, max_shard_size=layouts["two"])
    old_state = _folder_state(base)
    torch.manual_seed(rng.randrange(2**31))
    new = GPTNeoXForCausalLM(fx.config).eval()
    fault = rng.choice(["kill", "kill", "fsize", "readonly"])
    dry = scratch / "dry"
    shutil.copytree(base, dry)
    ops: list[tuple[str, str, str]] = []
    neox.checkpoint.FILE_OP_HOOK = lambda when, op, path: ops.append((when, op, Path(path).name))
    try:
        new.save_pretrained(dry, max_shard_size=layouts[second])
    finally:
        neox.checkpoint.FILE_OP_HOOK = None
    new_state = _folder_state(dry)
    folder = scratch / "target"
    shutil.copytree(base, folder)
    if fault == "kill":
        k = rng.randrange(len(ops))
        what = f"kill {ops[k][0]} {ops[k][1]} {ops[k][2]} ({k}/{len(ops)}), {first}->{second}"
        status, message = _in_child(lambda: _kill_at(new, folder, layouts[second], k))
        if not (os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL):
            return "raw", what, f"the save was not killed: {message}"
        return _judge_folder(folder, old_state, new_state, what, allow=("old", "new"))
    if fault == "fsize":
        budget = rng.randrange(0, 120_000)
        what = f"file-size limit {budget} bytes, {first}->{second}"

        def limited() -> None:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (budget, budget))
            new.save_pretrained(folder, max_shard_size=layouts[second])

        status, message = _in_child(limited)
        if message == "ok":
            return _judge_folder(folder, old_state, new_state, what, allow=("new",))
        outcome = "clean" if message.startswith(("OSError", "PermissionError")) and str(folder) in message else "raw"
        if outcome == "raw":
            return outcome, what, message
        return _judge_folder(folder, old_state, new_state, what, allow=("old",), on_ok="clean")
    # read-only target
    what = f"read-only folder, {first}->{second}"
    os.chmod(folder, 0o555)
    try:
        def readonly() -> None:
            if os.geteuid() == 0:  # root ignores permissions: save as nobody
                os.setgid(65534)
                os.setuid(65534)
            new.save_pretrained(folder, max_shard_size=layouts[second])

        status, message = _in_child(readonly)
    finally:
        os.chmod(folder, 0o755)
    if message == "ok":
        return "silent", what, "saved into a read-only folder"
    if not (message.startswith(("PermissionError", "OSError")) and str(folder) in message):
        return "raw", what, message
    return _judge_folder(folder, old_state, new_state, what, allow=("old",), on_ok="clean")


def _kill_at(new: Any, folder: Path, size: str, k: int) -> None:
    import neox.checkpoint

    calls = [0]

    def hook(when: str, op: str, path: str) -> None:
        if calls[0] == k:
            os.kill(os.getpid(), signal.SIGKILL)
        calls[0] += 1

    neox.checkpoint.FILE_OP_HOOK = hook
    new.save_pretrained(folder, max_shard_size=size)


def _in_child(fn: Callable[[], None]) -> tuple[int, str]:
    """Run fn in a forked child; (wait status, "ok" or "Type: message")."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(read)
            try:
                fn()
                os.write(write, b"ok")
            except BaseException as e:  # noqa: BLE001 - reported to the parent
                os.write(write, f"{type(e).__name__}: {e}".encode()[:4000])
        finally:
            os._exit(0)
    os.close(write)
    chunks = []
    while True:
        chunk = os.read(read, 4096)
        if not chunk:
            break
        chunks.append(chunk)
    os.close(read)
    _, status = os.waitpid(pid, 0)
    return status, b"".join(chunks).decode(errors="replace")


def _folder_state(folder: Path) -> dict:
    from neox.checkpoint import HubOptions, find_checkpoint, iter_checkpoint

    return {k: t.clone() for _, k, t in iter_checkpoint(find_checkpoint(folder, HubOptions()))}


def _judge_folder(folder: Path, old: dict, new: dict, what: str, allow: tuple[str, ...],
                  on_ok: str = "correct") -> tuple[str, str, Any]:
    import torch

    try:
        state = _folder_state(folder)
    except BaseException as e:  # noqa: BLE001
        return "silent", what, f"the folder no longer loads: {type(e).__name__}: {e}"

    def same(a: dict, b: dict) -> bool:
        return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    found = "old" if same(state, old) else "new" if same(state, new) else "mixed"
    if found not in allow:
        return "silent", what, f"the folder holds the {found} checkpoint (expected {' or '.join(allow)})"
    return on_ok, what, found


# ------------------------------------------------------------------------------------ dispatch

CASES = {"config": case_config, "safetensors": case_safetensors, "index": case_index, "tokenizer": case_tokenizer,
         "forward": case_forward, "saves": case_saves, "generate": case_generate}


def run_case(case: dict, fx: Fixtures) -> dict:
    rng = random.Random(f"{case['seed']}:{case['case']}")
    scratch = Path(tempfile.mkdtemp(prefix="case-", dir=fx.root))
    os.chmod(scratch, 0o755)
    try:
        outcome, what, detail = CASES[case["surface"]](rng, fx, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return {"outcome": outcome, "what": what, "detail": str(detail)[:1000]}
