"""The key schedule of RFC 9420 §8.

* :mod:`.key_schedule` -- epoch secrets from init/commit/PSK secrets and the
  GroupContext, the Welcome secrets, MLS-Exporter, the external key pair and
  the confirmation tag (§8, §8.5, §12.4.3.1).
* :mod:`.psk` -- PreSharedKeyID and the ``psk_secret`` chain (§8.4).

Nothing is imported here; import the submodules directly.
"""
