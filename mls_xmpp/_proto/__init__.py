"""Generated protobuf modules for the MLS-over-XMPP mapping (``urn:mls-xmpp:0``).

Do not edit the ``*_pb2.py``/``*_pb2.pyi`` files by hand: they are generated
from ``proto/mls_xmpp/v1/*.proto`` by ``python scripts/gen_proto.py`` and
checked in; ``tests/xmpp/test_proto_fresh.py`` fails when they are stale.

Import them as ``from mls_xmpp._proto.mls_xmpp.v1 import envelope_pb2``. Only
:mod:`mls_xmpp.xmpp` uses them; :mod:`mls_xmpp.core` never imports protobuf.
"""
