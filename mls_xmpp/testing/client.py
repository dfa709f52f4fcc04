"""slixmpp clients for a test server (:class:`~mls_xmpp.testing.server.XmppServer`).

Helpers used by the integration tests and ``mls-xmpp demo``; every wait has a
timeout so a broken server fails fast instead of hanging.

Server behaviour these helpers encode (Prosody 0.12):

* Loopback is plaintext: slixmpp must be told to allow SCRAM without TLS
  (``unencrypted_scram``), and with STARTTLS, direct TLS *and* plaintext all
  disabled it silently never connects.
* slixmpp's XEP-0045 plugin raises ``groupchat_message`` only for messages with
  a ``<body/>``; body-less payloads are caught with a stanza handler
  (:class:`PayloadInbox`).
* A body-less message is archived (MAM) and gets a ``<stanza-id/>`` only when it
  carries ``<store xmlns='urn:xmpp:hints'/>`` (:func:`send_payload` adds it).
* A new room stays locked (others get ``item-not-found``) until its owner
  submits the configuration form (:func:`create_room` does).
"""

from __future__ import annotations

import asyncio
import base64
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from types import TracebackType
from typing import Any, NamedTuple, cast

import slixmpp
from slixmpp.exceptions import IqTimeout
from slixmpp.stanza import Message
from slixmpp.types import MessageTypes
from slixmpp.xmlstream import StanzaBase
from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher import MatchXPath

from .server import XmppServer

__all__ = [
    "DEFAULT_PLUGINS",
    "NS_HINTS",
    "NS_MAM",
    "NS_PAYLOAD",
    "NS_SID",
    "PAYLOAD_ELEMENT",
    "ArchivedMessage",
    "ClientError",
    "PayloadInbox",
    "connect_client",
    "create_room",
    "disconnect_client",
    "join_room",
    "payload_of",
    "room_archive",
    "send_payload",
    "stanza_id",
]

#: The project's namespace for MLS payloads in stanzas.
NS_PAYLOAD = "urn:mls-xmpp:0"
#: Element name of the payload (base64 text).
PAYLOAD_ELEMENT = "mls"
#: XEP-0334 message processing hints.
NS_HINTS = "urn:xmpp:hints"
#: XEP-0359 unique and stable stanza IDs.
NS_SID = "urn:xmpp:sid:0"
#: XEP-0313 message archive management.
NS_MAM = "urn:xmpp:mam:2"
_NS_FORWARD = "urn:xmpp:forward:0"
_NS_CLIENT = "jabber:client"

#: Plugins loaded by :func:`connect_client` unless told otherwise.
DEFAULT_PLUGINS = ("xep_0030", "xep_0045", "xep_0313", "xep_0359")


class ClientError(RuntimeError):
    """A test client could not connect, authenticate, or finish a request in time."""


class ArchivedMessage(NamedTuple):
    """One message from a MAM result page."""

    archive_id: str  #: the result's id: the archive's stanza-id of the message
    sender: str  #: ``from`` of the archived message (occupant JID for rooms)
    payload: str | None  #: text of the ``urn:mls-xmpp:0`` payload, if any
    message: ET.Element  #: the archived ``<message/>``


def _plugin(client: slixmpp.ClientXMPP, name: str) -> Any:
    """``client[name]`` as ``Any``: plugin classes are not typed by name."""
    return cast(Any, client.plugin)[name]


