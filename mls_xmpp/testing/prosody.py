"""A throw-away Prosody on loopback: the Delivery Service for tests and the demo.

:class:`ProsodyServer` starts the Debian ``prosody`` package with the project's
config file (``prosody.cfg.lua`` next to this module) on free ports, keeps all
its state (data, pidfile, log, admin socket) in a temporary directory, creates
accounts while it runs, and stops it by PID::

    with ProsodyServer() as server:
        alice = server.create_user("alice", "secret")
        ...  # connect with mls_xmpp.testing.connect_client(server, *alice)

Readiness means: Prosody wrote its own pidfile with the PID we started, logged
that the client (c2s) and HTTP listeners are active on *our* ports, and the c2s
port accepts a TCP connection. (Prosody writes the pidfile after its ports may
already accept, and it keeps running when a port is taken, so the port check
alone is not enough.) A port taken between choosing and binding is retried on
fresh ports.
"""

from __future__ import annotations

import atexit
import itertools
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import IO, NamedTuple, TypeVar

__all__ = [
    "CONFIG_PATH",
    "Account",
    "ProsodyError",
    "ProsodyServer",
]

#: The project's Prosody configuration, shipped as package data.
CONFIG_PATH = Path(__file__).with_name("prosody.cfg.lua")

_LOCALPART_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-_.")
_MODULE_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_")
_unique = itertools.count(1)
_T = TypeVar("_T")


class ProsodyError(RuntimeError):
    """Prosody could not be started, driven or stopped; the message has details."""


class Account(NamedTuple):
    """An account on the test server: bare JID and password."""

    jid: str
    password: str


