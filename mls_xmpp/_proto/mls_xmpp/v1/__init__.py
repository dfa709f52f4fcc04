"""Generated code for the protobuf package ``mls_xmpp.v1`` (see :mod:`mls_xmpp._proto`)."""
