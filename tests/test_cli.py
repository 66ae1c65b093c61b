"""The ``neox`` command line, end to end in subprocesses, on the shipped model.

Every subprocess runs with HF_HUB_OFFLINE=1 and a fresh HF_HOME, so nothing reaches the
network and no user cache is read. Contract checked here: stdout is the text (or one JSON
object), the timing line is on stderr, and an error is one ``neox: error:`` line with exit
status 2 (command line), 1 (run time) or 130 (Ctrl-C) -- never a traceback.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import build_hub_cache
from neox.cli import DEFAULT_MODEL, TerminalStreamer

PROMPT = "def fibonacci(n):"


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf_home"), PYTHONUNBUFFERED="1")
    env.pop("NEOX_DEBUG", None)
    env.pop("HF_HUB_CACHE", None)
    return env


def neox(env: dict[str, str], *args: str, stdin: str | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "neox", *args], input=stdin if stdin is not None else "",
        capture_output=True, text=True, env=env, timeout=timeout,
    )


def assert_one_line_error(proc: subprocess.CompletedProcess, code: int, *fragments: str) -> None:
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("neox: error: "), proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    assert proc.stdout == ""


# ------------------------------------------------------------------------------------- generate


def test_generate_streams_the_same_text_that_json_reports(env):
    streamed = neox(env, "generate", PROMPT, "-n", "16", "--seed", "7")
    assert streamed.returncode == 0, streamed.stderr
    assert "tokens/s" in streamed.stderr and "Traceback" not in streamed.stderr
    as_json = neox(env, "generate", PROMPT, "-n", "16", "--seed", "7", "--json")
    assert as_json.returncode == 0, as_json.stderr
    result = json.loads(as_json.stdout)  # exactly one JSON document on stdout
    # Same seed, same settings: the streamed stdout is the prompt followed by the JSON's text.
    assert streamed.stdout == PROMPT + result["text"]
    assert result["prompt"] == PROMPT
    assert 0 < result["new_tokens"] == len(result["tokens"]) <= 16
    assert result["finish_reason"] in ("eos", "length")
    assert (result["finish_reason"] == "length") == (result["new_tokens"] == 16 and result["tokens"][-1] != 0)
    assert result["seed"] == 7 and result["do_sample"] is True
    assert result["tokens_per_s"] > 0
    assert set(result["timings"]) == {"load_s", "first_token_s", "generate_s"}
    assert result["dtype"] == "float32" and result["device"] == "cpu"


def test_generate_json_tokens_decode_to_its_text(env):
    proc = neox(env, "generate", PROMPT, "-n", "12", "--greedy", "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    from neox import GPTNeoXTokenizerFast

    tokenizer = GPTNeoXTokenizerFast.from_pretrained(DEFAULT_MODEL)
    assert tokenizer.decode(result["tokens"], skip_special_tokens=True) == result["text"]
    assert result["do_sample"] is False


def test_greedy_matches_the_library(env):
    """The command line is a thin layer: greedy text equals model.generate's own."""
    from neox import GPTNeoXForCausalLM, GPTNeoXTokenizerFast

    proc = neox(env, "generate", PROMPT, "-n", "12", "--greedy", "--json")
    assert proc.returncode == 0, proc.stderr
    tokenizer = GPTNeoXTokenizerFast.from_pretrained(DEFAULT_MODEL)
    model = GPTNeoXForCausalLM.from_pretrained(DEFAULT_MODEL, dtype=torch.float32)
    ids = tokenizer(PROMPT, return_tensors="pt")["input_ids"]
    out = model.generate(ids, max_new_tokens=12, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    assert json.loads(proc.stdout)["tokens"] == out[0, ids.shape[1]:].tolist()


def test_prompt_from_stdin_equals_prompt_argument(env):
    piped = neox(env, "generate", "-n", "8", "--seed", "3", "--json", stdin=PROMPT)
    dash = neox(env, "generate", "-", "-n", "8", "--seed", "3", "--json", stdin=PROMPT)
    given = neox(env, "generate", PROMPT, "-n", "8", "--seed", "3", "--json")
    for proc in (piped, dash, given):
        assert proc.returncode == 0, proc.stderr
    a, b, c = (json.loads(p.stdout) for p in (piped, dash, given))
    assert a["prompt"] == b["prompt"] == PROMPT
    assert a["tokens"] == b["tokens"] == c["tokens"]


def test_beam_search_prints_the_result(env):
    proc = neox(env, "generate", PROMPT, "-n", "8", "--num-beams", "2", "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(PROMPT) and len(proc.stdout) > len(PROMPT)
    assert proc.stderr == ""


@pytest.mark.skipif(shutil.which("neox") is None, reason="the neox console script is not installed (pip install -e .)")
def test_console_script_is_installed(env):
    proc = subprocess.run(["neox", "generate", PROMPT, "-n", "4", "--greedy", "-q"], capture_output=True, text=True,
                          env=env, timeout=120, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(PROMPT)


def test_model_from_the_hub_cache_loads_offline(env, tmp_path):
    build_hub_cache(Path(env["HF_HOME"]) / "hub", DEFAULT_MODEL, "someone/tiny-neox")
    proc = neox(env, "generate", PROMPT, "--model", "someone/tiny-neox", "-n", "4", "--greedy", "--json")
    assert proc.returncode == 0, proc.stderr
    local = neox(env, "generate", PROMPT, "-n", "4", "--greedy", "--json")
    assert json.loads(proc.stdout)["tokens"] == json.loads(local.stdout)["tokens"]


# --------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--max-new-tokens", "0"], "--max-new-tokens"),
        (["--temperature", "0"], "--temperature"),
        (["--temperature", "warm"], "--temperature"),
        (["--top-k", "-1"], "--top-k"),
        (["--top-p", "1.5"], "--top-p"),
        (["--num-beams", "0"], "--num-beams"),
        (["--seed", "x"], "--seed"),
        (["--dtype", "int8"], "--dtype"),
        (["--greedy", "--top-p", "0.5"], "--greedy"),
        (["--no-such-option"], "--no-such-option"),
    ],
)
def test_bad_option_values_exit_2(env, args, fragment):
    assert_one_line_error(neox(env, "generate", PROMPT, *args), 2, fragment)


def test_no_command_and_empty_prompt_exit_2(env):
    assert_one_line_error(neox(env), 2, "no command")
    assert_one_line_error(neox(env, "generate", stdin=""), 2, "prompt")
    assert_one_line_error(neox(env, "generate", ""), 2, "prompt")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error when CUDA is absent")
def test_unavailable_device_exits_2(env):
    assert_one_line_error(neox(env, "generate", PROMPT, "--device", "cuda"), 2, "CUDA")
    assert_one_line_error(neox(env, "generate", PROMPT, "--device", "toaster"), 2, "toaster")


def test_unknown_model_exits_1(env, tmp_path):
    missing = tmp_path / "no-such-model"
    assert_one_line_error(neox(env, "generate", PROMPT, "--model", str(missing)), 1, "no-such-model")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_one_line_error(neox(env, "generate", PROMPT, "--model", str(empty)), 1, "config.json")
    assert_one_line_error(neox(env, "info", str(missing)), 1, "no-such-model")


def test_offline_without_a_cached_copy_exits_1(env):
    proc = neox(env, "generate", PROMPT, "--model", "EleutherAI/pythia-70m")
    assert_one_line_error(proc, 1, "EleutherAI/pythia-70m", "offline")
    assert_one_line_error(neox(env, "info", "EleutherAI/pythia-70m"), 1, "offline")


def test_ctrl_c_while_streaming_exits_130(env):
    # Greedy, long: still streaming when the signal arrives (the model rarely ends a file early).
    proc = subprocess.Popen(
        [sys.executable, "-m", "neox", "generate", "class Parser:\n    def __init__(self", "-n", "3000", "--greedy"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
    )
    try:
        # Wait until the generated text (past the echoed prompt) starts to arrive.
        received = b""
        deadline = time.monotonic() + 120
        while len(received) < 60 and time.monotonic() < deadline:
            chunk = os.read(proc.stdout.fileno(), 4096)
            if not chunk:
                break
            received += chunk
        assert proc.poll() is None, "generation ended before it could be interrupted"
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    stderr = stderr.decode()
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert stderr.strip().splitlines()[-1] == "neox: interrupted"


# ----------------------------------------------------------------------------------------- info


def test_info_reports_config_parameters_dtype_and_files(env):
    from neox import GPTNeoXForCausalLM

    model = GPTNeoXForCausalLM.from_pretrained(DEFAULT_MODEL)
    proc = neox(env, "info", "--json")
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["parameters"] == model.num_parameters()
    assert info["dtype"] == str(model.dtype).removeprefix("torch.")  # dtype="auto": as stored
    assert info["config"]["hidden_size"] == model.config.hidden_size
    on_disk = {p.name: p.stat().st_size for p in DEFAULT_MODEL.iterdir() if p.is_file()}
    assert info["files"] == on_disk and info["total_bytes"] == sum(on_disk.values())

    text = neox(env, "info", str(DEFAULT_MODEL))
    assert text.returncode == 0, text.stderr
    assert f"{model.num_parameters():,}" in text.stdout and "model.safetensors" in text.stdout


# ------------------------------------------------------------------------------------- streamer


class _Recorder(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.writes: list[str] = []

    def write(self, s: str) -> int:
        self.writes.append(s)
        return super().write(s)


def test_streamer_writes_each_piece_once_and_never_half_a_character():
    from neox import GPTNeoXTokenizerFast

    tokenizer = GPTNeoXTokenizerFast.from_pretrained(DEFAULT_MODEL)
    text = "x = '東京 café' + \"naïve\"\n"
    ids = tokenizer(text)["input_ids"]
    out = _Recorder()
    streamer = TerminalStreamer(tokenizer, out)
    streamer.put(torch.tensor([[5, 6]]))  # the prompt: skipped
    for i in ids:
        streamer.put(torch.tensor([i]))
    streamer.end()
    assert out.getvalue() == text == streamer.text
    assert len(out.writes) > 1  # streamed, not written at the end
    assert all("\ufffd" not in w for w in out.writes)
