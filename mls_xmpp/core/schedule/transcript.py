"""Transcript hashes (RFC 9420 §8.2)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..codec import encode_opaque

if TYPE_CHECKING:
    from ..crypto import CipherSuite
    from ..messages.framing import AuthenticatedContent


def confirmed_transcript_hash(suite: CipherSuite, interim_transcript_hash: bytes,
                              commit: AuthenticatedContent) -> bytes:
    """Hash(interim_before || ConfirmedTranscriptHashInput) for a commit's content.

    ConfirmedTranscriptHashInput is wire_format, FramedContent and signature.
    """
    w = bytearray(interim_transcript_hash)
    w += commit.wire_format.to_bytes(2, "big")
    commit.content.write(w)
    w += encode_opaque(commit.auth.signature)
    return suite.hash(bytes(w))


def interim_transcript_hash(suite: CipherSuite, confirmed: bytes,
                            confirmation_tag: bytes) -> bytes:
    """Hash(confirmed || InterimTranscriptHashInput{confirmation_tag})."""
    return suite.hash(confirmed + encode_opaque(confirmation_tag))
