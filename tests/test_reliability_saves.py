"""Saves under faults (issue 13, class 8): killed at every file operation, failed writes, umask.

The guarantee tested: killed at any point, a save leaves a folder that loads as entirely the old
checkpoint or entirely the new one (single file ↔ sharded, same or different shard counts).

The kill test forks the test process (torch already imported, so each kill point costs
milliseconds), kills the child with SIGKILL before or after the k-th file operation of
``save_pretrained`` (the operations are counted in a dry run through
``neox.checkpoint.FILE_OP_HOOK``), and checks that the folder then holds entirely the old
weights or entirely the new ones, as neox's reader selects them, and (sampled) as transformers
loads them.
"""

from __future__ import annotations

import os
import resource
import shutil
import signal
import stat
from pathlib import Path

import pytest
import torch

import neox.checkpoint
from neox import GPTNeoXForCausalLM
from neox.checkpoint import HubOptions, find_checkpoint, iter_checkpoint

from conftest import make_tiny_config, randomize_

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")

# The tiny model's 101 kB of weights: one file, three shards, two shards.
SINGLE, THREE, TWO = "5GB", "40KB", "60KB"
PAIRS = [(SINGLE, SINGLE), (SINGLE, THREE), (THREE, SINGLE), (THREE, THREE), (THREE, TWO), (TWO, THREE)]


def model(seed: int) -> GPTNeoXForCausalLM:
    torch.manual_seed(seed)
    return randomize_(GPTNeoXForCausalLM(make_tiny_config()), seed=seed).eval()


def folder_state(folder: Path) -> dict[str, torch.Tensor]:
    checkpoint = find_checkpoint(folder, HubOptions())
    return {k: t.clone() for _, k, t in iter_checkpoint(checkpoint)}


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def count_ops(new: GPTNeoXForCausalLM, folder: Path, size: str) -> list[tuple[str, str, str]]:
    ops: list[tuple[str, str, str]] = []
    neox.checkpoint.FILE_OP_HOOK = lambda when, op, path: ops.append((when, op, Path(path).name))
    try:
        new.save_pretrained(folder, max_shard_size=size)
    finally:
        neox.checkpoint.FILE_OP_HOOK = None
    return ops


def save_killed_at(new: GPTNeoXForCausalLM, folder: Path, size: str, kill_at: int) -> bool:
    """Save in a forked child that SIGKILLs itself at the kill_at-th hook call; True if it died."""
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        try:
            calls = [0]

            def hook(when: str, op: str, path: str) -> None:
                if calls[0] == kill_at:
                    os.kill(os.getpid(), signal.SIGKILL)
                calls[0] += 1

            neox.checkpoint.FILE_OP_HOOK = hook
            new.save_pretrained(folder, max_shard_size=size)
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    return os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL


@pytest.mark.parametrize("first, second", PAIRS, ids=[f"{a}->{b}" for a, b in PAIRS])
def test_kill_at_every_file_operation_leaves_old_or_new(tmp_path, first, second, hf):
    old, new = model(0), model(1)
    base = tmp_path / "base"
    old.save_pretrained(base, max_shard_size=first)
    old_state, new_state = folder_state(base), None
    dry = tmp_path / "dry"
    shutil.copytree(base, dry)
    ops = count_ops(new, dry, second)
    new_state = folder_state(dry)
    assert not same(old_state, new_state)
    outcomes = []
    # Killing after operation k leaves the disk as killing before operation k+1 does (nothing
    # touches a file in between), so the "before" points and a kill after the last cover both.
    points = [k for k, (when, _, _) in enumerate(ops) if when == "before"] + [len(ops) - 1, len(ops)]
    for k in points:
        folder = tmp_path / f"kill{k}"
        shutil.copytree(base, folder)
        died = save_killed_at(new, folder, second, k)
        assert died == (k < len(ops)), f"kill point {k} of {len(ops)}"
        state = folder_state(folder)
        where = f"killed {ops[k][0]} {ops[k][1]} {ops[k][2]} (point {k} of {len(ops)})" if k < len(ops) else "not killed"
        assert same(state, old_state) or same(state, new_state), f"mixed checkpoint when {where}"
        outcomes.append("old" if same(state, old_state) else "new")
        if (first, second) == (THREE, THREE) and k % 10 == 0:  # sampled: transformers loads the same weights
            theirs = hf.GPTNeoXForCausalLM.from_pretrained(folder).state_dict()
            expected = old_state if outcomes[-1] == "old" else new_state
            assert all(torch.equal(theirs[k2], v) for k2, v in expected.items() if k2 in theirs)
        shutil.rmtree(folder)
    # the switch happens once: old up to the commit, new after it
    assert outcomes[0] == "old" and outcomes[-1] == "new"
    assert outcomes == sorted(outcomes, key=lambda o: o == "new")


def test_saved_files_follow_the_umask(tmp_path):
    m = model(0)
    for mask, mode in ((0o022, 0o644), (0o077, 0o600), (0o002, 0o664)):
        previous = os.umask(mask)
        try:
            folder = tmp_path / f"u{mask:o}"
            m.save_pretrained(folder, max_shard_size=THREE)
            m.save_pretrained(folder / "single")
        finally:
            os.umask(previous)
        files = [p for p in [*folder.iterdir(), *(folder / "single").iterdir()] if p.is_file()]
        assert {p.name for p in files} >= {"config.json", "generation_config.json", "model.safetensors",
                                           "model.safetensors.index.json"}
        for p in files:
            assert stat.S_IMODE(p.stat().st_mode) == mode, (p.name, oct(p.stat().st_mode), oct(mode))


@pytest.mark.parametrize("budget", [5_000, 40_000, 75_000])
def test_write_failure_names_the_file_and_keeps_the_old_checkpoint(tmp_path, budget):
    """A file-size limit (as a full disk would) stops the save; the error names the file."""
    old, new = model(0), model(1)
    folder = tmp_path / "ckpt"
    old.save_pretrained(folder, max_shard_size=THREE)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(read)
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of a signal
            resource.setrlimit(resource.RLIMIT_FSIZE, (budget, budget))
            try:
                new.save_pretrained(folder, max_shard_size=SINGLE)
                os.write(write, b"saved")
            except OSError as e:
                os.write(write, f"OSError: {e}".encode())
            except BaseException as e:  # noqa: BLE001 - reported to the parent
                os.write(write, f"{type(e).__name__}: {e}".encode())
        finally:
            os._exit(0)
    os.close(write)
    message = os.read(read, 10_000).decode()
    os.close(read)
    os.waitpid(pid, 0)
    assert message.startswith("OSError") and str(folder / "model.safetensors") in message, message
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
