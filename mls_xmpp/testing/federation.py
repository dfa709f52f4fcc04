"""Two federating Prosody servers on loopback: a group whose members live on both.

:class:`Federation` starts two :class:`FederatedProsody` instances of the Debian
``prosody`` package with the project's ``federation.cfg.lua`` (next to this
module), by default ``a.test`` on 127.0.0.1 and ``b.test`` on 127.0.0.2, each
with its own free c2s, s2s and HTTP ports, MUC + MAM (``conference.<domain>``),
PEP and HTTP File Upload (``upload.<domain>``)::

    with Federation() as fed:
        alice = fed.a.create_user("alice", "pw-a")   # alice@a.test
        bob = fed.b.create_user("bob", "pw-b")       # bob@b.test
        ...  # connect alice to fed.a.host/fed.a.c2s_port, bob to fed.b's

How the servers find each other (details in ``federation.cfg.lua``): each one's
libunbound resolver (Debian package ``lua-unbound``, required) gets a private
hosts file with the peer's IP and a local ``redirect`` zone holding one SRV
record with the peer's s2s port, which answers for the peer's domain and every
name below it (``conference.<peer>``). No /etc/hosts edit, no DNS server, and
the s2s ports need not be 5269. Servers authenticate each other by dialback,
without TLS (``s2s_require_encryption = false``): loopback only.

Readiness of each server is :class:`~mls_xmpp.testing.prosody.ProsodyServer`'s
(own pidfile, listeners on *our* ports, c2s accepts) plus its s2s listener;
then :meth:`Federation.start` pings each domain from the other through the
admin shell (``xmpp:ping``), which proves name resolution, s2s and dialback
both ways, and leaves those two s2s links open. Both servers are always
stopped by PID (SIGTERM, SIGKILL after ``stop_timeout``).
"""

from __future__ import annotations

import atexit
import errno
import re
import socket
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import NamedTuple

from .prosody import ProsodyError, ProsodyServer, _PortTaken, _read

__all__ = [
    "FEDERATION_CONFIG_PATH",
    "FederatedProsody",
    "Federation",
    "Peer",
]

#: The federation configuration, shipped as package data.
FEDERATION_CONFIG_PATH = Path(__file__).with_name("federation.cfg.lua")

_LABEL = r"[a-z0-9]([a-z0-9-]*[a-z0-9])?"
_DOMAIN = re.compile(rf"^(?=.{{1,200}}$){_LABEL}(\.{_LABEL})+$")
_PONG = re.compile(r"pong from \S+ in ([0-9.e-]+)s")


class Peer(NamedTuple):
    """Where the other server of a pair listens for server-to-server connections."""

    domain: str
    interface: str
    s2s_port: int


