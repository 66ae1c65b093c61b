"""A short fine-tuning script written for transformers, run on neox by swapping one import.

    python examples/finetune_transformers_style.py MODEL_DIR TOKENIZER --output-dir out [--steps 12]

MODEL_DIR is a GPT-NeoX checkpoint folder (or Hub repo id), TOKENIZER a folder, a tokenizer.json
or a repo id. The script tokenizes padded batches, masks the padding out of the labels with -100,
trains a few AdamW steps, saves the model and tokenizer, reloads both and checks the reloaded
model's logits. With ``from transformers import ...`` instead of ``from neox import ...`` it is the
same script for transformers; nothing else changes.
"""

import argparse
import json

import torch

# The only change from the transformers version of this script is this import
# (it was: from transformers import GPTNeoXForCausalLM, GPTNeoXTokenizerFast).
from neox import GPTNeoXForCausalLM, GPTNeoXTokenizerFast

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "def add(a, b):\n    return a + b\n",
    "Hello world, hello tokenizer.",
    "for i in range(10):\n\tprint(i)\n",
    "A short line.",
    "Fine-tuning changes the weights a little at a time.",
    "naïve café, 你好 🙂",
    "The end.",
]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a GPT-NeoX checkpoint folder or Hub repo id")
    parser.add_argument("tokenizer", help="a tokenizer folder, tokenizer.json file or Hub repo id")
    parser.add_argument("--output-dir", required=True, help="where to save the fine-tuned model and tokenizer")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def make_batch(tokenizer, texts, max_length):
    batch = tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    labels = batch["input_ids"].clone()
    labels[batch["attention_mask"] == 0] = -100  # no loss on padding
    batch["labels"] = labels
    return batch


@torch.no_grad()
def evaluate(model, batch):
    model.eval()
    return model(**batch).loss.item()


def main(argv=None):
    args = parse_args(argv)
    torch.manual_seed(args.seed)

    tokenizer = GPTNeoXTokenizerFast.from_pretrained(args.tokenizer)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = GPTNeoXForCausalLM.from_pretrained(args.model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr)

    everything = make_batch(tokenizer, TEXTS, args.max_length)
    loss_before = evaluate(model, everything)
    train_losses = []
    for step in range(args.steps):
        start = (step * args.batch_size) % len(TEXTS)
        texts = (TEXTS + TEXTS)[start : start + args.batch_size]
        batch = make_batch(tokenizer, texts, args.max_length)
        model.train()
        outputs = model(**batch)
        outputs.loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        train_losses.append(outputs.loss.item())
        print(f"step {step + 1}/{args.steps}: loss {train_losses[-1]:.4f}")
    loss_after = evaluate(model, everything)

    model.save_pretrained(args.output_dir)
    tokenizer.save_pretrained(args.output_dir)

    reloaded_tokenizer = GPTNeoXTokenizerFast.from_pretrained(args.output_dir)
    reloaded_model = GPTNeoXForCausalLM.from_pretrained(args.output_dir).eval()
    check = reloaded_tokenizer(TEXTS[:3], padding=True, return_tensors="pt")
    with torch.no_grad():
        same_logits = torch.equal(model(**check).logits, reloaded_model(**check).logits)
    same_ids = torch.equal(check["input_ids"], tokenizer(TEXTS[:3], padding=True, return_tensors="pt")["input_ids"])

    results = {
        "loss_before": loss_before,
        "loss_after": loss_after,
        "train_losses": train_losses,
        "reloaded_logits_identical": same_logits,
        "reloaded_tokenizer_identical": same_ids,
    }
    print(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
