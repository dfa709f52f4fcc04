"""``mls-xmpp doctor``: does an XMPP server provide what the MLS mapping needs?

Logs in to an existing account and exercises every server feature the mapping
(docs/PROTOCOL.md, section 3) relies on, rather than trusting service
discovery alone:

* ``login`` -- SASL authentication and resource binding;
* ``stream-management`` -- XEP-0198 is enabled, with resumption (recommended);
* ``stanza-size`` -- a stanza as large as the plugin ever sends (its budget,
  200 KiB) reaches the server and comes back; sent on a second, throw-away
  session, because a server that finds it too large closes that stream;
* ``offline-storage`` -- a Welcome-shaped ``chat`` message to the account's
  bare JID, sent while none of its sessions is available, is delivered (with
  ``<delay/>``) to a session that comes online afterwards;
* ``account-archive`` -- that message is in the account's own MAM archive,
  where devices look for missed Welcomes (recommended);
* ``muc-service`` -- a MUC service on the account's domain (or ``--muc-domain``);
* ``muc-room`` -- a members-only, persistent room can be created and configured,
  and takes member affiliations (the plugin's room membership);
* ``muc-mam`` -- a body-less payload with the store hint is reflected with a
  ``<stanza-id/>`` by the room, and the room's archive returns it under that id;
* ``pep`` -- a PEP node can be published to with publish-options, or else by
  configuring the node first (the fallback the plugin uses);
* ``pep-max-items`` -- the node takes ``pubsub#max_items`` = 100 and keeps
  several items (Prosody caps it at ``pep_max_items``, ejabberd's PEP nodes keep
  one item unless configured);
* ``http-upload`` -- XEP-0363 upload service, a round trip of a small file, and
  a size limit of at least the plugin's part size, 8 MiB (announced, or else a
  slot of that size granted) (recommended).

Each failure comes with the server setting to change for Prosody and for
ejabberd. What the doctor created is removed at the end: the room is destroyed,
the PEP node deleted, the offline message consumed. (An uploaded 32-byte file
stays until the server expires it: XEP-0363 has no delete. The probe message
in the account's own archive stays too.)

Exit status: 0 when every required check passed, 1 when one did not, 2 on bad
options. Use an account with no other client online: such a client would
receive the offline-storage probe instead of the server storing it.
"""

from __future__ import annotations

import asyncio
import getpass
import json
import os
import secrets
import ssl
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, TextIO, cast

import slixmpp
from slixmpp.exceptions import IqError, IqTimeout
from slixmpp.plugins.xep_0004 import Form
from slixmpp.xmlstream import StanzaBase
from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher import MatchXPath

from mls_xmpp.xmpp.delivery import (
    DEFAULT_PART_SIZE,
    DEFAULT_STANZA_BUDGET,
    FALLBACK_BODY,
    join_muc,
)
from mls_xmpp.xmpp.errors import TransportError
from mls_xmpp.xmpp.keystore import DEFAULT_MAX_ITEMS

__all__ = [
    "CHECKS",
    "CheckResult",
    "DoctorOptions",
    "Fix",
    "build_parser",
    "main",
    "run",
]

#: Namespace of the doctor's own probe elements (never sent by the plugin).
NS_DOCTOR = "urn:mls-xmpp:0:doctor"
_NS_STREAMS = "http://etherx.jabber.org/streams"
_NS_LIMITS = "urn:xmpp:stream-limits:0"  # XEP-0478
_NS_HINTS = "urn:xmpp:hints"
_NS_EME = "urn:xmpp:eme:0"
_NS_DELAY = "urn:xmpp:delay"
_NS_SID = "urn:xmpp:sid:0"
_NS_MAM = "urn:xmpp:mam:2"
_NS_FORWARD = "urn:xmpp:forward:0"
_NS_CLIENT = "jabber:client"
_NS_MUC = "http://jabber.org/protocol/muc"
_PUBLISH_OPTIONS = "http://jabber.org/protocol/pubsub#publish-options"
_NODE_CONFIG = "http://jabber.org/protocol/pubsub#node_config"
_FALLBACK_BODY = FALLBACK_BODY
#: ``pubsub#max_items`` the plugin asks for on its KeyPackage node.
PEP_MAX_ITEMS = DEFAULT_MAX_ITEMS
#: The plugin's stanza budget (bytes): the largest stanza it sends.
STANZA_BUDGET = DEFAULT_STANZA_BUDGET
#: The plugin uploads blobs in parts of this size: the upload limit must allow it.
UPLOAD_PART_SIZE = DEFAULT_PART_SIZE
#: Error conditions meaning "publish-options not accepted", as in the plugin's
#: KeyPackage store: ``conflict`` (Prosody: node configured differently),
#: ``resource-constraint`` (ejabberd 23.01: "Unknown field 'pubsub#max_items'"),
#: ``bad-request``/``not-acceptable`` (a field refused), ``feature-not-implemented``.
_OPTIONS_REFUSED = frozenset(
    {"conflict", "bad-request", "not-acceptable", "resource-constraint",
     "feature-not-implemented"})

Result = Literal["pass", "fail", "skip"]


@dataclass(frozen=True)
class Fix:
    """What to change on the server when a check fails."""

    prosody: str
    ejabberd: str


@dataclass(frozen=True)
class CheckSpec:
    """One check: its name, what it verifies, whether the mapping needs it."""

    name: str
    title: str
    required: bool
    fix: Fix


