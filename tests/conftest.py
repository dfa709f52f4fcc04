"""Suite-wide set-up: which ``mls_xmpp`` the suite tests.

``bin/test`` runs the suite against the package installed from the wheel, from
a copy of the tests without the ``mls_xmpp/`` source directory, and sets
``MLS_XMPP_TEST_INSTALLED=1``. The session then refuses to start unless the
``mls_xmpp`` it imports lives in this interpreter's site-packages, so a run
meant to test the wheel can never quietly test a checkout instead.
"""

from __future__ import annotations

import os
import sysconfig
from pathlib import Path

import pytest

#: Set to ``1`` when the suite must test the installed package.
INSTALLED_ENV = "MLS_XMPP_TEST_INSTALLED"


def installed_mode() -> bool:
    """True when the suite must run against the installed package."""
    return os.environ.get(INSTALLED_ENV) == "1"


def site_packages() -> list[Path]:
    """This interpreter's directories for installed pure and platform modules."""
    paths = sysconfig.get_paths()
    return sorted({Path(paths[key]).resolve() for key in ("purelib", "platlib")})


def is_installed(path: str | Path) -> bool:
    """True when ``path`` lies inside one of :func:`site_packages`."""
    resolved = Path(path).resolve()
    return any(resolved.is_relative_to(d) for d in site_packages())


def pytest_sessionstart(session: pytest.Session) -> None:
    if not installed_mode():
        return
    import mls_xmpp

    if not is_installed(mls_xmpp.__file__ or ""):
        raise pytest.UsageError(
            f"{INSTALLED_ENV}=1 but mls_xmpp was imported from {mls_xmpp.__file__}, "
            f"not from this interpreter's site-packages {[str(d) for d in site_packages()]}; "
            "run the tests from a directory without the mls_xmpp/ sources"
        )
