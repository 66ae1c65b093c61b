"""The ``neox`` command line (also ``python -m neox``).

    neox generate "def fibonacci(n):"          # stream a continuation from the shipped model
    echo "import os" | neox generate --json    # prompt on stdin; one JSON object on stdout
    neox info EleutherAI/pythia-70m            # config, parameter count, dtype, file sizes

stdout carries only the text (or the JSON object); timings and tokens/s go to stderr. Errors are
one line, ``neox: error: ...``, with exit status 2 for a bad command line or option value, 1 for a
failure at run time (model not found, offline without a cached copy, ...) and 130 for Ctrl-C.
Set ``NEOX_DEBUG=1`` to get the traceback instead.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Sequence, TextIO

__all__ = ["main", "DEFAULT_MODEL", "TerminalStreamer"]

#: The small GPT-NeoX trained by scripts/train_default_model.py and shipped in the package.
DEFAULT_MODEL = Path(__file__).resolve().parent / "default_model"

EXIT_RUNTIME, EXIT_USAGE, EXIT_INTERRUPTED, EXIT_BROKEN_PIPE = 1, 2, 130, 141

DTYPES = ("auto", "float32", "float16", "bfloat16")

# Sampling defaults of `neox generate` (transformers' own defaults are greedy unless the
# checkpoint's generation_config says otherwise; a small model loops when decoded greedily).
DEFAULT_TEMPERATURE = 0.8
DEFAULT_TOP_K = 50
DEFAULT_TOP_P = 0.95
DEFAULT_MAX_NEW_TOKENS = 128


class UsageError(Exception):
    """A bad command line or option value (exit status 2)."""


class RuntimeFailure(Exception):
    """The command was well-formed but could not be carried out (exit status 1)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        # argparse prints the usage block and exits; we want one line (see main()).
        raise UsageError(f"{message} (see '{self.prog} --help')")


# ------------------------------------------------------------------------------------- streaming


class TerminalStreamer:
    """A ``streamer=`` for ``model.generate``: writes the text to ``out`` as tokens arrive.

    It follows transformers' streamer protocol: ``put(ids)`` is called once with the prompt
    (skipped here), then with each new token (shape (1,) or (1, 1)); ``end()`` after the last.
    The generated ids are decoded as a whole each time and only the new suffix is written; a
    suffix ending in U+FFFD (a UTF-8 character still missing bytes) is held back until it is
    complete.
    """

    def __init__(self, tokenizer: Any, out: TextIO) -> None:
        self.tokenizer = tokenizer
        self.out = out
        self.tokens: list[int] = []
        self.first_token_time: float | None = None
        self._prompt_seen = False
        self._written = 0
        self._text = ""

    def put(self, value: Any) -> None:
        ids = value.tolist() if hasattr(value, "tolist") else value
        while isinstance(ids, list) and ids and isinstance(ids[0], list):
            if len(ids) > 1:
                raise ValueError("TerminalStreamer supports a batch of one sequence")
            ids = ids[0]
        ids = [int(i) for i in (ids if isinstance(ids, list) else [ids])]
        if not self._prompt_seen:
            self._prompt_seen = True
            return
        if self.first_token_time is None:
            self.first_token_time = time.perf_counter()
        self.tokens.extend(ids)
        self._write(final=False)

    def end(self) -> None:
        self._write(final=True)

    @property
    def text(self) -> str:
        """Everything written so far."""
        return self._text[: self._written]

    def _write(self, final: bool) -> None:
        self._text = self.tokenizer.decode(self.tokens, skip_special_tokens=True)
        end = len(self._text)
        if not final:
            while end > self._written and self._text[end - 1] == "\ufffd":
                end -= 1
        if end > self._written:
            self.out.write(self._text[self._written : end])
            self.out.flush()
            self._written = end


# --------------------------------------------------------------------------------------- helpers


