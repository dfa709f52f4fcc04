"""The secret tree and its sender ratchets (RFC 9420 §9), and sender-data keys (§6.3.2).

A :class:`SecretTree` is built per epoch from ``encryption_secret`` and the
number of leaves. Tree-node secrets are derived lazily: when a leaf is first
used, only the nodes on the path from the lowest secret still held down to
that leaf are derived (``O(log n)`` work, never ``O(n)``). Each step derives
both children of a node, keeps the child that is off the path and deletes the
parent (§9.2: a secret is consumed once something derived from it is used).
The leaf secret seeds the leaf's ``handshake`` and ``application`` ratchets and
is deleted at once.

Each ratchet holds the secret of its next generation and the keys of skipped
generations that have not been used yet. Keys are single-use: a key handed out
for sending or consumed after decryption is deleted from the state, and the
ratchet secrets it came from are replaced by the next one.

Receive side, transactionally (the choice made for the group layer):

* :meth:`SecretTree.peek` returns the ``(key, nonce)`` of a generation
  **without changing any state**, so the caller can try the decryption first;
* :meth:`SecretTree.consume` then records that the generation was used
  (deleting its key, remembering skipped ones). Call it only after the AEAD
  succeeded (§9.2: "used to encrypt or (successfully) decrypt").
* :meth:`SecretTree.key_for` does both at once, for callers that do not need
  to undo anything.

Limits, both configurable per tree:

* ``max_generation_gap``: a generation more than this far ahead of the next
  expected generation of the ratchet is refused (it would cost that many
  derivations).
* ``out_of_order_window``: keys of skipped generations are kept while their
  generation ``g`` satisfies ``g >= next_generation - out_of_order_window``;
  older ones are deleted and such generations are refused as too old.

Refusals caused by a peer's message raise :class:`SecretTreeError`.

Reserved generations (sending, :meth:`SecretTree.reserve`): a sender that
stores its state may reserve generations of its own application ratchet up
to ``M``; the tree's serialisation (``core/group/serialize``) then writes that
ratchet as if it had advanced to ``max(next generation, M)`` (its secret
derived forward, no keys kept for the generations in between). The stored
state is thus always ahead of every generation handed out within the
reservation, and the sender needs to write it only when the next message
would reach ``M``. After a crash the sender resumes at ``M`` and never reuses
a generation; receivers see a gap (at most the reservation, which must stay
below their ``max_generation_gap``) and keep the keys of the skipped
generations until their out-of-order window drops them: a small
forward-secrecy cost, bounded by the reservation.

Python cannot wipe ``bytes`` in place: "deleted" means every reference the
tree held is dropped. The state is plain data (``dict[int, bytes]`` of node
secrets, and per ratchet a generation, a secret and a ``dict[int, (key,
nonce)]``) so that it can be serialised later.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from ..crypto.suite import CipherSuite
from ..errors import LocalUsageError, SecretTreeError
from . import math as tm

__all__ = [
    "MAX_GENERATION",
    "RatchetType",
    "SecretTree",
    "ratchet_type_for_content_type",
    "sender_data_key_nonce",
]

#: Generations travel as ``uint32`` in SenderData (RFC 9420 §6.3.2).
MAX_GENERATION = 0xFFFFFFFF


class RatchetType(StrEnum):
    """The two sender ratchets of a leaf; the value is the RFC 9420 §9 label."""

    HANDSHAKE = "handshake"
    APPLICATION = "application"


def ratchet_type_for_content_type(content_type: int) -> RatchetType:
    """The ratchet that protects a ContentType (RFC 9420 §6.3.1, §9.1).

    ``application`` (1) uses the application ratchet; ``proposal`` (2) and
    ``commit`` (3) use the handshake ratchet.
    """
    if content_type == 1:
        return RatchetType.APPLICATION
    if content_type in (2, 3):
        return RatchetType.HANDSHAKE
    raise LocalUsageError(f"content type {content_type} has no sender ratchet")


def sender_data_key_nonce(suite: CipherSuite, sender_data_secret: bytes,
                          ciphertext: bytes) -> tuple[bytes, bytes]:
    """``(sender_data_key, sender_data_nonce)`` for a PrivateMessage (RFC 9420 §6.3.2).

    The context is ``ciphertext_sample``: the first ``KDF.Nh`` bytes of the
    content ciphertext, or all of it when it is shorter.
    """
    sample = ciphertext[: suite.hash_len]
    key, nonce = suite.expand_with_labels(
        sender_data_secret, sample, (("key", suite.aead_key_len), ("nonce", suite.aead_nonce_len)))
    return key, nonce


@dataclass(slots=True)
class _Ratchet:
    """One sender ratchet (RFC 9420 §9.1) as plain data."""

    #: The next generation whose key has not been derived yet.
    generation: int
    #: ``ratchet_secret_[N]_[generation]``.
    secret: bytes
    #: ``generation -> (key, nonce)`` of skipped, unused generations, ascending.
    keys: dict[int, tuple[bytes, bytes]] = field(default_factory=dict)


class SecretTree:
    """The secret tree of one epoch (RFC 9420 §9); see the module docstring."""

    def __init__(self, suite: CipherSuite, encryption_secret: bytes, n_leaves: int, *,
                 max_generation_gap: int = 1000, out_of_order_window: int = 128) -> None:
        """Start a tree whose root secret is ``encryption_secret`` (RFC 9420 §9)."""
        tm.check_n_leaves(n_leaves)
        if len(encryption_secret) != suite.hash_len:
            raise LocalUsageError(
                f"encryption_secret must be {suite.hash_len} bytes, not {len(encryption_secret)}")
        if max_generation_gap < 0 or out_of_order_window < 0:
            raise LocalUsageError("max_generation_gap and out_of_order_window must be >= 0")
        self.suite = suite
        self.n_leaves = n_leaves
        self.max_generation_gap = max_generation_gap
        self.out_of_order_window = out_of_order_window
        #: node index -> tree_node_[N]_secret, only for secrets not yet consumed.
        self._tree: dict[int, bytes] = {tm.root(n_leaves): encryption_secret}
        #: ratchet type -> leaf index -> ratchet, for leaves already expanded.
        self._ratchets: dict[RatchetType, dict[int, _Ratchet]] = {
            RatchetType.HANDSHAKE: {},
            RatchetType.APPLICATION: {},
        }
        #: leaf -> (M, ratchet_secret_[leaf]_[M]): the application generations reserved
        #: for sending (see :meth:`reserve`), while the ratchet is below M.
        self._reserved: dict[int, tuple[int, bytes]] = {}

    # -- sending -------------------------------------------------------------

    def next_key(self, leaf: int, ratchet_type: RatchetType) -> tuple[int, bytes, bytes]:
        """``(generation, key, nonce)`` for the next message sent by ``leaf`` (RFC 9420 §9.1).

        The key is consumed: the ratchet moves past it and it is never
        returned again.
        """
        ratchet = self._ratchet(leaf, ratchet_type)
        generation = ratchet.generation
        if generation > MAX_GENERATION:
            raise LocalUsageError(f"the {ratchet_type.value} ratchet of leaf {leaf} is exhausted")
        key_nonce = self._advance(ratchet, generation, want_key=True)
        assert key_nonce is not None
        key, nonce = key_nonce
        return generation, key, nonce

    def reserve(self, leaf: int, ahead: int, *, early: int = 0) -> bool:
        """Reserve the next ``ahead`` generations of ``leaf``'s application ratchet for
        sending, unless the next one is reserved already (with more than ``early``
        reserved generations left after it: ``early`` renews a reservation before it
        is used up, so that its write can go on while the old one still holds).

        From now on the serialisation of this tree writes that ratchet as if
        it had advanced to ``M = next generation + ahead`` (see the module
        docstring), so a stored copy is ahead of every generation
        :meth:`next_key` hands out below ``M``. Returns ``True`` when a new
        reservation was made: the caller must store the tree before it sends
        (the invariant: whenever generation ``g`` is handed out, the store
        holds ``g + 1`` or more); ``False`` when the next generation lies
        inside the current reservation (nothing to store). ``ahead`` must be
        at least 1 and at most ``max_generation_gap`` (receivers refuse a
        larger gap).
        """
        if not 1 <= ahead <= max(1, self.max_generation_gap):
            raise LocalUsageError(
                f"a reservation of {ahead} generations is outside 1..{self.max_generation_gap}")
        if not 0 <= early < ahead:
            raise LocalUsageError(f"early renewal {early} is outside 0..{ahead - 1}")
        ratchet = self._ratchet(leaf, RatchetType.APPLICATION)
        held = self._reserved.get(leaf)
        if held is not None and ratchet.generation < held[0] - early:
            return False
        upto = min(ratchet.generation + ahead, MAX_GENERATION + 1)
        secret = ratchet.secret
        for j in range(ratchet.generation, upto):
            secret = self._next_secret(secret, j)
        self._reserved[leaf] = (upto, secret)
        return True

    def reserved_ratchet(self, leaf: int) -> tuple[int, bytes] | None:
        """``(M, ratchet_secret_[leaf]_[M])`` of the reservation of ``leaf``'s application
        ratchet while its next generation is below ``M``; ``None`` otherwise."""
        held = self._reserved.get(leaf)
        ratchet = self._ratchets[RatchetType.APPLICATION].get(leaf)
        if held is None or ratchet is None or ratchet.generation >= held[0]:
            return None
        return held

    # -- receiving -----------------------------------------------------------

    def peek(self, leaf: int, ratchet_type: RatchetType, generation: int) -> tuple[bytes, bytes]:
        """``(key, nonce)`` of ``generation`` of a ratchet, changing nothing (RFC 9420 §9.1).

        Raises :class:`SecretTreeError` when the generation was consumed, is
        older than the out-of-order window, or lies more than
        ``max_generation_gap`` ahead of the ratchet.
        """
        self._check_leaf(leaf)
        _check_generation(generation)
        ratchet = self._ratchets[ratchet_type].get(leaf)
        if ratchet is None:
            leaf_secret = self._leaf_secret(leaf, store=False)
            ratchet = _Ratchet(0, self.suite.derive_secret(leaf_secret, ratchet_type.value))
        if generation < ratchet.generation:
            found = ratchet.keys.get(generation)
            if found is None:
                raise self._gone(leaf, ratchet_type, generation)
            return found
        self._check_gap(ratchet, generation)
        secret = ratchet.secret
        for j in range(ratchet.generation, generation):
            secret = self._next_secret(secret, j)
        return self._key_nonce(secret, generation)

    def consume(self, leaf: int, ratchet_type: RatchetType, generation: int) -> None:
        """Mark ``generation`` as used after a successful decryption (RFC 9420 §9.2).

        Its key is deleted; keys of generations it skips are kept within the
        out-of-order window. Raises :class:`SecretTreeError` like :meth:`peek`.
        """
        self._take(leaf, ratchet_type, generation, want_key=False)

    def key_for(self, leaf: int, ratchet_type: RatchetType, generation: int
                ) -> tuple[bytes, bytes]:
        """:meth:`peek` and :meth:`consume` in one step: the key is used up at once."""
        found = self._take(leaf, ratchet_type, generation, want_key=True)
        assert found is not None
        return found

    def _take(self, leaf: int, ratchet_type: RatchetType, generation: int, *,
              want_key: bool) -> tuple[bytes, bytes] | None:
        """Use up ``generation``; its ``(key, nonce)`` when ``want_key`` (and when held)."""
        self._check_leaf(leaf)
        _check_generation(generation)
        ratchet = self._ratchet(leaf, ratchet_type)
        if generation < ratchet.generation:
            found = ratchet.keys.pop(generation, None)
            if found is None:
                raise self._gone(leaf, ratchet_type, generation)
            return found
        self._check_gap(ratchet, generation)
        return self._advance(ratchet, generation, want_key=want_key)

    # -- introspection ---------------------------------------------------------

    def next_generation(self, leaf: int, ratchet_type: RatchetType) -> int:
        """The next generation of a ratchet that has never been derived (0 at first)."""
        self._check_leaf(leaf)
        ratchet = self._ratchets[ratchet_type].get(leaf)
        return 0 if ratchet is None else ratchet.generation

    def held_tree_nodes(self) -> frozenset[int]:
        """Node indices whose tree secrets are still held (not yet consumed)."""
        return frozenset(self._tree)

    def held_generations(self, leaf: int, ratchet_type: RatchetType) -> frozenset[int]:
        """Skipped generations of a ratchet whose keys are still held."""
        self._check_leaf(leaf)
        ratchet = self._ratchets[ratchet_type].get(leaf)
        return frozenset() if ratchet is None else frozenset(ratchet.keys)

    # -- internals ---------------------------------------------------------------

    def _check_leaf(self, leaf: int) -> None:
        if not 0 <= leaf < self.n_leaves:
            raise LocalUsageError(f"leaf {leaf} is outside a tree of {self.n_leaves} leaves")

    def _check_gap(self, ratchet: _Ratchet, generation: int) -> None:
        if generation - ratchet.generation > self.max_generation_gap:
            raise SecretTreeError(
                f"generation {generation} is more than {self.max_generation_gap} ahead of "
                f"the ratchet (next generation {ratchet.generation})")

    def _gone(self, leaf: int, ratchet_type: RatchetType, generation: int) -> SecretTreeError:
        return SecretTreeError(
            f"generation {generation} of the {ratchet_type.value} ratchet of leaf {leaf} "
            "was already used or is outside the out-of-order window")

    def _leaf_secret(self, leaf: int, *, store: bool) -> bytes:
        """tree_node_[leaf]_secret, derived from the lowest held ancestor (RFC 9420 §9).

        With ``store`` the off-path children are kept and every secret on the
        path, the leaf's included, is deleted; without it nothing changes.
        """
        target = tm.leaf_to_node(leaf)
        node = target
        tree = self._tree
        while node not in tree:
            # The leaf was never expanded, so some ancestor still holds its secret.
            node = tm.parent(node, self.n_leaves)
        secret = tree.pop(node) if store else tree[node]
        suite = self.suite
        nh = suite.hash_len
        while node != target:
            k = tm.level(node)
            lchild, rchild = node ^ (1 << (k - 1)), node ^ (3 << (k - 1))
            lsecret = suite.expand_with_label(secret, "tree", b"left", nh)
            rsecret = suite.expand_with_label(secret, "tree", b"right", nh)
            if target < node:
                node, secret, other, other_secret = lchild, lsecret, rchild, rsecret
            else:
                node, secret, other, other_secret = rchild, rsecret, lchild, lsecret
            if store:
                tree[other] = other_secret
        return secret

    def _ratchet(self, leaf: int, ratchet_type: RatchetType) -> _Ratchet:
        """The ratchet of a leaf, expanding the leaf on first use (RFC 9420 §9)."""
        self._check_leaf(leaf)
        ratchet = self._ratchets[ratchet_type].get(leaf)
        if ratchet is None:
            leaf_secret = self._leaf_secret(leaf, store=True)
            for rt, ratchets in self._ratchets.items():
                ratchets[leaf] = _Ratchet(0, self.suite.derive_secret(leaf_secret, rt.value))
            ratchet = self._ratchets[ratchet_type][leaf]
        return ratchet

    def _key_nonce(self, secret: bytes, generation: int) -> tuple[bytes, bytes]:
        """ratchet_key_[N]_[j] and ratchet_nonce_[N]_[j] (RFC 9420 §9.1)."""
        suite = self.suite
        key, nonce = suite.derive_tree_secrets(
            secret, generation, (("key", suite.aead_key_len), ("nonce", suite.aead_nonce_len)))
        return key, nonce

    def _next_secret(self, secret: bytes, generation: int) -> bytes:
        """ratchet_secret_[N]_[j+1] from ratchet_secret_[N]_[j] (RFC 9420 §9.1)."""
        return self.suite.derive_tree_secret(secret, "secret", generation, self.suite.hash_len)

    def _advance(self, ratchet: _Ratchet, generation: int, *, want_key: bool = True
                 ) -> tuple[bytes, bytes] | None:
        """Move ``ratchet`` past ``generation`` (>= its next one) and return that key.

        Keys of skipped generations inside the window are kept; the used key
        and every older ratchet secret are dropped. Without ``want_key`` the
        used key is not even derived (the receiver got it from :meth:`peek`).
        """
        keep_from = generation + 1 - self.out_of_order_window
        secret = ratchet.secret
        for j in range(ratchet.generation, generation):
            if j >= keep_from:
                ratchet.keys[j] = self._key_nonce(secret, j)
            secret = self._next_secret(secret, j)
        key_nonce = self._key_nonce(secret, generation) if want_key else None
        ratchet.secret = self._next_secret(secret, generation)
        ratchet.generation = generation + 1
        keys = ratchet.keys
        # Keys are inserted in ascending order, so the too-old ones come first.
        while keys:
            oldest = next(iter(keys))
            if oldest >= keep_from:
                break
            del keys[oldest]
        return key_nonce


def _check_generation(generation: int) -> None:
    if not 0 <= generation <= MAX_GENERATION:
        raise SecretTreeError(f"generation {generation} is not a uint32")
