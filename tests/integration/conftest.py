"""Fixtures for the integration tests: one real Prosody (and ejabberd) per session.

Every test in this directory is marked ``integration`` (deselect with
``-m "not integration"``). The server is the Debian ``prosody`` package
started on free loopback ports by :class:`mls_xmpp.testing.ProsodyServer`;
``bin/setup`` installs it. When a test here fails, the end of Prosody's log
is attached to the report.

Tests of what every server must support take the ``server`` fixture instead
of ``prosody``: they run once on Prosody and once on ejabberd (Debian package
``ejabberd`` 23.01, :class:`mls_xmpp.testing.EjabberdServer`; test ids
``[prosody]`` / ``[ejabberd]``). ``new_account`` makes accounts on whichever
server the test uses. Tests that rely on Prosody internals stay on ``prosody``.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Generator, Iterator
from pathlib import Path

import pytest

from mls_xmpp.testing import (
    Account,
    EjabberdServer,
    ProsodyServer,
    XmppServer,
    find_ejabberdctl,
)

HERE = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test collected from this directory as ``integration``."""
    for item in items:
        if HERE in item.path.parents:
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def prosody() -> Iterator[ProsodyServer]:
    """A running Prosody shared by the session, stopped (by PID) at its end."""
    if shutil.which("prosody") is None:
        pytest.fail("prosody is not installed: run bin/setup (Debian package 'prosody')")
    with ProsodyServer() as server:
        yield server


@pytest.fixture(scope="session")
def ejabberd() -> Iterator[EjabberdServer]:
    """A running ejabberd shared by the session, stopped (by PID) at its end."""
    if find_ejabberdctl() is None:
        pytest.fail("ejabberd is not installed: run bin/setup (Debian package 'ejabberd')")
    with EjabberdServer() as server:
        print(f"\nejabberd started in {server.start_seconds:.2f} s")
        yield server


@pytest.fixture(params=["prosody", "ejabberd"])
def server(request: pytest.FixtureRequest) -> XmppServer:
    """The session's Prosody, then its ejabberd: the test runs on both."""
    found: XmppServer = request.getfixturevalue(request.param)
    return found


@pytest.fixture
def new_account(request: pytest.FixtureRequest) -> Callable[[str], Account]:
    """Factory: ``new_account("alice")`` creates a uniquely named account.

    On the server of the test: ``server`` when the test uses it, else ``prosody``.
    """
    name = "server" if "server" in request.fixturenames else "prosody"
    found: XmppServer = request.getfixturevalue(name)
    return found.create_account


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Attach the end of the server's log to failed integration tests."""
    report = yield
    args = getattr(item, "funcargs", {})
    server = args.get("server", args.get("prosody"))
    if report.failed and isinstance(server, (ProsodyServer, EjabberdServer)) and server.running:
        name = "ejabberd" if isinstance(server, EjabberdServer) else "prosody"
        tail = "\n".join(server.log_text().splitlines()[-60:])
        report.sections.append((f"{name} log (last 60 lines)", tail))
    return report