#: Every check, in the order they run and are printed.
CHECKS: tuple[CheckSpec, ...] = (
    CheckSpec("login", "log in (SASL) and bind a resource", True, Fix(
        "the account must exist (prosodyctl adduser JID) and c2s be reachable; "
        "without TLS the client refuses SCRAM unless --plaintext (loopback only)",
        "the account must exist (ejabberdctl register USER HOST PW) and an "
        "ejabberd_c2s listener serve the port")),
    CheckSpec("stream-management", "XEP-0198 stream management with resumption", False, Fix(
        'modules_enabled = { ..., "smacks" } (Prosody 0.12: package prosody-modules; '
        "built in from 0.13)",
        "modules: mod_stream_mgmt: {} (resume_timeout > 0)")),
    CheckSpec("stanza-size", f"a {STANZA_BUDGET}-byte stanza passes the c2s limit", True, Fix(
        "c2s_stanza_size_limit = 262144 (the default; at least 256 KiB)",
        "listen: - module: ejabberd_c2s ... max_stanza_size: 262144 (or more)")),
    CheckSpec("offline-storage", "a chat message to the bare JID is kept while offline", True,
              Fix('modules_enabled = { ..., "offline" } (on by default; not in '
                  "modules_disabled)",
                  "modules: mod_offline: access_max_user_messages: max_user_offline_messages "
                  "(shaper_rules: max_user_offline_messages: 5000 or more)")),
    CheckSpec("account-archive", "the account's MAM archive keeps that message", False, Fix(
        'modules_enabled = { ..., "mam" }; default_archive_policy = true',
        "modules: mod_mam: {default: always, assume_mam_usage: true}")),
    CheckSpec("muc-service", "a MUC (XEP-0045) service", True, Fix(
        'Component "conference.example.org" "muc"',
        'modules: mod_muc: {host: "conference.@HOST@"}')),
    CheckSpec("muc-room", "a members-only, persistent room can be created", True, Fix(
        "under the MUC Component: restrict_room_creation = false (or \"local\")",
        "mod_muc: access_create and access_persistent must allow the account "
        "(e.g. access_persistent: muc_create)")),
    CheckSpec("muc-mam", "the room archives a body-less payload with the store hint", True, Fix(
        'under the MUC Component: modules_enabled = { "muc_mam" }; muc_log_by_default = true',
        "modules: mod_mam: {} and mod_muc: default_room_options: {mam: true}")),
    CheckSpec("pep", "PEP publish with publish-options (or node configuration)", True, Fix(
        'modules_enabled = { ..., "pep" } (on by default)',
        'modules: mod_pubsub: {plugins: ["flat", "pep"]}')),
    CheckSpec("pep-max-items", f"a PEP node keeps {PEP_MAX_ITEMS} items", True, Fix(
        "pep_max_items = 256 (the default; at least 100)",
        'mod_pubsub: max_items_node: 1000 and force_node_config: {"*": {max_items: 1000}} '
        "(PEP nodes keep 1 item otherwise)")),
    CheckSpec("http-upload", "HTTP File Upload (XEP-0363), at least 8 MiB per file", False, Fix(
        'Component "upload.example.org" "http_file_share"; '
        "http_file_share_size_limit = 10*1024*1024 (the default) or more",
        'modules: mod_http_upload: {host: "upload.@HOST@", max_size: 16777216, put_url: ...} '
        "and request_handlers: /upload: mod_http_upload on an ejabberd_http listener")),
)
_SPEC = {spec.name: spec for spec in CHECKS}


@dataclass
class CheckResult:
    """The outcome of one check."""

    name: str
    title: str
    required: bool
    result: Result
    detail: str
    fix: Fix | None = None  #: set when the check did not pass

    @property
    def label(self) -> str:
        """PASS, FAIL (a required check), WARN (a recommended one) or SKIP."""
        if self.result == "pass":
            return "PASS"
        if self.result == "skip":
            return "SKIP"
        return "FAIL" if self.required else "WARN"


@dataclass
class DoctorOptions:
    """What ``mls-xmpp doctor`` was asked to check."""

    account: str
    password: str
    host: str | None = None
    port: int = 5222
    plaintext: bool = False
    tls_verify: bool = True
    muc_domain: str | None = None
    timeout: float = 20.0
    json: bool = False


class _CheckFailed(Exception):
    """A check did not pass; the message is its detail."""


class _Skip(Exception):
    """A check could not run (an earlier one failed); the message says why."""


# -- the checks -----------------------------------------------------------------------


