"""Fixtures for the integration tests: one real Prosody for the whole session.

Every test in this directory is marked ``integration`` (deselect with
``-m "not integration"``). The server is the Debian ``prosody`` package
started on free loopback ports by :class:`mls_xmpp.testing.ProsodyServer`;
``bin/setup`` installs it. When a test here fails, the end of Prosody's log
is attached to the report.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Generator, Iterator
from pathlib import Path

import pytest

from mls_xmpp.testing import Account, ProsodyServer

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


@pytest.fixture
def new_account(prosody: ProsodyServer) -> Callable[[str], Account]:
    """Factory: ``new_account("alice")`` creates a uniquely named account."""
    return prosody.create_account


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Attach the end of Prosody's log to failed integration tests."""
    report = yield
    server = getattr(item, "funcargs", {}).get("prosody")
    if report.failed and isinstance(server, ProsodyServer) and server.running:
        tail = "\n".join(server.log_text().splitlines()[-60:])
        report.sections.append(("prosody log (last 60 lines)", tail))
    return report
