"""Sphinx configuration: the API reference of mls-xmpp.

Build it warning-free (CI and ``tox -e docs`` do)::

    sphinx-build -W -b html docs docs/_build/html

Two tables are generated here from the code, so that they cannot drift from it:

* ``.. mls-options::`` -- the plugin's options: names and defaults from
  ``XEP_MLS.default_config`` (the one source of defaults), meanings from
  :data:`OPTION_DOCS` below. An option without a meaning, or a meaning for an
  option that does not exist, is a build warning (an error under ``-W``).
* ``.. mls-events::`` -- the ``mls_*`` events: every name the package raises
  (found in its source as ``event("mls_...")``) must have a row in
  :data:`EVENT_DOCS`, and every row must name an event that is raised.
* ``.. mls-errors::`` -- every public error (``mls_xmpp.errors.__all__``),
  in the order of the class tree.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

from docutils import nodes
from docutils.parsers.rst import Directive
from docutils.statemachine import StringList
from sphinx.application import Sphinx
from sphinx.util import logging

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # autodoc imports this checkout even when not installed

project = "mls-xmpp"
author = "the mls-xmpp authors"
copyright = "the mls-xmpp authors"  # noqa: A001 - Sphinx's name

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",  # the "Attributes:" sections of the dataclasses
    "sphinx.ext.viewcode",
]
napoleon_use_ivar = True  # fields as :ivar: (autodoc documents the attributes themselves)
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build"]
root_doc = "index"

# Markdown: GitHub-style heading anchors, so that links like PROTOCOL.md#12-error-handling
# and the README's links resolve the same way here as on a forge.
myst_heading_anchors = 4
myst_enable_extensions = ["colon_fence"]

autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_default_options = {"show-inheritance": True}
autoclass_content = "class"

html_theme = "alabaster"
html_title = "mls-xmpp"
html_static_path: list[str] = []

log = logging.getLogger(__name__)

# -- the plugin's options ------------------------------------------------------------

#: What each option of ``register_plugin("mls", {...})`` means. Defaults are not
#: written here: the table takes them from ``XEP_MLS.default_config``.
OPTION_DOCS: dict[str, str] = {
    "store": "Where the device's identity, KeyPackage keys and groups are kept: a path "
             "(an SQLite file, created if missing) or any "
             ":class:`~mls_xmpp.storage.StateStore`. ``None`` keeps everything in memory "
             "(lost when the process ends).",
    "store_key": "32 bytes: encrypt every row of the SQLite store at rest. A store "
                 "written with a key opens only with that key.",
    "client": "A ready :class:`~mls_xmpp.core.group.client.Client` (identity). ``None``: "
              "loaded from the store, or generated from the bound JID and saved.",
    "suite": "The MLS cipher suite (1-7, RFC 9420 §17.1) of a newly generated identity "
             "(the device's first identity, whose key names it in rooms).",
    "suites": "The cipher suites this device supports, best first (must include "
              "``suite``). ``None``: ``(suite,)``. The device holds one identity (signature "
              "key) per suite, publishes KeyPackages of each, lists all in its leaves' "
              "capabilities and advertises ``urn:mls-xmpp:0:suite:N`` in disco. A new group "
              "takes the first suite every invited device supports; a ReInit to a suite "
              "later in this list than the group's is a downgrade (docs/PROTOCOL.md, "
              "section 15.3).",
    "accept_downgrade": "Follow another member's ReInit to a cipher suite ranked below the "
                        "group's current one in ``suites``. ``False``: such a ReInit is "
                        "reported (``mls_error``, ``DowngradeError``) and not followed.",
    "muc_domain": "The MUC service where group rooms are created. ``None``: "
                  "``conference.<domain of the JID>``.",
    "pool_size": "How many KeyPackages the device keeps published on its PEP node "
                 "(plus one last-resort KeyPackage).",
    "group_config": "A :class:`~mls_xmpp.core.group.config.GroupConfig` for the core "
                    "(padding, retained epochs, ...). ``None``: its defaults.",
    "commit_timeout": "Seconds to wait for the room to reflect this device's Commit before "
                      "the operation raises (the Commit stays pending and is finished if "
                      "it comes back later).",
    "device": "A stable name of this device (its leaves' application_id). With it, a "
              "device whose stored state is gone finds and removes its old leaf when it "
              "rejoins; without it, automatic recovery does not run (and says so).",
    "recover": "A device that starts without stored state rejoins, by external Commit, "
               "the groups its account's group registry lists.",
    "publish_key_packages": "Publish (and keep topped up) KeyPackages on start. Off: the "
                            "device cannot be added by others.",
    "upkeep_interval": "Seconds between KeyPackage renewals (expiring ones replaced, used "
                       "ones retracted).",
    "max_adds_per_commit": "Larger additions are split over several Commits of at most "
                           "this many KeyPackages each.",
    "upload_part_size": "Blobs (large ratchet trees) above this many bytes are uploaded "
                        "in parts. ``None``: 8 MiB, within Prosody's default upload limit.",
    "workers": "Worker processes for large batches of signature checks and HPKE "
               "encryptions (bulk adds, joins): ``None`` one less than the cores (at most 8; "
               "``MLS_XMPP_WORKERS`` overrides), ``0`` none, or a shared "
               ":class:`~mls_xmpp.workers.WorkerPool` that stays the application's.",
    "rules": "The :class:`~mls_xmpp.xmpp.rules.GroupRules` of groups this device creates "
             "(who may add, remove, reinitialise, change the rules; external joins and "
             "proposals). ``None``: :data:`~mls_xmpp.xmpp.rules.DEFAULT_RULES` with the "
             "creator as the only admin. Every member enforces a group's rules alike.",
    "blind_trust": "A device's first key is ``trusted`` until the user verifies some device "
                   "of that account; later new keys of that account are ``new``. "
                   "``False``: every new key is ``new``.",
    "refuse_send_to": "``None`` (send to everyone), ``\"distrusted\"`` or "
                      "``\"unverified\"``: ``send`` raises "
                      ":class:`~mls_xmpp.errors.UntrustedDeviceError` in a group holding "
                      "such a device.",
    "blob_max_size": "The largest blob (ratchet tree, message by reference, file) this "
                     "device downloads, in bytes; a larger one is refused unread.",
    "blob_timeout": "Seconds for fetching one blob, all parts and checks included: a tree "
                    "for a Welcome or a rejoin, a Commit by reference, a file.",
    "blob_message_timeout": "Seconds an application message sent by reference may hold up "
                            "the group's processing in room order; a slower one is dropped "
                            "and reported (``mls_error``).",
    "blob_origins": "More origins (``https://host[:port]``) blobs may be fetched from, "
                    "besides the servers of the room, this account and the sender and "
                    "their upload services (e.g. a server whose uploads are on a CDN).",
    "room_retry": "Seconds before a suspended group (its room refused or dropped this "
                  "account; the MLS state is kept) tries to enter the room again.",
    "room_retry_max": "The retry delay of a suspended group doubles up to this many seconds.",
    "archive_max_pages": "Pages (of 100 messages) one read of an archive may take; a "
                         "longer (or endless) archive stops the read with "
                         "ArchiveBudgetError, and a group that could not catch up is "
                         "healed from the room's latest GroupInfo.",
    "archive_timeout": "Seconds one read of an archive may take, all its pages together.",
    "group_info_grace": "Seconds a committer has to publish its new epoch's GroupInfo in "
                        "the room. When none arrives, the first two other members by "
                        "leaf index publish it instead, after one and two times this "
                        "delay (docs/PROTOCOL.md, GroupInfo publication).",
    "room_ping_interval": "Seconds between XEP-0410 self-pings of each group's room: a "
                          "room that dropped this device without telling it suspends the "
                          "group, which re-enters the room and reads what it missed. "
                          "0 turns the pings off.",
    "x509_trust_anchors": "CA certificates (or pinned end-entity certificates) X.509 "
                          "credentials are judged by: a path to a PEM bundle, PEM or DER "
                          "bytes, or a list of them. Only with anchors does the device list "
                          "``x509`` in its capabilities and add X.509 devices; a member whose "
                          "certificate does not verify is reported and distrusted locally, "
                          "never refused (PROTOCOL.md section 8.4).",
    "x509_credential": "``(certificates, private_key)``: use an X.509 credential instead of a "
                       "basic one. The chain, end entity first (a PEM file path, PEM bytes, or "
                       "a list of DER certificates), must name this account's JID in "
                       "subjectAltName; the key (a PEM/DER PKCS#8 file path, its bytes, or a "
                       "``cryptography`` private key) is the device's signature key, of the "
                       "``suite`` option's scheme.",
    "invitations": "Whose Welcomes this device joins. ``\"contacts\"``: roster contacts with "
                   "a mutual (\"both\") subscription; ``\"any\"``: everyone's; ``\"ask\"``: "
                   "contacts', and for anyone else the application decides "
                   "(``mls_invitation``). This account's own devices are always joined. "
                   "Others' Welcomes are dropped before they are opened and reported "
                   "(:class:`~mls_xmpp.errors.InvitationRefusedError`); the KeyPackage stays "
                   "usable. slixmpp approves every subscription request by default "
                   "(``auto_authorize``): set ``xmpp.auto_authorize = None`` to decide.",
    "invitation_limit": "At most this many Welcomes per inviter in any hour are joined or "
                        "put to the application (this account's own devices excepted); "
                        "the rest are dropped and reported.",
    "invitation_timeout": "Seconds an ``mls_invitation`` waits for ``accept()`` or "
                          "``decline()``; then it is dropped and reported.",
    "clock": "A callable giving the time in seconds since the Unix epoch, for automatic "
             "updates, idle devices and retention (default ``time.time``; tests inject one).",
    "update_after_join": "Send an update (an empty Commit with a path) soon after joining a "
                         "group by Welcome. A join with the last-resort KeyPackage always "
                         "updates, whatever this says.",
    "update_join_delay": "The update after a join waits a random time up to this many "
                         "seconds, so that many new members do not all commit at once.",
    "update_join_spread": "In a group of N members the update after joining waits at most "
                          "N times this many seconds after the last Commit when that is "
                          "longer than ``update_join_delay``: the new members update in "
                          "turns, in leaf order (in a large group made in one go every "
                          "member is new), a turn being that window over N (at least 5 s) "
                          "when the device whose turn it is does not update. ``0``: "
                          "``update_join_delay`` alone.",
    "update_interval": "Seconds without an update of this device's leaf before it sends one "
                       "(a week); ``0`` or ``None``: never.",
    "idle_timeout": "Seconds a member device's leaf may go without an update before one admin "
                    "device removes it (90 days), telling why (``mls_idle_removed``); ``0`` or "
                    "``None``: never.",
    "freshness_interval": "Seconds between the checks of updates due, idle devices and "
                          "retention bounds; the time bounds hold to within this.",
    "past_epoch_lifetime": "Seconds a past epoch's keys are kept for late messages at most "
                           "(besides the count in the group config's ``past_epochs``); then "
                           "deleted from memory and from the store.",
    "retired_key_lifetime": "Seconds the private keys of a used, retired last-resort "
                            "KeyPackage are kept (for a second Welcome made from it) before "
                            "they are deleted.",
    "device_list": "Announce this device on its account's device list (PEP node "
                   "``urn:mls-xmpp:0:devices``) and follow the lists of the accounts in "
                   "its groups: a new device of a member account is added to the shared "
                   "groups by one member (after the trust checks and the group rules), a "
                   "device taken off its list is removed (RFC 9750 §6.7).",
    "device_add_delay": "Seconds each fallback member waits, after the one before it, "
                        "before adding (or removing) a device the first choice did not.",
    "pad_envelopes": "Pad every envelope this device sends (protobuf field ``padding``) so "
                     "that its size is a bucket: a power of two from 256 bytes to 16 KiB, "
                     "then a multiple of 16 KiB. The server learns buckets, not sizes.",
    "recovery_key": "Bytes the application keeps outside the server (e.g. derived from a "
                    "recovery passphrase): the GroupInfo keys recorded in the account's "
                    "private group registry are sealed under it, so a device that lost its "
                    "state can open the room's sealed GroupInfos and the server cannot. "
                    "``None``: recorded in the clear in that private node (the account's "
                    "server can read them; the rooms' occupants and archive cannot).",
}


def _default(value: Any) -> str:
    return f"``{value!r}``"


class OptionsTable(Directive):
    """``.. mls-options::`` -- the plugin's options, defaults from ``default_config``."""

    def run(self) -> list[nodes.Node]:
        from mls_xmpp.xmpp.plugin import XEP_MLS

        defaults: dict[str, Any] = dict(XEP_MLS.default_config)
        where = self.state.document.settings.env.docname, self.lineno
        for name in defaults.keys() - OPTION_DOCS.keys():
            log.warning("plugin option %r has no description in docs/conf.py OPTION_DOCS",
                        name, location=where)
        for name in OPTION_DOCS.keys() - defaults.keys():
            log.warning("docs/conf.py OPTION_DOCS describes %r, which is not in "
                        "XEP_MLS.default_config", name, location=where)
        rows = [(f"``{name}``", _default(value), OPTION_DOCS.get(name, ""))
                for name, value in defaults.items()]
        return _table(self, ("Option", "Default", "Meaning"), rows, (2, 2, 8))


