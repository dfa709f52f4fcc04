"""The XMPP side of mls-xmpp: the slixmpp plugin and the ``urn:mls-xmpp:0`` mapping.

The mapping (documented in ``docs/PROTOCOL.md``) carries every payload as one
protobuf message (schemas in ``proto/mls_xmpp/v1``), base64 in a single
``<mls xmlns='urn:mls-xmpp:0'/>`` element; MLS structures inside keep their
RFC 9420 wire encoding.

* :mod:`mls_xmpp.xmpp.envelope` -- typed, strictly validated wrappers of the
  protobuf messages: the stanza :class:`~mls_xmpp.xmpp.envelope.Envelope`, its
  fragmentation and reassembly, the encrypted application ``Content`` and the
  ``KeyPackageItem`` of the PEP key store.
* :mod:`mls_xmpp.xmpp.stanza` -- the slixmpp stanza plugin for ``<mls/>``.
* :mod:`mls_xmpp.xmpp.errors` -- transport and envelope errors.

Unlike :mod:`mls_xmpp.core`, this package may import protobuf and slixmpp.
"""
