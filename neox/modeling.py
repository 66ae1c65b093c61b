"""GPT-NeoX (Black et al., 2022): the layers, the decoder stack and the causal-LM head.

Notation
--------
    B   batch size                    L   number of layers
    T   tokens in this forward call   S   key/value length: cached tokens + T
    D   hidden size (d_model)         V   vocabulary size
    H   attention heads               hs  head size = D / H
    r   rotary dims per head = int(hs · rotary_pct)   (GPT-NeoX rotates only part of each head)

A layer, as in the checkpoint (module names are the checkpoint's keys, so loading needs no
rename table):

    parallel residual (gpt-neox-20b, Pythia):   x ← x + attn(ln₁(x)) + mlp(ln₂(x))
    sequential residual:                        a ← x + attn(ln₁(x));  x ← a + mlp(ln₂(a))

ln₁ = ``input_layernorm``, ln₂ = ``post_attention_layernorm``. In the parallel form the two
LayerNorms both read the same x: there are two, with separate weights, not one shared.

The output head ``embed_out`` is untied from ``embed_in`` in every EleutherAI checkpoint
(``tie_word_embeddings=False``), and has no bias.

Every matrix product is a ``kernels.Linear``: an ``nn.Linear`` that, on CPU in fp32 without
autograd, computes 1–8 rows with neox's native kernel and up to 16 (a batched decode step) as W·xᵀ,
which MKL runs 2–3× faster than x·Wᵀ. A CPU decode step without a padding mask (one new position
per row, fp32, no autograd) runs each layer's rotary, cache write and attention as one native call
(``neox.native.ops.decode_attention``); everything else, and every other case, is the torch code below.
"""

from __future__ import annotations

import copy
import functools
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

from .cache import CacheProtocolAdapter, KVCache, is_cache_protocol
from .config import GPTNeoXConfig
from .generation import GenerationConfig, generate
from .kernels import Linear
from .loading import load_pretrained, resolve_dtype, save_pretrained
from .native import ops as native_ops
from .outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from .validation import (
    check_input_ids,
    check_inputs_embeds,
    check_labels,
    check_logits_to_keep,
    check_past,
    check_position_ids,
    is_tracing,
)

logger = logging.getLogger(__name__)

__all__ = ["KVCache", "GPTNeoXPreTrainedModel", "GPTNeoXModel", "GPTNeoXForCausalLM", "attention"]


# ============================================================================== building blocks


def _gelu_fast(x: torch.Tensor) -> torch.Tensor:
    # gpt-neox-20b's "gelu_fast": the tanh approximation written with 0.7978845608 ≈ √(2/π).
    return 0.5 * x * (1.0 + torch.tanh(x * 0.7978845608 * (1.0 + 0.044715 * x * x)))


