"""Ratchet-tree and secret-tree structure (RFC 9420 §4.1, §9, Appendix C).

* :mod:`.math` -- index arithmetic of the array representation of a perfect
  binary tree (Appendix C).
* :mod:`.secret_tree` -- the per-epoch secret tree and the per-sender hash
  ratchets that yield message keys and nonces (§9), plus the sender-data key
  and nonce (§6.3.2).

Nothing is imported here, so ``import mls_xmpp.core.tree.math`` stays cheap.
"""
