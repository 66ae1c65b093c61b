"""GPTNeoXTokenizerFast: the GPT-NeoX byte-level BPE tokenizer, on the ``tokenizers`` library.

    tokenizer = GPTNeoXTokenizerFast.from_pretrained("EleutherAI/gpt-neox-20b")
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    logits = model(**batch).logits

It gives the ids, masks, offsets and decoded text of transformers 5.24's ``GPTNeoXTokenizerFast``
(an alias of ``GPTNeoXTokenizer``), and reads and writes the same files. The pipeline is rebuilt the
way transformers rebuilds it, whatever the tokenizer.json says besides its vocabulary, merges and
added tokens: NFC normalisation, a byte-level pre-tokenizer (``add_prefix_space``, ``trim_offsets``),
the BPE model, a template post-processor that adds ``<|endoftext|>`` only when ``add_bos_token`` /
``add_eos_token`` ask for it, and a byte-level decoder. Special tokens resolve as in transformers:
bos = eos = unk = ``<|endoftext|>`` and pad = ``<|padding|>``; where the files do not hold
``<|padding|>`` as a token (EleutherAI's release ``20B_tokenizer.json``, whose id 1 is ``<|unk|>``)
it is added as a new id (50277 there), exactly as transformers adds it.

Deliberate differences from transformers 5.24:

* An unknown keyword argument is a ``TypeError`` naming it (transformers ignores most of them).
  ``verbose`` is accepted and only silences the too-long-sequence warning; ``trust_remote_code``
  and ``use_fast`` are accepted by ``from_pretrained`` and ignored.
* ``padding="max_length"`` with neither ``max_length=`` nor a ``model_max_length`` is a
  ``ValueError`` (transformers silently does not pad). ``truncation=True`` with no length logs a
  warning and does not truncate, as transformers does silently.
* ``add_bos_token`` / ``add_eos_token`` in tokenizer_config.json are honoured even next to a
  tokenizer.json (transformers 5.24 drops them there, so a tokenizer it saved with
  ``add_bos_token=True`` reloads without it). ``save_pretrained`` writes them when they are on; a
  warning says that transformers needs them passed to its ``from_pretrained`` again.
* ``save_pretrained`` also records ``padding_side`` / ``truncation_side`` when they are not
  "right" (transformers forgets a side set after loading), and writes tokenizer.json without the
  padding/truncation state the last call left in the backend.
* The post-processor follows later changes of ``bos_token`` / ``eos_token``, not only of
  ``add_bos_token`` / ``add_eos_token``.
* Setting a special token that is not in the vocabulary logs a warning (its id is then the unk
  id, as in transformers).
* Missing tokenizer files are an ``OSError`` naming the folder or repo and the files looked for; a
  corrupt tokenizer.json / tokenizer_config.json / vocabulary is a ``ValueError`` naming the file.
  A truncation the backend cannot do (``only_first`` shorter than the second sequence) is a
  ``ValueError`` naming the strategy and length (transformers raises the backend's bare
  ``Exception``).

Not implemented: chat templates (a ``chat_template`` in tokenizer_config.json is kept and saved
back, but there is no ``apply_chat_template``), ``push_to_hub``, ``train_new_from_iterator``,
``tokenizer_object=``, slow (pure-Python) tokenizers, and model-specific named special tokens.
"""

from __future__ import annotations

from tokenizers import AddedToken

from .batch_encoding import BatchEncoding
from .tokenizer import GPTNeoXTokenizerFast

__all__ = ["GPTNeoXTokenizerFast", "BatchEncoding", "AddedToken"]
