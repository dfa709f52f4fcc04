"""Checkers for the mlswg interoperability test vectors.

Each vector type has a module here with ``check(case: dict) -> None`` that
verifies one case and raises :class:`VectorMismatch` (or any ``MLSError``)
when the implementation disagrees with it. The test suite and the command
``python -m mls_xmpp.vectors PATH...`` share these checkers.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

Case = dict[str, Any]


class VectorMismatch(AssertionError):
    """The implementation computed something other than what a vector expects."""


def expect(what: str, got: object, want: object) -> None:
    """Raise :class:`VectorMismatch` unless ``got == want``."""
    if got != want:
        g = got.hex() if isinstance(got, (bytes, bytearray)) else got
        w = want.hex() if isinstance(want, (bytes, bytearray)) else want
        raise VectorMismatch(f"{what}: got {g!r}, want {w!r}")


def unhex(s: str | None) -> bytes:
    """Bytes from a vector's hex string (``None`` stays empty)."""
    return bytes.fromhex(s) if s else b""


# vector type -> (module under mls_xmpp.vectors, keys that identify a case)
TYPES: dict[str, tuple[str, frozenset[str]]] = {
    "tree-math": ("tree_math", frozenset({"n_leaves", "n_nodes", "root", "sibling"})),
    "crypto-basics": ("crypto_basics", frozenset({"derive_secret", "ref_hash", "sign_with_label"})),
    "deserialization": ("deserialization", frozenset({"vlbytes_header", "length"})),
    "secret-tree": ("secret_tree", frozenset({"encryption_secret", "leaves", "sender_data"})),
    "key-schedule": ("key_schedule", frozenset({"epochs", "initial_init_secret"})),
    "psk_secret": ("psk_secret", frozenset({"psks", "psk_secret"})),
    "message-protection": ("message_protection", frozenset({"application_priv", "membership_key"})),
    "messages": ("messages", frozenset({"mls_welcome", "mls_group_info", "commit"})),
    "transcript-hashes": (
        "transcript_hashes", frozenset({"authenticated_content", "confirmation_key"})),
    "welcome": ("welcome", frozenset({"welcome", "init_priv", "signer_pub"})),
    "tree-validation": ("tree_validation", frozenset({"tree", "tree_hashes", "resolutions"})),
    "tree-operations": ("tree_operations", frozenset({"tree_before", "tree_after", "proposal"})),
    "treekem": ("treekem", frozenset({"leaves_private", "update_paths"})),
    "passive-client": (
        "passive_client", frozenset({"epochs", "welcome", "key_package", "external_psks"})),
}


def detect_type(cases: list[Case]) -> str:
    """The vector type of a file's cases, judged by their keys."""
    if not cases:
        raise ValueError("empty vector file")
    keys = set(cases[0])
    matches = [name for name, (_, sig) in TYPES.items() if sig <= keys]
    if not matches:
        raise ValueError(f"unknown vector type with keys {sorted(keys)}")
    # the most specific signature wins (passive-client vs welcome share keys)
    return max(matches, key=lambda n: len(TYPES[n][1]))


def checker(vector_type: str) -> Callable[[Case], None]:
    """The ``check`` function for a vector type."""
    module, _ = TYPES[vector_type]
    mod = importlib.import_module(f"{__name__}.{module}")
    fn: Callable[[Case], None] = mod.check
    return fn
