"""``mls-xmpp demo``: the architecture's scenario, end to end, with readable output.

Four devices (alice, bob, charlie, dave) use the slixmpp plugin; the XMPP
server is the MLS Delivery Service (RFC 9750): PEP nodes hold KeyPackages, one
MUC room per group orders and fans out handshake and application messages, its
MAM archive serves members who were offline, offline storage keeps Welcomes.

Steps (each checked; the first failure stops the run, clean-up always runs):

1. the Delivery Service is up; every device publishes KeyPackages to PEP, then
   dave goes offline;
2. alice creates a group with bob and charlie: room, epoch, members with device
   fingerprints, and one ``epoch_authenticator`` on all three devices;
3. alice, bob and charlie each send a message that the other two read; what the
   server stored (the room's MAM archive) holds ciphertext only;
4. bob updates his keys: the epoch advances and all agree;
5. alice removes charlie: charlie is told, and cannot read what follows;
6. alice adds dave while he is offline and the group talks; dave comes online
   (new XMPP session, same device state), reads exactly the messages meant for
   him, in order, and replies.

By default a throw-away Prosody is started on loopback
(:class:`mls_xmpp.testing.ProsodyServer`), with fresh accounts. With
``--server``/``--account`` the same steps run against an existing server and
accounts, which must exist already (the demo never registers accounts there).

:func:`run` returns the exit status: 0 only when every step passed.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import re
import ssl
import sys
import time
import traceback
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

import slixmpp

import mls_xmpp  # noqa: F401 - registers the "mls" slixmpp plugin
from mls_xmpp.core.errors import MLSError
from mls_xmpp.core.group.client import Client
from mls_xmpp.storage import MemoryStore
from mls_xmpp.testing import Account, ClientError, ProsodyError, ProsodyServer, disconnect_client
from mls_xmpp.xmpp.delivery import FALLBACK_BODY
from mls_xmpp.xmpp.envelope import Envelope, Kind
from mls_xmpp.xmpp.errors import TransportError
from mls_xmpp.xmpp.keystore import NODE
from mls_xmpp.xmpp.session import GroupSession
from mls_xmpp.xmpp.trust import fingerprint

__all__ = ["NAMES", "DemoError", "DemoOptions", "StepFailed", "parse_account", "run"]

#: The demo's cast, in the order they appear.
NAMES = ("alice", "bob", "charlie", "dave")
#: Seconds to wait before concluding that a removed member got nothing more.
QUIET_PERIOD = 0.5

ARCHIVING = "muc#roomconfig_enablearchiving"
MEMBERS_ONLY = "muc#roomconfig_membersonly"
PERSISTENT = "muc#roomconfig_persistentroom"
WHOIS = "muc#roomconfig_whois"

_EVENTS = ("mls_message", "mls_membership", "mls_joined", "mls_removed", "mls_error")


class DemoError(ValueError):
    """The demo's options are unusable; the message says why."""


class StepFailed(Exception):
    """A step's check did not hold; the message says which."""


# -- options --------------------------------------------------------------------------


@dataclass(frozen=True)
class DemoOptions:
    """What ``mls-xmpp demo`` was asked to do (see :func:`run`).

    ``accounts`` empty means: start the embedded Prosody and create accounts.
    Otherwise it maps every name of :data:`NAMES` to an existing account, and
    ``server`` is ``(host, port)`` or ``None`` (DNS SRV of each JID's domain).
    """

    server: tuple[str, int] | None = None
    accounts: dict[str, Account] = field(default_factory=dict)
    muc_domain: str | None = None
    plaintext: bool = False
    tls_verify: bool = True
    quiet: bool = False
    verbose: bool = False
    keep: bool = False
    step_timeout: float = 30.0
    fail_at: int | None = None

    @property
    def embedded(self) -> bool:
        """True when the demo starts its own Prosody."""
        return not self.accounts

    @classmethod
    def build(
        cls,
        *,
        server: str | None = None,
        domain: str | None = None,
        muc_domain: str | None = None,
        accounts: Sequence[str] = (),
        plaintext: bool = False,
        tls_verify: bool = True,
        quiet: bool = False,
        verbose: bool = False,
        keep: bool = False,
        step_timeout: float = 30.0,
        fail_at: int | None = None,
    ) -> DemoOptions:
        """Check command-line values and make options from them.

        :raises DemoError: the combination is unusable (the message says why).
        """
        if step_timeout <= 0:
            raise DemoError("--timeout must be positive")
        parsed: dict[str, Account] = {}
        for spec in accounts:
            name, account = parse_account(spec, domain)
            if name in parsed:
                raise DemoError(f"--account {name}=... given twice")
            parsed[name] = account
        host_port = None if server is None else parse_server(server)
        existing = bool(parsed) or host_port is not None
        if existing:
            missing = [n for n in NAMES if n not in parsed]
            if missing:
                raise DemoError(
                    "on an existing server the demo uses four existing accounts; missing "
                    + ", ".join(f"--account {n}=JID:PASSWORD" for n in missing))
            if keep:
                raise DemoError("--keep applies to the embedded server only")
            jids = [a.jid for a in parsed.values()]
            if len(set(jids)) != len(jids):
                raise DemoError("the four accounts must be different JIDs")
        elif domain is not None or muc_domain is not None:
            raise DemoError("--domain and --muc-domain apply to an existing server "
                            "(with --account)")
        elif plaintext or not tls_verify:
            raise DemoError("--plaintext and --no-tls-verify apply to an existing server")
        if fail_at is not None and not 1 <= fail_at <= len(STEP_TITLES):
            raise DemoError(f"--fail-at must be 1..{len(STEP_TITLES)}")
        return cls(server=host_port, accounts=parsed, muc_domain=muc_domain,
                   plaintext=plaintext, tls_verify=tls_verify, quiet=quiet, verbose=verbose,
                   keep=keep, step_timeout=step_timeout, fail_at=fail_at)


