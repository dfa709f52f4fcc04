"""Standard input, read line by line in a thread for the event loop."""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import os
import sys
import threading


def _start_reader(loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[str | None]) -> None:
    """Read standard input in a daemon thread; lines (then None at its end) go to ``queue``.

    ``os.read`` on the descriptor, not ``sys.stdin``: a daemon thread blocked in
    a buffered read would hold the buffer's lock at interpreter shutdown. Works
    for terminals, pipes and regular files alike.
    """
    def put(item: str | None) -> None:
        loop.call_soon_threadsafe(queue.put_nowait, item)

    def read() -> None:
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        pending = ""
        try:
            fd = sys.stdin.fileno()
        except (AttributeError, ValueError, OSError):
            put(None)
            return
        while True:
            try:
                chunk = os.read(fd, 65536)
            except InterruptedError:
                continue
            except OSError:
                chunk = b""
            pending += decoder.decode(chunk, final=not chunk)
            *lines, pending = pending.split("\n")
            for line in lines:
                put(line)
            if not chunk:
                if pending:
                    put(pending)
                put(None)
                return

    with contextlib.suppress(RuntimeError):  # the loop is closing
        threading.Thread(target=read, name="mls-xmpp-chat-stdin", daemon=True).start()