class Doctor:
    """Runs the checks of :data:`CHECKS` for one account."""

    def __init__(self, options: DoctorOptions) -> None:
        self.options = options
        self.jid = slixmpp.JID(options.account)
        self.results: dict[str, CheckResult] = {}
        self.client: slixmpp.ClientXMPP | None = None
        self.features: list[ET.Element] = []  # stream features seen by the main session
        self.token = secrets.token_hex(6)
        self.started = datetime.now(UTC)
        self.muc_service: str | None = None
        self.room: str | None = None
        self.room_created = False
        self.node: str | None = None
        self.offline_id: str | None = None
        self.cleanup_notes: list[str] = []

    # -- plumbing --------------------------------------------------------------------

    def _make_client(self, resource: str) -> slixmpp.ClientXMPP:
        opts = self.options
        client = slixmpp.ClientXMPP(f"{self.jid.bare}/{resource}", opts.password)
        if opts.plaintext:
            client.enable_direct_tls = False
            client.enable_starttls = False
            client.enable_plaintext = True
            _p(client, "feature_mechanisms").unencrypted_scram = True
        elif not opts.tls_verify:
            client.ssl_context.check_hostname = False
            client.ssl_context.verify_mode = ssl.CERT_NONE
        for name in ("xep_0030", "xep_0045", "xep_0060", "xep_0198", "xep_0313", "xep_0363"):
            client.register_plugin(name)
        return client

    async def _connect(self, resource: str, *, features: list[ET.Element] | None = None
                       ) -> slixmpp.ClientXMPP:
        """A session on a new resource, without initial presence."""
        client = self._make_client(resource)
        if features is not None:
            client.register_handler(Callback(
                "doctor stream features", MatchXPath(f"{{{_NS_STREAMS}}}features"),
                lambda stanza: features.append(stanza.xml)))
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = loop.create_future()
        problems: list[str] = []

        def on_start(_: Any) -> None:
            if not ready.done():
                ready.set_result(None)

        def on_auth_failed(_: Any) -> None:
            if not ready.done():
                hint = ("" if self.options.plaintext or _encrypted(client) else
                        " (no TLS: the client does not send a password without it; "
                        "--plaintext allows that, for loopback test servers only)")
                ready.set_exception(_CheckFailed(f"authentication failed{hint}"))

        client.add_event_handler("session_start", on_start)
        client.add_event_handler("failed_all_auth", on_auth_failed)
        client.add_event_handler("connection_failed", lambda e: problems.append(str(e)))
        client.add_event_handler("stream_error", lambda e: problems.append(str(e)))
        if self.options.host is None:
            client.connect()
        else:
            client.connect(self.options.host, self.options.port)
        try:
            await asyncio.wait_for(ready, self.options.timeout)
        except BaseException as e:
            await _disconnect(client)
            if isinstance(e, TimeoutError):
                raise _CheckFailed(
                    f"no session within {self.options.timeout:g} s"
                    + (f" ({'; '.join(problems[-2:])})" if problems else "")) from None
            raise
        return client

    @property
    def main(self) -> slixmpp.ClientXMPP:
        if self.client is None:
            raise _Skip("not logged in")
        return self.client

    def _needs(self, *names: str) -> None:
        for name in names:
            found = self.results.get(name)
            if found is None or found.result != "pass":
                raise _Skip(f"needs {name}")

    async def _iq(self, what: str, request: Awaitable[Any]) -> Any:
        try:
            return await request
        except IqError as e:
            raise _CheckFailed(f"{what}: {_describe(e)}") from None
        except IqTimeout:
            raise _CheckFailed(f"{what}: no answer within {self.options.timeout:g} s") from None

    async def run(self) -> list[CheckResult]:
        """Run every check; clean up afterwards. Returns the results in order."""
        steps: dict[str, Callable[[], Awaitable[str]]] = {
            "login": self.check_login,
            "stream-management": self.check_stream_management,
            "stanza-size": self.check_stanza_size,
            "offline-storage": self.check_offline_storage,
            "account-archive": self.check_account_archive,
            "muc-service": self.check_muc_service,
            "muc-room": self.check_muc_room,
            "muc-mam": self.check_muc_mam,
            "pep": self.check_pep,
            "pep-max-items": self.check_pep_max_items,
            "http-upload": self.check_http_upload,
        }
        assert list(steps) == [spec.name for spec in CHECKS]
        try:
            for spec in CHECKS:
                self.results[spec.name] = await self._one(spec, steps[spec.name])
        finally:
            await self.cleanup()
        return [self.results[spec.name] for spec in CHECKS]

    async def _one(self, spec: CheckSpec, step: Callable[[], Awaitable[str]]) -> CheckResult:
        try:
            # one check gets a few replies' worth of time; none can hang the doctor
            detail = await asyncio.wait_for(step(), 4 * self.options.timeout + 10)
            result: Result = "pass"
        except _Skip as e:
            detail, result = str(e), "skip"
        except _CheckFailed as e:
            detail, result = str(e), "fail"
        except TimeoutError:
            detail, result = "did not finish in time", "fail"
        except Exception as e:  # noqa: BLE001 - any surprise is this check's failure
            detail, result = f"{type(e).__name__}: {e}", "fail"
        return CheckResult(spec.name, spec.title, spec.required, result, detail,
                           None if result == "pass" else spec.fix)

    # -- login and the stream ----------------------------------------------------------

    async def check_login(self) -> str:
        self.client = await self._connect(f"doctor-{self.token}", features=self.features)
        mech = _p(self.client, "feature_mechanisms").mech
        tls = "TLS" if _encrypted(self.client) else "no TLS"
        return f"{self.client.boundjid.full} ({getattr(mech, 'name', '?')}, {tls})"

    async def check_stream_management(self) -> str:
        sm = _p(self.main, "xep_0198")
        offered = any(f.find("{urn:xmpp:sm:3}sm") is not None for f in self.features)
        if not offered:
            raise _CheckFailed("the server does not offer urn:xmpp:sm:3")
        # enabling follows session_start: wait for the server's <enabled/>
        deadline = time.monotonic() + self.options.timeout
        while not sm.enabled_in and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if not sm.enabled_in:
            raise _CheckFailed("offered, but not enabled")
        if not sm.sm_id:
            raise _CheckFailed("enabled without resumption (no resume id)")
        return "enabled, resumable"

    async def check_stanza_size(self) -> str:
        self._needs("login")
        advertised = _advertised_limit(self.features)
        note = (f"server advertises {advertised} bytes (XEP-0478)" if advertised is not None
                else "no limit advertised")
        if advertised is not None and advertised < STANZA_BUDGET:
            raise _CheckFailed(f"{note}, below the plugin's {STANZA_BUDGET}")
        # A stanza over the limit closes the stream that sent it: use a session of its own.
        probe = await self._connect(f"doctor-size-{self.token}")
        try:
            loop = asyncio.get_running_loop()
            outcome: asyncio.Future[str] = loop.create_future()
            marker = secrets.token_hex(8)

            def on_echo(stanza: Any) -> None:
                el = stanza.xml.find(f"{{{NS_DOCTOR}}}size-probe")
                if el is not None and el.get("id") == marker and not outcome.done():
                    outcome.set_result("ok")

            def on_closed(event: Any) -> None:
                if not outcome.done():
                    if isinstance(event, StanzaBase):  # a stream error
                        text = str(event["text"] or "")
                        event = str(event["condition"]) + (f" {text!r}" if text else "")
                    outcome.set_result(f"the server closed the stream ({event})")

            probe.register_handler(Callback(
                "doctor size probe", MatchXPath(f"{{{_NS_CLIENT}}}message/"
                                                f"{{{NS_DOCTOR}}}size-probe"), on_echo))
            probe.add_event_handler("stream_error", on_closed)
            probe.add_event_handler("disconnected", on_closed)
            msg = probe.make_message(mto=probe.boundjid, mtype="normal")
            el = ET.SubElement(msg.xml, f"{{{NS_DOCTOR}}}size-probe", id=marker)
            el.text = "A"
            el.text = "A" * (STANZA_BUDGET - len(str(msg).encode()) + 1)  # exactly the budget
            size = len(str(msg).encode())
            msg.send()
            try:
                result = await asyncio.wait_for(outcome, self.options.timeout)
            except TimeoutError:
                raise _CheckFailed(f"a {size}-byte message to itself did not come back "
                                   f"within {self.options.timeout:g} s ({note})") from None
            if result != "ok":
                raise _CheckFailed(f"a {size}-byte stanza was refused: {result} ({note})")
            return f"a {size}-byte stanza went through; {note}"
        finally:
            await _disconnect(probe)

    async def check_offline_storage(self) -> str:
        """A Welcome-shaped message to the bare JID while no session is available.

        The main session never sent presence, so it is not available: the
        server must store the message. An IQ round trip on the same stream
        afterwards proves the server handled it before the second session logs
        in and announces itself; that one must then receive it, delayed.
        """
        client = self.main
        self.offline_id = f"doctor-offline-{self.token}"
        msg = client.make_message(mto=slixmpp.JID(self.jid.bare), mtype="chat",
                                  mbody=_FALLBACK_BODY)
        msg["id"] = self.offline_id
        ET.SubElement(msg.xml, f"{{{NS_DOCTOR}}}offline-probe").text = self.token
        ET.SubElement(msg.xml, f"{{{_NS_HINTS}}}store")
        ET.SubElement(msg.xml, f"{{{_NS_EME}}}encryption", namespace="urn:mls-xmpp:0",
                      name="MLS")
        msg.send()
        await self._iq("disco#info of the server (to flush the message)",
                       _p(client, "xep_0030").get_info(
                           jid=self.jid.domain, timeout=self.options.timeout))

        second = self._make_client(f"doctor-online-{self.token}")
        loop = asyncio.get_running_loop()
        got: asyncio.Future[Any] = loop.create_future()
        others: set[str] = set()

        def on_probe(stanza: Any) -> None:
            el = stanza.xml.find(f"{{{NS_DOCTOR}}}offline-probe")
            if el is not None and el.text == self.token and not got.done():
                got.set_result(stanza)

        def on_presence(presence: Any) -> None:
            sender = presence["from"]
            if (sender.bare == self.jid.bare and sender.full != second.boundjid.full
                    and presence["type"] not in ("unavailable", "error")):
                others.add(sender.resource)

        second.register_handler(Callback(
            "doctor offline probe",
            MatchXPath(f"{{{_NS_CLIENT}}}message/{{{NS_DOCTOR}}}offline-probe"), on_probe))
        second.add_event_handler("presence", on_presence)
        second.add_event_handler("session_start", lambda _: second.send_presence())
        ready: asyncio.Future[None] = loop.create_future()
        second.add_event_handler(
            "session_start", lambda _: None if ready.done() else ready.set_result(None))
        if self.options.host is None:
            second.connect()
        else:
            second.connect(self.options.host, self.options.port)
        try:
            try:
                await asyncio.wait_for(ready, self.options.timeout)
            except TimeoutError:
                raise _CheckFailed("the second session did not start") from None
            try:
                stanza = await asyncio.wait_for(got, self.options.timeout)
            except TimeoutError:
                busy = (f"; other sessions of the account are online ({', '.join(sorted(others))})"
                        ": they get such messages, so run the doctor on an account nobody "
                        "else uses" if others else "")
                raise _CheckFailed(
                    "the message sent while the account was offline was not delivered to "
                    f"its next session within {self.options.timeout:g} s{busy}") from None
            delayed = stanza.xml.find(f"{{{_NS_DELAY}}}delay") is not None
            return ("stored and delivered to the next session"
                    + (" with <delay/>" if delayed else " (without <delay/>)"))
        finally:
            await _disconnect(second)

    async def check_account_archive(self) -> str:
        if self.offline_id is None:
            raise _Skip("no message was sent to the bare JID")
        iq = await self._iq("MAM query on the account's archive",
                            _p(self.main, "xep_0313").retrieve(
                                start=self.started - timedelta(minutes=10),
                                with_jid=slixmpp.JID(self.jid.bare),
                                timeout=self.options.timeout,
                                rsm={"max": 100}))
        for inner, _ in _mam_results(iq):
            el = inner.find(f"{{{NS_DOCTOR}}}offline-probe")
            if el is not None and el.text == self.token:
                return "the Welcome-shaped message is in the account's archive"
        raise _CheckFailed("the account's archive does not have the message sent to the bare "
                           "JID (devices look there for Welcomes they missed)")

    # -- MUC -------------------------------------------------------------------------

    async def check_muc_service(self) -> str:
        disco = _p(self.main, "xep_0030")
        timeout = self.options.timeout
        candidates = ([self.options.muc_domain] if self.options.muc_domain
                      else [f"conference.{self.jid.domain}"])
        if not self.options.muc_domain:
            items = await self._iq(f"disco#items of {self.jid.domain}", disco.get_items(
                jid=self.jid.domain, timeout=timeout))
            for item in items["disco_items"]["items"]:
                if str(item[0]) not in candidates:
                    candidates.append(str(item[0]))
        for candidate in candidates:
            try:
                info = await disco.get_info(jid=candidate, timeout=timeout)
            except (IqError, IqTimeout):
                continue
            identities = info["disco_info"]["identities"]
            if (_NS_MUC in info["disco_info"]["features"]
                    and any(i[0] == "conference" for i in identities)):
                self.muc_service = candidate
                return candidate
        where = self.options.muc_domain or f"{self.jid.domain} (disco#items)"
        raise _CheckFailed(f"no MUC service found at {where}")

    async def check_muc_room(self) -> str:
        self._needs("muc-service")
        assert self.muc_service is not None
        client = self.main
        self.room = f"mls-doctor-{self.token}@{self.muc_service}"
        timeout = self.options.timeout
        try:
            await join_muc(client, self.room, "doctor", timeout=timeout)
        except TransportError as e:
            raise _CheckFailed(f"creating a room failed: {e}") from None
        self.room_created = True
        muc = _p(client, "xep_0045")
        form = await self._iq("reading the room configuration form",
                              muc.get_room_config(self.room, timeout=timeout))
        fields = form.get_fields()
        wanted: dict[str, Any] = {"muc#roomconfig_membersonly": True,
                                  "muc#roomconfig_persistentroom": True,
                                  "muc#roomconfig_publicroom": False,
                                  "muc#roomconfig_whois": "anyone"}
        for archiving in ("muc#roomconfig_enablearchiving", "mam"):
            if archiving in fields:
                wanted[archiving] = True
        submit = _p(client, "xep_0004").make_form(ftype="submit")
        submit.add_field(var="FORM_TYPE", value="http://jabber.org/protocol/muc#roomconfig",
                         ftype="hidden")
        for var, value in wanted.items():
            if var in fields:
                submit.add_field(var=var, value=value)
        missing = [v for v in ("muc#roomconfig_membersonly", "muc#roomconfig_persistentroom")
                   if v not in fields]
        if missing:
            raise _CheckFailed(f"the room configuration has no {' or '.join(missing)}")
        await self._iq("configuring the room", muc.set_room_config(self.room, submit,
                                                                   timeout=timeout))
        info = await self._iq("disco#info of the room", _p(client, "xep_0030").get_info(
            jid=self.room, timeout=timeout))
        features = set(info["disco_info"]["features"])
        lacking = [f for f in ("muc_membersonly", "muc_persistent") if f not in features]
        if lacking:
            raise _CheckFailed(f"configured, but the room reports no {', '.join(lacking)}")
        # the plugin makes room affiliations follow group membership: grant one, read it
        member = f"mls-doctor-{self.token}@{self.jid.domain}"
        await self._iq(f"making {member} a member", muc.set_affiliation(
            self.room, "member", jid=slixmpp.JID(member), timeout=timeout))
        members = await self._iq("reading the member list", muc.get_affiliation_list(
            self.room, "member", timeout=timeout))
        if member not in {str(slixmpp.JID(j).bare) for j in members}:
            raise _CheckFailed(f"{member} was made a member but is not on the member list")
        return f"{self.room}: members-only, persistent; member affiliation set and listed"

    async def check_muc_mam(self) -> str:
        self._needs("muc-room")
        assert self.room is not None
        client = self.main
        room = self.room
        loop = asyncio.get_running_loop()
        reflected: asyncio.Future[Any] = loop.create_future()
        marker = f"doctor-mam-{self.token}"

        def on_reflection(stanza: Any) -> None:
            if stanza["id"] == marker and not reflected.done():
                reflected.set_result(stanza)

        handler = f"doctor mam {self.token}"
        client.register_handler(Callback(
            handler, MatchXPath(f"{{{_NS_CLIENT}}}message/{{{NS_DOCTOR}}}mam-probe"),
            on_reflection))
        try:
            msg = client.make_message(mto=slixmpp.JID(room), mtype="groupchat")
            msg["id"] = marker
            ET.SubElement(msg.xml, f"{{{NS_DOCTOR}}}mam-probe").text = self.token
            ET.SubElement(msg.xml, f"{{{_NS_HINTS}}}store")
            msg.send()
            try:
                stanza = await asyncio.wait_for(reflected, self.options.timeout)
            except TimeoutError:
                raise _CheckFailed("the room did not reflect a body-less message") from None
        finally:
            client.remove_handler(handler)
        sid = None
        for el in stanza.xml.findall(f"{{{_NS_SID}}}stanza-id"):
            if el.get("by") == room:
                sid = el.get("id")
        info = await self._iq("disco#info of the room", _p(client, "xep_0030").get_info(
            jid=room, timeout=self.options.timeout))
        if _NS_MAM not in info["disco_info"]["features"]:
            raise _CheckFailed(f"the room does not support {_NS_MAM} (no archive)"
                               + ("" if sid else "; reflection without <stanza-id/>"))
        if sid is None:
            raise _CheckFailed("the reflected body-less message with the store hint carries "
                               "no <stanza-id/> by the room (not archived)")
        iq = await self._iq("MAM query on the room", _p(client, "xep_0313").retrieve(
            jid=slixmpp.JID(room), timeout=self.options.timeout))
        for inner, result_id in _mam_results(iq):
            el = inner.find(f"{{{NS_DOCTOR}}}mam-probe")
            if el is not None and el.text == self.token:
                if result_id != sid:
                    raise _CheckFailed(f"archived under id {result_id!r}, but reflected with "
                                       f"stanza-id {sid!r}: they must be equal")
                return "archived body-less message, stanza-id = MAM id"
        raise _CheckFailed("the room's archive does not return the body-less message")

    # -- PEP -------------------------------------------------------------------------

    async def _publish(self, item_id: str, *, options: bool) -> None:
        payload = ET.Element(f"{{{NS_DOCTOR}}}pep-probe")
        payload.text = self.token
        form = _form(_PUBLISH_OPTIONS, {"pubsub#access_model": "open",
                                        "pubsub#max_items": str(PEP_MAX_ITEMS)})
        await _p(self.main, "xep_0060").publish(
            self.jid.bare, self.node, id=item_id, payload=payload,
            options=form if options else None, timeout=self.options.timeout)

    async def check_pep(self) -> str:
        self._needs("login")
        pubsub = _p(self.main, "xep_0060")
        self.node = f"{NS_DOCTOR}:{self.token}"
        try:
            await self._publish("item-1", options=True)
            return "publish-options (access_model open, max_items 100) accepted"
        except IqError as e:
            if _condition(e) not in _OPTIONS_REFUSED:
                raise _CheckFailed(f"publishing failed: {_describe(e)}") from None
            refused = _describe(e)
        except IqTimeout:
            raise _CheckFailed("publishing: no answer") from None
        # the plugin's fallback: configure (create) the node, then publish again
        config = _form(_NODE_CONFIG, {"pubsub#access_model": "open",
                                      "pubsub#max_items": str(PEP_MAX_ITEMS)})
        try:
            await pubsub.get_node_config(self.jid.bare, self.node, timeout=self.options.timeout)
            await self._iq("configuring the node", pubsub.set_node_config(
                self.jid.bare, self.node, config, timeout=self.options.timeout))
        except IqError as e:
            if _condition(e) != "item-not-found":
                raise _CheckFailed(f"publish-options refused ({refused}) and reading the node "
                                   f"configuration failed: {_describe(e)}") from None
            await self._iq(f"publish-options refused ({refused}); creating the node",
                           pubsub.create_node(self.jid.bare, self.node, config=config,
                                              timeout=self.options.timeout))
        try:
            await self._publish("item-1", options=True)
            return f"publish-options refused ({refused}); node configuration works"
        except IqError as e:
            if _condition(e) not in _OPTIONS_REFUSED:
                raise _CheckFailed(f"publishing on the configured node failed: {_describe(e)}"
                                   ) from None
        await self._iq("publishing without publish-options",
                       self._publish("item-1", options=False))
        return (f"publish-options refused ({refused}); node configuration and publishing "
                "without options work")

    async def check_pep_max_items(self) -> str:
        self._needs("pep")
        pubsub = _p(self.main, "xep_0060")
        timeout = self.options.timeout
        for n in (2, 3):
            try:
                await self._publish(f"item-{n}", options=True)
            except IqError:
                await self._iq("publishing", self._publish(f"item-{n}", options=False))
        reply = await self._iq("reading the node configuration", pubsub.get_node_config(
            self.jid.bare, self.node, timeout=timeout))
        values = reply["pubsub_owner"]["configure"]["form"].get_values()
        raw, access = values.get("pubsub#max_items"), values.get("pubsub#access_model")
        items = await self._iq("reading the items", pubsub.get_items(
            self.jid.bare, self.node, timeout=timeout))
        kept = len(items["pubsub"]["items"])
        problems = []
        if not (raw == "max" or (_as_int(raw) or 0) >= PEP_MAX_ITEMS):
            problems.append(f"the node's pubsub#max_items is {raw!r}, not >= {PEP_MAX_ITEMS}")
        if kept < 3:
            problems.append(f"of 3 items published it keeps {kept}")
        if access != "open":
            problems.append(f"pubsub#access_model is {access!r}, not 'open'")
        if problems:
            raise _CheckFailed("; ".join(problems))
        return f"max_items {raw}, access_model open, keeps 3 of 3 items"

    # -- HTTP upload -----------------------------------------------------------------

    async def check_http_upload(self) -> str:
        self._needs("login")
        import aiohttp

        upload = _p(self.main, "xep_0363")
        timeout = self.options.timeout
        info = await self._iq("upload service discovery", upload.find_upload_service(
            timeout=timeout))
        if info is None:
            raise _CheckFailed(f"no upload service (urn:xmpp:http:upload:0) on "
                               f"{self.jid.domain}")
        service = str(info["from"])
        limit: int | None = None
        for form in info["disco_info"].iterables:
            values = form["values"]
            if values.get("FORM_TYPE") == ["urn:xmpp:http:upload:0"]:
                limit = _as_int(values.get("max-file-size"))
        data = secrets.token_bytes(32)
        try:
            url = await upload.upload_file("mls-doctor.bin", size=len(data),
                                           content_type="application/octet-stream",
                                           input_file=_bytes_io(data), timeout=timeout)
        except Exception as e:  # noqa: BLE001 - slixmpp raises many kinds here
            raise _CheckFailed(f"upload to {service} failed: {_describe(e)}") from None
        try:
            async with aiohttp.ClientSession() as session, session.get(
                    url, timeout=aiohttp.ClientTimeout(total=timeout)) as response:
                body = await response.read()
                status = response.status
        except (aiohttp.ClientError, TimeoutError) as e:
            raise _CheckFailed(f"uploaded, but downloading {url} failed: {e!r}") from None
        if status != 200 or body != data:
            raise _CheckFailed(f"uploaded, but GET {url} returned {status} and "
                               f"{len(body)} bytes, not the 32 uploaded")
        size = f"limit {_mib(limit)}" if limit is not None else "no size limit announced"
        if limit is not None and limit < UPLOAD_PART_SIZE:
            raise _CheckFailed(f"{service}: {size}, below the plugin's part size "
                               f"{_mib(UPLOAD_PART_SIZE)}")
        if limit is None:  # ask for (and leave unused) a slot of the plugin's part size
            try:
                await upload.request_slot(slixmpp.JID(service), "mls-doctor-part.bin",
                                          UPLOAD_PART_SIZE, timeout=timeout)
            except IqError as e:
                raise _CheckFailed(f"{service}: {size}, and a slot for "
                                   f"{_mib(UPLOAD_PART_SIZE)} was refused: {_describe(e)}"
                                   ) from None
            except IqTimeout:
                raise _CheckFailed(f"{service}: no answer to a slot request") from None
            size += f"; a slot for {_mib(UPLOAD_PART_SIZE)} was granted"
        self.cleanup_notes.append(f"a 32-byte upload stays at {url} until the server "
                                  "expires it")
        return f"{service}: {size}; upload and download round trip OK"

    # -- clean-up --------------------------------------------------------------------

    async def cleanup(self) -> None:
        """Destroy the room, delete the node, close the session (best effort)."""
        client, self.client = self.client, None
        if client is None:
            return
        timeout = self.options.timeout
        try:
            if self.room is not None and self.room_created:
                try:
                    await _p(client, "xep_0045").destroy(self.room, "mls-xmpp doctor",
                                                            timeout=timeout)
                except (IqError, IqTimeout) as e:
                    self.cleanup_notes.append(f"room {self.room} not destroyed: "
                                              f"{_describe(e)}")
            if self.node is not None:
                try:
                    await _p(client, "xep_0060").delete_node(self.jid.bare, self.node,
                                                                timeout=timeout)
                except IqError as e:
                    if _condition(e) != "item-not-found":
                        self.cleanup_notes.append(f"PEP node {self.node} not deleted: "
                                                  f"{_describe(e)}")
                except IqTimeout:
                    self.cleanup_notes.append(f"PEP node {self.node} not deleted: timeout")
        finally:
            await _disconnect(client)


