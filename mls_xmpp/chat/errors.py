"""The chat client's error, and how any exception is shown in one line."""

from __future__ import annotations

from .text import _one_line


class ChatError(Exception):
    """A command or option is unusable; the message says why (shown as ``error: ...``)."""


def _describe(e: BaseException) -> str:
    """An exception as one readable line."""
    from mls_xmpp.core.errors import MLSError

    text = _one_line(str(e)) or type(e).__name__
    if isinstance(e, ChatError | MLSError):
        return text
    if isinstance(e, TimeoutError):
        return "timed out"
    return f"{type(e).__name__}: {text}"
