"""TRL with a neox model (and, converted, a neox tokenizer).

``trl.SFTTrainer(model=neox_model, ...)`` needs nothing from here: TRL reads
``config.get_text_config()``, calls ``add_model_tags`` and ``activation_checkpointing_enable``,
and wraps the forward with its fused LM head through ``base_model`` and
``get_output_embeddings`` — all of which neox models provide.

TRL does insist that ``processing_class`` be a ``transformers.PreTrainedTokenizerBase``;
:func:`to_transformers_tokenizer` gives it neox's tokenizer as one, read by transformers from the
files neox's ``save_pretrained`` writes (so both encode identically)::

    from neox.integrations.trl import to_transformers_tokenizer
    trainer = SFTTrainer(model=model, processing_class=to_transformers_tokenizer(tokenizer), ...)
"""

from __future__ import annotations

import tempfile
from typing import Any

__all__ = ["to_transformers_tokenizer"]


def to_transformers_tokenizer(tokenizer: Any) -> Any:
    """A ``transformers.PreTrainedTokenizerFast`` equal to ``tokenizer`` (a neox GPTNeoXTokenizerFast).

    A transformers tokenizer is returned unchanged.
    """
    import transformers  # lazily: neox does not depend on transformers

    if isinstance(tokenizer, transformers.PreTrainedTokenizerBase):
        return tokenizer
    if not hasattr(tokenizer, "save_pretrained"):
        raise TypeError(f"expected a neox GPTNeoXTokenizerFast, got {type(tokenizer).__name__}")
    with tempfile.TemporaryDirectory() as folder:
        tokenizer.save_pretrained(folder)
        return transformers.PreTrainedTokenizerFast.from_pretrained(folder)
