"""Running the client in a process: the store's lock, signals, the exit status."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import IO, TextIO

from .client import Chat
from .errors import ChatError, _describe
from .options import ChatOptions, _options

log = logging.getLogger(__package__)  # "mls_xmpp.chat", as before the split into modules


def _lock_store(path: Path) -> IO[bytes] | None:
    """Create the store's directory and take an exclusive lock next to the store.

    :raises ChatError: another process uses the store, or it cannot be created.
    """
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as e:
        raise ChatError(f"cannot use the store {path}: {e.strerror or e}") from None
    handle = os.fdopen(fd, "r+b")
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not on POSIX: no lock
        return handle
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise ChatError(f"the store {path} is in use by another mls-xmpp process") from None
    return handle


async def _main(chat: Chat) -> int:
    loop = asyncio.get_running_loop()
    caught: list[int] = []

    def on_signal(signum: int) -> None:
        caught.append(signum)
        chat.interrupt()
        if not chat.ever_ready and main_task is not None:
            main_task.cancel()

    main_task = asyncio.current_task()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, on_signal, signum)
    status = 0
    try:
        try:
            await chat.login()
        except ChatError as e:
            chat.error(str(e))
            return 1
        await chat.repl()
    except asyncio.CancelledError:
        if not caught:
            raise
    finally:
        await chat.logout()
        if not caught and chat.ever_ready:
            chat.notice("logged out")
    if caught:
        status = 128 + caught[0]
    return status


def run(options: ChatOptions, out: TextIO | None = None) -> int:
    """Run the chat client until /quit or end of input; the exit status."""
    logging.basicConfig(level=logging.DEBUG if options.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if not options.verbose:  # the client shows what matters; library lines add noise
        for name in ("slixmpp", "mls_xmpp", "asyncio"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
    stream = out if out is not None else sys.stdout
    reconfigure = getattr(stream, "reconfigure", None)
    if reconfigure is not None:  # never die on a character the terminal cannot show
        with contextlib.suppress(Exception):
            reconfigure(errors="backslashreplace")
    chat = Chat(options, stream)
    try:
        lock = _lock_store(options.store)
    except ChatError as e:
        chat.error(str(e))
        return 1
    try:
        return asyncio.run(_main(chat))
    except KeyboardInterrupt:
        return 128 + signal.SIGINT
    except Exception as e:  # noqa: BLE001 - e.g. an unreadable store: one line, no traceback
        log.debug("chat failed", exc_info=True)
        chat.error(_describe(e))
        return 1
    finally:
        if lock is not None:
            lock.close()


def main(argv: Sequence[str] | None = None) -> int:
    """``mls-xmpp chat ...``; returns the exit status."""
    options = _options(sys.argv[1:] if argv is None else argv)
    return run(options)
