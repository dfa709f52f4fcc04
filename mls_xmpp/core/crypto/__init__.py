"""Cipher suites 1-7 of RFC 9420: hash, HKDF, AEAD, HPKE, signatures."""

from .suite import SUPPORTED_SUITES, CipherSuite, Rng, get_suite

__all__ = ["SUPPORTED_SUITES", "CipherSuite", "Rng", "get_suite"]