# -- helpers ---------------------------------------------------------------------------


def _p(client: slixmpp.ClientXMPP, name: str) -> Any:
    """``client.plugin[name]`` as ``Any`` (slixmpp's plugin types are partial)."""
    return cast(Any, client.plugin)[name]


def _encrypted(client: slixmpp.ClientXMPP) -> bool:
    return isinstance(getattr(client, "socket", None), ssl.SSLSocket | ssl.SSLObject) or (
        "starttls" in client.features)


async def _disconnect(client: slixmpp.ClientXMPP, timeout: float = 5.0) -> None:
    # slixmpp leaves its outgoing-filter task behind: end it here, or it is
    # garbage-collected while pending ("Task was destroyed but it is pending!")
    filters = getattr(client, "_run_out_filters", None)
    try:
        await asyncio.wait_for(client.disconnect(wait=timeout / 2), timeout)
    except (TimeoutError, Exception):  # noqa: BLE001 - closing is best effort
        pass
    finally:
        client.abort()
    if isinstance(filters, asyncio.Future):
        filters.cancel()
        await asyncio.gather(filters, return_exceptions=True)


def _advertised_limit(features: Sequence[ET.Element]) -> int | None:
    for feats in features:
        el = feats.find(f"{{{_NS_LIMITS}}}limits/{{{_NS_LIMITS}}}max-bytes")
        if el is not None and el.text and el.text.strip().isdigit():
            return int(el.text.strip())
    return None


