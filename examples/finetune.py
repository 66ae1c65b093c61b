"""Fine-tune a GPT-NeoX causal LM on your own text files, the way transformers users write it.

    python examples/finetune.py                          # the shipped model on neox's own source, ~2 min on CPU
    python examples/finetune.py --data "my_project/**/*.py" --steps 300 --output-dir my-model
    neox generate --model my-model "def "                # then use the result

A plain PyTorch loop over ``model(input_ids=..., labels=...)`` with AdamW and a linear decay,
as in the transformers course. Only the import differs from the transformers version of this
script: ``from transformers import GPTNeoXForCausalLM, GPTNeoXTokenizerFast`` (then give
``--model``, since transformers does not ship neox's small model). The folder it writes loads in
both libraries.
"""

import argparse
import glob
import math
import random
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from neox import GPTNeoXForCausalLM, GPTNeoXTokenizerFast


def neox_paths():
    """Defaults: the model shipped with neox, and neox's own source as training text."""
    import neox.cli

    return str(neox.cli.DEFAULT_MODEL), str(Path(neox.cli.__file__).parent / "*.py")


def load_blocks(tokenizer, patterns, block_size):
    """Tokenize the files, join them with the end-of-text token and cut blocks (as run_clm.py does)."""
    paths = sorted({p for pattern in patterns for p in glob.glob(pattern, recursive=True) if Path(p).is_file()})
    if not paths:
        raise SystemExit(f"finetune.py: no files match {patterns}")
    texts = [Path(p).read_text(encoding="utf-8", errors="replace") for p in paths]
    ids = []
    for input_ids in tokenizer(texts)["input_ids"]:
        ids.extend(input_ids + [tokenizer.eos_token_id])
    blocks = [ids[i : i + block_size] for i in range(0, len(ids) - block_size + 1, block_size)]
    if len(blocks) < 2:
        raise SystemExit(f"finetune.py: {len(ids)} tokens make fewer than 2 blocks of {block_size}")
    print(f"{len(paths)} files, {len(ids):,} tokens, {len(blocks)} blocks of {block_size}")
    return blocks


@torch.no_grad()
def evaluate(model, blocks, batch_size):
    model.eval()
    losses = []
    for i in range(0, len(blocks), batch_size):
        batch = torch.tensor(blocks[i : i + batch_size])
        losses.append(model(input_ids=batch, labels=batch).loss.item() * len(batch))
    model.train()
    return sum(losses) / len(blocks)


def main():
    default_model, default_data = neox_paths()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=default_model, help="checkpoint folder or Hub repo id")
    parser.add_argument("--data", nargs="+", default=[default_data], help="text files or glob patterns")
    parser.add_argument("--output-dir", default="finetuned-model")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--block-size", type=int, default=256)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--gradient-checkpointing", action="store_true")
    args = parser.parse_args()

    random.seed(args.seed)
    torch.manual_seed(args.seed)

    tokenizer = GPTNeoXTokenizerFast.from_pretrained(args.model)
    model = GPTNeoXForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable()

    blocks = load_blocks(tokenizer, args.data, args.block_size)
    random.shuffle(blocks)
    n_eval = max(1, len(blocks) // 10)
    eval_blocks, train_blocks = blocks[:n_eval], blocks[n_eval:]
    train_loader = DataLoader(torch.tensor(train_blocks), batch_size=args.batch_size, shuffle=True, drop_last=False)

    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 - step / args.steps)

    before = evaluate(model, eval_blocks, args.batch_size)
    print(f"eval loss before: {before:.4f} (perplexity {math.exp(before):.1f})")
    model.train()
    step = 0
    while step < args.steps:
        for input_ids in train_loader:
            outputs = model(input_ids=input_ids, labels=input_ids)
            outputs.loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            step += 1
            if step % 10 == 0 or step == args.steps:
                print(f"step {step}/{args.steps}  loss {outputs.loss.item():.4f}  lr {scheduler.get_last_lr()[0]:.2e}")
            if step == args.steps:
                break
    after = evaluate(model, eval_blocks, args.batch_size)
    print(f"eval loss after: {after:.4f} (perplexity {math.exp(after):.1f})")

    model.eval()
    model.save_pretrained(args.output_dir)
    tokenizer.save_pretrained(args.output_dir)
    print(f"saved to {args.output_dir}")

    inputs = tokenizer("def ", return_tensors="pt")
    output_ids = model.generate(**inputs, max_new_tokens=32, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    print(tokenizer.decode(output_ids[0], skip_special_tokens=True))


if __name__ == "__main__":
    main()
