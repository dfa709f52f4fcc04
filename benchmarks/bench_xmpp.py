"""End-to-end XMPP benchmark: raw MUC round trips against MLS over the slixmpp plugin.

Usage::

    python benchmarks/bench_xmpp.py [--messages 200] [--json PATH]
                                    [--storage internal|memory] [--warmup 10]
                                    [--payload-bytes 512] [--settle 1.5]
                                    [--profile] [--profile-messages 100]
                                    [--profile-out FILE.prof] [--profile-top 25]

One run starts its own Prosody (:class:`mls_xmpp.testing.ProsodyServer`, on
loopback, plaintext, ``storage`` as chosen: ``internal`` = files, as deployed),
creates fresh accounts, and measures on that one server:

1. ``raw``: two plain slixmpp clients in a MUC room (``mls_xmpp.testing``
   helpers) configured like the plugin's rooms (members-only, persistent,
   archived, non-anonymous, not public; the receiver is made a member before
   it joins). Median and p95 of send -> receive of a body-less payload
   (``<mls xmlns='urn:mls-xmpp:0'/>`` with ``--payload-bytes`` random bytes
   base64, plus the ``<store/>`` hint), N sequential messages; the arrival is
   timed in the receiver's stanza handler, as the MLS one is in its event
   handler. Also the raw one-sender throughput (N sent back to back), an
   upper bound for step 3.
2. ``mls``: alice and bob in an MLS group through the ``mls`` plugin. Median
   and p95 of ``await group.send(text)`` -> bob's ``mls_message`` event (send
   to decrypted), N sequential messages, taken in pairs with the raw ones so
   that both see the same machine load (the ratio is the robust figure). The
   order within a pair alternates (raw first, then MLS first): with the raw
   room in Prosody's default configuration, the first message of a pair took
   1-2.6 ms longer than the second, whichever kind it was, so the former fixed
   order (raw first) made raw look slower than MLS (docs/PERFORMANCE.md,
   "Raw against MLS"). The medians per position are printed and in the JSON
   (``latency_by_position_median_ms``).
   The same pass gives a timeline (send() returned, stanza written to the
   socket, stanza parsed by bob's stream, event) and the CPU components
   (sender ``Group.encrypt`` and ``persist_ratchets`` + ``persist_position``,
   receiver ``Group.process`` and ``persist_ratchets``, and the signing and
   the signature check inside encrypt and process, their floor) by hooks set
   on instances (no library code changes).
3. ``tp1``: alice sends N messages as fast as she can (awaiting each
   ``send`` but not its delivery); messages/s until bob has all N. Raw
   throughput is measured the same way.
4. ``tp10``: a group of 11 (the creator, who only receives, and 10 members
   who send); each sender sends N/10 messages, all concurrently (yielding
   after each send); messages/s until the creator has all N, and until every
   member has every message of the others. Every client runs in this one
   process and event loop, so all of their XML parsing and decryption shares
   one CPU (about ten decryptions and eleven stanza parses per message);
   ``receiver only`` repeats the measurement with the senders' incoming MLS
   handler removed (only the creator decrypts), which shows that cost.

Throughput steps also report CPU milliseconds per message of this process
(every client together) and of Prosody, which other load on the machine
disturbs much less than wall-clock rates.

``--receiver-process`` runs the pair's receiving clients (raw b and MLS bob alike) in a
child process of this script (``--receiver-child``), as two devices would be: the
sender's and the receiver's CPU and GIL no longer add up; arrivals are timed in the child
with the same monotonic clock, its CPU counts as the clients'. The ten-sender step
stays in one process.

``--json PATH`` writes every figure, and every latency sample of steps 1
and 2 (``latency_samples_ms``), with the run's options and environment;
``benchmarks/plot.py`` draws it.

Setup times: client start (connect, identity, KeyPackage pool on PEP),
``create_group`` with 1 and with 10 members (until every member has joined,
caught up and is ready).

``--profile`` runs an extra MLS latency pass (``--profile-messages``, default
100) under cProfile (the whole process: sender, receiver and slixmpp) and
prints the top functions by own and by cumulative time to stderr.

The server is always stopped and every client disconnected, also on errors
and Ctrl-C; each wait has a timeout.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import cProfile
import inspect
import io
import json
import logging
import os
import platform
import pstats
import secrets
import statistics
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar, cast

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import slixmpp  # noqa: E402
from slixmpp.xmlstream.handler import Callback  # noqa: E402
from slixmpp.xmlstream.matcher import MatchXPath  # noqa: E402

import mls_xmpp  # noqa: E402,F401 - registers the "mls" slixmpp plugin
from mls_xmpp.testing import (  # noqa: E402
    Account,
    PayloadInbox,
    ProsodyServer,
    connect_client,
    disconnect_client,
    join_room,
    send_payload,
)
from mls_xmpp.xmpp.stanza import NS  # noqa: E402

T = TypeVar("T")

#: Seconds for one connection / one wait on a single message / a group setup.
CONNECT_TIMEOUT = 60.0
MESSAGE_TIMEOUT = 30.0
SETUP_TIMEOUT = 120.0
#: ``--client-store sqlite``: the directory of the clients' SQLite databases.
CLIENT_STORE_DIR: Path | None = None
#: --update-join-delay: the plugin option for every client (None: its default)
UPDATE_JOIN_DELAY: float | None = None


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def ms(seconds: float) -> float:
    return round(seconds * 1000.0, 3)


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))  # ceil(n*q/100), at least 1
    return ordered[int(rank) - 1]


def summary(values: list[float]) -> dict[str, float]:
    """median / p95 / min / max / mean in milliseconds."""
    return {
        "median_ms": ms(statistics.median(values)),
        "p95_ms": ms(percentile(values, 95)),
        "min_ms": ms(min(values)),
        "max_ms": ms(max(values)),
        "mean_ms": ms(statistics.fmean(values)),
        "count": len(values),
    }


async def bounded(aw: Awaitable[T], timeout: float, what: str) -> T:
    try:
        return await asyncio.wait_for(aw, timeout)
    except TimeoutError:
        raise RuntimeError(f"timed out after {timeout:.0f} s: {what}") from None


# -- clients ------------------------------------------------------------------------


class Expecting:
    """``expect(body)``: a future resolved with the arrival time of that body."""

    _waiters: dict[str, asyncio.Future[float]]

    def expect(self, body: str) -> asyncio.Future[float]:
        fut: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self._waiters[body] = fut
        return fut


class Sink(Expecting):
    """Collects one client's ``mls_message`` events (a plain, synchronous handler).

    ``expect(body)`` returns a future resolved with the arrival time of that
    body; ``wait_count(n)`` waits until ``n`` messages arrived in all.
    """

    def __init__(self, client: Any) -> None:
        self.client = client
        self.count = 0
        self.bodies: list[str] = []
        self.errors: list[Any] = []
        self.joined: list[Any] = []
        self._waiters: dict[str, asyncio.Future[float]] = {}
        self._count_target = 0
        self._count_event = asyncio.Event()
        self._joined_event = asyncio.Event()
        self.keep_bodies = False
        client.add_event_handler("mls_message", self._on_message)
        client.add_event_handler("mls_error", self._on_error)
        client.add_event_handler("mls_joined", self._on_joined)

    def _on_message(self, event: Any) -> None:
        now = time.perf_counter()
        self.count += 1
        if self.keep_bodies:
            self.bodies.append(event.body)
        waiter = self._waiters.pop(event.body, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(now)
        if self._count_target and self.count >= self._count_target:
            self._count_event.set()

    def _on_error(self, event: Any) -> None:
        self.errors.append(event)
        log(f"  ! mls_error at {self.client.boundjid.bare}: {event.reason}")

    def _on_joined(self, event: Any) -> None:
        self.joined.append(event.group)
        self._joined_event.set()

    def reset(self) -> None:
        self.count = 0
        self.bodies.clear()
        self._count_target = 0
        self._count_event.clear()

    async def wait_count(self, n: int, timeout: float) -> float:
        """Wait until ``n`` messages arrived (since :meth:`reset`); the time it happened."""
        self._count_target = n
        if self.count >= n:
            self._count_event.set()
        try:
            await asyncio.wait_for(self._count_event.wait(), timeout)
        except TimeoutError:
            raise RuntimeError(
                f"{self.client.boundjid.bare}: {self.count} of {n} messages "
                f"after {timeout:.0f} s ({len(self.errors)} mls_error)") from None
        return time.perf_counter()

    async def wait_joined(self, timeout: float) -> Any:
        await bounded(self._joined_event.wait(), timeout,
                      f"{self.client.boundjid.bare} waiting for mls_joined")
        return self.joined[-1]


class Clients:
    """Every client this run connected, for a clean disconnect at the end."""

    def __init__(self) -> None:
        self.all: list[Any] = []

    async def close(self) -> None:
        clients, self.all = self.all, []
        for c in clients:  # the plugin leaves its group workers running
            plugin = c.plugin.get("mls", None)
            for session in list(getattr(plugin, "sessions", {}).values()):
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(session.stop(), 5.0)
        await asyncio.gather(*(disconnect_client(c, timeout=5.0) for c in clients),
                             return_exceptions=True)
        # slixmpp cancels its outgoing-filter task only in __del__, so it would
        # be destroyed pending at garbage collection; end it here
        tasks = [t for c in clients
                 if (t := getattr(c, "_run_out_filters", None)) is not None]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def mls_client(server: ProsodyServer, account: Account, clients: Clients,
                     config: dict[str, Any] | None = None,
                     sink_class: type[Sink] | None = None) -> tuple[Any, Sink]:
    """A connected slixmpp client with the "mls" plugin, started (KeyPackages on PEP).

    The benchmark's accounts are not roster contacts: they take anyone's
    invitations (``invitations="any"``, unless ``config`` says otherwise), so that
    no roster set-up enters the timings.
    """
    client = slixmpp.ClientXMPP(account.jid, account.password)
    client.enable_direct_tls = False
    client.enable_starttls = False
    client.enable_plaintext = True
    client.plugin["feature_mechanisms"].unencrypted_scram = True
    base: dict[str, Any] = {"invitations": "any"}
    if CLIENT_STORE_DIR is not None:  # --client-store sqlite: a database per account
        base["store"] = str(CLIENT_STORE_DIR / f"{account.jid}.sqlite")
    if UPDATE_JOIN_DELAY is not None:  # the updates after joining, all within this
        base["update_join_delay"] = UPDATE_JOIN_DELAY
    client.register_plugin("mls", {**base, **(config or {})})
    sink = (sink_class or Sink)(client)
    ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def on_ready(_: Any) -> None:
        if not ready.done():
            ready.set_result(None)

    client.add_event_handler("mls_ready", on_ready)
    client.add_event_handler("session_start", lambda _: client.send_presence())
    clients.all.append(client)
    client.connect(server.host, server.c2s_port)
    await bounded(ready, CONNECT_TIMEOUT, f"{account.jid} waiting for mls_ready")
    return client, sink


async def make_group(creator: Any, members: list[tuple[Any, Sink]],
                     timeout: float = SETUP_TIMEOUT) -> tuple[Any, list[Any], dict[str, float]]:
    """``create_group`` with every member; wait until all joined and are ready."""
    t0 = time.perf_counter()
    group = await bounded(
        creator.plugin["mls"].create_group(members=[c.boundjid.bare for c, _ in members]),
        timeout, "create_group")
    t_created = time.perf_counter()
    sessions = await bounded(
        asyncio.gather(*(sink.wait_joined(timeout) for _, sink in members)),
        timeout, "members joining")
    await bounded(asyncio.gather(*(s.ready.wait() for s in sessions)), timeout,
                  "members catching up")
    t_ready = time.perf_counter()
    epochs = {s.epoch for s in sessions} | {group.epoch}
    if len(epochs) != 1:
        raise RuntimeError(f"members disagree on the epoch: {sorted(epochs)}")
    return group, list(sessions), {
        "members_added": len(members),
        "create_group_s": round(t_created - t0, 4),
        "all_joined_and_ready_s": round(t_ready - t0, 4),
    }


# -- timing wrappers (instance attributes; nothing in the library changes) --------------


class Stopwatch:
    """Accumulates the time of calls to wrapped callables, per label."""

    def __init__(self) -> None:
        self.samples: dict[str, list[float]] = {}
        self._current: dict[str, float] = {}
        self.enabled = False

    def wrap(self, obj: Any, attr: str, label: str) -> Callable[[], None]:
        """Time ``obj.attr`` (a synchronous method); returns the undo function."""
        original = getattr(obj, attr)

        def timed(*args: Any, **kwargs: Any) -> Any:
            if not self.enabled:
                return original(*args, **kwargs)
            t = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self._current[label] = self._current.get(label, 0.0) + time.perf_counter() - t

        setattr(obj, attr, timed)
        self.samples.setdefault(label, [])
        return lambda: delattr(obj, attr) if attr in vars(obj) else None

    def start_message(self) -> None:
        self._current = {}

    def end_message(self) -> None:
        for label, values in self.samples.items():
            values.append(self._current.get(label, 0.0))
        self._current = {}


# -- CPU accounting ---------------------------------------------------------------------


class CpuMeter:
    """CPU seconds used by this process (every client) and by Prosody over a step.

    Robust against other load on the machine, unlike wall-clock rates.
    """

    def __init__(self, server: ProsodyServer) -> None:
        self.pid = server.pid
        self.tick = os.sysconf("SC_CLK_TCK")
        #: clients in processes of their own (``--receiver-process``): counted as clients
        self.children: list[int] = []

    def _cpu(self, pid: int) -> float:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / self.tick  # utime + stime
        except (OSError, IndexError, ValueError):
            return float("nan")

    def _prosody(self) -> float:
        return self._cpu(self.pid)

    def snapshot(self) -> tuple[float, float]:
        return (time.process_time() + sum(self._cpu(pid) for pid in self.children),
                self._prosody())

    def per_message(self, before: tuple[float, float], messages: int) -> dict[str, float]:
        client, prosody = self.snapshot()
        return {
            "clients_cpu_ms_per_msg": round((client - before[0]) * 1000 / messages, 3),
            "prosody_cpu_ms_per_msg": round((prosody - before[1]) * 1000 / messages, 3),
        }


# -- steps ------------------------------------------------------------------------------


#: The configuration the plugin gives a group's room (``Delivery.create_room`` in
#: ``mls_xmpp/xmpp/delivery.py``); the raw room gets the same.
ROOM_CONFIG = {
    "muc#roomconfig_membersonly": True,
    "muc#roomconfig_persistentroom": True,
    "muc#roomconfig_enablearchiving": True,
    "muc#roomconfig_whois": "anyone",
    "muc#roomconfig_publicroom": False,
}


def send_shaped_like_mls(client: Any, room: str, data: bytes) -> str:
    """:func:`send_payload` with what the mapping adds to every MLS stanza besides the
    payload: the fallback ``<body/>`` and the XEP-0380 ``<encryption/>`` element
    (``--raw-shape mls``; the server treats a message with a body differently)."""
    from mls_xmpp.xmpp.delivery import FALLBACK_BODY

    msg = client.make_message(mto=room, mtype="groupchat", mbody=FALLBACK_BODY)
    msg["id"] = client.new_id()
    payload = ET.SubElement(msg.xml, f"{{{NS}}}mls")
    payload.text = base64.b64encode(data).decode("ascii")
    ET.SubElement(msg.xml, "{urn:xmpp:hints}store")
    eme = ET.SubElement(msg.xml, "{urn:xmpp:eme:0}encryption")
    eme.set("namespace", NS)
    eme.set("name", "MLS")
    msg.send()
    return cast(str, msg["id"])


class RawPair:
    """Two plain slixmpp clients in one MUC room configured like an MLS group's room."""

    def __init__(self, shape: str = "payload", remote: RemoteReceiver | None = None) -> None:
        #: ``payload``: only the payload element (and the store hint); ``mls``: also the
        #: fallback body and the EME element every MLS stanza carries
        self.shape = shape
        #: ``--receiver-process``: b runs in this child process
        self.remote = remote

    def _send(self) -> str:
        if self.shape == "mls":
            return send_shaped_like_mls(self.a, self.room, self.data)
        return send_payload(self.a, self.room, self.data)

    async def setup(self, server: ProsodyServer, accounts: list[Account], clients: Clients,
                    payload_bytes: int) -> float:
        t0 = time.perf_counter()
        self.a = await connect_client(server, *accounts[0], timeout=CONNECT_TIMEOUT)
        clients.all.append(self.a)
        #: the size of each payload stanza a wrote, as serialised (as Marks does for MLS)
        self.sizes: list[int] = []
        send_raw = self.a.send_raw

        def sized(data: Any) -> None:
            if NS in data:
                self.sizes.append(len(data))
            send_raw(data)
        self.a.send_raw = sized  # type: ignore[method-assign]
        if self.remote is None:
            self.b = await connect_client(server, *accounts[1], timeout=CONNECT_TIMEOUT)
            clients.all.append(self.b)
        self.room = server.room_jid(f"raw-bench-{secrets.token_hex(4)}")
        await join_room(self.a, self.room, "a", timeout=MESSAGE_TIMEOUT)
        muc = self.a.plugin["xep_0045"]
        form: Any = await muc.get_room_config(self.room, timeout=MESSAGE_TIMEOUT)
        fields = form.get_fields()
        missing = [var for var in ROOM_CONFIG if var not in fields]
        if missing:
            raise RuntimeError(f"{self.room}: the room offers no {', '.join(missing)}")
        for var, value in ROOM_CONFIG.items():
            fields[var]["value"] = value
        await muc.set_room_config(self.room, form, timeout=MESSAGE_TIMEOUT)
        await muc.set_affiliation(self.room, "member", jid=accounts[1].jid,
                                  timeout=MESSAGE_TIMEOUT)
        self.data = secrets.token_bytes(payload_bytes)
        if self.remote is not None:
            await self.remote.request("raw", jid=accounts[1].jid, password=accounts[1].password,
                                      room=self.room)
            return time.perf_counter() - t0
        await join_room(self.b, self.room, "b", timeout=MESSAGE_TIMEOUT)
        self.inbox = PayloadInbox(self.b)
        # the arrival is timed in a stanza handler, like the MLS message's in its event
        # handler (not when the waiting task resumes)
        self.arrived: dict[str, float] = {}
        self.b.register_handler(Callback(
            "bench raw arrival", MatchXPath(f"{{{self.b.default_ns}}}message/{{{NS}}}mls"),
            lambda msg: self.arrived.__setitem__(msg["id"], time.perf_counter())))
        return time.perf_counter() - t0

    async def round_trip(self) -> float:
        """Send one payload; seconds until b has it."""
        start = time.perf_counter()
        mid = self._send()
        if self.remote is not None:
            return await self.remote.raw_arrival(mid) - start
        while True:
            msg = await self.inbox.get(timeout=MESSAGE_TIMEOUT)
            if msg["id"] == mid:
                return self.arrived.pop(mid, time.perf_counter()) - start

    async def throughput(self, n: int, cpu: CpuMeter) -> dict[str, Any]:
        """n payloads back to back (yielding after each send); until b has them all."""
        before = cpu.snapshot()
        start = time.perf_counter()
        ids = set()
        for _ in range(n):
            ids.add(self._send())
            await asyncio.sleep(0)
        sent = time.perf_counter()
        if self.remote is not None:
            done = max(await asyncio.gather(*(self.remote.raw_arrival(i) for i in ids)))
        else:
            while ids:
                ids.discard((await self.inbox.get(timeout=MESSAGE_TIMEOUT))["id"])
            done = time.perf_counter()
        return {"messages": n, "send_s": round(sent - start, 4),
                "total_s": round(done - start, 4),
                "msgs_per_s": round(n / (done - start), 1), **cpu.per_message(before, n)}

    def close(self) -> None:
        if self.remote is not None:
            return
        self.inbox.close()
        self.b.remove_handler("bench raw arrival")
        self.arrived.clear()


