"""mls-xmpp: Messaging Layer Security (RFC 9420) as a slixmpp plugin.

Importing the package registers the ``mls`` plugin with slixmpp, as slixmpp's
own plugins do in their package ``__init__``::

    import slixmpp
    import mls_xmpp

    xmpp = slixmpp.ClientXMPP("alice@example.org", password)
    xmpp.register_plugin("mls")            # options: store=, device=, ...
    mls: mls_xmpp.XEP_MLS = xmpp.plugin["mls"]

The names here are the public API of the plugin: :class:`XEP_MLS`, the
:class:`GroupSession` of each group, the payloads of the ``mls_*`` events and
the errors. The sans-IO MLS core is :mod:`mls_xmpp.core` (it imports neither
slixmpp nor protobuf itself; importing it runs this module first, so the plugin
is registered then too).
"""

from slixmpp.plugins.base import register_plugin

from .core.errors import LocalUsageError, MLSError, RemoteProtocolError
from .xmpp.errors import EnvelopeError, TransportError
from .xmpp.events import MembershipEvent, MLSErrorEvent, MLSMessageEvent, ProgressEvent
from .xmpp.plugin import XEP_MLS
from .xmpp.session import GroupSession

register_plugin(XEP_MLS)

__all__ = [
    "XEP_MLS",
    "EnvelopeError",
    "GroupSession",
    "LocalUsageError",
    "MLSError",
    "MLSErrorEvent",
    "MLSMessageEvent",
    "MembershipEvent",
    "ProgressEvent",
    "RemoteProtocolError",
    "TransportError",
]