async def connect_client(
    server: XmppServer,
    jid: str,
    password: str,
    *,
    plugins: Iterable[str] = DEFAULT_PLUGINS,
    timeout: float = 10.0,
    send_presence: bool = True,
) -> slixmpp.ClientXMPP:
    """Connect a slixmpp client to ``server`` and wait for ``session_start``.

    Plaintext SCRAM on loopback, as the server offers no TLS. Must be awaited
    inside the running event loop the client will use.

    :param plugins: slixmpp plugins to register before connecting.
    :param send_presence: send initial presence once the session started.
    :raises ClientError: authentication failed or no session within ``timeout``.
    """
    client = slixmpp.ClientXMPP(jid, password)
    client.enable_direct_tls = False
    client.enable_starttls = False
    client.enable_plaintext = True
    _plugin(client, "feature_mechanisms").unencrypted_scram = True
    for name in plugins:
        client.register_plugin(name)

    loop = asyncio.get_running_loop()
    started: asyncio.Future[None] = loop.create_future()
    problems: list[str] = []

    def on_session_start(_: Any) -> None:
        if not started.done():
            started.set_result(None)

    def on_failed_auth(_: Any) -> None:
        if not started.done():
            started.set_exception(ClientError(f"{jid}: authentication failed"))

    def on_problem(event: Any) -> None:
        problems.append(str(event))

    handlers = [
        ("session_start", on_session_start),
        ("failed_all_auth", on_failed_auth),
        ("connection_failed", on_problem),
        ("stream_error", on_problem),
    ]
    for event, handler in handlers:
        client.add_event_handler(event, handler)
    client.connect(server.host, server.c2s_port)
    try:
        await asyncio.wait_for(started, timeout)
    except BaseException as e:
        await disconnect_client(client, timeout=2.0)
        if isinstance(e, TimeoutError):
            raise ClientError(
                f"{jid}: no session after {timeout} s"
                + (f" ({'; '.join(problems)})" if problems else "")
            ) from None
        raise
    finally:
        for event, handler in handlers:
            client.del_event_handler(event, handler)
    if send_presence:
        client.send_presence()
    return client


async def disconnect_client(client: slixmpp.ClientXMPP, *, timeout: float = 5.0) -> None:
    """Close the stream (or abort it after ``timeout``) and wait until it is closed."""
    try:
        await asyncio.wait_for(client.disconnect(wait=timeout / 2), timeout)
    except TimeoutError:
        pass
    finally:
        client.abort()


async def join_room(
    client: slixmpp.ClientXMPP, room: str, nick: str, *, timeout: float = 10.0
) -> None:
    """Join ``room`` as ``nick`` without history; wait for the self-presence and subject.

    Error presences are caught here too: slixmpp only recognises those that echo
    the MUC ``<x/>`` element, and Prosody's refusals (for example of a room that
    is still locked) do not, so slixmpp alone would wait for the full timeout.

    :raises ClientError: the room refused us, or no answer within ``timeout``.
    """
    from ..xmpp.delivery import join_muc
    from ..xmpp.errors import TransportError

    try:
        await join_muc(client, room, nick, timeout=timeout)
    except TransportError as e:
        raise ClientError(f"{client.boundjid.bare}: {e}") from None


async def create_room(
    client: slixmpp.ClientXMPP,
    room: str,
    nick: str,
    *,
    persistent: bool = True,
    archived: bool = True,
    timeout: float = 10.0,
) -> None:
    """Create (join) ``room`` and submit its configuration, which unlocks it.

    Prosody and ejabberd lock a new room until its owner submits the form; persistence keeps
    the room (and its archive) when the last occupant leaves.
    """
    await join_room(client, room, nick, timeout=timeout)
    muc = _plugin(client, "xep_0045")
    try:
        form = await muc.get_room_config(room, timeout=timeout)
        fields = form.get_fields()
        values: dict[str, Any] = {"muc#roomconfig_persistentroom": persistent}
        if "muc#roomconfig_enablearchiving" in fields:
            values["muc#roomconfig_enablearchiving"] = archived
        elif "mam" in fields:  # ejabberd's name for it
            values["mam"] = archived
        elif archived:
            raise ClientError(f"{room}: the room offers no archiving option")
        for var, value in values.items():
            fields[var]["value"] = value
        await muc.set_room_config(room, form, timeout=timeout)
    except IqTimeout:
        raise ClientError(f"configuring {room} timed out") from None