def _gelu_new(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


ACT_FNS = {
    "gelu": F.gelu,  # exact (erf) GELU: Pythia's activation
    "gelu_fast": _gelu_fast,
    "gelu_new": _gelu_new,
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
    "silu": F.silu,
    "swish": F.silu,
}


class GPTNeoXMLP(nn.Module):
    def __init__(self, config: GPTNeoXConfig) -> None:
        super().__init__()
        self.dense_h_to_4h = Linear(config.hidden_size, config.intermediate_size)
        self.dense_4h_to_h = Linear(config.intermediate_size, config.hidden_size)
        self.act = ACT_FNS[config.hidden_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dense_4h_to_h(self.act(self.dense_h_to_4h(x)))


class RotaryEmbedding(nn.Module):
    """cos/sin tables for rotary position embedding, computed in fp32 from integer positions.

    Linear scaling divides the frequencies by ``factor``. Dynamic (NTK) scaling raises the base
    once the sequence outgrows ``max_position_embeddings``:
    base' = base · (factor · S / max_pos − (factor − 1)) ^ (r / (r − 2)).
    """

    def __init__(self, config: GPTNeoXConfig) -> None:
        super().__init__()
        self.dim = config.rotary_ndims
        self.base = float(config.rotary_emb_base)
        self.rope_type = config.rope_type
        self.factor = config.rope_factor
        self.max_positions = config.max_position_embeddings
        # Built on the meta device (from_pretrained), arange/div run Python decompositions that
        # import torch._dynamo: 1-2 s once per process. The frequencies are computed on the CPU
        # then; from_pretrained recomputes them on the target device (reset_parameters).
        meta = torch.get_default_device().type == "meta"
        self.register_buffer("inv_freq", self._inv_freq(self.base, "cpu" if meta else None), persistent=False)

    def _inv_freq(self, base: float, device: torch.device | None = None) -> torch.Tensor:
        exponents = torch.arange(0, self.dim, 2, dtype=torch.int64, device=device).float() / self.dim
        inv_freq = 1.0 / (base**exponents)
        if self.rope_type == "linear":
            inv_freq = inv_freq / self.factor
        return inv_freq

    def reset_parameters(self, device: torch.device | None = None) -> None:
        """Recompute the frequencies (on ``device``, default where the buffer already is)."""
        if device is None and not self.inv_freq.is_meta:
            device = self.inv_freq.device
        self.inv_freq = self._inv_freq(self.base, device)

    def _apply(self, fn: Any, recurse: bool = True) -> "RotaryEmbedding":
        # Every .to() / .half() / .to_empty() / .cuda() lands here, and the frequencies are always
        # recomputed afterwards, exactly, in fp32, on the buffer's new device:
        # - .to_empty() (meta-device init, FSDP2) leaves uninitialised memory in this buffer, and
        #   no state dict refills it (non-persistent): logits would be silently wrong;
        # - .to(bfloat16) casts buffers too: in bf16, 0.1 becomes 0.10009765625 and the angle at
        #   position 4000 is off by 0.4 rad.
        super()._apply(fn, recurse)
        if not self.inv_freq.is_meta:
            self.inv_freq = self._inv_freq(self.base, self.inv_freq.device)
        return self

    def forward(self, position_ids: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin of the angles position · inv_freq: (B|1, T, r/2) each, angles in fp32."""
        inv_freq = self.inv_freq
        if self.rope_type == "dynamic":
            seq_len = int(position_ids.max()) + 1
            if seq_len > self.max_positions:
                r = self.dim
                base = self.base * ((self.factor * seq_len / self.max_positions) - (self.factor - 1)) ** (r / (r - 2))
                inv_freq = self._inv_freq(base, position_ids.device)
        angles = position_ids[..., None].float() * inv_freq.to(position_ids.device)  # (B, T, r/2)
        return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rotary_(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> None:
    """Rotate, in place, the first r dims of the heads in x (B, T, H, n, hs), n heads per slot.

    GPT-NeoX pairs dim i with dim i + r/2 (the "rotate_half" convention, not adjacent pairs):
        (x₁, x₂) ← (x₁·cos − x₂·sin, x₂·cos + x₁·sin),   x₁ = x[..., :r/2], x₂ = x[..., r/2:r].
    This is bitwise the reference x·cos + rotate_half(x)·sin, without the concatenations.
    The remaining hs − r dims pass through untouched.
    """
    half = cos.shape[-1]
    cos, sin = cos[:, :, None, None], sin[:, :, None, None]  # (B|1, T, 1, 1, r/2)
    x1, x2 = x[..., :half], x[..., half : 2 * half]
    r1 = x1 * cos - x2 * sin
    r2 = x2 * cos + x1 * sin
    x1.copy_(r1)
    x2.copy_(r2)


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None,
    *,
    causal: bool,
    implementation: str = "sdpa",
    dropout: float = 0.0,
    head_mask: torch.Tensor | None = None,
    return_probs: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """softmax(q·kᵀ/√hs + mask)·v over q (B, H, T, hs) and k, v (B, H, S, hs) → (B, H, T, hs).

    ``mask`` is boolean (B, 1, T, S), True where a query may attend; ``causal`` says the plain
    lower-triangular mask applies instead (no padding, no cache). SDPA is the fast path; the eager
    path is the reference, and the only one that can return probabilities or apply ``head_mask``.
    """
    scale = 1.0 / math.sqrt(q.shape[-1])
    if implementation == "sdpa" and not return_probs and head_mask is None:
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=dropout, is_causal=causal and mask is None, scale=scale
        )
        return out, None
    # Eager reference. Scores are formed in fp32: in fp16 a raw q·kᵀ above 65504 would overflow
    # to inf (and softmax to NaN) although the scaled score is small.
    scores = torch.matmul(q.float() * scale, k.float().transpose(-1, -2))  # (B, H, T, S)
    if causal and mask is None:
        T, S = q.shape[2], k.shape[2]
        mask = torch.ones(T, S, dtype=torch.bool, device=q.device).tril(S - T)
    if mask is not None:
        # transformers' eager path adds finfo.min rather than -inf: a row with no visible key
        # then averages every value instead of turning to NaN.
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    probs = torch.softmax(scores, dim=-1).to(q.dtype)
    if dropout:
        probs = F.dropout(probs, p=dropout)
    if head_mask is not None:
        probs = probs * head_mask
    return torch.matmul(probs, v), probs


class GPTNeoXAttention(nn.Module):
    def __init__(self, config: GPTNeoXConfig, layer_idx: int) -> None:
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.num_heads = config.num_attention_heads  # all heads; this process may compute fewer (local_heads)
        self.head_size = config.head_size
        self.query_key_value = Linear(config.hidden_size, 3 * config.hidden_size, bias=config.attention_bias)
        self.dense = Linear(config.hidden_size, config.hidden_size, bias=config.attention_bias)

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        mask: torch.Tensor | None,
        causal: bool,
        cache: KVCache | None,
        head_mask: torch.Tensor | None = None,
        output_attentions: bool = False,
        cache_position: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        B, T, _ = x.shape
        # The fused projection is laid out per head, [q_h | k_h | v_h] for h = 0..H−1, not [Q; K; V].
        # H is read from its width: under tensor parallelism a rank holds a contiguous row block of
        # the weight, i.e. whole heads, and computes only those (H = its local heads).
        qkv = self.query_key_value(x)
        if (T == 1 and mask is None and type(cache) is KVCache and cache_position is None and head_mask is None
                and not output_attentions and not self.training and self.config.attn_implementation == "sdpa"
                and qkv.is_cpu and not (qkv.requires_grad and torch.is_grad_enabled()) and not is_tracing()):
            # Decoding on the CPU: the rotary, the cache write and the attention of the one new position
            # in one native call instead of ~30 small torch ops (~0.1 ms a layer on a 2-core VM); None
            # where the kernel cannot take it (not fp32, not built here), and the torch path runs.
            y = native_ops.decode_attention(qkv, *rope, cache.keys[self.layer_idx], cache.values[self.layer_idx],
                                            cache.length, 1.0 / math.sqrt(self.head_size))  # (B, 1, H·hs)
            if y is not None:
                return self.dense(y), None
        H = qkv.shape[-1] // (3 * self.head_size)
        qkv = qkv.view(B, T, H, 3, self.head_size)  # (B, T, H, 3, hs)
        cos, sin = rope
        apply_rotary_(qkv[:, :, :, :2], cos, sin)  # q and k together; qkv is this call's own tensor
        q, k, v = qkv.transpose(1, 2).unbind(3)  # each (B, H, T, hs)
        if cache is not None:
            k, v = cache.update(self.layer_idx, k, v, cache_position)  # (B, H, S, hs)
        impl = self.config.attn_implementation
        dropout = self.config.attention_dropout if self.training else 0.0
        y, probs = attention(q, k, v, mask, causal=causal, implementation=impl, dropout=dropout,
                             head_mask=head_mask, return_probs=output_attentions)
        y = y.transpose(1, 2).reshape(B, T, H * self.head_size)  # (B, T, H·hs): D, or a rank's share
        return self.dense(y), probs

    def local_heads(self) -> tuple[int, int]:
        """(first, count): the heads this process computes — all of them, or under tensor
        parallelism (a DTensor weight split by rows) the whole heads of this rank's row block."""
        w = getattr(self.query_key_value, "weight", None)  # a quantised linear (neox.quantization) has none
        if not hasattr(w, "to_local"):  # a plain tensor, or packed weights: every head
            return 0, self.num_heads
        rows = w.to_local().shape[0]
        count = rows // (3 * self.head_size)
        if count == self.num_heads:  # replicated
            return 0, count
        # Row-sharded over a 1-D mesh: equal blocks in rank order (parallel.py checks H % world == 0).
        return w.device_mesh.get_local_rank() * count, count


class GPTNeoXLayer(nn.Module):
    def __init__(self, config: GPTNeoXConfig, layer_idx: int) -> None:
        super().__init__()
        self.use_parallel_residual = config.use_parallel_residual
        self.input_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.post_attention_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.post_attention_dropout = nn.Dropout(config.hidden_dropout)
        self.post_mlp_dropout = nn.Dropout(config.hidden_dropout)
        self.attention = GPTNeoXAttention(config, layer_idx)
        self.mlp = GPTNeoXMLP(config)

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        mask: torch.Tensor | None,
        causal: bool,
        cache: KVCache | None,
        head_mask: torch.Tensor | None = None,
        output_attentions: bool = False,
        cache_position: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        a, probs = self.attention(
            self.input_layernorm(x), rope, mask, causal, cache, head_mask, output_attentions, cache_position
        )
        dropout = self.training and self.post_attention_dropout.p > 0  # skip two no-op calls per layer otherwise
        if dropout:
            a = self.post_attention_dropout(a)
        if self.use_parallel_residual:
            # Both LayerNorms read the layer's input x.
            m = self.mlp(self.post_attention_layernorm(x))
            return (self.post_mlp_dropout(m) if dropout else m) + a + x, probs
        a = a + x
        m = self.mlp(self.post_attention_layernorm(a))
        return (self.post_mlp_dropout(m) if dropout else m) + a, probs


# ============================================================================== masks and checks


def _attention_mask(
    attention_mask: torch.Tensor | None, B: int, T: int, past: int, device: torch.device
) -> tuple[torch.Tensor | None, bool]:
    """(mask, causal): a boolean (B, 1, T, S) mask, or None with ``causal`` saying whether the plain
    causal mask applies (no cache). With no padding, no mask tensor is built at all."""
    S = past + T
    if attention_mask is None:
        if past == 0 or T == 1:
            return None, past == 0
        return _causal(T, S, device)[None, None], False
    if attention_mask.dim() == 4:
        if attention_mask.dtype == torch.bool or not attention_mask.is_floating_point():
            mask = attention_mask != 0
        else:  # additive: 0 where attending, a large negative number where not
            mask = attention_mask > torch.finfo(attention_mask.dtype).min / 2
        return mask.to(device), False
    keep = attention_mask.to(device=device, dtype=torch.bool)  # (B, S)
    if past == 0 and not is_tracing() and bool(keep.all()):
        # All ones (a Trainer or tokenizer batch without padding): the plain causal fast path,
        # as transformers' sdpa_mask skips the mask then. Not while tracing (a host sync).
        return None, True
    # As transformers builds it: causal AND key-is-not-padding. A padding query sees the real
    # keys before it (right padding) or none at all (left padding); a row with no key gives 0
    # under SDPA and the mean of all values under the eager path, as in transformers.
    return keep[:, None, None, :] & _causal(T, S, device)[None, None], False  # (B, 1, T, S)


def _static_mask(cache_position: torch.Tensor, capacity: int, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """(B|1, 1, T, capacity): query t sees the cache slots ≤ cache_position[t] that are not padding."""
    slots = torch.arange(capacity, device=cache_position.device)
    mask = (slots[None, :] <= cache_position[:, None])[None, None]  # (1, 1, T, capacity)
    if attention_mask is not None:
        mask = mask & attention_mask.to(torch.bool)[:, None, None, :]  # (B, 1, T, capacity)
    return mask


#: The options torch.utils.checkpoint.checkpoint takes besides the function and its inputs.
_CHECKPOINT_OPTIONS = {"use_reentrant", "preserve_rng_state", "context_fn", "determinism_check", "debug", "early_stop"}


def _checkpoint_offloaded(function: Any, *args: Any, **kwargs: Any) -> Any:
    # Saved activations live in host memory (pinned when there is a GPU to copy back to).
    with torch.autograd.graph.save_on_cpu(pin_memory=torch.cuda.is_available()):
        return torch.utils.checkpoint.checkpoint(function, *args, **kwargs)


def _causal(T: int, S: int, device: torch.device) -> torch.Tensor:
    return torch.ones(T, S, dtype=torch.bool, device=device).tril(S - T)  # (T, S), query i sees keys ≤ S−T+i


# ============================================================================== the models


class GPTNeoXPreTrainedModel(nn.Module):
    """What the GPT-NeoX models share: config, init, loading, saving and the HF helper surface."""

    config_class = GPTNeoXConfig
    base_model_prefix = "gpt_neox"
    main_input_name = "input_ids"
    input_modalities = "text"
    supports_gradient_checkpointing = True
    # Class flags that transformers' PreTrainedModel declares and its clients (accelerate's
    # device maps, PEFT, the Trainer, pipelines) read, with transformers' GPT-NeoX values.
    _no_split_modules = ["GPTNeoXLayer"]
    _skip_keys_device_placement = ["past_key_values", "cache"]
    _keep_in_fp32_modules: list[str] | None = None
    _keep_in_fp32_modules_strict: list[str] | None = None
    _keys_to_ignore_on_load_missing: list[str] | None = None
    _keys_to_ignore_on_load_unexpected = [r"attention.bias", r"attention.masked_bias"]
    _keys_to_ignore_on_save: list[str] | None = None
    _tied_weights_keys: dict[str, str] | None = None
    _supports_sdpa = True
    _supports_flash_attn = False
    _supports_flex_attn = False
    _supports_attention_backend = False
    _is_stateful = False
    is_parallelizable = False
    model_tags: list[str] | None = None
    #: transformers' LOSS_MAPPING key; the Trainer counts shifted labels for "ForCausalLM".
    loss_type: str | None = None

    def __init__(self, config: GPTNeoXConfig) -> None:
        super().__init__()
        if not isinstance(config, GPTNeoXConfig):
            raise TypeError(f"config must be a neox GPTNeoXConfig, got {type(config).__name__}")
        self.config = config
        self.name_or_path = config.name_or_path

    # -- init ------------------------------------------------------------------------------

    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, RotaryEmbedding):
            module.reset_parameters(module.inv_freq.device)

    def post_init(self) -> None:
        if not any(p.is_meta for p in self.parameters()):
            self.apply(self._init_weights)
            for module in self.modules():
                module._is_hf_initialized = True
        self.tie_weights()

    def init_weights(self) -> None:
        """Initialise the modules not yet initialised, then tie; as transformers 5 does.

        A model built normally or loaded is already initialised (this is then a no-op); one built
        on the meta device and materialised with ``to_empty`` is initialised here.
        """
        if not any(p.is_meta for p in self.parameters()):
            for module in self.modules():
                if not getattr(module, "_is_hf_initialized", False):
                    self._init_weights(module)
                    module._is_hf_initialized = True
        self.tie_weights()

    # -- the HF helper surface ---------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(p.dtype for p in self.parameters() if p.is_floating_point())

    def get_input_embeddings(self) -> nn.Embedding:
        return self._base().embed_in

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self._base().embed_in = value

    def _base(self) -> "GPTNeoXModel":
        return self if isinstance(self, GPTNeoXModel) else getattr(self, self.base_model_prefix)

    @property
    def base_model(self) -> "GPTNeoXModel":
        return self._base()

    @property
    def num_local_heads(self) -> int:
        """Attention heads this process computes and caches: ``config.num_attention_heads``, or
        a rank's share under tensor parallelism (what :meth:`KVCache.for_model` sizes by)."""
        return self._base().layers[0].attention.local_heads()[1]

    def get_output_embeddings(self) -> nn.Linear | None:
        return None

    def tie_weights(self) -> None:
        """With ``tie_word_embeddings`` the output head shares the input embedding's weight."""
        out = self.get_output_embeddings()
        if out is not None and self.config.tie_word_embeddings:
            out.weight = self.get_input_embeddings().weight

    def get_memory_footprint(self, return_buffers: bool = True) -> int:
        """Bytes held by the parameters (and the buffers, by default), as transformers counts them."""
        total = sum(p.nelement() * p.element_size() for p in self.parameters())
        if return_buffers:
            total += sum(b.nelement() * b.element_size() for b in self.buffers())
        return total

    def add_model_tags(self, tags: list[str] | str) -> None:
        """Add tags for the model card (kept once each, in order), as TRL's trainers do."""
        if isinstance(tags, str):
            tags = [tags]
        if self.model_tags is None:
            self.model_tags = []
        for tag in tags:
            if tag not in self.model_tags:
                self.model_tags.append(tag)

    def push_to_hub(
        self,
        repo_id: str,
        *,
        commit_message: str | None = None,
        private: bool | None = None,
        token: str | bool | None = None,
        revision: str | None = None,
        create_pr: bool = False,
        max_shard_size: int | str = "5GB",
    ) -> Any:
        """Save to a temporary folder and upload it as ``repo_id`` with huggingface_hub.

        Raises before any work when the Hub is switched off (``HF_HUB_OFFLINE=1``).
        """
        import tempfile

        from huggingface_hub import HfApi, constants  # lazily: only an upload needs the Hub client

        if constants.HF_HUB_OFFLINE:
            raise RuntimeError(
                f"push_to_hub({repo_id!r}): the Hugging Face Hub is offline (HF_HUB_OFFLINE=1); save with "
                "save_pretrained(folder) and upload the folder later"
            )
        api = HfApi(token=token)
        api.create_repo(repo_id, private=private, exist_ok=True)
        with tempfile.TemporaryDirectory() as folder:
            self.save_pretrained(folder, max_shard_size=max_shard_size)
            if self.model_tags:  # the card's metadata carries the tags, as transformers writes them
                from huggingface_hub import ModelCard, ModelCardData

                card = ModelCard(f"---\n{ModelCardData(tags=self.model_tags, library_name='neox').to_yaml()}\n---\n")
                card.save(os.path.join(folder, "README.md"))
            return api.upload_folder(
                repo_id=repo_id, folder_path=folder, commit_message=commit_message or "Upload model",
                revision=revision, create_pr=create_pr,
            )

    def num_parameters(self, only_trainable: bool = False, exclude_embeddings: bool = False) -> int:
        # As transformers counts: exclude_embeddings drops the nn.Embedding weights only (an
        # untied output head still counts), so Trainer/PEFT summaries print the same numbers.
        skip = set()
        if exclude_embeddings:
            skip = {id(m.weight) for m in self.modules() if isinstance(m, nn.Embedding)}
        seen, total = set(), 0
        for p in self.parameters():  # parameters() already yields a tied weight once
            if id(p) in skip or id(p) in seen or (only_trainable and not p.requires_grad):
                continue
            seen.add(id(p))
            total += p.numel()
        return total

    def resize_token_embeddings(
        self, new_num_tokens: int | None = None, pad_to_multiple_of: int | None = None, mean_resizing: bool = True
    ) -> nn.Embedding:
        """Grow or shrink the vocabulary (input embedding and untied head); updates ``config.vocab_size``.

        As transformers 5 does it, drawing from the global RNG in the same order (the same seed
        gives the same numbers): with ``mean_resizing`` (the default) new rows are sampled from a
        normal with the old rows' mean and 1e-9 × their covariance (the mean itself when that is
        not positive definite); otherwise they are drawn as in training (normal, std
        ``initializer_range``). Returns the input embedding.
        """
        old = self.get_input_embeddings()
        if new_num_tokens is None and pad_to_multiple_of is None:
            return old
        n = old.num_embeddings if new_num_tokens is None else new_num_tokens
        if pad_to_multiple_of is not None:
            if not isinstance(pad_to_multiple_of, int) or pad_to_multiple_of <= 0:
                raise ValueError(f"pad_to_multiple_of must be a positive integer, got {pad_to_multiple_of!r}")
            n = -(-n // pad_to_multiple_of) * pad_to_multiple_of
        if not isinstance(n, int) or n <= 0:
            raise ValueError(f"new_num_tokens must be a positive integer, got {new_num_tokens!r}")
        if n != old.num_embeddings:
            new = nn.Embedding(n, old.embedding_dim, device=old.weight.device, dtype=old.weight.dtype)
            self._fill_resized(old.weight, new, mean_resizing)
            new.weight.requires_grad_(old.weight.requires_grad)
            new._is_hf_initialized = True  # init_weights() must not redraw it
            self.set_input_embeddings(new)
            out = self.get_output_embeddings()
            if out is not None and not self.config.tie_word_embeddings and out.out_features != n:
                head = Linear(out.in_features, n, bias=out.bias is not None, device=out.weight.device,
                                 dtype=out.weight.dtype)
                self._fill_resized(out.weight, head, mean_resizing)
                if out.bias is not None:
                    with torch.no_grad():
                        keep = min(n, out.out_features)
                        if n > out.out_features:
                            mean, std = out.bias.float().mean(), out.bias.float().std()
                            head.bias[keep:].normal_(mean=float(mean), std=1e-9 * float(std))
                        head.bias[:keep] = out.bias[:keep]
                head.weight.requires_grad_(out.weight.requires_grad)
                head._is_hf_initialized = True
                self.set_output_embeddings(head)
        self.config.vocab_size = n
        self.tie_weights()
        return self.get_input_embeddings()

    def _fill_resized(self, old: torch.Tensor, new: nn.Module, mean_resizing: bool) -> None:
        """New rows of a resized embedding/head (same draws as transformers), then the old rows."""
        old_n, grow = old.shape[0], new.weight.shape[0] - old.shape[0]
        with torch.no_grad():
            if grow > 0 and not mean_resizing:
                self._init_weights(new)
            elif grow > 0:
                w = old.float()
                mean = w.mean(dim=0)
                centered = w - mean
                covariance = 1e-9 * (centered.T @ centered / old_n)
                if torch.distributions.constraints.positive_definite.check(covariance).all():
                    dist = torch.distributions.MultivariateNormal(mean, covariance_matrix=covariance)
                    new.weight[-grow:] = dist.sample((grow,)).to(old.dtype)
                else:
                    new.weight[-grow:] = mean[None].expand(grow, -1).to(old.dtype)
            keep = min(old_n, new.weight.shape[0])
            new.weight[:keep] = old[:keep]

    def activation_checkpointing_enable(
        self,
        activation_checkpointing_kwargs: dict[str, Any] | None = None,
        every_n_layers: int = 1,
        offload: bool = False,
    ) -> None:
        """Recompute layers in the backward pass (same gradients, less activation memory).

        As transformers 5: ``activation_checkpointing_kwargs`` go to ``torch.utils.checkpoint.checkpoint``
        (default ``{"use_reentrant": False}``); ``every_n_layers`` checkpoints layers 0, n, 2n, …;
        ``offload`` keeps the saved activations in (pinned) host memory.
        """
        if not isinstance(every_n_layers, int) or isinstance(every_n_layers, bool) or every_n_layers < 1:
            raise ValueError(f"every_n_layers must be a positive integer, got {every_n_layers!r}")
        kwargs = {"use_reentrant": False} if activation_checkpointing_kwargs is None else dict(activation_checkpointing_kwargs)
        unknown = set(kwargs) - _CHECKPOINT_OPTIONS
        if unknown:
            raise TypeError(
                f"activation_checkpointing_kwargs: unknown keys {sorted(unknown)}; torch.utils.checkpoint.checkpoint "
                f"takes {sorted(_CHECKPOINT_OPTIONS)} (every_n_layers and offload are arguments of their own)"
            )
        base = self._base()
        base.gradient_checkpointing = True
        base.gradient_checkpointing_use_reentrant = kwargs.get("use_reentrant", False)
        base._checkpoint = functools.partial(_checkpoint_offloaded if offload else torch.utils.checkpoint.checkpoint,
                                             **kwargs)
        for i, layer in enumerate(base.layers):
            layer.gradient_checkpointing = i % every_n_layers == 0
        if self.main_input_name == "input_ids":
            # As transformers: frozen embeddings (PEFT) must still pass gradients into checkpointed layers.
            self.enable_input_require_grads()

    def activation_checkpointing_disable(self) -> None:
        base = self._base()
        base.gradient_checkpointing = False
        for layer in base.layers:
            layer.gradient_checkpointing = False

    @property
    def is_activation_checkpointing(self) -> bool:
        return self._base().gradient_checkpointing

    def gradient_checkpointing_enable(
        self, gradient_checkpointing_kwargs: dict[str, Any] | None = None, every_n_layers: int = 1, offload: bool = False
    ) -> None:
        """transformers' older name for :meth:`activation_checkpointing_enable`."""
        self.activation_checkpointing_enable(gradient_checkpointing_kwargs, every_n_layers=every_n_layers, offload=offload)

    def gradient_checkpointing_disable(self) -> None:
        self.activation_checkpointing_disable()

    @property
    def is_gradient_checkpointing(self) -> bool:
        return self.is_activation_checkpointing

    def enable_input_require_grads(self) -> None:
        """Make the embedding output require grad (PEFT with frozen embeddings + checkpointing)."""

        def hook(module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
            output.requires_grad_(True)

        self.disable_input_require_grads()  # once, however often enabled
        self._require_grads_hook = self.get_input_embeddings().register_forward_hook(hook)

    def disable_input_require_grads(self) -> None:
        hook = getattr(self, "_require_grads_hook", None)
        if hook is not None:
            hook.remove()
            del self._require_grads_hook

    @classmethod
    def can_generate(cls) -> bool:
        return False

    # -- loading and saving --------------------------------------------------------------------

    @classmethod
    def _from_config(
        cls, config: GPTNeoXConfig, dtype: Any = None, torch_dtype: Any = None, attn_implementation: str | None = None
    ) -> "GPTNeoXPreTrainedModel":
        """A freshly initialised model (what ``AutoModelForCausalLM.from_config`` calls)."""
        if attn_implementation is not None:
            config = copy.deepcopy(config)
            config.attn_implementation = attn_implementation
            config.validate()
        model = cls(config)
        dtype = dtype if dtype is not None else torch_dtype
        if dtype is not None and dtype != "auto":
            model = model.to(resolve_dtype(dtype, None, config))
        return model

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike | None,
        *model_args: Any,
        **kwargs: Any,
    ) -> "GPTNeoXPreTrainedModel":
        """Load a checkpoint folder or Hub repo id (see :func:`neox.loading.load_pretrained`);
        ``None`` with ``config=`` and ``state_dict=`` builds from those alone."""
        if model_args:
            raise TypeError(f"{cls.__name__}.from_pretrained takes no extra positional arguments")
        return load_pretrained(cls, pretrained_model_name_or_path, **kwargs)

    def save_pretrained(
        self,
        save_directory: str | os.PathLike,
        max_shard_size: int | str = "5GB",
        safe_serialization: bool = True,
        state_dict: dict[str, torch.Tensor] | None = None,
        is_main_process: bool = True,
    ) -> None:
        """Write config.json, generation_config.json and safetensors weights, atomically."""
        if not safe_serialization:
            raise ValueError("neox saves safetensors only (safe_serialization=False is not supported)")
        # A model sharded by tensor parallelism or FSDP2: call this on every rank (the weights are
        # gathered collectively); rank 0 writes.
        save_pretrained(self, Path(save_directory), max_shard_size=max_shard_size, state_dict=state_dict,
                        is_main_process=is_main_process)


class GPTNeoXModel(GPTNeoXPreTrainedModel):
    """The decoder stack: embeddings, L layers, final LayerNorm → hidden states (B, T, D)."""

    def __init__(self, config: GPTNeoXConfig) -> None:
        super().__init__(config)
        # Uninitialised here (post_init draws it): nn.Embedding's own normal_ on the meta device
        # imports torch._dynamo, 2-3 s of the first from_pretrained in a process.
        V, D = config.vocab_size, config.hidden_size
        self.embed_in = nn.Embedding(V, D, _weight=torch.empty(V, D))
        self.emb_dropout = nn.Dropout(config.hidden_dropout)
        self.layers = nn.ModuleList(GPTNeoXLayer(config, i) for i in range(config.num_hidden_layers))
        self.final_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.rotary_emb = RotaryEmbedding(config)
        self.gradient_checkpointing = False
        self.gradient_checkpointing_use_reentrant = False
        self._checkpoint = functools.partial(torch.utils.checkpoint.checkpoint, use_reentrant=False)
        self.post_init()

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        head_mask: torch.Tensor | None = None,
        past_key_values: KVCache | Sequence[tuple[torch.Tensor, torch.Tensor]] | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        cache: KVCache | None = None,
    ) -> BaseModelOutputWithPast | tuple:
        """See ``GPTNeoXForCausalLM.forward``; returns hidden states instead of logits."""
        out = self._forward_checked(
            input_ids, attention_mask, position_ids, inputs_embeds, head_mask,
            _pick_cache(past_key_values, cache), use_cache, output_attentions, output_hidden_states,
        )
        return_dict = self.config.return_dict if return_dict is None else return_dict
        return out if return_dict else out.to_tuple()

    # The checks live here, once, so that the decode loop in generation can call `core` directly.
    def _forward_checked(
        self, input_ids, attention_mask, position_ids, inputs_embeds, head_mask, past, use_cache,
        output_attentions, output_hidden_states,
    ) -> BaseModelOutputWithPast:
        config = self.config
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        if input_ids is not None:
            if not isinstance(input_ids, torch.Tensor):
                raise TypeError(f"input_ids must be a torch.Tensor, got {type(input_ids).__name__}")
            if input_ids.dim() == 1:
                input_ids = input_ids[None]
            if input_ids.dim() != 2:
                raise ValueError(f"input_ids must be (batch, seq_len), got shape {tuple(input_ids.shape)}")
            check_input_ids(input_ids, self.embed_in.num_embeddings)
            B, T = input_ids.shape
        else:
            check_inputs_embeds(inputs_embeds, config.hidden_size)
            B, T = inputs_embeds.shape[:2]
        if T == 0 or B == 0:
            which = "input_ids" if input_ids is not None else "inputs_embeds"
            raise ValueError(f"empty input: {which} has batch {B} × sequence length {T}; nothing to run")

        if use_cache is None:
            # config.use_cache, except while training: a cache is never read there, only held.
            use_cache = config.use_cache and not (self.training and torch.is_grad_enabled())
        if self.gradient_checkpointing and self.training and use_cache:
            if not getattr(self, "_warned_checkpointing_cache", False):
                logger.warning("use_cache=True is incompatible with gradient checkpointing; using use_cache=False")
                self._warned_checkpointing_cache = True
            use_cache = False
        foreign = None  # a transformers Cache passed in: updated in place and handed back, as transformers does
        if past is not None and not isinstance(past, (KVCache, CacheProtocolAdapter)):
            if is_cache_protocol(past):
                foreign, past = past, CacheProtocolAdapter(past)
            else:
                past = KVCache.from_legacy_cache(past, extra_capacity=T)
        if isinstance(past, KVCache) and len(self.layers):
            check_past(past, len(self.layers), self.num_local_heads, config.head_size)
        if past is not None and past.batch_size not in (B, None):
            raise ValueError(f"past_key_values holds batch size {past.batch_size}, the input has {B}")
        past_len = past.length if past is not None else 0

        if attention_mask is not None:
            if not isinstance(attention_mask, torch.Tensor):
                raise TypeError(f"attention_mask must be a torch.Tensor, got {type(attention_mask).__name__}")
            want2 = (B, past_len + T)
            if attention_mask.dim() == 2 and tuple(attention_mask.shape) != want2:
                raise ValueError(
                    f"attention_mask has shape {tuple(attention_mask.shape)}; expected (batch, past + seq_len) = {want2}"
                )
            want4 = (past_len + T,)
            if attention_mask.dim() == 4 and (attention_mask.shape[0] not in (1, B) or attention_mask.shape[2] != T
                                               or attention_mask.shape[3] != past_len + T):
                raise ValueError(
                    f"4-D attention_mask has shape {tuple(attention_mask.shape)}; expected "
                    f"(batch, 1, {T}, {want4[0]})"
                )
            if attention_mask.dim() not in (2, 4):
                raise ValueError(f"attention_mask must be 2-D (batch, seq) or 4-D, got {attention_mask.dim()}-D")
        if position_ids is not None:
            position_ids = check_position_ids(position_ids, B, T)
        if head_mask is not None:
            head_mask = self._head_mask(head_mask)

        if use_cache and past is None:
            device = input_ids.device if input_ids is not None else inputs_embeds.device
            past = KVCache.for_model(self, B, T, self.embed_in.weight.dtype, device)
        out = self.core(
            input_ids, inputs_embeds=inputs_embeds, attention_mask=attention_mask, position_ids=position_ids,
            cache=past,
            head_mask=head_mask,
            output_attentions=config.output_attentions if output_attentions is None else output_attentions,
            output_hidden_states=config.output_hidden_states if output_hidden_states is None else output_hidden_states,
        )
        if foreign is not None:
            out["past_key_values"] = foreign
        return out

    def _head_mask(self, head_mask: torch.Tensor) -> torch.Tensor:
        """(L, 1, H, 1, 1) multipliers for this process's heads, from a mask over all H heads."""
        L, H = self.config.num_hidden_layers, self.config.num_attention_heads
        if head_mask.dim() == 1:
            head_mask = head_mask[None].expand(L, -1)
        if tuple(head_mask.shape) != (L, H):
            raise ValueError(f"head_mask must be (num_heads,) = ({H},) or (num_layers, num_heads) = ({L}, {H})")
        first, count = self.layers[0].attention.local_heads()
        head_mask = head_mask[:, first : first + count]  # (L, H_local): this rank's heads under TP
        return head_mask[:, None, :, None, None].to(self.embed_in.weight.dtype)  # (L, 1, H_local, 1, 1)

    def core(
        self,
        input_ids: torch.Tensor | None,
        *,
        inputs_embeds: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        cache: KVCache | None = None,
        head_mask: torch.Tensor | None = None,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
        cache_position: torch.Tensor | None = None,
    ) -> BaseModelOutputWithPast:
        """The unchecked forward pass (inputs already validated).

        ``cache_position`` (T,) selects the static-shape mode used by compiled decoding: keys are
        written at those cache slots, attention runs over the whole preallocated cache with the
        unfilled slots masked, ``attention_mask`` (if any) spans the cache's capacity, and the
        caller advances ``cache.length`` — nothing here depends on a Python int that changes.
        """
        x = self.embed_in(input_ids) if inputs_embeds is None else inputs_embeds  # (B, T, D)
        B, T = x.shape[:2]
        static = cache_position is not None
        past = cache.length if cache is not None and not static else 0
        if cache is not None and not static:
            cache.reserve(T)
        if static:
            if position_ids is None:
                position_ids = cache_position[None]  # (1, T)
            mask, causal = _static_mask(cache_position, cache.capacity, attention_mask), False
        else:
            if position_ids is None:
                position_ids = torch.arange(past, past + T, device=x.device)[None]  # (1, T)
            mask, causal = _attention_mask(attention_mask, B, T, past, x.device)
        rope = self.rotary_emb(position_ids, x.dtype)  # cos, sin: (B|1, T, r/2)
        x = self.emb_dropout(x)

        hidden_states: list[torch.Tensor] = []
        attentions: list[torch.Tensor] = []
        checkpointing = self.gradient_checkpointing and self.training and torch.is_grad_enabled()
        for i, layer in enumerate(self.layers):
            if output_hidden_states:
                hidden_states.append(x)
            hm = head_mask[i] if head_mask is not None else None
            if checkpointing and getattr(layer, "gradient_checkpointing", True):
                x, probs = self._checkpoint(layer, x, rope, mask, causal, cache, hm, output_attentions, cache_position)
            else:
                x, probs = layer(x, rope, mask, causal, cache, hm, output_attentions, cache_position)
            if output_attentions:
                attentions.append(probs)
        x = self.final_layer_norm(x)
        if output_hidden_states:
            hidden_states.append(x)
        if cache is not None and not static:
            cache.advance(T)
        return BaseModelOutputWithPast(
            last_hidden_state=x,
            past_key_values=cache,
            hidden_states=tuple(hidden_states) if output_hidden_states else None,
            attentions=tuple(attentions) if output_attentions else None,
        )


class GPTNeoXForCausalLM(GPTNeoXPreTrainedModel):
    """GPTNeoXModel plus the untied output head ``embed_out`` (D → V, no bias)."""

    # transformers 5's form: {tied parameter: its source}, read by PEFT and accelerate; the tie
    # itself applies only with config.tie_word_embeddings.
    _tied_weights_keys = {"embed_out.weight": "gpt_neox.embed_in.weight"}
    loss_type = "ForCausalLM"
    #: The Trainer passes ``num_items_in_batch`` (the loss divisor over all gradient-accumulation
    #: micro-batches) only to models that declare they take it; forward names it explicitly.
    accepts_loss_kwargs = True

    def __init__(self, config: GPTNeoXConfig) -> None:
        super().__init__(config)
        self.gpt_neox = GPTNeoXModel(config)
        self.embed_out = Linear(config.hidden_size, config.vocab_size, bias=False)
        self.generation_config = None
        # GPTNeoXModel initialised itself; only the head is new here.
        if not self.embed_out.weight.is_meta:
            self._init_weights(self.embed_out)
            self.embed_out._is_hf_initialized = self._is_hf_initialized = True
        self.tie_weights()
        self.generation_config = GenerationConfig.from_model_config(config)

    def get_output_embeddings(self) -> nn.Linear:
        return self.embed_out

    def set_output_embeddings(self, new_embeddings: nn.Linear) -> None:
        self.embed_out = new_embeddings

    @property
    def lm_head(self) -> nn.Linear:  # transformers 5's name for the head
        return self.embed_out

    @classmethod
    def can_generate(cls) -> bool:
        return True

    def prepare_inputs_for_generation(
        self,
        input_ids: torch.Tensor,
        next_sequence_length: int | None = None,
        cache: Any = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        is_first_iteration: bool | None = False,
        past_key_values: Any = None,
        **kwargs: Any,
    ) -> dict[str, Any]:
        """The keyword arguments of one ``forward`` call in a decode loop, as transformers 5 builds them.

        ``input_ids`` is cut to its last ``next_sequence_length`` tokens (or ``inputs_embeds`` is used on
        the first iteration), ``position_ids`` to the same length; the cache and mask pass through,
        and every other keyword (but ``labels``) is forwarded to ``forward`` as is, so an argument
        ``forward`` does not know still fails there by name.
        """
        cache = _pick_cache(past_key_values, cache)
        model_inputs: dict[str, Any] = {}
        if inputs_embeds is not None and is_first_iteration:
            embeds = inputs_embeds[:, -next_sequence_length:] if next_sequence_length is not None else inputs_embeds
            model_inputs["input_ids"] = None
            model_inputs["inputs_embeds"] = embeds.clone(memory_format=torch.contiguous_format)
            T = embeds.shape[1]
        else:
            ids = input_ids[:, -next_sequence_length:] if next_sequence_length is not None else input_ids
            model_inputs["input_ids"] = ids.clone(memory_format=torch.contiguous_format)
            T = ids.shape[1]
        if cache is not None:
            model_inputs["cache"] = cache
        position_ids = kwargs.pop("position_ids", None)
        if position_ids is not None:
            if position_ids.shape[-1] != T:
                position_ids = position_ids[..., -T:].clone(memory_format=torch.contiguous_format)
            model_inputs["position_ids"] = position_ids
        if attention_mask is not None:
            model_inputs["attention_mask"] = attention_mask
        for key, value in kwargs.items():
            if key not in ("labels", "next_sequence_length"):
                model_inputs[key] = value
        return model_inputs

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        head_mask: torch.Tensor | None = None,
        past_key_values: KVCache | Sequence[tuple[torch.Tensor, torch.Tensor]] | None = None,
        labels: torch.Tensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        cache: KVCache | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        num_items_in_batch: int | torch.Tensor | None = None,
        shift_labels: torch.Tensor | None = None,
    ) -> CausalLMOutputWithPast | tuple:
        """Logits (B, T, V) for input_ids (B, T), and the loss when ``labels`` are given.

        Args:
            input_ids: token ids (B, T); or pass ``inputs_embeds`` (B, T, D) instead.
            attention_mask: (B, past + T), 1 for tokens and 0 for padding; a 4-D (B, 1, T, S)
                mask is accepted too (bool/int: nonzero attends; float: additive).
            position_ids: (B, T); default past … past+T−1.
            head_mask: (H,) or (L, H) multipliers on the attention probabilities (eager path).
            past_key_values: a :class:`KVCache`, or a tuple of per-layer (key, value) tensors
                (B, H, S, hs). ``cache`` is transformers 5's name for the same argument.
            labels: (B, T) targets; the loss is the shifted cross-entropy in fp32, positions
                labelled -100 ignored; mean over tokens, or sum / ``num_items_in_batch``.
            shift_labels: (B, T) targets already aligned with the logits (position t predicts
                shift_labels[t]), used instead of shifting ``labels`` — as padding-free collators
                pass them. As in transformers, the loss is computed only when ``labels`` is given.
            use_cache: return the cache as ``past_key_values`` (default ``config.use_cache``;
                off while training with gradient checkpointing).
            logits_to_keep: int N > 0 computes logits for the last N positions only; a 1-D
                tensor selects positions.
        """
        if labels is not None and not (isinstance(logits_to_keep, int) and logits_to_keep == 0):
            raise ValueError("labels need logits for every position: do not combine them with logits_to_keep")
        if labels is not None:
            check_labels(labels, self.config.vocab_size)
        out = self.gpt_neox._forward_checked(
            input_ids, attention_mask, position_ids, inputs_embeds, head_mask,
            _pick_cache(past_key_values, cache), use_cache, output_attentions, output_hidden_states,
        )
        h = out.last_hidden_state
        check_logits_to_keep(logits_to_keep, h.shape[1])
        if isinstance(logits_to_keep, int):
            if logits_to_keep:
                h = h[:, -logits_to_keep:]
        else:
            h = h[:, logits_to_keep]
        logits = self.embed_out(h)  # (B, T', V)
        loss = None
        if labels is not None:
            loss = causal_lm_loss(logits, labels, num_items_in_batch, shift_labels=shift_labels)
        result = CausalLMOutputWithPast(
            loss=loss, logits=logits, past_key_values=out.past_key_values,
            hidden_states=out.hidden_states, attentions=out.attentions,
        )
        return_dict = self.config.return_dict if return_dict is None else return_dict
        return result if return_dict else result.to_tuple()

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        """Decode; see :func:`neox.generation.generate` for the arguments."""
        return generate(self, *args, **kwargs)

    def _client_changed_steps(self) -> bool:
        """Whether a client changed how one step runs: ``forward`` or ``prepare_inputs_for_generation``
        wrapped on this instance (PEFT's prompt learning, accelerate's hooks, a compiled forward) or
        overridden in a subclass or on the class, or forward hooks registered. generate() then calls
        them each step as transformers does, instead of running the core directly."""
        if self._forward_hooks or self._forward_pre_hooks:
            return True
        for name, own in _OWN_STEP_METHODS.items():
            method = getattr(self, name, None)
            # A bound method of our own function (PEFT stores one back on the instance after a call)
            # is no change; anything else on the instance or the class is.
            if getattr(method, "__func__", None) is not own or getattr(method, "__self__", None) is not self:
                return True
        return False


# The step methods as defined here, captured before any client can patch the class.
_OWN_STEP_METHODS = {name: getattr(GPTNeoXForCausalLM, name, None) for name in ("forward", "prepare_inputs_for_generation")}


def causal_lm_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    num_items_in_batch: int | torch.Tensor | None = None,
    shift_labels: torch.Tensor | None = None,
) -> torch.Tensor:
    """Next-token cross-entropy in fp32: position t predicts labels[t+1] (or shift_labels[t]); -100 is ignored."""
    if shift_labels is not None:
        if shift_labels.shape != logits.shape[:-1]:
            raise ValueError(
                f"shift_labels have shape {tuple(shift_labels.shape)}; expected {tuple(logits.shape[:-1])} like input_ids"
            )
        targets = shift_labels.to(logits.device)
    elif labels.shape != logits.shape[:-1]:
        raise ValueError(f"labels have shape {tuple(labels.shape)}; expected {tuple(logits.shape[:-1])} like input_ids")
    else:
        targets = F.pad(labels, (0, 1), value=-100)[..., 1:].to(logits.device)  # (B, T): labels shifted left
    V = logits.shape[-1]
    reduction = "mean" if num_items_in_batch is None else "sum"
    loss = F.cross_entropy(logits.float().reshape(-1, V), targets.reshape(-1), ignore_index=-100, reduction=reduction)
    if num_items_in_batch is not None:
        if isinstance(num_items_in_batch, torch.Tensor):
            num_items_in_batch = num_items_in_batch.to(loss.device)
        loss = loss / num_items_in_batch
    return loss


def _pick_cache(past_key_values: Any, cache: Any) -> Any:
    if past_key_values is not None and cache is not None and past_key_values is not cache:
        # transformers 5.24 (its deprecate_kwarg) uses `cache` and drops `past_key_values`, with a
        # warning; clients rely on it (PEFT 0.21's prefix tuning adds its prefix as past_key_values
        # next to generate()'s cache, and transformers then decodes without the prefix).
        logger.warning("Both `past_key_values` and `cache` are set: using `cache` and ignoring `past_key_values`, "
                       "as transformers does")
        return cache
    return past_key_values if past_key_values is not None else cache
