"""A group of ``--offline N`` offline accounts and 50 online devices on a real server.

Usage::

    python benchmarks/bench_50k.py --offline N [--online 50] [--procs 2]
                                   [--storage memory|internal] [--json PATH]

Built on :mod:`bench_fleet` (its device processes, its creator and its
reporting): one run starts its own Prosody (:class:`mls_xmpp.testing.ProsodyServer`),
and then

1. creates the accounts: the creator and the ``--online`` devices with
   ``create_users`` (one admin shell per 500), the ``N`` offline ones with
   ``ProsodyServer.create_numbered_users`` (a Lua loop over Prosody's own
   ``usermanager.create_user`` in the admin shell, 5,000 per command);
2. brings one offline account's device up once -- a real slixmpp client with the
   plugin and an SQLite store -- so that it publishes its KeyPackages and keeps
   their private keys, and stops it (the "late" device);
3. starts the ``--online`` devices (``bench_fleet`` device processes) and the creator;
4. generates one KeyPackage for each of the other ``N - 1`` offline accounts (the
   plugin's own ``Client.generate`` / ``make_key_package``; their private keys are
   dropped: those devices never come online) -- publishing them by logging in
   49,950 accounts would take hours;
5. ``create_group(members=online + late, key_packages=offline)``: Commits of
   ``max_adds_per_commit`` adds, the room's affiliations, the Welcomes (to offline
   storage for the offline accounts), until all online devices have joined;
6. one message from the creator until every online device has it (fan-out);
7. ``update()`` by the creator until every online device is in the new epoch;
8. the late device comes online with its store: the Welcome from offline
   storage, the tree by reference, the room archive (the message and the
   update) until it has the message and the epoch of the update.

Figures (``--json``, under ``results`` with ``devices`` = N + online + 1):
``accounts_s``, ``keypackages_s``, ``create_group_returned_s``,
``create_all_joined_s``, ``create_stages_s`` (the creator's ``mls_progress``
stages per Commit) and ``create_stage_totals_s`` (summed per stage),
``fanout_p50_ms`` / ``fanout_max_ms``, ``commit_returned_s`` /
``commit_converge_s``, ``late_*`` (the late device's times from connecting and
its resident memory), ``creator_mib``, ``server_mib``, ``client_processes_mib``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import secrets
import signal
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_fleet import (  # noqa: E402
    CONNECT_TIMEOUT,
    MESSAGE_TIMEOUT,
    Fleet,
    disconnect,
    error_kinds,
    log,
    new_client,
    ready,
    rss_mib,
)

# -- the late device (its own process, so that its memory is its own) --------------------


async def late_main(spec: dict[str, Any]) -> dict[str, Any]:
    """``publish``: connect, publish KeyPackages, stop. ``join``: connect with the same
    store and wait for the group: joined, the message, the epoch of the update."""
    base = rss_mib()
    config = {"invitations": "any", "workers": 0, "pool_size": 1, "store": spec["store"],
              "blob_origins": spec["origins"],
              "update_after_join": spec.get("update_after_join", True)}
    loop = asyncio.get_running_loop()
    t0 = time.monotonic()
    out: dict[str, Any] = {}
    joined: asyncio.Future[Any] = loop.create_future()
    message: asyncio.Future[float] = loop.create_future()
    client = new_client(spec["host"], spec["port"], spec["jid"], spec["password"], config)

    async def on_joined(session: Any) -> None:
        out["welcome_joined_s"] = round(time.monotonic() - t0, 3)
        await session.ready.wait()
        if not joined.done():
            joined.set_result(session)

    def on_message(event: Any) -> None:
        if event.body == spec.get("body") and not message.done():
            message.set_result(time.monotonic())

    client.add_event_handler("mls_joined", on_joined)
    client.add_event_handler("mls_message", on_message)
    client.add_event_handler("session_start",
                             lambda _: out.setdefault("connected_s",
                                                      round(time.monotonic() - t0, 3)))
    try:
        await ready(client, CONNECT_TIMEOUT)
        out["mls_ready_s"] = round(time.monotonic() - t0, 3)
        if spec["phase"] == "join":
            session = await asyncio.wait_for(joined, spec["timeout"])
            out["caught_up_s"] = round(time.monotonic() - t0, 3)
            t_msg = await asyncio.wait_for(message, spec["timeout"])
            out["message_s"] = round(t_msg - t0, 3)
            while session.epoch < spec["epoch"]:
                if time.monotonic() - t0 > spec["timeout"]:
                    raise TimeoutError(f"still in epoch {session.epoch}")
                await asyncio.sleep(0.005)
            out["epoch_s"] = round(time.monotonic() - t0, 3)
            out["epoch"] = session.epoch
            out["members"] = len(session.group.members)
        out["rss_mib"] = round(rss_mib(), 1)
        out["rss_growth_mib"] = round(rss_mib() - base, 1)
    finally:
        await disconnect([client])
    return out


async def run_late(spec: dict[str, Any]) -> dict[str, Any]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--late-device", json.dumps(spec),
        stdout=asyncio.subprocess.PIPE)
    stdout, _ = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"the late device ({spec['phase']}) failed: exit {proc.returncode}")
    result: dict[str, Any] = json.loads(stdout.decode().strip().splitlines()[-1])
    return result


# -- the coordinator ------------------------------------------------------------------------


def offline_key_packages(accounts: list[Any], suite: int) -> list[Any]:
    """One KeyPackage per account, as the plugin makes them (private keys dropped)."""
    from mls_xmpp.core.group.client import Client
    from mls_xmpp.core.group.config import GroupConfig

    config = GroupConfig()
    out = []
    for i, acc in enumerate(accounts, 1):
        out.append(Client.generate(acc.jid.encode(), suite, config=config).make_key_package())
        if i % 5000 == 0:
            log(f"  {i} KeyPackages")
    return out


def grant_in_server(server: Any, room: str, jids: list[str], affiliation: str) -> float:
    """Give ``jids`` their room affiliation as the server's admin, in bulk (``--grant-offline-
    in-server``): Prosody's room table is filled in the admin shell and the room saved once.

    Prosody 0.12 applies one item per ``muc#admin`` request and saves the whole room
    (every affiliation) after each, so granting N members from a client costs O(N^2)
    on the server (measured at 5,000 without this option). The plugin's own
    reconciliation still runs after each Commit: it reads the lists and finds these
    already as it wants them. Returns the seconds it took.
    """
    import subprocess

    t0 = time.monotonic()
    for first in range(0, len(jids), 5000):
        chunk = jids[first:first + 5000]
        items = ", ".join(f'"{j}"' for j in chunk)
        script = (f'>local room = prosody.hosts["{server.muc_domain}"].modules.muc'
                  f'.get_room_from_jid("{room}"); local n = 0; '
                  f'for _, j in ipairs({{{items}}}) do room._affiliations[j] = "{affiliation}"; '
                  f'n = n + 1 end; room:save(true); return "granted " .. n\n')
        proc = subprocess.run([server.prosodyctl, "--config", str(server.config_path), "shell"],
                              input=script, env=server.environment, capture_output=True,
                              text=True, timeout=300, check=False)
        if f"granted {len(chunk)}" not in proc.stdout:
            raise RuntimeError(f"granting affiliations failed: {proc.stdout[-500:]}"
                               f"{proc.stderr[-500:]}")
    return time.monotonic() - t0


async def run(args: argparse.Namespace, results: dict[str, Any]) -> dict[str, Any]:
    """The run; ``results`` fills as it goes (what it holds is written on a failure too)."""
    from mls_xmpp.testing import ProsodyServer

    n_off, n_on = args.offline, args.online
    results.update({"devices": n_off + n_on + 1, "offline": n_off,
                    "online": n_on, "device_processes": args.procs})
    # Prosody's memory storage keeps at most 1,000 items per archive (10,000 with internal
    # storage): past that, each message archived (the creator's archive keeps every
    # Welcome it sent) first scans and truncates the archive. Raised (--archive-item-limit).
    # The creator uploads the tree of every Commit's epoch for its Welcomes: at 50,000
    # (26 Commits, trees growing to ~9.5 MB) ~120 MB in all, more than Prosody's daily
    # upload quota per account (http_file_share_daily_quota, 10 x the size limit =
    # 100 MiB): raised to --upload-quota.
    settings: dict[str, bool | int | float | str] = {
        "storage_archive_item_limit": args.archive_item_limit,
        "http_file_share_daily_quota": args.upload_quota}
    if args.upload_limit:
        settings["http_file_share_size_limit"] = args.upload_limit
    workdir = Path(tempfile.mkdtemp(prefix="bench50k-"))
    # archive expiry off (--archive-expires never): with it, Prosody 0.12's mod_mam notes
    # each account that archived a message today in one stored set per day (without
    # wildcard deletion: memory and internal storage), rewritten whole for every new
    # account -- quadratic in the accounts a day's Welcomes go to (2,000 chat messages
    # to 2,000 offline accounts: 49-148 s with it, 6-23 s without, on this load)
    with ProsodyServer(storage=args.storage, start_timeout=60.0, settings=settings,
                       archive_expires=args.archive_expires) as server:
        server_base = rss_mib(server.pid)
        tag = secrets.token_hex(2)
        t0 = time.monotonic()
        online = server.create_users([(f"n{tag}-{i}", f"pw-{secrets.token_hex(6)}")
                                      for i in range(n_on + 1)])
        offline = server.create_numbered_users(f"o{tag}-", n_off, f"pw-{secrets.token_hex(6)}")
        results["accounts_s"] = round(time.monotonic() - t0, 2)
        log(f"{n_on + 1 + n_off} accounts in {results['accounts_s']} s")
        creator_acc, devices = online[0], online[1:]
        late_acc, rest = offline[0], offline[1:]
        origins = [f"http://{server.host}:{server.http_port}"]
        late_spec = {"host": server.host, "port": server.c2s_port, "jid": late_acc.jid,
                     "password": late_acc.password, "store": str(workdir / "late.sqlite"),
                     "origins": origins, "timeout": args.timeout,
                     "update_after_join": args.update_after_join}

        # the late device: KeyPackages on PEP, private keys in its store, then offline
        published = await run_late({**late_spec, "phase": "publish"})
        log(f"late device published its KeyPackages ({published})")

        fleet = Fleet()
        creator = None
        try:
            t0 = time.monotonic()
            fleet.expected = n_on
            for k in range(args.procs):
                await fleet.spawn({"host": server.host, "port": server.c2s_port,
                                   "accounts": [list(a) for a in devices[k::args.procs]],
                                   "concurrency": 4, "sample": args.sample,
                                   "config": {"pool_size": 2, "blob_origins": origins,
                                              "update_after_join": args.update_after_join}})
            creator = new_client(server.host, server.c2s_port, *creator_acc,
                                 {"invitations": "any", "pool_size": 2,
                                  "blob_origins": origins})
            began: dict[str, float] = {}
            stages: dict[str, float] = {}

            def on_progress(ev: Any) -> None:  # the creator's mls_progress: stage times
                key = f"{ev.stage} ({ev.batch}/{ev.batches})"
                if args.grant_offline_in_server and ev.stage == "commit" and ev.batch == 1 \
                        and ev.done == 0:  # the room exists: its offline members, in bulk
                    from mls_xmpp.xmpp.room import wanted_affiliation

                    session = ev.group
                    jids = [a.jid for a in rest]
                    may = session._may_change({jids[0]})
                    aff = wanted_affiliation(jids[0], may)
                    results["granted_in_server_s"] = round(
                        grant_in_server(server, session.room, jids, aff), 2)
                    log(f"    {len(jids)} offline accounts made {aff} in the server in "
                        f"{results['granted_in_server_s']} s")
                now = time.monotonic()
                if ev.done == 0:
                    began[key] = now
                elif ev.done == ev.total and key in began:
                    stages[key] = now - began[key]
                    log(f"    {key}: {ev.total} in {stages[key]:.2f} s")

            creator.add_event_handler("mls_progress", on_progress)
            results["create_stages_s"] = stages  # (rounded when the group is complete)
            await ready(creator, CONNECT_TIMEOUT)
            await fleet.wait("the devices to connect",
                             lambda: len(fleet.ready) == args.procs
                             or any(e.get("fatal") for e in fleet.errors), CONNECT_TIMEOUT)
            if len(fleet.ready) != args.procs:
                raise RuntimeError(f"a device did not start: {fleet.errors[-1]}")
            results["connect_online_s"] = round(time.monotonic() - t0, 2)
            log(f"{n_on} devices connected in {results['connect_online_s']} s")
            client_base = sum(r["base"] for r in fleet.ready)
            plugin = creator.plugin["mls"]

            t0 = time.monotonic()
            kps = await asyncio.to_thread(offline_key_packages, rest, int(plugin.config["suite"]))
            results["keypackages_s"] = round(time.monotonic() - t0, 2)
            log(f"{len(kps)} offline KeyPackages in {results['keypackages_s']} s")

            # (1) the group ------------------------------------------------------------------
            log(f"create_group: {n_on} online, 1 late, {len(kps)} offline")
            t0 = time.monotonic()
            group = await asyncio.wait_for(
                plugin.create_group(members=[a.jid for a in devices] + [late_acc.jid],
                                    key_packages=kps),
                args.timeout)
            del kps
            results["create_group_returned_s"] = round(time.monotonic() - t0, 3)
            results["load_create_returned"] = os.getloadavg()
            checkpoint(args, results)
            await fleet.wait("every online device to join",
                             lambda: len(fleet.joined) == n_on, args.timeout)
            results["load_all_joined"] = os.getloadavg()
            results["joined_after_s"] = sorted(round(t - t0, 1) for t in fleet.joined.values())
            results["loop_blocked"] = lag_summary(fleet.lags)
            results["create_all_joined_s"] = round(max(fleet.joined.values()) - t0, 3)
            results["create_stages_s"] = {k: round(v, 3) for k, v in stages.items()}
            totals: dict[str, float] = {}
            for key, v in stages.items():
                name = key.split(" (")[0]
                totals[name] = round(totals.get(name, 0.0) + v, 3)
            results["create_stage_totals_s"] = totals
            results["members"] = len(group.group.members)
            results["tree_bytes"] = len(group.group.ratchet_tree())
            log(f"  returned after {results['create_group_returned_s']} s, all online joined "
                f"after {results['create_all_joined_s']} s; stages {totals}")

            # (2) the first message ----------------------------------------------------------
            body = f"first-{secrets.token_hex(3)}"
            t_send = time.monotonic()
            await group.send(body)
            await fleet.wait("the message at every online device",
                             lambda: len(fleet.arrivals.get(body, {})) == n_on,
                             MESSAGE_TIMEOUT)
            times = [t - t_send for t in fleet.arrivals[body].values()]
            results["fanout_p50_ms"] = round(statistics.median(times) * 1000, 3)
            results["fanout_max_ms"] = round(max(times) * 1000, 3)
            log(f"  fan-out p50 {results['fanout_p50_ms']} ms, max {results['fanout_max_ms']} ms")
            results["load_fanout"] = os.getloadavg()
            checkpoint(args, results)

            # (3) an update --------------------------------------------------------------------
            epoch = group.epoch + 1
            t0 = time.monotonic()
            await asyncio.wait_for(group.update(), args.timeout)
            results["commit_returned_s"] = round(time.monotonic() - t0, 3)
            await fleet.wait("every online device in the new epoch",
                             lambda: len(fleet.epochs.get(epoch, {})) == n_on, args.timeout)
            results["commit_converge_s"] = round(max(fleet.epochs[epoch].values()) - t0, 3)
            results["epoch_after_update"] = epoch
            log(f"  update returned after {results['commit_returned_s']} s, applied by all "
                f"online after {results['commit_converge_s']} s")
            results["load_update"] = os.getloadavg()
            checkpoint(args, results)

            # (4) the late device comes online ---------------------------------------------------
            late = await run_late({**late_spec, "phase": "join", "body": body, "epoch": epoch})
            results.update({f"late_{k}": v for k, v in late.items()})
            results["load_late"] = os.getloadavg()
            checkpoint(args, results)
            log(f"  late device: {late}")

            # (5) memory -------------------------------------------------------------------------
            await fleet.tell("rss")
            await fleet.wait("memory figures", lambda: len(fleet.rss) == args.procs, 60)
            client_rss = sum(r["rss"] for r in fleet.rss)
            results["client_processes_mib"] = round(client_rss, 1)
            results["client_mib_per_online_device"] = round((client_rss - client_base) / n_on, 2)
            results["server_mib"] = round(rss_mib(server.pid), 1)
            results["server_growth_mib"] = round(rss_mib(server.pid) - server_base, 1)
            results["creator_mib"] = round(rss_mib(), 1)
            results["mls_errors"] = len(fleet.errors)
            results["mls_error_samples"] = [e["reason"][:200] for e in fleet.errors[:10]]
            results["mls_error_kinds"] = error_kinds(fleet.errors)
            results["loop_blocked"] = lag_summary(fleet.lags)
        finally:
            if creator is not None:
                await disconnect([creator])
            await fleet.close()
    return results


def lag_summary(lags: list[dict[str, Any]]) -> dict[str, float]:
    """The device processes' event-loop stalls over 1 s (``lag`` events): how many, the
    longest, their sum."""
    return {"count": len(lags), "max_s": max((e["s"] for e in lags), default=0.0),
            "sum_s": round(sum(e["s"] for e in lags), 1)}


_STARTED = (time.monotonic(), os.getloadavg())


def checkpoint(args: argparse.Namespace, results: dict[str, Any],
               error: str | None = None) -> None:
    """Write the figures so far to ``--json`` (after each stage, so that a run stopped
    later, e.g. killed while its loop is busy, keeps them)."""
    if not args.json:
        return
    doc = {
        "benchmark": "50k",
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "loadavg_at_start": _STARTED[1],
        "loadavg_at_end": os.getloadavg(),
        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "total_seconds": round(time.monotonic() - _STARTED[0], 1),
        "results": results,
        **({"error": error} if error else {}),
    }
    args.json.write_text(json.dumps(doc, indent=1) + "\n")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--late-device"]:
        print(json.dumps(asyncio.run(late_main(json.loads(argv[1])))), flush=True)
        return 0
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--offline", type=int, required=True,
                   help="offline accounts (one of them the late device)")
    p.add_argument("--online", type=int, default=50, help="online devices (default 50)")
    p.add_argument("--procs", type=int, default=2, help="device processes (default 2)")
    p.add_argument("--storage", choices=("internal", "memory"), default="memory")
    p.add_argument("--upload-limit", type=int, default=0,
                   help="Prosody's http_file_share_size_limit (default: Prosody's, 10 MiB)")
    p.add_argument("--archive-item-limit", type=int, default=1_000_000,
                   help="Prosody's storage_archive_item_limit (default 1,000,000; Prosody's "
                        "own: 1,000 with memory storage)")
    p.add_argument("--upload-quota", type=int, default=4 << 30,
                   help="Prosody's http_file_share_daily_quota (default 4 GiB; Prosody's "
                        "own: 10 x the upload size limit, 100 MiB)")
    p.add_argument("--archive-expires", default="never",
                   help="archive_expires_after of the server (default never; see run())")
    p.add_argument("--no-update-after-join", dest="update_after_join", action="store_false",
                   help="the joiners do not update after joining (the plugin's default is to, "
                        "within update_join_delay: 50 Commits with large paths at once)")
    p.add_argument("--grant-offline-in-server", action="store_true",
                   help="give the offline accounts their room affiliation in bulk as the "
                        "server's admin (Prosody 0.12 takes one per request, O(N) each)")
    p.add_argument("--timeout", type=float, default=7200.0,
                   help="limit for each stage (creation, update, catch-up)")
    p.add_argument("--sample", action="store_true",
                   help="the device processes report where their event loop spends its "
                        "time (a stack sample every 20 ms) and each stall over 1 s")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    if args.offline < 1 or args.online < 1 or args.procs < 1:
        p.error("--offline, --online and --procs must be >= 1")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    results: dict[str, Any] = {}
    error = None
    try:
        asyncio.run(run(args, results))
    except (Exception, KeyboardInterrupt, SystemExit) as e:  # noqa: BLE001 - the figures
        # so far are written (also on SIGTERM / Ctrl-C), then it fails
        error = f"{type(e).__name__}: {e}"
        traceback.print_exc()
        log(f"FAILED: {error}")
    for k, v in results.items():
        print(f"{k:32} {v}")
    if args.json:
        checkpoint(args, results, error)
        log(f"wrote {args.json}")
    return 1 if error else 0


if __name__ == "__main__":
    sys.exit(main())