class Marks:
    """When the sender's stream writes, and when the receiver has parsed, a stanza.

    Benchmark-side hooks only: an instance attribute over the sender's
    ``send_raw`` and an in-stream handler on the receiver.
    """

    def __init__(self, sender: Any, receiver: Any) -> None:
        self.start = 0.0
        self.wire: float | None = None
        self.parsed: float | None = None
        #: the size of each message's first write (its stanza, as serialised)
        self.sizes: list[int] = []
        original = sender.send_raw

        def send_raw(data: Any) -> None:
            if self.wire is None:
                self.wire = time.perf_counter()
                self.sizes.append(len(data))
            original(data)

        sender.send_raw = send_raw
        self._sender = sender
        self._receiver = receiver
        if receiver is not None:  # None: in a process of its own (not timed)
            receiver.register_handler(Callback(
                "bench parsed", MatchXPath(f"{{{receiver.default_ns}}}message/{{{NS}}}mls"),
                self._on_parsed, instream=True))

    def _on_parsed(self, _: Any) -> None:
        if self.parsed is None:
            self.parsed = time.perf_counter()

    def arm(self) -> None:
        self.start = time.perf_counter()
        self.wire = self.parsed = None

    def relative(self, mark: float | None) -> float:
        return float("nan") if mark is None else mark - self.start

    def close(self) -> None:
        with contextlib.suppress(AttributeError):
            del self._sender.send_raw
        if self._receiver is not None:
            self._receiver.remove_handler("bench parsed")


