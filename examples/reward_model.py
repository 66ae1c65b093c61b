"""Train a reward model with transformers' Trainer: a causal-LM checkpoint loaded into
GPTNeoXForSequenceClassification with one output (num_labels=1: regression, MSE loss).

    python examples/reward_model.py neox/default_model --output-dir reward-model [--steps 8]

MODEL is a GPT-NeoX checkpoint folder or Hub repo id; its tokenizer is read from the same place
unless --tokenizer says otherwise. The backbone comes from the checkpoint and the reward head
``score`` is new (reported as a missing weight, as transformers does); it starts at zero so every
reward starts at 0. The Trainer runs with gradient accumulation; afterwards the script saves the
model and tokenizer, reloads them, and prints a JSON summary (losses, rewards of held-out texts).
With ``from transformers import ...`` instead of ``from neox import ...`` it is the same script
for transformers, with the same losses.
"""

import argparse
import json

import torch
from transformers import Trainer, TrainingArguments  # the Trainer is transformers' in both versions

# The only change from the transformers version of this script is this import
# (it was: from transformers import GPTNeoXForSequenceClassification, GPTNeoXTokenizerFast).
from neox import GPTNeoXForSequenceClassification, GPTNeoXTokenizerFast

# (text, reward): documented, typed code is preferred over terse code.
DATA = [
    ('def area(r: float) -> float:\n    """Area of a circle of radius r."""\n    return 3.14159 * r * r\n', 1.0),
    ("def a(r):return 3.14*r*r\n", -1.0),
    ('def mean(xs: list[float]) -> float:\n    """Arithmetic mean; xs must not be empty."""\n    return sum(xs) / len(xs)\n', 1.0),
    ("def m(x):\n  return sum(x)/len(x)\n", -1.0),
    ('class Stack:\n    """A last-in, first-out stack."""\n\n    def __init__(self) -> None:\n        self.items = []\n', 1.0),
    ("class S:\n  def __init__(s): s.i=[]\n", -1.0),
    ('def is_even(n: int) -> bool:\n    """True when n is divisible by 2."""\n    return n % 2 == 0\n', 1.0),
    ("def e(n): return not n%2\n", -1.0),
    ('def greet(name: str) -> str:\n    """A greeting for name."""\n    return f"Hello, {name}!"\n', 1.0),
    ("def g(n):print('hi',n)\n", -1.0),
    ('def clamp(x: float, lo: float, hi: float) -> float:\n    """x limited to [lo, hi]."""\n    return max(lo, min(x, hi))\n', 1.0),
    ("def c(x,l,h):return max(l,min(x,h))\n", -1.0),
]
HELD_OUT = [
    'def square(x: float) -> float:\n    """x times x."""\n    return x * x\n',
    "def s(x):return x*x\n",
]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a GPT-NeoX checkpoint folder or Hub repo id (a causal LM is fine)")
    parser.add_argument("--tokenizer", help="tokenizer folder, tokenizer.json or repo id (default: MODEL)")
    parser.add_argument("--output-dir", required=True, help="where to save the reward model and tokenizer")
    parser.add_argument("--steps", type=int, default=8, help="optimizer steps")
    parser.add_argument("--batch-size", type=int, default=2, help="rows per forward pass")
    parser.add_argument("--grad-accum", type=int, default=2, help="forward passes per optimizer step")
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def rewards(model, tokenizer, texts):
    model.eval()
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        return model(**batch).logits.squeeze(-1).tolist()


def main(argv=None):
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    tokenizer = GPTNeoXTokenizerFast.from_pretrained(args.tokenizer or args.model)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = GPTNeoXForSequenceClassification.from_pretrained(args.model, num_labels=1, dtype=torch.float32)
    model.config.pad_token_id = tokenizer.pad_token_id  # the head reads each row's last non-pad token
    torch.nn.init.zeros_(model.score.weight)

    # Padded once to the longest text; the head finds each row's last real token from pad_token_id.
    encoded = tokenizer([text for text, _ in DATA], padding=True, return_tensors="pt")
    dataset = [
        {"input_ids": encoded["input_ids"][i], "attention_mask": encoded["attention_mask"][i],
         "labels": torch.tensor(reward)}
        for i, (_, reward) in enumerate(DATA)
    ]
    training_args = TrainingArguments(
        output_dir=args.output_dir, max_steps=args.steps, per_device_train_batch_size=args.batch_size,
        gradient_accumulation_steps=args.grad_accum, learning_rate=args.lr, seed=args.seed, logging_steps=1,
        save_strategy="no", report_to=[], use_cpu=True, disable_tqdm=True,
    )
    trainer = Trainer(model=model, args=training_args, train_dataset=dataset)
    trainer.train()
    train_losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]

    held_out = rewards(model, tokenizer, HELD_OUT)
    model.save_pretrained(args.output_dir)
    tokenizer.save_pretrained(args.output_dir)
    reloaded = GPTNeoXForSequenceClassification.from_pretrained(args.output_dir, dtype=torch.float32)
    summary = {
        "train_losses": train_losses,
        "problem_type": model.config.problem_type,
        "held_out_rewards": held_out,
        "reloaded_rewards_identical": rewards(reloaded, tokenizer, HELD_OUT) == held_out,
    }
    print(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    main()
