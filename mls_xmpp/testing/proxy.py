"""A TCP proxy on loopback that a test controls: cut connections, stall them, refuse new ones.

Fault tests put it between clients and the real server, so that faults are
real network faults -- a connection reset mid-stream, a server that stops
answering -- rather than a mock::

    proxy = FaultProxy("127.0.0.1", server.c2s_port)
    await proxy.start()
    client.connect(proxy.host, proxy.port)
    ...
    proxy.cut_all()          # every open connection is reset now
    proxy.refuse = True      # new connections are refused until set back
    proxy.stall = True       # bytes are held (both ways) until set back
    proxy.stall_down = True  # only bytes from the server to the clients are held

It runs in the event loop of the test (asyncio streams), forwards bytes both
ways unchanged, and counts what it did (:attr:`cuts`, :attr:`accepted`).
Loopback only: it listens on 127.0.0.1 and connects to the host it is given.
"""

from __future__ import annotations

import asyncio
import contextlib
import random

__all__ = ["FaultProxy"]

_CHUNK = 65536


class _Link:
    """One client connection and its connection to the server."""

    def __init__(self, proxy: FaultProxy, client_r: asyncio.StreamReader,
                 client_w: asyncio.StreamWriter) -> None:
        self.proxy = proxy
        self.client_r, self.client_w = client_r, client_w
        self.server_w: asyncio.StreamWriter | None = None
        self.tasks: list[asyncio.Task[None]] = []
        self.closed = False

    async def run(self) -> None:
        try:
            server_r, self.server_w = await asyncio.open_connection(
                self.proxy.target_host, self.proxy.target_port)
        except OSError:
            self.close()
            return
        self.tasks = [asyncio.ensure_future(self._pump(self.client_r, self.server_w)),
                      asyncio.ensure_future(self._pump(server_r, self.client_w, down=True))]
        await asyncio.wait(self.tasks, return_when=asyncio.FIRST_COMPLETED)
        self.close()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *,
                    down: bool = False) -> None:
        try:
            while True:
                data = await reader.read(_CHUNK)
                if not data:
                    return
                while (self.proxy.stall or (down and self.proxy.stall_down)) and not self.closed:
                    await asyncio.sleep(0.05)
                if self.closed:
                    return
                writer.write(data)
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError, ConnectionError):
            return

    def close(self, *, reset: bool = False) -> None:
        """Close both sides; with ``reset``, abort them (a TCP RST where the OS allows)."""
        if self.closed:
            return
        self.closed = True
        for w in (self.client_w, self.server_w):
            if w is None:
                continue
            with contextlib.suppress(Exception):
                if reset and w.transport is not None:
                    w.transport.abort()
                else:
                    w.close()
        for t in self.tasks:
            t.cancel()
        self.proxy._links.discard(self)


class FaultProxy:
    """Forward loopback TCP connections to ``target_host:target_port``, with faults on demand."""

    def __init__(self, target_host: str, target_port: int, *, host: str = "127.0.0.1") -> None:
        self.target_host, self.target_port = target_host, target_port
        self.host = host
        self.port = 0
        #: new connections are closed at once while this is set
        self.refuse = False
        #: bytes are held (both directions) while this is set
        self.stall = False
        #: bytes from the server to the clients are held while this is set (what a
        #: client sends still arrives: e.g. a message reaches the room, its echo not)
        self.stall_down = False
        #: connections cut by :meth:`cut_all` / :meth:`cut_one` so far
        self.cuts = 0
        #: connections accepted so far
        self.accepted = 0
        self._server: asyncio.AbstractServer | None = None
        self._links: set[_Link] = set()

    async def start(self) -> None:
        """Listen on a free loopback port (:attr:`port`)."""
        self._server = await asyncio.start_server(self._accept, self.host, 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.refuse:
            writer.transport.abort()
            return
        self.accepted += 1
        link = _Link(self, reader, writer)
        self._links.add(link)
        await link.run()

    @property
    def open_connections(self) -> int:
        """Connections being forwarded now."""
        return len(self._links)

    def cut_all(self) -> int:
        """Reset every open connection now; the number cut."""
        links = list(self._links)
        for link in links:
            link.close(reset=True)
        self.cuts += len(links)
        return len(links)

    def cut_one(self, rng: random.Random | None = None) -> bool:
        """Reset one open connection chosen at random; False when none is open."""
        links = sorted(self._links, key=id)
        if not links:
            return False
        (rng or random).choice(links).close(reset=True)
        self.cuts += 1
        return True

    async def stop(self) -> None:
        """Stop listening and close every connection."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for link in list(self._links):
            link.close(reset=True)

    async def __aenter__(self) -> FaultProxy:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
