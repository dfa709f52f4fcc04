"""``mls-xmpp chat``: a line-based terminal chat client for MLS groups over XMPP.

::

    mls-xmpp chat alice@example.org                 # password from MLS_XMPP_PASSWORD or a prompt
    mls-xmpp chat alice@localhost --server 127.0.0.1:5222 --plaintext --password PW

It logs in to any XMPP server with the slixmpp plugin (:mod:`mls_xmpp.xmpp.plugin`),
keeps this device's keys and groups in an SQLite store (by default
``~/.local/share/mls-xmpp/<jid>.db``, or under ``$XDG_DATA_HOME``), and runs a
read-eval-print loop on standard input. Lines starting with ``/`` are commands
(``/help`` lists them); any other line is a message to the current group.

Output is line-oriented, for people and for programs driving the client:

* ``[HH:MM:SS] ROOM8 SENDER: BODY`` -- a message (``ROOM8``: the first eight
  characters of the room's local part; continuation lines of a multi-line body
  are indented by four spaces). Your own messages are shown the same way once sent.
  A shared file adds an indented line ``[file N] NAME, SIZE, TYPE (/save N)``.
* ``[HH:MM:SS] ROOM8 * TEXT`` -- a group event: membership change, join, removal.
* ``[HH:MM:SS] ROOM8 ! TEXT`` / ``[HH:MM:SS] ! TEXT`` -- input the plugin dropped,
  or a connection problem.
* ``* TEXT`` -- the result of a command, and status lines.
* ``... STAGE DONE/TOTAL`` -- progress of a long operation (adding many members):
  each stage when it starts, at every tenth of the way, and when it is done.
* ``error: TEXT`` -- a command failed (the client goes on).

Remote text is printed with control characters escaped, so no peer can send
terminal escape sequences. Exit status: 0 after ``/quit`` or end of input,
1 when logging in failed, 2 on bad options, 128+N after signal N.
"""

from __future__ import annotations

from .client import HISTORY_DEFAULT as HISTORY_DEFAULT
from .client import HISTORY_SIZE as HISTORY_SIZE
from .client import MIN_PREFIX as MIN_PREFIX
from .client import PARALLEL_FETCHES as PARALLEL_FETCHES
from .client import PROGRESS_MIN as PROGRESS_MIN
from .client import RECONNECT_DELAY as RECONNECT_DELAY
from .client import Chat
from .client import _Command as _Command
from .client import log as log
from .errors import ChatError
from .errors import _describe as _describe
from .options import PASSWORD_ENV as PASSWORD_ENV
from .options import ChatOptions, default_store, parse_server
from .options import _options as _options
from .options import _parser as _parser
from .stdin import _start_reader as _start_reader
from .terminal import _lock_store as _lock_store
from .terminal import _main as _main
from .terminal import main, run
from .text import _CONTROL as _CONTROL
from .text import HELP as HELP
from .text import _jids as _jids
from .text import _one_line as _one_line
from .text import _size as _size
from .text import _stamp as _stamp
from .text import clean, room_short, safe_file_name

# The public interface. The names imported "as" themselves above are the rest of what
# this module offered before it became a package; they stay importable from here.
__all__ = ["Chat", "ChatError", "ChatOptions", "clean", "default_store", "main", "parse_server",
           "room_short", "run", "safe_file_name"]