def parse_account(spec: str, domain: str | None = None) -> tuple[str, Account]:
    """``NAME=JID:PASSWORD`` as ``(name, Account)``.

    The JID ends at the first ``:`` (a JID's local part cannot hold one), so
    the password may contain colons. A JID without ``@`` is a local part on
    ``domain``.

    :raises DemoError: malformed, an unknown name, or a local part without domain.
    """
    name, sep, rest = spec.partition("=")
    jid, sep2, password = rest.partition(":")
    name, jid = name.strip().lower(), jid.strip()
    if not sep or not sep2 or not jid or not password:
        raise DemoError(f"--account wants NAME=JID:PASSWORD, not {spec!r}")
    if name not in NAMES:
        raise DemoError(f"--account name must be one of {', '.join(NAMES)}, not {name!r}")
    if "@" not in jid:
        if domain is None:
            raise DemoError(f"--account {name}: {jid!r} is not a bare JID (or give --domain)")
        jid = f"{jid}@{domain}"
    bare = slixmpp.JID(jid)
    if not bare.user or bare.resource:
        raise DemoError(f"--account {name}: {jid!r} is not a bare JID user@domain")
    return name, Account(str(bare.bare), password)


def parse_server(value: str) -> tuple[str, int]:
    """``HOST[:PORT]`` (port 5222 by default; ``[v6]:PORT`` for IPv6 literals)."""
    m = re.fullmatch(r"\[(?P<v6>[^\]]+)\](?::(?P<p6>\d+))?|(?P<host>[^:\s]+)(?::(?P<port>\d+))?",
                     value.strip())
    if m is None:
        raise DemoError(f"--server wants HOST:PORT, not {value!r}")
    host = m["v6"] or m["host"]
    port = int(m["p6"] or m["port"] or 5222)
    if not 0 < port < 65536:
        raise DemoError(f"--server port {port} is out of range")
    return host, port


# -- output ---------------------------------------------------------------------------


class Output:
    """Numbered steps, indented details, ✔/✘ marks (OK/FAILED where unprintable)."""

    def __init__(self, quiet: bool = False, stream: TextIO | None = None) -> None:
        self.quiet = quiet
        self.stream = stream if stream is not None else sys.stdout
        try:
            "✔✘→·…".encode(getattr(self.stream, "encoding", None) or "ascii")
            self.ok, self.bad, self.arrow, self.dots = "✔", "✘", "→", "…"
        except (UnicodeEncodeError, LookupError):
            self.ok, self.bad, self.arrow, self.dots = "OK", "FAILED", "->", "..."

    def line(self, text: str = "", *, always: bool = False) -> None:
        """One line; in quiet mode only when ``always``."""
        if always or not self.quiet:
            print(text, file=self.stream, flush=True)

    def detail(self, text: str) -> None:
        """An indented detail line of the current step."""
        self.line(f"      {text}")

    def check(self, text: str) -> None:
        """A detail line for a check that held."""
        self.detail(f"{self.ok} {text}")


class Recorder:
    """Collects one client's ``mls_*`` events; waits on conditions over them."""

    def __init__(self, client: Any) -> None:
        self.events: dict[str, list[Any]] = defaultdict(list)
        self._cond = asyncio.Condition()
        for name in _EVENTS:
            client.add_event_handler(name, self._handler(name))

    def _handler(self, name: str) -> Callable[[Any], Awaitable[None]]:
        async def handler(event: Any) -> None:
            async with self._cond:
                self.events[name].append(event)
                self._cond.notify_all()
        return handler

    def bodies(self) -> list[str]:
        """Bodies of the application messages received, in order."""
        return [e.body for e in self.events["mls_message"]]

    async def wait_until(self, predicate: Callable[[], bool], what: str,
                         timeout: float) -> None:
        """Wait until ``predicate()`` holds (checked after every event).

        :raises StepFailed: it did not within ``timeout`` seconds.
        """
        async with self._cond:
            try:
                await asyncio.wait_for(self._cond.wait_for(predicate), timeout)
            except TimeoutError:
                raise StepFailed(f"{what}: not within {timeout:g} s") from None

    async def wait(self, name: str, count: int, what: str, timeout: float) -> list[Any]:
        """Wait for at least ``count`` events ``name``; returns them all."""
        await self.wait_until(lambda: len(self.events[name]) >= count, what, timeout)
        return list(self.events[name])


