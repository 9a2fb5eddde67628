"""Turning generated tokens into text as they come: never a broken character, never part of a
stop string.

:class:`IncrementalDetokenizer` decodes a small window of tokens (the last tokens already turned
into text, for context, then the new ones) and emits what the new ones add, the approach of
text-generation-inference and vLLM. Decoding a window rather than each token alone keeps what
depends on context right (SentencePiece's leading spaces, byte-level BPE's multi-byte
characters). The window starts with the prompt's last tokens, so the first generated word gets
the space it would have after the prompt. While the decoded text ends in U+FFFD (the replacement
character: the tokens so far end inside a multi-byte UTF-8 character) nothing is emitted; the
text comes out once the character is complete, or as it is at the end (:meth:`flush`). A
token-id prompt may itself end inside a character: the generated tokens that complete it emit
the whole character (the prompt's text showed U+FFFD there, not the character).

:class:`StopStrings` holds back the end of the text that could be the start of a stop string
and cuts the text before the first stop string found, so a stop string is never emitted, not
even in part.
"""

from __future__ import annotations

from typing import Any

#: Prompt tokens decoded before the first generated one, for context.
PROMPT_CONTEXT = 6


class IncrementalDetokenizer:
    def __init__(self, tokenizer: Any, prompt_ids: list[int]) -> None:
        self._decode = _decoder(tokenizer)
        self.ids: list[int] = list(prompt_ids[-PROMPT_CONTEXT:])
        self._prefix = 0  # where the decoded window starts
        self._read = len(self.ids)  # tokens before this one are emitted already
        self._prefix_text = self._decode(self.ids[self._prefix : self._read]) if self.ids else ""

    def add(self, token_id: int) -> str:
        """The text ``token_id`` completes ("" while a character is incomplete)."""
        self.ids.append(token_id)
        return self._advance(final=False)

    def flush(self) -> str:
        """Whatever is held back (an incomplete character, as U+FFFD), at the end."""
        return self._advance(final=True)

    def _advance(self, *, final: bool) -> str:
        if self._read >= len(self.ids):
            return ""
        text = self._decode(self.ids[self._prefix :])
        if text.endswith("\ufffd") and not final:
            return ""
        prefix_text = self._prefix_text
        if text.startswith(prefix_text):
            new = text[len(prefix_text) :]
        else:
            # The window's first tokens ended inside a multi-byte character (a token-id prompt
            # can): decoded alone they gave U+FFFD, which the new tokens have now completed.
            # The completed character is new text: it was not in the prompt's text.
            stem = prefix_text.rstrip("\ufffd")
            if stem != prefix_text and text.startswith(stem):
                new = text[len(stem) :]
            else:
                new = text[len(prefix_text) :]
        if not new:
            return ""
        self._prefix = self._read
        self._read = len(self.ids)
        self._prefix_text = self._decode(self.ids[self._prefix : self._read])
        return new


def _decoder(tokenizer: Any):
    """``ids -> text`` skipping special tokens, without the clean-up of spaces before
    punctuation (which would make the concatenated pieces differ from the whole)."""

    def decode(ids: list[int]) -> str:
        return tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    return decode


class StopStrings:
    """Text flows through :meth:`feed`; what comes out can never be (part of) a stop string."""

    def __init__(self, stops: tuple[str, ...]) -> None:
        self.stops = tuple(stops)
        self.held = ""

    def feed(self, text: str) -> tuple[str, bool]:
        """``(text to emit, stopped)``. When ``stopped``, the text ends before the first stop
        string and whatever followed it is dropped."""
        if not self.stops:
            return text, False
        buffer = self.held + text
        first = -1
        for stop in self.stops:
            at = buffer.find(stop)
            if at >= 0 and (first < 0 or at < first):
                first = at
        if first >= 0:
            self.held = ""
            return buffer[:first], True
        keep = 0
        for stop in self.stops:
            for n in range(min(len(stop) - 1, len(buffer)), keep, -1):
                if buffer.endswith(stop[:n]):
                    keep = n
                    break
        self.held = buffer[len(buffer) - keep :] if keep else ""
        return buffer[: len(buffer) - keep], False

    def flush(self) -> str:
        """The held-back text, at the end of a generation that did not stop on a stop string."""
        held, self.held = self.held, ""
        return held
