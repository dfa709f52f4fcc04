"""The fault proxy the fault tests rely on does what it says, with a real Prosody behind it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from mls_xmpp.testing import Account, FaultProxy, ProsodyServer

from .mls_clients import close, mls_client, until


async def _proxy(server: ProsodyServer, acc: Account) -> None:
    async with FaultProxy(server.host, server.c2s_port) as proxy:
        client, _ = await mls_client(server, *acc, via=(proxy.host, proxy.port))
        try:
            assert proxy.accepted == 1 and proxy.open_connections == 1
            gone = asyncio.get_running_loop().create_future()
            client.add_event_handler("disconnected",
                                     lambda _: gone.done() or gone.set_result(None))
            assert proxy.cut_all() == 1 and proxy.cuts == 1
            await asyncio.wait_for(gone, 15)
            # refused: nothing gets through until allowed again
            proxy.refuse = True
            client.connect(proxy.host, proxy.port)
            await asyncio.sleep(1.0)
            assert proxy.open_connections == 0 and proxy.accepted == 1
            proxy.refuse = False
            client.connect(proxy.host, proxy.port)
            await until(lambda: proxy.open_connections == 1, 30)
            # stalled: a ping gets no answer while the bytes are held
            await until(lambda: client.plugin["mls"].connected, 30)
            proxy.stall = True
            try:
                await client.plugin["xep_0199"].ping(timeout=2)
                stalled_ok = False
            except Exception:  # noqa: BLE001 - slixmpp raises IqTimeout here
                stalled_ok = True
            assert stalled_ok
            proxy.stall = False
            await client.plugin["xep_0199"].ping(timeout=10)
        finally:
            await close(client)


def test_fault_proxy_cuts_refuses_and_stalls(prosody: ProsodyServer,
                                             new_account: Callable[[str], Account]) -> None:
    asyncio.run(asyncio.wait_for(_proxy(prosody, new_account("alice")), 120))