async def mls_round_trip(group: Any, receiver: Sink | RemoteSink, body: str
                         ) -> tuple[float, float]:
    """``group.send(body)`` -> receiver's ``mls_message``: (total, until send returned)."""
    arrived = receiver.expect(body)
    start = time.perf_counter()
    await group.send(body)
    returned = time.perf_counter()
    end = await bounded(arrived, MESSAGE_TIMEOUT, f"MLS message {body}")
    return end - start, returned - start


async def quiesce(seconds: float) -> None:
    """Let background work (KeyPackage upkeep after a join, GroupInfo) finish."""
    await asyncio.sleep(seconds)


async def bench_pair(server: ProsodyServer, accounts: list[Account], clients: Clients,
                     cpu: CpuMeter, args: argparse.Namespace) -> dict[str, Any]:
    """Steps 1-3: raw and MLS latency (interleaved), then one-sender throughputs."""
    n, warmup = args.messages, args.warmup
    remote: RemoteReceiver | None = None
    if args.receiver_process:  # the receivers (raw b, MLS bob) in a process of their own
        remote = await RemoteReceiver.start(server)
        cpu.children.append(remote.pid)
    try:
        return await _bench_pair(server, accounts, clients, cpu, args, n, warmup, remote)
    finally:
        if remote is not None:
            await remote.close()
            cpu.children.remove(remote.pid)


