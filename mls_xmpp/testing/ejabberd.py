"""A throw-away ejabberd on loopback, and a two-node ejabberd cluster.

:class:`EjabberdServer` starts the Debian ``ejabberd`` package (23.01) with the
project's config template (``ejabberd.yml.in`` next to this module) on free
ports, keeps all its state (config, mnesia spool, logs, uploads) in a temporary
directory, creates accounts while it runs, and stops it by PID. It offers what
the tests use on :class:`~mls_xmpp.testing.prosody.ProsodyServer`::

    with EjabberdServer() as server:
        alice = server.create_account("alice")
        ...  # connect with mls_xmpp.testing.connect_client(server, *alice)

:class:`EjabberdCluster` runs two (or more) such nodes serving one domain as an
Erlang/mnesia cluster (``ejabberdctl join_cluster``), with a private ``epmd``.

How ejabberd is driven (``ejabberdctl`` of the Debian package):

* every ``ejabberdctl`` call gets ``--config-dir/--spool/--logs/--node`` of this
  server, so it reads *our* ``ejabberdctl.cfg``, ``ejabberd.yml`` and ``inetrc``
  (the system's ``/etc/ejabberd/ejabberdctl.cfg`` would force the system config);
* run as root, ``ejabberdctl`` re-executes itself as the ``ejabberd`` user, so the
  state directory is made with :func:`tempfile.mkdtemp` in the temp directory
  (/tmp when ``$TMPDIR`` is not reachable for that user; pytest's ``tmp_path``
  is not) and handed to it. As any other user, the packaged ``ejabberdctl``
  refuses to run: the server then uses a copy of it in its state directory
  that runs the node as that user;
* a single node runs without ``epmd`` (Erlang distribution on a fixed free port,
  ``ERL_DIST_PORT``); a cluster's nodes register with an ``epmd`` the cluster
  starts on a free port (``ERL_EPMD_PORT``) and stops by PID. The system
  ejabberd (``ejabberd@localhost``, port 5222) and its epmd are never touched;
* readiness: ejabberd wrote its pidfile and the process lives, and the c2s and
  HTTP ports accept (ejabberd opens its listeners only once every module is up);
  the ports are checked free first, so another server cannot fake readiness;
* ejabberd deletes its pidfile when it stops: the PID is kept, and the server
  is stopped by SIGTERM to it (``init:stop()``, graceful), SIGKILL after
  ``stop_timeout``;
* accounts are created through ``mod_http_api`` on the loopback HTTP listener
  (``POST /api/register``: milliseconds, where ``ejabberdctl register`` boots an
  Erlang VM for each, ~0.4 s).
"""

from __future__ import annotations

import atexit
import itertools
import json
import os
import pwd
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import TypeVar

from .prosody import Account, _accepts, _free_ports, _read

__all__ = [
    "EJABBERD_CONFIG_PATH",
    "EjabberdCluster",
    "EjabberdError",
    "EjabberdServer",
    "find_ejabberdctl",
]

#: The project's ejabberd configuration template, shipped as package data.
EJABBERD_CONFIG_PATH = Path(__file__).with_name("ejabberd.yml.in")

_LOCALPART_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-_.")
_unique = itertools.count(1)
_T = TypeVar("_T")
#: The system user the Debian package's ejabberdctl runs the node as.
_EJABBERD_USER = "ejabberd"


class EjabberdError(RuntimeError):
    """ejabberd could not be started, driven or stopped; the message has details."""


