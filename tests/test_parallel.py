"""Beyond one device: meta-device init, tensor parallelism and FSDP2 (2 gloo processes on CPU).

The multi-process tests spawn two processes that join a gloo process group; each checks its
properties against a single-process reference model built from the same checkpoint.
"""

from __future__ import annotations

import importlib.util
import os
import socket
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from conftest import make_tiny_config, randomize_
from neox import GPTNeoXForCausalLM
from neox.parallel import full_state_dict


# ============================================================================== meta init


def test_meta_init_then_to_empty_gives_exact_logits():
    # rotary_emb.inv_freq is a non-persistent buffer: no state dict refills it after to_empty().
    config = make_tiny_config(rotary_pct=1.0)
    torch.manual_seed(0)
    ref = randomize_(GPTNeoXForCausalLM(config)).eval()
    with torch.device("meta"):
        model = GPTNeoXForCausalLM(config)
    model.to_empty(device="cpu")
    model.load_state_dict(ref.state_dict())
    model.eval()
    ids = torch.randint(0, config.vocab_size, (2, 9), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(model(ids).logits, ref(ids).logits)
    # a cast keeps the frequencies fp32 and exact
    model.to(torch.bfloat16)
    assert torch.equal(model.gpt_neox.rotary_emb.inv_freq, ref.gpt_neox.rotary_emb.inv_freq)


# ============================================================================== one process: plans and reads


def test_auto_plan_uses_transformers_keys_under_the_base_prefix(hf):
    from neox import GPTNeoXModel
    from neox.parallel import resolve_tp_plan

    config = make_tiny_config()
    with torch.device("meta"):
        lm, base = GPTNeoXForCausalLM(config), GPTNeoXModel(config)
    theirs = hf.GPTNeoXConfig.base_model_tp_plan
    assert config.base_model_tp_plan == theirs
    assert resolve_tp_plan(lm, "auto") == {**{f"gpt_neox.{k}": v for k, v in theirs.items()},
                                           "embed_out": "colwise_gather_output"}
    assert resolve_tp_plan(base, "auto") == theirs
    with pytest.raises(ValueError, match="styles"):
        resolve_tp_plan(lm, {"embed_out": "sequence_parallel"})


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_ranks_block_read_from_the_file_is_the_slice_of_the_tensor(tmp_path, monkeypatch, dtype):
    from safetensors.torch import save_file

    import neox.parallel as parallel
    from neox.checkpoint import read_safetensors_header

    monkeypatch.setattr(parallel, "_STAGING_BYTES", 64)  # several runs of rows per column block
    full = {"w": torch.randn(7, 10).to(dtype), "b": torch.randn(9).to(dtype)}
    save_file(full, str(tmp_path / "m.safetensors"))
    header = read_safetensors_header(tmp_path / "m.safetensors")
    with open(tmp_path / "m.safetensors", "rb") as f:
        for key, index in [("w", (slice(2, 5), slice(None))), ("w", (slice(None), slice(3, 8))),
                           ("w", None), ("b", (slice(5, 9),))]:
            entry = header.tensors[key]
            got = parallel._read_block(f, tmp_path, key, header.data_start + entry.start, entry.shape, dtype, index)
            assert torch.equal(got, full[key][index] if index else full[key])


def test_tp_plan_outside_torchrun_and_indivisible_heads_are_clear_errors(save_neox_model, monkeypatch):
    folder, _ = save_neox_model()
    for var in ("RANK", "WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(RuntimeError, match="torchrun"):
        GPTNeoXForCausalLM.from_pretrained(folder, tp_plan="auto")
    from neox.parallel import _check_divisible

    with pytest.raises(ValueError, match="num_attention_heads"):
        _check_divisible(make_tiny_config(num_attention_heads=4, hidden_size=32), 3)


# ============================================================================== two gloo processes


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank: int, world: int, port: int, fn: Callable[..., None], args: tuple) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        fn(rank, *args)
    finally:
        dist.destroy_process_group()


def spawn(fn: Callable[..., None], *args: Any, world: int = 2) -> None:
    """Run fn(rank, *args) in ``world`` fresh processes joined by gloo; a failure in any raises."""
    mp.spawn(_entry, args=(world, _free_port(), fn, args), nprocs=world, join=True)


def _tp_worker(rank: int, folder: str) -> None:
    ref = GPTNeoXForCausalLM.from_pretrained(folder)
    tp = GPTNeoXForCausalLM.from_pretrained(folder, tp_plan="auto")
    H = ref.config.num_attention_heads
    Hl = tp.num_local_heads
    assert Hl == H // 2
    mine = slice(rank * Hl, (rank + 1) * Hl)  # the fused QKV's row block r holds heads r·H/W …
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, ref.config.vocab_size, (2, 7), generator=gen)
    mask = torch.ones_like(ids)
    mask[1, :3] = 0  # left padding
    with torch.no_grad():
        # logits, with and without padding
        assert (tp(ids).logits - ref(ids).logits).abs().max() <= 1e-5
        assert (tp(ids, attention_mask=mask).logits - ref(ids, attention_mask=mask).logits).abs().max() <= 1e-5
        assert abs(tp(ids, labels=ids).loss - ref(ids, labels=ids).loss) <= 1e-5
        # the cache holds this rank's heads: the reference cache's slice
        got, want = tp(ids, use_cache=True).past_key_values, ref(ids, use_cache=True).past_key_values
        assert got.keys[0].shape[1] == Hl
        for layer in range(len(want)):
            for a, b in zip(got[layer], want[layer]):
                assert (a - b[:, mine]).abs().max() <= 1e-5
        # attention probabilities of local heads; head_mask over all heads
        a_tp = tp(ids, output_attentions=True).attentions
        a_ref = ref(ids, output_attentions=True).attentions
        assert all((a - b[:, mine]).abs().max() <= 1e-5 for a, b in zip(a_tp, a_ref))
        hm = torch.rand(ref.config.num_hidden_layers, H, generator=gen)
        assert (tp(ids, head_mask=hm).logits - ref(ids, head_mask=hm).logits).abs().max() <= 1e-5
        # decoding: greedy, with the static cache, and sampling with every rank seeded alike
        greedy = ref.generate(ids, attention_mask=mask, max_new_tokens=8, do_sample=False)
        assert torch.equal(tp.generate(ids, attention_mask=mask, max_new_tokens=8, do_sample=False), greedy)
        assert torch.equal(tp.generate(ids, attention_mask=mask, max_new_tokens=8, do_sample=False,
                                       cache_implementation="static"), greedy)
        beams = ref.generate(ids, max_new_tokens=5, num_beams=3, do_sample=False)
        assert torch.equal(tp.generate(ids, max_new_tokens=5, num_beams=3, do_sample=False), beams)
        torch.manual_seed(5)
        sampled = ref.generate(ids, max_new_tokens=8, do_sample=True, top_k=20)
        torch.manual_seed(5)
        assert torch.equal(tp.generate(ids, max_new_tokens=8, do_sample=True, top_k=20), sampled)
        every = [torch.empty_like(sampled) for _ in range(2)]
        dist.all_gather(every, sampled)
        assert torch.equal(every[0], every[1])


