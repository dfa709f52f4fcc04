"""Every ```python block of README.md runs, as written, against a real Prosody.

The blocks are one program: they are joined, in order, into one script that a
fresh interpreter runs (so ``import mls_xmpp`` is what registers the plugin,
not something this test process imported before). The only change the test
makes is stated here and visible in the script it writes:

* after the README's settings block (the one assigning ``ALICE_PASSWORD``), it
  appends assignments that replace ``ALICE``, ``ALICE_PASSWORD``, ``BOB``,
  ``BOB_PASSWORD``, ``HOST`` and ``PORT`` with fresh accounts on the session's
  Prosody (``LOCAL_TEST_SERVER = True`` stays as the README has it);
* after the block that defines ``EchoBot``, which only defines a class, it
  appends a check that runs that class against the server and expects its echo.

The script runs in a temporary directory (the README's ``alice.db`` lands
there) with a deadline; the test fails when it raises, exits non-zero, or
does not finish in time, and it checks what the blocks print. The README's
copy of the echo bot must also be word for word in ``examples/echo_bot.py``
(which ``test_echo_bot`` runs as a program).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

import mls_xmpp
from mls_xmpp.testing import Account, ProsodyServer

ROOT = Path(__file__).parents[2]
#: where the package under test was imported from (a checkout, or an installed wheel)
PACKAGE_HOME = Path(mls_xmpp.__file__).parents[1]
README = ROOT / "README.md"
ECHO_BOT = ROOT / "examples" / "echo_bot.py"
DEADLINE = 180.0

_BLOCK = re.compile(r"^```python\n(.*?)^```$", re.DOTALL | re.MULTILINE)


def python_blocks(text: str) -> list[str]:
    """The code of every ```python block, in order."""
    return _BLOCK.findall(text)


ECHO_CHECK = '''
# --- added by tests/integration/test_readme.py: run the EchoBot above ---
async def _check_echo_bot() -> None:
    bot = EchoBot(BOT, BOT_PASSWORD, None)
    bot.enable_starttls = bot.enable_direct_tls = False
    bot.enable_plaintext = True
    bot["feature_mechanisms"].unencrypted_scram = True
    user = make_client(USER, USER_PASSWORD, {})
    echoes: asyncio.Queue[str] = asyncio.Queue()
    user.add_event_handler("mls_message", lambda event: echoes.put_nowait(event.body))
    for xmpp in (bot, user):
        xmpp.connect(HOST, PORT)
    await bot["mls"].ensure_ready()
    await user["mls"].ensure_ready()
    group = await user["mls"].create_group(members=[BOT])
    await group.send("ping")
    print("echo bot answered:", await asyncio.wait_for(echoes.get(), 30))
    for xmpp in (bot, user):
        await xmpp.disconnect()

asyncio.run(_check_echo_bot())
'''


def build_script(blocks: list[str], accounts: dict[str, Account], server: ProsodyServer) -> str:
    """The README's blocks as one script, with the substitutions of the module docstring."""
    parts: list[str] = []
    settings = [i for i, b in enumerate(blocks) if "ALICE_PASSWORD =" in b]
    bots = [i for i, b in enumerate(blocks) if "class EchoBot" in b]
    assert settings == [0], "the README's first python block must be its settings block"
    assert len(bots) == 1, "the README must show the echo bot once"
    for i, block in enumerate(blocks):
        parts.append(f"# --- README.md, python block {i + 1} ---\n{block}")
        if i == settings[0]:
            lines = ["# --- added by tests/integration/test_readme.py: real accounts ---"]
            for name, acc in accounts.items():
                lines.append(f"{name}, {name}_PASSWORD = {acc.jid!r}, {acc.password!r}")
            lines.append(f"HOST, PORT = {server.host!r}, {server.c2s_port}")
            parts.append("\n".join(lines) + "\n")
        if i == bots[0]:
            parts.append(ECHO_CHECK)
    return "\n".join(parts)


def test_readme_blocks_run(prosody: ProsodyServer, tmp_path: Path,
                           new_account: Callable[[str], Account]) -> None:
    blocks = python_blocks(README.read_text(encoding="utf-8"))
    assert len(blocks) >= 5, "README.md lost its python examples"
    accounts = {name: new_account(name.lower())
                for name in ("ALICE", "BOB", "BOT", "USER")}
    script = tmp_path / "readme_program.py"
    script.write_text(build_script(blocks, accounts, prosody), encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(PACKAGE_HOME)}
    try:
        proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=DEADLINE)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"the README's program did not finish within {DEADLINE} s:\n"
                    f"{e.stdout!r}\n{e.stderr!r}")
    out = proc.stdout
    assert proc.returncode == 0, f"the README's program failed:\n{out}\n{proc.stderr}"

    alice, bob = accounts["ALICE"].jid, accounts["BOB"].jid
    # Bob was welcomed into the group and decrypted Alice's message
    assert re.search(rf"^bob joined [0-9a-f]+@{re.escape(prosody.muc_domain)}$", out, re.M), out
    assert f"bob got 'hello' from {alice}\n" in out
    # group.members after the update: one device each, with fingerprints and leaves
    members = re.findall(r"^(\S+@\S+) ([0-9a-f]{8}(?: [0-9a-f]{8}){3}) (\d+)$", out, re.M)
    assert sorted(m[0] for m in members) == sorted([alice, bob]), out
    # removing a stranger raised UnknownMemberError, which the block caught
    assert "not removed: " in out
    # Alice's state went to the SQLite file named in her options
    assert (tmp_path / "alice.db").stat().st_size > 0
    # the echo bot block, run against the server, echoed
    assert "echo bot answered: echo: ping\n" in out
    # the sans-IO block decrypted its message
    assert "\nb'hi'\n" in "\n" + out


def test_readme_echo_bot_is_the_example_file() -> None:
    """The README's bot is a verbatim excerpt of examples/echo_bot.py."""
    (bot,) = [b for b in python_blocks(README.read_text(encoding="utf-8"))
              if "class EchoBot" in b]
    assert bot in ECHO_BOT.read_text(encoding="utf-8")


def test_readme_shows_the_server_command() -> None:
    """The README names the command that gives a server to try it on, as it exists."""
    from mls_xmpp.cli import main

    text = README.read_text(encoding="utf-8")
    assert "mls-xmpp server --accounts alice,bob" in text
    with pytest.raises(SystemExit) as e:
        main(["server", "--help"])
    assert e.value.code == 0