async def _bench_pair(server: ProsodyServer, accounts: list[Account], clients: Clients,
                      cpu: CpuMeter, args: argparse.Namespace, n: int, warmup: int,
                      remote: RemoteReceiver | None) -> dict[str, Any]:
    raw = RawPair(args.raw_shape, remote)
    result: dict[str, Any] = {"raw": {"shape": args.raw_shape}, "mls": {},
                              "receiver_process": remote is not None}
    result["raw"]["setup_s"] = round(
        await raw.setup(server, accounts[0:2], clients, args.payload_bytes), 4)
    result["raw"]["payload_bytes"] = args.payload_bytes
    t0 = time.perf_counter()
    bob: Any = None
    gb: Any = None
    sb: Sink | RemoteSink
    if remote is None:
        (alice, sa), (bob, sink_b) = await asyncio.gather(
            mls_client(server, accounts[2], clients), mls_client(server, accounts[3], clients))
        sb = sink_b
        result["mls"]["client_start_s_2_concurrent"] = round(time.perf_counter() - t0, 4)
        group, (gb,), setup = await make_group(alice, [(bob, sink_b)])
    else:
        (alice, sa), _ = await asyncio.gather(
            mls_client(server, accounts[2], clients),
            remote.request("mls", jid=accounts[3].jid, password=accounts[3].password))
        result["mls"]["client_start_s_2_concurrent"] = round(time.perf_counter() - t0, 4)
        sb = remote.sink
        t0 = time.perf_counter()
        group = await bounded(alice.plugin["mls"].create_group(members=[accounts[3].jid]),
                              SETUP_TIMEOUT, "create_group")
        t_created = time.perf_counter()
        joined = await bounded(remote.joined, SETUP_TIMEOUT, "bob joining (child process)")
        if joined != group.epoch:
            raise RuntimeError(f"members disagree on the epoch: {group.epoch}, {joined}")
        setup = {"members_added": 1, "create_group_s": round(t_created - t0, 4),
                 "all_joined_and_ready_s": round(time.perf_counter() - t0, 4)}
    result["mls"]["group_setup_1_member"] = setup
    await quiesce(args.settle)

    # 1 + 2: latencies, a raw and an MLS message in each pair, so that both see
    # the same conditions (other load on the machine varies); which goes first
    # alternates, as the first of a pair was measured slower whichever it was
    watch = Stopwatch()
    sender_persist = "sender persist_ratchets, _position"
    undo = [
        watch.wrap(group.group, "encrypt", "sender Group.encrypt"),
        watch.wrap(alice.plugin["mls"], "persist_ratchets", sender_persist),
        watch.wrap(alice.plugin["mls"], "persist_position", sender_persist),
        # the floor inside Group.encrypt and Group.process: one signature and one check
        # (both clients share the suite's scheme object)
        watch.wrap(group.group.state.suite.signature, "sign", "sender: signing (in encrypt)"),
    ]
    if gb is not None:  # the receiver in this process
        undo += [
            watch.wrap(gb.group, "process", "receiver Group.process"),
            watch.wrap(bob.plugin["mls"], "persist_ratchets", "receiver persist_ratchets"),
            watch.wrap(group.group.state.suite.signature, "verify",
                       "receiver: signature check (in process)"),
        ]
    # with the store writer (branch permsg): the writes' time on the event loop
    # (encoding, submitting); the commits themselves run in the writer's thread
    for obj, name, label in ((alice.plugin["mls"], "persist_later", sender_persist),
                             (alice.plugin["mls"], "store_sent_later", sender_persist),
                             *(((bob.plugin["mls"], "persist_later",
                                 "receiver persist_ratchets"),) if bob is not None else ())):
        if hasattr(obj, name):
            undo.append(watch.wrap(obj, name, label))
    marks = Marks(alice, bob)
    raw_lat: list[float] = []
    mls_lat: list[float] = []
    raw_first: list[bool] = []
    split: dict[str, list[float]] = {"send() returned": [], "on the wire (send_raw)": [],
                                     "parsed by receiver": []}

    async def mls_timed(i: int) -> tuple[float, float]:
        watch.enabled = True
        watch.start_message()
        marks.arm()
        try:
            return await mls_round_trip(group, sb, f"lat-{i:05d}")
        finally:
            watch.end_message()
            watch.enabled = False

    try:
        for i in range(warmup + n):
            if i % 2 == 0:
                r = await raw.round_trip()
                total, returned = await mls_timed(i)
            else:
                total, returned = await mls_timed(i)
                r = await raw.round_trip()
            if i < warmup:
                continue
            raw_first.append(i % 2 == 0)
            raw_lat.append(r)
            mls_lat.append(total)
            split["send() returned"].append(returned)
            split["on the wire (send_raw)"].append(marks.relative(marks.wire))
            split["parsed by receiver"].append(marks.relative(marks.parsed))
    finally:
        marks.close()
        for u in undo:
            u()
    result["raw"]["latency"] = summary(raw_lat)
    result["mls"]["latency"] = summary(mls_lat)
    # every sample, in measurement order (for distributions: benchmarks/plot.py)
    result["raw"]["latency_samples_ms"] = [ms(v) for v in raw_lat]
    result["mls"]["latency_samples_ms"] = [ms(v) for v in mls_lat]
    result["raw_first_in_pair"] = raw_first
    for kind, values in (("raw", raw_lat), ("mls", mls_lat)):
        first = [v for v, rf in zip(values, raw_first, strict=True) if rf == (kind == "raw")]
        second = [v for v, rf in zip(values, raw_first, strict=True) if rf != (kind == "raw")]
        result[kind]["latency_by_position_median_ms"] = {
            "first in pair": ms(statistics.median(first)),
            "second in pair": ms(statistics.median(second))}
    result["mls"]["latency_components_median_ms"] = {
        label: ms(statistics.median(v[warmup:])) for label, v in watch.samples.items()}
    result["mls"]["latency_timeline_median_ms"] = {
        label: ms(statistics.median(v)) for label, v in split.items()}
    result["mls"]["latency_timeline_median_ms"]["mls_message event"] = ms(
        statistics.median(mls_lat))
    result["mls"]["stanza_chars_median"] = statistics.median(marks.sizes) if marks.sizes else 0
    result["raw"]["stanza_chars_median"] = statistics.median(raw.sizes) if raw.sizes else 0
    from mls_xmpp.core.group.serialize import encode_group
    result["mls"]["persisted_state_bytes"] = len(encode_group(group.group))

    # profile pass (optional, not part of the figures above)
    if args.profile:
        prof = cProfile.Profile()
        plat = []
        prof.enable()
        for i in range(args.profile_messages):
            plat.append((await mls_round_trip(group, sb, f"prof-{i:05d}"))[0])
        prof.disable()
        result["mls"]["profiled_latency_median_ms"] = ms(statistics.median(plat))
        report_profile(prof, args.profile_top, args.profile_messages, args.profile_out)

    # 3: one-sender throughput, raw then MLS
    await quiesce(0.3)
    result["raw"]["throughput_one_sender"] = await raw.throughput(n, cpu)
    raw.close()
    await quiesce(0.3)
    sb.reset()
    before = cpu.snapshot()
    start = time.perf_counter()
    for i in range(n):
        await group.send(f"tp1-{i:05d}")
    sent = time.perf_counter()
    done = await sb.wait_count(n, max(MESSAGE_TIMEOUT, n * 0.5))
    result["mls"]["throughput_one_sender"] = {
        "messages": n, "send_s": round(sent - start, 4), "total_s": round(done - start, 4),
        "msgs_per_s": round(n / (done - start), 1), **cpu.per_message(before, n)}
    # the same with send(durable=False) (round 6, where the plugin offers it): each
    # send() returns once its stanza left; one wait_stored() at the end
    if "durable" in inspect.signature(group.send).parameters:
        await quiesce(0.3)
        sb.reset()
        before = cpu.snapshot()
        start = time.perf_counter()
        for i in range(n):
            await group.send(f"tp1n-{i:05d}", durable=False)
        sent = time.perf_counter()
        await group.wait_stored()
        stored = time.perf_counter()
        done = await sb.wait_count(n, max(MESSAGE_TIMEOUT, n * 0.5))
        result["mls"]["throughput_one_sender_nodurable"] = {
            "messages": n, "send_s": round(sent - start, 4),
            "stored_s": round(stored - start, 4), "total_s": round(done - start, 4),
            "msgs_per_s": round(n / (done - start), 1), **cpu.per_message(before, n)}
    # the same, the n send() calls made at once (a burst a bot posts): each still
    # returns once its message is durable, but the store writer commits what queued up
    # meanwhile together; the order of the calls is the order bob reads
    await quiesce(0.3)
    sb.reset()
    before = cpu.snapshot()
    start = time.perf_counter()
    bodies = [f"tp1b-{i:05d}" for i in range(n)]
    sb.keep_bodies = True
    await asyncio.gather(*(group.send(b) for b in bodies))
    sent = time.perf_counter()
    done = await sb.wait_count(n, max(MESSAGE_TIMEOUT, n * 0.5))
    result["mls"]["throughput_one_sender_burst"] = {
        "messages": n, "send_s": round(sent - start, 4), "total_s": round(done - start, 4),
        "msgs_per_s": round(n / (done - start), 1), "in_order": sb.bodies[:n] == bodies,
        **cpu.per_message(before, n)}
    result["mls"]["errors"] = len(sa.errors) + len(sb.errors)
    return result