def _mam_results(iq: Any) -> list[tuple[ET.Element, str]]:
    """(archived message, result id) for each result of a MAM query."""
    out = []
    for result_msg in iq["mam"]["results"]:
        result = result_msg.xml.find(f"{{{_NS_MAM}}}result")
        if result is None:
            continue
        inner = result.find(f"{{{_NS_FORWARD}}}forwarded/{{{_NS_CLIENT}}}message")
        if inner is not None:
            out.append((inner, result.get("id", "")))
    return out


def _form(form_type: str, values: dict[str, str]) -> Any:
    """A submitted data form (XEP-0004; slixmpp's ``Form``, untyped)."""
    form = cast(Any, Form)()
    form["type"] = "submit"
    form.add_field(var="FORM_TYPE", ftype="hidden", value=form_type)
    for var, value in values.items():
        form.add_field(var=var, value=value)
    return form


def _condition(error: IqError) -> str:
    return str(error.iq["error"]["condition"])


def _describe(error: BaseException) -> str:
    if isinstance(error, IqError):
        text = str(error.iq["error"]["text"] or "").strip()
        return f"{error.iq['error']['type']}/{_condition(error)}" + (f" {text!r}" if text
                                                                      else "")
    if isinstance(error, IqTimeout):
        return "no answer"
    return f"{type(error).__name__}: {error}".rstrip(": ")


