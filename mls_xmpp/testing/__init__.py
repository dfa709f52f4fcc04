"""Test and demo infrastructure: a real Prosody as the Delivery Service.

* :class:`ProsodyServer` -- start/stop a loopback Prosody (Debian package) with
  the project's config (``prosody.cfg.lua``, shipped with the package), create
  accounts.
* :class:`EjabberdServer` -- the same for ejabberd 23.01 (Debian package) with
  ``ejabberd.yml.in``; :class:`EjabberdCluster` -- two or more ejabberd nodes
  serving one domain as an Erlang cluster.
* :class:`Federation` -- two federating Prosody servers (``a.test`` and
  ``b.test`` on loopback, s2s with dialback; ``federation.cfg.lua``), each a
  :class:`FederatedProsody`.
* :class:`MixedFederation` -- an ejabberd domain (``e.test``) and a Prosody
  domain (``p.test``) federating: a group across implementations.
* :class:`FaultProxy` -- a loopback TCP proxy a test controls (cut, stall, refuse).
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
from .ejabberd import (
    EJABBERD_CONFIG_PATH,
    EjabberdCluster,
    EjabberdError,
    EjabberdServer,
    find_ejabberdctl,
)
from .federation import FEDERATION_CONFIG_PATH, FederatedProsody, Federation, Peer
from .mixed_federation import MixedFederation
from .prosody import CONFIG_PATH, Account, ProsodyError, ProsodyServer
from .proxy import FaultProxy
from .server import XmppServer

__all__ = [
    "CONFIG_PATH",
    "EJABBERD_CONFIG_PATH",
    "FEDERATION_CONFIG_PATH",
    "NS_PAYLOAD",
    "Account",
    "FaultProxy",
    "ArchivedMessage",
    "ClientError",
    "EjabberdCluster",
    "EjabberdError",
    "EjabberdServer",
    "FederatedProsody",
    "MixedFederation",
    "Federation",
    "PayloadInbox",
    "Peer",
    "ProsodyError",
    "ProsodyServer",
    "connect_client",
    "create_room",
    "disconnect_client",
    "find_ejabberdctl",
    "join_room",
    "payload_of",
    "room_archive",
    "send_payload",
    "stanza_id",
    "XmppServer",
]
