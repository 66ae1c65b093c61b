"""Generate with a model split across processes by tensor parallelism (DTensor, torch.distributed).

    torchrun --nproc-per-node 2 examples/tp_generate.py --prompt "def fibonacci(n):"
    torchrun --nproc-per-node 4 examples/tp_generate.py --model EleutherAI/gpt-neox-20b --sample

Every rank loads only its share of the weights (``tp_plan="auto"``: whole attention heads and a
slice of the MLP and of the vocabulary per rank), runs the same ``generate()`` call and gets the
same tokens; rank 0 prints them. On GPUs the processes use NCCL, one GPU each; on CPUs, gloo.
As in transformers, ``tp_plan="auto"`` alone is enough under torchrun: the process group and the
device mesh are set up from torchrun's environment.
"""

import argparse

import torch
import torch.distributed as dist

from neox import GPTNeoXForCausalLM, GPTNeoXTokenizerFast


def main() -> None:
    import neox.cli

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(neox.cli.DEFAULT_MODEL), help="checkpoint folder or Hub repo id")
    parser.add_argument("--prompt", default="def fibonacci(n):")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--sample", action="store_true", help="sample (top-p 0.9) instead of greedy decoding")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    # The checkpoint's dtype on GPUs; fp32 on CPUs, where half-precision matmuls are slow.
    dtype = "auto" if torch.cuda.is_available() else torch.float32
    model = GPTNeoXForCausalLM.from_pretrained(args.model, tp_plan="auto", dtype=dtype)
    tokenizer = GPTNeoXTokenizerFast.from_pretrained(args.model)
    inputs = tokenizer(args.prompt, return_tensors="pt").to(model.device)
    # The same seed on every rank: each draws the same token from the same (replicated) logits.
    torch.manual_seed(args.seed)
    sampling = {"do_sample": True, "top_p": 0.9} if args.sample else {"do_sample": False}
    output = model.generate(**inputs, max_new_tokens=args.max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                            **sampling)
    if dist.get_rank() == 0:
        print(f"{dist.get_world_size()} ranks, {model.num_local_heads} of "
              f"{model.config.num_attention_heads} heads each")
        print(tokenizer.decode(output[0], skip_special_tokens=True))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