def _as_int(value: Any) -> int | None:
    try:
        return int(str(value))
    except (TypeError, ValueError):
        return None


def _mib(size: int) -> str:
    return f"{size} bytes ({size / 1048576:.1f} MiB)"


def _bytes_io(data: bytes) -> Any:
    import io

    return io.BytesIO(data)


# -- output ------------------------------------------------------------------------------


def exit_status(results: Sequence[CheckResult]) -> int:
    """0 when every required check passed, else 1."""
    return 0 if all(r.result == "pass" for r in results if r.required) else 1


def render_table(options: DoctorOptions, results: Sequence[CheckResult],
                 notes: Sequence[str] = ()) -> str:
    """The human-readable report: a table, the fixes, the verdict."""
    where = (f"{options.host}:{options.port}" if options.host else "DNS SRV")
    tls = "no TLS" if options.plaintext else (
        "TLS" if options.tls_verify else "TLS, certificate not verified")
    lines = [f"mls-xmpp doctor: {options.account} via {where} ({tls})", ""]
    width = max(len(r.name) for r in results)
    lines.append(f"{'check'.ljust(width)}  {'needed'.ljust(11)}  result  detail")
    for r in results:
        need = "required" if r.required else "recommended"
        lines.append(f"{r.name.ljust(width)}  {need.ljust(11)}  {r.label.ljust(6)}  {r.detail}")
    fixes = [r for r in results if r.result == "fail" and r.fix is not None]
    if fixes:
        lines += ["", "To fix:"]
        for r in fixes:
            assert r.fix is not None
            lines += [f"  {r.name} ({r.title}):",
                      f"    Prosody:  {r.fix.prosody}",
                      f"    ejabberd: {r.fix.ejabberd}"]
    if notes:
        lines += ["", "Left behind:"] + [f"  {n}" for n in notes]
    required = [r for r in results if r.required]
    passed = sum(r.result == "pass" for r in required)
    missing = [r.name for r in results if not r.required and r.result != "pass"]
    lines += ["", f"{passed}/{len(required)} required checks passed"
              + (f"; recommended but missing: {', '.join(missing)}" if missing else "")]
    failed = [r.name for r in required if r.result != "pass"]
    lines.append("doctor: OK" if not failed else
                 f"doctor: FAILED (required: {', '.join(failed)})")
    return "\n".join(lines)