def test_tensor_parallel_matches_one_process(save_neox_model):
    folder, _ = save_neox_model()
    spawn(_tp_worker, str(folder))


# ============================================================================== FSDP2


def _fsdp_example():
    """examples/fsdp_finetune.py, imported: the tests run the recipe users run."""
    path = Path(__file__).resolve().parents[1] / "examples" / "fsdp_finetune.py"
    spec = importlib.util.spec_from_file_location("fsdp_finetune", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _fsdp_worker(rank: int, folder: str, out: str) -> None:
    ex = _fsdp_example()
    B, V = 2, 128  # rows per rank, vocabulary of the tiny config
    gen = torch.Generator().manual_seed(7)

    def global_batches(padded: bool) -> list[list[list[int]]]:
        lengths = lambda: torch.randint(3, 12, (2 * B,), generator=gen).tolist() if padded else [10] * (2 * B)
        return [[torch.randint(0, V, (n,), generator=gen).tolist() for n in lengths()] for _ in range(3)]

    for padded, checkpointing in ((False, False), (True, False), (True, True)):
        ref = GPTNeoXForCausalLM.from_pretrained(folder)
        ref.train()
        model = ex.load_sharded(folder, torch.device("cpu"), gradient_checkpointing=checkpointing)
        if checkpointing:
            ref.gradient_checkpointing_enable()
        ref_opt = torch.optim.AdamW(ref.parameters(), lr=1e-3)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        for examples in global_batches(padded):
            want = ref(**ex.collate(examples, 0)).loss  # one process, the whole global batch
            want.backward()
            torch.nn.utils.clip_grad_norm_(ref.parameters(), 1.0)
            ref_opt.step()
            ref_opt.zero_grad()
            got = ex.train_step(model, opt, ex.collate(examples[rank * B : (rank + 1) * B], 0))
            assert abs(got - want.item()) <= 1e-5, (padded, checkpointing, got, want.item())
    # a resumable sharded checkpoint (torch.distributed.checkpoint) continues the same run
    ex.save_resumable(out + "-dcp", model, opt, step=3)
    resumed = ex.load_sharded(folder, torch.device("cpu"), gradient_checkpointing=True)
    resumed_opt = torch.optim.AdamW(resumed.parameters(), lr=1e-3)
    assert ex.load_resumable(out + "-dcp", resumed, resumed_opt) == 3
    examples = global_batches(True)[0]
    batch = ex.collate(examples[rank * B : (rank + 1) * B], 0)
    for _ in range(2):
        assert ex.train_step(resumed, resumed_opt, batch) == ex.train_step(model, opt, batch)
        ref(**ex.collate(examples, 0)).loss.backward()
        torch.nn.utils.clip_grad_norm_(ref.parameters(), 1.0)
        ref_opt.step()
        ref_opt.zero_grad()
    # the gathered save: rank 0 writes, and it loads back bitwise
    model.save_pretrained(out)
    gathered = full_state_dict(model.state_dict())
    if rank == 0:
        back = GPTNeoXForCausalLM.from_pretrained(out).state_dict()
        assert back.keys() == gathered.keys()
        assert all(torch.equal(back[k], gathered[k]) for k in back)
        # and it is the one-process model (compared by output: AdamW turns the rounding noise in
        # directions with no gradient, such as the keys' bias, into different but inert weights)
        ids = torch.randint(0, V, (2, 9), generator=gen)
        with torch.no_grad():
            saved = GPTNeoXForCausalLM.from_pretrained(out)(ids).logits
            assert (saved - ref.eval()(ids).logits).abs().max() <= 1e-4


def test_fsdp2_training_matches_one_process_and_saves_a_loadable_checkpoint(save_neox_model, hf, tmp_path):
    folder, _ = save_neox_model()
    out = tmp_path / "fsdp-saved"
    spawn(_fsdp_worker, str(folder), str(out))
    # transformers loads what the gathered save wrote: the same weights, and logits at the parity tolerance
    ours = GPTNeoXForCausalLM.from_pretrained(out)
    theirs = hf.GPTNeoXForCausalLM.from_pretrained(out, attn_implementation="eager")
    weights = ours.state_dict()
    for key, tensor in theirs.state_dict().items():
        key = "embed_out.weight" if key == "lm_head.weight" else key
        if key in weights:
            assert (tensor - weights[key]).abs().max() <= 1e-6, key
    ids = torch.randint(0, 128, (2, 9), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert (theirs(ids).logits - ours(ids).logits).abs().max() <= 1e-5
