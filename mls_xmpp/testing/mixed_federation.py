"""Federation across implementations: an ejabberd domain and a Prosody domain.

:class:`MixedFederation` starts :class:`~mls_xmpp.testing.ejabberd.EjabberdServer`
for ``e.test`` (on 127.0.0.3) and a
:class:`~mls_xmpp.testing.federation.FederatedProsody` for ``p.test`` (on
127.0.0.4), each with free c2s, s2s and HTTP ports, MUC + MAM, PEP and HTTP
File Upload, federating by dialback without TLS. It offers what
:class:`~mls_xmpp.testing.federation.Federation` offers (``a`` is the ejabberd
one, ``b`` the Prosody one), so the same scenarios run on it::

    with MixedFederation() as fed:
        alice = fed.a.create_account("alice")   # alice-…@e.test, on ejabberd
        bob = fed.b.create_account("bob")       # bob-…@p.test, on Prosody

How each finds the other:

* Prosody resolves ``e.test`` (and every name below it) with its private
  libunbound configuration, as in the Prosody-Prosody federation
  (``federation.cfg.lua``: the peer's IP and an SRV record with its s2s port).
* ejabberd 23.01 looks up ``_xmpp-server._tcp.<domain>`` with Erlang's DNS
  client only (not /etc/hosts, not the inetrc host table) and gives up when
  that name does not exist. So this module runs a small DNS responder on a
  free loopback UDP port (a thread of this process) and points ejabberd's
  resolver at it (inetrc ``{nameserver, ...}``). It answers for ``p.test`` and
  the names below it: A = Prosody's IP; SRV ``_xmpp-server._tcp.<name>`` =
  Prosody's s2s port with the IP literal as target (ejabberd resolves the
  target with getaddrinfo, which takes an IP literal as it is); NXDOMAIN for
  everything else.
"""

from __future__ import annotations

import atexit
import socket
import struct
import threading
import time
from types import TracebackType

from .ejabberd import EjabberdServer
from .federation import FederatedProsody, Peer
from .prosody import ProsodyError

__all__ = ["MixedFederation"]


class MixedFederation:
    """An ejabberd server and a Prosody server that federate with each other.

    Use as a context manager, or call :meth:`start` and :meth:`stop`. Both
    servers are stopped by PID, the DNS responder thread is stopped too.

    :param domains: the ejabberd domain (:attr:`a`) and the Prosody one (:attr:`b`).
    :param interfaces: their loopback IPs.
    :param check_s2s: after start, ping the ejabberd domain from Prosody (s2s
        both ways: dialback makes ejabberd connect back); in :attr:`ping_seconds`.
    """

    def __init__(
        self,
        domains: tuple[str, str] = ("e.test", "p.test"),
        interfaces: tuple[str, str] = ("127.0.0.3", "127.0.0.4"),
        *,
        log_level: str = "info",
        check_s2s: bool = True,
    ) -> None:
        if domains[0] == domains[1]:
            raise ValueError("the two domains must differ")
        self.check_s2s = check_s2s
        self._dns = _SrvResponder()
        self.a = EjabberdServer(
            domain=domains[0], ip=interfaces[0], log_level=log_level,
            inetrc=f'{{resolv_conf,""}}.\n{{nameserver,{{127,0,0,1}},{self._dns.port}}}.')
        self.b = FederatedProsody(domains[1], interface=interfaces[1], log_level=log_level)
        self.servers: tuple[EjabberdServer, FederatedProsody] = (self.a, self.b)
        #: Seconds the last :meth:`start` took (both ready and, if asked, pinged).
        self.start_seconds: float | None = None
        #: Seconds the last :meth:`stop` took.
        self.stop_seconds: float | None = None
        #: Round trip of the start-up ping p -> e, as Prosody measured it.
        self.ping_seconds: tuple[float, ...] | None = None

    @property
    def dns_port(self) -> int:
        """UDP port (127.0.0.1) of the DNS responder ejabberd resolves p.test with;
        its thread is named ``mixed-federation-dns-<port>``."""
        return self._dns.port

    @property
    def running(self) -> bool:
        """True while both servers run."""
        return all(s.running for s in self.servers)

    def server_of(self, jid: str) -> EjabberdServer | FederatedProsody:
        """The server hosting ``jid`` (a user, room or service JID)."""
        domain = jid.split("@", 1)[-1].split("/", 1)[0]
        for server in self.servers:
            if domain in (server.domain, server.muc_domain, server.upload_domain):
                return server
        raise KeyError(jid)

    def __enter__(self) -> MixedFederation:
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
        """Start the DNS responder, ejabberd, then Prosody (told ejabberd's s2s port).

        :raises EjabberdError: ejabberd did not start.
        :raises ProsodyError: Prosody did not start, or s2s does not work.
        """
        t0 = time.monotonic()
        atexit.register(self.stop)
        try:
            self._dns.start(self.b)
            self.a.start()
            self.b.peer = Peer(self.a.domain, self.a.ip, self.a.s2s_port)
            self.b.start()
            if self.check_s2s:
                try:
                    self.ping_seconds = (self.b.ping(self.a.domain),)
                except ProsodyError as e:
                    raise ProsodyError(f"{e}\n{self.log_tails()}") from None
        except BaseException:
            self.stop()
            raise
        self.start_seconds = time.monotonic() - t0

    def stop(self) -> None:
        """Stop both servers by PID and the DNS responder; safe to call more than once."""
        atexit.unregister(self.stop)
        t0 = time.monotonic()
        try:
            self.b.stop()
        finally:
            try:
                self.a.stop()
            finally:
                self._dns.stop()
        self.stop_seconds = time.monotonic() - t0

    def log_tails(self, lines: int = 40) -> str:
        """The end of both servers' logs, for failure reports."""
        parts = []
        for server in self.servers:
            text = server.log_text()
            tail = "\n".join(text.splitlines()[-lines:]) or "(empty)"
            parts.append(f"--- {server.domain} log (last {lines} lines) ---\n{tail}")
        return "\n".join(parts)


