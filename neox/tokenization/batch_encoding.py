"""BatchEncoding, the dict a tokenizer call returns, and the list/tensor conversions it needs.

torch and numpy are imported only when tensors are asked for, so importing the tokenizer stays
free of torch.
"""

from __future__ import annotations

from collections import UserDict
from collections.abc import Mapping, Sequence
from typing import Any

from tokenizers import Encoding

__all__ = ["BatchEncoding"]


def _to_py(obj: Any) -> Any:
    """Tensors, arrays and numpy scalars → Python ints and lists (lists are converted deeply)."""
    if isinstance(obj, (int, float, str)) or obj is None:
        return obj
    if isinstance(obj, Mapping):
        return {k: _to_py(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        if all(isinstance(x, int) for x in obj):
            return list(obj)
        return [_to_py(x) for x in obj]
    if hasattr(obj, "tolist"):  # torch.Tensor, numpy.ndarray, numpy scalars
        return obj.tolist()
    return obj


def _tensor_kind(return_tensors: Any) -> str | None:
    """``"pt"`` / ``"np"`` / None from a ``return_tensors`` value (str or a TensorType-like enum)."""
    if return_tensors is None:
        return None
    kind = getattr(return_tensors, "value", return_tensors)
    if kind not in ("pt", "np"):
        raise ValueError(f"return_tensors={return_tensors!r} is not supported: use 'pt', 'np' or None")
    return kind


def _is_empty(value: Any) -> bool:
    """True when a (nested) list holds no leaf element."""
    if len(value) == 0:
        return True
    if not isinstance(value[0], (list, tuple)):
        return False
    return all(_is_empty(v) for v in value)


class BatchEncoding(UserDict):
    """The output of a tokenizer call: a dict of ``input_ids``, ``attention_mask``, ...

    Keys are also attributes (``batch.input_ids``); ``model(**batch)`` unpacks it; ``batch[i]`` is
    the ``tokenizers.Encoding`` of example ``i`` (word/char alignment: ``tokens()``, ``word_ids()``,
    ``char_to_token()``, ...); ``batch.to(device)`` moves the tensors.
    """

    def __init__(
        self,
        data: Mapping[str, Any] | None = None,
        encoding: Encoding | Sequence[Encoding] | None = None,
        tensor_type: str | None = None,
        prepend_batch_axis: bool = False,
        n_sequences: int | None = None,
    ) -> None:
        super().__init__(data)
        if isinstance(encoding, Encoding):
            encoding = [encoding]
        self._encodings = list(encoding) if encoding is not None else None
        if n_sequences is None and self._encodings:
            n_sequences = self._encodings[0].n_sequences
        self._n_sequences = n_sequences
        self.convert_to_tensors(tensor_type, prepend_batch_axis=prepend_batch_axis)

    def __getitem__(self, item: str | int | slice) -> Any:
        if isinstance(item, str):
            return self.data[item]
        if self._encodings is not None:
            return self._encodings[item]
        if isinstance(item, slice):
            return {key: value[item] for key, value in self.data.items()}
        raise KeyError(f"{item!r}: index a BatchEncoding with a key (str), an example (int) or a slice")

    def __getattr__(self, item: str) -> Any:
        data = self.__dict__.get("data")
        if data is not None and item in data:
            return data[item]
        raise AttributeError(f"BatchEncoding has no attribute or key {item!r}")

    def __getstate__(self) -> dict[str, Any]:
        return {"data": self.data, "encodings": self._encodings, "n_sequences": self._n_sequences}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.data = state.get("data", {})
        self._encodings = state.get("encodings")
        self._n_sequences = state.get("n_sequences")

    @property
    def encodings(self) -> list[Encoding] | None:
        """The ``tokenizers.Encoding`` of each example (None for the output of :meth:`pad`)."""
        return self._encodings

    @property
    def n_sequences(self) -> int | None:
        """1 for single texts, 2 for pairs, None when unknown."""
        return self._n_sequences

    @property
    def is_fast(self) -> bool:
        return self._encodings is not None

    def _encoding(self, batch_index: int) -> Encoding:
        if self._encodings is None:
            raise ValueError("This BatchEncoding holds no tokenizers.Encoding (it was built by pad() or by hand)")
        return self._encodings[batch_index]

    def tokens(self, batch_index: int = 0) -> list[str]:
        return self._encoding(batch_index).tokens

    def word_ids(self, batch_index: int = 0) -> list[int | None]:
        return self._encoding(batch_index).word_ids

    def sequence_ids(self, batch_index: int = 0) -> list[int | None]:
        return self._encoding(batch_index).sequence_ids

    def token_to_chars(self, batch_or_token_index: int, token_index: int | None = None) -> tuple[int, int] | None:
        batch, index = (0, batch_or_token_index) if token_index is None else (batch_or_token_index, token_index)
        return self._encoding(batch).token_to_chars(index)

    def char_to_token(
        self, batch_or_char_index: int, char_index: int | None = None, sequence_index: int = 0
    ) -> int | None:
        batch, index = (0, batch_or_char_index) if char_index is None else (batch_or_char_index, char_index)
        return self._encoding(batch).char_to_token(index, sequence_index)

    def token_to_word(self, batch_or_token_index: int, token_index: int | None = None) -> int | None:
        batch, index = (0, batch_or_token_index) if token_index is None else (batch_or_token_index, token_index)
        return self._encoding(batch).token_to_word(index)

    def word_to_tokens(
        self, batch_or_word_index: int, word_index: int | None = None, sequence_index: int = 0
    ) -> tuple[int, int] | None:
        batch, index = (0, batch_or_word_index) if word_index is None else (batch_or_word_index, word_index)
        return self._encoding(batch).word_to_tokens(index, sequence_index)

    def convert_to_tensors(self, tensor_type: str | None = None, prepend_batch_axis: bool = False) -> "BatchEncoding":
        """Turn the lists into torch tensors (``"pt"``) or numpy arrays (``"np"``), in place."""
        kind = _tensor_kind(tensor_type)
        if kind is None:
            return self
        if kind == "pt":
            import torch

            def as_tensor(value: Any) -> Any:
                return torch.tensor(value, dtype=torch.int64 if _is_empty(value) else None)

            is_tensor = torch.is_tensor
        else:
            import numpy as np

            def as_tensor(value: Any) -> Any:
                if value and isinstance(value[0], (list, tuple)) and len({len(v) for v in value}) > 1:
                    return np.asarray([np.asarray(v) for v in value], dtype=object)  # ragged, as transformers
                return np.asarray(value, dtype=np.int64 if _is_empty(value) else None)

            def is_tensor(value: Any) -> bool:
                return isinstance(value, np.ndarray)

        for key, value in self.data.items():
            if prepend_batch_axis:
                value = [value]
            if is_tensor(value):
                continue
            try:
                self.data[key] = as_tensor(value)
            except (ValueError, TypeError) as err:
                raise ValueError(
                    f"Could not make a tensor of {key!r}: its sequences have different lengths. "
                    "Pass padding=True (and truncation=True) to get a rectangular batch."
                ) from err
        return self

    def to(self, device: Any, *, non_blocking: bool = False) -> "BatchEncoding":
        """Move every tensor to ``device`` (a str, int or torch.device); returns self."""
        self.data = {
            k: v.to(device=device, non_blocking=non_blocking) if callable(getattr(v, "to", None)) else v
            for k, v in self.data.items()
        }
        return self
