"""The ``welcome`` vectors (RFC 9420 §12.4.3.1)."""

from __future__ import annotations

import hmac

from ..core.crypto import get_suite
from ..core.messages.framing import MLSMessage
from ..core.messages.key_package import KeyPackage
from ..core.messages.welcome import (
    Welcome,
    decrypt_group_info,
    decrypt_group_secrets,
)
from ..core.schedule.key_schedule import epoch_secrets_from_joiner, welcome_secret
from . import Case, VectorMismatch, expect, unhex


def check(case: Case) -> None:
    """Decrypt the Welcome for the KeyPackage, verify GroupInfo signature and tag."""
    suite = get_suite(int(case["cipher_suite"]))
    kp_msg = MLSMessage.decode(unhex(case["key_package"]))
    w_msg = MLSMessage.decode(unhex(case["welcome"]))
    kp, welcome = kp_msg.body, w_msg.body
    if not isinstance(kp, KeyPackage) or not isinstance(welcome, Welcome):
        raise VectorMismatch("key_package / welcome have the wrong wire formats")
    expect("welcome cipher suite", welcome.cipher_suite, suite.id)
    secrets = decrypt_group_secrets(suite, welcome, kp.ref(suite), unhex(case["init_priv"]))
    if secrets.psks:
        raise VectorMismatch("welcome vector unexpectedly uses PSKs")
    info = decrypt_group_info(suite, welcome_secret(suite, secrets.joiner_secret),
                              welcome.encrypted_group_info)
    info.verify_signature(suite, unhex(case["signer_pub"]))
    epoch = epoch_secrets_from_joiner(suite, secrets.joiner_secret,
                                      info.group_context.encode())
    tag = suite.mac(epoch.confirmation_key, info.group_context.confirmed_transcript_hash)
    if not hmac.compare_digest(tag, info.confirmation_tag):
        raise VectorMismatch("GroupInfo confirmation_tag does not verify")