def report_profile(prof: cProfile.Profile, top: int, messages: int,
                   out: Path | None) -> None:
    """Top functions by own time (everything), then by cumulative time (this project's)."""
    if out is not None:
        prof.dump_stats(str(out))
        log(f"wrote {out}")
    listings = [
        ("own time, all code", "tottime", True, ()),
        ("cumulative time, mls_xmpp code only", "cumulative", False, ("mls_xmpp/",)),
    ]
    for title, key, strip, restrict in listings:
        buf = io.StringIO()
        stats = pstats.Stats(prof, stream=buf)
        if strip:
            stats.strip_dirs()
        stats.sort_stats(key).print_stats(*restrict, top)
        text = buf.getvalue()
        log(f"\n=== cProfile of {messages} sequential MLS round trips (sender, receiver "
            f"and slixmpp in one process): {title} ===")
        log(text[text.find("   ncalls"):].rstrip() if "   ncalls" in text else text)


async def bench_ten(server: ProsodyServer, accounts: list[Account], clients: Clients,
                    cpu: CpuMeter, args: argparse.Namespace) -> dict[str, Any]:
    """Step 4: a group of 11, ten senders, the creator receives."""
    n = args.messages
    per = max(1, n // 10)
    total = per * 10
    t0 = time.perf_counter()
    started = await asyncio.gather(*(mls_client(server, acc, clients) for acc in accounts))
    start_s = time.perf_counter() - t0
    (creator, sc), senders = started[0], started[1:]
    group, sessions, setup = await make_group(creator, senders)
    await quiesce(args.settle * 2)
    result: dict[str, Any] = {"client_start_s_11_concurrent": round(start_s, 4),
                              "group_setup_10_members": setup}

    async def burst(sender: Any, k: int, tag: str) -> None:
        for j in range(per):
            await sender.send(f"{tag}-{k:02d}-{j:05d}")
            # GroupSession.send does not suspend, so without this each sender
            # would send its whole share before the next one starts
            await asyncio.sleep(0)

    async def run(tag: str, everyone: bool) -> dict[str, Any]:
        for _, s in started:
            s.reset()
        before = cpu.snapshot()
        start = time.perf_counter()
        send_done = asyncio.ensure_future(
            asyncio.gather(*(burst(g, k, tag) for k, g in enumerate(sessions))))
        limit = max(MESSAGE_TIMEOUT, total * 1.0)
        waits = [sc.wait_count(total, limit)]
        if everyone:
            waits += [s.wait_count(total - per, limit) for _, s in senders]
        try:
            times = await asyncio.gather(*waits)
        finally:
            if not send_done.done():
                send_done.cancel()
            with contextlib.suppress(BaseException):
                await send_done
        out: dict[str, Any] = {
            "messages": total,
            "receiver_s": round(times[0] - start, 4),
            "msgs_per_s": round(total / (times[0] - start), 1),
            "decryptions": total + (len(senders) * (total - per) if everyone else 0),
        }
        if everyone:
            out["all_members_s"] = round(max(times) - start, 4)
        out.update(cpu.per_message(before, total))
        return out

    result["throughput_ten_senders"] = await run("tp10", everyone=True)
    # deaf senders: drop their incoming MLS handler, so that only the creator
    # decrypts (every client shares this process's one event loop and CPU)
    for c, _ in senders:
        c.remove_handler("mls payload")
    await quiesce(0.3)
    result["throughput_ten_senders_receiver_only"] = await run("tp10d", everyone=False)
    result["errors"] = sum(len(s.errors) for _, s in started)
    # Commits that lost a race (e.g. two updates after joining at once), dropped
    # quietly by every other member (docs/PROTOCOL.md 9.7)
    result["superseded_handshakes"] = sum(g.healer.superseded_count
                                          for g in [group, *sessions])
    return result


# -- the pair's receivers in a process of their own (--receiver-process) -----------------


class RemoteSink(Expecting):
    """What :class:`Sink` offers the pair's steps, for bob in the child process: the
    arrival times are the child's ``time.perf_counter()`` at its ``mls_message`` event
    (``CLOCK_MONOTONIC`` on Linux: one clock for every process)."""

    def __init__(self) -> None:
        self.count = 0
        self.bodies: list[str] = []
        self.errors: list[str] = []
        self.keep_bodies = False
        self._waiters: dict[str, asyncio.Future[float]] = {}
        self._count_target = 0
        self._count_time = 0.0
        self._count_event = asyncio.Event()

    def arrived(self, body: str, t: float) -> None:
        self.count += 1
        if self.keep_bodies:
            self.bodies.append(body)
        waiter = self._waiters.pop(body, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(t)
        if self._count_target and self.count >= self._count_target and not self._count_time:
            self._count_time = t
            self._count_event.set()

    def reset(self) -> None:
        self.count = 0
        self.bodies.clear()
        self._count_target = 0
        self._count_time = 0.0
        self._count_event.clear()

    async def wait_count(self, n: int, timeout: float) -> float:
        """Wait until ``n`` messages arrived (since :meth:`reset`); when the n-th did."""
        self._count_target = n
        if self.count >= n and not self._count_time:
            self._count_time = time.perf_counter()
            self._count_event.set()
        await bounded(self._count_event.wait(), timeout, f"{n} messages in the child")
        return self._count_time


class RemoteReceiver:
    """A child process (this script, ``--receiver-child``) holding the pair's receiving
    clients: raw b and MLS bob, each started by :meth:`request`. It reports every
    arrival as one JSON line on its stdout, with its own ``perf_counter()``."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.pid = proc.pid
        self.sink = RemoteSink()
        self.joined: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._replies: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._raw: dict[str, float] = {}
        self._raw_waiters: dict[str, asyncio.Future[float]] = {}
        self._reader = asyncio.ensure_future(self._read())

    @classmethod
    async def start(cls, server: ProsodyServer) -> RemoteReceiver:
        argv = [sys.executable, str(Path(__file__).resolve()), "--receiver-child",
                server.host, str(server.c2s_port)]
        if CLIENT_STORE_DIR is not None:
            argv += ["--store-dir", str(CLIENT_STORE_DIR)]
        if UPDATE_JOIN_DELAY is not None:
            argv += ["--update-join-delay", str(UPDATE_JOIN_DELAY)]
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            limit=1 << 20)
        return cls(proc)

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            ev = json.loads(line)
            kind = ev["ev"]
            if kind == "msg":
                self.sink.arrived(ev["body"], ev["t"])
            elif kind == "raw":
                waiter = self._raw_waiters.pop(ev["id"], None)
                if waiter is not None and not waiter.done():
                    waiter.set_result(ev["t"])
                else:
                    self._raw[ev["id"]] = ev["t"]
            elif kind == "joined":
                if not self.joined.done():
                    self.joined.set_result(ev["epoch"])
            elif kind == "error":
                self.sink.errors.append(ev["reason"])
                log(f"  ! mls_error in the child: {ev['reason']}")
            else:
                await self._replies.put(ev)
        await self._replies.put({"ev": "exit"})

    async def request(self, op: str, **kw: Any) -> dict[str, Any]:
        """Send a command; its reply (``ready``), or RuntimeError."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"op": op, **kw}).encode() + b"\n")
        await self.proc.stdin.drain()
        reply = await bounded(self._replies.get(), SETUP_TIMEOUT, f"the child's {op}")
        if reply["ev"] != "ready":
            raise RuntimeError(f"the child's {op}: {reply}")
        return reply

    async def raw_arrival(self, stanza_id: str) -> float:
        """When the child's raw client had the stanza (its perf_counter())."""
        t = self._raw.pop(stanza_id, None)
        if t is not None:
            return t
        fut: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self._raw_waiters[stanza_id] = fut
        return await bounded(fut, MESSAGE_TIMEOUT, f"raw {stanza_id} in the child")

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.request("close"), 30.0)
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
        await self.proc.wait()
        self._reader.cancel()
        with contextlib.suppress(BaseException):
            await self._reader


async def receiver_child(host: str, port: int) -> None:
    """``--receiver-child``: the clients :class:`RemoteReceiver` asks for; one JSON
    line per event on stdout, commands as JSON lines on stdin."""
    from types import SimpleNamespace

    server: Any = SimpleNamespace(host=host, c2s_port=port)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 20)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    out = sys.stdout

    def emit(**ev: Any) -> None:
        out.write(json.dumps(ev) + "\n")
        out.flush()

    class ChildSink(Sink):
        def _on_message(self, event: Any) -> None:
            emit(ev="msg", body=event.body, t=time.perf_counter())

        def _on_error(self, event: Any) -> None:
            emit(ev="error", reason=str(event.reason))

        def _on_joined(self, event: Any) -> None:
            session = event.group

            async def ready() -> None:
                await session.ready.wait()
                emit(ev="joined", epoch=session.epoch)
            asyncio.ensure_future(ready())

    clients = Clients()
    try:
        while line := await reader.readline():
            cmd = json.loads(line)
            op = cmd["op"]
            if op == "close":
                break
            if op == "raw":
                b = await connect_client(server, cmd["jid"], cmd["password"],
                                         timeout=CONNECT_TIMEOUT)
                clients.all.append(b)
                b.register_handler(Callback(
                    "bench raw arrival", MatchXPath(f"{{{b.default_ns}}}message/{{{NS}}}mls"),
                    lambda msg: emit(ev="raw", id=msg["id"], t=time.perf_counter())))
                await join_room(b, cmd["room"], "b", timeout=MESSAGE_TIMEOUT)
            elif op == "mls":
                await mls_client(server, Account(cmd["jid"], cmd["password"]), clients,
                                 sink_class=ChildSink)
            emit(ev="ready", op=op)
    finally:
        await clients.close()
        emit(ev="closed")


