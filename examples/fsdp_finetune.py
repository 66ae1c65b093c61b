"""Fine-tune a GPT-NeoX causal LM sharded over several processes with FSDP2 (``fully_shard``).

    torchrun --nproc-per-node 2 examples/fsdp_finetune.py --steps 20 --output-dir fsdp-model
    torchrun --nproc-per-node 8 examples/fsdp_finetune.py --model M --data "docs/**/*.md" \
        --gradient-checkpointing --bf16 --checkpoint-dir ckpt --save-every 100   # resumes from ckpt

The same script runs on CPU processes (gloo) and on GPUs (NCCL, one per process). Each layer is
its own FSDP2 unit, then the root (embeddings, final LayerNorm, head): a rank stores 1/W of every
weight, gradient and AdamW state, and gathers one layer's weights at a time.

* The model is built on the meta device, sharded, materialised with ``to_empty`` and filled from
  rank 0's (memory-mapped) checkpoint, broadcast: no rank holds more than its shard plus one tensor.
* Loss over ranks: the cross-entropy is summed on each rank and divided by the number of label
  tokens in the *global* batch (``num_items_in_batch``, all-reduced), so every token weighs the
  same whatever its rank or its row's padding; FSDP2 averages gradients over ranks, so the loss is
  scaled by W before ``backward`` — the gradient is then exactly the one-process gradient.
* ``--checkpoint-dir``: resumable sharded checkpoints with ``torch.distributed.checkpoint`` (each
  rank writes its shards and its optimizer state); a rerun with the same folder resumes.
* At the end, ``save_pretrained`` gathers the shards and rank 0 writes a normal checkpoint that
  neox and transformers load.
"""

import argparse
import glob
import os
import random
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions, get_state_dict, set_model_state_dict, set_state_dict,
)
from torch.distributed.fsdp import MixedPrecisionPolicy

from neox import GPTNeoXConfig, GPTNeoXForCausalLM, GPTNeoXTokenizerFast
from neox.parallel import fully_shard_model


def setup() -> torch.device:
    """Join torchrun's process group: NCCL with one GPU per process, else gloo on the CPU."""
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    return torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")