def render_json(options: DoctorOptions, results: Sequence[CheckResult],
                notes: Sequence[str] = ()) -> str:
    """The report as JSON: ``ok``, ``checks`` (name, title, required, result, detail, fix)."""
    checks = []
    for r in results:
        item = asdict(r)
        item["label"] = r.label
        checks.append(item)
    return json.dumps({
        "account": options.account,
        "server": f"{options.host}:{options.port}" if options.host else None,
        "ok": exit_status(results) == 0,
        "checks": checks,
        "left_behind": list(notes),
    }, indent=2)


def run(options: DoctorOptions, stream: TextIO | None = None) -> int:
    """Run the doctor and print its report; returns the exit status (0 or 1)."""
    out = stream if stream is not None else sys.stdout

    async def go() -> tuple[list[CheckResult], list[str]]:
        doctor = Doctor(options)
        results = await doctor.run()
        # end what slixmpp left running for the closed sessions before the loop closes
        leftover = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in leftover:
            task.cancel()
        await asyncio.gather(*leftover, return_exceptions=True)
        return results, doctor.cleanup_notes

    results, notes = asyncio.run(go())
    text = (render_json if options.json else render_table)(options, results, notes)
    print(text, file=out, flush=True)
    return exit_status(results)


# -- command line ------------------------------------------------------------------------

