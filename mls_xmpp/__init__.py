"""mls-xmpp: Messaging Layer Security (RFC 9420) as a slixmpp plugin.

Importing the package registers the ``mls`` plugin with slixmpp, as slixmpp's
own plugins do in their package ``__init__``::

    import slixmpp
    import mls_xmpp

    xmpp = slixmpp.ClientXMPP("alice@example.org", password)
    xmpp.register_plugin("mls", {"store": "alice.db", "device": "laptop"})  # options: a dict
    mls: mls_xmpp.XEP_MLS = xmpp.plugin["mls"]

The names here are the public API of the plugin: :class:`XEP_MLS`, the
:class:`GroupSession` of each group, the payloads of the ``mls_*`` events, the
group rules, device trust and every error of :mod:`mls_xmpp.errors`. The
sans-IO MLS core is :mod:`mls_xmpp.core` (it imports neither slixmpp nor
protobuf itself; importing it runs this module first, so the plugin is
registered then too).
"""

from slixmpp.plugins.base import register_plugin

from . import errors as _errors
from .errors import *  # noqa: F403 - the whole error tree, see mls_xmpp.errors
from .xmpp.events import (
    JoinedEvent,
    MembershipEvent,
    MLSErrorEvent,
    MLSMessageEvent,
    ProgressEvent,
    ResyncEvent,
)
from .xmpp.plugin import XEP_MLS
from .xmpp.rules import DEFAULT_RULES, ExternalJoin, GroupRules, Who
from .xmpp.session import GroupSession
from .xmpp.trust import TrustChange, TrustState

register_plugin(XEP_MLS)

__all__ = [
    "DEFAULT_RULES",
    "XEP_MLS",
    "ExternalJoin",
    "GroupRules",
    "GroupSession",
    "JoinedEvent",
    "MLSErrorEvent",
    "MLSMessageEvent",
    "MembershipEvent",
    "ProgressEvent",
    "ResyncEvent",
    "TrustChange",
    "TrustState",
    "Who",
    *_errors.__all__,
]
