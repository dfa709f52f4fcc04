"""Errors of the XMPP layer, in the project's one error tree (:mod:`mls_xmpp.core.errors`).

* :class:`TransportError` -- XMPP or transport failure (not connected, a
  timeout, an error stanza from the server). Neither side broke the protocol.
* :class:`EnvelopeError` -- a peer sent a malformed payload: text that is not
  base64, bytes that are not the expected protobuf message, or an envelope that
  breaks a rule of the mapping. Like every
  :class:`~mls_xmpp.core.errors.RemoteProtocolError` it is always safe to catch
  it and drop the stanza.
"""

from __future__ import annotations

from mls_xmpp.core.errors import MLSError, RemoteProtocolError

__all__ = ["EnvelopeError", "TransportError"]


class TransportError(MLSError):
    """The XMPP transport failed: connection, timeout, or an error from the server."""


class EnvelopeError(RemoteProtocolError):
    """A peer's payload is malformed: bad base64, bad protobuf, or an invalid envelope."""