class ProsodyServer:
    """One Prosody process on 127.0.0.1 with its own state directory.

    Use as a context manager, or call :meth:`start` and :meth:`stop`. Ports are
    chosen at start; :attr:`c2s_port`, :attr:`http_port`, :attr:`directory` and
    :attr:`log_path` are valid from then on.

    :param storage: Prosody storage backend, ``"internal"`` (files, as deployed)
        or ``"memory"`` (faster, nothing persists).
    :param log_level: minimum level written to :attr:`log_path`.
    :param start_timeout: seconds to wait for readiness before giving up.
    :param stop_timeout: seconds between SIGTERM and SIGKILL.
    :param keep_directory: leave the state directory (and log) after stop.
    :param smacks: offer XEP-0198 stream management (Prosody's mod_smacks): streams
        are resumed after a cut, and stanzas acknowledged.
    :param without_modules: Prosody modules to leave out of the configuration
        (for example ``("muc_mam",)``: rooms without an archive), to test how
        clients and ``mls-xmpp doctor`` handle a server that lacks a feature.
        They are dropped from every ``modules_enabled`` and put in
        ``modules_disabled`` (so autoloaded ones like ``"offline"`` go too); a
        module another one depends on (``"pep"``, needed by ``"vcard4"``) still loads.
    :param settings: more global Prosody options, ``{name: value}`` with values
        ``bool``, ``int``, ``float`` or ``str`` (for example
        ``{"c2s_stanza_size_limit": 1 << 20}``); written to ``settings.cfg.lua``
        in the state directory, which the config includes before its hosts.
        The defaults are Prosody's own, as deployed.
    """

    #: The XMPP domain of the single virtual host.
    domain = "localhost"
    #: The MUC (XEP-0045) service, with MAM (XEP-0313) on its rooms.
    muc_domain = "conference.localhost"
    #: The HTTP File Upload (XEP-0363) service.
    upload_domain = "upload.localhost"

    def __init__(
        self,
        *,
        storage: str = "internal",
        log_level: str = "info",
        start_timeout: float = 20.0,
        stop_timeout: float = 5.0,
        keep_directory: bool = False,
        prosody: str = "prosody",
        prosodyctl: str = "prosodyctl",
        config_path: Path = CONFIG_PATH,
        smacks: bool = False,
        without_modules: Iterable[str] = (),
        archive_expires: str = "1w",
        settings: Mapping[str, bool | int | float | str] | None = None,
    ) -> None:
        if storage not in ("internal", "memory"):
            raise ValueError(f"storage must be 'internal' or 'memory', not {storage!r}")
        self.storage = storage
        self.log_level = log_level
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.keep_directory = keep_directory
        self.prosody = prosody
        self.prosodyctl = prosodyctl
        self.config_path = config_path
        self.smacks = smacks
        self.without_modules = tuple(without_modules)
        for name in self.without_modules:
            if not name or not set(name) <= _MODULE_CHARS:
                raise ValueError(f"not a Prosody module name: {name!r}")
        #: how long the rooms' and accounts' archives keep stanzas (Prosody's syntax:
        #: "1w", "3d", "12h"); ``muc_log_expires_after`` and ``archive_expires_after``
        self.archive_expires = archive_expires
        self.settings = dict(settings or {})
        for name, value in self.settings.items():
            if not name.isidentifier() or not isinstance(value, bool | int | float | str):
                raise ValueError(f"unusable Prosody setting {name!r} = {value!r}")
        self._process: subprocess.Popen[bytes] | None = None
        self._stdout: IO[bytes] | None = None
        self._directory: Path | None = None
        self._c2s_port: int | None = None
        self._http_port: int | None = None
        #: Seconds the last :meth:`start` took until ready.
        self.start_seconds: float | None = None
        #: Seconds the last :meth:`stop` took until the process was gone.
        self.stop_seconds: float | None = None

    # -- properties ---------------------------------------------------------

    @property
    def running(self) -> bool:
        """True while the Prosody process we started is alive."""
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int:
        """PID of the running Prosody."""
        return _known(self._process, "pid").pid

    @property
    def directory(self) -> Path:
        """The state directory (data, pidfile, log, admin socket)."""
        return _known(self._directory, "directory")

    @property
    def c2s_port(self) -> int:
        """TCP port of the client-to-server listener on 127.0.0.1."""
        return _known(self._c2s_port, "c2s_port")

    @property
    def http_port(self) -> int:
        """TCP port of the HTTP listener (XEP-0363 uploads) on 127.0.0.1."""
        return _known(self._http_port, "http_port")

    @property
    def host(self) -> str:
        """Address to connect to."""
        return "127.0.0.1"

    @property
    def log_path(self) -> Path:
        """Prosody's log file."""
        return self.directory / "prosody.log"

    @property
    def pidfile_path(self) -> Path:
        """The pidfile Prosody writes once it is up."""
        return self.directory / "prosody.pid"

    @property
    def environment(self) -> dict[str, str]:
        """The environment for ``prosody`` and ``prosodyctl`` (read by the config)."""
        env = dict(os.environ)
        env.update(
            MLS_XMPP_DIR=str(self.directory),
            MLS_XMPP_C2S_PORT=str(self.c2s_port),
            MLS_XMPP_HTTP_PORT=str(self.http_port),
            MLS_XMPP_STORAGE=self.storage,
            MLS_XMPP_LOG_LEVEL=self.log_level,
            MLS_XMPP_SMACKS="1" if self.smacks else "0",
            MLS_XMPP_WITHOUT=",".join(self.without_modules),
            MLS_XMPP_ARCHIVE_EXPIRES=self.archive_expires,

            MLS_XMPP_SETTINGS=str(self.directory / "settings.cfg.lua"),
        )
        return env

    # -- lifecycle ----------------------------------------------------------

    def __enter__(self) -> ProsodyServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        """Start Prosody and wait until it serves clients.

        :raises ProsodyError: Prosody is missing, exited, or was not ready within
            :attr:`start_timeout` (the message carries the end of its log).
        """
        if self._process is not None:
            raise ProsodyError("this ProsodyServer is already started")
        if shutil.which(self.prosody) is None:
            raise ProsodyError(
                f"{self.prosody!r} not found on PATH; install the Debian package "
                "'prosody' (bin/setup does)"
            )
        self._directory = Path(tempfile.mkdtemp(prefix="mls-xmpp-prosody-"))
        (self._directory / "data").mkdir()
        (self._directory / "certs").mkdir()  # empty: plaintext loopback only
        (self._directory / "settings.cfg.lua").write_text(
            "".join(f"{name} = {_lua(value)}\n" for name, value in self.settings.items()))
        t0 = time.monotonic()
        try:
            for attempt in itertools.count(1):
                self._c2s_port, self._http_port = _free_ports(2)
                try:
                    self._spawn_and_wait(t0 + self.start_timeout)
                except _PortTaken:
                    self._terminate()
                    if attempt >= 3:
                        raise ProsodyError(
                            "ports were taken by another process three times\n"
                            + self._log_tail()
                        ) from None
                    continue
                break
        except BaseException:
            self.stop()
            raise
        self.start_seconds = time.monotonic() - t0
        atexit.register(self.stop)

    def stop(self) -> None:
        """Stop Prosody (SIGTERM, SIGKILL after :attr:`stop_timeout`), remove its state.

        Safe to call more than once, and when :meth:`start` failed.
        """
        atexit.unregister(self.stop)
        t0 = time.monotonic()
        self._terminate()
        self.stop_seconds = time.monotonic() - t0
        if self._directory is not None and not self.keep_directory:
            shutil.rmtree(self._directory, ignore_errors=True)
            self._directory = None

    # -- accounts -----------------------------------------------------------

    def create_user(self, name: str, password: str) -> Account:
        """Create ``name@localhost`` on the running server.

        Uses ``prosodyctl shell user create`` through the admin socket, which
        works with either storage backend (35-100 ms each).

        :raises ValueError: the local part or password is unusable here.
        :raises ProsodyError: Prosody refused (for example: the user exists).
        """
        if not name or not set(name) <= _LOCALPART_CHARS:
            raise ValueError(f"use a simple lowercase local part, not {name!r}")
        if not password or password.startswith("-"):
            raise ValueError("password must be non-empty and not start with '-'")
        if not self.running:
            raise ProsodyError("Prosody is not running")
        jid = f"{name}@{self.domain}"
        proc = subprocess.run(
            [self.prosodyctl, "--config", str(self.config_path),
             "shell", "user", "create", jid, password],
            env=self.environment,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        if proc.returncode != 0 or "OK" not in proc.stdout:
            output = "\n".join(
                line for line in (proc.stdout + proc.stderr).splitlines()
                if "Error indexing certificate directory" not in line
            )
            raise ProsodyError(f"creating {jid} failed (exit {proc.returncode}): {output}")
        return Account(jid, password)

    def config_value(self, host: str, key: str) -> str:
        """A setting as the running server has it (``prosodyctl shell config get``),
        in Lua syntax (a string comes quoted).

        :raises ProsodyError: the server is not running, or refused.
        """
        if not self.running:
            raise ProsodyError("Prosody is not running")
        proc = subprocess.run(
            [self.prosodyctl, "--config", str(self.config_path), "shell", "config", "get",
             host, key],
            env=self.environment, stdin=subprocess.DEVNULL, capture_output=True, text=True,
            timeout=30, check=False)
        out = proc.stdout.strip()
        if proc.returncode != 0 or not out.startswith("OK: "):
            raise ProsodyError(f"reading {key} of {host} failed (exit {proc.returncode}): "
                               f"{out} {proc.stderr.strip()}")
        return out[4:]
    def create_users(self, accounts: list[tuple[str, str]]) -> list[Account]:
        """Create many ``(name, password)`` accounts through one admin shell session.

        The same as :meth:`create_user` for each, but one ``prosodyctl shell``
        for all of them (about 15 ms per account instead of 35-150 ms): what a
        benchmark with thousands of devices needs.

        :raises ValueError: a local part or password is unusable here.
        :raises ProsodyError: Prosody refused one of them (the message says how
            many were created).
        """
        for name, password in accounts:
            if not name or not set(name) <= _LOCALPART_CHARS:
                raise ValueError(f"use a simple lowercase local part, not {name!r}")
            if not password or set(password) & set("\"\\\n") or password.startswith("-"):
                raise ValueError("password must be non-empty, one line, without quotes")
        if not self.running:
            raise ProsodyError("Prosody is not running")
        out: list[Account] = []
        for start in range(0, len(accounts), 500):  # keep each session short
            chunk = accounts[start:start + 500]
            script = "".join(f'user:create("{name}@{self.domain}", "{password}")\n'
                             for name, password in chunk)
            proc = subprocess.run(
                [self.prosodyctl, "--config", str(self.config_path), "shell"],
                input=script, env=self.environment, capture_output=True, text=True,
                timeout=30 + len(chunk), check=False)
            created = proc.stdout.count("OK: User created")
            if proc.returncode != 0 or created != len(chunk):
                raise ProsodyError(
                    f"created {len(out) + created} of {len(accounts)} accounts "
                    f"(exit {proc.returncode}): {proc.stdout[-500:]}{proc.stderr[-500:]}")
            out += [Account(f"{name}@{self.domain}", password) for name, password in chunk]
        return out

    def create_numbered_users(self, prefix: str, count: int, password: str, *,
                              start: int = 0, chunk: int = 5000) -> list[Account]:
        """Create ``{prefix}{start}`` ... ``{prefix}{start + count - 1}`` with one password.

        For benchmarks with tens of thousands of accounts: each admin shell command
        is one Lua loop inside the server over Prosody's own ``usermanager.create_user``
        (the same call ``user:create`` makes; the password is hashed as for any
        account), ``chunk`` accounts per command, instead of one command per account:
        50,051 accounts took 123-309 s here under load 2-7 (2.5-6 ms each, mostly the
        server hashing the password) against ~15 ms each with :meth:`create_users`.
        The server is busy for the length of one chunk.

        :raises ValueError: the prefix or password is unusable here.
        :raises ProsodyError: Prosody refused one of them (the message says how many
            of the chunk were created).
        """
        if not prefix or not set(prefix) <= _LOCALPART_CHARS or count < 0 or start < 0:
            raise ValueError(f"use a simple lowercase prefix, not {prefix!r}")
        if not password or set(password) & set("\"\\\n") or password.startswith("-"):
            raise ValueError("password must be non-empty, one line, without quotes")
        if not self.running:
            raise ProsodyError("Prosody is not running")
        for first in range(start, start + count, chunk):
            last = min(start + count, first + chunk) - 1
            script = (f'>local um = require "core.usermanager"; local n = 0; '
                      f'for i = {first}, {last} do '
                      f'if um.create_user("{prefix}" .. i, "{password}", "{self.domain}") '
                      f'then n = n + 1 end end; return "created " .. n\n')
            proc = subprocess.run(
                [self.prosodyctl, "--config", str(self.config_path), "shell"],
                input=script, env=self.environment, capture_output=True, text=True,
                timeout=60 + (last - first) // 10, check=False)
            if proc.returncode != 0 or f"created {last - first + 1}" not in proc.stdout:
                raise ProsodyError(
                    f"creating {prefix}{first}..{last} failed (exit {proc.returncode}): "
                    f"{proc.stdout[-500:]}{proc.stderr[-500:]}")
        return [Account(f"{prefix}{i}@{self.domain}", password)
                for i in range(start, start + count)]

    def create_account(self, prefix: str = "user") -> Account:
        """Create an account with a unique name ``<prefix>-<n>-<random>`` and password."""
        name = f"{prefix}-{next(_unique)}-{secrets.token_hex(3)}"
        return self.create_user(name, f"pw-{secrets.token_hex(8)}")

    def room_jid(self, name: str) -> str:
        """The bare JID of room ``name`` on :attr:`muc_domain`."""
        return f"{name}@{self.muc_domain}"

    def log_text(self) -> str:
        """Prosody's log so far ('' when there is none)."""
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except (OSError, ProsodyError):
            return ""

    # -- internals ----------------------------------------------------------

    def _ready_services(self) -> list[str]:
        """Log lines that show every listener of ours is up (subclasses add theirs)."""
        return [f"Activated service 'c2s' on [127.0.0.1]:{self.c2s_port}",
                f"Activated service 'http' on [127.0.0.1]:{self.http_port}"]

    def _ready_ports(self) -> list[int]:
        """Ports that must accept a connection before the server counts as ready."""
        return [self.c2s_port]

    def _before_spawn(self) -> None:
        """Hook for subclasses: write files the config needs before each attempt."""

    def _spawn_and_wait(self, deadline: float) -> None:
        assert self._directory is not None
        try:
            self.pidfile_path.unlink()
        except FileNotFoundError:
            pass
        self._before_spawn()
        self.log_path.write_bytes(b"")  # fresh log for this attempt
        self._stdout = open(self._directory / "stdout.log", "wb")
        self._process = subprocess.Popen(
            [self.prosody, "--config", str(self.config_path), "-F"],
            env=self.environment,
            stdin=subprocess.DEVNULL,
            stdout=self._stdout,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches us; we stop Prosody ourselves
        )
        pid = str(self._process.pid)
        wanted = self._ready_services()
        ports = self._ready_ports()
        while True:
            if self._process.poll() is not None:
                raise ProsodyError(
                    f"prosody exited with status {self._process.returncode} while starting\n"
                    + self._log_tail()
                )
            log = self.log_text()
            if "Failed to open server port" in log:
                raise _PortTaken()
            if (
                _read(self.pidfile_path) == pid
                and all(w in log for w in wanted)
                and all(_accepts(self.host, port) for port in ports)
            ):
                return
            if time.monotonic() > deadline:
                raise ProsodyError(
                    f"prosody not ready after {self.start_timeout:.0f} s\n" + self._log_tail()
                )
            time.sleep(0.02)

    def _terminate(self) -> None:
        proc, self._process = self._process, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(self.stop_timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        if self._stdout is not None:
            self._stdout.close()
            self._stdout = None

    def _log_tail(self, lines: int = 40) -> str:
        parts = []
        for path in (self.directory / "stdout.log", self.log_path):
            text = _read(path)
            if text:
                tail = "\n".join(text.splitlines()[-lines:])
                parts.append(f"--- {path} ---\n{tail}")
        return "\n".join(parts) or "(no log written)"


class _PortTaken(Exception):
    """Another process bound one of our ports between choosing and binding."""


def _known(value: _T | None, what: str) -> _T:
    if value is None:
        raise ProsodyError(f"{what} is only known after start()")
    return value


def _free_ports(count: int) -> tuple[int, ...]:
    """``count`` distinct TCP ports that are free on 127.0.0.1 right now."""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return tuple(s.getsockname()[1] for s in socks)
    finally:
        for s in socks:
            s.close()


def _lua(value: bool | int | float | str) -> str:
    """A Lua literal for a setting's value."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        return ""
