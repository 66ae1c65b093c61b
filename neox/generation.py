"""Text generation for GPTNeoXForCausalLM (work in progress: GenerationConfig only so far)."""

from __future__ import annotations

import copy
import json
import logging
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

__all__ = ["GenerationConfig", "generate"]

GENERATION_CONFIG_NAME = "generation_config.json"


@dataclass
class GenerationConfig:
    """Decoding settings; field names are generation_config.json's keys (transformers' names).

    None means "transformers' default", resolved when generate() runs: max_length 20,
    top_k 50, temperature 1.0, top_p 1.0, num_beams 1, and so on.
    """

    max_length: int | None = None
    max_new_tokens: int | None = None
    min_length: int | None = None
    min_new_tokens: int | None = None
    early_stopping: bool | str | None = None
    stop_strings: str | list[str] | None = None
    do_sample: bool | None = None
    num_beams: int | None = None
    use_cache: bool | None = None
    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    min_p: float | None = None
    typical_p: float | None = None
    repetition_penalty: float | None = None
    length_penalty: float | None = None
    no_repeat_ngram_size: int | None = None
    bad_words_ids: list[list[int]] | None = None
    suppress_tokens: list[int] | None = None
    num_return_sequences: int | None = None
    output_scores: bool | None = None
    output_logits: bool | None = None
    return_dict_in_generate: bool | None = None
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_model_config(cls, config: Any) -> "GenerationConfig":
        return cls(
            bos_token_id=config.bos_token_id,
            eos_token_id=copy.deepcopy(config.eos_token_id),
            pad_token_id=config.pad_token_id,
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "GenerationConfig":
        names = {f.name for f in fields(cls)} - {"extra"}
        known = {k: v for k, v in data.items() if k in names}
        extra = {k: v for k, v in data.items() if k not in names and k not in ("transformers_version",)}
        return cls(**known, extra=extra)

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: copy.deepcopy(getattr(self, f.name)) for f in fields(self) if f.name != "extra"}
        out = {k: v for k, v in out.items() if v is not None}
        out.update(copy.deepcopy(self.extra))
        return out

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs: Any) -> "GenerationConfig":
        from .hub import HubOptions, resolve_file

        options = HubOptions.pop_from(kwargs)
        if kwargs:
            raise TypeError(f"GenerationConfig.from_pretrained got unknown arguments: {sorted(kwargs)}")
        path = resolve_file(pretrained_model_name_or_path, GENERATION_CONFIG_NAME, options, required=True)
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not valid JSON: {e}") from None
        if not isinstance(data, dict):
            raise ValueError(f"{path} must hold a JSON object")
        return cls.from_dict(data)

    def save_pretrained(self, save_directory: str | os.PathLike) -> None:
        from .checkpoint import atomic_write_text

        Path(save_directory).mkdir(parents=True, exist_ok=True)
        atomic_write_text(Path(save_directory) / GENERATION_CONFIG_NAME, self.to_json_string())


def generate(model: Any, *args: Any, **kwargs: Any) -> Any:
    raise NotImplementedError("generate() is being written")