class FederatedProsody(ProsodyServer):
    """One Prosody serving ``domain`` on ``interface``, with s2s towards one peer.

    Everything else (ports, state directory, accounts, stop by PID) is
    :class:`~mls_xmpp.testing.prosody.ProsodyServer`'s; :attr:`host` is the
    interface to connect to.

    :param domain: the XMPP domain; also ``conference.<domain>`` and
        ``upload.<domain>``. Not under ``localhost`` (see the module docstring).
    :param interface: loopback IP to listen on (any 127.x.y.z works on Linux).
    :param s2s_port: the s2s port; ``None``: a free one at each start attempt.
    :param peer: the server to federate with; settable until :meth:`start`.
    """

    def __init__(
        self,
        domain: str,
        *,
        interface: str = "127.0.0.1",
        s2s_port: int | None = None,
        peer: Peer | None = None,
        storage: str = "internal",
        log_level: str = "info",
        start_timeout: float = 20.0,
        stop_timeout: float = 5.0,
        keep_directory: bool = False,
        prosody: str = "prosody",
        prosodyctl: str = "prosodyctl",
        config_path: Path = FEDERATION_CONFIG_PATH,
    ) -> None:
        super().__init__(
            storage=storage, log_level=log_level, start_timeout=start_timeout,
            stop_timeout=stop_timeout, keep_directory=keep_directory, prosody=prosody,
            prosodyctl=prosodyctl, config_path=config_path,
        )
        _check_domain(domain)
        self.domain = domain
        self.muc_domain = f"conference.{domain}"
        self.upload_domain = f"upload.{domain}"
        self.interface = interface
        self.peer = peer
        self._fixed_s2s_port = s2s_port
        self._s2s_port: int | None = s2s_port

    @property
    def host(self) -> str:
        """Address to connect to: the interface."""
        return self.interface

    @property
    def s2s_port(self) -> int:
        """TCP port of the server-to-server listener on :attr:`interface`."""
        if self._s2s_port is None:
            raise ProsodyError("s2s_port is only known after start()")
        return self._s2s_port

    def set_s2s_port(self, port: int | None) -> None:
        """Use this s2s port from the next :meth:`start` on (``None``: a free one)."""
        if self.running:
            raise ProsodyError("stop the server before changing its s2s port")
        self._fixed_s2s_port = self._s2s_port = port

    @property
    def environment(self) -> dict[str, str]:
        """The environment for ``prosody`` and ``prosodyctl`` (read by the config)."""
        env = super().environment
        env.update(
            MLS_XMPP_DOMAIN=self.domain,
            MLS_XMPP_INTERFACE=self.interface,
            MLS_XMPP_S2S_PORT=str(self.s2s_port),
        )
        if self.peer is not None:
            env.update(
                MLS_XMPP_PEER_DOMAIN=self.peer.domain,
                MLS_XMPP_PEER_S2S_PORT=str(self.peer.s2s_port),
            )
        return env

    def ping(self, remote: str, *, local: str | None = None, timeout: float = 10.0) -> float:
        """Ping domain ``remote`` from local host ``local`` (default :attr:`domain`) over s2s.

        Opens (or reuses) the s2s link and its dialback; runs ``xmpp:ping``
        in the admin shell.

        :returns: the round trip in seconds, as Prosody measured it.
        :raises ProsodyError: no pong within ``timeout`` (the message has the shell output).
        """
        if not self.running:
            raise ProsodyError("Prosody is not running")
        local = local or self.domain
        try:
            proc = subprocess.run(
                [self.prosodyctl, "--config", str(self.config_path),
                 "shell", "xmpp", "ping", local, remote, str(timeout)],
                env=self.environment,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=timeout + 20,
                check=False,
            )
        except subprocess.TimeoutExpired as e:
            raise ProsodyError(f"pinging {remote} from {local}: prosodyctl hung") from e
        found = _PONG.search(proc.stdout)
        if proc.returncode != 0 or found is None:
            output = "\n".join(
                line for line in (proc.stdout + proc.stderr).splitlines()
                if "Error indexing certificate directory" not in line
            )
            raise ProsodyError(
                f"pinging {remote} from {local} failed (exit {proc.returncode}): {output}")
        return float(found.group(1))

    # -- internals ----------------------------------------------------------------

    def _ready_services(self) -> list[str]:
        """c2s, s2s and HTTP listeners on this server's interface."""
        return [
            f"Activated service 'c2s' on [{self.interface}]:{self.c2s_port}",
            f"Activated service 's2s' on [{self.interface}]:{self.s2s_port}",
            f"Activated service 'http' on [{self.interface}]:{self.http_port}",
        ]

    def _ready_ports(self) -> list[int]:
        """Clients and the peer server must both get in."""
        return [self.c2s_port, self.s2s_port]

    def _before_spawn(self) -> None:
        """Pick the s2s port and write the peer's address for the resolver."""
        if self._fixed_s2s_port is None:
            self._s2s_port = _free_port(self.interface, avoid={self.c2s_port, self.http_port})
        elif self._fixed_s2s_port in (self.c2s_port, self.http_port):
            raise _PortTaken()  # the base picks new c2s/HTTP ports and comes back
        if self.peer is not None:
            (self.directory / "peer.hosts").write_text(
                f"{self.peer.interface} {self.peer.domain}\n", encoding="ascii")

    def _spawn_and_wait(self, deadline: float) -> None:
        """Start once (see the base), then insist that lua-unbound was found."""
        super()._spawn_and_wait(deadline)
        if self.peer is not None and "unable to find lua-unbound" in _read(
                self.directory / "stdout.log"):
            raise ProsodyError(
                "Prosody runs without lua-unbound, so it cannot find its federation peer; "
                "install the Debian package 'lua-unbound'"
            )