# -- the events ----------------------------------------------------------------------

#: event name -> (payload, meaning); reST.
EVENT_DOCS: dict[str, tuple[str, str]] = {
    "mls_ready": (
        ":class:`~mls_xmpp.xmpp.plugin.XEP_MLS` (the plugin)",
        "The device is set up after ``session_start``: identity loaded or created, stored "
        "groups resumed, KeyPackages published. Wait for it (or "
        "await :meth:`~mls_xmpp.xmpp.plugin.XEP_MLS.ensure_ready`) before creating groups.",
    ),
    "mls_message": (
        ":class:`~mls_xmpp.xmpp.events.MLSMessageEvent`",
        "Decrypted application content from a group member.",
    ),
    "mls_membership": (
        ":class:`~mls_xmpp.xmpp.events.MembershipEvent`",
        "A Commit was merged: members added, removed or keys updated -- ``updated`` "
        "includes the committer when its Commit carried an UpdatePath (also for this "
        "device's own Commits, ``own=True``).",
    ),
    "mls_joined": (
        ":class:`~mls_xmpp.xmpp.events.JoinedEvent`",
        "This device is now in a group (``group``): welcomed by a member (``how`` "
        "``welcome``, ``inviter``), or rejoined by external Commit after its state was "
        "lost (``external commit``). The event also answers the group handle's "
        "attributes (it used to be the handle).",
    ),
    "mls_removed": (
        ":class:`~mls_xmpp.xmpp.session.GroupSession`",
        "This device was removed from the group (or its leave was committed); the "
        "group's state is deleted. The handle cannot be used any more.",
    ),
    "mls_error": (
        ":class:`~mls_xmpp.xmpp.events.MLSErrorEvent`",
        "Input that was dropped (a forged or malformed payload, a message for a lost "
        "epoch) or a background task that failed; group state is unchanged.",
    ),
    "mls_resynced": (
        ":class:`~mls_xmpp.xmpp.events.ResyncEvent`",
        "This device had fallen behind its group (an epoch gap: docs/PROTOCOL.md §12) and "
        "caught up again: by re-reading the room archive, or by an external Commit that "
        "replaced its leaf.",
    ),
    "mls_progress": (
        ":class:`~mls_xmpp.xmpp.events.ProgressEvent`",
        "How far adding members has come (KeyPackages fetched, Commit built, accepted "
        "by the room, affiliations, Welcomes sent).",
    ),
    "mls_device": (
        ":class:`~mls_xmpp.xmpp.devices.DeviceEvent`",
        "A member account's device list changed and this device acted: ``added`` its new "
        "device, ``removed`` a device taken off the list, or ``held`` a new device back "
        "(``reason``: a trust check) for the user to decide.",
    ),
    "mls_trust": (
        ":class:`~mls_xmpp.xmpp.trust.TrustChange`",
        "A device's first key, a device's key change (``previous`` fingerprint), or the "
        "user's decision (verified, distrusted, trusted). Local data: never changes validity.",
    ),
    "mls_invitation": (
        ":class:`~mls_xmpp.xmpp.events.InvitationEvent`",
        "With ``invitations=\"ask\"``: someone who is not a contact invites this device "
        "into a group. Nothing is opened or used until ``await event.accept()``; "
        "``decline()`` drops it.",
    ),
    "mls_idle_removed": (
        ":class:`~mls_xmpp.xmpp.events.IdleRemovalEvent`",
        "A Commit removed devices whose keys had not changed for ``idle_timeout``; raised on "
        "every member, the removed devices too (then ``mls_removed`` follows). The reason "
        "comes from the Commit's authenticated_data.",
    ),
    "mls_outbox": (
        ":class:`~mls_xmpp.xmpp.events.OutboxEvent`",
        "A message ``send()`` accepted changed state: ``queued`` (stored; offline, or the "
        "group is still reading the archive), ``sent`` (encrypted, handed to the stream), "
        "``reflected`` (the room has it: delivered) or ``failed`` (given up, with the error).",
    ),
    "mls_reinit": (
        ":class:`~mls_xmpp.xmpp.events.ReInitEvent`",
        "A group moves to a new cipher suite or version by ReInit: ``committed`` (the old "
        "group is closed; its handle raises ``GroupClosedError``), ``moved`` (this device "
        "made the new group; ``stranded`` lists devices that cannot follow), ``followed`` "
        "(this device is in the new group; the old state is deleted).",
    ),
    "mls_proposal": (
        ":class:`~mls_xmpp.core.group.events.ProposalReceived` (a core event)",
        "A member's proposal arrived (for example another device's leave); the "
        "designated committer commits it.",
    ),
}

