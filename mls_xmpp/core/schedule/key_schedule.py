"""The epoch key schedule (RFC 9420 §8) and the values built on it.

::

    init_secret_[n-1] --salt--> Extract <--ikm-- commit_secret
      -> ExpandWithLabel(., "joiner", GroupContext_[n], Nh)   = joiner_secret
    joiner_secret     --salt--> Extract <--ikm-- psk_secret (or 0)
      -> DeriveSecret(., "welcome")                           = welcome_secret
      -> ExpandWithLabel(., "epoch", GroupContext_[n], Nh)    = epoch_secret
    epoch_secret -> DeriveSecret(., <label>) for the secrets of EpochSecrets,
                    DeriveSecret(., "init")                   = init_secret_[n]

Three entry points give an :class:`EpochSecrets`:

* :func:`epoch_secrets_from_init` -- members processing a Commit (and the
  committer): from the previous ``init_secret``.
* :func:`epoch_secrets_from_joiner` -- a new member joining by Welcome
  (§12.4.3.1): from ``joiner_secret`` of GroupSecrets. It needs the new
  epoch's GroupContext, which the joiner learns only after decrypting the
  GroupInfo with :func:`welcome_secret` / :func:`welcome_key_nonce`.
* :func:`epoch_secrets_from_epoch_secret` -- the creator of a group, whose
  epoch 0 starts from a random ``epoch_secret`` (§11).

``GroupContext`` is passed already encoded (``group_context: bytes``).
``commit_secret`` and ``psk_secret`` default to ``KDF.Nh`` zero bytes, as §8
and §12.4 specify for a Commit without a path and an epoch without PSKs.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..crypto.suite import CipherSuite
from ..errors import LocalUsageError

__all__ = [
    "EpochSecrets",
    "confirmation_tag",
    "epoch_secrets_from_epoch_secret",
    "epoch_secrets_from_init",
    "epoch_secrets_from_joiner",
    "external_key_pair",
    "joiner_secret",
    "mls_exporter",
    "welcome_key_nonce",
    "welcome_secret",
]


@dataclass(frozen=True, repr=False)
class EpochSecrets:
    """The secrets of one epoch (RFC 9420 §8, table "Epoch-Derived Secrets").

    ``init_secret`` is ``init_secret_[n]``, the input of the next epoch.
    ``joiner_secret`` and ``welcome_secret`` are set when the epoch came
    from a Commit or a Welcome (the committer needs them to build the
    Welcome); they are ``None`` for an epoch started from a random
    ``epoch_secret``. The ``repr`` shows no secret.
    """

    sender_data_secret: bytes
    encryption_secret: bytes
    exporter_secret: bytes
    external_secret: bytes
    confirmation_key: bytes
    membership_key: bytes
    resumption_psk: bytes
    epoch_authenticator: bytes
    init_secret: bytes
    joiner_secret: bytes | None = None
    welcome_secret: bytes | None = None

    def __repr__(self) -> str:
        return "EpochSecrets(<secret>)"


def _check_len(name: str, value: bytes, n: int) -> None:
    if len(value) != n:
        raise LocalUsageError(f"{name} must be {n} bytes (KDF.Nh), not {len(value)}")


def _or_zero(suite: CipherSuite, name: str, value: bytes | None) -> bytes:
    if value is None:
        return bytes(suite.hash_len)
    _check_len(name, value, suite.hash_len)
    return value


def joiner_secret(suite: CipherSuite, init_secret: bytes, group_context: bytes,
                  commit_secret: bytes | None = None) -> bytes:
    """``ExpandWithLabel(Extract(init_secret, commit_secret), "joiner", GroupContext, Nh)``.

    RFC 9420 §8; ``commit_secret`` defaults to ``KDF.Nh`` zero bytes.
    """
    _check_len("init_secret", init_secret, suite.hash_len)
    commit = _or_zero(suite, "commit_secret", commit_secret)
    return suite.expand_with_label(suite.extract(init_secret, commit), "joiner",
                                   group_context, suite.hash_len)


def _member_secret(suite: CipherSuite, joiner: bytes, psk_secret: bytes | None) -> bytes:
    """``Extract(joiner_secret, psk_secret)`` (RFC 9420 §8): the unnamed middle secret."""
    return suite.extract(joiner, _or_zero(suite, "psk_secret", psk_secret))


def welcome_secret(suite: CipherSuite, joiner_secret: bytes,
                   psk_secret: bytes | None = None) -> bytes:
    """``DeriveSecret(Extract(joiner_secret, psk_secret), "welcome")`` (RFC 9420 §8)."""
    return suite.derive_secret(_member_secret(suite, joiner_secret, psk_secret), "welcome")


def welcome_key_nonce(suite: CipherSuite, welcome_secret: bytes) -> tuple[bytes, bytes]:
    """``(welcome_key, welcome_nonce)`` that protect the GroupInfo (RFC 9420 §12.4.3.1)."""
    key = suite.expand_with_label(welcome_secret, "key", b"", suite.aead_key_len)
    nonce = suite.expand_with_label(welcome_secret, "nonce", b"", suite.aead_nonce_len)
    return key, nonce


def epoch_secrets_from_epoch_secret(suite: CipherSuite, epoch_secret: bytes, *,
                                    joiner_secret: bytes | None = None,
                                    welcome_secret: bytes | None = None) -> EpochSecrets:
    """Every secret derived from ``epoch_secret`` with DeriveSecret (RFC 9420 §8).

    Used directly when creating a group (§11: epoch 0 has a random
    ``epoch_secret``); the other entry points pass the joiner and welcome
    secrets through.
    """
    _check_len("epoch_secret", epoch_secret, suite.hash_len)

    def d(label: str) -> bytes:
        return suite.derive_secret(epoch_secret, label)

    return EpochSecrets(
        sender_data_secret=d("sender data"),
        encryption_secret=d("encryption"),
        exporter_secret=d("exporter"),
        external_secret=d("external"),
        confirmation_key=d("confirm"),
        membership_key=d("membership"),
        resumption_psk=d("resumption"),
        epoch_authenticator=d("authentication"),
        init_secret=d("init"),
        joiner_secret=joiner_secret,
        welcome_secret=welcome_secret,
    )


def epoch_secrets_from_joiner(suite: CipherSuite, joiner_secret: bytes, group_context: bytes,
                              psk_secret: bytes | None = None) -> EpochSecrets:
    """The epoch's secrets from ``joiner_secret`` (RFC 9420 §8, §12.4.3.1).

    ``epoch_secret = ExpandWithLabel(Extract(joiner_secret, psk_secret), "epoch",
    GroupContext, Nh)``; ``group_context`` is the encoded GroupContext of the
    new epoch and ``psk_secret`` defaults to ``KDF.Nh`` zero bytes.
    """
    member = _member_secret(suite, joiner_secret, psk_secret)
    epoch_secret = suite.expand_with_label(member, "epoch", group_context, suite.hash_len)
    return epoch_secrets_from_epoch_secret(
        suite, epoch_secret, joiner_secret=joiner_secret,
        welcome_secret=suite.derive_secret(member, "welcome"))


def epoch_secrets_from_init(suite: CipherSuite, init_secret: bytes, group_context: bytes,
                            commit_secret: bytes | None = None,
                            psk_secret: bytes | None = None) -> EpochSecrets:
    """The new epoch's secrets from the previous ``init_secret`` (RFC 9420 §8).

    ``group_context`` is the encoded GroupContext of the new epoch;
    ``commit_secret`` and ``psk_secret`` default to ``KDF.Nh`` zero bytes.
    """
    joiner = joiner_secret(suite, init_secret, group_context, commit_secret)
    return epoch_secrets_from_joiner(suite, joiner, group_context, psk_secret)


def mls_exporter(suite: CipherSuite, exporter_secret: bytes, label: str | bytes,
                 context: bytes, length: int) -> bytes:
    """``MLS-Exporter(Label, Context, Length)`` (RFC 9420 §8.5).

    ``ExpandWithLabel(DeriveSecret(exporter_secret, Label), "exported",
    Hash(Context), Length)``.
    """
    if not 0 <= length <= min(0xFFFF, 255 * suite.hash_len):
        raise LocalUsageError(f"exporter length {length} is out of range")
    secret = suite.derive_secret(exporter_secret, label)
    return suite.expand_with_label(secret, "exported", suite.hash(context), length)


def external_key_pair(suite: CipherSuite, external_secret: bytes) -> tuple[bytes, bytes]:
    """``(external_priv, external_pub) = KEM.DeriveKeyPair(external_secret)`` (RFC 9420 §8)."""
    return suite.derive_key_pair(external_secret)


def confirmation_tag(suite: CipherSuite, confirmation_key: bytes,
                     confirmed_transcript_hash: bytes) -> bytes:
    """``MAC(confirmation_key, confirmed_transcript_hash)`` (RFC 9420 §6.1, §8.2)."""
    return suite.mac(confirmation_key, confirmed_transcript_hash)
