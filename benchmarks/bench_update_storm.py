"""The joiners' updates after a group made in one go, on the embedded Prosody (issue 17).

``create_group`` adds N devices in one Commit; each joiner then sends its update
after joining (``update_after_join``, the plugin's default). This counts the
Commits the joiners sent (one an epoch wins; the others lost a race), the
joiners that gave up (``mls_error``), and the time from ``create_group``'s return
until every joiner's leaf was refreshed (``all_updated_s``; ``None`` when one gave
up or ``--wait`` ran out: ``settled_s`` is then when all had updated or given up).

All devices are slixmpp clients in this process (their processing of each
Commit adds up: a Commit takes longer here than between separate devices).
Run it with ``PYTHONPATH`` at another checkout to measure that code (options it
does not know, e.g. ``update_join_spread``, are then ignored)::

    python benchmarks/bench_update_storm.py --joiners 40 --json out.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

import slixmpp

import mls_xmpp  # registers the plugin; the one PYTHONPATH names (see above)
from mls_xmpp.core.messages.common import LeafNodeSource
from mls_xmpp.testing import Account, ProsodyServer, disconnect_client
from mls_xmpp.xmpp.envelope import Kind


async def client(server: ProsodyServer, acc: Account, config: dict[str, Any]) -> Any:
    c = slixmpp.ClientXMPP(acc.jid, acc.password)
    c.enable_direct_tls = False
    c.enable_starttls = False
    c.enable_plaintext = True
    c.plugin["feature_mechanisms"].unencrypted_scram = True
    c.register_plugin("mls", {"invitations": "any", **config})
    ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    c.add_event_handler("mls_ready", lambda _: ready.done() or ready.set_result(None))
    c.add_event_handler("session_start", lambda _: c.send_presence())
    c.errors = []
    c.add_event_handler("mls_error", lambda e: c.errors.append(e))
    c.joined = []
    c.add_event_handler("mls_joined", lambda e: c.joined.append(e.group))
    c.connect(server.host, server.c2s_port)
    await asyncio.wait_for(ready, 120)
    mls = c.plugin["mls"]
    inner = mls.delivery.send_room
    c.commits = 0

    async def send_room(room: str, env: Any, **kw: Any) -> None:
        if env.kind == Kind.COMMIT:
            c.commits += 1
        await inner(room, env, **kw)

    mls.delivery.send_room = send_room
    return c


def refreshed(c: Any) -> bool:
    if not c.joined:
        return False
    g = c.joined[0]
    leaf = g.group.state.tree.leaf(g.group.own_leaf_index)
    return leaf is not None and leaf.leaf_node_source == LeafNodeSource.COMMIT


async def run(server: ProsodyServer, n: int, args: argparse.Namespace) -> dict[str, Any]:
    accs = [server.create_account(f"u{n}x{i}") for i in range(n + 1)]
    config: dict[str, Any] = {"update_after_join": True}
    if args.delay is not None:
        config["update_join_delay"] = args.delay
    if args.spread is not None:
        config["update_join_spread"] = args.spread
    creator = await client(server, accs[0], {"update_after_join": False})
    joiners = list(await asyncio.gather(*(client(server, a, config) for a in accs[1:])))
    load = os.getloadavg()
    try:
        t0 = time.perf_counter()
        group = await creator.plugin["mls"].create_group(members=[a.jid for a in accs[1:]])
        t_created = time.perf_counter()
        deadline = t_created + args.wait
        # until each joiner updated or gave up (mls_error: it stays due for its hourly check)
        while time.perf_counter() < deadline and not all(refreshed(c) or c.errors
                                                         for c in joiners):
            await asyncio.sleep(0.1)
        t_end = time.perf_counter()
        done = all(refreshed(c) for c in joiners)
        sent = [c.commits for c in joiners]
        return {
            "joiners": n,
            "create_group_s": round(t_created - t0, 2),
            "all_updated_s": round(t_end - t_created, 2) if done else None,
            "settled_s": round(t_end - t_created, 2),
            "updated": sum(refreshed(c) for c in joiners),
            "commits_sent": sum(sent),
            "lost_races": sum(sent) - sum(refreshed(c) for c in joiners),
            "max_commits_per_joiner": max(sent),
            "joiners_with_mls_error": sum(1 for c in joiners if c.errors),
            "creator_epoch": group.epoch,
            "loadavg_before": load,
            "loadavg_after": os.getloadavg(),
        }
    finally:
        for c in [creator, *joiners]:
            await disconnect_client(c)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--joiners", type=int, nargs="+", default=[40])
    p.add_argument("--delay", type=float, default=None, help="update_join_delay (default: "
                   "the plugin's)")
    p.add_argument("--spread", type=float, default=None, help="update_join_spread (default: "
                   "the plugin's)")
    p.add_argument("--wait", type=float, default=240.0,
                   help="seconds to wait for every joiner's update")
    p.add_argument("--label", default="")
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    commit = subprocess.run(["git", "-C", str(Path(mls_xmpp.__file__).parents[1]), "rev-parse",
                             "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    server = ProsodyServer()
    results = []
    try:
        server.start()
        for n in args.joiners:
            r = asyncio.run(run(server, n, args))
            print(json.dumps(r), flush=True)
            results.append(r)
    finally:
        server.stop()
    if args.json:
        args.json.write_text(json.dumps({
            "benchmark": "bench_update_storm", "label": args.label,
            "code": {"path": str(Path(mls_xmpp.__file__).parents[1]), "commit": commit},
            "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "environment": {"python": platform.python_version(), "cpus": os.cpu_count()},
            "results": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
