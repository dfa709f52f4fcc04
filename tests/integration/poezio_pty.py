"""A real poezio process in a pseudo-terminal, its screen rendered by pyte.

:class:`Poezio` starts ``poezio_child.py`` (poezio with the root and plaintext
switches) in a 120x40 pty with its own HOME and XDG directories, drains the
pty in a thread (a full pty would freeze poezio) into a :class:`pyte.Screen`,
and waits, with a timeout, for text on the rendered screen. Typing follows
poezio's input rules: a multi-character read is a paste (a trailing Enter is
dropped), so a line is typed, its echo in the input row awaited, then Enter
sent alone; in the roster tab only a lone ``/`` opens the command line.
"""

from __future__ import annotations

import os
import re
import sys
import threading
import time
from pathlib import Path

import pexpect
import pyte

CHILD = Path(__file__).with_name("poezio_child.py")
COLS, ROWS = 120, 40


def write_config(home: Path, jid: str, password: str, host: str, port: int,
                 mls: dict[str, str] | None = None) -> Path:
    """poezio.cfg for one account on the plaintext loopback Prosody, and the
    ``mls`` plugin's config (``plugins/mls.cfg``); the plugin is autoloaded."""
    opts = {
        "jid": jid, "password": password,
        "custom_host": host, "custom_port": port,
        "force_encryption": "false", "ignore_certificate": "true",
        "use_log": "false", "use_remote_bookmarks": "false",
        "synchronise_open_rooms": "false", "mam_sync": "false",
        "muc_history_length": 0, "enable_user_nick": "false", "enable_avatars": "false",
        "enable_user_mood": "false", "enable_user_activity": "false",
        "enable_user_tune": "false", "enable_user_gaming": "false",
        "send_os_info": "false", "information_buffer_popup_on": "",
        "show_timestamps": "true", "enable_vertical_tab_list": "false",
        "plugins_autoload": "mls",
    }
    cfg = home / "poezio.cfg"
    cfg.parent.mkdir(parents=True, exist_ok=True)
    cfg.write_text("[Poezio]\n" + "".join(f"{k} = {v}\n" for k, v in opts.items()))
    plugin_cfg = home / "config" / "poezio" / "plugins" / "mls.cfg"
    plugin_cfg.parent.mkdir(parents=True, exist_ok=True)
    plugin_cfg.write_text("[mls]\n" + "".join(f"{k} = {v}\n" for k, v in (mls or {}).items()))
    return cfg


class Poezio:
    """poezio in a pty; :meth:`wait_for` reads its rendered screen."""

    def __init__(self, home: Path, config: Path) -> None:
        self.home = home
        self.config = config
        self.screen = pyte.Screen(COLS, ROWS)
        self.stream = pyte.ByteStream(self.screen)
        self.lock = threading.Lock()
        self.eof = threading.Event()
        self.proc: pexpect.spawn | None = None
        env = dict(os.environ)
        env.update({
            "HOME": str(home), "XDG_CONFIG_HOME": str(home / "config"),
            "XDG_DATA_HOME": str(home / "data"), "XDG_CACHE_HOME": str(home / "cache"),
            "TERM": "xterm-256color", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8",
            # box lines as Unicode: pyte ignores the ESC ( 0 line-drawing set in UTF-8
            "NCURSES_NO_UTF8_ACS": "1",
        })
        self.env = env

    def start(self) -> Poezio:
        """Spawn poezio (its debug log, full XML, goes to ``HOME/debug.log``)."""
        self.proc = pexpect.spawn(
            sys.executable, [str(CHILD), "-f", str(self.config), "-d",
                             str(self.home / "debug.log")],
            env=self.env, cwd=str(self.home), dimensions=(ROWS, COLS), echo=False)
        threading.Thread(target=self._drain, daemon=True).start()
        return self

    def _drain(self) -> None:
        assert self.proc is not None
        while True:
            try:
                data = self.proc.read_nonblocking(65536, timeout=0.05)
            except pexpect.TIMEOUT:
                continue
            except (pexpect.EOF, OSError):
                self.eof.set()
                return
            with self.lock:
                self.stream.feed(data)

    def lines(self) -> list[str]:
        """The screen, row by row."""
        with self.lock:
            return [line.rstrip() for line in self.screen.display]

    def text(self) -> str:
        """The screen without the input row (which echoes what is typed)."""
        return "\n".join(self.lines()[:-1])

    def dump(self) -> str:
        """The screen with row numbers, for failure messages."""
        return "\n".join(f"{i:2d}|{line}" for i, line in enumerate(self.lines()))

    def wait_for(self, pattern: str | re.Pattern[str], timeout: float = 30.0,
                 flat: bool = False) -> re.Match[str]:
        """Wait until ``pattern`` (literal text, or a regex) is on the screen.

        ``flat``: whitespace runs and box lines collapse to one space, so text
        wrapped over rows matches.
        """
        rx = pattern if isinstance(pattern, re.Pattern) else re.compile(re.escape(pattern))
        deadline = time.monotonic() + timeout
        while True:
            text = self.text()
            if flat:
                text = re.sub(r"[\s│]+", " ", text)
            found = rx.search(text)
            if found:
                return found
            if self.eof.is_set():
                raise AssertionError(f"poezio exited waiting for {rx.pattern!r}\n{self.dump()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{rx.pattern!r} not on the screen after {timeout} s\n"
                                     f"{self.dump()}")
            time.sleep(0.02)

    def type(self, text: str) -> None:
        """Send keystrokes."""
        assert self.proc is not None
        self.proc.send(text.encode())

    def send_line(self, text: str, timeout: float = 10.0) -> None:
        """Type a line (a message, or a /command) and press Enter."""
        deadline = time.monotonic() + timeout
        if text.startswith("/"):
            self.type("/")
            while not self.lines()[-1].rstrip().endswith("/"):
                if time.monotonic() > deadline:
                    raise AssertionError(f"'/' not echoed\n{self.dump()}")
                time.sleep(0.01)
            text = text[1:]
        self.type(text)
        tail = text[-20:]
        while tail not in self.lines()[-1]:
            if time.monotonic() > deadline:
                raise AssertionError(f"{text!r} not echoed\n{self.dump()}")
            time.sleep(0.01)
        self.type("\r")

    def quit(self, timeout: float = 10.0) -> None:
        """``/exit``; SIGTERM, then SIGKILL (this process only) if it does not end."""
        if self.proc is None:
            return
        if self.proc.isalive():
            try:
                self.send_line("/exit", timeout=3)
                self.eof.wait(timeout)
            except AssertionError:
                pass
        if self.proc.isalive():
            self.proc.kill(15)
            self.eof.wait(3)
        if self.proc.isalive():
            self.proc.kill(9)
        self.proc.close(force=True)
