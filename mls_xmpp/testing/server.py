"""What the tests need of a server: :class:`XmppServer`, met by Prosody and ejabberd."""

from __future__ import annotations

from typing import Protocol

from .prosody import Account

__all__ = ["XmppServer"]


class XmppServer(Protocol):
    """A running test server: :class:`~mls_xmpp.testing.prosody.ProsodyServer`,
    :class:`~mls_xmpp.testing.ejabberd.EjabberdServer` (or one node of a cluster).

    Plaintext c2s on loopback, MUC with MAM on ``muc_domain``, PEP, HTTP File
    Upload on ``upload_domain``, offline storage.
    """

    @property
    def domain(self) -> str:
        """The XMPP domain accounts live on."""

    @property
    def muc_domain(self) -> str:
        """The MUC service, with MAM on its rooms."""

    @property
    def upload_domain(self) -> str:
        """The HTTP File Upload service."""

    @property
    def host(self) -> str:
        """Address to connect to."""

    @property
    def c2s_port(self) -> int:
        """Client-to-server port."""

    @property
    def http_port(self) -> int:
        """HTTP port (uploads)."""

    @property
    def running(self) -> bool:
        """True while the server process lives."""

    def create_user(self, name: str, password: str) -> Account:
        """Create ``name@domain``."""

    def create_account(self, prefix: str = "user") -> Account:
        """Create a uniquely named account."""

    def room_jid(self, name: str) -> str:
        """The bare JID of room ``name``."""

    def log_text(self) -> str:
        """The server's log so far."""
