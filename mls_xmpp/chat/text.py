"""Output formatting: escaping remote text, tags, sizes, time stamps, and the /help text."""

from __future__ import annotations

import re
import time
from collections.abc import Sequence

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def clean(text: str) -> str:
    """``text`` with control characters (except newline and tab) escaped.

    Peers choose message bodies and (through their credentials) names; none of
    it may reach the terminal as escape sequences or bidirectional overrides.
    """
    def escape(m: re.Match[str]) -> str:
        return m.group().encode("unicode_escape").decode("ascii")

    return _CONTROL.sub(escape, text).replace("\t", "    ")


def _one_line(text: str) -> str:
    return clean(text).replace("\n", "\\n")


def room_short(room: str) -> str:
    """The first eight characters of a room's local part: a group's tag in output."""
    local = room.split("@", 1)[0] if "@" in room else room
    return _one_line(local[:8])


def _stamp() -> str:
    return time.strftime("%H:%M:%S")


def safe_file_name(name: str) -> str:
    """A sender-chosen file name made safe to save: a plain name, never a path."""
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    name = re.sub(r"[^\w.\- ]", "_", name).strip(" .")
    return name or "file"


def _size(n: int) -> str:
    """A human-readable file size."""
    if n < 1024:
        return f"{n} B"
    if n < 1024 * 1024:
        return f"{n / 1024:.1f} KiB"
    return f"{n / 1024 / 1024:.1f} MiB"


def _jids(items: Sequence[str]) -> str:
    return ", ".join(_one_line(j) for j in items)


HELP = """commands:
  /groups               list your groups: index, room, epoch, member count
  /create [JID ...]     create a group (adding every device of each JID) and select it;
                        each JID is asked to be a contact (devices join contacts' groups)
  /open N|ROOM          select a group by index (from /groups), room, or the room's first
                        characters (at least 4, as shown before each message)
  /invite JID [JID ...] add every device of each JID to the current group
  /remove JID [JID ...] remove every device of each JID from the current group
  /remove-device FP     remove one device (e.g. a lost phone) by the first characters of
                        its fingerprint (at least 8, as /members shows it)
  /members              members of the current group: leaf, JID, device fingerprint, trust
  /fingerprints [JID]   every device seen (of JID): fingerprint, trust state, device name
  /safety JID FP        the safety number to compare with the owner of that device
  /verify JID FP        mark that device verified (after comparing the safety number)
  /distrust JID FP      mark it distrusted (/remove-device removes it from a group)
  /trust JID FP         trust it again without verifying
  /update               fresh keys for this device (post-compromise security)
  /leave                ask the other members to remove this device from the current group
  /history [N]          the last N messages of the current group (default 20)
  /send-file PATH [TEXT] share a file with the current group (encrypted, uploaded)
  /save N [DIR]         download, check and decrypt file N into DIR (default: .)
  /help                 this list
  /quit                 log out and exit
any other line is sent to the current group ('//text' sends '/text'); a JID
without '@' is taken on your own domain"""