@dataclass
class Device:
    """One person's device: MLS identity and state survive XMPP sessions."""

    name: str
    account: Account
    core: Client | None  #: None until the plugin made (or recovered) the identity
    store: MemoryStore = field(default_factory=MemoryStore)
    xmpp: Any = None  #: the connected slixmpp client, while online
    rec: Recorder | None = None  #: events of the current session
    sessions: int = 0  #: XMPP sessions opened so far

    @property
    def jid(self) -> str:
        """The account's bare JID."""
        return self.account.jid

    @property
    def fingerprint(self) -> str:
        """The device fingerprint members see (of its signature key)."""
        if self.core is None:
            raise StepFailed(f"{self.name} has no identity yet")
        return fingerprint(self.core.signature_public_key)

    @property
    def mls(self) -> Any:
        """The connected client's ``mls`` plugin."""
        if self.xmpp is None:
            raise StepFailed(f"{self.name} is offline")
        return self.xmpp.plugin["mls"]

    @property
    def events(self) -> Recorder:
        """The recorder of the current session."""
        if self.rec is None:
            raise StepFailed(f"{self.name} has not been online")
        return self.rec


# -- the scenario ---------------------------------------------------------------------

STEP_TITLES = (
    "Delivery Service up; every device publishes KeyPackages",
    "alice creates a group with bob and charlie",
    "messages every way, and what the server could see",
    "bob updates his keys",
    "alice removes charlie",
    "dave, offline when added, catches up and replies",
    "bob's device loses its state and rejoins",
)


@dataclass
class StepResult:
    """How one step went."""

    number: int
    title: str
    ok: bool | None = None  #: None: not run
    seconds: float = 0.0
    reason: str = ""


