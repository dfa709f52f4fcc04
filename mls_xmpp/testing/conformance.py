"""The conformance kit's scenario: real stanza exchanges of the mapping, annotated.

:func:`play` runs three devices of this plugin (alice, bob, carol) against a
real Prosody through every exchange of docs/PROTOCOL.md -- KeyPackage
publication and fetching, room creation and configuration, Commits, Welcomes,
GroupInfos, application messages, an update, a leave proposal, an archive
read, a removal and its removal notice -- and records every stanza each
client sent and received (:class:`~mls_xmpp.testing.tap.StanzaTap`), step by
step. :func:`annotate` says, for every element of the mapping's namespace in
a stanza, what a parser must read from it (the envelope's kind, group_id,
epoch, the MLS wire format and content type; a KeyPackage's reference,
credential and cipher suite). :func:`write_exchanges` writes one XML file per
step (format in ``conformance/README.md``); ``conformance/record.py`` is the
command line, ``tests/conformance`` checks the committed files and
``tests/integration/test_schema_live.py`` checks live traffic against the
schema with the same scenario.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape, quoteattr

from slixmpp.xmlstream import ET

from .prosody import Account, ProsodyServer
from .tap import MLS_NS, RecordedStanza, StanzaTap, mls_elements

__all__ = ["CONFORMANCE_NS", "MLS_NS", "Step", "annotate", "interesting", "payload_bytes", "play",
           "write_exchanges"]

#: Namespace of the kit's own wrapper elements (not part of the mapping).
CONFORMANCE_NS = "urn:mls-xmpp:conformance:0"
_MUC_OWNER = "http://jabber.org/protocol/muc#owner"
_MAM = "urn:xmpp:mam:2"
_TIMEOUT = 60.0


@dataclass
class Step:
    """One step of the scenario and the stanzas recorded during it."""

    name: str
    note: str
    stanzas: list[RecordedStanza] = field(default_factory=list)


def interesting(stanza: ET.Element) -> bool:
    """Whether a stanza belongs in the kit: it carries an element of the mapping,
    configures a room (``muc#owner``) or queries an archive (MAM)."""
    if mls_elements(stanza):
        return True
    return any(el.tag in (f"{{{_MUC_OWNER}}}query", f"{{{_MAM}}}query", f"{{{_MAM}}}fin")
               for el in stanza.iter())


def annotate(element: ET.Element) -> dict[str, str]:
    """What a parser must read from one element of the mapping (attribute values).

    Decoded with the plugin's own parsers; raises their typed errors on bad input.
    """
    from ..core.messages.framing import MLSMessage
    from ..core.messages.key_package import KeyPackage
    from ..xmpp.envelope import Envelope
    from ..xmpp.keystore import credential_jid, decode_item
    from ..xmpp.privacy import is_sealed

    local = element.tag.split("}")[-1]
    out = {"element": local}
    if local == "mls":
        env = Envelope.from_base64(element.text or "")
        out.update({"kind": env.kind.name, "group-id": env.group_id.hex(),
                    "epoch": str(env.epoch)})
        if env.room:
            out["room"] = env.room
        if env.after_stanza_id:
            out["after-stanza-id"] = env.after_stanza_id
        if env.fragment is not None:
            out["fragment"] = f"{env.fragment.index}/{env.fragment.count}"
        elif env.kind.name == "GROUP_INFO" and is_sealed(env.mls_message):
            out["sealed"] = "true"  # only members (the GroupInfo key) open it
        elif env.mls_message:
            message = MLSMessage.decode(env.mls_message)
            body = message.body
            out["wire-format"] = _WIRE_FORMATS.get(message.wire_format,
                                                   str(message.wire_format))
            content_type = getattr(body, "content_type", None)
            if content_type is None:
                content = getattr(body, "content", None)
                content_type = getattr(content, "content_type", None)
            if content_type is not None:
                out["content-type"] = _CONTENT_TYPES.get(int(content_type), str(content_type))
            mls_epoch = getattr(body, "epoch", None)
            if mls_epoch is None:
                mls_epoch = getattr(getattr(body, "content", None), "epoch", None)
            if mls_epoch is None:
                mls_epoch = getattr(getattr(body, "group_context", None), "epoch", None)
            if mls_epoch is not None:
                out["mls-epoch"] = str(mls_epoch)
    elif local == "key-package":
        key_package, item = decode_item(element)
        assert isinstance(key_package, KeyPackage)
        out.update({"ref": key_package.ref(_suite(key_package.cipher_suite)).hex(),
                    "credential": credential_jid(key_package.leaf_node.credential),
                    "cipher-suite": str(key_package.cipher_suite),
                    "last-resort": "true" if item.last_resort else "false"})
    elif local == "group":
        out.update({"room": element.get("room", ""), "group-id": element.get("group-id", "")})
    elif local == "device":
        keys = {k.get("suite", ""): (k.text or "") for k in element}
        out.update({"name": element.get("name", ""),
                    "keys": " ".join(f"{s}:{fp}" for s, fp in sorted(keys.items()))})
    return out


def _suite(suite_id: int) -> Any:
    from ..core.crypto.suite import get_suite

    return get_suite(suite_id)


_WIRE_FORMATS = {1: "mls_public_message", 2: "mls_private_message", 3: "mls_welcome",
                 4: "mls_group_info", 5: "mls_key_package"}
_CONTENT_TYPES = {1: "application", 2: "proposal", 3: "commit"}


async def _client(server: ProsodyServer, account: Account, label: str,
                  log: list[RecordedStanza], config: dict[str, Any] | None = None) -> Any:
    import slixmpp

    import mls_xmpp  # noqa: F401 - registers the "mls" plugin

    client = slixmpp.ClientXMPP(account.jid, account.password)
    client.enable_direct_tls = False
    client.enable_starttls = False
    client.enable_plaintext = True
    client.plugin["feature_mechanisms"].unencrypted_scram = True
    # no automatic update after joining: the scenario's steps are the only Commits
    # (the first joiner in line updates within a second of its Welcome, and an
    # epoch the steps do not expect made them wait in vain)
    client.register_plugin("mls", {"invitations": "any", "update_after_join": False,
                                   **(config or {})})
    StanzaTap(client, label, log)
    ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def on_ready(_: Any) -> None:
        if not ready.done():
            ready.set_result(None)

    client.add_event_handler("mls_ready", on_ready)
    client.add_event_handler("session_start", lambda _: client.send_presence())
    client.connect(server.host, server.c2s_port)
    await asyncio.wait_for(ready, _TIMEOUT)
    return client


async def _until(predicate: Callable[[], bool]) -> None:
    deadline = asyncio.get_running_loop().time() + _TIMEOUT
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError("the scenario did not reach its next state")
        await asyncio.sleep(0.05)


async def play(server: ProsodyServer, accounts: Iterable[Account]) -> list[Step]:
    """Run the scenario with three accounts (alice, bob, carol); the steps recorded."""
    from .client import disconnect_client

    alice_acc, bob_acc, carol_acc = accounts
    log: list[RecordedStanza] = []
    steps: list[Step] = []
    joined: dict[str, list[Any]] = {"bob": [], "carol": []}
    messages: dict[str, list[str]] = {"alice": [], "bob": [], "carol": []}
    removed: list[Any] = []

    def step(name: str, note: str) -> None:
        steps.append(Step(name, note))
        log.clear()

    def close_step() -> None:
        steps[-1].stanzas = [s for s in log if interesting(s.element())]

    def on(client: Any, label: str) -> None:
        if label in joined:
            client.add_event_handler("mls_joined", lambda e: joined[label].append(e.group))
        client.add_event_handler("mls_message", lambda e: messages[label].append(e.body))
        client.add_event_handler("mls_removed", lambda g: removed.append((label, g)))

    step("publish-key-packages",
         "Each device starts: it publishes its KeyPackages to the PEP node "
         "urn:mls-xmpp:0:key-packages of its account (5 normal and 1 last resort), with "
         "publish-options access_model=open, max_items=100.")
    alice = await _client(server, alice_acc, "alice", log)
    bob = await _client(server, bob_acc, "bob", log)
    carol = await _client(server, carol_acc, "carol", log)
    for client, label in ((alice, "alice"), (bob, "bob"), (carol, "carol")):
        on(client, label)
    close_step()
    try:
        step("create-group",
             "alice creates a group with bob: she fetches bob's KeyPackages, creates and "
             "configures the room (form values as the server's form sends them: 1/0), "
             "records it in her groups node, commits the Add (a PrivateMessage), and "
             "after the room reflected the Commit sends bob the Welcome (to his bare "
             "JID, with room and after_stanza_id) and the new epoch's GroupInfo to the "
             "room. bob joins the room and reads its archive after after_stanza_id.")
        group = await alice.plugin["mls"].create_group(members=[bob_acc.jid])
        await _until(lambda: bool(joined["bob"]))
        gb = joined["bob"][0]
        await asyncio.wait_for(gb.ready.wait(), _TIMEOUT)
        await asyncio.sleep(0.5)  # the GroupInfo and bob's archive read
        close_step()

        step("application-messages",
             "alice and bob send one application message each: PrivateMessages of "
             "content type application, whose plaintext is a padded Content.")
        await group.send("hello bob")
        await _until(lambda: messages["bob"] == ["hello bob"])
        await gb.send("hello alice")
        await _until(lambda: messages["alice"] == ["hello alice"])
        close_step()

        step("update",
             "bob commits an update: a Commit with no proposals and an UpdatePath, then "
             "publishes the new GroupInfo.")
        await gb.update()
        await _until(lambda: group.epoch == gb.epoch == 2)
        await asyncio.sleep(0.5)
        close_step()

        step("add-member",
             "alice adds carol: KeyPackages fetched, Commit, Welcome, GroupInfo.")
        await group.add(carol_acc.jid)
        await _until(lambda: bool(joined["carol"]))
        gc = joined["carol"][0]
        await asyncio.wait_for(gc.ready.wait(), _TIMEOUT)
        await _until(lambda: group.epoch == gb.epoch == gc.epoch == 3)
        await asyncio.sleep(0.5)
        close_step()

        step("leave",
             "carol leaves: she sends a Remove proposal for her own leaf (kind "
             "PROPOSAL); alice, the designated committer (lowest leaf index), commits it.")
        await gc.leave()
        await _until(lambda: any(label == "carol" for label, _ in removed))
        await _until(lambda: group.epoch == gb.epoch == 4)
        await asyncio.sleep(0.5)
        close_step()

        step("archive-read",
             "bob goes offline; alice sends a message; bob comes back, re-enters the room "
             "and reads the room archive (MAM, RSM after his stored position).")
        await disconnect_client(bob)
        await group.send("while you were away")
        bob.connect(server.host, server.c2s_port)
        await _until(lambda: "while you were away" in messages["bob"])
        close_step()

        step("remove-member",
             "alice removes bob's account: a Commit with a Remove, then a removal notice "
             "(the same Commit, kind COMMIT) to bob's bare JID, his affiliation set to "
             "none, and the new GroupInfo.")
        await group.remove(bob_acc.jid)
        await _until(lambda: any(label == "bob" for label, _ in removed))
        await asyncio.sleep(0.5)
        close_step()
    finally:
        for client in (alice, bob, carol):
            await disconnect_client(client)
    return steps


def write_exchanges(steps: list[Step], directory: Path) -> list[Path]:
    """Write one annotated XML file per step into ``directory``; the paths written."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for n, s in enumerate(steps, 1):
        lines = ["<?xml version='1.0' encoding='UTF-8'?>",
                 f"<exchange xmlns='{CONFORMANCE_NS}' step='{n}' name={quoteattr(s.name)}>",
                 f"  <note>{escape(s.note)}</note>"]
        for rec in s.stanzas:
            lines.append(f"  <stanza client={quoteattr(rec.client)} "
                         f"direction={quoteattr(rec.direction)}>")
            for el in mls_elements(rec.element()):
                attrs = " ".join(f"{k}={quoteattr(v)}" for k, v in annotate(el).items())
                lines.append(f"    <expect {attrs}/>")
            lines.append(f"    {rec.xml}")
            lines.append("  </stanza>")
        lines.append("</exchange>")
        path = directory / f"{n:02d}-{s.name}.xml"
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        paths.append(path)
    return paths


def payload_bytes(element: ET.Element) -> bytes:
    """The bytes of an element's base64 text (strict: canonical, no whitespace)."""
    text = element.text or ""
    data = base64.b64decode(text, validate=True)
    if base64.b64encode(data).decode() != text:
        raise ValueError("base64 text is not canonical")
    return data