DOCTOR_EPILOG = """Checks what the MLS mapping needs from the server, by using it: a room is
created, configured and archived to; a PEP node published to; a file uploaded;
a message sent to the account's bare JID while it is offline; a large stanza
sent on a throw-away second session. The room and the node are removed again.
Use an account that no other client has online at the time.

Exit status: 0 when every required check passed, 1 when one did not, 2 on bad
options. docs/SERVERS.md lists the settings for Prosody and ejabberd.
"""


def build_parser(parser: Any) -> Any:
    """Add the doctor's options to ``parser`` (an argparse parser or sub-parser)."""
    parser.add_argument("--server", metavar="HOST[:PORT]",
                        help="connect here (default port 5222; default: DNS SRV of the JID)")
    parser.add_argument("--account", metavar="JID", required=True,
                        help="an existing account, user@domain")
    parser.add_argument("--password", metavar="PW",
                        help="its password (default: $MLS_XMPP_PASSWORD, else asked)")
    parser.add_argument("--muc-domain", metavar="D",
                        help="the MUC service (default: found by disco on the domain)")
    parser.add_argument("--plaintext", action="store_true",
                        help="no TLS at all (loopback test servers only)")
    parser.add_argument("--no-tls-verify", action="store_true",
                        help="accept any TLS certificate (self-signed test servers)")
    parser.add_argument("--timeout", type=float, default=20.0, metavar="SECONDS",
                        help="seconds to wait for each reply (default 20)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    return parser


def options_from(ns: Any) -> DoctorOptions:
    """:class:`DoctorOptions` from parsed arguments.

    :raises ValueError: an option is unusable (the message says which).
    """
    from mls_xmpp.demo import DemoError, parse_server

    jid = slixmpp.JID(ns.account) if ns.account else None
    if jid is None or not jid.user or jid.resource:
        raise ValueError(f"--account wants a bare JID user@domain, not {ns.account!r}")
    host, port = None, 5222
    if ns.server:
        try:
            host, port = parse_server(ns.server)
        except DemoError as e:
            raise ValueError(str(e)) from None
    password = ns.password or os.environ.get("MLS_XMPP_PASSWORD")
    if not password:
        if not sys.stdin.isatty():
            raise ValueError("give --password (or $MLS_XMPP_PASSWORD)")
        password = getpass.getpass(f"password for {jid.bare}: ")
    if ns.timeout <= 0:
        raise ValueError("--timeout must be positive")
    return DoctorOptions(account=str(jid.bare), password=password, host=host, port=port,
                         plaintext=ns.plaintext, tls_verify=not ns.no_tls_verify,
                         muc_domain=ns.muc_domain, timeout=ns.timeout, json=ns.json)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m mls_xmpp.doctor``: the same as ``mls-xmpp doctor``."""
    import argparse

    parser = build_parser(argparse.ArgumentParser(
        prog="mls-xmpp doctor", epilog=DOCTOR_EPILOG,
        description="Check that an XMPP server provides what MLS over XMPP needs.",
        formatter_class=argparse.RawDescriptionHelpFormatter))
    ns = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        options = options_from(ns)
    except ValueError as e:
        parser.error(str(e))
    return run(options)


if __name__ == "__main__":
    sys.exit(main())
