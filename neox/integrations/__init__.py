"""Optional glue between neox models and the libraries that train, tune and evaluate them.

Each submodule imports its client (transformers' Trainer, TRL, PEFT, …) only when used, so
``import neox`` never pulls them in. Where a client already accepts a neox model through its
own hooks (class attributes such as ``accepts_loss_kwargs``, ``loss_type``, ``_tied_weights_keys``,
``activation_checkpointing_enable``), nothing here is needed; these modules cover only what a
client decides by ``isinstance(model, transformers.PreTrainedModel)``.

* :mod:`neox.integrations.trainer` — ``NeoxCheckpointCallback``: Trainer checkpoints that
  ``from_pretrained`` can load (config.json and generation_config.json beside the weights).
* :mod:`neox.integrations.peft` — ``get_peft_model``: PEFT's ``target_modules="all-linear"``
  leaving the output head out, as PEFT does for transformers models.
* :mod:`neox.integrations.trl` — ``to_transformers_tokenizer``: neox's tokenizer as the
  ``PreTrainedTokenizerBase`` TRL's trainers require.
"""
