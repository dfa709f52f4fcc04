"""Fleet benchmark: N real devices as real XMPP connections in one MLS group.

Usage::

    python benchmarks/bench_fleet.py --devices N [--procs P] [--messages K]
                                     [--storage internal|memory] [--json PATH]

One run starts its own Prosody (:class:`mls_xmpp.testing.ProsodyServer`, loopback,
plaintext), creates N + 1 accounts (one admin shell session per 500), and starts
P device processes (default: one per 125 devices, at least 2), each running its
share of the N devices in one event loop: a slixmpp client with the ``mls`` plugin
each (``invitations="any"``, ``workers=0``: a machine running hundreds of devices
has no core to spare per device; KeyPackages on PEP as the plugin publishes them).
The creator runs in this process, with the plugin's default worker pool.

Measured, all times on the system-wide monotonic clock (comparable between the
processes of one machine):

``create_all_joined_s``
    ``create_group(members=all N)`` (KeyPackage fetches, the Commit, the room's
    affiliations, the Welcomes) until every device has joined and caught up
    (its ``GroupSession.ready``); ``create_group_returned_s`` is when the call
    returned.
``fanout_p50_ms``, ``fanout_p99_ms``
    the creator sends ``--messages`` messages, one after the other once every
    device has the previous one; each sample is send -> ``mls_message`` at one
    device (N samples per message).
``commit_converge_s``
    ``GroupSession.update()`` by the creator until every device is in the new
    epoch (each device process looks at its sessions' epochs every 5 ms).
``client_mib_per_device``, ``server_mib_per_device``
    resident memory of the device processes after the measurements minus what
    they held before connecting, per device; Prosody's after minus before the
    accounts and connections, per device.

Progress goes to stderr, the summary to stdout; ``--json`` writes it under
``results`` with ``devices``, every latency sample and the environment.
The server is stopped and the device processes ended on every exit path.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import re
import secrets
import signal
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

#: Seconds for connecting all devices / for one message to reach every device.
CONNECT_TIMEOUT = 600.0
MESSAGE_TIMEOUT = 120.0
#: Devices connecting at the same time in one process (``--connect-concurrency``):
#: with 25 per process and 8 processes, Prosody left 600 of 1,000 start-up IQs
#: unanswered for 30 s on this loaded 2-core machine.
CONNECT_CONCURRENCY = 4
#: Seconds one device may take from connecting to ``mls_ready``.
DEVICE_READY_TIMEOUT = 180.0
DEVICES_PER_PROC = 125


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def rss_mib(pid: int | str = "self") -> float:
    """Resident memory of a process (``VmRSS``), MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    if not s:
        return float("nan")
    k = min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))
    return s[k]


def new_client(host: str, port: int, jid: str, password: str, config: dict[str, Any]) -> Any:
    import slixmpp

    import mls_xmpp  # noqa: F401 - registers the "mls" slixmpp plugin

    client = slixmpp.ClientXMPP(jid, password)
    client.enable_direct_tls = False
    client.enable_starttls = False
    client.enable_plaintext = True
    client.plugin["feature_mechanisms"].unencrypted_scram = True
    client.register_plugin("mls", config)
    client.add_event_handler("session_start", lambda _: client.send_presence())
    client.connect(host, port)
    return client


async def ready(client: Any, timeout: float) -> None:
    fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    client.add_event_handler("mls_ready", lambda _: fut.done() or fut.set_result(None))
    await asyncio.wait_for(fut, timeout)


async def disconnect(clients: list[Any]) -> None:
    from mls_xmpp.testing import disconnect_client

    for c in clients:
        for session in list(getattr(c.plugin.get("mls", None), "sessions", {}).values()):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(session.stop(), 5.0)
    await asyncio.gather(*(disconnect_client(c, timeout=5.0) for c in clients),
                         return_exceptions=True)
    tasks = [t for c in clients if (t := getattr(c, "_run_out_filters", None)) is not None]
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


# -- a device process ---------------------------------------------------------------------


