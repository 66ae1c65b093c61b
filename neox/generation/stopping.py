"""Stopping: end-of-sequence ids, stop strings and the user's criteria, row by row."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

import torch

__all__ = ["StopStrings", "stop_rows"]


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte ↔ printable-character table used by byte-level BPE vocabularies."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


class StopStrings:
    """Stop a row once its text ends with a stop string — the string may end inside the last
    token, as in transformers. Each token's text (its bytes, for byte-level vocabularies) is
    tabled once; each step joins the last few tokens' texts on the host and searches them."""

    def __init__(self, tokenizer: Any, stop_strings: Sequence[str]) -> None:
        backend = self._backend(tokenizer)
        mode = self._matching_mode(backend)
        vocab = tokenizer.get_vocab()
        byte_decoder = {c: b for b, c in _bytes_to_unicode().items()} if mode == "byte_level" else None
        table: list[bytes | str] = [b"" if mode else ""] * (max(vocab.values()) + 1)
        fallback: list[tuple[str, int]] = []
        for token, index in vocab.items():
            text = self._token_bytes(token, mode, byte_decoder)
            if text is None:
                fallback.append((token, index))
            else:
                table[index] = text
        if fallback:
            for (token, index), text in zip(fallback, self._texts_in_context(tokenizer, [t for t, _ in fallback])):
                table[index] = text.encode("utf-8") if mode else text
        self.table = table
        self.strings = tuple(s.encode("utf-8") for s in stop_strings) if mode else tuple(stop_strings)
        self.window = max(len(s) for s in self.strings)  # every token is at least one character long

    @staticmethod
    def _backend(tokenizer: Any) -> Any:
        import tokenizers  # only stop strings need it: kept out of the start-up of every generate()

        if isinstance(tokenizer, tokenizers.Tokenizer):
            return tokenizer
        return getattr(tokenizer, "backend_tokenizer", None) or getattr(tokenizer, "_tokenizer", None)

    @staticmethod
    def _matching_mode(backend: Any) -> str | None:
        decoder = getattr(backend, "decoder", None)
        if decoder is None:
            return None
        if type(decoder).__name__ == "ByteLevel":
            return "byte_level"
        state = getattr(decoder, "__getstate__", lambda: None)()
        if isinstance(state, (bytes, str)):
            try:
                state = json.loads(state)
            except json.JSONDecodeError:
                state = None

        def has(node: Any, kind: str) -> bool:
            if isinstance(node, dict):
                return node.get("type") == kind or any(has(v, kind) for v in node.values())
            if isinstance(node, list):
                return any(has(v, kind) for v in node)
            return False

        if has(state, "ByteFallback"):
            return "byte_fallback"
        if has(state, "ByteLevel"):
            return "byte_level"
        return None

    @staticmethod
    def _token_bytes(token: str, mode: str | None, byte_decoder: dict[str, int] | None) -> bytes | None:
        if mode == "byte_level":
            if byte_decoder is not None and all(c in byte_decoder for c in token):
                return bytes(byte_decoder[c] for c in token)
            return None
        if mode == "byte_fallback":
            if len(token) == 6 and token.startswith("<0x") and token.endswith(">") and \
                    all(c in "0123456789abcdefABCDEF" for c in token[3:5]):
                return bytes([int(token[3:5], 16)])
        return None

    @staticmethod
    def _texts_in_context(tokenizer: Any, tokens: list[str]) -> list[str]:
        """Each token's text as it reads after other text (so leading-space markers resolve)."""
        prefix = "abcdef"
        convert = getattr(tokenizer, "convert_tokens_to_string", None)
        if callable(convert) and callable(getattr(tokenizer, "convert_ids_to_tokens", None)):
            base = tokenizer.convert_ids_to_tokens(tokenizer(prefix, add_special_tokens=False)["input_ids"])
            out = []
            for token in tokens:
                text = convert(list(base) + [token])
                out.append(text[text.index(prefix) + len(prefix):])
            return out
        # A bare tokenizers.Tokenizer: decode each id after the prefix's ids.
        vocab = tokenizer.get_vocab()
        base_ids = tokenizer.encode(prefix, add_special_tokens=False).ids
        out = []
        for token in tokens:
            text = tokenizer.decode(base_ids + [vocab[token]], skip_special_tokens=False)
            out.append(text[text.index(prefix) + len(prefix):] if prefix in text else text)
        return out

    def __call__(self, input_ids: Any, scores: Any = None) -> Any:
        tails = input_ids[:, -self.window:].tolist()
        table, size = self.table, len(self.table)
        empty = table[0][:0] if table else b""
        hits = []
        for row in tails:
            pieces = [table[t] if 0 <= t < size else empty for t in row]
            text = empty.join(pieces)
            last = len(pieces[-1]) if pieces else 0
            end = len(text)
            # A match must end inside the last token: start at or after end − last − len(s) + 1.
            hits.append(any(text.find(s, max(0, end - last - len(s) + 1)) != -1 for s in self.strings))
        return torch.tensor(hits, dtype=torch.bool, device=input_ids.device)


def stop_rows(eos: Any, stop_strings: StopStrings | None, criteria: list[Callable], seqs: Any, scores: list | None,
              new_tokens: Any) -> Any:
    """transformers' stopping criteria, except the length limit (decided on the host): True where a
    row is done, None when nothing but the length can stop. ``eos`` (E,) or None; ``new_tokens`` (M,)
    is seqs[:, -1]; ``scores`` the kept scores (output_scores), handed to user criteria as
    transformers' tuple."""
    done = None
    if eos is not None:
        done = torch.isin(new_tokens, eos)
    if stop_strings is not None:
        hit = stop_strings(seqs)
        done = hit if done is None else done | hit
    scores = tuple(scores) if scores is not None and criteria else None
    for criterion in criteria:
        hit = criterion(seqs, scores)
        hit = torch.as_tensor(hit, device=seqs.device)
        if hit.dim() == 0:
            hit = hit.expand(seqs.shape[0])
        done = hit.bool() if done is None else done | hit.bool()
    return done