# argparse prefixes these messages with "argument --name: ".


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _number(low: float, high: float | None, low_open: bool) -> Any:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
        too_low = value <= low if low_open else value < low
        if value != value or too_low or (high is not None and value > high):
            bounds = f"{'>' if low_open else '>='} {low:g}" + (f" and <= {high:g}" if high is not None else "")
            raise argparse.ArgumentTypeError(f"must be {bounds}, got {text}")
        return value

    return parse


def _top_k(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0 (0 turns it off), got {value}")
    return value


def _seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
    if not 0 <= value < 2**63:
        raise argparse.ArgumentTypeError(f"must be in [0, 2**63), got {value}")
    return value


def _model_name(model: str | None) -> str:
    return str(DEFAULT_MODEL) if model is None else model


def _format_bytes(n: int) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _resolve_device(name: str) -> Any:
    from .loading import resolve_device

    try:
        return resolve_device(name)
    except ValueError as e:
        raise UsageError(f"--device: {e}") from None


def _load(model_name: str, device: Any, dtype_name: str, revision: str | None) -> tuple[Any, Any]:
    """(model, tokenizer); load failures become RuntimeFailure with the library's message."""
    import torch

    from .modeling import GPTNeoXForCausalLM

    if dtype_name == "auto":
        # The checkpoint's own dtype on an accelerator; float32 on the CPU, where half-precision
        # matmuls are slow or missing (the shipped model is stored in float16).
        dtype: Any = torch.float32 if device.type == "cpu" else "auto"
    else:
        dtype = getattr(torch, dtype_name)
    hub = {"revision": revision} if revision else {}
    try:
        model = GPTNeoXForCausalLM.from_pretrained(model_name, dtype=dtype, device_map=str(device), **hub)
        from . import GPTNeoXTokenizerFast

        tokenizer = GPTNeoXTokenizerFast.from_pretrained(model_name, **hub)
    except (OSError, ValueError) as e:
        raise RuntimeFailure(_one_line(e)) from None
    return model, tokenizer


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text


# -------------------------------------------------------------------------------------- generate


def _read_prompt(args: argparse.Namespace) -> str:
    if args.prompt is not None and args.prompt != "-":
        prompt = args.prompt
    elif args.prompt is None and sys.stdin is not None and sys.stdin.isatty():
        raise UsageError("no prompt: pass it as an argument, or pipe it on stdin")
    else:
        prompt = sys.stdin.read() if sys.stdin is not None else ""
    if not prompt:
        raise UsageError("the prompt is empty")
    return prompt


def _generation_kwargs(args: argparse.Namespace) -> tuple[dict[str, Any], bool]:
    sampling_given = [name for name in ("temperature", "top_k", "top_p") if getattr(args, name) is not None]
    if args.greedy and sampling_given:
        flags = ", ".join("--" + n.replace("_", "-") for n in sampling_given)
        raise UsageError(f"--greedy cannot be combined with {flags}")
    # Beam search is deterministic unless sampling options ask for beam sampling.
    do_sample = not args.greedy and (args.num_beams == 1 or bool(sampling_given))
    kwargs: dict[str, Any] = {"max_new_tokens": args.max_new_tokens, "num_beams": args.num_beams, "do_sample": do_sample}
    if do_sample:
        kwargs["temperature"] = DEFAULT_TEMPERATURE if args.temperature is None else args.temperature
        kwargs["top_k"] = DEFAULT_TOP_K if args.top_k is None else args.top_k
        kwargs["top_p"] = DEFAULT_TOP_P if args.top_p is None else args.top_p
    return kwargs, do_sample


def cmd_generate(args: argparse.Namespace) -> int:
    gen_kwargs, do_sample = _generation_kwargs(args)
    prompt = _read_prompt(args)
    model_name = _model_name(args.model)

    import torch

    device = _resolve_device(args.device)
    seed = args.seed if args.seed is not None else int.from_bytes(os.urandom(4), "little") & 0x7FFFFFFF
    t0 = time.perf_counter()
    model, tokenizer = _load(model_name, device, args.dtype, args.revision)
    load_s = time.perf_counter() - t0

    encoded = tokenizer(prompt, return_tensors="pt")
    input_ids = encoded["input_ids"].to(device)
    prompt_tokens = int(input_ids.shape[1])
    if prompt_tokens == 0:
        raise UsageError("the prompt encodes to no tokens")
    context = model.config.max_position_embeddings
    if prompt_tokens + args.max_new_tokens > context:
        _stderr(f"neox: warning: {prompt_tokens} prompt + {args.max_new_tokens} new tokens exceed the model's "
                f"context of {context} tokens; text past it degrades")
    eos = model.generation_config.eos_token_id if model.generation_config is not None else None
    eos_ids = set(eos if isinstance(eos, list) else [] if eos is None else [eos])
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (min(eos_ids) if eos_ids else None)

    stream = not args.json and args.num_beams == 1
    # With --json the streamer writes nowhere and only times the first token (beam search
    # cannot stream: its best sequence is known only at the end).
    sink = sys.stdout if stream else io.StringIO()
    streamer = TerminalStreamer(tokenizer, sink) if args.num_beams == 1 else None
    if stream:
        sys.stdout.write(prompt)
        sys.stdout.flush()
    torch.manual_seed(seed)
    t1 = time.perf_counter()
    with torch.inference_mode():
        output = model.generate(
            input_ids,
            attention_mask=encoded["attention_mask"].to(device),
            pad_token_id=pad,
            streamer=streamer,
            **gen_kwargs,
        )
    generate_s = time.perf_counter() - t1
    sequences = output.sequences if hasattr(output, "sequences") else output
    new_ids = [int(i) for i in sequences[0, prompt_tokens:].tolist()]
    text = tokenizer.decode(new_ids, skip_special_tokens=True)
    finish_reason = "eos" if new_ids and new_ids[-1] in eos_ids else "length"
    tokens_per_s = len(new_ids) / generate_s if generate_s > 0 else float("inf")

    if args.json:
        first = streamer.first_token_time if streamer is not None else None
        result = {
            "model": model_name,
            "prompt": prompt,
            "text": text,
            "tokens": new_ids,
            "prompt_tokens": prompt_tokens,
            "new_tokens": len(new_ids),
            "finish_reason": finish_reason,
            "seed": seed,
            "do_sample": do_sample,
            "generation": gen_kwargs,
            "dtype": str(model.dtype).removeprefix("torch."),
            "device": str(device),
            "timings": {
                "load_s": round(load_s, 4),
                "first_token_s": None if first is None else round(first - t1, 4),
                "generate_s": round(generate_s, 4),
            },
            "tokens_per_s": round(tokens_per_s, 2),
        }
        sys.stdout.write(json.dumps(result, ensure_ascii=False) + "\n")
    else:
        if not stream:
            sys.stdout.write(prompt + text)
        written = prompt + (streamer.text if streamer is not None else text)
        if sys.stdout.isatty() and not written.endswith("\n"):
            sys.stdout.write("\n")
    sys.stdout.flush()
    if not args.quiet:
        _stderr(f"neox: {len(new_ids)} tokens in {generate_s:.2f} s ({tokens_per_s:.1f} tokens/s, {finish_reason}); "
                f"model loaded in {load_s:.2f} s ({str(model.dtype).removeprefix('torch.')}, {device})")
    return 0


# ------------------------------------------------------------------------------------------ info


def _model_files(model_name: str, revision: str | None) -> tuple[str, dict[str, int], Path]:
    """(where, {relative path: size}, config path) for a folder or a Hub repo."""
    from .hub import HubOptions, is_local, resolve_file

    options = HubOptions(revision=revision)
    try:
        config_path = resolve_file(model_name, "config.json", options, required=True)
    except OSError as e:
        raise RuntimeFailure(_one_line(e)) from None
    assert config_path is not None
    if is_local(model_name):
        root, where = Path(model_name).expanduser(), "folder"
    else:
        root, where = config_path.parent, "cached files"
        remote = _remote_file_sizes(model_name, revision)
        if remote:
            return "repo files", remote, config_path
    sizes = {
        p.relative_to(root).as_posix(): p.stat().st_size
        for p in sorted(root.rglob("*"))
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
    }
    return where, sizes, config_path


def _remote_file_sizes(repo_id: str, revision: str | None) -> dict[str, int]:
    """File sizes listed by the Hub, or {} when offline or unreachable (the cache is used then)."""
    from .hub import _offline

    if _offline():
        return {}
    try:
        from huggingface_hub import HfApi

        info = HfApi().model_info(repo_id, revision=revision, files_metadata=True)
    except Exception:  # noqa: BLE001 - any failure means "use what is cached"
        return {}
    return {s.rfilename: int(s.size or 0) for s in (info.siblings or [])}


def cmd_info(args: argparse.Namespace) -> int:
    model_name = _model_name(args.model)
    where, sizes, config_path = _model_files(model_name, args.revision)

    import torch

    from .config import GPTNeoXConfig
    from .modeling import GPTNeoXForCausalLM

    try:
        config = GPTNeoXConfig.from_pretrained(config_path.parent)
    except (OSError, ValueError) as e:
        raise RuntimeFailure(f"{model_name}: {_one_line(e)}") from None
    with torch.device("meta"):  # shapes only: no memory, no weights read
        parameters = GPTNeoXForCausalLM(config).num_parameters()
    dtype = config.to_dict()["dtype"]  # the name as stored
    if dtype is None:
        weights = [config_path.parent / n for n in sizes if n.endswith(".safetensors")]
        if weights and all(w.is_file() for w in weights):
            from .checkpoint import checkpoint_dtype

            found = checkpoint_dtype(weights)
            dtype = None if found is None else str(found).removeprefix("torch.")
    total = sum(sizes.values())

    if args.json:
        result = {
            "model": model_name,
            "parameters": parameters,
            "dtype": dtype,
            "config": config.to_dict(),
            "files": sizes,
            "files_source": where,
            "total_bytes": total,
        }
        sys.stdout.write(json.dumps(result, indent=2, default=str) + "\n")
        return 0

    c = config
    lines = [
        f"model        {model_name}",
        f"architecture GPT-NeoX ({', '.join(c.architectures or ['GPTNeoXForCausalLM'])})",
        f"parameters   {parameters:,} ({parameters / 1e6:.1f}M)",
        f"dtype        {dtype or 'unknown'} (as stored)",
        f"layers       {c.num_hidden_layers}, hidden {c.hidden_size}, heads {c.num_attention_heads} "
        f"(head size {c.head_size}), MLP {c.intermediate_size} ({c.hidden_act})",
        f"rotary       {c.rotary_ndims} of {c.head_size} dims per head, base {c.rotary_emb_base:g}"
        + (f", scaling {c.rope_scaling}" if c.rope_scaling else ""),
        f"residual     {'parallel' if c.use_parallel_residual else 'sequential'}; "
        f"embeddings {'tied' if c.tie_word_embeddings else 'untied'}",
        f"vocab        {c.vocab_size}; context {c.max_position_embeddings} tokens; "
        f"bos {c.bos_token_id}, eos {c.eos_token_id}, pad {c.pad_token_id}",
        f"files        ({where}, {_format_bytes(total)} in all)",
    ]
    width = max((len(n) for n in sizes), default=0)
    lines += [f"  {name:<{width}}  {_format_bytes(size):>9}" for name, size in sizes.items()]
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


# ------------------------------------------------------------------------------------------ main


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = _Parser(prog="neox", description="Generate text with GPT-NeoX models, and inspect checkpoints.")
    parser.add_argument("--version", action="version", version=f"neox {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    g = sub.add_parser(
        "generate", help="stream a continuation of a prompt",
        description="Stream a continuation of PROMPT to stdout (the prompt first, then the new text). "
        "Samples by default (temperature %g, top-k %d, top-p %g); --greedy decodes greedily."
        % (DEFAULT_TEMPERATURE, DEFAULT_TOP_K, DEFAULT_TOP_P),
    )
    g.add_argument("prompt", nargs="?", metavar="PROMPT", help="the prompt; read from stdin when absent or '-'")
    g.add_argument("--model", "-m", metavar="NAME", help="a checkpoint folder or Hub repo id (default: the shipped model)")
    g.add_argument("--revision", metavar="REV", help="Hub branch, tag or commit")
    g.add_argument("--max-new-tokens", "-n", type=_positive_int, default=DEFAULT_MAX_NEW_TOKENS,
                   metavar="N", help="at most N new tokens (default: %(default)s)")
    g.add_argument("--temperature", "-t", type=_number(0.0, None, True), metavar="T",
                   help=f"sampling temperature > 0 (default: {DEFAULT_TEMPERATURE})")
    g.add_argument("--top-k", type=_top_k, metavar="K", help=f"sample from the K likeliest tokens; 0 = all (default: {DEFAULT_TOP_K})")
    g.add_argument("--top-p", type=_number(0.0, 1.0, True), metavar="P",
                   help=f"nucleus sampling mass in (0, 1] (default: {DEFAULT_TOP_P})")
    g.add_argument("--seed", type=_seed, metavar="S", help="random seed (default: a fresh one, reported by --json)")
    g.add_argument("--greedy", action="store_true", help="greedy decoding (no sampling)")
    g.add_argument("--num-beams", type=_positive_int, default=1, metavar="N",
                   help="beam search with N beams (not streamed; default: %(default)s)")
    g.add_argument("--dtype", choices=DTYPES, default="auto",
                   help="weights dtype; auto = float32 on CPU, the checkpoint's dtype on GPU (default: auto)")
    g.add_argument("--device", default="auto", metavar="DEV", help="cpu, cuda, cuda:N or auto (default: auto)")
    g.add_argument("--json", action="store_true", help="print one JSON object (text, tokens, timings, tokens/s)")
    g.add_argument("--quiet", "-q", action="store_true", help="no timing line on stderr")
    g.set_defaults(handler=cmd_generate)

    i = sub.add_parser("info", help="config, parameter count, dtype and file sizes of a model",
                       description="Describe a checkpoint without loading its weights.")
    i.add_argument("model", nargs="?", metavar="MODEL", help="a checkpoint folder or Hub repo id (default: the shipped model)")
    i.add_argument("--revision", metavar="REV", help="Hub branch, tag or commit")
    i.add_argument("--json", action="store_true", help="print one JSON object")
    i.set_defaults(handler=cmd_info)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``neox`` console script; returns the exit status."""
    debug = os.environ.get("NEOX_DEBUG", "").strip() not in ("", "0")
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if getattr(args, "handler", None) is None:
            raise UsageError("no command: use 'neox generate' or 'neox info' (see 'neox --help')")
        return args.handler(args)
    except UsageError as e:
        if debug:
            raise
        _stderr(f"neox: error: {e}")
        return EXIT_USAGE
    except RuntimeFailure as e:
        if debug:
            raise
        _stderr(f"neox: error: {e}")
        return EXIT_RUNTIME
    except KeyboardInterrupt:
        if debug:
            raise
        try:
            if sys.stdout.isatty():
                sys.stdout.write("\n")
            sys.stdout.flush()
        except (OSError, ValueError):
            pass
        _stderr("neox: interrupted")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # stdout was closed early (e.g. `neox generate ... | head -1`): stop quietly.
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return EXIT_BROKEN_PIPE
    except Exception as e:  # noqa: BLE001 - the contract is one line, never a traceback
        if debug:
            raise
        _stderr(f"neox: error: {type(e).__name__}: {_one_line(e)} (set NEOX_DEBUG=1 for the traceback)")
        return EXIT_RUNTIME


if __name__ == "__main__":
    sys.exit(main())