def load_sharded(path: str, device: torch.device, bf16: bool = False, gradient_checkpointing: bool = False):
    """Meta-device model → fully_shard per layer, then the root → to_empty → weights from rank 0."""
    config = GPTNeoXConfig.from_pretrained(path)
    with torch.device("meta"):
        model = GPTNeoXForCausalLM(config)
    if gradient_checkpointing:
        model.gradient_checkpointing_enable()
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 else None
    fully_shard_model(model, **({"mp_policy": policy} if policy else {}))
    model.to_empty(device=device)  # also recomputes the rotary frequencies (no state dict holds them)
    full = {}
    if dist.get_rank() == 0:  # memory-mapped: read tensor by tensor while broadcasting
        loaded = GPTNeoXForCausalLM.from_pretrained(path, dtype=torch.float32)
        full, model.generation_config = loaded.state_dict(), loaded.generation_config
    set_model_state_dict(model, full, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
    del full
    model.train()
    return model


def collate(examples: list[list[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a list of token lists: input_ids, attention_mask, and labels (-100 at padding)."""
    T = max(len(e) for e in examples)
    input_ids = torch.full((len(examples), T), pad_id, dtype=torch.long)
    attention_mask = torch.zeros(len(examples), T, dtype=torch.long)
    for i, e in enumerate(examples):
        input_ids[i, : len(e)] = torch.tensor(e)
        attention_mask[i, : len(e)] = 1
    labels = input_ids.masked_fill(attention_mask == 0, -100)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def train_step(model, optimizer, batch: dict[str, torch.Tensor], clip: float | None = 1.0) -> float:
    """One step on this rank's part of the global batch; returns the global batch's mean loss."""
    device = next(model.parameters()).device
    batch = {k: v.to(device) for k, v in batch.items()}
    world = dist.get_world_size()
    # Tokens that are predicted (position t predicts labels[t+1]), summed over every rank.
    num_items = (batch["labels"][:, 1:] != -100).sum()
    dist.all_reduce(num_items)
    loss = model(**batch, num_items_in_batch=num_items).loss  # this rank's sum / global count
    (loss * world).backward()  # FSDP2 divides the gradient sum by W; this undoes it
    if clip is not None:
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    optimizer.step()
    optimizer.zero_grad()
    total = loss.detach().float()
    dist.all_reduce(total)
    return total.item()


def save_resumable(folder: str, model, optimizer, step: int) -> None:
    """Sharded checkpoint: each rank writes its own shards (torch.distributed.checkpoint)."""
    model_state, optim_state = get_state_dict(model, optimizer)
    dcp.save({"model": model_state, "optim": optim_state, "step": torch.tensor(step)},
             storage_writer=dcp.FileSystemWriter(folder, overwrite=True))


def load_resumable(folder: str, model, optimizer) -> int:
    """Restore what :func:`save_resumable` wrote (same world size or not); return its step."""
    model_state, optim_state = get_state_dict(model, optimizer)
    state = {"model": model_state, "optim": optim_state, "step": torch.tensor(0)}
    dcp.load(state, checkpoint_id=folder)
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
    return int(state["step"])


def load_examples(tokenizer, patterns: list[str], block_size: int) -> list[list[int]]:
    """Each file cut into pieces of at most block_size tokens (a file's last piece is shorter)."""
    paths = sorted({p for pattern in patterns for p in glob.glob(pattern, recursive=True) if Path(p).is_file()})
    if not paths:
        raise SystemExit(f"fsdp_finetune.py: no files match {patterns}")
    examples = []
    for ids in tokenizer([Path(p).read_text(encoding="utf-8", errors="replace") for p in paths])["input_ids"]:
        ids = ids + [tokenizer.eos_token_id]
        examples += [ids[i : i + block_size] for i in range(0, len(ids) - 1, block_size)]
    return [e for e in examples if len(e) > 1]


def main() -> None:
    import neox.cli

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(neox.cli.DEFAULT_MODEL), help="checkpoint folder or Hub repo id")
    parser.add_argument("--data", nargs="+", default=[str(Path(neox.cli.__file__).parent / "*.py")])
    parser.add_argument("--output-dir", default="fsdp-model")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=4, help="rows per rank per step")
    parser.add_argument("--block-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--bf16", action="store_true", help="bf16 compute, fp32 weights and gradient reduction")
    parser.add_argument("--checkpoint-dir", help="resumable sharded checkpoints (torch.distributed.checkpoint)")
    parser.add_argument("--save-every", type=int, default=0, help="steps between resumable checkpoints")
    args = parser.parse_args()

    device = setup()
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(args.seed)
    tokenizer = GPTNeoXTokenizerFast.from_pretrained(args.model)
    examples = load_examples(tokenizer, args.data, args.block_size)
    model = load_sharded(args.model, device, args.bf16, args.gradient_checkpointing)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)

    step = 0
    if args.checkpoint_dir and Path(args.checkpoint_dir, ".metadata").exists():
        step = load_resumable(args.checkpoint_dir, model, optimizer)
        if rank == 0:
            print(f"resumed from {args.checkpoint_dir} at step {step}")
    if len(examples) < args.batch_size * world:
        raise SystemExit(f"fsdp_finetune.py: {len(examples)} examples, fewer than one global batch "
                         f"({args.batch_size} rows × {world} ranks)")
    order = random.Random(args.seed)  # the same global batches on every rank, resumable by step
    batches = [order.sample(range(len(examples)), args.batch_size * world) for _ in range(args.steps)]
    for step in range(step, args.steps):
        global_batch = batches[step]
        mine = global_batch[rank * args.batch_size : (rank + 1) * args.batch_size]
        loss = train_step(model, optimizer, collate([examples[i] for i in mine], tokenizer.pad_token_id or 0))
        if rank == 0 and ((step + 1) % 10 == 0 or step + 1 == args.steps):
            print(f"step {step + 1}/{args.steps}  loss {loss:.4f}", flush=True)
        if args.checkpoint_dir and args.save_every and (step + 1) % args.save_every == 0:
            save_resumable(args.checkpoint_dir, model, optimizer, step + 1)

    model.eval()
    model.save_pretrained(args.output_dir)  # every rank: the shards are gathered, rank 0 writes
    if rank == 0:
        tokenizer.save_pretrained(args.output_dir)
        print(f"saved to {args.output_dir}")
    dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
