"""Streamers: text printed, or handed to an iterator, while generate() runs."""

from __future__ import annotations

import sys
import unicodedata
from queue import Queue
from typing import Any

__all__ = ["TextStreamer", "TextIteratorStreamer"]


class TextStreamer:
    """Print text to stdout as it is generated (batch size 1), word by word.

    Works as ``generate(..., streamer=TextStreamer(tokenizer))``: generate() calls :meth:`put`
    with the prompt, then with each new token, then :meth:`end`. ``skip_prompt=True`` leaves the
    prompt out; ``decode_kwargs`` go to ``tokenizer.decode`` (e.g. ``skip_special_tokens=True``).
    Text is held back until a word is complete, so multi-token characters never print half-made.
    """

    def __init__(self, tokenizer: Any, skip_prompt: bool = False, **decode_kwargs: Any) -> None:
        self.tokenizer = tokenizer
        self.skip_prompt = skip_prompt
        self.decode_kwargs = decode_kwargs
        self.token_cache: list[int] = []
        self.print_len = 0
        self.next_tokens_are_prompt = True

    def put(self, value: Any) -> None:
        if len(value.shape) > 1 and value.shape[0] > 1:
            raise ValueError("TextStreamer only supports batch size 1")
        if len(value.shape) > 1:
            value = value[0]
        if self.skip_prompt and self.next_tokens_are_prompt:
            self.next_tokens_are_prompt = False
            return
        self.token_cache.extend(value.tolist())
        text = self.tokenizer.decode(self.token_cache, **self.decode_kwargs)
        if text.endswith("\n"):
            # Flush at a newline, keeping the last token as context for the next line's spacing.
            printable = text[self.print_len :]
            self.token_cache = self.token_cache[-1:]
            self.print_len = len(self.tokenizer.decode(self.token_cache, **self.decode_kwargs))
        elif text and _is_cjk(ord(text[-1])):
            printable = text[self.print_len :]
            self.print_len += len(printable)
        elif all(c.isspace() or unicodedata.category(c)[0] in "LMN" for c in text[self.print_len :]):
            # Letters, marks, digits and spaces are final; symbols may still change (e.g. "\ufffd").
            printable = text[self.print_len :]
            self.print_len += len(printable)
        else:
            printable = text[self.print_len : text.rfind(" ") + 1]
            self.print_len += len(printable)
        self.on_finalized_text(printable)

    def end(self) -> None:
        if self.token_cache:
            text = self.tokenizer.decode(self.token_cache, **self.decode_kwargs)
            printable = text[self.print_len :]
            self.token_cache = []
            self.print_len = 0
        else:
            printable = ""
        self.next_tokens_are_prompt = True
        self.on_finalized_text(printable, stream_end=True)

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        """Write finished text to stdout (a newline after the last piece). Override to redirect."""
        sys.stdout.write(text + ("\n" if stream_end else ""))
        sys.stdout.flush()


class TextIteratorStreamer(TextStreamer):
    """A TextStreamer whose text is read by iterating over it, typically while generate() runs in
    another thread::

        streamer = TextIteratorStreamer(tokenizer, skip_prompt=True)
        Thread(target=model.generate, kwargs=dict(input_ids=ids, streamer=streamer)).start()
        for piece in streamer:
            ...

    ``timeout`` (seconds) bounds each wait for the next piece (``queue.Empty`` when it runs out).
    """

    def __init__(self, tokenizer: Any, skip_prompt: bool = False, timeout: float | None = None, **decode_kwargs: Any) -> None:
        super().__init__(tokenizer, skip_prompt, **decode_kwargs)
        self.text_queue: Queue = Queue()
        self.stop_signal = None
        self.timeout = timeout

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        self.text_queue.put(text, timeout=self.timeout)
        if stream_end:
            self.text_queue.put(self.stop_signal, timeout=self.timeout)

    def __iter__(self) -> "TextIteratorStreamer":
        return self

    def __next__(self) -> str:
        value = self.text_queue.get(timeout=self.timeout)
        if value == self.stop_signal:
            raise StopIteration()
        return value


def _is_cjk(cp: int) -> bool:
    return (0x4E00 <= cp <= 0x9FFF or 0x3400 <= cp <= 0x4DBF or 0x20000 <= cp <= 0x2A6DF
            or 0x2A700 <= cp <= 0x2B73F or 0x2B740 <= cp <= 0x2B81F or 0x2B820 <= cp <= 0x2CEAF
            or 0xF900 <= cp <= 0xFAFF or 0x2F800 <= cp <= 0x2FA1F)