def child_main(argv: list[str]) -> int:
    """The entry of ``--receiver-child HOST PORT [--store-dir D] [--update-join-delay S]``."""
    global CLIENT_STORE_DIR, UPDATE_JOIN_DELAY
    p = argparse.ArgumentParser()
    p.add_argument("--receiver-child", nargs=2, metavar=("HOST", "PORT"), required=True)
    p.add_argument("--store-dir", type=Path)
    p.add_argument("--update-join-delay", type=float)
    args = p.parse_args(argv)
    CLIENT_STORE_DIR = args.store_dir
    UPDATE_JOIN_DELAY = args.update_join_delay
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    asyncio.run(receiver_child(args.receiver_child[0], int(args.receiver_child[1])))
    return 0


# -- main -------------------------------------------------------------------------------


async def run_all(server: ProsodyServer, args: argparse.Namespace) -> dict[str, Any]:
    cpu = CpuMeter(server)
    t0 = time.perf_counter()
    accounts = [server.create_account(p) for p in
                ["raw-a", "raw-b", "alice", "bob"] + ["ten"] * 11]
    results: dict[str, Any] = {"create_15_accounts_s": round(time.perf_counter() - t0, 3)}
    clients = Clients()
    try:
        log(f"[1-3] raw and MLS pair: latency ({args.messages} each, interleaved), "
            "one-sender throughput")
        results.update(await bench_pair(server, accounts[0:4], clients, cpu, args))
        await clients.close()
        log(f"[4] MLS group of 11: ten senders ({args.messages // 10 * 10} messages)")
        results["mls_ten"] = await bench_ten(server, accounts[4:15], clients, cpu, args)
    finally:
        await clients.close()
    return results


