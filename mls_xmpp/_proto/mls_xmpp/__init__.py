"""Generated code for the protobuf package ``mls_xmpp`` (see :mod:`mls_xmpp._proto`)."""
