"""Generate text with neox, written the way transformers users write it.

    python examples/generate.py                                  # the shipped model, offline
    python examples/generate.py --prompt "class Stack:" --greedy
    python examples/generate.py --model EleutherAI/pythia-160m   # any GPT-NeoX folder or Hub repo

Only the import differs from the transformers version of this script:
``from transformers import GPTNeoXForCausalLM, GPTNeoXTokenizerFast, TextStreamer``
(and ``--model`` must then be given, since transformers does not ship neox's small model).
"""

import argparse

import torch

from neox import GPTNeoXForCausalLM, GPTNeoXTokenizerFast, TextStreamer


def default_model() -> str:
    """The small model shipped inside the neox package (neox/default_model/)."""
    import neox.cli

    return str(neox.cli.DEFAULT_MODEL)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="checkpoint folder or Hub repo id (default: the shipped model)")
    parser.add_argument("--prompt", default="def fibonacci(n):")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--greedy", action="store_true", help="greedy decoding instead of sampling")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    model_name = args.model or default_model()

    torch.manual_seed(args.seed)
    tokenizer = GPTNeoXTokenizerFast.from_pretrained(model_name)
    model = GPTNeoXForCausalLM.from_pretrained(model_name, dtype=torch.float32)
    model.eval()

    inputs = tokenizer(args.prompt, return_tensors="pt")

    # 1. Streamed: the streamer prints the prompt, then each piece of text as it is produced.
    streamer = TextStreamer(tokenizer, skip_special_tokens=True)
    sampling = {} if args.greedy else {"do_sample": True, "temperature": 0.8, "top_p": 0.95}
    output_ids = model.generate(
        **inputs,
        max_new_tokens=args.max_new_tokens,
        pad_token_id=tokenizer.pad_token_id,
        streamer=streamer,
        **sampling,
    )

    # 2. The same ids, decoded at the end; a batch of two prompts, left-padded.
    new_tokens = output_ids[0, inputs["input_ids"].shape[1]:]
    print(f"--- {len(new_tokens)} new tokens")
    tokenizer.padding_side = "left"
    batch = tokenizer(["import os\n", "class Stack:\n    def push(self, item):"], return_tensors="pt", padding=True)
    batch_ids = model.generate(**batch, max_new_tokens=24, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    for text in tokenizer.batch_decode(batch_ids, skip_special_tokens=True):
        print("--- greedy, batched:")
        print(text)


if __name__ == "__main__":
    main()