class Federation:
    """Two :class:`FederatedProsody` servers that federate with each other.

    Use as a context manager, or call :meth:`start` and :meth:`stop`. Both
    servers are stopped by PID, also when starting either one failed.

    :param domains: the two domains (:attr:`a`, :attr:`b`).
    :param interfaces: their loopback IPs; 127.0.0.2 needs no set-up on Linux.
        Equal IPs work too (the s2s ports differ).
    :param check_s2s: after start, ping each domain from the other (proves
        s2s with dialback both ways; the times are in :attr:`ping_seconds`).
    Other parameters go to both servers (see
    :class:`~mls_xmpp.testing.prosody.ProsodyServer`).
    """

    def __init__(
        self,
        domains: tuple[str, str] = ("a.test", "b.test"),
        interfaces: tuple[str, str] = ("127.0.0.1", "127.0.0.2"),
        *,
        storage: str = "internal",
        log_level: str = "info",
        start_timeout: float = 20.0,
        stop_timeout: float = 5.0,
        keep_directory: bool = False,
        check_s2s: bool = True,
    ) -> None:
        if domains[0] == domains[1]:
            raise ValueError("the two domains must differ")
        self.interfaces = interfaces
        self.check_s2s = check_s2s
        self.servers = tuple(
            FederatedProsody(
                domain, interface=ip, storage=storage, log_level=log_level,
                start_timeout=start_timeout, stop_timeout=stop_timeout,
                keep_directory=keep_directory,
            )
            for domain, ip in zip(domains, interfaces, strict=True)
        )
        #: Seconds the last :meth:`start` took (both servers ready and, if asked, pinged).
        self.start_seconds: float | None = None
        #: Seconds the last :meth:`stop` took.
        self.stop_seconds: float | None = None
        #: Round trips of the start-up pings, a->b and b->a, as Prosody measured them.
        self.ping_seconds: tuple[float, float] | None = None

    @property
    def a(self) -> FederatedProsody:
        """The first server."""
        return self.servers[0]

    @property
    def b(self) -> FederatedProsody:
        """The second server."""
        return self.servers[1]

    @property
    def running(self) -> bool:
        """True while both servers run."""
        return all(s.running for s in self.servers)

    def server_of(self, jid: str) -> FederatedProsody:
        """The server hosting ``jid`` (a user, room or service JID)."""
        domain = jid.split("@", 1)[-1].split("/", 1)[0]
        for server in self.servers:
            if domain in (server.domain, server.muc_domain, server.upload_domain):
                return server
        raise KeyError(jid)

    def __enter__(self) -> Federation:
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
        """Start both servers, each knowing the other's s2s port; check s2s both ways.

        :raises ProsodyError: a server did not start, or s2s does not work (the
            message carries the end of both logs).
        """
        t0 = time.monotonic()
        atexit.register(self.stop)
        try:
            a, b = self.servers
            for attempt in range(1, 4):
                port_a = _free_port(a.interface)
                port_b = _free_port(b.interface, avoid={port_a})
                a.set_s2s_port(port_a)
                b.set_s2s_port(port_b)
                a.peer = Peer(b.domain, b.interface, port_b)
                b.peer = Peer(a.domain, a.interface, port_a)
                try:
                    a.start()
                    b.start()
                except ProsodyError as e:
                    # an s2s port fixed in advance was taken meanwhile: new ports
                    if "taken" not in str(e) or attempt == 3:
                        raise
                    self._stop_servers()
                    continue
                break
            if self.check_s2s:
                try:
                    self.ping_seconds = (a.ping(b.domain), b.ping(a.domain))
                except ProsodyError as e:
                    raise ProsodyError(f"{e}\n{self.log_tails()}") from None
        except BaseException:
            self.stop()
            raise
        self.start_seconds = time.monotonic() - t0

    def stop(self) -> None:
        """Stop both servers by PID; safe to call more than once."""
        atexit.unregister(self.stop)
        t0 = time.monotonic()
        self._stop_servers()
        self.stop_seconds = time.monotonic() - t0

    def _stop_servers(self) -> None:
        """Stop both at once (each takes 0.3-0.6 s to close its s2s sessions)."""
        errors: list[BaseException] = []
        try:
            with ThreadPoolExecutor(max_workers=len(self.servers)) as pool:
                futures = [pool.submit(server.stop) for server in self.servers]
            errors += [e for e in (f.exception() for f in futures) if e is not None]
        except RuntimeError:  # no new threads at interpreter exit (atexit): in turn
            for server in self.servers:
                try:
                    server.stop()  # idempotent: also after a stop in the pool
                except Exception as e:  # noqa: BLE001 - stop the other one regardless
                    errors.append(e)
        if errors:
            raise errors[0]

    def log_tails(self, lines: int = 40) -> str:
        """The end of both servers' logs, for failure reports."""
        parts = []
        for server in self.servers:
            text = server.log_text()
            tail = "\n".join(text.splitlines()[-lines:]) or "(empty)"
            parts.append(f"--- {server.domain} log (last {lines} lines) ---\n{tail}")
        return "\n".join(parts)


def _check_domain(domain: str) -> None:
    if not _DOMAIN.match(domain):
        raise ValueError(f"use a lowercase DNS name with a dot, not {domain!r}")
    if domain == "localhost" or domain.endswith(".localhost"):
        raise ValueError(
            f"{domain!r}: libunbound answers every *.localhost with 127.0.0.1; use *.test")


def _free_port(interface: str, avoid: set[int] | frozenset[int] = frozenset()) -> int:
    """A TCP port free on ``interface`` right now (not one of ``avoid``)."""
    for _ in range(20):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((interface, 0))
            except OSError as e:
                hint = (f" (on macOS: sudo ifconfig lo0 alias {interface})"
                        if e.errno == errno.EADDRNOTAVAIL and interface.startswith("127.")
                        else "")
                raise ProsodyError(f"cannot listen on {interface}: {e}{hint}") from e
            port = int(s.getsockname()[1])
        if port not in avoid:
            return port
    raise ProsodyError(f"no free port on {interface}")
