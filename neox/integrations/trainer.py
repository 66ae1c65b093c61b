"""transformers' Trainer with a neox model.

The Trainer itself needs nothing: it passes ``num_items_in_batch`` to neox's forward (the model
declares ``accepts_loss_kwargs``), counts shifted labels (``loss_type == "ForCausalLM"``) and turns
on checkpointing through ``activation_checkpointing_enable``. What it does not do for a model
that is not a ``transformers.PreTrainedModel`` is write ``config.json`` into its checkpoints: it
saves the weights alone. Add the callback and each ``checkpoint-N`` folder loads with
``GPTNeoXForCausalLM.from_pretrained``::

    from neox.integrations.trainer import NeoxCheckpointCallback
    trainer = Trainer(model=model, args=args, ..., callbacks=[NeoxCheckpointCallback()])

(``trainer.save_model(folder)`` writes the weights only as well; save the final model with
``model.save_pretrained(folder)``.)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..files import atomic_write_text
from ..loading import metadata_files

__all__ = ["NeoxCheckpointCallback", "write_checkpoint_metadata"]


def write_checkpoint_metadata(model: Any, folder: str | os.PathLike) -> None:
    """Write config.json and generation_config.json of ``model`` into ``folder`` (weights untouched).

    A PEFT-wrapped model is skipped: its checkpoint is an adapter folder, loaded with PEFT.
    """
    if hasattr(model, "peft_config") or not hasattr(model, "config"):
        return
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in metadata_files(model).items():
        atomic_write_text(folder / name, text)


def _make_callback_class() -> type:
    from transformers import TrainerCallback  # lazily: neox does not depend on transformers
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

    class NeoxCheckpointCallback(TrainerCallback):
        """After each Trainer save, write the neox model's config.json into ``checkpoint-N``."""

        def on_save(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
            if model is None or not state.is_world_process_zero:
                return
            folder = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
            if folder.is_dir():
                write_checkpoint_metadata(_unwrap(model), folder)

    return NeoxCheckpointCallback


def _unwrap(model: Any) -> Any:
    # DataParallel / DistributedDataParallel / compiled modules keep the model as .module / ._orig_mod
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if inner is None:
            return model
        model = inner


def __getattr__(name: str) -> Any:
    if name == "NeoxCheckpointCallback":
        cls = _make_callback_class()
        globals()[name] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
