"""Test and demo infrastructure: a real Prosody as the Delivery Service.

* :class:`ProsodyServer` -- start/stop a loopback Prosody (Debian package) with
  the project's config (``prosody.cfg.lua``, shipped with the package), create
  accounts.
* :func:`connect_client` / :func:`disconnect_client` and the room, payload and
  archive helpers in :mod:`mls_xmpp.testing.client` -- slixmpp clients set up
  for that server.

Used by ``tests/integration`` and by ``mls-xmpp demo``; not needed at run time
by the plugin itself.
"""

from __future__ import annotations

from .client import (
    NS_PAYLOAD,
    ArchivedMessage,
    ClientError,
    PayloadInbox,
    connect_client,
    create_room,
    disconnect_client,
    join_room,
    payload_of,
    room_archive,
    send_payload,
    stanza_id,
)
from .prosody import CONFIG_PATH, Account, ProsodyError, ProsodyServer

__all__ = [
    "CONFIG_PATH",
    "NS_PAYLOAD",
    "Account",
    "ArchivedMessage",
    "ClientError",
    "PayloadInbox",
    "ProsodyError",
    "ProsodyServer",
    "connect_client",
    "create_room",
    "disconnect_client",
    "join_room",
    "payload_of",
    "room_archive",
    "send_payload",
    "stanza_id",
]
