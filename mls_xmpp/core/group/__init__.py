"""The MLS group state machine of RFC 9420, split by verb.

* :mod:`.client` -- a client identity: credential, signature key, KeyPackages;
  creates and joins groups (§10, §11).
* :mod:`.group` -- the group a member holds: the API the XMPP plugin and
  applications use; :mod:`.events` -- what processing a message yields.
* :mod:`.commit`, :mod:`.process`, :mod:`.join`, :mod:`.external`,
  :mod:`.proposals`, :mod:`.epoch` -- creating Commits and Welcomes, processing
  messages, joining from a Welcome or by external Commit, proposal validation,
  moving to the next epoch (§6, §8, §12).
* :mod:`.state`, :mod:`.config` -- one epoch's state and the group's policy hook.
* :mod:`.serialize`, :mod:`.client_state` -- versioned serialisation of a group
  and of a client identity.

Nothing is imported here; import the submodules directly, e.g.
``from mls_xmpp.core.group.client import Client``.
"""
