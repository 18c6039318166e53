"""Incremental detokenization with stop strings, in constant memory.

A token may hold part of a UTF-8 character (byte-level vocabularies), and a stop string may span tokens,
so text is released only once it is final: characters complete, and not the possible start of a stop
string. Only a few ids and at most one stop string's worth of text are kept, however long the generation.
"""

from __future__ import annotations

from collections.abc import Sequence

from tokenizers import Tokenizer

# Ids of the prompt decoded ahead of the first generated token: some decoders (Metaspace, WordPiece)
# render a token differently at the start of a text.
_CONTEXT_IDS = 4
# UTF-8 characters have at most 4 bytes: a replacement character that lasts longer is final.
_MAX_PENDING = 8


class TextStream:
    """Feed generated ids with :meth:`push`; each call returns the text that became final."""

    def __init__(self, tokenizer: Tokenizer, context: Sequence[int], stop: Sequence[str] = ()) -> None:
        self._tokenizer = tokenizer
        self._stop = tuple(stop)
        self._ids = list(context[-_CONTEXT_IDS:])
        self._read = len(self._ids)  # ids[:read] produced text already released (or the context)
        self._held = ""  # released by the decoder but possibly the start of a stop string
        self.stopped = False

    def _decode(self, force: bool) -> str:
        prefix = self._tokenizer.decode(self._ids[: self._read], skip_special_tokens=True)
        full = self._tokenizer.decode(self._ids, skip_special_tokens=True)
        pending = len(self._ids) - self._read
        if not force and (len(full) <= len(prefix) or full.endswith("\ufffd")) and pending < _MAX_PENDING:
            return ""
        self._ids = self._ids[self._read :]
        self._read = len(self._ids)
        return full[len(prefix) :]

    def _release(self, text: str) -> str:
        buffer = self._held + text
        hits = [i for i in (buffer.find(s) for s in self._stop) if i >= 0]
        if hits:
            self.stopped = True
            self._held = ""
            return buffer[: min(hits)]
        hold = max((n for s in self._stop for n in range(1, len(s)) if buffer.endswith(s[:n])), default=0)
        self._held = buffer[len(buffer) - hold :]
        return buffer[: len(buffer) - hold]

    def push(self, token_id: int) -> str:
        """Add a generated id; returns the newly final text (sets :attr:`stopped` at a stop string)."""
        self._ids.append(token_id)
        return self._release(self._decode(force=False))

    def flush(self) -> str:
        """The text still held back, at the end of the generation."""
        text = self._release(self._decode(force=True))
        if self.stopped:
            return text
        text, self._held = text + self._held, ""
        return text