def table(r: dict[str, Any]) -> str:
    raw, mls, ten = r["raw"], r["mls"], r["mls_ten"]
    rl, ml = raw["latency"], mls["latency"]
    t1r, t1m = raw["throughput_one_sender"], mls["throughput_one_sender"]
    t10, t10d = ten["throughput_ten_senders"], ten["throughput_ten_senders_receiver_only"]
    g1, g10 = mls["group_setup_1_member"], ten["group_setup_10_members"]

    def cpu(t: dict[str, Any]) -> str:
        return (f"  [CPU/msg: clients {t['clients_cpu_ms_per_msg']:.2f} ms,"
                f" Prosody {t['prosody_cpu_ms_per_msg']:.2f} ms]")

    rows = [
        ("stanza size, raw / MLS (characters, median)",
         f"{raw.get('stanza_chars_median', 0):.0f} / {mls.get('stanza_chars_median', 0):.0f}"),
        ("raw groupchat round trip, median / p95",
         f"{rl['median_ms']:.2f} / {rl['p95_ms']:.2f} ms"),
        ("MLS send -> decrypted, median / p95",
         f"{ml['median_ms']:.2f} / {ml['p95_ms']:.2f} ms"),
        ("overhead ratio MLS / raw, median / p95",
         f"{ml['median_ms'] / rl['median_ms']:.2f}x / {ml['p95_ms'] / rl['p95_ms']:.2f}x"),
        ("medians when first / second in the pair",
         "raw {} / {} ms, MLS {} / {} ms".format(
             *(f"{x[k]:.2f}" for x in (raw["latency_by_position_median_ms"],
                                       mls["latency_by_position_median_ms"])
               for k in ("first in pair", "second in pair")))),
        ("raw throughput, one sender", f"{t1r['msgs_per_s']:.0f} msg/s" + cpu(t1r)),
        ("MLS throughput, one sender", f"{t1m['msgs_per_s']:.0f} msg/s" + cpu(t1m)),
        *((("MLS throughput, one sender, n send() at once",
            f"{t1b['msgs_per_s']:.0f} msg/s" + cpu(t1b)
            + ("" if t1b.get("in_order") else "  (OUT OF ORDER)")),)
          if (t1b := mls.get("throughput_one_sender_burst")) else ()),
        *((("MLS throughput, one sender, send(durable=False)",
            f"{t1n['msgs_per_s']:.0f} msg/s" + cpu(t1n)
            + f"  (all stored after {t1n['stored_s']:.2f} s)"),)
          if (t1n := mls.get("throughput_one_sender_nodurable")) else ()),
        ("MLS throughput, ten senders", f"{t10['msgs_per_s']:.0f} msg/s" + cpu(t10)),
        ("  (every member has every message)", f"after {t10['all_members_s']:.2f} s,"
         f" {t10['decryptions']} decryptions in this process"),
        ("MLS throughput, ten senders, receiver only",
         f"{t10d['msgs_per_s']:.0f} msg/s" + cpu(t10d)),
        ("group creation, 1 member, until ready",
         f"{g1['all_joined_and_ready_s'] * 1000:.0f} ms"
         f" (create_group returned after {g1['create_group_s'] * 1000:.0f} ms)"),
        ("group creation, 10 members, until all ready",
         f"{g10['all_joined_and_ready_s'] * 1000:.0f} ms"
         f" (create_group returned after {g10['create_group_s'] * 1000:.0f} ms)"),
        ("client start, 2 / 11 at once (connect, KeyPackages)",
         f"{mls['client_start_s_2_concurrent']:.2f} s /"
         f" {ten['client_start_s_11_concurrent']:.2f} s"),
    ]
    width = max(len(k) for k, _ in rows)
    lines = [f"{k:<{width}}  {v}" for k, v in rows]
    lines.append("")
    lines.append("MLS round trip, timeline (medians, ms after send() was called):")
    for k, v in mls["latency_timeline_median_ms"].items():
        lines.append(f"  {k:<{width - 2}}  {v:8.3f}")
    lines.append("MLS round trip, CPU components (medians per message, ms):")
    for k, v in mls["latency_components_median_ms"].items():
        lines.append(f"  {k:<{width - 2}}  {v:8.3f}")
    errors = mls["errors"] + ten["errors"]
    lines.append(f"mls_error events: {errors}")
    if "superseded_handshakes" in ten:
        lines.append("Commits/proposals of an ended epoch dropped quietly (ten senders): "
                     f"{ten['superseded_handshakes']}")
    return "\n".join(lines)


