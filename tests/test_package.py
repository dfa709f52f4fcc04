"""The package as users get it: registration on import, public names, shipped files.

``bin/test`` runs this (and the rest of the suite) against the wheel installed
in a fresh virtualenv; the checks that only make sense there are marked with
:data:`installed_only`. Subprocesses start in a temporary directory, so they
see only what the interpreter has installed (plus ``PYTHONPATH``).
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from slixmpp.plugins import BasePlugin

import mls_xmpp
from mls_xmpp.testing import CONFIG_PATH

from .conftest import installed_mode, is_installed

VECTORS = Path(__file__).parent / "vectors" / "data"
PACKAGE = Path(mls_xmpp.__file__ or "").parent

installed_only = pytest.mark.skipif(
    not installed_mode(), reason="only with MLS_XMPP_TEST_INSTALLED=1 (bin/test)"
)


def _python(code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True,
                          text=True, timeout=120, check=False)


REGISTER = """
import slixmpp
import mls_xmpp

xmpp = slixmpp.ClientXMPP("alice@example.org", "secret")
xmpp.register_plugin("mls")
plugin = xmpp.plugin["mls"]
assert isinstance(plugin, mls_xmpp.XEP_MLS), type(plugin)
print(mls_xmpp.__file__)
"""


def test_import_mls_xmpp_is_enough_to_register_the_plugin(tmp_path: Path) -> None:
    """A fresh interpreter: ``import mls_xmpp``, then ``register_plugin("mls")``."""
    assert "mls_xmpp.xmpp.plugin" not in REGISTER
    result = _python(REGISTER, tmp_path)
    assert result.returncode == 0, result.stderr
    if installed_mode():
        assert is_installed(result.stdout.strip()), result.stdout


def test_without_import_the_plugin_is_unknown(tmp_path: Path) -> None:
    """The counter-check: slixmpp alone does not know "mls" (so the test above means something)."""
    code = (
        "import slixmpp\n"
        "from slixmpp.plugins.base import PluginNotFound\n"
        "xmpp = slixmpp.ClientXMPP('alice@example.org', 'secret')\n"
        "try:\n"
        "    xmpp.register_plugin('mls')\n"
        "except PluginNotFound:\n"
        "    print('not found')\n"
    )
    result = _python(code, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "not found"


def test_public_names() -> None:
    for name in mls_xmpp.__all__:
        assert getattr(mls_xmpp, name) is not None, name
    assert issubclass(mls_xmpp.XEP_MLS, BasePlugin)
    assert mls_xmpp.XEP_MLS.name == "mls"
    for error in ("RemoteProtocolError", "LocalUsageError", "TransportError", "EnvelopeError"):
        assert issubclass(getattr(mls_xmpp, error), mls_xmpp.MLSError), error
    assert issubclass(mls_xmpp.EnvelopeError, mls_xmpp.RemoteProtocolError)


def test_every_package_directory_is_a_regular_package() -> None:
    """``packages = find:`` skips a directory without ``__init__.py`` (the wheel lost one)."""
    missing = [
        str(d.relative_to(PACKAGE))
        for d in [PACKAGE, *PACKAGE.rglob("*")]
        if d.is_dir() and d.name != "__pycache__" and any(d.glob("*.py"))
        and not (d / "__init__.py").is_file()
    ]
    assert not missing
    assert (PACKAGE / "core" / "group" / "__init__.py").is_file()


def test_files_read_at_run_time_are_shipped() -> None:
    assert (PACKAGE / "py.typed").is_file()
    assert CONFIG_PATH.is_file() and CONFIG_PATH.parent == PACKAGE / "testing"
    assert (PACKAGE / "testing" / "federation.cfg.lua").is_file()
    assert (PACKAGE / "testing" / "ejabberd.yml.in").is_file()
    stubs = sorted(p.name for p in (PACKAGE / "_proto").rglob("*_pb2.pyi"))
    assert stubs == ["content_pb2.pyi", "envelope_pb2.pyi", "keypackage_pb2.pyi"]


def test_passive_client_vectors_pass(tmp_path: Path) -> None:
    """The runner users call, on the passive-client vectors, from outside the checkout."""
    files = sorted(str(p) for p in VECTORS.glob("passive-client-*.json"))
    assert len(files) == 2
    result = subprocess.run([sys.executable, "-m", "mls_xmpp.vectors", "-q", *files],
                            cwd=tmp_path, capture_output=True, text=True, timeout=600,
                            check=False)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert result.stdout.splitlines()[-1] == "147 passed, 0 failed"


@installed_only
def test_installed_from_the_wheel() -> None:
    """The run imports the installed package: code, Prosody config and the console script."""
    assert is_installed(mls_xmpp.__file__ or "")
    assert is_installed(CONFIG_PATH)
    script = Path(sysconfig.get_path("scripts")) / "mls-xmpp"
    assert script.is_file() and os.access(script, os.X_OK)
    result = subprocess.run([str(script), "vectors", "-q",
                             str(VECTORS / "passive-client-welcome.json")],
                            capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert result.stdout.splitlines()[-1] == "56 passed, 0 failed"