def start_sampler(emit: Any, period: float = 0.02, every: float = 30.0) -> None:
    """Where this process's event loop spends its time (``--sample``): a thread looks at
    the main thread's stack every ``period`` s and counts the innermost frame of the
    project's code (and the innermost frame of all); every ``every`` s the 12 most
    counted go out as a ``profile`` event, and each time the loop was late by more
    than 1 s (a blocking stretch) as a ``lag`` event with its length."""
    import collections
    import threading

    main = threading.main_thread().ident
    counts: collections.Counter[str] = collections.Counter()
    lock = threading.Lock()

    def where() -> str:
        frame = sys._current_frames().get(main or 0)
        inner = own = None
        while frame is not None:
            code = frame.f_code
            name = f"{Path(code.co_filename).name}:{code.co_name}"
            inner = inner or name
            if own is None and "mls_xmpp" in code.co_filename:
                own = name
            frame = frame.f_back
        return f"{own} <- {inner}" if own != inner else str(own)

    def sample() -> None:
        last = time.monotonic()
        while True:
            time.sleep(period)
            with lock:
                counts[where()] += 1
            if time.monotonic() - last > every:
                last = time.monotonic()
                with lock:
                    top = counts.most_common(12)
                    total = sum(counts.values())
                    counts.clear()
                emit(ev="profile", pid=os.getpid(), samples=total, top=top)

    threading.Thread(target=sample, daemon=True).start()

    async def lag() -> None:
        while True:
            t = time.monotonic()
            await asyncio.sleep(0.1)
            late = time.monotonic() - t - 0.1
            if late > 1.0:
                emit(ev="lag", pid=os.getpid(), s=round(late, 2), t=time.monotonic())

    asyncio.ensure_future(lag())


async def device_main(spec: dict[str, Any]) -> None:
    """Run this process's devices; report on stdout (JSON lines) until stdin ends."""
    out = sys.stdout

    def emit(**kw: Any) -> None:
        out.write(json.dumps(kw) + "\n")
        out.flush()

    base = rss_mib()
    if spec.get("sample"):
        start_sampler(emit)
    host, port = spec["host"], spec["port"]
    config = {"invitations": "any", "workers": 0, **spec.get("config", {})}
    clients: list[Any] = []
    sem = asyncio.Semaphore(spec.get("concurrency", CONNECT_CONCURRENCY))
    started = 0
    sessions: dict[str, Any] = {}
    epochs: dict[str, int] = {}

    def watch(jid: str, client: Any) -> None:
        def on_message(event: Any) -> None:
            emit(ev="msg", jid=jid, body=event.body, t=time.monotonic())

        async def on_joined(session: Any) -> None:
            await session.ready.wait()
            sessions[jid] = session
            epochs[jid] = session.epoch
            emit(ev="joined", jid=jid, t=time.monotonic(), epoch=session.epoch)

        def on_error(event: Any) -> None:
            emit(ev="error", jid=jid, reason=str(getattr(event, "reason", event)))

        client.add_event_handler("mls_message", on_message)
        client.add_event_handler("mls_joined", on_joined)
        client.add_event_handler("mls_error", on_error)

    async def start(jid: str, password: str) -> None:
        nonlocal started
        async with sem:
            client = new_client(host, port, jid, password, config)
            clients.append(client)
            watch(jid, client)
            try:
                await ready(client, DEVICE_READY_TIMEOUT)
            except TimeoutError:
                emit(ev="error", jid=jid, reason="no mls_ready after "
                     f"{DEVICE_READY_TIMEOUT:.0f} s", fatal=True)
                raise
            started += 1
            if started % 25 == 0:
                emit(ev="progress", started=started)

    async def poll_epochs() -> None:
        while True:
            await asyncio.sleep(0.005)
            for jid, s in sessions.items():
                e = s.epoch
                if e != epochs.get(jid):
                    epochs[jid] = e
                    emit(ev="epoch", jid=jid, epoch=e, t=time.monotonic())

    try:
        await asyncio.gather(*(start(j, p) for j, p in spec["accounts"]))
        emit(ev="ready", rss=rss_mib(), base=base, pid=os.getpid())
        poller = asyncio.create_task(poll_epochs())
        reader = asyncio.StreamReader()
        await asyncio.get_running_loop().connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        while True:
            line = await reader.readline()
            if not line or line.strip() == b"quit":
                break
            if line.strip() == b"rss":
                emit(ev="rss", rss=rss_mib(), base=base, pid=os.getpid())
        poller.cancel()
    finally:
        await disconnect(clients)