class Demo:
    """Runs the steps; every step raises on the first check that does not hold."""

    def __init__(self, options: DemoOptions, out: Output) -> None:
        self.options = options
        self.out = out
        self.timeout = options.step_timeout
        self.server: ProsodyServer | None = None
        self.devices: dict[str, Device] = {}
        self.group: dict[str, GroupSession] = {}  #: each member's session of the group
        self.room = ""
        self.host: str | None = None
        self.port: int | None = None
        self.errors: list[tuple[str, str]] = []  #: (device, reason) of mls_error events
        self.results = [StepResult(i, t) for i, t in enumerate(STEP_TITLES, 1)]
        self._dave_meant: list[str] = []  #: bodies dave must read, in room order
        self._charlie_seen = 0
        self.steps: list[Callable[[], Awaitable[None]]] = [
            self.step_keypackages, self.step_create_group, self.step_messages,
            self.step_update, self.step_remove, self.step_offline_member,
            self.step_state_loss,
        ]

    # -- helpers -----------------------------------------------------------------

    def _t(self, t0: float) -> str:
        return f"{time.monotonic() - t0:.2f} s"

    async def connect(self, device: Device) -> None:
        """Open an XMPP session for ``device``, with the plugin started."""
        opts = self.options
        client = slixmpp.ClientXMPP(device.jid, device.account.password)
        if opts.embedded or opts.plaintext:
            # the embedded Prosody listens on loopback without TLS
            client.enable_direct_tls = False
            client.enable_starttls = False
            client.enable_plaintext = True
            client.plugin["feature_mechanisms"].unencrypted_scram = True
        elif not opts.tls_verify:
            client.ssl_context.check_hostname = False
            client.ssl_context.verify_mode = ssl.CERT_NONE
        client.register_plugin("xep_0199")
        config: dict[str, Any] = {"store": device.store, "device": f"{device.name}-device"}
        if device.core is not None:
            config["client"] = device.core
        if opts.muc_domain:
            config["muc_domain"] = opts.muc_domain
        client.register_plugin("mls", config)
        rec = Recorder(client)
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = loop.create_future()
        problems: list[str] = []

        def on_ready(_: Any) -> None:
            if not ready.done():
                ready.set_result(None)

        def on_auth_failed(_: Any) -> None:
            if ready.done():
                return
            secure = ("starttls" in client.features
                      or isinstance(client.socket, ssl.SSLSocket | ssl.SSLObject))
            hint = ("" if secure or opts.embedded or opts.plaintext else
                    " (the server offered no TLS and the client will not authenticate "
                    "without it; --plaintext allows that, for loopback test servers only)")
            ready.set_exception(StepFailed(f"{device.jid}: authentication failed{hint}"))

        def on_error(event: Any) -> None:
            reason = str(getattr(event, "reason", event))
            self.errors.append((device.name, reason))
            problems.append(reason)

        client.add_event_handler("mls_ready", on_ready)
        client.add_event_handler("failed_all_auth", on_auth_failed)
        client.add_event_handler("connection_failed", lambda e: problems.append(str(e)))
        client.add_event_handler("session_start", lambda _: client.send_presence())
        client.add_event_handler("mls_error", on_error)
        if self.host is None:
            client.connect()
        else:
            client.connect(self.host, self.port)
        try:
            await asyncio.wait_for(ready, self.timeout)
        except BaseException as e:
            await disconnect_client(client, timeout=2.0)
            if isinstance(e, TimeoutError):
                raise StepFailed(
                    f"{device.jid}: not connected and ready within {self.timeout:g} s"
                    + (f" ({'; '.join(problems[-2:])})" if problems else "")) from None
            raise
        device.xmpp, device.rec = client, rec
        device.sessions += 1

    async def disconnect(self, device: Device) -> None:
        """Close ``device``'s XMPP session (its MLS state stays)."""
        client, device.xmpp = device.xmpp, None
        if client is not None:
            await disconnect_client(client)

    def _agree(self, names: Sequence[str]) -> bytes:
        """Check the named members share epoch and epoch_authenticator; return it."""
        sessions = [self.group[n] for n in names]
        epochs = {s.epoch for s in sessions}
        auths = {s.group.epoch_authenticator for s in sessions}
        if len(epochs) != 1 or len(auths) != 1:
            shown = ", ".join(f"{n}: epoch {s.epoch} {s.group.epoch_authenticator.hex()[:12]}"
                              for n, s in zip(names, sessions, strict=True))
            raise StepFailed(f"members disagree on the group state ({shown})")
        (auth,) = auths
        self.out.check(f"epoch {sessions[0].epoch}, epoch_authenticator "
                       f"{auth.hex()[:16]}{self.out.dots} identical on {_and(names)}")
        return auth

    async def _show_room_config(self) -> None:
        """The room's configuration as the server reports it to its owner, alice."""
        muc = self.devices["alice"].xmpp.plugin["xep_0045"]
        form = await muc.get_room_config(self.room, timeout=self.timeout)
        fields = form.get_fields()

        def value(var: str) -> Any:
            return fields[var]["value"] if var in fields else None

        def yes(var: str) -> str:
            v = value(var)
            return "?" if v is None and var not in fields else ("yes" if v else "no")

        out = self.out
        out.detail(f"room configuration (server's view): archived {yes(ARCHIVING)}, members-only "
                   f"{yes(MEMBERS_ONLY)}, persistent {yes(PERSISTENT)}, "
                   f"real JIDs visible to {value(WHOIS) or '?'}")
        if ARCHIVING in fields and not value(ARCHIVING):
            raise StepFailed("the room is not archived: members who were offline could not "
                             "catch up")
        if MEMBERS_ONLY in fields and not value(MEMBERS_ONLY):
            out.detail("! the room is open, not members-only: whoever knows its JID can join "
                       "and read the (encrypted) traffic")

    def _occupants(self) -> set[str]:
        """Bare JIDs of the room's occupants as alice's client knows them."""
        muc = self.devices["alice"].xmpp.plugin["xep_0045"]
        room = slixmpp.JID(self.room)
        found = set()
        for nick in muc.get_roster(room):
            jid = muc.get_jid_property(room, nick, "jid")
            found.add(str(slixmpp.JID(str(jid)).bare) if jid else f"nick:{nick}")
        return found

    def _name_of(self, jid: str) -> str:
        return next((n for n, d in self.devices.items() if d.jid == jid), jid)

    def _show_members(self, session: GroupSession) -> None:
        self.out.detail("members (leaf, JID, device fingerprint):")
        width = max(len(jid) for jid, _, _ in session.members)
        for jid, fp, leaf in sorted(session.members, key=lambda m: m[2]):
            self.out.detail(f"  {leaf}  {jid:<{width}}  {fp}")

    def _check_roster(self, names: Sequence[str]) -> None:
        """The group holds exactly these people, each with their demo device among them."""
        session = next(iter(self.group.values()))
        jids = {jid for jid, _, _ in session.members}
        wanted = {self.devices[n].jid for n in names}
        if jids != wanted:
            raise StepFailed(f"the group holds {sorted(jids)}, expected {sorted(wanted)}")
        devices = {(jid, fp) for jid, fp, _ in session.members}
        for n in names:
            d = self.devices[n]
            if (d.jid, d.fingerprint) not in devices:
                raise StepFailed(f"{n}'s device {d.fingerprint} is not in the group")

    async def _make_contacts(self) -> None:
        """Each user asks every other for a presence subscription; slixmpp approves and
        asks back (its defaults). Waits until every roster shows a mutual subscription."""
        devices = list(self.devices.values())
        for i, a in enumerate(devices):
            for b in devices[i + 1:]:
                a.xmpp.send_presence(pto=b.jid, ptype="subscribe")
        deadline = time.monotonic() + self.timeout
        while not all(a.mls.is_mutual_contact(b.jid) for a in devices for b in devices
                      if a is not b):
            if time.monotonic() > deadline:
                raise StepFailed("the users did not become contacts of each other in time")
            await asyncio.sleep(0.05)

    async def _send_and_deliver(self, sender: str, body: str, receivers: Sequence[str]) -> Any:
        """``sender`` sends ``body``; every receiver reads it, authenticated as the sender."""
        t0 = time.monotonic()
        counts = {r: len(self.devices[r].events.bodies()) for r in receivers}
        await self.group[sender].send(body)
        event: Any = None
        for r in receivers:
            dev = self.devices[r]
            events = await dev.events.wait("mls_message", counts[r] + 1,
                                           f"{r} receiving {sender}'s message", self.timeout)
            got = events[counts[r]]
            if got.body != body:
                raise StepFailed(f"{r} read {got.body!r}, expected {body!r}")
            if got.sender != self.devices[sender].jid or got.device != \
                    self.devices[sender].fingerprint:
                raise StepFailed(f"{r} saw the message as from {got.sender} ({got.device})")
            event = got
        marks = " ".join(f"{r} {self.out.ok}" for r in receivers)
        self.out.detail(f"{sender:<7} {self.out.arrow} group: {body!r:<28} read by {marks} "
                        f"({(time.monotonic() - t0) * 1000:.0f} ms)")
        return event

    async def _wait_epoch(self, names: Sequence[str], epoch: int, what: str) -> list[Any]:
        """Wait until each named member was told of the Commit to ``epoch``; those events."""
        told = []
        for n in names:
            rec = self.devices[n].events

            def reached(r: Recorder = rec) -> bool:
                return any(e.epoch >= epoch for e in r.events["mls_membership"])

            await rec.wait_until(reached, f"{n} {what}", self.timeout)
            told.append(next(e for e in rec.events["mls_membership"] if e.epoch >= epoch))
        return told

    # -- step 1 --------------------------------------------------------------------

    async def step_keypackages(self) -> None:
        out, opts = self.out, self.options
        if opts.embedded:
            self.server = ProsodyServer(keep_directory=opts.keep)
            await asyncio.to_thread(self.server.start)
            srv = self.server
            self.host, self.port = srv.host, srv.c2s_port
            out.detail(f"embedded Prosody (pid {srv.pid}) ready in {srv.start_seconds:.2f} s on "
                       f"{srv.host}:{srv.c2s_port}: domain {srv.domain}, rooms (MUC + MAM) on "
                       f"{srv.muc_domain}, PEP, offline storage")
            accounts = {}
            for name in NAMES:
                accounts[name] = await asyncio.to_thread(
                    srv.create_user, name, f"demo-{os.urandom(6).hex()}")
            out.detail("accounts created: " + ", ".join(a.jid for a in accounts.values()))
        else:
            accounts = dict(opts.accounts)
            if opts.server is not None:
                self.host, self.port = opts.server
            where = "DNS SRV" if opts.server is None else f"{self.host}:{self.port}"
            tls = ("no TLS" if opts.plaintext
                   else "TLS" + ("" if opts.tls_verify else ", certificate not verified"))
            out.detail(f"existing server via {where} ({tls}); accounts must exist: "
                       + ", ".join(a.jid for a in accounts.values()))
        for name in NAMES:
            jid = accounts[name].jid
            self.devices[name] = Device(name, accounts[name], Client.generate(jid.encode()))

        t0 = time.monotonic()
        outcomes = await asyncio.gather(*(self.connect(d) for d in self.devices.values()),
                                        return_exceptions=True)
        for outcome in outcomes:  # every attempt has ended: the connected ones get closed
            if isinstance(outcome, BaseException):
                raise outcome
        out.detail(f"4 devices connected, plugin started, KeyPackages published "
                   f"({self._t(t0)}); PEP node {NODE}:")
        width = max(len(d.jid) for d in self.devices.values())
        for d in self.devices.values():
            keystore = d.mls.keystore
            items = await keystore.own_items()
            last_resort = sum(1 for i in items if i.last_resort)
            if not items or not all(i.usable for i in items) or last_resort < 1:
                raise StepFailed(f"{d.name}'s node holds {len(items)} items of this device "
                                 f"({last_resort} last-resort); expected usable ones")
            others = await keystore.fetch(d.jid)  # other devices of the account
            note = f"; plus {len(others)} other device(s) of this account" if others else ""
            out.detail(f"  {d.jid:<{width}}  device {d.fingerprint}  {len(items)} items "
                       f"({len(items) - last_resort} + {last_resort} last-resort){note}")
        t0 = time.monotonic()
        await self._make_contacts()
        out.detail(f"everyone adds everyone as a contact (presence subscriptions, approved both "
                   f"ways; {self._t(t0)}): by default a device joins only groups its contacts "
                   f"add it to")
        await self.disconnect(self.devices["dave"])
        out.detail("dave goes offline; his device keeps its identity and KeyPackage keys")

    # -- step 2 --------------------------------------------------------------------

    async def step_create_group(self) -> None:
        out = self.out
        alice, bob, charlie = (self.devices[n] for n in ("alice", "bob", "charlie"))
        t0 = time.monotonic()
        self.group["alice"] = await alice.mls.create_group(members=[bob.jid, charlie.jid])
        for d in (bob, charlie):
            (joined,) = await d.events.wait("mls_joined", 1, f"{d.name} joining", self.timeout)
            session = joined.group
            await asyncio.wait_for(session.ready.wait(), self.timeout)
            self.group[d.name] = session
        ga = self.group["alice"]
        self.room = ga.room
        out.detail(f"room {self.room}")
        out.detail(f"bob and charlie got their Welcome and joined ({self._t(t0)})")
        await self._show_room_config()
        self._show_members(ga)
        self._check_roster(("alice", "bob", "charlie"))
        for n in ("bob", "charlie"):
            if self.group[n].room != self.room:
                raise StepFailed(f"{n} joined {self.group[n].room}, not {self.room}")
        self._agree(("alice", "bob", "charlie"))

    # -- step 3 --------------------------------------------------------------------

    async def step_messages(self) -> None:
        out = self.out
        trio = ("alice", "bob", "charlie")
        sent: list[tuple[str, str, str | None]] = []  # sender, body, room stanza-id
        for sender, body in (("alice", "Hello bob and charlie!"),
                             ("bob", "Hi alice, bob here."),
                             ("charlie", "charlie says hi to you both")):
            event = await self._send_and_deliver(sender, body, [n for n in trio if n != sender])
            sent.append((sender, body, event.stanza_id))

        archive = await self.devices["alice"].mls.delivery.fetch_archive(self.room)
        by_id = {sid: msg for msg, sid in archive if sid}
        kinds = Counter(Envelope.from_base64(_payload(m)).kind.name for m, _ in archive)
        out.detail(f"what the server could see: the room archive (MAM, read by alice) holds "
                   f"{len(archive)} MLS stanzas ("
                   + ", ".join(f"{k} {v}" for k, v in sorted(kinds.items())) + "):")
        width = max(len(slixmpp.JID(str(m["from"])).resource) for m, _ in archive)
        for sender, body, sid in sent:
            msg = by_id.get(sid) if sid else None
            if msg is None:
                raise StepFailed(f"{sender}'s message (stanza-id {sid}) is not in the archive")
            stanza = str(msg)
            env = Envelope.from_base64(_payload(msg))
            if env.kind != Kind.APPLICATION:
                raise StepFailed(f"{sender}'s archived stanza carries {env.kind.name}")
            if body in stanza or body.encode() in env.mls_message:
                raise StepFailed(f"the plaintext of {sender}'s message is in the archive")
            nick = slixmpp.JID(str(msg["from"])).resource
            out.detail(f"  from {nick:<{width}}  {env.kind.name} epoch {env.epoch}: "
                       f"{len(env.mls_message)} B MLS ciphertext in a {len(stanza.encode())} B "
                       f"stanza; plaintext not in it {out.ok}")
        out.detail(f"  readable to the server: occupant nick, kind, epoch, group id, sizes, "
                   f"and the fallback body {FALLBACK_BODY!r}")

    # -- step 4 --------------------------------------------------------------------

    async def step_update(self) -> None:
        out = self.out
        gb = self.group["bob"]
        before_epoch, before_auth = gb.epoch, gb.group.epoch_authenticator
        before_key = _leaf_key(gb)
        t0 = time.monotonic()
        await gb.update()
        told = await self._wait_epoch(("alice", "charlie"), before_epoch + 1,
                                      "seeing bob's Commit")
        after_key = _leaf_key(gb)
        out.detail(f"bob committed an empty Commit with a fresh path ({self._t(t0)}): epoch "
                   f"{before_epoch} {out.arrow} {gb.epoch}")
        out.detail(f"bob's leaf encryption key {before_key} {out.arrow} {after_key}")
        if gb.epoch != before_epoch + 1 or before_key == after_key:
            raise StepFailed("bob's update did not advance the epoch with a fresh leaf key")
        for n, event in zip(("alice", "charlie"), told, strict=True):
            if (event.epoch != gb.epoch or event.committer != self.devices["bob"].jid
                    or event.added or event.removed):
                raise StepFailed(f"{n} was told of another change: {event}")
        out.check("alice and charlie were told (mls_membership): bob committed, "
                  "nobody added or removed")
        auth = self._agree(("alice", "bob", "charlie"))
        if auth == before_auth:
            raise StepFailed("the epoch_authenticator did not change")
        await self._send_and_deliver("alice", "Got your new keys, bob.", ["bob", "charlie"])

    # -- step 5 --------------------------------------------------------------------

    async def step_remove(self) -> None:
        out = self.out
        ga, gc = self.group["alice"], self.group["charlie"]
        charlie = self.devices["charlie"]
        before = ga.epoch
        t0 = time.monotonic()
        await ga.remove(charlie.jid)
        await charlie.events.wait("mls_removed", 1, "charlie being told of his removal",
                                  self.timeout)
        await self._wait_epoch(("bob",), before + 1, "seeing charlie's removal")
        out.detail(f"alice removed charlie: epoch {before} {out.arrow} {ga.epoch} "
                   f"({self._t(t0)}); charlie got mls_removed, his device is no longer active")
        if gc.group.active:
            raise StepFailed("charlie's group state is still active")
        del self.group["charlie"]
        self._check_roster(("alice", "bob"))
        self._agree(("alice", "bob"))

        self._charlie_seen = len(charlie.events.bodies())
        dropped = len(charlie.events.events["mls_error"])
        body = "Just between us, bob."
        event = await self._send_and_deliver("alice", body, ["bob"])
        await asyncio.sleep(QUIET_PERIOD)
        now = len(charlie.events.bodies())
        if now != self._charlie_seen:
            raise StepFailed(f"charlie read {now - self._charlie_seen} message(s) after removal")
        out.check(f"charlie's received messages: still {now}")
        if charlie.jid in self._occupants():
            dropped = len(charlie.events.events["mls_error"]) - dropped
            out.detail(f"! charlie is still an occupant of the room: his device got the new "
                       f"stanzas and dropped {dropped} it could not process")
        else:
            out.check("the server took charlie out of the room (affiliation follows membership)")
        # even holding the ciphertext (here: taken from the archive), charlie has no key
        archive = await self.devices["alice"].mls.delivery.fetch_archive(self.room)
        msg = next((m for m, sid in archive if sid == event.stanza_id), None)
        if msg is None:
            raise StepFailed("alice's last message is not in the archive")
        env = Envelope.from_base64(_payload(msg))
        try:
            gc.group.process(env.mls_message)
        except MLSError as e:
            out.check(f"given the archived ciphertext (epoch {env.epoch}), charlie's device, "
                      f"whose keys end at epoch {gc.epoch}, cannot read it "
                      f"({type(e).__name__}: {e})")
        else:
            raise StepFailed("charlie's old state processed a message sent after his removal")

    # -- step 6 --------------------------------------------------------------------

    async def step_offline_member(self) -> None:
        out = self.out
        ga = self.group["alice"]
        dave, charlie = self.devices["dave"], self.devices["charlie"]
        before = ga.epoch
        t0 = time.monotonic()
        await ga.add(dave.jid)
        await self._wait_epoch(("bob",), before + 1, "seeing dave's addition")
        out.detail(f"alice added dave (offline) with a KeyPackage from his PEP node: epoch "
                   f"{before} {out.arrow} {ga.epoch} ({self._t(t0)}); his Welcome waits in "
                   f"the server's offline storage")
        self._check_roster(("alice", "bob", "dave"))
        meant = [("alice", "Welcome, dave!"), ("bob", "Hi dave, charlie has left.")]
        for sender, body in meant:
            receivers = [n for n in ("alice", "bob") if n != sender]
            await self._send_and_deliver(sender, body, receivers)
        self._dave_meant = [b for _, b in meant]

        t0 = time.monotonic()
        await self.connect(dave)
        (joined,) = await dave.events.wait("mls_joined", 1, "dave joining from his Welcome",
                                           self.timeout)
        gd = joined.group
        await asyncio.wait_for(gd.ready.wait(), self.timeout)
        self.group["dave"] = gd
        await dave.events.wait("mls_message", len(self._dave_meant),
                               "dave reading the messages he missed", self.timeout)
        got = dave.events.bodies()
        out.detail(f"dave online again (XMPP session {dave.sessions}, same device state): "
                   f"Welcome from offline storage, {len(got)} message(s) from the room archive "
                   f"({self._t(t0)})")
        for e in dave.events.events["mls_message"]:
            out.detail(f"  dave read {self._name_of(e.sender):<7} {e.body!r}")
        await asyncio.sleep(QUIET_PERIOD)  # nothing more may trickle in
        got = dave.events.bodies()
        if got != self._dave_meant:
            raise StepFailed(f"dave read {got}, expected exactly {self._dave_meant}")
        out.check("exactly the messages sent since he was added, in order "
                  "(nothing from before)")
        self._agree(("alice", "bob", "dave"))
        await self._send_and_deliver("dave", "Thanks, glad to be here.", ["alice", "bob"])
        if len(charlie.events.bodies()) != self._charlie_seen:
            raise StepFailed("charlie read messages after his removal")
        out.check(f"charlie's received messages: still {self._charlie_seen}")

    async def step_state_loss(self) -> None:
        out = self.out
        bob = self.devices["bob"]
        old = bob.fingerprint
        await self.disconnect(bob)
        bob.core, bob.store = None, MemoryStore()
        out.detail(f"bob's device is wiped: its keys and group state are gone (device {old})")
        await self._send_and_deliver("alice", "Is bob still there?", ["dave"])
        t0 = time.monotonic()
        await self.connect(bob)
        (joined,) = await bob.events.wait("mls_joined", 1, "bob rejoining", self.timeout)
        gb = joined.group
        await asyncio.wait_for(gb.ready.wait(), self.timeout)
        self.group["bob"] = gb
        bob.core = bob.mls.identity
        await self._wait_epoch(("alice", "dave"), gb.epoch, "seeing bob's rejoin")
        out.detail(f"bob, with a new identity ({bob.fingerprint}), found the group in his "
                   f"account's private PEP node and the latest GroupInfo in the room archive, "
                   f"and rejoined by external Commit removing his old leaf ({self._t(t0)})")
        self._check_roster(("alice", "bob", "dave"))
        if any(fp == old for _, fp, _ in gb.members):
            raise StepFailed("bob's old device is still in the group")
        out.check("alice and dave accepted him as bob; his old device is gone from the group")
        self._agree(("alice", "bob", "dave"))
        await self._send_and_deliver("bob", "Sorry, my phone was wiped.", ["alice", "dave"])
        await self._send_and_deliver("alice", "No harm done.", ["bob", "dave"])

    # -- running and stopping ---------------------------------------------------------

    async def run(self) -> None:
        """Every step in order until one fails (see :attr:`results`); clean-up always."""
        out, opts = self.out, self.options
        try:
            for result, step in zip(self.results, self.steps, strict=True):
                out.line()
                out.line(f"[{result.number}/{len(self.results)}] {result.title}")
                t0 = time.monotonic()
                try:
                    await asyncio.wait_for(step(), self.timeout * 3)
                    if opts.fail_at == result.number:
                        raise StepFailed(f"forced failure (--fail-at {result.number})")
                    result.ok = True
                except asyncio.CancelledError:  # Ctrl-C
                    result.ok, result.reason = False, "interrupted"
                    result.seconds = time.monotonic() - t0
                    raise
                except StepFailed as e:
                    result.reason = str(e)
                except TimeoutError:
                    result.reason = f"step timed out after {self.timeout * 3:g} s"
                except (MLSError, TransportError, ClientError, ProsodyError) as e:
                    result.reason = f"{type(e).__name__}: {e}"
                except Exception as e:  # noqa: BLE001 - the demo reports any failure
                    result.reason = f"unexpected {type(e).__name__}: {e}"
                    if opts.verbose:
                        traceback.print_exc()
                result.seconds = time.monotonic() - t0
                if result.ok:
                    out.line(f"  {out.ok} step {result.number} passed ({result.seconds:.2f} s)",
                             always=True)
                else:
                    result.ok = False
                    out.line(f"  {out.bad} step {result.number} FAILED: {result.reason}",
                             always=True)
                    break
        finally:
            out.line()
            await self.stop()

    async def stop(self) -> None:
        """Disconnect every device; on an existing server remove what the demo left;
        stop the embedded Prosody."""
        out = self.out
        online = [d for d in self.devices.values() if d.xmpp is not None]
        if not self.options.embedded:
            await self._tidy_existing_server(online)
        t0 = time.monotonic()
        outcomes = await asyncio.gather(*(self.disconnect(d) for d in online),
                                        return_exceptions=True)
        for d, outcome in zip(online, outcomes, strict=True):
            if isinstance(outcome, Exception):
                out.line(f"  ! disconnecting {d.name}: {type(outcome).__name__}: {outcome}",
                         always=True)
        msg = f"stopped: {len(online)} client(s) disconnected ({self._t(t0)})"
        if self.server is not None:
            await asyncio.to_thread(self.server.stop)
            msg += f", Prosody stopped ({self.server.stop_seconds or 0:.2f} s)"
            if self.options.keep and self.server.keep_directory:
                msg += f"; its directory is kept: {self.server.directory}"
        out.line(msg)

    async def _tidy_existing_server(self, online: list[Device]) -> None:
        """Destroy the demo's room and retract this run's KeyPackages (best effort)."""
        alice = self.devices.get("alice")
        for d in online:  # forget the room in each account's private groups node
            if self.room:
                try:
                    await d.mls.registry.remove(self.room)
                except Exception as e:  # noqa: BLE001 - best effort
                    self.out.line(f"  ! forgetting the room for {d.name}: {e}", always=True)
        if self.room and alice is not None and alice.xmpp is not None:
            try:
                await alice.xmpp.plugin["xep_0045"].destroy(self.room, "demo finished",
                                                            timeout=self.timeout)
                self.out.line(f"room {self.room} destroyed")
            except Exception as e:  # noqa: BLE001 - best effort
                self.out.line(f"  ! destroying the room: {type(e).__name__}: {e}", always=True)
        if not online:
            return
        retracted = 0
        for d in online:
            try:
                keystore = d.mls.keystore
                for item in await keystore.own_items():
                    retracted += await keystore.retract(item.ref, forget=True)
            except Exception as e:  # noqa: BLE001 - best effort
                self.out.line(f"  ! retracting {d.name}'s KeyPackages: {e}", always=True)
        self.out.line(f"{retracted} KeyPackage(s) of this run retracted from PEP")