class _SrvResponder:
    """A UDP DNS responder on 127.0.0.1 for one Prosody's names (see the module doc)."""

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.settimeout(0.2)
        #: The UDP port it answers on.
        self.port: int = self._sock.getsockname()[1]
        self._server: FederatedProsody | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    def start(self, server: FederatedProsody) -> None:
        self._server = server
        self._thread = threading.Thread(target=self._serve,
                                        name=f"mixed-federation-dns-{self.port}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None
        self._sock.close()

    def _serve(self) -> None:
        while not self._stopping.is_set():
            try:
                query, addr = self._sock.recvfrom(512)
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                reply = self._answer(query)
            except (IndexError, struct.error, UnicodeDecodeError, ProsodyError):
                continue  # not a query we understand, or the server is not up yet
            self._sock.sendto(reply, addr)

    def _answer(self, query: bytes) -> bytes:
        assert self._server is not None
        qid, flags = struct.unpack(">HH", query[:4])
        i, labels = 12, []
        while query[i]:
            labels.append(query[i + 1:i + 1 + query[i]].decode("ascii").lower())
            i += 1 + query[i]
        qtype = struct.unpack(">H", query[i + 1:i + 3])[0]
        question = query[12:i + 5]
        name = ".".join(labels)
        domain = self._server.domain
        srv_prefix = "_xmpp-server._tcp."

        def ours(n: str) -> bool:
            return n == domain or n.endswith("." + domain)

        ip = socket.inet_aton(self._server.interface)
        answer = b""
        if name.startswith(srv_prefix) and ours(name[len(srv_prefix):]):
            if qtype == 33:  # SRV: 0 0 <s2s port> <IP literal>.
                target = b"".join(bytes([len(part)]) + part.encode()
                                  for part in self._server.interface.split(".")) + b"\0"
                rdata = struct.pack(">HHH", 0, 0, self._server.s2s_port) + target
                answer = b"\xc0\x0c" + struct.pack(">HHIH", 33, 1, 5, len(rdata)) + rdata
            rcode = 0
        elif ours(name):
            if qtype == 1:  # A
                answer = b"\xc0\x0c" + struct.pack(">HHIH", 1, 1, 5, 4) + ip
            rcode = 0
        else:
            rcode = 3  # NXDOMAIN
        header = struct.pack(">HHHHHH", qid, 0x8180 | (flags & 0x0100) | rcode, 1,
                             1 if answer else 0, 0, 0)
        return header + question + answer