# -- the coordinator ------------------------------------------------------------------------


class Fleet:
    """The device processes and what they reported."""

    def __init__(self) -> None:
        self.procs: list[asyncio.subprocess.Process] = []
        self.readers: list[asyncio.Task[None]] = []
        self.cond = asyncio.Condition()
        self.ready: list[dict[str, Any]] = []
        self.rss: list[dict[str, Any]] = []
        self.joined: dict[str, float] = {}
        #: ``lag`` events: a device process's event loop blocked for more than 1 s
        self.lags: list[dict[str, Any]] = []
        self.arrivals: dict[str, dict[str, float]] = {}
        self.epochs: dict[int, dict[str, float]] = {}
        self.errors: list[dict[str, Any]] = []
        self.started: dict[int, int] = {}
        self.expected = 0

    async def spawn(self, spec: dict[str, Any]) -> None:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, __file__, "--device-process", json.dumps(spec),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            limit=1 << 20)
        self.procs.append(proc)
        self.readers.append(asyncio.create_task(self._read(proc)))

    async def _read(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        while line := await proc.stdout.readline():
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            async with self.cond:
                kind = ev.pop("ev")
                if kind == "ready":
                    self.ready.append(ev)
                elif kind == "rss":
                    self.rss.append(ev)
                elif kind == "joined":
                    self.joined[ev["jid"]] = ev["t"]
                    if len(self.joined) % 100 == 0:
                        log(f"  {len(self.joined)} devices joined")
                elif kind == "msg":
                    self.arrivals.setdefault(ev["body"], {})[ev["jid"]] = ev["t"]
                elif kind == "epoch":
                    self.epochs.setdefault(ev["epoch"], {})[ev["jid"]] = ev["t"]
                elif kind == "progress":
                    self.started[id(proc)] = ev["started"]
                    total = sum(self.started.values())
                    if total % 100 == 0 or total == self.expected:
                        log(f"  {total} devices ready")
                elif kind == "profile":
                    log(f"  [profile {ev['pid']}, {ev['samples']} samples] " + "; ".join(
                        f"{n} {w}" for w, n in ev["top"]))
                elif kind == "lag":
                    self.lags.append(ev)
                    log(f"  [loop of {ev['pid']} blocked {ev['s']} s]")
                elif kind == "error":
                    self.errors.append(ev)
                    if len(self.errors) <= 20:
                        log(f"  ! mls_error at {ev['jid']}: {ev['reason']}")
                self.cond.notify_all()

    async def wait(self, what: str, pred: Any, timeout: float) -> None:
        async with self.cond:
            try:
                await asyncio.wait_for(self.cond.wait_for(pred), timeout)
            except TimeoutError:
                raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}") from None

    async def tell(self, command: str) -> None:
        for p in self.procs:
            if p.stdin is not None and p.returncode is None:
                with contextlib.suppress(ConnectionError):
                    p.stdin.write(command.encode() + b"\n")
                    await p.stdin.drain()

    async def close(self) -> None:
        await self.tell("quit")
        for p in self.procs:
            try:
                await asyncio.wait_for(p.wait(), 30)
            except TimeoutError:
                p.kill()
                await p.wait()
        for r in self.readers:
            r.cancel()


