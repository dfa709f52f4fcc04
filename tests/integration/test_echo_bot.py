"""The example bot of the README, run as a separate process against real Prosody."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from mls_xmpp.testing import Account, ProsodyServer

from .mls_clients import close, mls_client

BOT = Path(__file__).parents[2] / "examples" / "echo_bot.py"


async def _echo(server: ProsodyServer, alice_acc: Account, bot_acc: Account,
                tmp: Path) -> None:
    bot = subprocess.Popen([sys.executable, str(BOT), bot_acc.jid, bot_acc.password,
                            "--store", str(tmp / "bot.db"), "--plaintext",
                            "--server", f"{server.host}:{server.c2s_port}"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    alice, ra = await mls_client(server, *alice_acc)
    try:
        keystore = alice.plugin["mls"].keystore
        for _ in range(200):  # until the bot has published its KeyPackages
            if await keystore.fetch(bot_acc.jid):
                break
            assert bot.poll() is None, bot.stderr.read() if bot.stderr else ""
            await asyncio.sleep(0.05)
        group = await alice.plugin["mls"].create_group(members=[bot_acc.jid])
        await group.send("ping")
        (event,) = await ra.wait("mls_message", 1)
        assert event.body == "echo: ping"
        assert event.sender == bot_acc.jid
    finally:
        bot.terminate()
        bot.wait(10)
        await close(alice)


def test_echo_bot_answers(prosody: ProsodyServer, tmp_path: Path,
                          new_account: Callable[[str], Account]) -> None:
    asyncio.run(asyncio.wait_for(
        _echo(prosody, new_account("alice"), new_account("bot"), tmp_path), 90))


def _bot_exit(*args: str) -> tuple[int, str, float]:
    import time

    start = time.monotonic()
    proc = subprocess.run([sys.executable, str(BOT), *args, "--plaintext"],
                          stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=60, check=False)
    return proc.returncode, proc.stderr, time.monotonic() - start


def test_echo_bot_says_what_is_wrong_and_exits(prosody: ProsodyServer, tmp_path: Path,
                                              new_account: Callable[[str], Account]) -> None:
    import socket

    acc = new_account("bot")
    # a wrong password
    status, stderr, took = _bot_exit(acc.jid, "wrong", "--store", str(tmp_path / "a.db"),
                                     "--server", f"{prosody.host}:{prosody.c2s_port}")
    assert status == 1 and took < 20, stderr
    assert f"error: the server refused the credentials of {acc.jid}" in stderr, stderr
    assert "Traceback" not in stderr
    # no server where it is told to go
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    status, stderr, took = _bot_exit(acc.jid, acc.password, "--store", str(tmp_path / "b.db"),
                                     "--server", f"127.0.0.1:{port}")
    assert status == 1 and took < 20, stderr
    assert "error: cannot reach the XMPP server of localhost" in stderr, stderr
    assert "Traceback" not in stderr