def send_payload(
    client: slixmpp.ClientXMPP,
    to: str,
    data: bytes,
    *,
    mtype: MessageTypes = "groupchat",
    store_hint: bool = True,
) -> str:
    """Send a body-less message carrying ``data`` base64 in ``<mls xmlns='urn:mls-xmpp:0'>``.

    :param store_hint: add ``<store xmlns='urn:xmpp:hints'/>`` so the server archives it.
    :returns: the message's id.
    """
    msg = client.make_message(mto=slixmpp.JID(to), mtype=mtype)
    msg["id"] = client.new_id()
    payload = ET.SubElement(msg.xml, f"{{{NS_PAYLOAD}}}{PAYLOAD_ELEMENT}")
    payload.text = base64.b64encode(data).decode("ascii")
    if store_hint:
        ET.SubElement(msg.xml, f"{{{NS_HINTS}}}store")
    msg.send()
    return cast(str, msg["id"])


def payload_of(message: ET.Element) -> str | None:
    """The base64 text of the ``urn:mls-xmpp:0`` payload in ``message``, if any."""
    el = message.find(f"{{{NS_PAYLOAD}}}{PAYLOAD_ELEMENT}")
    return None if el is None else (el.text or "")


def stanza_id(message: ET.Element, by: str) -> str | None:
    """The XEP-0359 ``<stanza-id/>`` that entity ``by`` put on ``message``, if any."""
    for el in message.findall(f"{{{NS_SID}}}stanza-id"):
        if el.get("by") == by:
            return el.get("id")
    return None


class PayloadInbox:
    """Collects the payload messages ``client`` receives (body-less ones included).

    A stanza handler on ``message/{urn:mls-xmpp:0}mls``; use as a context
    manager (or call :meth:`close`) to remove it.
    """

    def __init__(self, client: slixmpp.ClientXMPP, name: str = "payload-inbox") -> None:
        self._client = client
        self._name = f"{name}-{client.new_id()}"
        self._queue: asyncio.Queue[Message] = asyncio.Queue()
        client.register_handler(
            Callback(
                self._name,
                MatchXPath(f"{{{_NS_CLIENT}}}message/{{{NS_PAYLOAD}}}{PAYLOAD_ELEMENT}"),
                self._on_payload,
            )
        )

    def _on_payload(self, stanza: StanzaBase) -> None:
        self._queue.put_nowait(cast(Message, stanza))

    async def get(self, timeout: float = 10.0) -> Message:
        """The next payload message, waiting at most ``timeout`` seconds.

        :raises ClientError: none arrived in time.
        """
        try:
            return await asyncio.wait_for(self._queue.get(), timeout)
        except TimeoutError:
            raise ClientError(
                f"{self._client.boundjid.bare}: no payload within {timeout} s"
            ) from None

    def close(self) -> None:
        """Stop collecting."""
        self._client.remove_handler(self._name)

    def __enter__(self) -> PayloadInbox:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


async def room_archive(
    client: slixmpp.ClientXMPP, room: str, *, timeout: float = 10.0
) -> list[ArchivedMessage]:
    """The first page (server default size) of ``room``'s MAM archive, oldest first."""
    try:
        iq = await _plugin(client, "xep_0313").retrieve(jid=slixmpp.JID(room), timeout=timeout)
    except IqTimeout:
        raise ClientError(f"MAM query to {room} timed out") from None
    found = []
    for result_msg in iq["mam"]["results"]:
        result = result_msg.xml.find(f"{{{NS_MAM}}}result")
        if result is None:
            continue
        inner = result.find(f"{{{_NS_FORWARD}}}forwarded/{{{_NS_CLIENT}}}message")
        if inner is None:
            continue
        found.append(
            ArchivedMessage(
                archive_id=result.get("id", ""),
                sender=inner.get("from", ""),
                payload=payload_of(inner),
                message=inner,
            )
        )
    return found