async def run(args: argparse.Namespace) -> dict[str, Any]:
    from mls_xmpp.testing import ProsodyServer

    n = args.devices
    procs = args.procs or max(2, -(-n // DEVICES_PER_PROC))
    results: dict[str, Any] = {"devices": n, "device_processes": procs}
    with ProsodyServer(storage=args.storage, start_timeout=60.0) as server:
        server_base = rss_mib(server.pid)
        t0 = time.monotonic()
        tag = secrets.token_hex(2)
        accounts = server.create_users([(f"d{tag}-{i}", f"pw-{secrets.token_hex(6)}")
                                        for i in range(n + 1)])
        results["create_accounts_s"] = round(time.monotonic() - t0, 2)
        log(f"{n + 1} accounts in {results['create_accounts_s']} s")
        creator_acc, devices = accounts[0], accounts[1:]
        fleet = Fleet()
        creator = None
        try:
            t0 = time.monotonic()
            fleet.expected = n
            # the upload service hands out URLs on 127.0.0.1; a device learns that it is
            # the server's by disco, which Prosody may leave unanswered for 30 s while
            # 1,000 devices connect: the Welcome (tree by reference) was then refused
            origins = [f"http://{server.host}:{server.http_port}"]
            for k in range(procs):
                share = devices[k::procs]
                await fleet.spawn({"host": server.host, "port": server.c2s_port,
                                   "accounts": [list(a) for a in share],
                                   "concurrency": args.connect_concurrency,
                                   "config": {"pool_size": args.pool_size,
                                              "blob_origins": origins}})
            creator = new_client(server.host, server.c2s_port, *creator_acc,
                                 {"invitations": "any", "pool_size": args.pool_size,
                                  "blob_origins": origins})
            began: dict[str, float] = {}
            stages: dict[str, float] = {}

            def on_progress(ev: Any) -> None:  # the creator's mls_progress: stage times
                now = time.monotonic()
                key = f"{ev.stage} ({ev.batch}/{ev.batches})"
                if ev.done == 0:
                    began[key] = now
                elif ev.done == ev.total and key in began:
                    stages[key] = now - began[key]
                    log(f"    {key}: {ev.total} in {stages[key]:.2f} s")

            creator.add_event_handler("mls_progress", on_progress)
            await ready(creator, CONNECT_TIMEOUT)
            await fleet.wait("the devices to connect",
                             lambda: len(fleet.ready) == procs
                             or any(e.get("fatal") for e in fleet.errors), CONNECT_TIMEOUT)
            if len(fleet.ready) != procs:
                raise RuntimeError(f"a device did not start: {fleet.errors[-1]}")
            results["connect_all_s"] = round(time.monotonic() - t0, 2)
            log(f"{n} devices connected with KeyPackages published in "
                f"{results['connect_all_s']} s ({procs} processes)")
            client_base = sum(r["base"] for r in fleet.ready)

            # (1) the group with all N -----------------------------------------------------
            log(f"create_group with {n} members")
            t0 = time.monotonic()
            group = await asyncio.wait_for(
                creator.plugin["mls"].create_group(members=[a.jid for a in devices]),
                args.timeout)
            results["create_group_returned_s"] = round(time.monotonic() - t0, 3)
            await fleet.wait("every device to join", lambda: len(fleet.joined) == n, args.timeout)
            results["create_all_joined_s"] = round(max(fleet.joined.values()) - t0, 3)
            results["create_stages_s"] = {k: round(v, 3) for k, v in stages.items()}
            log(f"  returned after {results['create_group_returned_s']} s, all joined after "
                f"{results['create_all_joined_s']} s")
            await asyncio.sleep(args.settle)

            # (2) fan-out ------------------------------------------------------------------
            samples: list[float] = []
            per_message_last: list[float] = []
            for k in range(args.messages):
                body = f"fan-{k}-{secrets.token_hex(3)}"
                t_send = time.monotonic()
                await group.send(body)
                await fleet.wait(f"message {k} at every device",
                                 lambda b=body: len(fleet.arrivals.get(b, {})) == n,
                                 MESSAGE_TIMEOUT)
                times = [t - t_send for t in fleet.arrivals[body].values()]
                samples += times
                per_message_last.append(max(times))
            results["fanout_p50_ms"] = round(statistics.median(samples) * 1000, 3)
            results["fanout_p99_ms"] = round(percentile(samples, 99) * 1000, 3)
            results["fanout_last_device_median_ms"] = round(
                statistics.median(per_message_last) * 1000, 3)
            results["fanout_samples"] = len(samples)
            log(f"  fan-out p50 {results['fanout_p50_ms']} ms, p99 {results['fanout_p99_ms']} ms"
                f" (last device: median {results['fanout_last_device_median_ms']} ms)")

            # (3) a Commit applied by all -----------------------------------------------------
            epoch = group.epoch + 1
            t0 = time.monotonic()
            await asyncio.wait_for(group.update(), args.timeout)
            results["commit_returned_s"] = round(time.monotonic() - t0, 3)
            await fleet.wait("every device in the new epoch",
                             lambda: len(fleet.epochs.get(epoch, {})) == n, args.timeout)
            results["commit_converge_s"] = round(max(fleet.epochs[epoch].values()) - t0, 3)
            log(f"  commit returned after {results['commit_returned_s']} s, applied by all "
                f"after {results['commit_converge_s']} s")

            # (4) memory ---------------------------------------------------------------------
            await fleet.tell("rss")
            await fleet.wait("memory figures", lambda: len(fleet.rss) == procs, 60)
            client_rss = sum(r["rss"] for r in fleet.rss)
            server_rss = rss_mib(server.pid)
            results["client_mib_per_device"] = round((client_rss - client_base) / n, 3)
            results["client_processes_mib"] = round(client_rss, 1)
            results["server_mib_per_device"] = round((server_rss - server_base) / n, 3)
            results["server_mib"] = round(server_rss, 1)
            results["creator_mib"] = round(rss_mib(), 1)
            results["mls_errors"] = len(fleet.errors)
            results["mls_error_kinds"] = error_kinds(fleet.errors)
            results["latency_samples_ms"] = [round(s * 1000, 3) for s in samples]
        finally:
            if creator is not None:
                await disconnect([creator])
            await fleet.close()
    return results


def error_kinds(errors: list[dict[str, Any]]) -> dict[str, int]:
    """How many ``mls_error`` reasons of each kind (JIDs, ids and hex left out), most
    frequent first."""
    kinds: dict[str, int] = {}
    for e in errors:
        kind = re.sub(r"\S+@\S+|[0-9a-f]{16,}|<iq.*", "…", e["reason"])[:120]
        kinds[kind] = kinds.get(kind, 0) + 1
    return dict(sorted(kinds.items(), key=lambda kv: -kv[1]))


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--device-process"]:
        asyncio.run(device_main(json.loads(argv[1])))
        return 0
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--devices", type=int, required=True)
    p.add_argument("--procs", type=int, default=0, help="device processes (default N/125, >= 2)")
    p.add_argument("--messages", type=int, default=20, help="fan-out messages (default 20)")
    p.add_argument("--pool-size", type=int, default=5,
                   help="KeyPackages each device keeps on PEP (the plugin's default, 5)")
    p.add_argument("--storage", choices=("internal", "memory"), default="internal")
    p.add_argument("--connect-concurrency", type=int, default=CONNECT_CONCURRENCY,
                   help=f"devices connecting at once per process (default {CONNECT_CONCURRENCY})")
    p.add_argument("--settle", type=float, default=1.0,
                   help="seconds between the joins and the fan-out")
    p.add_argument("--timeout", type=float, default=1800.0,
                   help="limit for the group's creation and for the Commit")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    if args.devices < 1 or args.messages < 1:
        p.error("--devices and --messages must be >= 1")
    # SIGTERM ends the run like Ctrl-C: the server is stopped, the processes ended
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    t0 = time.monotonic()
    results = asyncio.run(run(args))
    summary = {k: v for k, v in results.items() if k != "latency_samples_ms"}
    for k, v in summary.items():
        print(f"{k:32} {v}")
    if args.json:
        doc = {
            "benchmark": "fleet",
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "loadavg_at_end": os.getloadavg(),
            "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "total_seconds": round(time.monotonic() - t0, 1),
            "results": results,
        }
        args.json.write_text(json.dumps(doc, indent=1) + "\n")
        log(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
