"""The ``transcript-hashes`` vectors (RFC 9420 §8.2)."""

from __future__ import annotations

import hmac

from ..core.crypto import get_suite
from ..core.messages.common import ContentType
from ..core.messages.framing import AuthenticatedContent
from ..core.schedule.transcript import confirmed_transcript_hash, interim_transcript_hash
from . import Case, VectorMismatch, expect, unhex


def check(case: Case) -> None:
    """Check the confirmation tag and both transcript hashes after the commit."""
    suite = get_suite(int(case["cipher_suite"]))
    ac = AuthenticatedContent.decode(unhex(case["authenticated_content"]))
    expect("re-encoded AuthenticatedContent", ac.encode(), unhex(case["authenticated_content"]))
    if ac.content.content_type != ContentType.COMMIT or ac.auth.confirmation_tag is None:
        raise VectorMismatch("authenticated_content does not carry a Commit")
    confirmed = confirmed_transcript_hash(
        suite, unhex(case["interim_transcript_hash_before"]), ac)
    expect("confirmed_transcript_hash_after", confirmed,
           unhex(case["confirmed_transcript_hash_after"]))
    tag = suite.mac(unhex(case["confirmation_key"]), confirmed)
    if not hmac.compare_digest(tag, ac.auth.confirmation_tag):
        raise VectorMismatch("confirmation_tag does not verify")
    expect("interim_transcript_hash_after",
           interim_transcript_hash(suite, confirmed, ac.auth.confirmation_tag),
           unhex(case["interim_transcript_hash_after"]))