_RAISED = re.compile(r"""\bevent\(\s*["'](mls_[a-z_]+)["']""")


def raised_events() -> set[str]:
    """Every ``mls_*`` event name the package raises, read from its source."""
    names: set[str] = set()
    for path in (ROOT / "mls_xmpp").rglob("*.py"):
        names.update(_RAISED.findall(path.read_text(encoding="utf-8")))
    return names


class EventsTable(Directive):
    """``.. mls-events::`` -- every ``mls_*`` event and what its handler receives."""

    def run(self) -> list[nodes.Node]:
        raised = raised_events()
        where = self.state.document.settings.env.docname, self.lineno
        for name in sorted(raised - EVENT_DOCS.keys()):
            log.warning("event %r is raised by mls_xmpp but not in docs/conf.py EVENT_DOCS",
                        name, location=where)
        for name in sorted(EVENT_DOCS.keys() - raised):
            log.warning("docs/conf.py EVENT_DOCS lists %r, which mls_xmpp never raises",
                        name, location=where)
        rows = [(f"``{name}``", payload, meaning)
                for name, (payload, meaning) in EVENT_DOCS.items()]
        return _table(self, ("Event", "Handler receives", "When"), rows, (2, 4, 7))


# -- the errors ----------------------------------------------------------------------


class ErrorsTree(Directive):
    """``.. mls-errors::`` -- every name of ``mls_xmpp.errors.__all__``, root first.

    Depth first through the class tree, so that each error follows its parent;
    a public name outside the tree of ``MLSError`` is a build warning.
    """

    def run(self) -> list[nodes.Node]:
        import mls_xmpp.errors as module

        public = {name: getattr(module, name) for name in module.__all__}
        order: list[str] = []

        def visit(cls: type) -> None:
            if cls.__name__ in public and cls.__name__ not in order:
                order.append(cls.__name__)
            for sub in sorted(cls.__subclasses__(), key=_tree_position):
                visit(sub)

        visit(module.MLSError)
        where = self.state.document.settings.env.docname, self.lineno
        for name in sorted(public.keys() - set(order)):
            log.warning("mls_xmpp.errors.%s is not an MLSError", name, location=where)
        lines: list[str] = []
        for name in order:
            lines += [f".. autoexception:: mls_xmpp.errors.{name}", ""]
        container = nodes.container()
        self.state.nested_parse(StringList(lines, source="docs/conf.py"),
                                self.content_offset, container)
        return list(container.children)


def _tree_position(cls: type) -> tuple[int, str]:
    """Branches in the order the hierarchy is explained: remote, local, transport."""
    rank = {"RemoteProtocolError": 0, "LocalUsageError": 1, "TransportError": 2}
    return rank.get(cls.__name__, 3), cls.__name__


def _table(directive: Directive, header: tuple[str, ...], rows: list[tuple[str, ...]],
           widths: tuple[int, ...]) -> list[nodes.Node]:
    """A reST list-table, parsed so that roles in the cells work."""
    lines = [".. list-table::", "   :header-rows: 1",
             f"   :widths: {' '.join(map(str, widths))}", ""]
    for row in (header, *rows):
        lines.append(f"   * - {row[0]}")
        lines += [f"     - {cell}" for cell in row[1:]]
    container = nodes.container()
    directive.state.nested_parse(StringList(lines, source="docs/conf.py"),
                                 directive.content_offset, container)
    return list(container.children)


def setup(app: Sphinx) -> dict[str, Any]:
    app.add_directive("mls-options", OptionsTable)
    app.add_directive("mls-events", EventsTable)
    app.add_directive("mls-errors", ErrorsTree)
    return {"parallel_read_safe": True}