def _payload(msg: Any) -> str:
    el = msg.xml.find("{urn:mls-xmpp:0}mls")
    return "" if el is None else str(el.text or "")


def _leaf_key(session: GroupSession) -> str:
    leaf = session.group.state.tree.leaf(session.group.own_leaf_index)
    key = b"" if leaf is None else leaf.encryption_key
    return hashlib.sha256(key).hexdigest()[:12]


def _and(names: Sequence[str]) -> str:
    return ", ".join(names[:-1]) + " and " + names[-1] if len(names) > 1 else "".join(names)


# -- entry point ----------------------------------------------------------------------


def run(options: DemoOptions, stream: TextIO | None = None) -> int:
    """Run the demo; 0 only when every step passed, 1 otherwise."""
    logging.basicConfig(
        level=logging.DEBUG if options.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not options.verbose:  # the demo reports failures itself; slixmpp's own lines add noise
        logging.getLogger("slixmpp").setLevel(logging.CRITICAL)
    out = Output(options.quiet, stream)
    where = ("an embedded Prosody on loopback" if options.embedded
             else "an existing server with existing accounts")
    out.line("mls-xmpp demo: MLS (RFC 9420) group messaging through XMPP, the server as the "
             f"Delivery Service ({where})", always=True)
    t0 = time.monotonic()
    demo = Demo(options, out)
    interrupted = False
    try:
        asyncio.run(demo.run())
    except KeyboardInterrupt:
        interrupted = True
    finally:
        if demo.server is not None:
            demo.server.stop()  # idempotent; asyncio.run may have been cut short
    elapsed = time.monotonic() - t0
    results = demo.results
    passed = sum(1 for r in results if r.ok)
    ok = not interrupted and passed == len(results)

    out.line()
    out.line(f"Summary: {passed}/{len(STEP_TITLES)} steps passed in {elapsed:.1f} s", always=True)
    for r in results:
        mark = out.ok if r.ok else (out.bad if r.ok is False else "-")
        took = f"{r.seconds:5.2f} s" if r.ok is not None else "not run"
        out.line(f"  {mark:<2} {r.number}. {r.title:<56} {took}")
    if demo.errors:
        out.line(f"  note: {len(demo.errors)} input(s) dropped by a device (mls_error events):")
        for (name, reason), count in Counter(demo.errors).most_common(10):
            out.line(f"        {name} {count}x: {reason}")
    if ok:
        out.line(f"demo: OK {out.ok} every step passed ({elapsed:.1f} s)", always=True)
        return 0
    failed = next((r for r in results if r.ok is False), None)
    if interrupted:
        reason = "interrupted"
    elif failed is not None:
        reason = f"step {failed.number} ({failed.title}): {failed.reason}"
    else:
        reason = "not every step ran"
    out.line(f"demo: FAILED {out.bad} {reason}", always=True)
    return 1