class EjabberdServer:
    """One ejabberd node on loopback with its own state directory.

    Use as a context manager, or call :meth:`start` and :meth:`stop`. Ports are
    chosen at the first start; :attr:`c2s_port`, :attr:`http_port`,
    :attr:`s2s_port`, :attr:`directory` and :attr:`log_path` are valid from then
    on. :meth:`stop_process` stops the node but keeps its state and ports, and a
    later :meth:`start` restarts it on them (mnesia keeps accounts, rooms,
    archives, PEP nodes and cluster membership).

    :param domain: the XMPP domain served (``conference.``, ``upload.`` and
        ``pubsub.`` below it).
    :param ip: loopback address every listener binds.
    :param node: Erlang node name (default ``mlsx<c2s port>@localhost``).
    :param cookie: Erlang cookie (nodes of one cluster share it).
    :param epmd_port: register with the ``epmd`` on this port (clusters);
        ``None``: no epmd, distribution on a free fixed port.
    :param s2s_port: the server-to-server port (``None``: a free one).
    :param inetrc: extra Erlang resolver lines (``{nameserver,...}.``; federation).
    :param log_level: ejabberd ``loglevel`` (``info``, ``warning``, ``debug``...).
    :param start_timeout: seconds to wait for readiness before giving up.
    :param stop_timeout: seconds between SIGTERM and SIGKILL.
    :param keep_directory: leave the state directory (and logs) after stop.
    """

    #: The MUC (XEP-0045) service is ``conference.<domain>``, with MAM on its rooms.
    muc_prefix = "conference."
    #: The HTTP File Upload (XEP-0363) service is ``upload.<domain>``.
    upload_prefix = "upload."

    def __init__(
        self,
        *,
        domain: str = "localhost",
        ip: str = "127.0.0.1",
        node: str | None = None,
        cookie: str | None = None,
        epmd_port: int | None = None,
        s2s_port: int | None = None,
        inetrc: str = "",
        log_level: str = "info",
        start_timeout: float = 60.0,
        stop_timeout: float = 15.0,
        keep_directory: bool = False,
        ejabberdctl: str = "ejabberdctl",
        config_path: Path = EJABBERD_CONFIG_PATH,
    ) -> None:
        self.domain = domain
        self.ip = ip
        self.cookie = cookie or secrets.token_hex(12)
        self.epmd_port = epmd_port
        self.inetrc = inetrc
        self.log_level = log_level
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.keep_directory = keep_directory
        self.ejabberdctl = ejabberdctl
        self.config_path = config_path
        self._node = node
        self._s2s_port = s2s_port
        self._directory: Path | None = None
        self._c2s_port: int | None = None
        self._http_port: int | None = None
        self._dist_port: int | None = None
        self._pid: int | None = None
        #: Seconds the last :meth:`start` took until ready.
        self.start_seconds: float | None = None
        #: Seconds the last :meth:`stop` / :meth:`stop_process` took until the node was gone.
        self.stop_seconds: float | None = None

    # -- properties ---------------------------------------------------------

    @property
    def muc_domain(self) -> str:
        """The MUC service, with MAM on its rooms."""
        return self.muc_prefix + self.domain

    @property
    def upload_domain(self) -> str:
        """The HTTP File Upload service."""
        return self.upload_prefix + self.domain

    @property
    def host(self) -> str:
        """Address to connect to."""
        return self.ip

    @property
    def running(self) -> bool:
        """True while the node we started is alive."""
        return self._pid is not None and _alive(self._pid)

    @property
    def pid(self) -> int:
        """PID of the running node (the Erlang VM, ``beam.smp``)."""
        return _known(self._pid, "pid")

    @property
    def directory(self) -> Path:
        """The state directory (etc/, spool/, log/, upload/)."""
        return _known(self._directory, "directory")

    @property
    def c2s_port(self) -> int:
        """TCP port of the client-to-server listener."""
        return _known(self._c2s_port, "c2s_port")

    @property
    def http_port(self) -> int:
        """TCP port of the HTTP listener (XEP-0363 uploads, admin API)."""
        return _known(self._http_port, "http_port")

    @property
    def s2s_port(self) -> int:
        """TCP port of the server-to-server listener."""
        return _known(self._s2s_port, "s2s_port")

    @property
    def node(self) -> str:
        """The Erlang node name."""
        return self._node or f"mlsx{self.c2s_port}@localhost"

    @property
    def log_path(self) -> Path:
        """ejabberd's log file."""
        return self.directory / "log" / "ejabberd.log"

    # -- lifecycle ----------------------------------------------------------

    def __enter__(self) -> EjabberdServer:
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
        """Start the node and wait until it serves clients.

        The first start makes the state directory and chooses ports; a start
        after :meth:`stop_process` reuses both (same spool).

        :raises EjabberdError: ejabberd is missing, died, or was not ready within
            :attr:`start_timeout` (the message carries the end of its log).
        """
        if self.running:
            raise EjabberdError("this EjabberdServer is already running")
        if find_ejabberdctl(self.ejabberdctl) is None:
            raise EjabberdError(
                f"{self.ejabberdctl!r} not found on PATH; install the Debian package "
                "'ejabberd' (bin/setup does)"
            )
        t0 = time.monotonic()
        fresh = self._directory is None
        try:
            if fresh:
                self._directory = Path(tempfile.mkdtemp(prefix="mls-xmpp-ejabberd-",
                                                        dir=_state_parent()))
                for sub in ("etc", "spool", "log", "upload"):
                    (self._directory / sub).mkdir()
            for attempt in itertools.count(1):
                if fresh or attempt > 1:
                    self._choose_ports()
                try:
                    self._spawn_and_wait(t0 + self.start_timeout)
                except _PortTaken:
                    self._terminate()
                    if not fresh or attempt >= 3:
                        raise EjabberdError(
                            "ports were taken by another process\n" + self._log_tail()
                        ) from None
                    continue
                break
        except BaseException:
            if fresh:
                self.stop()
            else:
                self._terminate()
            raise
        self.start_seconds = time.monotonic() - t0
        atexit.register(self.stop)

    def stop_process(self) -> None:
        """Stop the node (SIGTERM, SIGKILL after :attr:`stop_timeout`), keep its state."""
        t0 = time.monotonic()
        self._terminate()
        self.stop_seconds = time.monotonic() - t0

    def stop(self) -> None:
        """Stop the node and remove its state. Safe to call more than once."""
        atexit.unregister(self.stop)
        self.stop_process()
        if self._directory is not None and not self.keep_directory:
            shutil.rmtree(self._directory, ignore_errors=True)
            self._directory = None

    # -- accounts -----------------------------------------------------------

    def create_user(self, name: str, password: str) -> Account:
        """Create ``name@<domain>`` on the running server (admin HTTP API).

        :raises ValueError: the local part or password is unusable here.
        :raises EjabberdError: ejabberd refused (for example: the user exists).
        """
        if not name or not set(name) <= _LOCALPART_CHARS:
            raise ValueError(f"use a simple lowercase local part, not {name!r}")
        if not password:
            raise ValueError("password must be non-empty")
        if not self.running:
            raise EjabberdError("ejabberd is not running")
        jid = f"{name}@{self.domain}"
        self.api("register", user=name, host=self.domain, password=password)
        return Account(jid, password)

    def create_account(self, prefix: str = "user") -> Account:
        """Create an account with a unique name ``<prefix>-<n>-<random>`` and password."""
        name = f"{prefix}-{next(_unique)}-{secrets.token_hex(3)}"
        return self.create_user(name, f"pw-{secrets.token_hex(8)}")

    def room_jid(self, name: str) -> str:
        """The bare JID of room ``name`` on :attr:`muc_domain`."""
        return f"{name}@{self.muc_domain}"

    # -- administration -----------------------------------------------------

    def api(self, command: str, timeout: float = 30.0, **args: object) -> object:
        """Call an ejabberd command through ``mod_http_api`` (loopback only); its result.

        :raises EjabberdError: the command failed or the node did not answer.
        """
        request = urllib.request.Request(
            f"http://{self.ip}:{self.http_port}/api/{command}",
            data=json.dumps(args).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as reply:
                body = reply.read().decode("utf-8", "replace")
        except urllib.error.HTTPError as e:
            detail = e.read().decode("utf-8", "replace")
            raise EjabberdError(f"{command}: HTTP {e.code}: {detail}") from None
        except OSError as e:
            raise EjabberdError(f"{command}: {e}") from None
        try:
            return json.loads(body)
        except ValueError:
            return body

    def ctl(self, *args: str, timeout: float = 60.0) -> str:
        """Run ``ejabberdctl`` against this node; its output.

        :raises EjabberdError: non-zero exit (the output is in the message).
        """
        proc = subprocess.run(
            [*self._ctl_base(), *args],
            env=self._environment(),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if proc.returncode != 0:
            raise EjabberdError(
                f"ejabberdctl {' '.join(args)} failed (exit {proc.returncode}): "
                f"{proc.stdout}{proc.stderr}"
            )
        return proc.stdout

    def log_text(self) -> str:
        """ejabberd's log so far ('' when there is none)."""
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except (OSError, EjabberdError):
            return ""

    # -- internals ----------------------------------------------------------

    def _choose_ports(self) -> None:
        count = 3 if self.epmd_port is None else 2
        ports = list(_free_ports(count + (1 if self._s2s_port is None else 0)))
        self._c2s_port, self._http_port = ports[0], ports[1]
        self._dist_port = ports[2] if self.epmd_port is None else None
        if self._s2s_port is None or len(ports) > count:
            self._s2s_port = ports[-1]

    def _ctl_base(self) -> list[str]:
        d = self.directory
        own = d / "etc" / "ejabberdctl"
        ctl = str(own) if own.is_file() else (find_ejabberdctl(self.ejabberdctl)
                                               or self.ejabberdctl)
        return [ctl, "--config-dir", str(d / "etc"), "--spool", str(d / "spool"),
                "--logs", str(d / "log"), "--node", self.node]

    def _install_ctl(self) -> None:
        """As a user other than root and ``ejabberd``: a copy of ``ejabberdctl`` that
        runs the node as this user (the packaged one refuses everybody else)."""
        if os.geteuid() == 0 or _user_name() == _EJABBERD_USER:
            return
        found = find_ejabberdctl(self.ejabberdctl)
        if found is None:
            raise EjabberdError(f"{self.ejabberdctl!r} not found on PATH")
        text = Path(found).read_text(encoding="utf-8")
        patched = re.sub(r"(?m)^INSTALLUSER=.*$", "INSTALLUSER=", text)
        if patched == text:
            raise EjabberdError(f"{found}: no INSTALLUSER line; cannot run it as this user")
        own = self.directory / "etc" / "ejabberdctl"
        own.write_text(patched, encoding="utf-8")
        own.chmod(0o755)

    def _environment(self) -> dict[str, str]:
        env = dict(os.environ)
        env.pop("ERL_EPMD_PORT", None)
        if self.epmd_port is not None:
            env["ERL_EPMD_PORT"] = str(self.epmd_port)
        return env

    def _write_config(self) -> None:
        d = self.directory
        values = {
            "@DIR@": str(d), "@DOMAIN@": self.domain, "@IP@": self.ip,
            "@C2S_PORT@": str(self.c2s_port), "@HTTP_PORT@": str(self.http_port),
            "@S2S_PORT@": str(self.s2s_port), "@LOGLEVEL@": self.log_level,
        }
        text = self.config_path.read_text(encoding="utf-8")
        for key, value in values.items():
            text = text.replace(key, value)
        (d / "etc" / "ejabberd.yml").write_text(text, encoding="utf-8")
        lines = [
            f'ERL_OPTIONS="-setcookie {self.cookie} -kernel inet_dist_use_interface {{127,0,0,1}}"',
            "ERL_EPMD_ADDRESS=127.0.0.1",
            f"EJABBERD_PID_PATH={d / 'ejabberd.pid'}",
            "EJABBERD_BYPASS_WARNINGS=true",
        ]
        if self.epmd_port is not None:
            lines.append(f"ERL_EPMD_PORT={self.epmd_port}; export ERL_EPMD_PORT")
        elif self._dist_port is not None:
            lines.append(f"ERL_DIST_PORT={self._dist_port}")
        (d / "etc" / "ejabberdctl.cfg").write_text("\n".join(lines) + "\n", encoding="utf-8")
        inetrc = ['{lookup,["file","native"]}.', '{host,{127,0,0,1},["localhost"]}.']
        if self.inetrc:
            inetrc.append(self.inetrc.strip())
        (d / "etc" / "inetrc").write_text("\n".join(inetrc) + "\n", encoding="utf-8")
        self._install_ctl()
        if os.geteuid() == 0:  # ejabberdctl runs the node as the ejabberd user
            shutil.chown(d, _EJABBERD_USER, _EJABBERD_USER)
            for root, dirs, files in os.walk(d):
                for name in dirs + files:
                    shutil.chown(os.path.join(root, name), _EJABBERD_USER, _EJABBERD_USER)

    def _spawn_and_wait(self, deadline: float) -> None:
        ports = [self.c2s_port, self.http_port, self.s2s_port]
        if any(_accepts(self.ip, port) for port in ports):
            raise _PortTaken()
        pidfile = self.directory / "ejabberd.pid"
        pidfile.unlink(missing_ok=True)
        self._write_config()
        proc = subprocess.run(
            [*self._ctl_base(), "start"], env=self._environment(), stdin=subprocess.DEVNULL,
            capture_output=True, text=True, timeout=60, check=False)
        if proc.returncode != 0:
            raise EjabberdError(
                f"ejabberdctl start failed (exit {proc.returncode}): {proc.stdout}{proc.stderr}")
        while True:
            text = _read(pidfile)
            if text.isdigit():
                self._pid = int(text)
                if not _alive(self._pid):
                    if "eaddrinuse" in self.log_text():
                        raise _PortTaken()
                    raise EjabberdError("ejabberd died while starting\n" + self._log_tail())
                if all(_accepts(self.ip, port) for port in ports[:2]):
                    return
            if time.monotonic() > deadline:
                raise EjabberdError(
                    f"ejabberd not ready after {self.start_timeout:.0f} s\n" + self._log_tail())
            time.sleep(0.05)

    def _terminate(self) -> None:
        pid, self._pid = self._pid, None
        if pid is None or not _alive(pid):
            return
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + self.stop_timeout
        while _alive(pid):
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                deadline = time.monotonic() + 10
                while _alive(pid) and time.monotonic() < deadline:
                    time.sleep(0.05)
                return
            time.sleep(0.05)

    def _log_tail(self, lines: int = 40) -> str:
        parts = []
        for name in ("ejabberd.log", "error.log", "crash.log"):
            text = _read(self.directory / "log" / name)
            if text:
                tail = "\n".join(text.splitlines()[-lines:])
                parts.append(f"--- {name} ---\n{tail}")
        return "\n".join(parts) or "(no log written)"


class EjabberdCluster:
    """Several ejabberd nodes on one machine serving one domain as a cluster.

    All nodes share a cookie and register with a private ``epmd`` (started on a
    free port, stopped by PID); every node after the first joins the first with
    ``ejabberdctl join_cluster``, after which mnesia replicates accounts, rooms,
    archives and PEP nodes, and a room is one process reachable from every node.
    Each node has its own c2s port: clients connected to different nodes meet
    in one group. :meth:`EjabberdServer.stop_process` and
    :meth:`EjabberdServer.start` on a node stop it and bring it back on its spool;
    it rejoins the cluster by itself.

    :param size: number of nodes (at least 2).
    :param domain: the domain they serve together.
    """

    def __init__(self, size: int = 2, *, domain: str = "localhost",
                 log_level: str = "info") -> None:
        if size < 2:
            raise ValueError("a cluster has at least 2 nodes")
        self.size = size
        self.domain = domain
        self.log_level = log_level
        self.nodes: list[EjabberdServer] = []
        self._epmd: subprocess.Popen[bytes] | None = None
        #: Seconds each ``join_cluster`` took.
        self.join_seconds: list[float] = []

    def __enter__(self) -> EjabberdCluster:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def first(self) -> EjabberdServer:
        """The node the others joined."""
        return self.nodes[0]

    def start(self) -> None:
        """Start epmd and the nodes, join them; accounts made on any node exist on all.

        :raises EjabberdError: a node did not start or join.
        """
        try:
            (epmd_port,) = _free_ports(1)
            self._epmd = subprocess.Popen(
                ["epmd", "-address", "127.0.0.1", "-port", str(epmd_port)],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL, start_new_session=True)
            deadline = time.monotonic() + 10
            while not _accepts("127.0.0.1", epmd_port):
                if self._epmd.poll() is not None or time.monotonic() > deadline:
                    raise EjabberdError(f"epmd did not start on port {epmd_port}")
                time.sleep(0.02)
            cookie = secrets.token_hex(12)
            tag = secrets.token_hex(3)
            for i in range(self.size):
                node = EjabberdServer(domain=self.domain, cookie=cookie, epmd_port=epmd_port,
                                      node=f"mlsx{tag}n{i}@localhost",
                                      log_level=self.log_level)
                self.nodes.append(node)
                node.start()
            for node in self.nodes[1:]:
                t0 = time.monotonic()
                node.ctl("join_cluster", self.first.node)
                self.join_seconds.append(time.monotonic() - t0)
        except BaseException:
            self.stop()
            raise
        atexit.register(self.stop)

    def running_nodes(self, via: EjabberdServer | None = None) -> list[str]:
        """Node names ``ejabberdctl list_cluster`` reports (asked on ``via``, default first)."""
        return (via or self.first).ctl("list_cluster").split()

    def stop(self) -> None:
        """Stop every node (last first) and epmd; remove their state."""
        atexit.unregister(self.stop)
        for node in reversed(self.nodes):
            node.stop()
        epmd, self._epmd = self._epmd, None
        if epmd is not None and epmd.poll() is None:
            epmd.terminate()
            try:
                epmd.wait(5)
            except subprocess.TimeoutExpired:
                epmd.kill()
                epmd.wait(5)


class _PortTaken(Exception):
    """Another process holds one of our ports."""


def _known(value: _T | None, what: str) -> _T:
    if value is None:
        raise EjabberdError(f"{what} is only known after start()")
    return value


def find_ejabberdctl(name: str = "ejabberdctl") -> str | None:
    """Path of ``ejabberdctl``: on PATH, or in /usr/sbin (not on a user's PATH)."""
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")


def _user_name() -> str:
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return ""


def _state_parent() -> str:
    """Where state directories go: the temp directory when the ``ejabberd`` user can
    reach it (every parent searchable by others), else /tmp."""
    parent = Path(tempfile.gettempdir()).resolve()
    if os.geteuid() != 0 or all(p.stat().st_mode & 0o001 for p in (parent, *parent.parents)):
        return str(parent)
    return "/tmp"


def _alive(pid: int) -> bool:
    """True when ``pid`` exists and is not a zombie (the node is not our child)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"
