"""Record the conformance kit's exchanges from a real Prosody run.

    python conformance/record.py [OUTPUT_DIR]     (default: conformance/exchanges)

Starts a loopback Prosody (the Debian ``prosody`` package, as the tests do),
runs the scenario of :mod:`mls_xmpp.testing.conformance` with three new
accounts, and writes one annotated XML file per step. See conformance/README.md.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from mls_xmpp.testing import ProsodyServer
from mls_xmpp.testing.conformance import play, write_exchanges


def main(argv: list[str]) -> int:
    """Record into ``argv[0]`` (default ``conformance/exchanges``)."""
    out = Path(argv[0]) if argv else Path(__file__).resolve().parent / "exchanges"
    with ProsodyServer() as server:
        accounts = [server.create_account(name) for name in ("alice", "bob", "carol")]
        steps = asyncio.run(asyncio.wait_for(play(server, accounts), 300))
    for path in write_exchanges(steps, out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
