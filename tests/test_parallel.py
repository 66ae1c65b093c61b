"""Beyond one device: meta-device init, tensor parallelism and FSDP2 (2 gloo processes on CPU).

The multi-process tests spawn two processes that join a gloo process group; each checks its
properties against a single-process reference model built from the same checkpoint.
"""

from __future__ import annotations

import torch

from conftest import make_tiny_config, randomize_
from neox import GPTNeoXForCausalLM


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