def main(argv: Iterable[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--messages", type=int, default=200, help="N per step (default 200)")
    p.add_argument("--warmup", type=int, default=10,
                   help="unmeasured messages before each latency step (default 10)")
    p.add_argument("--payload-bytes", type=int, default=455,
                   help="raw payload size before base64 (default 455: the Envelope of a "
                        "short MLS application message in a 2-member group)")
    p.add_argument("--storage", choices=("internal", "memory"), default="internal",
                   help="Prosody storage (default internal: files, as deployed)")
    p.add_argument("--client-store", choices=("memory", "sqlite"), default="memory",
                   help="the plugin's store: memory (its default) or an SQLite file per "
                        "client (persistence on, as an application keeps its state)")
    p.add_argument("--settle", type=float, default=1.5,
                   help="seconds to let background work finish after a group setup")
    p.add_argument("--timeout", type=float, default=900.0, help="whole run (default 900 s)")
    p.add_argument("--update-join-delay", type=float, default=None,
                   help="the plugin's update_join_delay (default: the plugin's, 30 s); "
                        "e.g. 1 makes the ten members' updates after joining race")
    p.add_argument("--raw-shape", choices=("payload", "mls"), default="payload",
                   help="raw messages: the payload only (default), or shaped like the MLS "
                        "stanza: with its fallback <body/> and EME element")
    p.add_argument("--receiver-process", action="store_true",
                   help="run the pair's receiving clients (raw and MLS alike) in a process "
                        "of their own (default: every client in this one process)")
    p.add_argument("--switch-interval", type=float, default=None,
                   help="sys.setswitchinterval() for this process, in seconds (an experiment "
                        "on the GIL; default: Python's, 0.005)")
    p.add_argument("--json", type=Path, help="write the results as JSON to this file")
    p.add_argument("--profile", action="store_true",
                   help="profile an extra MLS latency pass with cProfile (stderr)")
    p.add_argument("--profile-messages", type=int, default=100)
    p.add_argument("--profile-top", type=int, default=25)
    p.add_argument("--profile-out", type=Path, help="write the .prof file here")
    args = p.parse_args(list(argv) if argv is not None else None)
    if args.messages < 10:
        p.error("--messages must be at least 10")
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    if args.switch_interval is not None:
        sys.setswitchinterval(args.switch_interval)

    global CLIENT_STORE_DIR, UPDATE_JOIN_DELAY
    UPDATE_JOIN_DELAY = args.update_join_delay
    store_dir = None
    if args.client_store == "sqlite":
        store_dir = tempfile.TemporaryDirectory(prefix="bench-xmpp-store-")
        CLIENT_STORE_DIR = Path(store_dir.name)
    server = ProsodyServer(storage=args.storage)
    t0 = time.perf_counter()
    load_before = os.getloadavg()
    try:
        server.start()
        log(f"Prosody up in {server.start_seconds:.2f} s (storage={args.storage})")
        results = asyncio.run(bounded(run_all(server, args), args.timeout, "the whole run"))
    finally:
        server.stop()
        if store_dir is not None:
            store_dir.cleanup()
    results["total_s"] = round(time.perf_counter() - t0, 2)
    print(table(results))
    if args.json:
        doc = {
            "benchmark": "bench_xmpp",
            "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "environment": {
                "python": platform.python_version(),
                "slixmpp": slixmpp.__version__,
                "machine": platform.machine(),
                "cpus": os.cpu_count(),
                "loadavg_at_start": load_before,
                "loadavg_at_end": os.getloadavg(),
            },
            "results": results,
        }
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
        log(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    if "--receiver-child" in sys.argv[1:]:
        sys.exit(child_main(sys.argv[1:]))
    sys.exit(main())
