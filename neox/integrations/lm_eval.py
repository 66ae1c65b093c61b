"""lm-evaluation-harness (tested with 0.4.13): a ``neox`` model for lm-eval.

In Python::

    from neox.integrations.lm_eval import NeoXLM
    lm = NeoXLM(pretrained=model_or_folder, tokenizer=tokenizer_or_folder, device="cpu", batch_size=8)
    lm_eval.simple_evaluate(model=lm, tasks=[...])          # or model="neox", model_args=...

On the command line::

    python -m neox.integrations.lm_eval --model neox --model_args pretrained=<folder> --tasks ... --device cpu

:class:`NeoXLM` is lm-eval's own ``HFLM`` (same arguments, same batching, padding and scoring
code) with two differences: the model is loaded by neox, and the tokenizer may be neox's
``GPTNeoXTokenizerFast`` — HFLM asserts ``isinstance(tokenizer, transformers.PreTrainedTokenizer*)``
and has no hook to relax it, so the adapter overrides the two loaders (``_create_model``,
``_create_tokenizer``, and ``_get_config``), which HFLM documents as the place to do so.

lm-eval 0.4.13 resolves ``--model NAME`` only against its own registry (it reads no entry points),
so the stock ``lm_eval`` command cannot find ``neox``; ``python -m neox.integrations.lm_eval``
registers it and then runs lm-eval's command line unchanged (every flag as ``lm_eval``'s).
Importing this module imports neither lm-eval nor transformers: the class is built on first access.
"""

from __future__ import annotations

import functools
import os
from typing import Any

from ..config import GPTNeoXConfig
from ..modeling import GPTNeoXForCausalLM
from ..tokenization import GPTNeoXTokenizerFast

__all__ = ["NeoXLM", "register", "main"]

#: The lm-eval model name, and where lm-eval finds the class (this module's import name, also
#: when it runs as ``python -m``, so that there is one class).
MODEL_NAME = "neox"
_TARGET = "neox.integrations.lm_eval:NeoXLM"

# HFLM loading options that load through transformers-only paths (device maps, tensor
# parallelism, GPTQ/GGUF, delta weights); the adapter refuses them by name.
_UNSUPPORTED = ("parallelize", "tp_plan", "delta", "autogptq", "gptqmodel", "gguf_file", "quantization_config")


def register() -> None:
    """Register ``neox`` in lm-eval's model registry (idempotent)."""
    import lm_eval.models  # noqa: F401  # lm-eval fills its registry on this import; do it before adding to it
    from lm_eval.api.registry import model_registry

    if MODEL_NAME not in model_registry:
        model_registry.register(MODEL_NAME, target=_TARGET)


@functools.cache
def _build() -> type:
    # lm-eval (and through HFLM, transformers) is imported only when the adapter is used.
    from lm_eval.models.huggingface import HFLM

    class NeoXLM(HFLM):
        """lm-eval's HFLM over a neox model; accepts neox's tokenizer. See the module docstring."""

        def __init__(self, pretrained: Any, backend: str = "causal", **kwargs: Any) -> None:
            if backend != "causal":
                raise ValueError(f"GPT-NeoX is a causal LM; backend={backend!r} is not supported")
            super().__init__(pretrained=pretrained, backend=backend, **kwargs)

        def _get_config(self, pretrained: str, *, revision: str = "main", trust_remote_code: bool = False,
                        gguf_file: str | None = None, subfolder: str = "") -> None:
            if gguf_file is not None:
                raise ValueError("gguf_file is not supported by the neox lm-eval adapter")
            hub = {"revision": revision, **({"subfolder": subfolder} if subfolder else {})}
            self._config = GPTNeoXConfig.from_pretrained(pretrained, **hub)

        def _create_model(self, pretrained: str, revision: str | None = "main", dtype: Any = "auto",
                          trust_remote_code: bool | None = False, gpus: int | None = None,
                          max_memory_per_gpu: Any = None, max_cpu_memory: Any = None,
                          offload_folder: Any = None, peft: str | None = None, subfolder: str = "",
                          **kwargs: Any) -> None:
            refused = [name for name in _UNSUPPORTED if kwargs.pop(name, None)]
            if refused:
                raise ValueError(f"the neox lm-eval adapter does not support {', '.join(refused)}")
            hub = {"revision": revision, **({"subfolder": subfolder} if subfolder else {})}
            self._model = GPTNeoXForCausalLM.from_pretrained(pretrained, dtype=dtype, **hub, **kwargs)
            if peft:
                from peft import PeftModel  # optional client, only for a peft= adapter

                self._model = PeftModel.from_pretrained(self._model, peft, revision=revision)

        def _create_tokenizer(self, pretrained: Any, tokenizer: Any, revision: str | None = "main",
                              trust_remote_code: bool | None = False, use_fast_tokenizer: bool | None = True,
                              gguf_file: str | None = None, add_bos_token: bool | None = None,
                              subfolder: str | None = "") -> None:
            if tokenizer is not None and not isinstance(tokenizer, (str, os.PathLike)):
                self.tokenizer = tokenizer  # neox's or transformers' tokenizer: the same call surface
                return
            source = tokenizer if tokenizer is not None else (
                pretrained if isinstance(pretrained, (str, os.PathLike)) else self.model.name_or_path
            )
            kwargs: dict[str, Any] = {"revision": revision}
            if subfolder:
                kwargs["subfolder"] = subfolder
            if add_bos_token is not None:
                kwargs["add_bos_token"] = add_bos_token
            self.tokenizer = GPTNeoXTokenizerFast.from_pretrained(source, **kwargs)

    NeoXLM.__module__ = _TARGET.partition(":")[0]
    NeoXLM.__qualname__ = "NeoXLM"
    register()
    return NeoXLM


def __getattr__(name: str) -> Any:
    if name == "NeoXLM":
        return _build()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def main(argv: list[str] | None = None) -> None:
    """``python -m neox.integrations.lm_eval ...``: lm-eval's command line with ``neox`` registered."""
    import sys

    from lm_eval.__main__ import cli_evaluate  # the client's own CLI, imported only when run

    register()
    saved = sys.argv  # lm-eval's CLI parses (and edits) sys.argv itself
    if argv is not None:
        sys.argv = [saved[0], *argv]
    try:
        cli_evaluate()
    finally:
        sys.argv = saved


if __name__ == "__main__":
    main()
